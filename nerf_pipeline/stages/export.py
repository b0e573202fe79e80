"""Stage ``export``: the trained scene's geometry as a coloured mesh and a point cloud.

Reads ``in_model`` (the train stage's model folder: the model and its MLflow run) and ``in_rays``
(its ``train`` part: cameras and image size). Writes:

* ``out_mesh`` (PLY) and ``out_mesh_glb`` (GLB, for web viewers and Blender): marching cubes
  (scikit-image) on the method's density (``methods.Method.density``; empty for a method without one)
  sampled on a grid of ``export.resolution``³ points over
  the scene's box (``[-bound, bound]^3`` of the model's space), at the level
  ``export.density_threshold``. Vertices are in world units, faces wound outward (towards lower
  density); vertex colours are the radiance field's at each vertex, seen along the mean viewing
  direction of the training cameras, uint8 RGBA;
* ``out_points`` (PLY): a point cloud (``methods.Method.points``; the NeRF's: one point per training ray
  of ``export.num_points`` drawn at random (seed ``seed``) across the training views, at the ray's
  expected depth, coloured by its rendered colour; rays whose opacity is below ``export.min_opacity``
  (they mostly see background) are left out);
* ``out_splats``: a folder (written whole, atomically) of the method's own export files
  (``methods.Method.export_files``) and a ``README.txt`` naming them: for Gaussian splats
  ``splats.ply`` (3DGS's layout, for SuperSplat, the SIBR viewer, …); a NeRF has none (its geometry is the mesh),
  so its folder holds only the README. A folder, not ``splats.ply`` itself, because DVC fails a stage whose
  declared out is missing, and the NeRF writes no such file;
* ``out_metrics``: JSON (an out, not a DVC metric: counts and time, not quality) —
  ``mesh_vertices``, ``mesh_faces``, ``points``, ``export_s``.

The mesh, the point cloud and the method's files are logged to the MLflow run of the model (``export/``).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import trimesh
from skimage import measure

from nerf_pipeline import methods, trained_folder
from nerf_pipeline.config import Config
from nerf_pipeline.runtime import atomic, tracking
from nerf_pipeline.runtime.progress import Progress
from nerf_pipeline.scenes import ray_files

log = logging.getLogger(__name__)


def _padded_call(function, points: np.ndarray, chunk: int) -> np.ndarray:
    """``function(points)`` for at most ``chunk`` points ``[N, 3]``, padded to ``chunk`` so that a
    compiled function sees one shape; its output for the ``N`` points."""
    padded = np.zeros((chunk, 3), np.float32)
    padded[:len(points)] = points
    return np.asarray(function(padded))[:len(points)]


def density_grid(method, resolution: int, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """The method's density (``methods.Method.density``) at ``resolution``³ points spanning its box
    (``extent``): ``(sigma [n, n, n] float32 indexed [x, y, z], grid_points [n] float32`` (the coordinates
    along each axis)). Points are made a chunk at a time: at 512³ all of them would take 1.6 GB."""
    bound = method.extent()
    grid_points = np.linspace(-bound, bound, resolution, dtype=np.float32)
    density = method.density
    total = resolution ** 3
    sigma = np.empty(total, np.float32)
    with Progress(math.ceil(total / chunk), "sampling density", "chunks") as progress:
        for done, start in enumerate(range(0, total, chunk), 1):
            ix, iy, iz = np.unravel_index(np.arange(start, min(start + chunk, total)), (resolution,) * 3)
            points = np.stack([grid_points[ix], grid_points[iy], grid_points[iz]], axis=-1)
            sigma[start:start + len(points)] = _padded_call(density, points, chunk)
            progress(done)
    return sigma.reshape((resolution,) * 3), grid_points


def mean_view_direction(poses: np.ndarray) -> np.ndarray:
    """Unit ``[3]``: the mean of the cameras' viewing directions (their -z axes, OpenGL), or straight
    down when they cancel out (cameras all around a sphere)."""
    mean = (-np.asarray(poses, np.float64)[:, :3, 2]).mean(axis=0)
    norm = np.linalg.norm(mean)
    return (mean / norm if norm > 1e-3 else np.array([0.0, 0.0, -1.0])).astype(np.float32)


def extract_mesh(sigma: np.ndarray, grid_points: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Marching cubes on ``sigma [n, n, n]`` (indexed [x, y, z] at ``grid_points [n]`` on each axis):
    ``(vertices [V, 3] float32 world units, faces [F, 3] int64)``, faces wound to face lower density;
    both empty when the density never crosses ``level``."""
    if not sigma.min() < level < sigma.max():
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int64)
    spacing = float(grid_points[1] - grid_points[0])
    vertices, faces, _, _ = measure.marching_cubes(sigma, level=level, spacing=(spacing,) * 3)
    # skimage winds faces towards increasing values; a solid's outside is where density falls.
    return (vertices + grid_points[0]).astype(np.float32), faces[:, ::-1].astype(np.int64)


def vertex_colours(method, vertices: np.ndarray, direction: np.ndarray, chunk: int) -> np.ndarray:
    """The method's colour (``methods.Method.colors``) at each vertex ``[V, 3]`` seen along ``direction [3]``:
    ``[V, 3]`` float32."""
    directions = np.broadcast_to(np.asarray(direction, np.float32), (chunk, 3))

    def colour(points):
        return method.colors(points, directions)

    pieces = [_padded_call(colour, vertices[start:start + chunk], chunk) for start in range(0, len(vertices), chunk)]
    return np.concatenate(pieces) if pieces else np.zeros((0, 3), np.float32)


def _write(path, geometry, file_type: str) -> None:
    with atomic.atomic_path(path) as tmp:
        geometry.export(tmp, file_type=file_type)


def write_method_files(method, folder) -> list[Path]:
    """Replace ``folder`` (atomically: all or nothing) with the method's own export files
    (``methods.Method.export_files``) and a ``README.txt`` saying what they are; the files' paths."""
    folder = Path(folder)
    with atomic.atomic_dir(folder) as tmp:
        names = list(method.export_files(tmp))
        if names:
            readme = (f"The {method.name} model's own files: {', '.join(names)}.\n"
                      + ("splats.ply is the Gaussians in the layout of 3DGS's PLY files: open it in a Gaussian "
                         "splat viewer (SuperSplat, the SIBR viewer, ...).\n" if "splats.ply" in names else ""))
        else:
            readme = (f"The {method.name} method has no files of its own to export: its geometry is the mesh "
                      "(mesh.ply, mesh.glb) and the point cloud (points.ply) beside this folder.\n")
        (tmp / "README.txt").write_text(readme)
    return [folder / name for name in names]


def run(cfg: Config, *, in_model, in_rays, out_mesh, out_mesh_glb, out_points, out_splats, out_metrics) -> dict:
    e = cfg.export
    start = time.perf_counter()
    train = ray_files.load(in_rays, "train")
    method = methods.load(in_model, train_part=train, chunk_rays=cfg.evaluate.chunk_rays,
                          jit_compile=cfg.active.jit_compile)
    try:
        # (XLA makes the hash grid's density about 6x faster on a CPU: 350 k against 60 k points/s)
        sigma, grid_points = density_grid(method, e.resolution, e.chunk_points)
        vertices, faces = extract_mesh(sigma, grid_points, e.density_threshold)
    except NotImplementedError:  # a method without a density field (Gaussians): no mesh
        log.warning("the %s method has no density field: the mesh is empty", method.name)
        sigma, vertices, faces = None, np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int64)
    if not len(vertices) and sigma is not None:
        # Not an error: a short experiment's model still gets evaluated and rendered; the mesh is empty.
        log.warning("the density never reaches export.density_threshold (%g) in the scene's box (it spans %.3g to "
                    "%.3g): the mesh is empty; lower the threshold or train longer", e.density_threshold,
                    sigma.min(), sigma.max())
    poses = method.training_poses()  # refined where training corrected them
    colours = vertex_colours(method, vertices, mean_view_direction(poses), e.chunk_points)
    mesh = trimesh.Trimesh(vertices, faces, vertex_colors=np.round(colours * 255).astype(np.uint8), process=False)
    points, point_colours = method.points(train, e.num_points, e.min_opacity, cfg.seed)
    cloud = trimesh.PointCloud(points, colors=np.round(point_colours * 255).astype(np.uint8))
    with tracking.pipeline_run(cfg, Path(in_model) / trained_folder.RUN_FILE) as run:
        _write(out_mesh, mesh, "ply")
        _write(out_mesh_glb, trimesh.Scene(mesh), "glb")
        _write(out_points, cloud, "ply")
        method_files = write_method_files(method, out_splats)
        export_s = time.perf_counter() - start
        metrics = {"mesh_vertices": len(vertices), "mesh_faces": len(faces), "points": len(points),
                   "export_s": export_s}
        atomic.write_json(out_metrics, metrics)
        run.log_metrics({"export/mesh_vertices": len(vertices), "export/mesh_faces": len(faces),
                         "export/points": len(points), "time/export_s": export_s})
        for path in (out_mesh, out_mesh_glb, out_points, *method_files):
            run.log_artifact(str(path), artifact_path="export")
    log.info("wrote a mesh of %d vertices and %d faces (%s, %s) and %d points (%s) in %.1f s", len(vertices),
             len(faces), out_mesh, out_mesh_glb, len(points), out_points, export_s)
    return metrics

"""The export stage: marching cubes on a known density, and the mesh and point cloud of a model of the
built-in scene checked against the scene's analytic surfaces."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import pytest
import trimesh
from conftest import run_data_stages, tiny_params

from nerf_pipeline import config
from nerf_pipeline.scenes import synthetic
from nerf_pipeline.stages import export, train


def test_marching_cubes_finds_a_sphere_with_its_faces_outward():
    grid_points = np.linspace(-1.0, 1.0, 48, dtype=np.float32)
    x, y, z = np.meshgrid(grid_points, grid_points, grid_points, indexing="ij")
    radius = np.sqrt(x**2 + y**2 + z**2)
    sigma = np.where(radius < 0.6, 100.0, 0.0).astype(np.float32)  # a solid ball of density 100
    vertices, faces = export.extract_mesh(sigma, grid_points, 50.0)
    spacing = grid_points[1] - grid_points[0]
    assert np.abs(np.linalg.norm(vertices, axis=-1) - 0.6).max() < spacing
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    outward = np.einsum("ij,ij->i", mesh.face_normals, mesh.triangles_center)
    assert (outward > 0).mean() > 0.99


def test_no_surface_at_the_threshold_gives_an_empty_mesh():
    vertices, faces = export.extract_mesh(np.ones((8, 8, 8), np.float32), np.linspace(-1, 1, 8), 5.0)
    assert vertices.shape == (0, 3) and faces.shape == (0, 3)


def test_the_mean_view_direction():
    looking_down = np.eye(4)[None].repeat(2, axis=0)  # OpenGL cameras look along -z
    np.testing.assert_allclose(export.mean_view_direction(looking_down), [0, 0, -1])
    opposite = looking_down.copy()
    opposite[1, :3, 2] = [0, 0, -1]
    np.testing.assert_allclose(export.mean_view_direction(opposite), [0, 0, -1])  # cancelled out: straight down


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A model of the built-in scene trained for a minute (40 views of 40 px), exported."""
    folder = tmp_path_factory.mktemp("export")
    params = tiny_params(epochs=2)
    params["synthetic"].update(num_views=40, image_size=40)
    params["presets"]["hashgrid"]["steps_per_epoch"] = 100
    params["export"].update(resolution=64, density_threshold=5.0, num_points=20000)
    cfg = config.from_dict(params)
    run_data_stages(folder, params)
    outs = {name: folder / name for name in ("mesh.ply", "mesh.glb", "points.ply", "export.json")}
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("DVC_ROOT", str(folder))  # the MLflow store goes to folder/mlflow.db
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        train.run(cfg, in_rays=folder / "rays", out_model=folder / "model", out_metrics=folder / "train.json",
                  out_history=folder / "history.csv", out_steps=folder / "steps.csv",
                  out_checkpoint=folder / "checkpoint")
        metrics = export.run(cfg, in_model=folder / "model", in_rays=folder / "rays", out_mesh=outs["mesh.ply"],
                             out_mesh_glb=outs["mesh.glb"], out_points=outs["points.ply"],
                             out_splats=folder / "splats", out_metrics=outs["export.json"])
    return outs, metrics


@pytest.mark.slow
def test_the_mesh_lies_on_the_scenes_surfaces(exported):
    outs, metrics = exported
    mesh = trimesh.load(outs["mesh.ply"], process=False)
    assert (len(mesh.vertices), len(mesh.faces)) == (metrics["mesh_vertices"], metrics["mesh_faces"]) > (1000, 1000)
    assert json.loads(outs["export.json"].read_text()) == metrics
    assert mesh.visual.vertex_colors.shape == (len(mesh.vertices), 4)
    glb = trimesh.load(outs["mesh.glb"]).to_geometry()
    assert len(glb.faces) == len(mesh.faces)

    distance = synthetic.surface_distance(mesh.vertices)
    spacing = 3.0 / 63  # the grid's step: 64 points over the box [-1.5, 1.5]
    assert np.median(distance) < spacing and np.mean(distance < 2 * spacing) > 0.7, np.percentile(distance, [50, 90])
    # Its bounding box is the scene's: the base from x, y = -1 to 1 and z = -0.55, up to the pillar's top at 0.7.
    np.testing.assert_allclose(mesh.bounds, [[-1.0, -1.0, -0.55], [1.0, 1.0, 0.7]], atol=2 * spacing)


@pytest.mark.slow
def test_the_point_cloud_lies_on_the_scenes_surfaces(exported):
    outs, metrics = exported
    cloud = trimesh.load(outs["points.ply"])
    assert len(cloud.vertices) == metrics["points"] > 1000
    # The expected depth of a model trained for a minute: most points near a surface, not on it.
    distance = synthetic.surface_distance(cloud.vertices)
    assert np.median(distance) < 0.07 and np.mean(distance < 0.15) > 0.8, np.percentile(distance, [50, 80])
    colours = np.asarray(cloud.colors)[:, :3].astype(np.float32)
    assert colours.std() > 20  # coloured by the scene, not one grey


def test_a_nerf_exports_no_files_of_its_own_but_a_readme(tmp_path):
    from nerf_pipeline.methods.nerf import NeRFMethod

    assert export.write_method_files(NeRFMethod(model=None), tmp_path / "splats") == []  # (its files need no model)
    assert sorted(p.name for p in (tmp_path / "splats").iterdir()) == ["README.txt"]
    assert "mesh" in (tmp_path / "splats" / "README.txt").read_text()


def test_splats_export_their_ply_in_3dgs_layout(tmp_path, monkeypatch):
    """The export stage of a (tiny, untrained) splats model writes ``export/splats/splats.ply``, which plyfile
    reads with 3DGS's properties in 3DGS's order, and an empty mesh."""
    plyfile = pytest.importorskip("plyfile")
    from conftest import write_rays

    from nerf_pipeline import trained_folder
    from nerf_pipeline.splats import gaussians
    from nerf_pipeline.splats.method import SplatsMethod

    rays = tmp_path / "rays"
    write_rays(rays, num_views=4, image_size=16, num_val=1)
    rng = np.random.default_rng(0)
    arrays = gaussians.initial_arrays(rng.uniform(-0.5, 0.5, (20, 3)), rng.uniform(0, 1, (20, 3)), 0.5)
    method = SplatsMethod(gaussians.Gaussians(arrays), 0.0, 1.5)
    model = tmp_path / "model"
    model.mkdir()
    trained_folder.write_method(model, method.name)
    method.save(model)
    params = tiny_params()
    params["export"].update(resolution=16, num_points=50)
    cfg = config.from_dict(params)
    logged = []

    class Run:  # no MLflow run to log into (no train stage ran): note what would be logged
        log_metrics = staticmethod(lambda metrics: None)
        log_artifact = staticmethod(lambda path, artifact_path=None: logged.append(Path(path).name))

    monkeypatch.setattr(export.tracking, "pipeline_run", lambda cfg, run_file: contextlib.nullcontext(Run()))
    out = tmp_path / "export"
    metrics = export.run(cfg, in_model=model, in_rays=rays, out_mesh=out / "mesh.ply", out_mesh_glb=out / "mesh.glb",
                         out_points=out / "points.ply", out_splats=out / "splats", out_metrics=out / "export.json")
    assert metrics["mesh_faces"] == 0 and "splats.ply" in logged
    assert sorted(p.name for p in (out / "splats").iterdir()) == ["README.txt", "splats.ply"]
    vertex = plyfile.PlyData.read(str(out / "splats" / "splats.ply"))["vertex"]
    assert [p.name for p in vertex.properties] == (
        ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{i}" for i in range(45)]
        + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])
    assert all(p.val_dtype in ("f4", "float32", "float") for p in vertex.properties)
    assert vertex.count == 20
    np.testing.assert_allclose(np.stack([vertex["x"], vertex["y"], vertex["z"]], -1), arrays["means"], rtol=1e-6)
    np.testing.assert_allclose(vertex["opacity"], arrays["opacity_logits"], rtol=1e-6)

"""Small captures in the COLMAP and LLFF layouts, rendered from the built-in scene through known cameras.

Tests check that what the readers hand back (poses, intrinsics) makes rays that trace to the
written pixels. The writers of COLMAP's models and LLFF's ``poses_bounds.npy`` are here, not in the package,
which only reads them.
"""

from __future__ import annotations

import struct
from pathlib import Path

import imageio.v3 as iio
import numpy as np
from scenes import trace_views

from nerf_pipeline import camera
from nerf_pipeline.scenes import colmap

# per model: the params written, in COLMAP's order. Distortion coefficients are 0, so the pixels are
# a pinhole's and stay exact; (fx, fy, cx, cy) is off the image centre (14, 10) and fx != fy where the
# model allows it.
COLMAP_PARAMS = {
    "SIMPLE_PINHOLE": (30.0, 15.0, 9.0),
    "PINHOLE": (30.0, 24.0, 15.0, 9.0),
    "SIMPLE_RADIAL": (30.0, 15.0, 9.0, 0.0),
    "RADIAL": (30.0, 15.0, 9.0, 0.0, 0.0),
    "OPENCV": (30.0, 24.0, 15.0, 9.0, 0.0, 0.0, 0.0, 0.0),
    "OPENCV_FISHEYE": (30.0, 24.0, 15.0, 9.0, 0.0, 0.0, 0.0, 0.0),  # refused by colmap.intrinsics
}


def quaternion(rotation: np.ndarray) -> np.ndarray:
    """The unit Hamilton quaternion ``(w, x, y, z)`` [4] of a rotation matrix, with ``w >= 0``.

    It is the eigenvector of the largest eigenvalue of a symmetric 4x4 matrix made from the
    rotation (Bar-Itzhack's method), so no case analysis is needed.
    """
    (xx, xy, xz), (yx, yy, yz), (zx, zy, zz) = rotation
    k = np.array([
        [xx + yy + zz, zy - yz, xz - zx, yx - xy],
        [zy - yz, xx - yy - zz, xy + yx, xz + zx],
        [xz - zx, xy + yx, yy - xx - zz, yz + zy],
        [yx - xy, xz + zx, yz + zy, zz - xx - yy],
    ]) / 3.0
    _, vectors = np.linalg.eigh(k)
    q = vectors[:, -1]
    return q if q[0] >= 0 else -q


def sample_points(poses, height, width, intrinsics, rgb, depth, count, seed):
    """``(points [count, 3] float64, colors [count, 3] uint8)``: surface points seen by the views' pixels."""
    origins, directions = camera.generate_rays(poses, height, width, intrinsics)
    hits = np.flatnonzero(depth.reshape(-1) > 0)
    chosen = np.random.default_rng(seed).choice(hits, size=min(count, len(hits)), replace=False)
    origins, directions = origins.reshape(-1, 3)[chosen], directions.reshape(-1, 3)[chosen]
    points = origins.astype(np.float64) + depth.reshape(-1)[chosen, None] * directions.astype(np.float64)
    return points, (rgb.reshape(-1, 3)[chosen] * 255 + 0.5).astype(np.uint8)


def write_images(folder: Path, rgb: np.ndarray) -> list[str]:
    """``folder/images/frame_XXX.png``, one per view; their names."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    names = [f"frame_{i:03d}.png" for i in range(len(rgb))]
    for name, image in zip(names, rgb):
        iio.imwrite(folder / "images" / name, (image * 255 + 0.5).astype(np.uint8))
    return names


def write_colmap_capture(folder: Path, num_views=8, height=20, width=28, model="PINHOLE", binary=False,
                         seed=0) -> dict:
    """A COLMAP capture: ``images/frame_XXX.png`` and the model in ``sparse/0/`` (text or binary).

    Image ids run backwards (the last frame is image 1) and the images are written in id order,
    so a reader must sort by name. Returns ``poses`` [N, 4, 4] float64 (OpenGL camera-to-world),
    ``intrinsics`` (fx, fy, cx, cy), ``params``, ``rgb``, ``depth``, ``names``, ``points``, ``colors``.
    """
    folder = Path(folder)
    poses = camera.hemisphere_poses(num_views, 4.0, seed).astype(np.float64)
    params = COLMAP_PARAMS[model]
    one_focal = model.startswith("SIMPLE_") or model == "RADIAL"  # f, cx, cy, ... rather than fx, fy, cx, cy, ...
    fx, fy, cx, cy = (params[0], params[0], params[1], params[2]) if one_focal else params[:4]
    rgb, depth = trace_views(poses, height, width, np.array([fx, fy, cx, cy]))
    names = write_images(folder, rgb)
    images = []
    for i, (pose, name) in enumerate(zip(poses, names)):
        opencv = pose @ np.diag([1.0, -1.0, -1.0, 1.0])  # OpenGL's y up, z back -> OpenCV's y down, z forward
        world_to_camera = np.linalg.inv(opencv)
        images.append(colmap.Image(num_views - i, name, 1, quaternion(world_to_camera[:3, :3]), world_to_camera[:3, 3]))
    images.sort(key=lambda image: image.image_id)
    cameras = {1: colmap.Camera(1, model, width, height, np.array(params))}
    points, colors = sample_points(poses, height, width, (fx, fy, cx, cy), rgb, depth, 300, seed)
    writer = write_colmap_binary_model if binary else write_colmap_text_model
    writer(folder / "sparse" / "0", cameras, images, points, colors)
    return {"poses": poses, "intrinsics": (fx, fy, cx, cy), "params": params, "rgb": rgb, "depth": depth,
            "names": names, "points": points, "colors": colors}


def write_llff_capture(folder: Path, num_views=8, height=20, width=28, focal=30.0, seed=0) -> dict:
    """An LLFF capture: ``images/frame_XXX.png`` and ``poses_bounds.npy`` with each view's near and far
    depth (along the viewing direction) from its rendered depth. Returns ``poses`` [N, 4, 4] float64
    (OpenGL camera-to-world), ``hwf`` [N, 3], ``bounds`` [N, 2], ``rgb``, ``depth``, ``names``."""
    folder = Path(folder)
    poses = camera.hemisphere_poses(num_views, 4.0, seed).astype(np.float64)
    intrinsics = np.array([focal, focal, width / 2, height / 2])  # LLFF's principal point is the image centre
    rgb, depth = trace_views(poses, height, width, intrinsics)
    names = write_images(folder, rgb)
    _, directions = camera.generate_rays(poses, height, width, intrinsics)
    forward = -poses[:, None, None, :3, 2]
    z_depth = np.where(depth > 0, depth * np.sum(directions * forward, axis=-1), np.nan)
    bounds = np.stack([np.nanmin(z_depth, axis=(1, 2)), np.nanmax(z_depth, axis=(1, 2))], axis=-1)
    hwf = np.tile([float(height), float(width), focal], (num_views, 1))
    write_poses_bounds(folder / "poses_bounds.npy", poses, hwf, bounds)
    return {"poses": poses, "hwf": hwf, "bounds": bounds, "rgb": rgb, "depth": depth, "names": names}


def object_masks(depth: np.ndarray) -> np.ndarray:
    """``[N, H, W]`` bool: the pixels that see the built-in scene's surface (as a turntable capture's masks
    keep the object)."""
    return np.asarray(depth) > 0


def write_masks(folder: Path, names: list[str], masks: np.ndarray, extension: str = ".png") -> list[Path]:
    """``folder/masks/<stem><extension>``, one grey mask per image name (255 where ``masks [N, H, W]`` keeps);
    their paths."""
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    paths = [folder / "masks" / f"{Path(name).stem}{extension}" for name in names]
    for path, mask in zip(paths, masks):
        iio.imwrite(path, np.where(mask, 255, 0).astype(np.uint8))
    return paths


# -- writers of the readers' formats (the package only reads them) --------------------------------------------------

MODEL_IDS = {name: model_id for model_id, (name, _) in colmap.MODELS.items()}  # COLMAP's binary camera ids


def write_colmap_text_model(folder, cameras: dict[int, colmap.Camera], images: list[colmap.Image],
                            points: np.ndarray, colors: np.ndarray) -> None:
    """``cameras.txt``, ``images.txt`` (empty 2D point lines) and ``points3D.txt`` (empty tracks) in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    numbers = lambda values: " ".join(repr(float(v)) for v in values)  # noqa: E731 (repr round-trips)
    (folder / "cameras.txt").write_text("# CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]\n" + "".join(
        f"{c.camera_id} {c.model} {c.width} {c.height} {numbers(c.params)}\n" for c in cameras.values()))
    (folder / "images.txt").write_text("# IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME\n"
                                       "#   POINTS2D[] as (X, Y, POINT3D_ID)\n" + "".join(
        f"{i.image_id} {numbers(i.qvec)} {numbers(i.tvec)} {i.camera_id} {i.name}\n\n" for i in images))
    (folder / "points3D.txt").write_text("# POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[]\n" + "".join(
        f"{index + 1} {numbers(point)} {' '.join(map(str, color))} 0.0\n"
        for index, (point, color) in enumerate(zip(np.asarray(points), np.asarray(colors, dtype=np.uint8)))))


def write_colmap_binary_model(folder, cameras: dict[int, colmap.Camera], images: list[colmap.Image],
                              points: np.ndarray, colors: np.ndarray) -> None:
    """``cameras.bin``, ``images.bin`` (no 2D points) and ``points3D.bin`` (empty tracks) in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cameras.bin").write_bytes(struct.pack("<Q", len(cameras)) + b"".join(
        struct.pack(f"<iiQQ{len(c.params)}d", c.camera_id, MODEL_IDS[c.model], c.width, c.height, *c.params)
        for c in cameras.values()))
    (folder / "images.bin").write_bytes(struct.pack("<Q", len(images)) + b"".join(
        struct.pack("<i7di", i.image_id, *i.qvec, *i.tvec, i.camera_id) + i.name.encode() + b"\0"
        + struct.pack("<Q", 0) for i in images))
    (folder / "points3D.bin").write_bytes(struct.pack("<Q", len(points)) + b"".join(
        struct.pack("<Q3d3BdQ", index + 1, *point, *color, 0.0, 0)
        for index, (point, color) in enumerate(zip(np.asarray(points), np.asarray(colors, dtype=np.uint8)))))


def write_poses_bounds(path, c2w: np.ndarray, hwf: np.ndarray, bounds: np.ndarray) -> None:
    """Write ``poses_bounds.npy`` [N, 17] float64 from OpenGL camera-to-world [N, 4, 4] (or [N, 3, 4]),
    ``(height, width, focal)`` [N, 3] and ``(near, far)`` [N, 2]: the inverse of ``llff.read_poses_bounds``."""
    c2w = np.asarray(c2w, dtype=np.float64)
    right, up, back = c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2]
    matrices = np.stack([-up, right, back, c2w[:, :3, 3], np.asarray(hwf, dtype=np.float64)], axis=-1)
    rows = np.concatenate([matrices.reshape(len(c2w), 15), np.asarray(bounds, dtype=np.float64)], axis=1)
    np.save(Path(path), rows)

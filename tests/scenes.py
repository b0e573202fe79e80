"""Small scenes written in the NeRF-synthetic and instant-ngp/nerfstudio layouts, from the built-in renderer.

Views are traced with known intrinsics, so tests can check that loaders hand back the same
pixels and rays.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import imageio.v3 as iio
import numpy as np

from nerf_pipeline import camera
from nerf_pipeline.scenes import synthetic


def trace_views(poses, height, width, intrinsics):
    """``(rgb [N, H, W, 3], depth [N, H, W])`` of the built-in scene through the given cameras."""
    origins, directions = camera.generate_rays(poses, height, width, intrinsics)
    return synthetic.trace(origins, directions)


def write_blender(folder: Path, num_train=6, num_val=2, num_test=1, size=24, camera_angle_x=0.69, seed=0):
    """A NeRF-synthetic folder: RGBA PNGs whose background is garbage under alpha 0."""
    folder.mkdir(parents=True, exist_ok=True)
    total = num_train + num_val + num_test
    poses = camera.hemisphere_poses(total, 4.0, seed)
    focal = 0.5 * size / math.tan(0.5 * camera_angle_x)
    rgb, depth = trace_views(poses, size, size, focal)
    rng = np.random.default_rng(seed)
    start = 0
    for part, count in (("train", num_train), ("val", num_val), ("test", num_test)):
        (folder / part).mkdir(exist_ok=True)
        frames = []
        for i in range(start, start + count):
            alpha = (depth[i] > 0).astype(np.float32)
            colour = np.where(alpha[..., None] > 0, rgb[i], rng.uniform(size=rgb[i].shape))  # hidden by alpha
            rgba = np.concatenate([colour, alpha[..., None]], axis=-1)
            iio.imwrite(folder / part / f"r_{i}.png", (rgba * 255 + 0.5).astype(np.uint8))
            frames.append({"file_path": f"./{part}/r_{i}", "rotation": 0.0, "transform_matrix": poses[i].tolist()})
        (folder / f"transforms_{part}.json").write_text(json.dumps({"camera_angle_x": camera_angle_x,
                                                                    "frames": frames}))
        start += count
    return {"poses": poses, "rgb": rgb, "depth": depth, "focal": focal}


def write_ngp(folder: Path, num_views=6, height=20, width=28, intrinsics=(30.0, 24.0, 15.0, 9.0), seed=0,
              extension="png", per_frame=False, offset=(5.0, -3.0, 2.0), scale=2.5):
    """An instant-ngp/nerfstudio capture: non-square, fx != fy, off-centre principal point, images in a
    subfolder; the cameras are moved off the origin and scaled, as a real capture's would be."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "images").mkdir(exist_ok=True)
    poses = camera.hemisphere_poses(num_views, 4.0, seed)
    rgb, depth = trace_views(poses, height, width, np.asarray(intrinsics))
    fx, fy, cx, cy = intrinsics
    world = np.array(poses, dtype=np.float64)
    world[:, :3, 3] = world[:, :3, 3] * scale + np.asarray(offset)  # the capture's own frame
    frames = []
    for i in range(num_views):
        name = f"images/frame_{i:03d}.{extension}"
        iio.imwrite(folder / name, (rgb[i] * 255 + 0.5).astype(np.uint8))
        frame = {"file_path": name, "transform_matrix": world[i].tolist()}
        if per_frame:
            frame.update(fl_x=fx, fl_y=fy, cx=cx, cy=cy, w=width, h=height)
        frames.append(frame)
    meta = {"aabb_scale": 1, "frames": frames}
    if not per_frame:
        meta.update(fl_x=fx, fl_y=fy, cx=cx, cy=cy, w=width, h=height)
    (folder / "transforms.json").write_text(json.dumps(meta))
    return {"poses": poses, "world_poses": world, "rgb": rgb, "depth": depth}

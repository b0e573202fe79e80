"""The rays folder that stage ``rays`` writes and ``train``, ``evaluate`` and ``render`` read.

A folder with ``train.npz`` and ``val.npz``:

==============  =======================  ==============================================
key             shape, dtype             meaning
==============  =======================  ==============================================
ray_origins     [V, H, W, 3] float32     ray start (the camera centre)
ray_directions  [V, H, W, 3] float32     unit direction in world coordinates
rgb             [V, H, W, 3] float32     target colour in [0, 1]
depth           [V, H, W] float32        optional ground-truth depth (0: no surface)
view_ids        [V] int32                the views' indices in the scene
poses           [V, 4, 4] float32        their camera-to-world matrices
intrinsics      [V, 4] float32           per view fx, fy, cx, cy (pixels)
near, far       [] float32               sampling bounds
unbounded       [] bool                  the scene's background reaches far (see scene.py)
==============  =======================  ==============================================

That is 36 bytes per pixel (40 with depth): 36 MB for 100 views of 100×100. The Keras
example instead materialises the encoded samples (32 samples × 99 features × 4 bytes, about
12.7 KB per pixel, 127 MB per 100×100 image); samples are drawn during training here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from nerf_pipeline import camera
from nerf_pipeline.runtime.errors import DataError
from nerf_pipeline.scenes.scene import Scene, read_npz

PARTS = ("train", "val")


def view_rays(scene: Scene, view_ids) -> dict:
    """The arrays of one part (see the module docstring) for the given views."""
    view_ids = np.asarray(view_ids, dtype=np.int32)
    poses = scene.poses[view_ids]
    intrinsics = scene.intrinsics[view_ids]
    ray_origins, ray_directions = camera.generate_rays(poses, scene.height, scene.width, intrinsics)
    arrays = dict(ray_origins=ray_origins, ray_directions=ray_directions, rgb=scene.images[view_ids],
                  view_ids=view_ids, poses=poses, intrinsics=intrinsics,
                  near=np.float32(scene.near), far=np.float32(scene.far), unbounded=np.bool_(scene.unbounded))
    if scene.depth is not None:
        arrays["depth"] = scene.depth[view_ids]
    return arrays


def read_split(path, num_views: int) -> dict:
    """``{"train": [view], "val": [view]}`` of a split file, checked against the scene's view count."""
    try:
        split = json.loads(Path(path).read_text())
        parts = {part: [int(v) for v in split[part]] for part in PARTS}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{path}: not a split file with 'train' and 'val' view lists ({e}); "
                        "run the split stage again.") from None
    for part, views in parts.items():
        if not views or min(views) < 0 or max(views) >= num_views:
            raise DataError(f"{path}: '{part}' must list view indices in [0, {num_views}); it was made for "
                            "another scene. Run the split stage again.")
    return parts


def load(path, part: str) -> dict:
    """One part (``train`` or ``val``) of a rays folder, as a dict of arrays."""
    arrays = read_npz(Path(path) / f"{part}.npz", required=("ray_origins", "ray_directions", "rgb", "view_ids",
                                                              "poses", "intrinsics", "near", "far"))
    arrays.setdefault("unbounded", np.bool_(False))
    return arrays

"""Stage ``rays``: the views of each part as the model trains on them, with their cameras.

Reads ``in_scene`` (images at the source's resolution), ``in_cameras`` (the poses stage's posed
cameras) and ``in_split``. Writes ``out_rays``, a folder with one sub-folder per part (train, val,
and test when the split has one; layout in ``scenes/ray_files.py``): each view undistorted (when
its camera has lens distortion) and area-downscaled by ``data.downscale``, as uint8 colours, and
its pinhole camera. Ground-truth depth (the built-in scene's) is downscaled over the pixels that
see a surface only, 0 where most of a block sees none (``images.downscale_depth``). A scene's masks
follow their views' undistortion and downscaling, a pixel kept only if all of its colour came from
kept pixels (``masks.prepare_mask``). Views are processed one at a time, so memory does not grow
with the scene. A capture's sparse points (structure from motion, COLMAP: ``points`` and
``point_colors`` of ``in_cameras``) are scene data like the views: they go to ``points.npz`` beside the
parts (``ray_files.write_sparse_points``), for a method that starts from them (``ray_files.sparse_points``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from nerf_pipeline.config import Config
from nerf_pipeline.errors import DataError
from nerf_pipeline.runtime import atomic
from nerf_pipeline.runtime.progress import Progress
from nerf_pipeline.scenes import ray_files
from nerf_pipeline.scenes.images import downscale_depth, prepare_view
from nerf_pipeline.scenes.masks import prepare_mask
from nerf_pipeline.scenes.scene import Cameras, Scene, read_npz

log = logging.getLogger(__name__)


def read_split(path, num_views: int) -> dict:
    """``{"train": [view], "val": [view], "test"?: [view]}`` of a split file, checked against the view count."""
    try:
        split = json.loads(Path(path).read_text())
        parts = {part: [int(v) for v in split[part]] for part in ray_files.PARTS if part in split}
        if "train" not in parts or "val" not in parts:
            raise KeyError("train" if "train" not in parts else "val")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{path}: not a split file with 'train' and 'val' view lists ({e}); "
                        "run the split stage again.") from None
    for part, views in parts.items():
        if not views or min(views) < 0 or max(views) >= num_views:
            raise DataError(f"{path}: '{part}' must list view indices in [0, {num_views}); it was made for "
                            "another scene. Run the split stage again.")
    return parts


def run(cfg: Config, *, in_scene, in_cameras, in_split, out_rays) -> None:
    scene = Scene.open(in_scene)
    cameras = Cameras.from_arrays(read_npz(in_cameras, ("names", "intrinsics", "distortion", "poses")),
                                  str(in_cameras))
    if cameras.num_views != scene.num_views:
        raise DataError(f"{in_cameras}: has {cameras.num_views} views but {in_scene} has {scene.num_views}; run the "
                        "poses stage again.")
    split = read_split(in_split, scene.num_views)
    factor = cfg.data.downscale
    height, width = scene.height // factor, scene.width // factor
    if min(height, width) < 2:
        raise DataError(f"params.yaml: 'data.downscale' is {factor} but the views are {scene.width}x{scene.height}; "
                        "the downscaled views would be empty.")
    with atomic.atomic_dir(out_rays) as tmp:
        for part, views in split.items():
            writer = ray_files.PartWriter(tmp, part, len(views), height, width, scene.depth is not None,
                                          scene.masks is not None)
            intrinsics = []
            with Progress(len(views), f"{part} views", "views") as progress:
                for done, view in enumerate(views, 1):
                    image, view_intrinsics = prepare_view(scene.images[view], cameras.intrinsics[view],
                                                          cameras.distortion[view], factor)
                    depth = None if scene.depth is None else downscale_depth(scene.depth[view], factor)
                    mask = None if scene.masks is None else prepare_mask(
                        scene.masks[view], cameras.intrinsics[view], cameras.distortion[view], factor)
                    writer.add(image, depth, mask)
                    intrinsics.append(view_intrinsics)
                    progress(done)
            writer.finish(cameras.poses[views], intrinsics, views, cameras.near, cameras.far, cameras.unbounded)
            log.info("%s: %d views of %dx%d (%d rays)", part, len(views), width, height, len(views) * height * width)
        if cameras.points is not None and len(cameras.points):
            # in the poses' frame already: the rays folder carries the scene as trained on, points included
            ray_files.write_sparse_points(tmp, cameras.points, cameras.point_colors)

"""Stage ``rays``: precompute every pixel's ray once, for the train and the val views.

Reads ``in_scene`` (``scene.npz``) and ``in_split`` (``split.json``). Writes ``out_rays``, a folder
with ``train.npz`` and ``val.npz`` (layout in ``scenes/ray_files.py``: per pixel its ray origin,
unit direction and colour, float32, plus per view its pose and intrinsics).
"""

from __future__ import annotations

import logging
from pathlib import Path

from nerf_pipeline.config import Config
from nerf_pipeline.runtime import atomic
from nerf_pipeline.scenes import ray_files
from nerf_pipeline.scenes.scene import Scene

log = logging.getLogger(__name__)


def run(cfg: Config, *, in_scene, in_split, out_rays) -> None:
    scene = Scene.load(in_scene)
    split = ray_files.read_split(in_split, scene.num_views)
    with atomic.atomic_dir(out_rays) as tmp:
        for part in ray_files.PARTS:
            arrays = ray_files.view_rays(scene, split[part])
            atomic.save_npz(Path(tmp) / f"{part}.npz", **arrays)
            log.info("%s: %d views, %d rays", part, len(split[part]), arrays["rgb"].size // 3)

"""Stage ``download``: bring the scene that ``data.source`` names into one normalised file.

Writes ``out_scene`` (``scene.npz``, layout in ``scenes/scene.py``): images [N, H, W, 3] float32,
poses [N, 4, 4] float32, intrinsics [N, 4] float32, near/far [] float32, unbounded [] bool,
depth [N, H, W] float32 (synthetic only), the source's own split (NeRF-synthetic only).
"""

from __future__ import annotations

import logging

from nerf_pipeline.config import Config
from nerf_pipeline.scenes.scene import Scene
from nerf_pipeline.scenes.sources import load_scene

log = logging.getLogger(__name__)


def run(cfg: Config, *, out_scene) -> Scene:
    """Write ``out_scene`` from ``cfg.data.source``."""
    scene = load_scene(cfg)
    scene.save(out_scene)
    log.info("wrote %s: %d views of %dx%d, focal %.2f, near %.2f, far %.2f%s%s", out_scene, scene.num_views,
             scene.height, scene.width, float(scene.intrinsics[0, 0]), scene.near, scene.far,
             ", with depth" if scene.depth is not None else "", ", unbounded" if scene.unbounded else "")
    return scene

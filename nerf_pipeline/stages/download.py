"""Stage ``download``: bring the views that ``data.source`` names into one scene folder.

Writes ``out_scene`` (layout in ``scenes/scene.py``): ``images.npy`` [N, H, W, 3] uint8 at the
source's own resolution, ``cameras.npz`` (names, intrinsics, distortion, the poses if the source
has them, bounds, the source's own split and sparse points), ``depth.npy`` [N, H, W] float32 for
the built-in scene, ``masks.npy`` [N, H, W] uint8 for captures with masks (``scenes/masks.py``).
Views are read and written one at a time.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from nerf_pipeline.config import Config
from nerf_pipeline.runtime.progress import Progress
from nerf_pipeline.scenes.scene import write_views
from nerf_pipeline.scenes.sources import read_views

log = logging.getLogger(__name__)


def run(cfg: Config, *, out_scene) -> None:
    with tempfile.TemporaryDirectory(prefix="nerf-download-") as scratch:
        views = read_views(cfg, Path(scratch))
        with Progress(views.count, "writing views", "views") as progress:
            write_views(views, out_scene, progress)
    cameras = views.cameras
    log.info("wrote %s: %d views of %dx%d%s%s%s%s", out_scene, views.count, views.width, views.height,
             "" if cameras.poses is not None else ", no poses yet",
             ", with depth" if views.depth is not None else "", ", with masks" if views.mask is not None else "",
             ", unbounded" if cameras.unbounded else "")

"""Stage ``split``: a deterministic train/validation split of the scene's views.

Reads ``in_scene`` (``scene.npz``; only the number of views and its own split are used). Writes
``out_split`` (``split.json``):
``{"train": [view indices], "val": [view indices], "num_views": N}``. With
``split.order: last`` the first ``int(N * (1 - val_fraction))`` views train and the rest
validate, as in the Keras example; with ``shuffled`` the views are permuted by a
generator seeded with ``split.seed`` first. Indices are sorted within each part. A scene
that comes with its own split (NeRF-synthetic's ``transforms_train/val.json``) keeps it, and
the stage says so.
"""

from __future__ import annotations

import logging

import numpy as np

from nerf_pipeline.config import Config
from nerf_pipeline.runtime import atomic
from nerf_pipeline.runtime.errors import DataError
from nerf_pipeline.scenes.scene import Scene

log = logging.getLogger(__name__)


def split_views(num_views: int, val_fraction: float, order: str, seed: int) -> tuple[list[int], list[int]]:
    """``(train, val)`` view indices. Raises ``DataError`` if either part would be empty."""
    num_train = int(num_views * (1.0 - val_fraction))
    if num_train < 1 or num_train >= num_views:
        raise DataError(f"the scene has {num_views} views: too few for split.val_fraction = {val_fraction}, "
                        "which must leave at least one view to train on and one to validate on.")
    views = np.arange(num_views)
    if order == "shuffled":
        views = np.random.default_rng(seed).permutation(num_views)
    return sorted(int(v) for v in views[:num_train]), sorted(int(v) for v in views[num_train:])


def run(cfg: Config, *, in_scene, out_split) -> dict:
    scene = Scene.load(in_scene)
    if scene.split is not None:
        train, val = sorted(scene.split["train"]), sorted(scene.split["val"])
        how = "the scene's own split; split.* params are not used"
    else:
        train, val = split_views(scene.num_views, cfg.split.val_fraction, cfg.split.order, cfg.split.seed)
        how = cfg.split.order
    split = {"train": train, "val": val, "num_views": scene.num_views}
    atomic.write_json(out_split, split)
    log.info("wrote %s: %d train and %d val views (%s)", out_split, len(train), len(val), how)
    return split

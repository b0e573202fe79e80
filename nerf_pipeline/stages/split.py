"""Stage ``split``: a deterministic train/val(/test) split of the posed views.

Reads ``in_cameras`` (the poses stage's ``cameras.npz``; only the views, their registration and
the source's own split are used). Writes ``out_split`` (``split.json``): ``{"train": [views],
"val": [views], "test": [views] (only when the source has a test split), "num_views": N}``, view
indices sorted within each part, views that structure from motion left out in no part.

A source with its own split (NeRF-synthetic's ``transforms_{train,val,test}.json``) keeps it;
without a val part, its train views are split as below. Otherwise, with ``split.order: last``
the first ``int(n * (1 - val_fraction))`` views train and the rest validate, as in the Keras
example; with ``shuffled`` the views are permuted by a generator seeded with ``split.seed`` first;
with ``every_8th`` views 0, 8, 16, ... (their indices in the scene) validate and the rest train, the
held-out views of LLFF and mip-NeRF 360, so figures compare with published ones (``val_fraction`` is
not used).
"""

from __future__ import annotations

import logging

import numpy as np

from nerf_pipeline.config import Config
from nerf_pipeline.errors import DataError
from nerf_pipeline.runtime import atomic
from nerf_pipeline.scenes.scene import Cameras, read_npz

log = logging.getLogger(__name__)

HOLD_OUT_EVERY = 8  # split.order every_8th: LLFF's llffhold, mip-NeRF 360's test views


def split_views(views, val_fraction: float, order: str, seed: int) -> tuple[list[int], list[int]]:
    """``(train, val)`` of ``views`` (indices, or a count for ``range(count)``). Raises ``DataError``
    if either part would be empty."""
    views = np.arange(views) if isinstance(views, (int, np.integer)) else np.asarray(views)
    if order == "every_8th":
        held_out = views % HOLD_OUT_EVERY == 0
        if held_out.all() or not held_out.any():
            raise DataError(f"split.order every_8th holds out views 0, {HOLD_OUT_EVERY}, {2 * HOLD_OUT_EVERY}, ...; "
                            f"of the scene's views {views.tolist()[:10]}{' ...' if len(views) > 10 else ''} that "
                            f"leaves {'none to train on' if held_out.all() else 'none to validate on'}. "
                            "Use split.order shuffled or last.")
        return sorted(int(v) for v in views[~held_out]), sorted(int(v) for v in views[held_out])
    num_train = int(len(views) * (1.0 - val_fraction))
    if num_train < 1 or num_train >= len(views):
        raise DataError(f"the scene has {len(views)} views: too few for split.val_fraction = {val_fraction}, "
                        "which must leave at least one view to train on and one to validate on.")
    if order == "shuffled":
        views = views[np.random.default_rng(seed).permutation(len(views))]
    return sorted(int(v) for v in views[:num_train]), sorted(int(v) for v in views[num_train:])


def run(cfg: Config, *, in_cameras, out_split) -> dict:
    cameras = Cameras.from_arrays(read_npz(in_cameras, ("names", "intrinsics", "distortion", "poses")),
                                  str(in_cameras))
    posed = set(range(cameras.num_views)) if cameras.registered is None else set(np.flatnonzero(cameras.registered))
    own = {part: [v for v in views if v in posed] for part, views in (cameras.split or {}).items()}
    s = cfg.split
    if own.get("train") and own.get("val"):
        train, val = sorted(own["train"]), sorted(own["val"])
        how = "the scene's own split; split.* params are not used"
    elif own.get("train"):
        train, val = split_views(sorted(own["train"]), s.val_fraction, s.order, s.seed)
        how = (f"the scene's own train views, every {HOLD_OUT_EVERY}th for val" if s.order == "every_8th" else
               f"the scene's own train views, {s.val_fraction:.0%} of them for val ({s.order})")
    else:
        train, val = split_views(sorted(posed), s.val_fraction, s.order, s.seed)
        how = "views 0, 8, 16, ... for val (every_8th)" if s.order == "every_8th" else s.order
    split = {"train": train, "val": val, "num_views": cameras.num_views}
    if own.get("test"):
        split["test"] = sorted(own["test"])
    atomic.write_json(out_split, split)
    log.info("wrote %s: %d train, %d val%s views (%s)", out_split, len(train), len(val),
             f", {len(split['test'])} test" if "test" in split else "", how)
    return split

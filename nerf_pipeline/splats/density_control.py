"""Adaptive density control (Kerbl et al. 2023, §5): where the image still disagrees, add Gaussians; drop the
ones that do nothing. In numpy, between training steps.

Training accumulates, per Gaussian, the norm of the loss's gradient with respect to its projected mean in NDC
units (``grad_sum [N]``, over the ``count [N]`` steps that drew it) and the largest screen radius it was drawn at
(``max_radius [N]``, as a fraction of the image's longer side). Every ``every`` steps ``densify_and_prune``:

* the Gaussians whose mean gradient reaches ``grad_threshold`` are under-reconstructed: each small one (its largest
  scale at most ``dense_size``) is *cloned* (a copy at the same place: the two then move apart), each large one is
  *split* into two, drawn from the Gaussian itself as a distribution, each 1.6 times smaller;
* then every Gaussian (new ones included) almost transparent (opacity below ``min_opacity``), larger than
  ``max_world_size`` in the world, or (``max_screen_size`` given) drawn larger than that on screen is *pruned*.

Its result says for each new Gaussian which old one it comes from (``rows``) and whether it is new (``fresh``), so
that ``follow`` can carry the optimizer's moments along: a kept Gaussian keeps its own, a clone and a split's two
halves start from zero (as in 3DGS and gsplat).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from nerf_pipeline.splats.gaussians import NAMES, logit

SPLIT_SHRINK = 1.6  # a split Gaussian's halves are this many times smaller (3DGS: 0.8 x 2 halves)


@dataclasses.dataclass(frozen=True)
class Change:
    """What ``densify_and_prune`` did: ``rows [M]`` (int64: the old Gaussian each new one comes from), ``fresh [M]``
    (bool: a clone or a split's half) and the counts."""

    rows: np.ndarray
    fresh: np.ndarray
    cloned: int
    split: int
    pruned: int


def quaternion_matrices(quats: np.ndarray) -> np.ndarray:
    """Rotation matrices ``[N, 3, 3]`` of quaternions ``[N, 4]`` (w first; normalised here)."""
    q = np.asarray(quats, np.float64)
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    w, x, y, z = q.T
    return np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                     2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                     2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], axis=-1).reshape(-1, 3, 3)


def densify_and_prune(arrays: dict, grad_sum: np.ndarray, count: np.ndarray, max_radius: np.ndarray, *,
                      grad_threshold: float, dense_size: float, min_opacity: float, max_world_size: float,
                      max_screen_size: float | None, max_gaussians: int, rng: np.random.Generator
                      ) -> tuple[dict, Change]:
    """Clone, split and prune (the module's docstring) the Gaussians ``arrays`` (a value per ``NAMES``).

    Args:
        grad_sum, count, max_radius: [N] the statistics accumulated since the last call.
        grad_threshold: mean NDC gradient norm from which a Gaussian is densified (3DGS: 0.0002).
        dense_size: world size up to which a Gaussian is cloned, above which it is split.
        min_opacity, max_world_size, max_screen_size: the pruning thresholds (``max_screen_size`` None: off).
        max_gaussians: at most this many Gaussians before pruning: the candidates of largest gradient first.
        rng: draws the split halves' positions.

    Returns:
        the new arrays and the ``Change``.
    """
    n = len(arrays["means"])
    mean_grad = np.where(count > 0, grad_sum / np.maximum(count, 1), 0.0)
    chosen = (count > 0) & (mean_grad >= grad_threshold)
    scales = np.exp(arrays["log_scales"].astype(np.float64))
    small = scales.max(axis=1) <= dense_size
    # Each clone or split adds one Gaussian: keep the room there is, largest gradients first.
    room = max(max_gaussians - n, 0)
    if chosen.sum() > room:
        candidates = np.flatnonzero(chosen)
        keep = candidates[np.argsort(-mean_grad[candidates], kind="stable")[:room]]
        chosen = np.zeros(n, bool)
        chosen[keep] = True
    clone, split = np.flatnonzero(chosen & small), np.flatnonzero(chosen & ~small)
    kept = np.flatnonzero(~(chosen & ~small))
    rows = np.concatenate([kept, clone, split, split])
    fresh = np.concatenate([np.zeros(len(kept), bool), np.ones(len(clone) + 2 * len(split), bool)])
    out = {name: np.asarray(arrays[name])[rows].copy() for name in NAMES}

    if len(split):
        halves = slice(len(kept) + len(clone), len(rows))
        sigma = np.exp(out["log_scales"][halves].astype(np.float64))
        offsets = rng.normal(size=sigma.shape) * sigma
        rotations = quaternion_matrices(out["quats"][halves])
        out["means"][halves] = (out["means"][halves] + np.einsum("nij,nj->ni", rotations, offsets)).astype(np.float32)
        out["log_scales"][halves] = (out["log_scales"][halves] - np.log(SPLIT_SHRINK)).astype(np.float32)

    opacity = 1.0 / (1.0 + np.exp(-out["opacity_logits"].astype(np.float64)))
    prune = (opacity < min_opacity) | (np.exp(out["log_scales"].astype(np.float64)).max(axis=1) > max_world_size)
    if max_screen_size is not None:
        radius = np.where(fresh, 0.0, np.asarray(max_radius)[rows])
        prune |= radius > max_screen_size
    if prune.all():  # never none: keep the most opaque
        prune[np.argmax(opacity)] = False
    out = {name: value[~prune] for name, value in out.items()}
    change = Change(rows=rows[~prune], fresh=fresh[~prune], cloned=len(clone), split=len(split),
                    pruned=int(prune.sum()))
    return out, change


def follow(values: np.ndarray, change: Change) -> np.ndarray:
    """Per-Gaussian optimizer state ``values [N, ...]`` (a moment) carried through ``change``: a kept Gaussian's
    own, zeros for a new one."""
    moved = np.asarray(values)[change.rows]
    return np.where(change.fresh.reshape(-1, *([1] * (moved.ndim - 1))), np.zeros_like(moved), moved)


def reset_opacity(opacity_logits: np.ndarray, ceiling: float) -> np.ndarray:
    """Opacity logits with every opacity above ``ceiling`` lowered to it (3DGS's periodic reset: 0.01)."""
    return np.minimum(opacity_logits, logit(ceiling)).astype(np.float32)

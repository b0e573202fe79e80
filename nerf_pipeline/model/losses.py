"""The loss terms a NeRF's training adds to its MSE (``NeRF.objective``), built from the preset (``terms``).

A term is called with the model and the rendered batch (``NeRF.render_rays``' dict: ``weights``, ``t_vals``,
``deltas [R, S]``, ...) and returns a scalar: its weight times its regulariser. A new term is a class here, a
preset key for its weight and a line in ``terms``.
"""

from __future__ import annotations

import tensorflow as tf

from nerf_pipeline.model import rendering


class DistortionLoss:
    """``weight`` times the rays' mean distortion loss (mip-NeRF 360; ``rendering.distortion_loss``), each sample
    standing for ``[t - delta / 2, t + delta / 2]`` of its ray, measured in the space's ``normalized_distance``:
    small when a ray's weight sits in one short stretch, large when it is spread along it (floaters, haze)."""

    def __init__(self, weight: float):
        self.weight = float(weight)

    def __call__(self, model, out):
        t_vals, deltas = out["t_vals"], out["deltas"]
        s_start = model.space.normalized_distance(t_vals - 0.5 * deltas, model.near, model.far)
        s_end = model.space.normalized_distance(t_vals + 0.5 * deltas, model.near, model.far)
        return self.weight * tf.reduce_mean(rendering.distortion_loss(out["weights"], s_start, s_end))


def terms(distortion_weight: float = 0.0) -> list:
    """The loss terms of a preset's weights (a weight of 0: no term)."""
    return [DistortionLoss(distortion_weight)] if distortion_weight else []

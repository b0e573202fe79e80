"""Volume compositing: from per-sample colour and density to pixel colour, depth and opacity.

The quadrature of the NeRF paper (Mildenhall et al., 2020, eq. 3): a sample with density
``sigma_i`` that stands for a length ``delta_i`` of ray has opacity
``alpha_i = 1 - exp(-sigma_i * delta_i)``; the light reaching it is the transmittance
``T_i = exp(-sum_{j<i} sigma_j * delta_j)``; its weight in the pixel is ``T_i * alpha_i``.
"""

from __future__ import annotations

import tensorflow as tf


def composite(rgb, sigma, t_vals, deltas, background=0.0):
    """Composite samples along rays.

    Args:
        rgb: [..., S, 3] float32 sample colours in [0, 1].
        sigma: [..., S] float32 non-negative densities.
        t_vals: [..., S] float32 sample depths along unit-length rays.
        deltas: [..., S] float32 ray length each sample stands for.
        background: float or [3] colour seen where the ray is not fully absorbed.

    Returns:
        dict with
        ``rgb``: [..., 3] composited colour,
        ``depth``: [..., ] expected termination depth of the part of the ray that terminates
        (``sum(w * t) / sum(w)``; 0 where nothing is hit),
        ``acc``: [...] opacity ``sum(w)`` in [0, 1],
        ``weights``: [..., S].
    """
    optical_depth = sigma * deltas
    alpha = 1.0 - tf.exp(-optical_depth)
    # Exclusive cumulative sum: the first sample sees the full light.
    transmittance = tf.exp(-tf.math.cumsum(optical_depth, axis=-1, exclusive=True))
    weights = alpha * transmittance
    acc = tf.reduce_sum(weights, axis=-1)
    rgb_out = tf.reduce_sum(weights[..., None] * rgb, axis=-2) + (1.0 - acc[..., None]) * background
    depth = tf.math.divide_no_nan(tf.reduce_sum(weights * t_vals, axis=-1), acc)
    return {"rgb": rgb_out, "depth": depth, "acc": acc, "weights": weights}

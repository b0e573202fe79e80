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


def distortion_loss(weights, s_start, s_end):
    """mip-NeRF 360's distortion loss (Barron et al., 2022, eq. 15) of each ray: small when its weight sits in one
    short stretch, large when it is spread along the ray (a floater in front of the surface, a haze).

    ``sum_ij w_i w_j |m_i - m_j| + 1/3 sum_i w_i^2 (s_end_i - s_start_i)``, ``m`` the intervals' midpoints, computed
    in O(S) with cumulative sums (the double sum is twice the sum over ``j < i``).

    Args:
        weights: [..., S] compositing weights.
        s_start, s_end: [..., S] each sample's interval in normalised distance along the ray (``space.
            normalized_distance``), sorted and not overlapping.

    Returns:
        [...] the loss of each ray.
    """
    mid = 0.5 * (s_start + s_end)
    weight_before = tf.math.cumsum(weights, axis=-1, exclusive=True)
    weighted_mid_before = tf.math.cumsum(weights * mid, axis=-1, exclusive=True)
    between = 2.0 * tf.reduce_sum(weights * (mid * weight_before - weighted_mid_before), axis=-1)
    within = tf.reduce_sum(tf.square(weights) * (s_end - s_start), axis=-1) / 3.0
    return between + within

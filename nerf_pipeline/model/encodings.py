"""Input encodings of fields: positional (Fourier) features, spherical harmonics, the multiresolution hash grid.

Shapes: ``N`` points; the hash grid reads points in the cube ``[-extent, extent]^3``.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from nerf_pipeline.native import build as native_build

PACKAGE = "nerf_pipeline"


def positional_encoding(x, num_frequencies: int):
    """``[x, sin(2^0 x), cos(2^0 x), …, sin(2^(F-1) x), cos(2^(F-1) x)]``.

    Args:
        x: [..., 3] float32.

    Returns:
        [..., 3 + 6 F] float32 (99 for the Keras example's F = 16).
    """
    features = [x]
    for i in range(num_frequencies):
        features += [tf.sin(2.0**i * x), tf.cos(2.0**i * x)]
    return tf.concat(features, axis=-1)


def spherical_harmonics(directions):
    """Real spherical harmonics of degrees 0–3 (16 functions) of unit directions.

    Args:
        directions: [..., 3] float32, unit length.

    Returns:
        [..., 16] float32.
    """
    x, y, z = directions[..., 0], directions[..., 1], directions[..., 2]
    xx, yy, zz = x * x, y * y, z * z
    return tf.stack(
        [
            tf.fill(tf.shape(x), 0.28209479177387814),
            -0.48860251190291987 * y,
            0.48860251190291987 * z,
            -0.48860251190291987 * x,
            1.0925484305920792 * x * y,
            -1.0925484305920792 * y * z,
            0.94617469575755997 * zz - 0.31539156525251999,
            -1.0925484305920792 * x * z,
            0.54627421529603959 * (xx - yy),
            0.59004358992664352 * y * (-3.0 * xx + yy),
            2.8906114426405538 * x * y * z,
            0.45704579946446572 * y * (1.0 - 5.0 * zz),
            0.3731763325901154 * z * (5.0 * zz - 3.0),
            0.45704579946446572 * x * (1.0 - 5.0 * zz),
            1.4453057213202769 * z * (xx - yy),
            0.59004358992664352 * x * (-xx + 3.0 * yy),
        ],
        axis=-1,
    )


@tf.custom_gradient
def truncated_exp(x):
    """``exp(x)`` whose gradient is computed at ``min(x, 15)``, so large logits cannot explode it."""

    def grad(upstream):
        return upstream * tf.exp(tf.minimum(x, 15.0))

    return tf.exp(x), grad


@keras.saving.register_keras_serializable(package=PACKAGE)
class HashEncoding(keras.layers.Layer):
    """Multiresolution hash encoding (Müller et al., instant-ngp, 2022) of points in ``[-extent, extent]^3``.

    Level ``l`` is a grid of resolution ``N_l`` (geometric from ``base_resolution`` to
    ``max_resolution``) whose vertices hold ``features_per_level`` trainable features.
    A level with at most ``2**log2_table_size`` vertices is stored densely; a finer one
    hashes its vertices into a table of that size (xor of coordinates times large primes,
    as in instant-ngp). A point's encoding is the trilinear interpolation of its cell's
    8 vertices, per level. All levels share one table, so one gather serves them all.

    Input ``[N, 3]`` float32 → output ``[N, num_levels * features_per_level]`` float32.
    """

    PRIMES = (1, 2654435761, 805459861)

    def __init__(self, num_levels: int, features_per_level: int, log2_table_size: int, base_resolution: int,
                 max_resolution: int, extent: float, **kwargs):
        super().__init__(**kwargs)
        self.num_levels = num_levels
        self.features_per_level = features_per_level
        self.log2_table_size = log2_table_size
        self.base_resolution = base_resolution
        self.max_resolution = max_resolution
        self.extent = float(extent)

        growth = math.exp((math.log(max_resolution) - math.log(base_resolution)) / max(num_levels - 1, 1))
        table_size = 2**log2_table_size
        resolutions, sizes, hashed = [], [], []
        for level in range(num_levels):
            resolution = int(math.floor(base_resolution * growth**level))
            dense_size = (resolution + 1) ** 3
            resolutions.append(resolution)
            hashed.append(dense_size > table_size)
            sizes.append(min(dense_size, table_size))
        self.resolutions = resolutions
        self.level_sizes = sizes
        self.level_hashed = hashed
        self.level_offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int32)
        # Binary corner offsets of a cell, [8, 3].
        self.corner_offsets = np.array([[(c >> 2) & 1, (c >> 1) & 1, c & 1] for c in range(8)], dtype=np.int32)
        self.table = self.add_weight(shape=(int(sum(sizes)), features_per_level),
                                     initializer=keras.initializers.RandomUniform(-1e-4, 1e-4), name="hash_table")
        self.native_op = native_build.cpu_library()
        self.built = True

    @property
    def output_dim(self) -> int:
        return self.num_levels * self.features_per_level

    @property
    def uses_native_op(self) -> bool:
        """Whether ``call`` runs the fused C++ op (``native/hash_grid.cc``) rather than TensorFlow's ops."""
        return self.native_op is not None

    def _op_attrs(self) -> dict:
        return {"resolutions": self.resolutions, "offsets": [int(o) for o in self.level_offsets],
                "hashed": [int(h) for h in self.level_hashed], "log2_table_size": self.log2_table_size,
                "extent": self.extent}

    def call(self, points):
        if self.native_op is not None:
            return self.native_op.nerf_hash_grid_encode(points, self.table, **self._op_attrs())
        return self.reference_call(points)

    def table_gradient(self, points, encoded_gradient):
        """The fused op's gradient for the table, ``[T, F]``, given the loss's gradient for its output
        ``[N, L * F]``."""
        return self.native_op.nerf_hash_grid_table_grad(points, encoded_gradient, table_rows=int(self.table.shape[0]),
                                                         **self._op_attrs())

    def table_gradient_and_squares(self, points, encoded_gradient):
        """``(table_gradient, squares)``, each ``[T, F]``: the fused op's gradient for the table and, per row, the
        sum of its samples' squared contributions (what ``optimizer.SampleWiseAdam``'s second moment takes)."""
        return self.native_op.nerf_hash_grid_table_grad_squares(
            points, encoded_gradient, table_rows=int(self.table.shape[0]), **self._op_attrs())

    def points_gradient(self, points, encoded_gradient):
        """The fused op's gradient for the points, ``[N, 3]``, given the loss's gradient for its output
        ``[N, L * F]`` (what a pose correction trains through)."""
        return self.native_op.nerf_hash_grid_points_grad(points, self.table, encoded_gradient, **self._op_attrs())

    def reference_call(self, points):
        """The encoding in TensorFlow's ops: what runs on a GPU, under XLA, and what the fused op is tested against."""
        x01 = tf.clip_by_value((points + self.extent) / (2.0 * self.extent), 0.0, 1.0)
        resolutions = tf.constant(self.resolutions, tf.float32)  # [L]
        scaled = x01[:, None, :] * resolutions[None, :, None]  # [N, L, 3]
        cell = tf.minimum(tf.floor(scaled), resolutions[None, :, None] - 1.0)
        frac = scaled - cell  # [N, L, 3] in [0, 1]
        vertices = tf.cast(cell, tf.int32)[:, :, None, :] + self.corner_offsets[None, None]  # [N, L, 8, 3]

        vertices_u = tf.cast(vertices, tf.uint32)
        side = tf.constant([r + 1 for r in self.resolutions], tf.uint32)[None, :, None]
        dense_index = vertices_u[..., 0] + side * (vertices_u[..., 1] + side * vertices_u[..., 2])
        hashed_index = tf.bitwise.bitwise_xor(
            tf.bitwise.bitwise_xor(vertices_u[..., 0] * np.uint32(self.PRIMES[0]),
                                   vertices_u[..., 1] * np.uint32(self.PRIMES[1])),
            vertices_u[..., 2] * np.uint32(self.PRIMES[2]),
        ) & np.uint32(2**self.log2_table_size - 1)
        hashed = tf.constant(self.level_hashed)[None, :, None]
        index = tf.cast(tf.where(hashed, hashed_index, dense_index), tf.int32)
        index += tf.constant(self.level_offsets)[None, :, None]  # [N, L, 8]

        # Trilinear weights: the product over axes of frac (corner bit 1) or 1 - frac (bit 0).
        corner_bits = tf.constant(self.corner_offsets, tf.float32)[None, None]  # [1, 1, 8, 3]
        axis_weights = corner_bits * frac[:, :, None, :] + (1.0 - corner_bits) * (1.0 - frac[:, :, None, :])
        weights = tf.reduce_prod(axis_weights, axis=-1)  # [N, L, 8]

        features = tf.gather(self.table, index)  # [N, L, 8, F]
        encoded = tf.reduce_sum(weights[..., None] * features, axis=2)  # [N, L, F]
        return tf.reshape(encoded, [-1, self.output_dim])

    def get_config(self):
        return {**super().get_config(), "num_levels": self.num_levels, "features_per_level": self.features_per_level,
                "log2_table_size": self.log2_table_size, "base_resolution": self.base_resolution,
                "max_resolution": self.max_resolution, "extent": self.extent}


@tf.RegisterGradient("NerfHashGridEncode")
def _native_hash_grid_gradient(op, grad):
    """Gradients of the fused encoding: the table's (split over levels) and the points' (split over points; its
    op is pruned from the graph when nothing upstream of the points trains)."""
    library = native_build.load("nerf_ops")
    attrs = {name: op.get_attr(name) for name in ("resolutions", "offsets", "hashed", "log2_table_size", "extent")}
    points, table = op.inputs
    table_grad = library.nerf_hash_grid_table_grad(points, grad, table_rows=int(table.shape[0]), **attrs)
    points_grad = library.nerf_hash_grid_points_grad(points, table, grad, **attrs)
    return points_grad, table_grad

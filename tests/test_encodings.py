"""Encodings: positional features, spherical harmonics, the hash grid's interpolation and hashing."""

import numpy as np
import pytest
import tensorflow as tf

from nerf_pipeline.model.encodings import HashEncoding, positional_encoding, spherical_harmonics


def test_positional_encoding_layout():
    x = tf.constant([[0.5, -1.0, 2.0]])
    encoded = positional_encoding(x, 16).numpy()
    assert encoded.shape == (1, 99)  # the Keras example's 3 + 3 * 2 * 16
    np.testing.assert_allclose(encoded[0, :3], [0.5, -1.0, 2.0])
    np.testing.assert_allclose(encoded[0, 3:6], np.sin([0.5, -1.0, 2.0]), rtol=1e-6)
    np.testing.assert_allclose(encoded[0, 9:12], np.sin(2.0 * np.array([0.5, -1.0, 2.0])), rtol=1e-5)


def test_spherical_harmonics_are_orthonormal():
    # Fibonacci sphere: near-uniform quadrature points
    n = 20000
    k = np.arange(n) + 0.5
    z = 1 - 2 * k / n
    phi = np.pi * (1 + 5**0.5) * k
    dirs = np.stack([np.sqrt(1 - z**2) * np.cos(phi), np.sqrt(1 - z**2) * np.sin(phi), z], -1).astype(np.float32)
    basis = spherical_harmonics(tf.constant(dirs)).numpy().astype(np.float64)
    gram = basis.T @ basis * (4 * np.pi / n)
    np.testing.assert_allclose(gram, np.eye(16), atol=2e-3)


def test_hash_encoding_interpolates_dense_levels_exactly():
    encoding = HashEncoding(num_levels=2, features_per_level=2, log2_table_size=12, base_resolution=4,
                            max_resolution=8, extent=1.0)
    assert encoding.level_hashed == [False, False]
    table = np.zeros(encoding.table.shape, np.float32)
    for level, resolution in enumerate(encoding.resolutions):
        side = resolution + 1
        i, j, k = np.meshgrid(np.arange(side), np.arange(side), np.arange(side), indexing="ij")
        index = (i + side * (j + side * k)).ravel() + encoding.level_offsets[level]
        table[index, 0] = (i / resolution).ravel()  # feature 0 holds the vertex's x in [0, 1]
        table[index, 1] = (k / resolution).ravel()  # feature 1 its z
    encoding.table.assign(table)
    points = np.random.default_rng(0).uniform(-1, 1, size=(100, 3)).astype(np.float32)
    encoded = encoding(tf.constant(points)).numpy()
    x01 = (points + 1) / 2
    # trilinear interpolation reproduces a linear function exactly, at every level
    for level in range(2):
        np.testing.assert_allclose(encoded[:, 2 * level], x01[:, 0], atol=1e-5)
        np.testing.assert_allclose(encoded[:, 2 * level + 1], x01[:, 2], atol=1e-5)


def test_hash_encoding_hashes_fine_levels_into_the_table():
    encoding = HashEncoding(num_levels=4, features_per_level=2, log2_table_size=10, base_resolution=4,
                            max_resolution=64, extent=1.5)
    assert encoding.level_hashed == [False, True, True, True]
    assert encoding.table.shape == (125 + 3 * 1024, 2)
    points = tf.random.uniform([512, 3], -1.5, 1.5, seed=1)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(encoding(points))
    gradient = tf.convert_to_tensor(tape.gradient(loss, encoding.table))
    touched = np.abs(gradient.numpy()).sum(-1) > 0
    # every level receives gradient, and a level's rows are only its own
    for level in range(4):
        start = encoding.level_offsets[level]
        assert touched[start:start + encoding.level_sizes[level]].any()
    assert touched.sum() > 1000


# -- the fused hash-grid op (native/hash_grid.cc) against TensorFlow's ops -------------------------------------------

def _reference_and_native(encoding, points, upstream):
    """``(values, table gradient, points gradient)`` of the encoding by TensorFlow's ops and by the fused op."""
    results = []
    for call in (encoding.reference_call, encoding.call):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(points)
            loss = tf.reduce_sum(call(points) * upstream)
        results.append([call(points).numpy(), tf.convert_to_tensor(tape.gradient(loss, encoding.table)).numpy(),
                        tape.gradient(loss, points).numpy()])
    return results


def _random_encoding(**kwargs) -> HashEncoding:
    encoding = HashEncoding(**kwargs)
    if not encoding.uses_native_op:
        pytest.skip("the native hash-grid op is not available here (the warning above says why)")
    encoding.table.assign(tf.random.uniform(encoding.table.shape, -1.0, 1.0, seed=3))
    return encoding


@pytest.mark.parametrize("features", [1, 2, 4, 3])
def test_the_fused_op_equals_tensorflows_ops_on_dense_and_hashed_levels(features):
    encoding = _random_encoding(num_levels=6, features_per_level=features, log2_table_size=10, base_resolution=3,
                                max_resolution=90, extent=1.5)
    assert 0 < sum(encoding.level_hashed) < 6  # both kinds of level
    rng = np.random.default_rng(features)
    inside = rng.uniform(-1.5, 1.5, (3000, 3))
    outside = rng.uniform(-3.0, 3.0, (500, 3))  # clipped onto the box's faces, gradient 0 across them
    # On cell borders of every level and on the box's faces exactly: floor, the last cell and the clip's ends.
    borders = np.concatenate([(np.stack(np.meshgrid(*[np.arange(r + 1) / r] * 3), -1).reshape(-1, 3) * 3.0 - 1.5)
                              for r in encoding.resolutions[:3]])
    points = tf.constant(np.concatenate([inside, outside, borders]).astype(np.float32))
    upstream = tf.constant(rng.normal(size=(points.shape[0], encoding.output_dim)).astype(np.float32))
    reference, native = _reference_and_native(encoding, points, upstream)
    for name, want, got in zip(("values", "table gradient", "points gradient"), reference, native):
        scale = np.abs(want).max()
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * scale, err_msg=name)


def test_the_fused_ops_table_gradient_sums_every_points_share():
    """Many points in one cell: the adds to one row from every point (no atomics, split over levels) are all there."""
    encoding = _random_encoding(num_levels=2, features_per_level=2, log2_table_size=10, base_resolution=2,
                                max_resolution=200, extent=1.0)
    points = tf.constant(np.random.default_rng(0).uniform(0.1, 0.2, (20000, 3)).astype(np.float32))
    upstream = tf.ones([20000, encoding.output_dim])
    reference, native = _reference_and_native(encoding, points, upstream)
    np.testing.assert_allclose(native[1], reference[1], rtol=1e-5, atol=1e-3)
    # Trilinear weights sum to one: each level's rows receive one per point and feature.
    np.testing.assert_allclose(native[1].sum(0), [2 * 20000.0] * 2, rtol=1e-5)


def test_the_fused_op_takes_no_points():
    encoding = _random_encoding(num_levels=3, features_per_level=2, log2_table_size=10, base_resolution=4,
                                max_resolution=32, extent=1.0)
    empty = tf.zeros([0, 3])
    assert encoding(empty).shape == (0, 6)
    assert encoding.table_gradient(empty, tf.zeros([0, 6])).numpy().sum() == 0.0

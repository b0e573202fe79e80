"""Encodings: positional features, spherical harmonics, the hash grid's interpolation and hashing."""

import numpy as np
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

import keras
import numpy as np
import pytest
import tensorflow as tf

from nerf_pipeline import sampling

DOWN = (tf.constant([[0.1, 0.1, 5.0]]), tf.constant([[0.0, 0.0, -1.0]]))  # straight down onto the origin


def test_uniform_samples_without_jitter_are_linspace():
    t_vals, deltas = sampling.uniform_samples(3, 2.0, 6.0, 5, stratified=False)
    np.testing.assert_allclose(t_vals, np.tile(np.linspace(2, 6, 5), (3, 1)), rtol=1e-6)
    np.testing.assert_allclose(deltas[:, :-1], 1.0, rtol=1e-6)
    assert np.all(deltas[:, -1] == 1e10)


def test_uniform_jitter_stays_in_its_stratum():
    t_vals, _ = sampling.uniform_samples(256, 2.0, 6.0, 8, stratified=True, seed=keras.random.SeedGenerator(1))
    base = np.linspace(2, 6, 8)
    offset = t_vals.numpy() - base
    assert np.all(offset >= 0) and np.all(offset <= 0.5 + 1e-6)
    assert offset.std() > 0.1  # really jittered


def test_ray_box_intersection_hand_computed():
    t_enter, t_exit = sampling.ray_box_intersection(*DOWN, -tf.ones(3), tf.ones(3))
    np.testing.assert_allclose([t_enter[0], t_exit[0]], [4.0, 6.0])
    t_enter, t_exit = sampling.ray_box_intersection(tf.constant([[5.0, 5.0, 5.0]]), DOWN[1], -tf.ones(3), tf.ones(3))
    assert t_enter[0] >= t_exit[0]  # misses


def occupancy(layers):
    grid = np.zeros((4, 4, 4), np.float32)  # cells of 0.5 over [-1, 1]^3, indexed [x, y, z]
    grid[:, :, layers] = 1.0
    return tf.constant(grid)


def test_occupancy_samples_land_only_in_occupied_cells():
    # z-layer 1 covers z in [-0.5, 0]: the downward ray crosses it at depths 5 to 5.5
    t_vals, deltas = sampling.occupancy_samples(*DOWN, near=2.0, far=6.0, occupied=occupancy([1]), scene_bound=1.0,
                                                num_samples=16, num_march=64, stratified=True,
                                                seed=keras.random.SeedGenerator(0))
    assert np.all(t_vals.numpy() >= 5.0 - 1e-5) and np.all(t_vals.numpy() <= 5.5 + 1e-5)
    assert np.all(np.diff(t_vals.numpy(), axis=-1) >= 0)
    np.testing.assert_allclose(deltas.numpy().sum(), 0.5, rtol=1e-5)


def test_occupancy_samples_skip_the_gap_between_occupied_cells():
    t_vals, deltas = sampling.occupancy_samples(*DOWN, near=2.0, far=6.0, occupied=occupancy([0, 3]), scene_bound=1.0,
                                                num_samples=8, num_march=64, stratified=False)
    t = t_vals.numpy()[0]
    # z-layer 3 (z in [0.5, 1]) is crossed at depths 4 to 4.5, layer 0 at 5.5 to 6: none in between
    assert np.all((t <= 4.5 + 1e-5) | (t >= 5.5 - 1e-5))
    assert (t < 5).sum() == 4 and (t > 5).sum() == 4
    np.testing.assert_allclose(deltas.numpy().sum(), 1.0, rtol=1e-5)


def test_full_grid_gives_even_spacing_inside_the_box():
    t_vals, deltas = sampling.occupancy_samples(*DOWN, near=2.0, far=6.0, occupied=tf.ones([4, 4, 4]),
                                                scene_bound=1.0, num_samples=4, num_march=64, stratified=False)
    np.testing.assert_allclose(t_vals.numpy()[0], [4.25, 4.75, 5.25, 5.75], atol=1e-4)
    np.testing.assert_allclose(deltas.numpy()[0], 0.5, rtol=1e-5)


@pytest.mark.parametrize("origin", [[0.1, 0.1, 5.0], [5.0, 5.0, 5.0]])
def test_empty_grid_or_missed_box_contributes_nothing(origin):
    _, deltas = sampling.occupancy_samples(tf.constant([origin]), DOWN[1], 2.0, 6.0,
                                           occupied=tf.zeros([4, 4, 4]) if origin[0] < 1 else tf.ones([4, 4, 4]),
                                           scene_bound=1.0, num_samples=4, num_march=16, stratified=False)
    np.testing.assert_allclose(deltas.numpy(), 0.0)

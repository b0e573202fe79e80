"""The occupancy grid: lookups by cell, updates from a density, and the callback that runs them while training."""

import keras
import numpy as np
import tensorflow as tf

from nerf_pipeline.model.occupancy import OccupancyGrid


def test_lookup_finds_the_cell_of_a_point_and_clamps_outside():
    grid = OccupancyGrid(resolution=4, alpha_threshold=0.01, decay=0.95)
    occupied = np.zeros((4, 4, 4), np.float32)
    occupied[3, 0, 1] = 1.0  # x in [0.5, 1], y in [-1, -0.5], z in [-0.5, 0] over [-1, 1]^3
    grid.occupied.assign(occupied)
    points = tf.constant([[0.75, -0.75, -0.25], [0.75, -0.75, 0.25], [5.0, -5.0, -0.25]])
    np.testing.assert_array_equal(grid.lookup(points, extent=1.0).numpy(), [1.0, 0.0, 1.0])
    np.testing.assert_array_equal(grid.lookup(points * 2.0, extent=2.0).numpy(), [1.0, 0.0, 1.0])


def test_update_keeps_the_cells_where_light_would_be_absorbed():
    grid = OccupancyGrid(resolution=8, alpha_threshold=0.01, decay=0.5)

    def ball(points):  # dense inside the ball of radius 0.5, empty outside
        return tf.where(tf.norm(points, axis=-1) < 0.5, 100.0, 0.0)

    grid.update(ball, extent=1.0, seed_generator=keras.random.SeedGenerator(0))
    occupied = grid.occupied.numpy()
    assert occupied[3:5, 3:5, 3:5].all() and occupied[0, 0, 0] == 0 and occupied[7, 7, 7] == 0
    assert int(grid.updates.numpy()) == 1
    # the running max decays once the matter is gone; the grid never empties (a cell above the mean stays)
    for _ in range(3):
        grid.update(lambda points: tf.zeros(tf.shape(points)[:1]), extent=1.0,
                    seed_generator=keras.random.SeedGenerator(1))
    np.testing.assert_allclose(grid.density_ema.numpy()[3:5, 3:5, 3:5], 100.0 * 0.5**3)
    assert grid.occupied.numpy()[3:5, 3:5, 3:5].all() and grid.occupied.numpy().sum() < 8**3

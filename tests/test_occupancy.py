"""The occupancy grid: lookups by cell, updates from a density, and the callback that runs them while training."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from nerf_pipeline.model.occupancy import OccupancyGrid, world_length_per_unit
from nerf_pipeline.model.space import BoxSpace, ContractedSpace


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

    grid.update(ball, BoxSpace(1.0), seed_generator=keras.random.SeedGenerator(0))
    occupied = grid.occupied.numpy()
    assert occupied[3:5, 3:5, 3:5].all() and occupied[0, 0, 0] == 0 and occupied[7, 7, 7] == 0
    assert int(grid.updates.numpy()) == 1
    # the running max decays once the matter is gone; the grid never empties (a cell above the mean stays)
    for _ in range(3):
        grid.update(lambda points: tf.zeros(tf.shape(points)[:1]), BoxSpace(1.0),
                    seed_generator=keras.random.SeedGenerator(1))
    np.testing.assert_allclose(grid.density_ema.numpy()[3:5, 3:5, 3:5], 100.0 * 0.5**3)
    assert grid.occupied.numpy()[3:5, 3:5, 3:5].all() and grid.occupied.numpy().sum() < 8**3


def test_world_length_per_unit_is_the_radial_stretch_of_the_inverse_contraction():
    space = ContractedSpace(bound=1.5)
    directions = tf.math.l2_normalize(tf.constant([[1.0, 0.0, 0.0], [0.3, -0.5, 0.8], [-1.0, 2.0, 0.5]]), axis=-1)
    radii = tf.constant([1.0, 1.9, 2.6])[:, None]  # inside the ball, then two points of the shell (field units)

    def world_radius(field_radius):  # |x| of the world point that warps to |p|: bound^2 / (2 bound - |p|) out there
        return tf.where(field_radius <= 1.5, field_radius, 1.5**2 / (2 * 1.5 - field_radius))

    step = 1e-3
    finite_difference = (world_radius(radii + step) - world_radius(radii - step))[:, 0] / (2 * step)
    scale = world_length_per_unit(space, radii * directions, cell_size=0.01).numpy()
    np.testing.assert_allclose(scale[1:], finite_difference[1:].numpy(), rtol=1e-3)
    assert scale[0] == 1.0 and scale[2] == pytest.approx(14.06, rel=1e-3)  # at |p| = 2.6 of 3: 2.25 / 0.4^2
    # the warp itself agrees: points a small radial step apart in the field are that far apart in the world
    point = 2.6 * directions[1:2]
    world = [point * world_radius(tf.constant(r)) / 2.6 for r in (2.6 - step, 2.6 + step)]
    np.testing.assert_allclose(space.warp(world[0]).numpy(), ((2.6 - step) * directions[1:2]).numpy(), rtol=1e-4)
    np.testing.assert_allclose(tf.norm(world[1] - world[0]).numpy() / (2 * step), scale[2], rtol=1e-3)
    assert np.all(world_length_per_unit(BoxSpace(1.5), radii * directions, 0.01).numpy() == 1.0)


def test_in_the_contracted_shell_a_cell_is_kept_by_the_world_length_a_ray_crosses():
    """A thin density (0.1 per world unit) absorbs nothing to speak of across a cell of the ball, but a cell
    of the shell far out holds many world units of it: the threshold must count those."""
    def density(points):  # a dense core in the 8 central cells, thin matter everywhere else
        return tf.where(tf.reduce_max(tf.abs(points), axis=-1) < 0.5, 50.0, 0.1)

    alpha = 0.125  # -log(1 - alpha) = 0.1335: 0.1 per unit needs a crossing of 1.34 world units
    grid = OccupancyGrid(resolution=8, alpha_threshold=alpha, decay=0.5)  # over [-2, 2]^3, cells of 0.5
    grid.update(density, ContractedSpace(bound=1.0), seed_generator=keras.random.SeedGenerator(0))
    centres = -2.0 + (np.stack(np.meshgrid(*[np.arange(8)] * 3, indexing="ij"), -1) + 0.5) * 0.5
    radius = np.linalg.norm(centres, axis=-1)
    core = np.abs(centres).max(axis=-1) < 0.5
    # crossing 0.5 / (2 - |p|)^2 world units beyond the ball: > 1.34 where |p| > 1.39 (cell centres lie at
    # 1.30 or 1.48, clear of it)
    expected = core | (radius > 2.0 - np.sqrt(0.5 * 0.1 / -np.log(1.0 - alpha)))
    np.testing.assert_array_equal(grid.occupied.numpy() > 0, expected)
    assert expected.sum() > 8 and not expected[radius <= 1.0][~core[radius <= 1.0]].any()
    # the same density in a box of the same size: no cell but the core absorbs enough
    grid = OccupancyGrid(resolution=8, alpha_threshold=alpha, decay=0.5)
    grid.update(density, BoxSpace(bound=2.0), seed_generator=keras.random.SeedGenerator(0))
    np.testing.assert_array_equal(grid.occupied.numpy() > 0, core)

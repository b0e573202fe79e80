"""Samplers: uniform depths as the Keras example draws them; occupancy-guided depths only in occupied cells."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from nerf_pipeline.config import OccupancySamplerConfig, UniformSamplerConfig
from nerf_pipeline.model.occupancy import UpdateOccupancyGrid
from nerf_pipeline.model.sampling import OccupancySampler, UniformSampler, make_sampler
from nerf_pipeline.model.space import BoxSpace, ContractedSpace

DOWN = (tf.constant([[0.1, 0.1, 5.0]]), tf.constant([[0.0, 0.0, -1.0]]))  # straight down onto the origin
UNIT_BOX = BoxSpace(1.0)


def uniform(num_samples, stratified):
    return make_sampler(UniformSamplerConfig(type="uniform", num_samples=num_samples, stratified=stratified))


def occupancy_sampler(layers, num_samples=16, num_march=64):
    """An occupancy sampler over a 4^3 grid (cells of 0.5 over [-1, 1]^3) whose z-layers ``layers`` are occupied."""
    sampler = make_sampler(OccupancySamplerConfig(
        type="occupancy", num_samples=num_samples, stratified=True, num_march=num_march, grid_resolution=4,
        update_every=1, warmup_steps=0, alpha_threshold=0.01, decay=0.95))
    grid = np.zeros((4, 4, 4), np.float32)
    grid[:, :, layers] = 1.0
    sampler.grid.occupied.assign(grid)
    return sampler


def test_uniform_samples_without_jitter_are_linspace():
    sampler = uniform(5, stratified=True)
    assert isinstance(sampler, UniformSampler) and sampler.callbacks() == []
    origins = tf.zeros([3, 3])
    t_vals, deltas = sampler.sample(origins, origins, 2.0, 6.0, UNIT_BOX, training=False, seed_generator=None)
    np.testing.assert_allclose(t_vals, np.tile(np.linspace(2, 6, 5), (3, 1)), rtol=1e-6)
    np.testing.assert_allclose(deltas[:, :-1], 1.0, rtol=1e-6)
    assert np.all(deltas[:, -1] == 1e10)
    assert sampler.hits(origins, origins, 2.0, 6.0, UNIT_BOX).numpy().all()


def test_uniform_jitter_stays_in_its_stratum():
    origins = tf.zeros([256, 3])
    t_vals, _ = uniform(8, stratified=True).sample(origins, origins, 2.0, 6.0, UNIT_BOX, training=True,
                                                   seed_generator=keras.random.SeedGenerator(1))
    offset = t_vals.numpy() - np.linspace(2, 6, 8)
    assert np.all(offset >= 0) and np.all(offset <= 0.5 + 1e-6)
    assert offset.std() > 0.1  # really jittered


def test_occupancy_samples_land_only_in_occupied_cells():
    # z-layer 1 covers z in [-0.5, 0]: the downward ray crosses it at depths 5 to 5.5
    sampler = occupancy_sampler([1])
    t_vals, deltas = sampler.sample(*DOWN, 2.0, 6.0, UNIT_BOX, training=True,
                                    seed_generator=keras.random.SeedGenerator(0))
    assert np.all(t_vals.numpy() >= 5.0 - 1e-5) and np.all(t_vals.numpy() <= 5.5 + 1e-5)
    assert np.all(np.diff(t_vals.numpy(), axis=-1) >= 0)
    np.testing.assert_allclose(deltas.numpy().sum(), 0.5, rtol=1e-5)
    assert isinstance(sampler, OccupancySampler)
    assert [type(c) for c in sampler.callbacks()] == [UpdateOccupancyGrid]


def test_occupancy_samples_skip_the_gap_between_occupied_cells():
    t_vals, deltas = occupancy_sampler([0, 3], num_samples=8).sample(*DOWN, 2.0, 6.0, UNIT_BOX, training=False,
                                                                     seed_generator=None)
    t = t_vals.numpy()[0]
    # z-layer 3 (z in [0.5, 1]) is crossed at depths 4 to 4.5, layer 0 at 5.5 to 6: none in between
    assert np.all((t <= 4.5 + 1e-5) | (t >= 5.5 - 1e-5))
    assert (t < 5).sum() == 4 and (t > 5).sum() == 4
    np.testing.assert_allclose(deltas.numpy().sum(), 1.0, rtol=1e-5)


def test_full_grid_gives_even_spacing_inside_the_box():
    t_vals, deltas = occupancy_sampler([0, 1, 2, 3], num_samples=4).sample(*DOWN, 2.0, 6.0, UNIT_BOX,
                                                                           training=False, seed_generator=None)
    np.testing.assert_allclose(t_vals.numpy()[0], [4.25, 4.75, 5.25, 5.75], atol=1e-4)
    np.testing.assert_allclose(deltas.numpy()[0], 0.5, rtol=1e-5)


@pytest.mark.parametrize("origin, layers", [([0.1, 0.1, 5.0], []), ([5.0, 5.0, 5.0], [0, 1, 2, 3])])
def test_empty_grid_or_missed_box_contributes_nothing(origin, layers):
    sampler = occupancy_sampler(layers, num_samples=4, num_march=16)
    origins = tf.constant([origin])
    _, deltas = sampler.sample(origins, DOWN[1], 2.0, 6.0, UNIT_BOX, training=False, seed_generator=None)
    np.testing.assert_allclose(deltas.numpy(), 0.0)
    assert not sampler.hits(origins, DOWN[1], 2.0, 6.0, UNIT_BOX).numpy()[0]


def test_occupancy_samples_in_a_contracted_space_reach_the_far_background():
    """With every cell occupied, a ray's samples spread from near to far; each stands for its share of its bin."""
    sampler = occupancy_sampler([0, 1, 2, 3], num_samples=32, num_march=64)
    space = ContractedSpace(0.5)  # the grid covers the contracted cube [-1, 1]^3
    origins, directions = tf.constant([[2.0, 0.0, 0.0]]), tf.constant([[-1.0, 0.0, 0.0]])
    t_vals, deltas = sampler.sample(origins, directions, 0.5, 100.0, space, training=False, seed_generator=None)
    t, d = t_vals.numpy()[0], deltas.numpy()[0]
    assert t[0] < 1.0 and t[-1] > 40.0 and np.all(np.diff(t) > 0)
    np.testing.assert_allclose(d.sum(), 100.0 - 0.5, rtol=1e-3)  # all of [near, far] is occupied


def test_may_hit_keeps_every_ray_that_hits_and_drops_rays_far_from_the_occupied_box():
    """``may_hit`` finds without marching a superset of ``hits``: rays crossing the box around the occupied cells."""
    sampler = occupancy_sampler([1], num_march=64)
    grid = np.zeros((4, 4, 4), np.float32)
    grid[1, 2, 1] = 1.0  # one cell: x in [-0.5, 0], y in [0, 0.5], z in [-0.5, 0]
    sampler.grid.occupied.assign(grid)
    rng = np.random.default_rng(0)
    origins = rng.uniform(-3, 3, (4000, 3)).astype(np.float32)
    targets = rng.uniform(-1.2, 1.2, (4000, 3)).astype(np.float32)
    directions = (targets - origins) / np.linalg.norm(targets - origins, axis=-1, keepdims=True)
    hits = sampler.hits(tf.constant(origins), tf.constant(directions), 0.0, 10.0, UNIT_BOX).numpy()
    may_hit = sampler.may_hit(origins, directions, 0.0, 10.0, UNIT_BOX)
    assert hits.sum() > 50 and np.all(may_hit[hits])  # never drops a ray that hits
    assert may_hit.sum() < 0.5 * len(may_hit)  # and drops most of those that do not
    # an empty grid: no ray can hit; a contracted space: no box to test, every ray is asked
    sampler.grid.occupied.assign(np.zeros((4, 4, 4), np.float32))
    assert not sampler.may_hit(origins, directions, 0.0, 10.0, UNIT_BOX).any()
    sampler.grid.occupied.assign(grid)
    assert sampler.may_hit(origins, directions, 0.5, 10.0, ContractedSpace(0.5)).all()
    assert uniform(4, stratified=False).may_hit(origins, directions, 2.0, 6.0, UNIT_BOX).all()


@pytest.mark.parametrize("space", [BoxSpace(1.5), ContractedSpace(1.5)], ids=["box", "contracted"])
def test_the_native_march_hits_and_samples_as_tensorflows_ops_do(space):
    """Rendering's hit test and samples from the C++ march (native/occupancy.cc) against the sampler's own:
    a random sparse grid, rays from every side, some missing the space, an empty grid row included."""
    sampler = make_sampler(OccupancySamplerConfig(
        type="occupancy", num_samples=24, stratified=True, num_march=128, grid_resolution=16, update_every=1,
        warmup_steps=0, alpha_threshold=0.01, decay=0.95))
    native = sampler.native_render_functions(2.0, 60.0, space, jit_compile=True)
    if native is None:
        pytest.skip("the native ops are not available here")
    rng = np.random.default_rng(0)
    sampler.grid.occupied.assign((rng.uniform(size=(16, 16, 16)) < 0.05).astype(np.float32))
    origins = rng.normal(size=(3000, 3))
    origins = 4.0 * origins / np.linalg.norm(origins, axis=1, keepdims=True)
    directions = rng.uniform(-1.5, 1.5, (3000, 3)) - origins  # most towards the box, some past it
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    origins, directions = tf.constant(origins, tf.float32), tf.constant(directions, tf.float32)
    hits, sample = native
    want_hits = sampler.hits(origins, directions, 2.0, 60.0, space).numpy()
    assert 0.05 < want_hits.mean() < 0.95
    np.testing.assert_array_equal(hits(origins, directions).numpy(), want_hits)
    want_t, want_deltas = sampler.sample(origins, directions, 2.0, 60.0, space, False, None)
    got_t, got_deltas = sample(origins, directions)
    np.testing.assert_allclose(got_t.numpy(), want_t.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got_deltas.numpy(), want_deltas.numpy(), rtol=1e-5, atol=1e-6)

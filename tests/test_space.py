"""Spaces: the box keeps points and clips rays; the contraction maps everything into a ball of twice the bound."""

import numpy as np
import tensorflow as tf

from nerf_pipeline.model.space import BoxSpace, ContractedSpace, contract, make_space, ray_box_intersection

DOWN = (tf.constant([[0.1, 0.1, 5.0]]), tf.constant([[0.0, 0.0, -1.0]]))  # straight down onto the origin


def test_ray_box_intersection_hand_computed():
    t_enter, t_exit = ray_box_intersection(*DOWN, -tf.ones(3), tf.ones(3))
    np.testing.assert_allclose([t_enter[0], t_exit[0]], [4.0, 6.0])
    t_enter, t_exit = ray_box_intersection(tf.constant([[5.0, 5.0, 5.0]]), DOWN[1], -tf.ones(3), tf.ones(3))
    assert t_enter[0] >= t_exit[0]  # misses


def test_contraction_is_the_identity_inside_and_reaches_two_at_infinity():
    inside = tf.constant([[0.3, -0.4, 0.5]])
    np.testing.assert_allclose(contract(inside).numpy(), inside.numpy())
    far = tf.constant([[3.0, 0.0, 4.0], [1e8, 0.0, 0.0]])  # norms 5 and 1e8
    np.testing.assert_allclose(contract(far).numpy(), [[(2 - 0.2) * 0.6, 0, (2 - 0.2) * 0.8], [2.0, 0, 0]], rtol=1e-6)
    # continuous at the unit sphere, with finite gradients everywhere (also at the origin)
    points = tf.constant([[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0001, 0.0], [10.0, 10.0, 10.0]])
    with tf.GradientTape() as tape:
        tape.watch(points)
        out = contract(points)
    np.testing.assert_allclose(out[1], out[2], atol=2e-4)
    assert np.all(np.isfinite(tape.gradient(out, points).numpy()))


def test_box_space_clips_rays_to_the_box_and_near_far():
    space = make_space(contracted=False, bound=1.0)
    assert isinstance(space, BoxSpace) and space.extent == 1.0
    t_start, t_end = space.ray_segment(*DOWN, 2.0, 5.5)
    np.testing.assert_allclose([t_start[0], t_end[0]], [4.0, 5.5])
    depths = space.depths(DOWN[0], t_start, t_end, tf.constant([0.0, 0.5, 1.0]))
    np.testing.assert_allclose(depths[0], [4.0, 4.75, 5.5])


def test_contracted_space_reaches_far_in_inverse_depth():
    space = make_space(contracted=True, bound=1.5)
    assert isinstance(space, ContractedSpace) and space.extent == 3.0
    origins = tf.constant([[4.0, 0.0, 0.0]])
    t_start, t_end = space.ray_segment(origins, tf.constant([[-1.0, 0.0, 0.0]]), 2.0, 1000.0)
    np.testing.assert_allclose([t_start[0], t_end[0]], [2.0, 1000.0])
    fractions = tf.linspace(0.0, 1.0, 11)
    depths = space.depths(origins, t_start, t_end, fractions).numpy()[0]
    assert np.all(np.diff(depths) > 0) and depths[0] == 2.0 and abs(depths[-1] - 1000.0) < 1e-2
    # half the bins cover the ray up to where it surely left the ball (|o| + bound = 5.5) ...
    np.testing.assert_allclose(depths[5], 5.5, rtol=1e-6)
    # ... the other half are even in inverse depth beyond it
    np.testing.assert_allclose(np.diff(1.0 / depths[5:]), (1 / 1000 - 1 / 5.5) / 5, rtol=1e-4)
    warped = space.warp(tf.constant([[1e6, 0.0, 0.0], [1.0, 0.0, 0.0]])).numpy()
    np.testing.assert_allclose(warped, [[3.0, 0, 0], [1.0, 0, 0]], rtol=1e-5)

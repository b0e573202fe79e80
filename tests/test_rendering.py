import numpy as np
import pytest
import tensorflow as tf

from nerf_pipeline.model.rendering import composite, distortion_loss


def test_opaque_first_sample_takes_all():
    rgb = tf.constant([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    out = composite(rgb, sigma=tf.constant([[1e4, 1e4]]), t_vals=tf.constant([[2.0, 3.0]]),
                    deltas=tf.constant([[1.0, 1.0]]))
    np.testing.assert_allclose(out["rgb"], [[1.0, 0.0, 0.0]], atol=1e-6)
    np.testing.assert_allclose(out["depth"], [2.0], atol=1e-5)
    np.testing.assert_allclose(out["acc"], [1.0], atol=1e-6)


def test_empty_ray_shows_background():
    out = composite(tf.ones([1, 4, 3]) * 0.7, tf.zeros([1, 4]), tf.constant([[1.0, 2, 3, 4]]), tf.ones([1, 4]),
                    background=1.0)
    np.testing.assert_allclose(out["rgb"], [[1.0, 1.0, 1.0]])
    np.testing.assert_allclose(out["acc"], [0.0])
    np.testing.assert_allclose(out["depth"], [0.0])


def test_weights_match_hand_computation():
    sigma = np.array([[0.5, 2.0, 1.0]], np.float32)
    deltas = np.array([[0.4, 0.2, 0.5]], np.float32)
    t_vals = np.array([[2.0, 2.4, 2.6]], np.float32)
    colours = np.array([[[1, 0, 0], [0, 1, 0], [0, 0, 1]]], np.float32)
    alpha = 1 - np.exp(-sigma * deltas)
    transmittance = np.array([[1.0, np.exp(-0.2), np.exp(-0.2 - 0.4)]])
    weights = alpha * transmittance
    out = composite(tf.constant(colours), tf.constant(sigma), tf.constant(t_vals), tf.constant(deltas),
                    background=0.5)
    np.testing.assert_allclose(out["weights"], weights, rtol=1e-5)
    np.testing.assert_allclose(out["rgb"][0], weights[0] @ colours[0] + (1 - weights.sum()) * 0.5, rtol=1e-5)
    np.testing.assert_allclose(out["depth"], [(weights * t_vals).sum() / weights.sum()], rtol=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_opacity_is_a_probability(seed):
    rng = np.random.default_rng(seed)
    sigma = tf.constant(rng.exponential(5.0, size=(64, 32)).astype(np.float32))
    out = composite(tf.constant(rng.uniform(size=(64, 32, 3)).astype(np.float32)), sigma,
                    tf.constant(np.sort(rng.uniform(2, 6, size=(64, 32)), axis=-1).astype(np.float32)),
                    tf.fill([64, 32], 0.125))
    acc = out["acc"].numpy()
    assert np.all(acc >= 0) and np.all(acc <= 1 + 1e-6)
    assert np.all((out["rgb"].numpy() >= 0) & (out["rgb"].numpy() <= 1 + 1e-6))


def test_distortion_loss_is_the_double_sum_and_prefers_one_short_stretch():
    """The O(S) form equals mip-NeRF 360's eq. 15 summed pair by pair; weight in one interval scores less than the
    same weight spread along the ray (a floater in front of the surface)."""
    rng = np.random.default_rng(0)
    edges = np.sort(rng.uniform(0, 1, size=(4, 9)), axis=-1).astype(np.float32)
    s_start, s_end = edges[:, :-1], edges[:, 1:]
    weights = rng.uniform(0, 0.3, size=(4, 8)).astype(np.float32)
    mid = 0.5 * (s_start + s_end)
    expected = (np.einsum("ri,rj,rij->r", weights, weights, np.abs(mid[:, :, None] - mid[:, None, :]))
                + np.sum(weights**2 * (s_end - s_start), axis=-1) / 3)
    np.testing.assert_allclose(distortion_loss(weights, s_start, s_end).numpy(), expected, rtol=1e-5)
    grid = np.linspace(0, 1, 9, dtype=np.float32)[None]
    one_stretch = np.zeros((1, 8), np.float32)
    one_stretch[0, 5] = 0.9
    spread = np.zeros((1, 8), np.float32)
    spread[0, [1, 5]] = 0.45
    loss = [float(distortion_loss(w, grid[:, :-1], grid[:, 1:])[0]) for w in (one_stretch, spread)]
    assert loss[0] < loss[1], loss

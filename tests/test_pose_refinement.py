"""Camera refinement: exp of axis-angles, rays through corrected poses, and poses recovered on the built-in scene."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_params
from scipy.spatial.transform import Rotation

from nerf_pipeline.camera import generate_rays
from nerf_pipeline.config import from_dict
from nerf_pipeline.model.nerf import build_nerf, compile_for_training
from nerf_pipeline.model.pose_refinement import PoseRefinement, rotation_matrices
from nerf_pipeline.scenes import synthetic
from nerf_pipeline.training.datasets import pixel_rays


def test_rotation_matrices_are_rodrigues_with_finite_gradients_at_zero():
    axis_angles = tf.Variable([[0.0, 0.0, 0.0], [1e-3, 2e-3, -1e-3], [0.3, -0.2, 0.5], [0.0, 0.0, np.pi / 2]])
    with tf.GradientTape() as tape:
        rotations = rotation_matrices(axis_angles)
        loss = tf.reduce_sum(rotations * tf.random.normal([4, 3, 3], seed=1))
    gradient = tape.gradient(loss, axis_angles).numpy()
    assert np.isfinite(gradient).all() and np.abs(gradient[0]).max() > 0  # zero, where corrections start, trains
    np.testing.assert_allclose(rotations.numpy(), Rotation.from_rotvec(axis_angles.numpy()).as_matrix(), atol=1e-6)


def test_refined_rays_are_the_rays_of_the_corrected_poses():
    """The refinement moves a view's rays (``call``) exactly as its corrected pose (``corrected_poses``, what export,
    the viewer and render use) makes them; ``sizes`` reports the corrections in degrees and scene units."""
    scene = synthetic.render_scene(num_views=3, image_size=8, seed=0, supersample=1)
    poses, focal = scene["poses"], scene["focal"]
    intrinsics = np.tile(np.array([focal, focal, 4.0, 4.0], np.float32), (3, 1))
    refinement = PoseRefinement(3, scale=0.5)
    corrections = np.array([[0.0, 0.0, 0.1, 0.0, 0.0, 0.0], [0.02, -0.01, 0.0, 0.1, 0.0, -0.2], [0, 0, 0, 0, 0, 0]])
    refinement.correction.assign(corrections / 0.5)
    views, rows, cols = np.repeat(np.arange(3), 64), np.tile(np.repeat(np.arange(8), 8), 3), np.tile(np.arange(8), 24)
    given = pixel_rays(tf.constant(poses), tf.constant(intrinsics), views, rows, cols)
    refined = refinement(*given, tf.constant(views, tf.int32))
    corrected = pixel_rays(tf.constant(refinement.corrected_poses(poses), tf.float32), tf.constant(intrinsics), views,
                           rows, cols)
    for a, b in zip(refined, corrected):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)
    np.testing.assert_array_equal(refined[0].numpy()[128:], given[0].numpy()[128:])  # the third view: no correction
    sizes = refinement.sizes()
    assert sizes["rotation_deg_max"] == pytest.approx(np.degrees(0.1), rel=1e-5)
    assert sizes["translation_max"] == pytest.approx(np.hypot(0.1, 0.2), rel=1e-5)


@pytest.mark.slow
def test_refinement_recovers_perturbed_poses_of_the_built_in_scene():
    """A field fitted on the built-in scene's exact poses, then frozen (which pins the whole scene in place: with
    the field free too, scene and cameras could drift together), and the training views' poses perturbed by 2°
    and 0.05 (of a box of half-size 1.5): training the corrections alone on the perturbed poses brings them back
    most of the way (seen: 2° to 0.40° and 0.05 to 0.028 in 200 steps)."""
    num_views, side = 12, 32
    scene = synthetic.render_scene(num_views=num_views, image_size=side, seed=0, supersample=1)
    params = tiny_params()
    params["presets"]["hashgrid"]["field"].update(num_levels=8, log2_table_size=14, max_resolution=64)
    params["presets"]["hashgrid"]["sampler"].update(num_samples=32, warmup_steps=20, update_every=10)
    params["presets"]["hashgrid"]["optimizer"].update(final_learning_rate=0.003, camera_learning_rate=0.003)
    preset = from_dict(params).presets["hashgrid"]
    exact = scene["poses"].astype(np.float64)
    views = np.repeat(np.arange(num_views, dtype=np.int32), side * side)

    def batches(poses):
        origins, directions = generate_rays(poses.astype(np.float32), side, side, scene["focal"])
        rays = (origins.reshape(-1, 3), directions.reshape(-1, 3), views)
        data = tf.data.Dataset.from_tensor_slices((rays, scene["images"][..., :3].reshape(-1, 3)))
        return data.shuffle(len(views), seed=0).repeat().batch(1024, drop_remainder=True)

    keras.utils.set_random_seed(0)
    model = build_nerf(preset, near=2.0, far=6.0, contracted=False, bound=1.5, background=0.0, seed=0,
                       refined_views=num_views)
    model.pose_refinement.trainable = False
    compile_for_training(model, preset.optimizer, total_steps=300, jit_compile=True)
    model.fit(batches(exact), steps_per_epoch=300, epochs=1, verbose=0, callbacks=model.training_callbacks())

    rng = np.random.default_rng(0)
    axes = rng.normal(size=(num_views, 3))
    shifts = rng.normal(size=(num_views, 3))
    given = exact.copy()
    given[:, :3, :3] = Rotation.from_rotvec(
        axes / np.linalg.norm(axes, axis=1, keepdims=True) * np.radians(2.0)).as_matrix() @ exact[:, :3, :3]
    given[:, :3, 3] += shifts / np.linalg.norm(shifts, axis=1, keepdims=True) * 0.05

    def errors(poses):
        """Mean rotation (degrees) and translation errors against the exact poses."""
        turn = Rotation.from_matrix(poses[:, :3, :3] @ exact[:, :3, :3].transpose(0, 2, 1)).magnitude()
        return np.degrees(turn).mean(), np.linalg.norm(poses[:, :3, 3] - exact[:, :3, 3], axis=1).mean()

    model.field.trainable, model.pose_refinement.trainable = False, True
    compile_for_training(model, preset.optimizer, total_steps=200, jit_compile=True)
    model.fit(batches(given), steps_per_epoch=200, epochs=1, verbose=0)
    (rotation_before, shift_before), (rotation_after, shift_after) = errors(given), errors(
        model.pose_refinement.corrected_poses(given))
    print(f"rotation error {rotation_before:.2f}° -> {rotation_after:.2f}°, translation {shift_before:.3f} -> "
          f"{shift_after:.3f}")
    assert rotation_after < 0.35 * rotation_before and shift_after < 0.75 * shift_before

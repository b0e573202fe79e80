"""Camera refinement: a learned correction of each training view's pose, optimised with the field.

Poses from structure from motion are off by a little (a fraction of a degree, a fraction of a percent of
the scene), and a field fitted to rays that miss by that much blurs what they see. nerfstudio's
nerfacto learns an SO(3) x R^3 correction per training view; so does ``PoseRefinement``: per view an
axis-angle rotation ``omega [3]`` (radians) and a translation ``t [3]`` (scene units), applied on the
world side of the camera-to-world pose, ``R' = exp(omega) R`` and ``c' = c + t``. A ray of that view
becomes ``o' = o + t``, ``d' = exp(omega) d``: it turns about the camera's centre and moves with it.

Its own learning rate: the variable holds the correction divided by ``scale`` (the camera learning rate
over the field's). Adam's steps are about its learning rate in the variable's own units whatever the
gradient's size, so the correction moves by about the camera learning rate per step (decaying with the
field's schedule) while one optimizer, checkpointed as a whole, trains everything.

Only training views have corrections: held-out views and renders use the poses as given (the refined
training poses, ``corrected_poses``, are what export and the viewer draw, and what render's path is
made from).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

PACKAGE = "nerf_pipeline"
SMALL_ANGLE = 1e-2  # radians: below it, exp(omega)'s coefficients come from their Taylor series


def rotation_matrices(axis_angles):
    """``exp`` of axis-angle vectors (Rodrigues): ``axis_angles [N, 3]`` radians → ``[N, 3, 3]`` rotations.
    Exact and with finite gradients at zero, where every correction starts."""
    theta_sq = tf.reduce_sum(tf.square(axis_angles), axis=-1)  # [N]
    small = theta_sq < SMALL_ANGLE**2
    theta = tf.sqrt(tf.where(small, tf.ones_like(theta_sq), theta_sq))  # no sqrt(0): its gradient is inf
    sin_over = tf.where(small, 1.0 - theta_sq / 6.0, tf.sin(theta) / theta)
    cos_over = tf.where(small, 0.5 - theta_sq / 24.0, (1.0 - tf.cos(theta)) / tf.square(theta))
    x, y, z = tf.unstack(axis_angles, axis=-1)
    zero = tf.zeros_like(x)
    skew = tf.reshape(tf.stack([zero, -z, y, z, zero, -x, -y, x, zero], axis=-1), [-1, 3, 3])
    eye = tf.eye(3, batch_shape=tf.shape(axis_angles)[:1], dtype=axis_angles.dtype)
    return eye + sin_over[:, None, None] * skew + cos_over[:, None, None] * tf.matmul(skew, skew)


@keras.saving.register_keras_serializable(package=PACKAGE)
class PoseRefinement(keras.layers.Layer):
    """A pose correction per training view.

    Args:
        num_views: training views (``views`` index them).
        scale: the correction per unit of the variable (the camera learning rate over the field's).
    """

    def __init__(self, num_views: int, scale: float, **kwargs):
        super().__init__(**kwargs)
        self.num_views, self.scale = int(num_views), float(scale)
        if self.num_views < 1 or not self.scale > 0:
            raise ValueError(f"PoseRefinement: needs views (got {num_views}) and a positive scale (got {scale})")
        # [V, 6]: axis-angle (radians) then translation (scene units), over scale
        self.correction = self.add_weight(shape=(self.num_views, 6), initializer="zeros", name="pose_correction")

    def corrections(self):
        """``[V, 6]``: each view's axis-angle rotation (radians) and translation (scene units)."""
        return self.correction * self.scale

    def call(self, ray_origins, ray_directions, views):
        """Rays of training ``views [R]`` int32 through their corrected poses: ``ray_origins, ray_directions
        [R, 3]`` → the same, moved (``o + t``) and turned (``exp(omega) d``, still unit)."""
        correction = tf.gather(self.corrections(), views)  # [R, 6]
        rotation = rotation_matrices(correction[:, :3])
        return ray_origins + correction[:, 3:], tf.linalg.matvec(rotation, ray_directions)

    def corrected_poses(self, poses) -> np.ndarray:
        """The training views' camera-to-world ``poses [V, 4, 4]`` with their corrections applied (numpy)."""
        poses = np.asarray(poses, dtype=np.float64)
        correction = self.corrections().numpy().astype(np.float64)
        rotation = rotation_matrices(tf.constant(correction[:, :3])).numpy()
        corrected = poses.copy()
        corrected[:, :3, :3] = rotation @ poses[:, :3, :3]
        corrected[:, :3, 3] = poses[:, :3, 3] + correction[:, 3:]
        return corrected

    def sizes(self) -> dict:
        """How far the corrections moved the cameras: mean and largest rotation (degrees) and translation (scene
        units) over the views."""
        correction = self.corrections().numpy().astype(np.float64)
        degrees = np.degrees(np.linalg.norm(correction[:, :3], axis=1))
        shifts = np.linalg.norm(correction[:, 3:], axis=1)
        return {"rotation_deg_mean": float(degrees.mean()), "rotation_deg_max": float(degrees.max()),
                "translation_mean": float(shifts.mean()), "translation_max": float(shifts.max())}

    def get_config(self):
        return {**super().get_config(), "num_views": self.num_views, "scale": self.scale}

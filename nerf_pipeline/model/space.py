"""Where the scene lives: how world points map to the field's coordinates, and how rays are cut into bins.

Two spaces (``scene.contraction`` in params.yaml chooses):

* ``BoxSpace``: an object inside the cube ``[-bound, bound]^3`` (NeRF-synthetic, the built-in
  scene). Points are used as they are; a ray is only sampled inside the cube.
* ``ContractedSpace``: an unbounded capture, whose background reaches far beyond the object the
  cameras look at (mip-NeRF 360, Barron et al. 2022). The ball of radius ``bound`` is kept as it
  is; every point beyond it is contracted into the shell out to ``2 bound``:
  ``contract(x) = x`` if ``|x| <= 1`` else ``(2 - 1/|x|) x/|x|`` (in units of ``bound``). Rays are
  sampled all the way from near to far, half their bins evenly in depth up to where they leave the
  ball, half evenly in inverse depth beyond, so the far background gets as many bins as the object.

Both give the field points in the cube ``[-extent, extent]^3`` (``warp``), which the hash grid
and the occupancy grid cover. Shapes: ``R`` rays, ``N`` points.
"""

from __future__ import annotations

import keras
import tensorflow as tf

PACKAGE = "nerf_pipeline"


def ray_box_intersection(ray_origins, ray_directions, box_min, box_max):
    """Entry and exit depths of rays through an axis-aligned box (slab method).

    Args:
        ray_origins, ray_directions: [R, 3] float32.
        box_min, box_max: [3] float32.

    Returns:
        t_enter, t_exit: [R] float32; ``t_enter >= t_exit`` where a ray misses the box.
    """
    # A direction component of exactly 0 gives +-inf slabs, which min/max handle.
    safe_directions = tf.where(tf.abs(ray_directions) < 1e-9, 1e-9, ray_directions)
    inverse = 1.0 / safe_directions
    t0 = (box_min - ray_origins) * inverse
    t1 = (box_max - ray_origins) * inverse
    return tf.reduce_max(tf.minimum(t0, t1), axis=-1), tf.reduce_min(tf.maximum(t0, t1), axis=-1)


def contract(points):
    """mip-NeRF 360's contraction of ``[N, 3]`` points into the ball of radius 2 (identity inside radius 1)."""
    norm = tf.norm(points, axis=-1, keepdims=True)
    safe = tf.maximum(norm, 1.0)  # the outer branch only ever sees norms >= 1: no division by 0, finite gradients
    return tf.where(norm <= 1.0, points, (2.0 - 1.0 / safe) * points / safe)


@keras.saving.register_keras_serializable(package=PACKAGE)
class BoxSpace:
    """A bounded scene in ``[-bound, bound]^3``; ``extent == bound``."""

    def __init__(self, bound: float):
        self.bound = float(bound)

    @property
    def extent(self) -> float:
        return self.bound

    def warp(self, points):
        """World points ``[N, 3]`` → field coordinates ``[N, 3]``: the identity."""
        return points

    def ray_segment(self, ray_origins, ray_directions, near, far):
        """``t_start, t_end: [R]``: the part of each ray inside ``[near, far]`` and the cube (empty on a miss)."""
        t_enter, t_exit = ray_box_intersection(ray_origins, ray_directions, -self.bound, self.bound)
        t_start = tf.maximum(t_enter, near)
        return t_start, tf.maximum(tf.minimum(t_exit, far), t_start)

    def world_box(self, box_min, box_max):
        """The world box holding the field-coordinate box ``[box_min, box_max]``: the same box."""
        return box_min, box_max

    def depths(self, ray_origins, t_start, t_end, fractions):
        """Depths ``[R, K]`` at ``fractions [R, K]`` (or [K]) of each segment: evenly spaced in depth."""
        return t_start[:, None] + fractions * (t_end - t_start)[:, None]

    def normalized_distance(self, t, near: float, far: float):
        """Depths ``t`` along rays → ``[0, 1]`` from ``near`` to ``far``: evenly in depth in a box (what the
        distortion loss measures spread in)."""
        return tf.clip_by_value((t - near) / (far - near), 0.0, 1.0)

    def get_config(self):
        return {"bound": self.bound}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.saving.register_keras_serializable(package=PACKAGE)
class ContractedSpace(BoxSpace):
    """An unbounded scene: the ball of radius ``bound`` as it is, the rest contracted; ``extent == 2 bound``."""

    @property
    def extent(self) -> float:
        return 2.0 * self.bound

    def warp(self, points):
        return self.bound * contract(points / self.bound)

    def world_box(self, box_min, box_max):
        """``None``: a box of contracted coordinates holds no bounded world box (it reaches the far background)."""
        return None

    def ray_segment(self, ray_origins, ray_directions, near, far):
        num_rays = tf.shape(ray_origins)[0]
        return tf.fill([num_rays], tf.cast(near, tf.float32)), tf.fill([num_rays], tf.cast(far, tf.float32))

    def normalized_distance(self, t, near: float, far: float):
        """Evenly in inverse depth (disparity), as mip-NeRF 360 measures an unbounded ray for its distortion loss:
        the far background does not outweigh the object."""
        t = tf.clip_by_value(t, near, far)
        return (1.0 / near - 1.0 / t) / (1.0 / near - 1.0 / far)

    def depths(self, ray_origins, t_start, t_end, fractions):
        """The first half of ``[0, 1]`` evenly in depth up to where the ray has surely left the ball
        (its origin's distance plus ``bound``), the second half evenly in inverse depth beyond."""
        t_ball = tf.clip_by_value(tf.norm(ray_origins, axis=-1) + self.bound, t_start, t_end)[:, None]
        t_start, t_end = t_start[:, None], t_end[:, None]
        inner = t_start + 2.0 * fractions * (t_ball - t_start)
        outer_fraction = tf.clip_by_value(2.0 * fractions - 1.0, 0.0, 1.0)
        # 1/t moves linearly from 1/t_ball to 1/t_end
        outer = 1.0 / ((1.0 - outer_fraction) / t_ball + outer_fraction / t_end)
        return tf.where(fractions < 0.5, inner, outer)


def make_space(contracted: bool, bound: float) -> BoxSpace:
    return ContractedSpace(bound) if contracted else BoxSpace(bound)

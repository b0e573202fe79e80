"""Where along each ray the field is evaluated (TensorFlow functions of tensors, no I/O).

Two strategies, both with a static number of samples per ray so that every step compiles
once under XLA:

* ``uniform_samples``: evenly spaced depths between near and far, optionally jittered
  within their strata (the original NeRF and the Keras example).
* ``occupancy_samples``: depths drawn by inverse transform sampling from a binary
  occupancy grid, so that every sample lands in space that may hold matter and none is
  spent on empty space. Each sample stands for an equal share of the ray's occupied
  length, which is its ``deltas`` entry in the compositing sum.

Shapes: ``R`` rays, ``S`` samples per ray, ``M`` march steps.
"""

from __future__ import annotations

import keras
import tensorflow as tf


def uniform_samples(num_rays, near, far, num_samples: int, stratified: bool, seed=None):
    """Evenly spaced sample depths, optionally jittered.

    As in the Keras example, jitter shifts each depth forward by up to one stratum and
    the last delta is 1e10 (the ray ends in whatever it last sees).

    Args:
        num_rays: R (scalar int tensor or int).
        near, far: scalar floats.
        seed: a ``keras.random.SeedGenerator`` (or None) for the jitter.

    Returns:
        t_vals: [R, S] float32 sample depths, increasing along each ray.
        deltas: [R, S] float32 length of ray each sample stands for.
    """
    t_vals = tf.linspace(tf.cast(near, tf.float32), tf.cast(far, tf.float32), num_samples)
    t_vals = tf.broadcast_to(t_vals[None, :], [num_rays, num_samples])
    if stratified:
        t_vals += keras.random.uniform([num_rays, num_samples], seed=seed) * (far - near) / num_samples
    deltas = tf.concat(
        [t_vals[:, 1:] - t_vals[:, :-1], tf.fill([num_rays, 1], tf.constant(1e10, tf.float32))], axis=-1
    )
    return t_vals, deltas


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
    t_enter = tf.reduce_max(tf.minimum(t0, t1), axis=-1)
    t_exit = tf.reduce_min(tf.maximum(t0, t1), axis=-1)
    return t_enter, t_exit


def march_occupancy(ray_origins, ray_directions, near, far, occupied, scene_bound: float, num_march: int):
    """Read the occupancy grid in ``num_march`` equal bins along each ray's part inside the scene cube.

    Args:
        ray_origins, ray_directions: [R, 3] float32, directions unit length.
        occupied: [G, G, G] float32 in {0, 1}, indexed [x, y, z] over ``[-scene_bound, scene_bound]^3``.

    Returns:
        t_start: [R] depth of the first bin's start (the later of ``near`` and the cube's entry).
        bin_width: [R] length of each bin (0 where the ray misses the cube).
        bin_occupied: [R, M] occupancy of the cell at each bin's midpoint.
    """
    box = tf.constant(scene_bound, tf.float32)
    t_enter, t_exit = ray_box_intersection(ray_origins, ray_directions, -box, box)
    t_start = tf.maximum(t_enter, near)
    t_end = tf.maximum(tf.minimum(t_exit, far), t_start)  # empty segment where the ray misses
    bin_width = (t_end - t_start) / num_march  # [R]
    bin_mid = t_start[:, None] + bin_width[:, None] * (tf.range(num_march, dtype=tf.float32) + 0.5)
    points = ray_origins[:, None, :] + ray_directions[:, None, :] * bin_mid[..., None]  # [R, M, 3]
    resolution = tf.shape(occupied)[0]
    cells = tf.cast(tf.floor((points + box) / (2.0 * box) * tf.cast(resolution, tf.float32)), tf.int32)
    cells = tf.clip_by_value(cells, 0, resolution - 1)
    return t_start, bin_width, tf.gather_nd(occupied, cells)


def occupancy_samples(ray_origins, ray_directions, near, far, occupied, scene_bound: float,
                      num_samples: int, num_march: int, stratified: bool, seed=None):
    """Sample depths that land only in occupied cells of a grid over the scene box.

    The ray segment inside ``[near, far]`` and inside the cube ``[-scene_bound, scene_bound]^3``
    is cut into ``num_march`` equal bins; each bin takes the occupancy of the grid cell at
    its midpoint (``march_occupancy``). The occupied bins, laid end to end, make a segment of
    ``n`` bins (the ray's occupied length ``L = n * bin_width``); sample ``i`` sits at
    ``(i + u_i) / S`` of it (``u_i = 0.5``, or uniform in [0, 1) when stratified) and is
    mapped back to the bin it falls in. Consecutive samples are thus ``L / S`` apart in
    occupied length, and no sample is spent on empty space.

    Args:
        ray_origins, ray_directions: [R, 3] float32, directions unit length.
        occupied: [G, G, G] float32 in {0, 1}, indexed [x, y, z] over the cube.
        seed: a ``keras.random.SeedGenerator`` (or None) for the jitter.

    Returns:
        t_vals: [R, S] float32 sample depths, non-decreasing along each ray.
        deltas: [R, S] float32, ``L / S`` for every sample (0 on rays with nothing occupied).
    """
    num_rays = tf.shape(ray_origins)[0]
    t_start, bin_width, bin_occupied = march_occupancy(ray_origins, ray_directions, near, far, occupied,
                                                       scene_bound, num_march)
    num_occupied = tf.reduce_sum(bin_occupied, axis=-1)  # [R], n

    # occupied_bins[r, k]: index of ray r's k-th occupied bin. Each occupied bin is scattered to
    # the slot of its rank; empty bins go to a spare slot past the end. (A scatter of R * M
    # indices, where searching a CDF would compare every sample with every bin.)
    rank = tf.cast(tf.math.cumsum(bin_occupied, axis=-1), tf.int32) - 1
    slot = tf.where(bin_occupied > 0, rank, num_march)
    rows = tf.broadcast_to(tf.range(num_rays)[:, None], tf.shape(slot))
    bins = tf.broadcast_to(tf.range(num_march)[None, :], tf.shape(slot))
    occupied_bins = tf.tensor_scatter_nd_update(tf.zeros([num_rays, num_march + 1], tf.int32),
                                                tf.stack([rows, slot], axis=-1), bins)

    if stratified:
        offsets = keras.random.uniform([num_rays, num_samples], seed=seed)
    else:
        offsets = tf.fill([num_rays, num_samples], 0.5)
    position = (tf.range(num_samples, dtype=tf.float32)[None, :] + offsets) / num_samples * num_occupied[:, None]
    rank_of_sample = tf.clip_by_value(tf.floor(position), 0.0, tf.maximum(num_occupied[:, None] - 1.0, 0.0))
    fraction = tf.clip_by_value(position - rank_of_sample, 0.0, 1.0)
    sample_bin = tf.gather(occupied_bins, tf.cast(rank_of_sample, tf.int32), batch_dims=1)
    t_vals = t_start[:, None] + (tf.cast(sample_bin, tf.float32) + fraction) * bin_width[:, None]
    deltas = tf.broadcast_to((num_occupied * bin_width / num_samples)[:, None], [num_rays, num_samples])
    return t_vals, deltas

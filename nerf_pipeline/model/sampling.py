"""Samplers: where along each ray the field is evaluated.

A sampler is a Keras layer with

* ``sample(ray_origins, ray_directions, near, far, space, training, seed_generator) -> (t_vals, deltas)``,
  both ``[R, S]`` float32: the sample depths (non-decreasing along each ray) and the length of ray
  each sample stands for, which is its weight in the compositing sum;
* ``hits(ray_origins, ray_directions, near, far, space) -> [R]`` bool: whether a ray can meet
  matter at all (a ray that cannot renders as the background whatever the field says);
* ``may_hit(ray_origins, ray_directions, near, far, space) -> [R]`` numpy bool: a cheap superset
  of ``hits`` (no marching), with which renderers skip most empty rays before asking ``hits``;
* ``callbacks()``: the Keras callbacks that keep its state up to date while training.

Every sampler draws a static number of samples per ray, so every step compiles once under XLA.
A new sampler is a class here, registered under its config's ``type``, and a config class in
``config.py``. Shapes: ``R`` rays, ``S`` samples per ray, ``M`` march bins.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from nerf_pipeline.config import OccupancySamplerConfig, UniformSamplerConfig, saved_part
from nerf_pipeline.model.occupancy import OccupancyGrid, UpdateOccupancyGrid
from nerf_pipeline.model.space import ContractedSpace, ray_box_intersection
from nerf_pipeline.native import build as native_build

PACKAGE = "nerf_pipeline"


@keras.saving.register_keras_serializable(package=PACKAGE)
class UniformSampler(keras.layers.Layer):
    """Evenly spaced depths between near and far, jittered within their strata while training.

    As in the Keras example, jitter shifts each depth forward by up to one stratum and the last
    delta is 1e10 (the ray ends in whatever it last sees). The spacing is the space's: even in
    depth in a box, even in inverse depth beyond the ball in a contracted space.
    """

    def __init__(self, config: dict, **kwargs):
        super().__init__(**kwargs)
        self.sampler_config = saved_part(UniformSamplerConfig, config)  # a saved model's, maybe of an older version
        self.built = True

    def sample(self, ray_origins, ray_directions, near, far, space, training, seed_generator):
        c = self.sampler_config
        num_rays = tf.shape(ray_origins)[0]
        fractions = tf.broadcast_to(tf.linspace(0.0, 1.0, c.num_samples)[None, :], [num_rays, c.num_samples])
        if training and c.stratified:
            fractions += keras.random.uniform([num_rays, c.num_samples], seed=seed_generator) / c.num_samples
        near, far = tf.fill([num_rays], tf.cast(near, tf.float32)), tf.fill([num_rays], tf.cast(far, tf.float32))
        t_vals = space.depths(ray_origins, near, far, fractions)
        deltas = tf.concat([t_vals[:, 1:] - t_vals[:, :-1], tf.fill([num_rays, 1], 1e10)], axis=-1)
        return t_vals, deltas

    def hits(self, ray_origins, ray_directions, near, far, space):
        return tf.ones(tf.shape(ray_origins)[:1], tf.bool)

    def may_hit(self, ray_origins, ray_directions, near, far, space):
        return np.ones(len(ray_origins), bool)

    def callbacks(self) -> list:
        return []

    def get_config(self):
        return {**super().get_config(), "config": self.sampler_config.model_dump()}


@keras.saving.register_keras_serializable(package=PACKAGE)
class OccupancySampler(keras.layers.Layer):
    """Depths drawn only in the cells of an ``OccupancyGrid`` that may hold matter.

    Each ray's segment in the space (``space.ray_segment``) is cut into ``num_march`` bins
    (``space.depths``: even in depth in a box); each bin takes the occupancy of the grid cell at
    its midpoint. The occupied bins, laid end to end, make a segment of ``n`` bins; sample ``i``
    sits at ``(i + u_i) / S`` of it (``u_i = 0.5``, or uniform in [0, 1) when stratified) and is
    mapped back to the bin it falls in. Each sample stands for the occupied length of its stratum,
    ``L / S`` of the ray's occupied length ``L`` when bins are even, so no sample is spent on empty
    space and the deltas of a ray add up to its occupied length.
    """

    def __init__(self, config: dict, **kwargs):
        super().__init__(**kwargs)
        self.sampler_config = c = saved_part(OccupancySamplerConfig, config)  # maybe of an older version
        self.grid = OccupancyGrid(c.grid_resolution, c.alpha_threshold, c.decay, name="grid")
        self.built = True

    def edges(self, ray_origins, ray_directions, near, far, space):
        """``[R, M + 1]`` bin edges (depths) of each ray's segment in the space; all equal where it misses."""
        t_start, t_end = space.ray_segment(ray_origins, ray_directions, near, far)
        return space.depths(ray_origins, t_start, t_end, tf.linspace(0.0, 1.0, self.sampler_config.num_march + 1))

    def march(self, ray_origins, ray_directions, near, far, space):
        """Read the grid along each ray.

        Returns:
            edges: [R, M + 1] bin edges (depths); all equal where the ray misses the space.
            bin_occupied: [R, M] float32 0/1, the occupancy at each bin's midpoint.
        """
        edges = self.edges(ray_origins, ray_directions, near, far, space)
        middles = 0.5 * (edges[:, 1:] + edges[:, :-1])
        points = space.warp(tf.reshape(ray_origins[:, None, :] + ray_directions[:, None, :] * middles[..., None],
                                       [-1, 3]))
        bin_occupied = tf.reshape(self.grid.lookup(points, space.extent), tf.shape(middles))
        return edges, bin_occupied * tf.cast(edges[:, 1:] > edges[:, :-1], tf.float32)

    def native_functions(self, near, far, space, jit_compile: bool, training: bool = False, seed_generator=None):
        """``(hits, sample)`` with the native march (``native/occupancy.cc``), each taking ``(ray_origins,
        ray_directions)``: the results of ``hits`` and ``sample`` (jittered while ``training`` and stratified, by
        ``seed_generator``), with XLA (``jit_compile``) around the op. ``None`` where the native library is not
        available. Not differentiable: nothing upstream of the samples trains."""
        library = native_build.cpu_library()
        if library is None:
            return None
        attrs = {"extent": float(space.extent),
                 "contract_bound": float(space.bound) if isinstance(space, ContractedSpace) else 0.0}
        c = self.sampler_config
        edges = tf.function(lambda o, d: self.edges(o, d, near, far, space), jit_compile=jit_compile)

        def offsets(num_rays):
            if training and c.stratified:
                return keras.random.uniform([num_rays, c.num_samples], seed=seed_generator)
            return tf.fill([num_rays, c.num_samples], 0.5)

        offsets = tf.function(offsets, jit_compile=jit_compile)

        def hits(ray_origins, ray_directions):
            return library.nerf_occupancy_hits(ray_origins, ray_directions, edges(ray_origins, ray_directions),
                                               self.grid.occupied.value, **attrs)

        def sample(ray_origins, ray_directions):
            return library.nerf_occupancy_sample(ray_origins, ray_directions, edges(ray_origins, ray_directions),
                                                 self.grid.occupied.value, offsets(tf.shape(ray_origins)[0]), **attrs)

        return hits, sample

    def native_render_functions(self, near, far, space, jit_compile: bool):
        """``native_functions`` for rendering (no jitter), as ``tf.function``s; ``None`` without the library."""
        functions = self.native_functions(near, far, space, jit_compile)
        return None if functions is None else tuple(tf.function(f) for f in functions)

    def hits(self, ray_origins, ray_directions, near, far, space):
        _, bin_occupied = self.march(ray_origins, ray_directions, near, far, space)
        return tf.reduce_any(bin_occupied > 0, axis=-1)

    def may_hit(self, ray_origins, ray_directions, near, far, space):
        """Rays whose segment crosses the box around the occupied cells (``OccupancyGrid.occupied_box``): every
        bin that ``hits`` finds occupied has its midpoint in that box. All rays where the space has no such box."""
        box = self.grid.occupied_box(space.extent)
        if box is None:
            return np.zeros(len(ray_origins), bool)
        box = space.world_box(*box)
        if box is None:
            return np.ones(len(ray_origins), bool)
        t_start, t_end = space.ray_segment(ray_origins, ray_directions, near, far)
        t_enter, t_exit = ray_box_intersection(ray_origins, ray_directions, *box)
        return (tf.minimum(t_exit, t_end) >= tf.maximum(t_enter, t_start)).numpy() & (t_end > t_start).numpy()

    def sample(self, ray_origins, ray_directions, near, far, space, training, seed_generator):
        edges, bin_occupied = self.march(ray_origins, ray_directions, near, far, space)
        return self._sample_bins(edges, bin_occupied, training, seed_generator)

    def _sample_bins(self, edges, bin_occupied, training, seed_generator):
        """``(t_vals, deltas) [R, S]`` from a march's ``edges [R, M + 1]`` and ``bin_occupied [R, M]``."""
        c = self.sampler_config
        num_rays, num_march, num_samples = tf.shape(edges)[0], c.num_march, c.num_samples
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

        # Lay the occupied bins end to end in rank order: their lengths, and the length before each.
        lengths = edges[:, 1:] - edges[:, :-1]  # [R, M]
        ranked = occupied_bins[:, :num_march]
        is_ranked = tf.range(num_march)[None, :] < tf.cast(num_occupied[:, None], tf.int32)
        ranked_lengths = tf.where(is_ranked, tf.gather(lengths, ranked, batch_dims=1), 0.0)
        length_before = tf.math.cumsum(ranked_lengths, axis=-1, exclusive=True)

        def locate(position):
            """Rank-space positions [R, K] in [0, n] → (rank, fraction of that bin, occupied length before)."""
            rank_of = tf.clip_by_value(tf.floor(position), 0.0, tf.maximum(num_occupied[:, None] - 1.0, 0.0))
            fraction = tf.clip_by_value(position - rank_of, 0.0, 1.0)
            rank_of = tf.cast(rank_of, tf.int32)
            covered = (tf.gather(length_before, rank_of, batch_dims=1)
                       + fraction * tf.gather(ranked_lengths, rank_of, batch_dims=1))
            return rank_of, fraction, covered

        if training and c.stratified:
            offsets = keras.random.uniform([num_rays, num_samples], seed=seed_generator)
        else:
            offsets = tf.fill([num_rays, num_samples], 0.5)
        per_sample = num_occupied[:, None] / num_samples  # each sample's stratum, in bins
        strata = tf.range(num_samples, dtype=tf.float32)[None, :]
        rank_of, fraction, _ = locate((strata + offsets) * per_sample)
        sample_bin = tf.gather(ranked, rank_of, batch_dims=1)
        t_vals = tf.gather(edges, sample_bin, batch_dims=1) + fraction * tf.gather(lengths, sample_bin, batch_dims=1)
        # Each sample stands for the occupied length of its stratum (n / S of a bin when bins are even).
        deltas = locate((strata + 1.0) * per_sample)[2] - locate(strata * per_sample)[2]
        return t_vals, deltas

    def callbacks(self) -> list:
        return [UpdateOccupancyGrid(self.sampler_config.update_every, self.sampler_config.warmup_steps)]

    def get_config(self):
        return {**super().get_config(), "config": self.sampler_config.model_dump()}


SAMPLERS = {"uniform": UniformSampler, "occupancy": OccupancySampler}


def make_sampler(config: UniformSamplerConfig | OccupancySamplerConfig) -> keras.layers.Layer:
    """The sampler that ``config`` (its ``type``) describes."""
    return SAMPLERS[config.type](config.model_dump(), name="sampler")

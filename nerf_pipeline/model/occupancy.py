"""The occupancy grid: which cells of the scene's cube may hold matter, kept up to date while training.

``OccupancyGrid`` is a Keras layer whose (non-trainable) weights are the grid, so it is saved and
checkpointed with the model. ``UpdateOccupancyGrid`` is the training callback that refreshes it
every few steps from the field's density (instant-ngp's scheme: a decaying running maximum of
the density at a random point of every cell). Shapes: ``G`` cells per side, indexed ``[x, y, z]``
over the field's cube ``[-extent, extent]^3``.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from nerf_pipeline.model.space import BoxSpace, ContractedSpace

PACKAGE = "nerf_pipeline"


def world_length_per_unit(space: BoxSpace, points, cell_size: float):
    """``[N]`` world length a ray travels per unit of field length near field points ``points [N, 3]``.

    1 in a box and inside a contracted space's ball. In its shell (``bound <= |p| < 2 bound``) the
    inverse contraction stretches the radial direction by ``bound^2 / (2 bound - |p|)^2`` (``|x| = bound^2 /
    (2 bound - |p|)``), more than any other (the tangential stretch is ``|x| / |p|``); rays from cameras
    inside the ball cross the shell about radially, so that is what a ray spends crossing a cell there.
    ``|p|`` is taken at most half a cell short of ``2 bound``: the outermost cells reach infinity.
    """
    if not isinstance(space, ContractedSpace):
        return tf.ones(tf.shape(points)[:-1])
    bound = space.bound
    radius = tf.minimum(tf.norm(points, axis=-1), 2.0 * bound - 0.5 * cell_size)
    return tf.where(radius <= bound, 1.0, bound**2 / tf.square(2.0 * bound - radius))


@keras.saving.register_keras_serializable(package=PACKAGE)
class OccupancyGrid(keras.layers.Layer):
    """A ``[G, G, G]`` grid of 0/1 over ``[-extent, extent]^3`` (all ones until the first update)."""

    def __init__(self, resolution: int, alpha_threshold: float, decay: float, **kwargs):
        super().__init__(**kwargs)
        self.resolution = int(resolution)
        self.alpha_threshold, self.decay = float(alpha_threshold), float(decay)
        g = self.resolution
        self.occupied = self.add_weight(shape=(g, g, g), initializer="ones", trainable=False, name="occupied")
        self.density_ema = self.add_weight(shape=(g, g, g), initializer="zeros", trainable=False, name="density_ema")
        self.updates = self.add_weight(shape=(), initializer="zeros", trainable=False, name="updates", dtype="int64")
        self.built = True

    def lookup(self, points, extent: float):
        """Occupancy ``[...]`` (0 or 1) of the cells holding ``points [..., 3]`` (clamped to the cube)."""
        cells = tf.cast(tf.floor((points + extent) / (2.0 * extent) * self.resolution), tf.int32)
        return tf.gather_nd(self.occupied, tf.clip_by_value(cells, 0, self.resolution - 1))

    def occupied_box(self, extent: float):
        """``(box_min, box_max)``: [3] float32 each, the smallest box of whole cells holding every occupied cell,
        widened by half a cell on each side (so a point that rounds into an occupied cell is inside it);
        ``None`` when no cell is occupied."""
        occupied = np.argwhere(self.occupied.numpy() > 0)
        if not len(occupied):
            return None
        cell_size = 2.0 * extent / self.resolution
        box_min = -extent + (occupied.min(axis=0) - 0.5) * cell_size
        box_max = -extent + (occupied.max(axis=0) + 1.5) * cell_size
        return box_min.astype(np.float32), box_max.astype(np.float32)

    def update(self, density, space: BoxSpace | float, seed_generator) -> None:
        """Re-estimate which cells hold matter from ``density(points [N, 3]) -> [N]`` (per world unit) over
        ``space``'s field cube ``[-space.extent, space.extent]^3`` (a number: the extent of a box)."""
        space = space if isinstance(space, BoxSpace) else BoxSpace(float(space))
        g, extent = self.resolution, space.extent
        cell_size = 2.0 * extent / g
        cells = tf.cast(tf.stack(tf.meshgrid(tf.range(g), tf.range(g), tf.range(g), indexing="ij"), -1), tf.float32)
        jitter = keras.random.uniform([g, g, g, 3], seed=seed_generator)
        points = tf.reshape(-extent + (cells + jitter) * cell_size, [-1, 3])
        ema = tf.maximum(self.density_ema * self.decay, tf.reshape(density(points), [g, g, g]))
        self.density_ema.assign(ema)
        # Occupied where a ray crossing the cell would lose at least alpha_threshold of its light, or
        # where the density is above the grid's mean: early in training, when no density is high yet,
        # a fixed threshold would empty the grid, and an empty cell gets no gradient to refill it.
        # Density is per world unit, and a contracted space's shell packs more world into a cell the
        # farther out it lies: the light lost is density x the world length of the crossing.
        centres = tf.reshape(-extent + (cells + 0.5) * cell_size, [-1, 3])
        crossing = tf.reshape(cell_size * world_length_per_unit(space, centres, cell_size), [g, g, g])
        threshold = tf.minimum(-math.log(1.0 - self.alpha_threshold) / crossing, tf.reduce_mean(ema))
        self.occupied.assign(tf.cast(ema > threshold, tf.float32))
        self.updates.assign_add(1)

    def get_config(self):
        return {**super().get_config(), "resolution": self.resolution, "alpha_threshold": self.alpha_threshold,
                "decay": self.decay}


class UpdateOccupancyGrid(keras.callbacks.Callback):
    """Refresh ``model.sampler.grid`` after every ``every``-th training step from ``warmup_steps`` on.

    The step count is the optimizer's, so a resumed run updates at the same steps as an
    uninterrupted one.
    """

    def __init__(self, every: int, warmup_steps: int):
        super().__init__()
        self.every, self.warmup_steps = every, warmup_steps
        self._step = 0
        self._update = None

    def on_train_begin(self, logs=None):
        model = self.model
        self._step = int(model.optimizer.iterations.numpy())
        grid, field, space = model.sampler.grid, model.field, model.space
        self._update = tf.function(lambda: grid.update(field.density, space, model.seed_generator),
                                   jit_compile=bool(model.jit_compile))

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1
        if self._step >= self.warmup_steps and self._step % self.every == 0:
            self._update()

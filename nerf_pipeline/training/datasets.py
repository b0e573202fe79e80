"""Training batches streamed from a rays folder (``scenes/ray_files.py``) with ``tf.data``.

Batches are ``((ray_origins [R, 3], ray_directions [R, 3]), rgb [R, 3])`` float32, or with
``with_views`` ``((ray_origins, ray_directions, views [R] int32), rgb)``: each ray's view, its index
in the part (what a per-view appearance embedding is looked up by). A batch's rays
are made in TensorFlow from the cameras of the views its pixels belong to (``pixel_rays``), and
its colours are read from the part's memory-mapped uint8 images, so no stage holds a float copy
of every ray: memory stays at the size of the images (3 bytes per pixel), whatever the scene.

Where the part has masks, masked-out pixels are never drawn (``_KeptPixels``): a drawn pixel that
the mask leaves out is drawn again (from all pixels in ``rays`` mode, from its own view in
``images`` mode) until it is kept, so batches keep their size and rays stay uniform over the
kept pixels, with no index of them held in memory.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from nerf_pipeline.config import Config, ImageBatchConfig, RayBatchConfig
from nerf_pipeline.errors import DataError
from nerf_pipeline.scenes.ray_files import RayPart
from nerf_pipeline.scenes.scene import evenly_spread


def pixel_rays(poses, intrinsics, views, rows, cols):
    """Rays through pixel centres, as ``camera.generate_rays`` makes them, in TensorFlow.

    Args:
        poses: [V, 4, 4] float32 camera-to-world; intrinsics: [V, 4] float32 fx, fy, cx, cy.
        views, rows, cols: [R] int: the view and pixel of each ray.

    Returns:
        ray_origins, ray_directions: [R, 3] float32, unit directions.
    """
    pose, k = tf.gather(poses, views), tf.gather(intrinsics, views)
    x = (tf.cast(cols, tf.float32) + 0.5 - k[:, 2]) / k[:, 0]
    y = -(tf.cast(rows, tf.float32) + 0.5 - k[:, 3]) / k[:, 1]  # image rows grow downwards, camera +y is up
    directions = tf.linalg.matvec(pose[:, :3, :3], tf.stack([x, y, -tf.ones_like(x)], axis=-1))
    return pose[:, :3, 3], tf.math.l2_normalize(directions, axis=-1)


def _pixel_grid(height: int, width: int):
    """``(rows, cols)``: [H * W] int64 each, the pixels of a view in row-major order."""
    rows, cols = np.meshgrid(np.arange(height, dtype=np.int64), np.arange(width, dtype=np.int64), indexing="ij")
    return tf.constant(rows.ravel()), tf.constant(cols.ravel())


def _mix(values: np.ndarray) -> np.ndarray:
    """The next pseudo-random uint64 of each value (splitmix64's finaliser): a redraw that depends only
    on what was drawn, so batches stay reproducible and resumable."""
    with np.errstate(over="ignore"):
        z = values.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


class _KeptPixels:
    """Flat pixel indices [R] int64 with every masked-out one redrawn until the mask keeps it (inside
    ``tf.numpy_function``): over all pixels of the part (``same_view`` False), or within the drawn
    pixel's view (True; each view must keep a pixel)."""

    MAX_REDRAWS = 1_000_000  # far beyond what any mask that keeps a pixel needs

    def __init__(self, part: RayPart, same_view: bool):
        self.kept = part.masks.reshape(-1)  # a view of the memory map, no copy
        self.pixels_per_view = part.height * part.width
        self.same_view = same_view

    def __call__(self, index: np.ndarray) -> np.ndarray:
        index = np.asarray(index, dtype=np.int64).copy()
        draws = index.astype(np.uint64)
        for _ in range(self.MAX_REDRAWS):
            masked = np.flatnonzero(self.kept[index] == 0)
            if not len(masked):
                return index
            draws[masked] = _mix(draws[masked])
            if self.same_view:
                view = index[masked] // self.pixels_per_view
                index[masked] = view * self.pixels_per_view + (draws[masked] % np.uint64(self.pixels_per_view)).astype(
                    np.int64)
            else:
                index[masked] = (draws[masked] % np.uint64(len(self.kept))).astype(np.int64)
        raise RuntimeError("_KeptPixels: a mask that keeps no pixel reached the dataset")  # train_dataset refuses those


def kept_views(part: RayPart) -> np.ndarray:
    """The views of ``part`` with at least one kept pixel (all of them where it has no masks), [V'] int."""
    if part.masks is None:
        return np.arange(part.num_views)
    return np.array([v for v in range(part.num_views) if np.any(part.masks[v])], dtype=np.int64)


class _Pixels:
    """Reads the colours of flat pixel indices from a part's memory-mapped images (inside ``tf.numpy_function``)."""

    def __init__(self, part: RayPart):
        self.flat = part.images.reshape(-1, 3)  # a view of the memory map, no copy

    def __call__(self, index: np.ndarray) -> np.ndarray:
        return np.asarray(self.flat[index], dtype=np.uint8)


def train_dataset(part: RayPart, batch: RayBatchConfig | ImageBatchConfig, seed: int,
                  skip_batches: int = 0, with_views: bool = False) -> tf.data.Dataset:
    """Endless training batches; the first ``skip_batches`` are skipped without being read (resuming).

    Mode ``rays``: ``R = batch.size * batch.candidate_factor`` random pixels of all training views.
    Mode ``images``: ``batch.size`` whole shuffled views, ``R = batch.size * H * W``.
    ``with_views``: the inputs also hold each ray's view index (the same rays and colours either way).
    """
    height, width = part.height, part.width
    poses, intrinsics = tf.constant(part.poses), tf.constant(part.intrinsics)
    pixels = _Pixels(part)
    views_kept = kept_views(part)
    if not len(views_kept):
        raise DataError(f"{part.folder}: the masks leave out every pixel of every {part.part} view; nothing to train "
                        "on. Check the capture's masks (nonzero = keep).")
    kept = None if part.masks is None else _KeptPixels(part, same_view=not isinstance(batch, RayBatchConfig))

    def only_kept(index):
        if kept is None:
            return index
        return tf.reshape(tf.numpy_function(kept, [index], tf.int64, stateful=False), [-1])

    def colours(index):
        rgb = tf.numpy_function(pixels, [index], tf.uint8, stateful=False)
        return tf.cast(tf.reshape(rgb, [-1, 3]), tf.float32) / 255.0

    def batch_of(index):
        """The batch of flat pixel indices ``index [R]`` of the part."""
        views, pixel = index // (height * width), index % (height * width)
        rays = pixel_rays(poses, intrinsics, views, pixel // width, pixel % width)
        return ((*rays, tf.cast(views, tf.int32)) if with_views else rays), colours(index)

    if isinstance(batch, RayBatchConfig):
        num_rays = part.num_views * height * width
        indices = tf.data.Dataset.random(seed=seed).batch(batch.size * batch.candidate_factor, drop_remainder=True)
        indices = indices.skip(skip_batches).map(lambda r: only_kept(r % num_rays))
        return indices.map(batch_of, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

    # Views whose masks keep no pixel are left out; the others' masked pixels are redrawn within the view.
    views = tf.data.Dataset.from_tensor_slices(views_kept).shuffle(len(views_kept), seed=seed,
                                                                     reshuffle_each_iteration=True)
    views = views.repeat().batch(batch.size, drop_remainder=True).skip(skip_batches)
    rows, cols = _pixel_grid(height, width)

    def whole_views(view_batch):
        count = tf.shape(view_batch)[0]
        view_ids = tf.repeat(view_batch, height * width)
        return batch_of(only_kept(view_ids * height * width + tf.tile(rows * width + cols, [count])))

    return views.map(whole_views, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def val_views(part: RayPart, max_views: int) -> np.ndarray:
    """The val views validated during training: at most ``max_views``, evenly spread."""
    return evenly_spread(part.num_views, max_views)


def steps_per_epoch(cfg: Config, part: RayPart) -> int:
    """The preset's ``steps_per_epoch``, or one pass over the training rays (or views)."""
    preset = cfg.active
    if preset.steps_per_epoch is not None:
        return preset.steps_per_epoch
    available = part.num_views * part.height * part.width if isinstance(preset.batch, RayBatchConfig) \
        else part.num_views
    return max(1, available // preset.batch.size)


def check_batch(cfg: Config, num_train_views: int, num_train_rays: int) -> None:
    """Refuse a batch larger than the training split."""
    batch = cfg.active.batch
    rays = isinstance(batch, RayBatchConfig)
    available, unit = (num_train_rays, "rays") if rays else (num_train_views, "views")
    if batch.size > available:
        raise DataError(f"params.yaml: 'presets.{cfg.preset}.batch.size' is {batch.size} but the training "
                        f"split has only {available} {unit}; use a batch of at most {available}.")

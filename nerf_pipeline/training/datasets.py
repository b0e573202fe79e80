"""Training and validation batches as ``tf.data`` pipelines over a rays folder's arrays (see ``scenes/ray_files.py``).

Batches are ``((ray_origins [R, 3], ray_directions [R, 3]), rgb [R, 3])`` float32.
"""

from __future__ import annotations

import tensorflow as tf

from nerf_pipeline.config import Config, ImageBatchConfig, RayBatchConfig
from nerf_pipeline.runtime.errors import DataError


def flat_rays(part: dict):
    """``(ray_origins, ray_directions, rgb)``, each ``[V * H * W, 3]`` float32."""
    return tuple(part[key].reshape(-1, 3) for key in ("ray_origins", "ray_directions", "rgb"))


def train_dataset(train: dict, batch: RayBatchConfig | ImageBatchConfig, seed: int) -> tf.data.Dataset:
    """Endless training batches.

    Mode ``rays``: ``R = batch.size * batch.candidate_factor`` random rays of all training views
    (gathered from the arrays by random indices: no Python per ray).
    Mode ``images``: ``batch.size`` whole shuffled views, ``R = batch.size * H * W``.
    """
    if isinstance(batch, RayBatchConfig):
        origins, directions, rgb = (tf.constant(a) for a in flat_rays(train))
        num_rays = int(origins.shape[0])
        indices = tf.data.Dataset.random(seed=seed).batch(batch.size * batch.candidate_factor, drop_remainder=True)
        indices = indices.map(lambda r: tf.cast(r % num_rays, tf.int32))
        return indices.map(lambda i: ((tf.gather(origins, i), tf.gather(directions, i)),
                                      tf.gather(rgb, i))).prefetch(tf.data.AUTOTUNE)
    origins, directions, rgb = (tf.constant(train[key]) for key in ("ray_origins", "ray_directions", "rgb"))
    num_views = int(origins.shape[0])
    views = tf.data.Dataset.range(num_views).shuffle(num_views, seed=seed, reshuffle_each_iteration=True)
    return views.repeat().batch(batch.size, drop_remainder=True).map(
        lambda v: ((tf.reshape(tf.gather(origins, v), [-1, 3]), tf.reshape(tf.gather(directions, v), [-1, 3])),
                   tf.reshape(tf.gather(rgb, v), [-1, 3]))).prefetch(tf.data.AUTOTUNE)


def val_dataset(val: dict) -> tf.data.Dataset:
    """One batch per val view: ``R = H * W``."""
    num_views = val["rgb"].shape[0]
    origins, directions, rgb = (val[key].reshape(num_views, -1, 3) for key in ("ray_origins", "ray_directions", "rgb"))
    return tf.data.Dataset.from_tensor_slices(((origins, directions), rgb))


def steps_per_epoch(cfg: Config, num_train_views: int, num_train_rays: int) -> int:
    """The preset's ``steps_per_epoch``, or one pass over the training rays (or views)."""
    preset = cfg.active
    if preset.steps_per_epoch is not None:
        return preset.steps_per_epoch
    available = num_train_rays if isinstance(preset.batch, RayBatchConfig) else num_train_views
    return max(1, available // preset.batch.size)


def check_batch(cfg: Config, num_train_views: int, num_train_rays: int) -> None:
    """Refuse a batch larger than the training split."""
    batch = cfg.active.batch
    rays = isinstance(batch, RayBatchConfig)
    available, unit = (num_train_rays, "rays") if rays else (num_train_views, "views")
    if batch.size > available:
        raise DataError(f"params.yaml: 'presets.{cfg.preset}.batch.size' is {batch.size} but the training "
                        f"split has only {available} {unit}; use a batch of at most {available}.")

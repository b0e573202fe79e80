"""Stage ``train``: fit the NeRF of the chosen preset with ``model.fit``.

Reads the rays folder (``rays.py``: ``train.npz`` and ``val.npz``). Writes:

* ``model``: the trained Keras model (``.keras``: config, weights, optimizer state);
* ``metrics``: ``train.json`` — final loss/PSNR (train and val), steps, wall time;
* ``history``: per-epoch CSV (``epoch, loss, psnr, val_loss, val_psnr, epoch_s``) for ``dvc plots``;
* ``progress``: ``progress.npz`` with ``frames [E, H, W, 3]`` uint8, val view 0 rendered
  after each epoch (the render stage turns it into a GIF);
* ``run_file``: the MLflow run id (``tracking.py``), which evaluate and render reopen;
* ``checkpoint``: the per-epoch checkpoint (``checkpoint.py``) that an interrupted run resumes from.

Batches: ``rays`` mode draws ``batch.size * batch.candidate_factor`` random rays from all
training views each step (a ``tf.data`` pipeline that gathers from the precomputed rays; no
Python per ray) and trains on ``batch.size`` of them, those crossing occupied space first;
``images`` mode takes ``batch.size`` whole shuffled training views (the Keras example).
Validation renders every val view, one view per batch, with deterministic samples, so
``val_psnr`` is the mean per-view PSNR.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import sys
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from nerf_pipeline import atomic, checkpoint, distribute, interrupts, rays, tracking
from nerf_pipeline.config import BatchConfig, Config
from nerf_pipeline.errors import DataError, UserError
from nerf_pipeline.media import to_uint8
from nerf_pipeline.model import ChunkedRenderer, build_model

log = logging.getLogger(__name__)

HISTORY_COLUMNS = ("epoch", "loss", "psnr", "val_loss", "val_psnr", "epoch_s")


def flat_rays(part: dict):
    """``(ray_origins, ray_directions, rgb)``, each ``[V * H * W, 3]`` float32."""
    return tuple(part[key].reshape(-1, 3) for key in ("ray_origins", "ray_directions", "rgb"))


def train_dataset(train: dict, batch: BatchConfig, seed: int) -> tf.data.Dataset:
    """Endless batches ``((ray_origins [R, 3], ray_directions [R, 3]), rgb [R, 3])``.

    Mode ``rays``: ``R = batch.size * batch.candidate_factor`` random rays of all training views.
    Mode ``images``: ``batch.size`` whole shuffled views, ``R = batch.size * H * W``.
    """
    mode = batch.mode
    if mode == "rays":
        origins, directions, rgb = (tf.constant(a) for a in flat_rays(train))
        num_rays = int(origins.shape[0])
        indices = tf.data.Dataset.random(seed=seed).batch(batch.size * batch.candidate_factor, drop_remainder=True).map(
            lambda r: tf.cast(r % num_rays, tf.int32))
        return indices.map(lambda i: ((tf.gather(origins, i), tf.gather(directions, i)),
                                      tf.gather(rgb, i))).prefetch(tf.data.AUTOTUNE)
    origins, directions, rgb = (tf.constant(train[key]) for key in ("ray_origins", "ray_directions", "rgb"))
    num_views = int(origins.shape[0])
    views = tf.data.Dataset.range(num_views).shuffle(num_views, seed=seed, reshuffle_each_iteration=True)
    return views.repeat().batch(batch.size, drop_remainder=True).map(
        lambda v: ((tf.reshape(tf.gather(origins, v), [-1, 3]), tf.reshape(tf.gather(directions, v), [-1, 3])),
                   tf.reshape(tf.gather(rgb, v), [-1, 3]))).prefetch(tf.data.AUTOTUNE)


def val_dataset(val: dict) -> tf.data.Dataset:
    """One batch per val view: ``((ray_origins [H*W, 3], ray_directions [H*W, 3]), rgb [H*W, 3])``."""
    num_views = val["rgb"].shape[0]
    origins, directions, rgb = (val[key].reshape(num_views, -1, 3) for key in ("ray_origins", "ray_directions", "rgb"))
    return tf.data.Dataset.from_tensor_slices(((origins, directions), rgb))


def steps_per_epoch(cfg: Config, num_train_views: int, num_train_rays: int) -> int:
    preset = cfg.model
    if preset.steps_per_epoch is not None:
        return preset.steps_per_epoch
    per_batch = preset.batch.size
    return max(1, (num_train_rays if preset.batch.mode == "rays" else num_train_views) // per_batch)


def check_batch(cfg: Config, num_train_views: int, num_train_rays: int, preset_name: str | None = None) -> None:
    """Refuse a batch larger than the training split (of the active preset, or of ``preset_name``)."""
    preset_name = preset_name or cfg.preset
    batch = cfg.presets[preset_name].batch
    available = num_train_rays if batch.mode == "rays" else num_train_views
    unit = "rays" if batch.mode == "rays" else "views"
    if batch.size > available:
        raise DataError(f"params.yaml: 'presets.{preset_name}.batch.size' is {batch.size} but the training "
                        f"split has only {available} {unit}; use a batch of at most {available}.")


class EpochRecorder(keras.callbacks.Callback):
    """Per epoch: time, history row, MLflow metrics (step = epoch number), a progress frame, a checkpoint.

    ``history`` and ``frames`` start with those of the checkpoint being resumed, if any.
    """

    def __init__(self, mlflow, renderer: ChunkedRenderer, val: dict, checkpoint_dir, meta: dict,
                 history: list[dict], frames: list[np.ndarray]):
        super().__init__()
        self.mlflow, self.renderer = mlflow, renderer
        self.view_origins, self.view_directions = val["ray_origins"][0], val["ray_directions"][0]
        self.checkpoint_dir, self.meta = checkpoint_dir, meta
        self.history, self.frames = list(history), list(frames)
        self._start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items() if k in HISTORY_COLUMNS}}
        row["epoch_s"] = time.perf_counter() - self._start
        self.history.append(row)
        self.mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch + 1)
        self.frames.append(to_uint8(self.renderer(self.view_origins, self.view_directions)["rgb"]))
        checkpoint.save(self.checkpoint_dir, self.model, {**self.meta, "epoch": epoch + 1, "history": self.history},
                        np.stack(self.frames))


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Raise at the first step whose loss is NaN or infinite: nothing after it can be trusted."""

    def __init__(self, steps_per_epoch: int):
        super().__init__()
        self.steps_per_epoch = steps_per_epoch
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = float((logs or {}).get("loss", 0.0))
        if not math.isfinite(loss):
            raise TrainingDiverged(self.epoch + 1, batch + 1, loss)


class StopWhenInterrupted(keras.callbacks.Callback):
    """Raise a Ctrl-C or SIGTERM that arrived during ``fit`` at the end of a step (see ``interrupts``)."""

    def on_train_batch_end(self, batch, logs=None):
        interrupts.check()

    def on_test_batch_end(self, batch, logs=None):
        interrupts.check()

    def on_epoch_end(self, epoch, logs=None):  # listed after the recorder: a signal held through its save waits for it
        interrupts.check()


class TrainingDiverged(UserError):
    def __init__(self, epoch: int, step: int, loss: float):
        kept = (f"the checkpoint of the last complete epoch ({epoch - 1}) stays in place" if epoch > 1
                else "no epoch was complete, so there is no checkpoint")
        super().__init__(f"training diverged: the loss became {loss} at step {step} of epoch {epoch}. Nothing of "
                         f"this epoch was kept; {kept}. Lower the learning rate "
                         "(presets.<preset>.optimizer.learning_rate) or check the data.")
        self.epoch = epoch


def history_csv(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=HISTORY_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return out.getvalue()


def run(cfg: Config, in_rays, out_model, out_metrics, out_history, out_progress, out_run_file,
        out_checkpoint) -> dict:
    """Train; resume from ``out_checkpoint`` when it holds a checkpoint of these params and data.

    With ``distribute: multi_worker``, every worker calls this; the workers other than the chief
    train alongside it but write their outs to a scratch folder and log nothing to MLflow
    (they read the chief's checkpoint to resume, so it must be on storage they all see).
    """
    strategy = distribute.make_strategy(cfg.distribute)  # before any other TensorFlow op
    if distribute.is_chief(strategy):
        return _train(cfg, strategy, in_rays, out_model, out_metrics, out_history, out_progress, out_run_file,
                      out_checkpoint, out_checkpoint, track=True)
    with tempfile.TemporaryDirectory(prefix="nerf-worker-") as scratch:
        outs = [Path(scratch) / name for name in ("model.keras", "train.json", "history.csv", "progress.npz",
                                                  "run.json", "checkpoint")]
        return _train(cfg, strategy, in_rays, *outs, read_checkpoint=out_checkpoint, track=False)


def _train(cfg: Config, strategy, in_rays, out_model, out_metrics, out_history, out_progress, out_run_file,
           out_checkpoint, read_checkpoint, track: bool) -> dict:
    train, val = rays.load(in_rays, "train"), rays.load(in_rays, "val")
    num_train_views = train["rgb"].shape[0]
    num_train_rays = num_train_views * train["rgb"].shape[1] * train["rgb"].shape[2]
    check_batch(cfg, num_train_views, num_train_rays)
    preset = cfg.model
    steps = steps_per_epoch(cfg, num_train_views, num_train_rays)
    total_steps = steps * cfg.epochs
    key = checkpoint.fingerprint(cfg, [Path(in_rays) / f"{part}.npz" for part in rays.PARTS])
    resumable = checkpoint.load(read_checkpoint, key)
    meta, frames = resumable if resumable else ({"epoch": 0, "history": []}, [])
    jit_compile = preset.jit_compile and distribute.can_jit_compile(strategy)
    if preset.jit_compile and not jit_compile:
        log.warning("XLA is off: the train step is not compiled when it spans several replicas")

    # Connect first: an unreachable store fails now, not after training. The run starts before
    # the seeding below, which would otherwise fix MLflow's random run names.
    mlflow = tracking.connect(cfg) if track else tracking.NO_TRACKING
    run_context = tracking.start_run(cfg, resumes=meta.get("run_id"), resumed_epoch=meta["epoch"]) if track \
        else tracking.no_run()
    with run_context as run:
        keras.utils.set_random_seed(cfg.seed)
        with strategy.scope():
            model = build_model(preset, near=float(train["near"]), far=float(train["far"]),
                                background=cfg.data.background, seed=cfg.seed, total_steps=total_steps,
                                jit_compile=jit_compile)
        initial_epoch = meta["epoch"]
        if initial_epoch:
            checkpoint.restore(read_checkpoint, model, meta)
            log.info("resuming from the checkpoint of epoch %d (MLflow run %s)", initial_epoch, meta.get("run_id"))
            for row in meta["history"]:  # so this run's curves are whole
                mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"])
        renderer = ChunkedRenderer(model, cfg.evaluate.chunk_rays, jit_compile)
        recorder = EpochRecorder(mlflow, renderer, val, out_checkpoint,
                                 {"fingerprint": key, "run_id": run.info.run_id}, meta["history"], frames)
        log.info("training preset '%s': %d epochs of %d steps, batches of %d %s on %d replica(s)", cfg.preset,
                 cfg.epochs, steps, preset.batch.size, preset.batch.mode, strategy.num_replicas_in_sync)
        # The batches an uninterrupted run would see from this epoch on: skip those of the epochs done.
        batches = train_dataset(train, preset.batch, cfg.seed).skip(initial_epoch * steps)
        start = time.perf_counter()
        with interrupts.held():
            model.fit(batches, epochs=cfg.epochs, initial_epoch=initial_epoch, steps_per_epoch=steps,
                      validation_data=val_dataset(val),
                      callbacks=[StopOnNonFiniteLoss(steps), recorder, StopWhenInterrupted()],
                      shuffle=False, verbose=1 if sys.stdout.isatty() else 2)
        train_s = time.perf_counter() - start

        last = recorder.history[-1]
        trained_steps = (cfg.epochs - initial_epoch) * steps
        metrics = {"epochs": cfg.epochs, "steps": total_steps, "resumed_from_epoch": initial_epoch,
                   "replicas": strategy.num_replicas_in_sync, "train_s": round(train_s, 2),
                   "steps_per_s": round(trained_steps / train_s, 3) if trained_steps else None,
                   "loss": last["loss"], "psnr": last["psnr"], "val_loss": last["val_loss"],
                   "val_psnr": last["val_psnr"]}
        with atomic.atomic_path(out_model, suffix=".keras") as tmp:
            model.save(tmp)
        atomic.write_json(out_metrics, metrics)
        atomic.write_text(out_history, history_csv(recorder.history))
        atomic.save_npz(out_progress, frames=np.stack(recorder.frames),
                        epochs=np.arange(1, cfg.epochs + 1, dtype=np.int32))
        mlflow.log_metrics({"train_s": train_s})
        mlflow.log_artifact(str(out_model), artifact_path="model")
        if track:
            tracking.write_run_file(out_run_file, run)
    log.info("trained in %.1f s: val PSNR %.2f dB", train_s, metrics["val_psnr"])
    return metrics

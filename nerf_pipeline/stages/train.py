"""Stage ``train``: train the method of the chosen preset (``methods``; the NeRF fits with ``model.fit``).

Reads ``in_rays`` (its ``train`` and ``val`` parts, see ``scenes/ray_files.py``). Writes:

* ``out_model``: a folder (``trained_folder``), written whole or not at all: ``method.json`` (which method reads
  it), the method's own files (``model.keras``: the trained Keras model),
  ``progress.npz`` (``frames [E, H, W, 3]`` uint8, the first validated view after each epoch; the
  render stage makes a GIF of it), ``run.json`` (the MLflow run, which evaluate and render log into) and,
  with a camera refinement, ``cameras.npz`` (the training views' corrected poses, and those given);
* ``out_metrics``: ``train.json`` — final train and val loss/PSNR, epochs, steps and timings;
* ``out_history``: per-epoch CSV (``epoch, step, loss, psnr, val_loss, val_psnr, epoch_s``);
* ``out_steps``: CSV of the loss and PSNR every ``mlflow.log_every_steps`` steps (``dvc plots``);
* ``out_checkpoint``: the per-epoch checkpoint (``training/checkpoint.py``) that an interrupted run
  resumes from.

Batches stream from the rays folder (``training/datasets.py``); after each epoch, validation renders
``validation.max_views`` val views, evenly spread, whole, in chunks of ``evaluate.chunk_rays`` rays
with deterministic samples (``callbacks.TrainingRecord``), so ``val_psnr`` is their mean per-view
PSNR and memory stays bounded at any resolution. The scene's space is contracted when
``scene.contraction`` is ``on``, or ``auto`` and the scene is unbounded; the field learns an
appearance embedding per training view when ``scene.appearance`` is ``on``, or ``auto`` and the scene
is a capture (unbounded, as contraction decides; the hash-grid field only); it learns a correction of each
training view's pose when ``scene.camera_refinement`` is ``on``, or ``auto`` and the scene is a capture, and
logs how far the corrections moved the cameras (``camera/*`` in MLflow, ``camera_refinement`` in
``train.json``). MLflow gets the params the run uses (and ``model.appearance_embedding``,
``model.camera_refinement``: whether they are on), the curves, a progress image per epoch, the rays as
the run's dataset and the model as a Logged Model (``logged_model.py``).
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import keras
import tensorflow as tf

from nerf_pipeline import logged_model, methods, trained_folder
from nerf_pipeline.config import Config
from nerf_pipeline.runtime import atomic, interrupts, tracking
from nerf_pipeline.scenes import ray_files
from nerf_pipeline.training import checkpoint, datasets, distribute
from nerf_pipeline.training.callbacks import (HISTORY_COLUMNS, STEP_COLUMNS, PoseCorrections, StopOnNonFiniteLoss,
                                              StopWhenInterrupted, TrainingRecord, table_csv)
from nerf_pipeline.training.fit_progress import FitProgress

log = logging.getLogger(__name__)


def run(cfg: Config, *, in_rays, out_model, out_metrics, out_history, out_steps, out_checkpoint) -> dict:
    """Train; resume from ``out_checkpoint`` when it holds a checkpoint of these params and data.

    With ``distribute: multi_worker``, every worker calls this; the workers other than the chief
    train alongside it but write their outs to a scratch folder and log nothing to MLflow
    (they read the chief's checkpoint to resume, so it must be on storage they all see).
    """
    strategy = distribute.make_strategy(cfg.distribute)  # before any other TensorFlow op
    gpus = tf.config.list_logical_devices("GPU")
    if gpus:
        log.info("training on %s", ", ".join(gpu.name for gpu in gpus))
    outs = dict(out_model=out_model, out_metrics=out_metrics, out_history=out_history, out_steps=out_steps,
                out_checkpoint=out_checkpoint)
    if distribute.is_chief(strategy):
        return _train(cfg, strategy, in_rays, outs, read_checkpoint=out_checkpoint, track=True)
    with tempfile.TemporaryDirectory(prefix="nerf-worker-") as scratch:
        return _train(cfg, strategy, in_rays, {name: Path(scratch) / name for name in outs},
                      read_checkpoint=out_checkpoint, track=False)


def _train(cfg: Config, strategy, in_rays, outs: dict, read_checkpoint, track: bool) -> dict:
    train, val = ray_files.load(in_rays, "train"), ray_files.load(in_rays, "val")
    datasets.check_batch(cfg, train.num_views, train.num_views * train.height * train.width)
    preset = cfg.active
    steps = datasets.steps_per_epoch(cfg, train)
    total_steps = steps * cfg.epochs
    start_at = checkpoint.resume_point(cfg, in_rays, read_checkpoint)
    jit_compile = preset.jit_compile and distribute.can_jit_compile(strategy)
    if preset.jit_compile and not jit_compile:
        log.warning("XLA is off: the train step is not compiled when it spans several replicas")
    validated = datasets.val_views(val, cfg.validation.max_views)

    # Connect first: an unreachable store fails now, not after training. The run starts before
    # the seeding below, which would otherwise fix MLflow's random run names.
    mlflow = tracking.connect(cfg) if track else tracking.NO_TRACKING
    run_context = tracking.start_run(cfg, resumes=start_at.run_id, resumed_epoch=start_at.epoch) if track \
        else tracking.no_run()
    with run_context as run:
        keras.utils.set_random_seed(cfg.seed)
        with strategy.scope():
            method = methods.build(cfg, train, jit_compile=jit_compile)
        recorder = TrainingRecord(mlflow, method, val, validated, outs["out_checkpoint"],
                                  {"fingerprint": start_at.fingerprint, "run_id": run.info.run_id},
                                  start_at.record(), steps, cfg.mlflow.log_every_steps)
        initial_epoch = start_at.epoch
        if initial_epoch:
            log.info("resuming from the checkpoint of epoch %d (MLflow run %s)", initial_epoch, start_at.run_id)
            recorder.replay()
        elif track:
            tracking.log_dataset(mlflow, in_rays)
        if track:  # what the scene's auto settings chose (scene.appearance, scene.camera_refinement)
            mlflow.log_params(method.tracking_params())
        log.info("training preset '%s' %s: %d epochs of %d steps, batches of %d %s on %d replica(s); "
                 "validating on %d of %d val views", cfg.preset, method.describe(), cfg.epochs, steps,
                 preset.batch.size, preset.batch.mode, strategy.num_replicas_in_sync, len(validated), val.num_views)
        # The recorder validates and puts val_loss/val_psnr into the epoch's logs: FitProgress, after it, reads them.
        callbacks = [StopOnNonFiniteLoss(cfg.preset), recorder, PoseCorrections(mlflow), FitProgress(cfg.epochs, steps),
                     StopWhenInterrupted()]
        start = time.perf_counter()
        with interrupts.held():
            method.fit(train, epochs=cfg.epochs, steps_per_epoch=steps, total_steps=total_steps, seed=cfg.seed,
                       initial_epoch=initial_epoch, restore=start_at.restore(read_checkpoint),
                       callbacks=callbacks, strategy=strategy)
        train_s = time.perf_counter() - start

        last = recorder.history[-1]
        trained_steps = (cfg.epochs - initial_epoch) * steps
        metrics = {"train": {"loss": last["loss"], "psnr": last["psnr"]},
                   "val": {"loss": last["val_loss"], "psnr": last["val_psnr"], "views": len(validated)},
                   "epochs": cfg.epochs, "steps": total_steps, "resumed_from_epoch": initial_epoch,
                   "replicas": strategy.num_replicas_in_sync, **method.training_figures(),
                   "time": {"train_s": round(train_s, 2),
                            "steps_per_s": round(trained_steps / train_s, 3) if trained_steps else None}}
        with atomic.atomic_dir(outs["out_model"]) as folder:
            trained_folder.write_model(folder, method)
            trained_folder.write_progress(folder, recorder.frames, cfg.epochs)
            if track:
                tracking.write_run_file(folder / trained_folder.RUN_FILE, run)
        atomic.write_json(outs["out_metrics"], metrics)
        atomic.write_text(outs["out_history"], table_csv(recorder.history, HISTORY_COLUMNS))
        atomic.write_text(outs["out_steps"], table_csv(recorder.steps, STEP_COLUMNS))
        mlflow.log_metrics({"time/train_s": train_s, "time/steps_per_s": metrics["time"]["steps_per_s"] or 0.0})
        if track:
            logged = logged_model.log(mlflow, method)
            log.info("logged the model to MLflow: %s", logged.model_uri)
    log.info("trained in %.1f s: val PSNR %.2f dB on %d views; the model is in %s", train_s, last["val_psnr"],
             len(validated), outs["out_model"])
    return metrics

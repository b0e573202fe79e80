"""Stage ``train``: fit the NeRF of the chosen preset with ``model.fit``.

Reads ``in_rays`` (its ``train`` and ``val`` parts, see ``scenes/ray_files.py``). Writes:

* ``out_model``: a folder, written whole or not at all: ``model.keras`` (the trained Keras model),
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
import numpy as np
import tensorflow as tf

from nerf_pipeline import logged_model
from nerf_pipeline.config import Config, HashGridFieldConfig
from nerf_pipeline.model.nerf import (CAMERAS_FILE, MODEL_FILE, PROGRESS_FILE, RUN_FILE, NeRF, build_nerf,
                                     compile_for_training)
from nerf_pipeline.model.renderer import ChunkedRenderer
from nerf_pipeline.runtime import atomic, interrupts, tracking
from nerf_pipeline.scenes import ray_files
from nerf_pipeline.training import checkpoint, datasets, distribute
from nerf_pipeline.training.callbacks import (HISTORY_COLUMNS, STEP_COLUMNS, PoseCorrections, StopOnNonFiniteLoss,
                                              StopWhenInterrupted, TrainingRecord, table_csv)
from nerf_pipeline.training.fit_progress import FitProgress

log = logging.getLogger(__name__)


def contracted(cfg: Config, unbounded: bool) -> bool:
    """Whether the model's space is contracted: ``scene.contraction`` on, or auto and the scene unbounded."""
    return cfg.scene.contraction == "on" or (cfg.scene.contraction == "auto" and bool(unbounded))


def appearance(cfg: Config, unbounded: bool) -> bool:
    """Whether the field learns an appearance embedding per training view: ``scene.appearance`` on, or auto for a
    capture (``unbounded``: photos, videos, COLMAP, LLFF) when the preset's field has one (a hash grid with
    ``appearance_dim`` > 0)."""
    field = cfg.active.field
    has_embedding = isinstance(field, HashGridFieldConfig) and field.appearance_dim > 0
    return cfg.scene.appearance == "on" or (cfg.scene.appearance == "auto" and bool(unbounded) and has_embedding)


def camera_refinement(cfg: Config, unbounded: bool) -> bool:
    """Whether training learns a pose correction per training view: ``scene.camera_refinement`` on, or auto for a
    capture (``unbounded``: its poses come from structure from motion or COLMAP; a synthetic scene's are exact)."""
    return cfg.scene.camera_refinement == "on" or (cfg.scene.camera_refinement == "auto" and bool(unbounded))


def build_model(cfg: Config, train) -> NeRF:
    """The untrained model of ``cfg``'s preset for the training part ``train`` (a ``RayPart``), with contraction, an
    appearance embedding and a camera refinement as ``contracted``, ``appearance`` and ``camera_refinement`` decide
    for it (what ``bench_captures`` builds too). Call it in the strategy's scope."""
    unbounded = train.unbounded
    return build_nerf(cfg.active, near=train.near, far=train.far, contracted=contracted(cfg, unbounded),
                      bound=cfg.scene.bound, background=cfg.data.background, seed=cfg.seed,
                      appearance_views=train.num_views if appearance(cfg, unbounded) else 0,
                      refined_views=train.num_views if camera_refinement(cfg, unbounded) else 0)


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
    key = checkpoint.fingerprint(cfg, sorted(p for part in ("train", "val") for p in (Path(in_rays) / part).iterdir()))
    resumable = checkpoint.load(read_checkpoint, key)
    meta, frames = resumable if resumable else ({"epoch": 0, "history": [], "steps": []}, [])
    jit_compile = preset.jit_compile and distribute.can_jit_compile(strategy)
    if preset.jit_compile and not jit_compile:
        log.warning("XLA is off: the train step is not compiled when it spans several replicas")
    is_contracted = contracted(cfg, train.unbounded)
    with_appearance = appearance(cfg, train.unbounded)
    with_refinement = camera_refinement(cfg, train.unbounded)
    validated = datasets.val_views(val, cfg.validation.max_views)

    # Connect first: an unreachable store fails now, not after training. The run starts before
    # the seeding below, which would otherwise fix MLflow's random run names.
    mlflow = tracking.connect(cfg) if track else tracking.NO_TRACKING
    run_context = tracking.start_run(cfg, resumes=meta.get("run_id"), resumed_epoch=meta["epoch"]) if track \
        else tracking.no_run()
    with run_context as run:
        keras.utils.set_random_seed(cfg.seed)
        with strategy.scope():
            model = build_model(cfg, train)
            compile_for_training(model, preset.optimizer, total_steps, jit_compile)
        distribute.adapt_for_keras_fit(model, strategy)
        initial_epoch = meta["epoch"]
        if initial_epoch:
            checkpoint.restore(read_checkpoint, model, meta)
            log.info("resuming from the checkpoint of epoch %d (MLflow run %s)", initial_epoch, meta.get("run_id"))
            for row in meta.get("steps", []):  # so this run's curves are whole
                mlflow.log_metrics({"train/loss": row["loss"], "train/psnr": row["psnr"]}, step=row["step"])
            for row in meta["history"]:
                mlflow.log_metrics({"val/loss": row["val_loss"], "val/psnr": row["val_psnr"],
                                    "time/epoch_s": row["epoch_s"]}, step=row["step"])
        elif track:
            tracking.log_dataset(mlflow, in_rays)
        if track:  # what scene.appearance and scene.camera_refinement: auto chose
            mlflow.log_params({"model.appearance_embedding": "on" if with_appearance else "off",
                               "model.camera_refinement": "on" if with_refinement else "off"})
        renderer = ChunkedRenderer(model, cfg.evaluate.chunk_rays, jit_compile)
        recorder = TrainingRecord(mlflow, renderer, val, validated, outs["out_checkpoint"],
                                  {"fingerprint": key, "run_id": run.info.run_id},
                                  {"history": meta["history"], "steps": meta.get("steps", []), "frames": list(frames)},
                                  steps, cfg.mlflow.log_every_steps, train_poses=train.poses)
        log.info("training preset '%s' in a %s space%s%s: %d epochs of %d steps, batches of %d %s on %d replica(s); "
                 "validating on %d of %d val views", cfg.preset, "contracted" if is_contracted else "box",
                 f", with an appearance embedding of {preset.field.appearance_dim} per training view (held-out views "
                 "take their nearest training views')" if with_appearance else "",
                 ", refining the training views' camera poses" if with_refinement else "", cfg.epochs, steps,
                 preset.batch.size,
                 preset.batch.mode, strategy.num_replicas_in_sync, len(validated), val.num_views)
        # The batches an uninterrupted run would see from this epoch on: skip those of the epochs done.
        batches = datasets.train_dataset(train, preset.batch, cfg.seed, skip_batches=initial_epoch * steps,
                                         with_views=model.trains_on_views)
        # The recorder validates and puts val_loss/val_psnr into the epoch's logs: FitProgress, after it, reads them.
        callbacks = [*model.training_callbacks(), StopOnNonFiniteLoss(cfg.preset), recorder, PoseCorrections(mlflow),
                     FitProgress(cfg.epochs, steps), StopWhenInterrupted()]
        start = time.perf_counter()
        with interrupts.held():
            model.fit(batches, epochs=cfg.epochs, initial_epoch=initial_epoch, steps_per_epoch=steps,
                      callbacks=callbacks, shuffle=False, verbose=0)
        train_s = time.perf_counter() - start

        last = recorder.history[-1]
        trained_steps = (cfg.epochs - initial_epoch) * steps
        metrics = {"train": {"loss": last["loss"], "psnr": last["psnr"]},
                   "val": {"loss": last["val_loss"], "psnr": last["val_psnr"], "views": len(validated)},
                   "epochs": cfg.epochs, "steps": total_steps, "resumed_from_epoch": initial_epoch,
                   "replicas": strategy.num_replicas_in_sync,
                   **({"camera_refinement": model.pose_refinement.sizes()} if with_refinement else {}),
                   "time": {"train_s": round(train_s, 2),
                            "steps_per_s": round(trained_steps / train_s, 3) if trained_steps else None}}
        with atomic.atomic_dir(outs["out_model"]) as folder:
            model.save(folder / MODEL_FILE)
            if with_refinement:  # what export, the viewer and render's path use (ray_files.training_poses)
                np.savez(folder / CAMERAS_FILE, poses=model.pose_refinement.corrected_poses(train.poses).astype(
                    np.float32), given=np.asarray(train.poses, np.float32))
            np.savez(folder / PROGRESS_FILE, frames=np.stack(recorder.frames),
                     epochs=np.arange(1, cfg.epochs + 1, dtype=np.int32))
            if track:
                tracking.write_run_file(folder / RUN_FILE, run)
        atomic.write_json(outs["out_metrics"], metrics)
        atomic.write_text(outs["out_history"], table_csv(recorder.history, HISTORY_COLUMNS))
        atomic.write_text(outs["out_steps"], table_csv(recorder.steps, STEP_COLUMNS))
        mlflow.log_metrics({"time/train_s": train_s, "time/steps_per_s": metrics["time"]["steps_per_s"] or 0.0})
        if track:
            logged = logged_model.log(mlflow, Path(outs["out_model"]) / MODEL_FILE)
            log.info("logged the model to MLflow: %s", logged.model_uri)
    log.info("trained in %.1f s: val PSNR %.2f dB on %d views; the model is in %s", train_s, last["val_psnr"],
             len(validated), outs["out_model"])
    return metrics

"""Stage ``train``: fit the NeRF of the chosen preset with ``model.fit``.

Reads ``in_rays`` (its ``train`` and ``val`` parts, see ``scenes/ray_files.py``). Writes:

* ``out_model``: the trained Keras model (``.keras``: config, weights, optimizer state);
* ``out_metrics``: ``train.json`` — final loss/PSNR (train and val), steps, wall time;
* ``out_history``: per-epoch CSV (``epoch, loss, psnr, val_loss, val_psnr, epoch_s``) for ``dvc plots``;
* ``out_progress``: ``progress.npz`` with ``frames [E, H, W, 3]`` uint8, the first val view rendered
  after each epoch (the render stage turns it into a GIF);
* ``out_run_file``: the MLflow run id (``runtime/tracking.py``), which evaluate and render reopen;
* ``out_checkpoint``: the per-epoch checkpoint (``training/checkpoint.py``) that an interrupted run
  resumes from.

Batches stream from the rays folder (``training/datasets.py``); validation renders
``validation.max_views`` val views, evenly spread, whole, one view per batch, with deterministic
samples, so ``val_psnr`` is their mean per-view PSNR. The scene's space is contracted when
``scene.contraction`` is ``on``, or ``auto`` and the scene is unbounded.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from pathlib import Path

import keras
import numpy as np

from nerf_pipeline.config import Config
from nerf_pipeline.model.nerf import build_nerf, compile_for_training
from nerf_pipeline.model.renderer import ChunkedRenderer
from nerf_pipeline.runtime import atomic, interrupts, tracking
from nerf_pipeline.scenes import ray_files
from nerf_pipeline.training import checkpoint, datasets, distribute
from nerf_pipeline.training.callbacks import EpochRecorder, StopOnNonFiniteLoss, StopWhenInterrupted, history_csv

log = logging.getLogger(__name__)


def contracted(cfg: Config, unbounded: bool) -> bool:
    """Whether the model's space is contracted: ``scene.contraction`` on, or auto and the scene unbounded."""
    return cfg.scene.contraction == "on" or (cfg.scene.contraction == "auto" and bool(unbounded))


def run(cfg: Config, *, in_rays, out_model, out_metrics, out_history, out_progress, out_run_file,
        out_checkpoint) -> dict:
    """Train; resume from ``out_checkpoint`` when it holds a checkpoint of these params and data.

    With ``distribute: multi_worker``, every worker calls this; the workers other than the chief
    train alongside it but write their outs to a scratch folder and log nothing to MLflow
    (they read the chief's checkpoint to resume, so it must be on storage they all see).
    """
    strategy = distribute.make_strategy(cfg.distribute)  # before any other TensorFlow op
    outs = dict(out_model=out_model, out_metrics=out_metrics, out_history=out_history, out_progress=out_progress,
                out_run_file=out_run_file, out_checkpoint=out_checkpoint)
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
    meta, frames = resumable if resumable else ({"epoch": 0, "history": []}, [])
    jit_compile = preset.jit_compile and distribute.can_jit_compile(strategy)
    if preset.jit_compile and not jit_compile:
        log.warning("XLA is off: the train step is not compiled when it spans several replicas")
    is_contracted = contracted(cfg, train.unbounded)
    validated = datasets.val_views(val, cfg.validation.max_views)

    # Connect first: an unreachable store fails now, not after training. The run starts before
    # the seeding below, which would otherwise fix MLflow's random run names.
    mlflow = tracking.connect(cfg) if track else tracking.NO_TRACKING
    run_context = tracking.start_run(cfg, resumes=meta.get("run_id"), resumed_epoch=meta["epoch"]) if track \
        else tracking.no_run()
    with run_context as run:
        keras.utils.set_random_seed(cfg.seed)
        with strategy.scope():
            model = build_nerf(preset, near=train.near, far=train.far, contracted=is_contracted,
                               bound=cfg.scene.bound, background=cfg.data.background, seed=cfg.seed)
            compile_for_training(model, preset.optimizer, total_steps, jit_compile)
        distribute.adapt_for_keras_fit(model, strategy)
        initial_epoch = meta["epoch"]
        if initial_epoch:
            checkpoint.restore(read_checkpoint, model, meta)
            log.info("resuming from the checkpoint of epoch %d (MLflow run %s)", initial_epoch, meta.get("run_id"))
            for row in meta["history"]:  # so this run's curves are whole
                mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"])
        renderer = ChunkedRenderer(model, cfg.evaluate.chunk_rays, jit_compile)
        recorder = EpochRecorder(mlflow, renderer, val.view_rays(int(validated[0])),
                                 outs["out_checkpoint"], {"fingerprint": key, "run_id": run.info.run_id},
                                 meta["history"], frames)
        log.info("training preset '%s' in a %s space: %d epochs of %d steps, batches of %d %s on %d replica(s); "
                 "validating on %d of %d val views", cfg.preset, "contracted" if is_contracted else "box", cfg.epochs,
                 steps, preset.batch.size, preset.batch.mode, strategy.num_replicas_in_sync, len(validated),
                 val.num_views)
        # The batches an uninterrupted run would see from this epoch on: skip those of the epochs done.
        batches = datasets.train_dataset(train, preset.batch, cfg.seed, skip_batches=initial_epoch * steps)
        callbacks = [*model.training_callbacks(), StopOnNonFiniteLoss(cfg.preset), recorder, StopWhenInterrupted()]
        start = time.perf_counter()
        with interrupts.held():
            model.fit(batches, epochs=cfg.epochs, initial_epoch=initial_epoch, steps_per_epoch=steps,
                      validation_data=datasets.val_dataset(val, validated), callbacks=callbacks, shuffle=False,
                      verbose=1 if sys.stdout.isatty() else 2)
        train_s = time.perf_counter() - start

        last = recorder.history[-1]
        trained_steps = (cfg.epochs - initial_epoch) * steps
        metrics = {"epochs": cfg.epochs, "steps": total_steps, "resumed_from_epoch": initial_epoch,
                   "replicas": strategy.num_replicas_in_sync, "train_s": round(train_s, 2),
                   "steps_per_s": round(trained_steps / train_s, 3) if trained_steps else None,
                   "loss": last["loss"], "psnr": last["psnr"], "val_loss": last["val_loss"],
                   "val_psnr": last["val_psnr"]}
        with atomic.atomic_path(outs["out_model"], suffix=".keras") as tmp:
            model.save(tmp)
        atomic.write_json(outs["out_metrics"], metrics)
        atomic.write_text(outs["out_history"], history_csv(recorder.history))
        atomic.save_npz(outs["out_progress"], frames=np.stack(recorder.frames),
                        epochs=np.arange(1, cfg.epochs + 1, dtype=np.int32))
        mlflow.log_metrics({"train_s": train_s})
        mlflow.log_artifact(str(outs["out_model"]), artifact_path="model")
        if track:
            tracking.write_run_file(outs["out_run_file"], run)
    log.info("trained in %.1f s: val PSNR %.2f dB", train_s, metrics["val_psnr"])
    return metrics

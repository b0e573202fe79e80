"""Keras callbacks of the train stage: the per-epoch record and checkpoint, and the two ways training stops early."""

from __future__ import annotations

import logging
import math
import time

import keras
import numpy as np
import pandas as pd

from nerf_pipeline import scoring
from nerf_pipeline.errors import UserError
from nerf_pipeline.media import to_uint8
from nerf_pipeline.runtime import interrupts
from nerf_pipeline.training import checkpoint

log = logging.getLogger(__name__)

HISTORY_COLUMNS = ("epoch", "step", "loss", "psnr", "val_loss", "val_psnr", "epoch_s")
STEP_COLUMNS = ("step", "loss", "psnr")


def table_csv(rows: list[dict], columns) -> str:
    """Rows as CSV with the given columns (for ``dvc plots``)."""
    return pd.DataFrame(rows, columns=list(columns)).to_csv(index=False, float_format="%.6g", lineterminator="\n")


class TrainingRecord(keras.callbacks.Callback):
    """What training leaves behind, as it goes.

    * every ``log_every`` steps: the mean loss and PSNR of those steps (a row of ``steps``, and
      MLflow's ``train/loss``, ``train/psnr`` at that step);
    * every epoch: validation, then a row of ``history`` (``val/loss``, ``val/psnr``, ``time/epoch_s``
      in MLflow), a progress frame (the first validated view; MLflow's image slider ``progress``) and
      a checkpoint.

    Validation renders each view of ``val_views`` (``val_part``'s indices) whole through ``method`` (a
    ``methods.Method``: the NeRF renders in chunks, so memory stays at one chunk's whatever the resolution, in the
    appearance of the training views nearest it, as its pose refinement has them so far) and scores it
    (``scoring.score_views``), and puts ``val_loss`` (the mean of the views' MSE) and ``val_psnr`` (the mean of
    their PSNR) into the epoch's ``logs``, as Keras' own ``validation_data`` would, for the callbacks after this one.

    ``record`` holds what a resumed checkpoint had (``history``, ``steps`` rows, ``frames``); MLflow
    steps are global training steps, so resumed curves continue where they stopped.
    """

    def __init__(self, mlflow, method, val_part, val_views, checkpoint_dir, meta: dict, record: dict,
                 steps_per_epoch: int, log_every: int):
        super().__init__()
        self.mlflow, self.method = mlflow, method
        self.val_part, self.val_views = val_part, [int(view) for view in val_views]
        self.checkpoint_dir, self.meta = checkpoint_dir, meta
        self.history, self.steps = list(record.get("history", [])), list(record.get("steps", []))
        self.frames = list(record.get("frames", []))
        self.steps_per_epoch, self.log_every = steps_per_epoch, log_every
        self._start, self._epoch, self._window, self._previous = 0.0, 0, [], (0.0, 0.0)
        self._warned = False  # the held-out-flat warning is given once a run

    def replay(self) -> None:
        """Log the rows of a resumed checkpoint (``record``'s) to MLflow as training logged them, so that the resumed
        run's curves are whole."""
        for row in self.steps:
            self.mlflow.log_metrics({"train/loss": row["loss"], "train/psnr": row["psnr"]}, step=row["step"])
        for row in self.history:
            self.mlflow.log_metrics({"val/loss": row["val_loss"], "val/psnr": row["val_psnr"],
                                     "time/epoch_s": row["epoch_s"]}, step=row["step"])

    def on_epoch_begin(self, epoch, logs=None):
        self._start, self._epoch, self._window, self._previous = time.perf_counter(), epoch, [], (0.0, 0.0)

    def on_train_batch_end(self, batch, logs=None):
        # Keras reports running means over the epoch: this step's own values are their increments.
        count = batch + 1
        mean_loss, mean_psnr = float(logs["loss"]), float(logs["psnr"])
        self._window.append((count * mean_loss - batch * self._previous[0],
                             count * mean_psnr - batch * self._previous[1]))
        self._previous = (mean_loss, mean_psnr)
        step = self._epoch * self.steps_per_epoch + count
        if step % self.log_every == 0 or count == self.steps_per_epoch:
            loss, psnr = (float(np.mean(values)) for values in zip(*self._window))
            self._window = []
            self.steps.append({"step": step, "loss": loss, "psnr": psnr})
            self.mlflow.log_metrics({"train/loss": loss, "train/psnr": psnr}, step=step)

    def validate(self) -> tuple[float, float, np.ndarray]:
        """``(val_loss, val_psnr, first_view_rgb [H, W, 3])`` over the validated views."""
        shown = []
        rows = scoring.score_views(self.method, self.val_part, self.val_views,
                                   on_view=lambda view, out, target: shown.append(out["rgb"]) if not shown else None)
        errors = np.maximum(np.asarray([row["mse"] for row in rows], np.float64), 1e-10)
        return float(errors.mean()), float(np.mean(-10.0 * np.log10(errors))), shown[0]

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        step = (epoch + 1) * self.steps_per_epoch
        logs["val_loss"], logs["val_psnr"], first_view = self.validate()
        row = {"epoch": epoch + 1, "step": step, **{k: float(v) for k, v in logs.items() if k in HISTORY_COLUMNS}}
        row["epoch_s"] = time.perf_counter() - self._start
        self.history.append(row)
        self.mlflow.log_metrics({"val/loss": row["val_loss"], "val/psnr": row["val_psnr"],
                                 "time/epoch_s": row["epoch_s"]}, step=step)
        frame = to_uint8(first_view)
        self.frames.append(frame)
        self.mlflow.log_image(frame, key="progress", step=epoch + 1)
        checkpoint.save(self.checkpoint_dir, self.model, {**self.meta, "epoch": epoch + 1, "history": self.history,
                                                          "steps": self.steps}, np.stack(self.frames),
                        method=self.method.name)
        warning = heldout_flat(self.history)
        if warning and not self._warned:
            self._warned = True
            log.warning("%s", warning)
            self.mlflow.set_tag("warning.heldout_flat", warning)


# Held-out views that gain less than this while training views gain TRAIN_GAIN_DB: they do not learn what training
# learns (issue 30.9: a turntable whose poses did not fit its images sat at 8 dB while training climbed to 25.7).
HELDOUT_GAIN_DB, TRAIN_GAIN_DB = 0.5, 3.0


def heldout_flat(history: list[dict]) -> str | None:
    """A warning when, since the first epoch, the held-out PSNR rose less than ``HELDOUT_GAIN_DB`` while the
    training PSNR rose at least ``TRAIN_GAIN_DB`` (``history``: the per-epoch rows); None otherwise."""
    if len(history) < 2:
        return None
    first, last = history[0], history[-1]
    train_gain, heldout_gain = last["psnr"] - first["psnr"], last["val_psnr"] - first["val_psnr"]
    if train_gain < TRAIN_GAIN_DB or heldout_gain >= HELDOUT_GAIN_DB:
        return None
    return (f"held-out views are not improving: val PSNR {first['val_psnr']:.1f} -> {last['val_psnr']:.1f} dB over "
            f"epochs 1-{last['epoch']} while training PSNR rose {first['psnr']:.1f} -> {last['psnr']:.1f} dB. The "
            "model fits the training views but not the others; likely causes: camera poses that do not fit the "
            "images (renders as fog in front of each camera: check the poses stage's reprojection error, or try "
            "scene.camera_refinement: on), masks that leave out what the views share, or too few views.")


class TrainingDiverged(UserError):
    def __init__(self, epoch: int, step: int, loss: float, preset: str):
        kept = (f"the checkpoint of the last complete epoch ({epoch - 1}) stays in place" if epoch > 1
                else "no epoch was complete, so there is no checkpoint")
        super().__init__(f"training diverged: the loss became {loss} at step {step} of epoch {epoch}. Nothing of "
                         f"this epoch was kept; {kept}. Lower the learning rates "
                         f"(presets.{preset}.optimizer) or check the data.")
        self.epoch = epoch


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Raise ``TrainingDiverged`` at the first step whose loss is NaN or infinite: nothing after it can be trusted."""

    def __init__(self, preset: str):
        super().__init__()
        self.preset = preset
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = float((logs or {}).get("loss", 0.0))
        if not math.isfinite(loss):
            raise TrainingDiverged(self.epoch + 1, batch + 1, loss, self.preset)


class StopWhenInterrupted(keras.callbacks.Callback):
    """Raise a Ctrl-C or SIGTERM that arrived during ``fit`` at the end of a step (see ``runtime.interrupts``)."""

    def on_train_batch_end(self, batch, logs=None):
        interrupts.check()

    def on_epoch_end(self, epoch, logs=None):  # listed after the recorder: a signal held through its save waits for it
        interrupts.check()


class PoseCorrections(keras.callbacks.Callback):
    """After each epoch, how far the pose refinement has moved the training cameras (``PoseRefinement.sizes``):
    MLflow's ``camera/rotation_deg_mean``, ``_max``, ``camera/translation_mean``, ``_max``. Nothing without one."""

    def __init__(self, mlflow):
        super().__init__()
        self.mlflow = mlflow

    def on_epoch_end(self, epoch, logs=None):
        refinement = getattr(self.model, "pose_refinement", None)
        if refinement is None:
            return
        step = int(self.model.optimizer.iterations.numpy())
        self.mlflow.log_metrics({f"camera/{name}": value for name, value in refinement.sizes().items()}, step=step)

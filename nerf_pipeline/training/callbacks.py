"""Keras callbacks of the train stage: the per-epoch record and checkpoint, and the two ways training stops early."""

from __future__ import annotations

import math
import time

import keras
import numpy as np
import pandas as pd

from nerf_pipeline.media import to_uint8
from nerf_pipeline.runtime import interrupts
from nerf_pipeline.runtime.errors import UserError
from nerf_pipeline.training import checkpoint

HISTORY_COLUMNS = ("epoch", "loss", "psnr", "val_loss", "val_psnr", "epoch_s")


def history_csv(rows: list[dict]) -> str:
    """The per-epoch history as CSV, one row per epoch, columns ``HISTORY_COLUMNS``."""
    table = pd.DataFrame(rows, columns=list(HISTORY_COLUMNS))
    return table.to_csv(index=False, float_format="%.6g", lineterminator="\n")


class EpochRecorder(keras.callbacks.Callback):
    """Per epoch: time, history row, MLflow metrics (step = epoch number), a progress frame, a checkpoint.

    ``history`` and ``frames`` start with those of the checkpoint being resumed, if any; the
    progress frame is ``renderer``'s view of the first val camera (``view_rays``: origins and
    directions ``[H, W, 3]``).
    """

    def __init__(self, mlflow, renderer, view_rays, checkpoint_dir, meta: dict, history: list[dict],
                 frames: list[np.ndarray]):
        super().__init__()
        self.mlflow, self.renderer, self.view_rays = mlflow, renderer, view_rays
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
        self.frames.append(to_uint8(self.renderer(*self.view_rays)["rgb"]))
        checkpoint.save(self.checkpoint_dir, self.model, {**self.meta, "epoch": epoch + 1, "history": self.history},
                        np.stack(self.frames))


class TrainingDiverged(UserError):
    def __init__(self, epoch: int, step: int, loss: float, preset: str):
        kept = (f"the checkpoint of the last complete epoch ({epoch - 1}) stays in place" if epoch > 1
                else "no epoch was complete, so there is no checkpoint")
        super().__init__(f"training diverged: the loss became {loss} at step {step} of epoch {epoch}. Nothing of "
                         f"this epoch was kept; {kept}. Lower the learning rate "
                         f"(presets.{preset}.optimizer.learning_rate) or check the data.")
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

    def on_test_batch_end(self, batch, logs=None):
        interrupts.check()

    def on_epoch_end(self, epoch, logs=None):  # listed after the recorder: a signal held through its save waits for it
        interrupts.check()

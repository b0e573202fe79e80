"""Training progress on the console: a bar (or a line every tenth of an epoch) with loss, PSNR and time left,
then one line per epoch. Stands in for Keras' own ``verbose`` output, which prints once per epoch in logs."""

from __future__ import annotations

import logging
import time

import keras

from nerf_pipeline.runtime.progress import Progress

log = logging.getLogger("nerf_pipeline.train")


class FitProgress(keras.callbacks.Callback):
    def __init__(self, epochs: int, steps_per_epoch: int):
        super().__init__()
        self.epochs, self.steps = epochs, steps_per_epoch
        self._progress, self._start = None, 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        self._progress = Progress(self.steps, f"epoch {epoch + 1}/{self.epochs}", "steps").__enter__()

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        self._progress(batch + 1, loss=float(logs.get("loss", float("nan"))),
                       psnr=float(logs.get("psnr", float("nan"))))

    def on_epoch_end(self, epoch, logs=None):
        self._progress.__exit__(None, None, None)
        logs = logs or {}
        log.info("epoch %d/%d: loss %.4g, PSNR %.2f dB, val PSNR %.2f dB (%.0f s)", epoch + 1, self.epochs,
                 logs.get("loss", float("nan")), logs.get("psnr", float("nan")), logs.get("val_psnr", float("nan")),
                 time.perf_counter() - self._start)

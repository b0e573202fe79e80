"""Stage ``evaluate``: render every val view with deterministic samples and score it.

Reads ``in_model`` (the trained model), ``in_rays`` (``val.npz``) and ``in_run_file`` (the
MLflow run). Writes:

* ``out_metrics``: ``eval.json`` — ``psnr`` and ``ssim`` (means over val views, ``tf.image``),
  ``psnr_min``, ``depth_mae`` (mean absolute depth error over pixels whose ground truth hits
  a surface, when the scene has depth), ``num_views``, ``render_s``;
* ``out_per_view``: CSV, one row per val view (``view_id, psnr, ssim[, depth_mae]``);
* ``out_grid``: PNG, one row per shown view: ground truth | prediction | depth (inferno).
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd
import tensorflow as tf

from nerf_pipeline import media
from nerf_pipeline.config import Config
from nerf_pipeline.model.nerf import load_model
from nerf_pipeline.model.renderer import ChunkedRenderer
from nerf_pipeline.runtime import atomic, tracking
from nerf_pipeline.scenes import ray_files

log = logging.getLogger(__name__)


def image_metrics(predicted: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-image PSNR and SSIM (max value 1) of ``[V, H, W, 3]`` float images; each ``[V]``."""
    predicted = tf.clip_by_value(tf.constant(predicted), 0.0, 1.0)
    target = tf.constant(target)
    return tf.image.psnr(predicted, target, max_val=1.0).numpy(), tf.image.ssim(predicted, target, max_val=1.0).numpy()


def depth_errors(predicted: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-view mean |depth error| over pixels with a ground-truth surface (``target > 0``); ``[V]``."""
    hit = target > 0
    errors = np.where(hit, np.abs(predicted - target), 0.0).sum(axis=(1, 2))
    return errors / np.maximum(hit.sum(axis=(1, 2)), 1)


def run(cfg: Config, *, in_model, in_rays, in_run_file, out_metrics, out_per_view, out_grid) -> dict:
    val = ray_files.load(in_rays, "val")
    model = load_model(in_model)
    renderer = ChunkedRenderer(model, cfg.evaluate.chunk_rays, cfg.active.jit_compile)
    with tracking.reopen_run(cfg, in_run_file) as mlflow:
        start = time.perf_counter()
        out = renderer(val["ray_origins"], val["ray_directions"])
        render_s = time.perf_counter() - start
        psnr, ssim = image_metrics(out["rgb"], val["rgb"])
        metrics = {"psnr": float(psnr.mean()), "ssim": float(ssim.mean()), "psnr_min": float(psnr.min()),
                   "num_views": int(len(psnr)), "render_s": round(render_s, 3)}
        columns = {"view_id": val["view_ids"], "psnr": psnr, "ssim": ssim}
        if "depth" in val:
            depth_mae = depth_errors(out["depth"], val["depth"])
            metrics["depth_mae"] = float(depth_mae.mean())
            columns["depth_mae"] = depth_mae

        shown = min(cfg.evaluate.grid_views, len(psnr))
        lo, hi = media.depth_range(out["depth"], out["acc"])
        rows = [np.concatenate([media.to_uint8(val["rgb"][i]), media.to_uint8(out["rgb"][i]),
                                media.colorize_depth(out["depth"][i], out["acc"][i], lo, hi)], axis=1)
                for i in range(shown)]
        media.write_png(out_grid, np.concatenate(rows, axis=0))
        atomic.write_text(out_per_view, pd.DataFrame(columns).to_csv(index=False, float_format="%.6g",
                                                                      lineterminator="\n"))
        atomic.write_json(out_metrics, metrics)
        mlflow.log_metrics({f"eval_{k}": v for k, v in metrics.items() if k != "num_views"})
        mlflow.log_artifact(str(out_grid), artifact_path="eval")
    log.info("val PSNR %.2f dB, SSIM %.4f over %d views (rendered in %.1f s)", metrics["psnr"], metrics["ssim"],
             metrics["num_views"], render_s)
    return metrics


"""Stage ``evaluate``: render the views of the evaluation split with deterministic samples and score them.

Reads ``in_model`` (the train stage's model folder: the model and its MLflow run) and ``in_rays``
(its ``test`` part when ``evaluate.split`` is ``test`` and the scene has one, as the published
NeRF-synthetic figures use; else ``val``). ``evaluate.max_views`` keeps that many views, evenly
spread. Views are rendered one at a time. Writes:

* ``out_metrics``: ``eval.json`` (DVC metrics: quality and how it was measured, no timings) —
  ``psnr`` and ``ssim`` (means over the views, ``tf.image``), ``depth_mae`` (mean absolute depth
  error over pixels whose ground truth hits a surface, when the scene has depth), ``split``,
  ``num_views``, ``width``, ``height`` (the worst view's PSNR goes to MLflow, ``eval/psnr_min``), and
  ``masked: true`` where the views have masks: PSNR and SSIM are then those of the kept pixels only
  (``image_metrics``);
* ``out_per_view``: CSV, one row per view (``view_id, psnr, ssim[, depth_mae]``);
* ``out_grid``: PNG, one row per shown view: ground truth | prediction | depth (inferno).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

from nerf_pipeline import media
from nerf_pipeline.config import Config
from nerf_pipeline.model.nerf import RUN_FILE, load_model, trained_poses
from nerf_pipeline.model.renderer import ChunkedRenderer
from nerf_pipeline.runtime import atomic, tracking
from nerf_pipeline.runtime.progress import Progress
from nerf_pipeline.scenes import ray_files
from nerf_pipeline.scenes.scene import evenly_spread

log = logging.getLogger(__name__)


def image_metrics(predicted: np.ndarray, target: np.ndarray, kept: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Per-image PSNR and SSIM (max value 1) of ``[V, H, W, 3]`` float images; each ``[V]``.

    With ``kept`` ([V, H, W] bool, the masks), both are of the kept pixels only: PSNR from their mean
    squared error; SSIM the mean of ``tf.image.ssim``'s map over the windows centred on kept pixels,
    after the prediction's left-out pixels are set to the target's (so what the mask leaves out adds no
    error to windows at its edge). A mask that keeps every pixel gives the unmasked figures.
    """
    predicted = tf.clip_by_value(tf.constant(predicted), 0.0, 1.0)
    target = tf.constant(target)
    if kept is None:
        psnr, ssim = tf.image.psnr(predicted, target, max_val=1.0), tf.image.ssim(predicted, target, max_val=1.0)
        return psnr.numpy(), ssim.numpy()
    kept = np.asarray(kept, dtype=bool)
    predicted = tf.where(kept[..., None], predicted, target)
    squared = np.square(predicted.numpy() - target.numpy()).mean(axis=-1)
    mse = np.where(kept, squared, 0.0).sum(axis=(1, 2)) / np.maximum(kept.sum(axis=(1, 2)), 1)
    psnr = -10.0 * np.log10(np.maximum(mse, 1e-10))  # (a perfect kept region is capped at 100 dB)
    ssim_map = tf.image.ssim(predicted, target, max_val=1.0, return_index_map=True).numpy()  # [V, H - 10, W - 10]
    crop_h, crop_w = (kept.shape[1] - ssim_map.shape[1]) // 2, (kept.shape[2] - ssim_map.shape[2]) // 2
    centres = kept[:, crop_h:crop_h + ssim_map.shape[1], crop_w:crop_w + ssim_map.shape[2]]
    ssim = np.where(centres, ssim_map, 0.0).sum(axis=(1, 2)) / np.maximum(centres.sum(axis=(1, 2)), 1)
    return psnr.astype(np.float32), ssim.astype(np.float32)


def depth_errors(predicted: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-view mean |depth error| over pixels with a ground-truth surface (``target > 0``); ``[V]``."""
    hit = target > 0
    errors = np.where(hit, np.abs(predicted - target), 0.0).sum(axis=(1, 2))
    return errors / np.maximum(hit.sum(axis=(1, 2)), 1)


def evaluation_part(cfg: Config, in_rays) -> ray_files.RayPart:
    """The part ``evaluate.split`` names, or val when the scene has no test split (said in the log)."""
    if cfg.evaluate.split == "test" and "test" not in ray_files.parts(in_rays):
        log.info("the scene has no test split: evaluating on val")
        return ray_files.load(in_rays, "val")
    return ray_files.load(in_rays, cfg.evaluate.split)


def run(cfg: Config, *, in_model, in_rays, out_metrics, out_per_view, out_grid) -> dict:
    part = evaluation_part(cfg, in_rays)
    views = evenly_spread(part.num_views, cfg.evaluate.max_views)
    model = load_model(in_model)
    renderer = ChunkedRenderer(model, cfg.evaluate.chunk_rays, cfg.active.jit_compile)
    train_positions = trained_poses(in_model, ray_files.load(in_rays, "train"))[:, :3, 3]
    rows, shown, render_s = [], [], 0.0
    with tracking.pipeline_run(cfg, Path(in_model) / RUN_FILE) as run:
        with Progress(len(views), f"evaluating {part.part} views", "views") as progress:
            for done, view in enumerate(views, 1):
                start = time.perf_counter()
                with model.appearance_near(train_positions, part.poses[view][:3, 3]):
                    out = renderer(*part.view_rays(int(view)))
                render_s += time.perf_counter() - start
                target = part.view_rgb(int(view))
                kept = part.view_mask(int(view))
                psnr, ssim = image_metrics(out["rgb"][None], target[None], None if kept is None else kept[None])
                row = {"view_id": int(part.view_ids[view]), "psnr": float(psnr[0]), "ssim": float(ssim[0])}
                if part.depth is not None:
                    row["depth_mae"] = float(depth_errors(out["depth"][None], np.asarray(part.depth[view])[None])[0])
                rows.append(row)
                if len(shown) < cfg.evaluate.grid_views:
                    shown.append((target, out))
                progress(done)
        table = pd.DataFrame(rows)
        metrics = {"psnr": float(table["psnr"].mean()), "ssim": float(table["ssim"].mean()), "split": part.part,
                   "num_views": len(rows), "width": part.width, "height": part.height}
        if part.masks is not None:
            metrics["masked"] = True  # PSNR and SSIM of the pixels the masks keep
        if "depth_mae" in table:
            metrics["depth_mae"] = float(table["depth_mae"].mean())
        depth = np.stack([out["depth"] for _, out in shown])
        lo, hi = media.depth_range(depth, np.stack([out["acc"] for _, out in shown]))
        grid = [np.concatenate([media.to_uint8(target), media.to_uint8(out["rgb"]),
                                media.colorize_depth(out["depth"], out["acc"], lo, hi)], axis=1) for target, out in shown]
        media.write_png(out_grid, np.concatenate(grid, axis=0))
        atomic.write_text(out_per_view, table.to_csv(index=False, float_format="%.6g", lineterminator="\n"))
        atomic.write_json(out_metrics, metrics)
        run.log_metrics({**{f"eval/{k}": v for k, v in metrics.items() if isinstance(v, float)},
                         "eval/psnr_min": float(table["psnr"].min()), "time/eval_render_s": render_s})
        run.log_artifact(str(out_grid), artifact_path="eval")
    log.info("%s PSNR %.2f dB, SSIM %.4f over %d views of %dx%d%s (rendered in %.1f s)", part.part, metrics["psnr"],
             metrics["ssim"], metrics["num_views"], part.width, part.height,
             ", on the pixels the masks keep" if part.masks is not None else "", render_s)
    return metrics

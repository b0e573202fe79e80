"""Stage ``evaluate``: render the views of the evaluation split with deterministic samples and score them.

Reads ``in_model`` (the train stage's model folder: the model and its MLflow run; any method, ``methods.load``)
and ``in_rays``: its ``test`` part when ``evaluate.split`` is ``test`` and the scene has one, as the published
NeRF-synthetic figures use, else ``val`` (``ray_files.evaluation_part``), and its ``train`` part's cameras (a
view takes the appearance of the training views nearest it). ``evaluate.max_views`` keeps that many views,
evenly spread. Views are rendered one at a time and scored by ``scoring.score_views``. Writes:

* ``out_metrics``: ``eval.json`` (DVC metrics: quality and how it was measured, no timings) —
  ``psnr`` and ``ssim`` (means over the views, ``tf.image``), ``lpips`` (AlexNet, LPIPS v0.1, when its weights
  are in the user's cache: ``nerf-pipeline lpips-weights``; else the log says so in one line) and ``lpips_net``,
  ``depth_mae`` (mean absolute depth
  error over pixels whose ground truth hits a surface, when the scene has depth), ``split``,
  ``num_views``, ``width``, ``height`` (the worst view's PSNR goes to MLflow, ``eval/psnr_min``), and
  ``masked: true`` where the views have masks: PSNR and SSIM are then those of the kept pixels only
  (``scoring.image_metrics``);
* ``out_per_view``: CSV, one row per view (``view_id, psnr, ssim[, depth_mae]``);
* ``out_grid``: PNG, one row per shown view: ground truth | prediction | depth (inferno), titled, each row
  captioned with its view id and PSNR (``labelled_grid``; views under ``MIN_COLUMN`` pixels wide are enlarged).
"""

from __future__ import annotations

import itertools
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from nerf_pipeline import media, methods, scoring, trained_folder
from nerf_pipeline.config import Config
from nerf_pipeline.runtime import atomic, tracking
from nerf_pipeline.runtime.progress import Progress
from nerf_pipeline.scenes import ray_files
from nerf_pipeline.scenes.scene import evenly_spread
from nerf_pipeline.scoring import lpips as scoring_lpips

log = logging.getLogger(__name__)

COLUMNS = ("view_id", "psnr", "ssim", "lpips", "depth_mae")  # of out_per_view (lpips with its weights, depth_mae
#                                                             where the scene has depth)
GRID_TITLES = ("ground truth", "prediction", "depth")
MIN_COLUMN = 96  # pixels: narrower views are enlarged (nearest) in the grid, so that its captions fit and can be read


def labelled_grid(rows: list[list[np.ndarray]], captions: list[list[str]], titles=GRID_TITLES) -> np.ndarray:
    """``rows`` of equal-sized ``[H, W, 3]`` uint8 panels as one image ``[H', W', 3]`` uint8: a band of column
    ``titles`` on top, and under each row a band with its ``captions`` (one per panel, centred under it).

    A view narrower than ``MIN_COLUMN`` is enlarged by a whole factor, each pixel a block (none is blended), so
    small scenes give a grid a reader can see; the panels keep their pixels otherwise.
    """
    from PIL import Image, ImageDraw, ImageFont  # Pillow: matplotlib's dependency, which the project has

    height, width = rows[0][0].shape[:2]
    scale = max(1, math.ceil(MIN_COLUMN / width))
    height, width = height * scale, width * scale
    # Pillow's own font (FreeType Aileron, or its bitmap font without FreeType): no font file to ship or find
    font = ImageFont.load_default(size=int(np.clip(width // 12, 12, 40)))
    band = int(font.size * 1.6) if hasattr(font, "size") else 18
    canvas = Image.new("RGB", (width * len(titles), band + len(rows) * (height + band)), (40, 40, 40))
    draw = ImageDraw.Draw(canvas)

    def text(column: int, top: int, words: str) -> None:
        # centred in its column's band; a caption wider than the column is cut at its edges rather than spilling over
        left, upper, right, lower = draw.textbbox((0, 0), words, font=font)
        x = column * width + (width - (right - left)) // 2 - left
        y = top + (band - (lower - upper)) // 2 - upper
        clip = Image.new("RGB", (width, band), (40, 40, 40))
        ImageDraw.Draw(clip).text((x - column * width, y - top), words, font=font, fill=(255, 255, 255))
        canvas.paste(clip, (column * width, top))

    for column, title in enumerate(titles):
        text(column, 0, title)
    for r, (panels, row_captions) in enumerate(zip(rows, captions)):
        top = band + r * (height + band)
        for column, (panel, caption) in enumerate(zip(panels, row_captions)):
            big = np.repeat(np.repeat(np.asarray(panel, np.uint8), scale, axis=0), scale, axis=1)
            canvas.paste(Image.fromarray(big), (column * width, top))
            text(column, top + height, caption)
    return np.asarray(canvas)



def run(cfg: Config, *, in_model, in_rays, out_metrics, out_per_view, out_grid) -> dict:
    part = ray_files.evaluation_part(in_rays, cfg.evaluate.split)
    views = evenly_spread(part.num_views, cfg.evaluate.max_views)
    method = methods.load(in_model, train_part=ray_files.load(in_rays, "train"), chunk_rays=cfg.evaluate.chunk_rays,
                          jit_compile=cfg.active.jit_compile)
    shown = []
    lpips_scorer, why_not = scoring_lpips.scorer_for(part.height, part.width)
    if why_not:
        log.info("%s", why_not)
    with tracking.pipeline_run(cfg, Path(in_model) / trained_folder.RUN_FILE) as run:
        with Progress(len(views), f"evaluating {part.part} views", "views") as progress:
            done = itertools.count(1)

            def on_view(view, out, target):
                if len(shown) < cfg.evaluate.grid_views:
                    shown.append((view, target, out))
                progress(next(done))

            rows = scoring.score_views(method, part, views, on_view=on_view, lpips=lpips_scorer)
        render_s = float(sum(row["render_s"] for row in rows))
        table = pd.DataFrame(rows)
        table = table[[column for column in COLUMNS if column in table]]
        metrics = {"psnr": float(table["psnr"].mean()), "ssim": float(table["ssim"].mean()), "split": part.part,
                   "num_views": len(rows), "width": part.width, "height": part.height}
        if part.masks is not None:
            metrics["masked"] = True  # PSNR and SSIM of the pixels the masks keep
        if "depth_mae" in table:
            metrics["depth_mae"] = float(table["depth_mae"].mean())
        if "lpips" in table:  # AlexNet, LPIPS v0.1 linear layers (as nerfstudio's ns-eval and the papers report)
            metrics["lpips"] = float(table["lpips"].mean())
            metrics["lpips_net"] = scoring_lpips.net_name(lpips_scorer)
        depth = np.stack([out["depth"] for _, _, out in shown])
        lo, hi = media.depth_range(depth, np.stack([out["opacity"] for _, _, out in shown]))
        psnr_of = {row["view_id"]: row["psnr"] for row in rows}
        view_ids = [int(part.view_ids[view]) for view, _, _ in shown]
        panels = [[media.to_uint8(target), media.to_uint8(out["rgb"]),
                   media.colorize_depth(out["depth"], out["opacity"], lo, hi)] for _, target, out in shown]
        # under the depth: the distances its colours span (bright near, dark far)
        captions = [[f"view {view_id}", f"PSNR {psnr_of[view_id]:.2f} dB", f"{lo:.3g} to {hi:.3g}"]
                    for view_id in view_ids]
        media.write_png(out_grid, labelled_grid(panels, captions))
        atomic.write_text(out_per_view, table.to_csv(index=False, float_format="%.6g", lineterminator="\n"))
        atomic.write_json(out_metrics, metrics)
        run.log_metrics({**{f"eval/{k}": v for k, v in metrics.items() if isinstance(v, float)},
                         "eval/psnr_min": float(table["psnr"].min()), "time/eval_render_s": render_s})
        run.log_artifact(str(out_grid), artifact_path="eval")
    log.info("%s PSNR %.2f dB, SSIM %.4f%s over %d views of %dx%d%s (rendered in %.1f s)", part.part, metrics["psnr"],
             metrics["ssim"], f", LPIPS {metrics['lpips']:.4f}" if "lpips" in metrics else "", metrics["num_views"],
             part.width, part.height,
             ", on the pixels the masks keep" if part.masks is not None else "", render_s)
    return metrics

"""Scoring rendered views against ground truth: PSNR, SSIM, depth error (LPIPS: ``scoring/lpips.py``).

``score_views(method, part, views)`` is the one render-then-score loop: validation during training
(``training/callbacks.py``), the evaluate stage and the benchmarks render each view through the method
(``methods.Method.render``, so in the appearance of the training views nearest it where the method has one)
and score it here. Each view gives a row::

    {"view_id": int, "psnr": float, "ssim": float, ["depth_mae": float,] ["lpips": float,] "mse": float,
     "render_s": float}

``psnr`` and ``ssim`` are ``image_metrics``' (the prediction clipped to [0, 1]; of the kept pixels where the part
has masks), ``depth_mae`` is ``depth_errors``' (where the part has ground-truth depth), ``lpips`` the given
scorer's (``scoring/lpips.py``: AlexNet, LPIPS v0.1; the mask's left-out pixels set to the truth's, as for SSIM),
``mse`` the mean squared error over the kept pixels (training's validation loss: validation scores what training
fits, issue 30.9), ``render_s`` the seconds the render took.
"""

from __future__ import annotations

import time

import numpy as np


def image_metrics(predicted: np.ndarray, target: np.ndarray, kept: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Per-image PSNR and SSIM (max value 1) of ``[V, H, W, 3]`` float images; each ``[V]``.

    With ``kept`` ([V, H, W] bool, the masks), both are of the kept pixels only: PSNR from their mean
    squared error; SSIM the mean of ``tf.image.ssim``'s map over the windows centred on kept pixels,
    after the prediction's left-out pixels are set to the target's (so what the mask leaves out adds no
    error to windows at its edge). A mask that keeps every pixel gives the unmasked figures.
    """
    import tensorflow as tf

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


def psnr_of_mse(mse) -> np.ndarray:
    """PSNR (dB, max value 1) of mean squared errors, each floored at 1e-10 (100 dB)."""
    return -10.0 * np.log10(np.maximum(np.asarray(mse, np.float64), 1e-10))


def score_views(method, part, views, on_view=None, lpips=None) -> list[dict]:
    """Render views ``views`` (indices) of ``part`` (a ``ray_files.RayPart``) one at a time through ``method`` (a
    ``methods.Method``) and score each against its ground truth: a row per view (the module's docstring).

    ``on_view(index, out, target)``, if given, is called after each view with its index, the method's output
    (``rgb``, ``depth``, ``opacity``) and its ground truth ``[H, W, 3]`` (to keep a picture, count progress).
    ``lpips``, if given, is a scorer ``(predicted [B, H, W, 3], target [B, H, W, 3]) -> [B]`` (e.g.
    ``scoring.lpips.LPIPS``): rows then have ``lpips`` too.
    """
    from nerf_pipeline.methods import Camera

    rows = []
    for view in views:
        view = int(view)
        start = time.perf_counter()
        out = method.render(Camera.of_view(part, view))
        render_s = time.perf_counter() - start
        target = part.view_rgb(view)
        kept = part.view_mask(view)
        psnr, ssim = image_metrics(out["rgb"][None], target[None], None if kept is None else kept[None])
        row = {"view_id": int(part.view_ids[view]), "psnr": float(psnr[0]), "ssim": float(ssim[0])}
        if part.depth is not None:
            row["depth_mae"] = float(depth_errors(out["depth"][None], np.asarray(part.depth[view])[None])[0])
        predicted = np.clip(out["rgb"], 0.0, 1.0)
        if kept is not None:  # what the mask leaves out adds no error (as for SSIM)
            predicted = np.where(kept[..., None], predicted, target)
        if lpips is not None:
            row["lpips"] = float(np.asarray(lpips(predicted[None], target[None]))[0])
        # The kept pixels' mean squared error (validation's loss): the PSNR above is of it.
        row["mse"] = float(np.square(predicted - target).mean(axis=-1).sum() / (
            predicted.shape[0] * predicted.shape[1] if kept is None else max(int(kept.sum()), 1)))
        row["render_s"] = render_s
        rows.append(row)
        if on_view is not None:
            on_view(view, out, target)
    return rows

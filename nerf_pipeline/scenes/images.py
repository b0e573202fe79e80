"""Image processing of the views: reading (alpha composited), area downscaling, undistortion (numpy).

Images are ``[H, W, C]`` arrays; functions that resample return float32 in the input's range.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nerf_pipeline.errors import DataError


def read_image(path: Path, background: float, source: str) -> np.ndarray:
    """RGB float32 ``[H, W, 3]`` in [0, 1]; alpha composited on ``background``."""
    import imageio.v3 as iio

    if not path.is_file():
        raise DataError(f"{source}: image {path} not found.")
    try:
        image = np.asarray(iio.imread(path))
    except Exception as e:  # imageio raises many types for unreadable files
        raise DataError(f"{source}: cannot read image {path} ({e}); it may be truncated or corrupt.") from None
    if image.dtype == np.uint8:
        image = image.astype(np.float32) / 255.0
    elif image.dtype == np.uint16:
        image = image.astype(np.float32) / 65535.0
    elif np.issubdtype(image.dtype, np.floating):
        image = image.astype(np.float32)
    else:
        raise DataError(f"{source}: image {path} has pixels of type {image.dtype}; expected 8- or 16-bit.")
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise DataError(f"{source}: image {path} has shape {image.shape}; expected RGB or RGBA.")
    if image.shape[-1] == 4:
        alpha = image[..., 3:]
        image = image[..., :3] * alpha + background * (1.0 - alpha)
    return np.clip(image, 0.0, 1.0)


def downscale_image(image: np.ndarray, factor: int) -> np.ndarray:
    """Average each ``factor`` x ``factor`` block (the last partial row/column of blocks is cropped)."""
    if factor == 1:
        return image.astype(np.float32)
    h, w = image.shape[0] // factor * factor, image.shape[1] // factor * factor
    blocks = image[:h, :w].reshape(h // factor, factor, w // factor, factor, image.shape[-1])
    return blocks.mean(axis=(1, 3), dtype=np.float64).astype(np.float32)


def downscale_depth(depth: np.ndarray, factor: int) -> np.ndarray:
    """``[H // factor, W // factor]`` float32 of a depth map ``[H, W]`` in which 0 means "no surface".

    Each block's depth is the mean over its pixels that have a surface, and 0 where more than half of
    them have none: a plain mean would count "no surface" as depth 0 and give the blocks on a
    silhouette a depth between the object and the camera, where nothing is.
    """
    depth = np.asarray(depth, dtype=np.float64)
    if factor == 1:
        return depth.astype(np.float32)
    h, w = depth.shape[0] // factor * factor, depth.shape[1] // factor * factor
    blocks = depth[:h, :w].reshape(h // factor, factor, w // factor, factor)
    surface = blocks > 0
    count = surface.sum(axis=(1, 3))
    total = np.where(surface, blocks, 0.0).sum(axis=(1, 3))
    mean = total / np.maximum(count, 1)
    return np.where(2 * count >= factor * factor, mean, 0.0).astype(np.float32)


def undistort(image: np.ndarray, fx, fy, cx, cy, k1, k2, p1, p2) -> np.ndarray:
    """Resample an image taken through OpenCV's radial-tangential distortion into a pinhole image.

    Each output pixel centre is pushed through the distortion model to find where the lens
    put it, and the input is sampled there (bilinear, edges clamped). Intrinsics are unchanged.
    """
    height, width = image.shape[:2]
    cols, rows = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    x, y = (cols - cx) / fx, (rows - cy) / fy
    r2 = x * x + y * y
    radial = 1.0 + k1 * r2 + k2 * r2 * r2
    x_d = x * radial + 2.0 * p1 * x * y + p2 * (r2 + 2.0 * x * x)
    y_d = y * radial + p1 * (r2 + 2.0 * y * y) + 2.0 * p2 * x * y
    # back to array coordinates, where pixel i's centre is at i
    u = np.clip(x_d * fx + cx - 0.5, 0.0, width - 1.0)
    v = np.clip(y_d * fy + cy - 0.5, 0.0, height - 1.0)
    u0, v0 = np.floor(u).astype(int), np.floor(v).astype(int)
    u1, v1 = np.minimum(u0 + 1, width - 1), np.minimum(v0 + 1, height - 1)
    du, dv = (u - u0)[..., None], (v - v0)[..., None]
    top = image[v0, u0] * (1 - du) + image[v0, u1] * du
    bottom = image[v1, u0] * (1 - du) + image[v1, u1] * du
    return (top * (1 - dv) + bottom * dv).astype(np.float32)


def prepare_view(image: np.ndarray, intrinsics, distortion, downscale: int) -> tuple[np.ndarray, np.ndarray]:
    """A scene view as the model trains on it: undistorted (if its distortion is not zero), then
    area-downscaled. Returns the uint8 image ``[H // downscale, W // downscale, 3]`` and its
    intrinsics ``(fx, fy, cx, cy)`` in pixels of that image.
    """
    fx, fy, cx, cy = (float(v) for v in intrinsics)
    image = np.asarray(image, dtype=np.float32)
    if np.any(np.asarray(distortion) != 0):
        image = undistort(image, fx, fy, cx, cy, *(float(v) for v in distortion))
    image = downscale_image(image, downscale)
    intrinsics = np.array([fx, fy, cx, cy], np.float32) / downscale
    return (np.clip(image, 0.0, 255.0) + 0.5).astype(np.uint8), intrinsics

"""LLFF captures (the layout of the NeRF paper's forward-facing scenes): ``poses_bounds.npy`` and ``images/``.

``poses_bounds.npy`` is an [N, 17] float array, one row per image of ``images/`` (those files
sorted by name). Each row is a row-major 3x5 matrix followed by the near and far depth bounds
of that view:

* columns 0-2: the camera-to-world rotation, whose columns are the camera's down, right and
  back axes in world coordinates (LLFF's axis order);
* column 3: the camera centre;
* column 4: ``(height, width, focal)`` of the image in pixels. LLFF cameras are pinholes with
  ``fx = fy = focal`` and the principal point at the image centre ``(width / 2, height / 2)``.

``read_poses_bounds`` returns the cameras in this project's OpenGL convention (``camera.py``:
columns right, up, back), in the file's own world frame and scale.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nerf_pipeline.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def image_files(folder) -> list[Path]:
    """The JPG, JPEG and PNG files (any case of extension) of ``folder/images``, sorted by name."""
    images = Path(folder) / "images"
    if not images.is_dir():
        raise DataError(f"{folder}: no images/ folder; an LLFF capture holds poses_bounds.npy and images/.")
    return sorted((path for path in images.iterdir() if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS),
                  key=lambda path: path.name)


def read_poses_bounds(path, num_images: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The cameras of a ``poses_bounds.npy``.

    Args:
        num_images: how many images the capture holds; the file must have one row per image.

    Returns:
        c2w: [N, 4, 4] float64 camera-to-world matrices in the OpenGL convention.
        hwf: [N, 3] float64 ``(height, width, focal)`` in pixels.
        bounds: [N, 2] float64 ``(near, far)`` depths along the viewing direction.
    """
    path = Path(path)
    try:
        rows = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:  # missing, unreadable, cut short, not a .npy (numpy tries pickle)
        raise DataError(f"{path}: cannot read it as a .npy array ({e}).") from None
    if not isinstance(rows, np.ndarray):  # a .npz archive
        rows.close()
        raise DataError(f"{path}: is an .npz archive; expected one [N, 17] array saved with numpy.save.")
    if rows.ndim != 2 or rows.shape[1] != 17 or not np.issubdtype(rows.dtype, np.number):
        raise DataError(f"{path}: holds an array of shape {rows.shape} and type {rows.dtype}; expected [N, 17] "
                        "numbers (per image a 3x5 pose-and-hwf matrix, then near and far).")
    if num_images is not None and len(rows) != num_images:
        raise DataError(f"{path} has {len(rows)} rows but images/ holds {num_images} images; one row per image.")
    rows = rows.astype(np.float64)
    if not np.all(np.isfinite(rows)):
        bad = np.flatnonzero(~np.isfinite(rows).all(axis=1))
        raise DataError(f"{path}: rows {bad[:10].tolist()} hold NaN or infinite values; expected finite numbers.")
    matrices = rows[:, :15].reshape(-1, 3, 5)
    bad = np.flatnonzero(~(matrices[:, :, 4] > 0).all(axis=1))
    if len(bad):  # a focal length of 0 would pass every data stage as rays of NaN, and make training fail
        height, width, focal = matrices[bad[0], :, 4]
        others = f" (as do rows {bad[1:10].tolist()})" if len(bad) > 1 else ""
        raise DataError(f"{path}: row {bad[0]} (image {bad[0]} of images/ in name order) has height, width, focal = "
                        f"{height:g}, {width:g}, {focal:g} pixels{others}; each must be positive.")
    down, right, back = matrices[:, :, 0], matrices[:, :, 1], matrices[:, :, 2]
    c2w = np.tile(np.eye(4), (len(rows), 1, 1))
    c2w[:, :3, :3] = np.stack([right, -down, back], axis=-1)  # (down, right, back) -> (right, up, back)
    c2w[:, :3, 3] = matrices[:, :, 3]
    return c2w, matrices[:, :, 4], rows[:, 15:17]

"""Masks: which pixels of each view show the scene (kept) and which do not (never trained on, not scored).

Where a capture has them:

* an instant-ngp / nerfstudio ``transforms.json`` (or split files): a frame's ``mask_path``, relative
  to the file's folder, as nerfstudio writes it;
* a COLMAP, LLFF or photo-folder capture: a ``masks/`` folder beside ``images/`` (in the capture's
  folder), one file per image named as capture tools name them: by the image's stem (``frame_001.png``
  for ``frame_001.jpg``), COLMAP's ``<image name>.png`` (``frame_001.jpg.png``) or ``<stem>_mask.<ext>``
  (``IMG_0001_mask.JPG`` for ``IMG_0001.JPG``), any image extension. An image that two files could be
  the mask of is refused, naming both.

A mask is an image of its view's size; a pixel is kept where it is at least half of full scale (in
any colour channel; an alpha channel is ignored): masks saved as JPEG carry compression noise at
their edges (values 1-127 beside the black), which "nonzero" would keep. A mask of 0s and 1s keeps
its 1s. Once a capture has masks, every view needs one: a missing mask, or one of another size than
its image, is refused naming the file.

Masks travel as uint8 ``[H, W]``, 1 keep, 0 not: in the scene folder (``masks.npy``, at the
source's resolution) and in the rays folder (``<part>/masks.npy``), where ``prepare_mask`` makes
them follow their view's undistortion and downscaling.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np

from nerf_pipeline.errors import DataError
from nerf_pipeline.scenes.images import downscale_image, undistort

MASKS_FOLDER = "masks"
MASK_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MaskReader = Callable[[int], np.ndarray]


def read_mask(path: Path, height: int, width: int, image) -> np.ndarray:
    """The mask file ``path`` of ``image`` (a ``height`` x ``width`` view) as uint8 ``[H, W]``, 1 where kept."""
    import imageio.v3 as iio

    if not path.is_file():
        raise DataError(f"{path}: the mask of {image} is not there.")
    try:
        mask = np.asarray(iio.imread(path, index=0))
    except Exception as e:  # imageio raises many types for unreadable files
        raise DataError(f"{path}: cannot read this mask of {image} ({e}); it may be truncated or corrupt.") from None
    if mask.ndim == 3 and mask.shape[-1] in (2, 4):
        mask = mask[..., :-1]  # grey + alpha or RGBA: the alpha is not the mask
    if mask.ndim not in (2, 3):
        raise DataError(f"{path}: a mask must be a grey or colour image; got shape {mask.shape}.")
    if mask.shape[:2] != (height, width):
        raise DataError(f"{path}: this mask is {mask.shape[1]}x{mask.shape[0]} but its image {image} is "
                        f"{width}x{height}; a mask must have its image's size.")
    keep = kept_pixels(mask)
    return (keep if keep.ndim == 2 else np.any(keep, axis=-1)).astype(np.uint8)


def kept_pixels(mask: np.ndarray) -> np.ndarray:
    """``mask >= half of full scale``, per value: full scale is 1 for a mask of 0s and 1s (or of floats up to 1),
    else its integer type's largest value (255 for 8 bits)."""
    mask = np.asarray(mask)
    if mask.dtype == bool:
        return mask
    if mask.size == 0 or mask.max() <= 1 or not np.issubdtype(mask.dtype, np.integer):
        return mask >= 0.5
    return mask >= (np.iinfo(mask.dtype).max + 1) // 2


def reader(paths: list[Path], images: list, height: int, width: int) -> MaskReader:
    """``read(i)``: the mask of view ``i`` (``paths[i]``, the mask of ``images[i]``), uint8 ``[H, W]``."""
    return lambda i: read_mask(paths[i], height, width, images[i])


def folder_masks(capture: Path, images: list[Path], height: int, width: int) -> Optional[MaskReader]:
    """The masks of a COLMAP, LLFF or photo-folder capture (``capture/masks/``), None if it has none.
    Raises ``DataError`` naming the masks folder and the image whose mask it lacks."""
    folder = Path(capture) / MASKS_FOLDER
    if not folder.is_dir():
        return None
    by_stem: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and not path.name.startswith(".") and path.suffix.lower() in MASK_EXTENSIONS:
            by_stem.setdefault(path.stem, []).append(path)
    paths = []
    for image in images:
        # The names tools write: <stem>.<ext>, COLMAP's <image name>.png, <stem>_mask.<ext>.
        found = [path for stem in dict.fromkeys((image.stem, image.name, f"{image.stem}_mask"))
                 for path in by_stem.get(stem, [])]
        if not found:
            raise DataError(f"{folder}: has no mask for the image {image.name} (expected {image.stem}.png, "
                            f"{image.name}.png or {image.stem}_mask.png, any image extension); once a capture has a "
                            "masks/ folder every image needs its mask.")
        if len(found) > 1:
            raise DataError(f"{folder}: {' and '.join(p.name for p in found)} could each be the mask of the image "
                            f"{image.name}; keep one.")
        paths.append(found[0])
    return reader(paths, images, height, width)


def frame_masks(folder: Path, frames: list[dict], sources: list[str], images: list[Path], height: int,
                width: int) -> Optional[MaskReader]:
    """The masks that transforms frames name (``mask_path``, relative to ``folder``), None if no frame names
    one. Raises ``DataError`` naming the file and frame when some frames name a mask and others do not."""
    named = [isinstance(frame.get("mask_path"), str) for frame in frames]
    if not any(named):
        return None
    if not all(named):
        i = named.index(False)
        raise DataError(f"{sources[i]}: the frame of {images[i].name} has no 'mask_path', but other frames have "
                        "one; every frame needs its mask once one has.")
    return reader([folder / frame["mask_path"] for frame in frames], images, height, width)


def prepare_mask(mask: np.ndarray, intrinsics, distortion, downscale: int) -> np.ndarray:
    """A scene view's mask as the rays stage prepares its image (``images.prepare_view``): undistorted the
    same way, then downscaled by the same blocks. A pixel is kept only if all that went into its colour
    was kept (every source pixel of its block, both sides of its bilinear sample), so no kept pixel's
    colour holds any of what the mask leaves out. Returns uint8 ``[H // downscale, W // downscale]``."""
    fx, fy, cx, cy = (float(v) for v in intrinsics)
    kept = np.asarray(mask, dtype=np.float32)[..., None]
    if np.any(np.asarray(distortion) != 0):
        kept = undistort(kept, fx, fy, cx, cy, *(float(v) for v in distortion))
    return downscale_mask(kept[..., 0], downscale)


def downscale_mask(kept: np.ndarray, factor: int) -> np.ndarray:
    """uint8 ``[H // factor, W // factor]`` of a mask ``kept [H, W]`` (bool, or float in [0, 1]): a block is kept only
    if every pixel of it is (wholly), so that no kept pixel's colour holds any of what the mask leaves out."""
    blocks = downscale_image(np.asarray(kept, dtype=np.float32)[..., None], factor)[..., 0]
    return (blocks >= 1.0 - 1e-6).astype(np.uint8)

"""The normalised scene file that the ``download`` stage writes and ``split``/``rays`` read.

``scene.npz`` holds:

=========  ======================  ================================================
key        shape, dtype            meaning
=========  ======================  ================================================
images     [N, H, W, 3] float32    RGB in [0, 1]
poses      [N, 4, 4] float32       camera-to-world, OpenGL convention (see camera.py)
intrinsics [N, 4] float32          per view ``(fx, fy, cx, cy)`` in pixels
near, far  [] float32              sampling bounds along each unit-length ray
depth      [N, H, W] float32       optional: ground-truth distance along the pixel-centre
                                   ray to the first surface, 0 where the ray hits nothing
split_train, split_val             optional [int32]: the source's own train/val views
unbounded  [] bool                 optional (false): the scene reaches far beyond what the
                                   cameras look at (a capture's background); ``scene.contraction:
                                   auto`` contracts such scenes
=========  ======================  ================================================

``validate`` checks every property a stage relies on and raises ``DataError`` naming the
file, the key and what was expected; ``read_tiny_nerf_npz`` reads a file in the layout of
``tiny_nerf_data.npz`` (``images``, ``poses``, ``focal``; uint8 images are normalised).
Scenes in the NeRF-synthetic and instant-ngp/nerfstudio layouts are read by ``transforms.py``.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from nerf_pipeline.runtime import atomic
from nerf_pipeline.camera import as_intrinsics, rotation_error
from nerf_pipeline.runtime.errors import DataError

ROTATION_TOLERANCE = 1e-3
TINY_NERF_NEAR, TINY_NERF_FAR = 2.0, 6.0  # the Keras example's bounds for tiny_nerf_data.npz


@dataclass(frozen=True)
class Scene:
    images: np.ndarray  # [N, H, W, 3] float32 in [0, 1]
    poses: np.ndarray  # [N, 4, 4] float32
    intrinsics: np.ndarray  # [N, 4] float32: fx, fy, cx, cy
    near: float
    far: float
    depth: Optional[np.ndarray] = None  # [N, H, W] float32
    split: Optional[dict] = None  # {"train": [int], "val": [int]}: the source's own split
    unbounded: bool = False  # the scene's background reaches far beyond the cameras' focus

    @property
    def num_views(self) -> int:
        return self.images.shape[0]

    @property
    def height(self) -> int:
        return self.images.shape[1]

    @property
    def width(self) -> int:
        return self.images.shape[2]

    def save(self, path) -> None:
        arrays = dict(images=self.images, poses=self.poses, intrinsics=self.intrinsics,
                      near=np.float32(self.near), far=np.float32(self.far), unbounded=np.bool_(self.unbounded))
        if self.depth is not None:
            arrays["depth"] = self.depth
        if self.split is not None:
            arrays["split_train"] = np.asarray(self.split["train"], np.int32)
            arrays["split_val"] = np.asarray(self.split["val"], np.int32)
        atomic.save_npz(path, **arrays)

    @classmethod
    def load(cls, path) -> "Scene":
        arrays = read_npz(path, required=("images", "poses", "intrinsics", "near", "far"))
        split = None
        if "split_train" in arrays and "split_val" in arrays:
            split = {"train": arrays["split_train"].tolist(), "val": arrays["split_val"].tolist()}
        return validate(arrays["images"], arrays["poses"], arrays["intrinsics"], arrays["near"], arrays["far"],
                        arrays.get("depth"), split=split, source=str(path),
                        unbounded=bool(arrays.get("unbounded", False)))


def read_npz(path, required) -> dict:
    """All arrays of an ``.npz`` file, with clear errors for a missing, corrupt or incomplete file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found (expected an .npz file).")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise DataError(f"{path}: not a readable .npz file ({e}); it may be truncated or corrupt. "
                        "Download or write it again.") from None
    missing = [key for key in required if key not in arrays]
    if missing:
        raise DataError(f"{path}: missing key(s) {', '.join(missing)}; it has {', '.join(sorted(arrays)) or 'none'}. "
                        f"Expected {', '.join(required)}.")
    return arrays


def _scalar(value, name: str, source: str) -> float:
    value = np.asarray(value)
    if value.size != 1 or not np.issubdtype(value.dtype, np.number):
        raise DataError(f"{source}: '{name}' must be a single number; got shape {value.shape}, dtype {value.dtype}.")
    return float(value.reshape(()))


def validate(images, poses, intrinsics, near, far, depth=None, split=None, source: str = "scene",
             unbounded: bool = False) -> Scene:
    """Check and normalise a scene's arrays. Raises ``DataError`` with ``source`` in the message.

    ``intrinsics``: a focal length (principal point at the centre) or ``(fx, fy, cx, cy)``
    per view ([N, 4]) or shared ([4]). uint8 images are divided by 255; float images must
    already lie in [0, 1]; an RGBA image is refused (its alpha must be composited first).
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise DataError(f"{source}: 'images' must have shape (N, H, W, 3); got {images.shape}.")
    if images.dtype == np.uint8:
        images = images.astype(np.float32) / 255.0
    elif np.issubdtype(images.dtype, np.floating):
        images = images.astype(np.float32)
        if not np.all(np.isfinite(images)):
            raise DataError(f"{source}: 'images' contains NaN or Inf values.")
        low, high = float(images.min()), float(images.max())
        if low < 0.0 or high > 1.0:
            raise DataError(f"{source}: float 'images' must lie in [0, 1]; found values in [{low:.4g}, {high:.4g}] "
                            "(uint8 images are normalised automatically; scale floats yourself).")
    else:
        raise DataError(f"{source}: 'images' must be uint8 or float; got dtype {images.dtype}.")

    poses = np.asarray(poses)
    if poses.ndim != 3 or poses.shape[1:] not in ((4, 4), (3, 4)):
        raise DataError(f"{source}: 'poses' must have shape (N, 4, 4) (camera-to-world); got {poses.shape}.")
    if not np.issubdtype(poses.dtype, np.floating):
        raise DataError(f"{source}: 'poses' must be floats; got dtype {poses.dtype}.")
    if poses.shape[0] != images.shape[0]:
        raise DataError(f"{source}: {images.shape[0]} images but {poses.shape[0]} poses; there must be one pose per image.")
    if not np.all(np.isfinite(poses)):
        raise DataError(f"{source}: 'poses' contains NaN or Inf values.")
    if poses.shape[1] == 3:
        poses = np.concatenate([poses, np.broadcast_to([[[0, 0, 0, 1]]], (len(poses), 1, 4))], axis=1)
    errors = rotation_error(poses)
    if np.any(errors > ROTATION_TOLERANCE):
        worst = int(np.argmax(errors))
        raise DataError(f"{source}: the rotation part of pose {worst} is not orthonormal "
                        f"(max |R^T R - I| = {errors[worst]:.3g}, tolerance {ROTATION_TOLERANCE}); "
                        "poses must be rigid camera-to-world matrices.")

    intrinsics = np.asarray(intrinsics)
    if not np.issubdtype(intrinsics.dtype, np.number):
        raise DataError(f"{source}: intrinsics must be numbers; got dtype {intrinsics.dtype}.")
    intrinsics = as_intrinsics(intrinsics, images.shape[1], images.shape[2])  # a focal length: centred
    if intrinsics.shape == (4,):
        intrinsics = np.broadcast_to(intrinsics, (images.shape[0], 4))
    if intrinsics.shape != (images.shape[0], 4):
        raise DataError(f"{source}: intrinsics must be (fx, fy, cx, cy) per view, shape ({images.shape[0]}, 4); "
                        f"got {intrinsics.shape}.")
    if not np.all(np.isfinite(intrinsics)) or np.any(intrinsics[:, :2] <= 0):
        raise DataError(f"{source}: focal lengths must be positive numbers of pixels and the principal point "
                        "finite; got fx, fy = " f"{intrinsics[:, :2].min():.4g} at the smallest.")
    near, far = _scalar(near, "near", source), _scalar(far, "far", source)
    if not (0 <= near < far) or not np.isfinite(far):
        raise DataError(f"{source}: need 0 <= near < far; got near={near}, far={far}.")

    if depth is not None:
        depth = np.asarray(depth, dtype=np.float32)
        if depth.shape != images.shape[:3]:
            raise DataError(f"{source}: 'depth' must have shape {images.shape[:3]} (one value per pixel); got {depth.shape}.")
        if not np.all(np.isfinite(depth)) or np.any(depth < 0):
            raise DataError(f"{source}: 'depth' must be finite and >= 0 (0 where nothing is hit).")
    if split is not None:
        views = split["train"] + split["val"]
        if not split["train"] or not split["val"] or min(views) < 0 or max(views) >= images.shape[0]:
            raise DataError(f"{source}: its train/val split must name views 0..{images.shape[0] - 1}, "
                            "at least one in each part.")
    return Scene(images=images, poses=poses.astype(np.float32), intrinsics=intrinsics.astype(np.float32),
                 near=near, far=far, depth=depth, split=split, unbounded=unbounded)


def read_tiny_nerf_npz(path, near: float | None = None, far: float | None = None) -> Scene:
    """A scene from an ``.npz`` in the layout of ``tiny_nerf_data.npz``.

    Keys ``images`` [N, H, W, 3] (float in [0, 1] or uint8), ``poses`` [N, 4, 4],
    ``focal`` []; optional ``near``, ``far`` and ``depth``. ``near``/``far`` given here win over
    the file's; with neither, tiny_nerf's 2 and 6.
    """
    arrays = read_npz(path, required=("images", "poses", "focal"))
    focal = _scalar(arrays["focal"], "focal", str(path))
    if not np.isfinite(focal) or focal <= 0:
        raise DataError(f"{path}: 'focal' must be a positive number of pixels; got {focal}.")
    near = near if near is not None else arrays.get("near", TINY_NERF_NEAR)
    far = far if far is not None else arrays.get("far", TINY_NERF_FAR)
    return validate(arrays["images"], arrays["poses"], focal, near, far, arrays.get("depth"), source=str(path))

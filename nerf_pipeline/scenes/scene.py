"""The scene folder that the ``download`` stage writes and the ``poses``, ``split`` and ``rays`` stages read.

A scene is every view the source holds, at the source's own resolution, and what is known of
its cameras. A folder:

==============  =========================  ==================================================
file            shape, dtype               meaning
==============  =========================  ==================================================
images.npy      [N, H, W, 3] uint8         RGB (alpha already composited on data.background);
                                           read by memory map, never whole
depth.npy       [N, H, W] float32          optional (the built-in scene): distance along the
                                           pixel-centre ray to the first surface, 0 for none
masks.npy       [N, H, W] uint8            optional (captures with masks, ``masks.py``): 1 where
                                           the pixel is kept, 0 where it is never trained on
cameras.npz     see ``Cameras``            names, intrinsics, distortion, poses if known, …
==============  =========================  ==================================================

``Cameras`` holds per view its file name, intrinsics ``(fx, fy, cx, cy)`` in pixels (pixel
centres at +0.5, as in ``camera.py``), OpenCV distortion ``(k1, k2, p1, p2)`` (zeros for a
pinhole), and its camera-to-world pose in the OpenGL convention, or no poses at all (photos
and videos: the ``poses`` stage computes them). Also the sampling bounds if the source gives
them, whether the scene is unbounded (a capture whose background reaches far beyond what the
cameras look at), whether its poses are to be re-centred and scaled (captures in their own
frame and units), the source's own split, and a sparse point cloud if it has one.

``SceneWriter`` writes a scene view by view, so no stage holds more than one image in memory;
``Scene.open`` checks every property later stages rely on and raises ``DataError`` naming the
file and what was expected.
"""

from __future__ import annotations

import dataclasses
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from nerf_pipeline.camera import as_intrinsics, rotation_error
from nerf_pipeline.errors import DataError
from nerf_pipeline.runtime import atomic

ROTATION_TOLERANCE = 1e-3
MIN_VIEWS = 3  # every source: at least 2 views to train on and 1 to validate on
IMAGES, DEPTH, CAMERAS, MASKS = "images.npy", "depth.npy", "cameras.npz", "masks.npy"
PARTS = ("train", "val", "test")


@dataclass(frozen=True)
class Cameras:
    """What is known of a scene's ``N`` cameras (arrays are numpy; see the module docstring)."""

    names: list  # [N] str, the views' file names (or frame names)
    intrinsics: np.ndarray  # [N, 4] float32 fx, fy, cx, cy in pixels of the scene's images
    distortion: np.ndarray  # [N, 4] float32 OpenCV k1, k2, p1, p2
    poses: Optional[np.ndarray] = None  # [N, 4, 4] float32 camera-to-world, OpenGL; None: unknown
    near: Optional[float] = None
    far: Optional[float] = None
    unbounded: bool = False
    normalize: bool = False  # re-centre, turn z-up and scale to radius 4 once posed (the poses stage)
    split: Optional[dict] = None  # {"train": [int], "val": [int], "test": [int]?}: the source's own split
    points: Optional[np.ndarray] = None  # [P, 3] float32 sparse points in the poses' frame
    point_colors: Optional[np.ndarray] = None  # [P, 3] uint8
    registered: Optional[np.ndarray] = None  # [N] bool: the views that have a pose (after SfM)
    sequence: bool = False  # the views are frames of one video, in time order

    @property
    def num_views(self) -> int:
        return len(self.names)

    def replace(self, **changes) -> "Cameras":
        return dataclasses.replace(self, **changes)

    def arrays(self) -> dict:
        """The ``cameras.npz`` arrays."""
        out = {"names": np.asarray(self.names, dtype=str), "intrinsics": self.intrinsics.astype(np.float32),
               "distortion": self.distortion.astype(np.float32), "unbounded": np.bool_(self.unbounded),
               "normalize": np.bool_(self.normalize), "sequence": np.bool_(self.sequence)}
        for key in ("poses", "points", "point_colors", "registered"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        for key in ("near", "far"):
            if getattr(self, key) is not None:
                out[key] = np.float32(getattr(self, key))
        for part, views in (self.split or {}).items():
            out[f"split_{part}"] = np.asarray(views, np.int32)
        return out

    @classmethod
    def from_arrays(cls, arrays: dict, source: str) -> "Cameras":
        split = {part: arrays[f"split_{part}"].tolist() for part in PARTS if f"split_{part}" in arrays} or None

        def scalar(key):
            return float(arrays[key]) if key in arrays else None

        return check_cameras(cls(
            names=[str(n) for n in arrays["names"]], intrinsics=arrays["intrinsics"], distortion=arrays["distortion"],
            poses=arrays.get("poses"), near=scalar("near"), far=scalar("far"),
            unbounded=bool(arrays.get("unbounded", False)), normalize=bool(arrays.get("normalize", False)),
            sequence=bool(arrays.get("sequence", False)),
            split=split, points=arrays.get("points"), point_colors=arrays.get("point_colors"),
            registered=arrays.get("registered")), source)


def evenly_spread(count: int, keep) -> np.ndarray:
    """Indices of ``keep`` of ``count`` items, evenly spread (all of them if ``keep`` is None or larger)."""
    if keep is None or keep >= count:
        return np.arange(count)
    return np.unique(np.linspace(0, count - 1, keep).round().astype(int))


def read_npz(path, required=()) -> dict:
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


def read_json(path, what: str = "a JSON file"):
    """The value of a JSON file; a missing, unreadable or malformed file raises ``DataError`` naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except OSError as e:
        raise DataError(f"{path}: cannot read {what} ({e.strerror}).") from None
    except ValueError as e:
        raise DataError(f"{path}: not valid JSON ({e}).") from None


def read_npy(path, mmap: bool = True) -> np.ndarray:
    """An ``.npy`` array, memory-mapped read-only by default, with a clear error for a missing or corrupt file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found (expected an .npy array).")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"{path}: not a readable .npy array ({e}); it may be truncated. Run its stage again.") from None


def scalar(value, name: str, source: str) -> float:
    value = np.asarray(value)
    if value.size != 1 or not np.issubdtype(value.dtype, np.number):
        raise DataError(f"{source}: '{name}' must be a single number; got shape {value.shape}, dtype {value.dtype}.")
    return float(value.reshape(()))


def check_poses(poses, num_views: int, source: str) -> np.ndarray:
    """``[N, 4, 4]`` float32 rigid camera-to-world matrices (``[N, 3, 4]`` completed); raises ``DataError``."""
    poses = np.asarray(poses)
    if poses.ndim != 3 or poses.shape[1:] not in ((4, 4), (3, 4)):
        raise DataError(f"{source}: 'poses' must have shape (N, 4, 4) (camera-to-world); got {poses.shape}.")
    if not np.issubdtype(poses.dtype, np.floating):
        raise DataError(f"{source}: 'poses' must be floats; got dtype {poses.dtype}.")
    if poses.shape[0] != num_views:
        raise DataError(f"{source}: {num_views} images but {poses.shape[0]} poses; there must be one pose per image.")
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
    return poses.astype(np.float32)


def check_intrinsics(intrinsics, num_views: int, height: int, width: int, source: str, views=None) -> np.ndarray:
    """``[N, 4]`` float32 from a focal length (a scalar: a source's ``focal``, centred), one shared ``(fx, fy, cx,
    cy)`` or one per view.

    Every reader's cameras pass here (and ``check_cameras``): a focal length of 0 gives rays of NaN, which pass every
    later data stage and only make training fail. Raises ``DataError`` naming ``source`` and the first bad view,
    as ``views[i]`` says it (e.g. "frame 3 ('./train/r_3')"; else "view i"), unless every focal length is a positive,
    finite number of pixels and every principal point finite.
    """
    intrinsics = np.asarray(intrinsics)
    if not np.issubdtype(intrinsics.dtype, np.number):
        raise DataError(f"{source}: intrinsics must be numbers; got dtype {intrinsics.dtype}.")
    focal_only = intrinsics.ndim == 0
    intrinsics = as_intrinsics(intrinsics, height, width)  # a focal length: centred
    if intrinsics.shape == (4,):
        intrinsics = np.broadcast_to(intrinsics, (num_views, 4))
    if intrinsics.shape != (num_views, 4):
        raise DataError(f"{source}: intrinsics must be (fx, fy, cx, cy) per view, shape ({num_views}, 4); "
                        f"got {intrinsics.shape}.")
    bad = np.flatnonzero(~np.isfinite(intrinsics).all(axis=1) | ~(intrinsics[:, :2] > 0).all(axis=1))
    if len(bad) and focal_only:
        raise DataError(f"{source}: 'focal' is {intrinsics[0, 0]:g}; it must be a positive, finite number of pixels.")
    if len(bad):
        i = int(bad[0])
        fx, fy, cx, cy = intrinsics[i]
        more = f" ({len(bad) - 1} more view{'s' if len(bad) > 2 else ''} like it)" if len(bad) > 1 else ""
        raise DataError(f"{source}: {views[i] if views is not None else f'view {i}'} has focal length fx = {fx:g}, "
                        f"fy = {fy:g} and principal point cx = {cx:g}, cy = {cy:g}; a focal length must be a "
                        f"positive, finite number of pixels and a principal point finite{more}.")
    return intrinsics.astype(np.float32)


def check_cameras(cameras: Cameras, source: str) -> Cameras:
    """The checks of ``Cameras`` that need no image; returns it with arrays in their dtypes."""
    n = cameras.num_views
    if cameras.intrinsics.shape != (n, 4) or cameras.distortion.shape != (n, 4):
        raise DataError(f"{source}: {n} views need intrinsics and distortion of shape ({n}, 4); got "
                        f"{cameras.intrinsics.shape} and {cameras.distortion.shape}.")
    poses = None if cameras.poses is None else check_poses(cameras.poses, n, source)
    # the readers check each view's intrinsics as they read them; this also stops a scene written before they did
    check_intrinsics(cameras.intrinsics, n, 0, 0, source, views=[f"view {i} ({name!r})"
                                                                  for i, name in enumerate(cameras.names)])
    near, far = cameras.near, cameras.far
    if near is not None and far is not None and not (0 <= near < far and np.isfinite(far)):
        raise DataError(f"{source}: need 0 <= near < far; got near={near}, far={far}.")
    if cameras.split is not None:
        views = [v for part in cameras.split.values() for v in part]
        if not cameras.split.get("train") or min(views) < 0 or max(views) >= n:
            raise DataError(f"{source}: its own split must name views 0..{n - 1}, at least one to train on.")
    if cameras.registered is not None and cameras.registered.shape != (n,):
        raise DataError(f"{source}: 'registered' must have one flag per view ({n}); got {cameras.registered.shape}.")
    return cameras.replace(intrinsics=cameras.intrinsics.astype(np.float32),
                           distortion=cameras.distortion.astype(np.float32), poses=poses)


class ImageStack:
    """Something that holds views as ``images [N, H, W, 3]``: their count and size."""

    images: np.ndarray

    @property
    def num_views(self) -> int:
        return self.images.shape[0]

    @property
    def height(self) -> int:
        return self.images.shape[1]

    @property
    def width(self) -> int:
        return self.images.shape[2]


def open_npy(path, dtype, shape):
    """A file open for writing an ``.npy`` array of ``shape`` sequentially: its header is written; the
    caller writes the rows' bytes in order. (Not a memory map: written pages would stay resident.)"""
    f = open(path, "wb")
    np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                             "fortran_order": False, "shape": tuple(shape)})
    return f


class Scene(ImageStack):
    """An opened scene folder: ``images``, ``depth`` and ``masks`` are read-only memory maps (``depth`` and
    ``masks`` None when the scene has none), ``cameras`` a ``Cameras``."""

    def __init__(self, folder, images: np.ndarray, depth: Optional[np.ndarray], cameras: Cameras,
                 masks: Optional[np.ndarray] = None):
        self.folder, self.images, self.depth, self.cameras = Path(folder), images, depth, cameras
        self.masks = masks

    @classmethod
    def open(cls, folder) -> "Scene":
        folder = Path(folder)
        images = read_npy(folder / IMAGES)
        source = str(folder / IMAGES)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise DataError(f"{source}: must hold uint8 images of shape (N, H, W, 3); got {images.dtype} "
                            f"{images.shape}. Run the download stage again.")
        depth = read_npy(folder / DEPTH) if (folder / DEPTH).exists() else None
        if depth is not None and depth.shape != images.shape[:3]:
            raise DataError(f"{folder / DEPTH}: must have shape {images.shape[:3]}; got {depth.shape}.")
        masks = read_npy(folder / MASKS) if (folder / MASKS).exists() else None
        if masks is not None and (masks.shape != images.shape[:3] or masks.dtype != np.uint8):
            raise DataError(f"{folder / MASKS}: must be uint8 of shape {images.shape[:3]}; got {masks.dtype} "
                            f"{masks.shape}. Run the download stage again.")
        cameras = Cameras.from_arrays(read_npz(folder / CAMERAS, ("names", "intrinsics", "distortion")),
                                      str(folder / CAMERAS))
        if cameras.num_views != images.shape[0]:
            raise DataError(f"{folder}: {images.shape[0]} images but {cameras.num_views} cameras.")
        return cls(folder, images, depth, cameras, masks)


def to_uint8_image(image, source: str) -> np.ndarray:
    """One image ``[H, W, 3]`` as uint8: uint8 kept, floats in [0, 1] rounded; anything else refused."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise DataError(f"{source}: 'images' must have shape (N, H, W, 3); "
                        f"got (N, {', '.join(map(str, image.shape))}).")
    if image.dtype == np.uint8:
        return image
    if not np.issubdtype(image.dtype, np.floating):
        raise DataError(f"{source}: 'images' must be uint8 or float; got dtype {image.dtype}.")
    if not np.all(np.isfinite(image)):
        raise DataError(f"{source}: 'images' contains NaN or Inf values.")
    low, high = float(image.min()), float(image.max())
    if low < 0.0 or high > 1.0:
        raise DataError(f"{source}: float 'images' must lie in [0, 1]; found values in [{low:.4g}, {high:.4g}] "
                        "(uint8 images are used as they are; scale floats yourself).")
    return (image * 255.0 + 0.5).astype(np.uint8)


class SceneWriter:
    """Write a scene folder atomically, one view at a time::

        with SceneWriter(folder, num_views, height, width, source, with_depth=False) as writer:
            for image in images:
                writer.add(image)          # [H, W, 3] uint8 or float in [0, 1]
            writer.finish(cameras)

    Nothing appears at ``folder`` unless ``finish`` ran and the block ended without an error.
    """

    def __init__(self, folder, num_views: int, height: int, width: int, source: str, with_depth: bool = False,
                 with_masks: bool = False):
        self.folder, self.source = Path(folder), source
        self.shape = (num_views, height, width)
        self.with_depth, self.with_masks = with_depth, with_masks
        self._count, self._finished = 0, False

    def __enter__(self) -> "SceneWriter":
        self._context = atomic.atomic_dir(self.folder)
        self._tmp = self._context.__enter__()
        self._files = {IMAGES: open_npy(self._tmp / IMAGES, np.uint8, (*self.shape, 3))}
        if self.with_depth:
            self._files[DEPTH] = open_npy(self._tmp / DEPTH, np.float32, self.shape)
        if self.with_masks:
            self._files[MASKS] = open_npy(self._tmp / MASKS, np.uint8, self.shape)
        return self

    def add(self, image, depth=None, mask=None) -> None:
        """One view: ``image`` [H, W, 3], and its ``depth`` [H, W] / ``mask`` [H, W] uint8 if the writer has them."""
        image = to_uint8_image(image, self.source)
        if image.shape[:2] != self.shape[1:]:
            raise DataError(f"{self.source}: view {self._count} is {image.shape[1]}x{image.shape[0]} but the first "
                            f"is {self.shape[2]}x{self.shape[1]}; all views must share one size.")
        self._files[IMAGES].write(np.ascontiguousarray(image).tobytes())
        if self.with_depth:
            self._files[DEPTH].write(np.ascontiguousarray(depth, dtype=np.float32).tobytes())
        if self.with_masks:
            self._files[MASKS].write(np.ascontiguousarray(mask, dtype=np.uint8).tobytes())
        self._count += 1

    def finish(self, cameras: Cameras) -> None:
        if self._count != self.shape[0]:
            raise ValueError(f"SceneWriter: {self._count} views added of {self.shape[0]}")
        atomic.save_npz(self._tmp / CAMERAS, **check_cameras(cameras, self.source).arrays())
        self._finished = True

    def __exit__(self, kind, error, traceback):
        for f in self._files.values():
            f.close()
        if kind is None and not self._finished:
            error = ValueError("SceneWriter: finish() was not called")
            self._context.__exit__(ValueError, error, None)
            raise error
        return self._context.__exit__(kind, error, traceback)


@dataclass(frozen=True)
class Views:
    """A source's views before they are written: how to read each one, and what is known of their cameras.

    ``read(i)`` gives view ``i`` as ``[height, width, 3]`` uint8 or float in [0, 1] (and
    ``depth(i)``, if there is depth, ``[height, width]`` float32; ``mask(i)``, if there are masks,
    ``[height, width]`` uint8, 1 kept, ``masks.py``); readers read one view at a time, so a source of
    any size streams into its scene folder.
    """

    count: int
    height: int
    width: int
    read: Callable[[int], np.ndarray]
    cameras: Cameras
    source: str
    depth: Optional[Callable[[int], np.ndarray]] = None
    mask: Optional[Callable[[int], np.ndarray]] = None


def write_views(views: Views, folder, progress=None) -> None:
    """Write ``views`` as the scene folder ``folder`` (atomically); ``progress(done, total)`` after each view."""
    with SceneWriter(folder, views.count, views.height, views.width, views.source,
                     with_depth=views.depth is not None, with_masks=views.mask is not None) as writer:
        for i in range(views.count):
            writer.add(views.read(i), None if views.depth is None else views.depth(i),
                       None if views.mask is None else views.mask(i))
            if progress is not None:
                progress(i + 1, views.count)
        writer.finish(views.cameras)

"""The rays folder that stage ``rays`` writes and ``train``, ``evaluate`` and ``render`` read.

A ray is a camera and a pixel: its origin is the camera's centre and its direction follows from
the camera's pose and intrinsics. So the folder stores, per part (``train``, ``val`` and, when
the scene has one, ``test``), each view's colours and its camera once, and rays are made from
them where they are used (``view_rays`` here; ``training/datasets.py`` in TensorFlow):

==========================  =======================  ==============================================
file                        shape, dtype             meaning
==========================  =======================  ==============================================
``<part>/images.npy``       [V, H, W, 3] uint8       colours, undistorted and downscaled (memory-mapped)
``<part>/depth.npy``        [V, H, W] float32        optional ground-truth depth (0: no surface)
``<part>/masks.npy``        [V, H, W] uint8          optional masks (``masks.py``): 1 kept, 0 never trained
                                                     on nor scored
``<part>/cameras.npz``      poses [V, 4, 4] float32  camera-to-world, OpenGL convention
                            intrinsics [V, 4] f32    pinhole fx, fy, cx, cy in pixels of these images
                            view_ids [V] int32       the views' indices in the scene
                            near, far [] float32     sampling bounds
                            unbounded [] bool        the scene's background reaches far (contraction)
``points.npz``              points [P, 3] float32    optional: a capture's sparse points (structure from
                            point_colors [P, 3] u8   motion, COLMAP) in the poses' frame, for any method
                                                     to start from (``sparse_points``)
==========================  =======================  ==============================================

That is 3 bytes per pixel (7 with depth): 384 MB for the 200 train and val views of an 800×800
NeRF-synthetic scene, where float32 origins, directions and colours would take 36 bytes (4.6 GB).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from nerf_pipeline import camera
from nerf_pipeline.errors import DataError
from nerf_pipeline.scenes.scene import ImageStack, open_npy, read_npy, read_npz

log = logging.getLogger(__name__)

PARTS = ("train", "val", "test")
IMAGES, DEPTH, CAMERAS, MASKS = "images.npy", "depth.npy", "cameras.npz", "masks.npy"
POINTS = "points.npz"  # beside the parts: the scene's, not a part's


class RayPart(ImageStack):
    """One part of a rays folder; ``images``, ``depth`` and ``masks`` are read-only memory maps (``depth``
    and ``masks`` None where the scene has none)."""

    def __init__(self, folder, part: str):
        self.folder, self.part = Path(folder) / part, part
        self.images = read_npy(self.folder / IMAGES)
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise DataError(f"{self.folder / IMAGES}: expected uint8 [V, H, W, 3]; got {self.images.dtype} "
                            f"{self.images.shape}. Run the rays stage again.")
        self.depth = read_npy(self.folder / DEPTH) if (self.folder / DEPTH).exists() else None
        self.masks = read_npy(self.folder / MASKS) if (self.folder / MASKS).exists() else None
        if self.masks is not None and (self.masks.shape != self.images.shape[:3] or self.masks.dtype != np.uint8):
            raise DataError(f"{self.folder / MASKS}: expected uint8 {self.images.shape[:3]}; got {self.masks.dtype} "
                            f"{self.masks.shape}. Run the rays stage again.")
        cameras = read_npz(self.folder / CAMERAS, ("poses", "intrinsics", "view_ids", "near", "far"))
        self.poses = cameras["poses"].astype(np.float32)
        self.intrinsics = cameras["intrinsics"].astype(np.float32)
        self.view_ids = cameras["view_ids"].astype(np.int32)
        self.near, self.far = float(cameras["near"]), float(cameras["far"])
        self.unbounded = bool(cameras.get("unbounded", False))
        if not len(self.poses) == len(self.intrinsics) == len(self.view_ids) == len(self.images):
            raise DataError(f"{self.folder}: its images and cameras disagree on the number of views; run the rays "
                            "stage again.")

    def view_rays(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """``(ray_origins, ray_directions)`` of view ``index``, each ``[H, W, 3]`` float32, unit directions."""
        return camera.generate_rays(self.poses[index], self.height, self.width, self.intrinsics[index])

    def view_rgb(self, index: int) -> np.ndarray:
        """Colours of view ``index``, ``[H, W, 3]`` float32 in [0, 1]."""
        return np.asarray(self.images[index], dtype=np.float32) / 255.0

    def view_mask(self, index: int) -> np.ndarray | None:
        """The kept pixels of view ``index``, ``[H, W]`` bool; None if the part has no masks."""
        return None if self.masks is None else np.asarray(self.masks[index]) != 0


def parts(folder) -> list[str]:
    """The parts a rays folder holds (train and val always; test when the scene has one)."""
    return [part for part in PARTS if (Path(folder) / part / CAMERAS).is_file()]


def load(folder, part: str) -> RayPart:
    if not (Path(folder) / part).is_dir():
        raise DataError(f"{folder}: has no '{part}' part (it holds {', '.join(parts(folder)) or 'none'}); "
                        "run the rays stage again.")
    return RayPart(folder, part)


def write_sparse_points(folder, points, colors=None) -> None:
    """``POINTS`` in the rays folder ``folder``: a capture's sparse points ``points [P, 3]`` (stored float32) and
    their ``colors [P, 3]`` uint8 (grey where None)."""
    points = np.asarray(points, np.float32).reshape(-1, 3)
    colors = np.full((len(points), 3), 128, np.uint8) if colors is None else np.asarray(colors, np.uint8)
    np.savez(Path(folder) / POINTS, points=points, point_colors=colors)


def sparse_points(folder) -> tuple[np.ndarray, np.ndarray] | None:
    """The scene's sparse points ``(points [P, 3] float32, colours [P, 3] float32 in [0, 1])`` in the poses' frame,
    from ``POINTS`` in the rays folder ``folder``, or None when the scene has none (or fewer than 4 finite ones)."""
    path = Path(folder) / POINTS
    if not path.is_file():
        return None
    with np.load(path) as data:
        points = np.asarray(data["points"], np.float32).reshape(-1, 3)
        colors = (np.asarray(data["point_colors"], np.float32).reshape(-1, 3) / 255.0 if "point_colors" in data.files
                  else np.full_like(points, 0.5))
    finite = np.isfinite(points).all(axis=1)
    points, colors = points[finite], colors[finite]
    return (points, colors) if len(points) >= 4 else None


def evaluation_part(folder, split: str) -> RayPart:
    """The part ``split`` names (``evaluate.split``: test or val), or val when the scene has no test part (said in
    the log)."""
    if split == "test" and "test" not in parts(folder):
        log.info("the scene has no test split: evaluating on val")
        return load(folder, "val")
    return load(folder, split)


class PartWriter:
    """Write one part into ``folder/<part>`` view by view (``add``), then its cameras (``finish``)."""

    def __init__(self, folder, part: str, num_views: int, height: int, width: int, with_depth: bool,
                 with_masks: bool = False):
        self.folder = Path(folder) / part
        self.folder.mkdir(parents=True)
        self.shape = (num_views, height, width)
        self._files = {IMAGES: open_npy(self.folder / IMAGES, np.uint8, (*self.shape, 3))}
        if with_depth:
            self._files[DEPTH] = open_npy(self.folder / DEPTH, np.float32, self.shape)
        if with_masks:
            self._files[MASKS] = open_npy(self.folder / MASKS, np.uint8, self.shape)

    def add(self, image: np.ndarray, depth: np.ndarray | None = None, mask: np.ndarray | None = None) -> None:
        self._files[IMAGES].write(np.ascontiguousarray(image, dtype=np.uint8).tobytes())
        if DEPTH in self._files:
            self._files[DEPTH].write(np.ascontiguousarray(depth, dtype=np.float32).tobytes())
        if MASKS in self._files:
            self._files[MASKS].write(np.ascontiguousarray(mask, dtype=np.uint8).tobytes())

    def finish(self, poses, intrinsics, view_ids, near: float, far: float, unbounded: bool) -> None:
        for f in self._files.values():
            f.close()
        np.savez(self.folder / CAMERAS, poses=np.asarray(poses, np.float32),
                 intrinsics=np.asarray(intrinsics, np.float32),
                 view_ids=np.asarray(view_ids, np.int32), near=np.float32(near), far=np.float32(far),
                 unbounded=np.bool_(unbounded))

"""Scenes in the two JSON layouts of NeRF users, read into ``sources.Views`` (nothing is written here).

* **NeRF-synthetic (Blender) split files**: ``transforms_train.json`` and, when present,
  ``transforms_val.json`` and ``transforms_test.json``, each with ``frames`` of ``file_path``
  (no extension: ``.png``) and ``transform_matrix``. Intrinsics are ``camera_angle_x`` (and
  ``camera_angle_y``), or instant-ngp intrinsics at the top level or per frame (``fl_x fl_y cx cy
  w h`` and OpenCV ``k1 k2 p1 p2``), as tools that write Blender-style splits of real captures do.
  The files' own split is kept; without ``transforms_val.json`` the split stage cuts a val part out
  of the train frames.
* **instant-ngp / nerfstudio**: one ``transforms.json`` with the same intrinsics keys (global, or
  per frame where a frame overrides them), ``aabb_scale``, and frames of ``file_path`` (with
  extension; PNG or JPG, any subfolder) and ``transform_matrix``.

A frame's ``mask_path`` (nerfstudio's) names its mask (``masks.py``). ``file_path`` and ``mask_path`` must
stay inside the file's folder unless ``data.allow_paths_outside`` (``capture_file``). Both use OpenGL
camera-to-world matrices, as ``camera.py`` does. Alpha is composited on
``data.background``; ``data.max_views`` keeps that many train/val views, evenly spread. Distortion
is recorded, not applied (the rays stage undistorts); poses are re-centred and scaled by the poses
stage. A scene whose ``aabb_scale`` is above 1 reaches beyond the cameras' focus: it is unbounded.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np

from nerf_pipeline.errors import DataError
from nerf_pipeline.scenes import masks
from nerf_pipeline.scenes.images import read_image
from nerf_pipeline.scenes.scene import Cameras, Views, check_intrinsics, evenly_spread, read_json

log = logging.getLogger(__name__)

DISTORTION_KEYS = ("k1", "k2", "p1", "p2")
UNSUPPORTED_DISTORTION_KEYS = ("k3", "k4")
INTRINSIC_KEYS = ("fl_x", "fl_y", "cx", "cy", "w", "h", "camera_angle_x", "camera_angle_y", *DISTORTION_KEYS,
                  *UNSUPPORTED_DISTORTION_KEYS)


def find_layout(source: str):
    """``("blender" | "ngp", path)`` for a transforms folder or file, else ``None``."""
    path = Path(source)
    if path.is_dir():
        if (path / "transforms_train.json").is_file():
            return "blender", path
        if (path / "transforms.json").is_file():
            return "ngp", path / "transforms.json"
        return None
    if path.suffix == ".json":
        if not path.is_file():
            raise DataError(f"{path}: file not found (expected a transforms .json).")
        if path.name.startswith("transforms_"):
            return "blender", path.parent
        return "ngp", path
    return None


def _matrix(frame: dict, source: str, index: int) -> np.ndarray:
    try:
        matrix = np.asarray(frame["transform_matrix"], dtype=np.float64)
    except KeyError:
        raise DataError(f"{source}: frame {index} has no 'transform_matrix'.") from None
    except (TypeError, ValueError):
        raise DataError(f"{source}: frame {index}'s 'transform_matrix' is not a matrix of numbers.") from None
    if matrix.shape == (3, 4):
        matrix = np.vstack([matrix, [0.0, 0.0, 0.0, 1.0]])
    if matrix.shape != (4, 4):
        raise DataError(f"{source}: frame {index}'s 'transform_matrix' must be 4x4; got shape {matrix.shape}.")
    if not np.all(np.isfinite(matrix)):
        rows = np.flatnonzero(~np.isfinite(matrix).all(axis=1)).tolist()
        raise DataError(f"{source}: frame {index} ({frame.get('file_path')!r}): 'transform_matrix' rows {rows} hold "
                        "NaN or infinite values; expected finite numbers.")
    return matrix


def _load_json(path: Path) -> dict:
    data = read_json(path, "it")
    if not isinstance(data, dict) or not isinstance(data.get("frames"), list) or not data["frames"]:
        raise DataError(f"{path}: expected an object with a non-empty list 'frames'.")
    return data


def _file_path(frame: dict, source: str, index: int) -> str:
    if not isinstance(frame.get("file_path"), str):
        raise DataError(f"{source}: frame {index} has no 'file_path'.")
    return frame["file_path"]


def capture_file(folder: Path, name: str, what: str, allow_outside: bool, under: str = "") -> Path:
    """``folder / under / name``: a file that a capture's metadata names (``what``: where, e.g. the file and frame).

    Refused when ``name`` is absolute or climbs out of ``folder`` with ``..``, unless ``allow_outside``
    (``data.allow_paths_outside``): the download stage copies what it names into the scene, and ``dvc push``
    sends that away. The check is on the name as written, not on where symlinks lead: a symlink inside the
    capture was put there by its owner (a DVC cache of symlinks makes every file one)."""
    relative = os.path.normpath(os.path.join(under, name))
    if not allow_outside and (os.path.isabs(relative) or relative.split(os.sep)[0] == os.pardir):
        raise DataError(f"{what} is '{name}', outside the capture's folder {folder}: the images and masks of a "
                        "capture must be in its folder. Move them there, or set 'data.allow_paths_outside: true' "
                        "in params.yaml to read files outside it.")
    return Path(folder) / under / name


def _frame_image(folder: Path, frame: dict, source: str, index: int, default_suffix: str,
                 allow_outside: bool) -> Path:
    relative = _file_path(frame, source, index)
    path = capture_file(folder, relative, f"{source}: frame {index}'s 'file_path'", allow_outside)
    return path.with_suffix(default_suffix) if not Path(relative).suffix else path


def frame_intrinsics(meta: dict, frame: dict, image_shape, source: str, index: int) -> tuple[list, list]:
    """``([fx, fy, cx, cy], [k1, k2, p1, p2])`` of one frame at its image's full resolution."""
    values = {key: frame.get(key, meta.get(key)) for key in INTRINSIC_KEYS}
    for key in UNSUPPORTED_DISTORTION_KEYS:
        if values[key]:
            raise DataError(f"{source}: frame {index} has '{key}' = {values[key]}: fisheye or higher-order "
                            "distortion is not supported. Undistort the images (e.g. COLMAP's image_undistorter) "
                            "and drop the distortion keys.")
    for key in ("fl_x", "fl_y", "cx", "cy", "w", "h"):
        if values[key] is not None and (isinstance(values[key], bool) or not isinstance(values[key], (int, float))):
            raise DataError(f"{source}: frame {index} has '{key}' = {values[key]!r}; expected a number of pixels.")
    height, width = image_shape[:2]
    w, h = values["w"] or width, values["h"] or height
    if (int(w), int(h)) != (width, height):
        raise DataError(f"{source}: frame {index}'s image is {width}x{height} but its intrinsics say w={w}, h={h}.")
    for key in ("camera_angle_x", "camera_angle_y"):
        if values[key] is not None and (not isinstance(values[key], (int, float)) or not 0 < values[key] < math.pi):
            raise DataError(f"{source}: '{key}' must be a field of view in radians, between 0 and pi.")
    fx, fy = values["fl_x"], values["fl_y"]
    if fx is None and values["camera_angle_x"]:
        fx = 0.5 * width / math.tan(0.5 * values["camera_angle_x"])
    if fy is None and values["camera_angle_y"]:
        fy = 0.5 * height / math.tan(0.5 * values["camera_angle_y"])
    if fx is None and fy is None:
        raise DataError(f"{source}: frame {index} has no focal length: give 'fl_x' (and 'fl_y') or 'camera_angle_x'.")
    fx, fy = fx if fx is not None else fy, fy if fy is not None else fx
    cx = values["cx"] if values["cx"] is not None else 0.5 * width
    cy = values["cy"] if values["cy"] is not None else 0.5 * height
    # fl_x: 0 (or NaN, or negative) passed every data stage as rays of NaN, and only train failed (a crash)
    check_intrinsics([fx, fy, cx, cy], 1, height, width, source, views=[f"frame {index} ({frame.get('file_path')!r})"])
    return [float(fx), float(fy), float(cx), float(cy)], [float(values[k] or 0.0) for k in DISTORTION_KEYS]


def _views(frames: list, metas: list, folder: Path, sources: list, indices: list, background: float, suffix: str,
           split, unbounded: bool, near, far, allow_outside: bool):
    """``sources.Views`` of the given frames (``frames[i]`` from ``metas[i]``, described in ``sources[i]``, where
    it is frame ``indices[i]``: errors name it so)."""
    paths = [_frame_image(folder, frame, source, index, suffix, allow_outside)
             for frame, source, index in zip(frames, sources, indices)]
    for frame, source, index in zip(frames, sources, indices):  # masks.frame_masks reads them
        if isinstance(frame.get("mask_path"), str):
            capture_file(folder, frame["mask_path"], f"{source}: frame {index}'s 'mask_path'", allow_outside)
    first = read_image(paths[0], background, sources[0])
    intrinsics, distortion = zip(*(frame_intrinsics(meta, frame, first.shape, source, index)
                                   for meta, frame, source, index in zip(metas, frames, sources, indices)))
    poses = np.stack([_matrix(frame, source, index) for frame, source, index in zip(frames, sources, indices)])
    cameras = Cameras(names=[p.name for p in paths], intrinsics=np.asarray(intrinsics),
                      distortion=np.asarray(distortion), poses=poses, near=near, far=far, unbounded=unbounded,
                      normalize=True, split=split)

    def read(i: int) -> np.ndarray:
        image = first if i == 0 else read_image(paths[i], background, sources[i])
        if image.shape != first.shape:
            raise DataError(f"{sources[i]}: image {paths[i]} is {image.shape[1]}x{image.shape[0]} but {paths[0]} is "
                            f"{first.shape[1]}x{first.shape[0]}; all views must share one size (one camera).")
        return image

    mask = masks.frame_masks(folder, frames, sources, paths, first.shape[0], first.shape[1])
    return Views(count=len(paths), height=first.shape[0], width=first.shape[1], read=read, cameras=cameras,
                 source=str(folder), mask=mask)


def read_blender(folder: Path, background: float, max_views, *, allow_outside: bool = False) -> Views:
    """Split files: train (required), val and test (when present), each part's frames kept in its part."""
    parts = {}
    for part in ("train", "val", "test"):
        path = folder / f"transforms_{part}.json"
        if path.is_file():
            parts[part] = _load_json(path)
        elif part == "train":
            raise DataError(f"{folder}: missing transforms_train.json.")
    trained = sum(len(parts[p]["frames"]) for p in ("train", "val") if p in parts)
    frames, metas, sources, indices, split = [], [], [], [], {}
    for part, meta in parts.items():
        keep = None if max_views is None or part == "test" else max(1, round(max_views * len(meta["frames"]) / trained))
        split[part] = []
        for index in evenly_spread(len(meta["frames"]), keep):
            split[part].append(len(frames))
            frames.append(meta["frames"][index])
            indices.append(int(index))
            metas.append(meta)
            sources.append(str(folder / f"transforms_{part}.json"))
    unbounded = any((meta.get("aabb_scale") or 1) > 1 for meta in parts.values())
    log.info("split files in %s: %s%s", folder, ", ".join(f"{len(v)} {p}" for p, v in split.items()),
             "" if "val" in parts else " (no transforms_val.json: the split stage takes val views from train)")
    return _views(frames, metas, folder, sources, indices, background, ".png", split, unbounded, None, None,
                  allow_outside)


def read_transforms(path: Path, background: float, max_views, *, allow_outside: bool = False) -> Views:
    """An instant-ngp / nerfstudio capture (one ``transforms.json``)."""
    meta = _load_json(path)
    unbounded = (meta.get("aabb_scale") or 1) > 1
    if unbounded:
        log.info("%s: aabb_scale is %s: the scene reaches beyond the cameras' focus, so it is marked unbounded "
                 "(scene.contraction: auto contracts it)", path, meta["aabb_scale"])
    indices = evenly_spread(len(meta["frames"]), max_views).tolist()
    frames = [meta["frames"][i] for i in indices]
    log.info("instant-ngp/nerfstudio capture %s: %d views", path, len(frames))
    return _views(frames, [meta] * len(frames), path.parent, [str(path)] * len(frames), indices, background, "",
                  None, unbounded, None, None, allow_outside)

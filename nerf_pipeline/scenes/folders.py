"""Scenes in the two folder layouts the field uses, read into a ``scene.Scene``.

* **NeRF-synthetic (Blender)**: ``transforms_train.json``, ``transforms_val.json`` (and
  ``transforms_test.json``, not used), each with ``camera_angle_x`` and ``frames`` of
  ``file_path`` (no extension: ``.png``, RGBA) and ``transform_matrix``. The files' own
  train/val split is kept (``Scene.split``).
* **instant-ngp / nerfstudio**: one ``transforms.json`` with intrinsics ``fl_x, fl_y, cx, cy,
  w, h`` (global, or per frame where a frame overrides them), ``camera_angle_x/y`` where focal
  lengths are absent, optional OpenCV distortion ``k1 k2 p1 p2`` (the images are undistorted),
  ``aabb_scale``, and frames of ``file_path`` (with extension; PNG or JPG, any subfolder) and
  ``transform_matrix``.

Both use OpenGL camera-to-world matrices, as ``camera.py`` does. Alpha is composited on
``data.background``; images are area-averaged by ``data.downscale`` (intrinsics scaled to
match); ``data.max_views`` keeps that many views, evenly spread. Poses are then re-centred on
the point the cameras look at, turned so that their mean up vector is +z, and scaled so
that their median distance to the centre is 4 (the tiny_nerf convention, which the default
``scene_bound`` of 1.5 and the orbit video expect); near and far, unless given, are half the
closest and 1.5 times the farthest camera distance (2 and 6 for tiny_nerf-like rigs).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np

from nerf_pipeline.runtime.errors import DataError
from nerf_pipeline.scenes.scene import Scene, validate

log = logging.getLogger(__name__)

TARGET_RADIUS = 4.0
UNBOUNDED_FAR = 1000.0  # an unbounded scene's far bound: 250 camera distances, sampled in inverse depth
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
        raise DataError(f"{path}: a folder given as data.source must hold transforms_train.json (NeRF-synthetic) "
                        "or transforms.json (instant-ngp / nerfstudio); it holds neither.")
    if path.suffix == ".json":
        if not path.is_file():
            raise DataError(f"{path}: file not found (expected a transforms .json).")
        if path.name.startswith("transforms_"):
            return "blender", path.parent
        return "ngp", path
    return None


# ----------------------------------------------------------------------------- images


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
        return image
    h, w = image.shape[0] // factor * factor, image.shape[1] // factor * factor
    blocks = image[:h, :w].reshape(h // factor, factor, w // factor, factor, image.shape[-1])
    return blocks.mean(axis=(1, 3), dtype=np.float64).astype(np.float32)


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


# ----------------------------------------------------------------------------- poses


def _rotation_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The rotation [3, 3] that turns unit vector ``a`` onto unit vector ``b`` (Rodrigues)."""
    v, c = np.cross(a, b), float(np.dot(a, b))
    if c < -1.0 + 1e-9:  # opposite: half a turn about any axis perpendicular to a
        axis = np.cross(a, [1.0, 0.0, 0.0] if abs(a[0]) < 0.9 else [0.0, 1.0, 0.0])
        axis /= np.linalg.norm(axis)
        return 2.0 * np.outer(axis, axis) - np.eye(3)
    skew = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + skew + skew @ skew / (1.0 + c)


def look_at_point(poses: np.ndarray) -> np.ndarray:
    """The point closest (least squares) to every camera's optical axis; the cameras' mean
    position if the axes are near parallel (a forward-facing capture)."""
    centres, forward = poses[:, :3, 3], -poses[:, :3, 2]
    projectors = np.eye(3)[None] - forward[:, :, None] * forward[:, None, :]  # onto each axis' normal plane
    a, b = projectors.sum(0), np.einsum("nij,nj->i", projectors, centres)
    if np.linalg.cond(a) > 1e4:
        return centres.mean(0)
    return np.linalg.solve(a, b)


def normalize_poses(poses: np.ndarray) -> tuple[np.ndarray, dict]:
    """Re-centre, turn (mean camera up to +z) and scale (median camera distance 4) camera-to-world poses.

    Returns the new poses [N, 4, 4] float64 and ``{"center", "rotation", "scale"}`` of the map
    ``x -> scale * rotation @ (x - center)``.
    """
    poses = np.asarray(poses, dtype=np.float64)
    center = look_at_point(poses)
    up = poses[:, :3, 1].mean(0)
    up /= max(np.linalg.norm(up), 1e-12)
    rotation = _rotation_between(up, np.array([0.0, 0.0, 1.0]))
    positions = (poses[:, :3, 3] - center) @ rotation.T
    scale = TARGET_RADIUS / max(float(np.median(np.linalg.norm(positions, axis=-1))), 1e-12)
    out = np.tile(np.eye(4), (len(poses), 1, 1))
    out[:, :3, :3] = rotation @ poses[:, :3, :3]
    out[:, :3, 3] = positions * scale
    return out, {"center": center.tolist(), "rotation": rotation.tolist(), "scale": scale}


def bounds_from_cameras(poses: np.ndarray) -> tuple[float, float]:
    """``(near, far)``: half the closest and 1.5 times the farthest camera distance to the origin."""
    distances = np.linalg.norm(poses[:, :3, 3], axis=-1)
    return 0.5 * float(distances.min()), 1.5 * float(distances.max())


def evenly_spread(count: int, keep) -> np.ndarray:
    """Indices of ``keep`` of ``count`` items, evenly spread (all of them if ``keep`` is None or larger)."""
    if keep is None or keep >= count:
        return np.arange(count)
    return np.unique(np.linspace(0, count - 1, keep).round().astype(int))


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
    return matrix


def _load_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise DataError(f"{path}: cannot read it ({e.strerror}).") from None
    except ValueError as e:
        raise DataError(f"{path}: not valid JSON ({e}).") from None
    if not isinstance(data, dict) or not isinstance(data.get("frames"), list) or not data["frames"]:
        raise DataError(f"{path}: expected an object with a non-empty list 'frames'.")
    return data


def _file_path(frame: dict, source: str, index: int) -> str:
    if not isinstance(frame.get("file_path"), str):
        raise DataError(f"{source}: frame {index} has no 'file_path'.")
    return frame["file_path"]


def _finish(images, poses, intrinsics, near, far, split, source, unbounded: bool = False) -> Scene:
    """Normalise poses, derive bounds (far reaches ``UNBOUNDED_FAR`` for an unbounded scene), validate."""
    sizes = {image.shape[:2] for image in images}
    if len(sizes) > 1:
        raise DataError(f"{source}: the images have different sizes {sorted(sizes)}; all views must share one.")
    poses, transform = normalize_poses(np.stack(poses))
    derived_near, derived_far = bounds_from_cameras(poses)
    if unbounded:
        derived_far = UNBOUNDED_FAR
    near = derived_near if near is None else near
    far = derived_far if far is None else far
    log.info("poses re-centred on %s and scaled by %.4g; near %.3g, far %.3g",
             np.round(transform["center"], 3).tolist(), transform["scale"], near, far)
    return validate(np.stack(images), poses, np.asarray(intrinsics), near, far, split=split, source=source,
                    unbounded=unbounded)


# ----------------------------------------------------------------------------- the layouts


def read_blender(folder: Path, background: float, downscale: int, max_views, near, far) -> Scene:
    """A NeRF-synthetic scene: its train and val views, with their own split."""
    parts = {}
    for part in ("train", "val"):
        path = folder / f"transforms_{part}.json"
        if not path.is_file():
            raise DataError(f"{folder}: missing transforms_{part}.json (a NeRF-synthetic scene has "
                            "transforms_train.json and transforms_val.json).")
        parts[part] = _load_json(path)
    images, poses, intrinsics, split = [], [], [], {"train": [], "val": []}
    total = sum(len(p["frames"]) for p in parts.values())
    for part, meta in parts.items():
        source = str(folder / f"transforms_{part}.json")
        if not isinstance(meta.get("camera_angle_x"), (int, float)) or not 0 < meta["camera_angle_x"] < math.pi:
            raise DataError(f"{source}: 'camera_angle_x' must be the horizontal field of view in radians.")
        keep = None if max_views is None else max(1, round(max_views * len(meta["frames"]) / total))
        for index in evenly_spread(len(meta["frames"]), keep):
            frame = meta["frames"][index]
            relative = _file_path(frame, source, index)
            path = (folder / relative).with_suffix(".png") if not Path(relative).suffix else folder / relative
            image = read_image(path, background, source)
            height, width = image.shape[:2]
            focal = 0.5 * width / math.tan(0.5 * meta["camera_angle_x"])
            split[part].append(len(images))
            images.append(downscale_image(image, downscale))
            poses.append(_matrix(frame, source, index))
            intrinsics.append([focal / downscale, focal / downscale, 0.5 * width / downscale, 0.5 * height / downscale])
    log.info("NeRF-synthetic scene %s: %d train and %d val views", folder, len(split["train"]), len(split["val"]))
    return _finish(images, poses, intrinsics, near, far, split, str(folder))


def frame_intrinsics(meta: dict, frame: dict, image_shape, source: str, index: int) -> tuple[list, list]:
    """``([fx, fy, cx, cy], [k1, k2, p1, p2])`` of one frame at its image's full resolution."""
    values = {key: frame.get(key, meta.get(key)) for key in INTRINSIC_KEYS}
    for key in UNSUPPORTED_DISTORTION_KEYS:
        if values[key]:
            raise DataError(f"{source}: frame {index} has '{key}' = {values[key]}: fisheye or higher-order "
                            "distortion is not supported. Undistort the images (e.g. COLMAP's image_undistorter) "
                            "and drop the distortion keys.")
    height, width = image_shape[:2]
    w, h = values["w"] or width, values["h"] or height
    if (int(w), int(h)) != (width, height):
        raise DataError(f"{source}: frame {index}'s image is {width}x{height} but its intrinsics say w={w}, h={h}.")
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
    return [float(fx), float(fy), float(cx), float(cy)], [float(values[k] or 0.0) for k in DISTORTION_KEYS]


def read_transforms(path: Path, background: float, downscale: int, max_views, near, far) -> Scene:
    """An instant-ngp / nerfstudio capture (one ``transforms.json``)."""
    meta = _load_json(path)
    source = str(path)
    unbounded = (meta.get("aabb_scale") or 1) > 1
    if unbounded:
        log.info("%s: aabb_scale is %s: the scene reaches beyond the cameras' focus, so it is marked unbounded "
                 "(scene.contraction: auto contracts it)", source, meta["aabb_scale"])
    images, poses, intrinsics = [], [], []
    for index in evenly_spread(len(meta["frames"]), max_views):
        frame = meta["frames"][index]
        image = read_image(path.parent / _file_path(frame, source, index), background, source)
        (fx, fy, cx, cy), distortion = frame_intrinsics(meta, frame, image.shape, source, index)
        if any(distortion):
            image = undistort(image, fx, fy, cx, cy, *distortion)
        image = downscale_image(image, downscale)
        images.append(image)
        poses.append(_matrix(frame, source, index))
        intrinsics.append([fx / downscale, fy / downscale, cx / downscale, cy / downscale])
    log.info("instant-ngp/nerfstudio capture %s: %d views", source, len(images))
    return _finish(images, poses, intrinsics, near, far, None, source, unbounded)


def read_scene(layout: str, path: Path, background: float, downscale: int, max_views, near, far) -> Scene:
    reader = read_blender if layout == "blender" else read_transforms
    return reader(path, background, downscale, max_views, near, far)

"""Camera paths in nerfstudio's ``camera_path.json`` format: read for the render stage, written by the viewer.

The format (what nerfstudio's viewer saves and ``ns-render`` reads): ``render_width``,
``render_height``, ``fps``, ``seconds`` and ``camera_path``, a list with one entry per frame:
``camera_to_world`` (16 numbers, the 4x4 camera-to-world matrix row by row, OpenGL camera axes as in
``camera.py``) and ``fov`` (the vertical field of view in degrees; the principal point is the image
centre). Keyframes (``keyframes``), when present, are what the path was made from; they are kept
but not needed to render.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nerf_pipeline.camera import rotation_error
from nerf_pipeline.errors import DataError
from nerf_pipeline.runtime import atomic
from nerf_pipeline.scenes.scene import read_json


@dataclass(frozen=True)
class CameraPath:
    poses: np.ndarray  # [F, 4, 4] float32 camera-to-world
    intrinsics: np.ndarray  # [F, 4] float32 fx, fy, cx, cy in pixels of width x height
    width: int
    height: int
    fps: float


def focal_of_fov(fov_deg: float, height: int) -> float:
    """The focal length in pixels of a vertical field of view over ``height`` pixels."""
    return 0.5 * height / math.tan(0.5 * math.radians(fov_deg))


def read_camera_path(path) -> CameraPath:
    """A ``camera_path.json``; raises ``DataError`` naming the file and what is wrong."""
    path = Path(path)
    data = read_json(path, "the camera path")
    frames = data.get("camera_path") if isinstance(data, dict) else None
    if not isinstance(frames, list) or not frames:
        raise DataError(f"{path}: expected a camera path in nerfstudio's format, with a non-empty list "
                        "'camera_path' of frames ({{'camera_to_world': [16 numbers], 'fov': degrees}}).")
    try:
        width, height = int(data["render_width"]), int(data["render_height"])
        fps = float(data.get("fps", 30))
        poses = np.array([np.asarray(f["camera_to_world"], dtype=np.float64).reshape(4, 4) for f in frames])
        fovs = np.array([float(f["fov"]) for f in frames])
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{path}: every frame needs 'camera_to_world' (16 numbers) and 'fov', and the file "
                        f"'render_width' and 'render_height' ({type(e).__name__}: {e}).") from None
    if width < 1 or height < 1 or fps <= 0 or not np.all((fovs > 0) & (fovs < 180)):
        raise DataError(f"{path}: render_width/height must be positive, fps positive and each fov between 0 and "
                        "180 degrees.")
    errors = rotation_error(poses)
    if not np.all(np.isfinite(poses)) or np.any(errors > 1e-3):
        raise DataError(f"{path}: frame {int(np.argmax(errors))}'s camera_to_world is not a rigid transform.")
    focal = np.array([focal_of_fov(fov, height) for fov in fovs])
    intrinsics = np.stack([focal, focal, np.full_like(focal, width / 2), np.full_like(focal, height / 2)], -1)
    return CameraPath(poses.astype(np.float32), intrinsics.astype(np.float32), width, height, fps)


def write_camera_path(path, poses, fov_deg: float, width: int, height: int, fps: float, keyframes=None) -> None:
    """Write ``poses [F, 4, 4]`` (one per frame) as a ``camera_path.json``."""
    frames = [{"camera_to_world": np.asarray(pose, dtype=float).reshape(-1).tolist(), "fov": float(fov_deg),
               "aspect": width / height} for pose in poses]
    data = {"camera_type": "perspective", "render_width": int(width), "render_height": int(height),
            "fps": float(fps), "seconds": len(frames) / float(fps), "camera_path": frames}
    if keyframes is not None:
        data["keyframes"] = keyframes
    atomic.write_text(path, json.dumps(data, indent=1))

"""The paths the render stage's video follows when ``render.camera_path`` names none: an orbit or a spiral fitted
to the cameras (a ``camera_path.json`` is read by ``scenes/camera_paths.py``).

``fitted_path`` is what the render stage (and ``bench_captures``, to show a variant's video) takes: a 360° orbit
about the cameras' up axis (``camera.rig_up``) through the point they look at, at elevation
``render.elevation_deg`` and distance ``render.radius`` (null: the cameras' median) when the cameras go around the
scene (``auto``: they cover at least ``ORBIT_COVERAGE_DEG`` of azimuth about that axis), else a spiral where they
were, as LLFF renders forward-facing captures, looking where they look: the point their axes meet, or for cameras
that all face one way the scene as far ahead as the method's depth says (``depth_ahead``), else a focus depth from
near/far. Every frame's up is the cameras' up, so no frame rolls.
"""

from __future__ import annotations

import numpy as np

from nerf_pipeline import camera
from nerf_pipeline.config import RenderConfig

ORBIT_COVERAGE_DEG = 270.0  # cameras spanning at least this much azimuth go around the scene
DEPTH_VIEW_SIDE = 64  # pixels on the long side of the view rendered to find how far ahead the scene is


def orbit_path(poses: np.ndarray, elevation_deg, radius, target=None) -> tuple[float, float]:
    """``(elevation_deg, radius)`` of the orbit: the given values, else the median of the cameras',
    measured from ``target`` (None: the point the cameras look at, else their mean position) about
    the cameras' up axis."""
    if target is None:
        target = camera.looked_at_point(poses)
        target = np.asarray(poses)[:, :3, 3].mean(0) if target is None else target
    return camera.orbit_around_cameras(poses, target, elevation_deg, radius)


def depth_ahead(method, poses: np.ndarray, lens: np.ndarray, height: int, width: int) -> float | None:
    """The scene's depth where the cameras look: the median depth of the opaque pixels in the middle third
    of the cameras' mean view (``camera.mean_pose``, rendered by ``method`` (a ``methods.Method``)
    ``DEPTH_VIEW_SIDE`` pixels on its long side through ``lens`` [4], the lens of a ``height`` x ``width``
    view, scaled); None if none is opaque."""
    from nerf_pipeline.methods import Camera

    scale = DEPTH_VIEW_SIDE / max(height, width)
    small_h, small_w = max(3, round(height * scale)), max(3, round(width * scale))
    small_lens = np.asarray(lens, np.float64) * np.array([small_w / width, small_h / height] * 2)
    out = method.render(Camera(camera.mean_pose(poses), small_lens, small_h, small_w))
    middle = (slice(small_h // 3, small_h - small_h // 3), slice(small_w // 3, small_w - small_w // 3))
    depth, opacity = out["depth"][middle], out["opacity"][middle]
    return float(np.median(depth[opacity > 0.5])) if np.any(opacity > 0.5) else None


def camera_path(render: RenderConfig, poses: np.ndarray, near: float, far: float,
                depth: float | None = None) -> tuple[np.ndarray, str]:
    """Poses ``[num_frames, 4, 4]`` of the video and a sentence saying which path and why.

    Both paths look at ``camera.view_target``: the point the cameras look at, or for cameras that
    all face one way the point ``depth`` (the scene's depth there; None: a focus depth from
    ``near``/``far``) ahead of them. They keep the cameras' up (``camera.rig_up``) as every frame's up,
    and the orbit turns about that up through the target.
    """
    poses = np.asarray(poses, dtype=np.float64)
    target, how = camera.view_target(poses, near, far, depth)
    up = camera.rig_up(poses)
    looked_at = camera.looked_at_point(poses)
    # Cameras that look the same way (no point they all look at) face one side of the scene, however
    # they are spread.
    coverage = 0.0 if looked_at is None else camera.azimuth_coverage_deg(poses[:, :3, 3], looked_at, up)
    kind = render.camera_path
    if kind == "auto":
        kind = "orbit" if coverage >= ORBIT_COVERAGE_DEG else "spiral"
        why = (f"the cameras cover {coverage:.0f}° of azimuth around the scene "
               f"({'at least' if kind == 'orbit' else 'less than'} {ORBIT_COVERAGE_DEG:.0f}°)")
    else:
        why = f"render.camera_path is {kind}; the cameras cover {coverage:.0f}° of azimuth"
    if kind == "orbit":
        elevation, radius = orbit_path(poses, render.elevation_deg, render.radius, target)
        return camera.orbit_poses(render.num_frames, elevation, radius, target, up), (
            f"a 360° orbit at elevation {elevation:.1f}°, radius {radius:.2f}, looking at {how}: {why}")
    return (camera.spiral_poses(poses, render.num_frames, target),
            f"a spiral around the cameras' mean position, looking at {how}: {why}")


def output_size(render: RenderConfig, height: int, width: int) -> tuple[int, int]:
    """``(height, width)`` of the video: the training views', or render.width/height (one given: same aspect)."""
    if render.width is None and render.height is None:
        return height, width
    if render.width is not None and render.height is not None:
        return render.height, render.width
    if render.width is not None:
        return max(1, round(render.width * height / width)), render.width
    return render.height, max(1, round(render.height * width / height))


def fitted_path(render: RenderConfig, method, cameras: np.ndarray,
                part) -> tuple[np.ndarray, np.ndarray, int, int, str]:
    """The video's frames along the path fitted to ``cameras [N, 4, 4]`` (the training views' as trained and
    ``part``'s), each through ``part``'s first lens scaled to the output size (``output_size`` of ``part``'s):
    ``(poses [F, 4, 4], lenses [F, 4], height, width, why)``. ``method`` (a ``methods.Method``) renders the depth
    ahead of cameras whose axes do not meet (a forward-facing capture)."""
    depth = None if camera.looked_at_point(cameras) is not None else depth_ahead(
        method, cameras, part.intrinsics[0], part.height, part.width)
    poses, why = camera_path(render, cameras, part.near, part.far, depth)
    height, width = output_size(render, part.height, part.width)
    lenses = np.tile(part.intrinsics[0] * np.array([width / part.width, height / part.height] * 2, np.float32),
                     (len(poses), 1))
    return poses, lenses, height, width, why

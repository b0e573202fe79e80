"""Camera math: poses, per-pixel rays and orbit paths (pure numpy, no I/O).

Conventions (those of ``tiny_nerf_data.npz`` and the NeRF-synthetic scenes):

* A pose is a camera-to-world matrix ``c2w: [4, 4]``. Its rotation columns are the
  camera's right (+x), up (+y) and back (+z) axes in world coordinates; the camera
  looks down its -z axis. Its last column is the camera centre.
* The world is z-up.
* Pixel ``(row, col)`` is sampled through its centre, ``(col + 0.5, row + 0.5)`` in
  continuous image coordinates; intrinsics ``(fx, fy, cx, cy)`` are in pixels of that
  frame, so a camera with its principal point at the image centre has ``cx = width / 2``.
  (The Keras example drops the half-pixel offset; the difference is half a pixel.)
"""

from __future__ import annotations

import numpy as np


def as_intrinsics(intrinsics, height: int, width: int) -> np.ndarray:
    """``[..., 4]`` float64 ``(fx, fy, cx, cy)`` in pixels.

    A scalar is a focal length: ``fx = fy = focal`` with the principal point at the image
    centre ``(width / 2, height / 2)`` (tiny_nerf's cameras).
    """
    intrinsics = np.asarray(intrinsics, dtype=np.float64)
    if intrinsics.ndim == 0:
        return np.array([intrinsics, intrinsics, 0.5 * width, 0.5 * height])
    return intrinsics


def camera_directions(height: int, width: int, intrinsics) -> np.ndarray:
    """Unnormalised ray directions in camera coordinates.

    Args:
        intrinsics: a focal length, or ``(fx, fy, cx, cy)`` ([4], or [..., 4] for many cameras).

    Returns:
        directions: [..., height, width, 3] float32; ``z = -1`` for every pixel.
    """
    fx, fy, cx, cy = np.moveaxis(as_intrinsics(intrinsics, height, width), -1, 0)
    cols, rows = np.meshgrid(
        np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64), indexing="xy"
    )
    expand = (...,) + (None, None)
    per_camera = (np.asarray(value)[expand] for value in (fx, fy, cx, cy))
    return _pixel_directions(rows, cols, *per_camera).astype(np.float32)


def _pixel_directions(rows, cols, fx, fy, cx, cy) -> np.ndarray:
    """Unnormalised camera-space directions through pixel centres, ``[..., 3]`` float64, ``z = -1``
    (arguments broadcast together)."""
    x = (cols + 0.5 - cx) / fx
    y = -(rows + 0.5 - cy) / fy  # image rows grow downwards, camera +y is up
    return np.stack([x, y, -np.ones_like(x)], axis=-1)


def generate_rays(poses: np.ndarray, height: int, width: int, intrinsics):
    """One ray per pixel for each pose.

    Args:
        poses: [..., 4, 4] camera-to-world matrices.
        intrinsics: a focal length shared by all cameras, or ``(fx, fy, cx, cy)`` as [4]
            (shared) or [..., 4] (one per pose).

    Returns:
        ray_origins: [..., height, width, 3] float32, the camera centres.
        ray_directions: [..., height, width, 3] float32, unit length, in world coordinates.
    """
    poses = np.asarray(poses, dtype=np.float64)
    directions = camera_directions(height, width, intrinsics).astype(np.float64)
    rotations = poses[..., None, None, :3, :3]  # [..., 1, 1, 3, 3]
    world = np.einsum("...ij,...j->...i", rotations, directions)
    world /= np.linalg.norm(world, axis=-1, keepdims=True)
    origins = np.broadcast_to(poses[..., None, None, :3, 3], world.shape)
    return origins.astype(np.float32), world.astype(np.float32)


def pixel_rays(pose: np.ndarray, intrinsics, rows, cols):
    """The rays of ``generate_rays`` through some pixels of one camera only.

    Args:
        pose: [4, 4] camera-to-world; intrinsics: ``(fx, fy, cx, cy)`` [4].
        rows, cols: [N] int, the pixels.

    Returns:
        ray_origins, ray_directions: [N, 3] float32, unit directions.
    """
    pose = np.asarray(pose, dtype=np.float64)
    directions = _pixel_directions(np.asarray(rows, np.float64), np.asarray(cols, np.float64),
                                   *np.asarray(intrinsics, dtype=np.float64))
    world = directions @ pose[:3, :3].T
    world /= np.linalg.norm(world, axis=-1, keepdims=True)
    return np.broadcast_to(pose[:3, 3], world.shape).astype(np.float32), world.astype(np.float32)


def look_at(camera_position, target=(0.0, 0.0, 0.0), world_up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """Camera-to-world matrix [4, 4] float64 of a camera at ``camera_position`` looking at ``target``.

    ``world_up`` must not be parallel to the viewing direction.
    """
    position = np.asarray(camera_position, dtype=np.float64)
    forward = np.asarray(target, dtype=np.float64) - position
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, np.asarray(world_up, dtype=np.float64))
    norm = np.linalg.norm(right)
    if norm < 1e-9:
        raise ValueError("look_at: the viewing direction is parallel to world_up")
    right /= norm
    up = np.cross(right, forward)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, up, -forward, position
    return c2w


def spherical_position(azimuth_deg, elevation_deg, radius) -> np.ndarray:
    """Point on a sphere around the origin: azimuth 0 lies on +y, elevation 90 on +z. Shape [..., 3]."""
    azimuth = np.radians(np.asarray(azimuth_deg, dtype=np.float64))
    elevation = np.radians(np.asarray(elevation_deg, dtype=np.float64))
    return np.stack(
        [
            radius * np.cos(elevation) * np.sin(azimuth),
            radius * np.cos(elevation) * np.cos(azimuth),
            radius * np.sin(elevation) * np.ones_like(azimuth),
        ],
        axis=-1,
    )


def orbit_poses(num_frames: int, elevation_deg: float = 30.0, radius: float = 4.0,
                center=(0.0, 0.0, 0.0), world_up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """Poses [num_frames, 4, 4] float32 of a full 360° turn about the axis ``world_up`` through ``center``,
    looking at it, with ``world_up`` as every frame's up (so no frame rolls).

    With the defaults this is the Keras example's path (theta 0…360, phi = -30, radius 4):
    the camera is 30° above the horizontal plane, every frame included. For another ``world_up`` the
    same path is turned so that +z goes onto it.
    """
    up = np.asarray(world_up, dtype=np.float64)
    up /= np.linalg.norm(up)
    azimuths = np.linspace(0.0, 360.0, num_frames, endpoint=False)
    offsets = spherical_position(azimuths, elevation_deg, radius) @ rotation_between(np.array([0.0, 0.0, 1.0]), up).T
    positions = offsets + np.asarray(center, dtype=np.float64)
    return np.stack([look_at(p, center, up) for p in positions]).astype(np.float32)


def hemisphere_poses(num_views: int, radius: float, seed: int,
                     min_elevation_deg: float = 5.0, max_elevation_deg: float = 80.0) -> np.ndarray:
    """Poses [num_views, 4, 4] float32 of cameras on the upper hemisphere looking at the origin.

    Azimuths are stratified over 360° (so views cover every side) and elevations are
    drawn uniformly in ``sin(elevation)`` (uniform over the sphere's area), both jittered
    by a generator seeded with ``seed``.
    """
    rng = np.random.default_rng(seed)
    azimuths = (np.arange(num_views) + rng.uniform(size=num_views)) * 360.0 / num_views
    lo, hi = np.sin(np.radians([min_elevation_deg, max_elevation_deg]))
    elevations = np.degrees(np.arcsin(rng.uniform(lo, hi, size=num_views)))
    order = rng.permutation(num_views)  # no azimuth ordering, so any split sees all sides
    positions = spherical_position(azimuths[order], elevations[order], radius)
    return np.stack([look_at(p) for p in positions]).astype(np.float32)


def rotation_error(poses: np.ndarray) -> np.ndarray:
    """Max |R^T R - I| entry of each pose's rotation block, [...]: 0 for an orthonormal rotation."""
    rotations = np.asarray(poses, dtype=np.float64)[..., :3, :3]
    gram = np.einsum("...ki,...kj->...ij", rotations, rotations)
    return np.abs(gram - np.eye(3)).max(axis=(-2, -1))


# ----------------------------------------------------------------------------- a capture's frame

TARGET_RADIUS = 4.0  # the median camera distance after normalize_poses (tiny_nerf's convention)


def rotation_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
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
    rotation = rotation_between(up, np.array([0.0, 0.0, 1.0]))
    positions = (poses[:, :3, 3] - center) @ rotation.T
    scale = TARGET_RADIUS / max(float(np.median(np.linalg.norm(positions, axis=-1))), 1e-12)
    out = np.tile(np.eye(4), (len(poses), 1, 1))
    out[:, :3, :3] = rotation @ poses[:, :3, :3]
    out[:, :3, 3] = positions * scale
    return out, {"center": center.tolist(), "rotation": rotation.tolist(), "scale": scale}


NEAREST_VIEWS = 2  # training views whose appearance a held-out view takes (camera.nearest_views_weights)


def nearest_views_weights(positions: np.ndarray, position, count: int = NEAREST_VIEWS) -> np.ndarray:
    """Weights ``[V]`` summing to 1 of the ``count`` camera centres of ``positions [V, 3]`` nearest ``position
    [3]``: ``1/d - 1/d'`` for a centre ``d`` away, ``d'`` the distance of the next nearest (so a centre's weight
    falls to zero as it stops being among the nearest: a moving ``position``, a video's frames, sees the
    weights change continuously); one at ``position`` takes all; zero for the others."""
    positions = np.asarray(positions, dtype=np.float64)
    distances = np.linalg.norm(positions - np.asarray(position, dtype=np.float64), axis=-1)
    order = np.argsort(distances, kind="stable")
    weights = np.zeros(len(positions))
    if distances[order[0]] < 1e-9:
        weights[order[0]] = 1.0
        return weights
    nearest = order[:count]
    weights[nearest] = 1.0 / distances[nearest]
    if len(order) > count:
        weights[nearest] -= 1.0 / distances[order[count]]
    if weights.sum() <= 0:  # as far as the next: all alike
        weights[nearest] = 1.0
    return weights / weights.sum()


def bounds_from_cameras(poses: np.ndarray) -> tuple[float, float]:
    """``(near, far)``: half the closest and 1.5 times the farthest camera distance to the origin."""
    distances = np.linalg.norm(poses[:, :3, 3], axis=-1)
    return 0.5 * float(distances.min()), 1.5 * float(distances.max())


def azimuth_coverage_deg(positions: np.ndarray, center=(0.0, 0.0, 0.0), up=(0.0, 0.0, 1.0)) -> float:
    """How much of the full turn about the axis ``up`` through ``center`` the cameras at ``positions [N, 3]``
    span, in degrees: 360 minus the widest azimuth gap between neighbouring cameras."""
    up = np.asarray(up, dtype=np.float64) / np.linalg.norm(up)
    # The positions in a frame whose z is ``up``: their azimuth is the angle about it.
    to_z = rotation_between(up, np.array([0.0, 0.0, 1.0]))
    local = (np.asarray(positions, dtype=np.float64) - np.asarray(center)) @ to_z.T
    azimuths = np.sort(np.degrees(np.arctan2(local[:, 1], local[:, 0])) % 360.0)
    gaps = np.diff(np.concatenate([azimuths, azimuths[:1] + 360.0]))
    return float(360.0 - gaps.max()) if len(azimuths) > 1 else 0.0


# ----------------------------------------------------------------------------- render paths: where the cameras look

MAX_AIM_DEG = 30.0  # the point the cameras look at lies within this of most cameras' optical axes
LEFT_OUT_FRACTION = 0.1  # cameras that may miss that point (a stray frame of a handheld capture)


def mean_up(poses: np.ndarray) -> np.ndarray:
    """The cameras' mean up vector [3], unit length (their +y columns averaged)."""
    up = np.asarray(poses, dtype=np.float64)[:, :3, 1].mean(0)
    return up / max(np.linalg.norm(up), 1e-12)


def rig_up(poses: np.ndarray) -> np.ndarray:
    """The cameras' common up axis [3], unit length: the direction most nearly perpendicular to every
    camera's right vector (exact for cameras that do not roll, wherever they stand and look), turned
    to agree with their mean up; their mean up itself when the right vectors leave that direction
    open (cameras that all face one way, whose rights are parallel)."""
    poses = np.asarray(poses, dtype=np.float64)
    rights = poses[:, :3, 0] / np.linalg.norm(poses[:, :3, 0], axis=-1, keepdims=True)
    values, vectors = np.linalg.eigh(rights.T @ rights / len(rights))  # ascending
    up = mean_up(poses)
    if values[1] < 0.01 or values[1] < 10.0 * values[0]:  # the rights do not span a plane: no single axis
        return up
    axis = vectors[:, 0]
    return axis if np.dot(axis, up) >= 0 else -axis


def mean_forward(poses: np.ndarray) -> np.ndarray:
    """The cameras' mean viewing direction [3], unit length (their -z columns averaged)."""
    forward = -np.asarray(poses, dtype=np.float64)[:, :3, 2].mean(0)
    return forward / max(np.linalg.norm(forward), 1e-12)


def looked_at_point(poses: np.ndarray) -> np.ndarray | None:
    """The point [3] closest (least squares) to the cameras' optical axes, if the cameras look at it: the
    axes meet (not near parallel) and the point lies in front of the cameras, within ``MAX_AIM_DEG`` of
    the axes of all but ``LEFT_OUT_FRACTION`` of them. None otherwise (a forward-facing capture whose
    cameras look the same way, or cameras that look away from each other).
    """
    poses = np.asarray(poses, dtype=np.float64)
    centres, forward = poses[:, :3, 3], -poses[:, :3, 2]
    forward = forward / np.linalg.norm(forward, axis=-1, keepdims=True)
    projectors = np.eye(3)[None] - forward[:, :, None] * forward[:, None, :]  # onto each axis' normal plane
    a, b = projectors.sum(0), np.einsum("nij,nj->i", projectors, centres)
    if np.linalg.cond(a) > 1e4:
        return None
    point = np.linalg.solve(a, b)
    towards = point - centres
    distances = np.linalg.norm(towards, axis=-1)
    cosines = np.sum(towards * forward, axis=-1) / np.maximum(distances, 1e-12)
    aimed = cosines > np.cos(np.radians(MAX_AIM_DEG))
    return point if aimed.mean() >= 1.0 - LEFT_OUT_FRACTION else None


def focus_depth(near: float, far: float) -> float:
    """A depth to look at between the sampling bounds: halfway between them in inverse depth (disparity,
    the measure forward-facing captures are sampled in), so nearer near than far, and at most twice near
    however far ``far`` is (an unbounded scene's far is hundreds of camera distances out)."""
    near = near if near > 0 else 1e-3 * far  # near may be 0
    return 2.0 / (1.0 / near + 1.0 / far)


def _up_across(up: np.ndarray, forward: np.ndarray, poses: np.ndarray) -> np.ndarray:
    """``up`` made perpendicular to ``forward`` [3], unit; if the two are near parallel (cameras looking
    down the mean up), the first camera's up made so."""
    for candidate in (up, *np.asarray(poses, dtype=np.float64)[:, :3, 1], *np.eye(3)):
        across = candidate - np.dot(candidate, forward) * forward
        if np.linalg.norm(across) > 0.1:
            return across / np.linalg.norm(across)
    raise ValueError("no up vector across the viewing direction")  # unreachable: one of x, y, z is across


def mean_pose(poses: np.ndarray) -> np.ndarray:
    """The cameras' mean pose [4, 4] float64: at their mean position, looking along their mean viewing
    direction, with their up (``rig_up``, made perpendicular to it) as up."""
    poses = np.asarray(poses, dtype=np.float64)
    centre, forward = poses[:, :3, 3].mean(0), mean_forward(poses)
    return look_at(centre, centre + forward, world_up=_up_across(rig_up(poses), forward, poses))


def view_target(poses: np.ndarray, near: float, far: float, depth_ahead: float | None = None) -> tuple[np.ndarray, str]:
    """The point [3] a video of these cameras should look at, and a phrase saying how it was found: the
    point the cameras look at (``looked_at_point``) if there is one nearer than ``far``; else the point
    ``depth_ahead`` (the scene's depth there, when known; else ``focus_depth(near, far)``) ahead of the
    cameras' mean position along their mean viewing direction (where a forward-facing capture's cameras
    look)."""
    point = looked_at_point(poses)
    centre = np.asarray(poses, dtype=np.float64)[:, :3, 3].mean(0)
    if point is not None and np.linalg.norm(point - centre) <= far:
        return point, "the point the cameras look at"
    if depth_ahead is not None:
        return centre + depth_ahead * mean_forward(poses), f"the scene {depth_ahead:.2f} units ahead of the cameras"
    depth = focus_depth(near, far)
    return centre + depth * mean_forward(poses), f"{depth:.2f} units ahead of the cameras (between near and far)"


def spiral_poses(poses: np.ndarray, num_frames: int, target, rotations: float = 2.0) -> np.ndarray:
    """Poses [num_frames, 4, 4] float32 on a spiral around the cameras' mean position, looking at ``target``.

    As LLFF renders its forward-facing captures: the spiral lies in the plane facing the target,
    its radii the 90th percentile of the cameras' spread in that plane's two axes (and a quarter of
    the spread towards the target as depth), turning ``rotations`` times; it stays where the
    cameras were. Every frame's up is the cameras' up (``rig_up``, made perpendicular to the mean
    viewing direction), so no frame rolls, whichever way the cameras face.
    """
    poses = np.asarray(poses, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    positions = poses[:, :3, 3]
    centre = positions.mean(0)
    forward = target - centre
    forward /= max(np.linalg.norm(forward), 1e-12)
    up = _up_across(rig_up(poses), forward, poses)
    frame = look_at(centre, target, world_up=up)
    local = (positions - centre) @ frame[:3, :3]  # offsets in the mean camera's (right, up, back) axes
    radii = np.percentile(np.abs(local), 90, axis=0) * np.array([1.0, 1.0, 0.25])
    angles = np.linspace(0.0, 2.0 * np.pi * rotations, num_frames, endpoint=False)
    offsets = np.stack([np.cos(angles) * radii[0], np.sin(angles) * radii[1],
                        np.sin(angles / rotations) * radii[2]], axis=-1)
    frames = [look_at(centre + frame[:3, :3] @ offset, target, world_up=up) for offset in offsets]
    return np.stack(frames).astype(np.float32)


def orbit_around_cameras(poses: np.ndarray, target, elevation_deg=None, radius=None) -> tuple[float, float]:
    """``(elevation_deg, radius)`` of an orbit about the cameras' up (``rig_up``) through ``target``: the given
    values, else the cameras' median elevation (above the plane through ``target`` across that up)
    and median distance to ``target``, so the orbit keeps the cameras' height and distance."""
    offsets = np.asarray(poses, dtype=np.float64)[:, :3, 3] - np.asarray(target, dtype=np.float64)
    distances = np.linalg.norm(offsets, axis=-1)
    if radius is None:
        radius = float(np.median(distances))
    if elevation_deg is None:
        heights = offsets @ rig_up(poses)
        elevation_deg = float(np.median(np.degrees(np.arcsin(np.clip(heights / np.maximum(distances, 1e-12), -1, 1)))))
    return elevation_deg, radius


def align_similarity(source: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity (Umeyama) taking points ``source`` [N, 3] onto ``target`` [N, 3].

    Returns ``(scale, rotation [3, 3], translation [3])`` minimising
    ``sum |target - (scale * rotation @ source + translation)|^2``; needs N >= 3 points not on one line.
    """
    source, target = np.asarray(source, dtype=np.float64), np.asarray(target, dtype=np.float64)
    source_mean, target_mean = source.mean(0), target.mean(0)
    source_centred, target_centred = source - source_mean, target - target_mean
    covariance = target_centred.T @ source_centred / len(source)
    u, singular, vt = np.linalg.svd(covariance)
    reflection = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])  # a proper rotation, never a mirror
    rotation = u @ reflection @ vt
    scale = float(np.trace(np.diag(singular) @ reflection) / source_centred.var(0).sum())
    return scale, rotation, target_mean - scale * rotation @ source_mean

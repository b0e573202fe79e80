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
    x = (cols + 0.5 - np.asarray(cx)[expand]) / np.asarray(fx)[expand]
    y = -(rows + 0.5 - np.asarray(cy)[expand]) / np.asarray(fy)[expand]  # image rows grow downwards, camera +y is up
    return np.stack([x, y, -np.ones_like(x)], axis=-1).astype(np.float32)


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
    """Poses [num_frames, 4, 4] float32 of a full 360° turn around ``center``, looking at it.

    With the defaults this is the Keras example's path (theta 0…360, phi = -30, radius 4):
    the camera is 30° above the horizontal plane, every frame included.
    """
    azimuths = np.linspace(0.0, 360.0, num_frames, endpoint=False)
    positions = spherical_position(azimuths, elevation_deg, radius) + np.asarray(center)
    return np.stack([look_at(p, center, world_up) for p in positions]).astype(np.float32)


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

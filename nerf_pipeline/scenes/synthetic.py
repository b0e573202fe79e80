"""Analytic ray-traced test scene (pure numpy, no files): images and depths to train a NeRF on.

The scene is fixed; only the cameras depend on the seed. World z is up, lengths in scene
units, everything lies inside the sphere of radius ``SCENE_RADIUS = 1.6`` around the
origin, so radius-4 cameras with near 2 / far 6 see all of it.

Geometry (``z = -0.45`` is the top face of the base, the "floor" the objects stand on):

=================  =====================================================================
base               box x, y in [-1, 1], z in [-0.55, -0.45]; checkerboard of 0.2 checks
                   (one centred on the origin, so 9 whole and 2 half checks per side),
                   cream / dark slate
pillar             slim box x, y in [-0.06, 0.06], z in [-0.45, 0.70], magenta; it stands
                   at the origin, so a ray straight down the z axis hits its top at z 0.7
red sphere         centre (0.5, 0.45, -0.10), radius 0.35 (resting on the floor)
blue box           centre (-0.5, 0.4, -0.2), half extents (0.25, 0.18, 0.25), turned 30°
                   about z (top face at z 0.05)
cyan sphere        centre (-0.5, 0.4, 0.2), radius 0.15 (resting on the blue box)
striped cylinder   vertical axis through (-0.45, -0.45), radius 0.22, z in [-0.45, 0.35],
                   horizontal yellow / green bands 0.1 high (edges at z = -0.4, -0.3, ...)
orange arch        two 0.08 x 0.08 pillars 0.6 high and a 0.08 thick lintel, 0.5 wide,
                   centred on (0.5, -0.58), turned -20° about z (three thin boxes)
=================  =====================================================================

Shading is view independent: ``albedo * (AMBIENT + DIFFUSE * max(0, n . l) * lit)`` with one
directional light whose unit direction towards the light is ``LIGHT_DIRECTION`` (above the
scene, tilted towards +x / -y), and ``lit`` a hard-shadow test: a ray from the surface
towards the light that hits any primitive leaves the point in shadow. Rays that hit
nothing are black.

Intersections (slab method for boxes turned about z, quadratic for spheres, side plus caps
for vertical cylinders) are vectorised over all rays of a chunk at once. ``surface_distance``
gives the exact distance from any point to the nearest surface (the primitives' signed distances).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from nerf_pipeline.camera import generate_rays, hemisphere_poses

SCENE_RADIUS = 1.6
FLOOR_Z = -0.45
AMBIENT = 0.25
DIFFUSE = 0.75
LIGHT_DIRECTION = np.array([0.5, -0.35, 0.8]) / np.linalg.norm([0.5, -0.35, 0.8])

NEAR = 2.0
FAR = 6.0
FOCAL_PER_PIXEL = 1.3888889  # tiny_nerf / lego field of view: focal 138.89 at 100 px

# Shadow rays start this far off the surface along its normal, so that rounding in the hit
# point cannot make a surface shadow itself ("shadow acne").
SHADOW_OFFSET = 1e-4
# Rays are traced in chunks of this many to bound the memory of the intermediate arrays.
CHUNK_RAYS = 1 << 17

_INF = np.inf


# ----------------------------------------------------------------------------- materials


@dataclass(frozen=True)
class Flat:
    """Uniform colour."""

    colour: tuple

    def albedo(self, points: np.ndarray) -> np.ndarray:
        """points: [N, 3] -> albedo [N, 3] float64."""
        return np.broadcast_to(np.asarray(self.colour, dtype=np.float64), points.shape).copy()


@dataclass(frozen=True)
class Checker:
    """Checkerboard in world x, y with square checks of side ``size``, aligned to ``(x0, y0)``."""

    colour_a: tuple
    colour_b: tuple
    size: float
    x0: float = 0.0
    y0: float = 0.0

    def albedo(self, points: np.ndarray) -> np.ndarray:
        """points: [N, 3] -> albedo [N, 3] float64."""
        ix = np.floor((points[:, 0] - self.x0) / self.size)
        iy = np.floor((points[:, 1] - self.y0) / self.size)
        odd = ((ix + iy) % 2 == 1)[:, None]
        return np.where(odd, np.asarray(self.colour_b), np.asarray(self.colour_a))


@dataclass(frozen=True)
class Bands:
    """Horizontal bands ``period`` high starting at ``z0``: colour_a, colour_b, colour_a, ..."""

    colour_a: tuple
    colour_b: tuple
    period: float
    z0: float = 0.0

    def albedo(self, points: np.ndarray) -> np.ndarray:
        """points: [N, 3] -> albedo [N, 3] float64."""
        odd = (np.floor((points[:, 2] - self.z0) / self.period) % 2 == 1)[:, None]
        return np.where(odd, np.asarray(self.colour_b), np.asarray(self.colour_a))


# ---------------------------------------------------------------------------- primitives
#
# Each primitive has
#   intersect(ray_origins [N, 3], ray_directions [N, 3], t_min) -> t_hit [N] float64,
#       the smallest ray parameter > t_min at which the ray meets the surface, inf for a miss;
#   normals_at(points [N, 3]) -> normals [N, 3], outward unit normals at surface points;
#   signed_distance(points [N, 3]) -> [N] float64, the exact Euclidean distance to the surface,
#       negative inside the solid.


def _safe_components(directions: np.ndarray) -> np.ndarray:
    """Directions with exact zeros replaced by a tiny value, so that slab divisions stay finite-signed."""
    return np.where(directions == 0.0, 1e-30, directions)


@dataclass(frozen=True)
class Box:
    """Box with half extents ``half_extents`` around ``center``, turned ``angle_deg`` about the z axis."""

    center: tuple
    half_extents: tuple
    angle_deg: float
    material: object = field(default=None)

    def _to_local(self, vectors: np.ndarray) -> np.ndarray:
        """World vectors [N, 3] -> box-frame vectors [N, 3] (rotation by -angle about z)."""
        cos, sin = np.cos(np.radians(self.angle_deg)), np.sin(np.radians(self.angle_deg))
        x, y = vectors[:, 0], vectors[:, 1]
        return np.stack([cos * x + sin * y, -sin * x + cos * y, vectors[:, 2]], axis=-1)

    def _to_world(self, vectors: np.ndarray) -> np.ndarray:
        cos, sin = np.cos(np.radians(self.angle_deg)), np.sin(np.radians(self.angle_deg))
        x, y = vectors[:, 0], vectors[:, 1]
        return np.stack([cos * x - sin * y, sin * x + cos * y, vectors[:, 2]], axis=-1)

    def intersect(self, ray_origins, ray_directions, t_min):
        local_origins = self._to_local(ray_origins - np.asarray(self.center))
        local_directions = _safe_components(self._to_local(ray_directions))
        half = np.asarray(self.half_extents)
        # Slab method: the ray is inside the box between the last entry into and the first
        # exit out of the three pairs of parallel planes.
        t_lo = (-half - local_origins) / local_directions
        t_hi = (half - local_origins) / local_directions
        t_enter = np.minimum(t_lo, t_hi).max(axis=-1)
        t_exit = np.maximum(t_lo, t_hi).min(axis=-1)
        hit = (t_enter <= t_exit) & (t_exit > t_min)
        # A ray starting inside the box meets its surface on the way out.
        t_hit = np.where(t_enter > t_min, t_enter, t_exit)
        return np.where(hit, t_hit, _INF)

    def normals_at(self, points):
        local = self._to_local(points - np.asarray(self.center)) / np.asarray(self.half_extents)
        # The face a point lies on is the axis along which it is furthest out (relative to
        # the half extent): |local| == 1 there and < 1 on the other axes.
        axis = np.abs(local).argmax(axis=-1)
        local_normals = np.zeros_like(local)
        rows = np.arange(len(points))
        local_normals[rows, axis] = np.sign(local[rows, axis])
        return self._to_world(local_normals)

    def signed_distance(self, points):
        local = self._to_local(np.asarray(points, np.float64) - np.asarray(self.center))
        excess = np.abs(local) - np.asarray(self.half_extents)  # > 0 along the axes the point is out on
        outside = np.linalg.norm(np.maximum(excess, 0.0), axis=-1)
        inside = np.minimum(excess.max(axis=-1), 0.0)  # -(distance to the nearest face) when inside
        return outside + inside


@dataclass(frozen=True)
class Sphere:
    """Sphere of radius ``radius`` around ``center``."""

    center: tuple
    radius: float
    material: object = field(default=None)

    def intersect(self, ray_origins, ray_directions, t_min):
        offsets = ray_origins - np.asarray(self.center)
        # |o + t d - c|^2 = r^2 with |d| = 1:  t^2 + 2 b t + c = 0.
        half_b = np.einsum("ij,ij->i", offsets, ray_directions)
        c = np.einsum("ij,ij->i", offsets, offsets) - self.radius**2
        discriminant = half_b**2 - c
        root = np.sqrt(np.maximum(discriminant, 0.0))
        t_near, t_far = -half_b - root, -half_b + root
        t_hit = np.where(t_near > t_min, t_near, np.where(t_far > t_min, t_far, _INF))
        return np.where(discriminant >= 0.0, t_hit, _INF)

    def normals_at(self, points):
        return (points - np.asarray(self.center)) / self.radius

    def signed_distance(self, points):
        return np.linalg.norm(np.asarray(points, np.float64) - np.asarray(self.center), axis=-1) - self.radius


@dataclass(frozen=True)
class Cylinder:
    """Capped cylinder with a vertical axis through ``(cx, cy)``, radius ``radius``, z in [z_min, z_max]."""

    cx: float
    cy: float
    radius: float
    z_min: float
    z_max: float
    material: object = field(default=None)

    def intersect(self, ray_origins, ray_directions, t_min):
        ox, oy, oz = ray_origins[:, 0] - self.cx, ray_origins[:, 1] - self.cy, ray_origins[:, 2]
        dx, dy, dz = ray_directions[:, 0], ray_directions[:, 1], ray_directions[:, 2]
        candidates = []

        # Side: the ray's xy projection meets the circle, at a height within [z_min, z_max].
        a = dx * dx + dy * dy
        half_b = ox * dx + oy * dy
        c = ox * ox + oy * oy - self.radius**2
        discriminant = half_b**2 - a * c
        has_side = (discriminant >= 0.0) & (a > 1e-20)  # vertical rays never cross the side
        safe_a = np.where(has_side, a, 1.0)
        root = np.sqrt(np.maximum(discriminant, 0.0))
        for t in ((-half_b - root) / safe_a, (-half_b + root) / safe_a):
            z = oz + t * dz
            valid = has_side & (t > t_min) & (z >= self.z_min) & (z <= self.z_max)
            candidates.append(np.where(valid, t, _INF))

        # Caps: the ray meets the plane z = z_cap inside the disc.
        safe_dz = _safe_components(dz)
        for z_cap in (self.z_min, self.z_max):
            t = (z_cap - oz) / safe_dz
            px, py = ox + t * dx, oy + t * dy
            valid = (t > t_min) & (px * px + py * py <= self.radius**2)
            candidates.append(np.where(valid, t, _INF))

        return np.minimum.reduce(candidates)

    def normals_at(self, points):
        px, py, pz = points[:, 0] - self.cx, points[:, 1] - self.cy, points[:, 2]
        rho = np.sqrt(px * px + py * py)
        # Whichever surface the point is closest to (side, top or bottom cap) owns it.
        residuals = np.stack([np.abs(rho - self.radius), np.abs(pz - self.z_max), np.abs(pz - self.z_min)], -1)
        owner = residuals.argmin(axis=-1)
        safe_rho = np.where(rho > 0.0, rho, 1.0)
        side = np.stack([px / safe_rho, py / safe_rho, np.zeros_like(pz)], axis=-1)
        up = np.broadcast_to([0.0, 0.0, 1.0], points.shape)
        normals = np.where((owner == 0)[:, None], side, np.where((owner == 1)[:, None], up, -up))
        return normals

    def signed_distance(self, points):
        points = np.asarray(points, np.float64)
        rho = np.hypot(points[:, 0] - self.cx, points[:, 1] - self.cy)
        half_height, z_middle = 0.5 * (self.z_max - self.z_min), 0.5 * (self.z_max + self.z_min)
        # A box in the (rho, z) half-plane: out past the side by rho - r, past a cap by |z - middle| - h/2.
        excess = np.stack([rho - self.radius, np.abs(points[:, 2] - z_middle) - half_height], axis=-1)
        return np.linalg.norm(np.maximum(excess, 0.0), axis=-1) + np.minimum(excess.max(axis=-1), 0.0)


# --------------------------------------------------------------------------------- scene

BASE_COLOURS = ((0.92, 0.86, 0.70), (0.18, 0.30, 0.38))
PILLAR_COLOUR = (0.85, 0.15, 0.60)
RED = (0.90, 0.12, 0.10)
BLUE = (0.12, 0.30, 0.90)
CYAN = (0.10, 0.85, 0.85)
BAND_COLOURS = ((0.95, 0.80, 0.10), (0.10, 0.60, 0.20))
ORANGE = (1.00, 0.50, 0.05)


def _arch(center_xy, angle_deg, material) -> list:
    """Three thin boxes forming an arch 0.5 wide and 0.68 high on the floor, turned about z."""
    width, post, depth, post_height, lintel = 0.5, 0.08, 0.08, 0.6, 0.08
    cos, sin = np.cos(np.radians(angle_deg)), np.sin(np.radians(angle_deg))
    parts = [  # (offset along the arch's width, z centre, half extents)
        (-(width - post) / 2, FLOOR_Z + post_height / 2, (post / 2, depth / 2, post_height / 2)),
        ((width - post) / 2, FLOOR_Z + post_height / 2, (post / 2, depth / 2, post_height / 2)),
        (0.0, FLOOR_Z + post_height + lintel / 2, (width / 2, depth / 2, lintel / 2)),
    ]
    boxes = []
    for offset, z_center, half_extents in parts:
        # The offsets turn with the arch so that the three boxes stay joined.
        center = (center_xy[0] + cos * offset, center_xy[1] + sin * offset, z_center)
        boxes.append(Box(center, half_extents, angle_deg, material))
    return boxes


PRIMITIVES = (
    # Check edges sit half a check off the base's sides (and band edges half a band off the
    # cylinder's caps): a pattern edge on a face would make its colour flip with rounding.
    Box((0.0, 0.0, -0.5), (1.0, 1.0, 0.05), 0.0, Checker(*BASE_COLOURS, size=0.2, x0=-0.1, y0=-0.1)),
    Box((0.0, 0.0, 0.125), (0.06, 0.06, 0.575), 0.0, Flat(PILLAR_COLOUR)),
    Sphere((0.5, 0.45, -0.10), 0.35, Flat(RED)),
    Box((-0.5, 0.4, -0.2), (0.25, 0.18, 0.25), 30.0, Flat(BLUE)),
    Sphere((-0.5, 0.4, 0.2), 0.15, Flat(CYAN)),
    Cylinder(-0.45, -0.45, 0.22, FLOOR_Z, 0.35, Bands(*BAND_COLOURS, period=0.1, z0=FLOOR_Z - 0.05)),
    *_arch((0.5, -0.58), -20.0, Flat(ORANGE)),
)




def surface_distance(points: np.ndarray) -> np.ndarray:
    """Unsigned distance from each point to the scene's surfaces: ``[N, 3]`` → ``[N]`` float64.

    The absolute value of the smallest of the primitives' signed distances (the distance to the
    surface of their union): exact outside the solids and inside one that overlaps no other; where
    two overlap, a lower bound (in this scene they only touch). What an exported mesh is checked against.
    """
    points = np.asarray(points, np.float64).reshape(-1, 3)
    return np.abs(np.minimum.reduce([primitive.signed_distance(points) for primitive in PRIMITIVES]))


# -------------------------------------------------------------------------------- tracing


def _nearest_hit(ray_origins, ray_directions, t_min):
    """Closest primitive along each ray.

    Returns:
        t_hit: [N] float64, inf for a miss.
        primitive_index: [N] int, -1 for a miss.
    """
    t_hit = np.full(len(ray_origins), _INF)
    primitive_index = np.full(len(ray_origins), -1)
    for index, primitive in enumerate(PRIMITIVES):
        t = primitive.intersect(ray_origins, ray_directions, t_min)
        closer = t < t_hit
        t_hit = np.where(closer, t, t_hit)
        primitive_index = np.where(closer, index, primitive_index)
    return t_hit, primitive_index


def _occluded(ray_origins, ray_directions):
    """[N] bool: the ray meets any primitive (t > 0)."""
    blocked = np.zeros(len(ray_origins), dtype=bool)
    for primitive in PRIMITIVES:
        pending = ~blocked
        if not pending.any():
            break
        idx = np.flatnonzero(pending)
        t = primitive.intersect(ray_origins[idx], ray_directions[idx], 0.0)
        blocked[idx[np.isfinite(t)]] = True
    return blocked


def _trace_flat(ray_origins, ray_directions):
    """ray_origins, ray_directions: [N, 3] float64 -> (rgb [N, 3] float32, depth [N] float32)."""
    n = len(ray_origins)
    rgb = np.zeros((n, 3), dtype=np.float32)
    depth = np.zeros(n, dtype=np.float32)
    t_hit, primitive_index = _nearest_hit(ray_origins, ray_directions, 0.0)
    hit = np.flatnonzero(primitive_index >= 0)
    if len(hit) == 0:
        return rgb, depth

    t = t_hit[hit]
    points = ray_origins[hit] + t[:, None] * ray_directions[hit]
    normals = np.empty_like(points)
    albedo = np.empty_like(points)
    owners = primitive_index[hit]
    for index, primitive in enumerate(PRIMITIVES):
        mine = owners == index
        if mine.any():
            normals[mine] = primitive.normals_at(points[mine])
            albedo[mine] = primitive.material.albedo(points[mine])
    # A ray that starts inside a solid sees the back of a face: light that side instead.
    facing_away = np.einsum("ij,ij->i", normals, ray_directions[hit]) > 0.0
    normals[facing_away] *= -1.0

    cos_light = np.maximum(normals @ LIGHT_DIRECTION, 0.0)
    lit = cos_light > 0.0
    if lit.any():
        shadow_origins = points[lit] + SHADOW_OFFSET * normals[lit]
        shadow_directions = np.broadcast_to(LIGHT_DIRECTION, shadow_origins.shape)
        lit[lit] = ~_occluded(shadow_origins, shadow_directions)
    shade = AMBIENT + DIFFUSE * cos_light * lit
    rgb[hit] = np.clip(albedo * shade[:, None], 0.0, 1.0)
    depth[hit] = t
    return rgb, depth


def trace(ray_origins: np.ndarray, ray_directions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Colour and depth of the first surface along each ray.

    Args:
        ray_origins: [..., 3] ray starting points (broadcast against ``ray_directions``).
        ray_directions: [..., 3] unit-length ray directions.

    Returns:
        rgb: [..., 3] float32 in [0, 1]; black where the ray hits nothing.
        depth: [...] float32 distance along the ray to the first surface; 0 where it hits nothing.
    """
    ray_origins, ray_directions = np.broadcast_arrays(
        np.asarray(ray_origins, dtype=np.float64), np.asarray(ray_directions, dtype=np.float64)
    )
    batch_shape = ray_directions.shape[:-1]
    origins_flat = ray_origins.reshape(-1, 3)
    directions_flat = ray_directions.reshape(-1, 3)
    n = len(directions_flat)
    rgb = np.zeros((n, 3), dtype=np.float32)
    depth = np.zeros(n, dtype=np.float32)
    for start in range(0, n, CHUNK_RAYS):
        stop = min(start + CHUNK_RAYS, n)
        rgb[start:stop], depth[start:stop] = _trace_flat(origins_flat[start:stop], directions_flat[start:stop])
    return rgb.reshape(*batch_shape, 3), depth.reshape(batch_shape)


def subpixel_rays(poses: np.ndarray, height: int, width: int, focal: float, supersample: int):
    """``supersample`` x ``supersample`` rays per pixel on a regular grid inside each pixel.

    Same convention as ``camera.generate_rays``: camera-space direction
    ``((col + u - W/2) / focal, -(row + v - H/2) / focal, -1)`` with sub-pixel offsets
    ``u, v = (k + 0.5) / supersample``, rotated by the pose and normalised.

    Args:
        poses: [V, 4, 4] camera-to-world matrices.

    Returns:
        ray_origins: [V, height, width, S*S, 3] float32.
        ray_directions: [V, height, width, S*S, 3] float32, unit length.
    """
    poses = np.asarray(poses, dtype=np.float64)
    offsets = (np.arange(supersample) + 0.5) / supersample
    cols = np.arange(width)[None, :, None, None] + offsets[None, None, None, :]  # [1, W, 1, S]
    rows = np.arange(height)[:, None, None, None] + offsets[None, None, :, None]  # [H, 1, S, 1]
    shape = (height, width, supersample, supersample)
    x = np.broadcast_to((cols - 0.5 * width) / focal, shape)
    y = np.broadcast_to(-(rows - 0.5 * height) / focal, shape)  # image rows grow downwards
    camera = np.stack([x, y, -np.ones(shape)], axis=-1).reshape(height, width, -1, 3)
    world = np.einsum("vij,hwsj->vhwsi", poses[:, :3, :3], camera)
    world /= np.linalg.norm(world, axis=-1, keepdims=True)
    origins = np.broadcast_to(poses[:, None, None, None, :3, 3], world.shape)
    return origins.astype(np.float32), world.astype(np.float32)


def render_views(poses: np.ndarray, image_size: int, focal: float, supersample: int = 2):
    """Anti-aliased images and pixel-centre depths for the given cameras.

    Args:
        poses: [V, 4, 4] camera-to-world matrices.

    Returns:
        images: [V, image_size, image_size, 3] float32 in [0, 1].
        depth: [V, image_size, image_size] float32, 0 where the pixel-centre ray misses.
    """
    if supersample < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}")
    poses = np.asarray(poses, dtype=np.float32)
    num_views = len(poses)
    images = np.zeros((num_views, image_size, image_size, 3), dtype=np.float32)
    depth = np.zeros((num_views, image_size, image_size), dtype=np.float32)
    rays_per_view = image_size * image_size * (supersample**2 + (supersample > 1))
    views_per_batch = max(1, CHUNK_RAYS // rays_per_view)
    for start in range(0, num_views, views_per_batch):
        batch = poses[start:start + views_per_batch]
        centre_origins, centre_directions = generate_rays(batch, image_size, image_size, focal)
        centre_rgb, depth[start:start + len(batch)] = trace(centre_origins, centre_directions)
        if supersample == 1:
            images[start:start + len(batch)] = centre_rgb
        else:
            origins, directions = subpixel_rays(batch, image_size, image_size, focal, supersample)
            sub_rgb, _ = trace(origins, directions)
            images[start:start + len(batch)] = sub_rgb.mean(axis=-2)
    return images, depth


def render_scene(num_views: int = 100, image_size: int = 100, seed: int = 0, supersample: int = 2,
                 radius: float = 4.0) -> dict:
    """A data set of the scene seen from ``num_views`` cameras on the upper hemisphere.

    Returns:
        dict with
        ``images``: [num_views, image_size, image_size, 3] float32 in [0, 1], black background;
        ``poses``: [num_views, 4, 4] float32, ``camera.hemisphere_poses(num_views, radius, seed)``;
        ``focal``: float, ``1.3888889 * image_size``;
        ``near``, ``far``: floats 2.0 and 6.0;
        ``depth``: [num_views, image_size, image_size] float32 distance along each pixel-centre
        unit ray (those of ``camera.generate_rays``) to the first surface, 0 for a miss.
    """
    poses = hemisphere_poses(num_views, radius, seed)
    focal = float(FOCAL_PER_PIXEL * image_size)
    images, depth = render_views(poses, image_size, focal, supersample)
    return {
        "images": images,
        "poses": poses,
        "focal": focal,
        "near": NEAR,
        "far": FAR,
        "depth": depth,
    }

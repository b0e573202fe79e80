"""3D Gaussians seen by a pinhole camera: their projection, their view-dependent colours, and the rasterizer.

The rasterizer is a native op (``native/splats.cc``, library ``splat_ops``) when it can be built, else
``reference_rasterize``: every Gaussian against every pixel in TensorFlow's ops, the op's test oracle, which
follows the same rules in the same float32 arithmetic (the tests hold the two equal, values and gradients). A
trained model's frames take their projection and colours from a native op as well (``native_frame_inputs``,
``native/splat_frame.cc``; no gradient), whose reference is ``frame_inputs``.

Conventions (``nerf_pipeline.camera``'s): a camera is a camera-to-world pose ``c2w [4, 4]`` (OpenGL: the camera
looks down its -z axis, +y up), so a point's depth is ``-z`` in camera coordinates; pixel ``(row, col)`` is
sampled at its centre ``(col + 0.5, row + 0.5)``, in the frame in which the intrinsics ``(fx, fy, cx, cy)`` are
given, so the projection of a camera-space point is ``u = cx + fx x / depth``, ``v = cy - fy y / depth``.

Shapes: ``N`` Gaussians, an image of ``H x W`` pixels.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import tensorflow as tf

from nerf_pipeline.native import build as native_build

LIBRARY = "splat_ops"
TILE = 16  # the native op's tiles are TILE x TILE pixels
NEAR = 0.01  # Gaussians nearer than this (in depth) are culled
DILATION = 0.3  # the low-pass filter: added to the 2D covariance's diagonal, in pixels^2
MAX_ALPHA = 0.99
MIN_ALPHA = 1.0 / 255.0  # a Gaussian fainter than this at a pixel is skipped there
MIN_TRANSMITTANCE = 1e-4  # a pixel stops before the Gaussian that would bring its transmittance below this
# The Jacobian of the projection is taken at a point whose tangent is clamped to the field of view plus 30% of
# its half-width on each side (as 3DGS and gsplat do), so that Gaussians far off-screen do not blow up.
FOV_MARGIN = 0.3


@dataclasses.dataclass(frozen=True)
class Camera:
    """A pinhole camera: pose ``c2w [4, 4]`` (camera-to-world, OpenGL), intrinsics in pixels, image size."""

    c2w: Any
    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    @classmethod
    def from_focal(cls, c2w, focal: float, width: int, height: int) -> Camera:
        """A camera with ``fx = fy = focal`` and its principal point at the image's centre (tiny_nerf's)."""
        return cls(c2w, float(focal), float(focal), 0.5 * width, 0.5 * height, int(width), int(height))

    @property
    def position(self):
        """The camera's centre in world coordinates, ``[3]``."""
        return tf.convert_to_tensor(self.c2w)[:3, 3]


def _as(value, dtype):
    """``value`` in ``dtype``; a Python or NumPy number straight in it (``tf.cast`` would round it to float32 first)."""
    if isinstance(value, (tf.Tensor, tf.Variable)):
        return tf.cast(value, dtype)
    return tf.constant(value, dtype)


# -- projection --------------------------------------------------------------------------------------------------------

def quaternion_rotations(quats):
    """Rotation matrices ``[N, 3, 3]`` of quaternions ``[N, 4]`` (w, x, y, z; normalised here)."""
    squared = tf.reduce_sum(quats * quats, axis=-1, keepdims=True)
    q = quats * tf.math.rsqrt(tf.maximum(squared, _as(1e-24, quats.dtype)))
    w, x, y, z = tf.unstack(q, axis=-1)
    entries = [1.0 - 2.0 * (y * y + z * z), 2.0 * (x * y - w * z), 2.0 * (x * z + w * y),
               2.0 * (x * y + w * z), 1.0 - 2.0 * (x * x + z * z), 2.0 * (y * z - w * x),
               2.0 * (x * z - w * y), 2.0 * (y * z + w * x), 1.0 - 2.0 * (x * x + y * y)]
    return tf.reshape(tf.stack(entries, axis=-1), [-1, 3, 3])


def project(means, log_scales, quats, camera: Camera):
    """Project 3D Gaussians to the image (EWA splatting: the covariance through the perspective map's Jacobian).

    Gaussian i has covariance ``R_i S_i S_i^T R_i^T``, ``S_i = diag(exp(log_scales_i))``, ``R_i`` the rotation of
    ``quats_i``. Its 2D covariance is ``J W Sigma W^T J^T + 0.3 I`` (``W`` world to camera, ``J`` the Jacobian of
    ``(u, v)`` with respect to the camera-space point). In TensorFlow's ops, of any float dtype: differentiable,
    and XLA-compilable.

    Args:
        means: [N, 3] world positions. log_scales: [N, 3]. quats: [N, 4] (w, x, y, z), need not be unit.

    Returns:
        means2d: [N, 2] ``(u, v)`` in pixels (pixel centres at +0.5).
        conics: [N, 3] ``(a, b, c)``, the inverse 2D covariance ``[[a, b], [b, c]]``; 0 where culled.
        depths: [N], ``-z`` in camera coordinates.
        radii: [N] int32, ``ceil(3 sqrt(largest eigenvalue))`` of the 2D covariance, in pixels; 0 for a
            Gaussian culled: nearer than ``NEAR``, off-screen (its square misses the image), degenerate or not
            finite.
    """
    dtype = means.dtype
    cast = lambda value: _as(value, dtype)  # noqa: E731
    c2w = cast(camera.c2w)
    rotation, centre = c2w[:3, :3], c2w[:3, 3]
    fx, fy, cx, cy = cast(camera.fx), cast(camera.fy), cast(camera.cx), cast(camera.cy)
    width, height = cast(camera.width), cast(camera.height)

    finite = (tf.reduce_all(tf.math.is_finite(means), -1) & tf.reduce_all(tf.math.is_finite(log_scales), -1)
              & tf.reduce_all(tf.math.is_finite(quats), -1))
    safe = lambda mask, value, fill: tf.where(mask, value, _as(fill, dtype))  # noqa: E731
    camera_points = tf.matmul(safe(finite[:, None], means, 0.0) - centre, rotation)  # rows: R^T (p - c)
    x, y, z = tf.unstack(camera_points, axis=-1)
    depths = -z
    in_front = finite & (depths >= cast(NEAR))
    depth = safe(in_front, depths, 1.0)
    x, y = safe(in_front, x, 0.0), safe(in_front, y, 0.0)
    u = fx * x / depth + cx
    v = cy - fy * y / depth

    tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
    tx = tf.clip_by_value(x / depth, -(cx / fx + FOV_MARGIN * tan_x), (width - cx) / fx + FOV_MARGIN * tan_x) * depth
    ty = tf.clip_by_value(y / depth, -((height - cy) / fy + FOV_MARGIN * tan_y), cy / fy + FOV_MARGIN * tan_y) * depth
    # J = [[fx / d, 0, fx tx / d^2], [0, -fy / d, -fy ty / d^2]] (d = -z, so du/dz = fx x / d^2).
    j00, j02 = fx / depth, fx * tx / (depth * depth)
    j11, j12 = -fy / depth, -fy * ty / (depth * depth)

    scales = tf.exp(safe(finite[:, None], log_scales, 0.0))
    m = quaternion_rotations(safe(finite[:, None], quats, 1.0)) * scales[:, None, :]  # R S: columns scaled
    wm = tf.einsum("ji,njk->nik", rotation, m)  # W R S, W = rotation^T
    row0 = j00[:, None] * wm[:, 0, :] + j02[:, None] * wm[:, 2, :]  # (J W R S) rows: the covariance is their Gram
    row1 = j11[:, None] * wm[:, 1, :] + j12[:, None] * wm[:, 2, :]
    a = tf.reduce_sum(row0 * row0, -1) + cast(DILATION)
    b = tf.reduce_sum(row0 * row1, -1)
    c = tf.reduce_sum(row1 * row1, -1) + cast(DILATION)
    det = a * c - b * b
    valid = in_front & tf.math.is_finite(det) & (det > 0.0)
    det = safe(valid, det, 1.0)
    conics = tf.where(valid[:, None], tf.stack([c / det, -b / det, a / det], -1), tf.zeros_like(means))

    mid = tf.stop_gradient(0.5 * (a + c))
    largest = mid + tf.sqrt(tf.maximum(mid * mid - tf.stop_gradient(det), 0.0))
    radius = tf.math.ceil(3.0 * tf.sqrt(largest))
    u_, v_ = tf.stop_gradient(u), tf.stop_gradient(v)
    on_screen = (u_ + radius > 0.0) & (u_ - radius < width) & (v_ + radius > 0.0) & (v_ - radius < height)
    visible = valid & on_screen & tf.math.is_finite(radius)
    radii = tf.cast(safe(visible, tf.minimum(radius, cast(2**30)), 0.0), tf.int32)
    return tf.stack([u, v], -1), conics, depths, radii


def opacity_radii(radii, opacities):
    """``project``'s ``radii`` [N] shrunk to the square in which a Gaussian of its opacity can still be drawn.

    The rasterizer skips Gaussian i at a pixel where ``opacity_i exp(-q / 2) < MIN_ALPHA`` (``q``: the pixel's
    squared Mahalanobis distance, ``-2 power``), that is beyond ``q = 2 ln(opacity_i / MIN_ALPHA)``, which is
    less than the 3 standard deviations of ``radii`` for opacities under about 0.35: an opacity of 0.01 reaches
    1.4 of them, 0.1 reaches 2.5. Within the returned square lies every pixel the Gaussian is drawn at, so the
    images and gradients are those of ``radii`` (bit for bit: the pixels left out were skipped), from fewer
    (pixel, Gaussian) pairs visited. ``radii / 3`` bounds the standard deviation from above (``radii`` is its ceiling
    times 3); the margins (1e-3 on ``q``, 1 % and a pixel on the radius) cover the float32 rounding of the conic.
    A Gaussian under ``MIN_ALPHA`` everywhere gets 0 (culled); none gets more than ``radii``. int32, no gradient.
    """
    radii = tf.cast(radii, tf.float32)
    reach = 2.0 * tf.math.log(tf.maximum(tf.cast(opacities, tf.float32), 1e-30) / MIN_ALPHA) + 1e-3
    tight = tf.math.ceil(1.01 * (radii / 3.0) * tf.sqrt(tf.maximum(reach, 0.0)) + 1.0)
    return tf.cast(tf.where(reach > 0.0, tf.minimum(radii, tight), 0.0), tf.int32)


# -- colours -----------------------------------------------------------------------------------------------------------

def sh_basis(directions, degree: int):
    """Real spherical harmonics up to ``degree`` (0–3) of unit directions ``[N, 3]``: ``[N, (degree + 1)^2]``,
    in 3DGS's order and signs (those of ``model.encodings.spherical_harmonics``), in ``directions``' dtype."""
    if not 0 <= degree <= 3:
        raise ValueError(f"the SH degree must be 0 to 3, got {degree}")
    x, y, z = tf.unstack(directions, axis=-1)
    basis = [tf.fill(tf.shape(x), _as(0.28209479177387814, directions.dtype))]
    if degree >= 1:
        basis += [-0.48860251190291987 * y, 0.48860251190291987 * z, -0.48860251190291987 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        basis += [1.0925484305920792 * x * y, -1.0925484305920792 * y * z,
                  0.31539156525251999 * (2.0 * zz - xx - yy), -1.0925484305920792 * x * z,
                  0.54627421529603959 * (xx - yy)]
    if degree >= 3:
        basis += [-0.59004358992664352 * y * (3.0 * xx - yy), 2.8906114426405538 * x * y * z,
                  -0.45704579946446572 * y * (4.0 * zz - xx - yy),
                  0.3731763325901154 * z * (2.0 * zz - 3.0 * xx - 3.0 * yy),
                  -0.45704579946446572 * x * (4.0 * zz - xx - yy), 1.4453057213202769 * z * (xx - yy),
                  -0.59004358992664352 * x * (xx - 3.0 * yy)]
    return tf.stack(basis, axis=-1)


def sh_colors(sh, degree: int, means, camera_position):
    """View-dependent colours ``[N, 3]``: ``max(0, sum_k sh[:, k] Y_k(d) + 0.5)``, ``d`` the unit direction from
    the camera to each mean (3DGS's), over the first ``(degree + 1)^2`` of ``sh [N, K, 3]``'s coefficients."""
    count = (degree + 1) ** 2
    if sh.shape[1] is not None and sh.shape[1] < count:
        raise ValueError(f"degree {degree} needs {count} SH coefficients, sh has {sh.shape[1]}")
    directions = means - _as(camera_position, means.dtype)
    squared = tf.reduce_sum(directions * directions, -1, keepdims=True)
    directions = directions * tf.math.rsqrt(tf.maximum(squared, _as(1e-24, means.dtype)))
    colors = tf.einsum("nk,nkc->nc", sh_basis(directions, degree), sh[:, :count, :]) + 0.5
    return tf.maximum(colors, 0.0)


# -- rasterization -----------------------------------------------------------------------------------------------------

def native_library():
    """The native rasterizer's op library, or ``None`` (``native.build.load``: one warning says why)."""
    return native_build.load(LIBRARY)


def _inputs(means2d, conics, colors, opacities, depths, radii, background):
    """The rasterizer's inputs as float32 (radii int32) tensors, whatever float dtype they come in."""
    floats = [tf.cast(x, tf.float32) for x in (means2d, conics, colors, opacities, depths, background)]
    means2d, conics, colors, opacities, depths, background = floats
    return means2d, conics, colors, opacities, depths, tf.cast(radii, tf.int32), background


def rasterize(means2d, conics, colors, opacities, depths, radii, width: int, height: int, background, *,
              ellipses: bool = True):
    """Alpha-composite projected Gaussians front to back (3DGS's rasterizer).

    At pixel centre ``p``, Gaussian i (drawn when ``radii_i > 0`` and its values are finite, over the pixels
    within its square ``|p - mean_i|_inf <= radii_i``) has ``alpha_i = min(0.99, opacity_i exp(power))``,
    ``power = -0.5 (a dx^2 + c dy^2) - b dx dy`` (skipped where ``power > 0`` or ``alpha_i < 1/255``); in order
    of depth (ties: lower index first) each is blended with weight ``alpha_i T_i`` until the next would bring the
    transmittance ``T`` below 1e-4 (that one is not blended).

    Args:
        means2d [N, 2], conics [N, 3], colors [N, 3], opacities [N] (in [0, 1]), depths [N], radii [N] int:
            ``project``'s and ``sh_colors``' outputs. background: [3].
        ellipses: the native op visits only the pixels and tiles within the box of the ellipse where each
            Gaussian's alpha can reach 1/255 (with margins for float32's rounding) rather than its whole square;
            False: the squares. The same images and gradients bit for bit (a test holds them so); fewer pixels
            visited.

    Returns:
        rgb [H, W, 3] (``background`` weighted by the final transmittance included), depth [H, W] (the blend's
        ``sum_i alpha_i T_i depth_i``, not divided by alpha), alpha [H, W] (``1 - T_final``). Differentiable with
        respect to the means, conics, colours, opacities, depths (through depth) and background.
    """
    inputs = _inputs(means2d, conics, colors, opacities, depths, radii, background)
    library = native_library()
    if library is None:
        return reference_rasterize(*inputs[:6], width, height, inputs[6])
    outputs = library.nerf_splat_rasterize(*inputs, width=int(width), height=int(height), ellipses=bool(ellipses))
    return outputs[0], outputs[1], outputs[2]


@tf.RegisterGradient("NerfSplatRasterize")
def _native_rasterize_gradient(op, grad_rgb, grad_depth, grad_alpha, *unused):
    """The native backward (``NerfSplatRasterizeGrad``) from what the forward saved; the background's in TF ops."""
    library = native_build.load(LIBRARY)
    rgb, depth, alpha, transmittance, last, tile_offsets, tile_entries = op.outputs
    grad_rgb = tf.zeros_like(rgb) if grad_rgb is None else grad_rgb
    grad_depth = tf.zeros_like(depth) if grad_depth is None else grad_depth
    grad_alpha = tf.zeros_like(alpha) if grad_alpha is None else grad_alpha
    grads = library.nerf_splat_rasterize_grad(*op.inputs, transmittance, last, tile_offsets, tile_entries, grad_rgb,
                                              grad_depth, grad_alpha, width=op.get_attr("width"),
                                              height=op.get_attr("height"), ellipses=op.get_attr("ellipses"))
    grad_background = tf.reduce_sum(grad_rgb * transmittance[..., None], axis=[0, 1])
    return (*grads, None, grad_background)


def reference_rasterize(means2d, conics, colors, opacities, depths, radii, width: int, height: int, background):
    """``rasterize`` in TensorFlow's ops: every Gaussian against every pixel (``[H W, N]`` tensors, so for small
    images), differentiable by autodiff and XLA-compilable; the native op's oracle. Same arguments and results."""
    rgb, depth, alpha, _ = reference_composite(means2d, conics, colors, opacities, depths, radii, width, height,
                                               background)
    return rgb, depth, alpha


def reference_composite(means2d, conics, colors, opacities, depths, radii, width: int, height: int, background):
    """``reference_rasterize``'s images and its masks ``{"valid", "blended"}`` ([H W, N + 1] bool, the Gaussians
    in depth order and one invisible Gaussian appended): where a Gaussian passes the alpha tests, and where it is
    blended (``valid & ~blended`` anywhere: some pixel stopped early)."""
    means2d, conics, colors, opacities, depths, radii, background = _inputs(means2d, conics, colors, opacities,
                                                                             depths, radii, background)
    # One invisible Gaussian appended, so that the pixel-by-Gaussian tensors never have zero columns.
    means2d = tf.concat([means2d, tf.zeros([1, 2])], 0)
    conics = tf.concat([conics, tf.zeros([1, 3])], 0)
    colors = tf.concat([colors, tf.zeros([1, 3])], 0)
    opacities = tf.concat([opacities, tf.zeros([1])], 0)
    depths = tf.concat([depths, tf.zeros([1])], 0)
    radii = tf.concat([radii, tf.zeros([1], tf.int32)], 0)

    drawn = ((radii > 0) & tf.reduce_all(tf.math.is_finite(means2d), -1) & tf.reduce_all(tf.math.is_finite(conics), -1)
             & tf.reduce_all(tf.math.is_finite(colors), -1) & tf.math.is_finite(opacities) & tf.math.is_finite(depths))
    # Values of Gaussians not drawn are zeroed, so that neither they nor their gradients can be NaN.
    zeroed = lambda x: tf.where(drawn if x.shape.rank == 1 else drawn[:, None], x, tf.zeros_like(x))  # noqa: E731
    order = tf.argsort(tf.where(drawn, depths, np.inf), stable=True)
    gather = lambda x: tf.gather(x, order)  # noqa: E731
    u, v = tf.unstack(gather(zeroed(means2d)), axis=-1)
    a, b, c = tf.unstack(gather(zeroed(conics)), axis=-1)
    colors, opacities, depths = gather(zeroed(colors)), gather(zeroed(opacities)), gather(zeroed(depths))
    radius = tf.cast(gather(radii), tf.float32)
    drawn = gather(drawn)

    cols = tf.cast(tf.range(width), tf.float32) + 0.5
    rows = tf.cast(tf.range(height), tf.float32) + 0.5
    px = tf.reshape(tf.tile(cols[None, :], [height, 1]), [-1, 1])  # [P, 1], row-major pixels
    py = tf.reshape(tf.tile(rows[:, None], [1, width]), [-1, 1])
    dx = px - u[None, :]  # [P, N]
    dy = py - v[None, :]
    inside = (tf.abs(dx) <= radius) & (tf.abs(dy) <= radius) & drawn[None, :]
    power = -0.5 * (a * dx * dx + c * dy * dy) - b * dx * dy
    gauss = tf.exp(tf.minimum(power, 0.0))
    alpha = tf.minimum(opacities * gauss, MAX_ALPHA)
    valid = inside & (power <= 0.0) & (alpha >= MIN_ALPHA)
    # A pixel blends a valid Gaussian while the transmittance after it stays >= 1e-4; the products are running
    # products in depth order, as the op's loop makes them.
    transmittance_if_blended = tf.math.cumprod(1.0 - tf.where(valid, alpha, 0.0), axis=1)
    blended = valid & (transmittance_if_blended >= MIN_TRANSMITTANCE)
    alpha = tf.where(blended, alpha, 0.0)
    after = tf.math.cumprod(1.0 - alpha, axis=1)
    before = tf.math.cumprod(1.0 - alpha, axis=1, exclusive=True)
    final = after[:, -1]
    weights = alpha * before
    rgb = tf.matmul(weights, colors) + final[:, None] * background[None, :]
    depth = tf.linalg.matvec(weights, depths)
    shape = [height, width]
    return (tf.reshape(rgb, shape + [3]), tf.reshape(depth, shape), tf.reshape(1.0 - final, shape),
            {"valid": valid, "blended": blended})


def frame_inputs(means, log_scales, quats, opacity_logits, sh, degree: int, camera: Camera):
    """What ``rasterize`` takes to draw Gaussians seen by ``camera``: ``(means2d, conics, colors, opacities, depths,
    radii)``, from ``project``, ``sh_colors`` up to ``degree``, ``sigmoid(opacity_logits)``, and ``project``'s radii
    shrunk by ``opacity_radii`` (the same image, from fewer pixels visited). TensorFlow's ops: differentiable, and
    ``native_frame_inputs``' reference."""
    means2d, conics, depths, radii = project(means, log_scales, quats, camera)
    colors = sh_colors(sh, degree, means, camera.position)
    opacities = tf.sigmoid(opacity_logits)
    return means2d, conics, colors, opacities, depths, opacity_radii(radii, opacities)


def native_frame_inputs(means, log_scales, quats, opacity_logits, sh_dc, sh_rest, degree: int, c2w, intrinsics,
                        width: int, height: int):
    """``frame_inputs`` by the native op ``NerfSplatFrameInputs`` (``native/splat_frame.cc``: one pass over the
    Gaussians, on every core), for rendering: no gradient. ``sh_dc [N, 1, 3]`` and ``sh_rest [N, R, 3]`` apart
    (``Gaussians.sh()`` joined), the camera as ``c2w [4, 4]`` and ``intrinsics [4]`` (fx, fy, cx, cy). None when
    the op library is not available."""
    library = native_library()
    if library is None:
        return None
    floats = [tf.cast(x, tf.float32) for x in (means, log_scales, quats, opacity_logits, sh_dc, sh_rest, c2w,
                                                intrinsics)]
    return tuple(library.nerf_splat_frame_inputs(*floats, width=int(width), height=int(height), degree=int(degree)))


def render(means, log_scales, quats, opacity_logits, sh, degree: int, camera: Camera, background,
           rasterizer=rasterize):
    """Gaussians seen by ``camera``: ``project``, ``sh_colors``, then ``rasterizer`` (``rasterize`` or
    ``reference_rasterize``), opacities ``sigmoid(opacity_logits)``. Returns rgb [H, W, 3], depth, alpha [H, W]."""
    means2d, conics, depths, radii = project(means, log_scales, quats, camera)
    colors = sh_colors(sh, degree, means, camera.position)
    return rasterizer(means2d, conics, colors, tf.sigmoid(opacity_logits), depths, radii, camera.width, camera.height,
                      background)

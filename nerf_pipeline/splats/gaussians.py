"""A set of 3D Gaussians as trainable variables, and where the first ones come from.

==================  ===========  ======================================================================
parameter           shape        meaning
==================  ===========  ======================================================================
``means``           [N, 3]       centres, in world units
``log_scales``      [N, 3]       log of the standard deviations along the Gaussian's own axes
``quats``           [N, 4]       its rotation, a quaternion w first (need not be unit: normalised where used)
``opacity_logits``  [N]          opacity = sigmoid(logit)
``sh_dc``           [N, 1, 3]    the degree-0 spherical-harmonics coefficient of each colour channel
``sh_rest``         [N, 15, 3]   the coefficients of degrees 1 to 3 (3DGS's order; see ``rasterizer.sh_basis``)
==================  ===========  ======================================================================

The variables' first dimension is unknown (``[None, ...]``), so their number can change (adaptive density control,
``density_control.py``) by assigning new values: the ``tf.function`` that trains them reads the same variables
whatever their size and is never traced again.

The first Gaussians are the scene's sparse points where it has them (structure from motion or COLMAP:
``scenes.ray_files.sparse_points``), else ``num_random`` points drawn uniformly in the box ``[-bound, bound]^3``
coloured grey (as 3DGS starts NeRF-synthetic scenes); each is isotropic, as large as the mean distance to its 3
nearest neighbours, with opacity 0.1.
"""

from __future__ import annotations

import numpy as np

NAMES = ("means", "log_scales", "quats", "opacity_logits", "sh_dc", "sh_rest")
# The shape of one Gaussian's value of each parameter.
ROW_SHAPES = {"means": (3,), "log_scales": (3,), "quats": (4,), "opacity_logits": (), "sh_dc": (1, 3),
              "sh_rest": (15, 3)}
SH_C0 = 0.28209479177387814  # the degree-0 basis function: colour = SH_C0 * sh_dc + 0.5


def rgb_to_sh(rgb) -> np.ndarray:
    """The degree-0 coefficient that gives colour ``rgb`` (in [0, 1]) from every direction."""
    return (np.asarray(rgb, np.float32) - 0.5) / SH_C0


def logit(p) -> np.ndarray:
    p = np.asarray(p, np.float64)
    return np.log(p / (1.0 - p)).astype(np.float32)


def nearest_neighbour_scales(points: np.ndarray, neighbours: int = 3) -> np.ndarray:
    """Each point's mean distance to its ``neighbours`` nearest other points, ``[P]`` (floored at 1e-7)."""
    from scipy.spatial import cKDTree

    points = np.asarray(points, np.float64)
    count = min(neighbours, len(points) - 1)
    if count < 1:
        return np.full(len(points), 0.01)
    distances, _ = cKDTree(points).query(points, k=count + 1)  # the first neighbour is the point itself
    return np.maximum(distances[:, 1:].mean(axis=1), 1e-7)


def initial_arrays(points: np.ndarray, colors: np.ndarray, opacity: float) -> dict:
    """The parameters (``NAMES``) of Gaussians at ``points [P, 3]`` of colour ``colors [P, 3]`` (in [0, 1]):
    isotropic, their size the mean distance to their 3 nearest neighbours, unrotated, of ``opacity``, with no
    view-dependent colour."""
    points = np.asarray(points, np.float32)
    count = len(points)
    return {"means": points,
            "log_scales": np.repeat(np.log(nearest_neighbour_scales(points))[:, None], 3, axis=1).astype(np.float32),
            "quats": np.tile(np.array([1.0, 0.0, 0.0, 0.0], np.float32), (count, 1)),
            "opacity_logits": np.full(count, logit(opacity), np.float32),
            "sh_dc": rgb_to_sh(colors).reshape(count, 1, 3),
            "sh_rest": np.zeros((count, 15, 3), np.float32)}


def random_points(count: int, bound: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` points uniform in ``[-bound, bound]^3`` and their grey colours: ``([count, 3], [count, 3])``."""
    rng = np.random.default_rng(seed)
    return (rng.uniform(-bound, bound, (count, 3)).astype(np.float32), np.full((count, 3), 0.5, np.float32))


def check_arrays(arrays: dict) -> int:
    """The number of Gaussians in ``arrays`` (a value per name of ``NAMES``); raises ``ValueError`` when a shape
    disagrees."""
    count = len(arrays["means"])
    for name in NAMES:
        shape = np.shape(arrays[name])
        if shape != (count, *ROW_SHAPES[name]):
            raise ValueError(f"'{name}' has shape {shape}; expected {(count, *ROW_SHAPES[name])}")
    return count



def rotation_matrices(quats) -> np.ndarray:
    """Rotation matrices ``[N, 3, 3]`` float64 of quaternions ``[N, 4]`` (w, x, y, z; normalised here, as the
    rasterizer's ``quaternion_rotations``)."""
    q = np.asarray(quats, np.float64)
    q = q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), 1e-12)
    w, x, y, z = q[:, 0], q[:, 1], q[:, 2], q[:, 3]
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1)], axis=-2)


def covariances(log_scales, quats) -> np.ndarray:
    """The world covariances ``R S S R^T`` ``[N, 3, 3]`` float32 of Gaussians of ``log_scales [N, 3]`` and
    ``quats [N, 4]``."""
    m = rotation_matrices(quats) * np.exp(np.asarray(log_scales, np.float64))[:, None, :]  # R S: columns scaled
    return (m @ np.swapaxes(m, -1, -2)).astype(np.float32)


def viewer_arrays(arrays: dict) -> dict:
    """What a Gaussian-splat viewer (viser's ``add_gaussian_splats``) draws of the Gaussians ``arrays``: ``centers
    [N, 3]``, ``covariances [N, 3, 3]``, ``rgbs [N, 3]`` in [0, 1] (degree 0 only: ``0.5 + SH_C0 * sh_dc``) and
    ``opacities [N, 1]`` (sigmoid of the logits), all float32."""
    count = check_arrays(arrays)
    rgbs = np.clip(0.5 + SH_C0 * np.reshape(arrays["sh_dc"], (count, 3)), 0.0, 1.0)
    opacities = 1.0 / (1.0 + np.exp(-np.asarray(arrays["opacity_logits"], np.float64)))
    return {"centers": np.asarray(arrays["means"], np.float32),
            "covariances": covariances(arrays["log_scales"], arrays["quats"]),
            "rgbs": rgbs.astype(np.float32), "opacities": opacities.reshape(count, 1).astype(np.float32)}


class Gaussians:
    """The parameters as ``tf.Variable``s of unknown first dimension (``variables[name]``), float32."""

    def __init__(self, arrays: dict):
        import tensorflow as tf

        check_arrays(arrays)
        self.variables = {name: tf.Variable(np.asarray(arrays[name], np.float32), name=name, trainable=True,
                                            shape=tf.TensorShape([None, *ROW_SHAPES[name]])) for name in NAMES}

    def __getattr__(self, name):
        if name in NAMES:
            return self.__dict__["variables"][name]
        raise AttributeError(name)

    @property
    def count(self) -> int:
        return int(self.variables["means"].value().shape[0])

    def numpy(self) -> dict:
        """The parameters as numpy arrays."""
        return {name: variable.numpy() for name, variable in self.variables.items()}

    def assign(self, arrays: dict) -> None:
        """Replace every parameter (their number may change)."""
        check_arrays(arrays)
        for name in NAMES:
            self.variables[name].assign(np.asarray(arrays[name], np.float32))

    def sh(self):
        """All spherical-harmonics coefficients ``[N, 16, 3]``."""
        import tensorflow as tf

        return tf.concat([self.variables["sh_dc"], self.variables["sh_rest"]], axis=1)

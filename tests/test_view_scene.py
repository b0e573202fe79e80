"""The viewer's scene without a browser: frustums sized to the cameras' spacing, the first view, and the
Gaussians as viser draws them (covariances, colours, opacities)."""

from __future__ import annotations

import numpy as np


def test_frustums_are_sized_to_the_cameras_spacing():
    from nerf_pipeline.view import DEFAULT_FRUSTUM_SCALE, frustum_scale

    angles = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    ring = np.stack([np.cos(angles), np.sin(angles), np.zeros(12)], -1)  # neighbours 2 sin(15°) apart
    np.testing.assert_allclose(frustum_scale(ring), 0.3 * 2 * np.sin(np.pi / 12))
    np.testing.assert_allclose(frustum_scale(100 * ring), 100 * frustum_scale(ring))  # in the scene's units
    assert frustum_scale(ring[:1]) == frustum_scale(np.zeros((3, 3))) == DEFAULT_FRUSTUM_SCALE


def test_the_first_view_looks_at_the_centre_from_outside_the_cameras():
    from nerf_pipeline.view import initial_view

    ring = np.array([[4.0, 0.0, 2.0], [0.0, 4.0, 2.0], [-4.0, 0.0, 2.0]])
    position, look_at = initial_view(ring, bound=1.0)
    np.testing.assert_allclose(look_at, 0.0)
    assert np.linalg.norm(position) > np.linalg.norm(ring, axis=-1).max()
    np.testing.assert_allclose(position / np.linalg.norm(position), ring[0] / np.linalg.norm(ring[0]))
    assert np.linalg.norm(initial_view(np.zeros((0, 3)), bound=1.0)[0]) >= 3.0


def test_gaussians_covariances_and_colours_for_the_viewer():
    from nerf_pipeline.splats import gaussians

    half = np.sqrt(0.5)  # 90 degrees about z: x -> y, y -> -x
    arrays = {"means": np.zeros((2, 3), np.float32), "log_scales": np.log([[1.0, 2.0, 3.0], [0.5, 0.5, 0.5]]),
              "quats": np.array([[2 * half, 0.0, 0.0, 2 * half], [3.0, 0.0, 0.0, 0.0]]),  # not unit
              "opacity_logits": np.array([0.0, 100.0]), "sh_dc": np.array([[[0.0, 10.0, -10.0]]] * 2),
              "sh_rest": np.zeros((2, 15, 3))}
    out = gaussians.viewer_arrays(arrays)
    np.testing.assert_allclose(out["covariances"][0], np.diag([4.0, 1.0, 9.0]), atol=1e-6)  # R S S R^T
    np.testing.assert_allclose(out["covariances"][1], 0.25 * np.eye(3), atol=1e-6)
    np.testing.assert_allclose(out["rgbs"], [[0.5, 1.0, 0.0]] * 2)  # 0.5 + C0 f_dc, clipped
    np.testing.assert_allclose(out["opacities"], [[0.5], [1.0]])
    assert out["centers"].shape == (2, 3) and all(v.dtype == np.float32 for v in out.values())


def test_the_viewer_draws_gaussians_only_for_a_model_made_of_them():
    from nerf_pipeline.methods.nerf import NeRFMethod
    from nerf_pipeline.splats import gaussians
    from nerf_pipeline.splats.method import SplatsMethod
    from nerf_pipeline.view import draw_gaussians

    class Scene:
        def __init__(self):
            self.drawn = []

        def add_gaussian_splats(self, name, centers, covariances, rgbs, opacities, visible):
            self.drawn.append((name, len(centers), visible))
            return name

    scene = Scene()
    assert draw_gaussians(scene, NeRFMethod(model=None)) is None and scene.drawn == []
    rng = np.random.default_rng(0)
    arrays = gaussians.initial_arrays(rng.uniform(-0.5, 0.5, (5, 3)), rng.uniform(0, 1, (5, 3)), 0.5)
    method = SplatsMethod(gaussians.Gaussians(arrays), 0.0, 1.5)
    assert draw_gaussians(scene, method, visible=False) == "/splats" and scene.drawn == [("/splats", 5, False)]

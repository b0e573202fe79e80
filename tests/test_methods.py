"""The method seam (``nerf_pipeline/methods/``): cameras, the registry, and the NeRF behind the protocol rendering
as the renderer and ``appearance_near`` did; the scene's policy for the NeRF (contraction, appearance, refinement)."""

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_params, write_rays

from nerf_pipeline import camera, config, methods, trained_folder
from nerf_pipeline.errors import DataError
from nerf_pipeline.methods import Camera
from nerf_pipeline.methods import nerf as nerf_method
from nerf_pipeline.model.nerf import build_nerf
from nerf_pipeline.model.renderer import ChunkedRenderer
from nerf_pipeline.scenes import ray_files

SAVED_BY_B89C5C3 = Path(__file__).parent / "fixtures" / "saved_by_b89c5c3"


@pytest.fixture(scope="module")
def rays_dir(tmp_path_factory):
    return write_rays(tmp_path_factory.mktemp("rays"), num_views=8, image_size=16, num_val=2)


def model_with_appearance(train_views: int):
    """An untrained hash-grid NeRF with a random appearance embedding and random weights, grid all occupied."""
    cfg = config.from_dict(tiny_params())
    model = build_nerf(cfg.active, near=2.0, far=6.0, contracted=False, bound=1.5, background=0.0, seed=0,
                       appearance_views=train_views)
    model.field.appearance.assign(tf.random.normal(model.field.appearance.shape, seed=4))
    model.field.encoding.table.assign(tf.random.normal(model.field.encoding.table.shape, seed=3) * 0.5)
    return model


def test_a_camera_of_a_view_makes_the_views_rays_and_scales(rays_dir):
    part = ray_files.load(rays_dir, "val")
    cam = Camera.of_view(part, 1)
    for a, b in zip(cam.rays(), part.view_rays(1)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(cam.position, part.poses[1][:3, 3])
    half = cam.resized(8, 4)
    assert (half.height, half.width) == (8, 4)
    np.testing.assert_allclose(half.intrinsics, part.intrinsics[1] * [0.25, 0.5, 0.25, 0.5])
    origins, directions = half.rays()
    assert origins.shape == directions.shape == (8, 4, 3)


def test_the_protocol_renders_as_the_renderer_in_the_nearest_views_appearance(rays_dir):
    """``NeRFMethod.render`` of a held-out camera equals what evaluate and render did before the seam: the
    ChunkedRenderer of the view's rays inside ``appearance_near`` of the training positions."""
    train, val = ray_files.load(rays_dir, "train"), ray_files.load(rays_dir, "val")
    model = model_with_appearance(train.num_views)
    method = nerf_method.NeRFMethod(model, chunk_rays=100, train_poses=train.poses)
    assert isinstance(method, methods.Method)
    renderer = ChunkedRenderer(model, 100)
    for view in range(val.num_views):
        with model.appearance_near(train.poses[:, :3, 3], val.poses[view][:3, 3]):
            expected = renderer(*val.view_rays(view))
        out = method.render(Camera.of_view(val, view))
        np.testing.assert_array_equal(out["rgb"], expected["rgb"])
        np.testing.assert_array_equal(out["depth"], expected["depth"])
        np.testing.assert_array_equal(out["opacity"], expected["acc"])
    # without training poses: the mean appearance, as the viewer and the Logged Model render
    mean = method.with_training_poses(None).render(Camera.of_view(val, 0))
    np.testing.assert_array_equal(mean["rgb"], renderer(*val.view_rays(0))["rgb"])
    assert not np.array_equal(mean["rgb"], method.render(Camera.of_view(val, 0))["rgb"])


def test_a_saved_folder_names_its_method_and_loads_through_the_registry(rays_dir, tmp_path):
    train = ray_files.load(rays_dir, "train")
    method = nerf_method.NeRFMethod(model_with_appearance(train.num_views), chunk_rays=256,
                                    train_poses=train.poses, refine_poses=True)
    trained_folder.write_method(tmp_path, method.name)
    method.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["method.json", "model.keras"]
    assert trained_folder.method_name(tmp_path) == "nerf"
    loaded = methods.load(tmp_path, train_part=train, chunk_rays=256)
    assert isinstance(loaded, nerf_method.NeRFMethod) and loaded.extent() == 1.5 and loaded.background == 0.0
    np.testing.assert_array_equal(loaded.training_poses(), train.poses)
    cam = Camera(camera.look_at([0.0, -4.0, 1.0]), np.array([20.0, 20.0, 8.0, 8.0], np.float32), 16, 16)
    np.testing.assert_array_equal(loaded.render(cam)["rgb"], method.render(cam)["rgb"])
    points = np.array([[0.0, 0.0, 0.0], [0.5, -0.2, 0.1]], np.float32)
    np.testing.assert_allclose(loaded.density(points), method.density(points), atol=1e-6)
    assert loaded.colors(points, np.tile([[0.0, 0.0, -1.0]], (2, 1)).astype(np.float32)).shape == (2, 3)

    (tmp_path / trained_folder.METHOD_FILE).write_text('{"method": "splines"}')
    with pytest.raises(DataError, match="unknown method 'splines'"):
        methods.load(tmp_path)


@pytest.mark.parametrize("preset", ["hashgrid", "keras_example"])
def test_the_saved_fixtures_load_as_nerfs_and_render_as_they_did(preset):
    """A folder without method.json (every folder written before methods had names) is a NeRF's."""
    folder = SAVED_BY_B89C5C3 / preset
    assert trained_folder.method_name(folder) == "nerf"
    method = methods.load(folder)
    expected = dict(np.load(folder / "rays.npz"))
    out = method.render_rays(expected["ray_origins"], expected["ray_directions"])
    raw = method.model.render_rays(tf.constant(expected["ray_origins"]), tf.constant(expected["ray_directions"]))
    np.testing.assert_allclose(raw["rgb"].numpy(), expected["rgb"], rtol=1e-5, atol=1e-5)
    assert out["rgb"].shape == expected["rgb"].shape and np.all(np.isfinite(out["rgb"]))


@pytest.mark.parametrize("contraction, unbounded, expected", [("auto", False, False), ("auto", True, True),
                                                              ("on", False, True), ("off", True, False)])
def test_contraction_follows_the_scene_unless_forced(contraction, unbounded, expected):
    params = tiny_params()
    params["scene"]["contraction"] = contraction
    assert nerf_method.contracted(config.from_dict(params), np.bool_(unbounded)) is expected


@pytest.mark.parametrize("appearance, unbounded, preset, expected", [
    ("auto", False, "hashgrid", False), ("auto", True, "hashgrid", True), ("on", False, "hashgrid", True),
    ("off", True, "hashgrid", False), ("auto", True, "keras_example", False)])
def test_appearance_is_on_for_captures_unless_forced(appearance, unbounded, preset, expected):
    params = tiny_params()
    params["scene"]["appearance"], params["preset"] = appearance, preset
    assert nerf_method.appearance(config.from_dict(params), np.bool_(unbounded)) is expected


@pytest.mark.parametrize("refinement, unbounded, expected", [("auto", False, False), ("auto", True, True),
                                                             ("on", False, True), ("off", True, False)])
def test_camera_refinement_is_on_for_captures_when_auto(refinement, unbounded, expected):
    params = tiny_params()
    params["scene"]["camera_refinement"] = refinement
    assert nerf_method.camera_refinement(config.from_dict(params), np.bool_(unbounded)) is expected


def test_build_makes_the_presets_method_for_the_training_views(rays_dir):
    train = ray_files.load(rays_dir, "train")
    params = tiny_params()
    params["scene"]["appearance"] = "on"
    method = methods.build(config.from_dict(params), train)
    assert method.name == "nerf" and method.model.field.appearance.shape == (train.num_views, 16)
    assert method.tracking_params() == {"model.space": "box", "model.appearance_embedding": "on",
                                        "model.camera_refinement": "off"}
    assert method.training_figures() == {} and "appearance embedding of 16" in method.describe()
    np.testing.assert_array_equal(method.training_poses(), train.poses)


@pytest.mark.parametrize("setting", [{}, {"contraction": "on", "camera_refinement": "on"}])
def test_plan_says_what_build_decides_without_building(rays_dir, setting):
    train = ray_files.load(rays_dir, "train")
    params = tiny_params()
    params["scene"].update({"appearance": "on", **setting})
    cfg = config.from_dict(params)
    assert methods.plan(cfg, train) == methods.build(cfg, train).tracking_params()


def test_a_fresh_process_loads_a_saved_nerf_through_the_registry_alone():
    """``methods.load`` in a process that imported nothing of the model (as the evaluate stage's): the NeRF's Keras
    classes must be registered by the loader itself (the first dvc repro after the seam stopped here)."""
    import subprocess
    import sys
    from pathlib import Path

    folder = Path(__file__).parent / "fixtures" / "saved_by_b89c5c3" / "hashgrid"
    code = ("import sys; from nerf_pipeline import methods; m = methods.load(sys.argv[1]); "
            "print(type(m).__name__, m.name)")
    result = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, timeout=300,
                            env={**__import__("os").environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("nerf")

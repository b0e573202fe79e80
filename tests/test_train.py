"""The train stage's module on tiny data: both presets, batches, the batch check, outputs and the MLflow run."""

import json
import shutil

import numpy as np
import pytest
from conftest import TRAIN_OUTS, mlflow_runs, tiny_params, write_rays

from nerf_pipeline import config
from nerf_pipeline.config import ImageBatchConfig, RayBatchConfig
from nerf_pipeline.errors import DataError
from nerf_pipeline.methods.nerf import load_model
from nerf_pipeline.model.renderer import ChunkedRenderer
from nerf_pipeline.scenes import ray_files
from nerf_pipeline.stages import train
from nerf_pipeline.trained_folder import trained_poses
from nerf_pipeline.training import datasets


@pytest.fixture(scope="module")
def rays_dir(tmp_path_factory):
    return write_rays(tmp_path_factory.mktemp("rays"), num_views=8, image_size=16, num_val=2)


def outs(folder):
    return {name: folder / path for name, path in TRAIN_OUTS.items()}


@pytest.mark.slow
def test_keras_example_preset_trains_on_whole_images(rays_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))  # the MLflow store goes to tmp_path/mlflow.db
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = tiny_params(epochs=2)
    params["preset"] = "keras_example"
    params["presets"]["keras_example"]["steps_per_epoch"] = 3
    cfg = config.from_dict(params)
    metrics = train.run(cfg, in_rays=rays_dir, **outs(tmp_path))
    assert metrics["steps"] == 6 and np.isfinite(metrics["val"]["psnr"])
    # val_psnr is the mean per-view PSNR of the validated views as the saved model renders them.
    val = ray_files.load(rays_dir, "val")
    renderer = ChunkedRenderer(load_model(tmp_path / "out/model/model.keras"), chunk_rays=100)  # several chunks a view
    errors = [np.mean(np.square(renderer(*val.view_rays(v))["rgb"] - val.view_rgb(v)))
              for v in datasets.val_views(val, cfg.validation.max_views)]
    assert metrics["val"]["views"] == len(errors) > 1
    assert metrics["val"]["loss"] == pytest.approx(np.mean(errors), rel=1e-4)
    assert metrics["val"]["psnr"] == pytest.approx(np.mean(-10 * np.log10(errors)), abs=1e-3)
    assert json.loads((tmp_path / "out/train.json").read_text()) == metrics
    frames = np.load(tmp_path / "out/model/progress.npz")["frames"]
    assert frames.shape == (2, 16, 16, 3) and frames.dtype == np.uint8
    assert sorted(p.name for p in (tmp_path / "out/model").iterdir()) == ["method.json", "model.keras", "progress.npz",
                                                                         "run.json"]
    assert (tmp_path / "mlflow.db").is_file()
    history = (tmp_path / "out/history.csv").read_text().splitlines()
    assert history[0] == "epoch,step,loss,psnr,val_loss,val_psnr,epoch_s" and len(history) == 3
    steps = (tmp_path / "out/steps.csv").read_text().splitlines()
    assert steps[0] == "step,loss,psnr" and [line.split(",")[0] for line in steps[1:]] == ["3", "6"]


def test_batches_are_rays_or_whole_views(rays_dir):
    part = ray_files.load(rays_dir, "train")
    (origins, directions), rgb = next(iter(datasets.train_dataset(part, ImageBatchConfig(mode="images", size=5), 0)))
    assert origins.shape == directions.shape == rgb.shape == (5 * 16 * 16, 3)
    batch = RayBatchConfig(mode="rays", size=100, candidate_factor=3)
    (origins, _), rgb = next(iter(datasets.train_dataset(part, batch, seed=0)))
    assert origins.shape == rgb.shape == (300, 3)


def test_streamed_rays_are_the_cameras_rays_and_their_pixels(rays_dir):
    """Rays made in TensorFlow from (view, pixel) equal camera.generate_rays', colours the stored pixels."""
    part = ray_files.load(rays_dir, "train")
    whole = next(iter(datasets.train_dataset(part, ImageBatchConfig(mode="images", size=1), seed=3)))
    (origins, directions), rgb = (tuple(t.numpy() for t in whole[0]), whole[1].numpy())
    view = next(v for v in range(part.num_views) if np.allclose(part.poses[v, :3, 3], origins[0]))
    expected_origins, expected_directions = part.view_rays(view)
    np.testing.assert_allclose(origins, expected_origins.reshape(-1, 3), atol=1e-6)
    np.testing.assert_allclose(directions, expected_directions.reshape(-1, 3), atol=1e-6)
    np.testing.assert_allclose(rgb, part.view_rgb(view).reshape(-1, 3))


def test_resuming_skips_batches_without_changing_them(rays_dir):
    part = ray_files.load(rays_dir, "train")
    batch = RayBatchConfig(mode="rays", size=64, candidate_factor=1)
    batches = [b[1].numpy() for b in datasets.train_dataset(part, batch, seed=0).take(5)]
    resumed = next(iter(datasets.train_dataset(part, batch, seed=0, skip_batches=3)))[1].numpy()
    np.testing.assert_array_equal(resumed, batches[3])


@pytest.mark.parametrize("batch, unit", [({"mode": "rays", "size": 10**6, "candidate_factor": 1}, "rays"),
                                         ({"mode": "images", "size": 7}, "views")])
def test_batch_larger_than_the_data_is_refused(batch, unit):
    params = tiny_params()
    params["presets"]["hashgrid"]["batch"] = batch
    cfg = config.from_dict(params)
    with pytest.raises(DataError, match=f"'presets.hashgrid.batch.size' is {batch['size']} but the training "
                                        f"split has only .* {unit}"):
        datasets.check_batch(cfg, num_train_views=6, num_train_rays=6 * 256)


@pytest.mark.parametrize("batch", [RayBatchConfig(mode="rays", size=64, candidate_factor=2),
                                   ImageBatchConfig(mode="images", size=2)])
def test_batches_with_views_carry_each_rays_view(rays_dir, batch):
    """The view index of each ray is the view whose camera made it; the rays and colours are those without views."""
    part = ray_files.load(rays_dir, "train")
    (origins, directions, views), rgb = next(iter(datasets.train_dataset(part, batch, seed=1, with_views=True)))
    assert views.dtype == "int32" and views.shape == (origins.shape[0],) and len(np.unique(views)) > 1
    np.testing.assert_allclose(origins.numpy(), part.poses[views.numpy(), :3, 3], atol=1e-6)
    (same_origins, same_directions), same_rgb = next(iter(datasets.train_dataset(part, batch, seed=1)))
    for a, b in ((origins, same_origins), (directions, same_directions), (rgb, same_rgb)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.slow
def test_the_train_stage_learns_an_appearance_per_view_when_on(rays_dir, tmp_path, monkeypatch):
    """scene.appearance on: the saved model holds an embedding per training view, the held-out views are validated
    in the appearance of the training views nearest them (not the mean), and the MLflow run says the embedding is
    on."""
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = tiny_params(epochs=1)
    params["scene"]["appearance"] = "on"
    params["presets"]["hashgrid"]["steps_per_epoch"] = 10
    metrics = train.run(config.from_dict(params), in_rays=rays_dir, **outs(tmp_path))
    model = load_model(tmp_path / "out/model")
    appearance = model.field.appearance.numpy()
    assert appearance.shape == (6, 16) and model.field.field_config.appearance_dim == 16
    assert np.all(np.abs(appearance).max(axis=1) > 0)  # every training view's embedding trained (zero at first)
    val, positions = ray_files.load(rays_dir, "val"), ray_files.load(rays_dir, "train").poses[:, :3, 3]
    renderer = ChunkedRenderer(model, 1000)

    def val_loss(near: bool) -> float:
        errors = []
        for v in datasets.val_views(val, 8):
            with model.appearance_near(positions if near else None, val.poses[v][:3, 3]):
                errors.append(np.mean(np.square(renderer(*val.view_rays(v))["rgb"] - val.view_rgb(v))))
        return float(np.mean(errors))

    assert metrics["val"]["loss"] == pytest.approx(val_loss(near=True), rel=1e-4)
    assert metrics["val"]["loss"] != pytest.approx(val_loss(near=False), rel=1e-4)
    _, runs = mlflow_runs(tmp_path)
    assert runs[-1].data.params["model.appearance_embedding"] == "on"
    assert runs[-1].data.params["scene.appearance"] == "on"


@pytest.mark.slow
def test_the_train_stage_refines_the_training_cameras_when_on(rays_dir, tmp_path, monkeypatch):
    """scene.camera_refinement on: the model folder holds the corrected training poses (what export, the viewer and
    render's path read through ``trained_poses``), train.json and MLflow say how far they moved, and the saved
    model holds the corrections."""
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    params = tiny_params(epochs=2)
    params["scene"]["camera_refinement"] = "on"
    params["presets"]["hashgrid"]["steps_per_epoch"] = 10
    metrics = train.run(config.from_dict(params), in_rays=rays_dir, **outs(tmp_path))
    part = ray_files.load(rays_dir, "train")
    with np.load(tmp_path / "out/model/cameras.npz") as cameras:
        corrected, given = cameras["poses"], cameras["given"]
    np.testing.assert_array_equal(given, part.poses)
    model = load_model(tmp_path / "out/model")
    np.testing.assert_allclose(corrected, model.pose_refinement.corrected_poses(part.poses), atol=1e-6)
    np.testing.assert_array_equal(trained_poses(tmp_path / "out/model", part), corrected)
    sizes = metrics["camera_refinement"]
    assert 0 < sizes["rotation_deg_mean"] <= sizes["rotation_deg_max"] < 5  # moved, by a little, in 20 steps
    assert 0 < sizes["translation_mean"] <= sizes["translation_max"]
    assert sizes == model.pose_refinement.sizes()
    _, runs = mlflow_runs(tmp_path)
    assert runs[-1].data.params["model.camera_refinement"] == "on"
    assert runs[-1].data.metrics["camera/rotation_deg_max"] == pytest.approx(sizes["rotation_deg_max"], rel=1e-6)
    assert trained_poses(rays_dir, part) is part.poses  # a model folder without corrections: the part's own


def test_a_checkpoint_of_other_code_is_not_resumed(rays_dir, tmp_path, monkeypatch):
    """DVC reruns train when its code changed; the params and data may be the same. A complete checkpoint of the
    old code must then not be 'resumed' (the new code would train nothing): the package's sources are in the
    fingerprint."""
    from nerf_pipeline.training import checkpoint

    files = sorted((rays_dir / "train").iterdir())
    cfg = config.from_dict(tiny_params())
    key = checkpoint.fingerprint(cfg, files)
    package = tmp_path / "nerf_pipeline"
    shutil.copytree(checkpoint.PACKAGE, package, ignore=shutil.ignore_patterns("__pycache__"))
    assert checkpoint.code_digest(package) == checkpoint.code_digest()
    monkeypatch.setattr(checkpoint, "PACKAGE", package)
    assert checkpoint.fingerprint(cfg, files) == key
    field = package / "model" / "fields.py"
    field.write_text(field.read_text() + "\n# an edit\n")
    assert checkpoint.fingerprint(cfg, files) != key


def test_a_checkpoint_is_resumed_only_with_the_same_params_and_data(rays_dir, tmp_path):
    """The fingerprint covers the params that shape training and the rays' bytes."""
    from nerf_pipeline.training import checkpoint

    files = sorted((rays_dir / "train").iterdir())
    base = config.from_dict(tiny_params())
    key = checkpoint.fingerprint(base, files)
    assert checkpoint.fingerprint(config.from_dict(tiny_params()), files) == key
    for change in ({"seed": 1}, {"epochs": 3}):
        params = {**tiny_params(), **change}
        assert checkpoint.fingerprint(config.from_dict(params), files) != key, change
    params = tiny_params()
    params["presets"]["hashgrid"]["optimizer"]["learning_rate"] = 0.02
    assert checkpoint.fingerprint(config.from_dict(params), files) != key
    params = tiny_params()
    params["render"]["fps"] = 12  # rendering does not shape training
    assert checkpoint.fingerprint(config.from_dict(params), files) == key
    changed = tmp_path / "images.npy"
    changed.write_bytes(files[-1].read_bytes() + b"\0")
    assert checkpoint.fingerprint(base, [*files[:-1], changed]) != key
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "meta.json").write_text('{"fingerprint": "other", "progress": "p.npz", "state": "s.keras"}')
    np.savez(tmp_path / "ck" / "p.npz", frames=np.zeros((1, 2, 2, 3), np.uint8))
    (tmp_path / "ck" / "s.keras").write_bytes(b"")
    assert checkpoint.load(tmp_path / "ck", key) is None


def test_the_resume_point_is_the_matching_checkpoint_else_a_fresh_start(rays_dir, tmp_path):
    from nerf_pipeline.training import checkpoint

    cfg = config.from_dict(tiny_params())
    fresh = checkpoint.resume_point(cfg, rays_dir, tmp_path / "ck")  # no checkpoint folder at all
    assert fresh.epoch == 0 and fresh.run_id is None and fresh.restore(tmp_path / "ck") is None
    assert fresh.record() == {"history": [], "steps": [], "frames": []}
    key = fresh.fingerprint
    (tmp_path / "ck").mkdir()
    rows = {"history": [{"epoch": 1, "step": 4}], "steps": [{"step": 4, "loss": 0.1, "psnr": 10.0}]}
    (tmp_path / "ck" / "meta.json").write_text(json.dumps({"fingerprint": key, "epoch": 1, "run_id": "r", **rows,
                                                           "progress": "p.npz", "state": "s.keras"}))
    np.savez(tmp_path / "ck" / "p.npz", frames=np.ones((1, 2, 2, 3), np.uint8))
    (tmp_path / "ck" / "s.keras").write_bytes(b"")
    resumed = checkpoint.resume_point(cfg, rays_dir, tmp_path / "ck")
    assert resumed.fingerprint == key and resumed.epoch == 1 and resumed.run_id == "r"
    assert resumed.restore(tmp_path / "ck") == (tmp_path / "ck", resumed.meta)
    record = resumed.record()
    assert record["history"] == rows["history"] and record["steps"] == rows["steps"]
    np.testing.assert_array_equal(record["frames"], np.ones((1, 2, 2, 3), np.uint8))
    other = config.from_dict({**tiny_params(), "seed": 1})  # other params: the checkpoint is not theirs
    assert checkpoint.resume_point(other, rays_dir, tmp_path / "ck").epoch == 0

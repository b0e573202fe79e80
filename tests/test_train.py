"""The train stage's module on tiny data: both presets, batch checks, outputs and the MLflow run."""

import json

import numpy as np
import pytest
from conftest import tiny_params

from nerf_pipeline import atomic, config, synthetic, train
from nerf_pipeline.config import BatchConfig
from nerf_pipeline.errors import DataError
from nerf_pipeline.rays import view_rays
from nerf_pipeline.scene import validate


@pytest.fixture(scope="module")
def rays_dir(tmp_path_factory):
    out = synthetic.render_scene(num_views=7, image_size=16, seed=0, supersample=1)
    scene = validate(out["images"], out["poses"], out["focal"], out["near"], out["far"], out["depth"])
    path = tmp_path_factory.mktemp("rays")
    atomic.save_npz(path / "train.npz", **view_rays(scene, range(6)))
    atomic.save_npz(path / "val.npz", **view_rays(scene, [6]))
    return path


def outputs(tmp_path):
    return [tmp_path / name for name in ("model.keras", "train.json", "history.csv", "progress.npz", "run.json",
                                         "checkpoint")]


def test_keras_example_preset_trains_on_whole_images(rays_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))  # the MLflow store goes to tmp_path/mlflow.db
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = tiny_params(epochs=2)
    params["preset"] = "keras_example"
    params["presets"]["keras_example"]["steps_per_epoch"] = 3
    cfg = config.from_dict(params)
    metrics = train.run(cfg, rays_dir, *outputs(tmp_path))
    assert metrics["steps"] == 6 and np.isfinite(metrics["val_psnr"])
    assert json.loads((tmp_path / "train.json").read_text()) == metrics
    frames = np.load(tmp_path / "progress.npz")["frames"]
    assert frames.shape == (2, 16, 16, 3) and frames.dtype == np.uint8
    assert (tmp_path / "mlflow.db").is_file()


def test_images_batch_is_whole_views(rays_dir):
    part = dict(np.load(rays_dir / "train.npz"))
    (origins, directions), rgb = next(iter(train.train_dataset(part, BatchConfig("images", 5), seed=0)))
    assert origins.shape == directions.shape == rgb.shape == (5 * 16 * 16, 3)
    (origins, _), rgb = next(iter(train.train_dataset(part, BatchConfig("rays", 100, candidate_factor=3), seed=0)))
    assert origins.shape == rgb.shape == (300, 3)


@pytest.mark.parametrize("mode, size, unit", [("rays", 10**6, "rays"), ("images", 7, "views")])
def test_batch_larger_than_the_data_is_refused(mode, size, unit):
    params = tiny_params()
    params["presets"]["hashgrid"]["batch"] = {"mode": mode, "size": size}
    cfg = config.from_dict(params)
    with pytest.raises(DataError, match=f"'presets.hashgrid.batch.size' is {size} but the training split has only"):
        train.check_batch(cfg, num_train_views=6, num_train_rays=6 * 256)

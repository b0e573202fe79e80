"""The train stage's module on tiny data: both presets, batches, the batch check, outputs and the MLflow run."""

import json

import numpy as np
import pytest
from conftest import TRAIN_OUTS, tiny_params, write_rays

from nerf_pipeline import config
from nerf_pipeline.config import ImageBatchConfig, RayBatchConfig
from nerf_pipeline.runtime.errors import DataError
from nerf_pipeline.stages import train
from nerf_pipeline.training import datasets


@pytest.fixture(scope="module")
def rays_dir(tmp_path_factory):
    return write_rays(tmp_path_factory.mktemp("rays"), num_views=7, image_size=16)


def outs(folder):
    return {name: folder / path for name, path in TRAIN_OUTS.items()}


@pytest.mark.slow
def test_keras_example_preset_trains_on_whole_images(rays_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))  # the MLflow store goes to tmp_path/mlflow.db
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = tiny_params(epochs=2)
    params["preset"] = "keras_example"
    params["presets"]["keras_example"]["steps_per_epoch"] = 3
    metrics = train.run(config.from_dict(params), in_rays=rays_dir, **outs(tmp_path))
    assert metrics["steps"] == 6 and np.isfinite(metrics["val_psnr"])
    assert json.loads((tmp_path / "out/train.json").read_text()) == metrics
    frames = np.load(tmp_path / "out/progress.npz")["frames"]
    assert frames.shape == (2, 16, 16, 3) and frames.dtype == np.uint8
    assert (tmp_path / "mlflow.db").is_file()
    history = (tmp_path / "out/history.csv").read_text().splitlines()
    assert history[0] == "epoch,loss,psnr,val_loss,val_psnr,epoch_s" and len(history) == 3


def test_batches_are_rays_or_whole_views(rays_dir):
    part = dict(np.load(rays_dir / "train.npz"))
    (origins, directions), rgb = next(iter(datasets.train_dataset(part, ImageBatchConfig(mode="images", size=5), 0)))
    assert origins.shape == directions.shape == rgb.shape == (5 * 16 * 16, 3)
    batch = RayBatchConfig(mode="rays", size=100, candidate_factor=3)
    (origins, _), rgb = next(iter(datasets.train_dataset(part, batch, seed=0)))
    assert origins.shape == rgb.shape == (300, 3)


@pytest.mark.parametrize("batch, unit", [({"mode": "rays", "size": 10**6, "candidate_factor": 1}, "rays"),
                                         ({"mode": "images", "size": 7}, "views")])
def test_batch_larger_than_the_data_is_refused(batch, unit):
    params = tiny_params()
    params["presets"]["hashgrid"]["batch"] = batch
    cfg = config.from_dict(params)
    with pytest.raises(DataError, match=f"'presets.hashgrid.batch.size' is {batch['size']} but the training "
                                        f"split has only .* {unit}"):
        datasets.check_batch(cfg, num_train_views=6, num_train_rays=6 * 256)


@pytest.mark.parametrize("contraction, unbounded, expected", [("auto", False, False), ("auto", True, True),
                                                              ("on", False, True), ("off", True, False)])
def test_contraction_follows_the_scene_unless_forced(contraction, unbounded, expected):
    params = tiny_params()
    params["scene"]["contraction"] = contraction
    assert train.contracted(config.from_dict(params), np.bool_(unbounded)) is expected

"""tf.distribute: the same training on two logical CPU devices (MirroredStrategy) as on one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import yaml
from conftest import REPO, free_port, tiny_params

from nerf_pipeline import config, distribute
from nerf_pipeline.errors import ConfigError

# Logical devices must be made before TensorFlow starts, so each run is a fresh process.
DRIVER = textwrap.dedent("""
    import logging, sys, tensorflow as tf
    logging.basicConfig(level=logging.INFO)
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from nerf_pipeline import config, train
    cfg = config.load("params.yaml")
    train.run(cfg, *sys.argv[1:])
""")


def train_on_two_devices(path, distribute_kind, rays_dir):
    params = tiny_params(epochs=3)
    params["distribute"] = distribute_kind
    params["presets"]["hashgrid"]["jit_compile"] = False  # the same numerics for both runs
    (path / "params.yaml").write_text(yaml.safe_dump(params))
    outs = [str(path / name) for name in ("model.keras", "train.json", "history.csv", "progress.npz", "run.json",
                                          "checkpoint")]
    result = subprocess.run([sys.executable, "-c", DRIVER, str(rays_dir), *outs], cwd=path, capture_output=True,
                            text=True, timeout=600, env={**os.environ, "DVC_ROOT": str(path)})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((path / "train.json").read_text()), result.stderr


@pytest.fixture(scope="module")
def rays_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("rays")
    (path / "params.yaml").write_text(yaml.safe_dump(tiny_params()))
    for name, args in (("download", ["--out-scene", "scene.npz"]),
                       ("split", ["--in-scene", "scene.npz", "--out-split", "split.json"]),
                       ("rays", ["--in-scene", "scene.npz", "--in-split", "split.json", "--out-rays", "rays"])):
        subprocess.run([sys.executable, str(REPO / "stages" / f"{name}.py"), *args], cwd=path, check=True,
                       capture_output=True)
    return path / "rays"


def test_mirrored_on_two_devices_follows_the_single_device_curve(tmp_path, rays_dir):
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    single, _ = train_on_two_devices(tmp_path / "one", "none", rays_dir)
    mirrored, log = train_on_two_devices(tmp_path / "two", "mirrored", rays_dir)
    assert single["replicas"] == 1 and mirrored["replicas"] == 2
    assert "on 2 replica(s)" in log
    # Same global batch, same data; the replicas draw their own sample jitter, so curves agree
    # within noise, not bit for bit.
    assert mirrored["loss"] == pytest.approx(single["loss"], rel=0.25)
    assert mirrored["val_psnr"] == pytest.approx(single["val_psnr"], abs=1.0)
    assert mirrored["val_psnr"] > 17.0  # it learned


def test_multi_worker_needs_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="needs the TF_CONFIG environment variable"):
        distribute.make_strategy("multi_worker")
    assert config.from_dict({"epochs": 1, "distribute": "mirrored"}).distribute == "mirrored"


def test_chief_is_worker_zero_without_a_chief(monkeypatch):
    import tensorflow as tf

    class FakeMultiWorker(tf.distribute.MultiWorkerMirroredStrategy):
        def __init__(self):  # no cluster is started
            pass

    cluster = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}}))
    assert not distribute.is_chief(FakeMultiWorker())
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}}))
    assert distribute.is_chief(FakeMultiWorker())
    assert distribute.is_chief(tf.distribute.get_strategy())


def test_two_workers_on_loopback_train_together_and_only_the_chief_writes(tmp_path, rays_dir):
    workers = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    params = tiny_params(epochs=2)
    params["distribute"] = "multi_worker"
    processes = []
    for index in range(2):
        folder = tmp_path / f"worker{index}"
        folder.mkdir()
        (folder / "params.yaml").write_text(yaml.safe_dump(params))
        outs = ["--out-model", "out/model.keras", "--out-metrics", "out/train.json", "--out-history", "out/h.csv",
                "--out-progress", "out/p.npz", "--out-run-file", "out/run.json", "--out-checkpoint", "out/ck"]
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        processes.append(subprocess.Popen(
            [sys.executable, str(REPO / "stages/train.py"), "--in-rays", str(rays_dir), *outs], cwd=folder,
            env={**os.environ, "TF_CONFIG": json.dumps(tf_config), "DVC_ROOT": str(folder)},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = [p.communicate(timeout=600)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], logs
    chief = json.loads((tmp_path / "worker0/out/train.json").read_text())
    assert chief["replicas"] == 2 and chief["val_psnr"] > 17.0
    assert not (tmp_path / "worker1/out").exists() or not any((tmp_path / "worker1/out").iterdir())
    assert not (tmp_path / "worker1/mlflow.db").exists()  # only the chief logs
    assert "on 2 replica(s)" in logs[1]

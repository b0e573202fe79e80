"""tf.distribute: the same training on two logical CPU devices (MirroredStrategy) as on one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO, TRAIN_OUTS, flags, free_port, make_rays, tiny_params, write_params

from nerf_pipeline import config
from nerf_pipeline.errors import ConfigError
from nerf_pipeline.training import distribute

# Logical devices must be made before TensorFlow starts, so each run is a fresh process.
DRIVER = textwrap.dedent("""
    import logging, sys, tensorflow as tf
    logging.basicConfig(level=logging.INFO)
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from nerf_pipeline import config
    from nerf_pipeline.stages import train
    cfg = config.load("params.yaml")
    train.run(cfg, in_rays=sys.argv[1], **dict(zip(sys.argv[2::2], sys.argv[3::2])))
""")


def train_on_two_devices(path, distribute_kind, rays_dir):
    params = tiny_params(epochs=2)
    params["distribute"] = distribute_kind
    params["presets"]["hashgrid"]["jit_compile"] = False  # the same numerics for both runs
    write_params(path, params)
    outs = [word for name, out in TRAIN_OUTS.items() for word in (name, str(path / out))]
    result = subprocess.run([sys.executable, "-c", DRIVER, str(rays_dir), *outs], cwd=path, capture_output=True,
                            text=True, timeout=600, env={**os.environ, "DVC_ROOT": str(path)})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((path / TRAIN_OUTS["out_metrics"]).read_text()), result.stderr


@pytest.fixture(scope="module")
def rays_dir(tmp_path_factory):
    return make_rays(tmp_path_factory.mktemp("rays"), tiny_params())


@pytest.mark.slow
def test_mirrored_on_two_devices_follows_the_single_device_curve(tmp_path, rays_dir):
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    single, _ = train_on_two_devices(tmp_path / "one", "none", rays_dir)
    mirrored, log = train_on_two_devices(tmp_path / "two", "mirrored", rays_dir)
    assert single["replicas"] == 1 and mirrored["replicas"] == 2
    assert "on 2 replica(s)" in log
    # Same global batch, same data; the replicas draw their own sample jitter, so curves agree
    # within noise, not bit for bit.
    assert mirrored["train"]["loss"] == pytest.approx(single["train"]["loss"], rel=0.25)
    assert mirrored["val"]["psnr"] == pytest.approx(single["val"]["psnr"], abs=1.0)
    assert mirrored["val"]["psnr"] > 17.0  # it learned


def test_multi_worker_needs_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="needs the TF_CONFIG environment variable"):
        distribute.make_strategy("multi_worker")
    params = tiny_params()
    params["distribute"] = "mirrored"
    assert config.from_dict(params).distribute == "mirrored"


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


@pytest.mark.slow
def test_two_workers_on_loopback_train_together_and_only_the_chief_writes(tmp_path, rays_dir):
    workers = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    params = tiny_params(epochs=2)
    params["distribute"] = "multi_worker"
    processes = []
    for index in range(2):
        folder = tmp_path / f"worker{index}"
        folder.mkdir()
        write_params(folder, params)
        outs = flags(**TRAIN_OUTS)
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        processes.append(subprocess.Popen(
            [sys.executable, str(REPO / "stages/train.py"), "--in-rays", str(rays_dir), *outs], cwd=folder,
            env={**os.environ, "TF_CONFIG": json.dumps(tf_config), "DVC_ROOT": str(folder)},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = [p.communicate(timeout=600)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], logs
    chief = json.loads((tmp_path / "worker0/out/train.json").read_text())
    assert chief["replicas"] == 2 and chief["val"]["psnr"] > 17.0
    assert not (tmp_path / "worker1/out").exists() or not any((tmp_path / "worker1/out").iterdir())
    assert not (tmp_path / "worker1/mlflow.db").exists()  # only the chief logs
    assert "on 2 replica(s)" in logs[1]

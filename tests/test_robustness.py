"""Bad input is refused clearly and loses nothing; interrupted training resumes (issue: nothing lost).

Every case runs the real stage script, as DVC would, and checks the message, the exit status
(2 for a user mistake, with no traceback) and that no out was written.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import yaml
from conftest import REPO, TRAIN_OUTS, assert_user_error, flags, make_rays, mlflow_runs, stage, tiny_params
from conftest import write_params as write_params_file

from nerf_pipeline import camera


def write_params(path, **changes):
    """The tiny params with ``changes`` merged in (a mapping merges into its section)."""
    params = tiny_params()
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(params.get(key), dict):
            params[key] = {**params[key], **value}
        else:
            params[key] = value
    write_params_file(path, params)


def good_arrays(n=4, size=8):
    return {"images": np.full((n, size, size, 3), 0.5, np.float32),
            "poses": camera.hemisphere_poses(n, 4.0, seed=0), "focal": np.float64(10.0)}


def download(tmp_path, arrays=None, raw: bytes | None = None, **params):
    """Run the download stage on a local .npz made of ``arrays`` (or ``raw`` bytes)."""
    source = tmp_path / "input.npz"
    if raw is not None:
        source.write_bytes(raw)
    elif arrays is not None:
        np.savez(source, **arrays)
    write_params(tmp_path, data={"source": str(source)}, **params)
    return stage("download", "--out-scene", "out/scene", cwd=tmp_path)


def outs(tmp_path):
    if not (tmp_path / "out").exists():
        return []
    return sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "out").rglob("*"))


# ----------------------------------------------------------------------------- bad data files

def npz_bytes(arrays) -> bytes:
    import io
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


BAD_FILES = {
    "missing file": (None, None, "input.npz: file not found"),
    "truncated": (None, npz_bytes(good_arrays())[:300], "not a readable .npz file"),
    "corrupt": (None, b"PK\x03\x04" + bytes(range(256)) * 8, "not a readable .npz file"),
    "not a zip": (None, b"hello, world", "not a readable .npz file"),
    "missing key": ({k: v for k, v in good_arrays().items() if k != "focal"}, None, "missing key(s) focal"),
    "wrong image shape": ({**good_arrays(), "images": np.zeros((4, 8, 8), np.float32)}, None,
                          "'images' must have shape (N, H, W, 3); got (4, 8, 8)"),
    "wrong image dtype": ({**good_arrays(), "images": np.zeros((4, 8, 8, 3), np.int64)}, None,
                          "'images' must be uint8 or float; got dtype int64"),
    "wrong pose shape": ({**good_arrays(), "poses": np.zeros((4, 4))}, None, "'poses' must have shape (N, 4, 4)"),
    "string poses": ({**good_arrays(), "poses": np.full((4, 4, 4), "x")}, None, "'poses' must be floats"),
    "floats above 1": ({**good_arrays(), "images": np.full((4, 8, 8, 3), 255.0, np.float32)}, None,
                       "float 'images' must lie in [0, 1]; found values in [255, 255]"),
    "NaN image": ({**good_arrays(), "images": np.full((4, 8, 8, 3), np.nan, np.float32)}, None,
                  "'images' contains NaN or Inf"),
    "Inf pose": ({**good_arrays(), "poses": np.where(np.eye(4, dtype=bool), np.inf, 0.0)[None].repeat(4, 0)}, None,
                 "'poses' contains NaN or Inf"),
    "skewed rotation": ({**good_arrays(), "poses": camera.hemisphere_poses(4, 4.0, 0) @ np.diag([1.0, 1.3, 1.0, 1.0])},
                        None, "is not orthonormal"),
    "zero focal": ({**good_arrays(), "focal": np.float64(0.0)}, None,
                   "'focal' is 0; it must be a positive, finite number of pixels"),
    "negative focal": ({**good_arrays(), "focal": np.float64(-5.0)}, None,
                       "'focal' is -5; it must be a positive, finite number of pixels"),
    "count mismatch": ({**good_arrays(), "poses": camera.hemisphere_poses(3, 4.0, seed=0)}, None,
                       "4 images but 3 poses"),
    "near after far": ({**good_arrays(), "near": np.float32(7.0), "far": np.float32(6.0)}, None,
                       "need 0 <= near < far; got near=7.0, far=6.0"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_scene_file_is_refused(tmp_path, case):
    arrays, raw, message = BAD_FILES[case]
    result = download(tmp_path, arrays=arrays, raw=raw)
    assert_user_error(result, "input.npz", message)
    assert outs(tmp_path) == []


def test_uint8_and_float_images_are_both_accepted(tmp_path):
    for images in (np.full((4, 8, 8, 3), 255, np.uint8), np.full((4, 8, 8, 3), 1.0, np.float32)):
        result = download(tmp_path, arrays={**good_arrays(), "images": images})
        assert result.returncode == 0, result.stderr
        stored = np.load(tmp_path / "out" / "scene" / "images.npy")
        assert stored.dtype == np.uint8 and stored.max() == 255


# ----------------------------------------------------------------------------- bad params

@pytest.mark.parametrize("changes, messages", [
    ({"epoch": 3}, ["unknown key 'epoch'. Did you mean 'epochs'?"]),
    ({"epochs": 0}, ["'epochs' must be >= 1; got 0"]),
    ({"epochs": 1.5}, ["'epochs' must be a whole number; got 1.5"]),
    ({"split": {"val_fraction": 1.2}}, ["'split.val_fraction' must be < 1; got 1.2"]),
    ({"data": {"near": 6.0, "far": 2.0}}, ["'data.near' must be below data.far"]),
    ({"data": {"source": "synthetc"}}, ["'data.source' is 'synthetc': no such folder", "Did you mean 'synthetic'?"]),
])
def test_bad_params_are_refused_before_any_work(tmp_path, changes, messages):
    write_params(tmp_path, **changes)
    result = stage("download", "--out-scene", "out/scene", cwd=tmp_path)
    assert_user_error(result, *messages)
    assert outs(tmp_path) == []


def test_too_few_views_are_refused_at_download(tmp_path):
    result = download(tmp_path, arrays=good_arrays(n=2))
    assert_user_error(result, "input.npz: 2 views, but a scene needs at least 3, 2 to train on and 1 to validate on")
    assert outs(tmp_path) == []


def test_too_few_views_for_the_split(tmp_path):
    assert download(tmp_path, arrays=good_arrays(n=3), split={"val_fraction": 0.9}).returncode == 0
    assert stage("poses", "--in-scene", "out/scene", "--out-cameras", "out/cameras.npz", cwd=tmp_path).returncode == 0
    result = stage("split", "--in-cameras", "out/cameras.npz", "--out-split", "out/split.json", cwd=tmp_path)
    assert_user_error(result, "the scene has 3 views: too few for split.val_fraction = 0.9")
    assert "out/split.json" not in outs(tmp_path)


def test_unwritable_output_folder(tmp_path):
    (tmp_path / "blocker").write_text("a file where a folder should be")
    write_params(tmp_path)
    result = stage("download", "--out-scene", "blocker/scene", cwd=tmp_path)
    assert_user_error(result, "cannot write the output 'blocker/scene'", "is not writable")
    assert (tmp_path / "blocker").read_text() == "a file where a folder should be"


# ----------------------------------------------------------------------------- downloads

class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serve(folder):
    """An HTTP server on loopback serving ``folder``."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=folder))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def test_tiny_nerf_download_is_checked_against_its_sha256(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    np.savez(served / "tiny_nerf_data.npz", **good_arrays())
    digest = hashlib.sha256((served / "tiny_nerf_data.npz").read_bytes()).hexdigest()
    with serve(served) as url:
        write_params(tmp_path, data={"source": "tiny_nerf", "tiny_nerf_url": f"{url}/tiny_nerf_data.npz",
                                     "tiny_nerf_sha256": "0" * 64})
        result = stage("download", "--out-scene", "out/scene", cwd=tmp_path)
        assert_user_error(result, f"sha256 {digest} does not match the pinned 'data.tiny_nerf_sha256'")
        assert outs(tmp_path) == []

        write_params(tmp_path, data={"source": "tiny_nerf", "tiny_nerf_url": f"{url}/missing.npz"})
        assert_user_error(stage("download", "--out-scene", "out/scene", cwd=tmp_path), "HTTP 404")

        write_params(tmp_path, data={"source": "tiny_nerf", "tiny_nerf_url": f"{url}/tiny_nerf_data.npz",
                                     "tiny_nerf_sha256": digest})
        result = stage("download", "--out-scene", "out/scene", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert np.load(tmp_path / "out" / "scene" / "images.npy").shape == (4, 8, 8, 3)


def test_unreachable_url_fails_at_once(tmp_path):
    write_params(tmp_path, data={"source": "tiny_nerf", "tiny_nerf_url": "http://127.0.0.1:9/tiny_nerf_data.npz",
                                 "download_retries": 1})
    start = time.perf_counter()
    result = stage("download", "--out-scene", "out/scene", cwd=tmp_path)
    assert_user_error(result, "http://127.0.0.1:9/tiny_nerf_data.npz", "data.source: synthetic")
    assert time.perf_counter() - start < 30
    assert outs(tmp_path) == []


# ----------------------------------------------------------------------------- training

def train_args():
    return flags(in_rays="rays", **TRAIN_OUTS)


@pytest.fixture(scope="module")
def rays_project(tmp_path_factory):
    """A folder with tiny precomputed rays (7 views of 16 px), made by the real stages."""
    params = tiny_params()
    params["synthetic"].update(num_views=7, image_size=16)
    path = tmp_path_factory.mktemp("rays_project")
    make_rays(path, params)
    return path


def train_in(tmp_path, rays_project, env=None, **changes):
    """Run the train stage in ``tmp_path`` on the shared rays, with params changed by ``changes``."""
    if not (tmp_path / "rays").exists():
        os.symlink(rays_project / "rays", tmp_path / "rays")
    params = yaml.safe_load((rays_project / "params.yaml").read_text())
    params.update(changes)
    write_params_file(tmp_path, params)
    return stage("train", *train_args(), cwd=tmp_path, env={"DVC_ROOT": str(tmp_path), **(env or {})})


@pytest.mark.slow
def test_batch_larger_than_the_data(tmp_path, rays_project):
    params = tiny_params()
    params["presets"]["hashgrid"]["batch"]["size"] = 5000  # 5 train views of 16 x 16 = 1280 rays
    result = train_in(tmp_path, rays_project, presets=params["presets"])
    assert_user_error(result, "'presets.hashgrid.batch.size' is 5000 but the training split has only 1280 rays")
    assert outs(tmp_path) == [] and not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_unreachable_tracking_server_is_reported_before_training(tmp_path, rays_project):
    start = time.perf_counter()
    result = train_in(tmp_path, rays_project, env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"})
    assert_user_error(result, "cannot use the MLflow tracking store http://127.0.0.1:9")
    assert "Epoch 1" not in result.stdout
    assert time.perf_counter() - start < 120
    assert outs(tmp_path) == []


@pytest.mark.slow
def test_divergence_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, rays_project):
    params = tiny_params(epochs=20)
    # A learning rate that grows 10^1.7-fold per epoch of 5 steps: fine at first, divergent soon after.
    params["presets"]["hashgrid"]["optimizer"].update(learning_rate=1e-4, final_learning_rate=1e30)
    params["presets"]["hashgrid"]["steps_per_epoch"] = 5
    result = train_in(tmp_path, rays_project, epochs=20, presets=params["presets"])
    assert_user_error(result, "training diverged: the loss became", "the checkpoint of the last complete epoch")
    meta = json.loads((tmp_path / "out/checkpoint/meta.json").read_text())
    assert meta["epoch"] >= 1 and all(np.isfinite(row["loss"]) for row in meta["history"])
    assert outs(tmp_path)[0] == "out/checkpoint" and all(p.startswith("out/checkpoint") for p in outs(tmp_path))


@pytest.mark.slow
def test_killed_training_resumes_from_its_last_epoch(tmp_path, rays_project):
    """kill -9 in the middle of training; the rerun continues from the last checkpoint and ends
    where an uninterrupted run ends. (That a checkpoint of other params is not resumed from: test_train.)"""
    epochs = 4
    reference_dir, resumed_dir = tmp_path / "reference", tmp_path / "resumed"
    reference_dir.mkdir()
    resumed_dir.mkdir()
    assert train_in(reference_dir, rays_project, epochs=epochs).returncode == 0
    reference = json.loads((reference_dir / "out/train.json").read_text())

    os.symlink(rays_project / "rays", resumed_dir / "rays")
    params = yaml.safe_load((rays_project / "params.yaml").read_text())
    params["epochs"] = epochs
    write_params_file(resumed_dir, params)
    process = subprocess.Popen([sys.executable, str(REPO / "stages/train.py"), *train_args()], cwd=resumed_dir,
                               env={**os.environ, "DVC_ROOT": str(resumed_dir)}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    meta_path = resumed_dir / "out/checkpoint/meta.json"
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if meta_path.exists() and json.loads(meta_path.read_text())["epoch"] >= 2:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = json.loads(meta_path.read_text())["epoch"]
    assert 2 <= killed_at < epochs, killed_at
    assert not (resumed_dir / "out/model").exists()

    result = train_in(resumed_dir, rays_project, epochs=epochs)
    assert result.returncode == 0, result.stderr
    assert f"resuming from the checkpoint of epoch {killed_at}" in result.stderr
    resumed = json.loads((resumed_dir / "out/train.json").read_text())
    assert resumed["resumed_from_epoch"] == killed_at
    assert resumed["val"]["psnr"] == pytest.approx(reference["val"]["psnr"], abs=0.05)
    assert resumed["train"]["loss"] == pytest.approx(reference["train"]["loss"], rel=0.02)
    history = (resumed_dir / "out/history.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in history[1:]] == [str(e) for e in range(1, epochs + 1)]

    _, (first, second) = mlflow_runs(resumed_dir)
    assert first.info.status == "KILLED" and second.info.status == "FINISHED"
    assert second.data.tags["resumes_run"] == first.info.run_id
    assert second.data.tags["resumed_from_epoch"] == str(killed_at)


@pytest.mark.slow
def test_terminated_training_ends_its_mlflow_run_as_killed(tmp_path, rays_project):
    os.symlink(rays_project / "rays", tmp_path / "rays")
    params = yaml.safe_load((rays_project / "params.yaml").read_text())
    params["epochs"] = 50
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    process = subprocess.Popen([sys.executable, str(REPO / "stages/train.py"), *train_args()], cwd=tmp_path,
                               env={**os.environ, "DVC_ROOT": str(tmp_path)}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not (tmp_path / "out/checkpoint/meta.json").exists():
        time.sleep(0.05)
    process.terminate()  # SIGTERM, as `kill` or a scheduler sends
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "[train] interrupted" in stderr and "Traceback" not in stderr
    _, (run,) = mlflow_runs(tmp_path)
    assert run.info.status == "KILLED"
    assert not (tmp_path / "out/model").exists()

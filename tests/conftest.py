"""Shared helpers and fixtures: tiny params, stage scripts run as DVC runs them, throw-away DVC projects,
MLflow stores read back through the MLflow client.

Tests that run training, a stage script with TensorFlow, or DVC are marked ``slow``
(``python -m pytest -m "not slow"`` runs the rest in under two minutes).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
PROJECT_FILES = ("dvc.yaml", "params.yaml", "stages", "nerf_pipeline", "camera_paths", ".dvcignore", ".gitignore",
                 ".dvc/plots")
DVC = [sys.executable, "-m", "dvc"]
TRAIN_OUTS = {"out_model": "out/model", "out_metrics": "out/train.json", "out_history": "out/history.csv",
              "out_steps": "out/steps.csv", "out_checkpoint": "out/checkpoint"}


def tiny_params(epochs: int = 2) -> dict:
    """The repo's params.yaml shrunk to seconds: 8 views of 24 px, a small hash grid, 12 video frames,
    a coarse mesh."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["epochs"] = epochs
    params["synthetic"].update(num_views=8, image_size=24)
    preset = params["presets"]["hashgrid"]
    preset["steps_per_epoch"] = 25
    preset["batch"]["size"] = 512
    preset["sampler"].update(warmup_steps=16, update_every=8, num_march=64, grid_resolution=32)
    # (4 levels of 2^12 were too few: on some seeds the colour network collapsed to black)
    preset["field"].update(num_levels=8, log2_table_size=14, max_resolution=64)
    params["render"]["num_frames"] = 12
    params["export"].update(resolution=32, num_points=2000)
    return params


def write_params(folder: Path, params: dict) -> Path:
    path = Path(folder) / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def run(cmd, cwd, env=None, check=True, timeout=600) -> subprocess.CompletedProcess:
    """Run a command; with ``check``, fail the test with its output if it fails."""
    result = subprocess.run(cmd, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                            timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{cmd} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def stage(name: str, *args, cwd, env=None, timeout=600) -> subprocess.CompletedProcess:
    """Run the stage script ``stages/<name>.py`` with ``args``, as DVC would (never raises on failure)."""
    return run([sys.executable, str(REPO / "stages" / f"{name}.py"), *args], cwd, env=env, check=False,
               timeout=timeout)


def flags(**paths) -> list[str]:
    """``in_rays="rays"`` → ``["--in-rays", "rays"]``."""
    return [word for name, path in paths.items() for word in ("--" + name.replace("_", "-"), str(path))]


def assert_user_error(result, *fragments) -> None:
    """A refused user mistake: exit status 2, no traceback, and each fragment in the (re-wrapped) message."""
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr
    message = " ".join(result.stderr.split())  # the message is wrapped to the terminal's width
    for fragment in fragments:
        assert fragment in message, result.stderr


DATA_STAGES = (("download", dict(out_scene="scene")),
               ("poses", dict(in_scene="scene", out_cameras="cameras.npz")),
               ("split", dict(in_cameras="cameras.npz", out_split="split.json")),
               ("rays", dict(in_scene="scene", in_cameras="cameras.npz", in_split="split.json", out_rays="rays")))


def make_rays(folder: Path, params: dict) -> Path:
    """``folder/rays``, made from ``params`` by the real download, poses, split and rays stage scripts."""
    folder.mkdir(parents=True, exist_ok=True)
    write_params(folder, params)
    for name, paths in DATA_STAGES:
        result = stage(name, *flags(**paths), cwd=folder)
        assert result.returncode == 0, result.stderr[-3000:]
    return folder / "rays"


def run_data_stages(folder: Path, params: dict) -> Path:
    """The download, poses, split and rays stages run in this process (their ``run``) into ``folder``;
    returns ``folder``, which then holds ``scene/``, ``cameras.npz``, ``split.json`` and ``rays/``."""
    from nerf_pipeline import config
    from nerf_pipeline.stages import download, poses, rays, split

    cfg = config.from_dict(params)
    folder.mkdir(parents=True, exist_ok=True)
    modules = {"download": download, "poses": poses, "split": split, "rays": rays}
    for name, paths in DATA_STAGES:
        modules[name].run(cfg, **{key: folder / value for key, value in paths.items()})
    return folder


def write_rays(folder: Path, num_views: int = 7, image_size: int = 16, num_val: int = 1) -> Path:
    """A rays folder of the built-in scene made in this process (no stage scripts): the last
    ``num_val`` views validate."""
    from nerf_pipeline.scenes import ray_files, synthetic

    out = synthetic.render_scene(num_views=num_views, image_size=image_size, seed=0, supersample=1)
    intrinsics = [out["focal"], out["focal"], image_size / 2, image_size / 2]
    parts = {"train": range(num_views - num_val), "val": range(num_views - num_val, num_views)}
    for part, views in parts.items():
        writer = ray_files.PartWriter(folder, part, len(views), image_size, image_size, with_depth=True)
        for view in views:
            writer.add((out["images"][view] * 255 + 0.5).astype(np.uint8), out["depth"][view])
        writer.finish(out["poses"][list(views)], [intrinsics] * len(views), list(views), out["near"], out["far"],
                      unbounded=False)
    return folder


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_project(path: Path, params: dict) -> Path:
    """A copy of the project in ``path``: its own git repo and DVC repo, first commit made."""
    path.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, path / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, path / name)
    shutil.move(path / ".dvc", path / ".dvc-files")  # `dvc init` wants no .dvc folder; its plots go back after
    write_params(path, params)
    run(["git", "init", "-q", "-b", "main"], path)
    run(["git", "config", "user.email", "tests@example.invalid"], path)
    run(["git", "config", "user.name", "tests"], path)
    run(DVC + ["init", "-q"], path)
    shutil.move(path / ".dvc-files" / "plots", path / ".dvc" / "plots")
    (path / ".dvc-files").rmdir()
    run(DVC + ["config", "core.analytics", "false"], path)
    run(DVC + ["config", "plots.html_template", "plots/offline.html"], path)
    run(["git", "add", "-A"], path)
    run(["git", "commit", "-qm", "project"], path)
    return path


def mlflow_runs(store) -> tuple:
    """``(client, runs)`` of the experiment ``nerf-pipeline`` in ``store`` (a tracking URI, or a project
    folder with its ``mlflow.db``), oldest first."""
    import mlflow

    uri = store if isinstance(store, str) else f"sqlite:///{Path(store) / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("nerf-pipeline")
    if experiment is None:
        return client, []
    return client, client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


def psnr(a, b) -> float:
    return float(-10 * np.log10(np.mean((np.asarray(a) - np.asarray(b)) ** 2)))


# What MLflow's fluent API writes into os.environ, for subprocesses to inherit: ``set_tracking_uri`` the store,
# ``set_experiment`` the experiment's id (of that store).
MLFLOW_ENVIRONMENT = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")


def _forget_mlflow_environment() -> None:
    for name in MLFLOW_ENVIRONMENT:
        os.environ.pop(name, None)


_forget_mlflow_environment()  # stage processes log to their project's own store unless a test says otherwise


@pytest.fixture(autouse=True)
def mlflow_environment_stays_put():
    """A test that connects to a store in this process (``tracking.connect``, ``mlflow.set_tracking_uri``) leaves
    ``MLFLOW_TRACKING_URI`` and ``MLFLOW_EXPERIMENT_ID`` in ``os.environ``; the stage processes of every later test
    on this worker would inherit them, and log to that test's store: the shared project's ``dvc repro`` trained into
    another test's store once (CI, two workers). Removed after each test, not only before it: a session fixture set
    up for the next test runs before that test's own fixtures. (``monkeypatch.delenv`` of an unset variable
    records nothing to undo, so it cannot do this.)"""
    _forget_mlflow_environment()
    yield
    _forget_mlflow_environment()


@pytest.fixture(scope="session")
def reproduced_project(tmp_path_factory):
    """One tiny project reproduced once by the real ``dvc repro`` and committed, shared by the end-to-end
    tests (which leave its committed state as they found it): ``(path, repro result, its MLflow run id)``."""
    path = make_project(tmp_path_factory.mktemp("project"), tiny_params(epochs=2))
    # MLflow samples system metrics every 10 s by default; on a fast machine the tiny train stage ends sooner
    result = run(DVC + ["repro"], path, env={"MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1"})
    first_run = json.loads((path / "models/trained/run.json").read_text())["run_id"]
    run(["git", "add", "-A"], path)
    run(["git", "commit", "-qm", "first repro"], path)
    return path, result, first_run


def count_video_frames(path) -> int:
    """Decode a video to the end and count its frames (the package writes videos; only tests count them)."""
    import imageio.v2 as imageio

    with imageio.get_reader(path, format="FFMPEG") as reader:
        return sum(1 for _ in reader)


@pytest.fixture
def params_file(tmp_path):
    """Write a params mapping to a file in tmp_path and return its path."""

    def write(params: dict, name: str = "params.yaml") -> Path:
        target = tmp_path / name
        target.write_text(yaml.safe_dump(params, sort_keys=False))
        return target

    return write

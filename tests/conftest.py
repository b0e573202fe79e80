"""Shared fixtures: tiny configurations and throw-away copies of the project as real DVC repos."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
PROJECT_FILES = ("dvc.yaml", "params.yaml", "stages", "nerf_pipeline", ".dvcignore", ".gitignore")


def tiny_params(epochs: int = 2) -> dict:
    """The repo's params.yaml shrunk to seconds: 8 views of 24 px, a small hash grid, 12 video frames."""
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
    return params


def run(cmd, cwd, env=None, check=True, timeout=600) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                            timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{cmd} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


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
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q", "-b", "main"], path)
    run(["git", "config", "user.email", "tests@example.invalid"], path)
    run(["git", "config", "user.name", "tests"], path)
    run([sys.executable, "-m", "dvc", "init", "-q"], path)
    run([sys.executable, "-m", "dvc", "config", "core.analytics", "false"], path)
    run(["git", "add", "-A"], path)
    run(["git", "commit", "-qm", "project"], path)
    return path


@pytest.fixture
def write_params(tmp_path):
    """Write a params mapping to a file in tmp_path and return its path."""

    def write(params: dict, name: str = "params.yaml") -> Path:
        target = tmp_path / name
        target.write_text(yaml.safe_dump(params, sort_keys=False))
        return target

    return write

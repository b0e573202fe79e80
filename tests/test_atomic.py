"""Atomic writes: all or nothing, ordinary permissions, and the process umask left alone."""

import os
import stat

import numpy as np
import pytest

from nerf_pipeline.runtime import atomic


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_outputs_get_the_modes_of_a_plain_open_and_mkdir(tmp_path, umask_022):
    atomic.write_text(tmp_path / "a.txt", "hello")
    with atomic.atomic_dir(tmp_path / "folder") as tmp:
        (tmp / "inside.txt").write_text("x")
    assert mode(tmp_path / "a.txt") == 0o644 and mode(tmp_path / "folder") == 0o755
    assert (tmp_path / "a.txt").read_text() == "hello" and (tmp_path / "folder/inside.txt").read_text() == "x"


def test_the_process_umask_is_never_changed(tmp_path, monkeypatch):
    """Setting the umask, even for a moment, changes the mode of files that other threads (TensorFlow's,
    MLflow's) create meanwhile: atomic writes must not touch it."""
    def refuse(mask):
        raise AssertionError(f"os.umask({mask:o}) called")

    monkeypatch.setattr(os, "umask", refuse)
    atomic.write_json(tmp_path / "a.json", {"x": 1})
    atomic.save_npz(tmp_path / "a.npz", x=np.zeros(3))
    with atomic.atomic_dir(tmp_path / "folder"):
        pass
    with atomic.atomic_dir(tmp_path / "folder"):  # replacing an existing folder too
        pass


def test_a_failed_write_leaves_the_old_output_and_no_temporary_file(tmp_path):
    atomic.write_text(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(tmp_path / "a.txt") as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    with pytest.raises(RuntimeError):
        with atomic.atomic_dir(tmp_path / "d") as tmp:
            (tmp / "x").write_text("half")
            raise RuntimeError("crash mid-write")
    assert (tmp_path / "a.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_a_replaced_folder_is_whole_and_its_old_content_gone(tmp_path):
    with atomic.atomic_dir(tmp_path / "d") as tmp:
        (tmp / "old.txt").write_text("1")
    with atomic.atomic_dir(tmp_path / "d") as tmp:
        (tmp / "new.txt").write_text("2")
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]

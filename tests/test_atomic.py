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


# ----------------------------------------------------------------------------- crashes while a folder is replaced

# A child process replaces the folder ``target`` (holding old.txt) by one holding new.txt and is killed
# with SIGKILL at the step ``kill_at`` names: nothing of Python's clean-up runs, as in a power cut.
CHILD = """
import os, signal, sys
from nerf_pipeline.runtime import atomic

target, kill_at = sys.argv[1], sys.argv[2]
def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

if kill_at == "between the two renames":
    atomic.exchange = lambda a, b: False  # as on an OS without renameat2
    real_replace, calls = os.replace, []
    def replace(*args):
        calls.append(args)
        (die if len(calls) == 2 else real_replace)(*args)  # the second: the new folder moving in
    os.replace = replace
elif kill_at == "before the exchange":
    atomic.exchange = die
elif kill_at == "after the exchange":
    real_exchange = atomic.exchange
    def exchange(a, b):
        assert real_exchange(a, b), "renameat2 cannot exchange here"
        die()
    atomic.exchange = exchange
with atomic.atomic_dir(target) as tmp:
    (tmp / "new.txt").write_text("new")
"""


def replace_and_kill(target, kill_at: str):
    import signal
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", CHILD, str(target), kill_at], capture_output=True, text=True)
    assert result.returncode == -signal.SIGKILL, result.stderr


def contents(folder) -> list:
    return sorted(p.name for p in folder.iterdir())


def test_exchange_swaps_two_folders_in_one_step(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a/x").write_text("a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b/y").write_text("b")
    assert atomic.exchange(tmp_path / "a", tmp_path / "b")  # Linux with glibc >= 2.28 on ext4, tmpfs, btrfs, xfs
    assert contents(tmp_path / "a") == ["y"] and contents(tmp_path / "b") == ["x"]
    with pytest.raises(FileNotFoundError):
        atomic.exchange(tmp_path / "a", tmp_path / "missing")


@pytest.mark.parametrize("kill_at, left", [("before the exchange", "old.txt"), ("after the exchange", "new.txt")])
def test_with_exchange_a_killed_replacement_leaves_the_target_whole(tmp_path, kill_at, left):
    with atomic.atomic_dir(tmp_path / "d") as tmp:
        (tmp / "old.txt").write_text("old")
    replace_and_kill(tmp_path / "d", kill_at)
    assert contents(tmp_path / "d") == [left]


def test_a_crash_between_the_two_renames_is_recovered_by_the_next_call(tmp_path):
    with atomic.atomic_dir(tmp_path / "d") as tmp:
        (tmp / "old.txt").write_text("old")
    replace_and_kill(tmp_path / "d", "between the two renames")
    assert not (tmp_path / "d").exists() and contents(tmp_path / ".d.old") == ["old.txt"]  # what the crash left
    with pytest.raises(RuntimeError):  # the next run puts the old folder back before it starts, even if it fails
        with atomic.atomic_dir(tmp_path / "d"):
            raise RuntimeError("crash mid-write")
    assert contents(tmp_path / "d") == ["old.txt"] and not (tmp_path / ".d.old").exists()


def test_a_crash_after_the_new_folder_moved_in_leaves_it_and_the_next_call_tidies(tmp_path, monkeypatch):
    with atomic.atomic_dir(tmp_path / "d") as tmp:
        (tmp / "old.txt").write_text("old")
    (tmp_path / ".d.old").mkdir()  # the old folder, set aside, not yet removed when the crash came
    (tmp_path / ".d.old/old.txt").write_text("old")
    monkeypatch.setattr(atomic, "exchange", lambda a, b: False)
    with atomic.atomic_dir(tmp_path / "d") as tmp:
        (tmp / "new.txt").write_text("new")
    assert contents(tmp_path / "d") == ["new.txt"] and contents(tmp_path) == ["d"]


# ----------------------------------------------------------------------------- what killed writes leave

# A child process writes the folder or file ``target`` and is killed with SIGKILL before the rename, or, given a
# third argument, prints its temporary path and waits for its stdin to close first: a write still going on.
WRITER = """
import os, signal, sys
from nerf_pipeline.runtime import atomic

target, kind = sys.argv[1], sys.argv[2]
with (atomic.atomic_dir(target) if kind == "folder" else atomic.atomic_path(target)) as tmp:
    (tmp / "model.keras" if kind == "folder" else tmp).write_text("half")
    if len(sys.argv) > 3:
        print(tmp, flush=True)
        sys.stdin.read()
    os.kill(os.getpid(), signal.SIGKILL)
"""


def write_and_kill(target, kind: str) -> None:
    import signal
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", WRITER, str(target), kind], capture_output=True, text=True)
    assert result.returncode == -signal.SIGKILL, result.stderr


def write(target, kind: str, text: str) -> None:
    with (atomic.atomic_dir(target) if kind == "folder" else atomic.atomic_path(target)) as tmp:
        (tmp / "model.keras" if kind == "folder" else tmp).write_text(text)


@pytest.mark.parametrize("kind, name", [("folder", "trained"), ("file", "model.keras")])
def test_the_next_write_removes_what_a_killed_write_left(tmp_path, kind, name):
    """`kill -9` during the model's write left `models/.trained.<hex>/` beside it for good (and in `git status`)."""
    write(tmp_path / name, kind, "old")
    write_and_kill(tmp_path / name, kind)
    assert len(contents(tmp_path)) == 2  # the target and what the killed write left
    write(tmp_path / name, kind, "new")
    assert contents(tmp_path) == [name]


def test_a_write_still_going_on_keeps_its_temporary_folder(tmp_path):
    """Only what a process that is gone left is removed: a write of the same target by a live process goes on."""
    import subprocess
    import sys

    live = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "d"), "folder", "wait"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        its_folder = live.stdout.readline().strip()
        assert its_folder and os.path.isdir(its_folder)
        write(tmp_path / "d", "folder", "mine")
        assert os.path.isdir(its_folder) and contents(tmp_path / "d") == ["model.keras"]
    finally:
        live.stdin.close()  # it kills itself: what it leaves is a killed write's
        live.wait(timeout=60)
    write(tmp_path / "d", "folder", "again")
    assert contents(tmp_path) == ["d"]


def test_only_the_targets_own_leftovers_are_removed(tmp_path):
    """A temporary name from before names carried their process (12 hex digits) is removed too: it is older than
    this write, whose process cannot tell whose it is; the temporaries of other targets, and other dot files, stay."""
    (tmp_path / ".d.0123456789ab").mkdir()  # made by an older version of this module
    (tmp_path / ".d.0123456789ab.keras").write_text("")  # that of a file with another suffix: not the folder's
    (tmp_path / ".dd.1-0123456789ab").mkdir()  # another target's
    (tmp_path / ".d.notes").write_text("")
    write(tmp_path / "d", "folder", "new")
    assert contents(tmp_path) == [".d.0123456789ab.keras", ".d.notes", ".dd.1-0123456789ab", "d"]

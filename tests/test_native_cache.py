"""The native op library's cache: a damaged library is rebuilt rather than loaded, the build is durable, ``$CXX``
is a word list, and the cache key does not depend on where the sources are.

Each case runs in child processes with a private cache folder (``XDG_CACHE_HOME``), as a user's runs would: a
library that crashes ``tf.load_op_library`` (SIGBUS) fails the case instead of killing pytest. A real compile takes
minutes here, so the compiler is a script that copies in a library built once for this module (with the machine's
compiler, in the user's cache) and counts its calls: what is under test is the cache around the compiler.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# A child that builds (or loads) the op library, encodes with it and prints whether the op ran and agrees with
# TensorFlow's ops, and which library file it mapped.
CHILD = textwrap.dedent("""
    import logging, sys
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    import numpy as np, tensorflow as tf
    import nerf_pipeline
    from nerf_pipeline.model.encodings import HashEncoding
    encoding = HashEncoding(3, 2, 10, 4, 40, 1.5)
    points = tf.random.uniform([256, 3], -1.5, 1.5, seed=0)
    same = np.allclose(encoding(points).numpy(), encoding.reference_call(points).numpy(), atol=1e-6)
    print("native" if encoding.uses_native_op else "tensorflow", "same" if same else "different")
    mapped = {line.split()[-1] for line in open("/proc/self/maps") if "nerf_ops" in line and ".so" in line}
    print("library", *sorted(mapped))
    print("package", nerf_pipeline.__file__)
""")


def run_child(cache: Path, code: str = CHILD, cwd: Path = REPO, **env) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if key not in ("NERF_PIPELINE_NATIVE", "CXX")}
    environment.update(XDG_CACHE_HOME=str(cache), TF_CPP_MIN_LOG_LEVEL="3", **env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment, cwd=cwd,
                          timeout=900)


def said(result: subprocess.CompletedProcess, key: str) -> list[str]:
    """The words after ``key`` on the child's line that starts with it."""
    return next((line.split()[1:] for line in result.stdout.splitlines() if line.split()[:1] == [key]), [])


@pytest.fixture(scope="module")
def prebuilt(tmp_path_factory) -> Path:
    """A copy of the op library for these sources, built with the machine's compiler in the user's cache."""
    result = run_child(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"))
    if result.stdout.split()[:1] != ["native"]:
        pytest.skip(f"the native ops cannot be built here: {result.stderr[-2000:]}")
    [library] = said(result, "library")
    copy = tmp_path_factory.mktemp("prebuilt") / "nerf_ops.so"
    shutil.copyfile(library, copy)
    return copy


def fake_compiler(folder: Path, prebuilt: Path, name: str = "fake-g++") -> Path:
    """A "compiler" that writes the prebuilt library where ``-o`` says and logs each call to ``calls.log``."""
    script = folder / name
    script.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        echo "$0 $*" >> "{folder / 'calls.log'}"
        while [ $# -gt 0 ]; do
          if [ "$1" = "-o" ]; then cp "{prebuilt}" "$2"; exit 0; fi
          shift
        done
        exit 1
    """))
    script.chmod(0o755)
    return script


def compiles(folder: Path) -> int:
    log = folder / "calls.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


def libraries(cache: Path) -> list[Path]:
    return sorted((cache / "nerf-pipeline" / "ops").glob("nerf_ops-*.so"))


def test_the_library_is_written_with_its_checksum(tmp_path, prebuilt):
    result = run_child(tmp_path / "cache", CXX=str(fake_compiler(tmp_path, prebuilt)))
    assert result.returncode == 0, result.stderr
    assert said(result, "native") == ["same"]
    [library] = libraries(tmp_path / "cache")
    checksum = Path(f"{library}.sha256")
    assert checksum.read_text().split()[0] == hashlib.sha256(library.read_bytes()).hexdigest()


@pytest.mark.parametrize("keep", [0.5, 0.0], ids=["truncated", "empty"])
def test_a_damaged_library_in_the_cache_is_rebuilt_not_loaded(tmp_path, prebuilt, keep):
    """A truncated library used to kill every later stage with SIGBUS in tf.load_op_library; an empty one made every
    later run fall back to TensorFlow's ops for good."""
    compiler = fake_compiler(tmp_path, prebuilt)
    first = run_child(tmp_path / "cache", CXX=str(compiler))
    assert first.returncode == 0, first.stderr
    [library] = libraries(tmp_path / "cache")
    data = library.read_bytes()
    library.write_bytes(data[:int(len(data) * keep)])  # as a full disk or a crash mid-copy leaves it

    second = run_child(tmp_path / "cache", CXX=str(compiler))
    assert second.returncode == 0, f"the child died ({second.returncode}):\n{second.stderr[-3000:]}"
    assert said(second, "native") == ["same"]
    assert compiles(tmp_path) == 2
    assert f"WARNING nerf_pipeline.native.build: the cached native ops (nerf_ops) {library} do not match their " \
           f"checksum ({library}.sha256): building them again" in second.stderr
    assert library.read_bytes() == data
    third = run_child(tmp_path / "cache", CXX=str(compiler))  # and the rebuilt one is loaded as it is from then on
    assert said(third, "native") == ["same"] and compiles(tmp_path) == 2, third.stderr[-3000:]
    assert "WARNING nerf_pipeline" not in third.stderr


def test_a_library_without_its_checksum_is_rebuilt(tmp_path, prebuilt):
    """A crash between the library's rename and its checksum's leaves a library that nothing vouches for."""
    compiler = fake_compiler(tmp_path, prebuilt)
    assert run_child(tmp_path / "cache", CXX=str(compiler)).returncode == 0
    [library] = libraries(tmp_path / "cache")
    Path(f"{library}.sha256").unlink()
    second = run_child(tmp_path / "cache", CXX=str(compiler))
    assert said(second, "native") == ["same"] and compiles(tmp_path) == 2
    assert Path(f"{library}.sha256").exists()


def test_cxx_is_split_into_words_so_a_compiler_launcher_works(tmp_path, prebuilt):
    """``CXX="ccache g++"`` was taken for a compiler named 'ccache g++', which is on no PATH."""
    compiler = fake_compiler(tmp_path, prebuilt)
    launcher = tmp_path / "launcher"
    launcher.write_text(f'#!/bin/sh\necho launched >> "{tmp_path / "launches.log"}"\nexec "$@"\n')
    launcher.chmod(0o755)
    result = run_child(tmp_path / "cache", CXX=f"{launcher} {compiler} -DFROM_CXX")
    assert result.returncode == 0, result.stderr
    assert said(result, "native") == ["same"]
    assert (tmp_path / "launches.log").read_text() == "launched\n"
    assert " -DFROM_CXX -std=c++17 " in (tmp_path / "calls.log").read_text()

    missing = run_child(tmp_path / "cache2", CXX=f"{tmp_path / 'no-such-launcher'} {compiler}")
    assert said(missing, "tensorflow") == ["same"]
    assert (f"the native ops (nerf_ops) are unavailable (no C++ compiler: '{tmp_path / 'no-such-launcher'}' "
            "is not on PATH)") in missing.stderr


def test_checkouts_of_the_same_sources_share_one_library(tmp_path, prebuilt):
    """The cache key held the sources' absolute paths: every checkout built its own library."""
    compiler = fake_compiler(tmp_path, prebuilt)
    for checkout in ("a", "b"):
        shutil.copytree(REPO / "nerf_pipeline", tmp_path / checkout / "nerf_pipeline",
                        ignore=shutil.ignore_patterns("__pycache__"))
    for checkout in ("a", "b"):
        result = run_child(tmp_path / "cache", cwd=tmp_path / checkout, CXX=str(compiler))
        assert result.returncode == 0, result.stderr
        assert said(result, "package") == [str(tmp_path / checkout / "nerf_pipeline" / "__init__.py")]
        assert said(result, "native") == ["same"]
    assert compiles(tmp_path) == 1 and len(libraries(tmp_path / "cache")) == 1
    # an edited kernel is another library
    source = tmp_path / "b" / "nerf_pipeline" / "native" / "occupancy.cc"
    source.write_text(source.read_text() + "\n// edited\n")
    assert said(run_child(tmp_path / "cache", cwd=tmp_path / "b", CXX=str(compiler)), "native") == ["same"]
    assert compiles(tmp_path) == 2 and len(libraries(tmp_path / "cache")) == 2


# A child that records, in order, every fsync (of which file) and every rename while the library is built.
FSYNC_CHILD = textwrap.dedent("""
    import os
    events, real_fsync, real_replace = [], os.fsync, os.replace
    def fsync(fd):
        number = fd if isinstance(fd, int) else fd.fileno()
        events.append(("fsync", os.readlink(f"/proc/self/fd/{number}")))
        return real_fsync(fd)
    def replace(source, target, **kwargs):
        events.append(("replace", str(source), str(target)))
        return real_replace(source, target, **kwargs)
    os.fsync, os.replace = fsync, replace
    from nerf_pipeline.native import build
    assert build.load("nerf_ops") is not None
    for event in events:
        print(*event)
""")


def test_the_library_and_its_checksum_are_synced_to_disk_before_they_are_renamed_into_place(tmp_path, prebuilt):
    """Without an fsync, a power cut after the rename can leave a library of the right name and the wrong bytes."""
    result = run_child(tmp_path / "cache", FSYNC_CHILD, CXX=str(fake_compiler(tmp_path, prebuilt)))
    assert result.returncode == 0, result.stderr
    events = [line.split() for line in result.stdout.splitlines()]
    [library] = libraries(tmp_path / "cache")
    renames = [event for event in events if event[0] == "replace"]
    assert [Path(target) for _, _, target in renames] == [library, Path(f"{library}.sha256")]
    for i, event in enumerate(events):
        if event[0] == "replace":
            assert ["fsync", event[1]] in events[:i], f"{event[1]} was renamed into place unsynced: {events}"

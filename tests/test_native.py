"""Native ops are built on first use, cached, and when they cannot be had the encoding falls back, saying so.

Each case runs in a child process with its own cache folder and compiler, as a user's first run would.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

# A child that builds the hash grid, trains one step and prints whether the op ran and the encoding's values
# agree with TensorFlow's ops.
CHILD = textwrap.dedent("""
    import logging, sys
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    import numpy as np, tensorflow as tf
    from nerf_pipeline.model.encodings import HashEncoding
    encoding = HashEncoding(3, 2, 10, 4, 40, 1.5)
    points = tf.random.uniform([256, 3], -1.5, 1.5, seed=0)
    same = np.allclose(encoding(points).numpy(), encoding.reference_call(points).numpy(), atol=1e-6)
    print("native" if encoding.uses_native_op else "tensorflow", "same" if same else "different")
""")


def child(tmp_path: Path, **env) -> subprocess.CompletedProcess:
    environment = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "TF_CPP_MIN_LOG_LEVEL": "3", **env}
    return subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=environment, timeout=600)


def warnings_of(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("WARNING nerf_pipeline")]


def test_without_a_compiler_the_encoding_uses_tensorflows_ops_and_says_so_once(tmp_path):
    result = child(tmp_path, CXX=str(tmp_path / "no-such-compiler"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["tensorflow", "same"]
    assert warnings_of(result) == [
        f"WARNING nerf_pipeline.native.build: the native ops (nerf_ops) are unavailable (no C++ compiler: "
        f"'{tmp_path / 'no-such-compiler'}' is not on PATH); using TensorFlow's ops: the same results (to float "
        "rounding), slower"]


def test_a_failed_build_falls_back_and_keeps_the_compilers_output(tmp_path):
    compiler = tmp_path / "broken-g++"
    compiler.write_text("#!/bin/sh\necho 'hash_grid.cc:1: error: the compiler says no' >&2\nexit 1\n")
    compiler.chmod(0o755)
    result = child(tmp_path, CXX=str(compiler))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["tensorflow", "same"]
    [warning] = warnings_of(result)
    assert "its build failed; the compiler's output is in" in warning
    log_file = Path(warning.split("the compiler's output is in ")[1].split(")")[0])
    assert "the compiler says no" in log_file.read_text()
    assert not list(log_file.parent.glob("*.so"))  # nothing half-built is left to load next time


def test_native_ops_can_be_turned_off(tmp_path):
    result = child(tmp_path, NERF_PIPELINE_NATIVE="0")
    assert result.stdout.split() == ["tensorflow", "same"]
    assert "native ops are off (NERF_PIPELINE_NATIVE=0)" in result.stderr
    assert not (tmp_path / "cache" / "nerf-pipeline").exists()


@pytest.mark.slow
def test_the_op_is_compiled_once_then_loaded_from_the_cache(tmp_path):
    first = child(tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.split() == ["native", "same"]
    assert "compiling the native ops (nerf_ops) for this machine" in first.stderr
    [library] = (tmp_path / "cache" / "nerf-pipeline" / "ops").glob("nerf_ops-tf*.so")
    built = library.stat().st_mtime_ns
    second = child(tmp_path)
    assert second.stdout.split() == ["native", "same"]
    assert "compiling" not in second.stderr and warnings_of(second) == []
    assert library.stat().st_mtime_ns == built

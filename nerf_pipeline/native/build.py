"""Compile a native op's C++ source against the installed TensorFlow on first use, cache it, load it.

``load("nerf_ops")`` returns the loaded op library, or ``None`` when it cannot be had: then the caller
uses TensorFlow's own ops, which compute the same values (the tests hold the two equal). The library is
built with the machine's C++ compiler (``$CXX``, else ``g++``) and ``tf.sysconfig``'s flags at ``-O3
-march=native``, into the user's cache folder (``$XDG_CACHE_HOME`` or ``~/.cache``, then
``nerf-pipeline/ops``), under a name that carries the TensorFlow version and a hash of the source, the
command and the CPU: a new TensorFlow, an edited kernel or another processor builds anew, and
concurrent builds (``dvc queue start -j 2``) each write a private file and rename it into place.

No compiler, a failed build or a library that does not load: one warning line that says so and where
the compiler's output is, and ``None``. ``NERF_PIPELINE_NATIVE=0`` turns native ops off.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

DISABLE_ENV = "NERF_PIPELINE_NATIVE"  # "0": TensorFlow's ops only
SOURCE_DIR = Path(__file__).parent
# A library and its sources, compiled together: the hash grid's encoding and the occupancy grid's march.
SOURCES = {"nerf_ops": (SOURCE_DIR / "hash_grid.cc", SOURCE_DIR / "occupancy.cc")}
BUILD_TIMEOUT_S = 600


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nerf-pipeline" / "ops"


def _cpu_signature() -> str:
    """What ``-march=native`` compiles for: the processor's model and feature flags."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    wanted = [line for line in lines if line.startswith(("model name", "flags", "Features"))]
    return "\n".join(sorted(set(wanted)))


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CXX") or "g++")


def _command(compiler: str, sources, output: Path, extra: list[str]) -> list[str]:
    import tensorflow as tf

    # -ffp-contract=off: no fused multiply-adds, so that each product rounds as TensorFlow's ops round it.
    return [compiler, "-std=c++17", "-shared", "-fPIC", "-O3", "-march=native", "-ffp-contract=off", *extra, "-w",
            "-DNDEBUG", *tf.sysconfig.get_compile_flags(), *map(str, sources), "-o", str(output),
            *tf.sysconfig.get_link_flags()]


# Eigen as TensorFlow ships it does not compile with AVX512-FP16 enabled (g++ 12 on Sapphire Rapids):
# the kernels use no FP16, so it is turned off where the compiler knows the flag.
_EXTRA_FLAGS = (["-mno-avx512fp16"], [])


def _unavailable(name: str, reason: str) -> None:
    log.warning("the native ops (%s) are unavailable (%s); using TensorFlow's ops: the same results (to float "
                "rounding), slower", name, reason)


def _build(name: str, sources, target: Path) -> bool:
    compiler = _compiler()
    if compiler is None:
        _unavailable(name, f"no C++ compiler: '{os.environ.get('CXX') or 'g++'}' is not on PATH")
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    log_path = target.with_suffix(".log")
    log.info("compiling the native ops (%s) for this machine, once (about a minute), into %s", name, target.parent)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{name}-") as tmp:
        output, outputs = Path(tmp) / target.name, []
        for extra in _EXTRA_FLAGS:
            command = _command(compiler, sources, output, extra)
            try:
                result = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
            except (OSError, subprocess.SubprocessError) as e:
                outputs.append(f"$ {' '.join(command)}\n{e}\n")
                continue
            outputs.append(f"$ {' '.join(command)}\n{result.stdout}{result.stderr}")
            if result.returncode == 0 and output.exists():
                os.replace(output, target)
                return True
        log_path.write_text("\n".join(outputs))
    _unavailable(name, f"its build failed; the compiler's output is in {log_path}")
    return False


@functools.cache
def load(name: str):
    """The op library ``name`` (``SOURCES``), built if need be; ``None`` when it cannot be had (see the module)."""
    if os.environ.get(DISABLE_ENV, "1") == "0":
        log.info("native ops are off (%s=0): using TensorFlow's ops", DISABLE_ENV)
        return None
    import tensorflow as tf

    sources = SOURCES[name]
    compiler = _compiler() or ""
    key = hashlib.sha256("\n".join([*(source.read_text() for source in sources), tf.__version__, compiler, " ".join(
        _command(compiler, sources, Path("out"), [])), _cpu_signature()]).encode()).hexdigest()[:16]
    target = cache_dir() / f"{name}-tf{tf.__version__}-{key}.so"
    try:
        if not target.exists() and not _build(name, sources, target):
            return None
        return tf.load_op_library(str(target))
    except (OSError, tf.errors.OpError) as e:
        _unavailable(name, f"{target} could not be built or loaded: {e}")
        return None


def cpu_library():
    """The project's native op library (``nerf_ops``) where it serves: ``None`` when TensorFlow sees a GPU
    (the kernels are for the CPU; on a GPU, TensorFlow's ops under XLA serve well) or when ``load`` cannot."""
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return None
    return load("nerf_ops")

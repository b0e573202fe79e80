"""Compile a native op library's C++ sources against the installed TensorFlow on first use, cache it, load it.

``load("nerf_ops")`` returns the loaded op library (``SOURCES`` names each library and its sources), or ``None``
when it cannot be had: then the caller uses TensorFlow's own ops, which compute the same values (the tests hold the
two equal). The library is built with the machine's C++ compiler (``$CXX``, split into words as a shell would, so
``CXX="ccache g++"`` works; else ``g++``) and ``tf.sysconfig``'s flags at ``-O3 -march=native``, into the user's
cache folder (``$XDG_CACHE_HOME`` or ``~/.cache``, then ``nerf-pipeline/ops``), under a name that carries the
TensorFlow version and a hash of the sources' names and contents, the command and the CPU: a new TensorFlow, an
edited kernel or another processor builds anew, while checkouts (and venvs) of the same sources and TensorFlow
share one library.

A build writes a private file, syncs it to disk and renames it into place, then writes its sha256 beside it
(``<library>.so.sha256``) the same way. A library is loaded only when it matches that checksum: one that a full disk
or a crash truncated (which ``tf.load_op_library`` would die of, with SIGBUS) or emptied, or that has no checksum, is
built again, with a warning. Concurrent runs (``dvc queue start -j 2``) check and build one library in turn, under a
lock beside it, so it is built once.

No compiler, a failed build or a library that does not load: one warning line that says so and where
the compiler's output is, and ``None``. ``NERF_PIPELINE_NATIVE=0`` turns native ops off.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

try:
    import fcntl
except ImportError:  # not a POSIX system: no lock; concurrent builds still each rename a whole file into place
    fcntl = None

log = logging.getLogger(__name__)

DISABLE_ENV = "NERF_PIPELINE_NATIVE"  # "0": TensorFlow's ops only
SOURCE_DIR = Path(__file__).parent
# A library and its sources, compiled together: the hash grid's encoding and the occupancy grid's march; the
# Gaussian splats' rasterizer (and SSIM) and a frame's projection.
SOURCES = {"nerf_ops": (SOURCE_DIR / "hash_grid.cc", SOURCE_DIR / "occupancy.cc"),
           "splat_ops": (SOURCE_DIR / "splats.cc", SOURCE_DIR / "splat_frame.cc")}
BUILD_TIMEOUT_S = 600
CHECKSUM_SUFFIX = ".sha256"  # <library>.so.sha256: the library's sha256, written after it


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


def _compiler_words() -> list[str]:
    """``$CXX`` (else ``g++``) as a shell word list: a compiler, a launcher and its compiler (``ccache g++``), flags."""
    cxx = os.environ.get("CXX") or "g++"
    try:
        return shlex.split(cxx) or ["g++"]
    except ValueError:  # an unbalanced quote: reported as a compiler of that name, which is on no PATH
        return [cxx]


def _compiler() -> list[str] | None:
    """The compiler's command words, the first found on PATH; ``None`` when it is not there."""
    program, *rest = _compiler_words()
    found = shutil.which(program)
    return None if found is None else [found, *rest]


def _command(compiler: list[str], sources, output: Path, extra: list[str]) -> list[str]:
    import tensorflow as tf

    # -ffp-contract=off: no fused multiply-adds, so that each product rounds as TensorFlow's ops round it.
    return [*compiler, "-std=c++17", "-shared", "-fPIC", "-O3", "-march=native", "-ffp-contract=off", *extra, "-w",
            "-DNDEBUG", *tf.sysconfig.get_compile_flags(), *map(str, sources), "-o", str(output),
            *tf.sysconfig.get_link_flags()]


# Eigen as TensorFlow ships it does not compile with AVX512-FP16 enabled (g++ 12 on Sapphire Rapids):
# the kernels use no FP16, so it is turned off where the compiler knows the flag.
_EXTRA_FLAGS = (["-mno-avx512fp16"], [])


def library_path(name: str) -> Path:
    """Where the library ``name`` of these sources, this TensorFlow, compiler and CPU is cached.

    Its key holds what the library's bytes depend on and nothing of where things are: the sources by file name and
    contents (not their absolute paths: every checkout of the same sources shares one library), TensorFlow's version
    and flags with its install folder masked (venvs of one version share it too), the compiler command and the CPU.
    """
    import tensorflow as tf

    sources = SOURCES[name]
    command = " ".join(_command(_compiler() or _compiler_words(), [Path(source.name) for source in sources],
                                Path("out"), []))
    command = command.replace(tf.sysconfig.get_lib(), "<tensorflow>")
    parts = [f"{source.name}\n{source.read_text()}" for source in sources]
    key = hashlib.sha256("\n".join([*parts, tf.__version__, command, _cpu_signature()]).encode()).hexdigest()[:16]
    return cache_dir() / f"{name}-tf{tf.__version__}-{key}.so"


def _checksum_path(library: Path) -> Path:
    return library.with_name(library.name + CHECKSUM_SUFFIX)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _sync(path: Path) -> None:
    """Flush a file's (or a folder's entries') bytes to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _install(built: Path, target: Path) -> None:
    """Put a built library in place, then its checksum. Each is synced before its rename: else a power cut after the
    rename can leave the name with bytes that never reached the disk. The checksum comes second, so that it vouches
    only for a library wholly in place; a crash between the two leaves a library without one, which is rebuilt."""
    digest = _sha256(built)
    _sync(built)
    os.replace(built, target)
    checksum = built.with_name(built.name + CHECKSUM_SUFFIX)
    checksum.write_text(f"{digest}  {target.name}\n")
    _sync(checksum)
    os.replace(checksum, _checksum_path(target))
    try:
        _sync(target.parent)  # the renames themselves
    except OSError:  # a file system that cannot sync a folder: the files' bytes are synced, which is what matters
        pass


def _intact(name: str, target: Path) -> bool:
    """Whether the cached library is there and is what its build wrote (its checksum matches). A damaged one says so:
    it is built again."""
    if not target.exists():
        return False
    checksum = _checksum_path(target)
    try:
        recorded = checksum.read_text().split()[0]
    except (OSError, IndexError):
        log.warning("the cached native ops (%s) %s have no checksum (%s; a build was cut short): building them again",
                    name, target, checksum)
        return False
    if recorded != _sha256(target):
        log.warning("the cached native ops (%s) %s do not match their checksum (%s): building them again", name,
                    target, checksum)
        return False
    return True


@contextlib.contextmanager
def _locked(target: Path):
    """Held while a library is checked and built: concurrent runs build it once, and none reads one half-installed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        lock = None if fcntl is None else open(target.with_name(target.name + ".lock"), "a")
    except OSError:  # a read-only cache: nothing is built in it, so there is no build to wait for
        lock = None
    if lock is None:
        yield
        return
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or when the process dies
        yield


def _unavailable(name: str, reason: str) -> None:
    log.warning("the native ops (%s) are unavailable (%s); using TensorFlow's ops: the same results (to float "
                "rounding), slower", name, reason)


def _build(name: str, sources, target: Path) -> bool:
    compiler = _compiler()
    if compiler is None:
        _unavailable(name, f"no C++ compiler: '{_compiler_words()[0]}' is not on PATH")
        return False
    log_path = target.with_suffix(".log")
    log.info("compiling the native ops (%s) for this machine, once (about a minute), into %s", name, target.parent)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{name}-") as tmp:
        output, outputs = Path(tmp) / target.name, []
        for extra in _EXTRA_FLAGS:
            command = _command(compiler, sources, output, extra)
            try:
                result = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
            except (OSError, subprocess.SubprocessError) as e:
                outputs.append(f"$ {shlex.join(command)}\n{e}\n")
                continue
            outputs.append(f"$ {shlex.join(command)}\n{result.stdout}{result.stderr}")
            if result.returncode == 0 and output.exists():
                _install(output, target)
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

    target = None
    try:
        target = library_path(name)
        with _locked(target):
            if not _intact(name, target) and not _build(name, SOURCES[name], target):
                return None
        return tf.load_op_library(str(target))
    except (OSError, tf.errors.OpError) as e:
        _unavailable(name, f"{target or name} could not be built or loaded: {e}")
        return None


def cpu_library():
    """The project's native op library (``nerf_ops``) where it serves: ``None`` when TensorFlow sees a GPU
    (the kernels are for the CPU; on a GPU, TensorFlow's ops under XLA serve well) or when ``load`` cannot."""
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return None
    return load("nerf_ops")

"""The quiet console: TensorFlow's known native start-up lines are filtered out of a stage's stderr, nothing else is."""

import ast
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from nerf_pipeline.runtime import console

# Every native line the stages printed on this 2-core CPU machine (TensorFlow 2.21, no GPU) with
# NERF_PIPELINE_VERBOSE=1: download to render of a tiny project, and `python -c "import tensorflow"`.
NATIVE = [
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    b"I0000 00:00:1796164159.768028    4506 port.cc:153] oneDNN custom operations are on. You may see slightly "
    b"different numerical results due to floating-point round-off errors from different computation orders. To turn "
    b"them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.",
    b"I0000 00:00:1796164159.768317    4506 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will "
    b"not be used.",
    b"I0000 00:00:1796164159.809566    4506 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use "
    b"available CPU instructions in performance-critical operations.",
    b"To enable the following instructions: AVX2 AVX512F AVX512_VNNI AVX512_BF16 AVX512_FP16 AVX_VNNI AMX_TILE "
    b"AMX_INT8 AMX_BF16 AMX_FP16 FMA, in other operations, rebuild TensorFlow with the appropriate compiler flags.",
    b"E0000 00:00:1796164164.342738    4506 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed "
    b"call to cuInit: UNKNOWN ERROR (303)",
    b"I0000 00:00:1796164164.400360    4506 service.cc:153] XLA service 0x5641e05c20a0 initialized for platform Host "
    b"(this does not guarantee that XLA will be used). Devices:",
    b"I0000 00:00:1796164164.400397    4506 service.cc:161]   StreamExecutor [0]: Host, Default Version (Driver: "
    b"0.0.0; Runtime: 0.0.0; Toolkit: 0.0.0; DNN: 0.0.0)",
    b"I0000 00:00:1796164183.279228    5071 dump_mlir_util.cc:269] disabling MLIR crash reproducer, set env var "
    b"`MLIR_CRASH_REPRODUCER_DIRECTORY` to enable.",
    b"I0000 00:00:1796164164.433780    4506 device_compiler.h:208] Compiled cluster using XLA!  This line is logged at "
    b"most once for the lifetime of the process.",
    # seen in training from a generator dataset
    b"W0000 00:00:1795862829.444051   13465 dataset.cc:997] Input of GeneratorDatasetOp::Dataset will not be optimized",
]
# Lines a GPU run prints when it fails, as TensorFlow's users reported them (the CUDA out-of-memory and
# allocator lines from tensorflow/tensorflow#26218 and talmolab/sleap#2142, in today's absl prefix; the
# cuInit line as TensorFlow 2.2x prints it where a driver finds no device), and the stages' own lines.
KEPT = [
    b"[train] epoch 1/2: loss 0.05, PSNR 13.4 dB",
    b"E0000 00:00:1775118342.960447  222489 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed "
    b"call to cuInit: CUDA_ERROR_NO_DEVICE: no CUDA-capable device is detected",
    b"I0000 00:00:1796164164.433780    4506 cuda_driver.cc:830] failed to allocate 3.43G (3678928896 bytes) from "
    b"device: CUDA_ERROR_OUT_OF_MEMORY: out of memory",
    b"W0000 00:00:1796164164.433780    4506 bfc_allocator.cc:239] Allocator (GPU_0_bfc) ran out of memory trying to "
    b"allocate 2.96GiB with freed_by_count=0.",
    b"E0000 00:00:1795865722.333179   30495 op_kernel.cc:1830] OP_REQUIRES failed at matmul_op.cc: out of memory",
    b"F0000 00:00:1795865722.333179   30495 cuda_executor.cc:1] Check failed: stream->ok() CUDA_ERROR_ILLEGAL_ADDRESS",
    b"I0000 00:00:1796164159.768317    4506 gpu_device.cc:2020] Created device /job:localhost/replica:0/task:0/"
    b"device:GPU:0 with 139000 MB memory",
    b"Traceback (most recent call last):",
    b"error: params.yaml: unknown key 'epoch'. Did you mean 'epochs'?",
]


# COLMAP's glog lines, as pycolmap 4.2.1 printed them here (its feature extraction left at -1 threads, and
# pycolmap.logging.warning from Python): glog's date has the year, YYYYMMDD, where absl's is MMDD.
COLMAP = [
    (b"W20261201 23:02:36.578384 140651547220864 feature_extraction.cc:445] Your current options use the maximum "
     b"number of threads on the machine to extract features. Extracting SIFT features on the CPU can consume a lot of "
     b"RAM per thread for large images.", b"W", b"Your current options use the maximum number of threads"),
    (b"I20261201 23:02:36.621429 140651119244992 feature_extraction.cc:270] Processed file [1/2]", b"I",
     b"Processed file [1/2]"),
    (b"W20261201 23:02:18.912224 140670886968192 <string>:<module>:4] a test warning from pycolmap", b"W",
     b"a test warning from pycolmap"),
]


@pytest.mark.parametrize("line", NATIVE)
def test_native_log_lines_are_noise(line):
    assert console.is_noise(line)


@pytest.mark.parametrize("line, level, message", COLMAP)
def test_colmap_glog_lines_are_native_lines_and_kept(line, level, message):
    native = console.native_message(line)
    assert native is not None and native[0] == level and native[1].startswith(message)
    assert not console.is_noise(line)  # none of them is known noise


def test_a_known_line_with_glog_s_date_is_noise():
    """The filter reads glog's date as absl's: a known line is dropped with either, an unknown one kept."""
    line = (b"W20261201 23:02:36.578384 140651547220864 dataset.cc:997] Input of GeneratorDatasetOp::Dataset will not "
            b"be optimized")
    assert console.is_noise(line)
    assert not console.is_noise(line.replace(b"GeneratorDatasetOp", b"SomethingElseOp"))


@pytest.mark.parametrize("line", KEPT)
def test_everything_else_is_kept(line):
    assert not console.is_noise(line)


SCRIPT = textwrap.dedent("""
    import os, sys
    from nerf_pipeline.runtime import console
    console.quiet()
    import tensorflow as tf
    print(float(tf.reduce_sum(tf.ones([3]))), file=sys.stderr)
    os.write(2, b"E0000 00:00:1.0   1 op_kernel.cc:1] a real native error\\n")
    print("last words", file=sys.stderr)
""")


@pytest.mark.slow
@pytest.mark.parametrize("verbose", [False, True])
def test_a_process_that_imports_tensorflow_prints_only_its_own_lines(verbose):
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", console.VERBOSE_ENV)}
    if verbose:
        env[console.VERBOSE_ENV] = "1"
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert "3.0" in lines and lines[-1] == "last words" and any("a real native error" in line for line in lines)
    noise = [line for line in lines if console.is_noise(line.encode())]
    assert bool(noise) == verbose, result.stderr  # TensorFlow 2.21 prints a few at import; verbose keeps them


BENCHMARKS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))
LOADS_TENSORFLOW = ("nerf_pipeline", "tensorflow", "keras")  # (nerf_pipeline's modules may import TensorFlow)


def imported_modules(path) -> list[str]:
    """The modules a script imports, in the order its source names them (nested imports included)."""
    names = []
    for node in sorted(ast.walk(ast.parse(path.read_text())), key=lambda node: (getattr(node, "lineno", 0))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
    return names


@pytest.mark.parametrize("path", BENCHMARKS, ids=[path.name for path in BENCHMARKS])
def test_every_benchmark_quiets_its_console_before_tensorflow(path):
    """Issue 30: the benchmarks printed TensorFlow's start-up lines ("failed call to cuInit: ... (303)") that the
    stages filter; each script that may load TensorFlow imports nerf_pipeline.runtime.quiet before it."""
    modules = imported_modules(path)
    loads = [name for name in modules if name.split(".")[0] in LOADS_TENSORFLOW]
    if loads:
        assert loads[0] == "nerf_pipeline.runtime.quiet", f"{path.name} imports {loads[0]} before the quiet console"


@pytest.mark.slow
def test_a_benchmark_that_imports_tensorflow_prints_no_start_up_noise():
    """bench_splat_rasterizer.py imports TensorFlow at the top: its --help runs that import and nothing else."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", console.VERBOSE_ENV)}
    script = next(path for path in BENCHMARKS if path.name == "bench_splat_rasterizer.py")
    result = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=300,
                            env=env)
    assert result.returncode == 0 and "usage:" in result.stdout, result.stderr
    assert not [line for line in result.stderr.splitlines() if console.is_noise(line.encode())], result.stderr


def test_importing_a_benchmark_leaves_the_importers_console_alone():
    """A test that imports a benchmark (test_bench: bench_captures' helpers) keeps pytest's stderr and warnings."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import nerf_pipeline.runtime.quiet; "
            "from nerf_pipeline.runtime import console; print(bool(console._state))")
    run = [sys.executable, "-c"]
    assert subprocess.run([*run, code, "."], capture_output=True, text=True, timeout=120).stdout.strip() == "True"
    module = textwrap.dedent("""
        import nerf_pipeline.runtime.quiet
        from nerf_pipeline.runtime import console
        QUIET = bool(console._state)
    """)
    code = "import sys; sys.path.insert(0, sys.argv[1]); import a_script; print(a_script.QUIET)"
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "a_script.py").write_text(module)
        result = subprocess.run([*run, code, folder], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "False", result.stderr

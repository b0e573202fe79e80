"""The quiet console: TensorFlow's native log lines are filtered out of a stage's stderr, nothing else is."""

import os
import subprocess
import sys
import textwrap

import pytest

from nerf_pipeline.runtime import console

NATIVE = [
    b"I0000 00:00:1795865703.396247   30495 port.cc:153] oneDNN custom operations are on.",
    b"I0000 00:00:1795865703.397496   30495 cudart_stub.cc:31] Could not find cuda drivers on your machine",
    b"E0000 00:00:1795865722.333179   30495 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error",
    b"W0000 00:00:1795862829.444051   13465 dataset.cc:997] Input of GeneratorDatasetOp::Dataset will not be optimized",
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    b"To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild TensorFlow with the "
    b"appropriate compiler flags.",
]
KEPT = [
    b"[train] epoch 1/2: loss 0.05, PSNR 13.4 dB",
    b"E0000 00:00:1795865722.333179   30495 op_kernel.cc:1830] OP_REQUIRES failed at matmul_op.cc: out of memory",
    b"Traceback (most recent call last):",
    b"error: params.yaml: unknown key 'epoch'. Did you mean 'epochs'?",
]


@pytest.mark.parametrize("line", NATIVE)
def test_native_log_lines_are_noise(line):
    assert console.is_noise(line)


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

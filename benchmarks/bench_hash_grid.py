"""The hash encoding alone: the fused C++ op against TensorFlow's ops (XLA-compiled), on one train step's samples.

    python benchmarks/bench_hash_grid.py [--rays 4096] [--samples 32] [--params params.yaml] [--repeats 20]

The samples are those of a step: ``--rays`` rays from cameras 4 units from the centre looking into the
scene's box (as the built-in scene and NeRF-synthetic place them), ``--samples`` points each, evenly
spread where a ray crosses the box and in ray order, as the sampler gives them. The table is random.
Times, in milliseconds (median of ``--repeats``), forward alone (what rendering asks), forward plus
the table's gradient, and that with the per-row sums of squared contributions (what training asks with
``table_second_moment: samples``, against the reference's plain gradient); the op's figures are with this
machine's intra-op threads.
"""

from __future__ import annotations

import argparse
import os

import nerf_pipeline.runtime.quiet  # noqa: F401  first: TensorFlow's start-up noise filtered, as in stages

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from nerf_pipeline import config  # noqa: E402
from nerf_pipeline.benchmarking import median_ms  # noqa: E402
from nerf_pipeline.model.encodings import HashEncoding  # noqa: E402


def step_samples(num_rays: int, num_samples: int, bound: float, seed: int = 0) -> np.ndarray:
    """``[num_rays * num_samples, 3]`` points along rays from a sphere of radius 4 through the box
    ``[-bound, bound]^3``."""
    rng = np.random.default_rng(seed)
    origins = rng.normal(size=(num_rays, 3))
    origins *= 4.0 / np.linalg.norm(origins, axis=1, keepdims=True)
    targets = rng.uniform(-bound, bound, (num_rays, 3))
    directions = targets - origins
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    with np.errstate(divide="ignore"):
        t0 = (-bound - origins) / directions
        t1 = (bound - origins) / directions
    near = np.minimum(t0, t1).max(1)
    far = np.maximum(t0, t1).min(1)
    t = near[:, None] + (far - near)[:, None] * (np.arange(num_samples) + 0.5) / num_samples
    return (origins[:, None] + directions[:, None] * t[..., None]).reshape(-1, 3).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--rays", type=int, default=4096)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    cfg = config.load(args.params)
    field = cfg.presets["hashgrid"].field
    encoding = HashEncoding(field.num_levels, field.features_per_level, field.log2_table_size, field.base_resolution,
                            field.max_resolution, cfg.scene.bound)
    if not encoding.uses_native_op:
        raise SystemExit("the native hash-grid op is not available here (see the warning above)")
    encoding.table.assign(tf.random.uniform(encoding.table.shape, -1e-2, 1e-2, seed=0))
    points = tf.constant(step_samples(args.rays, args.samples, cfg.scene.bound))
    upstream = tf.random.normal([points.shape[0], encoding.output_dim], seed=1)

    def reference_forward_backward(p):
        with tf.GradientTape() as tape:
            encoded = encoding.reference_call(p)
            loss = tf.reduce_sum(encoded * upstream)
        return encoded, tf.convert_to_tensor(tape.gradient(loss, encoding.table))

    def native_forward_backward(p):  # as the train step runs it: the forward's output goes on to the MLPs
        return encoding(p), encoding.table_gradient(p, upstream)

    def native_forward_backward_squares(p):  # with SampleWiseAdam's per-row sums of squares (the default)
        return encoding(p), *encoding.table_gradient_and_squares(p, upstream)

    print(f"{points.shape[0]:,} samples ({args.rays} rays x {args.samples}); {field.num_levels} levels x "
          f"{field.features_per_level} features, table 2^{field.log2_table_size}, resolutions "
          f"{encoding.resolutions[0]}..{encoding.resolutions[-1]}; {os.cpu_count()} CPUs")
    rows = [("forward", tf.function(encoding.reference_call, jit_compile=True), tf.function(encoding.call)),
            ("forward + table gradient", tf.function(reference_forward_backward, jit_compile=True),
             tf.function(native_forward_backward)),
            ("  + per-sample squares", tf.function(reference_forward_backward, jit_compile=True),
             tf.function(native_forward_backward_squares))]
    print(f"{'':<26}{'TF ops (XLA)':>14}{'fused op':>10}{'speed-up':>10}")
    for name, reference, native in rows:
        reference_ms = median_ms(reference, points, repeats=args.repeats)
        native_ms = median_ms(native, points, repeats=args.repeats)
        print(f"{name:<26}{reference_ms:>11.1f} ms{native_ms:>7.1f} ms{reference_ms / native_ms:>9.1f}x")


if __name__ == "__main__":
    main()

"""Where a training step's and a rendered frame's time go: each part compiled and timed alone.

    python benchmarks/profile_step.py --scene ../shared/data/lego_tiny.npz [--preset hashgrid] [--warmup-steps 300]
    python benchmarks/profile_step.py --scene ../shared/data/chair --background 1 --warmup-steps 200

Trains ``--warmup-steps`` steps first (so the occupancy grid is in its steady state), then times,
each as its own XLA-compiled function on the same batch: the whole train step; the batch's input
pipeline; ray sampling; the field's forward pass; forward + backward of the field; the hash
encoding alone (forward + backward); the MLPs alone (forward + backward); the optimizer's update.
Then one held-out view is rendered whole as the evaluate and render stages do (``ChunkedRenderer``),
and a chunk of its rays through each part: which rays can meet matter (a march), sampling, the
field (its hash encoding, with the density MLP), and how many samples a ray is followed for before
it is opaque (early ray termination). Prints milliseconds; ``--set KEY=VALUE`` changes params for the
run, as in ``bench_train.py``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import nerf_pipeline.runtime.quiet  # noqa: F401  first: TensorFlow's start-up noise filtered, as in stages

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from nerf_pipeline.model import xla  # noqa: E402
from nerf_pipeline.model.fields import HashGridField  # noqa: E402
from nerf_pipeline.model.nerf import build_nerf, compile_for_training  # noqa: E402
from nerf_pipeline.model.renderer import ChunkedRenderer  # noqa: E402
from nerf_pipeline.model.sampling import OccupancySampler  # noqa: E402
from nerf_pipeline.benchmarking import load_config, prepare_rays  # noqa: E402
from nerf_pipeline.scenes import ray_files  # noqa: E402
from nerf_pipeline.training import datasets  # noqa: E402


def timed(name: str, function, *args, repeats: int = 10) -> float:
    tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, "numpy") else t, function(*args))
    start = time.perf_counter()
    for _ in range(repeats):
        out = function(*args)
    tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, "numpy") else t, out)
    ms = (time.perf_counter() - start) / repeats * 1000
    print(f"{name:<40s} {ms:8.1f} ms")
    return ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--scene", required=True)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--preset", default=None)
    parser.add_argument("--warmup-steps", type=int, default=300)
    parser.add_argument("--background", type=float, default=None, help="data.background (1: NeRF-synthetic's white)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    cfg = load_config(args.params, args.set)
    name = args.preset or cfg.preset
    preset = cfg.presets[name]
    data = {"source": args.scene} if args.background is None else {"source": args.scene, "background": args.background}
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update=data),
                                 "split": cfg.split.model_copy(update={"order": "last"}),
                                 "evaluate": cfg.evaluate.model_copy(update={"split": "test"})})  # else val
    with tempfile.TemporaryDirectory(prefix="nerf-profile-") as scratch:
        rays_folder = prepare_rays(cfg, Path(scratch))
        part = ray_files.load(rays_folder, "train")
        heldout = ray_files.evaluation_part(rays_folder, cfg.evaluate.split)
        model = profile(cfg, name, preset, part, args.warmup_steps)
        profile_render(model, heldout, cfg.evaluate.chunk_rays, preset.jit_compile)


def profile(cfg, name, preset, part, warmup_steps: int):
    keras.utils.set_random_seed(0)
    model = build_nerf(preset, near=part.near, far=part.far, contracted=False, bound=cfg.scene.bound,
                       background=cfg.data.background, seed=0)
    compile_for_training(model, preset.optimizer, warmup_steps * 10, preset.jit_compile)
    dataset = datasets.train_dataset(part, preset.batch, seed=0)
    start = time.perf_counter()
    model.fit(dataset, steps_per_epoch=warmup_steps, epochs=1, verbose=0, shuffle=False,
              callbacks=model.training_callbacks())
    occupancy = isinstance(model.sampler, OccupancySampler)
    print(f"{name}: {warmup_steps} warm-up steps in {time.perf_counter() - start:.1f} s; "
          f"occupied cells {float(tf.reduce_mean(model.sampler.grid.occupied)) if occupancy else 1.0:.3f}")
    batches = iter(dataset)
    (ray_origins, ray_directions), target = next(batches)
    num_samples = preset.sampler.num_samples
    print(f"batch: {ray_origins.shape[0]} rays x {num_samples} samples; image size {part.height}x{part.width}")
    timed("input pipeline (next batch)", lambda: next(batches), repeats=20)

    jit = preset.jit_compile
    # With the fused hash-grid op XLA compiles the parts around it, not whole functions (NeRF.plan_xla).
    whole = model.plan_xla(jit)
    step = tf.function(model.train_step, jit_compile=whole)
    timed("train step (all of it)", step, ((ray_origins, ray_directions), target))

    # As the train step samples: the native march where the model runs around native ops.
    sample = tf.function(lambda o, d: model.sample_rays(o, d, training=True), jit_compile=whole)
    timed("sampling along rays", sample, ray_origins, ray_directions)
    timed("which rays meet matter (the step's hit test)", tf.function(model.rays_hit, jit_compile=whole),
          ray_origins, ray_directions)

    t_vals, _ = sample(ray_origins, ray_directions)
    points = model.space.warp(tf.reshape(ray_origins[:, None] + ray_directions[:, None] * t_vals[..., None], [-1, 3]))
    directions = tf.reshape(tf.broadcast_to(ray_directions[:, None], [ray_origins.shape[0], num_samples, 3]), [-1, 3])
    field = model.field
    timed("field forward", tf.function(lambda p, d: field(p, d), jit_compile=whole), points, directions)

    def mlp_fb(f, d):
        with tf.GradientTape() as tape:
            tape.watch(f)
            rgb, sigma = field.decode(f, d)
            loss = tf.reduce_sum(rgb) + tf.reduce_sum(sigma)
        return tape.gradient(loss, [f, *mlp_vars])

    def forward_backward(p, d):
        if model.uses_native_op:  # as the train step runs it: the op, the MLPs' part (XLA), the op's gradient
            features = encoding(p)
            feature_gradient, *mlp_gradients = xla.part(model, "profile_mlp_fb", mlp_fb)(features, d)
            return [encoding.table_gradient(p, feature_gradient), *mlp_gradients]
        with tf.GradientTape() as tape:
            rgb, sigma = field(p, d)
            loss = tf.reduce_sum(rgb) + tf.reduce_sum(sigma)
        return [tf.convert_to_tensor(g) for g in tape.gradient(loss, field.trainable_variables)]

    if isinstance(field, HashGridField):
        encoding = field.encoding
        mlp_vars = [v for v in field.trainable_variables if v is not encoding.table]
        timed("field forward + backward", tf.function(forward_backward, jit_compile=whole), points, directions)

        def encoding_fb(p):
            if model.uses_native_op:
                return encoding(p), encoding.table_gradient(p, tf.ones([tf.shape(p)[0], encoding.output_dim]))
            with tf.GradientTape() as tape:
                encoded = encoding(p)
                loss = tf.reduce_sum(encoded)
            return encoded, tf.convert_to_tensor(tape.gradient(loss, encoding.table))

        timed(f"  hash encoding forward + backward ({'fused op' if model.uses_native_op else 'TF ops'})",
              tf.function(encoding_fb, jit_compile=whole), points)
        features = encoding(points)
        timed("  MLPs forward + backward", tf.function(mlp_fb, jit_compile=jit), features, directions)

    gradients = [tf.zeros_like(v) for v in model.trainable_variables]
    timed("optimizer update", tf.function(lambda: model.optimizer.apply(gradients, model.trainable_variables),
                                          jit_compile=whole))
    if occupancy:
        grid = model.sampler.grid
        update = tf.function(lambda: grid.update(field.density, model.space, model.seed_generator),
                             jit_compile=whole)
        timed(f"occupancy grid update (every {preset.sampler.update_every} steps)", update)
    print(f"parameters: {sum(int(np.prod(v.shape)) for v in model.trainable_variables):,}")
    return model


def profile_render(model, part, chunk_rays: int, jit: bool) -> None:
    """A held-out view rendered whole, then one chunk of its rays through each part of rendering."""
    renderer = ChunkedRenderer(model, chunk_rays, jit)
    origins, directions = part.view_rays(0)
    renderer(origins, directions)  # compiles every chunk size
    renderer.samples_evaluated = 0
    start = time.perf_counter()
    out = renderer(origins, directions)
    frame_ms = (time.perf_counter() - start) * 1000
    hit = out["acc"] > 0
    num_samples = model.sampler.sampler_config.num_samples
    print(f"render: a {part.part} view of {part.height}x{part.width} in {frame_ms:.0f} ms; "
          f"{hit.mean():.1%} of its rays meet occupied space ({chunk_rays}-ray chunks); the field was asked "
          f"{renderer.samples_evaluated / max(hit.sum(), 1):.1f} of their {num_samples} samples each (the rest lay "
          f"behind opaque matter)")
    o, d = origins.reshape(-1, 3), directions.reshape(-1, 3)
    chunk = np.flatnonzero(hit.ravel())[:chunk_rays]
    chunk_o, chunk_d = tf.constant(o[chunk]), tf.constant(d[chunk])
    timed("  which rays meet matter (a chunk)", renderer.hit_chunk, tf.constant(o[:chunk_rays]),
          tf.constant(d[:chunk_rays]))
    timed("  render a chunk of rays that meet matter", renderer, o[chunk], d[chunk])
    timed("    of which sampling", renderer.sample_chunk, chunk_o, chunk_d)
    t_vals, deltas = renderer.sample_chunk(chunk_o, chunk_d)
    timed(f"  all {num_samples} samples of the chunk: field + compositing", renderer.composite_chunk, chunk_o,
          chunk_d, t_vals, deltas)
    points = model.space.warp(tf.reshape(chunk_o[:, None] + chunk_d[:, None] * t_vals[..., None], [-1, 3]))
    dirs = tf.reshape(tf.broadcast_to(chunk_d[:, None], [len(chunk), num_samples, 3]), [-1, 3])
    whole = model.plan_xla(jit)
    timed("    of which the field", tf.function(lambda p, d: model.field(p, d), jit_compile=whole), points, dirs)
    field = model.field
    if isinstance(field, HashGridField):
        timed("      hash encoding", tf.function(field.encoding, jit_compile=whole), points)
        timed("      hash encoding + density MLP", tf.function(field.density, jit_compile=whole), points)


if __name__ == "__main__":
    main()

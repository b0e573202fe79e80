"""Where a Gaussian-splat training step's time goes: each part traced and timed alone, on one training view.

    python benchmarks/profile_splats.py --scene ../shared/data/lego_tiny.npz --warmup-steps 300
    python benchmarks/profile_splats.py --scene ../shared/data/chair --background 1 --warmup-steps 200

The scene goes through the pipeline's data stages (as ``bench_train.py``'s); the ``splats`` preset trains
``--warmup-steps`` steps through the method (``fit``, densification included) so that the Gaussians are what
a run has at that point. Then, on the first training view, the median of ``--repeats`` runs of: the projection
(EWA, ``rasterizer.project``), the colours (spherical harmonics), the rasterizer op's forward, the loss (L1 +
D-SSIM), the whole forward + backward (the op's backward and the projection's and colours' gradients), the
whole step (with Adam and the density control's statistics); and once, the density control (clone, split,
prune, moments following). Also the Gaussians, how many are drawn, and their Gaussian-tile entries. Prints
milliseconds; ``--set KEY=VALUE`` changes params (``presets.splats.…``) as in ``bench_train.py``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import nerf_pipeline.runtime.quiet  # noqa: F401  first: TensorFlow's start-up noise filtered, as in stages

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from nerf_pipeline import methods  # noqa: E402
from nerf_pipeline.benchmarking import load_config, median_ms, peak_rss_mb, prepare_rays  # noqa: E402
from nerf_pipeline.scenes import ray_files  # noqa: E402
from nerf_pipeline.splats import rasterizer, training  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--scene", required=True, help="what data.source takes")
    parser.add_argument("--background", type=float, default=None, help="data.background (1: NeRF-synthetic's white)")
    parser.add_argument("--warmup-steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    cfg = load_config(args.params, ["preset=splats", *args.set])
    data = cfg.data.model_copy(update={"source": args.scene, "background": cfg.data.background
                                       if args.background is None else args.background})
    cfg = cfg.model_copy(update={"data": data, "split": cfg.split.model_copy(update={"order": "last"})})
    with tempfile.TemporaryDirectory(prefix="profile-splats-") as scratch:
        train = ray_files.load(prepare_rays(cfg, Path(scratch)), "train")
        if rasterizer.native_library() is None:
            print("the native rasterizer is not available: the TensorFlow reference is profiled")
        method = methods.build(cfg, train)
        start = time.perf_counter()
        method.fit(train, epochs=1, steps_per_epoch=args.warmup_steps, total_steps=cfg.epochs *
                   cfg.active.steps_per_epoch, seed=cfg.seed)
        warmup_s = time.perf_counter() - start
        trainer, g = method.trainer, method.gaussians
        image, kept, c2w, intrinsics = training.step_inputs(train, 0, None, cfg.seed)
        height, width = image.shape[:2]
        cam = rasterizer.Camera(tf.constant(c2w, tf.float32), *(float(v) for v in intrinsics), width, height)
        background = tf.constant([cfg.data.background] * 3, tf.float32)
        target = tf.constant(image, tf.float32) / 255.0
        kept = tf.ones([height, width]) if kept is None else tf.constant(kept, tf.float32)
        ssim_weight = float(cfg.active.ssim_weight)
        library = rasterizer.native_library()

        def project():
            return rasterizer.project(g.means, g.log_scales, g.quats, cam)

        def colours():
            return rasterizer.sh_colors(g.sh(), 3, g.means, cam.position)

        projected = tf.function(project)()
        colors = tf.function(colours)()
        raster_inputs = (*projected[:2], colors, tf.sigmoid(g.opacity_logits), projected[2], projected[3])

        def raster_forward():
            return rasterizer.rasterize(*raster_inputs, width, height, background)

        rgb = tf.function(raster_forward)()[0]

        def loss():
            return training.image_loss(rgb, target, kept, ssim_weight)

        def forward_backward():
            with tf.GradientTape() as tape:
                means2d, conics, depths, radii = project()
                rendered = rasterizer.rasterize(means2d, conics, rasterizer.sh_colors(g.sh(), 3, g.means, cam.position),
                                                tf.sigmoid(g.opacity_logits), depths, radii, width, height, background)
                value, _ = training.image_loss(rendered[0], target, kept, ssim_weight)
            return tape.gradient(value, [g.variables[name] for name in training.NAMES])

        step_index = 10**6  # past densify.stop: the step alone, no density control after it
        step_function = trainer._step_function(height, width)
        step_args = (np.asarray(image, np.uint8), kept, np.asarray(c2w, np.float32), np.asarray(intrinsics, np.float32),
                     np.int32(training.sh_degree_at(step_index, cfg.active)), np.float32(1e-6))
        rows = [("projection (EWA, TF ops)", tf.function(project)),
                ("colours (SH degree 3, TF ops)", tf.function(colours)),
                ("rasterizer forward (op)", tf.function(raster_forward)),
                ("loss: L1 + D-SSIM, forward", tf.function(loss)),
                ("forward + backward, all of it", tf.function(forward_backward)),
                ("whole step (+ Adam, statistics)", lambda: step_function(*step_args))]
        figures = {name: median_ms(function, repeats=args.repeats) for name, function in rows}
        drawn = int(tf.reduce_sum(tf.cast(projected[3] > 0, tf.int32)))
        entries = None
        if library is not None:
            outputs = library.nerf_splat_rasterize(*rasterizer._inputs(*raster_inputs, background), width=width,
                                                   height=height)
            entries = int(outputs[6].shape[0])
        start = time.perf_counter()
        change = trainer.densify(screen=False)
        densify_ms = (time.perf_counter() - start) * 1000

    print(f"{args.scene}: {width}x{height}, after {args.warmup_steps} warm-up steps ({warmup_s:.0f} s): {drawn:,} of "
          f"{int(projected[3].shape[0]):,} Gaussians drawn, "
          f"{'?' if entries is None else f'{entries:,}'} Gaussian-tile entries; {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}")
    for name, ms in figures.items():
        print(f"  {name:<34}{ms:>9.1f} ms")
    print(f"  {'density control (once, numpy)':<34}{densify_ms:>9.1f} ms  (cloned {change.cloned}, split "
          f"{change.split}, pruned {change.pruned})")
    print(f"peak resident memory {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()

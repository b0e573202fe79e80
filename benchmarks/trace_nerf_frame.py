"""Where a NeRF orbit frame's time goes: a frame at a time through the method (as the render stage and
``bench_train.py`` render since the method seam) against the same frames' rays in one renderer call (as
``bench_train.py`` timed them before it).

    python benchmarks/trace_nerf_frame.py --scene ../shared/data/lego_tiny.npz --steps 300 --frames 20

The preset (``--preset``, default params.yaml's) trains ``--steps`` steps through the method (as the train stage
builds it), then the Keras example's orbit (phi -30°, radius 4) at the held-out views' size is rendered three
ways, each after an untimed warm-up: ``method.render`` per frame, the renderer per frame (the same rays without
the method around it), and the renderer on all frames' rays at once. The renderer pads each call's rays to a
power of two (``renderer.chunk_size``), so a frame of 10,000 rays costs what 16,384 do, and the field's calls
that stop at a ray's first opaque sample are many small ones per frame; rays of several frames fill the chunks.
Figures are printed; nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import nerf_pipeline.runtime.quiet  # noqa: F401  first: TensorFlow's start-up noise filtered, as in stages

import keras  # noqa: E402
import numpy as np  # noqa: E402

from nerf_pipeline import camera, methods  # noqa: E402
from nerf_pipeline.benchmarking import load_config, prepare_rays  # noqa: E402
from nerf_pipeline.methods import Camera  # noqa: E402
from nerf_pipeline.scenes import ray_files  # noqa: E402


def timed(function, repeats: int = 3) -> float:
    """The least of ``repeats`` wall times of ``function()`` in seconds (after one untimed call)."""
    function()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--scene", required=True, help="what data.source takes")
    parser.add_argument("--preset", default=None, help="a NeRF preset of params.yaml (default: its 'preset')")
    parser.add_argument("--steps", type=int, default=300, help="training steps before the frames are timed")
    parser.add_argument("--frames", type=int, default=20, help="orbit frames")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    cfg = load_config(args.params, args.set)
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"source": args.scene}),
                                 "preset": args.preset or cfg.preset})
    with tempfile.TemporaryDirectory(prefix="nerf-trace-") as scratch:
        rays_folder = prepare_rays(cfg, Path(scratch))
        train_part = ray_files.load(rays_folder, "train")
        heldout = ray_files.evaluation_part(rays_folder, cfg.evaluate.split)
        keras.utils.set_random_seed(cfg.seed)
        method = methods.build(cfg, train_part)
        if method.name != "nerf":
            raise SystemExit(f"error: preset '{cfg.preset}' is a {method.name} preset; this traces a NeRF's frame")
        print(f"training {args.steps} steps on {train_part.num_views} views …", flush=True)
        method.fit(train_part, epochs=1, steps_per_epoch=args.steps, total_steps=args.steps, seed=cfg.seed)

        height, width, lens = heldout.height, heldout.width, heldout.intrinsics[0]
        cameras = [Camera(pose, lens, height, width) for pose in camera.orbit_poses(args.frames, 30.0, 4.0)]
        rays = [cam.rays() for cam in cameras]
        origins, directions = (np.stack([r[i] for r in rays]) for i in (0, 1))
        renderer = method.renderer
        per_frame_method = timed(lambda: [method.render(cam) for cam in cameras]) / args.frames
        per_frame_renderer = timed(lambda: [renderer(o, d) for o, d in rays]) / args.frames
        batched = timed(lambda: renderer(origins, directions)) / args.frames
        print(f"{args.frames} orbit frames of {width}x{height} after {args.steps} steps ({heldout.part} views' lens), "
              "seconds a frame (best of 3):")
        print(f"  method.render, a frame at a time:        {per_frame_method:.4f}")
        print(f"  the renderer, a frame at a time:         {per_frame_renderer:.4f}")
        print(f"  the renderer, all frames in one call:    {batched:.4f}")


if __name__ == "__main__":
    main()

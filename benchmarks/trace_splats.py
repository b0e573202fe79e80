"""Splats training traced step by step on a scene: held-out PSNR every N steps, and what each densification saw
and did (the mean view-space gradients against the threshold, opacities, sizes; clones, splits, prunes).

    python benchmarks/trace_splats.py --scene ../shared/data/chair --background 1 --steps 2500 --eval-every 500 \\
        --set presets.splats.init.num_random=30000 --set presets.splats.densify.stop=3000
    python benchmarks/trace_splats.py … --set 'presets.splats.coarse_to_fine.downscales=[]' \\
        --set 'presets.splats.coarse_to_fine.until=[]'          # full-size views from the first step

Unlike ``bench_train.py`` (a wall-clock budget, the learning rate's decay stretched to it as the speed is
learnt), the run has a fixed number of steps (``--steps``: the means' learning rate decays over them), so two
runs differ only in what ``--set`` changes; its times are training time (scoring excluded). The scene goes
through the pipeline's data stages into ``--work`` (kept: a second run reuses the rays); scored on the test
split where the scene has one, else val, ``--heldout-views`` views evenly spread. Nothing here asserts a figure.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import nerf_pipeline.runtime.quiet  # noqa: F401  first: TensorFlow's start-up noise filtered, as in stages

import numpy as np  # noqa: E402

from nerf_pipeline import methods, scoring  # noqa: E402
from nerf_pipeline.benchmarking import load_config, prepare_rays  # noqa: E402
from nerf_pipeline.scenes import ray_files  # noqa: E402
from nerf_pipeline.scenes.scene import evenly_spread  # noqa: E402
from nerf_pipeline.splats.training import StepViews, densify_due  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def statistics(trainer, threshold: float) -> str:
    """What the density control is about to read: percentiles of the mean gradient, opacity, largest scale."""
    stats = {name: variable.numpy() for name, variable in trainer.stats.items()}
    grad = np.where(stats["count"] > 0, stats["grad_sum"] / np.maximum(stats["count"], 1), 0.0)
    arrays = trainer.gaussians.numpy()
    opacity = 1.0 / (1.0 + np.exp(-arrays["opacity_logits"]))
    scale = np.exp(arrays["log_scales"]).max(axis=1)
    return (f"mean gradient p50/p90/p99 {np.percentile(grad, 50):.1e}/{np.percentile(grad, 90):.1e}/"
            f"{np.percentile(grad, 99):.1e} ({np.mean(grad >= threshold):.0%} at or above {threshold:g}), opacity "
            f"p10/p50/p90 {'/'.join(f'{np.percentile(opacity, q):.3f}' for q in (10, 50, 90))}, largest scale p50 "
            f"{np.percentile(scale, 50):.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--scene", required=True, help="what data.source takes")
    parser.add_argument("--background", type=float, default=None, help="data.background (NeRF-synthetic: 1)")
    parser.add_argument("--steps", type=int, required=True, help="training steps (the learning rate decays over them)")
    parser.add_argument("--eval-every", type=int, default=500, help="score the held-out views every this many steps")
    parser.add_argument("--heldout-views", type=int, default=10)
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a params.yaml key")
    parser.add_argument("--work", default="/tmp/nerf-trace-splats", help="the rays are kept here between runs")
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    args = parser.parse_args()

    sets = [f"data.source={args.scene}", "preset=splats", *([f"data.background={args.background}"]
                                                             if args.background is not None else []), *args.set]
    cfg = load_config(args.params, sets)
    prepared = {name: getattr(cfg, name).model_dump(mode="json") for name in ("data", "poses", "split", "synthetic")}
    folder = Path(args.work) / hashlib.sha256(json.dumps(prepared, sort_keys=True).encode()).hexdigest()[:12]
    if not (folder / "rays").is_dir():
        prepare_rays(cfg, folder)
    rays = folder / "rays"
    train = ray_files.load(rays, "train")
    heldout = ray_files.evaluation_part(rays, "test")
    subset = evenly_spread(heldout.num_views, args.heldout_views)
    print(f"{args.scene}: {train.num_views} train views of {train.width}x{train.height}, scored on {len(subset)} "
          f"{heldout.part} views; {args.steps} steps; {' '.join(args.set) or 'params.yaml as it is'}", flush=True)

    method = methods.build(cfg, train)
    trainer = method._make_trainer(args.steps)  # (what fit makes: the means' rate decays over --steps)
    views, densify = StepViews(train, cfg.active, cfg.seed), cfg.active.densify
    rows, psnrs, train_s = [], [], 0.0
    for step in range(args.steps):
        before = statistics(trainer, densify.grad_threshold) if densify_due(step, densify) else None
        start = time.perf_counter()
        result = trainer.train_step(step, *views(step))
        train_s += time.perf_counter() - start
        psnrs.append(result.psnr)
        if before is not None:
            change = trainer.last_change
            print(f"  densify after step {step + 1}: {before} -> {change.cloned} cloned, {change.split} split, "
                  f"{change.pruned} pruned: {trainer.gaussians.count:,}", flush=True)
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            scored = scoring.score_views(method, heldout, subset)
            rows.append({"step": step + 1, "train_s": round(train_s, 1), "gaussians": trainer.gaussians.count,
                         "train_psnr": round(float(np.mean(psnrs)), 3),
                         f"{heldout.part}_psnr": round(float(np.mean([row["psnr"] for row in scored])), 3)})
            psnrs = []
            print(json.dumps(rows[-1]), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"scene": args.scene, "set": args.set, "steps": args.steps,
                                              "rows": rows}, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

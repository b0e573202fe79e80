"""Time-to-quality benchmark: train a preset against a wall-clock budget and record its PSNR curve.

    python benchmarks/bench_train.py --scene ../shared/data/lego_tiny.npz --budget-s 600 \\
        --versus keras_example --out summary.json
    python benchmarks/bench_train.py --scene ../shared/data/chair --background 1 --budget-s 1800 \\
        --eval-at-s 300 600 1800 --curve-views 25 --render-frames 3 --out chair.json
    python benchmarks/bench_train.py --scene ../shared/data/chair --background 1 --preset splats \\
        --budget-s 1800 --versus hashgrid --versus-budget-s 600 --out chair_splats_vs_nerf.json

The scene is anything ``data.source`` takes; it goes through the pipeline's own data stages
(download, poses, split, rays) into a temporary folder. An .npz in tiny_nerf layout is split as the
Keras example splits it: the first 80% of views train, the last 20% validate. A scene with its own
split (NeRF-synthetic) keeps it: the model trains on the train views and is scored on the test
views (the published protocol), or on val when there is no test split.

Each preset trains through its method (``methods.build`` and ``fit``: a NeRF with ``model.fit``, splats
with their own loop), so the NeRF and Gaussian splats compare in one invocation; at scheduled moments of
training time the clock is paused, held-out views (``--curve-views`` of them, evenly spread; default all) are
rendered with deterministic samples and the mean per-view PSNR is recorded as a point ``{wall_s, step,
<split>_psnr}`` (``wall_s`` is training time only: XLA compilation included, evaluation excluded
and reported apart as ``eval_s``). The summary also gives the training time at which each PSNR
threshold was first seen (an upper bound: the first evaluation at or above it), the final PSNR
and SSIM on every held-out view, steps/s, peak and per-point resident memory, and the orbit's
render time per frame at the held-out views' size next to the machine's compute bound. The final figures
have LPIPS (AlexNet, v0.1) too where its weights are in the cache (``nerf-pipeline lpips-weights``). With
``--versus``, a second preset (the faithful Keras example, or the NeRF beside splats) runs in the same invocation so the
ratios compare like with like.

Figures are printed and written to ``--out``; nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import nerf_pipeline.runtime.quiet  # noqa: F401  first: TensorFlow's start-up noise filtered, as in stages

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from nerf_pipeline import camera, methods, scoring, trained_folder  # noqa: E402
from nerf_pipeline.benchmarking import (BudgetRecorder, Horizon, eval_schedule, load_config,  # noqa: E402
                                        machine, mean_psnr, peak_rss_mb, prepare_rays, rss_mb)
from nerf_pipeline.methods import Camera  # noqa: E402
from nerf_pipeline.runtime import atomic  # noqa: E402
from nerf_pipeline.runtime.errors import UserError  # noqa: E402
from nerf_pipeline.scenes import ray_files  # noqa: E402
from nerf_pipeline.scenes.scene import evenly_spread  # noqa: E402
from nerf_pipeline.scoring import lpips as scoring_lpips  # noqa: E402
from nerf_pipeline.training import datasets  # noqa: E402

KERAS_EXAMPLE = {  # the Keras example as published, measured on lego_tiny (../shared/data/README.md)
    "time_to_18.9_s": 3886.0, "train_20_epochs_s": 3886.0, "render_120_frames_s": 136.0, "val_psnr_20_epochs": 18.90}


def matmul_flops_per_s(width: int) -> dict:
    """Measured float32 matmul throughput: at the model's layer shape and at a large square shape."""
    results = {}
    for name, (n, k, m) in {"model_layer": (65536, width, width), "large": (4096, 1024, 1024)}.items():
        a, b = tf.random.normal((n, k)), tf.random.normal((k, m))
        matmul = tf.function(lambda a, b: tf.matmul(a, b))
        matmul(a, b).numpy()
        repeats, start = 20, time.perf_counter()
        for _ in range(repeats):
            out = matmul(a, b)
        out.numpy()
        results[name] = 2 * n * k * m * repeats / (time.perf_counter() - start)
    return results


def mlp_flops_per_sample(method) -> float | None:
    """Multiply-adds ×2 of a NeRF's field's dense layers for one sample (encodings and gathers not counted); None
    for a method that is no NeRF."""
    field = getattr(getattr(method, "model", None), "field", None)
    layers = getattr(field, "hidden", None)
    layers = layers + [field.output_layer] if layers is not None else [
        getattr(field, name, None) for name in ("density_hidden", "density_out")] + list(
        getattr(field, "color_hidden", [])) + [getattr(field, "color_out", None)]
    if field is None or any(layer is None for layer in layers):
        return None
    return float(sum(2 * int(np.prod(layer.kernel.shape)) for layer in layers))


def bench_preset(cfg, name: str, train_part, heldout_part, budget_s: float, schedule_s: list[float],
                 thresholds: list[float], seed: int, stop_psnr: float | None = None, curve_views: int | None = None,
                 render_frames: int = 120, final_views: int | None = None, lpips=None,
                 save_to: Path | None = None) -> dict:
    """Train preset ``name`` for ``budget_s`` s of training time on ``train_part``, scored on ``heldout_part``
    (the curve on ``curve_views`` of its views, the final figures on ``final_views``, evenly spread; None: all;
    the final figures with LPIPS too where ``lpips`` is a scorer, ``scoring.lpips.scorer_for``'s); the trained
    model saved to the folder ``save_to`` (``methods.load`` reads it) before it is scored, where given."""
    cfg = cfg.model_copy(update={"preset": name, "seed": seed})
    preset = cfg.active
    datasets.check_batch(cfg, train_part.num_views, train_part.num_views * train_part.height * train_part.width)
    keras.utils.set_random_seed(seed)
    # As the train stage builds it (methods.build); the learning rate decays over the budget. Its length in steps
    # is unknown until the speed is: at each evaluation point it is re-estimated from the speed since the previous
    # point (the first interval includes XLA compilation, so the estimate starts long and settles); fit starts it
    # at 10^6 steps.
    method = methods.build(cfg, train_part)
    psnr_key = f"{heldout_part.part}_psnr"
    curve_subset = evenly_spread(heldout_part.num_views, curve_views or heldout_part.num_views)
    recorder = BudgetRecorder(lambda: mean_psnr(method, heldout_part, curve_subset), schedule_s, budget_s,
                              Horizon(method, budget_s), stop_psnr, psnr_key)
    rss_before = rss_mb()
    print(f"[{name}] training for {budget_s:.0f} s", flush=True)
    method.fit(train_part, epochs=1, steps_per_epoch=10**9, total_steps=10**6, seed=seed, callbacks=[recorder])
    train_s = recorder.train_s()
    peak = peak_rss_mb()
    if save_to is not None:
        save_to.mkdir(parents=True, exist_ok=True)
        trained_folder.write_model(save_to, method)
        print(f"[{name}] trained model saved to {save_to}", flush=True)

    final_subset = evenly_spread(heldout_part.num_views, final_views or heldout_part.num_views)
    print(f"[{name}] final evaluation on {len(final_subset)} of {heldout_part.num_views} {heldout_part.part} views",
          flush=True)
    start = time.perf_counter()
    rows = scoring.score_views(method, heldout_part, final_subset, lpips=lpips)
    final_eval_s = time.perf_counter() - start
    psnr, ssim = (np.array([row[key] for row in rows]) for key in ("psnr", "ssim"))
    lpips_figures = {} if lpips is None else {
        psnr_key.replace("psnr", "lpips"): float(np.mean([row["lpips"] for row in rows])),
        "lpips_net": scoring_lpips.net_name(lpips)}

    # The Keras example's orbit (theta over 360°, phi -30°, radius 4) at the held-out views' size, a frame at a
    # time: its first frame compiles every chunk size, the next ``render_frames`` are timed.
    height, width = heldout_part.height, heldout_part.width
    cameras = [Camera(pose, heldout_part.intrinsics[0], height, width)
               for pose in camera.orbit_poses(render_frames + 1, 30.0, 4.0)]
    method.render(cameras[0])
    renderer = getattr(method, "renderer", None)  # a NeRF's: it counts the field's samples
    if renderer is not None:
        renderer.samples_evaluated = 0
    start = time.perf_counter()
    hit = sum(int(np.count_nonzero(method.render(cam)["opacity"] > 0)) for cam in cameras[1:])
    render_s = time.perf_counter() - start
    samples = renderer.samples_evaluated if renderer is not None else None
    flops_per_sample = mlp_flops_per_sample(method)
    # (samples behind opaque matter are never asked)
    flops_per_frame = samples / render_frames * flops_per_sample if samples is not None and flops_per_sample else None
    matmul = matmul_flops_per_s(getattr(getattr(preset, "field", None), "width", 64))

    curve = recorder.curve
    return {
        "preset": name,
        "method": method.name,
        "training_figures": method.training_figures(),
        "curve": curve,
        "curve_views": [int(v) for v in curve_subset],
        "time_to_psnr_s": {f"{t:g}": next((p["wall_s"] for p in curve if p[psnr_key] >= t), None)
                           for t in thresholds},
        "final": {"split": heldout_part.part, "num_views": len(final_subset),
                  "size": [heldout_part.height, heldout_part.width], psnr_key: float(psnr.mean()),
                  psnr_key.replace("psnr", "ssim"): float(ssim.mean()), **lpips_figures, "wall_s": round(train_s, 2),
                  "steps": recorder.step, "stop_psnr": stop_psnr, "eval_s": round(final_eval_s, 1)},
        "steps_per_s": round(recorder.step / train_s, 3),
        "eval_s_total": round(recorder.eval_s, 2),
        "eval_s_per_point": round(recorder.eval_s / max(len(curve), 1), 3),
        "rss_mb": {"before_training": round(rss_before, 1), "peak": round(peak, 1),
                   "first_point": curve[0]["rss_mb"] if curve else None,
                   "last_point": curve[-1]["rss_mb"] if curve else None},
        "render_orbit": {"frames": render_frames, "size": [height, width], "seconds": round(render_s, 3),
                         "seconds_per_frame": round(render_s / render_frames, 3),
                         "frames_per_s": round(render_frames / render_s, 2),
                         "rays_through_occupied_space": int(hit),
                         "field_samples_per_hit_ray": round(samples / max(hit, 1), 2) if samples is not None
                         else None,
                         "mlp_flops_per_frame": flops_per_frame,
                         "matmul_flops_per_s": matmul,
                         "compute_bound_frames_per_s": round(matmul["model_layer"] / flops_per_frame, 1)
                         if flops_per_frame else None},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--scene", required=True,
                        help="what data.source takes: an .npz in tiny_nerf layout, a NeRF-synthetic folder, …")
    parser.add_argument("--background", type=float, default=None,
                        help="data.background: 1 for NeRF-synthetic's published protocol (white)")
    parser.add_argument("--budget-s", type=float, required=True, help="training wall-clock budget per preset")
    parser.add_argument("--preset", default=None, help="preset of params.yaml to time (default: its 'preset')")
    parser.add_argument("--versus", default=None, help="a second preset to time the same way, e.g. keras_example")
    parser.add_argument("--versus-budget-s", type=float, default=None, help="its budget (default: --budget-s)")
    parser.add_argument("--versus-stop-psnr", type=float, default=None,
                        help="end the versus run early once its val PSNR reaches this, e.g. 18.9")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--eval-every-s", type=float, default=None,
                        help="evaluate at this fixed interval (default: every 5 s to 1 min, then sparser)")
    parser.add_argument("--eval-at-s", type=float, nargs="+", default=None,
                        help="evaluate at these training times (and at the budget), e.g. 300 600 1800")
    parser.add_argument("--curve-views", type=int, default=None,
                        help="the curve's points score this many held-out views, evenly spread (default: all)")
    parser.add_argument("--final-views", type=int, default=None,
                        help="the final PSNR/SSIM score this many held-out views, evenly spread (default: all)")
    parser.add_argument("--no-lpips", action="store_true",
                        help="score the final views without LPIPS (it costs an AlexNet pass a view)")
    parser.add_argument("--render-frames", type=int, default=120, help="orbit frames timed after the first")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="change a params.yaml key for this run (YAML value), "
                             "e.g. presets.hashgrid.batch.size=8192")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[18.9, 25.0, 28.0, 30.0])
    parser.add_argument("--near", type=float, default=None, help="sampling bounds (default: the scene's own)")
    parser.add_argument("--far", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-models", default=None, metavar="FOLDER",
                        help="save each trained model to FOLDER/<preset> (to render or profile it later)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.render_frames < 1:  # (the orbit's time is a figure of every record)
        parser.error(f"--render-frames must be at least 1, got {args.render_frames}")

    cfg = load_config(args.params, args.set)
    background = cfg.data.background if args.background is None else args.background
    data = cfg.data.model_copy(update={"source": args.scene, "near": args.near, "far": args.far,
                                       "background": background})
    # Scored on the scene's test split where it has one (NeRF-synthetic's published protocol), else on val.
    cfg = cfg.model_copy(update={"data": data, "split": cfg.split.model_copy(update={"val_fraction": 0.2,
                                                                                      "order": "last"}),
                                 "evaluate": cfg.evaluate.model_copy(update={"split": "test"})})
    scratch = tempfile.TemporaryDirectory(prefix="nerf-bench-")
    rays_folder = prepare_rays(cfg, Path(scratch.name))
    train_part = ray_files.load(rays_folder, "train")
    heldout_part = ray_files.evaluation_part(rays_folder, cfg.evaluate.split)
    heldout = heldout_part.part
    print(f"{args.scene}: {train_part.num_views} train views, scored on {heldout_part.num_views} {heldout} views of "
          f"{heldout_part.height}x{heldout_part.width}")

    lpips, why_not = (None, "LPIPS: not asked for (--no-lpips)") if args.no_lpips else scoring_lpips.scorer_for(
        heldout_part.height, heldout_part.width)
    if why_not:
        print(why_not)

    summary = {"scene": str(args.scene), "machine": machine(), "reference_keras_example": KERAS_EXAMPLE,
               "split": {"train": train_part.num_views, heldout: heldout_part.num_views},
               "background": cfg.data.background, "set": args.set, "budget_s": args.budget_s,
               "thresholds": args.thresholds, "results": {}}
    runs = [(args.preset or cfg.preset, args.budget_s, None)]
    if args.versus:
        runs.append((args.versus, args.versus_budget_s or args.budget_s, args.versus_stop_psnr))
    for name, budget, stop_psnr in runs:
        if name not in cfg.presets:
            sys.exit(f"error: preset '{name}' is not in {args.params} (presets: {', '.join(cfg.presets)})")
        result = bench_preset(cfg, name, train_part, heldout_part, budget,
                              eval_schedule(budget, args.eval_every_s, args.eval_at_s), args.thresholds, args.seed,
                              stop_psnr, args.curve_views, args.render_frames, args.final_views, lpips,
                              Path(args.save_models) / name if args.save_models else None)
        summary["results"][name] = result
        print(json.dumps({k: result[k] for k in ("time_to_psnr_s", "final", "steps_per_s", "rss_mb")}, indent=1))
        print(json.dumps(result["render_orbit"], indent=1), flush=True)

    main_name = runs[0][0]
    ours = summary["results"][main_name]["time_to_psnr_s"].get("18.9")
    ratios = {"time_to_18.9_vs_published_keras_example": round(KERAS_EXAMPLE["time_to_18.9_s"] / ours, 1)
              if ours else None,
              "render_vs_published_keras_example": round(
                  KERAS_EXAMPLE["render_120_frames_s"] / 120
                  / summary["results"][main_name]["render_orbit"]["seconds_per_frame"], 1)}
    if args.versus:
        theirs = summary["results"][args.versus]["time_to_psnr_s"].get("18.9")
        ratios["time_to_18.9_vs_versus_run"] = round(theirs / ours, 1) if ours and theirs else None
    summary["ratios"] = ratios
    print(json.dumps(ratios, indent=1))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out, json.dumps(summary, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    try:
        main()
    except UserError as e:  # a wrong path or a malformed scene/params file: one line, no traceback
        sys.exit(f"error: {e}")

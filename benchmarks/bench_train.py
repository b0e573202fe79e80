"""Time-to-quality benchmark: train a preset against a wall-clock budget and record its PSNR curve.

    python benchmarks/bench_train.py --scene ../shared/data/lego_tiny.npz --budget-s 600 \\
        --versus keras_example --out summary.json
    python benchmarks/bench_train.py --scene ../shared/data/chair --background 1 --budget-s 1800 \\
        --eval-at-s 300 600 1800 --curve-views 25 --render-frames 3 --out chair.json

The scene is anything ``data.source`` takes; it goes through the pipeline's own data stages
(download, poses, split, rays) into a temporary folder. An .npz in tiny_nerf layout is split as the
Keras example splits it: the first 80% of views train, the last 20% validate. A scene with its own
split (NeRF-synthetic) keeps it: the model trains on the train views and is scored on the test
views (the published protocol), or on val when there is no test split.

Each preset trains with ``model.fit``; at scheduled moments of training time the clock is paused,
held-out views (``--curve-views`` of them, evenly spread; default all) are rendered with
deterministic samples and the mean per-view PSNR is recorded as a point ``{wall_s, step,
<split>_psnr}`` (``wall_s`` is training time only: XLA compilation included, evaluation excluded
and reported apart as ``eval_s``). The summary also gives the training time at which each PSNR
threshold was first seen (an upper bound: the first evaluation at or above it), the final PSNR
and SSIM on every held-out view, steps/s, peak and per-point resident memory, and the orbit's
render time per frame at the held-out views' size next to the machine's compute bound. With
``--versus``, a second preset (the faithful Keras example) runs in the same invocation so the
ratios compare like with like.

Figures are printed and written to ``--out``; nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from ruamel.yaml import YAML, YAMLError  # noqa: E402

from nerf_pipeline import camera, config  # noqa: E402
from nerf_pipeline.model.fields import HashGridField, MLPField  # noqa: E402
from nerf_pipeline.model.nerf import build_nerf, compile_for_training  # noqa: E402
from nerf_pipeline.model.renderer import ChunkedRenderer  # noqa: E402
from nerf_pipeline.runtime import atomic  # noqa: E402
from nerf_pipeline.runtime.errors import UserError  # noqa: E402
from nerf_pipeline.scenes import ray_files  # noqa: E402
from nerf_pipeline.scenes.scene import evenly_spread  # noqa: E402
from nerf_pipeline.stages import download, poses, rays, split  # noqa: E402
from nerf_pipeline.stages.evaluate import evaluation_part, image_metrics  # noqa: E402
from nerf_pipeline.training import datasets  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from bench_stages import set_key  # noqa: E402

KERAS_EXAMPLE = {  # the Keras example as published, measured on lego_tiny (../shared/data/README.md)
    "time_to_18.9_s": 3886.0, "train_20_epochs_s": 3886.0, "render_120_frames_s": 136.0, "val_psnr_20_epochs": 18.90}


def rss_mb() -> float:
    """Current resident memory of this process, MB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def eval_schedule(budget_s: float, every_s: float | None, at_s: list[float] | None = None) -> list[float]:
    """Training times at which to evaluate: ``at_s``, or every ``every_s``, or dense early (where thresholds
    are crossed) and sparse later; always at the budget."""
    if at_s:
        points = sorted(at_s)
    elif every_s:
        points = list(np.arange(every_s, budget_s, every_s))
    else:
        # (every minute from 5 min on, so a threshold crossed late is still timed to within 60 s)
        points = [*range(5, 60, 5), *range(60, 300, 15), *range(300, 100000, 60)]
    return [float(p) for p in points if p < budget_s] + [float(budget_s)]


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


def mlp_flops_per_sample(model) -> float:
    """Multiply-adds ×2 of the field's dense layers for one sample (encodings and gathers not counted)."""
    field = model.field
    layers = field.hidden + [field.output_layer] if isinstance(field, MLPField) else [
        field.density_hidden, field.density_out, *field.color_hidden, field.color_out]
    assert isinstance(field, (MLPField, HashGridField))
    return float(sum(2 * int(np.prod(layer.kernel.shape)) for layer in layers))


class BudgetRecorder(keras.callbacks.Callback):
    """Stops ``fit`` at the budget; at each scheduled training time, pauses the clock and evaluates."""

    def __init__(self, evaluate, schedule: list[float], budget_s: float, on_point=None,
                 stop_psnr: float | None = None, psnr_key: str = "val_psnr"):
        super().__init__()
        self.evaluate, self.schedule, self.budget_s = evaluate, list(schedule), budget_s
        self.psnr_key = psnr_key
        self.stop_psnr = stop_psnr
        self.on_point = on_point
        self.curve: list[dict] = []
        self.eval_s = 0.0
        self.step = 0

    def on_train_begin(self, logs=None):
        self.start = time.perf_counter()

    def train_s(self) -> float:
        return time.perf_counter() - self.start - self.eval_s

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if not self.schedule or self.train_s() < self.schedule[0]:
            return
        wall_s = self.train_s()
        while self.schedule and self.schedule[0] <= wall_s:
            self.schedule.pop(0)
        pause = time.perf_counter()
        psnr = self.evaluate()
        self.curve.append({"wall_s": round(wall_s, 2), "step": self.step, self.psnr_key: round(psnr, 3),
                           "rss_mb": round(rss_mb(), 1)})
        print(f"  {wall_s:8.1f} s  step {self.step:6d}  {self.psnr_key.replace('_psnr', '')} PSNR {psnr:6.2f} dB "
              f"(evaluated in {time.perf_counter() - pause:.0f} s)", flush=True)
        if self.on_point is not None:
            self.on_point(self.curve)
        self.eval_s += time.perf_counter() - pause
        if wall_s >= self.budget_s or (self.stop_psnr is not None and psnr >= self.stop_psnr):
            self.model.stop_training = True


def read_yaml(text: str, what: str):
    """``text`` read as YAML 1.2, as DVC and ``config.load`` read params.yaml (``on``/``off`` stay strings,
    ``1e-2`` is a number)."""
    try:
        return YAML(typ="safe").load(io.StringIO(text))
    except YAMLError as e:
        raise UserError(f"{what} is not valid YAML: {str(e).splitlines()[0]}") from None


def load_config(params_path, sets: list[str]) -> config.Config:
    """``params_path`` with each ``KEY=VALUE`` of ``sets`` applied (dotted keys, YAML 1.2 values), validated."""
    params = read_yaml(Path(params_path).read_text(), str(params_path))
    for item in sets:
        key, _, value = item.partition("=")
        set_key(params, key, read_yaml(value, f"the value of {key} in {item!r}"))
    return config.from_dict(params, str(params_path))


def prepare_rays(cfg: config.Config, folder: Path) -> Path:
    """The scene of ``cfg.data.source`` through the pipeline's data stages into ``folder``; the rays folder."""
    download.run(cfg, out_scene=folder / "scene")
    poses.run(cfg, in_scene=folder / "scene", out_cameras=folder / "cameras.npz")
    split.run(cfg, in_cameras=folder / "cameras.npz", out_split=folder / "split.json")
    rays.run(cfg, in_scene=folder / "scene", in_cameras=folder / "cameras.npz", in_split=folder / "split.json",
             out_rays=folder / "rays")
    return folder / "rays"


def mean_psnr(renderer, part, views) -> float:
    """The mean per-view PSNR of ``views`` of ``part``, rendered one at a time."""
    values = []
    for view in views:
        out = renderer(*part.view_rays(view))
        values.append(-10 * np.log10(np.mean((out["rgb"] - part.view_rgb(view)) ** 2)))
    return float(np.mean(values))


def bench_preset(cfg: config.Config, name: str, train_part, heldout_part, budget_s: float, schedule_s: list[float],
                 thresholds: list[float], seed: int, stop_psnr: float | None = None, curve_views: int | None = None,
                 render_frames: int = 120, final_views: int | None = None) -> dict:
    """Train preset ``name`` for ``budget_s`` s of training time on ``train_part``, scored on ``heldout_part``
    (the curve on ``curve_views`` of its views, the final figures on ``final_views``, evenly spread; None: all)."""
    cfg = cfg.model_copy(update={"preset": name})
    preset = cfg.active
    datasets.check_batch(cfg, train_part.num_views, train_part.num_views * train_part.height * train_part.width)
    keras.utils.set_random_seed(seed)
    # The learning rate decays over the budget. Its length in steps is unknown until the speed is:
    # at each evaluation point it is re-estimated from the speed since the previous point (the
    # first interval includes XLA compilation, so the estimate starts long and settles).
    model = build_nerf(preset, near=train_part.near, far=train_part.far, contracted=False,
                       bound=cfg.scene.bound, background=cfg.data.background, seed=seed)
    schedule = compile_for_training(model, preset.optimizer, total_steps=10**6, jit_compile=preset.jit_compile)

    def set_horizon(curve: list[dict]) -> None:
        if len(curve) < 2:
            return
        (a, b), remaining_s = curve[-2:], budget_s - curve[-1]["wall_s"]
        speed = (b["step"] - a["step"]) / max(b["wall_s"] - a["wall_s"], 1e-6)
        schedule.set_total_steps(b["step"] + speed * max(remaining_s, 0.0))

    renderer = ChunkedRenderer(model, 16384, preset.jit_compile)
    psnr_key = f"{heldout_part.part}_psnr"
    curve_subset = evenly_spread(heldout_part.num_views, curve_views or heldout_part.num_views)
    recorder = BudgetRecorder(lambda: mean_psnr(renderer, heldout_part, curve_subset), schedule_s, budget_s,
                              set_horizon, stop_psnr, psnr_key)
    rss_before = rss_mb()
    print(f"[{name}] training for {budget_s:.0f} s", flush=True)
    model.fit(datasets.train_dataset(train_part, preset.batch, seed), epochs=1, steps_per_epoch=10**9,
              callbacks=[*model.training_callbacks(), recorder], verbose=0, shuffle=False)
    train_s = recorder.train_s()
    peak = peak_rss_mb()

    final_subset = evenly_spread(heldout_part.num_views, final_views or heldout_part.num_views)
    print(f"[{name}] final evaluation on {len(final_subset)} of {heldout_part.num_views} {heldout_part.part} views",
          flush=True)
    start = time.perf_counter()
    scores = [image_metrics(renderer(*heldout_part.view_rays(v))["rgb"][None], heldout_part.view_rgb(v)[None])
              for v in final_subset]
    final_eval_s = time.perf_counter() - start
    psnr, ssim = (np.concatenate(values) for values in zip(*scores))

    # The Keras example's orbit (theta over 360°, phi -30°, radius 4) at the held-out views' size:
    # its first frame compiles every chunk size, the next ``render_frames`` are timed.
    height, width = heldout_part.height, heldout_part.width
    orbit_poses = camera.orbit_poses(render_frames + 1, 30.0, 4.0)
    orbit_origins, orbit_directions = camera.generate_rays(orbit_poses, height, width, heldout_part.intrinsics[0])
    renderer(orbit_origins[:1], orbit_directions[:1])
    renderer.samples_evaluated = 0
    start = time.perf_counter()
    orbit = renderer(orbit_origins[1:], orbit_directions[1:])
    render_s = time.perf_counter() - start
    hit = np.count_nonzero(orbit["acc"] > 0)
    samples_per_frame = renderer.samples_evaluated / render_frames  # those behind opaque matter are never asked
    flops_per_frame = samples_per_frame * mlp_flops_per_sample(model)
    matmul = matmul_flops_per_s(preset.field.width)

    curve = recorder.curve
    return {
        "preset": name,
        "curve": curve,
        "curve_views": [int(v) for v in curve_subset],
        "time_to_psnr_s": {f"{t:g}": next((p["wall_s"] for p in curve if p[psnr_key] >= t), None)
                           for t in thresholds},
        "final": {"split": heldout_part.part, "num_views": len(final_subset),
                  "size": [heldout_part.height, heldout_part.width], psnr_key: float(psnr.mean()),
                  psnr_key.replace("psnr", "ssim"): float(ssim.mean()), "wall_s": round(train_s, 2),
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
                         "field_samples_per_hit_ray": round(renderer.samples_evaluated / max(hit, 1), 2),
                         "mlp_flops_per_frame": flops_per_frame,
                         "matmul_flops_per_s": matmul,
                         "compute_bound_frames_per_s": round(matmul["model_layer"] / flops_per_frame, 1)
                         if flops_per_frame else None},
    }


def machine() -> dict:
    gpus = tf.config.list_physical_devices("GPU")
    cpu = "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "gpus": [g.name for g in gpus],
            "gpu_details": [tf.config.experimental.get_device_details(g) for g in gpus],
            "python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__}


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
    parser.add_argument("--render-frames", type=int, default=120, help="orbit frames timed after the first")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="change a params.yaml key for this run (YAML value), e.g. presets.hashgrid.batch.size=8192")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[18.9, 25.0, 28.0, 30.0])
    parser.add_argument("--near", type=float, default=None, help="sampling bounds (default: the scene's own)")
    parser.add_argument("--far", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

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
    train_part, heldout_part = ray_files.load(rays_folder, "train"), evaluation_part(cfg, rays_folder)
    heldout = heldout_part.part
    print(f"{args.scene}: {train_part.num_views} train views, scored on {heldout_part.num_views} {heldout} views of "
          f"{heldout_part.height}x{heldout_part.width}")

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
                              stop_psnr, args.curve_views, args.render_frames, args.final_views)
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

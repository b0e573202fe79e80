"""3D Gaussian splatting on lego_tiny (the Keras example's data): time to the example's 18.9 dB, PSNR after a
training time, steps/s and the number of Gaussians, for the ``splats`` preset of params.yaml (issue 29).

    python benchmarks/bench_splats.py --data ../shared/data/lego_tiny.npz --seconds 300 --at 60 300
    python benchmarks/bench_splats.py --data … --seconds 60 -S crop=64 -S densify.start=200

The scene goes through the real download, poses, split (``order: last``: the first 80 views train, the last 20
validate) and rays stages; training is the method's own loop (``Trainer.train_step``, one view a step), stopped
every ``--eval-every`` seconds of training to score the val views through the method (``scoring.score_views``:
the evaluate stage's PSNR); scoring is not counted as training time. The first step's one-time trace is counted
(and given apart). Scoring runs every ``--eval-every`` seconds of training for the first 20 s, then every 30 s and
at each ``--at`` time. Times are the machine's at the time: say how loaded it was when quoting them.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]


def set_param(params: dict, assignment: str) -> None:
    """``a.b=value`` (value in YAML) into the splats preset of ``params``."""
    key, _, value = assignment.partition("=")
    section = params["presets"]["splats"]
    *parents, last = key.split(".")
    for parent in parents:
        section = section[parent]
    section[last] = yaml.safe_load(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "lego_tiny.npz"))
    parser.add_argument("--seconds", type=float, default=60.0, help="training time to run for")
    parser.add_argument("--steps", type=int, default=None, help="or this many steps")
    parser.add_argument("--at", type=float, nargs="*", default=[60.0, 300.0], help="report the PSNR at these times")
    parser.add_argument("--eval-every", type=float, default=1.0,
                        help="seconds of training between scorings for the first 20 s (then every 30 s, and at --at)")
    parser.add_argument("--target", type=float, default=18.9)
    parser.add_argument("-S", dest="set", action="append", default=[], help="a splats param: key=value")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the figures to this JSON file")
    args = parser.parse_args()

    import nerf_pipeline.runtime.quiet  # noqa: F401  first: TensorFlow's start-up noise filtered, as in stages
    from nerf_pipeline import config, scoring
    from nerf_pipeline.benchmarking import prepare_rays
    from nerf_pipeline.scenes import ray_files
    from nerf_pipeline.splats import method as splats_method
    from nerf_pipeline.splats import rasterizer, training

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params.update(preset="splats", seed=args.seed)
    params["data"]["source"] = str(Path(args.data).resolve())
    params["split"]["order"] = "last"
    for assignment in args.set:
        set_param(params, assignment)
    cfg = config.from_dict(params)
    with tempfile.TemporaryDirectory(prefix="bench-splats-") as scratch:
        rays = prepare_rays(cfg, Path(scratch))
        train, val = ray_files.load(rays, "train"), ray_files.load(rays, "val")
        if rasterizer.native_library() is None:  # (built or loaded here, not in the timed first step)
            print("the native rasterizer is not available: training runs on the TensorFlow reference", flush=True)
        method = splats_method.build(cfg, train)
        total = args.steps or cfg.epochs * cfg.active.steps_per_epoch
        trainer = method._make_trainer(total)
        views = training.StepViews(train, cfg.active, args.seed)  # (coarse to fine, as fit's)
        rows, reached, train_s, step, next_eval, first_step_s = [], None, 0.0, 0, args.eval_every, None
        while True:
            start = time.perf_counter()
            trainer.train_step(step, *views(step))
            elapsed = time.perf_counter() - start
            first_step_s = elapsed if first_step_s is None else first_step_s
            train_s += elapsed
            step += 1
            done = train_s >= args.seconds or (args.steps is not None and step >= args.steps)
            if train_s >= next_eval or done:
                scored = scoring.score_views(method, val, range(val.num_views))
                psnr = float(np.mean([row["psnr"] for row in scored]))
                rows.append({"train_s": round(train_s, 2), "step": step, "gaussians": trainer.gaussians.count,
                             "psnr": round(psnr, 3)})
                print(json.dumps(rows[-1]), flush=True)
                if reached is None and psnr >= args.target:
                    reached = rows[-1]
                next_eval = min([train_s + (args.eval_every if train_s < 20 else 30.0),
                                 *(t for t in args.at if t > train_s + 1e-6)])
            if done:
                break

    def at(seconds):
        before = [row for row in rows if row["train_s"] <= seconds + 0.5 * args.eval_every]
        return before[-1] if before else None

    steady = [row for row in rows if row["step"] > 1]
    figures = {"params": args.set, "target_db": args.target, "first_step_s": round(first_step_s, 2),
               "time_to_target": reached, "at": {str(s): at(s) for s in args.at}, "final": rows[-1],
               "steps_per_s": round((rows[-1]["step"] - 1) / max(rows[-1]["train_s"] - first_step_s, 1e-9), 2),
               "load_average": os.getloadavg(), "cpus": os.cpu_count(), "steady": len(steady)}
    print(json.dumps(figures, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps({**figures, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()

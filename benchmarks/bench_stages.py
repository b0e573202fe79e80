"""Run every stage of the pipeline on a source and measure each: wall time, peak resident memory, output size.

    python benchmarks/bench_stages.py --source ../shared/data/chair --work /tmp/chair \\
        --set data.background=1.0 --set epochs=1 --set presets.hashgrid.steps_per_epoch=200 --out chair.json

The stages run as DVC runs them (their scripts in ``stages/``, one process each) in ``--work``,
with the repo's params.yaml changed by ``--set key=value`` (YAML values). Each stage's peak
resident memory is that of its process (``getrusage`` of the child, exact); the outputs' sizes are
what it wrote. Figures are printed and written to ``--out``; nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
STAGES = (
    ("download", dict(out_scene="data/scene")),
    ("poses", dict(in_scene="data/scene", out_cameras="data/cameras.npz")),
    ("split", dict(in_cameras="data/cameras.npz", out_split="data/split.json")),
    ("rays", dict(in_scene="data/scene", in_cameras="data/cameras.npz", in_split="data/split.json",
                  out_rays="data/rays")),
    ("train", dict(in_rays="data/rays", out_model="models/model.keras", out_metrics="metrics/train.json",
                   out_history="metrics/train_history.csv", out_progress="models/progress.npz",
                   out_run_file="models/mlflow_run.json", out_checkpoint="models/checkpoint")),
    ("evaluate", dict(in_model="models/model.keras", in_rays="data/rays", in_run_file="models/mlflow_run.json",
                      out_metrics="metrics/eval.json", out_per_view="metrics/eval_per_view.csv",
                      out_grid="eval/grid.png")),
    ("render", dict(in_model="models/model.keras", in_rays="data/rays", in_progress="models/progress.npz",
                    in_run_file="models/mlflow_run.json", out_video="render/video.mp4",
                    out_depth_video="render/video_depth.mp4", out_gif="render/progress.gif")),
)


def size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return round(sum(p.stat().st_size for p in files) / 2**20, 1)


def set_key(params: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        params = params[key]
    params[last] = value


def run_stage(name: str, paths: dict, work: Path) -> dict:
    """One stage in a child process of a fresh wrapper, so the wrapper's RUSAGE_CHILDREN is the stage's alone."""
    flags = [w for key, value in paths.items() for w in ("--" + key.replace("_", "-"), value)]
    wrapper = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(r.returncode)")
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", wrapper, sys.executable, str(REPO / "stages" / f"{name}.py"),
                             *flags], cwd=work, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "DVC_ROOT": str(work)})
    wall_s = time.perf_counter() - start
    lines = result.stderr.strip().splitlines()
    peak_mb = int(lines[-1]) / 1024 if lines and lines[-1].isdigit() else None
    print("\n".join(line for line in lines[:-1] if line.startswith(f"[{name}]")), flush=True)
    if result.returncode != 0:
        print(result.stderr[-4000:], file=sys.stderr)
        sys.exit(f"stage {name} failed with exit status {result.returncode}")
    outs = {value: size_mb(work / value) for key, value in paths.items() if key.startswith("out_")}
    return {"wall_s": round(wall_s, 1), "peak_rss_mb": round(peak_mb, 1) if peak_mb else None, "outputs_mb": outs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--source", required=True)
    parser.add_argument("--work", required=True, type=Path)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--stages", nargs="+", default=[name for name, _ in STAGES])
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["source"] = str(Path(args.source).resolve()) if Path(args.source).exists() else args.source
    for item in args.set:
        key, _, value = item.partition("=")
        set_key(params, key, yaml.safe_load(value))
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    summary = {"source": args.source, "set": args.set, "stages": {}}
    for name, paths in STAGES:
        if name in args.stages:
            summary["stages"][name] = figures = run_stage(name, paths, args.work)
            print(f"{name}: {figures}", flush=True)
    for metrics in ("train", "eval"):
        path = args.work / "metrics" / f"{metrics}.json"
        if path.is_file():
            summary[metrics] = json.loads(path.read_text())
    summary["peak_rss_mb"] = max((s["peak_rss_mb"] or 0) for s in summary["stages"].values())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

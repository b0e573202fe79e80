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
import shlex
import subprocess
import sys
import time
from pathlib import Path

import nerf_pipeline.runtime.quiet  # noqa: F401  first: TensorFlow's start-up noise filtered, as in stages

import yaml
from ruamel.yaml import YAML

from nerf_pipeline.benchmarking import set_key

REPO = Path(__file__).resolve().parents[1]


def pipeline_stages() -> dict[str, list[str]]:
    """``{stage: its dvc.yaml cmd as arguments}``, in the pipeline's order: the benchmark runs what DVC runs."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return {name: shlex.split(stage["cmd"]) for name, stage in stages.items()}


def size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return round(sum(p.stat().st_size for p in files) / 2**20, 1)


def run_stage(name: str, cmd: list[str], work: Path) -> dict:
    """One stage in a child process of a fresh wrapper, so the wrapper's RUSAGE_CHILDREN is the stage's alone."""
    assert cmd[:2] == ["python", f"stages/{name}.py"], cmd
    flags = cmd[2:]
    paths = dict(zip(flags[::2], flags[1::2]))
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
    outs = {value: size_mb(work / value) for flag, value in paths.items() if flag.startswith("--out-")}
    return {"wall_s": round(wall_s, 1), "peak_rss_mb": round(peak_mb, 1) if peak_mb else None, "outputs_mb": outs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--source", required=True)
    parser.add_argument("--work", required=True, type=Path)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--stages", nargs="+", default=list(pipeline_stages()))
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    # Read as YAML 1.2, as DVC and config.load read params.yaml: `--set scene.contraction=off` stays the string
    # 'off' and `--set presets.hashgrid.optimizer.learning_rate=1e-2` is a number (PyYAML's 1.1 read false and
    # '1e-2'). PyYAML writes the copy: it quotes the strings that 1.1 would misread, which 1.2 reads the same.
    read_yaml = YAML(typ="safe").load
    params = read_yaml((REPO / "params.yaml").read_text())
    params["data"]["source"] = str(Path(args.source).resolve()) if Path(args.source).exists() else args.source
    for item in args.set:
        key, _, value = item.partition("=")
        set_key(params, key, read_yaml(value))
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    summary = {"source": args.source, "set": args.set, "stages": {}}
    for name, cmd in pipeline_stages().items():
        if name in args.stages:
            summary["stages"][name] = figures = run_stage(name, cmd, args.work)
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

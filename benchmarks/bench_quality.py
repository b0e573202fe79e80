"""Quality at fixed steps: the pipeline as a user runs it, on the built-in scene and the shared captures, over
several seeds; compared with the last recorded run, so that quality is never lost silently (issue 27).

    python benchmarks/bench_quality.py --data ../shared/data --seeds 0 1 --record
    python benchmarks/bench_quality.py --data ../shared/data --scene default --tree /tmp/old-checkout

Each (scene, seed) runs dvc.yaml's own commands, download to evaluate, in a scratch project made from
``--tree``'s ``dvc.yaml``, ``params.yaml`` and ``stages/`` (default: this checkout), with that tree's
``nerf_pipeline`` first on ``PYTHONPATH``: so an older commit's worktree is measured by the same script,
on the same machine. Training runs a fixed number of steps (``epochs`` x ``steps_per_epoch``), never a
time budget, so figures do not depend on the machine's speed or load; only ``seed`` changes between
seeds (weights, batches, jitter), never the split.

Scenes (each skipped, saying so, when its data is absent):

* ``default``: the built-in scene, params.yaml as it is (``dvc repro``'s run: 3 epochs, 585 steps);
* ``beer``: ``beer/`` through its COLMAP model, 180x320, a shuffled fifth held out (split.seed 0), 3 x 300 steps;
* ``stitch``: ``stitch/``, 400x400, its own test split, 3 x 300 steps.

The summary gives, per scene, the held-out PSNR and SSIM of each seed, their mean and spread (max - min).
With ``--compare FILE`` (default: the newest ``benchmarks/results/quality_*.json``) each scene's mean is set
against the recorded one and flagged when it moved by more than the larger of the two runs' seed-to-seed
spreads (at least ``--tolerance-db``). ``--record`` writes ``benchmarks/results/quality_<date>_<commit>.json``.
Nothing here asserts: it prints and records figures.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ruamel.yaml import YAML

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
STAGES = ("download", "poses", "split", "rays", "train", "evaluate")


@dataclass(frozen=True)
class Scene:
    name: str
    needs: str  # path under --data that must exist ("" for the built-in scene)
    settings: tuple[str, ...]  # KEY=VALUE for params.yaml; {data} is the --data folder
    about: str


SCENES = (
    Scene("default", "", (), "the built-in scene, params.yaml as it is (dvc repro's run)"),
    # shuffled, not every_8th: commits before every_8th existed (b89c5c3, the "before") can run it.
    Scene("beer", "beer/sparse/0", ("data.source={data}/beer", "data.downscale=4", "split.order=shuffled",
                                    "presets.hashgrid.steps_per_epoch=300"),
          "beer/ through its COLMAP model, 180x320, a shuffled fifth of the views held out, 3 x 300 steps"),
    Scene("stitch", "stitch/transforms_train.json", ("data.source={data}/stitch", "data.downscale=2",
                                                     "presets.hashgrid.steps_per_epoch=300"),
          "stitch/, 400x400, its test split, 3 x 300 steps"),
)


def yaml12() -> YAML:
    yaml = YAML()  # YAML 1.2, as DVC reads params.yaml (1e-2 is a number, off a string)
    yaml.preserve_quotes = True
    return yaml


def set_key(params: dict, dotted: str, value: str) -> None:
    """``params[a][b][c] = value`` for ``a.b.c``, the value read as YAML 1.2 (as ``dvc exp run -S`` does)."""
    *parents, last = dotted.split(".")
    node = params
    for key in parents:
        if key not in node:
            raise SystemExit(f"--set {dotted}: params.yaml has no '{key}'")
        node = node[key]
    if last not in node:
        raise SystemExit(f"--set {dotted}: params.yaml has no '{last}' under {'.'.join(parents) or 'the top'}")
    node[last] = yaml12().load(value)


def stage_commands(tree: Path) -> dict[str, str]:
    """dvc.yaml's command of each stage, as DVC would run it."""
    stages = yaml12().load((tree / "dvc.yaml").read_text())["stages"]
    return {name: " ".join(str(stages[name]["cmd"]).split()) for name in STAGES}


def git_commit(tree: Path) -> str:
    result = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return (result.stdout.strip() or "unknown") + ("+changes" if dirty else "")


def run_one(tree: Path, scene: Scene, seed: int, data: Path, work: Path, extra: list[str]) -> dict:
    """One pipeline run, download to evaluate, in a scratch project; its eval and train figures."""
    project = work / f"{scene.name}-seed{seed}"
    shutil.rmtree(project, ignore_errors=True)
    project.mkdir(parents=True)
    for name in ("dvc.yaml", "params.yaml", "stages", "camera_paths"):
        source = tree / name
        if source.is_dir():
            shutil.copytree(source, project / name)
        elif source.exists():
            shutil.copy2(source, project / name)
    yaml = yaml12()
    params = yaml.load((project / "params.yaml").read_text())
    for setting in (*scene.settings, f"seed={seed}", *extra):
        key, value = setting.split("=", 1)
        set_key(params, key, value.format(data=data.resolve()))
    with open(project / "params.yaml", "w") as f:
        yaml.dump(params, f)
    env = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("MLFLOW_TRACKING_URI", None)
    log_path = project / "pipeline.log"
    start = time.perf_counter()
    with open(log_path, "w") as log:
        for stage, command in stage_commands(tree).items():
            result = subprocess.run(command, shell=True, cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT)
            if result.returncode != 0:
                tail = log_path.read_text().splitlines()[-8:]
                raise RuntimeError(f"{scene.name} seed {seed}: stage {stage} failed ({result.returncode}); "
                                   f"{log_path}:\n" + "\n".join(tail))
    evaluation = json.loads((project / "metrics" / "eval.json").read_text())
    training = json.loads((project / "metrics" / "train.json").read_text())
    return {"psnr": evaluation["psnr"], "ssim": evaluation["ssim"], "split": evaluation["split"],
            "views": evaluation["num_views"], "size": f"{evaluation['width']}x{evaluation['height']}",
            "steps": training["steps"], "train_s": training["time"]["train_s"],
            "pipeline_s": round(time.perf_counter() - start, 1)}


def summarise(runs: dict[int, dict]) -> dict:
    psnr = [r["psnr"] for r in runs.values()]
    ssim = [r["ssim"] for r in runs.values()]
    return {"psnr_mean": sum(psnr) / len(psnr), "psnr_spread": max(psnr) - min(psnr),
            "ssim_mean": sum(ssim) / len(ssim), "seeds": {str(k): v for k, v in runs.items()}}


def newest_record() -> Path | None:
    records = sorted(RESULTS.glob("quality_*.json"), key=lambda p: p.stat().st_mtime)
    return records[-1] if records else None


def compare(now: dict, before: dict, tolerance_db: float) -> list[str]:
    """A line per scene in both: the means' difference, flagged when beyond both runs' seed-to-seed spread."""
    lines = []
    for name, scene in now["scenes"].items():
        old = before.get("scenes", {}).get(name)
        if old is None:
            lines.append(f"| {name} | {scene['psnr_mean']:.2f} | (not recorded) | | |")
            continue
        delta = scene["psnr_mean"] - old["psnr_mean"]
        allowed = max(scene["psnr_spread"], old["psnr_spread"], tolerance_db)
        verdict = ("MOVED: lower" if delta < 0 else "MOVED: higher") if abs(delta) > allowed else "within spread"
        lines.append(f"| {name} | {scene['psnr_mean']:.2f} | {old['psnr_mean']:.2f} | {delta:+.2f} (spread "
                     f"{allowed:.2f}) | {verdict} |")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data",
                        help="the folder holding beer/ and stitch/ (default: ../shared/data)")
    parser.add_argument("--scene", action="append", choices=[s.name for s in SCENES], default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--tree", type=Path, default=REPO, help="the checkout whose code runs (default: this one)")
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                        help="a params.yaml change for every run, e.g. presets.hashgrid.optimizer.learning_rate=0.02")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--compare", type=Path, default=None, help="a recorded quality_*.json (default: newest)")
    parser.add_argument("--tolerance-db", type=float, default=0.1)
    parser.add_argument("--record", action="store_true", help="write benchmarks/results/quality_<date>_<commit>.json")
    parser.add_argument("--out", type=Path, default=None, help="also write the summary here")
    args = parser.parse_args(argv)
    tree = args.tree.resolve()
    scenes = [s for s in SCENES if args.scene is None or s.name in args.scene]
    summary = {"commit": git_commit(tree), "tree": str(tree), "date": datetime.date.today().isoformat(),
               "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
               "seeds": args.seeds, "settings": args.extra, "scenes": {}, "skipped": {}}
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
        summary["machine"]["cpu"] = cpu
    except (OSError, StopIteration):
        pass
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-quality-"))
    for scene in scenes:
        if scene.needs and not (args.data / scene.needs).exists():
            summary["skipped"][scene.name] = f"{args.data / scene.needs} is absent"
            print(f"[{scene.name}] skipped: {args.data / scene.needs} is absent", flush=True)
            continue
        runs = {}
        for seed in args.seeds:
            runs[seed] = run_one(tree, scene, seed, args.data, work, args.extra)
            r = runs[seed]
            print(f"[{scene.name}] seed {seed}: PSNR {r['psnr']:.2f} dB, SSIM {r['ssim']:.4f} on {r['views']} "
                  f"{r['split']} views of {r['size']} after {r['steps']} steps ({r['train_s']:.0f} s training, "
                  f"{r['pipeline_s']:.0f} s in all)", flush=True)
        summary["scenes"][scene.name] = {"about": scene.about, **summarise(runs)}
    print(f"\nquality at fixed steps, {summary['commit']} on {summary['machine']['cpu']}:")
    print("| scene | PSNR mean | spread | SSIM mean | seeds |")
    print("|---|---|---|---|---|")
    for name, s in summary["scenes"].items():
        seeds = ", ".join(f"{v['psnr']:.2f}" for v in s["seeds"].values())
        print(f"| {name} | {s['psnr_mean']:.2f} | {s['psnr_spread']:.2f} | {s['ssim_mean']:.4f} | {seeds} |")
    before_path = args.compare or newest_record()
    if before_path is not None and before_path.is_file():
        before = json.loads(before_path.read_text())
        print(f"\nagainst {before_path.name} ({before.get('commit')}, {before.get('date')}):")
        print("| scene | now | recorded | difference | verdict |")
        print("|---|---|---|---|---|")
        print("\n".join(compare(summary, before, args.tolerance_db)))
    text = json.dumps(summary, indent=2) + "\n"
    if args.out:
        args.out.write_text(text)
    if args.record:
        path = RESULTS / f"quality_{summary['date']}_{summary['commit'].replace('+', '_')}.json"
        path.write_text(text)
        print(f"recorded {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

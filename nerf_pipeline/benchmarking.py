"""What the benchmarks (``benchmarks/``) share: params with overrides, the data stages into a scratch folder, a
wall-clock budget for ``fit`` with evaluations on a schedule, the machine and its memory.

The benchmarks are clients of the package: they import this, ``methods`` and ``scoring``, never a stage module's
internals or each other. Nothing here writes a pipeline output (it is no stage's dependency).
"""

from __future__ import annotations

import io
import os
import platform
import resource
import time
from pathlib import Path

import keras
import numpy as np
from ruamel.yaml import YAML, YAMLError

from nerf_pipeline import config
from nerf_pipeline.errors import UserError


def set_key(params: dict, dotted: str, value) -> None:
    """``params[a][b][c] = value`` for ``dotted`` ``a.b.c``."""
    *parents, last = dotted.split(".")
    for key in parents:
        params = params[key]
    params[last] = value


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
    from nerf_pipeline.stages import download, poses, rays, split

    download.run(cfg, out_scene=folder / "scene")
    poses.run(cfg, in_scene=folder / "scene", out_cameras=folder / "cameras.npz")
    split.run(cfg, in_cameras=folder / "cameras.npz", out_split=folder / "split.json")
    rays.run(cfg, in_scene=folder / "scene", in_cameras=folder / "cameras.npz", in_split=folder / "split.json",
             out_rays=folder / "rays")
    return folder / "rays"


def median_ms(function, *args, repeats: int) -> float:
    """The median of ``repeats`` calls of ``function(*args)`` in milliseconds, each until its tensors are numpy
    (the first call, which traces or compiles, is not counted)."""
    import tensorflow as tf

    tf.nest.map_structure(lambda t: t.numpy(), function(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        tf.nest.map_structure(lambda t: t.numpy(), function(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1000


def rss_mb() -> float:
    """Current resident memory of this process, MB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_s() -> float:
    """CPU time this process has used (all threads), s."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def machine() -> dict:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    cpu = "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "gpus": [g.name for g in gpus],
            "gpu_details": [tf.config.experimental.get_device_details(g) for g in gpus],
            "python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__}


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


class Horizon:
    """Stretches a method's learning-rate schedule to the budget (``TrainableMethod.set_total_steps``): every
    ``every_s`` seconds of training the steps left are estimated from the speed since the estimate before (a
    method whose steps slow down as it grows, as splats do, is given a little more than it will reach). The first
    interval, which holds tracing and compilation, only starts the clock: until the second, the schedule is fit's
    (10^6 steps), a learning rate at its start value. (It was set only at the benchmark's evaluation points once:
    at 800×800 the splats' means then moved at their first rate, about two pixels a step, for 600 s.)"""

    def __init__(self, method, budget_s: float, every_s: float = 10.0):
        self.method, self.budget_s, self.every_s = method, budget_s, every_s
        self.last = None

    def __call__(self, step: int, wall_s: float) -> None:
        if self.last is None:
            self.last = (step, wall_s) if wall_s >= self.every_s else None
            return
        if wall_s - self.last[1] < self.every_s:
            return
        speed = (step - self.last[0]) / max(wall_s - self.last[1], 1e-6)
        self.method.set_total_steps(step + speed * max(self.budget_s - wall_s, 0.0))
        self.last = (step, wall_s)


def mean_psnr(method, part, views) -> float:
    """The mean per-view PSNR of ``views`` of ``part`` as ``method`` renders them (of the unclipped MSE over every
    pixel, as validation during training measures it: ``scoring.score_views``' ``mse``)."""
    from nerf_pipeline import scoring

    return float(np.mean(scoring.psnr_of_mse([row["mse"] for row in scoring.score_views(method, part, views)])))


class BudgetRecorder(keras.callbacks.Callback):
    """Stops ``fit`` at the budget; at each scheduled training time, pauses the clock and evaluates (``evaluate()``:
    a PSNR), recording ``{wall_s, step, <psnr_key>, rss_mb}``; ``on_step(step, wall_s)`` after every step
    (training time; a ``Horizon``)."""

    def __init__(self, evaluate, schedule: list[float], budget_s: float, on_step=None,
                 stop_psnr: float | None = None, psnr_key: str = "val_psnr"):
        super().__init__()
        self.evaluate, self.schedule, self.budget_s = evaluate, list(schedule), budget_s
        self.psnr_key = psnr_key
        self.stop_psnr = stop_psnr
        self.on_step = on_step
        self.curve: list[dict] = []
        self.eval_s = 0.0
        self.step = 0

    def on_train_begin(self, logs=None):
        self.start = time.perf_counter()

    def train_s(self) -> float:
        return time.perf_counter() - self.start - self.eval_s

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.on_step is not None:
            self.on_step(self.step, self.train_s())
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
        self.eval_s += time.perf_counter() - pause
        if wall_s >= self.budget_s or (self.stop_psnr is not None and psnr >= self.stop_psnr):
            self.model.stop_training = True

"""The train stage's checkpoint: everything needed to continue training after an interruption.

A checkpoint folder (a DVC out marked ``persist``, so DVC keeps it across runs) holds, for
the last complete epoch E:

* ``state-E.keras``: the model with its optimizer state (weights, Adam moments, step count,
  occupancy grid);
* ``progress-E.npz``: ``frames [E, H, W, 3]`` uint8, the progress frames of epochs 1..E;
* ``method.json``: which method's state it is (``trained_folder.METHOD_FILE``: what the viewer loads it with
  while training runs);
* ``meta.json``: ``{"fingerprint", "epoch", "history", "steps", "run_id", "seed_state", "state",
  "progress"}``: ``history`` and ``steps`` are the rows recorded so far; ``seed_state`` is the sampler's
  random-generator state (Keras does not save it with the weights); ``state`` and ``progress`` name the two
  files above.

Each file is written atomically and ``meta.json`` last, so whenever the process dies,
``meta.json`` names complete files of one epoch; older epochs' files are deleted after.
A checkpoint is resumed from only when its fingerprint, a hash of the training params and
of the training data, matches the current one (``resume_point``: where a run starts).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path

import numpy as np

from nerf_pipeline import trained_folder
from nerf_pipeline.config import Config
from nerf_pipeline.runtime import atomic

log = logging.getLogger(__name__)


PACKAGE = Path(__file__).resolve().parents[1]  # the nerf_pipeline that runs (the tree's own: stages/_this_tree.py)


def code_digest(package: Path | None = None) -> str:
    """sha256 of the package's sources (``*.py``, ``*.cc``, ``*.h``: paths relative to it, and contents);
    ``package`` None: ``PACKAGE``."""
    package = PACKAGE if package is None else package
    digest = hashlib.sha256()
    for path in sorted(p for p in package.rglob("*") if p.suffix in (".py", ".cc", ".h") and p.is_file()):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def fingerprint(cfg: Config, data_files) -> str:
    """sha256 of the params that shape training, of the code that trains (``code_digest``) and of the bytes of
    ``data_files``. The code is in it because DVC reruns train when its code changed: a complete checkpoint of the
    old code, with the params and data unchanged, would otherwise be 'resumed' and the new code never train."""
    digest = hashlib.sha256()
    digest.update(code_digest().encode())
    params = {"epochs": cfg.epochs, "seed": cfg.seed, "preset": cfg.preset, "model": cfg.active.model_dump(),
              "scene": cfg.scene.model_dump(), "validation": cfg.validation.model_dump(),
              "background": cfg.data.background, "chunk_rays": cfg.evaluate.chunk_rays,
              "log_every_steps": cfg.mlflow.log_every_steps}
    digest.update(json.dumps(params, sort_keys=True).encode())
    for path in data_files:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


def load(folder, expected_fingerprint: str):
    """``(meta, frames)`` of a checkpoint that may be resumed, else ``None`` (with the reason logged)."""
    folder = Path(folder)
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        frames = np.load(folder / meta["progress"])["frames"]
        if not (folder / meta["state"]).is_file():
            raise FileNotFoundError(meta["state"])
    except (OSError, ValueError, KeyError) as e:
        log.warning("ignoring the unreadable checkpoint in %s (%s); training from scratch", folder, e)
        return None
    if meta.get("fingerprint") != expected_fingerprint:
        log.info("the checkpoint in %s was made with other params, data or code; training from scratch", folder)
        return None
    return meta, frames


@dataclasses.dataclass(frozen=True)
class ResumePoint:
    """Where a training run starts: ``fingerprint`` of its params and rays (every checkpoint it writes carries it);
    ``meta`` (``meta.json``'s) and ``frames`` (a list of ``[H, W, 3]`` uint8, epochs 1..``epoch``) of the checkpoint
    it resumes, or of none (``epoch`` 0, no rows, no frames)."""

    fingerprint: str
    meta: dict
    frames: list

    @property
    def epoch(self) -> int:
        """The last epoch the checkpoint completed (0: training starts from scratch)."""
        return int(self.meta["epoch"])

    @property
    def run_id(self) -> str | None:
        """The MLflow run the checkpoint's training logged into (None: none, or no checkpoint)."""
        return self.meta.get("run_id")

    def record(self) -> dict:
        """What ``callbacks.TrainingRecord`` continues from: the ``history`` and ``steps`` rows and the ``frames``."""
        return {"history": self.meta["history"], "steps": self.meta.get("steps", []), "frames": list(self.frames)}

    def restore(self, folder):
        """A method's ``fit(restore=…)``: ``(folder, meta)`` of the checkpoint to load first, None from scratch."""
        return (folder, self.meta) if self.epoch else None


def resume_point(cfg: Config, rays_folder, folder) -> ResumePoint:
    """Where training with ``cfg`` on ``rays_folder`` (its train and val parts) starts: the checkpoint in ``folder``
    when it was made with these params and data (``load``), else from scratch."""
    key = fingerprint(cfg, sorted(p for part in ("train", "val") for p in (Path(rays_folder) / part).iterdir()))
    resumable = load(folder, key)
    meta, frames = resumable if resumable else ({"epoch": 0, "history": [], "steps": []}, [])
    return ResumePoint(key, meta, list(frames))


def save(folder, model, meta: dict, frames: np.ndarray, method: str = trained_folder.DEFAULT_METHOD) -> None:
    """Write epoch ``meta["epoch"]``'s checkpoint of a ``method`` (its name) into ``folder``, then drop older
    epochs' files."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    epoch = int(meta["epoch"])
    state, progress = f"state-{epoch:04d}.keras", f"progress-{epoch:04d}.npz"
    trained_folder.write_method(folder, method)
    with atomic.atomic_path(folder / state, suffix=".keras") as tmp:
        model.save(tmp)
    atomic.save_npz(folder / progress, frames=frames)
    atomic.write_json(folder / "meta.json", {**meta, "state": state, "progress": progress,
                                             "seed_state": model.seed_generator.state.numpy().tolist()})
    for old in folder.iterdir():
        if old.is_file() and old.name not in (state, progress, "meta.json", trained_folder.METHOD_FILE):
            old.unlink()


def restore(folder, model, meta: dict) -> None:
    """Load the checkpoint's weights, optimizer and generator state into a compiled ``model`` of the same config."""
    model.optimizer.build(model.trainable_variables)
    model.load_weights(Path(folder) / meta["state"])
    model.seed_generator.state.assign(np.asarray(meta["seed_state"], dtype=model.seed_generator.state.dtype))

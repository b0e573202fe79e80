"""The train stage's model folder (``models/trained``): its layout, in one place, and its small files.

=====================  =============================================================================
file                   what it holds
=====================  =============================================================================
``method.json``        ``{"method": "<name>"}``: which method (``methods.METHODS``) reads the folder; a
                       folder without it is a NeRF's (written before methods had names)
``model.keras``        the NeRF's Keras model (``methods/nerf.py``; another method keeps its own files)
``cameras.npz``        with a pose refinement: the training views' corrected poses (``poses [V, 4, 4]``)
                       and those given (``given``)
``progress.npz``       ``frames [E, H, W, 3]`` uint8 (the first validated view after each epoch), ``epochs``
``run.json``           the MLflow run that trained it (``runtime/tracking.py``)
=====================  =============================================================================

Paths here may name the folder or a file in it (a model file, a checkpoint's state): the folder is then the
file's own.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from nerf_pipeline.errors import DataError
from nerf_pipeline.runtime import atomic
from nerf_pipeline.scenes.scene import read_npz

MODEL_FILE, PROGRESS_FILE, RUN_FILE, CAMERAS_FILE = "model.keras", "progress.npz", "run.json", "cameras.npz"
METHOD_FILE = "method.json"
DEFAULT_METHOD = "nerf"  # what a folder without METHOD_FILE holds


def folder_of(path) -> Path:
    """The model folder that ``path`` names or holds a file of."""
    path = Path(path)
    return path if path.is_dir() else path.parent


def method_name(path) -> str:
    """The method whose model ``path`` (a folder, or a file in one) holds: ``METHOD_FILE``'s, else the NeRF."""
    file = folder_of(path) / METHOD_FILE
    if not file.is_file():
        return DEFAULT_METHOD
    try:
        name = json.loads(file.read_text())["method"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{file}: not a method file ({e!r}); run the train stage again.") from None
    if not isinstance(name, str):
        raise DataError(f"{file}: 'method' must be a name; got {name!r}. Run the train stage again.")
    return name


def write_method(folder, name: str) -> None:
    """``METHOD_FILE`` naming ``name`` in ``folder`` (a model folder being written, or a checkpoint's), atomically."""
    atomic.write_text(Path(folder) / METHOD_FILE, json.dumps({"method": name}) + "\n")


def write_model(folder, method) -> None:
    """The trained ``method`` (a ``methods.Method``) in ``folder``: ``METHOD_FILE`` and the method's own files, what
    ``methods.load`` reads back."""
    write_method(folder, method.name)
    method.save(folder)


def write_cameras(folder, poses, given) -> None:
    """``CAMERAS_FILE``: the training views' poses as trained ``[V, 4, 4]`` and as ``given``."""
    np.savez(Path(folder) / CAMERAS_FILE, poses=np.asarray(poses, np.float32), given=np.asarray(given, np.float32))


def trained_poses(path, train_part=None) -> np.ndarray | None:
    """The training views' camera-to-world poses ``[V, 4, 4]`` as the model learned them: corrected by its pose
    refinement where training had one (``CAMERAS_FILE`` in the folder), else ``train_part``'s own (None without
    one)."""
    file = folder_of(path) / CAMERAS_FILE
    if not file.is_file():
        return None if train_part is None else train_part.poses
    with np.load(file) as cameras:
        poses = cameras["poses"]
    if train_part is not None and poses.shape != np.shape(train_part.poses):
        raise DataError(f"{file}: corrected poses of {poses.shape[0]} views, but the rays' train part has "
                        f"{len(train_part.poses)}; run the train stage again.")
    return poses


def write_progress(folder, frames, epochs: int) -> None:
    """``PROGRESS_FILE``: the progress ``frames [E, H, W, 3]`` uint8 of epochs 1..``epochs``."""
    np.savez(Path(folder) / PROGRESS_FILE, frames=np.stack(frames), epochs=np.arange(1, epochs + 1, dtype=np.int32))


def progress_frames(folder) -> np.ndarray:
    """The progress frames ``[E, H, W, 3]`` uint8 that training left in ``folder``."""
    return read_npz(Path(folder) / PROGRESS_FILE, required=("frames",))["frames"]

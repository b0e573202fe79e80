"""The one seam between the pipeline and a model family: a ``Method`` renders a ``Camera``, and a registry.

Stages, the viewer, the Logged Model and the benchmarks see a trained model only through this protocol; what is
inside (a NeRF's field, sampler and space; Gaussians) is the method's own. A method is a module named in
``METHODS`` (imported only when used) with:

* ``build(cfg, train_part, *, jit_compile=None) -> TrainableMethod``: an untrained model of ``cfg``'s preset
  for the training views ``train_part`` (a ``ray_files.RayPart``), called in the ``tf.distribute`` strategy's
  scope;
* ``load(path, *, train_part=None, chunk_rays=16384, jit_compile=True) -> Method``: the model a trained
  folder holds (``trained_folder``; ``path`` may also name a model file in it, such as a checkpoint's).
* ``plan(cfg, train_part) -> dict``: what ``build`` decides for these views from ``scene.*``'s auto values
  (a contracted space, an appearance embedding, camera refinement), named as the built model's
  ``tracking_params`` names it, without building anything (the benchmarks key their runs by it).

The method's name goes into the trained folder's ``method.json`` (``trained_folder.METHOD_FILE``) and a preset
chooses it (``PresetConfig.method``), so adding a method is a line in ``METHODS`` and its preset class in
``config.py``.

Cameras are pinhole: ``pose [4, 4]`` camera-to-world (OpenGL: the camera looks down its -z axis, +y up; as
everywhere in ``nerf_pipeline.camera``), ``intrinsics [4]`` fx, fy, cx, cy in pixels, an image of ``height`` x
``width`` pixels. This module imports no TensorFlow.
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from nerf_pipeline.errors import DataError

# name -> the module that implements it (imported lazily: a light stage never imports TensorFlow for it)
METHODS = {"nerf": "nerf_pipeline.methods.nerf", "splats": "nerf_pipeline.splats.method"}


@dataclasses.dataclass(frozen=True, eq=False)
class Camera:
    """A pinhole camera: ``pose [4, 4]`` camera-to-world (OpenGL), ``intrinsics [4]`` (fx, fy, cx, cy in pixels),
    ``height`` x ``width`` pixels. The arrays are kept as given (their dtype too)."""

    pose: np.ndarray
    intrinsics: np.ndarray
    height: int
    width: int

    @classmethod
    def of_view(cls, part, index: int) -> Camera:
        """View ``index`` of ``part`` (a ``ray_files.RayPart``)."""
        return cls(part.poses[index], part.intrinsics[index], part.height, part.width)

    @property
    def position(self) -> np.ndarray:
        """The camera's centre ``[3]``."""
        return np.asarray(self.pose)[:3, 3]

    def rays(self) -> tuple[np.ndarray, np.ndarray]:
        """``(ray_origins, ray_directions)``, each ``[H, W, 3]`` float32, unit directions (``camera.generate_rays``)."""
        from nerf_pipeline import camera

        return camera.generate_rays(self.pose, self.height, self.width, self.intrinsics)

    def resized(self, height: int, width: int) -> Camera:
        """The same camera making an image of ``height`` x ``width`` pixels (its intrinsics scaled)."""
        scale = np.array([width / self.width, height / self.height] * 2, np.asarray(self.intrinsics).dtype)
        return Camera(self.pose, np.asarray(self.intrinsics) * scale, int(height), int(width))


@runtime_checkable
class Method(Protocol):
    """A trained model, as the pipeline uses it."""

    name: str  # the key of METHODS

    @property
    def background(self) -> float:
        """The grey level seen where nothing is."""

    def render(self, cam: Camera) -> dict:
        """The view of ``cam``: numpy ``rgb [H, W, 3]`` float32 in [0, 1] (composited on ``background``), ``depth
        [H, W]`` float32 (0 where nothing is) and ``opacity [H, W]`` float32; where the method has a per-view
        appearance, in that of the training views nearest the camera (their mix; the mean without training poses)."""

    def training_poses(self) -> np.ndarray | None:
        """The training views' camera-to-world poses ``[V, 4, 4]`` as trained (refined where the method refines
        them); None when the method was loaded without its training views."""

    def with_training_poses(self, poses) -> Method:
        """This model rendering held-out cameras in the appearance of training views at ``poses [V, 4, 4]`` (as
        given, where ``training_poses`` holds them as trained; None: the mean appearance); a method without a
        per-view appearance returns itself."""

    def extent(self) -> float:
        """The half-size of the box around the scene (centred on the origin): what export meshes, the viewer draws."""

    def save(self, folder) -> None:
        """Write the model's own files into ``folder`` (``trained_folder`` writes ``method.json`` beside them)."""

    # -- export's hooks ----------------------------------------------------------------------------------

    def density(self, points: np.ndarray) -> np.ndarray:
        """Density ``[N]`` (per unit length) at world ``points [N, 3]`` float32; a method without a density field
        raises ``NotImplementedError`` (export then writes no mesh)."""

    def colors(self, points: np.ndarray, directions: np.ndarray) -> np.ndarray:
        """Colour ``[N, 3]`` in [0, 1] at world ``points [N, 3]`` seen along unit ``directions [N, 3]``."""

    def points(self, part, num_points: int, min_opacity: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """A point cloud of the scene seen from ``part``'s views (as trained): ``(points [P, 3], colours [P, 3])``
        float32, about ``num_points`` of them (seeded by ``seed``), none where opacity is below ``min_opacity``."""

    def export_files(self, folder) -> list[str]:
        """Write the method's own export files into the existing ``folder`` (the export stage's ``export/splats/``;
        the splats' ``splats.ply``) and return their names; ``[]`` for a method whose geometry is the mesh and the
        point cloud alone (the NeRF)."""

    # -- the viewer's hook -------------------------------------------------------------------------------

    def gaussians_for_viewer(self) -> dict | None:
        """For a model made of Gaussians, what the browser viewer draws with viser's ``add_gaussian_splats``:
        ``centers [N, 3]``, ``covariances [N, 3, 3]``, ``rgbs [N, 3]`` in [0, 1] and ``opacities [N, 1]``, float32
        (``splats.gaussians.viewer_arrays``); None for a model of another kind (the NeRF)."""


class TrainableMethod(Method, Protocol):
    """A ``Method`` that trains (``build``'s): ``fit`` runs training with Keras-style callbacks (their
    ``on_train_batch_end``/``on_epoch_end``, ``self.model`` the model that trains, ``model.stop_training``)."""

    def fit(self, train_part, *, epochs: int, steps_per_epoch: int, total_steps: int, seed: int,
            initial_epoch: int = 0, restore=None, callbacks=(), strategy=None) -> None:
        """Train on ``train_part`` from ``initial_epoch`` (restoring ``restore``, a checkpoint's ``(folder,
        meta)``, first) to ``epochs``; the learning rate decays over ``total_steps``."""

    def set_total_steps(self, total_steps: int) -> None:
        """Stretch the learning-rate schedule to ``total_steps`` (a run against a wall-clock budget)."""

    def tracking_params(self) -> dict:
        """What the config left to the scene and the method chose (e.g. ``model.appearance_embedding``), for MLflow."""

    def describe(self) -> str:
        """A phrase for the log: what trains (``in a box space, with …``)."""

    def training_figures(self) -> dict:
        """The method's own figures for ``train.json`` after training (may be empty)."""


def module_for(name: str):
    """The module implementing method ``name`` (``METHODS``)."""
    if name not in METHODS:
        raise DataError(f"unknown method '{name}' (known: {', '.join(sorted(METHODS))}); this version of "
                        "nerf_pipeline cannot read it.")
    return importlib.import_module(METHODS[name])


def build(cfg, train_part, **options) -> TrainableMethod:
    """An untrained method of ``cfg``'s active preset (its ``method``) for ``train_part``."""
    return module_for(cfg.active.method).build(cfg, train_part, **options)


def plan(cfg, train_part) -> dict:
    """What ``build(cfg, train_part)`` would decide from ``scene.*``'s auto values, as its ``tracking_params``
    name it (no model is built)."""
    return module_for(cfg.active.method).plan(cfg, train_part)


def load(path, *, train_part=None, chunk_rays: int = 16384, jit_compile: bool = True) -> Method:
    """The trained method in the model folder ``path`` (or a model file in one): ``method.json`` names it, a folder
    without one holds a NeRF. ``train_part``: the training views, for their poses (appearance of the nearest ones);
    None renders in the mean appearance."""
    from nerf_pipeline import trained_folder

    return module_for(trained_folder.method_name(Path(path))).load(
        path, train_part=train_part, chunk_rays=chunk_rays, jit_compile=jit_compile)

"""The NeRF as a method (``methods.Method``): ``model.nerf.NeRF`` rendered by ``ChunkedRenderer``, and the scene's
policy for it.

``NeRFMethod`` renders a camera's rays in chunks with deterministic samples, in the appearance of the training
views nearest the camera (``NeRF.appearance_near``, called here only), gives export the field's density and
colour, and trains with ``model.fit`` (``fit``: compile, checkpoint restore, the batches, Keras' fit). The scene's
policy: the space is contracted (``contracted``), the field learns an appearance embedding per training view
(``appearance``) and the training poses are refined (``camera_refinement``) as ``scene.*`` and the scene decide.
"""

from __future__ import annotations

import contextlib
import copy
import math
from pathlib import Path

import numpy as np

from nerf_pipeline import trained_folder
from nerf_pipeline.camera import pixel_rays
from nerf_pipeline.config import Config
from nerf_pipeline.errors import DataError

NAME = "nerf"


def contracted(cfg: Config, unbounded: bool) -> bool:
    """Whether the model's space is contracted: ``scene.contraction`` on, or auto and the scene unbounded."""
    return cfg.scene.contraction == "on" or (cfg.scene.contraction == "auto" and bool(unbounded))


def appearance(cfg: Config, unbounded: bool) -> bool:
    """Whether the field learns an appearance embedding per training view: ``scene.appearance`` on, or auto for a
    capture (``unbounded``: photos, videos, COLMAP, LLFF) when the preset's field has one (``has_appearance``)."""
    field = getattr(cfg.active, "field", None)  # (a preset of another method has none)
    return cfg.scene.appearance == "on" or (cfg.scene.appearance == "auto" and bool(unbounded)
                                            and field is not None and field.has_appearance)


def camera_refinement(cfg: Config, unbounded: bool) -> bool:
    """Whether training learns a pose correction per training view: ``scene.camera_refinement`` on, or auto for a
    capture (``unbounded``: its poses come from structure from motion or COLMAP; a synthetic scene's are exact)."""
    return cfg.scene.camera_refinement == "on" or (cfg.scene.camera_refinement == "auto" and bool(unbounded))


def scene_choices(contracted_space: bool, appearance_embedding: bool, refined_poses: bool) -> dict:
    """The scene choices of a NeRF as ``plan`` and ``NeRFMethod.tracking_params`` name them (MLflow params)."""
    return {"model.space": "contracted" if contracted_space else "box",
            "model.appearance_embedding": "on" if appearance_embedding else "off",
            "model.camera_refinement": "on" if refined_poses else "off"}


def plan(cfg: Config, train_part) -> dict:
    """The scene choices ``build_model`` makes for ``train_part`` (``scene_choices``)."""
    unbounded = train_part.unbounded
    return scene_choices(contracted(cfg, unbounded), appearance(cfg, unbounded), camera_refinement(cfg, unbounded))


def build_model(cfg: Config, train):
    """The untrained ``NeRF`` of ``cfg``'s preset for the training part ``train`` (a ``RayPart``), with contraction,
    an appearance embedding and a camera refinement as ``contracted``, ``appearance`` and ``camera_refinement``
    decide for it. Call it in the strategy's scope."""
    from nerf_pipeline.model.nerf import build_nerf

    unbounded = train.unbounded
    return build_nerf(cfg.active, near=train.near, far=train.far, contracted=contracted(cfg, unbounded),
                      bound=cfg.scene.bound, background=cfg.data.background, seed=cfg.seed,
                      appearance_views=train.num_views if appearance(cfg, unbounded) else 0,
                      refined_views=train.num_views if camera_refinement(cfg, unbounded) else 0)


def load_model(path):
    """The ``NeRF`` the train stage saved (``model.keras``, or the folder that holds it), without its optimizer."""
    import keras

    import nerf_pipeline.model.nerf  # noqa: F401  (registers the NeRF's Keras classes, which the file names)

    if Path(path).is_dir():
        path = Path(path) / trained_folder.MODEL_FILE
    try:
        return keras.saving.load_model(path, compile=False)
    except (OSError, ValueError, TypeError) as e:
        # Keras wraps what a layer's constructor raises (e.g. saved_part's ValueError) in TypeErrors that repeat
        # the whole model config; the innermost exception of the chain is the one that says what is wrong.
        while (e.__cause__ or e.__context__) is not None:
            e = e.__cause__ or e.__context__
        raise DataError(f"{path}: cannot load the trained model ({e}); run the train stage again.") from None


def point_cloud(renderer, part, num_points: int, min_opacity: float, seed: int,
                poses=None) -> tuple[np.ndarray, np.ndarray]:
    """Points at the expected depth of ``num_points`` random training rays, with their colours:
    ``(points [P, 3] float32, colours [P, 3] float32)``, rays of opacity below ``min_opacity`` dropped, rendered by
    ``renderer`` (a ``ChunkedRenderer``; the mean appearance). ``poses [V, 4, 4]``: the views' cameras as trained;
    None: the part's."""
    poses = part.poses if poses is None else poses
    rng = np.random.default_rng(seed)
    per_view = math.ceil(num_points / part.num_views)
    origins, directions = [], []
    for view in range(part.num_views):
        pixels = rng.choice(part.height * part.width, size=min(per_view, part.height * part.width), replace=False)
        view_origins, view_directions = pixel_rays(poses[view], part.intrinsics[view], *divmod(pixels, part.width))
        origins.append(view_origins)
        directions.append(view_directions)
    origins, directions = np.concatenate(origins)[:num_points], np.concatenate(directions)[:num_points]
    out = renderer(origins, directions)
    kept = out["acc"] >= min_opacity
    points = origins[kept] + directions[kept] * out["depth"][kept, None]
    # Colour the surface, not the background it was composited over: divide the opacity back out.
    colours = np.clip((out["rgb"][kept] - (1.0 - out["acc"][kept, None]) * renderer.model.background)
                      / out["acc"][kept, None], 0.0, 1.0)
    return points.astype(np.float32), colours.astype(np.float32)


class NeRFMethod:
    """A ``NeRF`` behind the ``methods.Method`` protocol.

    Args:
        model: the ``NeRF``.
        chunk_rays, jit_compile: the ``ChunkedRenderer``'s (made at the first render).
        train_poses: the training views' poses ``[V, 4, 4]``, whose nearest views' appearance a camera takes;
            None: the mean appearance.
        refine_poses: ``train_poses`` are as given and the model's pose refinement moves them (a model that
            trains); False: they are as trained already (a loaded model's, ``trained_folder.trained_poses``).
        cfg: the config that built it (a model that trains: its preset's batches and optimizer).
    """

    name = NAME

    def __init__(self, model, chunk_rays: int = 16384, jit_compile: bool = True, train_poses=None,
                 refine_poses: bool = False, cfg: Config | None = None):
        self.model, self.chunk_rays, self.jit_compile = model, int(chunk_rays), bool(jit_compile)
        self.train_poses, self.refine_poses, self.cfg = train_poses, refine_poses, cfg
        self._renderer, self._functions, self._schedule = None, {}, None

    # -- the protocol -----------------------------------------------------------------------------------

    @property
    def background(self) -> float:
        return self.model.background

    @property
    def renderer(self):
        """The ``ChunkedRenderer`` of the model (its rays in, numpy ``rgb``, ``depth``, ``acc`` out)."""
        if self._renderer is None:
            from nerf_pipeline.model.renderer import ChunkedRenderer

            self._renderer = ChunkedRenderer(self.model, self.chunk_rays, self.jit_compile)
        return self._renderer

    def training_poses(self) -> np.ndarray | None:
        if self.train_poses is None or not self.refine_poses:
            return self.train_poses
        return self.model.refined_poses(self.train_poses)

    def render(self, cam) -> dict:
        poses = self.training_poses()
        with self.model.appearance_near(None if poses is None else poses[:, :3, 3], np.asarray(cam.pose)[:3, 3]):
            out = self.renderer(*cam.rays())
        return {"rgb": out["rgb"], "depth": out["depth"], "opacity": out["acc"]}

    def render_rays(self, ray_origins, ray_directions) -> dict:
        """Rays ``[..., 3]`` (not a camera's: the Logged Model's rays input) in the mean appearance: ``rgb``,
        ``depth``, ``opacity``."""
        out = self.renderer(ray_origins, ray_directions)
        return {"rgb": out["rgb"], "depth": out["depth"], "opacity": out["acc"]}

    def with_training_poses(self, poses) -> NeRFMethod:
        """This model rendering in the appearance of the training views at ``poses [V, 4, 4]`` (as they are; None:
        the mean appearance); the renderer is shared."""
        other = copy.copy(self)
        other.train_poses, other.refine_poses = poses, False
        return other

    def extent(self) -> float:
        return float(self.model.space.bound)

    def save(self, folder) -> None:
        self.model.save(Path(folder) / trained_folder.MODEL_FILE)
        if self.model.pose_refinement is not None and self.refine_poses and self.train_poses is not None:
            # what export, the viewer and render's path use (trained_folder.trained_poses)
            trained_folder.write_cameras(folder, self.model.pose_refinement.corrected_poses(self.train_poses),
                                         self.train_poses)

    def _compiled(self, name: str, function):
        """``function`` as a ``tf.function``, compiled by XLA where the model can be (``NeRF.plan_xla``), made once."""
        if name not in self._functions:
            import tensorflow as tf

            self._functions[name] = tf.function(function, jit_compile=self.model.plan_xla(self.jit_compile))
        return self._functions[name]

    def density(self, points) -> np.ndarray:
        model = self.model
        density = self._compiled("density", lambda p: model.field.density(model.space.warp(p)))
        return np.asarray(density(np.asarray(points, np.float32)))

    def colors(self, points, directions) -> np.ndarray:
        model = self.model
        colour = self._compiled("colors", lambda p, d: model.field(model.space.warp(p), d)[0])
        return np.asarray(colour(np.asarray(points, np.float32), np.asarray(directions, np.float32)))

    def points(self, part, num_points: int, min_opacity: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
        return point_cloud(self.renderer, part, num_points, min_opacity, seed, self.training_poses())

    def export_files(self, folder) -> list[str]:
        return []  # a field's geometry is export's mesh and point cloud: nothing of its own

    def gaussians_for_viewer(self) -> None:
        return None

    # -- training ---------------------------------------------------------------------------------------

    def compile(self, total_steps: int, strategy=None):
        """Give the model Adam with the preset's learning rate decaying over ``total_steps`` (in ``strategy``'s
        scope); returns the schedule. ``fit`` calls it when nothing has."""
        from nerf_pipeline.model.nerf import compile_for_training

        with strategy.scope() if strategy is not None else contextlib.nullcontext():
            self._schedule = compile_for_training(self.model, self.cfg.active.optimizer, total_steps,
                                                  self.jit_compile)
        return self._schedule

    def set_total_steps(self, total_steps: int) -> None:
        self._schedule.set_total_steps(total_steps)

    def fit(self, train_part, *, epochs: int, steps_per_epoch: int, total_steps: int, seed: int,
            initial_epoch: int = 0, restore=None, callbacks=(), strategy=None) -> None:
        """Train with ``model.fit`` on batches of ``train_part`` (those of the epochs before ``initial_epoch``
        skipped), after ``restore`` (``(checkpoint folder, meta)``) when resuming; the model's own callbacks (the
        occupancy grid's updates) run before ``callbacks``."""
        from nerf_pipeline.training import checkpoint, datasets, distribute

        if self._schedule is None:
            self.compile(total_steps, strategy)
        if strategy is not None:
            distribute.adapt_for_keras_fit(self.model, strategy)
        if restore is not None:
            folder, meta = restore
            checkpoint.restore(folder, self.model, meta)
        # The batches an uninterrupted run would see from this epoch on: skip those of the epochs done.
        batches = datasets.train_dataset(train_part, self.cfg.active.batch, seed,
                                         skip_batches=initial_epoch * steps_per_epoch,
                                         with_views=self.model.trains_on_views)
        self.model.fit(batches, epochs=epochs, initial_epoch=initial_epoch, steps_per_epoch=steps_per_epoch,
                       callbacks=[*self.model.training_callbacks(), *callbacks], shuffle=False, verbose=0)

    def tracking_params(self) -> dict:
        from nerf_pipeline.model.space import ContractedSpace

        return scene_choices(isinstance(self.model.space, ContractedSpace), self._has_appearance,
                             self.model.pose_refinement is not None)

    @property
    def _has_appearance(self) -> bool:
        return getattr(self.model.field, "appearance", None) is not None

    def describe(self) -> str:
        return (f"in a {self.tracking_params()['model.space']} space"
                + (f", with an appearance embedding of {self.model.field.appearance.shape[-1]} per training view "
                   "(held-out views take their nearest training views')" if self._has_appearance else "")
                + (", refining the training views' camera poses" if self.model.pose_refinement is not None else ""))

    def training_figures(self) -> dict:
        refinement = self.model.pose_refinement
        return {"camera_refinement": refinement.sizes()} if refinement is not None else {}


def build(cfg: Config, train_part, *, jit_compile: bool | None = None) -> NeRFMethod:
    """An untrained ``NeRFMethod`` of ``cfg``'s preset for ``train_part`` (``build_model``); its renders (validation)
    in chunks of ``evaluate.chunk_rays``, XLA-compiled as ``jit_compile`` (None: the preset's ``jit_compile``)."""
    jit = cfg.active.jit_compile if jit_compile is None else jit_compile
    return NeRFMethod(build_model(cfg, train_part), cfg.evaluate.chunk_rays, jit, train_poses=train_part.poses,
                      refine_poses=True, cfg=cfg)


def load(path, *, train_part=None, chunk_rays: int = 16384, jit_compile: bool = True) -> NeRFMethod:
    """The ``NeRFMethod`` of a trained folder (or its ``model.keras``, or a checkpoint's state file); with
    ``train_part``, rendering in the appearance of the nearest training views as trained."""
    poses = None if train_part is None else trained_folder.trained_poses(path, train_part)
    return NeRFMethod(load_model(path), chunk_rays, jit_compile, train_poses=poses)

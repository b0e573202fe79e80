"""3D Gaussian splatting as a method (``methods.Method``): ``SplatsMethod`` renders cameras through the rasterizer
and trains as 3DGS does (``training.py``).

Its files in the trained folder (``trained_folder``): ``splats.ply``, the Gaussians in the layout 3DGS's viewers
read (``ply.py``: open it in one), and ``splats.json``, what rendering needs besides (the background, the scene's
box, and with an appearance each training view's colour transform: ``training.apply_appearance``; a camera is
rendered in the mix of its two nearest training views' as the NeRF's embedding is, ``camera.nearest_views_weights``,
or in their mean without the training poses; 3DGS's viewers, reading the PLY, show the Gaussians' own colours).
Its checkpoint (``training/checkpoint.py``'s ``state-E.keras``, though not a Keras file) is an ``.npz`` of
``Trainer.state()``: the Gaussians, Adam's moments, the density control's statistics and the step count; the view
order, crops and split halves are drawn from the seed and the step, so a run resumed after ``kill -9`` goes on as
the uninterrupted one would.

For export: Gaussians are no density field, so ``density`` and ``colors`` raise ``NotImplementedError`` and the
export stage writes an empty mesh (the file to look at is ``splats.ply``, which export copies to
``export/splats/`` through ``export_files``); the point cloud is the NeRF's kind: a
point at the depth seen through random training pixels at least ``min_opacity`` opaque.

Depth is the distance along each pixel's ray (as the NeRF's: ``camera.generate_rays``' unit directions) of the
blend of the Gaussians' depths, not divided by the opacity: 0 where nothing is.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from nerf_pipeline import trained_folder
from nerf_pipeline.errors import ConfigError, DataError, UserError
from nerf_pipeline.scenes import ray_files
from nerf_pipeline.splats import gaussians as gaussians_module
from nerf_pipeline.splats import ply

NAME = "splats"
PLY_FILE, SETTINGS_FILE = "splats.ply", "splats.json"
log = logging.getLogger(__name__)


class _CheckpointModel:
    """What training's Keras callbacks see as the model: ``stop_training``, and what ``checkpoint.save`` calls:
    ``save(path)`` (the trainer's state as an ``.npz``) and ``seed_generator.state`` (none: nothing is drawn
    from a generator's state, so zeros)."""

    pose_refinement = None

    def __init__(self, method: SplatsMethod):
        self.method, self.stop_training = method, False
        self.seed_generator = SimpleNamespace(state=SimpleNamespace(numpy=lambda: np.zeros(2, np.int64)))

    def save(self, path) -> None:
        with open(path, "wb") as f:  # (a file object: numpy would add .npz to a name)
            np.savez(f, **self.method.trainer.state(), **self.method.settings_arrays())


class SplatsMethod:
    """Gaussians behind the ``methods.Method`` protocol.

    Args:
        gaussians: the ``gaussians.Gaussians``.
        background: the grey level behind the scene.
        bound: the half-size of the scene's box (``extent``).
        train_poses: the training views' poses ``[V, 4, 4]`` (None: loaded without them).
        cfg: the config that built it (a model that trains: its preset's schedule).
        appearance: the training views' colour transforms ``[V, 3, 4]`` (``training.apply_appearance``; a model
            that trains starts from ``training.identity_appearance``); None: no appearance.
    """

    name = NAME

    def __init__(self, gaussians, background: float, bound: float, train_poses=None, cfg=None, init: str = "",
                 appearance=None):
        self.gaussians, self._background, self.bound = gaussians, float(background), float(bound)
        self.train_poses, self.cfg, self.init = train_poses, cfg, init
        self.appearance = None if appearance is None else np.asarray(appearance, np.float32)
        self.trainer = None
        # Frames' projection and colours by the native op (rasterizer.native_frame_inputs) where it is built; False
        # (or no op): TensorFlow's (one XLA computation; op by op while fit runs). The same frames to float rounding.
        self.native_frames = True
        self._renders, self._projections, self._fitting = {}, None, False

    # -- the protocol -----------------------------------------------------------------------------------------------

    @property
    def background(self) -> float:
        return self._background

    def training_poses(self):
        return self.train_poses

    def with_training_poses(self, poses) -> SplatsMethod:
        if self.appearance is None:
            return self  # (the training poses change no render)
        other = copy.copy(self)  # (the Gaussians and compiled renders shared)
        other.train_poses = None if poses is None else np.asarray(poses)
        return other

    def _appearance_arrays(self):
        """The training views' colour transforms ``[V, 3, 4]`` as they are now (training's), or None."""
        if self.trainer is not None and self.trainer.appearance is not None:
            return self.trainer.appearance.numpy()
        return self.appearance

    def colour_transform(self, cam) -> np.ndarray | None:
        """The colour transform ``[3, 4]`` that ``cam`` is rendered in: the mix of its nearest training views'
        (``camera.nearest_views_weights``), their mean without training poses; None without an appearance."""
        from nerf_pipeline.camera import nearest_views_weights

        transforms = self._appearance_arrays()
        if transforms is None:
            return None
        poses = self.train_poses
        if poses is None or len(poses) != len(transforms):  # (loaded without its views, or with others)
            return transforms.mean(axis=0)
        weights = nearest_views_weights(np.asarray(poses)[:, :3, 3], np.asarray(cam.pose)[:3, 3])
        return np.tensordot(weights, transforms, axes=1).astype(np.float32)

    def extent(self) -> float:
        return self.bound

    def _render_function(self, height: int, width: int):
        """``(c2w [4, 4], intrinsics [4]) -> (rgb, depth, alpha)`` at this size: ``rasterizer.render``'s steps. The
        projection and colours are the native op's (``native_frames``) where it is built; else, out of training, one
        XLA computation (``_projection``), compiled once per number of Gaussians (benchmarks/README.md gives the time
        it saves), and while ``fit`` runs (validation, whose count changes with densification) op by op."""
        import tensorflow as tf

        from nerf_pipeline.splats import rasterizer

        native = self.native_frames and rasterizer.native_library() is not None
        key = (height, width, native)
        if key in self._renders:
            return self._renders[key]
        background = tf.constant([self._background] * 3, tf.float32)

        def rasterize(means2d, conics, colors, opacities, depths, radii):
            return rasterizer.rasterize(means2d, conics, colors, opacities, depths, radii, width, height, background)

        if native:
            g = self.gaussians

            # Two native ops, called eagerly: as fast as a tf.function of them (measured: 83-89 ms against 93-95
            # for a frame of 100 k Gaussians at 800x800), and nothing traced per image size, where a viewer
            # whose size changes often made TensorFlow warn of retracing.
            def render(c2w, intrinsics):  # (degree 3 always: see _projection)
                return rasterize(*rasterizer.native_frame_inputs(g.means, g.log_scales, g.quats, g.opacity_logits,
                                                                 g.sh_dc, g.sh_rest, 3, c2w, intrinsics, width,
                                                                 height))

            self._renders[key] = render
            return self._renders[key]
        size = tf.constant([width, height], tf.float32)
        if self._projections is None:  # (op by op, compiled: shared by every size)
            self._projections = (self._projection(tf.function), self._projection(
                lambda f, **options: tf.function(f, jit_compile=True, **options)))
        projections = self._projections
        rasterize = tf.function(rasterize, autograph=False)
        self._renders[key] = lambda c2w, intrinsics: rasterize(
            *projections[0 if self._fitting else 1](c2w, intrinsics, size))
        return self._renders[key]

    def _projection(self, function):
        """``function(prepare, ...)`` (a ``tf.function`` maker) of ``(c2w, intrinsics, size [2]) -> the rasterizer's
        inputs`` (``rasterizer.project``, ``sh_colors`` at degree 3, opacities): the size is a tensor, so one
        compiled computation serves every image size."""
        import tensorflow as tf

        from nerf_pipeline.splats import rasterizer

        g = self.gaussians

        def prepare(c2w, intrinsics, size):
            cam = rasterizer.Camera(c2w, intrinsics[0], intrinsics[1], intrinsics[2], intrinsics[3], size[0], size[1])
            # Degree 3 always: the coefficients of degrees not trained yet are zeros (training.py).
            return rasterizer.frame_inputs(g.means, g.log_scales, g.quats, g.opacity_logits, g.sh(), 3, cam)

        return function(prepare, autograph=False, input_signature=[
            tf.TensorSpec([4, 4], tf.float32), tf.TensorSpec([4], tf.float32), tf.TensorSpec([2], tf.float32)])

    def render(self, cam) -> dict:
        height, width = int(cam.height), int(cam.width)
        intrinsics = np.asarray(cam.intrinsics, np.float32)
        rgb, depth, alpha = self._render_function(height, width)(np.asarray(cam.pose, np.float32), intrinsics)
        along_ray = _ray_length_per_depth(height, width, *(float(v) for v in intrinsics))
        transform = self.colour_transform(cam)
        if transform is not None:  # (clipped as the image it shows; training's loss sees it unclipped)
            from nerf_pipeline.splats.training import apply_appearance

            rgb = np.clip(apply_appearance(rgb, transform).numpy(), 0.0, 1.0)
        else:
            rgb = rgb.numpy()
        return {"rgb": rgb, "depth": (depth.numpy() * along_ray).astype(np.float32), "opacity": alpha.numpy()}

    def save(self, folder) -> None:
        folder = Path(folder)
        ply.write(folder / PLY_FILE, self.gaussians.numpy())
        settings = {"background": self._background, "bound": self.bound}
        transforms = self._appearance_arrays()
        if transforms is not None:
            settings["appearance"] = transforms.tolist()
        (folder / SETTINGS_FILE).write_text(json.dumps(settings) + "\n")

    def export_files(self, folder) -> list[str]:
        """``methods.Method.export_files``: the Gaussians as ``splats.ply`` (``ply.py``'s layout, what
        3DGS's viewers open) in ``folder``; its name."""
        ply.write(Path(folder) / PLY_FILE, self.gaussians.numpy())
        return [PLY_FILE]

    def gaussians_for_viewer(self) -> dict:
        """``methods.Method.gaussians_for_viewer``: ``gaussians.viewer_arrays`` of the Gaussians (centres,
        covariances, degree-0 colours, opacities) for viser's ``add_gaussian_splats``."""
        return gaussians_module.viewer_arrays(self.gaussians.numpy())

    def settings_arrays(self) -> dict:
        """``save``'s settings as arrays (a checkpoint's)."""
        return {"background": np.float32(self._background), "bound": np.float32(self.bound)}

    def density(self, points) -> np.ndarray:
        raise NotImplementedError("Gaussians are not a density field: export writes no mesh for them")

    def colors(self, points, directions) -> np.ndarray:
        raise NotImplementedError("Gaussians are not a radiance field: export writes no mesh for them")

    def points(self, part, num_points: int, min_opacity: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """As the NeRF's: a point at the depth seen through each of ``num_points`` random pixels of ``part``'s views
        (spread over the views; rendered here), kept where the pixel is at least ``min_opacity`` opaque, coloured by
        what the Gaussians there show (the background divided back out)."""
        from nerf_pipeline.camera import pixel_rays
        from nerf_pipeline.methods import Camera

        rng = np.random.default_rng(seed)
        per_view = -(-num_points // part.num_views)
        points, colours = [], []
        for view in range(part.num_views):
            pixels = rng.choice(part.height * part.width, size=min(per_view, part.height * part.width), replace=False)
            out = self.render(Camera.of_view(part, view))
            rows, cols = divmod(pixels, part.width)
            opacity = out["opacity"][rows, cols]
            kept = opacity >= min_opacity
            origins, directions = pixel_rays(part.poses[view], part.intrinsics[view], rows[kept], cols[kept])
            alpha = np.maximum(opacity[kept], 1e-6)[:, None]
            depth = out["depth"][rows, cols][kept][:, None] / alpha  # the blend's depth, not pulled towards 0
            points.append(origins + directions * depth)
            shown = (out["rgb"][rows, cols][kept] - (1.0 - alpha) * self._background) / alpha
            colours.append(np.clip(shown, 0.0, 1.0))
        points, colours = np.concatenate(points)[:num_points], np.concatenate(colours)[:num_points]
        return points.astype(np.float32), colours.astype(np.float32)

    # -- training ---------------------------------------------------------------------------------------------------

    def _make_trainer(self, total_steps: int):
        from nerf_pipeline.splats.training import Trainer, cameras_extent

        self.trainer = Trainer(self.gaussians, self.cfg.active, background=self._background,
                               extent=cameras_extent(self.train_poses), total_steps=total_steps, seed=self.cfg.seed,
                               appearance=self.appearance)
        return self.trainer

    def set_total_steps(self, total_steps: int) -> None:
        self.trainer.total_steps = int(total_steps)

    def fit(self, train_part, *, epochs: int, steps_per_epoch: int, total_steps: int, seed: int,
            initial_epoch: int = 0, restore=None, callbacks=(), strategy=None) -> None:
        """Train on ``train_part`` from ``initial_epoch`` (after ``restore``, a checkpoint's ``(folder, meta)``) to
        ``epochs`` of ``steps_per_epoch`` steps, one view each, calling the Keras ``callbacks`` as ``model.fit``
        would (``on_train_batch_end`` with the epoch's running mean ``loss`` and ``psnr``; ``on_epoch_end``)."""
        from nerf_pipeline.splats.training import StepViews

        if strategy is not None and strategy.num_replicas_in_sync > 1:
            raise UserError("the splats method trains on one device: set distribute to none")
        trainer = self.trainer if self.trainer is not None else self._make_trainer(total_steps)
        trainer.seed = int(seed)
        if restore is not None:
            folder, meta = restore
            with np.load(Path(folder) / meta["state"]) as state:
                trainer.load_state(dict(state))
        model = _CheckpointModel(self)
        for callback in callbacks:
            callback.set_model(model)
            callback.set_params({"epochs": epochs, "steps": steps_per_epoch, "verbose": 0})
        views = StepViews(train_part, self.cfg.active, seed, self.cfg.preset)
        _call(callbacks, "on_train_begin", {})
        self._fitting = True
        try:
            self._fit_epochs(trainer, model, views, epochs, steps_per_epoch, initial_epoch, callbacks)
        finally:
            self._fitting = False
        _call(callbacks, "on_train_end", {})

    @staticmethod
    def _fit_epochs(trainer, model, views, epochs: int, steps_per_epoch: int, initial_epoch: int, callbacks) -> None:
        for epoch in range(initial_epoch, epochs):
            _call(callbacks, "on_epoch_begin", epoch, {})
            sums, logs = np.zeros(2), {}
            for batch in range(steps_per_epoch):
                _call(callbacks, "on_train_batch_begin", batch, {})
                step = epoch * steps_per_epoch + batch
                result = trainer.train_step(step, *views(step))
                sums += (result.loss, result.psnr)
                logs = {"loss": sums[0] / (batch + 1), "psnr": sums[1] / (batch + 1)}
                _call(callbacks, "on_train_batch_end", batch, logs)
                if model.stop_training:
                    break
            _call(callbacks, "on_epoch_end", epoch, dict(logs))
            if model.stop_training:
                break

    def tracking_params(self) -> dict:
        return {"model.splats_init": self.init, **scene_choices(self.appearance is not None)}

    def describe(self) -> str:
        views = "" if self.appearance is None else (
            f", with a colour transform per training view ({len(self.appearance)}; held-out views take their nearest "
            "training views')")
        return f"from {self.init}{views}"

    def training_figures(self) -> dict:
        return {"gaussians": self.gaussians.count}


@functools.lru_cache(maxsize=8)
def _ray_length_per_depth(height: int, width: int, fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    """``[H, W]`` float32: the length of each pixel's ray per unit of depth (a video's frames share one camera)."""
    x = (np.arange(width, dtype=np.float32) + 0.5 - cx) / fx
    y = (np.arange(height, dtype=np.float32) + 0.5 - cy) / fy
    out = np.sqrt(1.0 + x[None, :] ** 2 + y[:, None] ** 2)
    out.flags.writeable = False
    return out


def _call(callbacks, hook: str, *args) -> None:
    for callback in callbacks:
        getattr(callback, hook)(*args)


def initial_gaussians(cfg, train_part) -> tuple[dict, str]:
    """The first Gaussians' arrays for ``train_part`` (a ``RayPart``): its rays folder's sparse points
    (``ray_files.sparse_points``), else ``init.num_random`` random points in the box; and a phrase saying which."""
    init = cfg.active.init
    sparse = ray_files.sparse_points(Path(train_part.folder).parent)  # (the part's folder is in the rays folder)
    if sparse is not None:
        points, colours = sparse
        how = f"{len(points)} sparse points of the capture"
    else:
        points, colours = gaussians_module.random_points(init.num_random, cfg.scene.bound, cfg.seed)
        how = f"{len(points)} random points in the box"
    return gaussians_module.initial_arrays(points, colours, init.opacity), how


def appearance(cfg) -> bool:
    """Whether each training view learns a colour transform: ``scene.appearance`` on. Auto leaves it off, for
    captures too, unlike the NeRF's embedding: on beer in 240 s it gave no gain (held-out 23.35 dB with it, 24.04
    without; benchmarks/README.md)."""
    return cfg.scene.appearance == "on"


def scene_choices(appearance_on: bool) -> dict:
    """The scene choice splats make as ``plan`` and ``tracking_params`` name it (the NeRF's name for its kind)."""
    return {"model.appearance_embedding": "on" if appearance_on else "off"}


def plan(cfg, train_part) -> dict:
    """The scene choice ``build`` makes for ``train_part`` (``scene_choices``): an appearance; splats have no
    contraction or camera refinement, and where they start is the rays folder's (``initial_gaussians``)."""
    return scene_choices(appearance(cfg))


def build(cfg, train_part, *, jit_compile: bool | None = None) -> SplatsMethod:
    """An untrained ``SplatsMethod`` of ``cfg``'s preset for ``train_part`` (``jit_compile`` has no effect: the
    step is no XLA computation)."""
    if cfg.scene.camera_refinement == "on":
        raise ConfigError("scene.camera_refinement is 'on', but the splats method does not refine camera poses; "
                          "use auto or off")
    from nerf_pipeline.splats.training import identity_appearance

    arrays, how = initial_gaussians(cfg, train_part)
    transforms = identity_appearance(train_part.num_views) if appearance(cfg) else None
    return SplatsMethod(gaussians_module.Gaussians(arrays), cfg.data.background, cfg.scene.bound,
                        train_poses=np.asarray(train_part.poses), cfg=cfg, init=how, appearance=transforms)


def load(path, *, train_part=None, chunk_rays: int = 16384, jit_compile: bool = True) -> SplatsMethod:
    """The ``SplatsMethod`` of a trained folder (``splats.ply`` and ``splats.json``), of its ``splats.ply``, or of a
    checkpoint's state file; ``chunk_rays`` and ``jit_compile`` have no effect."""
    path = Path(path)
    try:
        if path.is_file() and path.suffix != ".ply":  # a checkpoint's state
            with np.load(path) as state:
                arrays = {name: state[name] for name in gaussians_module.NAMES}
                background, bound = float(state["background"]), float(state["bound"])
                transforms = state["appearance"] if "appearance" in state else None
        else:
            folder = trained_folder.folder_of(path)
            arrays = ply.read(folder / PLY_FILE if path.is_dir() else path)
            settings = json.loads((folder / SETTINGS_FILE).read_text())
            background, bound = float(settings["background"]), float(settings["bound"])
            transforms = settings.get("appearance")  # (none in a model without one, or saved before it existed)
        if transforms is not None:
            transforms = np.asarray(transforms, np.float32)
            if transforms.ndim != 3 or transforms.shape[1:] != (3, 4) or not np.isfinite(transforms).all():
                raise ValueError(f"its appearance must be finite [V, 3, 4] colour transforms, got {transforms.shape}")
    except (OSError, ValueError, KeyError) as e:
        raise DataError(f"{path}: cannot load the trained Gaussians ({e}); run the train stage again.") from None
    poses = None if train_part is None else np.asarray(train_part.poses)
    return SplatsMethod(gaussians_module.Gaussians(arrays), background, bound, train_poses=poses,
                        init="a trained model", appearance=transforms)

"""Training 3D Gaussians as 3DGS does (Kerbl et al. 2023), on the CPU: one view a step, Adam per parameter group,
adaptive density control, SH degree raised as training goes.

A step renders one training view (whole, or a random ``crop`` x ``crop`` square of it: a camera of its own)
through ``rasterizer`` and minimises ``(1 - ssim_weight) L1 + ssim_weight (1 - SSIM)`` against it, over the pixels
the view's mask keeps (masked pixels add nothing to either term), composited on the scene's background. Adam
updates each parameter group with its own learning rate (``optimizer.*``): the means' decays exponentially from
``means`` to ``means_final`` times the cameras' extent (3DGS's ``spatial_lr_scale``: 1.1 times the largest
distance of a camera from their centre) over the run's steps; the others are constant. Every ``sh_degree_every``
steps the SH degree used goes up by one, to ``sh_degree``. Between ``densify.start`` and ``densify.stop`` the step
accumulates each Gaussian's projected-mean gradient norm in NDC units (the pixel gradient times half the image's
size) and its largest screen radius, and every ``densify.every`` steps ``density_control`` clones, splits and
prunes; every ``densify.opacity_reset_every`` steps, opacities are lowered to ``densify.reset_opacity``.

With an appearance (``Trainer``'s ``appearance``: where ``scene.appearance`` is on), each training view has a
colour transform of its own, ``[3, 4]``: the rendered colours' 3 x 3 matrix and an offset (``apply_appearance``),
from the identity, learnt with the Gaussians at ``optimizer.appearance`` (3DGS's exposure compensation, for a
capture whose exposure and white balance drift; on beer it measured no gain: ``method.appearance``). Each view's
transform has its own Adam (moments and step count): it moves on its view's steps only.

The step is one ``tf.function`` per image size, traced once: the Gaussians, Adam's moments and the statistics are
variables of unknown first dimension (``gaussians.Gaussians``), changed in size between steps by assignment, and
the SH degree is a tensor (a mask over the coefficients), so neither densification nor a new degree retraces it.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import tensorflow as tf

from nerf_pipeline.errors import ConfigError
from nerf_pipeline.scenes.images import downscale_image
from nerf_pipeline.scenes.masks import downscale_mask
from nerf_pipeline.splats import density_control, rasterizer
from nerf_pipeline.splats.gaussians import NAMES, ROW_SHAPES, Gaussians

SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03  # tf.image.ssim's (and the scoring's)
GROUPS = {"means": "means", "log_scales": "scales", "quats": "quats", "opacity_logits": "opacity", "sh_dc": "sh_dc",
          "sh_rest": "sh_rest"}  # parameter -> its learning rate in the preset's optimizer


def cameras_extent(poses: np.ndarray) -> float:
    """3DGS's scene extent: 1.1 times the largest distance of a camera centre from their mean (``poses [V, 4, 4]``)."""
    centres = np.asarray(poses, np.float64)[:, :3, 3]
    return 1.1 * max(float(np.linalg.norm(centres - centres.mean(axis=0), axis=1).max()), 1e-6)


def sh_degree_at(step: int, preset) -> int:
    """The SH degree used at (0-based) ``step``: one more every ``sh_degree_every`` steps, up to ``sh_degree``."""
    return min(preset.sh_degree, step // preset.sh_degree_every)


def means_learning_rate(step: int, total_steps: int, optimizer, extent: float) -> float:
    """The means' learning rate at ``step``: ``optimizer.means`` decaying exponentially to ``optimizer.means_final``
    at ``total_steps``, both times ``extent``."""
    t = min(max(step / max(total_steps, 1), 0.0), 1.0)
    return extent * math.exp((1 - t) * math.log(optimizer.means) + t * math.log(optimizer.means_final))


# -- the loss ----------------------------------------------------------------------------------------------------------

def _window() -> np.ndarray:
    """The 11-tap Gaussian window (σ 1.5), normalised, float32."""
    x = np.arange(SSIM_WINDOW, dtype=np.float64) - (SSIM_WINDOW - 1) / 2
    window = np.exp(-0.5 * (x / SSIM_SIGMA) ** 2)
    return (window / window.sum()).astype(np.float32)


def _window_matrix(size: int) -> np.ndarray:
    """``[size - 10, size]``: row i holds the 11-tap Gaussian window (σ 1.5) at columns i to i + 10, so that a
    product with it is the 'valid' blur along that axis."""
    window = _window()
    out = np.zeros((size - SSIM_WINDOW + 1, size), np.float32)
    for i in range(len(out)):
        out[i, i:i + SSIM_WINDOW] = window
    return out


def reference_ssim_map(predicted, target):
    """SSIM of two ``[H, W, 3]`` images in [0, 1] (H, W static, at least 11) over 11 x 11 Gaussian windows (σ 1.5)
    as ``tf.image.ssim`` makes it, averaged over the channels: ``[H - 10, W - 10]``, each value that of the window
    centred there. TensorFlow's ops, the blurs as two products with banded matrices: the native op's oracle (its
    cost grows as H^2 W: about a second a step at 800 x 800)."""
    height, width = predicted.shape[0], predicted.shape[1]
    rows, cols = tf.constant(_window_matrix(height)), tf.constant(_window_matrix(width))
    x, y = predicted, target
    stack = tf.concat([x, y, x * x, y * y, x * y], axis=-1)  # [H, W, 15]
    blurred = tf.einsum("ih,hwc->iwc", rows, stack)
    blurred = tf.einsum("jw,iwc->ijc", cols, blurred)
    mu_x, mu_y, xx, yy, xy = tf.split(blurred, 5, axis=-1)
    sigma_x, sigma_y, sigma_xy = xx - mu_x * mu_x, yy - mu_y * mu_y, xy - mu_x * mu_y
    c1, c2 = SSIM_K1 ** 2, SSIM_K2 ** 2
    luminance = (2.0 * mu_x * mu_y + c1) / (mu_x * mu_x + mu_y * mu_y + c1)
    structure = (2.0 * sigma_xy + c2) / (sigma_x + sigma_y + c2)
    return tf.reduce_mean(luminance * structure, axis=-1)


def native_ssim_map(predicted, target):
    """``reference_ssim_map`` by the native op ``NerfSsim`` (``native/splats.cc``: the blurs in O(H W 11)),
    differentiable with respect to ``predicted`` (the target gets no gradient); None when the op library is not
    available."""
    library = rasterizer.native_library()
    if library is None:
        return None
    ssim, _ = library.nerf_ssim(tf.cast(predicted, tf.float32), tf.cast(target, tf.float32), tf.constant(_window()),
                                c1=SSIM_K1 ** 2, c2=SSIM_K2 ** 2)
    return ssim


@tf.RegisterGradient("NerfSsim")
def _native_ssim_gradient(op, grad_map, unused_grad_stats):
    """``NerfSsimGrad`` from the blurred statistics the forward kept; the target and the window get none."""
    x, y, window = op.inputs
    grad_x = rasterizer.native_library().nerf_ssim_grad(x, y, window, op.outputs[1], grad_map, c1=op.get_attr("c1"),
                                                         c2=op.get_attr("c2"))
    return grad_x, None, None


def ssim_map(predicted, target):
    """``[H - 10, W - 10]``: ``native_ssim_map`` where the op library loads, else ``reference_ssim_map``."""
    ssim = native_ssim_map(predicted, target)
    return reference_ssim_map(predicted, target) if ssim is None else ssim


def image_loss(predicted, target, kept, ssim_weight: float):
    """``((1 - ssim_weight) L1 + ssim_weight (1 - SSIM), mse)`` of ``predicted`` against ``target`` (``[H, W, 3]``)
    over the pixels ``kept [H, W]`` (float, 1 kept, 0 left out): L1 and the MSE are means over the kept pixels, SSIM
    the mean over the windows centred on kept pixels, the left-out pixels of ``predicted`` set to ``target``'s
    (as ``scoring.image_metrics`` scores masks). An image smaller than the window is scored by L1 alone."""
    kept3 = kept[..., None]
    pixels = tf.maximum(tf.reduce_sum(kept), 1.0)
    l1 = tf.reduce_sum(kept3 * tf.abs(predicted - target)) / (3.0 * pixels)
    mse = tf.reduce_sum(kept3 * tf.square(predicted - target)) / (3.0 * pixels)
    if ssim_weight == 0 or min(predicted.shape[0], predicted.shape[1]) < SSIM_WINDOW:  # (no window fits: L1 only)
        return l1, mse
    half = SSIM_WINDOW // 2
    ssim = ssim_map(kept3 * predicted + (1.0 - kept3) * target, target)
    centres = kept[half:-half, half:-half]
    ssim = tf.reduce_sum(centres * ssim) / tf.maximum(tf.reduce_sum(centres), 1.0)
    return (1.0 - ssim_weight) * l1 + ssim_weight * (1.0 - ssim), mse


# -- the trainer -------------------------------------------------------------------------------------------------------

def identity_appearance(num_views: int) -> np.ndarray:
    """``[num_views, 3, 4]`` float32 colour transforms that change nothing (``apply_appearance``)."""
    return np.tile(np.eye(3, 4, dtype=np.float32), (num_views, 1, 1))


def apply_appearance(rgb, transform):
    """``rgb [H, W, 3]`` through a view's colour ``transform [3, 4]``: ``transform[:, :3] @ colour + transform[:, 3]``
    at each pixel (TensorFlow: training's renders, and ``SplatsMethod.render``'s frames)."""
    return tf.einsum("hwc,dc->hwd", rgb, transform[:, :3]) + transform[:, 3]


def adam(m, v, grad, t, rate, opt):
    """One Adam update of a parameter (``opt``: the preset's optimizer, its betas and epsilon): ``(m, v, update)``,
    its new moments from ``m``, ``v`` and ``grad``, and what to subtract from it at its ``t``-th update (from 1)
    with learning rate ``rate``."""
    m = opt.beta_1 * m + (1.0 - opt.beta_1) * grad
    v = opt.beta_2 * v + (1.0 - opt.beta_2) * grad * grad
    correction = tf.sqrt(1.0 - opt.beta_2 ** t) / (1.0 - opt.beta_1 ** t)
    return m, v, rate * correction * m / (tf.sqrt(v) + opt.epsilon * tf.sqrt(1.0 - opt.beta_2 ** t))


def _per_gaussian(shape_tail, dtype=tf.float32, name=None):
    return tf.Variable(tf.zeros([0, *shape_tail], dtype), shape=tf.TensorShape([None, *shape_tail]), trainable=False,
                       name=name)


@dataclasses.dataclass
class StepResult:
    loss: float
    psnr: float


class Trainer:
    """Trains ``gaussians`` (``Gaussians``) with the settings of ``preset`` (a ``config.SplatsPresetConfig``).

    Args:
        background: the grey level (or RGB ``[3]``) behind the scene.
        extent: the scene's extent (``cameras_extent``): scales the means' learning rate and the densification's
            world sizes.
        total_steps: the run's steps (the means' learning rate decays over them).
        seed: the view order, crops and split halves (each a function of the seed and the step, so a resumed run
            draws what the uninterrupted one would).
        appearance: the training views' colour transforms ``[V, 3, 4]`` to start from (``identity_appearance``),
            learnt with the Gaussians; None: no appearance.
    """

    def __init__(self, gaussians: Gaussians, preset, *, background, extent: float, total_steps: int, seed: int,
                 appearance=None):
        self.gaussians, self.preset = gaussians, preset
        self.appearance = None
        if appearance is not None:
            appearance = np.asarray(appearance, np.float32)
            self.appearance = tf.Variable(appearance, trainable=False, name="appearance")
            self.appearance_moments = (tf.Variable(tf.zeros_like(appearance), trainable=False, name="m_appearance"),
                                       tf.Variable(tf.zeros_like(appearance), trainable=False, name="v_appearance"))
            self.appearance_steps = tf.Variable(tf.zeros([len(appearance)]), trainable=False, name="appearance_steps")
        self.background = tf.constant(np.broadcast_to(np.asarray(background, np.float32), (3,)))
        self.extent, self.total_steps, self.seed = float(extent), int(total_steps), int(seed)
        self.moments = {name: (_per_gaussian(ROW_SHAPES[name], name=f"m_{name}"),
                                _per_gaussian(ROW_SHAPES[name], name=f"v_{name}")) for name in NAMES}
        self.stats = {"grad_sum": _per_gaussian((), name="grad_sum"), "count": _per_gaussian((), name="count"),
                      "max_radius": _per_gaussian((), name="max_radius")}
        self.iterations = tf.Variable(0, dtype=tf.int64, trainable=False, name="iterations")
        self._reset_state(zero_moments=True)
        self._functions = {}
        self.last_change: density_control.Change | None = None

    # -- state -----------------------------------------------------------------------------------------------------

    def _reset_state(self, zero_moments: bool) -> None:
        count = self.gaussians.count
        if zero_moments:
            for name in NAMES:
                for moment in self.moments[name]:
                    moment.assign(tf.zeros([count, *ROW_SHAPES[name]]))
        for variable in self.stats.values():
            variable.assign(tf.zeros([count]))

    def state(self) -> dict:
        """Everything that training continues from: ``{name: array}`` (parameters, ``m_``/``v_`` moments,
        statistics, ``iterations``)."""
        out = self.gaussians.numpy()
        for name in NAMES:
            out[f"m_{name}"], out[f"v_{name}"] = (moment.numpy() for moment in self.moments[name])
        out.update({name: variable.numpy() for name, variable in self.stats.items()})
        out["iterations"] = np.int64(self.iterations.numpy())
        if self.appearance is not None:
            out["appearance"], out["appearance_steps"] = self.appearance.numpy(), self.appearance_steps.numpy()
            out["m_appearance"], out["v_appearance"] = (moment.numpy() for moment in self.appearance_moments)
        return out

    def load_state(self, state: dict) -> None:
        """Continue from ``state`` (``state()``'s)."""
        self.gaussians.assign({name: state[name] for name in NAMES})
        for name in NAMES:
            self.moments[name][0].assign(np.asarray(state[f"m_{name}"], np.float32))
            self.moments[name][1].assign(np.asarray(state[f"v_{name}"], np.float32))
        for name, variable in self.stats.items():
            variable.assign(np.asarray(state[name], np.float32))
        self.iterations.assign(int(state["iterations"]))
        if self.appearance is not None and "appearance" in state:  # (else: the identities it starts from)
            self.appearance.assign(np.asarray(state["appearance"], np.float32))
            self.appearance_steps.assign(np.asarray(state["appearance_steps"], np.float32))
            for moment, name in zip(self.appearance_moments, ("m_appearance", "v_appearance")):
                moment.assign(np.asarray(state[name], np.float32))

    # -- the step --------------------------------------------------------------------------------------------------

    def _step_function(self, height: int, width: int):
        key = (height, width)
        if key in self._functions:
            return self._functions[key]
        g, preset = self.gaussians, self.preset
        opt = preset.optimizer
        rates = {name: getattr(opt, GROUPS[name]) for name in NAMES if name != "means"}
        appearance = self.appearance
        ssim_weight = float(preset.ssim_weight)
        ndc = tf.constant([0.5 * width, 0.5 * height])
        longer = float(max(width, height))

        def step(image, kept, c2w, intrinsics, degree, means_rate, view):
            target = tf.cast(image, tf.float32) / 255.0
            cam = rasterizer.Camera(c2w, intrinsics[0], intrinsics[1], intrinsics[2], intrinsics[3], width, height)
            degree_mask = tf.cast(tf.range(16) < (degree + 1) ** 2, tf.float32)[None, :, None]
            variables = [g.variables[name] for name in NAMES]
            with tf.GradientTape() as tape:
                means2d, conics, depths, radii = rasterizer.project(g.means, g.log_scales, g.quats, cam)
                tape.watch(means2d)
                sh = tf.concat([g.sh_dc, g.sh_rest], axis=1) * degree_mask
                colors = rasterizer.sh_colors(sh, 3, g.means, cam.position)
                opacities = tf.sigmoid(g.opacity_logits)
                # the same image and gradients as project's radii give, from fewer pixels visited (the density
                # control's statistics below keep project's radii: what is visible, and how large on screen)
                rgb, _, _ = rasterizer.rasterize(means2d, conics, colors, opacities, depths,
                                                 rasterizer.opacity_radii(radii, opacities), width, height,
                                                 self.background)
                if appearance is not None:
                    transform = tf.gather(appearance, view)
                    tape.watch(transform)
                    rgb = apply_appearance(rgb, transform)
                loss, mse = image_loss(rgb, target, kept, ssim_weight)
            if appearance is None:
                *grads, grad_means2d = tape.gradient(loss, [*variables, means2d])
            else:
                *grads, grad_means2d, grad_transform = tape.gradient(loss, [*variables, means2d, transform])
                self._appearance_step(view, transform, grad_transform)
            t = tf.cast(self.iterations + 1, tf.float32)
            for name, variable, grad in zip(NAMES, variables, grads):
                m, v = self.moments[name]
                new_m, new_v, update = adam(m, v, grad, t, means_rate if name == "means" else rates[name], opt)
                m.assign(new_m)
                v.assign(new_v)
                variable.assign_sub(update)
            self.iterations.assign_add(1)
            # The density control's statistics (cheap: kept up after densify.stop too, and never read then).
            visible = radii > 0
            norm = tf.norm(grad_means2d * ndc, axis=-1)
            stats = self.stats
            stats["grad_sum"].assign_add(tf.where(visible, norm, 0.0))
            stats["count"].assign_add(tf.cast(visible, tf.float32))
            stats["max_radius"].assign(tf.maximum(stats["max_radius"],
                                                  tf.where(visible, tf.cast(radii, tf.float32) / longer, 0.0)))
            return loss, mse

        signature = [tf.TensorSpec([height, width, 3], tf.uint8), tf.TensorSpec([height, width], tf.float32),
                     tf.TensorSpec([4, 4], tf.float32), tf.TensorSpec([4], tf.float32), tf.TensorSpec([], tf.int32),
                     tf.TensorSpec([], tf.float32), tf.TensorSpec([], tf.int32)]
        function = tf.function(step, input_signature=signature, autograph=False)
        self._functions[key] = function
        return function

    def _appearance_step(self, view, transform, grad) -> None:
        """Adam on view ``view``'s colour transform alone, with its own step count (inside the step function)."""
        opt, index = self.preset.optimizer, [[view]]
        m, v = self.appearance_moments
        t = tf.gather(self.appearance_steps, view) + 1.0
        m_row, v_row, update = adam(tf.gather(m, view), tf.gather(v, view), grad, t, opt.appearance, opt)
        self.appearance.scatter_nd_update(index, (transform - update)[None])
        m.scatter_nd_update(index, m_row[None])
        v.scatter_nd_update(index, v_row[None])
        self.appearance_steps.scatter_nd_update(index, t[None])

    def trace_count(self) -> int:
        """How many times the step functions were traced (once per image size when all is well)."""
        return sum(function.experimental_get_tracing_count() for function in self._functions.values())

    def train_step(self, step: int, image, kept, c2w, intrinsics, view: int | None = None) -> StepResult:
        """Step ``step`` (0-based: what the schedules read) on one view: ``image [H, W, 3]`` uint8, ``kept [H, W]``
        (None: every pixel), its camera ``c2w [4, 4]`` and ``intrinsics [4]``, and with an appearance its index
        ``view`` among the training views (None: ``view_of_step``'s, the view ``step_inputs`` and ``StepViews``
        give that step); then the density control that falls on it. Returns the loss and the PSNR of the kept
        pixels."""
        height, width = np.shape(image)[:2]
        kept = np.ones((height, width), np.float32) if kept is None else np.asarray(kept, np.float32)
        function = self._step_function(int(height), int(width))
        means_rate = means_learning_rate(step, self.total_steps, self.preset.optimizer, self.extent)
        if view is None:
            view = 0 if self.appearance is None else view_of_step(step, int(self.appearance.shape[0]), self.seed)
        loss, mse = function(np.asarray(image, np.uint8), kept, np.asarray(c2w, np.float32),
                             np.asarray(intrinsics, np.float32), np.int32(sh_degree_at(step, self.preset)),
                             np.float32(means_rate), np.int32(view))
        self.after_step(step)
        return StepResult(float(loss), float(-10.0 * np.log10(max(float(mse), 1e-10))))

    def after_step(self, step: int) -> None:
        """The density control and opacity reset due after ``step`` (0-based; 3DGS counts iterations from 1)."""
        d, iteration = self.preset.densify, step + 1
        if iteration >= d.stop:
            return
        if densify_due(step, d):
            self.densify(screen=iteration > d.opacity_reset_every, step=step)
        if iteration % d.opacity_reset_every == 0:
            self.reset_opacity()

    def densify(self, screen: bool, step: int = 0) -> density_control.Change:
        """Clone, split and prune now (``density_control.densify_and_prune``), the moments following; the
        statistics start again. ``screen``: prune by screen size too."""
        d = self.preset.densify
        stats = {name: variable.numpy() for name, variable in self.stats.items()}
        arrays, change = density_control.densify_and_prune(
            self.gaussians.numpy(), stats["grad_sum"], stats["count"], stats["max_radius"],
            grad_threshold=d.grad_threshold, dense_size=d.dense_fraction * self.extent, min_opacity=d.min_opacity,
            max_world_size=d.max_world_fraction * self.extent,
            max_screen_size=d.max_screen_fraction if screen else None, max_gaussians=d.max_gaussians,
            rng=np.random.default_rng([self.seed, step, 1]))
        moments = {name: [density_control.follow(moment.numpy(), change) for moment in self.moments[name]]
                   for name in NAMES}
        self.gaussians.assign(arrays)
        for name in NAMES:
            for variable, value in zip(self.moments[name], moments[name]):
                variable.assign(value)
        self._reset_state(zero_moments=False)
        self.last_change = change
        return change

    def reset_opacity(self) -> None:
        """Lower every opacity to ``densify.reset_opacity`` at most; its Adam moments start again (3DGS's)."""
        logits = self.gaussians.variables["opacity_logits"]
        logits.assign(density_control.reset_opacity(logits.numpy(), self.preset.densify.reset_opacity))
        for moment in self.moments["opacity_logits"]:
            moment.assign(tf.zeros_like(moment))


def densify_due(step: int, densify) -> bool:
    """Whether ``Trainer.after_step`` densifies after (0-based) ``step``, by ``densify`` (the preset's
    ``DensityControlConfig``): strictly between ``start`` and ``stop`` (as iterations from 1), every ``every``."""
    iteration = step + 1
    return densify.start < iteration < densify.stop and iteration % densify.every == 0


# -- what a step trains on ---------------------------------------------------------------------------------------------

def view_of_step(step: int, num_views: int, seed: int) -> int:
    """The training view of ``step``: the views in a random order, a new order each pass (3DGS's), drawn from
    the seed and the pass only."""
    order = np.random.default_rng([seed, step // num_views]).permutation(num_views)
    return int(order[step % num_views])


def crop_of_step(step: int, height: int, width: int, crop: int | None, seed: int) -> tuple[int, int, int, int]:
    """``(top, left, crop height, crop width)`` of ``step``'s random square (the whole view when ``crop`` is None or
    not smaller than it)."""
    if crop is None or (crop >= height and crop >= width):
        return 0, 0, height, width
    h, w = min(crop, height), min(crop, width)
    rng = np.random.default_rng([seed, step, 2])
    return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w


def step_inputs(part, step: int, crop: int | None, seed: int):
    """``(image [h, w, 3] uint8, kept [h, w] or None, c2w [4, 4], intrinsics [4])`` that ``step`` trains on from
    ``part`` (a ``ray_files.RayPart``): its view, cropped, the crop's camera shifted to it."""
    view = view_of_step(step, part.num_views, seed)
    masks = None if part.masks is None else part.masks[view]
    return _cropped(step, part.images[view], masks, part.poses[view], part.intrinsics[view], crop, seed)


def _cropped(step: int, image, mask, c2w, intrinsics, crop: int | None, seed: int):
    top, left, h, w = crop_of_step(step, image.shape[0], image.shape[1], crop, seed)
    image = np.asarray(image[top:top + h, left:left + w])
    kept = None if mask is None else np.asarray(mask[top:top + h, left:left + w]) != 0
    intrinsics = np.array(intrinsics, np.float32)
    intrinsics[2] -= left
    intrinsics[3] -= top
    return image, kept, c2w, intrinsics


def downscale_at(step: int, preset) -> int:
    """The factor by which (0-based) ``step``'s view is downscaled (``coarse_to_fine``): the first of
    ``downscales`` whose ``until`` lies beyond the step, 1 (full size) after the last."""
    schedule = preset.coarse_to_fine
    return next((factor for factor, until in zip(schedule.downscales, schedule.until) if step < until), 1)


class StepViews:
    """What each step trains on from ``part`` (a ``ray_files.RayPart``), coarse to fine: ``step_inputs``'s view,
    first averaged over ``downscale_at``'s blocks (the camera's focal lengths and centre divided by the factor, a
    mask as the rays stage downscales one: ``masks.downscale_mask``), then cropped. A step at 1/f the size costs
    about 1/f² as much, and the Gaussians' coarse shape is learnt as well from a coarse view. Downscaled views are
    kept for the factor in use (each computed once), dropped when it changes.

    ``views(step)`` gives ``step_inputs``'s tuple; ``preset_name`` is the preset's key in params.yaml (for errors)."""

    def __init__(self, part, preset, seed: int, preset_name: str = "splats"):
        self.part, self.preset, self.seed = part, preset, int(seed)
        self._factor, self._views = 1, {}
        largest = max(preset.coarse_to_fine.downscales, default=1)
        if min(part.height, part.width) < 4 * largest:
            key = f"presets.{preset_name}.coarse_to_fine"
            raise ConfigError(f"params.yaml: '{key}.downscales' holds {largest}, but the training views are "
                              f"{part.width}x{part.height}: downscaled they would be smaller than 4 pixels; lower "
                              f"it, or set {key}.downscales and until to [].")

    def __call__(self, step: int):
        factor = downscale_at(step, self.preset)
        if factor == 1:
            return step_inputs(self.part, step, self.preset.crop, self.seed)
        if factor != self._factor:
            self._factor, self._views = factor, {}
        view = view_of_step(step, self.part.num_views, self.seed)
        if view not in self._views:
            image = np.round(downscale_image(np.asarray(self.part.images[view]), factor)).astype(np.uint8)
            mask = None if self.part.masks is None else downscale_mask(self.part.masks[view] != 0, factor)
            self._views[view] = image, mask
        image, mask = self._views[view]
        intrinsics = np.asarray(self.part.intrinsics[view], np.float32) / factor
        return _cropped(step, image, mask, self.part.poses[view], intrinsics, self.preset.crop, self.seed)

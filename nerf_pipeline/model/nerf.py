"""The NeRF: a field, a sampler and a space composed, volume-rendered and trained with ``model.fit``.

``NeRF(field, sampler, space, …)`` renders rays by asking the sampler for depths in the space,
the field for colour and density at the warped points, and compositing them (``rendering``).
Its ``train_step`` is what ``fit`` runs. Rays are always flat: ``ray_origins, ray_directions:
[R, 3]`` float32, unit directions; training rays may come with ``views [R]`` int32, the training view
of each (a field's appearance embedding uses them, and the pose refinement, ``pose_refinement.py``, moves
them through their view's corrected camera; rays without them get the mean embedding and the poses as given).

``build_nerf`` makes one from a preset; ``compile_for_training`` gives it Adam with the preset's
decaying learning rate. (Reading the one the train stage saved: ``methods/nerf.py``' ``load_model``.)
"""

from __future__ import annotations

import contextlib
import functools
import math

import keras
import numpy as np
import tensorflow as tf

from nerf_pipeline import camera
from nerf_pipeline.config import OptimizerConfig, PresetConfig, RayBatchConfig
from nerf_pipeline.errors import DataError
from nerf_pipeline.model import losses, rendering, xla
from nerf_pipeline.model.fields import make_field
from nerf_pipeline.model.optimizer import SampleWiseAdam, sample_squares
from nerf_pipeline.model.pose_refinement import PoseRefinement
from nerf_pipeline.model.sampling import make_sampler
from nerf_pipeline.model.space import make_space

PACKAGE = "nerf_pipeline"


@keras.saving.register_keras_serializable(package=PACKAGE)
class NeRF(keras.Model):
    """Field + sampler + space, rendered by compositing; trained on batches of rays.

    ``fit``/``evaluate`` take batches ``((ray_origins [R, 3], ray_directions [R, 3]), rgb [R, 3])`` or
    ``((ray_origins, ray_directions, views [R] int32), rgb)`` (``training/datasets.py``).
    Metrics: ``loss`` (MSE) and ``psnr`` (of each batch's MSE, averaged over batches: with one
    image per validation batch this is the mean per-image PSNR).

    Args:
        field, sampler: layers (``fields``, ``sampling``).
        space: ``space.BoxSpace`` or ``space.ContractedSpace``.
        near, far: sampling bounds along each ray.
        background: grey level seen where a ray is not fully absorbed.
        rays_per_step: train on this many rays of each batch, those that can meet matter first
            (``sampler.hits``); ``None``: all of them.
        pose_refinement: a ``PoseRefinement`` of the training views' cameras, trained with the field on
            rays that come with their views; ``None``: the poses as given.
        distortion_weight: training minimises the MSE plus this times the mean distortion loss of the rays
            (``losses.DistortionLoss``, in the space's ``normalized_distance``); 0: the MSE alone. The
            ``loss`` metric (and PSNR) stays the MSE. (``loss_terms``: the terms added to the MSE.)
    """

    def __init__(self, field, sampler, space, near: float, far: float, background: float, seed: int,
                 rays_per_step: int | None = None, pose_refinement=None, distortion_weight: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.field, self.sampler, self.space = field, sampler, space
        self.pose_refinement = pose_refinement
        self.distortion_weight = float(distortion_weight)
        self.near, self.far = float(near), float(far)
        self.background, self.seed, self.rays_per_step = float(background), int(seed), rays_per_step
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.psnr_tracker = keras.metrics.Mean(name="psnr")
        self.xla_parts = False
        self.built = True

    # -- compiling --------------------------------------------------------------------------

    @property
    def uses_native_op(self) -> bool:
        """Whether the field runs a native op (the fused hash grid), which XLA cannot compile."""
        return bool(getattr(self.field, "uses_native_op", False))

    @contextlib.contextmanager
    def appearance_near(self, train_positions, position):
        """Held-out rays rendered meanwhile with the appearance embedding of the training views nearest
        ``position [3]`` (``camera.nearest_views_weights`` of their centres ``train_positions [V, 3]``) rather
        than the mean of all: a phone's exposure and white balance drift through a capture, and a view's
        neighbours were taken in its light. Every row of the field's table holds that mix meanwhile (the
        renderers, compiled once, read the table's mean: nothing is retraced) and is put back after. A model
        without an embedding, or ``train_positions`` None, renders as it does (the mean)."""
        table = getattr(self.field, "appearance", None)
        if table is None or train_positions is None:
            yield
            return
        saved = np.asarray(keras.ops.convert_to_numpy(table))
        if len(train_positions) != len(saved):  # a model trained on other rays than these
            raise DataError(f"the model's appearance embedding has {len(saved)} training views but the rays' train "
                            f"part has {len(train_positions)}; run the train stage again.")
        mix = camera.nearest_views_weights(train_positions, position) @ saved
        table.assign(np.broadcast_to(mix, saved.shape).astype(saved.dtype))
        try:
            yield
        finally:
            table.assign(saved)

    def refined_poses(self, poses) -> np.ndarray:
        """The training views' camera-to-world ``poses [V, 4, 4]`` as the pose refinement has them so far (as given
        without one); ``trained_folder.trained_poses`` reads those a trained model saved."""
        return poses if self.pose_refinement is None else self.pose_refinement.corrected_poses(poses)

    @property
    def trains_on_views(self) -> bool:
        """Whether training batches must carry each ray's view (``views``): a part of the model is per training view
        (the field's appearance embedding, the pose refinement)."""
        return getattr(self.field, "appearance", None) is not None or self.pose_refinement is not None

    def plan_xla(self, jit_compile: bool) -> bool:
        """Where XLA compiles, for callers that asked for ``jit_compile``: returns whether to compile whole
        steps (the train step, a render pass). With a native op, no: XLA then compiles the parts around it
        (``xla.part``), and the train step runs the op between them (``_train_step_around_native_op``)."""
        self.xla_parts = self.field.xla_parts = bool(jit_compile and self.uses_native_op)
        return bool(jit_compile and not self.uses_native_op)

    # -- rendering ------------------------------------------------------------------------

    def render_rays(self, ray_origins, ray_directions, training: bool = False, views=None) -> dict:
        """``rendering.composite``'s dict for flat rays: ``rgb [R, 3]``, ``depth [R]``, ``acc [R]``, ``weights [R, S]``,
        and the samples' ``t_vals, deltas [R, S]`` (what the distortion loss measures); ``views [R]``: the training
        view of each ray (None: held-out rays, the mean appearance)."""
        t_vals, deltas = self.sample_rays(ray_origins, ray_directions, training)
        rgb, sigma = self.field_along_rays(ray_origins, ray_directions, t_vals, views)
        return {**rendering.composite(rgb, sigma, t_vals, deltas, self.background), "t_vals": t_vals, "deltas": deltas}

    def sample_rays(self, ray_origins, ray_directions, training: bool = False):
        """The sampler's ``(t_vals [R, S], deltas [R, S])`` for flat rays (jittered only while training). Without a
        gradient: a pose correction trains through the points along its rays, not through where the sampler put
        them (a quadrature's nodes, not the scene)."""
        ray_origins, ray_directions = tf.stop_gradient(ray_origins), tf.stop_gradient(ray_directions)
        native = self._native_sampling(training)
        if native is not None:
            return native[1](ray_origins, ray_directions)
        return self.sampler.sample(ray_origins, ray_directions, self.near, self.far, self.space, training,
                                   self.seed_generator)

    def _native_sampling(self, training: bool):
        """The sampler's native ``(hits, sample)`` (the occupancy march in C++, ``native_functions``) where the step
        runs around native ops (outside XLA); ``None`` where it is one XLA function or the sampler has none."""
        if not self.uses_native_op or not hasattr(self.sampler, "native_functions"):
            return None
        functions = self.__dict__.setdefault("_native_sampling_functions", {})  # not Keras state: a cache
        key = (self.xla_parts, training)
        if key not in functions:
            functions[key] = self.sampler.native_functions(self.near, self.far, self.space, self.xla_parts, training,
                                                           self.seed_generator)
        return functions[key]

    def field_along_rays(self, ray_origins, ray_directions, t_vals, views=None):
        """The field at depths ``t_vals [R, K]`` along flat rays (of training ``views [R]``, or None):
        ``rgb [R, K, 3]``, ``sigma [R, K]``."""
        num_rays, num_samples = tf.shape(t_vals)[0], tf.shape(t_vals)[1]
        points, directions = xla.part(self, "sample_points", self.sample_points)(ray_origins, ray_directions, t_vals)
        if views is None:
            rgb, sigma = self.field(points, directions)
        else:
            rgb, sigma = self.field(points, directions, views=self.sample_views(views, num_samples))
        return tf.reshape(rgb, [num_rays, num_samples, 3]), tf.reshape(sigma, [num_rays, num_samples])

    def sample_points(self, ray_origins, ray_directions, t_vals):
        """The field's inputs at depths ``t_vals [R, K]``: warped ``points [R * K, 3]``, ``directions [R * K, 3]``."""
        points = ray_origins[:, None, :] + ray_directions[:, None, :] * t_vals[..., None]  # [R, K, 3]
        directions = tf.broadcast_to(ray_directions[:, None, :], tf.shape(points))
        return self.space.warp(tf.reshape(points, [-1, 3])), tf.reshape(directions, [-1, 3])

    @staticmethod
    def sample_views(views, num_samples):
        """Each ray's view ``views [R]`` repeated for its ``num_samples`` samples: ``[R * K]``, as ``sample_points``
        orders them."""
        return tf.repeat(views, num_samples)

    def rays_hit(self, ray_origins, ray_directions):
        """``[R]`` bool: whether each ray can meet matter; renderers skip the others (they are background)."""
        native = self._native_sampling(training=False)
        if native is not None:
            return native[0](ray_origins, ray_directions)
        return self.sampler.hits(ray_origins, ray_directions, self.near, self.far, self.space)

    def rays_may_hit(self, ray_origins, ray_directions):
        """``[R]`` numpy bool, a superset of ``rays_hit`` found without marching (``sampler.may_hit``)."""
        return self.sampler.may_hit(ray_origins, ray_directions, self.near, self.far, self.space)

    def call(self, inputs, training=False):
        ray_origins, ray_directions, views = _rays(inputs)
        return self.render_rays(ray_origins, ray_directions, training=training, views=views)["rgb"]

    # -- training ---------------------------------------------------------------------------

    def training_callbacks(self) -> list:
        """What keeps the parts' state up to date during ``fit`` (the occupancy grid's updates)."""
        return self.sampler.callbacks()

    @property
    def metrics(self):
        return [self.loss_tracker, self.psnr_tracker]

    @property
    def loss_terms(self) -> list:
        """What training adds to the MSE: the preset's loss terms (``losses.terms``) of this model's weights."""
        return losses.terms(distortion_weight=self.distortion_weight)

    def objective(self, mse, out):
        """What training minimises: ``mse`` plus each of the loss terms (``loss_terms``, ``model/losses.py``) of the
        rendered batch ``out`` (``render_rays``' dict: ``weights, t_vals, deltas: [R, S]``)."""
        total = mse
        for term in self.loss_terms:
            total = total + term(self, out)
        return total

    def training_loss(self, out, target_rgb):
        """``(mse, what this replica minimises)`` of a rendered batch ``out`` against ``target_rgb [R, 3]``."""
        mse = tf.reduce_mean(tf.square(out["rgb"] - target_rgb))
        # Replicas' gradients are summed; each contributes its share of the global batch's mean.
        return mse, self.objective(mse, out) / tf.distribute.get_strategy().num_replicas_in_sync

    def _update_metrics(self, loss):
        self.loss_tracker.update_state(loss)
        self.psnr_tracker.update_state(-10.0 * tf.math.log(loss) / math.log(10.0))
        return {"loss": self.loss_tracker.result(), "psnr": self.psnr_tracker.result()}

    def _rays_to_train_on(self, ray_origins, ray_directions, views, target_rgb):
        """The first ``rays_per_step`` rays of the batch (this replica's share), those that can meet matter first
        (``views`` None stays None)."""
        if self.rays_per_step is None:
            return ray_origins, ray_directions, views, target_rgb
        keep_count = self.rays_per_step // tf.distribute.get_strategy().num_replicas_in_sync
        misses = tf.cast(tf.logical_not(self.rays_hit(ray_origins, ray_directions)), tf.int32)
        keep = tf.argsort(misses, stable=True)[:keep_count]
        return (tf.gather(ray_origins, keep), tf.gather(ray_directions, keep),
                None if views is None else tf.gather(views, keep), tf.gather(target_rgb, keep))

    def refined_rays(self, ray_origins, ray_directions, views):
        """Training rays through their views' corrected poses (``pose_refinement``); as given without one or
        without ``views``."""
        if self.pose_refinement is None or views is None:
            return ray_origins, ray_directions
        return self.pose_refinement(ray_origins, ray_directions, views)

    def train_step(self, data):
        if self.uses_native_op:
            return self._train_step_around_native_op(data)
        inputs, target_rgb = data
        ray_origins, ray_directions, views = _rays(inputs)
        with tf.GradientTape() as tape:
            ray_origins, ray_directions = self.refined_rays(ray_origins, ray_directions, views)
            ray_origins, ray_directions, views, target_rgb = self._rays_to_train_on(
                ray_origins, ray_directions, views, target_rgb)
            out = self.render_rays(ray_origins, ray_directions, training=True, views=views)
            loss, replica_loss = self.training_loss(out, target_rgb)
        gradients = tape.gradient(replica_loss, self.trainable_variables)
        squares = self._table_squares(gradients)
        self._apply_gradients(_dense(gradients), squares)
        return self._update_metrics(loss)

    def _table_squares(self, gradients: list) -> dict:
        """``{id(table): [T, F]}``: the hash table's per-row sum of its samples' squared gradients, from the
        ``IndexedSlices`` that ``tf.gather`` gives it (one slice per sample and corner); ``{}`` without a table."""
        table = getattr(getattr(self.field, "encoding", None), "table", None)
        for variable, gradient in zip(self.trainable_variables, gradients):
            if variable is table and isinstance(gradient, tf.IndexedSlices):
                return {id(table): sample_squares(gradient, int(table.shape[0]))}
        return {}

    def _apply_gradients(self, gradients: list, squares: dict) -> None:
        """The optimizer's step; ``SampleWiseAdam`` takes the table's ``squares`` too (``model/optimizer.py``)."""
        if squares and isinstance(self.optimizer, SampleWiseAdam):
            if tf.distribute.get_strategy().num_replicas_in_sync > 1:  # summed over replicas, as the gradients are
                context = tf.distribute.get_replica_context()
                squares = {key: context.all_reduce("sum", value) for key, value in squares.items()}
            self.optimizer.apply_with_squares(gradients, self.trainable_variables, squares)
        else:
            self.optimizer.apply(gradients, self.trainable_variables)

    def _train_step_around_native_op(self, data):
        """``train_step`` with the fused hash grid: the same loss and gradients, computed in three parts so that
        XLA compiles all but the ops. (1) rays, samples (the native march) and warped points; the op's forward;
        (2) the MLPs, compositing, the loss, and its gradients for the MLPs' weights and for the op's output; the
        op's backward for the table. With a pose refinement (rays with their views), (3) the op's backward for the
        points, and the corrections' gradient from the points' and the directions' through the rays' refinement
        and the points' making, which a tape records in (1)."""
        inputs, target_rgb = data
        ray_origins, ray_directions, views = _rays(inputs)
        refining = self.pose_refinement is not None and views is not None
        if views is None:  # the parts take tensors only
            views = tf.zeros([0], tf.int32)
        with tf.GradientTape() if refining else contextlib.nullcontext() as pose_tape:
            ray_origins, ray_directions = self.refined_rays(ray_origins, ray_directions, views if refining else None)
            points, directions, sample_views, t_vals, deltas, target_rgb = self._prepare_training(
                ray_origins, ray_directions, views, target_rgb)  # the march is native too: XLA compiles its parts
        encoding = self.field.encoding
        encoded = encoding(points)
        decode_loss = xla.part(self, "decode_loss_directions" if refining else "decode_loss",
                               functools.partial(self._decode_loss_and_gradients, with_directions=refining))
        loss, decoder_gradients, encoded_gradient, *directions_gradient = decode_loss(
            encoded, directions, sample_views, t_vals, deltas, target_rgb)
        gradient_of = {id(v): g for v, g in zip(self._decoder_variables(), decoder_gradients)}
        squares = {}
        if isinstance(self.optimizer, SampleWiseAdam):
            gradient_of[id(encoding.table)], squares[id(encoding.table)] = encoding.table_gradient_and_squares(
                points, encoded_gradient)
        else:
            gradient_of[id(encoding.table)] = encoding.table_gradient(points, encoded_gradient)
        if refining:
            correction = self.pose_refinement.correction
            (gradient_of[id(correction)],) = _dense(pose_tape.gradient(
                [points, directions], [correction],
                output_gradients=[encoding.points_gradient(points, encoded_gradient), *directions_gradient]))
        self._apply_gradients([gradient_of[id(v)] for v in self.trainable_variables], squares)
        return self._update_metrics(loss)

    def _prepare_training(self, ray_origins, ray_directions, views, target_rgb):
        """``views [R]``, or ``[0]`` for rays without them (then ``sample_views`` is ``[0]`` too)."""
        has_views = views.shape[0] != 0
        ray_origins, ray_directions, views, target_rgb = self._rays_to_train_on(
            ray_origins, ray_directions, views if has_views else None, target_rgb)
        t_vals, deltas = self.sample_rays(ray_origins, ray_directions, training=True)
        points, directions = xla.part(self, "sample_points", self.sample_points)(ray_origins, ray_directions, t_vals)
        sample_views = self.sample_views(views, tf.shape(t_vals)[1]) if has_views else tf.zeros([0], tf.int32)
        return points, directions, sample_views, t_vals, deltas, target_rgb

    def _decoder_variables(self) -> list:
        """The trainable variables but the hash table and the pose corrections: the MLPs' (and appearance's)."""
        upstream = [self.field.encoding.table]
        if self.pose_refinement is not None:
            upstream.append(self.pose_refinement.correction)
        return [v for v in self.trainable_variables if not any(v is u for u in upstream)]

    def _decode_loss_and_gradients(self, encoded, directions, sample_views, t_vals, deltas, target_rgb,
                                   with_directions: bool = False):
        """``(loss, decoder gradients, encoded's gradient[, directions' gradient])``."""
        decoder_variables = self._decoder_variables()
        with tf.GradientTape() as tape:
            tape.watch(encoded)
            if with_directions:
                tape.watch(directions)
            rgb, sigma = self.field.decode(encoded, directions, sample_views if sample_views.shape[0] != 0 else None)
            shape = tf.shape(t_vals)
            out = rendering.composite(tf.reshape(rgb, [shape[0], shape[1], 3]), tf.reshape(sigma, shape), t_vals,
                                      deltas, self.background)
            loss, replica_loss = self.training_loss({**out, "t_vals": t_vals, "deltas": deltas}, target_rgb)
        if with_directions:
            gradients = _dense(tape.gradient(replica_loss, [encoded, directions, *decoder_variables]))
            return loss, gradients[2:], gradients[0], gradients[1]
        gradients = _dense(tape.gradient(replica_loss, [encoded, *decoder_variables]))
        return loss, gradients[1:], gradients[0]

    def test_step(self, data):
        inputs, target_rgb = data
        ray_origins, ray_directions, views = _rays(inputs)
        rgb = self.render_rays(ray_origins, ray_directions, training=False, views=views)["rgb"]
        return self._update_metrics(tf.reduce_mean(tf.square(rgb - target_rgb)))

    # -- saving -----------------------------------------------------------------------------

    def get_config(self):
        serialize = keras.saving.serialize_keras_object
        return {"field": serialize(self.field), "sampler": serialize(self.sampler), "space": serialize(self.space),
                "near": self.near, "far": self.far, "background": self.background, "seed": self.seed,
                "rays_per_step": self.rays_per_step, "name": self.name,
                "pose_refinement": None if self.pose_refinement is None else serialize(self.pose_refinement),
                "distortion_weight": self.distortion_weight}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for part in ("field", "sampler", "space"):
            config[part] = keras.saving.deserialize_keras_object(config[part])
        if config.get("pose_refinement") is not None:  # models saved before it (issue 23) have no key
            config["pose_refinement"] = keras.saving.deserialize_keras_object(config["pose_refinement"])
        return cls(**config)


def _dense(gradients: list) -> list:
    """Gradients as dense tensors. A gathered variable's (the appearance embeddings') is an ``IndexedSlices`` with
    an index per sample, repeated; Keras' Adam applies those slice by slice, squaring each repeat apart (its second
    moment then sums squares instead of squaring the sum), which made steps tens of times the learning rate."""
    return [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g for g in gradients]


def _rays(inputs):
    """A batch's inputs ``(ray_origins, ray_directions[, views])`` →
    ``(ray_origins, ray_directions, views or None)``."""
    if len(inputs) == 3:
        return tuple(inputs)
    ray_origins, ray_directions = inputs
    return ray_origins, ray_directions, None


@keras.saving.register_keras_serializable(package=PACKAGE)
class ExponentialToFinal(keras.optimizers.schedules.LearningRateSchedule):
    """``initial * (final / initial) ** min(step / total_steps, 1)``: exponential decay that ends at ``final``.

    ``total_steps`` is a variable, so a run whose length is known only once it is under way
    (a wall-clock budget) can set it after training has started (``set_total_steps``).
    """

    def __init__(self, initial: float, final: float, total_steps: float):
        self.initial, self.final = float(initial), float(final)
        self.total_steps = tf.Variable(float(max(total_steps, 1)), trainable=False, dtype=tf.float32)

    def set_total_steps(self, total_steps: float) -> None:
        self.total_steps.assign(float(max(total_steps, 1)))

    def __call__(self, step):
        progress = tf.minimum(tf.cast(step, tf.float32) / self.total_steps, 1.0)
        return self.initial * (self.final / self.initial) ** progress

    def get_config(self):
        return {"initial": self.initial, "final": self.final, "total_steps": float(self.total_steps.numpy())}


def build_nerf(preset: PresetConfig, near: float, far: float, contracted: bool, bound: float, background: float,
               seed: int, appearance_views: int = 0, refined_views: int = 0) -> NeRF:
    """An untrained ``NeRF`` of ``preset`` in a box of half-size ``bound`` or, ``contracted``, an unbounded space;
    ``appearance_views`` > 0: with an appearance embedding for each of that many training views (``make_field``);
    ``refined_views`` > 0: with a pose correction for each of that many training views, at the optimizer's
    ``camera_learning_rate``.

    Call it inside a ``tf.distribute`` strategy's scope to train with that strategy.
    """
    space = make_space(contracted, bound)
    batch = preset.batch
    rays_per_step = batch.size if isinstance(batch, RayBatchConfig) and batch.candidate_factor > 1 else None
    optimizer = preset.optimizer
    refinement = PoseRefinement(refined_views, optimizer.camera_learning_rate / optimizer.learning_rate,
                                name="pose_refinement") if refined_views else None
    return NeRF(make_field(preset.field, space.extent, appearance_views), make_sampler(preset.sampler), space,
                near=near, far=far, background=background, seed=seed, rays_per_step=rays_per_step,
                pose_refinement=refinement, distortion_weight=preset.distortion_weight)


def compile_for_training(model: NeRF, optimizer: OptimizerConfig, total_steps: int,
                         jit_compile: bool) -> ExponentialToFinal:
    """Compile ``model`` with Adam whose learning rate decays over ``total_steps``; returns the schedule
    (a budgeted run, such as the benchmark's, stretches it with ``set_total_steps``)."""
    schedule = ExponentialToFinal(optimizer.learning_rate, optimizer.final_learning_rate, total_steps)
    adam = SampleWiseAdam if optimizer.table_second_moment == "samples" else keras.optimizers.Adam
    model.compile(optimizer=adam(schedule, beta_1=optimizer.beta_1, beta_2=optimizer.beta_2, epsilon=optimizer.epsilon),
                  jit_compile=model.plan_xla(jit_compile))
    # Build the optimizer's slots now, in the caller's strategy scope, rather than inside fit().
    model.optimizer.build(model.trainable_variables)
    return schedule

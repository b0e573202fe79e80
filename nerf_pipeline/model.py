"""Keras 3 layers and the NeRF model: encodings, radiance fields, and the training step.

Two fields are provided:

* ``MLPField``: positional encoding followed by a ReLU MLP with a skip connection
  (the Keras example: 8 layers of 64 units, skip at layer 4, 16 frequencies, no view
  direction).
* ``HashGridField``: a multiresolution hash encoding (Müller et al., instant-ngp, 2022)
  followed by a one-hidden-layer density MLP and a colour MLP that also sees the view
  direction (spherical harmonics up to degree 4).

``NeRF`` samples points along rays (``sampling``), evaluates a field on them and
composites the result (``rendering``); its custom ``train_step`` is what ``model.fit`` runs.
Rays are always flat: ``ray_origins, ray_directions: [R, 3]`` float32, unit directions.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from nerf_pipeline import interrupts, rendering, sampling

PACKAGE = "nerf_pipeline"


# ----------------------------------------------------------------------------- encodings


def positional_encoding(x, num_frequencies: int):
    """``[x, sin(2^0 x), cos(2^0 x), …, sin(2^(F-1) x), cos(2^(F-1) x)]``.

    Args:
        x: [..., 3] float32.

    Returns:
        [..., 3 + 6 F] float32 (99 for the Keras example's F = 16).
    """
    features = [x]
    for i in range(num_frequencies):
        features += [tf.sin(2.0**i * x), tf.cos(2.0**i * x)]
    return tf.concat(features, axis=-1)


def spherical_harmonics(directions):
    """Real spherical harmonics of degrees 0–3 (16 functions) of unit directions.

    Args:
        directions: [..., 3] float32, unit length.

    Returns:
        [..., 16] float32.
    """
    x, y, z = directions[..., 0], directions[..., 1], directions[..., 2]
    xx, yy, zz = x * x, y * y, z * z
    return tf.stack(
        [
            tf.fill(tf.shape(x), 0.28209479177387814),
            -0.48860251190291987 * y,
            0.48860251190291987 * z,
            -0.48860251190291987 * x,
            1.0925484305920792 * x * y,
            -1.0925484305920792 * y * z,
            0.94617469575755997 * zz - 0.31539156525251999,
            -1.0925484305920792 * x * z,
            0.54627421529603959 * (xx - yy),
            0.59004358992664352 * y * (-3.0 * xx + yy),
            2.8906114426405538 * x * y * z,
            0.45704579946446572 * y * (1.0 - 5.0 * zz),
            0.3731763325901154 * z * (5.0 * zz - 3.0),
            0.45704579946446572 * x * (1.0 - 5.0 * zz),
            1.4453057213202769 * z * (xx - yy),
            0.59004358992664352 * x * (-xx + 3.0 * yy),
        ],
        axis=-1,
    )


@tf.custom_gradient
def truncated_exp(x):
    """``exp(x)`` whose gradient is computed at ``min(x, 15)``, so large logits cannot explode it."""
    def grad(upstream):
        return upstream * tf.exp(tf.minimum(x, 15.0))

    return tf.exp(x), grad


@keras.saving.register_keras_serializable(package=PACKAGE)
class HashEncoding(keras.layers.Layer):
    """Multiresolution hash encoding of points in the cube ``[-scene_bound, scene_bound]^3``.

    Level ``l`` is a grid of resolution ``N_l`` (geometric from ``base_resolution`` to
    ``max_resolution``) whose vertices hold ``features_per_level`` trainable features.
    A level with at most ``2**log2_table_size`` vertices is stored densely; a finer one
    hashes its vertices into a table of that size (xor of coordinates times large primes,
    as in instant-ngp). A point's encoding is the trilinear interpolation of its cell's
    8 vertices, per level. All levels share one table, so one gather serves them all.

    Input ``[N, 3]`` float32 → output ``[N, num_levels * features_per_level]`` float32.
    """

    PRIMES = (1, 2654435761, 805459861)

    def __init__(self, num_levels=12, features_per_level=2, log2_table_size=17,
                 base_resolution=16, max_resolution=256, scene_bound=1.5, **kwargs):
        super().__init__(**kwargs)
        self.num_levels = num_levels
        self.features_per_level = features_per_level
        self.log2_table_size = log2_table_size
        self.base_resolution = base_resolution
        self.max_resolution = max_resolution
        self.scene_bound = scene_bound

        growth = math.exp((math.log(max_resolution) - math.log(base_resolution)) / max(num_levels - 1, 1))
        table_size = 2**log2_table_size
        resolutions, sizes, hashed = [], [], []
        for level in range(num_levels):
            resolution = int(math.floor(base_resolution * growth**level))
            dense_size = (resolution + 1) ** 3
            resolutions.append(resolution)
            hashed.append(dense_size > table_size)
            sizes.append(min(dense_size, table_size))
        self.resolutions = resolutions
        self.level_sizes = sizes
        self.level_hashed = hashed
        self.level_offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int32)
        # Binary corner offsets of a cell, [8, 3].
        self.corner_offsets = np.array(
            [[(c >> 2) & 1, (c >> 1) & 1, c & 1] for c in range(8)], dtype=np.int32
        )
        self.table = self.add_weight(
            shape=(int(sum(sizes)), features_per_level),
            initializer=keras.initializers.RandomUniform(-1e-4, 1e-4),
            name="hash_table",
        )

    @property
    def output_dim(self) -> int:
        return self.num_levels * self.features_per_level

    def call(self, points):
        x01 = tf.clip_by_value((points + self.scene_bound) / (2.0 * self.scene_bound), 0.0, 1.0)
        resolutions = tf.constant(self.resolutions, tf.float32)  # [L]
        scaled = x01[:, None, :] * resolutions[None, :, None]  # [N, L, 3]
        cell = tf.minimum(tf.floor(scaled), resolutions[None, :, None] - 1.0)
        frac = scaled - cell  # [N, L, 3] in [0, 1]
        vertices = tf.cast(cell, tf.int32)[:, :, None, :] + self.corner_offsets[None, None]  # [N, L, 8, 3]

        vertices_u = tf.cast(vertices, tf.uint32)
        side = tf.constant([r + 1 for r in self.resolutions], tf.uint32)[None, :, None]
        dense_index = vertices_u[..., 0] + side * (vertices_u[..., 1] + side * vertices_u[..., 2])
        hashed_index = tf.bitwise.bitwise_xor(
            tf.bitwise.bitwise_xor(vertices_u[..., 0] * np.uint32(self.PRIMES[0]),
                                   vertices_u[..., 1] * np.uint32(self.PRIMES[1])),
            vertices_u[..., 2] * np.uint32(self.PRIMES[2]),
        ) & np.uint32(2**self.log2_table_size - 1)
        hashed = tf.constant(self.level_hashed)[None, :, None]
        index = tf.cast(tf.where(hashed, hashed_index, dense_index), tf.int32)
        index += tf.constant(self.level_offsets)[None, :, None]  # [N, L, 8]

        # Trilinear weights: the product over axes of frac (corner bit 1) or 1 - frac (bit 0).
        corner_bits = tf.constant(self.corner_offsets, tf.float32)[None, None]  # [1, 1, 8, 3]
        axis_weights = corner_bits * frac[:, :, None, :] + (1.0 - corner_bits) * (1.0 - frac[:, :, None, :])
        weights = tf.reduce_prod(axis_weights, axis=-1)  # [N, L, 8]

        features = tf.gather(self.table, index)  # [N, L, 8, F]
        encoded = tf.reduce_sum(weights[..., None] * features, axis=2)  # [N, L, F]
        return tf.reshape(encoded, [-1, self.output_dim])

    def get_config(self):
        return {**super().get_config(), "num_levels": self.num_levels,
                "features_per_level": self.features_per_level,
                "log2_table_size": self.log2_table_size, "base_resolution": self.base_resolution,
                "max_resolution": self.max_resolution, "scene_bound": self.scene_bound}


# ----------------------------------------------------------------------------- fields


@keras.saving.register_keras_serializable(package=PACKAGE)
class MLPField(keras.layers.Layer):
    """Positionally encoded MLP: ``points [N, 3] → (rgb [N, 3], sigma [N])``; ignores view direction.

    ``num_layers`` ReLU layers of ``width`` units; the encoded input is concatenated
    again after every ``skip_every`` layers (the Keras example: after layer 4 of 8).
    The output layer gives 4 numbers: colour through a sigmoid, density through a ReLU.
    """

    def __init__(self, num_layers=8, width=64, num_frequencies=16, skip_every=4, **kwargs):
        super().__init__(**kwargs)
        self.num_layers, self.width = num_layers, width
        self.num_frequencies, self.skip_every = num_frequencies, skip_every
        input_dim = 3 + 6 * num_frequencies
        self.hidden = []
        in_dim = input_dim
        for i in range(num_layers):
            if skip_every and i > 0 and i % skip_every == 0:
                in_dim += input_dim
            layer = keras.layers.Dense(width, activation="relu", name=f"dense_{i}")
            layer.build((None, in_dim))
            self.hidden.append(layer)
            in_dim = width
        self.output_layer = keras.layers.Dense(4, name="rgb_sigma")
        self.output_layer.build((None, in_dim))

    def call(self, points, directions=None):
        encoded = positional_encoding(points, self.num_frequencies)
        x = encoded
        for i, layer in enumerate(self.hidden):
            if self.skip_every and i > 0 and i % self.skip_every == 0:
                x = tf.concat([x, encoded], axis=-1)
            x = layer(x)
        out = self.output_layer(x)
        return tf.sigmoid(out[:, :3]), tf.nn.relu(out[:, 3])

    def density(self, points):
        return self.call(points)[1]

    def get_config(self):
        return {**super().get_config(), "num_layers": self.num_layers, "width": self.width,
                "num_frequencies": self.num_frequencies, "skip_every": self.skip_every}


@keras.saving.register_keras_serializable(package=PACKAGE)
class HashGridField(keras.layers.Layer):
    """Hash-encoded field: ``(points [N, 3], directions [N, 3]) → (rgb [N, 3], sigma [N])``.

    density MLP: encoding → ``width`` ReLU → 16 outputs, the first a log-density
    (``sigma = exp(.)``), the other 15 geometry features; colour MLP: geometry features
    and the spherical harmonics of the view direction → 2 × ``width`` ReLU → sigmoid RGB.
    """

    def __init__(self, num_levels=12, features_per_level=2, log2_table_size=17, base_resolution=16,
                 max_resolution=256, scene_bound=1.5, width=64, **kwargs):
        super().__init__(**kwargs)
        self.encoding = HashEncoding(num_levels, features_per_level, log2_table_size,
                                     base_resolution, max_resolution, scene_bound, name="encoding")
        self.width = width
        self.density_hidden = keras.layers.Dense(width, activation="relu", name="density_hidden")
        self.density_hidden.build((None, self.encoding.output_dim))
        self.density_out = keras.layers.Dense(16, name="density_out")
        self.density_out.build((None, width))
        self.color_hidden = [keras.layers.Dense(width, activation="relu", name=f"color_hidden_{i}")
                             for i in range(2)]
        self.color_hidden[0].build((None, 15 + 16))
        self.color_hidden[1].build((None, width))
        self.color_out = keras.layers.Dense(3, name="color_out")
        self.color_out.build((None, width))

    def _density_features(self, points):
        h = self.density_out(self.density_hidden(self.encoding(points)))
        return truncated_exp(h[:, 0]), h[:, 1:]

    def density(self, points):
        return self._density_features(points)[0]

    def call(self, points, directions):
        sigma, geometry = self._density_features(points)
        x = tf.concat([geometry, spherical_harmonics(directions)], axis=-1)
        for layer in self.color_hidden:
            x = layer(x)
        return tf.sigmoid(self.color_out(x)), sigma

    def get_config(self):
        enc = self.encoding
        return {**super().get_config(), "num_levels": enc.num_levels,
                "features_per_level": enc.features_per_level,
                "log2_table_size": enc.log2_table_size, "base_resolution": enc.base_resolution,
                "max_resolution": enc.max_resolution, "scene_bound": enc.scene_bound,
                "width": self.width}


FIELDS = {"mlp": MLPField, "hashgrid": HashGridField}


# ----------------------------------------------------------------------------- the model


@keras.saving.register_keras_serializable(package=PACKAGE)
class NeRF(keras.Model):
    """Radiance field + sampler + compositor, trained with a custom ``train_step``.

    ``fit``/``evaluate`` take batches ``((ray_origins [R, 3], ray_directions [R, 3]), rgb [R, 3])``.
    Metrics: ``loss`` (MSE) and ``psnr`` (of each batch's MSE, averaged over batches: with
    one image per validation batch this is the mean per-image PSNR).

    Args:
        field: ``{"type": "mlp" | "hashgrid", **field kwargs}``.
        sampler: ``{"strategy": "uniform" | "occupancy", "num_samples", "stratified",
            and for occupancy "num_march", "grid_resolution", "update_every",
            "warmup_steps", "alpha_threshold", "decay"}``.
        near, far: sampling bounds along each ray.
        scene_bound: half-size of the cube the occupancy grid covers.
        background: colour behind the scene (0 = black).
        rays_per_step: with occupancy sampling, train on this many rays of each batch, those
            that cross occupied space first (``None``: all of them).
    """

    def __init__(self, field: dict, sampler: dict, near: float, far: float, scene_bound: float = 1.5,
                 background: float = 0.0, seed: int = 0, rays_per_step: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.rays_per_step = rays_per_step
        self.field_config = dict(field)
        self.sampler_config = dict(sampler)
        self.near, self.far = float(near), float(far)
        self.scene_bound = float(scene_bound)
        self.background = float(background)
        self.seed = int(seed)
        field_kwargs = {k: v for k, v in field.items() if k != "type"}
        if field["type"] == "hashgrid":
            field_kwargs["scene_bound"] = scene_bound
        self.field = FIELDS[field["type"]](**field_kwargs, name="field")
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.use_occupancy = sampler["strategy"] == "occupancy"
        if self.use_occupancy:
            g = int(sampler["grid_resolution"])
            self.occupied = self.add_weight(shape=(g, g, g), initializer="ones", trainable=False,
                                            name="occupied")
            self.density_ema = self.add_weight(shape=(g, g, g), initializer="zeros", trainable=False,
                                               name="density_ema")
            self.occupancy_updates = self.add_weight(shape=(), initializer="zeros", trainable=False,
                                                     name="occupancy_updates", dtype="int64")
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.psnr_tracker = keras.metrics.Mean(name="psnr")
        self.built = True

    # -- rendering ------------------------------------------------------------------------

    def sample_along_rays(self, ray_origins, ray_directions, training: bool):
        """Sample depths ``t_vals, deltas: [R, S]`` for a batch of rays."""
        s = self.sampler_config
        stratified = training and s["stratified"]
        if self.use_occupancy:
            return sampling.occupancy_samples(
                ray_origins, ray_directions, self.near, self.far, self.occupied, self.scene_bound,
                s["num_samples"], s["num_march"], stratified, self.seed_generator)
        return sampling.uniform_samples(tf.shape(ray_origins)[0], self.near, self.far,
                                        s["num_samples"], stratified, self.seed_generator)

    def render_rays(self, ray_origins, ray_directions, training: bool = False):
        """Render flat rays. Returns ``rendering.composite``'s dict (``rgb [R, 3]``, ``depth [R]``, ``acc [R]``)."""
        t_vals, deltas = self.sample_along_rays(ray_origins, ray_directions, training)
        num_rays, num_samples = tf.shape(t_vals)[0], tf.shape(t_vals)[1]
        points = ray_origins[:, None, :] + ray_directions[:, None, :] * t_vals[..., None]  # [R, S, 3]
        directions = tf.broadcast_to(ray_directions[:, None, :], tf.shape(points))
        rgb, sigma = self.field(tf.reshape(points, [-1, 3]), tf.reshape(directions, [-1, 3]))
        rgb = tf.reshape(rgb, [num_rays, num_samples, 3])
        sigma = tf.reshape(sigma, [num_rays, num_samples])
        return rendering.composite(rgb, sigma, t_vals, deltas, self.background)

    def rays_hit_occupied(self, ray_origins, ray_directions):
        """``[R]`` bool: whether a ray crosses any occupied cell (always true without an occupancy grid).

        A ray that crosses none gets zero weight on every sample, so it renders as the
        background exactly; renderers skip such rays.
        """
        if not self.use_occupancy:
            return tf.ones(tf.shape(ray_origins)[:1], tf.bool)
        _, bin_width, bin_occupied = sampling.march_occupancy(
            ray_origins, ray_directions, self.near, self.far, self.occupied, self.scene_bound,
            self.sampler_config["num_march"])
        return tf.logical_and(tf.reduce_any(bin_occupied > 0, axis=-1), bin_width > 0)

    def call(self, inputs, training=False):
        ray_origins, ray_directions = inputs
        return self.render_rays(ray_origins, ray_directions, training=training)["rgb"]

    # -- occupancy grid -------------------------------------------------------------------

    def update_occupancy(self):
        """Re-estimate which cells hold matter: density at a random point of every cell, decayed max."""
        s = self.sampler_config
        g = int(s["grid_resolution"])
        cell_size = 2.0 * self.scene_bound / g
        cells = tf.cast(tf.stack(tf.meshgrid(tf.range(g), tf.range(g), tf.range(g), indexing="ij"), -1), tf.float32)
        jitter = keras.random.uniform([g, g, g, 3], seed=self.seed_generator)
        points = tf.reshape(-self.scene_bound + (cells + jitter) * cell_size, [-1, 3])
        density = tf.reshape(self.field.density(points), [g, g, g])
        ema = tf.maximum(self.density_ema * s["decay"], density)
        self.density_ema.assign(ema)
        # Occupied where a ray crossing the cell would lose at least alpha_threshold of its light,
        # or where the density is above the grid's mean: early in training, when no density is high
        # yet, a fixed threshold would empty the grid, and an empty cell gets no gradient to refill it.
        threshold = tf.minimum(-math.log(1.0 - s["alpha_threshold"]) / cell_size, tf.reduce_mean(ema))
        self.occupied.assign(tf.cast(ema > threshold, tf.float32))
        self.occupancy_updates.assign_add(1)

    def _maybe_update_occupancy(self):
        s = self.sampler_config
        step = self.optimizer.iterations
        due = tf.logical_and(step >= s["warmup_steps"], step % s["update_every"] == 0)

        def update():
            self.update_occupancy()
            return tf.constant(0)

        tf.cond(due, update, lambda: tf.constant(0))

    # -- training ---------------------------------------------------------------------------

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras 3's fit() builds a model under a tf.distribute strategy by reducing its first batch
        # across replicas, which fails under MultiWorkerMirroredStrategy (keras-team/keras#20585).
        # This model is built in __init__, so only the optimizer's variables are left to create.
        if isinstance(self.distribute_strategy, tf.distribute.MultiWorkerMirroredStrategy):
            with self.distribute_strategy.scope():
                self.optimizer.build(self.trainable_variables)
            return
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    @property
    def metrics(self):
        return [self.loss_tracker, self.psnr_tracker]

    def _update_metrics(self, loss):
        self.loss_tracker.update_state(loss)
        self.psnr_tracker.update_state(-10.0 * tf.math.log(loss) / math.log(10.0))
        logs = {"loss": self.loss_tracker.result(), "psnr": self.psnr_tracker.result()}
        if isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
            # Keras 3 averages a multi-worker step's outputs over axis 0, which scalars lack
            # (keras-team/keras#20585): give them one.
            logs = {name: value[None] for name, value in logs.items()}
        return logs

    def select_rays(self, ray_origins, ray_directions, target_rgb):
        """The first ``rays_per_step`` rays of the batch, those that cross occupied space first.

        Under a ``tf.distribute`` strategy each replica keeps its share of ``rays_per_step``.
        """
        if not self.use_occupancy or self.rays_per_step is None:
            return ray_origins, ray_directions, target_rgb
        keep_count = self.rays_per_step // tf.distribute.get_strategy().num_replicas_in_sync
        misses = tf.cast(tf.logical_not(self.rays_hit_occupied(ray_origins, ray_directions)), tf.int32)
        keep = tf.argsort(misses, stable=True)[:keep_count]
        return tf.gather(ray_origins, keep), tf.gather(ray_directions, keep), tf.gather(target_rgb, keep)

    def train_step(self, data):
        (ray_origins, ray_directions), target_rgb = data
        ray_origins, ray_directions, target_rgb = self.select_rays(ray_origins, ray_directions, target_rgb)
        with tf.GradientTape() as tape:
            rgb = self.render_rays(ray_origins, ray_directions, training=True)["rgb"]
            loss = tf.reduce_mean(tf.square(rgb - target_rgb))
            # Replicas' gradients are summed; each contributes its share of the global batch's mean.
            replica_loss = loss / tf.distribute.get_strategy().num_replicas_in_sync
        gradients = tape.gradient(replica_loss, self.trainable_variables)
        self.optimizer.apply(gradients, self.trainable_variables)
        if self.use_occupancy:
            self._maybe_update_occupancy()
        return self._update_metrics(loss)

    def test_step(self, data):
        (ray_origins, ray_directions), target_rgb = data
        rgb = self.render_rays(ray_origins, ray_directions, training=False)["rgb"]
        return self._update_metrics(tf.reduce_mean(tf.square(rgb - target_rgb)))

    def get_config(self):
        return {"field": self.field_config, "sampler": self.sampler_config, "near": self.near,
                "far": self.far, "scene_bound": self.scene_bound, "background": self.background,
                "seed": self.seed, "rays_per_step": self.rays_per_step, "name": self.name}


# ----------------------------------------------------------------------------- building and rendering


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


def build_model(preset, near: float, far: float, background: float = 0.0, seed: int = 0,
                total_steps: int = 1, jit_compile: bool | None = None) -> NeRF:
    """A compiled ``NeRF`` for a ``config.PresetConfig``.

    The learning rate decays exponentially from ``optimizer.learning_rate`` to
    ``optimizer.final_learning_rate`` over ``total_steps`` (see ``ExponentialToFinal``).
    ``jit_compile`` overrides the preset's. Call it inside a ``tf.distribute`` strategy's
    scope to train with that strategy.
    """
    model = NeRF(field=preset.field.model_kwargs(), sampler=preset.sampler.model_kwargs(), near=near,
                 far=far, scene_bound=preset.scene_bound, background=background, seed=seed,
                 rays_per_step=preset.batch.size if preset.batch.candidate_factor > 1 else None)
    opt = preset.optimizer
    schedule = ExponentialToFinal(opt.learning_rate, opt.final_learning_rate, total_steps)
    model.learning_rate_schedule = schedule  # so a budgeted run can stretch it (benchmarks)
    model.compile(optimizer=keras.optimizers.Adam(schedule, beta_1=opt.beta_1, beta_2=opt.beta_2,
                                                  epsilon=opt.epsilon),
                  jit_compile=preset.jit_compile if jit_compile is None else jit_compile)
    return model


class ChunkedRenderer:
    """Renders any number of rays in fixed-size compiled chunks, with deterministic sampling.

    Rays that cross no occupied cell are not sent through the field: they are the
    background, exactly (see ``NeRF.rays_hit_occupied``). The last chunk is padded so every
    call of the compiled function has the same shape. Call with ``ray_origins,
    ray_directions: [..., 3]`` float32 numpy arrays; returns a numpy dict ``rgb [..., 3]``,
    ``depth [...]``, ``acc [...]`` float32.
    """

    def __init__(self, model: NeRF, chunk_rays: int = 16384, jit_compile: bool = True):
        self.model = model
        self.chunk_rays = int(chunk_rays)

        def render_chunk(ray_origins, ray_directions):
            out = model.render_rays(ray_origins, ray_directions, training=False)
            return out["rgb"], out["depth"], out["acc"]

        self._render_chunk = tf.function(render_chunk, jit_compile=jit_compile)
        self._hit_chunk = tf.function(model.rays_hit_occupied, jit_compile=jit_compile)

    def _in_chunks(self, function, origins, directions) -> list[np.ndarray]:
        """``function`` over [N, 3] rays in chunks of at most ``chunk_rays``; outputs concatenated."""
        num_rays = origins.shape[0]
        chunk = min(self.chunk_rays, num_rays)  # small inputs: no padding to a large chunk
        pieces = []
        with interrupts.held():  # Ctrl-C stops between chunks, not inside TensorFlow
            for start in range(0, num_rays, chunk):
                o, d = origins[start:start + chunk], directions[start:start + chunk]
                valid = o.shape[0]
                if valid < chunk:
                    o = np.concatenate([o, np.repeat(o[-1:], chunk - valid, 0)])
                    d = np.concatenate([d, np.repeat(d[-1:], chunk - valid, 0)])
                outputs = function(tf.constant(o), tf.constant(d))
                pieces.append([value.numpy()[:valid] for value in tf.nest.flatten(outputs)])
                interrupts.check()
        return [np.concatenate(parts) for parts in zip(*pieces)]

    def __call__(self, ray_origins, ray_directions) -> dict:
        shape = ray_origins.shape[:-1]
        origins = np.asarray(ray_origins, np.float32).reshape(-1, 3)
        directions = np.asarray(ray_directions, np.float32).reshape(-1, 3)
        num_rays = origins.shape[0]
        rgb = np.full((num_rays, 3), self.model.background, np.float32)
        depth = np.zeros(num_rays, np.float32)
        acc = np.zeros(num_rays, np.float32)
        hit = np.flatnonzero(self._in_chunks(self._hit_chunk, origins, directions)[0]) if num_rays else []
        if len(hit):
            rgb[hit], depth[hit], acc[hit] = self._in_chunks(self._render_chunk, origins[hit], directions[hit])
        return {"rgb": rgb.reshape(*shape, 3), "depth": depth.reshape(shape), "acc": acc.reshape(shape)}


def load_model(path) -> NeRF:
    """A model saved by the train stage (``.keras``), without its optimizer."""
    from nerf_pipeline.errors import DataError

    try:
        return keras.saving.load_model(path, compile=False)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot load the trained model ({e}); run the train stage again.") from None

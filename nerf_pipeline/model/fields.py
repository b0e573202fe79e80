"""Radiance fields: colour and density at points of the scene, seen from directions.

A field is a Keras layer with two methods:

* ``call(points [N, 3], directions [N, 3], views=None) -> (rgb [N, 3] in [0, 1], sigma [N] >= 0)``;
* ``density(points [N, 3]) -> sigma [N]`` (what the occupancy grid asks).

``views [N]`` int32 are the training views the samples' rays come from: a field with an appearance
embedding (``HashGridField``) colours them with their view's embedding, and without ``views`` (held-out
views, renders, exports) with the mean of the table's rows (the training views' embeddings; inside
``NeRF.appearance_near`` every row holds the mix of the views nearest the camera). Other fields ignore them.

Points are in the space's field coordinates (``space.warp``: world units inside the scene's
bound, contracted beyond), directions unit length in world coordinates. A field is built from its
config class by ``make_field``; a new field is a class here, registered under its config's ``type``,
and a config class in ``config.py``.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from nerf_pipeline.config import HashGridFieldConfig, MLPFieldConfig, saved_part
from nerf_pipeline.model import xla
from nerf_pipeline.model.encodings import HashEncoding, positional_encoding, spherical_harmonics, truncated_exp

PACKAGE = "nerf_pipeline"


def _dense(width: int, input_dim: int, name: str, activation=None) -> keras.layers.Dense:
    layer = keras.layers.Dense(width, activation=activation, name=name)
    layer.build((None, input_dim))
    return layer


@keras.saving.register_keras_serializable(package=PACKAGE)
class MLPField(keras.layers.Layer):
    """Positionally encoded MLP (the Keras example's network); ignores the view direction.

    ``num_layers`` ReLU layers of ``width`` units; the encoded input is concatenated again after
    every ``skip_every`` layers (the Keras example: after layer 4 of 8). The output layer gives 4
    numbers: colour through a sigmoid, density through a ReLU. Points are encoded as they are
    (world units in a box space, as the Keras example does).
    """

    def __init__(self, config: dict, extent: float, **kwargs):
        super().__init__(**kwargs)
        self.field_config = saved_part(MLPFieldConfig, config)  # a saved model's, maybe of an older version
        self.extent = float(extent)
        c = self.field_config
        input_dim = 3 + 6 * c.num_frequencies
        self.hidden, in_dim = [], input_dim
        for i in range(c.num_layers):
            if self._skip_before(i):
                in_dim += input_dim
            self.hidden.append(_dense(c.width, in_dim, f"dense_{i}", "relu"))
            in_dim = c.width
        self.output_layer = _dense(4, in_dim, "rgb_sigma")
        self.built = True  # every weight exists now: built in the constructor, as loading expects

    def _skip_before(self, layer: int) -> bool:
        return bool(self.field_config.skip_every) and layer > 0 and layer % self.field_config.skip_every == 0

    def call(self, points, directions=None, views=None):
        encoded = positional_encoding(points, self.field_config.num_frequencies)
        x = encoded
        for i, layer in enumerate(self.hidden):
            if self._skip_before(i):
                x = tf.concat([x, encoded], axis=-1)
            x = layer(x)
        out = self.output_layer(x)
        return tf.sigmoid(out[:, :3]), tf.nn.relu(out[:, 3])

    def density(self, points):
        return self.call(points)[1]

    def get_config(self):
        return {**super().get_config(), "config": self.field_config.model_dump(), "extent": self.extent}


@keras.saving.register_keras_serializable(package=PACKAGE)
class HashGridField(keras.layers.Layer):
    """Hash-encoded field (instant-ngp): ``encoding → width ReLU → 16`` for density, then colour.

    The density MLP's first output is a log-density (``sigma = exp(.)``), the other 15 are
    geometry features; the colour MLP maps them and the spherical harmonics of the view direction
    through 2 × ``width`` ReLU layers to a sigmoid RGB. The hash grid covers ``[-extent, extent]^3``.

    With ``appearance_dim > 0`` the colour MLP also takes an appearance embedding (nerfstudio's, NeRF in
    the Wild's): ``appearance_dim`` learned numbers per training view (``appearance_views`` of them, zero
    at first), which absorb what differs between photos (exposure, white balance) so that the geometry
    need not; density never sees them.
    """

    def __init__(self, config: dict, extent: float, appearance_views: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.field_config = saved_part(HashGridFieldConfig, config)  # a saved model's, maybe of an older version
        self.extent, self.appearance_views = float(extent), int(appearance_views)
        c = self.field_config
        if c.appearance_dim and self.appearance_views < 1:
            raise ValueError(f"HashGridField: an appearance embedding of {c.appearance_dim} needs the number of "
                             "training views (appearance_views)")
        self.encoding = HashEncoding(c.num_levels, c.features_per_level, c.log2_table_size, c.base_resolution,
                                     c.max_resolution, extent, name="encoding")
        self.density_hidden = _dense(c.width, self.encoding.output_dim, "density_hidden", "relu")
        self.density_out = _dense(16, c.width, "density_out")
        self.appearance = None
        if c.appearance_dim:
            self.appearance = self.add_weight(shape=(self.appearance_views, c.appearance_dim), initializer="zeros",
                                              name="appearance")
        self.color_hidden = [_dense(c.width, 15 + 16 + c.appearance_dim, "color_hidden_0", "relu"),
                             _dense(c.width, c.width, "color_hidden_1", "relu")]
        self.color_out = _dense(3, c.width, "color_out")
        self.built = True

    # The field in two halves, so that the fused hash-grid op (which XLA cannot compile) runs between
    # XLA-compiled parts: ``encode`` (the hash grid) and ``decode`` (the MLPs).

    @property
    def uses_native_op(self) -> bool:
        return self.encoding.uses_native_op

    def encode(self, points):
        """``points [N, 3]`` → the hash grid's features ``[N, num_levels * features_per_level]``."""
        return self.encoding(points)

    def decode_density(self, encoded):
        """Features ``[N, E]`` → ``(sigma [N], geometry [N, 15])``."""
        h = self.density_out(self.density_hidden(encoded))
        return truncated_exp(h[:, 0]), h[:, 1:]

    def appearance_of(self, views, count):
        """The appearance embedding of each sample ``[count, appearance_dim]``: its view's (``views [count]``
        int), or for ``views`` None the mean of the training views' (held-out views, renders)."""
        if views is None:
            mean = tf.reduce_mean(self.appearance, axis=0, keepdims=True)
            return tf.broadcast_to(mean, [count, self.field_config.appearance_dim])
        return tf.gather(self.appearance, views)

    def decode(self, encoded, directions, views=None):
        """Features ``[N, E]``, unit ``directions [N, 3]`` and optional ``views [N]`` int →
        ``(rgb [N, 3], sigma [N])``."""
        sigma, geometry = self.decode_density(encoded)
        inputs = [geometry, spherical_harmonics(directions)]
        if self.appearance is not None:
            inputs.append(self.appearance_of(views, tf.shape(encoded)[0]))
        x = tf.concat(inputs, axis=-1)
        for layer in self.color_hidden:
            x = layer(x)
        return tf.sigmoid(self.color_out(x)), sigma

    def density(self, points):
        return xla.part(self, "decode_density", self.decode_density)(self.encode(points))[0]

    def call(self, points, directions, views=None):
        if views is None:  # a compiled part per signature: None is not a tensor
            return xla.part(self, "decode", self.decode)(self.encode(points), directions)
        return xla.part(self, "decode_views", self.decode)(self.encode(points), directions, views)

    def get_config(self):
        return {**super().get_config(), "config": self.field_config.model_dump(), "extent": self.extent,
                "appearance_views": self.appearance_views}


FIELDS = {"mlp": MLPField, "hashgrid": HashGridField}


def make_field(config: HashGridFieldConfig | MLPFieldConfig, extent: float,
               appearance_views: int = 0) -> keras.layers.Layer:
    """The field that ``config`` (its ``type``) describes, covering ``[-extent, extent]^3``; a hash-grid field
    with ``appearance_views`` > 0 learns an appearance embedding per training view (``appearance_dim`` numbers),
    with 0 none (its config then says ``appearance_dim: 0``)."""
    if not isinstance(config, HashGridFieldConfig):
        return FIELDS[config.type](config.model_dump(), extent, name="field")
    if not appearance_views:
        config = config.model_copy(update={"appearance_dim": 0})
    return HashGridField(config.model_dump(), extent, appearance_views if config.appearance_dim else 0, name="field")

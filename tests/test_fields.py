"""Fields: built from their config by type, with the shapes and ranges the compositor expects."""

import numpy as np
import pytest
import tensorflow as tf

from nerf_pipeline.config import HashGridFieldConfig, MLPFieldConfig
from nerf_pipeline.model.fields import HashGridField, MLPField, make_field

KERAS_EXAMPLE = MLPFieldConfig(type="mlp", num_layers=8, width=64, num_frequencies=16, skip_every=4)
SMALL_GRID = HashGridFieldConfig(type="hashgrid", num_levels=4, features_per_level=2, log2_table_size=12,
                                 base_resolution=4, max_resolution=32, width=16)


def test_mlp_field_is_the_keras_example_network():
    field = make_field(KERAS_EXAMPLE, extent=1.5)
    assert isinstance(field, MLPField)
    # 99->64, 3 x 64->64, (64+99)->64 after the skip, 3 x 64->64, 64->4
    expected = (99 * 64 + 64) + 3 * (64 * 64 + 64) + (163 * 64 + 64) + 3 * (64 * 64 + 64) + (64 * 4 + 4)
    assert sum(int(np.prod(w.shape)) for w in field.trainable_weights) == expected == 42116


@pytest.mark.parametrize("config", [KERAS_EXAMPLE, SMALL_GRID])
def test_fields_give_colour_in_range_and_non_negative_density(config):
    field = make_field(config, extent=1.5)
    points = tf.random.uniform([7, 3], -1.5, 1.5, seed=0)
    directions = tf.math.l2_normalize(tf.random.normal([7, 3], seed=1), axis=-1)
    rgb, sigma = field(points, directions)
    assert rgb.shape == (7, 3) and sigma.shape == (7,)
    assert np.all(sigma.numpy() >= 0) and np.all((rgb.numpy() >= 0) & (rgb.numpy() <= 1))
    np.testing.assert_allclose(field.density(points).numpy(), sigma.numpy(), rtol=1e-6)


def test_hash_grid_field_colour_depends_on_the_view_direction():
    field = make_field(SMALL_GRID, extent=1.0)
    assert isinstance(field, HashGridField) and field.encoding.extent == 1.0
    field.encoding.table.assign(tf.random.normal(field.encoding.table.shape, seed=3))
    points = tf.zeros([2, 3])
    rgb, sigma = field(points, tf.constant([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]))
    assert sigma[0] == sigma[1] and not np.allclose(rgb[0], rgb[1])


def test_field_config_round_trips_through_keras_config():
    field = make_field(SMALL_GRID, extent=2.0)
    rebuilt = HashGridField.from_config(field.get_config())
    assert rebuilt.field_config == SMALL_GRID and rebuilt.extent == 2.0

"""Fields: built from their config by type, with the shapes and ranges the compositor expects."""

import numpy as np
import pytest
import tensorflow as tf

from nerf_pipeline.config import HashGridFieldConfig, MLPFieldConfig
from nerf_pipeline.model.fields import HashGridField, MLPField, make_field

KERAS_EXAMPLE = MLPFieldConfig(type="mlp", num_layers=8, width=64, num_frequencies=16, skip_every=4)
SMALL_GRID = HashGridFieldConfig(type="hashgrid", num_levels=4, features_per_level=2, log2_table_size=12,
                                 base_resolution=4, max_resolution=32, width=16, appearance_dim=0)
WITH_APPEARANCE = SMALL_GRID.model_copy(update={"appearance_dim": 4})


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


def test_an_appearance_embedding_changes_colour_not_density_and_held_out_views_get_the_mean():
    field = make_field(WITH_APPEARANCE, extent=1.0, appearance_views=3)
    assert field.appearance.shape == (3, 4) and field.field_config.appearance_dim == 4
    field.encoding.table.assign(tf.random.normal(field.encoding.table.shape, seed=3))
    field.appearance.assign(tf.random.normal([3, 4], seed=4))
    points = tf.random.uniform([5, 3], -1.0, 1.0, seed=0)
    directions = tf.math.l2_normalize(tf.random.normal([5, 3], seed=1), axis=-1)
    by_view = [field(points, directions, views=tf.fill([5], v)) for v in range(3)]
    for rgb, sigma in by_view[1:]:
        np.testing.assert_array_equal(sigma.numpy(), by_view[0][1].numpy())
        assert np.abs(rgb.numpy() - by_view[0][0].numpy()).max() > 1e-3
    held_out = field(points, directions)  # no views: the mean of the training views' embeddings
    field.appearance.assign(tf.repeat(tf.reduce_mean(field.appearance, 0, keepdims=True), 3, axis=0))
    np.testing.assert_allclose(held_out[0].numpy(), field(points, directions, views=tf.fill([5], 2))[0].numpy(),
                               atol=1e-6)


def test_a_field_without_views_to_learn_from_has_no_embedding():
    field = make_field(WITH_APPEARANCE, extent=1.0)  # appearance off (scene.appearance, train stage)
    assert field.appearance is None and field.field_config.appearance_dim == 0
    assert len(field.trainable_weights) == len(make_field(SMALL_GRID, extent=1.0).trainable_weights)
    rebuilt = HashGridField.from_config(make_field(WITH_APPEARANCE, extent=1.0, appearance_views=3).get_config())
    assert rebuilt.appearance.shape == (3, 4) and rebuilt.field_config == WITH_APPEARANCE

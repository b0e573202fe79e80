import keras
import numpy as np
import pytest
import tensorflow as tf

from nerf_pipeline import synthetic
from nerf_pipeline.camera import generate_rays
from nerf_pipeline.config import PresetConfig, from_dict
from nerf_pipeline.model import (
    ChunkedRenderer,
    HashEncoding,
    MLPField,
    NeRF,
    build_model,
    load_model,
    positional_encoding,
    spherical_harmonics,
)


def test_positional_encoding_layout():
    x = tf.constant([[0.5, -1.0, 2.0]])
    encoded = positional_encoding(x, 16).numpy()
    assert encoded.shape == (1, 99)  # the Keras example's 3 + 3 * 2 * 16
    np.testing.assert_allclose(encoded[0, :3], [0.5, -1.0, 2.0])
    np.testing.assert_allclose(encoded[0, 3:6], np.sin([0.5, -1.0, 2.0]), rtol=1e-6)
    np.testing.assert_allclose(encoded[0, 9:12], np.sin(2.0 * np.array([0.5, -1.0, 2.0])), rtol=1e-5)


def test_spherical_harmonics_are_orthonormal():
    # Fibonacci sphere: near-uniform quadrature points
    n = 20000
    k = np.arange(n) + 0.5
    z = 1 - 2 * k / n
    phi = np.pi * (1 + 5**0.5) * k
    dirs = np.stack([np.sqrt(1 - z**2) * np.cos(phi), np.sqrt(1 - z**2) * np.sin(phi), z], -1).astype(np.float32)
    basis = spherical_harmonics(tf.constant(dirs)).numpy().astype(np.float64)
    gram = basis.T @ basis * (4 * np.pi / n)
    np.testing.assert_allclose(gram, np.eye(16), atol=2e-3)


def test_hash_encoding_interpolates_dense_levels_exactly():
    encoding = HashEncoding(num_levels=2, features_per_level=2, log2_table_size=12, base_resolution=4,
                            max_resolution=8, scene_bound=1.0)
    assert encoding.level_hashed == [False, False]
    table = np.zeros(encoding.table.shape, np.float32)
    for level, resolution in enumerate(encoding.resolutions):
        side = resolution + 1
        i, j, k = np.meshgrid(np.arange(side), np.arange(side), np.arange(side), indexing="ij")
        index = (i + side * (j + side * k)).ravel() + encoding.level_offsets[level]
        table[index, 0] = (i / resolution).ravel()  # feature 0 holds the vertex's x in [0, 1]
        table[index, 1] = (k / resolution).ravel()  # feature 1 its z
    encoding.table.assign(table)
    points = np.random.default_rng(0).uniform(-1, 1, size=(100, 3)).astype(np.float32)
    encoded = encoding(tf.constant(points)).numpy()
    x01 = (points + 1) / 2
    # trilinear interpolation reproduces a linear function exactly, at every level
    for level in range(2):
        np.testing.assert_allclose(encoded[:, 2 * level], x01[:, 0], atol=1e-5)
        np.testing.assert_allclose(encoded[:, 2 * level + 1], x01[:, 2], atol=1e-5)


def test_hash_encoding_hashes_fine_levels_into_the_table():
    encoding = HashEncoding(num_levels=4, features_per_level=2, log2_table_size=10, base_resolution=4,
                            max_resolution=64, scene_bound=1.5)
    assert encoding.level_hashed == [False, True, True, True]
    assert encoding.table.shape == (125 + 3 * 1024, 2)
    points = tf.random.uniform([512, 3], -1.5, 1.5, seed=1)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(encoding(points))
    gradient = tf.convert_to_tensor(tape.gradient(loss, encoding.table))
    touched = np.abs(gradient.numpy()).sum(-1) > 0
    # every level receives gradient, and a level's rows are only its own
    for level in range(4):
        start = encoding.level_offsets[level]
        assert touched[start:start + encoding.level_sizes[level]].any()
    assert touched.sum() > 1000


def test_mlp_field_is_the_keras_example_network():
    field = MLPField(num_layers=8, width=64, num_frequencies=16, skip_every=4)
    # 99->64, 3 x 64->64, (64+99)->64 after the skip, 3 x 64->64, 64->4
    expected = (99 * 64 + 64) + 3 * (64 * 64 + 64) + (163 * 64 + 64) + 3 * (64 * 64 + 64) + (64 * 4 + 4)
    assert sum(int(np.prod(w.shape)) for w in field.trainable_weights) == expected == 42116
    rgb, sigma = field(tf.random.uniform([7, 3]))
    assert rgb.shape == (7, 3) and sigma.shape == (7,)
    assert np.all(sigma.numpy() >= 0) and np.all((rgb.numpy() >= 0) & (rgb.numpy() <= 1))


def tiny_preset(**overrides) -> PresetConfig:
    params = {"epochs": 1, "presets": {"hashgrid": {
        "field": {"type": "hashgrid", "num_levels": 4, "log2_table_size": 12, "max_resolution": 32},
        "sampler": {"strategy": "occupancy", "num_samples": 24, "num_march": 64, "grid_resolution": 32,
                    "warmup_steps": 20, "update_every": 10},
        "batch": {"size": 512}, **overrides}}}
    return from_dict(params).model


@pytest.fixture(scope="module")
def tiny_scene():
    scene = synthetic.render_scene(num_views=8, image_size=24, seed=0, supersample=1)
    origins, directions = generate_rays(scene["poses"], 24, 24, scene["focal"])
    return scene, origins, directions


def psnr(a, b):
    return float(-10 * np.log10(np.mean((a - b) ** 2)))


def test_training_learns_the_scene_and_finds_empty_space(tiny_scene):
    scene, origins, directions = tiny_scene
    keras.utils.set_random_seed(0)
    model = build_model(tiny_preset(), near=2.0, far=6.0, total_steps=150)
    rays = [a[:6].reshape(-1, 3) for a in (origins, directions, scene["images"])]
    data = tf.data.Dataset.from_tensor_slices(((rays[0], rays[1]), rays[2])).shuffle(4096, seed=0).repeat().batch(512)
    renderer = ChunkedRenderer(model, 4096)
    before = psnr(renderer(origins[6:], directions[6:])["rgb"], scene["images"][6:])
    model.fit(data, steps_per_epoch=150, epochs=1, verbose=0)
    after = psnr(renderer(origins[6:], directions[6:])["rgb"], scene["images"][6:])
    assert after > before + 5.0, (before, after)
    occupied = model.occupied.numpy()
    assert int(model.occupancy_updates.numpy()) == 14  # after steps 20, 30, ..., 150
    assert 0.0 < occupied.mean() < 0.5  # most of the cube is empty
    # the magenta pillar's top (0, 0, 0.6) is matter; the air at (0, 0, 1.3) is not
    cell = lambda p: tuple(((np.array(p) + 1.5) / 3.0 * 32).astype(int))  # noqa: E731
    assert occupied[cell([0.0, 0.0, 0.6])] == 1.0
    assert occupied[cell([0.0, 0.0, 1.3])] == 0.0


def test_save_and_load_render_the_same(tmp_path, tiny_scene):
    _, origins, directions = tiny_scene
    model = build_model(tiny_preset(), near=2.0, far=6.0)
    model.occupied.assign(tf.cast(tf.random.uniform(model.occupied.shape, seed=2) > 0.5, tf.float32))
    model.field.encoding.table.assign(tf.random.normal(model.field.encoding.table.shape, seed=3))
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = load_model(path)
    assert isinstance(loaded, NeRF)
    np.testing.assert_array_equal(loaded.occupied.numpy(), model.occupied.numpy())
    a = ChunkedRenderer(model, 1000)(origins[0], directions[0])
    b = ChunkedRenderer(loaded, 1000)(origins[0], directions[0])
    np.testing.assert_allclose(a["rgb"], b["rgb"], atol=1e-6)
    assert a["rgb"].shape == (24, 24, 3) and a["depth"].shape == (24, 24)


def test_chunked_renderer_pads_the_last_chunk(tiny_scene):
    _, origins, directions = tiny_scene
    model = build_model(tiny_preset(), near=2.0, far=6.0)
    whole = ChunkedRenderer(model, 100000)(origins[:2], directions[:2])
    chunked = ChunkedRenderer(model, 1000)(origins[:2], directions[:2])  # 1152 rays: 1000 + 152 padded
    np.testing.assert_allclose(whole["rgb"], chunked["rgb"], atol=1e-5)


def test_renderer_skips_only_rays_that_would_be_background(tiny_scene):
    _, origins, directions = tiny_scene
    model = build_model(tiny_preset(), near=2.0, far=6.0, background=0.25)
    grid = np.zeros(model.occupied.shape, np.float32)
    grid[12:20, 12:20, 10:22] = 1.0  # a block in the middle: many rays miss it
    model.occupied.assign(grid)
    model.field.encoding.table.assign(tf.random.normal(model.field.encoding.table.shape, seed=3))
    o, d = origins[0].reshape(-1, 3), directions[0].reshape(-1, 3)
    direct = model.render_rays(tf.constant(o), tf.constant(d), training=False)
    hit = model.rays_hit_occupied(tf.constant(o), tf.constant(d)).numpy()
    assert 0 < hit.sum() < len(hit)
    rendered = ChunkedRenderer(model, 256)(o, d)
    np.testing.assert_allclose(rendered["rgb"], direct["rgb"].numpy(), atol=1e-5)
    np.testing.assert_allclose(rendered["acc"], direct["acc"].numpy(), atol=1e-6)
    np.testing.assert_allclose(rendered["rgb"][~hit], 0.25)


def test_learning_rate_ends_at_its_final_value_and_can_be_stretched():
    from nerf_pipeline.model import ExponentialToFinal

    schedule = ExponentialToFinal(1e-2, 1e-3, total_steps=100)
    np.testing.assert_allclose([float(schedule(0)), float(schedule(50)), float(schedule(100)), float(schedule(500))],
                               [1e-2, 1e-2 * 0.1**0.5, 1e-3, 1e-3], rtol=1e-5)
    step_fn = tf.function(lambda step: schedule(step), jit_compile=True)
    assert float(step_fn(tf.constant(100))) == pytest.approx(1e-3, rel=1e-5)
    schedule.set_total_steps(200)  # seen by the already compiled function
    assert float(step_fn(tf.constant(100))) == pytest.approx(1e-2 * 0.1**0.5, rel=1e-5)

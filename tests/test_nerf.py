"""The composed NeRF: it learns the built-in scene, finds empty space, saves and loads, and its schedule."""

from pathlib import Path
from typing import Annotated, ClassVar

import keras
import numpy as np
import pydantic
import pytest
import tensorflow as tf
from conftest import psnr, tiny_params

from nerf_pipeline import camera, config
from nerf_pipeline.camera import generate_rays
from nerf_pipeline.config import from_dict
from nerf_pipeline.errors import DataError
from nerf_pipeline.model import fields, sampling
from nerf_pipeline.model.fields import HashGridField, MLPField
from nerf_pipeline.methods.nerf import load_model
from nerf_pipeline.model.nerf import ExponentialToFinal, NeRF, build_nerf, compile_for_training
from nerf_pipeline.model.renderer import ChunkedRenderer
from nerf_pipeline.model.sampling import OccupancySampler, UniformSampler
from nerf_pipeline.model.space import BoxSpace, ContractedSpace
from nerf_pipeline.scenes import synthetic


def tiny_preset(name="hashgrid"):
    params = tiny_params()
    params["presets"]["hashgrid"]["field"].update(num_levels=4, log2_table_size=12, max_resolution=32)
    params["presets"]["hashgrid"]["sampler"].update(num_samples=24, warmup_steps=20, update_every=10)
    return from_dict(params).presets[name]


def tiny_model(name="hashgrid", contracted=False, background=0.0, appearance_views=0, refined_views=0):
    return build_nerf(tiny_preset(name), near=2.0, far=6.0, contracted=contracted, bound=1.5,
                      background=background, seed=0, appearance_views=appearance_views, refined_views=refined_views)


@pytest.fixture(scope="module")
def tiny_scene():
    scene = synthetic.render_scene(num_views=8, image_size=24, seed=0, supersample=1)
    origins, directions = generate_rays(scene["poses"], 24, 24, scene["focal"])
    return scene, origins, directions


def test_a_preset_composes_its_parts():
    model = tiny_model()
    assert isinstance(model.field, HashGridField) and isinstance(model.sampler, OccupancySampler)
    assert isinstance(model.space, BoxSpace) and model.field.encoding.extent == 1.5
    assert model.rays_per_step == 512  # candidate_factor 2: keep 512 of 1024 drawn
    keras_example = tiny_model("keras_example", contracted=True)
    assert isinstance(keras_example.field, MLPField) and isinstance(keras_example.sampler, UniformSampler)
    assert isinstance(keras_example.space, ContractedSpace) and keras_example.rays_per_step is None
    assert keras_example.training_callbacks() == []


@pytest.mark.slow
def test_training_learns_the_scene_and_finds_empty_space(tiny_scene):
    scene, origins, directions = tiny_scene
    keras.utils.set_random_seed(0)
    model = tiny_model()
    compile_for_training(model, tiny_preset().optimizer, total_steps=150, jit_compile=True)
    rays = [a[:6].reshape(-1, 3) for a in (origins, directions, scene["images"])]
    data = tf.data.Dataset.from_tensor_slices(((rays[0], rays[1]), rays[2])).shuffle(4096, seed=0).repeat().batch(1024)
    renderer = ChunkedRenderer(model, 4096)
    before = psnr(renderer(origins[6:], directions[6:])["rgb"], scene["images"][6:])
    model.fit(data, steps_per_epoch=150, epochs=1, verbose=0, callbacks=model.training_callbacks())
    after = psnr(renderer(origins[6:], directions[6:])["rgb"], scene["images"][6:])
    assert after > before + 5.0, (before, after)
    grid = model.sampler.grid
    assert int(grid.updates.numpy()) == 14  # after steps 20, 30, ..., 150
    occupied = grid.occupied.numpy()
    assert 0.0 < occupied.mean() < 0.5  # most of the cube is empty
    # the magenta pillar's top (0, 0, 0.6) is matter; the air at (0, 0, 1.3) is not
    cell = lambda p: tuple(((np.array(p) + 1.5) / 3.0 * 32).astype(int))  # noqa: E731
    assert occupied[cell([0.0, 0.0, 0.6])] == 1.0
    assert occupied[cell([0.0, 0.0, 1.3])] == 0.0


@pytest.mark.parametrize("name, contracted, appearance_views", [("hashgrid", False, 0), ("hashgrid", True, 0),
                                                                ("keras_example", False, 0), ("hashgrid", True, 5)])
def test_save_and_load_render_the_same(tmp_path, tiny_scene, name, contracted, appearance_views):
    _, origins, directions = tiny_scene
    model = tiny_model(name, contracted, appearance_views=appearance_views)
    if name == "hashgrid":
        model.sampler.grid.occupied.assign(tf.cast(tf.random.uniform([32] * 3, seed=2) > 0.5, tf.float32))
        model.field.encoding.table.assign(tf.random.normal(model.field.encoding.table.shape, seed=3))
    if appearance_views:
        model.field.appearance.assign(tf.random.normal(model.field.appearance.shape, seed=4))
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = load_model(path)
    assert isinstance(loaded, NeRF) and type(loaded.space) is type(model.space)
    assert type(loaded.sampler) is type(model.sampler) and loaded.sampler.sampler_config == model.sampler.sampler_config
    for a, b in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    a = ChunkedRenderer(model, 1000)(origins[0], directions[0])
    b = ChunkedRenderer(loaded, 1000)(origins[0], directions[0])
    np.testing.assert_allclose(a["rgb"], b["rgb"], atol=1e-6)
    assert a["rgb"].shape == (24, 24, 3) and a["depth"].shape == (24, 24)


def test_learning_rate_ends_at_its_final_value_and_can_be_stretched():
    schedule = ExponentialToFinal(1e-2, 1e-3, total_steps=100)
    np.testing.assert_allclose([float(schedule(0)), float(schedule(50)), float(schedule(100)), float(schedule(500))],
                               [1e-2, 1e-2 * 0.1**0.5, 1e-3, 1e-3], rtol=1e-5)
    step_fn = tf.function(lambda step: schedule(step), jit_compile=True)
    assert float(step_fn(tf.constant(100))) == pytest.approx(1e-3, rel=1e-5)
    schedule.set_total_steps(200)  # seen by the already compiled function
    assert float(step_fn(tf.constant(100))) == pytest.approx(1e-2 * 0.1**0.5, rel=1e-5)


def test_compile_for_training_returns_the_schedule_it_uses():
    model = tiny_model()
    schedule = compile_for_training(model, tiny_preset().optimizer, total_steps=10, jit_compile=False)
    assert model.optimizer.built and not hasattr(model, "learning_rate_schedule")
    schedule.set_total_steps(20)
    assert float(model.optimizer.learning_rate) == pytest.approx(float(schedule(0)))


# Models saved by the code of commit b89c5c3, before saved part configs were read across versions
# (tests/fixtures/README.md): one per preset, with what that code rendered for a few rays.
SAVED_BY_B89C5C3 = Path(__file__).parent / "fixtures" / "saved_by_b89c5c3"
SAVED_PARTS = {"hashgrid": (HashGridField, OccupancySampler), "keras_example": (MLPField, UniformSampler)}


def render_like_the_saving_version(folder):
    """``(expected, rendered)``: what the saving version rendered for the fixture's rays, what a load renders now."""
    expected = dict(np.load(folder / "rays.npz"))
    model = load_model(folder)  # the evaluate and render stages' loader, given models/trained
    out = model.render_rays(tf.constant(expected["ray_origins"]), tf.constant(expected["ray_directions"]))
    return model, expected, {key: out[key].numpy() for key in ("rgb", "depth", "acc")}


def assert_renders_as_saved(expected, rendered):
    for key in ("rgb", "depth", "acc"):
        np.testing.assert_allclose(rendered[key], expected[key], rtol=1e-5, atol=1e-5, err_msg=key)


@pytest.mark.parametrize("preset", list(SAVED_PARTS))
def test_a_model_saved_by_the_previous_version_loads_and_renders_as_it_did(preset):
    model, expected, rendered = render_like_the_saving_version(SAVED_BY_B89C5C3 / preset)
    assert (type(model.field), type(model.sampler)) == SAVED_PARTS[preset]
    # rays differ: a fixture that rendered every ray alike would not show a wrong load
    assert min(float(np.ptp(expected[key])) for key in ("rgb", "depth", "acc")) > 0.2
    assert_renders_as_saved(expected, rendered)


def grown(cls, implied: dict):
    """``cls`` after gaining a whole-number key, ``appearance_dim``; ``implied``: its ``implied_by_older_models``."""
    class Grown(cls):
        implied_by_older_models: ClassVar[dict] = implied
        appearance_dim: Annotated[int, pydantic.Field(ge=0)]

    Grown.__name__ = Grown.__qualname__ = f"Grown{cls.__name__}"
    return Grown


@pytest.mark.parametrize("preset, module, name", [("hashgrid", fields, "HashGridFieldConfig"),
                                                  ("keras_example", sampling, "UniformSamplerConfig")])
def test_a_saved_model_loads_after_its_part_config_gains_a_key(monkeypatch, preset, module, name):
    """A later version adds ``appearance_dim`` to a part's config and declares the value that older models imply:
    the previous version's model loads with it and renders as before; without the declaration it is refused."""
    monkeypatch.setattr(module, name, grown(getattr(module, name), {"appearance_dim": 0}))
    model, expected, rendered = render_like_the_saving_version(SAVED_BY_B89C5C3 / preset)
    part_config = model.field.field_config if module is fields else model.sampler.sampler_config
    assert type(part_config).__name__ == f"Grown{name}" and part_config.appearance_dim == 0
    assert_renders_as_saved(expected, rendered)

    monkeypatch.setattr(module, name, grown(getattr(config, name), {}))
    # Keras wraps what the layer's constructor raises in TypeErrors that repeat the model's config: the user sees
    # one DataError naming the file and the innermost message only
    with pytest.raises(DataError) as refused:
        load_model(SAVED_BY_B89C5C3 / preset)
    assert str(refused.value) == (
        f"{SAVED_BY_B89C5C3 / preset / 'model.keras'}: cannot load the trained model (the saved Grown{name} has no "
        f"'appearance_dim' and Grown{name}.implied_by_older_models gives no value for models saved before that key); "
        "run the train stage again.")


@pytest.mark.parametrize("jit_compile, appearance", [(True, False), (False, False), (True, True), (False, True)])
def test_a_train_step_around_the_fused_op_equals_one_in_tensorflows_ops(tiny_scene, jit_compile, appearance):
    """The native path (XLA parts around the op, the op's own gradient) against the whole step in TensorFlow's ops:
    the same loss and, with plain SGD so that every difference shows, the same weights after the step (with an
    appearance embedding per view: batches carry each ray's view, and the embeddings train alike too)."""
    scene, origins, directions = tiny_scene
    rows = np.random.default_rng(0).choice(origins.reshape(-1, 3).shape[0], 1024, replace=False)
    batch = [tf.constant(a.reshape(-1, 3)[rows]) for a in (origins, directions, scene["images"][..., :3])]
    views = tf.constant(rows // (24 * 24), tf.int32)  # the flat rays are view-major
    results = []
    for native in (False, True):
        keras.utils.set_random_seed(0)
        model = tiny_model(appearance_views=8 if appearance else 0)
        if appearance:  # not zero, as it starts: so that the colour head's weights see it too
            model.field.appearance.assign(tf.random.normal(model.field.appearance.shape, seed=5))
        if not native:
            model.field.encoding.native_op = None
        elif not model.uses_native_op:
            pytest.skip("the native hash-grid op is not available here")
        model.compile(optimizer=keras.optimizers.SGD(1.0), jit_compile=model.plan_xla(jit_compile))
        assert model.jit_compile == (jit_compile and not native)
        inputs = (batch[0], batch[1], views) if appearance else (batch[0], batch[1])
        dataset = tf.data.Dataset.from_tensors((inputs, batch[2]))
        history = model.fit(dataset, epochs=1, verbose=0)
        results.append((history.history["loss"][0], [v.numpy() for v in model.trainable_variables]))
    (loss, weights), (native_loss, native_weights) = results
    assert native_loss == pytest.approx(loss, rel=1e-5)
    for want, got in zip(weights, native_weights):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    if appearance:  # the embeddings of the batch's views moved
        assert len(weights) == len(tiny_model().trainable_variables) + 1
        embedding = next(w for w in weights if w.shape == (8, 16))
        assert not np.allclose(embedding, tf.random.normal([8, 16], seed=5).numpy())


@pytest.mark.parametrize("jit_compile, contracted", [(True, False), (False, False), (True, True)])
def test_a_train_step_with_pose_refinement_around_the_fused_op_equals_one_in_tensorflows_ops(
        tiny_scene, jit_compile, contracted):
    """With a pose correction per view, the native path's gradient for the corrections (the op's points gradient
    and the colour head's directions gradient, taken back through the rays' refinement and the contraction) is
    TensorFlow's: the same loss and, with plain SGD, the same corrections and weights after the step."""
    scene, origins, directions = tiny_scene
    rows = np.random.default_rng(1).choice(origins.reshape(-1, 3).shape[0], 1024, replace=False)
    batch = [tf.constant(a.reshape(-1, 3)[rows]) for a in (origins, directions, scene["images"][..., :3])]
    views = tf.constant(rows // (24 * 24), tf.int32)
    start = tf.random.normal([8, 6], stddev=0.01, seed=6)  # radians and scene units: small, not zero
    results = []
    for native in (False, True):
        keras.utils.set_random_seed(0)
        model = tiny_model(contracted=contracted, refined_views=8)
        model.field.encoding.table.assign(tf.random.normal(model.field.encoding.table.shape, stddev=0.5, seed=7))
        model.pose_refinement.correction.assign(start / model.pose_refinement.scale)
        if not native:
            model.field.encoding.native_op = None
        elif not model.uses_native_op:
            pytest.skip("the native hash-grid op is not available here")
        model.compile(optimizer=keras.optimizers.SGD(1.0), jit_compile=model.plan_xla(jit_compile))
        history = model.fit(tf.data.Dataset.from_tensors(((batch[0], batch[1], views), batch[2])), epochs=1, verbose=0)
        results.append((history.history["loss"][0], [v.numpy() for v in model.trainable_variables],
                        model.pose_refinement.corrections().numpy()))
    (loss, weights, corrections), (native_loss, native_weights, native_corrections) = results
    assert native_loss == pytest.approx(loss, rel=1e-5)
    moved = corrections - start.numpy()
    assert np.abs(moved).max() > 1e-6  # the step moved the corrections, so the comparison below means something
    # Each view's gradient sums its rays' samples, with cancellation: float32 rounding reaches a few 1e-3 of the
    # largest step (a missing term, such as the directions' or the contraction's, is tens of percent).
    np.testing.assert_allclose(native_corrections - start.numpy(), moved, rtol=1e-2, atol=1e-2 * np.abs(moved).max())
    for want, got in zip(weights, native_weights):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("contracted", [False, True])
def test_the_distortion_loss_trains_alike_around_the_fused_op_and_in_tensorflows_ops(tiny_scene, contracted):
    """distortion_weight > 0: the native path's step (the loss inside its XLA part) equals TensorFlow's, and the
    loss changes the step (against the same model without it)."""
    scene, origins, directions = tiny_scene
    rows = np.random.default_rng(2).choice(origins.reshape(-1, 3).shape[0], 1024, replace=False)
    batch = [tf.constant(a.reshape(-1, 3)[rows]) for a in (origins, directions, scene["images"][..., :3])]
    results = {}
    for native, weight in ((False, 0.05), (True, 0.05), (True, 0.0)):
        keras.utils.set_random_seed(0)
        model = tiny_model(contracted=contracted)
        model.distortion_weight = weight
        model.field.encoding.table.assign(tf.random.normal(model.field.encoding.table.shape, stddev=0.5, seed=7))
        if not native:
            model.field.encoding.native_op = None
        elif not model.uses_native_op:
            pytest.skip("the native hash-grid op is not available here")
        model.compile(optimizer=keras.optimizers.SGD(1.0), jit_compile=model.plan_xla(True))
        history = model.fit(tf.data.Dataset.from_tensors(((batch[0], batch[1]), batch[2])), epochs=1, verbose=0)
        results[native, weight] = (history.history["loss"][0], [v.numpy() for v in model.trainable_variables])
    (loss, weights), (native_loss, native_weights) = results[False, 0.05], results[True, 0.05]
    assert native_loss == pytest.approx(loss, rel=1e-5)  # the metric is the MSE, with or without the term
    for want, got in zip(weights, native_weights):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5)
    assert results[True, 0.0][0] == pytest.approx(native_loss, rel=1e-6)
    assert any(not np.allclose(a, b, atol=1e-6) for a, b in zip(results[True, 0.0][1], native_weights))


def test_pose_refinement_saves_loads_and_leaves_held_out_rays_alone(tmp_path, tiny_scene):
    """The corrections are saved with the model; rays without views (held-out views, renders) are not moved."""
    _, origins, directions = tiny_scene
    model = tiny_model(refined_views=8)
    model.pose_refinement.correction.assign(tf.random.normal([8, 6], stddev=0.1, seed=8))
    model.save(tmp_path / "model.keras")
    loaded = load_model(tmp_path / "model.keras")
    np.testing.assert_array_equal(loaded.pose_refinement.corrections().numpy(),
                                  model.pose_refinement.corrections().numpy())
    assert loaded.pose_refinement.scale == pytest.approx(0.1)  # camera_learning_rate 0.001 over 0.01
    rays = tf.constant(origins[0].reshape(-1, 3)), tf.constant(directions[0].reshape(-1, 3))
    assert loaded.refined_rays(*rays, None) == rays
    moved = loaded.refined_rays(*rays, tf.zeros([rays[0].shape[0]], tf.int32))
    assert not np.allclose(moved[0].numpy(), rays[0].numpy())


@pytest.mark.slow
def test_an_appearance_embedding_learns_views_that_differ_by_exposure(tiny_scene):
    """The built-in scene with each view's brightness scaled by its own factor (a phone's exposure): with an
    embedding per view each view's brightness is explained (the geometry alone cannot explain one point's colour
    changing between views) and the training views are fitted no worse; the held-out render uses the mean
    embedding."""
    scene, origins, directions = tiny_scene
    exposure = np.linspace(0.25, 1.0, 8).astype(np.float32)[[3, 7, 0, 5, 1, 6, 2, 4]]
    images = scene["images"][..., :3] * exposure[:, None, None, None]
    flat = [a.reshape(-1, 3) for a in (origins, directions, images)]
    views = np.repeat(np.arange(8, dtype=np.int32), 24 * 24)
    data = tf.data.Dataset.from_tensor_slices(((flat[0], flat[1], views), flat[2])).shuffle(8 * 576, seed=0)
    data = data.repeat().batch(1024, drop_remainder=True)
    # (at the preset's 0.01 this tiny model collapses to black on this dark scene, with or without an embedding)
    optimizer = tiny_preset().optimizer.model_copy(update={"learning_rate": 0.003, "final_learning_rate": 0.0003})
    errors, brightness_spread = {}, {}
    for appearance_views in (0, 8):
        keras.utils.set_random_seed(0)
        model = tiny_model(appearance_views=appearance_views)
        compile_for_training(model, optimizer, total_steps=300, jit_compile=True)
        model.fit(data, steps_per_epoch=300, epochs=1, verbose=0, callbacks=model.training_callbacks())
        rgb = model.render_rays(tf.constant(flat[0]), tf.constant(flat[1]), views=tf.constant(views))["rgb"]
        errors[appearance_views] = float(np.mean(np.square(rgb.numpy() - flat[2])))
        # each view's rendered brightness over its target's: the spread (of the log) is what exposure left unexplained
        ratios = rgb.numpy().reshape(8, -1).sum(1) / flat[2].reshape(8, -1).sum(1)
        brightness_spread[appearance_views] = float(np.std(np.log(ratios)))
    print("training MSE, spread of log brightness ratios without / with the embedding:", errors, brightness_spread)
    assert brightness_spread[8] < 0.6 * brightness_spread[0], brightness_spread  # 0.03-0.07 against 0.15 seen
    # Not worse at fitting the training views: with the table's sample-wise Adam (issue 27) both reach about
    # 0.0055 in 300 steps (0.00556 with, 0.00553 without); the exposure is what the embedding explains (above).
    assert errors[8] < 1.02 * errors[0], errors
    held_out = model.render_rays(tf.constant(flat[0][:576]), tf.constant(flat[1][:576]))["rgb"].numpy()
    model.field.appearance.assign(tf.repeat(tf.reduce_mean(model.field.appearance, 0, keepdims=True), 8, axis=0))
    as_mean = model.render_rays(tf.constant(flat[0][:576]), tf.constant(flat[1][:576]),
                                views=tf.constant(views[:576]))["rgb"].numpy()
    np.testing.assert_allclose(held_out, as_mean, atol=1e-5)


def test_a_held_out_view_takes_the_appearance_of_the_training_views_nearest_it(tiny_scene):
    """Rendered in ``appearance_near`` of a training camera's own position, held-out rays (no views) look as that
    view's rays do; between two cameras, as their mix; and the table is as it was after, even after an error."""
    scene, origins, directions = tiny_scene
    model = tiny_model(appearance_views=8)
    model.sampler.grid.occupied.assign(tf.ones_like(model.sampler.grid.occupied))
    model.field.encoding.table.assign(tf.random.normal(model.field.encoding.table.shape, seed=3))
    table = tf.random.normal(model.field.appearance.shape, stddev=3.0, seed=4).numpy()
    model.field.appearance.assign(table)
    positions = scene["poses"][:, :3, 3]
    rays = origins[0].reshape(-1, 3), directions[0].reshape(-1, 3)
    renderer = ChunkedRenderer(model, 1000)

    def rendered_as_view(view):
        return model.render_rays(*rays, views=tf.fill([len(rays[0])], view))["rgb"].numpy()

    mean = renderer(*rays)["rgb"].reshape(-1, 3)
    with model.appearance_near(positions, positions[3]):
        near_3 = renderer(*rays)["rgb"].reshape(-1, 3)
    np.testing.assert_allclose(near_3, rendered_as_view(3), atol=1e-5)
    assert np.abs(near_3 - mean).max() > 0.01  # the view's own appearance is not the mean's
    np.testing.assert_array_equal(model.field.appearance.numpy(), table)

    weights = camera.nearest_views_weights(positions, 0.5 * (positions[1] + positions[2]))
    with model.appearance_near(positions, 0.5 * (positions[1] + positions[2])):
        np.testing.assert_allclose(model.field.appearance.numpy()[0], weights @ table, rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError):
        with model.appearance_near(positions, positions[5]):
            raise RuntimeError("a render fails")
    np.testing.assert_array_equal(model.field.appearance.numpy(), table)
    with pytest.raises(DataError, match="embedding has 8 training views but the rays' train part has 7; run the train"):
        with model.appearance_near(positions[:7], positions[0]):
            pass
    with model.appearance_near(None, positions[3]):  # no training cameras: the mean, as without the context
        np.testing.assert_allclose(renderer(*rays)["rgb"].reshape(-1, 3), mean, atol=1e-6)
    plain = tiny_model()
    with plain.appearance_near(positions[:2], positions[0]):  # no embedding: renders as it does
        pass

"""SampleWiseAdam: the hash table's second moment sums its samples' squares, in both train-step paths alike."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from test_nerf import tiny_model, tiny_scene  # noqa: F401  (a fixture)

from nerf_pipeline.model.encodings import HashEncoding
from nerf_pipeline.model.nerf import compile_for_training
from nerf_pipeline.model.optimizer import SampleWiseAdam, sample_squares


def test_it_steps_as_keras_adam_stepped_on_a_gathered_variables_slices():
    """Given the slices' squares, one step equals Keras' Adam applied to the ``IndexedSlices`` themselves (what
    the table's TensorFlow gather gave before the fused op): a row read 4 times steps 2x the learning rate, where
    Adam on the summed gradient steps 1x."""
    index = tf.constant([0, 0, 0, 0, 1, 2])
    upstream = tf.constant([[1.0], [1.0], [1.0], [1.0], [1.0], [-3.0]])
    steps = {}
    for name in ("slices", "sample_wise", "summed"):
        variable = tf.Variable(tf.zeros([4, 1]))
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.gather(variable, index) * upstream)
        gradient = tape.gradient(loss, variable)
        assert isinstance(gradient, tf.IndexedSlices)
        optimizer = (SampleWiseAdam if name == "sample_wise" else keras.optimizers.Adam)(
            0.01, beta_1=0.9, beta_2=0.99, epsilon=1e-15)
        if name == "slices":
            optimizer.apply([gradient], [variable])
        elif name == "sample_wise":
            optimizer.apply_with_squares([tf.convert_to_tensor(gradient)], [variable],
                                         {id(variable): sample_squares(gradient, 4)})
        else:
            optimizer.apply([tf.convert_to_tensor(gradient)], [variable])
        steps[name] = -variable.numpy()[:, 0]
    np.testing.assert_allclose(steps["sample_wise"], steps["slices"], rtol=1e-6)
    np.testing.assert_allclose(steps["sample_wise"], [0.02, 0.01, -0.01, 0.0], rtol=1e-5)
    np.testing.assert_allclose(steps["summed"], [0.01, 0.01, -0.01, 0.0], rtol=1e-5)


def test_without_squares_it_is_adam():
    variable, twin = tf.Variable([1.0, -2.0]), tf.Variable([1.0, -2.0])
    SampleWiseAdam(0.1).apply([tf.constant([0.5, 0.25])], [variable])
    keras.optimizers.Adam(0.1).apply([tf.constant([0.5, 0.25])], [twin])
    np.testing.assert_array_equal(variable.numpy(), twin.numpy())


def test_the_fused_ops_squares_are_the_gathers_slices_squared():
    encoding = HashEncoding(num_levels=4, features_per_level=2, log2_table_size=10, base_resolution=4,
                            max_resolution=64, extent=1.5)
    if not encoding.uses_native_op:
        pytest.skip("the native hash-grid op is not available here (the warning above says why)")
    encoding.table.assign(tf.random.uniform(encoding.table.shape, -1.0, 1.0, seed=3))
    points = tf.random.uniform([3000, 3], -1.6, 1.6, seed=4)  # some outside the box: clipped to its faces
    upstream = tf.random.normal([3000, encoding.output_dim], seed=5)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(encoding.reference_call(points) * upstream)
    slices = tape.gradient(loss, encoding.table)
    gradient, squares = encoding.table_gradient_and_squares(points, upstream)
    np.testing.assert_allclose(gradient.numpy(), tf.convert_to_tensor(slices).numpy(), rtol=1e-5, atol=1e-5)
    want = sample_squares(slices, int(encoding.table.shape[0])).numpy()
    np.testing.assert_allclose(squares.numpy(), want, rtol=1e-5, atol=1e-6)
    # Cauchy-Schwarz: sum g^2 >= (sum g)^2/n
    assert np.all(squares.numpy() >= np.square(gradient.numpy()) / 3000 - 1e-6)


@pytest.mark.parametrize("jit_compile", [True, False])
def test_an_adam_step_around_the_fused_op_equals_one_in_tensorflows_ops(tiny_scene, jit_compile):  # noqa: F811
    """compile_for_training's optimizer (SampleWiseAdam, table_second_moment: samples): the native path's squares
    come from the op, the TensorFlow path's from the gather's slices; after three steps the weights agree. (Adam
    steps a row by about the learning rate whatever its gradient's size, so a gradient of rounding noise, 1e-12 in
    one path and 0 in the other, moves a row in one only: epsilon 1e-4 keeps such rows still in both.)"""
    scene, origins, directions = tiny_scene
    rows = np.random.default_rng(0).choice(origins.reshape(-1, 3).shape[0], 1024, replace=False)
    batch = [tf.constant(a.reshape(-1, 3)[rows]) for a in (origins, directions, scene["images"][..., :3])]
    results = []
    for native in (False, True):
        keras.utils.set_random_seed(0)
        model = tiny_model()
        if not native:
            model.field.encoding.native_op = None
        elif not model.uses_native_op:
            pytest.skip("the native hash-grid op is not available here")
        compile_for_training(model, _preset_optimizer(), total_steps=10, jit_compile=jit_compile)
        assert isinstance(model.optimizer, SampleWiseAdam)
        history = model.fit(tf.data.Dataset.from_tensors(((batch[0], batch[1]), batch[2])).repeat(3), epochs=1,
                            verbose=0)
        results.append((history.history["loss"][0], [v.numpy() for v in model.trainable_variables]))
    (loss, weights), (native_loss, native_weights) = results
    assert native_loss == pytest.approx(loss, rel=1e-4)
    for want, got in zip(weights, native_weights):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5)


def _preset_optimizer():
    from test_nerf import tiny_preset

    optimizer = tiny_preset().optimizer
    assert optimizer.table_second_moment == "samples"  # params.yaml's default
    return optimizer.model_copy(update={"epsilon": 1e-4})

"""Adam for a field whose table is looked up per sample: the second moment of each row sums its samples' squares.

A hash-grid row is read by many samples of a batch (thousands, on the coarse levels). Its gradient is the sum
of their contributions ``g_i``. Adam's second moment of a dense gradient is ``(sum g_i)^2``; this one is
``sum g_i^2``. A row whose samples agree then steps up to ``sqrt(n)`` times the learning rate (n: its samples in
the batch), while a row hit once steps as Adam does. That is what Keras' Adam did when the table's gradient was
``tf.gather``'s ``IndexedSlices`` (one slice per sample, each squared apart) before the fused op replaced it
with a dense sum (06e2b98), and it trains faster: on the built-in scene, val PSNR after 3 epochs rose from
32.4 to 33.0 dB with it back (issue 27, benchmarks/README.md).

``SampleWiseAdam.apply_with_squares(gradients, variables, squares)`` takes, for the variables that have them,
``[rows, F]`` tensors of summed per-sample squares (``sample_squares`` makes them from an ``IndexedSlices``;
the fused op computes them beside the table's gradient); other variables get Adam's own update.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

PACKAGE = "nerf_pipeline"


def sample_squares(gradient: tf.IndexedSlices, rows: int) -> tf.Tensor:
    """``[rows, F]``: per row, the sum of the squares of the slices of ``gradient`` that index it."""
    return tf.math.unsorted_segment_sum(tf.square(gradient.values), gradient.indices, num_segments=rows)


@keras.saving.register_keras_serializable(package=PACKAGE)
class SampleWiseAdam(keras.optimizers.Adam):
    """``keras.optimizers.Adam`` whose second moment, for the variables given squares, is their samples' squares
    (see the module's docstring). Its state is Adam's: checkpoints of either load into the other."""

    _squares: dict = {}

    def apply_with_squares(self, gradients: list, variables: list, squares: dict) -> None:
        """``apply(gradients, variables)``, where ``squares`` maps ``id(variable)`` to its summed per-sample squared
        gradient (same shape as the variable)."""
        self._squares = {self._var_key(v): squares[id(v)] for v in variables if id(v) in squares}
        try:
            self.apply(gradients, variables)
        finally:
            self._squares = {}

    def update_step(self, gradient, variable, learning_rate):
        squares = self._squares.get(self._var_key(variable))
        if squares is None:
            return super().update_step(gradient, variable, learning_rate)
        # Adam's update (keras.optimizers.Adam.update_step, no amsgrad), with ``squares`` for square(gradient).
        lr = ops.cast(learning_rate, variable.dtype)
        gradient, squares = ops.cast(gradient, variable.dtype), ops.cast(squares, variable.dtype)
        local_step = ops.cast(self.iterations + 1, variable.dtype)
        beta_1_power = ops.power(ops.cast(self.beta_1, variable.dtype), local_step)
        beta_2_power = ops.power(ops.cast(self.beta_2, variable.dtype), local_step)
        m = self._momentums[self._get_variable_index(variable)]
        v = self._velocities[self._get_variable_index(variable)]
        alpha = lr * ops.sqrt(1 - beta_2_power) / (1 - beta_1_power)
        self.assign_add(m, ops.multiply(ops.subtract(gradient, m), 1 - self.beta_1))
        self.assign_add(v, ops.multiply(ops.subtract(squares, v), 1 - self.beta_2))
        self.assign_sub(variable, ops.divide(ops.multiply(m, alpha), ops.add(ops.sqrt(v), self.epsilon)))

"""Training on several devices or machines with TensorFlow's own ``tf.distribute``.

``distribute`` in params.yaml picks the strategy:

* ``none``: the default strategy (one device: a GPU if there is one, else the CPU);
* ``mirrored``: ``MirroredStrategy`` over all local GPUs (or all logical CPU devices when
  there is no GPU); each step's global batch is split across replicas and their gradients
  are summed;
* ``multi_worker``: ``MultiWorkerMirroredStrategy`` over the workers that ``TF_CONFIG``
  names. Every worker runs the train stage; only the chief (``chief`` 0, or ``worker`` 0
  when there is no chief) writes the outs and logs to MLflow.
"""

from __future__ import annotations

import json
import logging
import os

import tensorflow as tf

from nerf_pipeline.errors import ConfigError

log = logging.getLogger(__name__)


def make_strategy(kind: str) -> tf.distribute.Strategy:
    """The strategy for ``kind``; create it before any other TensorFlow op (multi-worker requires it)."""
    if kind == "none":
        return tf.distribute.get_strategy()
    if kind == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    if "TF_CONFIG" not in os.environ:
        raise ConfigError("params.yaml: 'distribute: multi_worker' needs the TF_CONFIG environment variable "
                          "(the cluster's workers and this worker's task); see README, 'Several machines'.")
    return tf.distribute.MultiWorkerMirroredStrategy()


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes outputs: always, except on a non-chief multi-worker task."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    tf_config = json.loads(os.environ["TF_CONFIG"])
    task, cluster = tf_config.get("task", {}), tf_config.get("cluster", {})
    if "chief" in cluster:
        return task.get("type") == "chief"
    return task.get("type") == "worker" and int(task.get("index", 0)) == 0


def can_jit_compile(strategy: tf.distribute.Strategy) -> bool:
    """Whether the train step can be XLA-compiled under ``strategy``: only with one replica.

    Keras compiles the step together with the strategy's cross-replica reduction; XLA could not
    compile that here, neither over logical devices of one CPU (variables on another device)
    nor across workers (collective ops), so multi-replica training runs without XLA.
    """
    return strategy.num_replicas_in_sync == 1


def adapt_for_keras_fit(model, strategy: tf.distribute.Strategy) -> None:
    """Let Keras 3's ``fit`` train ``model`` under ``MultiWorkerMirroredStrategy``; nothing under other strategies.

    Keras 3 (3.15) fails twice there, keras-team/keras#20585 (open): ``fit`` builds the model by
    reducing its first batch across replicas, which the multi-worker strategy cannot do for a batch
    of per-replica tensors, and it averages a step's outputs over an axis 0 that scalar metrics lack.
    Both fixes act on this one model instance, so the model's class stays plain Keras:

    * the build step only builds the optimizer (the model is built in its constructor);
    * each step's metrics get a leading axis of 1.
    """
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return

    def build_optimizer_only(iterator=None, data_batch=None):
        with strategy.scope():
            model.optimizer.build(model.trainable_variables)

    def with_leading_axis(step):
        def wrapped(data):
            return {name: value[None] for name, value in step(data).items()}
        return wrapped

    # (Keras calls these through the instance, so instance attributes take precedence over its methods.)
    model._maybe_symbolic_build = build_optimizer_only
    model.train_step = with_leading_axis(model.train_step)
    model.test_step = with_leading_axis(model.test_step)


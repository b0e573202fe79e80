"""XLA around a native op: the parts of a computation before and after it, each compiled on its own.

XLA cannot compile a custom op, so a step that holds one cannot be one XLA cluster. A layer that calls
the op keeps ``xla_parts`` (set by ``NeRF.plan_xla``) and runs what lies around it through ``part``:
``tf.function(jit_compile=True)`` when ``xla_parts`` is on, the plain function otherwise. Inside a function
that XLA already compiles whole (no native op), a part is inlined like any other call.
"""

from __future__ import annotations

import tensorflow as tf


def part(owner, name: str, function):
    """``function``, XLA-compiled on its own when ``owner.xla_parts`` is on (compiled once per owner and name)."""
    if not getattr(owner, "xla_parts", False):
        return function
    # Kept out of Keras' attribute tracking: a cache of compiled functions, not state of the layer.
    compiled = owner.__dict__.setdefault("_compiled_xla_parts", {})
    if name not in compiled:
        compiled[name] = tf.function(function, jit_compile=True, reduce_retracing=True)
    return compiled[name]

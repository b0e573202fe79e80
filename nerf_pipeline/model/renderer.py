"""Render any number of rays with a trained ``NeRF``, in chunks of a few fixed sizes, deterministically."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from nerf_pipeline.model import rendering, xla
from nerf_pipeline.runtime import interrupts

SMALLEST_CHUNK = 1024
# A ray is no longer followed once less than this fraction of its light is left: all it could still
# add to its pixel is that fraction (instant-ngp's renderer stops at the same 1e-4).
STOP_TRANSMITTANCE = 1e-4
# Samples of each ray sent through the field at a time, front to back; after each pass, only the rays
# that still carry light go on (early ray termination with static shapes).
SAMPLES_PER_PASS = 8
# Rays sampled at once, in chunks: bounds the memory that their depths take in a large frame.
BLOCK_CHUNKS = 16


def chunk_size(num_rays: int, chunk_rays: int) -> int:
    """The size to pad a call of ``num_rays`` rays to: ``chunk_rays``, or for fewer rays the smallest power
    of two (at least ``SMALLEST_CHUNK``) that holds them. The compiled functions thus see a handful of
    shapes over a whole run, whatever the number of rays that cross occupied space."""
    if num_rays >= chunk_rays:
        return chunk_rays
    return min(chunk_rays, max(SMALLEST_CHUNK, 1 << max(num_rays - 1, 0).bit_length()))


def composite_on_black(rgb, sigma, t_vals, deltas):
    """``rendering.composite`` on black: ``rgb [R, 3]``, ``acc [R]``, ``sum(weights * t_vals) [R]``."""
    out = rendering.composite(rgb, sigma, t_vals, deltas)
    return out["rgb"], out["acc"], out["depth"] * out["acc"]


class ChunkedRenderer:
    """Renders rays in fixed-size compiled chunks with deterministic sampling (no jitter).

    Rays that cannot meet matter (``NeRF.rays_hit``) are not sent through the field: they are the
    background, exactly. Only the rays that ``NeRF.rays_may_hit`` keeps (those crossing the box around
    the occupied cells) are asked, so most of an image's empty rays cost no march. The others are
    sampled as in training and composited front to back, ``samples_per_pass`` samples at a time; a ray
    stops once less than ``stop_transmittance`` of its light is left, so the samples behind an opaque
    surface cost nothing, and its colour differs from compositing every sample by at most that
    fraction (``stop_transmittance=0`` composites every sample). Each call of a compiled function is
    padded to a size from ``chunk_size``.
    Call with ``ray_origins, ray_directions: [..., 3]`` float32 arrays; returns a numpy dict
    ``rgb [..., 3]``, ``depth [...]``, ``acc [...]`` float32. ``samples_evaluated`` counts the field's
    evaluations so far.
    """

    def __init__(self, model, chunk_rays: int, jit_compile: bool = True,
                 stop_transmittance: float = STOP_TRANSMITTANCE, samples_per_pass: int = SAMPLES_PER_PASS):
        self.model = model
        self.chunk_rays = int(chunk_rays)
        self.stop_transmittance, self.samples_per_pass = float(stop_transmittance), int(samples_per_pass)
        self.samples_evaluated = 0

        def composite_pass(ray_origins, ray_directions, t_vals, deltas):
            """The light that samples ``[R, K]`` add to their rays when all of it reaches the first: ``rgb [R, 3]``
            (on black), ``acc [R]`` and ``sum(weights * t_vals) [R]``."""
            rgb, sigma = model.field_along_rays(ray_origins, ray_directions, t_vals)
            return xla.part(model, "composite_on_black", composite_on_black)(rgb, sigma, t_vals, deltas)

        # With a native op in the field, XLA compiles the parts of a pass around it, not the whole pass.
        whole_pass_jit = model.plan_xla(jit_compile)
        self.sample_chunk = tf.function(lambda o, d: model.sample_rays(o, d, training=False), jit_compile=jit_compile)
        self.composite_chunk = tf.function(composite_pass, jit_compile=whole_pass_jit)
        self.hit_chunk = tf.function(model.rays_hit, jit_compile=jit_compile)
        # The occupancy march in C++ where the sampler has one: the hit test stops at a ray's first occupied bin.
        native = getattr(model.sampler, "native_render_functions", None)
        native = native(model.near, model.far, model.space, jit_compile) if native else None
        if native is not None:
            self.hit_chunk, self.sample_chunk = native

    def _in_chunks(self, function, *arrays) -> list[np.ndarray]:
        """``function`` over arrays ``[N, ...]`` in padded chunks; its outputs concatenated, padding dropped."""
        num_rays = arrays[0].shape[0]
        pieces = []
        with interrupts.held():  # Ctrl-C stops between chunks, not inside TensorFlow
            for start in range(0, num_rays, self.chunk_rays):
                chunk = [a[start:start + self.chunk_rays] for a in arrays]
                valid = chunk[0].shape[0]
                size = chunk_size(valid, self.chunk_rays)
                if valid < size:
                    chunk = [np.concatenate([a, np.repeat(a[-1:], size - valid, 0)]) for a in chunk]
                outputs = function(*[tf.constant(a) for a in chunk])
                pieces.append([value.numpy()[:valid] for value in tf.nest.flatten(outputs)])
                interrupts.check()
        return [np.concatenate(parts) for parts in zip(*pieces)]

    def _render_hits(self, origins, directions):
        """Rays ``[N, 3]`` that meet matter, composited front to back: ``rgb [N, 3]`` (on black), ``depth [N]``,
        ``transmittance [N]`` (the light left at the last sample reached)."""
        num_rays = origins.shape[0]
        rgb, weighted_depth = np.zeros((num_rays, 3), np.float32), np.zeros(num_rays, np.float32)
        transmittance = np.ones(num_rays, np.float32)
        block = self.chunk_rays * BLOCK_CHUNKS
        for block_start in range(0, num_rays, block):
            alive = np.arange(block_start, min(block_start + block, num_rays))
            t_vals, deltas = self._in_chunks(self.sample_chunk, origins[alive], directions[alive])
            for first in range(0, t_vals.shape[1], self.samples_per_pass):
                if not len(alive):
                    break
                rows, samples = alive - block_start, slice(first, first + self.samples_per_pass)
                pass_rgb, pass_acc, pass_weighted_depth = self._in_chunks(
                    self.composite_chunk, origins[alive], directions[alive], t_vals[rows, samples],
                    deltas[rows, samples])
                self.samples_evaluated += len(alive) * t_vals[:, samples].shape[1]
                light = transmittance[alive]
                rgb[alive] += light[:, None] * pass_rgb
                weighted_depth[alive] += light * pass_weighted_depth
                transmittance[alive] = np.maximum(light * (1.0 - pass_acc), 0.0)  # acc may round above 1
                alive = alive[transmittance[alive] >= self.stop_transmittance]
        acc = 1.0 - transmittance
        depth = np.divide(weighted_depth, acc, out=np.zeros_like(acc), where=acc > 0)
        return rgb, depth, transmittance

    def __call__(self, ray_origins, ray_directions) -> dict:
        shape = ray_origins.shape[:-1]
        origins = np.asarray(ray_origins, np.float32).reshape(-1, 3)
        directions = np.asarray(ray_directions, np.float32).reshape(-1, 3)
        num_rays = origins.shape[0]
        rgb = np.full((num_rays, 3), self.model.background, np.float32)
        depth = np.zeros(num_rays, np.float32)
        acc = np.zeros(num_rays, np.float32)
        candidates = np.flatnonzero(self.model.rays_may_hit(origins, directions)) if num_rays else []
        hit = candidates[self._in_chunks(self.hit_chunk, origins[candidates], directions[candidates])[0]] \
            if len(candidates) else []
        if len(hit):
            hit_rgb, depth[hit], transmittance = self._render_hits(origins[hit], directions[hit])
            rgb[hit] = hit_rgb + transmittance[:, None] * self.model.background
            acc[hit] = 1.0 - transmittance
        return {"rgb": rgb.reshape(*shape, 3), "depth": depth.reshape(shape), "acc": acc.reshape(shape)}

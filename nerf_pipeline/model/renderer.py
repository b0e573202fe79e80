"""Render any number of rays with a trained ``NeRF``, in chunks of a few fixed sizes, deterministically."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from nerf_pipeline.runtime import interrupts

SMALLEST_CHUNK = 1024


def chunk_size(num_rays: int, chunk_rays: int) -> int:
    """The size to pad a call of ``num_rays`` rays to: ``chunk_rays``, or for fewer rays the smallest power
    of two (at least ``SMALLEST_CHUNK``) that holds them. The compiled functions thus see a handful of
    shapes over a whole run, whatever the number of rays that cross occupied space."""
    if num_rays >= chunk_rays:
        return chunk_rays
    return min(chunk_rays, max(SMALLEST_CHUNK, 1 << max(num_rays - 1, 0).bit_length()))


class ChunkedRenderer:
    """Renders rays in fixed-size compiled chunks with deterministic sampling (no jitter).

    Rays that cannot meet matter (``NeRF.rays_hit``) are not sent through the field: they are the
    background, exactly. Only the rays that ``NeRF.rays_may_hit`` keeps (those crossing the box around
    the occupied cells) are asked, so most of an image's empty rays cost no march. Each call of a
    compiled function is padded to a size from ``chunk_size``.
    Call with ``ray_origins, ray_directions: [..., 3]`` float32 arrays; returns a numpy dict
    ``rgb [..., 3]``, ``depth [...]``, ``acc [...]`` float32.
    """

    def __init__(self, model, chunk_rays: int, jit_compile: bool = True):
        self.model = model
        self.chunk_rays = int(chunk_rays)

        def render_chunk(ray_origins, ray_directions):
            out = model.render_rays(ray_origins, ray_directions, training=False)
            return out["rgb"], out["depth"], out["acc"]

        self.render_chunk = tf.function(render_chunk, jit_compile=jit_compile)
        self.hit_chunk = tf.function(model.rays_hit, jit_compile=jit_compile)

    def _in_chunks(self, function, origins, directions) -> list[np.ndarray]:
        """``function`` over [N, 3] rays in padded chunks; its outputs concatenated, padding dropped."""
        num_rays = origins.shape[0]
        pieces = []
        with interrupts.held():  # Ctrl-C stops between chunks, not inside TensorFlow
            for start in range(0, num_rays, self.chunk_rays):
                o, d = origins[start:start + self.chunk_rays], directions[start:start + self.chunk_rays]
                valid = o.shape[0]
                size = chunk_size(valid, self.chunk_rays)
                if valid < size:
                    o = np.concatenate([o, np.repeat(o[-1:], size - valid, 0)])
                    d = np.concatenate([d, np.repeat(d[-1:], size - valid, 0)])
                outputs = function(tf.constant(o), tf.constant(d))
                pieces.append([value.numpy()[:valid] for value in tf.nest.flatten(outputs)])
                interrupts.check()
        return [np.concatenate(parts) for parts in zip(*pieces)]

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
            rgb[hit], depth[hit], acc[hit] = self._in_chunks(self.render_chunk, origins[hit], directions[hit])
        return {"rgb": rgb.reshape(*shape, 3), "depth": depth.reshape(shape), "acc": acc.reshape(shape)}

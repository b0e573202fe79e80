"""Images, videos and colour maps on disk: PNG, mp4 (imageio-ffmpeg, H.264) and GIF, written atomically."""

from __future__ import annotations

import imageio.v2 as imageio
import numpy as np

from nerf_pipeline.runtime import atomic


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Float image(s) in [0, 1] → uint8."""
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def depth_range(depth: np.ndarray, acc: np.ndarray) -> tuple[float, float]:
    """Robust (2nd, 98th percentile) depth range over pixels that are mostly opaque."""
    hit = depth[acc > 0.5]
    if hit.size == 0:
        return 0.0, 1.0
    hit = hit[::max(1, hit.size // 1_000_000)]  # a million evenly spread pixels pin the percentiles
    lo, hi = np.percentile(hit, [2, 98])
    return float(lo), float(max(hi, lo + 1e-6))


def colorize_depth(depth: np.ndarray, acc: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Depth ``[..., H, W]`` → inferno RGB ``[..., H, W, 3]`` uint8: near bright, far dark, empty black."""
    from matplotlib import colormaps

    nearness = 1.0 - np.clip((depth - lo) / (hi - lo), 0.0, 1.0)
    rgb = colormaps["inferno"](0.15 + 0.85 * nearness)[..., :3]
    rgb = rgb * np.clip((acc[..., None] - 0.25) / 0.5, 0.0, 1.0)  # fade out where the ray passes through
    return to_uint8(rgb)


def write_png(path, image: np.ndarray) -> None:
    with atomic.atomic_path(path, suffix=".png") as tmp:
        imageio.imwrite(tmp, image, format="PNG")


def _even(frame: np.ndarray) -> np.ndarray:
    """Pad [H, W, 3] to even H and W: H.264 in yuv420p needs them."""
    pad_h, pad_w = frame.shape[0] % 2, frame.shape[1] % 2
    if pad_h or pad_w:
        frame = np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return frame


def write_mp4(path, frames, fps: int) -> None:
    """``frames``: [T, H, W, 3] uint8, or any iterable of [H, W, 3] uint8 frames → H.264 mp4 (every frame
    kept), written frame by frame."""
    with atomic.atomic_path(path, suffix=".mp4") as tmp:
        with imageio.get_writer(tmp, format="FFMPEG", fps=fps, codec="libx264", quality=8, pixelformat="yuv420p",
                                macro_block_size=1) as writer:
            for frame in frames:
                writer.append_data(_even(np.asarray(frame)))


def write_gif(path, frames: np.ndarray, frame_ms: int) -> None:
    """``frames [T, H, W, 3]`` uint8 → looping GIF."""
    with atomic.atomic_path(path, suffix=".gif") as tmp:
        imageio.mimwrite(tmp, list(frames), format="GIF", duration=frame_ms, loop=0)

"""Stage ``render``: a 360° orbit video of the trained model, its depth video, and a GIF of training.

Reads ``in_model`` (the trained model), ``in_rays`` (image size, intrinsics, camera poses),
``in_progress`` (the training-progress frames) and ``in_run_file`` (the MLflow run). Writes:

* ``out_video``: mp4 (H.264), ``render.num_frames`` frames (120: every one of the Keras
  example's), a full turn about the scene's up axis at elevation ``render.elevation_deg``
  and distance ``render.radius`` (null: the cameras' median);
* ``out_depth_video``: the same orbit's depth, inferno, near bright;
* ``out_gif``: one frame per epoch, val view 0 as it looked after that epoch.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from nerf_pipeline import camera, media
from nerf_pipeline.config import Config
from nerf_pipeline.model.nerf import load_model
from nerf_pipeline.model.renderer import ChunkedRenderer
from nerf_pipeline.runtime import tracking
from nerf_pipeline.scenes import ray_files
from nerf_pipeline.scenes.scene import read_npz

log = logging.getLogger(__name__)


def orbit_path(poses: np.ndarray, elevation_deg, radius) -> tuple[float, float]:
    """``(elevation_deg, radius)`` of the orbit: the given values, else the median of the cameras'.

    Scenes are z-up and centred on what the cameras look at (``scenes/folders.py`` makes them so),
    so the orbit turns about the z axis through the origin.
    """
    positions = np.asarray(poses)[:, :3, 3]
    distances = np.linalg.norm(positions, axis=-1)
    if radius is None:
        radius = float(np.median(distances))
    if elevation_deg is None:
        elevation_deg = float(np.median(np.degrees(np.arcsin(np.clip(positions[:, 2] / distances, -1, 1)))))
    return elevation_deg, radius


def run(cfg: Config, *, in_model, in_rays, in_progress, in_run_file, out_video, out_depth_video, out_gif) -> dict:
    val = ray_files.load(in_rays, "val")
    train_poses = ray_files.load(in_rays, "train")["poses"]
    height, width = val["rgb"].shape[1:3]
    progress = read_npz(in_progress, required=("frames",))["frames"]
    model = load_model(in_model)
    renderer = ChunkedRenderer(model, cfg.render.chunk_rays, cfg.active.jit_compile)
    r = cfg.render
    elevation, radius = orbit_path(np.concatenate([train_poses, val["poses"]]), r.elevation_deg, r.radius)
    poses = camera.orbit_poses(r.num_frames, elevation, radius)
    # Every frame through the first val camera's lens.
    ray_origins, ray_directions = camera.generate_rays(poses, height, width, val["intrinsics"][0])
    with tracking.reopen_run(cfg, in_run_file) as mlflow:
        start = time.perf_counter()
        out = renderer(ray_origins, ray_directions)
        render_s = time.perf_counter() - start
        lo, hi = media.depth_range(out["depth"], out["acc"])
        media.write_mp4(out_video, media.to_uint8(out["rgb"]), r.fps)
        media.write_mp4(out_depth_video, media.colorize_depth(out["depth"], out["acc"], lo, hi), r.fps)
        media.write_gif(out_gif, np.asarray(progress), r.gif_frame_ms)
        metrics = {"render_s": render_s, "render_fps": r.num_frames / render_s}
        mlflow.log_metrics(metrics)
        for path in (out_video, out_depth_video, out_gif):
            mlflow.log_artifact(str(path), artifact_path="render")
    log.info("rendered %d frames of %dx%d in %.1f s (%.1f frames/s), orbit at elevation %.1f deg, radius %.2f",
             r.num_frames, height, width, render_s, metrics["render_fps"], elevation, radius)
    return metrics

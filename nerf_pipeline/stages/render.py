"""Stage ``render``: a video of the trained model along a camera path, its depth video, and a GIF of training.

Reads ``in_model`` (the train stage's model folder: the model, its progress frames and its MLflow
run) and ``in_rays`` (the train and val cameras: their poses, image size and intrinsics). Writes:

* ``out_video``: mp4 (H.264), ``render.num_frames`` frames at ``render.width`` x ``render.height``
  (null: the training views' size; the lens is the first val camera's, scaled), along
  ``render.camera_path``: a full turn about the cameras' up axis (``camera.rig_up``) through the point
  they look at, at elevation ``render.elevation_deg`` and distance ``render.radius`` (null: the
  cameras' median) when the cameras go around the scene (``auto``: they cover at least
  ``ORBIT_COVERAGE_DEG`` of azimuth about that axis), else a spiral where they were, as LLFF renders
  forward-facing captures, looking where they look: the point their axes meet, or for cameras that
  all face one way the scene as far ahead as the model's depth says (in the middle of their mean
  view), else a focus depth from near/far. Every frame's up is the cameras' up, so no frame rolls.
  The log says which path and why. ``render.camera_path`` may
  also name a nerfstudio ``camera_path.json`` (``scenes/camera_paths.py``): its frames, field of view,
  size (unless render.width/height are set) and fps;
* ``out_depth_video``: the same path's depth, inferno, near bright;
* ``out_gif``: one frame per epoch, the first val view as it looked after that epoch.

As the pipeline's last stage, it ends with a summary on the console: what was made and where,
the evaluation's figures (read from ``metrics/eval.json`` when it is there: for the console only,
so not a dependency, as is the export stage's mesh), and what to open and commit next.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from nerf_pipeline import camera, media
from nerf_pipeline.config import Config, RenderConfig
from nerf_pipeline.model.nerf import PROGRESS_FILE, RUN_FILE, load_model, trained_poses
from nerf_pipeline.model.renderer import ChunkedRenderer
from nerf_pipeline.runtime import tracking
from nerf_pipeline.runtime.progress import Progress
from nerf_pipeline.scenes import ray_files
from nerf_pipeline.scenes.camera_paths import read_camera_path
from nerf_pipeline.scenes.scene import read_npz

log = logging.getLogger(__name__)

ORBIT_COVERAGE_DEG = 270.0  # cameras spanning at least this much azimuth go around the scene
DEPTH_VIEW_SIDE = 64  # pixels on the long side of the view rendered to find how far ahead the scene is


def orbit_path(poses: np.ndarray, elevation_deg, radius, target=None) -> tuple[float, float]:
    """``(elevation_deg, radius)`` of the orbit: the given values, else the median of the cameras',
    measured from ``target`` (None: the point the cameras look at, else their mean position) about
    the cameras' up axis."""
    if target is None:
        target = camera.looked_at_point(poses)
        target = np.asarray(poses)[:, :3, 3].mean(0) if target is None else target
    return camera.orbit_around_cameras(poses, target, elevation_deg, radius)


def depth_ahead(renderer, poses: np.ndarray, lens: np.ndarray, height: int, width: int) -> float | None:
    """The scene's depth where the cameras look: the median depth of the opaque rays in the middle third
    of the cameras' mean view (``camera.mean_pose``, rendered ``DEPTH_VIEW_SIDE`` pixels on its long side
    through ``lens`` [4], the lens of a ``height`` x ``width`` view, scaled); None if none is opaque."""
    scale = DEPTH_VIEW_SIDE / max(height, width)
    small_h, small_w = max(3, round(height * scale)), max(3, round(width * scale))
    small_lens = np.asarray(lens, np.float64) * np.array([small_w / width, small_h / height] * 2)
    out = renderer(*camera.generate_rays(camera.mean_pose(poses), small_h, small_w, small_lens))
    middle = (slice(small_h // 3, small_h - small_h // 3), slice(small_w // 3, small_w - small_w // 3))
    depth, acc = out["depth"][middle], out["acc"][middle]
    return float(np.median(depth[acc > 0.5])) if np.any(acc > 0.5) else None


def camera_path(render: RenderConfig, poses: np.ndarray, near: float, far: float,
                depth: float | None = None) -> tuple[np.ndarray, str]:
    """Poses ``[num_frames, 4, 4]`` of the video and a sentence saying which path and why.

    Both paths look at ``camera.view_target``: the point the cameras look at, or for cameras that
    all face one way the point ``depth`` (the scene's depth there; None: a focus depth from
    ``near``/``far``) ahead of them. They keep the cameras' up (``camera.rig_up``) as every frame's up,
    and the orbit turns about that up through the target.
    """
    poses = np.asarray(poses, dtype=np.float64)
    target, how = camera.view_target(poses, near, far, depth)
    up = camera.rig_up(poses)
    looked_at = camera.looked_at_point(poses)
    # Cameras that look the same way (no point they all look at) face one side of the scene, however
    # they are spread.
    coverage = 0.0 if looked_at is None else camera.azimuth_coverage_deg(poses[:, :3, 3], looked_at, up)
    kind = render.camera_path
    if kind == "auto":
        kind = "orbit" if coverage >= ORBIT_COVERAGE_DEG else "spiral"
        why = (f"the cameras cover {coverage:.0f}° of azimuth around the scene "
               f"({'at least' if kind == 'orbit' else 'less than'} {ORBIT_COVERAGE_DEG:.0f}°)")
    else:
        why = f"render.camera_path is {kind}; the cameras cover {coverage:.0f}° of azimuth"
    if kind == "orbit":
        elevation, radius = orbit_path(poses, render.elevation_deg, render.radius, target)
        return camera.orbit_poses(render.num_frames, elevation, radius, target, up), (
            f"a 360° orbit at elevation {elevation:.1f}°, radius {radius:.2f}, looking at {how}: {why}")
    return (camera.spiral_poses(poses, render.num_frames, target),
            f"a spiral around the cameras' mean position, looking at {how}: {why}")


def output_size(render: RenderConfig, height: int, width: int) -> tuple[int, int]:
    """``(height, width)`` of the video: the training views', or render.width/height (one given: same aspect)."""
    if render.width is None and render.height is None:
        return height, width
    if render.width is not None and render.height is not None:
        return render.height, render.width
    if render.width is not None:
        return max(1, round(render.width * height / width)), render.width
    return render.height, max(1, round(render.height * width / height))


def run(cfg: Config, *, in_model, in_rays, out_video, out_depth_video, out_gif) -> dict:
    val, train = ray_files.load(in_rays, "val"), ray_files.load(in_rays, "train")
    progress_frames = read_npz(Path(in_model) / PROGRESS_FILE, required=("frames",))["frames"]
    model = load_model(in_model)
    renderer = ChunkedRenderer(model, cfg.render.chunk_rays, cfg.active.jit_compile)
    train_positions = trained_poses(in_model, train)[:, :3, 3]  # a frame takes its nearest views' appearance
    r = cfg.render
    fps = r.fps
    if r.camera_path.endswith(".json"):
        path = read_camera_path(r.camera_path)
        poses, fps, why = path.poses, path.fps, f"the camera path {r.camera_path}"
        height, width = output_size(r, path.height, path.width)
        lenses = path.intrinsics * np.array([width / path.width, height / path.height] * 2, np.float32)
    else:
        cameras = np.concatenate([trained_poses(in_model, train), val.poses])  # train's as refined
        # Cameras whose axes do not meet (a forward-facing capture) look as far as the scene is ahead of them.
        depth = None if camera.looked_at_point(cameras) is not None else depth_ahead(
            renderer, cameras, val.intrinsics[0], val.height, val.width)
        poses, why = camera_path(r, cameras, val.near, val.far, depth)
        height, width = output_size(r, val.height, val.width)
        # Every frame through the first val camera's lens, scaled to the output size.
        lenses = np.tile(val.intrinsics[0] * np.array([width / val.width, height / val.height] * 2, np.float32),
                         (len(poses), 1))
    # Kept small (a 1080p video of 120 frames holds 1.5 GB this way): the depth video's colour range
    # needs every frame's depth before the first is coloured.
    rgb = np.zeros((len(poses), height, width, 3), np.uint8)
    depth, acc = np.zeros((len(poses), height, width), np.float16), np.zeros((len(poses), height, width), np.uint8)
    log.info("rendering %d frames of %dx%d along %s", len(poses), width, height, why)
    with tracking.pipeline_run(cfg, Path(in_model) / RUN_FILE) as run:
        start = time.perf_counter()
        with Progress(len(poses), "rendering frames", "frames") as progress:
            for i, (pose, lens) in enumerate(zip(poses, lenses)):
                with model.appearance_near(train_positions, pose[:3, 3]):
                    out = renderer(*camera.generate_rays(pose, height, width, lens))
                rgb[i], depth[i], acc[i] = media.to_uint8(out["rgb"]), out["depth"], media.to_uint8(out["acc"])
                progress(i + 1)
        render_s = time.perf_counter() - start
        opaque = acc > 127
        lo, hi = media.depth_range(depth[opaque].astype(np.float32), np.ones(int(opaque.sum()), np.float32))
        media.write_mp4(out_video, rgb, fps)
        media.write_mp4(out_depth_video, (media.colorize_depth(d.astype(np.float32), a.astype(np.float32) / 255.0, lo, hi)
                                          for d, a in zip(depth, acc)), fps)
        media.write_gif(out_gif, np.asarray(progress_frames), r.gif_frame_ms)
        metrics = {"render_s": render_s, "render_fps": len(poses) / render_s}
        run.log_metrics({"time/render_s": render_s, "time/render_fps": metrics["render_fps"]})
        for path in (out_video, out_depth_video, out_gif):
            run.log_artifact(str(path), artifact_path="render")
    log.info("rendered %d frames of %dx%d in %.1f s (%.2f s a frame)", len(poses), width, height, render_s,
             render_s / len(poses))
    print(summary(out_video, in_model, run.run_name), file=sys.stderr)
    return metrics


def summary(out_video, in_model, run_name: str, eval_file=Path("metrics/eval.json"), grid=Path("eval/grid.png"),
            mesh=Path("export/mesh.glb")) -> str:
    """What the pipeline made, how good it is, and what to do next (a few lines for the console)."""
    lines = [f"Done. Video: {out_video}   model: {in_model}" + (f"   views vs prediction: {grid}" if grid.exists() else "")
             + (f"   mesh: {mesh}" if mesh.exists() else "")]
    try:
        e = json.loads(eval_file.read_text())
        lines.append(f"Quality on {e['num_views']} {e['split']} views of {e['width']}x{e['height']}: PSNR {e['psnr']:.2f} dB, "
                     f"SSIM {e['ssim']:.3f}")
    except (OSError, ValueError, KeyError, TypeError):
        pass
    lines.append(f"Compare runs: mlflow ui --backend-store-uri {tracking.tracking_uri()}  (this run: {run_name}); "
                 "dvc exp show --only-changed")
    lines.append("Keep this result: git add dvc.lock params.yaml metrics && git commit  (dvc push to share the data)")
    return "\n".join(lines)

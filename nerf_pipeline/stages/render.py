"""Stage ``render``: a video of the trained model along a camera path, its depth video, and a GIF of training.

Reads ``in_model`` (the train stage's model folder: the model, its progress frames and its MLflow
run) and ``in_rays`` (the train and val cameras: their poses, image size and intrinsics). Writes:

* ``out_video``: mp4 (H.264), ``render.num_frames`` frames at ``render.width`` x ``render.height``
  (null: the training views' size; the lens is the first val camera's, scaled), along
  ``render.camera_path``: for ``auto``, ``orbit`` and ``spiral``, the path fitted to the cameras
  (``render_paths``: a 360° orbit when they go around the scene, else a spiral where they were); the
  log says which path and why. Frames are rendered through the method (``methods.Method.render``), in
  the appearance of the training views nearest each. ``render.camera_path`` may
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
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from nerf_pipeline import media, methods, trained_folder
from nerf_pipeline.config import MAX_RENDER_FRAMES, MAX_RENDER_SIDE, Config, RenderConfig
from nerf_pipeline.errors import DataError, UserError
from nerf_pipeline.methods import Camera
from nerf_pipeline.render_paths import fitted_path, output_size
from nerf_pipeline.runtime import tracking
from nerf_pipeline.runtime.progress import Progress
from nerf_pipeline.scenes import ray_files
from nerf_pipeline.scenes.camera_paths import CameraPath, read_camera_path

log = logging.getLogger(__name__)


def camera_path_file(render: RenderConfig) -> CameraPath:
    """``render.camera_path``'s camera_path.json; a ``DataError`` naming it when it has more frames than
    render.num_frames may, or makes frames larger than render.width/height may be."""
    path = read_camera_path(render.camera_path)
    if len(path.poses) > MAX_RENDER_FRAMES:
        raise DataError(f"{render.camera_path}: has {len(path.poses)} frames; at most {MAX_RENDER_FRAMES} "
                        "(render.num_frames' bound). Make the path shorter or its fps lower.")
    height, width = output_size(render, path.height, path.width)
    if max(height, width) > MAX_RENDER_SIDE:
        raise DataError(f"{render.camera_path}: its render_width and render_height ({path.width}x{path.height}) make "
                        f"frames of {width}x{height} pixels; at most {MAX_RENDER_SIDE} a side (render.width/height's "
                        "bound). Set render.width and render.height, or lower them in the file.")
    return path


def check_scratch(num_frames: int, height: int, width: int, folder) -> None:
    """Refuse, before rendering, a video whose depth frames (3 bytes a pixel: ``write_videos``) cannot fit on the
    disk of ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    needed, free = num_frames * height * width * 3, shutil.disk_usage(folder).free
    if needed > free:
        raise UserError(f"rendering {num_frames} frames of {width}x{height} keeps their depth ({needed / 2**30:.1f} "
                        f"GiB) in {folder} until the depth video is written, and only {free / 2**30:.1f} GiB are free "
                        "there: lower render.num_frames or the output size (render.width/height), or free space.")


def write_videos(render_frame, num_frames: int, height: int, width: int, fps, out_video, out_depth_video) -> float:
    """Render frames ``0 .. num_frames - 1`` (``render_frame(i)``: ``rgb [H, W, 3]``, ``depth [H, W]`` and
    ``opacity [H, W]``, float32) into the video ``out_video`` as they come, and then the depth video
    ``out_depth_video``, whose colour range spans every frame's depth. Only a frame at a time is in memory: the
    depth frames (float16, and opacity as uint8) wait in a scratch file beside ``out_depth_video``, on disk (the
    temporary folder may be memory, as /tmp often is). Returns the seconds spent rendering."""
    out_depth_video = Path(out_depth_video)
    check_scratch(num_frames, height, width, out_depth_video.parent)
    render_s, opaque = 0.0, np.zeros(num_frames, np.int64)
    with tempfile.TemporaryDirectory(dir=out_depth_video.parent, prefix=f".{out_depth_video.name}.") as scratch:
        shape = (num_frames, height, width)
        depth = np.lib.format.open_memmap(Path(scratch) / "depth.npy", mode="w+", dtype=np.float16, shape=shape)
        acc = np.lib.format.open_memmap(Path(scratch) / "opacity.npy", mode="w+", dtype=np.uint8, shape=shape)

        def frames(depth, acc):
            nonlocal render_s
            with Progress(num_frames, "rendering frames", "frames") as progress:
                for i in range(num_frames):
                    start = time.perf_counter()
                    out = render_frame(i)
                    rgb, depth[i], acc[i] = media.to_uint8(out["rgb"]), out["depth"], media.to_uint8(out["opacity"])
                    opaque[i] = np.count_nonzero(acc[i] > 127)
                    render_s += time.perf_counter() - start
                    progress(i + 1)
                    yield rgb

        media.write_mp4(out_video, frames(depth, acc), fps)
        hits = _opaque_depths(depth, acc, opaque)
        lo, hi = media.depth_range(hits, np.ones(len(hits), np.float32))
        media.write_mp4(out_depth_video, (media.colorize_depth(d.astype(np.float32), a.astype(np.float32) / 255.0,
                                                               lo, hi) for d, a in zip(depth, acc)), fps)
        del depth, acc  # the memory maps, before their folder goes
    return render_s


def _opaque_depths(depth, acc, opaque) -> np.ndarray:
    """Every opaque pixel's depth (``acc > 127``) of all frames in order, float32, evenly thinned to what
    ``media.depth_range`` reads of them (a million): the same values it took from all of them at once, read a
    frame at a time (``opaque [F]``: each frame's count)."""
    step, taken, seen = max(1, int(opaque.sum()) // 1_000_000), [], 0
    for d, a, count in zip(depth, acc, opaque):
        if count:
            taken.append(d[a > 127][(-seen) % step::step].astype(np.float32))
        seen += int(count)
    return np.concatenate(taken) if taken else np.zeros(0, np.float32)


def run(cfg: Config, *, in_model, in_rays, out_video, out_depth_video, out_gif) -> dict:
    # A camera path file first: a bad one is refused before the model loads.
    path_file = camera_path_file(cfg.render) if cfg.render.camera_path.endswith(".json") else None
    val, train = ray_files.load(in_rays, "val"), ray_files.load(in_rays, "train")
    progress_frames = trained_folder.progress_frames(in_model)
    # a frame takes the appearance of the training views nearest it
    method = methods.load(in_model, train_part=train, chunk_rays=cfg.render.chunk_rays,
                          jit_compile=cfg.active.jit_compile)
    r = cfg.render
    fps = r.fps
    if r.camera_path.endswith(".json"):
        path = path_file
        poses, fps, why = path.poses, path.fps, f"the camera path {r.camera_path}"
        height, width = output_size(r, path.height, path.width)
        lenses = path.intrinsics * np.array([width / path.width, height / path.height] * 2, np.float32)
    else:  # fitted to the cameras (train's as trained), every frame through the first val camera's lens, scaled
        poses, lenses, height, width, why = fitted_path(r, method, np.concatenate([method.training_poses(),
                                                                                 val.poses]), val)
    check_scratch(len(poses), height, width, Path(out_depth_video).parent)  # before a run is started for nothing
    log.info("rendering %d frames of %dx%d along %s", len(poses), width, height, why)
    with tracking.pipeline_run(cfg, Path(in_model) / trained_folder.RUN_FILE) as run:
        render_s = write_videos(lambda i: method.render(Camera(poses[i], lenses[i], height, width)), len(poses),
                                height, width, fps, out_video, out_depth_video)
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
    lines = [f"Done. Video: {out_video}   model: {in_model}"
             + (f"   views vs prediction: {grid}" if grid.exists() else "")
             + (f"   mesh: {mesh}" if mesh.exists() else "")]
    try:
        e = json.loads(eval_file.read_text())
        lines.append(f"Quality on {e['num_views']} {e['split']} views of {e['width']}x{e['height']}: "
                     f"PSNR {e['psnr']:.2f} dB, "
                     f"SSIM {e['ssim']:.3f}")
    except (OSError, ValueError, KeyError, TypeError):
        pass
    lines.append(f"Compare runs: mlflow ui --backend-store-uri {tracking.tracking_uri()}  (this run: {run_name}); "
                 "dvc exp show --only-changed")
    lines.append("Keep this result: git add dvc.lock params.yaml metrics && git commit  (dvc push to share the data)")
    return "\n".join(lines)

"""Stage ``poses``: every view's camera, posed, in the frame the model trains in.

Reads ``in_scene`` (the download stage's scene folder). Writes ``out_cameras``, a ``cameras.npz``
(``scenes/scene.py``'s ``Cameras``): per view intrinsics ``[N, 4]``, distortion ``[N, 4]`` and a
camera-to-world pose ``[N, 4, 4]`` float32, ``registered [N]`` bool, the sampling bounds
``near``/``far``, ``unbounded``, the source's split and the sparse points.

* A source without poses (photos, a video) goes through structure from motion (``scenes/sfm.py``,
  pycolmap): SIFT features, ``poses.matcher`` matching, incremental mapping, one shared OPENCV camera
  (its distortion is undone by the rays stage); a capture with masks gives features only where its masks
  keep the pixels (a turntable's fixed background would contradict the object's turning). Views that do not
  register are listed and left out; fewer than ``poses.min_registered`` of them, or fewer than ``MIN_VIEWS``
  (3), stops the stage.
* A source with poses passes through, at no cost beyond reading its cameras.

Captures (and the JSON layouts) are then re-centred on the point the cameras look at, turned z-up
and scaled so that the median camera is 4 units out (``camera.normalize_poses``). The bounds:
``data.near``/``data.far`` when set, else the source's (LLFF's, scaled), else half the closest and
1.5 times the farthest camera distance, with ``far`` at 1000 for an unbounded scene.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np

from nerf_pipeline import camera
from nerf_pipeline.config import Config
from nerf_pipeline.runtime import atomic
from nerf_pipeline.runtime.errors import DataError
from nerf_pipeline.runtime.progress import Progress
from nerf_pipeline.scenes.scene import MIN_VIEWS, Cameras, Scene

log = logging.getLogger(__name__)

UNBOUNDED_FAR = 1000.0  # an unbounded scene's far bound: 250 camera distances, sampled in inverse depth


def structure_from_motion(cfg: Config, scene: Scene, work_dir: Path) -> Cameras:
    """The scene's cameras posed by pycolmap; unregistered views get ``registered`` False."""
    import imageio.v3 as iio

    from nerf_pipeline.scenes import sfm

    cameras = scene.cameras
    matcher = cfg.poses.matcher
    if matcher == "auto":
        matcher = "sequential" if cameras.sequence else "exhaustive"
    images_dir = work_dir / "frames"
    images_dir.mkdir()
    paths = []
    # With masks, structure from motion takes features only from the pixels that are kept (sfm.reconstruct)
    mask_paths = None if scene.masks is None else []
    with Progress(scene.num_views, "preparing images for structure from motion", "images") as progress:
        for i, name in enumerate(cameras.names):
            paths.append(images_dir / f"{Path(name).stem}.jpg")
            iio.imwrite(paths[-1], np.asarray(scene.images[i]), quality=95)
            if mask_paths is not None:
                mask_paths.append(images_dir / f"{Path(name).stem}.mask.png")
                iio.imwrite(mask_paths[-1], np.asarray(scene.masks[i]) * np.uint8(255))
            progress(i + 1)
    # (sfm.reconstruct logs the image count and the size it runs at)
    log.info("structure from motion: %s matching (%s), long side at most %d px (poses.max_image_side)", matcher,
             "video frames" if cameras.sequence and cfg.poses.matcher == "auto" else "poses.matcher",
             cfg.poses.max_image_side)
    result = sfm.reconstruct(paths, work_dir / "colmap", matcher, cfg.poses.max_image_side,
                             log=lambda line: log.info("%s", line), mask_paths=mask_paths)
    index = {path.name: i for i, path in enumerate(paths)}
    registered = np.zeros(scene.num_views, bool)
    poses = np.tile(np.eye(4, dtype=np.float32), (scene.num_views, 1, 1))
    for name, c2w in zip(result.names, result.camera_to_world):
        registered[index[name]] = True
        poses[index[name]] = c2w
    fraction = registered.mean()
    left_out = [cameras.names[i] for i in np.flatnonzero(~registered)]
    not_registered = f"Not registered: {', '.join(left_out[:8])}{', …' if len(left_out) > 8 else ''}"
    if fraction < cfg.poses.min_registered:
        raise DataError(f"structure from motion registered only {registered.sum()} of {scene.num_views} images "
                        f"({fraction:.0%}), fewer than poses.min_registered ({cfg.poses.min_registered:.0%}). "
                        f"{not_registered}. To try: {sfm.ADVICE}.")
    # download checked the views found; a fraction of them (poses.min_registered) can still leave too few posed
    if registered.sum() < MIN_VIEWS:
        raise DataError(f"structure from motion registered only {registered.sum()} of {scene.num_views} images, "
                        f"but a scene needs at least {MIN_VIEWS} posed views, 2 to train on and 1 to validate on. "
                        f"{not_registered}. To try: {sfm.ADVICE}.")
    log.info("registered %d of %d images%s; mean reprojection error %.2f px", registered.sum(), scene.num_views,
             f"; left out: {', '.join(left_out[:8])}{', …' if len(left_out) > 8 else ''}" if left_out else "",
             result.stats.get("mean_reprojection_error_px", float("nan")))
    count = scene.num_views
    return cameras.replace(poses=poses, registered=registered,
                           intrinsics=np.broadcast_to(result.intrinsics, (count, 4)).astype(np.float32),
                           distortion=np.broadcast_to(result.distortion, (count, 4)).astype(np.float32),
                           points=result.points.astype(np.float32), point_colors=result.point_colors)


def normalized(cameras: Cameras) -> Cameras:
    """Cameras (and points, and the source's bounds) re-centred, turned z-up and scaled to radius 4."""
    registered = cameras.registered if cameras.registered is not None else np.ones(cameras.num_views, bool)
    poses = np.array(cameras.poses, dtype=np.float64)
    poses[registered], transform = camera.normalize_poses(poses[registered])
    scale, rotation, center = transform["scale"], np.asarray(transform["rotation"]), np.asarray(transform["center"])
    points = None if cameras.points is None else ((cameras.points - center) @ rotation.T * scale).astype(np.float32)
    log.info("poses re-centred on %s, turned z-up and scaled by %.4g", np.round(center, 3).tolist(), scale)
    return cameras.replace(poses=poses.astype(np.float32), points=points,
                           near=None if cameras.near is None else cameras.near * scale,
                           far=None if cameras.far is None else cameras.far * scale)


def bounds(cfg: Config, cameras: Cameras) -> tuple[float, float]:
    """``(near, far)``: data.near/far, else the source's, else derived from the camera distances."""
    registered = cameras.registered if cameras.registered is not None else np.ones(cameras.num_views, bool)
    derived_near, derived_far = camera.bounds_from_cameras(cameras.poses[registered])
    near = cfg.data.near if cfg.data.near is not None else (cameras.near if cameras.near is not None
                                                            else derived_near)
    if cfg.data.far is not None:
        far = cfg.data.far
    elif cameras.unbounded:
        far = UNBOUNDED_FAR
    else:
        far = cameras.far if cameras.far is not None else derived_far
    if not 0 <= near < far:
        raise DataError(f"the sampling bounds are near {near:.4g} and far {far:.4g}; near must be below far. "
                        "Set data.near and data.far.")
    return float(near), float(far)


def run(cfg: Config, *, in_scene, out_cameras) -> Cameras:
    scene = Scene.open(in_scene)
    cameras = scene.cameras
    if cameras.poses is None:
        with tempfile.TemporaryDirectory(prefix="nerf-sfm-") as work_dir:
            cameras = structure_from_motion(cfg, scene, Path(work_dir))
    else:
        log.info("%s has its own poses: passed through", in_scene)
    if cameras.normalize:
        cameras = normalized(cameras)
    near, far = bounds(cfg, cameras)
    cameras = cameras.replace(near=near, far=far, normalize=False)
    atomic.save_npz(out_cameras, **cameras.arrays())
    log.info("wrote %s: %d posed views, near %.3g, far %.4g%s", out_cameras,
             int(cameras.registered.sum()) if cameras.registered is not None else cameras.num_views, near, far,
             ", unbounded" if cameras.unbounded else "")
    return cameras

"""What ``data.source`` names, read (or rendered, or downloaded) into ``Views`` that the download stage writes.

Sources, recognised in this order:

* ``synthetic`` (default): the built-in scene, rendered here (``synthetic.py``); offline.
* ``tiny_nerf``: the Keras example's ``tiny_nerf_data.npz`` from ``data.tiny_nerf_url``, retried on
  transient failures, checked against ``data.tiny_nerf_sha256`` when one is set. With no network it
  fails at once and says which other sources exist; it never falls back to another source by itself.
* a ``.npz`` file in the tiny_nerf layout (``images``, ``poses``, ``focal``; optional ``near``, ``far``).
* a video file (``.mp4``, ``.mov``, …): up to ``data.max_frames`` frames at even spacing, the
  ``data.drop_blurriest`` fraction of them dropped (``frames.py``); no poses (the poses stage).
* a folder (or its ``.json``) with NeRF-synthetic split files or an instant-ngp ``transforms.json``
  (``folders.py``);
* a COLMAP capture: a folder with ``sparse/0/{cameras,images,points3D}.{bin,txt}`` and ``images/``
  (``colmap.py``);
* an LLFF capture: ``poses_bounds.npy`` and ``images/`` (``llff.py``);
* any other folder of photos (``images/`` or the folder itself): no poses (the poses stage).

Captures (COLMAP, LLFF, photos, video) are unbounded: their background reaches far beyond what the
cameras look at. Their poses, and those of the JSON layouts, are re-centred and scaled by the poses
stage; the built-in scene, tiny_nerf and ``.npz`` files are used in their own frame.
"""

from __future__ import annotations

import difflib
import logging
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from nerf_pipeline.config import Config
from nerf_pipeline.errors import DataError
from nerf_pipeline.runtime.atomic import sha256_of
from nerf_pipeline.scenes import colmap, folders, frames, llff, masks, synthetic
from nerf_pipeline.scenes.scene import (MIN_VIEWS, Cameras, Views, check_intrinsics, evenly_spread, read_npz,
                                         scalar)

log = logging.getLogger(__name__)

TINY_NERF_NEAR, TINY_NERF_FAR = 2.0, 6.0  # the Keras example's bounds for tiny_nerf_data.npz
OTHER_SOURCES = ("use 'data.source: synthetic' (the built-in scene, no network needed) or the path "
                 "of a local .npz with images, poses and focal")


def _pinhole(count: int, intrinsics) -> tuple[np.ndarray, np.ndarray]:
    """Per-view ``[count, 4]`` intrinsics (from one shared set) and zero distortion."""
    return np.broadcast_to(np.asarray(intrinsics, np.float64), (count, 4)).copy(), np.zeros((count, 4))


def in_memory_views(images, poses, focal, near, far, source: str, depth=None) -> Views:
    """Views of arrays already in memory (the built-in scene, tiny_nerf and ``.npz`` files): used in their own frame."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise DataError(f"{source}: 'images' must have shape (N, H, W, 3); got {images.shape}.")
    count, height, width = images.shape[:3]
    focal = scalar(focal, "focal", source)
    check_intrinsics(focal, count, height, width, source)  # a positive, finite number of pixels
    intrinsics, distortion = _pinhole(count, [focal, focal, 0.5 * width, 0.5 * height])
    cameras = Cameras(names=[f"view_{i:04d}" for i in range(count)], intrinsics=intrinsics, distortion=distortion,
                      poses=np.asarray(poses), near=scalar(near, "near", source), far=scalar(far, "far", source))
    return Views(count=count, height=height, width=width, read=lambda i: images[i], cameras=cameras, source=source,
                 depth=None if depth is None else (lambda i: depth[i]))


# ----------------------------------------------------------------------------- tiny_nerf


def _is_offline_error(error: Exception) -> bool:
    """Name resolution failed or the network is unreachable: retrying will not help."""
    reason = getattr(error, "reason", error)
    if isinstance(reason, socket.gaierror):
        return True
    return isinstance(reason, OSError) and reason.errno in (101, 113)  # ENETUNREACH, EHOSTUNREACH


def fetch(url: str, destination: Path, retries: int, timeout_s: float) -> None:
    """Download ``url`` to ``destination``, retrying timeouts and server errors with backoff."""
    for attempt in range(1, retries + 1):
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response, open(destination, "wb") as out:
                while block := response.read(1 << 20):
                    out.write(block)
            return
        except urllib.error.HTTPError as e:
            if e.code < 500 or attempt == retries:
                raise DataError(f"downloading {url} failed: HTTP {e.code} {e.reason}. "
                                f"Check 'data.tiny_nerf_url', or {OTHER_SOURCES}.") from None
        except (urllib.error.URLError, OSError) as e:
            if _is_offline_error(e):
                raise DataError(f"cannot reach {url}: {getattr(e, 'reason', e)}. This machine seems to be "
                                f"offline; {OTHER_SOURCES}.") from None
            if attempt == retries:
                raise DataError(f"downloading {url} failed after {retries} attempts: {getattr(e, 'reason', e)}. "
                                f"Try again later, or {OTHER_SOURCES}.") from None
        wait_s = 2.0 ** (attempt - 1)
        log.warning("download attempt %d of %d failed; retrying in %.0f s", attempt, retries, wait_s)
        time.sleep(wait_s)


def read_tiny_nerf_npz(path) -> Views:
    """Views of an ``.npz`` in the layout of ``tiny_nerf_data.npz``: ``images`` [N, H, W, 3] (float in [0, 1]
    or uint8), ``poses`` [N, 4, 4], ``focal`` []; optional ``near`` and ``far`` (else tiny_nerf's 2 and 6)."""
    arrays = read_npz(path, required=("images", "poses", "focal"))
    return in_memory_views(arrays["images"], arrays["poses"], arrays["focal"], arrays.get("near", TINY_NERF_NEAR),
                           arrays.get("far", TINY_NERF_FAR), str(path), arrays.get("depth"))


def download_tiny_nerf(cfg: Config, scratch: Path) -> Views:
    data = cfg.data
    path = scratch / "tiny_nerf_data.npz"
    log.info("downloading %s", data.tiny_nerf_url)
    fetch(data.tiny_nerf_url, path, data.download_retries, data.download_timeout_s)
    digest = sha256_of(path)
    if data.tiny_nerf_sha256 and digest != data.tiny_nerf_sha256.lower():
        raise DataError(f"{data.tiny_nerf_url}: sha256 {digest} does not match the pinned "
                        f"'data.tiny_nerf_sha256' {data.tiny_nerf_sha256}; the file is corrupt or was changed.")
    if not data.tiny_nerf_sha256:
        log.warning("data.tiny_nerf_sha256 is not set: downloaded file has sha256 %s; pin it in params.yaml "
                    "to check future downloads", digest)
    return read_tiny_nerf_npz(path)


# ----------------------------------------------------------------------------- captures


def read_colmap(folder: Path, model_folder: Path, max_views, *, allow_outside: bool = False) -> Views:
    """A COLMAP sparse model and the images it names, in ``folder/images`` (not outside ``folder`` unless
    ``allow_outside``: ``folders.capture_file``)."""
    model = colmap.read_model(model_folder)
    images = [model.images[i] for i in evenly_spread(len(model.images), max_views)]
    images_file = model_folder / ("images.bin" if (model_folder / "cameras.bin").is_file() else "images.txt")
    paths = [folders.capture_file(folder, image.name, f"{images_file}: image {image.image_id}'s name", allow_outside,
                                  under="images") for image in images]
    missing = [p for p in paths if not p.is_file()]
    if len(missing) == len(paths):
        raise DataError(f"{model_folder}: the model's image names ({images[0].name}, …) match no file in "
                        f"{folder / 'images'}; put the images the model was made from there.")
    if missing:
        raise DataError(f"{model_folder}: {len(missing)} of the model's {len(paths)} images are not in "
                        f"{folder / 'images'}, e.g. {missing[0].name}.")
    sizes = {(model.cameras[image.camera_id].height, model.cameras[image.camera_id].width) for image in images}
    if len(sizes) > 1:
        raise DataError(f"{model_folder}: its cameras have different image sizes {sorted(sizes)}; one capture "
                        "must come from one camera.")
    try:
        intrinsics, distortion = zip(*(colmap.intrinsics(model.cameras[image.camera_id]) for image in images))
    except DataError as e:
        raise DataError(f"{model_folder}: {e}") from None
    (height, width), = sizes
    cameras = Cameras(names=[image.name for image in images], intrinsics=np.asarray(intrinsics),
                      distortion=np.asarray(distortion),
                      poses=np.stack([colmap.camera_to_world(image) for image in images]), unbounded=True,
                      normalize=True, points=model.points.astype(np.float32), point_colors=model.colors)
    log.info("COLMAP capture %s: %d images (of %d in the model), %d points", folder, len(images),
             len(model.images), len(model.points))
    return Views(count=len(images), height=height, width=width, read=_photo_reader(paths, (height, width)),
                 cameras=cameras, source=str(model_folder), mask=masks.folder_masks(folder, paths, height, width))


def read_llff(folder: Path, max_views) -> Views:
    """An LLFF capture: ``poses_bounds.npy`` and ``images/``; its near/far bounds are kept."""
    paths = llff.image_files(folder)
    c2w, hwf, bounds = llff.read_poses_bounds(folder / "poses_bounds.npy", len(paths))
    keep = evenly_spread(len(paths), max_views)
    paths, c2w, hwf, bounds = [paths[i] for i in keep], c2w[keep], hwf[keep], bounds[keep]
    height, width = frames.read_photo(paths[0]).shape[:2]
    # hwf describes the images the poses were made from; images/ may hold a resized copy.
    focal = hwf[:, 2] * width / hwf[:, 1]
    intrinsics = np.stack([focal, focal, np.full_like(focal, 0.5 * width), np.full_like(focal, 0.5 * height)], -1)
    check_intrinsics(intrinsics, len(paths), height, width, str(folder / "poses_bounds.npy"),
                     views=[f"row {row} (image {path.name})" for row, path in zip(keep, paths)])
    cameras = Cameras(names=[p.name for p in paths], intrinsics=intrinsics, distortion=np.zeros((len(paths), 4)),
                      poses=c2w, near=float(bounds[:, 0].min()), far=float(bounds[:, 1].max()), unbounded=True,
                      normalize=True)
    log.info("LLFF capture %s: %d images, depth bounds %.3g to %.3g", folder, len(paths), cameras.near, cameras.far)
    return Views(count=len(paths), height=height, width=width, read=_photo_reader(paths, (height, width)),
                 cameras=cameras, source=str(folder), mask=masks.folder_masks(folder, paths, height, width))


def _photo_reader(paths: list[Path], size: tuple[int, int]):
    def read(i: int) -> np.ndarray:
        image = frames.read_photo(paths[i])
        if image.shape[:2] != size:
            raise DataError(f"{paths[i]}: is {image.shape[1]}x{image.shape[0]} but the capture's images are "
                            f"{size[1]}x{size[0]}; one capture must come from one camera.")
        return image
    return read


def _unposed(names: list[str], height: int, width: int, sequence: bool) -> Cameras:
    """Cameras still to be posed: a guess of the focal length (the poses stage estimates the real one)."""
    intrinsics, distortion = _pinhole(len(names), [1.2 * max(height, width)] * 2 + [0.5 * width, 0.5 * height])
    return Cameras(names=names, intrinsics=intrinsics, distortion=distortion, unbounded=True, normalize=True,
                   sequence=sequence)


def read_photos(folder: Path, max_views) -> Views:
    """A folder of photos without poses (``images/`` or the folder itself), all from one camera."""
    import imageio.v3 as iio

    paths = frames.photo_files(folder)
    paths = [paths[i] for i in evenly_spread(len(paths), max_views)]
    sizes = {}
    for path in paths:
        try:
            sizes[path.name] = tuple(iio.improps(path).shape[:2])
        except Exception:  # unreadable: read_photo names it with the reason
            frames.read_photo(path)
    height, width = frames.check_one_camera(sizes, folder)
    log.info("photos in %s: %d of %dx%d, no poses (the poses stage computes them)", folder, len(paths), width, height)
    return Views(count=len(paths), height=height, width=width, read=_photo_reader(paths, (height, width)),
                 cameras=_unposed([p.name for p in paths], height, width, sequence=False), source=str(folder),
                 mask=masks.folder_masks(folder, paths, height, width))


def read_video(path: Path, max_frames: int, drop_blurriest: float) -> Views:
    """Frames of a video at even spacing, the blurriest dropped; no poses. Streamed: each frame is
    decoded when it is read (``frames.VideoFrames``)."""
    video = frames.select_video_frames(path, max_frames, drop_blurriest)
    stats = video.stats
    log.info("%s: %d frames in the video, %d taken at even spacing, %d blurriest dropped, %d kept", path,
             stats["frames_in_video"], stats["candidates"], stats["dropped_blurry"], stats["kept"])
    return Views(count=len(video.indices), height=video.height, width=video.width, read=video.reader(),
                 cameras=_unposed(video.names, video.height, video.width, sequence=True), source=str(path))


# ----------------------------------------------------------------------------- dispatch


def read_views(cfg: Config, scratch: Path) -> Views:
    """The views ``cfg.data.source`` names (``scratch``: a folder for downloads), at least ``MIN_VIEWS`` of
    them to train and validate on. Raises ``DataError``."""
    views = _read_source(cfg, scratch)
    check_enough_views(views, cfg)
    return views


def check_enough_views(views: Views, cfg: Config) -> None:
    """Refuse a source with fewer than ``MIN_VIEWS`` views outside its own test split: however it is
    posed and split, at least 2 must train and 1 validate (one view to train on is no 3D scene)."""
    test = len((views.cameras.split or {}).get("test", []))
    usable = views.count - test
    if usable >= MIN_VIEWS:
        return
    found = f"{usable} view{'' if usable == 1 else 's'}" + (" outside its test split" if test else "")
    limit_key = "data.max_frames" if frames.is_video(cfg.data.source) else "data.max_views"
    limit = cfg.data.max_frames if limit_key == "data.max_frames" else cfg.data.max_views
    if limit is not None and limit < MIN_VIEWS:
        fix = f"'{limit_key}' is {limit}: set it to {MIN_VIEWS} or more"
    else:
        fix = "add views of the scene (more photos, a longer video)"
    raise DataError(f"{views.source}: {found}, but a scene needs at least {MIN_VIEWS}, 2 to train on and 1 to "
                    f"validate on; {fix}.")


def _read_source(cfg: Config, scratch: Path) -> Views:
    data = cfg.data
    if data.source == "synthetic":
        s = cfg.synthetic
        log.info("rendering the built-in scene: %d views of %d px", s.num_views, s.image_size)
        out = synthetic.render_scene(num_views=s.num_views, image_size=s.image_size, seed=s.seed,
                                     supersample=s.supersample)
        return in_memory_views(out["images"], out["poses"], out["focal"], out["near"], out["far"],
                               "synthetic scene", out["depth"])
    if data.source == "tiny_nerf":
        return download_tiny_nerf(cfg, scratch)
    path = Path(data.source)
    if path.suffix == ".npz":
        return read_tiny_nerf_npz(path)
    if not path.exists():
        close = difflib.get_close_matches(data.source, ["synthetic", "tiny_nerf"], n=1, cutoff=0.6)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        what = "file" if path.suffix else "folder"
        raise DataError(f"params.yaml: 'data.source' is '{data.source}': no such {what}. It must be 'synthetic', "
                        f"'tiny_nerf', or the path of an .npz file, a video or a folder.{hint}")
    if path.is_file() and frames.is_video(path):
        return read_video(path, data.max_frames, data.drop_blurriest)
    layout = folders.find_layout(data.source)
    if layout is not None:
        kind, found = layout
        reader = folders.read_blender if kind == "blender" else folders.read_transforms
        return reader(found, data.background, data.max_views, allow_outside=data.allow_paths_outside)
    if path.is_dir():
        model_folder = colmap.find_model(path)
        if model_folder is not None:
            return read_colmap(path, model_folder, data.max_views, allow_outside=data.allow_paths_outside)
        if (path / "poses_bounds.npy").is_file():
            return read_llff(path, data.max_views)
        return read_photos(path, data.max_views)
    raise DataError(f"params.yaml: 'data.source' is '{data.source}', which is neither 'synthetic', 'tiny_nerf', "
                    "an .npz file, a video, a transforms .json nor a folder.")

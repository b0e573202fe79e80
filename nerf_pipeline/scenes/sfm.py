"""Camera poses and intrinsics from plain photos or video frames: structure from motion with pycolmap.

``reconstruct`` runs COLMAP's pipeline through pycolmap (4.x), on the CPU:

1. copies of the images, their long side at most ``max_image_side`` pixels, in ``work_dir/images``
   (same file names); SIFT features of each, into ``work_dir/database.db``; with masks, none where
   a mask is dark (``work_dir/masks/<image name>.png``, resized with the images, as COLMAP reads them);
2. matching: ``sequential`` (video frames: each frame with its next ten, and with those 16, 32, 64, …
   frames on; no loop detection, which would need a vocabulary tree file) or ``exhaustive`` (every
   pair: small photo sets);
3. incremental mapping into ``work_dir/sparse``; of several disconnected models, the one with
   the most registered images is kept.

All images share ONE camera of COLMAP's model OPENCV (fx, fy, cx, cy, k1, k2, p1, p2), so they
must all have the same size. Conventions of the returned ``Reconstruction``:

* ``camera_to_world`` [R, 4, 4] float64 is in this project's OpenGL convention (``camera.py``:
  columns right, up, back; the camera looks down -z). COLMAP gives world-to-camera in OpenCV
  axes (x right, y down, z forward): it is inverted and its y and z axes negated.
* ``intrinsics`` [4] float64 ``(fx, fy, cx, cy)`` are in pixels of the images as given (full
  resolution). COLMAP, like ``camera.py``, puts the centre of pixel ``(row, col)`` at
  ``(col + 0.5, row + 0.5)``, with 0 at the image's outer edge; a resize by ``s`` maps that
  continuous coordinate ``u`` to ``s * u`` exactly, so ``fx, cx`` (and ``fy, cy``) are divided
  by the resize factor of their axis with no half-pixel correction.
* ``distortion`` [4] float64 is OpenCV's ``(k1, k2, p1, p2)``; it acts on normalised
  coordinates, so it does not change with the resize.
* ``points`` [P, 3] float64 and ``point_colors`` [P, 3] uint8: the sparse 3D points, in the same
  (arbitrary) world frame, scale and origin as the cameras.

Whether enough images registered is the caller's decision (``len(names) / len(image_paths)``).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nerf_pipeline.runtime.errors import DataError

MATCHERS = ("sequential", "exhaustive")
CAMERA_MODEL = "OPENCV"  # fx, fy, cx, cy, k1, k2, p1, p2
SEQUENTIAL_OVERLAP = 10  # each frame is matched with this many following frames
RANDOM_SEED = 0  # COLMAP seeds RANSAC and the mapper from the clock; fixed, re-runs agree (up to thread timing)
OPENCV_TO_OPENGL = np.diag([1.0, -1.0, -1.0])  # flips camera y (down -> up) and z (forward -> back)
ADVICE = ("take photos with more overlap (each scene point in three or more of them), use sharper frames, "
          "try matcher 'exhaustive', or a larger max_image_side")


@dataclass(frozen=True)
class Reconstruction:
    """The cameras and sparse points of one COLMAP model (shapes and conventions: module docstring)."""

    names: list[str]  # file names of the registered images, in the input order
    camera_to_world: np.ndarray  # [R, 4, 4] float64, OpenGL axes, row i is names[i]
    intrinsics: np.ndarray  # [4] float64 (fx, fy, cx, cy) at full resolution
    distortion: np.ndarray  # [4] float64 OpenCV (k1, k2, p1, p2)
    points: np.ndarray  # [P, 3] float64
    point_colors: np.ndarray  # [P, 3] uint8
    unregistered: list[str] = field(default_factory=list)  # file names of the images left out
    # counts of features, matched pairs, registered images and 3D points; the mean reprojection error in
    # pixels of the copies COLMAP ran on; the matcher; seconds per step
    stats: dict = field(default_factory=dict)


def _copy_resized(image_paths: list[Path], folder: Path, max_image_side: int) -> tuple[tuple[int, int], np.ndarray]:
    """Copy the images into ``folder``, shrunk so that their long side is at most ``max_image_side``.

    Returns the full size ``(width, height)`` and the per-axis resize factors ``[sx, sy]``.
    """
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for path in image_paths:
        try:
            with Image.open(path) as image:
                sizes[path] = image.size
                scale = min(1.0, max_image_side / max(image.size))
                if scale == 1.0:  # a byte copy: no re-encoding loss
                    shutil.copyfile(path, folder / path.name)
                    continue
                small = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
                # PIL resamples with pixel centres at +0.5, as COLMAP and camera.py count them
                image.convert("RGB").resize(small, Image.Resampling.LANCZOS, reducing_gap=3.0).save(
                    folder / path.name, quality=95)
        except FileNotFoundError:
            raise DataError(f"{path}: image not found.") from None
        except OSError as e:
            raise DataError(f"{path}: cannot read or copy it ({e}); it may be truncated or corrupt.") from None
    if len(set(sizes.values())) > 1:
        raise DataError(f"the images have different sizes {sorted(set(sizes.values()))}; structure from motion "
                        "here fits one camera to all of them, so they must come from one camera at one resolution.")
    width, height = next(iter(sizes.values()))
    with Image.open(folder / image_paths[0].name) as small:
        return (width, height), np.array([small.width / width, small.height / height])


def _copy_masks(mask_paths: list[Path], image_paths: list[Path], image_dir: Path, folder: Path) -> None:
    """Each image's mask as COLMAP's feature extraction reads it: ``folder/<image name>.png``, the size of the
    image's copy in ``image_dir`` (a pixel is kept where the mask is at least half bright), 0 where ignored."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for mask_path, image_path in zip(mask_paths, image_paths):
        with Image.open(image_path) as image, Image.open(image_dir / image_path.name) as copy:
            size, small = image.size, copy.size
        try:
            with Image.open(mask_path) as mask:
                if mask.size != size:
                    raise DataError(f"{mask_path}: the mask is {mask.size[0]}x{mask.size[1]} but its image "
                                    f"{image_path.name} is {size[0]}x{size[1]}.")
                # nearest, as the masks are read for training: a resampled edge would only be thresholded again
                kept = np.asarray(mask.convert("L").resize(small, Image.Resampling.NEAREST)) >= 128
        except FileNotFoundError:
            raise DataError(f"{mask_path}: mask not found.") from None
        except OSError as e:
            raise DataError(f"{mask_path}: cannot read the mask ({e}).") from None
        Image.fromarray((kept * 255).astype(np.uint8)).save(folder / f"{image_path.name}.png")


def _to_opengl(cam_from_world: np.ndarray) -> np.ndarray:
    """World-to-camera [3, 4] in OpenCV axes -> camera-to-world [4, 4] in OpenGL axes."""
    rotation, translation = cam_from_world[:, :3], cam_from_world[:, 3]
    c2w = np.eye(4)
    c2w[:3, :3] = rotation.T @ OPENCV_TO_OPENGL
    c2w[:3, 3] = -rotation.T @ translation  # the camera centre
    return c2w


def _extract_features(database: Path, image_dir: Path, names: list[str], mask_dir: Path | None = None) -> int:
    """SIFT keypoints of every image into ``database``, all images on one OPENCV camera; their count. With
    ``mask_dir`` (``<image name>.png`` per image, 0 where ignored), none where a mask is 0."""
    import pycolmap

    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = CAMERA_MODEL
    if mask_dir is not None:
        # A turntable's static background and its turning object disagree on the camera motion: features on what
        # the masks leave out registered 5 of 69 photos (issue 30).
        reader.mask_path = str(mask_dir)
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.use_gpu = False
    # The default, -1, also means every core, but COLMAP then warns on the console about memory per
    # thread; the images are at most poses.max_image_side pixels long, which a thread's SIFT handles.
    extraction.num_threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        # An image's database id is the order in which it was added, and incremental mapping depends on the ids
        # (which pair it starts from, which image it tries next). extract_features adds each image when a thread
        # has read it, in an order that changes from run to run: a 13-frame clip then registered 13, 7 or 6 frames
        # by chance. Added first, in the frames' order, the images keep ids that every run agrees on.
        pycolmap.Database.open(database).close()  # import_images needs the file to exist
        pycolmap.import_images(database, image_dir, camera_mode=pycolmap.CameraMode.SINGLE, image_names=names,
                               options=reader)
        pycolmap.extract_features(database, image_dir, image_names=names, camera_mode=pycolmap.CameraMode.SINGLE,
                                  reader_options=reader, extraction_options=extraction, device=pycolmap.Device.cpu)
        with pycolmap.Database.open(database) as db:
            return db.num_keypoints()
    except (RuntimeError, ValueError) as e:
        raise DataError(f"COLMAP could not extract features from the images in {image_dir} ({e}).") from None


def _match(database: Path, matcher: str) -> tuple[int, int]:
    """Match features between image pairs and verify them geometrically: ``(pairs verified, pairs tried)``."""
    import pycolmap

    matching = pycolmap.FeatureMatchingOptions()
    matching.use_gpu = False
    verification = pycolmap.TwoViewGeometryOptions()
    verification.ransac.random_seed = RANDOM_SEED
    try:
        if matcher == "sequential":
            pairing = pycolmap.SequentialPairingOptions()
            pairing.overlap = SEQUENTIAL_OVERLAP
            pairing.loop_detection = False  # it needs a vocabulary tree file, and there is no network
            # COLMAP 3 paired each frame with its next `overlap` frames and, with quadratic_overlap, also with
            # those 2^k frames on; COLMAP 4 pairs it with one or the other, and its default (quadratic) leaves
            # frame i with i+1, i+2, i+4, i+8 only: too few pairs for a short clip to hold together in one
            # model. Two passes give both; the second matches only the pairs the first did not.
            for quadratic in (False, True):
                pairing.quadratic_overlap = quadratic
                pycolmap.match_sequential(database, matching_options=matching, pairing_options=pairing,
                                          verification_options=verification, device=pycolmap.Device.cpu)
        else:
            pycolmap.match_exhaustive(database, matching_options=matching, verification_options=verification,
                                      device=pycolmap.Device.cpu)
        with pycolmap.Database.open(database) as db:
            _, inliers = db.read_two_view_geometry_num_inliers()  # every pair tried; 0 where rejected
    except (RuntimeError, ValueError) as e:
        raise DataError(f"COLMAP's {matcher} matching failed ({e}).") from None
    return int(np.count_nonzero(np.asarray(inliers) > 0)), len(inliers)


def reconstruct(image_paths: list[Path], work_dir: Path, matcher: str, max_image_side: int,
                log=print, mask_paths: list[Path] | None = None) -> Reconstruction:
    """Camera poses, shared intrinsics and sparse points of ``image_paths`` (full-resolution photos).

    ``matcher`` is ``"sequential"`` (frames in order) or ``"exhaustive"``. ``work_dir`` receives the
    resized copies (``images/``), COLMAP's ``database.db`` and models (``sparse/``); a database left
    there by an earlier run is replaced. ``mask_paths``, one per image at its size: no features are taken
    where a mask is darker than half (copies in ``masks/``). ``log`` gets one line per step. Raises
    ``DataError`` when COLMAP finds no features, no matching pairs or no model.
    """
    if matcher not in MATCHERS:
        raise DataError(f"matcher is {matcher!r}; expected one of {', '.join(MATCHERS)}.")
    image_paths = [Path(p) for p in image_paths]
    names = [p.name for p in image_paths]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise DataError(f"several images are named {repeated[0]}; COLMAP identifies images by file name, "
                        "so give each a name of its own.")
    if len(image_paths) < 2:
        raise DataError(f"structure from motion needs at least two overlapping images; got {len(image_paths)}.")
    if mask_paths is not None and len(mask_paths) != len(image_paths):
        raise ValueError(f"{len(mask_paths)} masks for {len(image_paths)} images")
    if max_image_side < 16:
        raise DataError(f"max_image_side is {max_image_side}; it must be a number of pixels (1600 suits most photos).")
    import pycolmap  # here, not at the top: the rest of the pipeline runs without it

    work_dir = Path(work_dir)
    image_dir, database, sparse = work_dir / "images", work_dir / "database.db", work_dir / "sparse"
    work_dir.mkdir(parents=True, exist_ok=True)
    database.unlink(missing_ok=True)  # features of an earlier run would be mixed in
    shutil.rmtree(sparse, ignore_errors=True)
    mask_dir = None if mask_paths is None else work_dir / "masks"
    if mask_dir is not None:
        shutil.rmtree(mask_dir, ignore_errors=True)
    sparse.mkdir()
    # COLMAP's own log prints many lines per image; keep its warnings and errors only, on stderr: by
    # default glog also writes them to log files in $TMPDIR, which nothing removes, on every run
    log_level, pycolmap.logging.minloglevel = pycolmap.logging.minloglevel, max(pycolmap.logging.minloglevel, 1)
    to_stderr, pycolmap.logging.logtostderr = pycolmap.logging.logtostderr, True
    seconds, clock = {}, time.perf_counter()
    try:
        (width, height), resize = _copy_resized(image_paths, image_dir, max_image_side)
        seconds["resize"], clock = time.perf_counter() - clock, time.perf_counter()
        log(f"structure from motion on {len(names)} images of {width}x{height}, "
            f"run at {round(width * resize[0])}x{round(height * resize[1])}")

        if mask_dir is not None:
            _copy_masks([Path(p) for p in mask_paths], image_paths, image_dir, mask_dir)
        num_features = _extract_features(database, image_dir, names, mask_dir)
        seconds["features"], clock = time.perf_counter() - clock, time.perf_counter()
        log(f"features: {num_features} SIFT keypoints extracted ({num_features / len(names):.0f} per image)"
            f"{', only where the masks keep the pixels' if mask_dir is not None else ''}")
        if num_features == 0:
            raise DataError(f"SIFT found no features in any of the {len(names)} images: they look blank or "
                            "blurred; use sharp, textured photos, or a larger max_image_side.")

        num_pairs, num_tried = _match(database, matcher)
        seconds["matching"], clock = time.perf_counter() - clock, time.perf_counter()
        log(f"matching ({matcher}): {num_pairs} of {num_tried} image pairs tried matched and verified")
        if num_pairs == 0:
            raise DataError(f"no two of the {len(names)} images share enough matching features "
                            f"({num_features} features in all) for structure from motion; {ADVICE}.")

        try:
            mapping = pycolmap.IncrementalPipelineOptions()
            mapping.random_seed = RANDOM_SEED
            models = pycolmap.incremental_mapping(database, image_dir, sparse, options=mapping)
        except (RuntimeError, ValueError) as e:
            raise DataError(f"COLMAP's incremental mapping failed ({e}); {ADVICE}.") from None
        model = max(models.values(), key=lambda m: m.num_reg_images(), default=None)  # several: the largest
        seconds["mapping"] = time.perf_counter() - clock
    finally:
        pycolmap.logging.minloglevel, pycolmap.logging.logtostderr = log_level, to_stderr
    if model is None or model.num_reg_images() < 2:
        raise DataError(f"COLMAP matched {num_pairs} image pairs but could not build a 3D model from them "
                        f"(no pair with enough matches and parallax to start from); {ADVICE}.")

    by_name = {image.name: image for image in model.images.values() if image.has_pose}
    registered = [name for name in names if name in by_name]
    log(f"mapping: {len(registered)} of {len(names)} images registered (largest of {len(models)} model(s))")
    camera = next(iter(model.cameras.values()))  # single camera mode: the only one
    fx, fy, cx, cy, k1, k2, p1, p2 = np.asarray(camera.params, dtype=np.float64)
    sx, sy = resize
    points = list(model.points3D.values())
    return Reconstruction(
        names=registered,
        camera_to_world=np.stack([_to_opengl(by_name[name].cam_from_world().matrix()) for name in registered]),
        intrinsics=np.array([fx / sx, fy / sy, cx / sx, cy / sy]),
        distortion=np.array([k1, k2, p1, p2]),
        points=np.array([p.xyz for p in points], dtype=np.float64).reshape(-1, 3),
        point_colors=np.array([p.color for p in points], dtype=np.uint8).reshape(-1, 3),
        unregistered=[name for name in names if name not in by_name],
        stats={"num_images": len(names), "num_features": int(num_features), "num_matched_pairs": num_pairs,
               "num_registered": len(registered), "num_models": len(models), "num_points": len(points),
               "mean_reprojection_error_px": float(model.compute_mean_reprojection_error()), "matcher": matcher,
               "masked": mask_dir is not None,
               "seconds": {step: round(value, 3) for step, value in seconds.items()}},
    )

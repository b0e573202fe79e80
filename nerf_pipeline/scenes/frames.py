"""Captures without poses, a folder of photos or a phone video, read as frames for structure from motion.

* **Photos**: the ``.jpg``/``.jpeg``/``.png`` files of ``folder/images/`` if it exists, else of
  ``folder``, sorted by name. Pixels are read as stored (EXIF orientation is not applied). All must
  share one size: one camera, one orientation.
* **Videos** (``.mp4 .mov .m4v .avi .mkv .webm``, decoded by ffmpeg through imageio):
  ``max_frames`` candidates evenly spread over the whole video, minus the blurriest fraction. The
  video is streamed: one pass scores the candidates and keeps only the scores, a second decodes
  the kept frames as they are read, so no more than a frame or two is in memory at once.
  Phone videos are full of motion blur when the hand moves fast, and a blurred frame gives
  structure from motion few, badly placed feature matches and the NeRF a smeared view to fit,
  so the candidates with the least sharpness (variance of the Laplacian) are dropped.

Frames are ``[H, W, 3]`` uint8 RGB arrays, all of one size; a video's frames are named
``frame_00042.png`` after their index in the video, photos keep their file names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from nerf_pipeline.runtime.errors import DataError
from nerf_pipeline.scenes.scene import MIN_VIEWS, evenly_spread

PHOTO_EXTENSIONS = (".jpg", ".jpeg", ".png")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".m4v", ".avi", ".mkv", ".webm")
SHARPNESS_LONG_SIDE = 512
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # Rec. 601, as OpenCV's grey conversion


def is_video(path) -> bool:
    """Whether ``path`` names a video, by its extension (any case)."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def _reason(error: Exception, last_line: bool = False) -> str:
    """One line of an error's text: ffmpeg puts its own diagnosis on the last line of a long log."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines[-1] if last_line else lines[0]) if lines else type(error).__name__


# ----------------------------------------------------------------------------- photos


def photo_files(folder) -> list[Path]:
    """The photos of ``folder/images/`` if that subfolder exists, else of ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found (expected a folder of photos).")
    where = folder / "images" if (folder / "images").is_dir() else folder
    # Files starting with "." are skipped: copying from a Mac to a USB stick leaves "._IMG_0001.jpg"
    # metadata files next to the photos, which are no images.
    photos = sorted((path for path in where.iterdir() if path.is_file() and not path.name.startswith(".")
                     and path.suffix.lower() in PHOTO_EXTENSIONS), key=lambda path: path.name)
    if not photos:  # (too few photos are refused with every other source's, in sources.read_views)
        raise DataError(f"{folder}: found no photos ({', '.join(PHOTO_EXTENSIONS)}) in {where}.")
    return photos


def read_photo(path) -> np.ndarray:
    """RGB uint8 ``[H, W, 3]``: grey repeated to 3 channels, alpha dropped, 16-bit scaled to 8-bit."""
    import imageio.v3 as iio

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: photo not found.")
    try:
        if path.stat().st_size == 0:
            raise OSError("the file is empty, 0 bytes")
        image = np.asarray(iio.imread(path, index=0))  # index 0: the main picture of a multi-picture JPEG
    except Exception as e:  # imageio and Pillow raise many types for unreadable files
        raise DataError(f"{path}: cannot read it as an image ({_reason(e)}); it may be truncated or corrupt.") from None
    if image.dtype == np.uint16:
        image = ((image.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    elif image.dtype == np.bool_:  # 1-bit PNG
        image = image.astype(np.uint8) * 255
    elif image.dtype != np.uint8:
        raise DataError(f"{path}: the photo has pixels of type {image.dtype}; expected 8- or 16-bit.")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 2, 3, 4):
        raise DataError(f"{path}: the photo has shape {image.shape}; expected grey, RGB or RGBA.")
    if image.shape[-1] <= 2:  # grey, or grey and alpha
        return np.repeat(image[..., :1], 3, axis=-1)
    return np.ascontiguousarray(image[..., :3])


def check_one_camera(sizes: dict[str, tuple[int, int]], source) -> tuple[int, int]:
    """The one ``(height, width)`` shared by all photos (``sizes``: photo name -> its ``(height, width)``)."""
    if not sizes:
        raise DataError(f"{source}: no photos to check.")
    names_by_size: dict[tuple[int, int], list[str]] = {}
    for name in sorted(sizes):
        names_by_size.setdefault(tuple(sizes[name]), []).append(name)
    if len(names_by_size) == 1:
        return next(iter(names_by_size))
    found = ", ".join(f"{width}x{height} ({len(names)} photo{'' if len(names) == 1 else 's'}, e.g. {names[0]})"
                      for (height, width), names
                      in sorted(names_by_size.items(), key=lambda item: (-len(item[1]), item[0])))
    raise DataError(f"{source}: the photos come in {len(names_by_size)} sizes, {found}, but one capture must come "
                    "from one camera; use photos from one camera, all taken in one orientation (portrait and "
                    "landscape photos of the same phone differ in size).")


# ----------------------------------------------------------------------------- blur


def sharpness(image: np.ndarray) -> float:
    """Variance of the Laplacian of the grey image (``[H, W, 3]`` or ``[H, W]``, any dtype, 0-255 scale):
    large for sharp images, small for blurred ones."""
    image = np.asarray(image)
    weights = LUMA if image.ndim == 3 else np.ones(1, np.float32)
    image = image[..., :3] if image.ndim == 3 else image[..., None]
    # Measured at most 512 px on the long side (blocks averaged): a 4K frame has 16 times the pixels,
    # and blur that spoils a frame for structure from motion is still plain at that size, so ranking
    # frames costs ~30 ms a 4K frame instead of a large share of the decoding time. Rows of a block are
    # summed first, then one matrix product sums its columns and channels into grey (a mean over two
    # strided axes at once is 20 times slower).
    factor = math.ceil(max(image.shape[:2]) / SHARPNESS_LONG_SIDE)
    height, width, channels = image.shape[0] // factor, image.shape[1] // factor, image.shape[2]
    rows = image[:height * factor, :width * factor].reshape(height, factor, width * factor * channels)
    rows = rows.sum(axis=1, dtype=np.float32).reshape(height, width, factor * channels)
    grey = rows @ (np.tile(weights, factor) / factor**2)
    laplacian = (grey[:-2, 1:-1] + grey[2:, 1:-1] + grey[1:-1, :-2] + grey[1:-1, 2:]
                 - 4.0 * grey[1:-1, 1:-1])  # the kernel [[0, 1, 0], [1, -4, 1], [0, 1, 0]]
    return float(laplacian.var())


# ----------------------------------------------------------------------------- videos


def _undecodable(path, reason: str) -> DataError:
    return DataError(f"{path}: cannot decode it as a video ({reason}).")


def _open_video(path: Path):
    import imageio.v2 as iio

    try:
        return iio.get_reader(path, format="FFMPEG")
    except Exception as e:  # imageio-ffmpeg raises OSError or RuntimeError with ffmpeg's log
        raise _undecodable(path, _reason(e, last_line=True)) from None


def _decoded(path: Path, reader, count: int) -> Iterator[tuple[int, np.ndarray]]:
    """``(index, frame)`` of the first ``count`` frames, decoded in order; stops early where ffmpeg
    delivers fewer than it counted."""
    decoded = iter(reader)
    for index in range(count):
        try:
            frame = next(decoded)
        except StopIteration:
            return
        except Exception as e:
            raise _undecodable(path, _reason(e, last_line=True)) from None
        yield index, frame
        del frame  # not held while the next one decodes


@dataclass(frozen=True)
class VideoFrames:
    """The frames chosen from a video, not yet decoded: ``frames()`` decodes them, one at a time."""

    path: Path
    indices: list  # [K] int, increasing: each kept frame's index in the video
    height: int
    width: int
    stats: dict  # {"frames_in_video", "candidates", "dropped_blurry", "kept", "fps"}

    @property
    def names(self) -> list[str]:
        """``frame_00042.png`` for each kept frame, after its index in the video."""
        return [f"frame_{index:05d}.png" for index in self.indices]

    def frames(self) -> Iterator[np.ndarray]:
        """The kept frames ``[H, W, 3]`` uint8 in time order, decoded from the start of the video; the
        generator holds no frame but the one it yields."""
        wanted, last = set(self.indices), self.indices[-1]
        with _open_video(self.path) as reader:
            for index, frame in _decoded(self.path, reader, last + 1):
                if index in wanted:
                    yield frame
                del frame
                if index == last:
                    return
        raise DataError(f"{self.path}: the video ended before frame {last}, which an earlier pass decoded; "
                        "the file changed while it was read.")

    def reader(self):
        """``read(k) -> [H, W, 3]`` uint8, the ``k``-th kept frame, for views read in order (as the download
        stage writes them): one decoding pass, restarted only when ``k`` goes back."""
        state = {"frames": None, "next": 0}

        def read(k: int) -> np.ndarray:
            if state["frames"] is None or k < state["next"]:
                state["frames"], state["next"] = self.frames(), 0
            for frame in state["frames"]:
                state["next"] += 1
                if state["next"] - 1 == k:
                    if state["next"] == len(self.indices):
                        state["frames"].close()  # ffmpeg's process ends now, not when the reader is collected
                        state["frames"] = None
                    return frame
            raise IndexError(f"{self.path}: {len(self.indices)} frames kept; asked for frame {k}")

        return read


def select_video_frames(path, max_frames: int, drop_blurriest: float, progress=None) -> VideoFrames:
    """The frames to take of a video: ``max_frames`` candidates evenly spread over it (all frames if
    fewer), less the ``drop_blurriest`` fraction of them with the least ``sharpness`` (``MIN_VIEWS`` kept
    at least).

    The video is decoded once to score the candidates, keeping only their scores (a 4K frame is
    25 MB: 150 of them would not fit in memory), so the kept frames are decoded again when read
    (``VideoFrames.frames``). When the container does not say how many frames there are, ffmpeg
    counts them first. ``progress(done, total)`` is called per frame of the scoring pass.
    """
    if max_frames < 2 or not 0.0 <= drop_blurriest < 1.0:
        raise ValueError(f"max_frames must be at least 2 and drop_blurriest in [0, 1); got {max_frames}, "
                         f"{drop_blurriest}")
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: video not found.")
    with _open_video(path) as reader:
        meta = reader.get_meta_data()
        fps = float(meta.get("fps") or 0.0)
        count = meta.get("nframes", math.inf)
        if not math.isfinite(count):
            # imageio leaves nframes unknown, and duration x fps is only an estimate (phones record a
            # variable frame rate; containers round durations): a count off by a few frames would skew the
            # spacing or ask for frames past the end. So ffmpeg decodes the video once to count exactly,
            # throwing the pixels away, before the pass that scores the candidates.
            try:
                count = reader.count_frames()
            except Exception as e:
                raise _undecodable(path, _reason(e, last_line=True)) from None
        count = int(count)
        wanted = set(evenly_spread(count, max_frames).tolist())
        scores, size, decoded = {}, None, 0
        for index, frame in _decoded(path, reader, count):  # the last candidate is the last frame
            decoded = index + 1
            if index in wanted:
                scores[index], size = sharpness(frame), frame.shape[:2]
            del frame  # not held while the next one decodes
            if progress is not None:
                progress(decoded, count)
    if not scores:
        raise DataError(f"{path}: the video has no frames that ffmpeg can decode.")
    candidates = sorted(scores)
    dropped = min(int(drop_blurriest * len(candidates) + 0.5), max(len(candidates) - MIN_VIEWS, 0))
    blurriest = set(np.argsort([scores[i] for i in candidates], kind="stable")[:dropped].tolist())
    indices = [index for k, index in enumerate(candidates) if k not in blurriest]
    stats = {"frames_in_video": decoded, "candidates": len(candidates), "dropped_blurry": dropped,
             "kept": len(indices), "fps": fps}
    return VideoFrames(path=path, indices=indices, height=int(size[0]), width=int(size[1]), stats=stats)

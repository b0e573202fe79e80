"""Captures without poses read as frames: photo folders, phone videos, the blur filter, broken files."""

from __future__ import annotations

import gc
import weakref

import imageio.v2 as iio2
import imageio.v3 as iio
import numpy as np
import pytest
from scenes import trace_views

from nerf_pipeline import camera
from nerf_pipeline.runtime.errors import DataError
from nerf_pipeline.scenes import frames
from nerf_pipeline.scenes.folders import evenly_spread
from nerf_pipeline.scenes.scene import MIN_VIEWS

BLURRED = (1, 4, 16, 23, 33)  # 4, 16, 23 and 33 are among the 20 candidates of 40 frames; 1 is not


def rendered_orbit(num_frames=40, height=48, width=64) -> np.ndarray:
    """Frames [N, H, W, 3] uint8 of the built-in scene, along an orbit around it."""
    rgb, _ = trace_views(camera.orbit_poses(num_frames, 30.0, 4.0), height, width, (60.0, 60.0, 32.0, 24.0))
    return (rgb * 255 + 0.5).astype(np.uint8)


def box_blur(image: np.ndarray, size: int = 7) -> np.ndarray:
    """The mean over a ``size`` x ``size`` window around each pixel (edges repeated), as a shaken camera's."""
    pad = size // 2
    padded = np.pad(image.astype(np.float32), ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    height, width = image.shape[:2]
    total = sum(padded[i:i + height, j:j + width] for i in range(size) for j in range(size))
    return (total / size**2 + 0.5).astype(np.uint8)


def write_video(path, images, fps=10):
    iio2.mimwrite(path, list(images), format="FFMPEG", fps=fps, codec="libx264", quality=8, pixelformat="yuv420p",
                  macro_block_size=1)
    return path


@pytest.fixture(scope="module")
def shaky_video(tmp_path_factory):
    """A 40-frame orbit video, 64x48 at 10 fps, in which the frames ``BLURRED`` are strongly blurred."""
    images = rendered_orbit()
    for index in BLURRED:
        images[index] = box_blur(images[index])
    return write_video(tmp_path_factory.mktemp("video") / "orbit.mp4", images)


def test_video_keeps_evenly_spread_candidates_and_drops_the_blurriest(shaky_video):
    calls = []
    video = frames.select_video_frames(shaky_video, max_frames=20, drop_blurriest=0.2,
                                       progress=lambda done, total: calls.append((done, total)))
    candidates = evenly_spread(40, 20).tolist()
    assert len(candidates) == 20 and candidates[0] == 0 and candidates[-1] == 39
    blurred_candidates = [i for i in BLURRED if i in candidates]
    assert blurred_candidates == [4, 16, 23, 33]  # 1 is blurred but never a candidate
    expected = [i for i in candidates if i not in blurred_candidates]
    assert video.indices == expected and video.names == [f"frame_{i:05d}.png" for i in expected]  # time order
    assert video.stats == {"frames_in_video": 40, "candidates": 20, "dropped_blurry": 4, "kept": 16, "fps": 10.0}
    assert (video.height, video.width) == (48, 64)
    kept = list(video.frames())
    assert len(kept) == 16 and all(f.shape == (48, 64, 3) and f.dtype == np.uint8 for f in kept)
    # each kept frame is the decoded source frame it is named after
    with iio2.get_reader(shaky_video, format="FFMPEG") as reader:
        decoded = [frame for frame in reader]  # (list() would ask the reader its length, unknown: inf)
    for frame, index in zip(kept, expected):
        np.testing.assert_array_equal(frame, decoded[index])
    assert calls[-1] == (40, 40) and [done for done, _ in calls] == list(range(1, 41))
    # read(k), in order as the download stage reads, and again from the start
    read = video.reader()
    for k in (0, 1, 15, 2):
        np.testing.assert_array_equal(read(k), decoded[expected[k]])


def live(references) -> int:
    gc.collect()
    return sum(reference() is not None for reference in references)


def test_a_video_is_streamed_holding_a_frame_at_a_time(shaky_video, monkeypatch):
    """Neither the scoring pass nor the decoding of the kept frames keeps frames it has passed on:
    memory does not grow with the number of frames (150 frames of 4K would be 3.7 GB)."""
    scored, measure = [], frames.sharpness

    def sharpness(frame):
        scored.append(weakref.ref(frame))
        assert live(scored) <= 2, "the scoring pass keeps the frames it scored"  # this one, the decoder's last
        return measure(frame)

    monkeypatch.setattr(frames, "sharpness", sharpness)
    video = frames.select_video_frames(shaky_video, max_frames=20, drop_blurriest=0.2)
    assert len(scored) == 20 and live(scored) == 0
    yielded = []
    for frame in video.frames():
        yielded.append(weakref.ref(frame))
        del frame
        assert live(yielded) <= 2, "the decoding pass keeps the frames it yielded"
    assert len(yielded) == 16 and live(yielded) == 0


def test_a_short_video_gives_all_its_frames(tmp_path):
    path = write_video(tmp_path / "short.mp4", rendered_orbit(num_frames=6))
    video = frames.select_video_frames(path, max_frames=20, drop_blurriest=0.0)
    assert video.names == [f"frame_{i:05d}.png" for i in range(6)] and len(list(video.frames())) == 6
    assert video.stats == {"frames_in_video": 6, "candidates": 6, "dropped_blurry": 0, "kept": 6, "fps": 10.0}


def test_the_blur_filter_keeps_the_fewest_views_a_scene_needs(tmp_path):
    path = write_video(tmp_path / "short.mp4", rendered_orbit(num_frames=4))
    video = frames.select_video_frames(path, max_frames=20, drop_blurriest=0.9)
    assert len(video.indices) == MIN_VIEWS == 3 and video.stats["dropped_blurry"] == 1


def test_a_file_that_is_no_video_is_refused_naming_it(tmp_path):
    path = tmp_path / "clip.mp4"
    path.write_text("not a video\n" * 100)
    with pytest.raises(DataError) as error:
        frames.select_video_frames(path, max_frames=20, drop_blurriest=0.1)
    assert str(error.value).startswith(f"{path}: cannot decode it as a video (")
    assert "Traceback" not in str(error.value) and "\n" not in str(error.value)


def test_is_video_by_extension():
    assert frames.is_video("a/clip.MOV") and frames.is_video("clip.mp4") and frames.is_video("c.webm")
    assert not frames.is_video("IMG_0001.jpg") and not frames.is_video("clip")


# ----------------------------------------------------------------------------- sharpness


def test_sharpness_is_larger_for_a_sharp_image_than_its_blurred_copy():
    image = rendered_orbit(num_frames=1)[0]
    assert frames.sharpness(image) > 10 * frames.sharpness(box_blur(image, 5))
    flat = np.full((24, 32, 3), 128, np.uint8)
    assert frames.sharpness(flat) == 0.0


def test_sharpness_of_a_4k_frame_is_measured_downsampled():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(2160, 3840, 3), dtype=np.uint8)
    small = image.reshape(270, 8, 480, 8, 3).mean(axis=(1, 3))  # 3840 / 512 rounds up to 8
    assert frames.sharpness(image) == pytest.approx(frames.sharpness(small), rel=1e-4)
    # at full size, noise this fine would score far higher
    assert frames.sharpness(image[:512, :512]) > 20 * frames.sharpness(image)


# ----------------------------------------------------------------------------- photos


def write_photos(folder, names, size=(24, 32)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        iio.imwrite(folder / name, rng.integers(0, 256, size=(*size, 3), dtype=np.uint8))


def test_photo_files_prefer_the_images_subfolder_and_are_sorted(tmp_path):
    write_photos(tmp_path / "capture", ["b.png", "a.jpg"])
    (tmp_path / "capture" / "notes.txt").write_text("taken at noon")
    (tmp_path / "capture" / "._a.jpg").write_bytes(b"\x00\x05\x16\x07")  # a Mac's metadata file, no image
    (tmp_path / "capture" / "IMG_0003.JPG").write_bytes(iio.imwrite("<bytes>", np.zeros((24, 32, 3), np.uint8),
                                                                    extension=".jpg"))
    assert [p.name for p in frames.photo_files(tmp_path / "capture")] == ["IMG_0003.JPG", "a.jpg", "b.png"]
    write_photos(tmp_path / "capture" / "images", ["2.jpeg", "1.png"])
    assert [p.name for p in frames.photo_files(tmp_path / "capture")] == ["1.png", "2.jpeg"]


def test_a_folder_without_photos_is_refused(tmp_path):
    (tmp_path / "capture").mkdir()
    (tmp_path / "capture" / "notes.txt").write_text("taken at noon")
    with pytest.raises(DataError, match=r"capture: found no photos \(\.jpg, \.jpeg, \.png\) in .*capture\.$"):
        frames.photo_files(tmp_path / "capture")
    write_photos(tmp_path / "capture", ["only.jpg"])  # too few for a scene: sources.read_views refuses it
    assert [p.name for p in frames.photo_files(tmp_path / "capture")] == ["only.jpg"]
    with pytest.raises(DataError, match="folder not found"):
        frames.photo_files(tmp_path / "missing")


def test_read_photo_gives_rgb_uint8(tmp_path):
    grey = np.arange(24 * 32, dtype=np.uint8).reshape(24, 32)
    iio.imwrite(tmp_path / "grey.png", grey)
    np.testing.assert_array_equal(frames.read_photo(tmp_path / "grey.png"), np.repeat(grey[..., None], 3, -1))
    rgba = np.random.default_rng(0).integers(0, 256, size=(24, 32, 4), dtype=np.uint8)
    iio.imwrite(tmp_path / "rgba.png", rgba)
    np.testing.assert_array_equal(frames.read_photo(tmp_path / "rgba.png"), rgba[..., :3])
    deep = np.array([[0, 257, 65535, 32896]], dtype=np.uint16).repeat(4, 0)  # 16-bit grey (Pillow writes no 16-bit RGB)
    iio.imwrite(tmp_path / "deep.png", deep)
    assert iio.imread(tmp_path / "deep.png").dtype == np.uint16
    photo = frames.read_photo(tmp_path / "deep.png")
    assert photo.shape == (4, 4, 3) and photo.dtype == np.uint8 and photo[0, :, 0].tolist() == [0, 1, 255, 128]


def test_zero_byte_and_truncated_photos_are_refused_naming_the_file(tmp_path):
    (tmp_path / "IMG_0003.jpg").write_bytes(b"")
    with pytest.raises(DataError) as error:
        frames.read_photo(tmp_path / "IMG_0003.jpg")
    assert str(error.value).startswith(f"{tmp_path / 'IMG_0003.jpg'}: cannot read it as an image (")
    assert str(error.value).endswith("; it may be truncated or corrupt.")
    write_photos(tmp_path, ["whole.png"])
    data = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[:len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.png: cannot read it as an image \(.*truncated.*\); it may be"):
        frames.read_photo(tmp_path / "cut.png")


def test_photos_of_different_sizes_are_refused_with_the_sizes_found():
    sizes = {f"IMG_{i:04d}.jpg": (4032, 3024) for i in range(1, 41)}
    sizes.update({"IMG_0099.jpg": (3024, 4032), "IMG_0100.jpg": (3024, 4032)})
    with pytest.raises(DataError) as error:
        frames.check_one_camera(sizes, "capture")
    message = str(error.value)
    assert message.startswith("capture: the photos come in 2 sizes")
    assert "3024x4032 (40 photos, e.g. IMG_0001.jpg), 4032x3024 (2 photos, e.g. IMG_0099.jpg)" in message
    sizes.pop("IMG_0100.jpg")
    with pytest.raises(DataError, match=r", 4032x3024 \(1 photo, e\.g\. IMG_0099\.jpg\), but"):
        frames.check_one_camera(sizes, "capture")
    assert "one camera" in message and "one orientation" in message
    assert frames.check_one_camera({"a.jpg": (24, 32), "b.jpg": (24, 32)}, "capture") == (24, 32)

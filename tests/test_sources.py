"""What data.source can name, through the real data stages: the layouts users bring, and bad captures refused.

Each capture is written by the built-in renderer through known cameras; the rays the pipeline
makes of it must be those cameras' rays (up to the similarity the poses stage applies) and trace
to the stored pixels (``test_folders.check_rays_and_pixels``).
"""

from __future__ import annotations

import imageio.v2 as imageio
import numpy as np
import pytest
from captures import write_colmap_capture, write_llff_capture
from conftest import assert_user_error, stage, tiny_params, write_params
from scenes import trace_views, write_blender, write_ngp
from test_folders import check_rays_and_pixels, through_the_pipeline

from nerf_pipeline import camera, config
from nerf_pipeline.errors import DataError
from nerf_pipeline.scenes import sources
from nerf_pipeline.scenes.scene import Scene


def views_of(source, **data):
    params = tiny_params()
    params["data"].update(source=str(source), **data)
    return sources.read_views(config.from_dict(params), scratch=None)


@pytest.mark.parametrize("binary", [False, True])
def test_a_colmap_capture_goes_through_with_its_cameras_and_points(tmp_path, binary):
    written = write_colmap_capture(tmp_path / "capture", model="PINHOLE", binary=binary)
    views = views_of(tmp_path / "capture")
    assert views.count == 8 and views.cameras.unbounded and views.cameras.normalize
    assert views.cameras.points.shape == (300, 3) and views.cameras.point_colors.dtype == np.uint8
    parts = through_the_pipeline(tmp_path, tmp_path / "capture")
    check_rays_and_pixels(parts, written["poses"], np.asarray(written["intrinsics"]), 20, 28)
    assert parts["train"].unbounded and parts["train"].far == 1000.0


def test_an_llff_capture_keeps_its_bounds_scaled_with_the_poses(tmp_path):
    written = write_llff_capture(tmp_path / "capture")
    parts = through_the_pipeline(tmp_path, tmp_path / "capture")
    check_rays_and_pixels(parts, written["poses"], np.array([30.0, 30.0, 14.0, 10.0]), 20, 28)
    # the cameras sit at radius 4 already: the scale is 1, and near is LLFF's smallest depth bound
    assert parts["train"].near == pytest.approx(written["bounds"][:, 0].min(), rel=1e-3)
    assert parts["train"].far == 1000.0  # a capture: unbounded


def photos(folder, count=6, height=24, width=32):
    poses = camera.hemisphere_poses(count, 4.0, seed=1)
    rgb, _ = trace_views(poses, height, width, np.array([30.0, 30.0, width / 2, height / 2]))
    (folder / "images").mkdir(parents=True)
    for i, image in enumerate(rgb):
        imageio.imwrite(folder / "images" / f"IMG_{i:04d}.jpg", (image * 255).astype(np.uint8), quality=95)
    return rgb


def test_photos_and_videos_come_without_poses(tmp_path):
    photos(tmp_path / "photos")
    views = views_of(tmp_path / "photos")
    assert views.count == 6 and views.cameras.poses is None and not views.cameras.sequence
    assert views.cameras.names[0] == "IMG_0000.jpg" and views.read(0).shape == (24, 32, 3)
    frames = (np.random.default_rng(0).uniform(size=(12, 24, 32, 3)) * 255).astype(np.uint8)
    imageio.mimwrite(tmp_path / "clip.mp4", frames, format="FFMPEG", fps=10, codec="libx264", quality=8,
                     pixelformat="yuv420p", macro_block_size=1)
    views = views_of(tmp_path / "clip.mp4", max_frames=6, drop_blurriest=0.0)
    assert views.count == 6 and views.cameras.poses is None and views.cameras.sequence
    assert views.read(0).shape == (24, 32, 3) and views.cameras.unbounded


def test_the_download_stage_writes_an_unposed_scene_for_photos(tmp_path):
    photos(tmp_path / "photos")
    params = tiny_params()
    params["data"]["source"] = str(tmp_path / "photos")
    write_params(tmp_path, params)
    result = stage("download", "--out-scene", "scene", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    scene = Scene.open(tmp_path / "scene")
    assert scene.images.shape == (6, 24, 32, 3) and scene.cameras.poses is None


# ----------------------------------------------------------------------------- bad captures


def _zero_byte_photo(folder):
    photos(folder)
    (folder / "images" / "IMG_0003.jpg").write_bytes(b"")
    return "IMG_0003.jpg: cannot read it as an image (the file is empty, 0 bytes)"


def _mixed_sizes(folder):
    photos(folder)
    imageio.imwrite(folder / "images" / "IMG_0099.jpg", np.zeros((32, 24, 3), np.uint8))
    return "one capture must come from one camera"


def _undecodable_video(folder):
    folder.mkdir()
    (folder / "clip.mp4").write_bytes(b"this is not a video" * 100)
    return "clip.mp4: cannot decode it as a video"


def _colmap_names_match_no_file(folder):
    write_colmap_capture(folder)
    for image in (folder / "images").iterdir():
        image.rename(image.with_name("other_" + image.name))
    return "the model's image names (frame_000.png, …) match no file"


def _llff_row_count(folder):
    write_llff_capture(folder)
    imageio.imwrite(folder / "images" / "frame_999.png", np.zeros((20, 28, 3), np.uint8))
    return "poses_bounds.npy has 8 rows but images/ holds 9 images; one row per image"


def _unsupported_camera(folder):
    write_colmap_capture(folder, model="OPENCV_FISHEYE")
    return "OPENCV_FISHEYE"


BAD_CAPTURES = [_zero_byte_photo, _mixed_sizes, _undecodable_video, _colmap_names_match_no_file, _llff_row_count,
                _unsupported_camera]


@pytest.mark.parametrize("make", BAD_CAPTURES)
def test_a_bad_capture_stops_the_download_naming_the_file_and_writes_nothing(tmp_path, make):
    message = make(tmp_path / "capture")
    source = tmp_path / "capture" / "clip.mp4" if (tmp_path / "capture" / "clip.mp4").exists() else tmp_path / "capture"
    params = tiny_params()
    params["data"]["source"] = str(source)
    write_params(tmp_path, params)
    result = stage("download", "--out-scene", "out/scene", cwd=tmp_path)
    assert_user_error(result, message)
    assert not (tmp_path / "out" / "scene").exists()


def test_a_missing_source_is_named_with_a_suggestion():
    with pytest.raises(DataError, match="'data.source' is 'synthetc': no such folder.*Did you mean 'synthetic'"):
        views_of("synthetc")


# ----------------------------------------------------------------------------- too few views, for every source

TOO_FEW = "but a scene needs at least 3, 2 to train on and 1 to validate on"


def _write_video(path, count):
    images = (np.random.default_rng(0).uniform(size=(count, 24, 32, 3)) * 255).astype(np.uint8)
    imageio.mimwrite(path, images, format="FFMPEG", fps=10, codec="libx264", quality=8, pixelformat="yuv420p",
                     macro_block_size=1)
    return path


def _npz(folder, count):
    folder.mkdir()
    np.savez(folder / "scene.npz", images=np.zeros((count, 8, 8, 3), np.uint8), focal=10.0,
             poses=camera.hemisphere_poses(count, 4.0, seed=0))
    return folder / "scene.npz"


@pytest.mark.parametrize("make, found", [
    (lambda folder: photos(folder, count=2) is None or folder, "2 views"),
    (lambda folder: photos(folder, count=1) is None or folder, "1 view,"),
    (lambda folder: folder.mkdir() or _write_video(folder / "clip.mp4", 2), "2 views"),
    (lambda folder: _npz(folder, 2), "2 views"),
    (lambda folder: write_ngp(folder, num_views=2) and folder, "2 views"),
    (lambda folder: write_blender(folder, num_train=1, num_val=1, num_test=4) and folder,
     "2 views outside its test split"),
])
def test_a_source_with_too_few_views_is_refused_at_once(tmp_path, make, found):
    source = make(tmp_path / "capture")
    with pytest.raises(DataError) as error:
        views_of(source)
    message = str(error.value)
    assert f": {found}" in message and TOO_FEW in message and message.endswith("(more photos, a longer video).")


def test_too_few_views_name_the_param_that_kept_them_few(tmp_path):
    photos(tmp_path / "photos", count=6)
    with pytest.raises(DataError, match=f"photos: 2 views, {TOO_FEW}; 'data.max_views' is 2: set it to 3 or more."):
        views_of(tmp_path / "photos", max_views=2)
    _write_video(tmp_path / "clip.mp4", 12)
    with pytest.raises(DataError, match=f"clip.mp4: 2 views, {TOO_FEW}; 'data.max_frames' is 2: set it to 3"):
        views_of(tmp_path / "clip.mp4", max_frames=2, drop_blurriest=0.0)
    assert views_of(tmp_path / "photos", max_views=3).count == 3


def _two_photos(folder):
    photos(folder, count=2)
    return f"capture: 2 views, {TOO_FEW}"


def _one_frame_video(folder):
    folder.mkdir()
    _write_video(folder / "clip.mp4", 1)
    return f"clip.mp4: 1 view, {TOO_FEW}"


@pytest.mark.parametrize("make", [_two_photos, _one_frame_video])
def test_too_few_views_stop_the_download_before_structure_from_motion(tmp_path, make):
    test_a_bad_capture_stops_the_download_naming_the_file_and_writes_nothing(tmp_path, make)

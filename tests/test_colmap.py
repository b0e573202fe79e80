"""The COLMAP model reader: poses, intrinsics and points of text and binary models; malformed files refused."""

from __future__ import annotations

import struct

import imageio.v3 as iio
import numpy as np
import pytest
from captures import COLMAP_PARAMS, quaternion, write_colmap_capture

from nerf_pipeline import camera
from nerf_pipeline.errors import DataError
from nerf_pipeline.scenes import colmap, synthetic

QUANTUM = 1.0 / 255  # PNG stores 8 bits
NAME_BYTES = len("frame_000.png") + 1  # with its NUL
IMAGE_RECORD = 64 + NAME_BYTES + 8  # id, pose and camera id; name; count of 2D points (none written)


def read(folder):
    return colmap.read_model(colmap.find_model(folder))


@pytest.mark.parametrize("binary", [False, True])
def test_the_written_cameras_and_points_read_back(tmp_path, binary):
    written = write_colmap_capture(tmp_path, binary=binary)
    model = read(tmp_path)
    assert [image.name for image in model.images] == written["names"]  # sorted by name, not by id
    assert [image.image_id for image in model.images] == list(range(8, 0, -1))
    poses = np.stack([colmap.camera_to_world(image) for image in model.images])
    np.testing.assert_allclose(poses, written["poses"], atol=1e-6)
    assert camera.rotation_error(poses).max() < 1e-12
    assert list(model.cameras) == [1] and model.cameras[1].model == "PINHOLE"
    assert (model.cameras[1].width, model.cameras[1].height) == (28, 20)
    np.testing.assert_array_equal(model.cameras[1].params, written["params"])
    assert model.points.shape == (300, 3) and model.points.dtype == np.float64
    assert model.colors.shape == (300, 3) and model.colors.dtype == np.uint8
    np.testing.assert_array_equal(model.points, written["points"])
    np.testing.assert_array_equal(model.colors, written["colors"])


@pytest.mark.parametrize("model, binary", [("PINHOLE", False), ("SIMPLE_PINHOLE", True), ("SIMPLE_RADIAL", False),
                                           ("RADIAL", True), ("OPENCV", False), ("OPENCV", True)])
def test_rays_from_what_the_reader_returns_trace_to_the_written_pixels(tmp_path, model, binary):
    written = write_colmap_capture(tmp_path, model=model, binary=binary)
    capture = read(tmp_path)
    poses = np.stack([colmap.camera_to_world(image) for image in capture.images])
    cam = capture.cameras[capture.images[0].camera_id]
    (fx, fy, cx, cy), distortion = colmap.intrinsics(cam)
    np.testing.assert_array_equal(distortion, 0.0)
    np.testing.assert_allclose((fx, fy, cx, cy), written["intrinsics"])
    origins, directions = camera.generate_rays(poses, cam.height, cam.width, (fx, fy, cx, cy))
    traced, _ = synthetic.trace(origins, directions)
    pixels = np.stack([iio.imread(tmp_path / "images" / image.name) for image in capture.images]) / 255.0
    np.testing.assert_allclose(traced, pixels, atol=QUANTUM)
    assert np.linalg.norm(capture.points, axis=-1).max() < synthetic.SCENE_RADIUS  # the points: in the same frame


@pytest.mark.parametrize("model, params, expected", [
    ("SIMPLE_PINHOLE", [100, 50, 40], [100, 100, 50, 40, 0, 0, 0, 0]),
    ("PINHOLE", [100, 90, 50, 40], [100, 90, 50, 40, 0, 0, 0, 0]),
    ("SIMPLE_RADIAL", [100, 50, 40, 0.1], [100, 100, 50, 40, 0.1, 0, 0, 0]),
    ("RADIAL", [100, 50, 40, 0.1, -0.02], [100, 100, 50, 40, 0.1, -0.02, 0, 0]),
    ("OPENCV", [100, 90, 50, 40, 0.1, -0.02, 0.003, -0.004], [100, 90, 50, 40, 0.1, -0.02, 0.003, -0.004]),
])
def test_intrinsics_of_each_supported_model(model, params, expected):
    pinhole, distortion = colmap.intrinsics(colmap.Camera(3, model, 100, 80, np.array(params, dtype=np.float64)))
    assert pinhole.dtype == distortion.dtype == np.float64 and pinhole.shape == distortion.shape == (4,)
    np.testing.assert_array_equal(np.concatenate([pinhole, distortion]), expected)


@pytest.mark.parametrize("model", ["OPENCV_FISHEYE", "FULL_OPENCV", "SIMPLE_RADIAL_FISHEYE", "FOV"])
def test_unsupported_models_are_refused_by_name(model):
    cam = colmap.Camera(2, model, 100, 80, np.zeros(colmap.NUM_PARAMS[model]))
    with pytest.raises(DataError) as error:
        colmap.intrinsics(cam)
    message = str(error.value)
    assert f"camera 2 has COLMAP model {model}" in message and "image_undistorter" in message
    assert "SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, RADIAL, OPENCV" in message


@pytest.mark.parametrize("binary", [False, True])
def test_an_unsupported_model_is_read_then_refused(tmp_path, binary):
    write_colmap_capture(tmp_path, model="OPENCV_FISHEYE", binary=binary)
    model = read(tmp_path)
    assert model.cameras[1].model == "OPENCV_FISHEYE"
    np.testing.assert_array_equal(model.cameras[1].params, COLMAP_PARAMS["OPENCV_FISHEYE"])
    with pytest.raises(DataError, match="OPENCV_FISHEYE, which is not supported"):
        colmap.intrinsics(model.cameras[1])


def test_camera_to_world_turns_colmap_axes_into_opengl():
    # identity rotation: the camera looks down world +z (OpenCV's forward) with image rows along world +y
    at_origin = colmap.Image(1, "a.png", 1, np.array([1.0, 0, 0, 0]), np.zeros(3))
    np.testing.assert_array_equal(colmap.camera_to_world(at_origin), np.diag([1.0, -1.0, -1.0, 1.0]))
    # x_cam = x_world + t: the centre is at -t
    moved = colmap.Image(1, "a.png", 1, np.array([2.0, 0, 0, 0]), np.array([1.0, 2.0, 3.0]))  # not unit: normalised
    np.testing.assert_allclose(colmap.camera_to_world(moved)[:3, 3], [-1.0, -2.0, -3.0])
    # a camera at (0, -4, 0) looking at the origin, world z up
    c2w = camera.look_at([0.0, -4.0, 0.0])
    world_to_camera = np.linalg.inv(c2w @ np.diag([1.0, -1.0, -1.0, 1.0]))
    image = colmap.Image(1, "a.png", 1, quaternion(world_to_camera[:3, :3]), world_to_camera[:3, 3])
    np.testing.assert_allclose(colmap.camera_to_world(image), c2w, atol=1e-12)


def test_find_model_looks_in_sparse_0_then_sparse_then_the_folder(tmp_path):
    assert colmap.find_model(tmp_path) is None
    assert colmap.find_model(tmp_path / "missing") is None
    (tmp_path / "cameras.txt").write_text("")
    assert colmap.find_model(tmp_path) == tmp_path
    (tmp_path / "sparse").mkdir()
    (tmp_path / "sparse" / "cameras.bin").write_bytes(b"")
    assert colmap.find_model(tmp_path) == tmp_path / "sparse"
    write_colmap_capture(tmp_path, binary=True)
    assert colmap.find_model(tmp_path) == tmp_path / "sparse" / "0"


def test_binary_is_preferred_when_both_formats_are_there(tmp_path):
    write_colmap_capture(tmp_path, binary=True)
    write_colmap_capture(tmp_path / "text", model="SIMPLE_PINHOLE")
    for path in (tmp_path / "text" / "sparse" / "0").iterdir():
        path.rename(tmp_path / "sparse" / "0" / path.name)
    assert read(tmp_path).cameras[1].model == "PINHOLE"  # the binary model's


# ----------------------------------------------------------------------------- malformed models


def model_file(folder, name):
    return folder / "sparse" / "0" / name


@pytest.mark.parametrize("name, keep, message", [
    ("images.bin", 8 + 3 * IMAGE_RECORD + 20, "truncated after 3 of 8 images"),
    ("images.bin", 8 + 8 * IMAGE_RECORD - 1, "truncated after 7 of 8 images"),
    ("images.bin", 8 + 64 + 5, "truncated after 0 of 8 images"),  # inside the first name
    ("cameras.bin", 8 + 24 + 16, "truncated after 0 of 1 cameras"),
    ("points3D.bin", 8 + 51 * 100 + 30, "truncated after 100 of 300 points"),
    ("points3D.bin", 5, "5 bytes; expected at least the 8-byte count of points"),
])
def test_truncated_binary_files_are_refused(tmp_path, name, keep, message):
    write_colmap_capture(tmp_path, binary=True)
    path = model_file(tmp_path, name)
    path.write_bytes(path.read_bytes()[:keep])
    with pytest.raises(DataError) as error:
        read(tmp_path)
    assert str(error.value).startswith(f"{path}: {message}")


def test_corrupt_binary_files_are_refused(tmp_path):
    write_colmap_capture(tmp_path, binary=True)
    cameras, images = model_file(tmp_path, "cameras.bin"), model_file(tmp_path, "images.bin")
    original = cameras.read_bytes()
    cameras.write_bytes(original[:12] + struct.pack("<i", 42) + original[16:])
    with pytest.raises(DataError, match=f"{cameras}: camera 1 has unknown model id 42"):
        read(tmp_path)
    cameras.write_bytes(original + b"\0" * 5)
    with pytest.raises(DataError, match=f"{cameras}: 5 bytes left after its 1 cameras"):
        read(tmp_path)
    cameras.write_bytes(struct.pack("<Q", 2) + original[8:])  # says 2 cameras, holds 1
    with pytest.raises(DataError, match=f"{cameras}: truncated after 1 of 2 cameras"):
        read(tmp_path)
    cameras.write_bytes(original)
    data = bytearray(images.read_bytes())
    data[8 + 64 + NAME_BYTES:8 + 64 + NAME_BYTES + 8] = struct.pack("<Q", 10**12)  # 10^12 2D points
    images.write_bytes(bytes(data))
    with pytest.raises(DataError, match=f"{images}: truncated after 0 of 8 images"):
        read(tmp_path)


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("name", ["cameras", "images", "points3D"])
def test_a_missing_file_is_named(tmp_path, binary, name):
    write_colmap_capture(tmp_path, binary=binary)
    path = model_file(tmp_path, f"{name}.{'bin' if binary else 'txt'}")
    path.unlink()
    with pytest.raises(DataError) as error:
        colmap.read_model(tmp_path / "sparse" / "0")
    if name == "cameras":  # without it the folder is no model
        assert str(error.value).startswith(f"{path.parent}: no cameras.bin or cameras.txt")
    else:
        assert str(error.value).startswith(f"{path}: file not found")


@pytest.mark.parametrize("name, line, replacement, message", [
    ("cameras.txt", 1, "1 PINHOLE 28 twenty 30 24 15 9", "expected 'CAMERA_ID MODEL WIDTH HEIGHT PARAMS[]'"),
    ("cameras.txt", 1, "1 PINHOLE 28 20 30 24 15", "camera 1 of model PINHOLE has 3 params; the model has 4"),
    ("cameras.txt", 1, "1 PINHOLE 0 20 30 24 15 9", "camera 1 has size 0x20"),
    ("images.txt", 2, "1 0.5 0.5 0.5 0.5 0 0 4 1", "expected 'IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME'"),
    ("images.txt", 3, "12.5 7.5", "expected the previous image's 2D points 'X Y POINT3D_ID ...'"),
    ("images.txt", 2, "1 0 0 0 0 0 0 4 1 frame_007.png", "image frame_007.png has quaternion [0.0, 0.0, 0.0, 0.0]"),
    ("images.txt", 2, "1 1 0 0 0 0 0 4 5 frame_007.png", "image frame_007.png uses camera 5, which cameras.txt"),
    ("points3D.txt", 4, "5 0.1 0.2 0.3 255 300 0 0.5", "with R, G, B in 0..255"),
    ("points3D.txt", 4, "5 0.1 0.2 0.3 255 30", "expected 'POINT3D_ID X Y Z R G B ERROR TRACK[]'"),
])
def test_malformed_text_lines_are_refused_with_the_file_and_line(tmp_path, name, line, replacement, message):
    write_colmap_capture(tmp_path)
    path = model_file(tmp_path, name)
    lines = path.read_text().splitlines()
    lines[line] = replacement
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as error:
        read(tmp_path)
    assert message in str(error.value) and str(path) in str(error.value)
    if "expected" in message:  # a line that does not parse is quoted, with its number
        assert f"{path}, line {line + 1}: " in str(error.value) and repr(replacement) in str(error.value)


def test_text_files_may_have_comments_blank_lines_and_2d_points(tmp_path):
    write_colmap_capture(tmp_path)
    path = model_file(tmp_path, "images.txt")
    lines = path.read_text().splitlines()
    lines[3] = "10.5 4.25 1 3.0 2.0 -1"  # the first image's 2D points: one seen point, one not
    path.write_text("\n".join(["# a comment", "", *lines]) + "\n")
    cameras = model_file(tmp_path, "cameras.txt")
    cameras.write_text("\n\n  # indented comment\n" + cameras.read_text())
    assert len(read(tmp_path).images) == 8


def test_a_model_without_images_or_points(tmp_path):
    write_colmap_capture(tmp_path)
    points = model_file(tmp_path, "points3D.txt")
    points.write_text("# no points\n")
    assert read(tmp_path).points.shape == (0, 3) and read(tmp_path).colors.shape == (0, 3)
    images = model_file(tmp_path, "images.txt")
    images.write_text("# no images\n")
    with pytest.raises(DataError, match=f"{images}: holds no images"):
        read(tmp_path)


def test_a_binary_file_named_txt_is_refused(tmp_path):
    write_colmap_capture(tmp_path)
    path = model_file(tmp_path, "cameras.txt")
    path.write_bytes(b"\x01\x00\xff\xfe" * 10)
    with pytest.raises(DataError, match=f"{path}: cannot read it as text"):
        read(tmp_path)

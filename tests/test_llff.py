"""The LLFF reader: poses_bounds.npy round trip, LLFF's axis order, pixels, malformed files refused."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest
from captures import write_llff_capture, write_poses_bounds

from nerf_pipeline import camera
from nerf_pipeline.errors import DataError
from nerf_pipeline.scenes import llff, synthetic

QUANTUM = 1.0 / 255  # PNG stores 8 bits


def test_poses_bounds_round_trip(tmp_path):
    poses = camera.hemisphere_poses(5, 3.0, seed=1).astype(np.float64)
    poses[:, :3, 3] += [10.0, -2.0, 0.5]
    hwf = np.tile([480.0, 640.0, 500.0], (5, 1))
    bounds = np.stack([np.linspace(1.0, 2.0, 5), np.linspace(8.0, 9.0, 5)], axis=-1)
    write_poses_bounds(tmp_path / "poses_bounds.npy", poses, hwf, bounds)
    rows = np.load(tmp_path / "poses_bounds.npy")
    assert rows.shape == (5, 17) and rows.dtype == np.float64
    c2w, hwf_read, bounds_read = llff.read_poses_bounds(tmp_path / "poses_bounds.npy", num_images=5)
    assert c2w.shape == (5, 4, 4) and c2w.dtype == np.float64
    np.testing.assert_array_equal(c2w, poses)
    np.testing.assert_array_equal(hwf_read, hwf)
    np.testing.assert_array_equal(bounds_read, bounds)


def test_llff_down_right_back_becomes_right_up_back(tmp_path):
    # a camera looking along world +y, level: LLFF's down is world -z, right is world +x, back is world -y
    down, right, back, centre = [0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [1.0, 2.0, 3.0]
    matrix = np.stack([down, right, back, centre, [20.0, 28.0, 30.0]], axis=-1)  # [3, 5], columns as named
    row = np.concatenate([matrix.reshape(15), [2.0, 6.0]])
    np.save(tmp_path / "poses_bounds.npy", row[None])
    (c2w,), (hwf,), (bounds,) = llff.read_poses_bounds(tmp_path / "poses_bounds.npy")
    np.testing.assert_array_equal(c2w[:3, 1], [0.0, 0.0, 1.0])  # upright: the camera's +y is world +z
    np.testing.assert_array_equal(c2w[:3, 0], right)
    np.testing.assert_array_equal(-c2w[:3, 2], [0.0, 1.0, 0.0])  # it looks down its -z: world +y
    np.testing.assert_array_equal(c2w[:3, 3], centre)
    np.testing.assert_array_equal(c2w[3], [0.0, 0.0, 0.0, 1.0])
    np.testing.assert_array_equal(hwf, [20.0, 28.0, 30.0])
    np.testing.assert_array_equal(bounds, [2.0, 6.0])
    assert np.linalg.det(c2w[:3, :3]) == pytest.approx(1.0)
    np.testing.assert_allclose(c2w, camera.look_at(centre, np.add(centre, [0.0, 1.0, 0.0])), atol=1e-12)


def test_rays_from_what_the_reader_returns_trace_to_the_written_pixels(tmp_path):
    written = write_llff_capture(tmp_path)
    files = llff.image_files(tmp_path)
    assert [path.name for path in files] == written["names"]
    c2w, hwf, bounds = llff.read_poses_bounds(tmp_path / "poses_bounds.npy", num_images=len(files))
    np.testing.assert_allclose(c2w, written["poses"], atol=1e-6)
    height, width, focal = hwf[0]
    origins, directions = camera.generate_rays(c2w, int(height), int(width), (focal, focal, width / 2, height / 2))
    traced, depth = synthetic.trace(origins, directions)
    pixels = np.stack([iio.imread(path) for path in files]) / 255.0
    np.testing.assert_allclose(traced, pixels, atol=QUANTUM)
    # the bounds hold every visible surface's depth along the viewing direction
    z_depth = depth * np.sum(directions * -c2w[:, None, None, :3, 2], axis=-1)
    hit = depth > 0
    assert np.all(z_depth[hit] >= np.broadcast_to(bounds[:, None, None, 0], hit.shape)[hit] - 1e-4)
    assert np.all(z_depth[hit] <= np.broadcast_to(bounds[:, None, None, 1], hit.shape)[hit] + 1e-4)
    assert np.all((bounds[:, 0] > 0) & (bounds[:, 0] < bounds[:, 1]))


def test_image_files_are_the_sorted_images_whatever_the_case_of_their_extension(tmp_path):
    (tmp_path / "images" / "sub.png").mkdir(parents=True)  # a folder, however named, is no image
    for name in ("b.JPG", "a.png", "c.jpeg", "d.PNG", "notes.txt", "e.tif"):
        (tmp_path / "images" / name).write_bytes(b"")
    assert [path.name for path in llff.image_files(tmp_path)] == ["a.png", "b.JPG", "c.jpeg", "d.PNG"]
    with pytest.raises(DataError, match="no images/ folder"):
        llff.image_files(tmp_path / "images")


# ----------------------------------------------------------------------------- malformed files


def test_a_row_count_that_is_not_the_image_count_is_refused(tmp_path):
    write_llff_capture(tmp_path)
    path = tmp_path / "poses_bounds.npy"
    with pytest.raises(DataError) as error:
        llff.read_poses_bounds(path, num_images=9)
    assert str(error.value) == f"{path} has 8 rows but images/ holds 9 images; one row per image."


@pytest.mark.parametrize("array, message", [
    (np.zeros((8, 15)), "shape (8, 15) and type float64; expected [N, 17]"),
    (np.zeros((8, 3, 5)), "shape (8, 3, 5)"),
    (np.zeros(17), "shape (17,)"),
    (np.array([["a"] * 17]), "type <U1"),
])
def test_an_array_of_the_wrong_shape_or_type_is_refused(tmp_path, array, message):
    path = tmp_path / "poses_bounds.npy"
    np.save(path, array)
    with pytest.raises(DataError) as error:
        llff.read_poses_bounds(path)
    assert str(error.value).startswith(f"{path}: holds an array of") and message in str(error.value)


def test_non_finite_values_are_refused(tmp_path):
    write_llff_capture(tmp_path)
    path = tmp_path / "poses_bounds.npy"
    rows = np.load(path)
    rows[3, 16] = np.inf
    rows[5, 0] = np.nan
    np.save(path, rows)
    with pytest.raises(DataError, match=r"rows \[3, 5\] hold NaN or infinite values"):
        llff.read_poses_bounds(path, num_images=8)


def test_unreadable_files_are_refused(tmp_path):
    path = tmp_path / "poses_bounds.npy"
    with pytest.raises(DataError, match=f"{path}: cannot read it as a .npy array"):
        llff.read_poses_bounds(path)  # missing
    path.write_bytes(b"not a numpy file")
    with pytest.raises(DataError, match=f"{path}: cannot read it as a .npy array"):
        llff.read_poses_bounds(path)
    np.save(path, np.zeros((8, 17)))
    path.write_bytes(path.read_bytes()[:300])  # cut short
    with pytest.raises(DataError, match=f"{path}: cannot read it as a .npy array"):
        llff.read_poses_bounds(path)
    path.write_bytes(b"")
    with pytest.raises(DataError, match=f"{path}: cannot read it as a .npy array"):
        llff.read_poses_bounds(path)
    np.savez(tmp_path / "archive.npz", rows=np.zeros((8, 17)))
    with pytest.raises(DataError, match="is an .npz archive"):
        llff.read_poses_bounds(tmp_path / "archive.npz")

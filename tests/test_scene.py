import numpy as np
import pytest

from nerf_pipeline import camera
from nerf_pipeline.runtime.errors import DataError
from nerf_pipeline.scenes.scene import Scene, read_tiny_nerf_npz, validate


def arrays(n=3, size=4):
    return dict(images=np.full((n, size, size, 3), 0.5, np.float32),
                poses=camera.hemisphere_poses(n, 4.0, seed=0), focal=np.float64(5.0))


def test_round_trip(tmp_path):
    a = arrays()
    scene = validate(a["images"], a["poses"], a["focal"], 2.0, 6.0, depth=np.ones((3, 4, 4)))
    scene.save(tmp_path / "scene.npz")
    loaded = Scene.load(tmp_path / "scene.npz")
    np.testing.assert_array_equal(loaded.images, scene.images)
    np.testing.assert_array_equal(loaded.intrinsics, [[5.0, 5.0, 2.0, 2.0]] * 3)  # principal point at the centre
    assert (loaded.near, loaded.far, loaded.num_views) == (2.0, 6.0, 3)
    assert loaded.depth.shape == (3, 4, 4)


def test_uint8_images_are_normalised(tmp_path):
    a = arrays()
    np.savez(tmp_path / "s.npz", images=np.full((3, 4, 4, 3), 255, np.uint8), poses=a["poses"], focal=a["focal"])
    scene = read_tiny_nerf_npz(tmp_path / "s.npz", near=2.0, far=6.0)
    assert scene.images.dtype == np.float32 and scene.images.max() == 1.0


def bad(**changes):
    a = {**arrays(), **changes}
    return lambda: validate(a["images"], a["poses"], a["focal"], 2.0, 6.0, source="x.npz")


@pytest.mark.parametrize("make, message", [
    (bad(images=np.full((3, 4, 4, 3), 1.5, np.float32)), "must lie in [0, 1]"),
    (bad(images=np.full((3, 4, 4, 4), 0.5, np.float32)), "'images' must have shape (N, H, W, 3)"),
    (bad(images=np.full((3, 4, 4, 3), np.nan, np.float32)), "NaN or Inf"),
    (bad(poses=camera.hemisphere_poses(2, 4.0, seed=0)), "3 images but 2 poses"),
    (bad(poses=np.full((3, 4, 4), np.inf)), "'poses' contains NaN or Inf"),
    (bad(poses=np.tile(np.diag([2.0, 1, 1, 1]), (3, 1, 1))), "is not orthonormal"),
    (bad(focal=np.float64(0.0)), "focal lengths must be positive numbers of pixels"),
    (bad(focal=np.ones(3)), "intrinsics must be (fx, fy, cx, cy) per view, shape (3, 4); got (3,)"),
    (bad(focal=np.array([[5.0, -5.0, 2.0, 2.0]] * 3)), "focal lengths must be positive numbers of pixels"),
])
def test_bad_arrays_are_refused(make, message):
    with pytest.raises(DataError) as error:
        make()
    assert message in str(error.value) and "x.npz" in str(error.value)


def test_tiny_nerf_focal_must_be_one_positive_number(tmp_path):
    a = arrays()
    for focal, message in ((np.ones(3), "'focal' must be a single number"), (np.float64(-1.0), "'focal' must be a positive")):
        np.savez(tmp_path / "f.npz", images=a["images"], poses=a["poses"], focal=focal)
        with pytest.raises(DataError, match=message):
            read_tiny_nerf_npz(tmp_path / "f.npz")


def test_near_far_from_the_file_unless_given(tmp_path):
    a = arrays()
    np.savez(tmp_path / "s.npz", **a)
    assert (read_tiny_nerf_npz(tmp_path / "s.npz").near, read_tiny_nerf_npz(tmp_path / "s.npz").far) == (2.0, 6.0)
    np.savez(tmp_path / "b.npz", **a, near=np.float32(1.0), far=np.float32(3.0))
    assert read_tiny_nerf_npz(tmp_path / "b.npz").far == 3.0
    assert read_tiny_nerf_npz(tmp_path / "b.npz", near=0.5, far=9.0).far == 9.0


def test_missing_truncated_and_incomplete_files(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_tiny_nerf_npz(tmp_path / "nope.npz", 2.0, 6.0)
    a = arrays()
    np.savez(tmp_path / "full.npz", **a)
    data = (tmp_path / "full.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated or corrupt"):
        read_tiny_nerf_npz(tmp_path / "cut.npz", 2.0, 6.0)
    np.savez(tmp_path / "nofocal.npz", images=a["images"], poses=a["poses"])
    with pytest.raises(DataError, match="missing key.*focal"):
        read_tiny_nerf_npz(tmp_path / "nofocal.npz", 2.0, 6.0)

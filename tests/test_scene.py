"""The scene folder: written view by view and atomically, read by memory map, its cameras checked."""

import numpy as np
import pytest

from nerf_pipeline import camera
from nerf_pipeline.errors import DataError
from nerf_pipeline.scenes.scene import Cameras, Scene, SceneWriter, Views, evenly_spread, write_views


def cameras(n=3, size=4, **changes) -> Cameras:
    values = dict(names=[f"v{i}" for i in range(n)], intrinsics=np.tile([5.0, 5.0, size / 2, size / 2], (n, 1)),
                  distortion=np.zeros((n, 4)), poses=camera.hemisphere_poses(n, 4.0, seed=0), near=2.0, far=6.0)
    return Cameras(**{**values, **changes})


def views(images, depth=None, **changes) -> Views:
    images = np.asarray(images)
    return Views(count=len(images), height=images.shape[1], width=images.shape[2], read=lambda i: images[i],
                 cameras=cameras(len(images), images.shape[1], **changes), source="x.npz",
                 depth=None if depth is None else (lambda i: depth[i]))


def test_round_trip_with_memory_mapped_images(tmp_path):
    images = np.random.default_rng(0).uniform(size=(3, 4, 4, 3)).astype(np.float32)
    depth = np.ones((3, 4, 4), np.float32)
    write_views(views(images, depth, split={"train": [0, 1], "val": [2]}, unbounded=True), tmp_path / "scene")
    scene = Scene.open(tmp_path / "scene")
    assert isinstance(scene.images, np.memmap) and scene.images.dtype == np.uint8
    np.testing.assert_array_equal(scene.images, (images * 255 + 0.5).astype(np.uint8))  # floats quantised once
    np.testing.assert_array_equal(scene.depth, depth)
    c = scene.cameras
    assert c.names == ["v0", "v1", "v2"] and (c.near, c.far, c.unbounded) == (2.0, 6.0, True)
    assert c.split == {"train": [0, 1], "val": [2]} and c.points is None
    np.testing.assert_allclose(c.poses, camera.hemisphere_poses(3, 4.0, seed=0), atol=1e-6)


def test_a_scene_without_poses_keeps_none(tmp_path):
    write_views(views(np.zeros((2, 4, 4, 3), np.uint8), poses=None, near=None, far=None), tmp_path / "scene")
    c = Scene.open(tmp_path / "scene").cameras
    assert c.poses is None and c.near is None and c.far is None


def test_nothing_is_written_unless_every_view_is(tmp_path):
    images = np.zeros((3, 4, 4, 3), np.uint8)

    def broken(i):
        if i == 2:
            raise DataError("x.npz: view 2 is broken.")
        return images[i]

    with pytest.raises(DataError, match="view 2 is broken"):
        write_views(Views(count=3, height=4, width=4, read=broken, cameras=cameras(), source="x.npz"),
                    tmp_path / "scene")
    with pytest.raises(ValueError, match="finish"):
        with SceneWriter(tmp_path / "scene", 1, 4, 4, "x.npz") as writer:
            writer.add(images[0])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("images, changes, message", [
    (np.full((3, 4, 4, 3), 1.5, np.float32), {}, "must lie in [0, 1]"),
    (np.full((3, 4, 4, 3), np.nan, np.float32), {}, "NaN or Inf"),
    (np.full((3, 4, 4, 3), 3, np.int64), {}, "'images' must be uint8 or float; got dtype int64"),
    (np.zeros((3, 4, 4, 3), np.uint8), {"poses": camera.hemisphere_poses(2, 4.0, seed=0)}, "3 images but 2 poses"),
    (np.zeros((3, 4, 4, 3), np.uint8), {"poses": np.full((3, 4, 4), np.inf)}, "'poses' contains NaN or Inf"),
    (np.zeros((3, 4, 4, 3), np.uint8), {"poses": np.tile(np.diag([2.0, 1, 1, 1]), (3, 1, 1))}, "is not orthonormal"),
    (np.zeros((3, 4, 4, 3), np.uint8), {"near": 7.0, "far": 6.0}, "need 0 <= near < far; got near=7.0, far=6.0"),
    (np.zeros((3, 4, 4, 3), np.uint8), {"split": {"train": [0, 5], "val": [2]}}, "its own split must name views 0..2"),
])
def test_bad_views_are_refused_naming_the_source(tmp_path, images, changes, message):
    with pytest.raises(DataError) as error:
        write_views(views(images, **changes), tmp_path / "scene")
    assert message in str(error.value) and "x.npz" in str(error.value)
    assert not (tmp_path / "scene").exists()


def test_views_of_different_sizes_are_refused(tmp_path):
    images = [np.zeros((4, 4, 3), np.uint8), np.zeros((4, 6, 3), np.uint8)]
    with pytest.raises(DataError, match="view 1 is 6x4 but the first is 4x4"):
        write_views(Views(count=2, height=4, width=4, read=lambda i: images[i], cameras=cameras(2), source="x.npz"),
                    tmp_path / "scene")


def test_a_truncated_scene_is_refused_on_open(tmp_path):
    write_views(views(np.zeros((3, 4, 4, 3), np.uint8)), tmp_path / "scene")
    data = (tmp_path / "scene/images.npy").read_bytes()
    (tmp_path / "scene/images.npy").write_bytes(data[:-10])
    with pytest.raises(DataError, match="images.npy: not a readable .npy array"):
        Scene.open(tmp_path / "scene")
    with pytest.raises(DataError, match="file not found"):
        Scene.open(tmp_path / "nowhere")


def test_evenly_spread():
    np.testing.assert_array_equal(evenly_spread(10, 4), [0, 3, 6, 9])
    np.testing.assert_array_equal(evenly_spread(3, None), [0, 1, 2])
    np.testing.assert_array_equal(evenly_spread(3, 7), [0, 1, 2])

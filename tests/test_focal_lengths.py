"""A focal length that is not a positive, finite number of pixels is refused by every reader, naming the file and the
frame: a transforms.json with ``fl_x: 0`` used to pass download, poses, split and rays as rays of NaN, and train
then died of a segmentation fault in the native hash grid (or, with TensorFlow's ops, said the training diverged).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from captures import (write_colmap_binary_model, write_colmap_capture, write_colmap_text_model,
                      write_llff_capture)
from conftest import assert_user_error, stage, tiny_params, write_params
from scenes import write_ngp

from nerf_pipeline import config
from nerf_pipeline.errors import DataError
from nerf_pipeline.runtime import atomic
from nerf_pipeline.scenes import colmap, folders, sources
from nerf_pipeline.scenes.scene import Cameras, Scene, SceneWriter, check_intrinsics

RULE = "a focal length must be a positive, finite number of pixels and a principal point finite."


def read_source(source):
    params = tiny_params()
    params["data"]["source"] = str(source)
    return sources.read_views(config.from_dict(params), scratch=None)


def edit_json(path, change):
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


@pytest.mark.parametrize("key, value, shown", [("fl_x", 0, "fx = 0, fy = 24"), ("fl_y", -24.0, "fx = 30, fy = -24"),
                                                ("fl_x", float("nan"), "fx = nan, fy = 24"),
                                                ("cx", float("inf"), "fx = 30, fy = 24 and principal point cx = inf")])
def test_a_transforms_json_focal_length_is_checked_per_frame(tmp_path, key, value, shown):
    write_ngp(tmp_path / "capture", per_frame=True)
    path = tmp_path / "capture" / "transforms.json"
    edit_json(path, lambda meta: meta["frames"][4].update({key: value}))
    with pytest.raises(DataError) as error:
        folders.read_transforms(path, 0.0, None)
    assert str(error.value).startswith(f"{path}: frame 4 ('images/frame_004.png') has focal length {shown}")
    assert str(error.value).endswith(RULE)


def test_a_shared_focal_length_of_zero_names_the_first_frame(tmp_path):
    write_ngp(tmp_path / "capture")
    path = tmp_path / "capture" / "transforms.json"
    edit_json(path, lambda meta: meta.update(fl_x=0.0, fl_y=0.0))
    with pytest.raises(DataError) as error:
        folders.read_transforms(path, 0.0, None)
    assert str(error.value) == (f"{path}: frame 0 ('images/frame_000.png') has focal length fx = 0, fy = 0 and "
                                f"principal point cx = 15, cy = 9; {RULE}")


def test_intrinsics_that_are_not_numbers_are_refused_naming_the_key(tmp_path):
    write_ngp(tmp_path / "capture")
    path = tmp_path / "capture" / "transforms.json"
    edit_json(path, lambda meta: meta.update(fl_x="30"))
    with pytest.raises(DataError) as error:
        folders.read_transforms(path, 0.0, None)
    assert str(error.value) == f"{path}: frame 0 has 'fl_x' = '30'; expected a number of pixels."


def test_the_download_stage_refuses_fl_x_0_and_writes_nothing(tmp_path):
    write_ngp(tmp_path / "capture")
    edit_json(tmp_path / "capture" / "transforms.json", lambda meta: meta.update(fl_x=0))
    params = tiny_params()
    params["data"]["source"] = str(tmp_path / "capture")
    write_params(tmp_path, params)
    result = stage("download", "--out-scene", "out/scene", cwd=tmp_path)
    assert_user_error(result, f"{tmp_path / 'capture' / 'transforms.json'}: frame 0 ('images/frame_000.png') has "
                              f"focal length fx = 0, fy = 24", RULE)
    assert not (tmp_path / "out" / "scene").exists()


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("params, shown", [((0.0, 24.0, 15.0, 9.0), "fx = 0, fy = 24"),
                                           ((30.0, -1.0, 15.0, 9.0), "fx = 30, fy = -1")])
def test_a_colmap_focal_length_is_checked(tmp_path, binary, params, shown):
    write_colmap_capture(tmp_path / "capture", binary=binary)
    model_folder = tmp_path / "capture" / "sparse" / "0"
    model = colmap.read_model(model_folder)
    cameras = {1: dataclasses.replace(model.cameras[1], params=np.array(params))}
    (write_colmap_binary_model if binary else write_colmap_text_model)(model_folder, cameras, model.images,
                                                                          model.points, model.colors)
    with pytest.raises(DataError) as error:
        read_source(tmp_path / "capture")
    assert str(error.value) == (f"{model_folder / ('cameras.bin' if binary else 'cameras.txt')}: camera 1 (of image "
                                f"frame_000.png) has focal length {shown} and principal point cx = 15, cy = 9; {RULE}")


@pytest.mark.parametrize("column, shown", [(14, "20, 28, 0"), (9, "20, 0, 30"), (4, "-20, 28, 30")])
def test_an_llff_focal_length_or_size_is_checked(tmp_path, column, shown):
    write_llff_capture(tmp_path / "capture")
    path = tmp_path / "capture" / "poses_bounds.npy"
    rows = np.load(path)
    rows[5, column] = -20.0 if column == 4 else 0.0
    np.save(path, rows)
    with pytest.raises(DataError) as error:
        read_source(tmp_path / "capture")
    assert str(error.value) == (f"{path}: row 5 (image 5 of images/ in name order) has height, width, focal = "
                                f"{shown} pixels; each must be positive.")


@pytest.mark.parametrize("focal", [0.0, -10.0, float("nan"), float("inf")])
def test_an_npz_focal_length_is_checked(tmp_path, focal):
    path = tmp_path / "scene.npz"
    np.savez(path, images=np.zeros((4, 8, 8, 3), np.uint8), poses=np.tile(np.eye(4), (4, 1, 1)), focal=focal)
    with pytest.raises(DataError) as error:
        read_source(path)
    assert str(error.value) == f"{path}: 'focal' is {focal:g}; it must be a positive, finite number of pixels."


def test_a_scene_written_before_the_readers_checked_is_refused_when_opened(tmp_path):
    cameras = Cameras(names=["a.png", "b.png", "c.png"], intrinsics=np.tile([30.0, 30.0, 4.0, 4.0], (3, 1)),
                      distortion=np.zeros((3, 4)))
    with SceneWriter(tmp_path / "scene", 3, 8, 8, "test") as writer:
        for _ in range(3):
            writer.add(np.zeros((8, 8, 3), np.uint8))
        writer.finish(cameras)
    arrays = dict(np.load(tmp_path / "scene" / "cameras.npz"))
    arrays["intrinsics"][1:, :2] = 0.0
    atomic.save_npz(tmp_path / "scene" / "cameras.npz", **arrays)
    with pytest.raises(DataError) as error:
        Scene.open(tmp_path / "scene")
    assert str(error.value) == (f"{tmp_path / 'scene' / 'cameras.npz'}: view 1 ('b.png') has focal length fx = 0, "
                                f"fy = 0 and principal point cx = 4, cy = 4; {RULE[:-1]} (1 more view like it).")


def test_check_intrinsics_takes_a_focal_length_or_one_set_or_one_per_view():
    np.testing.assert_array_equal(check_intrinsics(30.0, 2, 8, 10, "s"), [[30, 30, 5, 4]] * 2)
    np.testing.assert_array_equal(check_intrinsics([30, 31, 5, 4], 2, 8, 10, "s"), [[30, 31, 5, 4]] * 2)
    with pytest.raises(DataError, match=r"^s: view 2 has focal length fx = 1, fy = 0 "):
        check_intrinsics([[1, 1, 0, 0], [1, 1, 0, 0], [1, 0, 0, 0]], 3, 8, 10, "s")
    with pytest.raises(DataError, match=r"^s: intrinsics must be \(fx, fy, cx, cy\) per view, shape \(3, 4\)"):
        check_intrinsics(np.ones((2, 4)), 3, 8, 10, "s")

"""The evaluate stage's split: the scene's test split when it has one (the published protocol), else val."""

import logging

import numpy as np
from conftest import tiny_params

from nerf_pipeline import config
from nerf_pipeline.scenes import ray_files
from nerf_pipeline.stages.evaluate import depth_errors, evaluation_part


def rays_folder(folder, parts):
    for part, count in parts.items():
        writer = ray_files.PartWriter(folder, part, count, 4, 4, with_depth=False)
        for _ in range(count):
            writer.add(np.zeros((4, 4, 3), np.uint8))
        writer.finish(np.tile(np.eye(4), (count, 1, 1)), [[4.0, 4.0, 2.0, 2.0]] * count, range(count), 2.0, 6.0, False)
    return folder


def test_the_test_split_when_there_is_one(tmp_path, caplog):
    params = tiny_params()
    assert evaluation_part(config.from_dict(params), rays_folder(tmp_path / "a", {"train": 3, "val": 2,
                                                                                 "test": 4})).part == "test"
    with caplog.at_level(logging.INFO):
        assert evaluation_part(config.from_dict(params), rays_folder(tmp_path / "b", {"train": 3, "val": 2})).part == "val"
    assert "no test split: evaluating on val" in caplog.text
    params["evaluate"]["split"] = "val"
    assert evaluation_part(config.from_dict(params), tmp_path / "a").part == "val"


def test_depth_error_counts_only_pixels_with_a_surface():
    target = np.array([[[0.0, 2.0], [3.0, 0.0]]])
    predicted = np.array([[[9.0, 2.5], [2.0, 9.0]]])
    np.testing.assert_allclose(depth_errors(predicted, target), [0.75])

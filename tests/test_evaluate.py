"""The evaluate stage's split: the scene's test split when it has one (the published protocol), else val."""

import logging

import numpy as np
from conftest import tiny_params

from nerf_pipeline import config
from nerf_pipeline.scenes import ray_files


def rays_folder(folder, parts):
    for part, count in parts.items():
        writer = ray_files.PartWriter(folder, part, count, 4, 4, with_depth=False)
        for _ in range(count):
            writer.add(np.zeros((4, 4, 3), np.uint8))
        writer.finish(np.tile(np.eye(4), (count, 1, 1)), [[4.0, 4.0, 2.0, 2.0]] * count, range(count), 2.0, 6.0, False)
    return folder


def test_the_test_split_when_there_is_one(tmp_path, caplog):
    params = tiny_params()
    split = config.from_dict(params).evaluate.split
    assert ray_files.evaluation_part(rays_folder(tmp_path / "a", {"train": 3, "val": 2, "test": 4}),
                                     split).part == "test"
    with caplog.at_level(logging.INFO):
        assert ray_files.evaluation_part(rays_folder(tmp_path / "b", {"train": 3, "val": 2}), split).part == "val"
    assert "no test split: evaluating on val" in caplog.text
    params["evaluate"]["split"] = "val"
    assert ray_files.evaluation_part(tmp_path / "a", config.from_dict(params).evaluate.split).part == "val"

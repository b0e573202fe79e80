import json

import numpy as np
import pytest
from conftest import tiny_params

from nerf_pipeline import config
from nerf_pipeline.errors import ConfigError, DataError
from nerf_pipeline.runtime import atomic
from nerf_pipeline.scenes.scene import Cameras
from nerf_pipeline.stages import split
from nerf_pipeline.stages.split import split_views


def test_last_order_is_the_keras_example_split():
    train, val = split_views(100, 0.2, "last", seed=0)
    assert train == list(range(80)) and val == list(range(80, 100))


def test_shuffled_split_is_deterministic_and_disjoint():
    train, val = split_views(100, 0.2, "shuffled", seed=1)
    assert (train, val) == split_views(100, 0.2, "shuffled", seed=1)
    assert (train, val) != split_views(100, 0.2, "shuffled", seed=2)
    assert len(train) == 80 and len(val) == 20 and not set(train) & set(val)
    assert sorted(train + val) == list(range(100))


def test_every_8th_holds_out_views_0_8_16_as_llff_and_mip_nerf_360_do():
    train, val = split_views(20, 0.2, "every_8th", seed=0)
    assert val == [0, 8, 16] and train == [v for v in range(20) if v not in (0, 8, 16)]
    assert split_views(20, 0.5, "every_8th", seed=3) == (train, val)  # val_fraction and seed are not used
    # The views' own indices, so a view left out (not registered) does not shift the others.
    assert split_views([1, 2, 3, 5, 8, 9, 13, 16], 0.2, "every_8th", seed=0)[1] == [8, 16]


def test_every_8th_refuses_views_it_cannot_split():
    with pytest.raises(DataError, match="every_8th .* none to validate on"):
        split_views([1, 2, 3, 4], 0.2, "every_8th", seed=0)
    with pytest.raises(DataError, match="none to train on"):
        split_views([0, 8], 0.2, "every_8th", seed=0)


def test_every_8th_through_the_stage_and_params(tmp_path):
    params = tiny_params()
    params["split"]["order"] = "every_8th"
    cfg = config.from_dict(params)
    result = split.run(cfg, in_cameras=cameras_file(tmp_path / "cameras.npz", 17), out_split=tmp_path / "split.json")
    assert result["val"] == [0, 8, 16] and json.loads((tmp_path / "split.json").read_text())["val"] == [0, 8, 16]
    params["split"]["order"] = "every_eighth"
    with pytest.raises(ConfigError, match="every_8th"):  # the message lists the orders there are
        config.from_dict(params)


@pytest.mark.parametrize("num_views, fraction", [(1, 0.2), (3, 0.9), (2, 0.6)])
def test_too_few_views_are_refused(num_views, fraction):
    with pytest.raises(DataError, match="too few"):
        split_views(num_views, fraction, "shuffled", seed=0)


def cameras_file(path, count, own=None, registered=None):
    atomic.save_npz(path, **Cameras(names=[str(i) for i in range(count)], intrinsics=np.ones((count, 4)),
                                    distortion=np.zeros((count, 4)), poses=np.tile(np.eye(4), (count, 1, 1)),
                                    split=own, registered=registered).arrays())
    return path


def test_the_scenes_own_split_is_kept_and_its_test_part_too(tmp_path):
    cfg = config.from_dict(tiny_params())
    own = {"train": [0, 1, 2, 3], "val": [4], "test": [5, 6]}
    result = split.run(cfg, in_cameras=cameras_file(tmp_path / "c.npz", 7, own), out_split=tmp_path / "s.json")
    assert result == {"train": [0, 1, 2, 3], "val": [4], "test": [5, 6], "num_views": 7}
    assert json.loads((tmp_path / "s.json").read_text()) == result


def test_without_a_val_part_the_train_views_are_split_and_unregistered_views_left_out(tmp_path):
    cfg = config.from_dict(tiny_params())
    own = {"train": list(range(10)), "test": [10, 11]}
    registered = np.array([True] * 9 + [False, True, True])
    result = split.run(cfg, in_cameras=cameras_file(tmp_path / "c.npz", 12, own, registered),
                       out_split=tmp_path / "s.json")
    assert sorted(result["train"] + result["val"]) == list(range(9)) and len(result["val"]) == 2  # 9 - int(0.8 * 9)
    assert result["test"] == [10, 11]

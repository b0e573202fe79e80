"""The stage scripts as DVC runs them: user mistakes give one clear paragraph, exit 2, and no out."""

import json

import numpy as np
import pytest
import yaml
from conftest import REPO, assert_user_error, flags, stage, tiny_params

from nerf_pipeline.runtime import cli
from nerf_pipeline.stages import download, evaluate, export, poses, rays, render, split, train

STAGES = {"download": download, "poses": poses, "split": split, "rays": rays, "train": train, "evaluate": evaluate,
          "export": export, "render": render}


@pytest.mark.parametrize("name", STAGES)
def test_a_stage_script_takes_exactly_the_paths_of_run_by_name(name):
    """The flags come from run()'s keyword-only parameters and go back by name: no script can pass a path
    to the wrong parameter, whatever the order of the names."""
    module = STAGES[name]
    parameters = cli.path_parameters(module)
    assert parameters and all(p.startswith(("in_", "out_")) for p in parameters)
    args = cli.parse_paths(module, flags(**{p: f"path/of/{p}" for p in reversed(parameters)}))
    assert {p: getattr(args, p) for p in parameters} == {p: f"path/of/{p}" for p in parameters}
    assert f'cli.main("{name}")' in (REPO / "stages" / f"{name}.py").read_text()


def test_the_data_stages_by_hand(tmp_path):
    from conftest import make_rays

    from nerf_pipeline.scenes import ray_files

    make_rays(tmp_path, tiny_params())
    train = ray_files.load(tmp_path / "rays", "train")
    assert train.images.shape == (6, 24, 24, 3) and train.images.dtype == np.uint8
    origins, directions = train.view_rays(0)
    np.testing.assert_allclose(np.linalg.norm(directions, axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(origins[0, 0], train.poses[0, :3, 3])
    assert ray_files.parts(tmp_path / "rays") == ["train", "val"]  # the built-in scene has no test split
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cameras.npz", "params.yaml", "rays", "scene", "split.json"]


@pytest.mark.parametrize("change, fragments", [
    ({"epoch": 3}, ["params.yaml: unknown key 'epoch'. Did you mean 'epochs'?"]),
    ({"data": {"source": "tiny_nerf", "tiny_nerf_url": "http://nonexistent.invalid/t.npz"}},
     ["cannot reach http://nonexistent.invalid/t.npz", "data.source: synthetic"]),
    ({"data": {"source": "missing/scene.npz"}}, ["missing/scene.npz: file not found"]),
    ({"data": {"source": "scene.txt"}}, ["'data.source' is 'scene.txt': no such file"]),
])
def test_download_user_errors(tmp_path, change, fragments):
    params = tiny_params()
    for key, value in change.items():
        params[key] = {**params[key], **value} if isinstance(value, dict) and key in params else value
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = stage("download", "--out-scene", "scene", cwd=tmp_path)
    assert_user_error(result, *fragments)
    assert not (tmp_path / "scene").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_blender_folder_keeps_its_own_split(tmp_path):
    from scenes import write_blender

    write_blender(tmp_path / "lego_like", num_train=6, num_val=2)
    params = tiny_params()
    params["data"]["source"] = str(tmp_path / "lego_like")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert stage("download", "--out-scene", "scene", cwd=tmp_path).returncode == 0
    assert stage("poses", "--in-scene", "scene", "--out-cameras", "cameras.npz", cwd=tmp_path).returncode == 0
    result = stage("split", "--in-cameras", "cameras.npz", "--out-split", "split.json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "the scene's own split" in result.stderr
    split = json.loads((tmp_path / "split.json").read_text())
    assert split["train"] == list(range(6)) and split["val"] == [6, 7] and split["test"] == [8]


def test_malformed_transforms_through_the_stage(tmp_path):
    from scenes import write_ngp

    write_ngp(tmp_path / "capture")
    (tmp_path / "capture" / "images" / "frame_002.png").unlink()
    params = tiny_params()
    params["data"]["source"] = str(tmp_path / "capture")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = stage("download", "--out-scene", "out/scene", cwd=tmp_path)
    assert_user_error(result, "transforms.json: image", "frame_002.png not found")
    assert not (tmp_path / "out" / "scene").exists()


def test_the_rays_stage_downscales_depth_without_half_depths_at_silhouettes(tmp_path):
    """Ground-truth depth is 0 where a pixel sees no surface: a downscaled block holds the mean depth of
    its pixels that see one (or 0 when most see none), never a value between the object and the camera."""
    from conftest import run_data_stages

    from nerf_pipeline.scenes import ray_files
    from nerf_pipeline.scenes.scene import Scene

    params = tiny_params()
    params["data"]["downscale"] = 4
    run_data_stages(tmp_path, params)
    scene = Scene.open(tmp_path / "scene")
    train = ray_files.load(tmp_path / "rays", "train")
    split = json.loads((tmp_path / "split.json").read_text())
    silhouettes = 0
    for k, view in enumerate(split["train"]):
        blocks = np.asarray(scene.depth[view]).reshape(6, 4, 6, 4).transpose(0, 2, 1, 3).reshape(6, 6, 16)
        small = np.asarray(train.depth[k])
        surface = blocks > 0
        silhouettes += int(((surface.sum(-1) > 0) & (surface.sum(-1) < 16)).sum())
        low = np.where(surface, blocks, np.inf).min(-1)
        high = np.where(surface, blocks, -np.inf).max(-1)
        has = small > 0
        assert np.all((small[has] >= low[has] - 1e-5) & (small[has] <= high[has] + 1e-5))
        np.testing.assert_array_equal(has, surface.sum(-1) >= 8)
    assert silhouettes > 0  # the views do cut through the object's outline

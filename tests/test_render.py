"""The render stage's choices: the camera path that fits the capture, and the output size."""

import numpy as np
import pytest
from conftest import tiny_params

from nerf_pipeline import camera, config
from nerf_pipeline.stages.render import camera_path, output_size


def render_config(**changes):
    params = tiny_params()
    params["render"].update(changes)
    return config.from_dict(params).render


def test_cameras_all_around_get_an_orbit():
    poses = camera.hemisphere_poses(30, 4.0, seed=0)
    path, why = camera_path(render_config(), poses)
    assert len(path) == 12 and why.startswith("a 360° orbit") and "at least 270°" in why
    np.testing.assert_allclose(np.linalg.norm(path[:, :3, 3], axis=-1), 4.0, rtol=1e-5)


def test_cameras_on_one_side_get_a_spiral_where_they_were():
    """A handheld capture facing one side of the object: the video stays on that side."""
    positions = [camera.spherical_position(a, 10.0, 4.0) for a in np.linspace(-40, 40, 20)]
    poses = np.stack([camera.look_at(p) for p in positions])
    path, why = camera_path(render_config(num_frames=30), poses)
    assert why.startswith("a spiral") and "cover 80° of azimuth" in why and "less than 270°" in why
    azimuths = np.degrees(np.arctan2(path[:, 0, 3], path[:, 1, 3]))
    assert np.abs(azimuths).max() < 45.0  # never behind the object
    forward = -path[:, :3, 2]
    towards_centre = -path[:, :3, 3] / np.linalg.norm(path[:, :3, 3], axis=-1, keepdims=True)
    np.testing.assert_allclose(np.sum(forward * towards_centre, axis=-1), 1.0, atol=1e-5)  # looking at it
    assert camera_path(render_config(camera_path="orbit"), poses)[1].startswith("a 360° orbit")


@pytest.mark.parametrize("width, height, expected", [(None, None, (30, 40)), (80, None, (60, 80)),
                                                     (None, 15, (15, 20)), (64, 48, (48, 64))])
def test_output_size_keeps_the_aspect_when_one_side_is_given(width, height, expected):
    assert output_size(render_config(width=width, height=height), 30, 40) == expected


def test_a_camera_path_file_is_read_with_its_lenses(tmp_path):
    from nerf_pipeline.scenes.camera_paths import read_camera_path, write_camera_path

    poses = camera.orbit_poses(5, 30.0, 4.0)
    write_camera_path(tmp_path / "p.json", poses, fov_deg=60.0, width=40, height=30, fps=12)
    path = read_camera_path(tmp_path / "p.json")
    np.testing.assert_allclose(path.poses, poses, atol=1e-6)
    assert (path.width, path.height, path.fps) == (40, 30, 12.0)
    np.testing.assert_allclose(path.intrinsics[0], [15 / np.tan(np.radians(30)), 15 / np.tan(np.radians(30)), 20, 15],
                               rtol=1e-5)


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ('{"render_width": 4, "render_height": 4}', "non-empty list 'camera_path'"),
    ('{"render_width": 4, "render_height": 4, "camera_path": [{"fov": 50}]}', "needs 'camera_to_world'"),
    ('{"render_width": 4, "render_height": 4, "camera_path": [{"camera_to_world": [2,0,0,0, 0,1,0,0, 0,0,1,0, '
     '0,0,0,1], "fov": 50}]}', "is not a rigid transform"),
])
def test_a_bad_camera_path_is_refused_naming_the_file(tmp_path, content, message):
    from nerf_pipeline.runtime.errors import DataError
    from nerf_pipeline.scenes.camera_paths import read_camera_path

    (tmp_path / "bad.json").write_text(content)
    with pytest.raises(DataError, match=message) as error:
        read_camera_path(tmp_path / "bad.json")
    assert "bad.json" in str(error.value)

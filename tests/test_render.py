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

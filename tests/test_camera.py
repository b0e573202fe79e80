import numpy as np
import pytest

from nerf_pipeline import camera


def test_pixel_centre_directions_hand_computed():
    directions = camera.camera_directions(2, 2, 1.0)
    # row 0, col 0 is the top-left pixel: centre (0.5, 0.5), principal point (1, 1)
    np.testing.assert_allclose(directions[0, 0], [-0.5, 0.5, -1.0])
    np.testing.assert_allclose(directions[1, 1], [0.5, -0.5, -1.0])


def test_intrinsics_fx_fy_and_principal_point():
    # fx = 2, fy = 4, principal point at (1, 3) in a 4 x 2 (H x W) image
    directions = camera.camera_directions(4, 2, (2.0, 4.0, 1.0, 3.0))
    np.testing.assert_allclose(directions[0, 0], [(0.5 - 1.0) / 2.0, -(0.5 - 3.0) / 4.0, -1.0])
    np.testing.assert_allclose(directions[3, 1], [(1.5 - 1.0) / 2.0, -(3.5 - 3.0) / 4.0, -1.0])
    # a scalar focal is fx = fy with the principal point at the centre
    np.testing.assert_allclose(camera.camera_directions(4, 2, 3.0), camera.camera_directions(4, 2, (3.0, 3.0, 1.0, 2.0)))


def test_per_camera_intrinsics():
    poses = np.stack([np.eye(4), np.eye(4)])
    intrinsics = np.array([[1.0, 1.0, 1.0, 1.0], [2.0, 2.0, 1.0, 1.0]])
    _, directions = camera.generate_rays(poses, 2, 2, intrinsics)
    expected = [np.array([-0.5, 0.5, -1.0]), np.array([-0.25, 0.25, -1.0])]
    for view in range(2):
        np.testing.assert_allclose(directions[view, 0, 0], expected[view] / np.linalg.norm(expected[view]), rtol=1e-6)


def test_generate_rays_identity_pose():
    origins, directions = camera.generate_rays(np.eye(4)[None], 2, 2, 1.0)
    assert origins.shape == directions.shape == (1, 2, 2, 3)
    assert origins.dtype == directions.dtype == np.float32
    np.testing.assert_allclose(origins, 0.0)
    np.testing.assert_allclose(directions[0, 0, 0], np.array([-0.5, 0.5, -1.0]) / np.sqrt(1.5), rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(directions, axis=-1), 1.0, rtol=1e-6)


def test_generate_rays_rotated_and_translated():
    # A camera at (1, 2, 3) turned to look down +x: its -z axis must map to +x.
    pose = camera.look_at([1.0, 2.0, 3.0], target=[5.0, 2.0, 3.0])
    origins, directions = camera.generate_rays(pose[None], 1, 1, 10.0)
    np.testing.assert_allclose(origins[0, 0, 0], [1.0, 2.0, 3.0])
    np.testing.assert_allclose(directions[0, 0, 0], [1.0, 0.0, 0.0], atol=1e-6)


def test_pixel_rays_are_generate_rays_at_those_pixels():
    pose = camera.look_at([1.0, -3.0, 2.0], target=[0.2, 0.1, 0.0])
    intrinsics = np.array([30.0, 28.0, 9.5, 6.0])
    all_origins, all_directions = camera.generate_rays(pose, 12, 20, intrinsics)
    rows, cols = np.array([0, 11, 5, 7]), np.array([19, 0, 3, 12])
    origins, directions = camera.pixel_rays(pose, intrinsics, rows, cols)
    np.testing.assert_allclose(origins, all_origins[rows, cols], atol=1e-6)
    np.testing.assert_allclose(directions, all_directions[rows, cols], atol=1e-6)


def test_orbit_matches_keras_example_pose_spherical():
    # The Keras example's pose_spherical(theta=0, phi=-30, radius=4), multiplied out by hand.
    expected = np.array([[-1.0, 0.0, 0.0, 0.0],
                         [0.0, -0.5, np.sqrt(3) / 2, 2 * np.sqrt(3)],
                         [0.0, np.sqrt(3) / 2, 0.5, 2.0],
                         [0.0, 0.0, 0.0, 1.0]])
    poses = camera.orbit_poses(4, elevation_deg=30.0, radius=4.0)
    assert poses.shape == (4, 4, 4)
    np.testing.assert_allclose(poses[0], expected, atol=1e-6)
    # theta = 90: the camera moves to +x, still 2 above the ground plane
    np.testing.assert_allclose(poses[1][:3, 3], [2 * np.sqrt(3), 0.0, 2.0], atol=1e-6)


def test_orbit_keeps_every_frame():
    poses = camera.orbit_poses(120)
    assert len(poses) == 120
    azimuths = np.degrees(np.arctan2(poses[:, 0, 3], poses[:, 1, 3])) % 360
    np.testing.assert_allclose(np.diff(azimuths)[:50], 3.0, atol=1e-4)


def test_hemisphere_poses_look_at_origin_from_above():
    poses = camera.hemisphere_poses(50, radius=4.0, seed=3)
    positions = poses[:, :3, 3]
    np.testing.assert_allclose(np.linalg.norm(positions, axis=-1), 4.0, rtol=1e-5)
    assert np.all(positions[:, 2] > 0)
    # the viewing direction (-z axis) points at the origin
    forward = -poses[:, :3, 2]
    np.testing.assert_allclose(forward, -positions / 4.0, atol=1e-5)
    assert camera.rotation_error(poses).max() < 1e-5
    np.testing.assert_array_equal(poses, camera.hemisphere_poses(50, radius=4.0, seed=3))
    assert not np.allclose(poses, camera.hemisphere_poses(50, radius=4.0, seed=4))


def test_rotation_error_flags_non_rigid_pose():
    pose = np.eye(4)
    pose[0, 0] = 2.0
    assert camera.rotation_error(pose) == pytest.approx(3.0)
    assert camera.rotation_error(np.eye(4)) == 0.0


def test_look_at_refuses_parallel_up():
    with pytest.raises(ValueError):
        camera.look_at([0, 0, 4], target=[0, 0, 0], world_up=[0, 0, 1])

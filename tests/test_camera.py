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
    np.testing.assert_allclose(camera.camera_directions(4, 2, 3.0),
                               camera.camera_directions(4, 2, (3.0, 3.0, 1.0, 2.0)))


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


# ----------------------------------------------------------------------------- render paths: where the cameras look

def test_looked_at_point_is_where_converging_axes_meet_and_none_for_parallel_axes():
    positions = np.array([[x, -5.0, z] for x in (-1.0, 0.0, 1.0) for z in (0.0, 1.0)])
    assert np.allclose(camera.looked_at_point(np.stack([camera.look_at(p, [0.2, 1.0, 0.5]) for p in positions])),
                       [0.2, 1.0, 0.5], atol=1e-6)
    parallel = np.stack([camera.look_at(p, p + [0.0, 1.0, 0.0]) for p in positions])
    assert camera.looked_at_point(parallel) is None
    # Cameras looking away from the point their axes come nearest to do not look at it.
    outwards = np.stack([camera.look_at(p, 2 * p - [0.2, 1.0, 0.5]) for p in positions])
    assert camera.looked_at_point(outwards) is None


def test_focus_depth_lies_between_near_and_far_nearer_near():
    depth = camera.focus_depth(2.0, 6.0)
    assert 2.0 < depth < 4.0
    assert camera.focus_depth(2.0, 1000.0) < 8.0  # an unbounded scene's far does not push the focus away


def test_view_target_of_parallel_cameras_lies_ahead_of_them():
    positions = np.array([[x, -5.0, z] for x in (-1.0, 0.0, 1.0) for z in (0.0, 1.0)])
    parallel = np.stack([camera.look_at(p, p + [0.0, 1.0, 0.0]) for p in positions])
    target, how = camera.view_target(parallel, 2.0, 6.0)
    np.testing.assert_allclose(target, [0.0, -5.0 + camera.focus_depth(2.0, 6.0), 0.5], atol=1e-9)
    assert "units ahead of the cameras" in how
    target, how = camera.view_target(parallel, 2.0, 6.0, depth_ahead=5.0)  # the scene's depth, measured
    np.testing.assert_allclose(target, [0.0, 0.0, 0.5], atol=1e-9)
    np.testing.assert_allclose(camera.mean_pose(parallel)[:3, 3], [0.0, -5.0, 0.5], atol=1e-9)


def test_orbit_about_a_tilted_up_keeps_that_up_and_looks_at_the_centre():
    up = np.array([0.0, np.sin(0.5), np.cos(0.5)])
    poses = camera.orbit_poses(24, 20.0, 3.0, center=(1.0, 2.0, 3.0), world_up=up).astype(np.float64)
    offsets = poses[:, :3, 3] - [1.0, 2.0, 3.0]
    np.testing.assert_allclose(np.linalg.norm(offsets, axis=-1), 3.0, rtol=1e-5)
    np.testing.assert_allclose(offsets @ up, 3.0 * np.sin(np.radians(20.0)), atol=1e-5)  # one height above it
    np.testing.assert_allclose(-poses[:, :3, 2], -offsets / 3.0, atol=1e-5)
    np.testing.assert_allclose(poses[:, :3, 0] @ up, 0.0, atol=1e-5)  # right stays level: no roll
    assert camera.azimuth_coverage_deg(poses[:, :3, 3], (1.0, 2.0, 3.0), up) == pytest.approx(345.0, abs=1e-3)


def test_spiral_of_top_down_cameras_does_not_roll():
    """Cameras straight above the scene looking down, up +y: the spiral keeps +y up (it used to turn 360°)."""
    positions = np.array([[x, y, 5.0] for x in (-1.0, 0.0, 1.0) for y in (-1.0, 0.0, 1.0)])
    poses = np.stack([camera.look_at(p, p - [0.0, 0.0, 1.0], world_up=[0.0, 1.0, 0.0]) for p in positions])
    path = camera.spiral_poses(poses, 30, target=(0.0, 0.0, 0.0)).astype(np.float64)
    up_across = np.array([0.0, 1.0, 0.0]) - (-path[:, :3, 2] @ [0.0, 1.0, 0.0])[:, None] * -path[:, :3, 2]
    cosines = np.sum(path[:, :3, 1] * up_across / np.linalg.norm(up_across, axis=-1, keepdims=True), axis=-1)
    assert cosines.min() > np.cos(np.radians(1.0))


def test_rig_up_is_the_axis_level_cameras_share_even_where_their_mean_up_leans():
    poses = camera.hemisphere_poses(8, 4.0, seed=0)  # few views: their ups lean one way on average
    assert np.degrees(np.arccos(camera.mean_up(poses)[2])) > 5.0
    np.testing.assert_allclose(camera.rig_up(poses), [0.0, 0.0, 1.0], atol=1e-5)
    positions = np.array([[x, -5.0, z] for x in (-1.0, 0.0, 1.0) for z in (0.0, 1.0)])
    parallel = np.stack([camera.look_at(p, p + [0.0, 1.0, 0.0]) for p in positions])  # rights all alike
    np.testing.assert_allclose(camera.rig_up(parallel), camera.mean_up(parallel))


def test_nearest_views_weights_mix_the_nearest_cameras_and_change_continuously():
    positions = np.array([[0.0, 0, 0], [1.0, 0, 0], [3.0, 0, 0], [10.0, 0, 0]])
    np.testing.assert_array_equal(camera.nearest_views_weights(positions, [1.0, 0, 0]), [0, 1, 0, 0])
    # at 0.5: 1/0.5 - 1/2.5 each for the two nearest, nothing for the others
    np.testing.assert_allclose(camera.nearest_views_weights(positions, [0.5, 0, 0]), [0.5, 0.5, 0, 0])
    near_first = camera.nearest_views_weights(positions, [0.2, 0, 0])
    assert near_first[0] > near_first[1] > 0 == near_first[2] == near_first[3]
    np.testing.assert_allclose(near_first.sum(), 1.0)
    # crossing 1.5, where camera 0 and camera 2 (both 1.5 away) swap places as second and third nearest:
    # each weight moves a little, none jumps (the second's weight is zero at the swap)
    path = np.linspace(1.1, 1.9, 81)
    weights = np.stack([camera.nearest_views_weights(positions, [x, 0, 0]) for x in path])
    assert np.abs(np.diff(weights, axis=0)).max() < 0.05
    assert camera.nearest_views_weights(positions[:1], [5.0, 0, 0]).tolist() == [1.0]
    # every camera as far as the next: alike
    ring = np.array([[1.0, 0, 0], [-1.0, 0, 0], [0, 1.0, 0]])
    np.testing.assert_allclose(camera.nearest_views_weights(ring, [0, 0, 0]), [0.5, 0.5, 0])


def test_align_similarity_recovers_a_known_similarity():
    rng = np.random.default_rng(0)
    source = rng.normal(size=(12, 3))
    angle = 0.7
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]])
    rotation = rotation @ camera.look_at([1.0, 2.0, 0.5])[:3, :3]  # a general rotation
    target = 2.5 * source @ rotation.T + np.array([0.3, -1.0, 4.0])
    scale, fitted_rotation, translation = camera.align_similarity(source, target)
    assert scale == pytest.approx(2.5)
    np.testing.assert_allclose(fitted_rotation, rotation, atol=1e-9)
    np.testing.assert_allclose(translation, [0.3, -1.0, 4.0], atol=1e-9)
    assert np.linalg.det(fitted_rotation) == pytest.approx(1.0)

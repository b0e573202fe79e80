"""The render stage's choices: the camera path that fits the capture, and the output size."""

import re

import numpy as np
import pytest
from conftest import count_video_frames, tiny_params

from nerf_pipeline import camera, config
from nerf_pipeline.render_paths import camera_path, output_size


def render_config(**changes):
    params = tiny_params()
    params["render"].update(changes)
    return config.from_dict(params).render


def test_cameras_all_around_get_an_orbit():
    poses = camera.hemisphere_poses(30, 4.0, seed=0)
    path, why = camera_path(render_config(), poses, 2.0, 6.0)
    assert len(path) == 12 and why.startswith("a 360° orbit") and "at least 270°" in why
    np.testing.assert_allclose(np.linalg.norm(path[:, :3, 3], axis=-1), 4.0, rtol=1e-5)


def test_cameras_on_one_side_get_a_spiral_where_they_were():
    """A handheld capture facing one side of the object: the video stays on that side."""
    positions = [camera.spherical_position(a, 10.0, 4.0) for a in np.linspace(-40, 40, 20)]
    poses = np.stack([camera.look_at(p) for p in positions])
    path, why = camera_path(render_config(num_frames=30), poses, 2.0, 6.0)
    assert why.startswith("a spiral") and "less than 270°" in why
    # 80° of azimuth, give or take the tilt of the cameras' mean up (they look down 10°) that it is measured about
    assert 78 <= float(re.search(r"cover (\d+)° of azimuth", why).group(1)) <= 80, why
    assert "looking at the point the cameras look at" in why
    azimuths = np.degrees(np.arctan2(path[:, 0, 3], path[:, 1, 3]))
    assert np.abs(azimuths).max() < 45.0  # never behind the object
    forward = -path[:, :3, 2]
    towards_centre = -path[:, :3, 3] / np.linalg.norm(path[:, :3, 3], axis=-1, keepdims=True)
    np.testing.assert_allclose(np.sum(forward * towards_centre, axis=-1), 1.0, atol=1e-5)  # looking at it
    assert camera_path(render_config(camera_path="orbit"), poses, 2.0, 6.0)[1].startswith("a 360° orbit")


# ----------------------------------------------------------------------------- the video frames the subject
# Synthetic rigs, each with the point its cameras look at (the subject). The video must keep that point in
# the middle third of every frame and never roll against the rig's up.

WIDTH, HEIGHT = 64, 48
Z = np.array([0.0, 0.0, 1.0])
LENS = np.array([WIDTH / 2 / np.tan(np.radians(30)), WIDTH / 2 / np.tan(np.radians(30)), WIDTH / 2, HEIGHT / 2])


def _jittered(poses, degrees, seed):
    """Each pose turned about a random axis by up to ``degrees`` (a handheld capture's aim)."""
    from scipy.spatial.transform import Rotation

    turns = Rotation.from_rotvec(np.random.default_rng(seed).normal(size=(len(poses), 3)) * np.radians(degrees) / 2)
    out = np.array(poses, dtype=np.float64)
    out[:, :3, :3] = turns.as_matrix() @ out[:, :3, :3]
    return out


def _grid(centre, right, up, columns=5, rows=4, spacing=0.5):
    """Camera positions [rows * columns, 3] on a grid across ``right`` and ``up`` around ``centre``."""
    u, v = np.meshgrid((np.arange(columns) - (columns - 1) / 2) * spacing, (np.arange(rows) - (rows - 1) / 2) * spacing)
    return np.asarray(centre) + u.reshape(-1, 1) * np.asarray(right) + v.reshape(-1, 1) * np.asarray(up)


def _transformed(poses, rotation, shift):
    """The rig moved rigidly: ``x -> rotation @ x + shift``."""
    out = np.array(poses, dtype=np.float64)
    out[:, :3, :3] = rotation @ out[:, :3, :3]
    out[:, :3, 3] = out[:, :3, 3] @ rotation.T + shift
    return out


def _rig(name):
    """``(poses [N, 4, 4], subject [3], the rig's up [3], near, far, expected path)``."""
    from scipy.spatial.transform import Rotation

    subject = np.array([0.3, 0.0, 1.0])
    if name == "forward-facing, aimed at the subject":
        poses = np.stack([camera.look_at(p, subject) for p in _grid([0, -6, 1.2], [1, 0, 0], [0, 0, 1])])
        return _jittered(poses, 1.0, 0), subject, Z, 2.0, 10.0, "spiral"
    if name == "forward-facing, parallel axes (LLFF)":
        # Axes that do not meet: the subject is what lies ahead of the cameras, between near and far.
        poses = np.stack([camera.look_at(p, p + [0, 1, 0]) for p in _grid([0, -6, 1], [1, 0, 0], [0, 0, 1])])
        return _jittered(poses, 0.5, 1), np.array([0.0, 0.0, 1.0]), Z, 3.0, 12.0, "spiral"
    if name == "forward-facing, parallel axes, normalized by the poses stage":
        # The held-out phone capture: normalize_poses centres such a capture on the cameras' mean position.
        poses = np.stack([camera.look_at(p, p + [0, 1, 0]) for p in _grid([0, -6, 1], [1, 0, 0], [0, 0, 1])])
        normalized, transform = camera.normalize_poses(_jittered(poses, 0.5, 2))
        rotation, centre = np.asarray(transform["rotation"]), transform["center"]
        moved = transform["scale"] * rotation @ (np.array([0.0, 0.0, 1.0]) - centre)
        return (normalized, moved, np.asarray(transform["rotation"]) @ Z, 3.0 * transform["scale"],
                12.0 * transform["scale"], "spiral")
    if name == "360° around a point off the origin":
        poses = camera.hemisphere_poses(40, 3.0, seed=0)
        poses[:, :3, 3] += [1.0, -2.0, 0.5]
        return poses, np.array([1.0, -2.0, 0.5]), Z, 1.0, 6.0, "orbit"
    if name == "top-down ring":
        positions = np.stack([camera.spherical_position(a, 80.0, 4.0) for a in np.arange(0, 360, 15)]) + [1, 2, 0]
        return np.stack([camera.look_at(p, [1, 2, 0]) for p in positions]), np.array([1.0, 2.0, 0.0]), Z, 2.0, 6.0, \
            "orbit"
    if name == "top-down grid (a drone looking straight down)":
        positions = _grid([0, 0, 5], [1, 0, 0], [0, 1, 0])
        poses = np.stack([camera.look_at(p, p - [0, 0, 1], world_up=[0, 1, 0]) for p in positions])
        return _jittered(poses, 0.5, 3), np.array([0.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0]), 2.0, 8.0, "spiral"
    if name == "360° on a tilted axis":
        turn = Rotation.from_euler("xz", [35, 20], degrees=True).as_matrix()
        return (_transformed(camera.hemisphere_poses(40, 3.0, seed=1), turn, [0.5, 0.5, 0.0]),
                np.array([0.5, 0.5, 0.0]), turn @ Z, 1.0, 6.0, "orbit")
    if name == "forward-facing, rolled and looking down":
        poses = np.stack([camera.look_at(p, subject) for p in _grid([0, -6, 1.2], [1, 0, 0], [0, 0, 1])])
        turn = Rotation.from_euler("yx", [25, -30], degrees=True).as_matrix()  # roll, then pitch down
        return _jittered(_transformed(poses, turn, [0, 0, 0]), 1.0, 4), turn @ subject, turn @ Z, 2.0, 10.0, "spiral"
    raise KeyError(name)


RIGS = ["forward-facing, aimed at the subject", "forward-facing, parallel axes (LLFF)",
        "forward-facing, parallel axes, normalized by the poses stage", "360° around a point off the origin",
        "top-down ring", "top-down grid (a drone looking straight down)", "360° on a tilted axis",
        "forward-facing, rolled and looking down"]


def _pixels(poses, point):
    """``(col, row, depth)`` [F] of ``point`` seen through each pose with ``LENS``."""
    local = np.einsum("fji,fj->fi", poses[:, :3, :3], point - poses[:, :3, 3])  # R^T (point - centre)
    depth = -local[:, 2]
    return LENS[2] + LENS[0] * local[:, 0] / depth, LENS[3] - LENS[1] * local[:, 1] / depth, depth


@pytest.mark.parametrize("name", RIGS)
def test_the_video_keeps_the_subject_in_the_middle_third_without_rolling(name):
    poses, subject, rig_up, near, far, expected = _rig(name)
    path, why = camera_path(render_config(num_frames=40), poses, near, far)
    assert why.startswith("a 360° orbit" if expected == "orbit" else "a spiral"), why
    path = path.astype(np.float64)
    if expected == "spiral":  # forward-facing: the video stays among the cameras
        spread = np.linalg.norm(poses[:, :3, 3] - poses[:, :3, 3].mean(0), axis=-1).max()
        assert np.linalg.norm(path[:, :3, 3] - poses[:, :3, 3].mean(0), axis=-1).max() <= 1.01 * spread
    looked_at = camera.looked_at_point(poses)
    # The rigs whose axes meet: that point is the subject (the least-squares point the test speaks of).
    if looked_at is not None:
        np.testing.assert_allclose(looked_at, subject, atol=0.2)
    cols, rows, depth = _pixels(path, subject)
    assert np.all(depth > 0), "the subject is behind the camera"
    assert np.all((cols > WIDTH / 3) & (cols < 2 * WIDTH / 3)), f"columns {cols.min():.1f}..{cols.max():.1f}"
    assert np.all((rows > HEIGHT / 3) & (rows < 2 * HEIGHT / 3)), f"rows {rows.min():.1f}..{rows.max():.1f}"
    # No roll: each frame's up is the rig's up seen in that frame (projected across its viewing direction). The
    # rig's up is known here; the cameras' mean up is not it for cameras all around (those of one side of a
    # hemisphere rig lean their ups one way), so the path may not use it either.
    forward = -path[:, :3, 2]
    projected = rig_up - np.sum(rig_up * forward, axis=-1, keepdims=True) * forward
    projected /= np.linalg.norm(projected, axis=-1, keepdims=True)
    roll = np.degrees(np.arccos(np.clip(np.sum(projected * path[:, :3, 1], axis=-1), -1, 1)))
    assert roll.max() < 3.0, f"a frame rolls {roll.max():.1f}°"


def test_an_orbit_keeps_the_cameras_height_and_distance():
    poses, subject, up, near, far, _ = _rig("360° on a tilted axis")
    path, _ = camera_path(render_config(num_frames=40), poses, near, far)
    heights = lambda p: (p[:, :3, 3] - subject) @ up  # noqa: E731
    distances = lambda p: np.linalg.norm(p[:, :3, 3] - subject, axis=-1)  # noqa: E731
    np.testing.assert_allclose(distances(path), np.median(distances(poses)), rtol=1e-3)
    np.testing.assert_allclose(heights(path), np.median(heights(poses)), rtol=0.1)


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
    from nerf_pipeline.errors import DataError
    from nerf_pipeline.scenes.camera_paths import read_camera_path

    (tmp_path / "bad.json").write_text(content)
    with pytest.raises(DataError, match=message) as error:
        read_camera_path(tmp_path / "bad.json")
    assert "bad.json" in str(error.value)


def _plane_renderer(point, normal):
    """A stand-in for a method (``methods.Method.render``): an opaque plane through ``point`` across ``normal``."""
    class Plane:
        def render(self, cam):
            origins, directions = cam.rays()
            t = np.sum((point - origins) * normal, axis=-1) / np.sum(directions * normal, axis=-1)
            hit = t > 0
            return {"depth": np.where(hit, t, 0.0), "opacity": hit.astype(np.float32)}
    return Plane()


def test_a_forward_facing_video_looks_as_far_as_the_scene_is_ahead():
    """The held-out phone capture: parallel axes, centred on the cameras by the poses stage, near/far derived
    from camera distances (near about 0). The scene's depth, rendered, puts the subject in the frame."""
    from nerf_pipeline.render_paths import depth_ahead

    poses, subject, _, _, _, _ = _rig("forward-facing, parallel axes, normalized by the poses stage")
    near, far = camera.bounds_from_cameras(poses)
    forward = camera.mean_forward(poses)
    depth = depth_ahead(_plane_renderer(subject, forward), poses, LENS, HEIGHT, WIDTH)
    assert depth == pytest.approx(np.dot(subject - poses[:, :3, 3].mean(0), forward), rel=0.02)
    path, why = camera_path(render_config(num_frames=40), poses, near, far, depth)
    assert "looking at the scene" in why
    cols, rows, ahead = _pixels(path.astype(np.float64), subject)
    assert np.all(ahead > 0) and np.all((cols > WIDTH / 3) & (cols < 2 * WIDTH / 3))
    assert np.all((rows > HEIGHT / 3) & (rows < 2 * HEIGHT / 3))
    # Nothing opaque ahead (the plane is behind the cameras): no depth, and the path falls back to near/far.
    assert depth_ahead(_plane_renderer(poses[:, :3, 3].mean(0) - forward, forward), poses, LENS, HEIGHT, WIDTH) is None


# ----------------------------------------------------------------------------- sizes and streaming (issue 30)


def _long_camera_path(path, num_frames: int, width: int = 8, height: int = 8) -> None:
    """A valid camera_path.json of ``num_frames`` identical frames (written directly: write_camera_path's indented
    JSON of 100 000 frames takes a while)."""
    frame = '{"camera_to_world": [1,0,0,0, 0,1,0,0, 0,0,1,4, 0,0,0,1], "fov": 50}'
    path.write_text(f'{{"render_width": {width}, "render_height": {height}, "fps": 30, "camera_path": ['
                    + ",".join([frame] * num_frames) + "]}")


@pytest.mark.parametrize("frames, size, message", [
    (100_001, (8, 8), "has 100001 frames; at most 100000 (render.num_frames' bound)"),
    (3, (100_000, 50), "frames of 100000x50 pixels; at most 8192 a side"),
])
def test_a_camera_path_file_too_long_or_too_large_is_refused_naming_it(tmp_path, frames, size, message):
    """Before the model or the rays are read: it used to hold all its frames in memory (10^6 frames: 27.9 GiB)."""
    from nerf_pipeline.errors import DataError
    from nerf_pipeline.stages import render

    _long_camera_path(tmp_path / "long.json", frames, *size)
    cfg = config.from_dict({**tiny_params(), "render": {**tiny_params()["render"],
                                                        "camera_path": str(tmp_path / "long.json")}})
    with pytest.raises(DataError) as error:
        render.run(cfg, in_model=tmp_path / "model", in_rays=tmp_path / "rays", out_video=tmp_path / "v.mp4",
                   out_depth_video=tmp_path / "d.mp4", out_gif=tmp_path / "g.gif")
    assert str(tmp_path / "long.json") in str(error.value) and message in str(error.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long.json"]


def test_frames_stream_to_the_videos_and_the_depth_video_keeps_one_colour_range(tmp_path):
    """Only a frame at a time is in memory: 72 frames take no more than 24 do (as all frames were held, 8192x8192
    ones asked for 45 GiB before the first rendered), and the depth video's colours still span all frames' depths.
    (What grows with the frames, up to a bound, is the depths that pin the colour range: at most a million, which
    24 frames of this disc already give.)"""
    import tracemalloc

    import imageio

    from nerf_pipeline import media
    from nerf_pipeline.stages.render import write_videos

    height, width = 240, 320
    poses = camera.orbit_poses(72, 20.0, 4.0)
    lens = [width / 2 / np.tan(np.radians(25))] * 2 + [width / 2, height / 2]

    def render_frame(i):
        """A textured disc of radius 2 on the plane z = 0, seen from frame i."""
        origins, directions = camera.generate_rays(poses[i], height, width, lens)
        t = -origins[..., 2] / np.minimum(directions[..., 2], -1e-6)
        points = origins + directions * t[..., None]
        hit = (t > 0) & (np.linalg.norm(points[..., :2], axis=-1) < 2.0)
        rgb = np.where(hit[..., None], np.abs(np.sin(points * 3)), 0.0).astype(np.float32)
        return {"rgb": rgb, "depth": np.where(hit, t, 0.0).astype(np.float32), "opacity": hit.astype(np.float32)}

    def peak_memory(num_frames: int) -> int:
        folder = tmp_path / str(num_frames)
        tracemalloc.start()
        try:
            render_s = write_videos(render_frame, num_frames, height, width, fps=12, out_video=folder / "v.mp4",
                                    out_depth_video=folder / "d.mp4")
            assert render_s > 0
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    peak_memory(2)  # matplotlib's colour maps and imageio's writer, loaded once
    more_frames = 48 * height * width * 6  # rgb, float16 depth and uint8 opacity of 48 more frames: 22 MB
    assert peak_memory(72) - peak_memory(24) < more_frames / 10
    folder = tmp_path / "72"
    assert count_video_frames(folder / "v.mp4") == count_video_frames(folder / "d.mp4") == 72
    assert sorted(p.name for p in folder.iterdir()) == ["d.mp4", "v.mp4"]  # no scratch left behind
    # The depth frames coloured with the range of all frames' depths, as before streaming.
    outs = [render_frame(i) for i in range(72)]
    depth, acc = np.stack([o["depth"] for o in outs]), np.stack([o["opacity"] for o in outs])
    hits = depth[acc > 0.5].astype(np.float16).astype(np.float32)
    lo, hi = media.depth_range(hits, np.ones(len(hits)))
    with imageio.get_reader(folder / "d.mp4", format="FFMPEG") as reader:
        for i, frame in enumerate(reader):
            if i in (0, 36):
                expected = media.colorize_depth(depth[i], acc[i], lo, hi).astype(np.float32)
                assert np.abs(frame.astype(np.float32) - expected).mean() < 6, i


def test_a_render_that_cannot_fit_its_scratch_space_is_refused_before_rendering(tmp_path):
    from nerf_pipeline.errors import UserError
    from nerf_pipeline.stages.render import write_videos

    def render_frame(i):
        raise AssertionError("nothing renders when the depth scratch cannot fit")

    with pytest.raises(UserError, match="render.num_frames or the output size") as error:
        write_videos(render_frame, 100_000, 8192, 8192, fps=30, out_video=tmp_path / "v.mp4",
                     out_depth_video=tmp_path / "d.mp4")
    assert str(tmp_path) in str(error.value)
    assert list(tmp_path.iterdir()) == []

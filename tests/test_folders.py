"""Loaders of NeRF-synthetic and instant-ngp/nerfstudio folders: pixels, rays, intrinsics, errors.

The strongest check runs the real data stages (download, poses, split, rays) on a folder written
by the built-in renderer through known cameras: the rays the pipeline makes, mapped back through
the similarity the poses stage applied, are those cameras' rays, and tracing them gives the pixels.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import run_data_stages, tiny_params
from scenes import write_blender, write_ngp

from nerf_pipeline import camera
from nerf_pipeline.errors import DataError
from nerf_pipeline.scenes import folders, ray_files, synthetic
from nerf_pipeline.scenes.images import undistort
from nerf_pipeline.scenes.scene import check_cameras
from nerf_pipeline.render_paths import orbit_path

QUANTUM = 1.0 / 255  # PNG stores 8 bits


def similarity(original_poses, loaded_poses):
    """``(R, S, T)`` with loaded = S * R @ original + T, recovered from two cameras."""
    rotation = loaded_poses[0, :3, :3] @ original_poses[0, :3, :3].T
    o, o_loaded = original_poses[:, :3, 3], loaded_poses[:, :3, 3]
    scale = np.linalg.norm(o_loaded[1] - o_loaded[0]) / np.linalg.norm(o[1] - o[0])
    return rotation, scale, o_loaded[0] - scale * rotation @ o[0]


def through_the_pipeline(tmp_path, source, **data) -> dict:
    """The rays parts that the data stages make of ``source``, by part name."""
    params = tiny_params()
    params["data"].update(source=str(source), **data)
    folder = run_data_stages(tmp_path / "run", params)
    return {part: ray_files.load(folder / "rays", part) for part in ray_files.parts(folder / "rays")}


def check_rays_and_pixels(parts: dict, original_poses, intrinsics, height, width):
    """Every view's rays, mapped back to the original frame, are the original cameras' rays, and
    tracing them gives the stored pixels."""
    loaded = {int(v): pose for part in parts.values() for v, pose in zip(part.view_ids, part.poses)}
    views = sorted(loaded)
    rotation, scale, translation = similarity(original_poses[views], np.stack([loaded[v] for v in views]))
    for part in parts.values():
        for k, view in enumerate(part.view_ids):
            np.testing.assert_allclose(part.poses[k, :3, :3], rotation @ original_poses[view, :3, :3], atol=1e-5)
            origins, directions = part.view_rays(k)
            origins = (origins - translation) / scale @ rotation  # R^T applied to row vectors
            directions = directions @ rotation
            expected = camera.generate_rays(original_poses[view], height, width, intrinsics)
            np.testing.assert_allclose(origins, expected[0], atol=1e-4)
            np.testing.assert_allclose(directions, expected[1], atol=1e-5)
            traced, _ = synthetic.trace(origins, directions)
            np.testing.assert_allclose(part.view_rgb(k), traced, atol=QUANTUM)


def test_blender_split_files_keep_their_parts_pixels_and_rays(tmp_path):
    written = write_blender(tmp_path / "scene")
    views = folders.read_blender(tmp_path / "scene", background=0.0, max_views=None)
    assert views.count == 9 and views.cameras.split == {"train": list(range(6)), "val": [6, 7], "test": [8]}
    np.testing.assert_allclose(views.cameras.intrinsics, [[written["focal"], written["focal"], 12.0, 12.0]] * 9,
                               rtol=1e-6)
    np.testing.assert_array_equal(views.cameras.poses, written["poses"])  # as written; the poses stage normalises
    parts = through_the_pipeline(tmp_path, tmp_path / "scene")
    assert {name: part.num_views for name, part in parts.items()} == {"train": 6, "val": 2, "test": 1}
    check_rays_and_pixels(parts, written["poses"].astype(np.float64), written["focal"], 24, 24)
    # cameras 4 from the centre stay there: near and far as tiny_nerf's
    assert parts["train"].near == pytest.approx(2.0, rel=0.01) and parts["train"].far == pytest.approx(6.0, rel=0.01)


def test_blender_alpha_is_composited_on_the_background(tmp_path):
    written = write_blender(tmp_path / "scene")
    views = folders.read_blender(tmp_path / "scene", background=1.0, max_views=None)
    images = np.stack([views.read(i) for i in range(views.count)])
    missed = written["depth"] == 0
    np.testing.assert_allclose(images[missed], 1.0)  # white where alpha is 0, whatever the RGB there
    np.testing.assert_allclose(images[~missed], written["rgb"][~missed], atol=QUANTUM)


def test_split_files_with_instant_ngp_intrinsics_and_no_val_file(tmp_path):
    """Blender-style split files whose top level carries fl_x/fl_y/cx/cy/w/h and k1..p2 (as
    ../shared/data/stitch does) use those intrinsics; without transforms_val.json the split stage
    cuts val views out of train."""
    intrinsics = (30.0, 24.0, 11.0, 13.0)
    written = write_blender(tmp_path / "scene", num_train=8, num_val=2, num_test=2)
    for part in ("train", "val", "test"):
        path = tmp_path / "scene" / f"transforms_{part}.json"
        meta = json.loads(path.read_text())
        meta.update(fl_x=intrinsics[0], fl_y=intrinsics[1], cx=intrinsics[2], cy=intrinsics[3], w=24, h=24,
                    k1=0.0, k2=0.0, p1=0.0, p2=0.0, aabb_scale=16)
        path.write_text(json.dumps(meta))
    views = folders.read_blender(tmp_path / "scene", background=0.0, max_views=None)
    np.testing.assert_allclose(views.cameras.intrinsics, [intrinsics] * 12)
    assert views.cameras.unbounded  # aabb_scale 16: a capture whose background reaches far
    (tmp_path / "scene" / "transforms_val.json").unlink()
    parts = through_the_pipeline(tmp_path, tmp_path / "scene")
    assert {name: part.num_views for name, part in parts.items()} == {"train": 6, "val": 2, "test": 2}
    assert set(parts["val"].view_ids) < set(range(8)) and list(parts["test"].view_ids) == [8, 9]
    np.testing.assert_allclose(parts["train"].intrinsics, [intrinsics] * 6)
    assert parts["train"].unbounded and parts["train"].far == 1000.0
    assert written["rgb"].shape[0] == 12


@pytest.mark.parametrize("per_frame", [False, True])
def test_ngp_round_trip_with_off_centre_principal_point_and_fx_ne_fy(tmp_path, per_frame):
    intrinsics = (30.0, 24.0, 15.0, 9.0)  # fx != fy, principal point off the centre (14, 10)
    written = write_ngp(tmp_path / "capture", intrinsics=intrinsics, per_frame=per_frame)
    views = folders.read_transforms(tmp_path / "capture" / "transforms.json", background=0.0, max_views=None)
    assert (views.count, views.height, views.width) == (6, 20, 28) and views.cameras.split is None
    np.testing.assert_allclose(views.cameras.intrinsics, [intrinsics] * 6)
    parts = through_the_pipeline(tmp_path, tmp_path / "capture")
    check_rays_and_pixels(parts, written["poses"].astype(np.float64), np.asarray(intrinsics), 20, 28)
    # the capture's offset and scale are undone: centred, radius 4, z up
    poses = np.concatenate([part.poses for part in parts.values()])
    assert np.median(np.linalg.norm(poses[:, :3, 3], axis=-1)) == pytest.approx(4.0, rel=1e-5)
    assert np.all(poses[:, 2, 3] > 0)  # all cameras above the ground plane, as written


def test_ngp_reads_jpg_and_the_json_path(tmp_path):
    write_ngp(tmp_path / "capture", extension="jpg")
    layout = folders.find_layout(str(tmp_path / "capture" / "transforms.json"))
    assert layout == ("ngp", tmp_path / "capture" / "transforms.json")
    views = folders.read_transforms(layout[1], background=0.0, max_views=None)
    assert views.read(5).shape == (20, 28, 3)


def test_downscale_averages_blocks_and_scales_intrinsics(tmp_path):
    intrinsics = (30.0, 24.0, 15.0, 9.0)
    write_ngp(tmp_path / "capture", intrinsics=intrinsics)
    full = through_the_pipeline(tmp_path / "full", tmp_path / "capture")["train"]
    half = through_the_pipeline(tmp_path / "half", tmp_path / "capture", downscale=2)["train"]
    assert half.images.shape == (full.num_views, 10, 14, 3)
    blocks = np.asarray(full.images, np.float64).reshape(-1, 10, 2, 14, 2, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(half.images, blocks, atol=0.5 + 1e-9)  # one rounding to uint8
    np.testing.assert_allclose(half.intrinsics, np.array([intrinsics] * full.num_views) / 2)


def test_max_views_keeps_evenly_spread_views(tmp_path):
    write_ngp(tmp_path / "capture", num_views=10)
    assert folders.read_transforms(tmp_path / "capture/transforms.json", 0.0, 4).count == 4
    write_blender(tmp_path / "blender", num_train=8, num_val=4)
    views = folders.read_blender(tmp_path / "blender", 0.0, 6)
    assert {part: len(v) for part, v in views.cameras.split.items()} == {"train": 4, "val": 2, "test": 1}


def test_normalize_poses_centres_turns_and_scales():
    poses = camera.hemisphere_poses(12, 10.0, seed=3)
    tilt = camera.rotation_between(np.array([0.0, 0.0, 1.0]), np.array([0.6, 0.0, 0.8]))
    world = np.tile(np.eye(4), (12, 1, 1))
    world[:, :3, :3] = tilt @ poses[:, :3, :3]
    world[:, :3, 3] = poses[:, :3, 3] @ tilt.T + [5.0, -3.0, 2.0]
    normalized, info = camera.normalize_poses(world)
    np.testing.assert_allclose(info["center"], [5.0, -3.0, 2.0], atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(normalized[:, :3, 3], axis=-1), 4.0, rtol=1e-6)
    up = normalized[:, :3, 1].mean(0)
    np.testing.assert_allclose(up / np.linalg.norm(up), [0.0, 0.0, 1.0], atol=1e-6)
    assert camera.rotation_error(normalized).max() < 1e-6  # the input poses are float32


def test_undistort_inverts_the_opencv_model():
    height, width, fx, fy, cx, cy = 40, 50, 60.0, 55.0, 26.0, 19.0
    k1, k2, p1, p2 = -0.2, 0.05, 0.01, -0.005
    # A linear ramp, so bilinear sampling is exact: value = a*u + b*v at undistorted pixel (u, v).
    cols, rows = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    xd, yd = (cols - cx) / fx, (rows - cy) / fy
    x, y = xd.copy(), yd.copy()
    for _ in range(50):  # invert the distortion by fixed-point iteration
        r2 = x * x + y * y
        radial = 1 + k1 * r2 + k2 * r2 * r2
        x = (xd - 2 * p1 * x * y - p2 * (r2 + 2 * x * x)) / radial
        y = (yd - p1 * (r2 + 2 * y * y) - 2 * p2 * x * y) / radial
    ramp = lambda u, v: np.stack([0.01 * u, 0.015 * v, 0.005 * (u + v)], -1)  # noqa: E731
    distorted = ramp(x * fx + cx, y * fy + cy).astype(np.float32)  # what the lens recorded at each pixel
    restored = undistort(distorted, fx, fy, cx, cy, k1, k2, p1, p2)
    expected = ramp(cols, rows)
    inner = (slice(6, -6), slice(6, -6))  # pixels whose source lies inside the recorded image
    np.testing.assert_allclose(restored[inner], expected[inner], atol=2e-3)


def test_orbit_follows_the_cameras():
    poses = camera.hemisphere_poses(50, 4.0, seed=0)
    elevation, radius = orbit_path(poses, None, None)
    assert radius == pytest.approx(4.0, rel=1e-5) and 5.0 < elevation < 80.0
    assert orbit_path(poses, 30.0, 2.5) == (30.0, 2.5)


# ----------------------------------------------------------------------------- malformed folders


def edit(path, change):
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


def read(path):
    """Read every view and check the cameras, as writing the scene would."""
    kind, found = folders.find_layout(str(path))
    views = (folders.read_blender if kind == "blender" else folders.read_transforms)(found, 0.0, None)
    check_cameras(views.cameras, views.source)
    return [views.read(i) for i in range(views.count)]


@pytest.mark.parametrize("change, message", [
    (lambda m: m.pop("camera_angle_x"), "frame 0 has no focal length"),
    (lambda m: m.update(camera_angle_x=4.0), "'camera_angle_x' must be a field of view in radians"),
    (lambda m: m["frames"][1].pop("transform_matrix"), "frame 1 has no 'transform_matrix'"),
    (lambda m: m["frames"][0].pop("file_path"), "frame 0 has no 'file_path'"),
    (lambda m: m["frames"][2].update(transform_matrix=[[1, 0, 0], [0, 1, 0], [0, 0, 1]]),
     "frame 2's 'transform_matrix' must be 4x4; got shape (3, 3)"),
    (lambda m: m["frames"][2].update(transform_matrix=[["a"] * 4] * 4), "is not a matrix of numbers"),
    (lambda m: m["frames"][3]["transform_matrix"][0].__setitem__(0, 3.0), "is not orthonormal"),
    (lambda m: m["frames"][3]["transform_matrix"][2].__setitem__(1, float("nan")),
     "transforms_train.json: frame 3 ('./train/r_3'): 'transform_matrix' rows [2] hold NaN or infinite values"),
    (lambda m: m.update(frames=[]), "expected an object with a non-empty list 'frames'"),
])
def test_malformed_blender_json_is_refused(tmp_path, change, message):
    write_blender(tmp_path / "scene")
    edit(tmp_path / "scene" / "transforms_train.json", change)
    with pytest.raises(DataError) as error:
        read(tmp_path / "scene")
    assert message in str(error.value) and str(tmp_path / "scene") in str(error.value)


def test_missing_or_broken_images_and_files(tmp_path):
    write_blender(tmp_path / "scene")
    (tmp_path / "scene" / "train" / "r_2.png").unlink()
    with pytest.raises(DataError, match=r"image .*r_2.png not found"):
        read(tmp_path / "scene")
    write_ngp(tmp_path / "capture")
    (tmp_path / "capture" / "images" / "frame_001.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(DataError, match=r"cannot read image .*frame_001.png"):
        read(tmp_path / "capture")
    (tmp_path / "capture" / "transforms.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        read(tmp_path / "capture")
    (tmp_path / "empty").mkdir()
    assert folders.find_layout(str(tmp_path / "empty")) is None  # another layout's folder, perhaps
    (tmp_path / "scene" / "transforms_train.json").unlink()
    (tmp_path / "scene" / "transforms_val.json").rename(tmp_path / "scene" / "transforms_train_old.json")
    with pytest.raises(DataError, match="missing transforms_train.json"):
        folders.read_blender(tmp_path / "scene", 0.0, None)


def test_a_nan_in_a_pose_names_the_file_the_frame_and_the_key(tmp_path):
    write_ngp(tmp_path / "capture", num_views=9)
    edit(tmp_path / "capture" / "transforms.json",
         lambda m: m["frames"][4]["transform_matrix"][1].__setitem__(3, float("inf")))
    message = (f"{tmp_path / 'capture' / 'transforms.json'}: frame 4 ('images/frame_004.png'): 'transform_matrix' "
               "rows [1] hold NaN or infinite values; expected finite numbers.")
    with pytest.raises(DataError) as error:
        read(tmp_path / "capture")
    assert str(error.value) == message
    # with data.max_views, frame 4 of the file is the third kept: the message still names it as the file does
    with pytest.raises(DataError) as error:
        folders.read_transforms(tmp_path / "capture" / "transforms.json", background=0.0, max_views=5)
    assert str(error.value) == message


@pytest.mark.parametrize("change, message", [
    (lambda m: [m.pop(k) for k in ("fl_x", "fl_y")], "has no focal length"),
    (lambda m: m.update(w=99), "image is 28x20 but its intrinsics say w=99, h=20"),
    (lambda m: m.update(k3=0.1), "'k3' = 0.1: fisheye or higher-order distortion is not supported"),
])
def test_malformed_ngp_intrinsics_are_refused(tmp_path, change, message):
    write_ngp(tmp_path / "capture")
    edit(tmp_path / "capture" / "transforms.json", change)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read(tmp_path / "capture")


def test_ngp_camera_angles_stand_in_for_focal_lengths(tmp_path):
    write_ngp(tmp_path / "capture", intrinsics=(30.0, 30.0, 14.0, 10.0))
    edit(tmp_path / "capture" / "transforms.json",
         lambda m: [m.pop(k) for k in ("fl_x", "fl_y", "cx", "cy")] and m.update(camera_angle_x=2 * math.atan(14 / 30)))
    views = folders.read_transforms(tmp_path / "capture" / "transforms.json", 0.0, None)
    np.testing.assert_allclose(views.cameras.intrinsics[0], [30.0, 30.0, 14.0, 10.0], rtol=1e-6)


def test_a_capture_with_a_large_aabb_scale_is_unbounded(tmp_path):
    """instant-ngp's aabb_scale > 1 says the scene reaches beyond the cameras' focus: the scene is marked
    unbounded (``scene.contraction: auto`` contracts it) and the poses stage sets its far bound far out."""
    write_ngp(tmp_path / "capture")
    assert not folders.read_transforms(tmp_path / "capture/transforms.json", 0.0, None).cameras.unbounded
    meta = json.loads((tmp_path / "capture/transforms.json").read_text())
    (tmp_path / "capture/transforms.json").write_text(json.dumps({**meta, "aabb_scale": 4}))
    assert folders.read_transforms(tmp_path / "capture/transforms.json", 0.0, None).cameras.unbounded
    train = through_the_pipeline(tmp_path, tmp_path / "capture")["train"]
    assert train.unbounded and train.far == 1000.0 and train.near == pytest.approx(2.0, rel=0.2)

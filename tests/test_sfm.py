"""Structure from motion with pycolmap: poses, focal length and failures, on a textured render of the built-in scene.

The built-in scene's flat colours and black background give SIFT too little to hold on to, so
these tests paint it: every surface point gets a procedural value-noise colour of its 3D
position (the same point looks the same from every view), and the rays that miss the scene
hit a textured sphere of radius ``BACKDROP_RADIUS`` around it.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import numpy as np
import pytest

from nerf_pipeline import camera
from nerf_pipeline.runtime.errors import DataError
from nerf_pipeline.scenes import sfm, synthetic

WIDTH, HEIGHT = 240, 180
FOCAL = 0.9 * WIDTH
INTRINSICS = (FOCAL, FOCAL, WIDTH / 2, HEIGHT / 2)
RADIUS = 4.0
NUM_FRAMES = 20
BACKDROP_RADIUS = 9.0
BACKDROP_TEXTURE_SCALE = 0.4
# cell sizes of the noise octaves, in scene units: at 4 units a pixel spans about 0.02
NOISE_CELLS = (0.3, 0.12, 0.05)


def _lattice_value(cells: np.ndarray, channel: int) -> np.ndarray:
    """A pseudo-random value in [0, 1) for each integer lattice point [..., 3] (an integer hash)."""
    c = cells.astype(np.int64) & 0xFFFFFFFF
    h = (c[..., 0] * 73856093) ^ (c[..., 1] * 19349663) ^ (c[..., 2] * 83492791) ^ (channel * 2654435761)
    h &= 0xFFFFFFFF
    h = ((h >> 16) ^ h) * 0x45D9F3B & 0xFFFFFFFF
    h = ((h >> 16) ^ h) * 0x45D9F3B & 0xFFFFFFFF
    h = (h >> 16) ^ h
    return (h & 0xFFFFFF) / float(1 << 24)


def value_noise(points: np.ndarray, cell: float, channel: int) -> np.ndarray:
    """Trilinearly interpolated lattice noise of ``points`` [N, 3] with lattice spacing ``cell``: [N] in [0, 1)."""
    scaled = points / cell
    base = np.floor(scaled)
    frac = scaled - base
    fade = frac * frac * (3 - 2 * frac)  # smoothstep: no creases at the cell walls
    out = np.zeros(len(points))
    for corner in np.ndindex(2, 2, 2):
        weight = np.prod(np.where(np.array(corner, dtype=bool), fade, 1 - fade), axis=-1)
        out += weight * _lattice_value(base + np.array(corner), channel)
    return out


def texture(points: np.ndarray) -> np.ndarray:
    """Colour [N, 3] in [0, 1] attached to the 3D points [N, 3]: three octaves of value noise per channel."""
    octaves = [[value_noise(points, cell, 3 * level + ch) for ch in range(3)] for level, cell in enumerate(NOISE_CELLS)]
    noise = np.mean(np.asarray(octaves), axis=0).T  # [N, 3], values bunched around 0.5
    return np.clip(0.5 + 2.2 * (noise - 0.5), 0.0, 1.0)


def render_textured(c2w: np.ndarray) -> np.ndarray:
    """Textured image [HEIGHT, WIDTH, 3] uint8 of one camera-to-world pose [4, 4]."""
    origins, directions = camera.generate_rays(c2w, HEIGHT, WIDTH, INTRINSICS)
    origins, directions = origins.reshape(-1, 3).astype(np.float64), directions.reshape(-1, 3).astype(np.float64)
    shaded, depth = synthetic.trace(origins, directions)
    missed = depth == 0
    # rays from inside the backdrop sphere hit it at the positive root of |o + t d| = R
    b = np.einsum("ni,ni->n", origins, directions)
    c = np.einsum("ni,ni->n", origins, origins) - BACKDROP_RADIUS ** 2
    t = np.where(missed, -b + np.sqrt(b * b - c), depth)
    points = origins + t[:, None] * directions
    # half shading (so shadows and shapes stay visible), half texture (so every patch has corners)
    # the backdrop is 2 to 3 times farther than the scene: coarser texture, to keep its detail a few pixels wide
    rgb = np.where(missed[:, None], texture(points * BACKDROP_TEXTURE_SCALE), 0.5 * shaded + 0.5 * texture(points))
    return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8).reshape(HEIGHT, WIDTH, 3)


def arc_poses(num_frames: int = NUM_FRAMES) -> np.ndarray:
    """[num_frames, 4, 4] hand-held-like cameras over 120° of azimuth at radius 4.

    A plain arc is a degenerate capture for self-calibration. At one elevation (rotations about one
    axis) COLMAP's fx came out 27% and fy 14% too long, the rotations 2.3° off; with the elevation
    varied but every camera still aimed at the origin, each scene point stays at about the same
    distance from the image centre in every view, and the focal length came out 13% short, traded
    against a radial distortion k1 of -0.08 at the same reprojection error. So here the elevation
    swings between 18° and 42° and the aim wanders up to 0.8 units off the origin, moving points
    across the frame from view to view as a hand-held camera does (focal then within 0.3%).
    """
    azimuths = np.linspace(-60.0, 60.0, num_frames)
    elevations = 30.0 + 12.0 * np.sin(np.radians(3 * azimuths))
    positions = camera.spherical_position(azimuths, elevations, RADIUS)
    angles = np.radians(azimuths)
    targets = 0.8 * np.stack([np.sin(5 * angles), np.cos(4 * angles), 0.5 * np.sin(7 * angles)], axis=-1)
    return np.stack([camera.look_at(p, q) for p, q in zip(positions, targets)])


def write_frames(folder, poses) -> list:
    """Render ``poses`` to ``folder/frame_000.png``, ...; the paths, in order."""
    import imageio.v3 as iio

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, c2w in enumerate(poses):
        paths.append(folder / f"frame_{index:03d}.png")
        iio.imwrite(paths[-1], render_textured(c2w))
    return paths


def rotation_angles_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angle [N] in degrees of the rotation between each pair of rotations a[i], b[i] [N, 3, 3]."""
    relative = np.einsum("nji,njk->nik", a, b)  # a^T b
    cosine = (np.trace(relative, axis1=1, axis2=2) - 1.0) / 2.0
    return np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0)))


def pose_errors(result, paths, true_poses) -> dict:
    """Errors of ``result``'s cameras after the similarity that best maps its centres onto the true ones."""
    index = [[p.name for p in paths].index(name) for name in result.names]
    truth = true_poses[index]
    scale, rotation, translation = camera.align_similarity(result.camera_to_world[:, :3, 3], truth[:, :3, 3])
    aligned_centres = scale * result.camera_to_world[:, :3, 3] @ rotation.T + translation
    return {
        "rotation_deg": rotation_angles_deg(truth[:, :3, :3], rotation @ result.camera_to_world[:, :3, :3]),
        "centre_per_radius": np.linalg.norm(aligned_centres - truth[:, :3, 3], axis=-1) / RADIUS,
        "focal": result.intrinsics[:2] / FOCAL - 1.0,
    }


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    """``(paths, poses)`` of the textured arc, rendered once for the module (15 to 20 s on 2 cores)."""
    poses = arc_poses()
    return write_frames(tmp_path_factory.mktemp("frames"), poses), poses


needs_pycolmap = pytest.mark.skipif(importlib.util.find_spec("pycolmap") is None, reason="pycolmap is not installed")


@needs_pycolmap
@pytest.mark.slow
def test_sequential_matching_recovers_poses_and_focal_length(frames, tmp_path):
    paths, poses = frames
    lines = []
    started = time.perf_counter()
    result = sfm.reconstruct(paths, tmp_path / "work", matcher="sequential", max_image_side=1600, log=lines.append)
    seconds = time.perf_counter() - started
    errors = pose_errors(result, paths, poses)
    print(f"registered {len(result.names)}/{len(paths)}, rotation error max {errors['rotation_deg'].max():.3f}°, "
          f"centre error max {errors['centre_per_radius'].max():.4f} radius, focal error {errors['focal']}, "
          f"distortion {result.distortion}, {seconds:.1f} s, stats {result.stats}")
    assert len(result.names) / len(paths) >= 0.9
    assert result.names == [p.name for p in paths if p.name in result.names]  # input order
    assert sorted(result.names + result.unregistered) == sorted(p.name for p in paths)
    assert result.camera_to_world.shape == (len(result.names), 4, 4) and result.camera_to_world.dtype == np.float64
    np.testing.assert_allclose(camera.rotation_error(result.camera_to_world), 0.0, atol=1e-9)
    assert errors["rotation_deg"].max() < 3.0
    assert errors["centre_per_radius"].max() < 0.03
    assert np.abs(errors["focal"]).max() < 0.05
    np.testing.assert_allclose(result.intrinsics[2:], INTRINSICS[2:], rtol=0.01)
    assert np.abs(result.distortion).max() < 0.05  # the renders have none
    assert result.points.shape[1] == 3 and len(result.points) > 500
    assert result.point_colors.shape == result.points.shape and result.point_colors.dtype == np.uint8
    assert result.stats["matcher"] == "sequential" and result.stats["num_registered"] == len(result.names)
    assert result.stats["mean_reprojection_error_px"] < 1.0
    log_text = "\n".join(lines)
    assert "sequential" in log_text and f"{len(result.names)} of {len(paths)} images registered" in log_text
    # the images' database ids follow their order (mapping depends on them; COLMAP's threads would number them in
    # the order they read them), and each frame is paired with its next ten and with those 16 frames on (COLMAP 4's
    # default quadratic pairing alone gives i+1, i+2, i+4, i+8, ...)
    import pycolmap

    with pycolmap.Database.open(tmp_path / "work" / "database.db") as database:
        ids = {image.name: image.image_id for image in database.read_all_images()}
        pairs = {tuple(sorted((ids[a.name], ids[b.name])))
                 for a in database.read_all_images() for b in database.read_all_images()
                 if a.image_id < b.image_id and database.exists_matches(a.image_id, b.image_id)}
    assert [ids[p.name] for p in paths] == sorted(ids.values())
    order = [ids[p.name] for p in paths]
    expected = {(order[i], order[j]) for i in range(len(order)) for j in range(len(order))
                if 0 < j - i <= sfm.SEQUENTIAL_OVERLAP or j - i in (16, 32, 64)}
    assert pairs == expected
    assert f"{result.stats['num_features']} SIFT keypoints" in log_text


@needs_pycolmap
@pytest.mark.slow
def test_exhaustive_matching_on_shrunk_copies_gives_full_resolution_intrinsics(frames, tmp_path):
    paths, poses = frames
    subset = list(range(0, 16, 2))  # 8 views 12.6° of azimuth apart
    lines = []
    result = sfm.reconstruct([paths[i] for i in subset], tmp_path / "work", matcher="exhaustive",
                             max_image_side=200, log=lines.append)
    # COLMAP ran on 200x150 copies with the same names
    import imageio.v3 as iio

    assert iio.imread(tmp_path / "work" / "images" / paths[0].name).shape == (150, 200, 3)
    errors = pose_errors(result, [paths[i] for i in subset], poses[subset])
    print(f"registered {len(result.names)}/{len(subset)}, rotation error max {errors['rotation_deg'].max():.3f}°, "
          f"focal error {errors['focal']}, intrinsics {result.intrinsics}, stats {result.stats}")
    assert len(result.names) / len(subset) >= 0.9
    assert errors["rotation_deg"].max() < 3.0
    assert errors["centre_per_radius"].max() < 0.03
    # scaled back to the 240x180 originals: focal and principal point
    assert np.abs(errors["focal"]).max() < 0.05
    np.testing.assert_allclose(result.intrinsics[2:], INTRINSICS[2:], rtol=0.01)
    assert result.stats["matcher"] == "exhaustive" and any("exhaustive" in line for line in lines)


@needs_pycolmap
def test_uniform_grey_images_raise_a_data_error(tmp_path):
    import imageio.v3 as iio

    paths = []
    for index in range(3):
        paths.append(tmp_path / f"grey_{index}.png")
        iio.imwrite(paths[-1], np.full((90, 120, 3), 128, dtype=np.uint8))
    with pytest.raises(DataError, match="no features") as caught:
        sfm.reconstruct(paths, tmp_path / "work", matcher="exhaustive", max_image_side=1600, log=lambda line: None)
    assert "sharp" in str(caught.value) and "\n" not in str(caught.value)  # one sentence, with what to try


@needs_pycolmap
def test_images_of_different_sizes_raise_a_data_error(tmp_path):
    import imageio.v3 as iio

    paths = [tmp_path / "a.png", tmp_path / "b.png"]
    iio.imwrite(paths[0], np.zeros((90, 120, 3), dtype=np.uint8))
    iio.imwrite(paths[1], np.zeros((60, 80, 3), dtype=np.uint8))
    with pytest.raises(DataError, match="different sizes"):
        sfm.reconstruct(paths, tmp_path / "work", matcher="sequential", max_image_side=1600, log=lambda line: None)


def test_unknown_matcher_raises_a_data_error(tmp_path):
    with pytest.raises(DataError, match="sequential, exhaustive"):
        sfm.reconstruct([tmp_path / "a.png", tmp_path / "b.png"], tmp_path, matcher="vocab_tree", max_image_side=800)


def test_opencv_world_to_camera_becomes_the_opengl_camera_to_world():
    c2w = camera.look_at([1.0, -3.0, 2.0], target=[0.2, 0.1, -0.3])
    # the same camera as COLMAP stores it: x_cam = R x_world + t, with y down and z forward
    rotation = (c2w[:3, :3] @ np.diag([1.0, -1.0, -1.0])).T
    cam_from_world = np.hstack([rotation, (-rotation @ c2w[:3, 3])[:, None]])
    target_in_camera = cam_from_world @ [0.2, 0.1, -0.3, 1.0]
    assert target_in_camera[2] > 0 and np.allclose(target_in_camera[:2], 0.0)  # straight ahead in OpenCV axes
    np.testing.assert_allclose(sfm._to_opengl(cam_from_world), c2w, atol=1e-12)


SFM_IN_A_CHILD = """
import sys
from pathlib import Path
import numpy as np, imageio.v3 as iio
from nerf_pipeline.runtime.errors import DataError
from nerf_pipeline.scenes import sfm

work = Path(sys.argv[1])
paths = []
for index in range(3):
    paths.append(work / f"grey_{index}.png")
    iio.imwrite(paths[-1], np.full((90, 120, 3), 128, dtype=np.uint8))
try:
    sfm.reconstruct(paths, work / "colmap", matcher="exhaustive", max_image_side=1600, log=lambda line: None)
except DataError as error:
    print(error)
"""


@needs_pycolmap
def test_colmap_leaves_no_log_files_and_no_warning_on_the_console(tmp_path):
    """glog, COLMAP's logger, writes a log file per severity into $TMPDIR on every run unless told to log to
    stderr; and COLMAP warns about memory when feature extraction is left to use "all threads" (-1)."""
    import os
    import subprocess
    import sys

    (tmp_path / "tmp").mkdir()
    (tmp_path / "work").mkdir()
    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp")}
    env.pop("GOOGLE_LOG_DIR", None)
    env.pop("GLOG_log_dir", None)
    result = subprocess.run([sys.executable, "-c", SFM_IN_A_CHILD, str(tmp_path / "work")], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "no features" in result.stdout, result.stderr  # it got as far as SIFT
    assert os.listdir(tmp_path / "tmp") == []
    assert "feature_extraction.cc" not in result.stderr and "maximum number of threads" not in result.stderr


def noise_images(folder, count=2, seed=0):
    """``count`` 240x180 photos of the same blocky noise (SIFT finds features everywhere in it), each shifted."""
    import imageio.v3 as iio

    rng = np.random.default_rng(seed)
    texture = np.kron(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8), np.ones((4, 4, 1), np.uint8))
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        paths.append(folder / f"noise_{i}.png")
        iio.imwrite(paths[-1], texture[8 * i:8 * i + HEIGHT, 4 * i:4 * i + WIDTH])
    return paths


class _Stop(Exception):
    pass


def keypoints_x(work) -> np.ndarray:
    import pycolmap

    with pycolmap.Database.open(work / "database.db") as database:
        return np.concatenate([database.read_keypoints(image.image_id)[:, 0] for image in database.read_all_images()])


@needs_pycolmap
def test_features_are_taken_only_where_the_masks_keep_the_pixels(tmp_path, monkeypatch):
    """Issue 30, item 9: a capture's masks reach COLMAP's feature extraction (its reader's mask_path), resized with the
    images; no keypoint where a mask is dark. Here the masks keep the left half; SfM runs on 120x90 copies."""
    import imageio.v3 as iio
    import pycolmap

    paths = noise_images(tmp_path / "photos")
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    mask[:, :WIDTH // 2] = 255
    masks = []
    for path in paths:
        masks.append(tmp_path / "photos" / f"{path.stem}_mask.png")
        iio.imwrite(masks[-1], mask)
    seen, extract = [], pycolmap.extract_features

    def recording(*args, reader_options, **kwargs):
        seen.append(reader_options.mask_path)
        return extract(*args, reader_options=reader_options, **kwargs)

    def stop(*args, **kwargs):
        raise _Stop  # features are all this test looks at

    monkeypatch.setattr(pycolmap, "extract_features", recording)
    monkeypatch.setattr(sfm, "_match", stop)
    for work, mask_paths in ((tmp_path / "masked", masks), (tmp_path / "plain", None)):
        with pytest.raises(_Stop):
            sfm.reconstruct(paths, work, "exhaustive", max_image_side=120, log=lambda line: None, mask_paths=mask_paths)
    assert Path(seen[0]) == tmp_path / "masked" / "masks" and str(seen[1]) in ("", ".")  # the default: no masks
    copy = iio.imread(tmp_path / "masked" / "masks" / "noise_0.png.png")  # COLMAP's name: <image name>.png
    assert copy.shape == (90, 120) and set(np.unique(copy)) == {0, 255} and (copy[:, :60] == 255).all()
    masked, plain = keypoints_x(tmp_path / "masked"), keypoints_x(tmp_path / "plain")
    assert len(masked) > 20 and masked.max() <= 60.5  # x in the 120-pixel-wide copies
    assert (plain > 61).sum() > 20  # the right half has features of its own when nothing masks it


@needs_pycolmap
def test_a_mask_of_another_size_is_refused_naming_it(tmp_path):
    import imageio.v3 as iio

    paths = noise_images(tmp_path / "photos")
    masks = [tmp_path / f"mask_{i}.png" for i in range(2)]
    for i, path in enumerate(masks):
        iio.imwrite(path, np.full((HEIGHT, WIDTH + 8 * i), 255, np.uint8))
    with pytest.raises(DataError, match=r"mask_1\.png: the mask is 248x180 but its image noise_1\.png is 240x180"):
        sfm.reconstruct(paths, tmp_path / "work", "exhaustive", max_image_side=120, log=lambda line: None,
                        mask_paths=masks)

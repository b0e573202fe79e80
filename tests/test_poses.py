"""The poses stage: sources with poses pass through; photos get theirs from structure from motion (pycolmap)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from conftest import DATA_STAGES, REPO, tiny_params, write_params
from test_sfm import FOCAL, HEIGHT, WIDTH, arc_poses, render_textured, rotation_angles_deg

from nerf_pipeline import camera, config
from nerf_pipeline.runtime.errors import DataError
from nerf_pipeline.scenes import sfm
from nerf_pipeline.scenes.scene import Cameras, read_npz
from nerf_pipeline.stages import download, poses


def pose(folder, params) -> Cameras:
    """Run download and poses in this process; the posed cameras."""
    cfg = config.from_dict(params)
    download.run(cfg, out_scene=folder / "scene")
    poses.run(cfg, in_scene=folder / "scene", out_cameras=folder / "cameras.npz")
    return Cameras.from_arrays(read_npz(folder / "cameras.npz"), "cameras.npz")


def test_a_posed_source_passes_through_unchanged(tmp_path):
    params = tiny_params()
    cameras = pose(tmp_path, params)
    truth = camera.hemisphere_poses(8, 4.0, params["synthetic"]["seed"])
    np.testing.assert_allclose(cameras.poses, truth, atol=1e-6)  # the built-in scene is used in its own frame
    assert (cameras.near, cameras.far, cameras.unbounded, cameras.registered) == (2.0, 6.0, False, None)
    params["data"].update(near=1.5, far=7.0)
    assert (pose(tmp_path / "b", params).near, pose(tmp_path / "b", params).far) == (1.5, 7.0)


def write_photos(folder, poses_c2w, grey=()):
    """Textured renders of ``poses_c2w`` as JPEG photos in ``folder/images``; the views in ``grey`` flat grey."""
    (folder / "images").mkdir(parents=True)
    for i, c2w in enumerate(poses_c2w):
        image = np.full((HEIGHT, WIDTH, 3), 128, np.uint8) if i in grey else render_textured(c2w)
        iio.imwrite(folder / "images" / f"photo_{i:03d}.jpg", image, quality=95)


@pytest.fixture(scope="module")
def arc():
    return arc_poses(14)


@pytest.mark.slow
def test_photos_are_posed_by_structure_from_motion(tmp_path, arc):
    write_photos(tmp_path / "photos", arc)
    params = tiny_params()
    params["data"]["source"] = str(tmp_path / "photos")
    cameras = pose(tmp_path, params)
    assert cameras.registered.all() and cameras.unbounded and cameras.far == 1000.0
    # up to the similarity that normalisation applied, the rotations are the true ones
    scale, rotation, translation = camera.align_similarity(cameras.poses[:, :3, 3].astype(np.float64), arc[:, :3, 3])
    errors = rotation_angles_deg(arc[:, :3, :3], rotation @ cameras.poses[:, :3, :3].astype(np.float64))
    assert errors.max() < 3.0, errors
    aligned = scale * cameras.poses[:, :3, 3] @ rotation.T + translation
    assert np.abs(aligned - arc[:, :3, 3]).max() < 0.1 * 4.0
    np.testing.assert_allclose(cameras.intrinsics[:, :2], FOCAL, rtol=0.05)
    # normalised: centred on what the cameras look at, median camera 4 units out, the points moved with
    # them (they lie on the scene, within 1.6 of the centre, or on its textured backdrop sphere of radius 9)
    assert np.median(np.linalg.norm(cameras.poses[:, :3, 3], axis=-1)) == pytest.approx(4.0, rel=1e-4)
    distance = np.linalg.norm(scale * cameras.points @ rotation.T + translation, axis=-1)
    assert len(distance) > 100 and np.mean((distance < 1.7) | (np.abs(distance - 9.0) < 0.3)) > 0.9


@pytest.mark.slow
def test_too_few_registered_photos_stop_the_stage_naming_them(tmp_path, arc):
    grey = set(range(8, 14))  # flat photos: no features, so they cannot register
    write_photos(tmp_path / "photos", arc, grey=grey)
    params = tiny_params()
    params["data"]["source"] = str(tmp_path / "photos")
    params["poses"]["min_registered"] = 0.7
    with pytest.raises(DataError) as error:
        pose(tmp_path, params)
    message = str(error.value)
    assert "registered only 8 of 14 images (57%), fewer than poses.min_registered (70%)" in message
    assert "photo_008.jpg" in message and "exhaustive" in message
    assert not (tmp_path / "cameras.npz").exists()
    params["poses"]["min_registered"] = 0.5  # enough: the grey ones are left out of every part
    cameras = pose(tmp_path / "again", params)
    assert list(np.flatnonzero(~cameras.registered)) == sorted(grey)
    from nerf_pipeline.stages import split
    parts = split.run(config.from_dict(params), in_cameras=tmp_path / "again" / "cameras.npz",
                      out_split=tmp_path / "split.json")
    assert not grey & set(parts["train"] + parts["val"])


def test_fewer_than_three_registered_views_stop_the_stage_under_min_registered(tmp_path, monkeypatch):
    """2 of 3 photos pass poses.min_registered 0.5 but leave one view to train on: refused, naming the left-out one.
    (Structure from motion itself is faked here: which views it registers is the input under test.)"""
    write_photos(tmp_path / "photos", arc_poses(3))
    params = tiny_params()
    params["data"]["source"] = str(tmp_path / "photos")
    params["poses"]["min_registered"] = 0.5

    def registers_two_of_three(image_paths, *args, **kwargs):
        return sfm.Reconstruction(names=[path.name for path in image_paths[:2]],
                                  camera_to_world=np.tile(np.eye(4), (2, 1, 1)),
                                  intrinsics=np.array([FOCAL, FOCAL, WIDTH / 2, HEIGHT / 2]), distortion=np.zeros(4),
                                  points=np.zeros((0, 3)), point_colors=np.zeros((0, 3), np.uint8),
                                  unregistered=[image_paths[2].name])

    monkeypatch.setattr(sfm, "reconstruct", registers_two_of_three)
    with pytest.raises(DataError) as error:
        pose(tmp_path, params)
    assert str(error.value).startswith(
        "structure from motion registered only 2 of 3 images, but a scene needs at least 3 posed views, 2 to train "
        "on and 1 to validate on. Not registered: photo_002.jpg. To try: take photos with more overlap")
    assert not (tmp_path / "cameras.npz").exists()


def test_a_capture_s_masks_reach_structure_from_motion(tmp_path, monkeypatch):
    """Issue 30, item 9: photos with masks/ (here <stem>_mask.png, keeping the left half): the poses stage hands
    structure from motion each view's mask as stored in the scene (255 kept, 0 left out). (SfM itself is faked:
    test_sfm checks that COLMAP takes no feature where a mask is dark.)"""
    write_photos(tmp_path / "photos", arc_poses(3))
    (tmp_path / "photos" / "masks").mkdir()
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    mask[:, :WIDTH // 2] = 255
    for i in range(3):
        iio.imwrite(tmp_path / "photos" / "masks" / f"photo_{i:03d}_mask.png", mask)
    params = tiny_params()
    params["data"]["source"] = str(tmp_path / "photos")
    handed = {}

    def registers_all(image_paths, *args, mask_paths=None, **kwargs):
        handed.update(images=[path.name for path in image_paths],
                      masks=None if mask_paths is None else [iio.imread(path) for path in mask_paths])
        return sfm.Reconstruction(names=[path.name for path in image_paths],
                                  camera_to_world=np.stack([np.eye(4) + np.eye(4, k=3) * i for i in range(3)]),
                                  intrinsics=np.array([FOCAL, FOCAL, WIDTH / 2, HEIGHT / 2]), distortion=np.zeros(4),
                                  points=np.zeros((0, 3)), point_colors=np.zeros((0, 3), np.uint8))

    monkeypatch.setattr(sfm, "reconstruct", registers_all)
    assert pose(tmp_path, params).registered.all()
    assert handed["images"] == ["photo_000.jpg", "photo_001.jpg", "photo_002.jpg"]
    assert len(handed["masks"]) == 3
    for handed_mask in handed["masks"]:
        np.testing.assert_array_equal(handed_mask, mask)
    shutil.rmtree(tmp_path / "photos" / "masks")  # without masks/, none
    pose(tmp_path / "plain", params)
    assert handed["masks"] is None


BEER_VIDEO = Path(os.environ.get("NERF_PIPELINE_BEER_VIDEO", REPO.parent / "shared" / "data" / "beer" / "Beer.mp4"))


@pytest.mark.slow
@pytest.mark.skipif(not BEER_VIDEO.is_file(), reason=f"{BEER_VIDEO} not found (set NERF_PIPELINE_BEER_VIDEO)")
def test_a_short_phone_clip_registers_every_frame(tmp_path):
    """Issue 30, item 10: the beer video's first 5 s at 224x400 with data.max_frames 15 (13 frames kept after the
    blur filter) registered 13, 7 or 6 frames from run to run (6 stopped the stage under poses.min_registered):
    COLMAP numbered the images in the order its threads read them, and paired each frame with i+1, i+2, i+4, i+8
    only. Every frame registers now."""
    import imageio_ffmpeg

    clip = tmp_path / "clip.mp4"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-t", "5", "-i", str(BEER_VIDEO),
                    "-vf", "scale=224:400", "-an", str(clip)], check=True, capture_output=True, timeout=120)
    params = tiny_params()
    params["data"].update(source=str(clip), max_frames=15)
    cameras = pose(tmp_path, params)
    assert cameras.num_views == 13  # 15 candidates, the 2 blurriest dropped
    assert cameras.registered.all(), [name for name, ok in zip(cameras.names, cameras.registered) if not ok]
    assert np.isfinite(cameras.poses).all() and cameras.intrinsics[0, 0] > 0


def test_the_stage_order_has_poses_between_download_and_split():
    assert [name for name, _ in DATA_STAGES] == ["download", "poses", "split", "rays"]
    assert write_params  # (the helpers the other stage tests use)

"""Masks (``scenes/masks.py``) from capture to training and evaluation: read by the download stage,
carried through rays, never trained on, scoring only the kept pixels; bad masks refused naming the file."""

import json

import imageio.v3 as iio
import numpy as np
import pytest
from captures import object_masks, write_llff_capture, write_masks
from conftest import run_data_stages, tiny_params
from scenes import write_ngp

from nerf_pipeline import config
from nerf_pipeline.errors import DataError
from nerf_pipeline.scenes import masks, ray_files
from nerf_pipeline.scenes.scene import Scene


def capture_params(source, **data):
    params = tiny_params()
    params["data"].update(source=str(source), **data)
    return params


def test_an_llff_capture_with_a_masks_folder_carries_its_masks_to_the_rays(tmp_path):
    written = write_llff_capture(tmp_path / "capture", num_views=8, height=20, width=28)
    kept = object_masks(written["depth"])
    write_masks(tmp_path / "capture", written["names"], kept)
    folder = run_data_stages(tmp_path / "run", capture_params(tmp_path / "capture", downscale=2))
    scene = Scene.open(folder / "scene")
    np.testing.assert_array_equal(scene.masks, kept.astype(np.uint8))
    split = json.loads((folder / "split.json").read_text())
    for part in ("train", "val"):
        rays = ray_files.load(folder / "rays", part)
        assert rays.masks.shape == (len(split[part]), 10, 14) and rays.masks.dtype == np.uint8
        for i, view in enumerate(split[part]):
            # A pixel is kept only where its whole 2x2 block was: the object's inside, not its silhouette.
            blocks = kept[view].reshape(10, 2, 14, 2).all(axis=(1, 3))
            np.testing.assert_array_equal(rays.view_mask(i), blocks)
    assert 0 < rays.masks.mean() < 1


def test_a_capture_without_masks_has_none(tmp_path):
    write_llff_capture(tmp_path / "capture", num_views=4)
    folder = run_data_stages(tmp_path / "run", capture_params(tmp_path / "capture"))
    assert Scene.open(folder / "scene").masks is None and ray_files.load(folder / "rays", "train").masks is None


def test_colmaps_own_mask_names_and_any_image_extension_are_found(tmp_path):
    written = write_llff_capture(tmp_path, num_views=3)
    images = [tmp_path / "images" / name for name in written["names"]]
    write_masks(tmp_path, [f"{name}" for name in written["names"][:2]], np.ones((2, 20, 28), bool),
                extension=".jpg")  # frame_000.jpg: the image's stem, another extension
    iio.imwrite(tmp_path / "masks" / f"{written['names'][2]}.png", np.zeros((20, 28), np.uint8))  # frame_002.png.png
    read = masks.folder_masks(tmp_path, images, 20, 28)
    assert read(0).all() and not read(2).any()


def test_masks_named_stem_mask_as_turntable_tools_write_them_are_found(tmp_path):
    """``IMG_0001_mask.JPG`` for ``IMG_0001.JPG`` (issue 30.9: such a capture was refused), JPEG noise at the
    edges (values 1-127) is not kept, and an image two files could be the mask of is refused naming both."""
    written = write_llff_capture(tmp_path, num_views=3)
    images = [tmp_path / "images" / name for name in written["names"]]
    (tmp_path / "masks").mkdir()
    noisy = np.zeros((20, 28), np.uint8)
    noisy[5:15, 5:20] = 255
    noisy[4, 5:20], noisy[15, 5:20] = 3, 127  # what JPEG leaves beside an edge
    noisy[5:15, 4] = 128  # at half scale: kept
    for path in images:
        iio.imwrite(tmp_path / "masks" / f"{path.stem}_mask.png", noisy)
    read = masks.folder_masks(tmp_path, images, 20, 28)
    want = np.zeros((20, 28), bool)
    want[5:15, 4:20] = True
    np.testing.assert_array_equal(read(1), want)
    iio.imwrite(tmp_path / "masks" / f"{images[2].stem}.png", noisy)  # a second candidate for frame_002
    with pytest.raises(DataError, match=r"frame_002\.png and frame_002_mask\.png could each be the mask of the "
                                        r"image frame_002\.png; keep one"):
        masks.folder_masks(tmp_path, images, 20, 28)


def test_a_mask_of_zeros_and_ones_keeps_its_ones():
    binary = np.array([[0, 1], [1, 0]], np.uint8)
    np.testing.assert_array_equal(masks.kept_pixels(binary), binary.astype(bool))
    np.testing.assert_array_equal(masks.kept_pixels(np.array([[0, 127, 128, 255]], np.uint8)),
                                  [[False, False, True, True]])
    np.testing.assert_array_equal(masks.kept_pixels(np.array([[0, 32767, 32768]], np.uint16)), [[False, False, True]])


def test_a_missing_mask_is_refused_naming_the_image(tmp_path):
    written = write_llff_capture(tmp_path / "capture", num_views=4)
    paths = write_masks(tmp_path / "capture", written["names"], object_masks(written["depth"]))
    paths[2].unlink()
    with pytest.raises(DataError, match=r"masks: has no mask for the image frame_002\.png") as error:
        run_data_stages(tmp_path / "run", capture_params(tmp_path / "capture"))
    assert str(tmp_path / "capture" / "masks") in str(error.value)


def test_a_mask_of_the_wrong_size_is_refused_naming_it(tmp_path):
    written = write_llff_capture(tmp_path / "capture", num_views=4)
    paths = write_masks(tmp_path / "capture", written["names"], object_masks(written["depth"]))
    iio.imwrite(paths[1], np.full((10, 14), 255, np.uint8))
    with pytest.raises(DataError) as error:
        run_data_stages(tmp_path / "run", capture_params(tmp_path / "capture"))
    assert str(error.value).startswith(f"{paths[1]}: this mask is 14x10 but its image")
    assert "frame_001.png is 28x20" in str(error.value)


def test_nerfstudio_mask_paths_are_read_and_a_frame_without_one_refused(tmp_path):
    written = write_ngp(tmp_path, num_views=5)
    kept = object_masks(written["depth"])
    meta = json.loads((tmp_path / "transforms.json").read_text())
    (tmp_path / "masks").mkdir()
    for i, frame in enumerate(meta["frames"]):
        frame["mask_path"] = f"masks/mask_{i:03d}.png"
        iio.imwrite(tmp_path / frame["mask_path"], np.where(kept[i], 255, 0).astype(np.uint8))
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    from nerf_pipeline.scenes.folders import read_transforms

    views = read_transforms(tmp_path / "transforms.json", 0.0, None)
    np.testing.assert_array_equal(np.stack([views.mask(i) for i in range(5)]), kept.astype(np.uint8))
    del meta["frames"][3]["mask_path"]
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"transforms\.json: the frame of frame_003\.png has no 'mask_path'"):
        read_transforms(tmp_path / "transforms.json", 0.0, None)


def test_a_mask_follows_its_views_undistortion():
    from nerf_pipeline.scenes.images import undistort

    kept = np.zeros((30, 40), np.uint8)
    kept[8:22, 10:30] = 1
    intrinsics, distortion = (35.0, 35.0, 20.0, 15.0), (0.2, 0.05, 0.01, -0.01)
    prepared = masks.prepare_mask(kept, intrinsics, distortion, 1)
    resampled = undistort(kept[..., None].astype(np.float32), *intrinsics, *distortion)[..., 0]
    np.testing.assert_array_equal(prepared, resampled >= 1.0 - 1e-6)  # kept where all its samples were kept
    assert 0 < prepared.sum() < kept.sum() + 40  # moved with the lens, not lost
    assert not np.array_equal(prepared, kept)


# ----------------------------------------------------------------------------- training and evaluation

RED = np.array([255, 0, 0], np.uint8)


def masked_part(folder, num_views=4, size=16, seed=0):
    """A train part whose masked-out pixels, and only those, are pure red."""
    rng = np.random.default_rng(seed)
    kept = rng.uniform(size=(num_views, size, size)) < 0.3
    kept[1] = False  # a view the masks leave out entirely
    images = rng.integers(0, 200, size=(num_views, size, size, 3), dtype=np.uint8)  # never pure red
    images[~kept] = RED
    writer = ray_files.PartWriter(folder, "train", num_views, size, size, with_depth=False, with_masks=True)
    for image, mask in zip(images, kept):
        writer.add(image, mask=mask.astype(np.uint8))
    from nerf_pipeline.camera import hemisphere_poses
    writer.finish(hemisphere_poses(num_views, 4.0, seed), [[20.0, 20.0, size / 2, size / 2]] * num_views,
                  list(range(num_views)), 2.0, 6.0, unbounded=False)
    return ray_files.load(folder, "train"), kept


@pytest.mark.parametrize("preset", ["hashgrid", "keras_example"])
def test_a_training_draw_never_returns_a_masked_pixel(tmp_path, preset):
    from nerf_pipeline.training.datasets import train_dataset

    part, kept = masked_part(tmp_path)
    params = tiny_params()
    params["preset"] = preset
    if preset == "hashgrid":
        params["presets"]["hashgrid"]["batch"].update(size=256, candidate_factor=2)
    else:
        params["presets"]["keras_example"]["batch"]["size"] = 2
    batch = config.from_dict(params).active.batch
    seen = []
    for (origins, directions), rgb in train_dataset(part, batch, seed=0).take(20):
        colours = np.round(rgb.numpy() * 255).astype(np.uint8)
        assert not np.any(np.all(colours == RED, axis=-1)), "a masked-out pixel was drawn"
        seen.append(colours)
    # The draws still cover the kept pixels (about uniformly), not a few of them.
    distinct = np.unique(np.concatenate(seen).view([("", np.uint8)] * 3))
    assert len(distinct) > 0.9 * kept.sum()
    # Without its masks the same part's draws do hit the red pixels: the check above can fail.
    part.masks = None
    (_, _), rgb = next(iter(train_dataset(part, batch, seed=0)))
    assert np.any(np.all(np.round(rgb.numpy() * 255).astype(np.uint8) == RED, axis=-1))


def test_training_on_masks_that_keep_nothing_is_refused(tmp_path):
    from nerf_pipeline.training.datasets import train_dataset

    part, _ = masked_part(tmp_path)
    part.masks = np.zeros_like(part.masks)
    with pytest.raises(DataError, match="the masks leave out every pixel of every train view"):
        train_dataset(part, config.from_dict(tiny_params()).active.batch, seed=0)


def test_eval_scores_only_the_kept_pixels():
    from nerf_pipeline.scoring import image_metrics

    rng = np.random.default_rng(0)
    target = rng.uniform(size=(2, 32, 32, 3)).astype(np.float32)
    kept = np.zeros((2, 32, 32), bool)
    kept[:, 8:24, 6:26] = True
    wrong_outside = np.where(kept[..., None], target, 1.0 - target)
    psnr, ssim = image_metrics(wrong_outside, target, kept)
    assert np.all(psnr >= 99.0) and np.allclose(ssim, 1.0, atol=1e-5)  # right where it counts
    unmasked_psnr, unmasked_ssim = image_metrics(wrong_outside, target)
    assert np.all(unmasked_psnr < 10.0) and np.all(unmasked_ssim < 0.5)
    # Error on the kept pixels only is scored as it is: 0.1 everywhere kept is 20 dB.
    off = np.where(kept[..., None], np.clip(target + 0.1 * np.sign(0.5 - target), 0, 1), target)
    np.testing.assert_allclose(image_metrics(off, target, kept)[0], 20.0, atol=0.01)
    # A mask that keeps everything gives the unmasked figures.
    noisy = np.clip(target + rng.normal(0, 0.05, target.shape), 0, 1).astype(np.float32)
    all_kept = image_metrics(noisy, target, np.ones((2, 32, 32), bool))
    np.testing.assert_allclose(all_kept[0], image_metrics(noisy, target)[0], rtol=1e-4)
    np.testing.assert_allclose(all_kept[1], image_metrics(noisy, target)[1], rtol=1e-4)


@pytest.mark.slow
def test_a_masked_capture_trains_and_is_scored_on_its_masks(tmp_path, monkeypatch):
    """download -> poses -> split -> rays -> train (one short epoch) -> evaluate -> render, on an LLFF
    capture with masks."""
    from conftest import TRAIN_OUTS

    from nerf_pipeline.stages import evaluate, render, train

    monkeypatch.setenv("DVC_ROOT", str(tmp_path))  # the MLflow store goes to tmp_path/mlflow.db
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    written = write_llff_capture(tmp_path / "capture", num_views=10, height=20, width=28)
    write_masks(tmp_path / "capture", written["names"], object_masks(written["depth"]))
    params = capture_params(tmp_path / "capture")
    params["epochs"] = 1
    params["presets"]["hashgrid"]["steps_per_epoch"] = 20
    cfg = config.from_dict(params)
    folder = run_data_stages(tmp_path / "run", params)
    outs = {name: folder / path for name, path in TRAIN_OUTS.items()}
    assert np.isfinite(train.run(cfg, in_rays=folder / "rays", **outs)["val"]["psnr"])
    metrics = evaluate.run(cfg, in_model=outs["out_model"], in_rays=folder / "rays", out_metrics=folder / "eval.json",
                           out_per_view=folder / "per_view.csv", out_grid=folder / "grid.png")
    written_metrics = json.loads((folder / "eval.json").read_text())
    assert written_metrics == metrics and metrics["masked"] is True and np.isfinite(metrics["psnr"])
    render.run(cfg, in_model=outs["out_model"], in_rays=folder / "rays", out_video=folder / "orbit.mp4",
               out_depth_video=folder / "orbit_depth.mp4", out_gif=folder / "progress.gif")
    assert (folder / "orbit.mp4").stat().st_size > 0

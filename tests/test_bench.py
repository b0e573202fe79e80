"""The benchmark script on a tiny scene: it runs both presets and writes the summary it documents.

Its figures are not asserted (they are what the script is for); its bookkeeping is.
"""

import json
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest
import yaml
from captures import write_colmap_capture
from conftest import REPO, tiny_params
from scenes import write_blender

from nerf_pipeline.scenes import synthetic


@pytest.mark.slow
def test_bench_train_writes_the_documented_summary(tmp_path):
    data = synthetic.render_scene(num_views=10, image_size=24, seed=0)
    np.savez(tmp_path / "tiny.npz", images=data["images"], poses=data["poses"], focal=data["focal"])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_train.py"), "--scene", "tiny.npz", "--params", "params.yaml",
         "--budget-s", "8", "--eval-every-s", "4", "--versus", "keras_example", "--versus-budget-s", "30",
         "--versus-stop-psnr", "0", "--out", "summary.json"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())

    assert summary["split"] == {"train": 8, "val": 2}
    ours, theirs = summary["results"]["hashgrid"], summary["results"]["keras_example"]
    curve = ours["curve"]
    # (XLA compilation counts as training time, so the first step may already pass several points)
    assert curve and [p["wall_s"] for p in curve] == sorted(p["wall_s"] for p in curve)
    assert curve[-1]["wall_s"] >= 8 and ours["final"]["wall_s"] >= 8  # the clock ran to the budget
    assert all(0 < p["val_psnr"] < 60 and p["step"] >= 1 for p in curve)
    assert ours["final"]["steps"] == curve[-1]["step"] and ours["steps_per_s"] > 0
    assert 0 < ours["final"]["val_ssim"] <= 1
    first_over = {f"{t:g}": next((p["wall_s"] for p in curve if p["val_psnr"] >= t), None)
                  for t in summary["thresholds"]}
    assert ours["time_to_psnr_s"] == first_over
    assert ours["rss_mb"]["peak"] >= ours["rss_mb"]["before_training"] > 0
    assert ours["render_orbit"]["frames"] == 120 and ours["render_orbit"]["compute_bound_frames_per_s"] > 0
    # --versus-stop-psnr 0 ends the versus run at its first evaluation, well before its 30 s budget
    assert len(theirs["curve"]) == 1 and theirs["final"]["stop_psnr"] == 0
    assert set(summary["ratios"]) == {"time_to_18.9_vs_published_keras_example", "render_vs_published_keras_example",
                                      "time_to_18.9_vs_versus_run"}


@pytest.mark.slow
def test_bench_train_scores_a_blender_scene_on_its_test_views(tmp_path):
    """NeRF-synthetic's protocol: train on the train views, the curve on an even subset of the test views at the
    given times, the final figures on every test view, a frame at the test views' size; ``--set`` changes params."""
    write_blender(tmp_path / "scene", num_train=6, num_val=2, num_test=5, size=24)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_train.py"), "--scene", "scene", "--params", "params.yaml",
         "--background", "1", "--budget-s", "6", "--eval-at-s", "3", "--curve-views", "2", "--render-frames", "2",
         "--set", "presets.hashgrid.batch.size=512", "--out", "summary.json"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())

    assert summary["split"] == {"train": 6, "test": 5} and summary["background"] == 1.0
    assert summary["set"] == ["presets.hashgrid.batch.size=512"]
    ours = summary["results"]["hashgrid"]
    assert ours["curve_views"] == [0, 4]
    assert 1 <= len(ours["curve"]) <= 2 and ours["curve"][-1]["wall_s"] >= 6
    assert all(0 < p["test_psnr"] < 60 for p in ours["curve"])
    final = ours["final"]
    assert final["split"] == "test" and final["num_views"] == 5 and final["size"] == [24, 24]
    assert 0 < final["test_ssim"] <= 1 and final["test_psnr"] > 0
    orbit = ours["render_orbit"]
    assert orbit["frames"] == 2 and orbit["size"] == [24, 24] and orbit["seconds_per_frame"] > 0


def test_bench_train_refuses_a_missing_scene_clearly(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_train.py"), "--scene", "nowhere.npz", "--budget-s", "1",
         "--params", str(REPO / "params.yaml"), "--out", "summary.json"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "nowhere.npz: file not found" in result.stderr
    assert not (tmp_path / "summary.json").exists()


def bench_captures(*args, cwd):
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_captures.py"), *args],
                          cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_bench_captures_scores_every_variant_of_a_capture_and_skips_the_absent(tmp_path):
    """A tiny COLMAP capture as beer/ (no Beer.mp4, a broken stitch/): each variant trains and gets held-out figures,
    every 8th view held out, the variant's override reaches the model, the absent capture is skipped and the
    broken one is recorded as failed without stopping the run."""
    write_colmap_capture(tmp_path / "data" / "beer", num_views=10)
    (tmp_path / "data" / "stitch").mkdir()
    (tmp_path / "data" / "stitch" / "transforms_train.json").write_text("{")  # refused at download: recorded
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    result = bench_captures(
        "--data", "data", "--params", "params.yaml", "--budget-s", "3", "--eval-every-s", "2", "--curve-views", "1",
        "--train-views", "2", "--set", "data.downscale=1", "--variant", "baseline",
        "--variant", "plain:scene.contraction=off,scene.appearance=off,presets.hashgrid.batch.size=256",
        "--variant", "no_masks:bench.train_masks=off", "--variant", "same:scene.camera_refinement=off",
        "--variant", "splats:preset=splats", "--work", "work", "--out", "results/captures.json", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((tmp_path / "results" / "captures.json").read_text())

    assert summary["variants"] == {"baseline": [], "plain": ["scene.contraction=off", "scene.appearance=off",
                                                              "presets.hashgrid.batch.size=256"],
                                   "no_masks": ["bench.train_masks=off"], "same": ["scene.camera_refinement=off"],
                                   "splats": ["preset=splats"]}
    # a capture without masks trains the same without them; params.yaml's refinement is already off
    assert "[no_masks] not run: for beer_colmap it trains as baseline does" in result.stdout
    assert "[same] not run: for beer_colmap it trains as baseline does" in result.stdout
    assert summary["skipped"] == {"beer_video": "data/beer/Beer.mp4 not found", "turntable":
                                  "data/chair/transforms_train.json, data/beer/images/0000.jpg not found"}
    assert set(summary["failed"]) == {"stitch"} and "transforms_train.json" in summary["failed"]["stitch"]
    beer = summary["captures"]["beer_colmap"]
    assert set(summary["captures"]) == {"beer_colmap"} and set(beer["variants"]) == {"baseline", "plain", "splats"}
    assert beer["prepare"]["views"] == beer["prepare"]["registered"] == 10
    for name, variant in beer["variants"].items():
        assert variant["split"] == {"train": 8, "val": 2} and variant["size"] == [20, 28]  # views 0 and 8 held out
        final = variant["final"]
        assert final["split"] == "val" and final["num_views"] == 2 and final["masked"] is False
        assert 0 < final["psnr"] < 60 and 0 < final["ssim"] <= 1 and 0 < final["train_psnr"] < 60
        assert final["wall_s"] >= 3 and final["steps"] == variant["curve"][-1]["step"] >= 1
        assert all(0 < point["val_psnr"] < 60 for point in variant["curve"])
        assert variant["fit"]["wall_s"] >= 3 and variant["fit"]["cpu_s"] > 0
        held_out, video = (np.asarray(iio.imread(tmp_path / path)) for path in variant["pictures"])
        frames = sum(i < tiny_params()["render"]["num_frames"] for i in (0, 30, 60, 90))  # of the path's frames
        assert held_out.shape == (2 * 20, 2 * 28, 3) and video.shape == (20, frames * 28, 3)  # both val views
    baseline, plain = beer["variants"]["baseline"], beer["variants"]["plain"]
    assert baseline["contracted"] is baseline["appearance"] is True  # a capture: both on under auto
    assert plain["contracted"] is plain["appearance"] is False
    # splats beside the NeRF, through the same protocol; the held-out views side by side: truth | each variant
    assert baseline["method"] == plain["method"] == "nerf" and beer["variants"]["splats"]["method"] == "splats"
    [side_by_side] = beer["side_by_side"]
    assert side_by_side["variants"] == ["truth", "baseline", "plain", "splats"]
    assert np.asarray(iio.imread(tmp_path / side_by_side["picture"])).shape == (2 * 20, 4 * 28, 3)
    # the data stages ran once: the variants change no data, poses or split key
    assert baseline["prepare_key"] == plain["prepare_key"]
    assert len(list((tmp_path / "work").glob("beer_colmap-*/rays"))) == 1
    # the printed table has a row per variant, the skipped captures named
    table = [line for line in result.stdout.splitlines() if line.startswith("| beer_colmap")]
    assert len(table) == 3 and "| plain |" in table[1] and "| splats |" in table[2]
    assert "| beer_video | | | skipped: " in result.stdout and "| stitch | | | failed: " in result.stdout


def test_bench_captures_refuses_an_unknown_variant_key_before_training(tmp_path):
    (tmp_path / "data" / "beer" / "sparse" / "0").mkdir(parents=True)
    result = bench_captures("--data", "data", "--params", str(REPO / "params.yaml"), "--budget-s", "1",
                            "--variant", "baseline", "--variant", "typo:scene.contractoin=off", "--out", "out.json",
                            cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "error: scene.contractoin=off: " in result.stderr and "has no key 'scene.contractoin'" in result.stderr
    assert not (tmp_path / "out.json").exists()


def test_bench_captures_default_variants_use_only_keys_params_has():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import bench_captures

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    variants = dict(bench_captures.default_variants(params))
    assert variants["baseline"] == [] and set(variants) == {"baseline", *bench_captures.FEATURES}
    del params["scene"]["contraction"]
    assert "box" not in dict(bench_captures.default_variants(params))
    # each default variant is valid params for every capture
    for capture in bench_captures.CAPTURES:
        for name, sets in bench_captures.default_variants(yaml.safe_load((REPO / "params.yaml").read_text())):
            bench_captures.configured(yaml.safe_load((REPO / "params.yaml").read_text()), capture.source,
                                      [*capture.sets, *sets], "params.yaml")


def load_bench_captures():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import bench_captures

    return bench_captures


def test_the_turntable_capture_is_the_chair_over_one_photo_masked_by_its_alpha(tmp_path):
    """Views of 8x8 RGBA (as the chair's 800x800) into 4x4: colour over the photo by alpha, averaged in 2x2
    blocks, a mask where the block's alpha passes 1/2; the folder reads as a capture with those masks."""
    from nerf_pipeline.scenes import folders

    bench_captures = load_bench_captures()
    data = tmp_path / "data"
    (data / "chair" / "train").mkdir(parents=True)
    (data / "beer" / "images").mkdir(parents=True)
    iio.imwrite(data / "beer" / "images" / "0000.jpg", np.full((16, 8, 3), (200, 100, 50), np.uint8))  # portrait
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (2, 8, 8, 4)).astype(np.uint8)
    rgba[0, ..., 3] = 0
    rgba[0, :4, :4, 3] = 255  # view 0: one opaque block of 4x4, the rest transparent
    frames = []
    for i, image in enumerate(rgba):
        iio.imwrite(data / "chair" / "train" / f"r_{i}.png", image)
        pose = np.eye(4)
        pose[:3, 3] = [0.0, -4.0 + i, 1.0]
        frames.append({"file_path": f"./train/r_{i}", "transform_matrix": pose.tolist()})
    (data / "chair" / "transforms_train.json").write_text(json.dumps({"camera_angle_x": 0.69, "frames": frames}))

    folder = bench_captures.turntable(data, tmp_path / "work", side=4)
    images = np.stack([iio.imread(folder / "images" / f"r_{i}.png") for i in range(2)]).astype(np.float64)
    masks = np.stack([iio.imread(folder / "masks" / f"r_{i}.png") for i in range(2)])
    photo = np.array([200, 100, 50], np.float64)
    a = rgba[..., 3:] / 255.0
    expected = (rgba[..., :3] * a + photo * (1 - a)).reshape(2, 4, 2, 4, 2, 3).mean((2, 4))
    np.testing.assert_allclose(images, expected, atol=2.5)  # the photo went through JPEG
    opaque_block = np.zeros((4, 4), np.uint8)
    opaque_block[:2, :2] = 255
    np.testing.assert_array_equal(masks[0], opaque_block)
    np.testing.assert_array_equal(masks[1] != 0, a[1, ..., 0].reshape(4, 2, 4, 2).mean((1, 3)) > 0.5)

    views = folders.read_transforms(folder / "transforms.json", 0.0, None)
    assert views.count == 2 and (views.height, views.width) == (4, 4)
    np.testing.assert_array_equal(views.mask(0), masks[0] != 0)
    assert bench_captures.turntable(data, tmp_path / "work", side=4) == folder  # made once


def test_stitchs_val_file_is_read_from_a_copy_that_names_the_folder_its_frames_are_in(tmp_path, capsys):
    bench_captures = load_bench_captures()
    stitch = tmp_path / "data" / "stitch"
    (stitch / "val").mkdir(parents=True)
    (stitch / "train").mkdir()
    iio.imwrite(stitch / "val" / "0001.png", np.zeros((2, 2, 3), np.uint8))
    (stitch / "transforms_train.json").write_text("{}")
    val = {"fl_x": 1.0, "frames": [{"file_path": "./test/0001", "transform_matrix": np.eye(4).tolist()},
                                   {"file_path": "./test/0009"}]}  # not in val/ either: left for download to refuse
    (stitch / "transforms_val.json").write_text(json.dumps(val))

    folder = bench_captures.mended_stitch(tmp_path / "data", tmp_path / "work")
    mended = json.loads((folder / "transforms_val.json").read_text())
    assert [frame["file_path"] for frame in mended["frames"]] == ["./val/0001", "./test/0009"]
    assert mended["fl_x"] == 1.0 and json.loads((stitch / "transforms_val.json").read_text()) == val  # left as it was
    assert (folder / "val" / "0001.png").is_file() and (folder / "transforms_train.json").read_text() == "{}"
    assert "names ./test/ for 1 frames that are in val/" in capsys.readouterr().out

    (stitch / "transforms_val.json").write_text("{")  # broken: passed on as it is
    folder = bench_captures.mended_stitch(tmp_path / "data", tmp_path / "work")
    assert (folder / "transforms_val.json").read_text() == "{"


def test_the_horizon_stretches_the_schedule_to_the_budget_from_the_recent_speed():
    """The first interval (tracing, compilation) only starts the clock; then every ``every_s`` seconds the total
    is the steps so far plus the recent speed times the time left."""
    from nerf_pipeline.benchmarking import Horizon

    class Method:
        totals = []

        def set_total_steps(self, total):
            self.totals.append(total)

    method = Method()
    horizon = Horizon(method, budget_s=100.0, every_s=10.0)
    for step, wall_s in ((1, 2.0), (2, 12.0), (50, 20.0), (102, 22.0), (200, 42.0), (210, 44.0)):
        horizon(step, wall_s)
    # clock started at step 2 (12 s); at 22 s: 100 steps in 10 s, 78 s left; at 42 s: 98 steps in 20 s, 58 s left
    assert method.totals == [pytest.approx(102 + 10 * 78), pytest.approx(200 + 4.9 * 58)]

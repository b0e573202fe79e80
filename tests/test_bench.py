"""The benchmark script on a tiny scene: it runs both presets and writes the summary it documents.

Its figures are not asserted (they are what the script is for); its bookkeeping is.
"""

import json
import subprocess
import sys

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
        "--work", "work", "--out", "results/captures.json", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((tmp_path / "results" / "captures.json").read_text())

    assert summary["variants"] == {"baseline": [], "plain": ["scene.contraction=off", "scene.appearance=off",
                                                              "presets.hashgrid.batch.size=256"]}
    assert summary["skipped"] == {"beer_video": "data/beer/Beer.mp4 not found"}
    assert set(summary["failed"]) == {"stitch"} and "transforms_train.json" in summary["failed"]["stitch"]
    beer = summary["captures"]["beer_colmap"]
    assert set(summary["captures"]) == {"beer_colmap"} and set(beer["variants"]) == {"baseline", "plain"}
    assert beer["prepare"]["views"] == beer["prepare"]["registered"] == 10
    for name, variant in beer["variants"].items():
        assert variant["split"] == {"train": 8, "val": 2} and variant["size"] == [20, 28]  # views 0 and 8 held out
        final = variant["final"]
        assert final["split"] == "val" and final["num_views"] == 2 and final["masked"] is False
        assert 0 < final["psnr"] < 60 and 0 < final["ssim"] <= 1 and 0 < final["train_psnr"] < 60
        assert final["wall_s"] >= 3 and final["steps"] == variant["curve"][-1]["step"] >= 1
        assert all(0 < point["val_psnr"] < 60 for point in variant["curve"])
        assert variant["fit"]["wall_s"] >= 3 and variant["fit"]["cpu_s"] > 0
    baseline, plain = beer["variants"]["baseline"], beer["variants"]["plain"]
    assert baseline["contracted"] is baseline["appearance"] is True  # a capture: both on under auto
    assert plain["contracted"] is plain["appearance"] is False
    # the data stages ran once: the variants change no data, poses or split key
    assert baseline["prepare_key"] == plain["prepare_key"]
    assert len(list((tmp_path / "work").glob("beer_colmap-*/rays"))) == 1
    # the printed table has a row per variant, the skipped captures named
    table = [line for line in result.stdout.splitlines() if line.startswith("| beer_colmap")]
    assert len(table) == 2 and "| plain |" in table[1]
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

"""The benchmark script on a tiny scene: it runs both presets and writes the summary it documents.

Its figures are not asserted (they are what the script is for); its bookkeeping is.
"""

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml
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

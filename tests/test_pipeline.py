"""End to end: the real `dvc repro` / `dvc exp run` on a tiny scene, with a real MLflow store."""

from __future__ import annotations

import json

import imageio.v2 as imageio
import numpy as np
import pytest
from conftest import DVC, make_project, mlflow_runs, run, tiny_params

from nerf_pipeline import media
from nerf_pipeline.scenes import ray_files

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """One tiny project, reproduced once and committed. Tests that read its first run find that run by
    the id in its run file (``first_run``), so they hold whichever tests ran before them."""
    path = make_project(tmp_path_factory.mktemp("project"), tiny_params(epochs=2))
    result = run(DVC + ["repro"], path)
    first_run = json.loads((path / "models/mlflow_run.json").read_text())["run_id"]
    run(["git", "add", "-A"], path)
    run(["git", "commit", "-qm", "first repro"], path)
    return path, result, first_run


@pytest.fixture(autouse=True)
def committed_workspace(project):
    """Each test starts from the committed first run: `dvc exp run` leaves its params and outs in the workspace."""
    path = project[0]
    run(["git", "checkout", "-f", "HEAD", "--", "."], path)
    run(DVC + ["checkout", "--force", "-q"], path)
    yield


def test_repro_writes_every_out(project):
    path, _, _ = project
    for out in ("data/scene/images.npy", "data/scene/depth.npy", "data/scene/cameras.npz", "data/cameras.npz",
                "data/split.json", "data/rays/train/images.npy", "data/rays/train/cameras.npz",
                "data/rays/val/images.npy",
                "models/model.keras", "models/progress.npz", "models/mlflow_run.json", "metrics/train.json",
                "metrics/train_history.csv", "metrics/eval.json", "metrics/eval_per_view.csv", "eval/grid.png",
                "render/orbit.mp4", "render/orbit_depth.mp4", "render/progress.gif"):
        assert (path / out).is_file() and (path / out).stat().st_size > 0, out


def test_metrics_are_real(project):
    path, _, _ = project
    train = json.loads((path / "metrics/train.json").read_text())
    evaluation = json.loads((path / "metrics/eval.json").read_text())
    assert train["epochs"] == 2 and train["steps"] == 50
    val = ray_files.load(path / "data/rays", "val")
    black_psnr = -10 * np.log10(np.mean((np.asarray(val.images) / 255.0) ** 2))  # the score of all-black
    assert evaluation["psnr"] > black_psnr + 2.0, (evaluation, black_psnr)
    assert 0.0 < evaluation["ssim"] <= 1.0
    assert evaluation["num_views"] == val.num_views == 2 and evaluation["split"] == "val"  # 20% of 8 views
    assert evaluation["depth_mae"] > 0.0
    history = (path / "metrics/train_history.csv").read_text().splitlines()
    assert history[0].split(",")[:5] == ["epoch", "loss", "psnr", "val_loss", "val_psnr"]
    assert len(history) == 1 + 2


def test_media_decode(project):
    path, _, _ = project
    assert media.count_video_frames(path / "render/orbit.mp4") == 12
    assert media.count_video_frames(path / "render/orbit_depth.mp4") == 12
    gif = imageio.mimread(path / "render/progress.gif")
    assert len(gif) == 2  # one frame per epoch
    grid = imageio.imread(path / "eval/grid.png")
    assert grid.shape[:2] == (2 * 24, 3 * 24)  # 2 val views x (truth | prediction | depth)


def test_one_mlflow_run_with_everything(project):
    path, _, first_run = project
    client, _ = mlflow_runs(path)
    run_info = client.get_run(first_run)  # one run holds every stage's params, metrics and artifacts
    assert run_info.info.status == "FINISHED"
    assert run_info.data.params["epochs"] == "2"
    assert run_info.data.params["presets.hashgrid.field.num_levels"] == "8"
    for key in ("loss", "psnr", "val_loss", "val_psnr", "eval_psnr", "eval_ssim", "render_fps"):
        assert key in run_info.data.metrics, key
    history = client.get_metric_history(run_info.info.run_id, "val_psnr")
    assert [m.step for m in history] == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(run_info.info.run_id)}
    assert {"model", "eval", "render"} <= artifacts
    render_files = {a.path for a in client.list_artifacts(run_info.info.run_id, "render")}
    assert "render/orbit.mp4" in render_files


def test_second_repro_does_nothing(project):
    path, _, _ = project
    _, before = mlflow_runs(path)
    result = run(DVC + ["repro"], path)
    assert "Data and pipelines are up to date" in result.stdout + result.stderr
    _, after = mlflow_runs(path)
    assert len(after) == len(before)


def test_exp_run_reruns_only_training_and_lands_in_mlflow(project):
    path, _, _ = project
    _, before = mlflow_runs(path)
    result = run(DVC + ["exp", "run", "-S", "epochs=3", "-n", "three-epochs"], path)
    output = result.stdout + result.stderr
    for stage in ("download", "poses", "split", "rays"):
        assert f"Stage '{stage}' didn't change, skipping" in output, stage
    for stage in ("train", "evaluate", "render"):
        assert f"Running stage '{stage}'" in output, stage

    shown = json.loads(run(DVC + ["exp", "show", "--json"], path).stdout)
    experiments = {exp["name"]: exp for baseline in shown for exp in (baseline.get("experiments") or [])}
    name = "three-epochs"
    data = experiments[name]["revs"][0]["data"]
    assert data["params"]["params.yaml"]["data"]["epochs"] == 3
    eval_metrics = data["metrics"]["metrics/eval.json"]["data"]
    assert eval_metrics["psnr"] > 0

    _, runs = mlflow_runs(path)
    assert len(runs) == len(before) + 1
    latest = runs[-1]
    assert latest.info.run_name == name
    assert latest.data.tags["dvc.experiment"] == name
    assert latest.data.params["epochs"] == "3"
    assert latest.data.metrics["eval_psnr"] == pytest.approx(eval_metrics["psnr"], rel=1e-6)


def test_temp_experiment_lands_in_the_project_store(project):
    """`dvc exp run --temp` runs in a copy under .dvc/tmp; its MLflow run must still land here."""
    path, _, _ = project
    _, before = mlflow_runs(path)
    run(DVC + ["exp", "run", "--temp", "-S", "epochs=1", "-n", "temp-exp"], path)
    _, runs = mlflow_runs(path)
    assert len(runs) == len(before) + 1
    latest = runs[-1]
    assert latest.info.run_name == "temp-exp" and latest.data.params["epochs"] == "1"
    assert "eval_psnr" in latest.data.metrics
    assert latest.info.artifact_uri.startswith((path / "mlruns").resolve().as_uri())
    assert not list((path / ".dvc" / "tmp").rglob("mlflow.db"))


def test_a_capture_runs_with_only_data_source_changed(project, tmp_path):
    """An instant-ngp layout capture (non-square, fx != fy, off-centre principal point) goes through
    the whole pipeline with nothing but `data.source` set."""
    from scenes import write_ngp

    path, _, _ = project
    write_ngp(tmp_path / "capture", num_views=8, height=20, width=28)
    run(DVC + ["exp", "run", "-S", f"data.source={tmp_path / 'capture'}", "-n", "capture"], path)
    evaluation = json.loads((path / "metrics/eval.json").read_text())
    assert evaluation["num_views"] == 2 and "depth_mae" not in evaluation  # a capture has no depth
    val = ray_files.load(path / "data/rays", "val")
    assert val.images.shape == (2, 20, 28, 3)
    np.testing.assert_allclose(val.intrinsics[0], [30.0, 24.0, 15.0, 9.0])
    black_psnr = -10 * np.log10(np.mean((np.asarray(val.images) / 255.0) ** 2))
    assert evaluation["psnr"] > black_psnr + 2.0
    assert media.count_video_frames(path / "render/orbit.mp4") == 12
    frame = imageio.get_reader(path / "render/orbit.mp4", format="FFMPEG").get_data(0)
    assert frame.shape[:2] == (20, 28)

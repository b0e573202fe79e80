"""Scale out: parallel sweeps through the DVC queue, a shared DVC remote, a shared MLflow server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest
import yaml
from conftest import DVC, TRAIN_OUTS, flags, free_port, mlflow_runs, run, stage, write_params


pytestmark = pytest.mark.xdist_group("project")  # with test_pipeline: one worker, one shared project


@pytest.fixture
def reproduced(reproduced_project):
    """The shared tiny project, reproduced and committed (conftest): experiments reuse its data stages. It starts
    from its committed state: an earlier test's `dvc exp run` leaves its params and outs in the workspace."""
    path = reproduced_project[0]
    run(["git", "checkout", "-f", "HEAD", "--", "."], path)
    run(DVC + ["checkout", "--force", "-q"], path)
    return path


@pytest.mark.slow
def test_queued_sweep_runs_two_at_once_into_one_store(reproduced, tmp_path):
    path = reproduced
    # Two renders of the committed model (only the render stage reruns): the queue, not training, is tested here.
    # Frame counts no other test renders: DVC's run cache would restore those renders without running them.
    run(DVC + ["exp", "run", "--queue", "-S", "render.num_frames=5", "-n", "sweep-a"], path)
    run(DVC + ["exp", "run", "--queue", "-S", "render.num_frames=7", "-n", "sweep-b"], path)
    # The queue's workers outlive `dvc queue start` and inherit its stdout/stderr: with pipes,
    # capturing the output would wait for the workers too. A file does not.
    with open(tmp_path / "queue-start.log", "w") as log:
        started = subprocess.run(DVC + ["queue", "start", "-j", "2"], cwd=path, stdout=log, stderr=subprocess.STDOUT,
                                 timeout=120)
    assert started.returncode == 0, (tmp_path / "queue-start.log").read_text()
    deadline = time.time() + 600
    while time.time() < deadline:
        status = run(DVC + ["queue", "status"], path).stdout
        if status.count("Success") == 2 or "Failed" in status:
            break
        time.sleep(3)
    run(DVC + ["queue", "stop", "--kill"], path, check=False)
    assert status.count("Success") == 2, status + run(DVC + ["queue", "logs", "sweep-b"], path, check=False).stdout

    _, runs = mlflow_runs(path)
    by_name = {r.info.run_name: r for r in runs}
    assert {"sweep-a", "sweep-b"} <= set(by_name)
    for name, frames in (("sweep-a", "5"), ("sweep-b", "7")):
        assert by_name[name].info.status == "FINISHED"
        assert by_name[name].data.params["render.num_frames"] == frames
        assert "time/render_fps" in by_name[name].data.metrics
        assert by_name[name].info.artifact_uri.startswith((path / "mlruns").resolve().as_uri())
    shown = json.loads(run(DVC + ["exp", "show", "--json"], path).stdout)
    names = {exp["name"] for baseline in shown for exp in (baseline.get("experiments") or [])}
    assert {"sweep-a", "sweep-b"} <= names


@pytest.mark.slow
def test_shared_dvc_remote_lets_a_fresh_clone_skip_the_work_and_re_render(reproduced, tmp_path):
    """A teammate's clone pulls everything and is up to date; a render-only experiment there reruns only render,
    into a run of the clone's own store (the training run is in the first project's) that names the run and the
    commit that trained the model."""
    path = reproduced
    remote = tmp_path / "remote"
    run(DVC + ["remote", "add", "-d", "shared", str(remote)], path)
    run(["git", "add", "-A"], path)
    run(["git", "commit", "-qm", "shared remote"], path)
    run(DVC + ["push"], path)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(path), str(clone)], tmp_path)
    run(DVC + ["pull"], clone)
    assert (clone / "models" / "trained" / "model.keras").is_file() and (clone / "render" / "orbit.mp4").is_file()
    result = run(DVC + ["repro"], clone)
    assert "Data and pipelines are up to date" in result.stdout + result.stderr

    for key, value in (("user.email", "teammate@example.invalid"), ("user.name", "teammate")):
        run(["git", "config", key, value], clone)  # `dvc exp run` commits the experiment
    # A frame count no other test renders (DVC's run cache would restore it without running render)
    result = run(DVC + ["exp", "run", "-S", "render.num_frames=8", "-n", "clone-eight"], clone)
    output = result.stdout + result.stderr
    for name in ("download", "poses", "split", "rays", "train", "evaluate", "export"):
        assert f"Stage '{name}' didn't change, skipping" in output, name
    assert "Running stage 'render'" in output
    trained = json.loads((clone / "models/trained/run.json").read_text())["run_id"]
    client, first_runs = mlflow_runs(path)
    (training,) = [r for r in first_runs if r.info.run_id == trained]
    _, runs = mlflow_runs(clone)
    (reusing,) = runs  # the clone's store holds only the render's run
    assert reusing.info.run_name == "clone-eight" and reusing.info.status == "FINISHED"
    assert reusing.data.tags["model.run"] == trained
    assert reusing.data.tags["model.git.commit"] == training.data.tags["git.commit"]
    run(["git", "cat-file", "-e", reusing.data.tags["model.git.commit"]], clone)  # a commit the clone has
    assert trained in reusing.data.tags["mlflow.note.content"]
    assert reusing.data.params["render.num_frames"] == "8" and "time/render_fps" in reusing.data.metrics
    assert "render/orbit.mp4" in {a.path for a in mlflow_runs(clone)[0].list_artifacts(reusing.info.run_id, "render")}


@pytest.mark.slow
def test_pipeline_logs_to_a_real_mlflow_server(reproduced, tmp_path):
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts"), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        # The train stage on the shared project's rays: it starts the run, logs the curves and the model.
        write_params(tmp_path, yaml.safe_load((reproduced / "params.yaml").read_text()))
        result = stage("train", *flags(in_rays=reproduced / "data/rays", **TRAIN_OUTS), cwd=tmp_path,
                       env={"MLFLOW_TRACKING_URI": uri, "DVC_ROOT": str(tmp_path)})
        assert result.returncode == 0, result.stderr[-3000:]
        assert not (tmp_path / "mlflow.db").exists()  # nothing went to a local store
        client, runs = mlflow_runs(uri)
        assert len(runs) == 1 and runs[0].info.status == "FINISHED"
        assert "train/psnr" in runs[0].data.metrics and "val/psnr" in runs[0].data.metrics
        assert list((tmp_path / "server-artifacts").rglob("model.keras"))  # the Logged Model, stored by the server
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)

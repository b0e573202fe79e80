"""MLflow tracking against real sqlite stores: later stages leave the training run's status alone, a clone whose
store lacks the training run logs into a run that names it, and processes that open a new store at once all
succeed."""

from __future__ import annotations

import json
import multiprocessing
import shutil

import mlflow
import pytest
from conftest import tiny_params

from nerf_pipeline import config
from nerf_pipeline.runtime import tracking

COMMIT = "0123456789abcdef0123456789abcdef01234567"  # the git commit that DVC says an experiment starts from


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory):
    """A sqlite store with MLflow's tables and no experiment of the pipeline's: copied for each test, as
    creating the tables takes seconds."""
    path = tmp_path_factory.mktemp("empty-store") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def new_project(tmp_path, empty_store):
    """``new_project(name)``: a project folder ``tmp_path/name`` with a new sqlite store of its own."""

    def make(name: str):
        (tmp_path / name).mkdir()
        shutil.copy(empty_store, tmp_path / name / "mlflow.db")
        return tmp_path / name

    return make


@pytest.fixture
def store(new_project, monkeypatch):
    """A project folder with its own sqlite store (``DVC_ROOT``), at a known git commit."""
    folder = new_project("a")
    monkeypatch.setenv("DVC_ROOT", str(folder))
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", COMMIT)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    return folder


def cfg_with(**render):
    params = tiny_params()
    params["render"].update(render)
    return config.from_dict(params)


def train_run(cfg, folder) -> str:
    """A finished training run in the current store and its ``run.json`` in ``folder``; returns the run's id."""
    tracking.connect(cfg)
    with tracking.start_run(cfg) as run:
        tracking.write_run_file(folder / "run.json", run)
    return run.info.run_id


def status(run_id: str) -> str:
    return mlflow.MlflowClient(tracking.tracking_uri()).get_run(run_id).info.status


@pytest.mark.parametrize("interruption", [KeyboardInterrupt, ValueError])
def test_a_later_stage_that_fails_leaves_the_training_run_as_it_was(store, interruption):
    cfg = cfg_with()
    trained = train_run(cfg, store)
    assert status(trained) == "FINISHED"
    with pytest.raises(interruption):  # e.g. a Ctrl-C in render, a bad camera path
        with tracking.pipeline_run(cfg, store / "run.json") as run:
            assert run.run_id == trained  # same params: the stage logs into train's run
            run.log_metrics({"time/render_s": 1.5})
            raise interruption()
    assert status(trained) == "FINISHED"
    assert mlflow.MlflowClient(tracking.tracking_uri()).get_run(trained).data.metrics["time/render_s"] == 1.5


def test_a_run_of_its_own_ends_with_its_stage_and_a_retry_starts_another(store):
    trained = train_run(cfg_with(), store)
    cfg = cfg_with(num_frames=5)  # only rendering params differ: a run of their own
    with pytest.raises(ValueError):
        with tracking.pipeline_run(cfg, store / "run.json") as failed:
            raise ValueError("a bad camera path")
    assert status(failed.run_id) == "FAILED" and status(trained) == "FINISHED"
    with tracking.pipeline_run(cfg, store / "run.json") as retried:
        retried.log_metrics({"time/render_s": 2.0})
    assert retried.run_id not in (failed.run_id, trained) and status(retried.run_id) == "FINISHED"
    with tracking.pipeline_run(cfg, store / "run.json") as next_stage:  # the next stage of that experiment
        pass
    assert next_stage.run_id == retried.run_id


def test_a_clone_whose_store_lacks_the_training_run_logs_into_a_run_that_names_it(store, new_project, monkeypatch):
    trained = train_run(cfg_with(), store)
    written = json.loads((store / "run.json").read_text())
    assert written["git_commit"] == COMMIT and written["tracking_uri"] == f"sqlite:///{store / 'mlflow.db'}"
    # A teammate's clone: the model (and its run.json) came with `dvc pull`, the store is the clone's own.
    clone = new_project("b")
    monkeypatch.setenv("DVC_ROOT", str(clone))
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "fedcba9876543210fedcba9876543210fedcba98")
    monkeypatch.setenv("DVC_EXP_NAME", "eight-frames")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")  # set by mlflow.set_tracking_uri for store a
    cfg = cfg_with(num_frames=8)
    for _ in range(2):  # render, then a later stage of the same experiment: the same run
        with tracking.pipeline_run(cfg, store / "run.json") as run:
            run.log_artifact(store / "run.json", "render")
    client = mlflow.MlflowClient(f"sqlite:///{clone / 'mlflow.db'}")
    (reusing,) = client.search_runs([client.get_experiment_by_name(cfg.mlflow.experiment).experiment_id])
    assert reusing.info.run_id == run.run_id and reusing.info.status == "FINISHED"
    assert reusing.info.run_name == "eight-frames"
    tags = reusing.data.tags
    assert tags["model.run"] == trained and tags["model.git.commit"] == COMMIT
    assert tags["git.commit"] == "fedcba9876543210fedcba9876543210fedcba98"  # the clone's own
    assert trained in tags["mlflow.note.content"] and COMMIT in tags["mlflow.note.content"]
    assert str(store / "mlflow.db") in tags["mlflow.note.content"]
    assert reusing.data.params["render.num_frames"] == "8"
    assert [a.path for a in client.list_artifacts(run.run_id, "render")] == ["render/run.json"]


def connect_to_a_new_store(barrier, root: str, results) -> None:
    """One of several processes that connect to the store of ``root`` at the same moment."""
    import os

    os.environ["DVC_ROOT"] = root
    cfg = config.from_dict(tiny_params())
    barrier.wait(timeout=120)
    try:
        tracking.connect(cfg)
        results.put("connected")
    except BaseException as e:
        results.put(f"{type(e).__name__}: {e}")


def test_two_processes_opening_a_new_store_at_once_both_succeed(tmp_path):
    """As `dvc queue start -j 2` does on a new project. MLflow creates a new sqlite store's tables without a lock:
    without one here, one of the two failed in each of 4 tries ("duplicate column name: step")."""
    context = multiprocessing.get_context("spawn")  # fresh interpreters, as the queue's stages are
    barrier, results = context.Barrier(2), context.Queue()
    processes = [context.Process(target=connect_to_a_new_store, args=(barrier, str(tmp_path), results))
                 for _ in range(2)]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=300) for _ in processes]
    for process in processes:
        process.join(timeout=60)
    assert outcomes == ["connected", "connected"]
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert client.get_experiment_by_name("nerf-pipeline") is not None


@pytest.mark.parametrize("run_id", ["x' or '1'='1", "0123456789abcdef", "../../mlflow.db", "0123456789ABCDEF" * 2, 12])
def test_a_run_file_whose_run_id_is_not_an_mlflow_run_id_is_refused_naming_the_file(store, run_id):
    """A run id goes into an MLflow filter string (``tags.`model.run` = '<id>'``): a quote in it broke the filter
    (an MlflowException traceback), so anything but MLflow's 32 lowercase hex characters is refused first."""
    from nerf_pipeline.errors import DataError

    (store / "run.json").write_text(json.dumps({"run_id": run_id, "run_name": "r"}))
    with pytest.raises(DataError) as error:
        with tracking.pipeline_run(cfg_with(num_frames=5), store / "run.json"):
            pass
    assert str(store / "run.json") in str(error.value)
    assert f"run_id {run_id!r} is not an MLflow run id (32 hexadecimal characters)" in str(error.value)


# ----------------------------------------------------------------------------- runs whose process died

# A training run's process that dies without ending its run (killed outright, or crashed in native code), or,
# told "live", keeps running with its run open. It prints its run's id first.
TRAINER = """
import faulthandler, os, signal, sys
from nerf_pipeline import config
from nerf_pipeline.runtime import tracking

cfg = config.load(sys.argv[1])
tracking.connect(cfg)
with tracking.start_run(cfg) as run:
    print(run.info.run_id, flush=True)
    if sys.argv[2] == "kill -9":
        os.kill(os.getpid(), signal.SIGKILL)
    elif sys.argv[2] == "segfault":
        faulthandler.disable()
        faulthandler._sigsegv()
    sys.stdin.read()
"""


def test_the_next_run_ends_the_runs_whose_process_died_and_leaves_live_ones(store, tmp_path):
    import signal
    import subprocess
    import sys

    from conftest import write_params

    params = write_params(tmp_path, tiny_params())
    trainers = {how: subprocess.Popen([sys.executable, "-c", TRAINER, str(params), how], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for how in ("kill -9", "segfault", "live")}
    try:
        ids = {how: trainer.stdout.readline().strip() for how, trainer in trainers.items()}
        assert trainers["kill -9"].wait(timeout=60) == -signal.SIGKILL
        assert trainers["segfault"].wait(timeout=60) == -signal.SIGSEGV
        client = mlflow.MlflowClient(tracking.tracking_uri())
        experiment = client.get_experiment_by_name("nerf-pipeline").experiment_id
        elsewhere = client.create_run(experiment, tags={"process.host": "another-machine", "process.pid": "1"})
        older = client.create_run(experiment)  # from before runs recorded their process: whose, nobody can tell
        assert {status(run_id) for run_id in ids.values()} == {"RUNNING"}  # what the dead ones left

        cfg = config.load(params)
        tracking.connect(cfg)
        with tracking.start_run(cfg) as run:  # the next run, of any stage
            pass
        for how in ("kill -9", "segfault"):
            ended = client.get_run(ids[how])
            assert ended.info.status == "KILLED", how
            assert ended.data.tags["ended_by_run"] == run.info.run_id
            assert "ended without ending this run" in ended.data.tags["mlflow.note.content"]
        assert status(ids["live"]) == "RUNNING"  # still training
        assert status(elsewhere.info.run_id) == "RUNNING" and status(older.info.run_id) == "RUNNING"
    finally:
        for trainer in trainers.values():
            if trainer.poll() is None:
                trainer.kill()
            trainer.communicate(timeout=60)

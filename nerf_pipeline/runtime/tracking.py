"""MLflow: one pipeline run is one MLflow run.

``train`` starts the run and records its id in a small JSON out; ``evaluate`` and ``render``
reopen it to add their metrics and artifacts, so ``mlflow ui`` shows each pipeline run
(and each ``dvc exp run`` experiment) as one row.

The store is ``MLFLOW_TRACKING_URI`` when set, else ``sqlite:///<repo>/mlflow.db`` with
artifacts in ``<repo>/mlruns``. ``<repo>`` is ``DVC_ROOT``, which DVC sets to the
project's own root even for ``dvc exp run --temp`` / ``--queue`` runs that execute in a
temporary copy, so that all of them land in the one store.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import types
from pathlib import Path

from nerf_pipeline.runtime import atomic
from nerf_pipeline.config import Config
from nerf_pipeline.runtime.errors import DataError, UserError

log = logging.getLogger(__name__)


def project_root() -> Path:
    return Path(os.environ.get("DVC_ROOT") or os.getcwd()).resolve()


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / 'mlflow.db'}"


def _git_commit() -> str | None:
    rev = os.environ.get("DVC_EXP_BASELINE_REV")
    if rev:
        return rev
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=project_root())
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def connect(cfg: Config):
    """Point MLflow at the store and the experiment; fail early and clearly if the store is unreachable.

    Returns the ``mlflow`` module, configured.
    """
    import mlflow

    uri = tracking_uri()
    if uri.startswith(("http://", "https://")):
        # MLflow's defaults retry an unreachable server for minutes; say so within seconds instead.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    mlflow.set_tracking_uri(uri)
    try:
        client = mlflow.MlflowClient()
        experiment = client.get_experiment_by_name(cfg.mlflow.experiment)
        if experiment is None:
            artifact_location = None
            if uri.startswith("sqlite:"):
                # Absolute, so that runs made from a temporary copy store artifacts in the project.
                artifact_location = (project_root() / "mlruns").as_uri()
            client.create_experiment(cfg.mlflow.experiment, artifact_location=artifact_location)
        mlflow.set_experiment(cfg.mlflow.experiment)
    except Exception as e:  # MLflow raises many types for an unreachable or broken store
        raise UserError(f"cannot use the MLflow tracking store {uri}: {type(e).__name__}: {e}. "
                        "Check MLFLOW_TRACKING_URI (unset it to use the local sqlite store).") from None
    return mlflow


@contextlib.contextmanager
def start_run(cfg: Config, resumes: str | None = None, resumed_epoch: int = 0):
    """Start this pipeline run's MLflow run (stage ``train``, after ``connect``); yields the active run.

    ``resumes``: the id of the run whose checkpoint this one continues from epoch
    ``resumed_epoch``. That run is marked KILLED if it never ended (a process killed outright
    cannot end its own run), and this one is tagged with it. An interrupted run (Ctrl-C,
    SIGTERM) ends as KILLED, a failed one as FAILED.
    """
    import mlflow

    experiment_name = os.environ.get("DVC_EXP_NAME")
    tags = {"preset": cfg.preset, "data.source": cfg.data.source}
    if experiment_name:
        tags["dvc.experiment"] = experiment_name
    commit = _git_commit()
    if commit:
        tags["git.commit"] = commit
    if resumes:
        tags.update({"resumes_run": resumes, "resumed_from_epoch": str(resumed_epoch)})
        _end_if_running(mlflow, resumes, "KILLED")
    run = mlflow.start_run(run_name=experiment_name or None, tags=tags)
    try:
        mlflow.log_params({key: "null" if value is None else value for key, value in cfg.used_params().items()})
        log.info("MLflow run %s (%s) in %s%s", run.info.run_id, run.info.run_name, tracking_uri(),
                 f", resuming run {resumes} after epoch {resumed_epoch}" if resumes else "")
        yield run
    except KeyboardInterrupt:
        mlflow.end_run("KILLED")
        raise
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    else:
        mlflow.end_run("FINISHED")


def _end_if_running(mlflow, run_id: str, status: str) -> None:
    try:
        client = mlflow.MlflowClient()
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_terminated(run_id, status)
    except Exception as e:  # the old run may live in another store; resuming must not depend on it
        log.warning("could not mark MLflow run %s as %s: %s", run_id, status, e)


def write_run_file(path, run) -> None:
    atomic.write_json(path, {"run_id": run.info.run_id, "run_name": run.info.run_name,
                             "experiment_id": run.info.experiment_id})


@contextlib.contextmanager
def reopen_run(cfg: Config, run_file):
    """Reopen the run that ``train`` recorded in ``run_file``; yields the ``mlflow`` module."""
    try:
        run_id = json.loads(Path(run_file).read_text())["run_id"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{run_file}: not an MLflow run file written by the train stage ({e}).") from None
    mlflow = connect(cfg)
    try:
        mlflow.get_run(run_id)
    except Exception:
        raise UserError(f"{run_file}: MLflow run {run_id} is not in the store {tracking_uri()}; "
                        "was the store moved or MLFLOW_TRACKING_URI changed? Run 'dvc repro -f train' "
                        "to start a new run.") from None
    with mlflow.start_run(run_id=run_id):
        yield mlflow


class _NoTracking:
    """Stands in for the ``mlflow`` module on a process that must not log (a non-chief worker)."""

    def log_metrics(self, *args, **kwargs) -> None:
        pass

    def log_artifact(self, *args, **kwargs) -> None:
        pass


NO_TRACKING = _NoTracking()


@contextlib.contextmanager
def no_run():
    """A run-shaped nothing: ``run.info.run_id`` is None."""
    yield types.SimpleNamespace(info=types.SimpleNamespace(run_id=None, run_name=None, experiment_id=None))

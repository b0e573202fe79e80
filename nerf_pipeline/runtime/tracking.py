"""MLflow: one pipeline run is one MLflow run, and every experiment gets its own.

``train`` starts the run (named after the DVC experiment, or ``<branch>@<commit>`` for a plain
``dvc repro``; tagged with the git commit and a fingerprint of the params the run uses) and records
its id in a small JSON out; ``evaluate`` and ``render`` log into the same run when their params are
those it was started with. When only evaluation or rendering params changed (``dvc exp run -S
render.width=400``), train does not rerun, and they log into a run of their own for those params,
tagged ``model.run`` with the run whose model they reuse (created by the first of them, found again
by its tags by the next), so no experiment overwrites another's artifacts.

Metric names carry a section (``train/loss``, ``val/psnr``, ``eval/ssim``, ``time/epoch_s``), which
the MLflow UI groups. The store is ``MLFLOW_TRACKING_URI`` when set, else
``sqlite:///<repo>/mlflow.db`` with artifacts in ``<repo>/mlruns``. ``<repo>`` is ``DVC_ROOT``,
which DVC sets to the project's own root even for ``dvc exp run --temp`` / ``--queue`` runs that
execute in a temporary copy, so that all of them land in the one store.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import subprocess
import types
import warnings
from pathlib import Path

from nerf_pipeline.runtime import atomic
from nerf_pipeline.config import Config
from nerf_pipeline.runtime.errors import DataError, UserError

log = logging.getLogger(__name__)


def project_root() -> Path:
    return Path(os.environ.get("DVC_ROOT") or os.getcwd()).resolve()


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / 'mlflow.db'}"


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, cwd=project_root())
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _git_commit() -> str | None:
    return os.environ.get("DVC_EXP_BASELINE_REV") or _git("rev-parse", "HEAD")


def run_name() -> str:
    """The DVC experiment's name, or ``<branch>@<short commit>`` for a plain ``dvc repro``."""
    experiment = os.environ.get("DVC_EXP_NAME")
    if experiment:
        return experiment
    branch = _git("rev-parse", "--abbrev-ref", "HEAD") or "workspace"
    commit = _git("rev-parse", "--short", "HEAD")
    return f"{branch}@{commit}" if commit else branch


def params_fingerprint(cfg: Config) -> str:
    """A short hash of the params this run uses: equal for the stages of one pipeline run."""
    return hashlib.sha256(json.dumps(cfg.used_params(), sort_keys=True, default=str).encode()).hexdigest()[:16]


def _tags(cfg: Config) -> dict:
    tags = {"preset": cfg.preset, "data.source": cfg.data.source, "params.fingerprint": params_fingerprint(cfg)}
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc.experiment"] = os.environ["DVC_EXP_NAME"]
    commit = _git_commit()
    if commit:
        tags["git.commit"] = commit
    return tags


def _log_params(mlflow, cfg: Config) -> None:
    mlflow.log_params({key: "null" if value is None else value for key, value in cfg.used_params().items()})


def _system_metrics() -> bool:
    """MLflow samples CPU and memory use while a run is open when psutil is there."""
    return importlib.util.find_spec("psutil") is not None


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

    tags = _tags(cfg)
    if resumes:
        tags.update({"resumes_run": resumes, "resumed_from_epoch": str(resumed_epoch)})
        _end_if_running(mlflow, resumes, "KILLED")
    run = mlflow.start_run(run_name=run_name(), tags=tags, log_system_metrics=_system_metrics())
    with _ending(mlflow):
        _log_params(mlflow, cfg)
        log.info("MLflow run %s (%s) in %s%s", run.info.run_id, run.info.run_name, tracking_uri(),
                 f", resuming run {resumes} after epoch {resumed_epoch}" if resumes else "")
        yield run


@contextlib.contextmanager
def _ending(mlflow):
    """End the active run as KILLED on Ctrl-C or SIGTERM, FAILED on an error, FINISHED otherwise."""
    try:
        yield
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


def _dvc_md5(path) -> str | None:
    """The md5 that DVC recorded for the out at ``path`` (relative to the project) in ``dvc.lock``, if any."""
    import yaml

    try:
        lock = yaml.safe_load((project_root() / "dvc.lock").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    wanted = Path(path).as_posix().rstrip("/")
    for stage in (lock.get("stages") or {}).values():
        for out in stage.get("outs") or []:
            if out.get("path") == wanted:
                return out.get("md5")
    return None


def log_dataset(mlflow, rays_folder) -> None:
    """Record the rays folder as the run's training input: its path as the source, and as the digest the md5
    DVC recorded for it (or, outside DVC, a hash of its cameras)."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    digest = _dvc_md5(rays_folder)
    if digest is None:
        hasher = hashlib.md5()
        for path in sorted(Path(rays_folder).glob("*/cameras.npz")):
            hasher.update(path.read_bytes())
        digest = hasher.hexdigest()
    with warnings.catch_warnings(record=True):  # "can be interpreted in multiple ways": both are local files
        source = resolve_dataset_source(str(Path(rays_folder).resolve()))
    mlflow.log_input(MetaDataset(source=source, name=Path(rays_folder).name, digest=digest), context="training")


def read_run_file(run_file) -> str:
    try:
        return json.loads(Path(run_file).read_text())["run_id"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{run_file}: not an MLflow run file written by the train stage ({e}).") from None


@contextlib.contextmanager
def pipeline_run(cfg: Config, run_file):
    """The run that ``evaluate`` and ``render`` log into; yields the ``mlflow`` module with it active.

    Train's run (``run_file``) when it was started with the params this stage runs with; else the
    run of these params and this name (``run_name``) that reuses train's model, found by its tags or
    created (tagged ``model.run``, with these params logged).
    """
    trained = read_run_file(run_file)
    mlflow = connect(cfg)
    client = mlflow.MlflowClient()
    try:
        parent = client.get_run(trained)
    except Exception:
        raise UserError(f"{run_file}: MLflow run {trained} is not in the store {tracking_uri()}; "
                        "was the store moved or MLFLOW_TRACKING_URI changed? Run 'dvc repro -f train' "
                        "to start a new run.") from None
    fingerprint = params_fingerprint(cfg)
    if parent.data.tags.get("params.fingerprint") == fingerprint:
        with mlflow.start_run(run_id=trained, log_system_metrics=_system_metrics()):
            yield mlflow
        return
    # The run that an earlier stage of this same `dvc exp run` (or `dvc repro`) started: same model, same
    # params and same name. Another experiment with the same params is a run of its own.
    name = run_name().replace("'", "\\'")
    found = client.search_runs([parent.info.experiment_id], max_results=1, order_by=["attributes.start_time DESC"],
                               filter_string=f"tags.`model.run` = '{trained}' and "
                                             f"tags.`params.fingerprint` = '{fingerprint}' and "
                                             f"attributes.run_name = '{name}'")
    if found:
        with mlflow.start_run(run_id=found[0].info.run_id, log_system_metrics=_system_metrics()):
            yield mlflow
        return
    run = mlflow.start_run(run_name=run_name(), tags={**_tags(cfg), "model.run": trained},
                           log_system_metrics=_system_metrics())
    with _ending(mlflow):
        _log_params(mlflow, cfg)
        mlflow.set_tag("mlflow.note.content", f"Reuses the model trained in run {trained} ({parent.info.run_name}); "
                                              "only evaluation or rendering params differ.")
        log.info("MLflow run %s (%s): these params reuse the model of run %s", run.info.run_id, run.info.run_name,
                 trained)
        yield mlflow


class _NoTracking:
    """Stands in for the ``mlflow`` module on a process that must not log (a non-chief worker)."""

    def _nothing(self, *args, **kwargs) -> None:
        pass

    log_metrics = log_artifact = log_image = log_input = _nothing


NO_TRACKING = _NoTracking()


@contextlib.contextmanager
def no_run():
    """A run-shaped nothing: ``run.info.run_id`` is None."""
    yield types.SimpleNamespace(info=types.SimpleNamespace(run_id=None, run_name=None, experiment_id=None))

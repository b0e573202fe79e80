"""MLflow: one pipeline run is one MLflow run, and every experiment gets its own.

``train`` starts the run (named after the DVC experiment, or ``<branch>@<commit>`` for a plain
``dvc repro``; tagged with the git commit and a fingerprint of the params the run uses) and records
its id, the commit and the store in a small JSON out; ``evaluate``, ``export`` and ``render`` log
into the same run when their params are those it was started with. When only evaluation or
rendering params changed (``dvc exp run -S render.width=400``), train does not rerun, and they log
into a run of their own for those params, tagged ``model.run`` with the run whose model they reuse
(created by the first of them, found again by its tags by the next), so no experiment overwrites
another's artifacts. The same holds when train's run is not in this store at all (a teammate's
clone that pulled the model with ``dvc pull``): the run of their own then says which run, in which
store and at which commit, trained the model.

A later stage logs into a run it did not start through ``MlflowClient`` and never ends it: its
failure (a bad camera path, a Ctrl-C) is not the training run's, which keeps its status. Only a run
a stage starts ends with that stage (FINISHED, FAILED, or KILLED on Ctrl-C or SIGTERM). A stage killed outright
(``kill -9``, out of memory) or crashed (a segfault) cannot end its run: each run records its process, and the
next run started on that machine ends the runs whose process has ended as KILLED, with a note (``end_dead_runs``).

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
import re
import socket
import subprocess
import tempfile
import time
import types
import warnings
from pathlib import Path

from nerf_pipeline.errors import DataError, UserError
from nerf_pipeline.runtime import atomic
from nerf_pipeline.config import Config

log = logging.getLogger(__name__)


def project_root() -> Path:
    return Path(os.environ.get("DVC_ROOT") or os.getcwd()).resolve()


def tracking_uri(project=None) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else the sqlite store of ``project`` (None: ``project_root()``)."""
    root = project_root() if project is None else Path(project).resolve()
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlflow.db'}"


# An MLflow run id is a uuid4's 32 lowercase hex digits. Ids are checked before use: one goes into MLflow filter
# strings (``tags.`model.run` = '<id>'``), where a quote would change the query.
RUN_ID = re.compile(r"[0-9a-f]{32}")


def is_run_id(value) -> bool:
    return isinstance(value, str) and RUN_ID.fullmatch(value) is not None


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
    return {**tags, **_process_tags()}


def _process_tags() -> dict:
    """Which process starts (and owns) the run: a later run ends it should that process die first
    (``end_dead_runs``). A process id names one process only on one machine, in one boot and pid namespace."""
    return {"process.host": socket.gethostname(), "process.pid": str(os.getpid()), **_machine()}


def _machine() -> dict:
    """This boot of this machine and this process's pid namespace (a container has its own), where Linux says."""
    found = {}
    with contextlib.suppress(OSError):
        found["process.boot_id"] = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    with contextlib.suppress(OSError):
        found["process.pid_namespace"] = os.readlink("/proc/self/ns/pid")
    return found


def _process_gone(tags: dict) -> bool:
    """Whether the process that the tags of a run name (``_process_tags``) has certainly ended. Not when it ran on
    another machine or in another pid namespace, nor while a process of its id runs (even one that reuses the
    id): a live run is never ended, at worst a dead one waits for a later run."""
    if tags.get("process.host") != socket.gethostname() or not (tags.get("process.pid") or "").isdigit():
        return False
    here = _machine()
    if tags.get("process.boot_id") and here.get("process.boot_id") and \
            tags["process.boot_id"] != here["process.boot_id"]:
        return True  # the machine restarted since: every process of that boot has ended
    if tags.get("process.pid_namespace") != here.get("process.pid_namespace"):
        return False
    pid = int(tags["process.pid"])
    if pid == os.getpid() or os.name != "posix":  # elsewhere os.kill(pid, 0) is no probe (a Ctrl-C on Windows)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (OSError, OverflowError):  # EPERM: it runs, as another user
        return False
    return False


def end_dead_runs(client, experiment_id: str, by_run) -> None:
    """End as KILLED, with a note, the runs of the experiment that are RUNNING although the process that started
    them on this machine has ended: killed outright (``kill -9``, out of memory) or crashed (a segfault), it could
    not end them, and they would stay RUNNING for ever. ``by_run``: the run starting now, which the note names.

    Any stage's run, at any commit: whether its process is gone is known exactly (``_process_gone``), and a
    crash at a commit that never runs again must not stay RUNNING. Never fails the stage."""
    host = socket.gethostname().replace("'", "\\'")
    try:
        running = client.search_runs([experiment_id], max_results=1000, filter_string=(
            f"attributes.status = 'RUNNING' and tags.`process.host` = '{host}'"))
        for stale in running:
            tags = stale.data.tags
            if stale.info.run_id == by_run.info.run_id or not _process_gone(tags):
                continue
            note = (f"Its process (pid {tags['process.pid']} on {tags['process.host']}) ended without ending this "
                    "run: it was killed outright (kill -9, out of memory) or crashed. Marked KILLED by run "
                    f"{by_run.info.run_id} ({by_run.info.run_name}) at {time.strftime('%Y-%m-%d %H:%M:%S %z')}.")
            earlier = tags.get("mlflow.note.content")
            client.set_tag(stale.info.run_id, "mlflow.note.content", f"{earlier}\n\n{note}" if earlier else note)
            client.set_tag(stale.info.run_id, "ended_by_run", by_run.info.run_id)
            client.set_terminated(stale.info.run_id, "KILLED")
            log.info("MLflow run %s (%s) was left RUNNING by its process (pid %s), which has ended: marked KILLED",
                     stale.info.run_id, stale.info.run_name, tags["process.pid"])
    except Exception as e:  # MLflow raises many types; tidying an old run must not stop this one
        log.warning("could not look for MLflow runs left RUNNING by processes that ended: %s", e)


def _log_params(mlflow, cfg: Config) -> None:
    mlflow.log_params({key: "null" if value is None else value for key, value in cfg.used_params().items()})


def _system_metrics() -> bool:
    """MLflow samples CPU and memory use while a run is open when psutil is there."""
    return importlib.util.find_spec("psutil") is not None


def connect(cfg: Config):
    """Point MLflow at the store and the experiment; fail early and clearly if the store is unreachable.

    Returns the ``mlflow`` module, configured. Safe when several stages connect to a new store at
    once (``dvc queue start -j 2``): see ``_store_initialisation`` and ``_experiment_id``.
    """
    import mlflow

    uri = tracking_uri()
    if uri.startswith(("http://", "https://")):
        # MLflow's defaults retry an unreachable server for minutes; say so within seconds instead.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    mlflow.set_tracking_uri(uri)
    try:
        with _store_initialisation(uri):
            _experiment_id(mlflow.MlflowClient(), cfg.mlflow.experiment, uri)
        mlflow.set_experiment(cfg.mlflow.experiment)
    except Exception as e:  # MLflow raises many types for an unreachable or broken store
        raise UserError(f"cannot use the MLflow tracking store {uri}: {type(e).__name__}: {e}. "
                        "Check MLFLOW_TRACKING_URI (unset it to use the local sqlite store).") from None
    return mlflow


@contextlib.contextmanager
def _store_initialisation(uri: str):
    """Hold a lock on a sqlite store while it is first opened: MLflow creates the tables of a new sqlite store
    when a process first opens it, without a lock, so two processes opening a new store at once can both
    create them ("duplicate column name: step"). A server creates its tables once, when it starts."""
    if not uri.startswith("sqlite:"):
        yield
        return
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock (MLflow's own locks are POSIX-only too)
        yield
        return
    digest = hashlib.sha256(uri.encode()).hexdigest()[:16]
    lock_path = Path(tempfile.gettempdir()) / f"nerf-pipeline-mlflow-{digest}.lock"
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _experiment_id(client, name: str, uri: str) -> str:
    """The id of the experiment ``name``, created if the store has none. Between a look-up that finds nothing
    and the creation another process may create it: its "already exists" then means look it up again."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    artifact_location = None
    if uri.startswith("sqlite:"):
        # Absolute, so that runs made from a temporary copy store artifacts in the project.
        artifact_location = (project_root() / "mlruns").as_uri()
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    return client.get_experiment_by_name(name).experiment_id


@contextlib.contextmanager
def start_run(cfg: Config, resumes: str | None = None, resumed_epoch: int = 0):
    """Start this pipeline run's MLflow run (stage ``train``, after ``connect``); yields the active run.

    ``resumes``: the id of the run whose checkpoint this one continues from epoch
    ``resumed_epoch``. That run is marked KILLED if it never ended (a process killed outright
    cannot end its own run), and this one is tagged with it; so is any run whose process died
    (``end_dead_runs``). An interrupted run (Ctrl-C, SIGTERM) ends as KILLED, a failed one as FAILED.
    """
    import mlflow

    tags = _tags(cfg)
    if resumes:
        tags.update({"resumes_run": resumes, "resumed_from_epoch": str(resumed_epoch)})
        _end_if_running(mlflow, resumes, "KILLED")
    run = mlflow.start_run(run_name=run_name(), tags=tags, log_system_metrics=_system_metrics())
    with _ending(mlflow):
        _log_params(mlflow, cfg)
        end_dead_runs(mlflow.MlflowClient(), run.info.experiment_id, run)
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
    """``run.json``: the training run's id and name, the store it is in and the git commit it trained from
    (``null`` outside git), so that a clone whose store lacks the run can still say where its model comes from."""
    atomic.write_json(path, {"run_id": run.info.run_id, "run_name": run.info.run_name,
                             "experiment_id": run.info.experiment_id, "tracking_uri": tracking_uri(),
                             "git_commit": _git_commit()})


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


def read_run_file(run_file) -> dict:
    """``run.json`` as written by ``write_run_file``; ``tracking_uri`` and ``git_commit`` are ``None`` in one
    written before they were recorded."""
    try:
        record = json.loads(Path(run_file).read_text())
        run_id = record["run_id"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{run_file}: not an MLflow run file written by the train stage ({e}).") from None
    if not is_run_id(run_id):
        raise DataError(f"{run_file}: run_id {run_id!r} is not an MLflow run id (32 hexadecimal characters); the "
                        "train stage writes this file: run it again (dvc repro).")
    return {"run_id": record["run_id"], "run_name": record.get("run_name"),
            "tracking_uri": record.get("tracking_uri"), "git_commit": record.get("git_commit")}


class RunLog:
    """What a stage logs into one MLflow run, through ``MlflowClient``: it neither starts nor ends the run, so
    the stage's failure does not change the run's status."""

    def __init__(self, client, run):
        self.client, self.run_id, self.run_name = client, run.info.run_id, run.info.run_name

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(key, float(value), now, 0 if step is None else step)
                                                    for key, value in metrics.items()])

    def log_artifact(self, local_path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(local_path), artifact_path)


@contextlib.contextmanager
def pipeline_run(cfg: Config, run_file):
    """The run that ``evaluate``, ``export`` and ``render`` log into; yields a ``RunLog`` of it.

    Train's run (``run_file``) when it is in this store and was started with the params this stage runs
    with; else the run of these params and this name (``run_name``) that reuses train's model, found by its
    tags or created (tagged ``model.run`` and ``model.git.commit``, with these params logged and a note).
    Only a run created here ends with this stage; the others keep their status whatever happens here.
    """
    trained = read_run_file(run_file)
    trained_id = trained["run_id"]
    mlflow = connect(cfg)
    client = mlflow.MlflowClient()
    try:
        parent = client.get_run(trained_id)
    except mlflow.exceptions.MlflowException as e:
        if e.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):  # not "no such run"
            raise UserError(f"cannot use the MLflow tracking store {tracking_uri()}: {e}") from None
        parent = None  # a clone's own store, or a moved one: the run is elsewhere
    if parent is not None and not trained["git_commit"]:  # a run.json from before it recorded the commit
        trained["git_commit"] = parent.data.tags.get("git.commit")
    fingerprint = params_fingerprint(cfg)
    if parent is not None and parent.data.tags.get("params.fingerprint") == fingerprint:
        yield RunLog(client, parent)
        return
    # The run that an earlier stage of this same `dvc exp run` (or `dvc repro`) started: same model, same
    # params and same name. Another experiment with the same params is a run of its own, and so is a retry
    # after a failed stage (a FAILED or KILLED run is left as the record of that failure).
    experiment_id = client.get_experiment_by_name(cfg.mlflow.experiment).experiment_id
    name = run_name().replace("'", "\\'")
    found = client.search_runs([experiment_id], max_results=1, order_by=["attributes.start_time DESC"],
                               filter_string=f"tags.`model.run` = '{trained_id}' and "
                                             f"tags.`params.fingerprint` = '{fingerprint}' and "
                                             f"attributes.run_name = '{name}' and attributes.status = 'FINISHED'")
    if found:
        yield RunLog(client, found[0])
        return
    tags = {**_tags(cfg), "model.run": trained_id}
    if trained["git_commit"]:
        tags["model.git.commit"] = trained["git_commit"]
    run = mlflow.start_run(run_name=run_name(), tags=tags, log_system_metrics=_system_metrics())
    with _ending(mlflow):
        _log_params(mlflow, cfg)
        mlflow.set_tag("mlflow.note.content", _reuse_note(trained, parent, tracking_uri()))
        end_dead_runs(client, experiment_id, run)
        if parent is None:
            log.info("MLflow run %s (%s) in %s: reuses the model trained in run %s at commit %s, which is not in "
                     "this store", run.info.run_id, run.info.run_name, tracking_uri(), trained_id,
                     trained["git_commit"] or "(unknown)")
        else:
            log.info("MLflow run %s (%s): these params reuse the model of run %s", run.info.run_id,
                     run.info.run_name, trained_id)
        yield RunLog(client, run)


def _reuse_note(trained: dict, parent, uri: str) -> str:
    """The run's description in the MLflow UI: whose model it reuses and why it is a run of its own."""
    commit = f"git commit {trained['git_commit']}" if trained["git_commit"] else "an unrecorded git commit"
    if parent is not None:
        return (f"Reuses the model trained in run {trained['run_id']} ({parent.info.run_name}) at {commit}; only "
                "evaluation or rendering params differ.")
    where = f"the store {trained['tracking_uri']}" if trained["tracking_uri"] else "another store"
    return (f"Reuses the model trained in run {trained['run_id']} ({trained['run_name']}) of {where}, at "
            f"{commit}; that run is not in this store ({uri}): the model came with `dvc pull` or a copy.")


class _NoTracking:
    """Stands in for the ``mlflow`` module on a process that must not log (a non-chief worker)."""

    def _nothing(self, *args, **kwargs) -> None:
        pass

    log_metrics = log_artifact = log_image = log_input = set_tag = _nothing


NO_TRACKING = _NoTracking()


@contextlib.contextmanager
def no_run():
    """A run-shaped nothing: ``run.info.run_id`` is None."""
    yield types.SimpleNamespace(info=types.SimpleNamespace(run_id=None, run_name=None, experiment_id=None))

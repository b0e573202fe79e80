"""Who may drive the viewer and where it reads and writes, against a real viser server, real websocket clients and
real MLflow sqlite stores: camera paths are saved in ``camera_paths/`` only, a page of another origin cannot open a
websocket to it, serving it beyond this machine warns, and ``--run`` reads the project's store with clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import viser
from conftest import free_port, tiny_params
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from nerf_pipeline import camera, config
from nerf_pipeline.errors import UserError
from nerf_pipeline.model.nerf import build_nerf
from nerf_pipeline.scenes.camera_paths import read_camera_path

NERF_PIPELINE = Path(sys.executable).parent / "nerf-pipeline"  # the console script, as a user runs it


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project folder whose ``models/trained`` holds an untrained model (what it renders does not matter here)."""
    path = tmp_path_factory.mktemp("project")
    cfg = config.from_dict(tiny_params())
    model = build_nerf(cfg.active, near=2.0, far=6.0, contracted=False, bound=1.5, background=0.0, seed=0)
    (path / "models" / "trained").mkdir(parents=True)
    model.save(path / "models" / "trained" / "model.keras")
    return path


@pytest.fixture(scope="module")
def viewer(project):
    from nerf_pipeline.view import Viewer

    viewer = Viewer(project, port=free_port())
    yield viewer
    viewer.server.stop()


def handshake(port: int, origin: str | None):
    """Open a websocket to the viewer as a browser page at ``origin`` would (None: a client that sends no Origin,
    as a script does): ``"served"`` when the viewer sent it its scene, else the HTTP status that refused it."""
    try:
        with connect(f"ws://127.0.0.1:{port}", origin=origin, subprotocols=[f"viser-v{viser.__version__}"],
                     open_timeout=10, proxy=None) as websocket:
            websocket.recv(timeout=10)
            return "served"
    except InvalidStatus as e:
        return e.response.status_code


def test_a_page_of_another_origin_cannot_open_a_websocket_to_the_viewer(viewer):
    port = viewer.server.get_port()
    for origin in ("http://evil.example", f"http://evil.example:{port}", "null",
                   f"http://127.0.0.1.evil.example:{port}", "https://attacker.test:443"):
        assert handshake(port, origin) == 403, origin
    for origin in (f"http://127.0.0.1:{port}", f"http://localhost:{port}", "http://localhost:9000", None):
        assert handshake(port, origin) == "served", origin  # the viewer's own page, an SSH tunnel's port, a script


@pytest.mark.parametrize("host, warns", [("127.0.0.1", False), ("localhost", False), ("::1", False),
                                         ("127.0.0.2", False), ("0.0.0.0", True), ("::", True),
                                         ("192.168.1.20", True), ("example.org", True)])
def test_serving_beyond_this_machine_warns_that_anyone_can_drive_the_viewer(host, warns):
    from nerf_pipeline.view import exposure_warning

    warning = exposure_warning(host, 8080)
    assert (warning is not None) == warns
    if warns:
        assert host in warning and ":8080" in warning and "anyone who can reach" in warning and "ssh -L" in warning


def files_around(project: Path) -> list[Path]:
    """The names beside the project, and every file in it and in its ``-elsewhere`` neighbour but camera_paths/."""
    ours = [p for folder in project.parent.iterdir() if folder.name.startswith(project.name) for p in folder.rglob("*")]
    return sorted(set(project.parent.iterdir()) | {p for p in ours if "camera_paths" not in p.parts})


def test_the_camera_path_panel_saves_only_a_json_file_in_camera_paths(viewer, project):
    panel = viewer.camera_path
    panel.keyframes = [{"c2w": camera.look_at([0.0, -4.0, 2.0]), "fov": 0.8},
                       {"c2w": camera.look_at([4.0, 0.0, 2.0]), "fov": 0.8}]
    elsewhere = project.parent / f"{project.name}-elsewhere"
    elsewhere.mkdir()
    victim = elsewhere / "victim.txt"
    victim.write_text("precious")
    before = files_around(project)
    for name in (f"../{elsewhere.name}/victim.txt", f"../{elsewhere.name}/victim.json", str(victim),
                 str(elsewhere / "new.json"), "camera_paths/../../escape.json", "sub/path.json", "notes.txt", "",
                 "..", ".json", "a\\b.json"):
        panel.file.value = name
        panel._save_clicked(None)  # what the Save button calls, as a websocket client pressing it makes it
        assert panel.info.content.startswith("Not saved:"), (name, panel.info.content)
        assert "plain file name ending in .json" in panel.info.content
        with pytest.raises(UserError, match="plain file name ending in .json"):
            panel.save(name)
    assert victim.read_text() == "precious"
    assert files_around(project) == before
    assert not (project / "camera_paths").exists() or not list((project / "camera_paths").iterdir())

    panel.file.value = "mine.json"
    panel._save_clicked(None)
    assert panel.info.content.startswith("Saved camera_paths/mine.json"), panel.info.content
    assert len(read_camera_path(project / "camera_paths" / "mine.json").poses) == 96  # 4 s at 24 fps
    panel.keyframes = []
    panel._save_clicked(None)
    assert panel.info.content.startswith("Not saved: add a keyframe")


# -- --run: the model an MLflow run logged, from the project's own store ------------------------------------------


def store_with_a_logged_model(project: Path) -> str:
    """The project's sqlite store with one run that logged ``models/trained/model.keras`` as its model; its id."""
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.create_experiment("nerf-pipeline", artifact_location=(project / "mlruns").as_uri())
    run = client.create_run(experiment)
    client.log_artifact(run.info.run_id, str(project / "models" / "trained" / "model.keras"), "model/artifacts")
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def test_view_run_reads_the_project_store_from_another_folder(project, tmp_path, monkeypatch):
    from nerf_pipeline.view import ModelSource

    run_id = store_with_a_logged_model(project)
    monkeypatch.chdir(tmp_path)
    source = ModelSource(project, run_id)
    assert source.refresh() and source.model is not None and source.label == f"MLflow run {run_id}"
    assert list(tmp_path.iterdir()) == []  # no stray mlflow.db (or anything else) where it was started


def view(*args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([str(NERF_PIPELINE), "view", *args, "--port", str(free_port())], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def assert_one_line_error(result, *fragments) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], (fragment, result.stderr)


def test_view_run_errors_are_one_clear_line(tmp_path):
    somewhere, project = tmp_path / "somewhere", tmp_path / "project"
    somewhere.mkdir()
    project.mkdir()
    unknown = "0123456789abcdef0123456789abcdef"
    # No store in the project: said, and none is created there or where the command runs.
    result = view(str(project), "--run", unknown, cwd=somewhere)
    assert_one_line_error(result, f"no MLflow store at {project / 'mlflow.db'}")
    assert list(somewhere.iterdir()) == [] and list(project.iterdir()) == []
    # The project's store, which does not hold that run.
    mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}").search_experiments()
    result = view(str(project), "--run", unknown, cwd=somewhere)
    assert_one_line_error(result, f"--run {unknown}: no such run in the MLflow store sqlite:///{project / 'mlflow.db'}")
    assert list(somewhere.iterdir()) == []
    # Not a run id at all (a quote would have gone into an MLflow filter).
    result = view(str(project), "--run", "abc' or '1'='1", cwd=somewhere)
    assert_one_line_error(result, "--run: \"abc' or '1'='1\" is not an MLflow run id (32 hexadecimal characters)")


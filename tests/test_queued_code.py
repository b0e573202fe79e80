"""A queued or ``--temp`` experiment runs the code of the tree it runs in, not the workspace's.

``pip install -e .`` maps ``nerf_pipeline`` to the workspace's folder, and ``dvc exp run --queue`` / ``--temp``
run ``python stages/….py`` in a copy of the tree under ``.dvc/tmp/exps/``: unless the stage scripts put their
own tree first, the copy's scripts import the workspace's package. Here the throw-away project is itself a copy
of this repository, so before the fix its stages ran this repository's code and the probe never ran at all.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from conftest import DVC, make_project, run, tiny_params

# Appended to the project's download module: says which package ran and which native sources it would compile.
PROBE = """

# Added by tests/test_queued_code.py.
import json as _json
from pathlib import Path as _Path

import nerf_pipeline as _package
from nerf_pipeline.native import build as _build

_Path({probe!r}).write_text(_json.dumps({{"package": _package.__file__,
                                         "native": [str(p) for p in _build.SOURCES["nerf_ops"]]}}))
"""


def run_queue(project: Path, log_path: Path, name: str) -> str:
    """``dvc queue start``, then wait for the queued experiment ``name`` to end; returns the queue's status."""
    # The queue's worker outlives `dvc queue start` and inherits its output: a file, not a pipe, to wait on.
    with open(log_path, "w") as log:
        started = subprocess.run(DVC + ["queue", "start"], cwd=project, stdout=log, stderr=subprocess.STDOUT,
                                 timeout=120)
    assert started.returncode == 0, log_path.read_text()
    deadline = time.time() + 240
    status = ""
    while time.time() < deadline:
        status = run(DVC + ["queue", "status"], project).stdout
        if "Success" in status or "Failed" in status:
            break
        time.sleep(2)
    run(DVC + ["queue", "stop", "--kill"], project, check=False)
    assert "Success" in status, status + run(DVC + ["queue", "logs", name], project, check=False).stdout
    return status


@pytest.mark.slow
@pytest.mark.parametrize("how", ["queue", "temp"])
def test_an_experiment_runs_the_code_of_the_tree_it_runs_in(tmp_path, how):
    project = make_project(tmp_path / "project", tiny_params())
    probe = tmp_path / "probe.json"
    module = project / "nerf_pipeline" / "stages" / "download.py"
    original = module.read_text()
    module.write_text(original + PROBE.format(probe=str(probe)))
    if how == "queue":
        run(DVC + ["exp", "run", "--queue", "-n", "edited", "download"], project)
        module.write_text(original)  # edited, queued, reverted: the queued experiment must still run the edit
        run_queue(project, tmp_path / "queue.log", "edited")
    else:
        run(DVC + ["exp", "run", "--temp", "-n", "edited", "download"], project, timeout=300)
    assert probe.is_file(), "the experiment did not run the code it was queued with"
    ran = json.loads(probe.read_text())
    copies = (project / ".dvc" / "tmp" / "exps").resolve()
    package = Path(ran["package"]).resolve()
    assert package.is_relative_to(copies), ran  # the experiment's own copy, not the workspace nor the editable install
    # The native ops compile from the sources beside the package that runs (build.py: relative to its __file__).
    assert all(Path(source).resolve().is_relative_to(package.parent) for source in ran["native"]), ran

"""dvc.yaml is the map: each stage's code deps are exactly the modules that can change its outputs,
its cmd passes exactly the paths its run() takes, and its params are the keys it reads."""

import ast
import inspect
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from nerf_pipeline import methods
from nerf_pipeline.native import build as native_build
from nerf_pipeline.runtime import cli

STAGES = ("download", "poses", "split", "rays", "train", "evaluate", "export", "render")

# Modules that carry a stage but cannot change what it writes: argument parsing and error
# reporting, the quiet console, signal handling, progress lines (training's too), atomic writes (the
# bytes are the same, only the way they land differs), MLflow logging and the Logged Model (what goes
# to the tracking store is not a DVC out). Editing one of these reruns no stage. Most package __init__
# files hold docstrings only (those that hold code, methods' and scoring's, are modules like the others).
NON_OUTPUT_MODULES = {
    "nerf_pipeline/runtime/progress.py",
    "nerf_pipeline/training/fit_progress.py",
    "nerf_pipeline/runtime/console.py",
    "nerf_pipeline/runtime/quiet.py",  # the quiet console for scripts that are no stage (the benchmarks)
    "nerf_pipeline/logged_model.py",
    "nerf_pipeline/runtime/logged_model.py",  # its old path, for Logged Models pickled there
    "nerf_pipeline/view.py",  # the browser viewer: reads the outs, writes camera paths (a dep of render)
    "nerf_pipeline/commands.py",
    "nerf_pipeline/runtime/cli.py",
    "nerf_pipeline/errors.py",  # the user's errors: their messages are the callers'
    "nerf_pipeline/runtime/errors.py",  # their old path, re-exporting them
    "nerf_pipeline/runtime/interrupts.py",
    "nerf_pipeline/runtime/atomic.py",
    "nerf_pipeline/runtime/tracking.py",
    "nerf_pipeline/native/build.py",  # how a native op is compiled and cached; its source is the dep (below)
    "nerf_pipeline/benchmarking.py",  # the benchmarks' shared helpers: they run stages, no stage imports them
}


def has_code(path: Path) -> bool:
    """Whether a file holds more than a docstring (most packages' ``__init__.py`` hold one only)."""
    body = ast.parse(path.read_text()).body
    return any(not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)) for node in body)


def imported_modules(path: Path) -> set[str]:
    """``nerf_pipeline`` modules a file imports (``from nerf_pipeline.x import y``, ``from nerf_pipeline.x.y import z``;
    a package's ``__init__.py`` where it holds code, such as ``methods``' and ``scoring``'), and for the methods'
    registry (``methods/__init__.py``) the modules of every registered method, which it imports by name when
    asked."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "nerf_pipeline":
            base = node.module.replace(".", "/")
            candidates = [f"{base}.py", *(f"{base}/{alias.name}.py" for alias in node.names)]
            packages = [f"{base}/{alias.name}/__init__.py" for alias in node.names]
            if base != "nerf_pipeline":  # (the top package's holds its version only)
                packages.append(f"{base}/__init__.py")
            modules |= {c for c in candidates if (REPO / c).is_file()}
            modules |= {p for p in packages if (REPO / p).is_file() and has_code(REPO / p)}
    if path == REPO / "nerf_pipeline/methods/__init__.py":
        modules |= {f"{module.replace('.', '/')}.py" for module in methods.METHODS.values()}
    return modules


def code_closure(module: str) -> set[str]:
    """The modules ``module`` imports, directly or not, and the C++ sources of the native ops it may load."""
    seen, todo = {module}, [module]
    while todo:
        for imported in imported_modules(REPO / todo.pop()) - seen:
            seen.add(imported)
            todo.append(imported)
    if "nerf_pipeline/native/build.py" in seen:
        seen |= {str(source.relative_to(REPO)) for sources in native_build.SOURCES.values() for source in sources}
    return seen


def stages() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def test_stage_order_and_code_deps_are_exact():
    assert tuple(stages()) == STAGES
    for name, stage in stages().items():
        assert stage["cmd"].startswith(f"python stages/{name}.py "), name
        code_deps = {d for d in stage["deps"] if d.endswith((".py", ".cc"))}
        expected = code_closure(f"nerf_pipeline/stages/{name}.py") - NON_OUTPUT_MODULES
        assert code_deps == expected, (f"stage '{name}': add {sorted(expected - code_deps)}, "
                                       f"remove {sorted(code_deps - expected)}")


def test_every_module_is_a_dep_or_declared_not_to_change_outputs():
    used = set().union(*(code_closure(f"nerf_pipeline/stages/{name}.py") for name in STAGES))
    modules = {str(p.relative_to(REPO)) for p in (REPO / "nerf_pipeline").rglob("*.py")
               if p.name != "__init__.py" or (has_code(p) and p.parent != REPO / "nerf_pipeline")}
    assert modules - used - NON_OUTPUT_MODULES == set(), "a module no stage imports: is it dead code?"
    assert NON_OUTPUT_MODULES <= modules


def test_non_output_modules_are_plumbing_only():
    """The non-output modules must not reach the model or the data code (else they could change outputs).
    The exceptions render with the model outside the pipeline: the Logged Model (when MLflow loads it, also
    from its old path), the viewer and the benchmarks' helpers."""
    for module in NON_OUTPUT_MODULES - {"nerf_pipeline/logged_model.py", "nerf_pipeline/runtime/logged_model.py",
                                        "nerf_pipeline/view.py", "nerf_pipeline/commands.py",
                                        "nerf_pipeline/benchmarking.py"}:
        reached = code_closure(module) - NON_OUTPUT_MODULES - {module}
        if module == "nerf_pipeline/native/build.py":  # it compiles the kernels' sources, which are deps
            reached -= {str(source.relative_to(REPO)) for sources in native_build.SOURCES.values()
                        for source in sources}
        assert reached <= {"nerf_pipeline/config.py"}, (module, reached)


def test_the_base_modules_import_nothing_above_them():
    """``errors.py`` is the bottom of the package and ``config.py`` sits just above it: neither reaches up into
    ``runtime/`` (or anywhere else) for what it raises."""
    assert imported_modules(REPO / "nerf_pipeline/errors.py") == set()
    assert imported_modules(REPO / "nerf_pipeline/config.py") == {"nerf_pipeline/errors.py"}
    from nerf_pipeline import errors
    from nerf_pipeline.runtime import errors as old_path

    assert (old_path.UserError, old_path.ConfigError, old_path.DataError) == (errors.UserError, errors.ConfigError,
                                                                             errors.DataError)


@pytest.mark.parametrize("name", STAGES)
def test_cmd_passes_exactly_the_paths_run_takes(name):
    import importlib

    stage = stages()[name]
    words = stage["cmd"].split()
    pairs = dict(zip(words[2::2], words[3::2]))
    module = importlib.import_module(f"nerf_pipeline.stages.{name}")
    assert {flag[2:].replace("-", "_") for flag in pairs} == set(cli.path_parameters(module))
    outs = {next(iter(o)) if isinstance(o, dict) else o for o in stage.get("outs", []) + stage.get("metrics", [])}
    for flag, path in pairs.items():
        if flag.startswith("--out-"):
            assert path in outs, (name, flag)
        else:
            assert flag.startswith("--in-") and path in stage["deps"], (name, flag)
    assert "cfg" in inspect.signature(module.run).parameters


def test_train_evaluate_export_render_depend_on_the_active_preset_only():
    for name in ("train", "evaluate", "export", "render"):
        params = stages()[name]["params"]
        assert "presets" not in params and not any(p.startswith("presets.keras") for p in params), name
        assert any(p.startswith("presets.${preset}") for p in params), name

"""dvc.yaml is the map: each stage's code deps are exactly the modules its script runs."""

import ast
from pathlib import Path

import yaml
from conftest import REPO

STAGES = ("download", "split", "rays", "train", "evaluate", "render")


def imported_modules(path: Path) -> set[str]:
    """``nerf_pipeline`` modules a file imports (``from nerf_pipeline import x`` or ``from nerf_pipeline.x ...``)."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "nerf_pipeline":
            if node.module == "nerf_pipeline":
                modules |= {f"nerf_pipeline/{alias.name}.py" for alias in node.names}
            else:
                modules.add(node.module.replace(".", "/") + ".py")
    return {m for m in modules if (REPO / m).is_file()}


def code_closure(script: str) -> set[str]:
    seen, todo = set(), [script]
    while todo:
        for module in imported_modules(REPO / todo.pop()) - seen:
            seen.add(module)
            todo.append(module)
    return seen | {script}


def test_stage_order_and_code_deps_are_exact():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert tuple(stages) == STAGES
    for name in STAGES:
        stage = stages[name]
        script = f"stages/{name}.py"
        assert stage["cmd"].startswith(f"python {script} "), name
        code_deps = {d for d in stage["deps"] if d.endswith(".py")}
        # nerf_pipeline/__init__.py holds only the version and docstring: not a dep
        assert code_deps == code_closure(script), name


def test_every_out_flag_names_a_declared_out_and_every_in_a_dep():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        words = stage["cmd"].split()
        pairs = dict(zip(words[2::2], words[3::2]))
        outs = {next(iter(o)) if isinstance(o, dict) else o for o in stage.get("outs", []) + stage.get("metrics", [])}
        for flag, path in pairs.items():
            if flag.startswith("--out-"):
                assert path in outs, (name, flag)
            elif flag.startswith("--in-"):
                assert path in stage["deps"], (name, flag)

"""What every stage script shares: argument parsing, logging, params loading and clean errors.

A stage script is one line, ``cli.main("train")``. Its flags come from the keyword-only
parameters of ``nerf_pipeline.stages.train.run`` (``in_rays`` → ``--in-rays``), and the paths are
passed back by name, so a script cannot hand one path to another parameter. The stage's module is
imported only after the console is made quiet (``console.py``: TensorFlow's native log lines are
filtered out unless ``--verbose`` or ``NERF_PIPELINE_VERBOSE=1``), and MLflow's and Keras' own
chatter is turned down to warnings.

A user mistake (``UserError``: bad params, bad data, unreachable store) prints one paragraph and
exits with status 2, with no traceback; Ctrl-C exits with 130. Anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import argparse
import errno
import faulthandler
import importlib
import inspect
import logging
import os
import sys
import tempfile
import textwrap
import warnings
from pathlib import Path

from nerf_pipeline import config
from nerf_pipeline.errors import UserError
from nerf_pipeline.runtime import console, interrupts


def path_parameters(stage_module) -> list[str]:
    """The names of ``stage_module.run``'s keyword-only parameters: its input and output paths."""
    parameters = inspect.signature(stage_module.run).parameters.values()
    return [p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY]


def parse_paths(stage_module, argv=None) -> argparse.Namespace:
    """Parse ``--params``, ``--verbose`` and one required ``--<name>`` path per path parameter of ``run``."""
    doc = (stage_module.__doc__ or "").strip().splitlines()
    parser = argparse.ArgumentParser(description=doc[0] if doc else None)
    parser.add_argument("--params", default=config.DEFAULT_PARAMS, help="params file (default: params.yaml)")
    parser.add_argument("--verbose", action="store_true",
                        help=f"keep TensorFlow's native log lines (or set {console.VERBOSE_ENV}=1)")
    for name in path_parameters(stage_module):
        parser.add_argument("--" + name.replace("_", "-"), dest=name, required=True, metavar="PATH")
    return parser.parse_args(argv)


def check_writable(path) -> None:
    """Refuse, before any work, an output whose folder cannot be made or written to."""
    folder = Path(path).parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise UserError(f"cannot write the output '{path}': its folder '{folder}' is not writable "
                        f"({e.strerror or e}).") from None


def run_stage(stage_module, args: argparse.Namespace) -> None:
    """Load the params, then call ``stage_module.run(cfg, **paths)``; report user errors cleanly."""
    stage = stage_module.__name__.rsplit(".", 1)[-1]
    # Under DVC stdout is a pipe: flush each line so Keras' progress and our log stay in order.
    sys.stdout.reconfigure(line_buffering=True)
    logging.basicConfig(level=logging.INFO, format=f"[{stage}] %(message)s", stream=sys.stderr)
    for noisy in ("absl", "tensorflow", "alembic", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.ERROR)  # its warnings advise MLflow model authors (quiet_console)
    # `kill` (SIGTERM) ends a stage as Ctrl-C does: its MLflow run is marked KILLED, no out is half-written.
    interrupts.install()
    # Should native code crash anyway, print where Python was, not only "Segmentation fault" (to the
    # real stderr: the quiet console's copying thread may not run again).
    faulthandler.enable(file=_CRASH_LOG)
    paths = {name: getattr(args, name) for name in path_parameters(stage_module)}
    try:
        cfg = config.load(args.params)
        for name, path in paths.items():
            if name.startswith("out_"):
                check_writable(path)
        stage_module.run(cfg, **paths)
    except UserError as e:
        print(textwrap.fill(f"error: {e}", width=100, break_long_words=False, break_on_hyphens=False),
              file=sys.stderr)
        sys.exit(2)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.EPERM):
            raise
        # A full disk or a folder made read-only mid-run: the atomic writes left the old outs intact.
        print(f"error: cannot write {e.filename or 'an output'}: {e.strerror}. Nothing was half-written; "
              "free space or fix permissions and run the stage again.", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"[{stage}] interrupted", file=sys.stderr)
        sys.exit(130)


def quiet_console(argv=None) -> None:
    """Before TensorFlow and MLflow are imported: filter native log noise (unless verbose), quiet MLflow."""
    if "--verbose" in (sys.argv[1:] if argv is None else argv):
        os.environ[console.VERBOSE_ENV] = "1"
    # MLflow configures its logger on import. Its warnings while logging the model are advice to
    # authors of MLflow models (CloudPickle, input examples), and its artifact downloads draw a
    # progress bar: neither is for the pipeline's user.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", module="keras")
    console.quiet()
    global _CRASH_LOG
    _CRASH_LOG = os.fdopen(os.dup(console.real_stderr_fd()), "w")


_CRASH_LOG = sys.stderr


def main(stage: str) -> None:
    """The whole of a stage script: a quiet console, then ``--params``, ``--verbose`` and ``run``'s path
    flags, then ``nerf_pipeline.stages.<stage>.run``."""
    quiet_console()
    stage_module = importlib.import_module(f"nerf_pipeline.stages.{stage}")
    run_stage(stage_module, parse_paths(stage_module))

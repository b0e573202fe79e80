"""What every stage script shares: argument parsing, logging, params loading and clean errors.

A stage script is one line, ``cli.main(stage_module)``. Its flags come from the keyword-only
parameters of ``stage_module.run`` (``in_rays`` → ``--in-rays``), and the paths are passed back
by name, so a script cannot hand one path to another parameter.

A user mistake (``UserError``: bad params, bad data, unreachable store) prints one paragraph and
exits with status 2, with no traceback; Ctrl-C exits with 130. Anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import argparse
import errno
import faulthandler
import inspect
import logging
import os
import sys
import tempfile
import textwrap
from pathlib import Path

# Before TensorFlow is imported by any stage module: keep its C++ INFO/WARNING chatter out of the logs.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from nerf_pipeline import config  # noqa: E402
from nerf_pipeline.runtime import interrupts  # noqa: E402
from nerf_pipeline.runtime.errors import UserError  # noqa: E402


def path_parameters(stage_module) -> list[str]:
    """The names of ``stage_module.run``'s keyword-only parameters: its input and output paths."""
    parameters = inspect.signature(stage_module.run).parameters.values()
    return [p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY]


def parse_paths(stage_module, argv=None) -> argparse.Namespace:
    """Parse ``--params`` and one required ``--<name>`` path per path parameter of ``run``."""
    doc = (stage_module.__doc__ or "").strip().splitlines()
    parser = argparse.ArgumentParser(description=doc[0] if doc else None)
    parser.add_argument("--params", default=config.DEFAULT_PARAMS, help="params file (default: params.yaml)")
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
    for noisy in ("absl", "tensorflow", "alembic", "mlflow.store"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # `kill` (SIGTERM) ends a stage as Ctrl-C does: its MLflow run is marked KILLED, no out is half-written.
    interrupts.install()
    # Should native code crash anyway, print where Python was, not only "Segmentation fault".
    faulthandler.enable()
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


def main(stage_module) -> None:
    """The whole of a stage script: ``--params`` plus ``run``'s path flags, then ``run``."""
    run_stage(stage_module, parse_paths(stage_module))

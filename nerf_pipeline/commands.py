"""The ``nerf-pipeline`` command: ``nerf-pipeline view`` (the browser viewer, ``view.py``)."""

from __future__ import annotations

import sys

COMMANDS = {"view": "the browser viewer of a trained model and its scene (nerf-pipeline view --help)"}


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print("usage: nerf-pipeline <command> [options]\n\ncommands:\n" +
              "\n".join(f"  {name:8s}{what}" for name, what in COMMANDS.items()), file=sys.stderr)
        sys.exit(0 if argv and argv[0] in ("-h", "--help") else 2)
    from nerf_pipeline import view

    view.main(argv[1:])

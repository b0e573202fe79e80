"""The ``nerf-pipeline`` command: ``nerf-pipeline view`` (the browser viewer, ``view.py``) and ``nerf-pipeline
lpips-weights`` (LPIPS' AlexNet weights into the user's cache, only when asked: ``scoring/lpips.py``)."""

from __future__ import annotations

import sys

COMMANDS = {"view": "the browser viewer of a trained model and its scene (nerf-pipeline view --help)",
            "lpips-weights": "fetch LPIPS' AlexNet weights into the user's cache (nerf-pipeline lpips-weights --help)"}


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print("usage: nerf-pipeline <command> [options]\n\ncommands:\n" +
              "\n".join(f"  {name:15s}{what}" for name, what in COMMANDS.items()), file=sys.stderr)
        sys.exit(0 if argv and argv[0] in ("-h", "--help") else 2)
    if argv[0] == "lpips-weights":
        from nerf_pipeline.scoring import lpips

        return lpips.main(argv[1:])
    from nerf_pipeline import view

    view.main(argv[1:])

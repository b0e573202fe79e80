"""Imported first by a script that is no stage (the benchmarks): its console is as quiet as a stage's.

``import nerf_pipeline.runtime.quiet`` before TensorFlow (or anything that imports it) does what a stage script
does before its module: ``cli.quiet_console`` (TensorFlow's known native start-up lines filtered out of stderr,
MLflow's advice to model authors off; ``NERF_PIPELINE_VERBOSE=1`` keeps everything). Setting
``TF_CPP_MIN_LOG_LEVEL`` alone does not: TensorFlow's C++ side logs "failed call to cuInit" and the like to file
descriptor 2 regardless (``console.py``). One import line, so that each script needs one line and no call.

Only a script run as the program is quieted: a test that imports a benchmark to call its helpers keeps its own
stderr (which pytest captures) and warning filters.
"""

import sys

from nerf_pipeline.runtime import cli


def _importer_is_main() -> bool:
    """Whether the module whose import statement loaded this one is ``__main__`` (the script being run)."""
    frame = sys._getframe(2)  # (1 is this module's own code)
    while frame is not None and frame.f_globals.get("__name__", "").startswith("importlib"):
        frame = frame.f_back  # the import machinery's own frames
    return frame is not None and frame.f_globals.get("__name__") == "__main__"


if _importer_is_main():
    cli.quiet_console()

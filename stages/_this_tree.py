"""Put the tree these scripts are in first on ``sys.path``, so that ``import nerf_pipeline`` is this tree's.

DVC runs ``python stages/<stage>.py``, which puts ``stages/`` first on ``sys.path``, not the tree's root.
``pip install -e .`` maps ``nerf_pipeline`` to the workspace through a finder placed after the path search, so a
tree on ``sys.path`` wins over it. Without this, ``dvc exp run --queue`` and ``--temp``, which run the scripts in
a copy of the tree (``.dvc/tmp/exps/``), would run the workspace's code (and compile the workspace's native
ops: ``native/build.py`` finds them beside its own file) while ``dvc.lock`` records the copy's.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

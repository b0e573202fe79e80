"""Where ``nerf_pipeline.logged_model`` lived until it moved out of ``runtime/``. Kept so that Logged Models
logged before the move still load: MLflow pickles the ``NeRFRenderer`` it logs by its module path, and theirs
names this one. Nothing in the pipeline imports it."""

from nerf_pipeline.logged_model import NeRFRenderer  # noqa: F401  (what their pickles ask this module for)

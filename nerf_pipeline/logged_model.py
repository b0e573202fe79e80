"""The trained model as an MLflow Logged Model: a pyfunc that renders rays.

``log(mlflow, model_path)`` logs the Keras model saved by the train stage as a ``mlflow.pyfunc``
model with a signature, so it is listed by ``mlflow.search_logged_models()``, can be registered
(``mlflow.register_model``) and loaded back anywhere this package is installed::

    renderer = mlflow.pyfunc.load_model("models:/<model_id>")   # or runs:/<run_id>/model
    out = renderer.predict(rays)                                  # rays [N, 6] float32: origin, direction
    rgb, depth, opacity = out[:, :3], out[:, 3], out[:, 4]        # [N, 5] float32

Rendering is the pipeline's own (``model/renderer.py``, deterministic samples), so a view rendered
through MLflow has the pipeline's pixels.
"""

from __future__ import annotations

import warnings

import mlflow
import numpy as np

INPUT, OUTPUT = "rays", "rgb_depth_acc"


# MLflow asks, with a UserWarning when the class is defined, for type hints on predict; its rays are
# a tensor that the explicit signature below describes, which type hints cannot. (MLflow sets its own
# warning filter around it, so the warning is recorded here and dropped rather than filtered.)
with warnings.catch_warnings(record=True):

    class NeRFRenderer(mlflow.pyfunc.PythonModel):
        """``predict(rays [N, 6] float32)`` → ``[N, 5]`` float32: rgb, depth, opacity of each ray."""

        def load_context(self, context):
            from nerf_pipeline.model.nerf import load_model
            from nerf_pipeline.model.renderer import ChunkedRenderer

            self.renderer = ChunkedRenderer(load_model(context.artifacts["model"]), chunk_rays=16384)

        def predict(self, context, model_input, params=None):
            if isinstance(model_input, dict):  # a named tensor input arrives as {name: array}
                model_input = model_input[INPUT]
            rays = np.asarray(model_input, dtype=np.float32).reshape(-1, 6)
            out = self.renderer(rays[:, :3], rays[:, 3:])
            return np.concatenate([out["rgb"], out["depth"][:, None], out["acc"][:, None]], axis=-1)


def signature():
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 6), INPUT)]),
                          outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 5), OUTPUT)]))


def log(mlflow_module, model_path, name: str = "model"):
    """Log the ``.keras`` file at ``model_path`` as this run's pyfunc model; returns MLflow's ``ModelInfo``."""
    from importlib.metadata import version

    requirements = [f"{package}=={version(package)}" for package in ("tensorflow", "keras", "numpy", "mlflow")]
    with warnings.catch_warnings(record=True):  # "no input example": the signature says what predict takes
        return mlflow_module.pyfunc.log_model(name=name, python_model=NeRFRenderer(),
                                              artifacts={"model": str(model_path)}, signature=signature(),
                                              pip_requirements=requirements)

"""The trained model as an MLflow Logged Model: a pyfunc that renders a camera.

``log(mlflow, method)`` logs a trained method (``methods.Method``: its files and ``method.json``, as in the
train stage's folder) as a ``mlflow.pyfunc`` model with a signature, so it is listed by
``mlflow.search_logged_models()``, can be registered (``mlflow.register_model``) and loaded back anywhere this
package is installed. One camera per call (``methods.Camera``; OpenGL camera-to-world, as everywhere here)::

    renderer = mlflow.pyfunc.load_model("models:/<model_id>")   # or runs:/<run_id>/model
    out = renderer.predict({"pose": c2w,                          # [4, 4] float32, camera-to-world
                            "intrinsics": lens,                   # [4] float32: fx, fy, cx, cy in pixels
                            "height": np.array([h]),              # [1] int64
                            "width": np.array([w])})              # [1] int64
    out["rgb"], out["depth"], out["opacity"]                      # [H, W, 3], [H, W], [H, W] float32

Rendering is the method's own (``Method.render``, the NeRF's deterministic samples), so a view rendered through
MLflow has the pipeline's pixels; without the training views, a method with a per-view appearance renders in
its mean appearance (as the viewer does).

Logged Models of earlier versions took rays (``[N, 6]`` float32: origin, direction; signature input ``rays``)
and returned ``[N, 5]`` (rgb, depth, opacity): they load and predict as they did, and a NeRF's rays still go
to ``predict`` as such an array where no signature stands in the way (``NeRFRenderer.predict`` directly).
"""

from __future__ import annotations

import warnings

import mlflow
import numpy as np

RAYS = "rays"  # the input of Logged Models logged before cameras (issue 28)
CAMERA_INPUTS = ("pose", "intrinsics", "height", "width")
OUTPUTS = ("rgb", "depth", "opacity")


# MLflow asks, with a UserWarning when the class is defined, for type hints on predict; its input is a dict
# of tensors that the explicit signature below describes, which type hints cannot. (MLflow sets its own
# warning filter around it, so the warning is recorded here and dropped rather than filtered.)
with warnings.catch_warnings(record=True):

    class NeRFRenderer(mlflow.pyfunc.PythonModel):
        """``predict({"pose", "intrinsics", "height", "width"})`` → ``{"rgb", "depth", "opacity"}`` of one camera;
        ``predict(rays [N, 6] float32)`` → ``[N, 5]`` float32 (rgb, depth, opacity of each ray: a NeRF's only).
        (Its name is the one earlier Logged Models pickled; it serves any method.)"""

        def load_context(self, context):
            from nerf_pipeline import methods

            # the model folder (a method's files and method.json), or for earlier Logged Models a NeRF's .keras
            self.method = methods.load(context.artifacts["model"])

        def predict(self, context, model_input, params=None):
            from nerf_pipeline.methods import Camera

            if isinstance(model_input, dict) and "pose" in model_input:
                height, width = (int(np.asarray(model_input[key]).reshape(-1)[0]) for key in ("height", "width"))
                cam = Camera(np.asarray(model_input["pose"], np.float32).reshape(4, 4),
                             np.asarray(model_input["intrinsics"], np.float32).reshape(4), height, width)
                return self.method.render(cam)
            if isinstance(model_input, dict):  # a named tensor input arrives as {name: array}
                model_input = model_input[RAYS]
            rays = np.asarray(model_input, dtype=np.float32).reshape(-1, 6)
            out = self.method.render_rays(rays[:, :3], rays[:, 3:])
            return np.concatenate([out["rgb"], out["depth"][:, None], out["opacity"][:, None]], axis=-1)


def signature():
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    f32, i64 = np.dtype(np.float32), np.dtype(np.int64)
    return ModelSignature(
        inputs=Schema([TensorSpec(f32, (4, 4), "pose"), TensorSpec(f32, (4,), "intrinsics"),
                       TensorSpec(i64, (1,), "height"), TensorSpec(i64, (1,), "width")]),
        outputs=Schema([TensorSpec(f32, (-1, -1, 3), "rgb"), TensorSpec(f32, (-1, -1), "depth"),
                        TensorSpec(f32, (-1, -1), "opacity")]))


def log(mlflow_module, method, name: str = "model"):
    """Log ``method`` (its files, ``Method.save``, and ``method.json``) as this run's pyfunc model; returns
    MLflow's ``ModelInfo``."""
    import tempfile
    from importlib.metadata import version
    from pathlib import Path

    from nerf_pipeline import trained_folder

    requirements = [f"{package}=={version(package)}" for package in ("tensorflow", "keras", "numpy", "mlflow")]
    with tempfile.TemporaryDirectory(prefix="nerf-logged-model-") as scratch:
        folder = Path(scratch) / "method"
        folder.mkdir()
        trained_folder.write_model(folder, method)
        with warnings.catch_warnings(record=True):  # "no input example": the signature says what predict takes
            return mlflow_module.pyfunc.log_model(name=name, python_model=NeRFRenderer(),
                                                  artifacts={"model": str(folder)}, signature=signature(),
                                                  pip_requirements=requirements)

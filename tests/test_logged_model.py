"""The Logged Model's pyfunc class loads from the pickles MLflow wrote for it, before and after it moved."""

import cloudpickle

from nerf_pipeline.logged_model import NeRFRenderer

# The python_model.pkl of a Logged Model that the train stage logged while the class was
# nerf_pipeline.runtime.logged_model.NeRFRenderer (MLflow 3.17 pickles it by that module path).
LOGGED_BEFORE_THE_MOVE = (
    b'\x80\x05\x95\x98\x00\x00\x00\x00\x00\x00\x00\x8c"nerf_pipeline.runtime.logged_model\x94\x8c\x0cNeRFRenderer'
    b'\x94\x93\x94)\x81\x94}\x94\x8c\x13_predict_type_hints\x94\x8c\x17mlflow.models.signature\x94\x8c\n_TypeHints'
    b'\x94\x93\x94)\x81\x94}\x94(\x8c\x05input\x94N\x8c\x06output\x94Nubsb.')


def test_a_logged_model_pickled_before_the_move_unpickles_as_todays_class():
    assert type(cloudpickle.loads(LOGGED_BEFORE_THE_MOVE)) is NeRFRenderer


def test_a_logged_model_pickled_now_names_the_new_module():
    assert b"nerf_pipeline.logged_model\x94" in cloudpickle.dumps(NeRFRenderer())


def test_the_logged_model_renders_a_camera_as_the_method_does(tmp_path):
    """Logged to a real MLflow store (sqlite) and loaded back as a pyfunc: one camera in (its signature's pose,
    intrinsics, height, width), the method's rgb, depth and opacity out; the rays of earlier Logged Models still
    render through the class."""
    import mlflow
    import numpy as np
    from conftest import tiny_params

    from nerf_pipeline import camera, config, logged_model
    from nerf_pipeline.methods import Camera
    from nerf_pipeline.methods.nerf import NeRFMethod
    from nerf_pipeline.model.nerf import build_nerf

    model = build_nerf(config.from_dict(tiny_params()).active, near=2.0, far=6.0, contracted=False, bound=1.5,
                       background=0.0, seed=0)
    method = NeRFMethod(model, chunk_rays=1024)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment("logged")
    with mlflow.start_run():
        info = logged_model.log(mlflow, method)
    loaded = mlflow.pyfunc.load_model(info.model_uri)
    assert [spec.name for spec in loaded.metadata.get_input_schema().inputs] == ["pose", "intrinsics", "height",
                                                                               "width"]
    pose, lens = camera.look_at([0.0, -4.0, 1.0]).astype(np.float32), np.array([20.0, 20.0, 8.0, 6.0], np.float32)
    out = loaded.predict({"pose": pose, "intrinsics": lens, "height": np.array([12]), "width": np.array([16])})
    expected = method.render(Camera(pose, lens, 12, 16))
    for key in ("rgb", "depth", "opacity"):
        np.testing.assert_array_equal(out[key], expected[key])
    assert out["rgb"].shape == (12, 16, 3)
    origins, directions = Camera(pose, lens, 12, 16).rays()
    rays = np.concatenate([origins, directions], axis=-1).reshape(-1, 6)
    old = loaded.unwrap_python_model().predict(None, rays)
    assert old.shape == (12 * 16, 5)
    np.testing.assert_array_equal(old[:, :3].reshape(12, 16, 3), expected["rgb"])

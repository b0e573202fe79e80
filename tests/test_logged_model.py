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

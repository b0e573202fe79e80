import dataclasses

import pytest
import yaml
from conftest import REPO

from nerf_pipeline import config
from nerf_pipeline.errors import ConfigError


def repo_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_repo_params_load_and_epochs_is_top_level():
    params = repo_params()
    assert isinstance(params["epochs"], int)
    cfg = config.load(REPO / "params.yaml")
    assert cfg.epochs == params["epochs"]
    assert cfg.data.source == "synthetic"  # offline by default
    assert cfg.preset == "hashgrid" and cfg.model is cfg.presets["hashgrid"]
    assert cfg.flat["presets.hashgrid.field.num_levels"] == params["presets"]["hashgrid"]["field"]["num_levels"]


def test_keras_example_preset_is_faithful():
    preset = config.load(REPO / "params.yaml").presets["keras_example"]
    assert preset.field.model_kwargs() == {"type": "mlp", "num_layers": 8, "width": 64, "num_frequencies": 16,
                                           "skip_every": 4}
    assert (preset.sampler.strategy, preset.sampler.num_samples, preset.sampler.stratified) == ("uniform", 32, True)
    assert (preset.batch.mode, preset.batch.size) == ("images", 5)
    assert preset.optimizer.learning_rate == preset.optimizer.final_learning_rate == 1e-3
    assert (preset.optimizer.beta_1, preset.optimizer.beta_2, preset.optimizer.epsilon) == (0.9, 0.999, 1e-7)


@pytest.mark.parametrize("change, message", [
    ({"epoch": 3}, "unknown key 'epoch'. Did you mean 'epochs'?"),
    ({"epochs": 0}, "'epochs' must be a whole number >= 1"),
    ({"epochs": 2.5}, "'epochs' must be a whole number; got 2.5"),
    ({"epochs": "ten"}, "'epochs' must be a whole number; got 'ten'"),
    ({"split": {"val_fraction": 1.0}}, "'split.val_fraction' must be strictly between 0 and 1"),
    ({"split": {"val_fraction": 0}}, "'split.val_fraction' must be strictly between 0 and 1"),
    ({"split": {"order": "random"}}, "'split.order' must be one of 'shuffled', 'last'"),
    ({"data": {"near": 6.0, "far": 2.0}}, "'data.near' must satisfy 0 <= near < far"),
    ({"preset": "fast"}, "'preset' must name an entry of 'presets'"),
    ({"presets": {"hashgrid": {"sampler": {"num_sample": 8}}}},
     "unknown key 'presets.hashgrid.sampler.num_sample'. Did you mean 'presets.hashgrid.sampler.num_samples'?"),
    ({"presets": {"hashgrid": {"batch": {"size": -1}}}}, "'presets.hashgrid.batch.size' must be at least 1"),
    ({"presets": {"hashgrid": {"field": {"type": "siren"}}}}, "'presets.hashgrid.field.type' must be one of 'mlp'"),
    ({"presets": {"hashgrid": {"jit_compile": "yes"}}}, "'presets.hashgrid.jit_compile' must be true or false"),
    ({"render": {"fps": 0}}, "'render.fps' must be at least 1"),
])
def test_bad_params_are_refused_with_the_key(change, message):
    params = {"epochs": 1, **change}
    with pytest.raises(ConfigError) as error:
        config.from_dict(params)
    assert message in str(error.value)


def test_missing_epochs_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="missing key 'epochs'"):
        config.from_dict({"seed": 1})
    broken = tmp_path / "params.yaml"
    broken.write_text("epochs: [1,\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        config.load(broken)
    with pytest.raises(ConfigError, match="cannot read the params file"):
        config.load(tmp_path / "missing.yaml")


def test_error_names_the_file(write_params):
    path = write_params({"epochs": 1, "epoh": 2}, name="custom.yaml")
    with pytest.raises(ConfigError, match=r"custom.yaml: unknown key 'epoh'"):
        config.load(path)


def test_config_is_frozen():
    cfg = config.from_dict({"epochs": 1})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.epochs = 2  # type: ignore[misc]

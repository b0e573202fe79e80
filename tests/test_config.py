"""params.yaml → one typed config: every key checked, unknown and inapplicable keys refused by path."""

import copy
from typing import Annotated, ClassVar

import pydantic
import pytest
import yaml
from conftest import REPO, tiny_params

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
    assert cfg.preset == "hashgrid" and cfg.active is cfg.presets["hashgrid"]
    assert isinstance(cfg.active.field, config.HashGridFieldConfig)
    assert isinstance(cfg.active.sampler, config.OccupancySamplerConfig)


def test_used_params_are_the_active_preset_and_what_runs():
    params = repo_params()
    used = config.from_dict(params).used_params()
    assert used["presets.hashgrid.field.num_levels"] == params["presets"]["hashgrid"]["field"]["num_levels"]
    assert used["epochs"] == params["epochs"] and used["scene.bound"] == params["scene"]["bound"]
    assert not any(key.startswith("presets.keras_example") for key in used)
    params["data"]["source"] = "tiny_nerf"  # the built-in scene's params no longer apply
    assert not any(key.startswith("synthetic.") for key in config.from_dict(params).used_params())


def test_the_values_live_in_params_yaml_only():
    """No config class has a default: a key left out of params.yaml is refused, never filled in."""
    for cls in _sections():
        for name, info in cls.model_fields.items():
            assert info.is_required(), f"{cls.__name__}.{name} has a default"


def _sections():
    seen, todo = set(), [config.Section]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub not in seen:
                seen.add(sub)
                todo.append(sub)
    return seen


def test_keras_example_preset_is_faithful():
    preset = config.load(REPO / "params.yaml").presets["keras_example"]
    assert preset.field == config.MLPFieldConfig(type="mlp", num_layers=8, width=64, num_frequencies=16, skip_every=4)
    assert preset.sampler == config.UniformSamplerConfig(type="uniform", num_samples=32, stratified=True)
    assert preset.batch == config.ImageBatchConfig(mode="images", size=5)
    assert preset.optimizer.learning_rate == preset.optimizer.final_learning_rate == 1e-3
    assert (preset.optimizer.beta_1, preset.optimizer.beta_2, preset.optimizer.epsilon) == (0.9, 0.999, 1e-7)


def changed(change: dict) -> dict:
    """The repo's params with ``change`` merged in (nested mappings merged key by key; None deletes)."""
    def merge(base, update):
        for key, value in update.items():
            if value is None and key in base:
                del base[key]
            elif isinstance(value, dict) and isinstance(base.get(key), dict):
                merge(base[key], value)
            else:
                base[key] = value
        return base
    return merge(copy.deepcopy(repo_params()), change)


@pytest.mark.parametrize("change, message", [
    ({"epoch": 3}, "unknown key 'epoch'. Did you mean 'epochs'?"),
    ({"epochs": 0}, "'epochs' must be >= 1; got 0"),
    ({"epochs": 2.5}, "'epochs' must be a whole number; got 2.5"),
    ({"epochs": "ten"}, "'epochs' must be a whole number; got 'ten'"),
    ({"epochs": True}, "'epochs' must be a whole number; got True"),
    ({"split": {"val_fraction": 1.0}}, "'split.val_fraction' must be < 1"),
    ({"split": {"val_fraction": 0}}, "'split.val_fraction' must be > 0"),
    ({"split": {"order": "random"}}, "'split.order' must be one of 'shuffled', 'last', 'every_8th'; got 'random'"),
    ({"data": {"near": 6.0, "far": 2.0}}, "'data.near' must be below data.far"),
    ({"preset": "hashgird"}, "'preset' must name an entry of 'presets' (hashgrid, keras_example, splats); got "
                             "'hashgird'. Did you mean 'hashgrid'?"),
    ({"presets": {"hashgrid": {"sampler": {"num_sample": 8}}}},
     "unknown key 'presets.hashgrid.sampler.num_sample'. A sampler of type 'occupancy' takes"),
    ({"presets": {"hashgrid": {"sampler": {"num_sample": 8}}}},
     "Did you mean 'presets.hashgrid.sampler.num_samples'?"),
    # keys of another kind of part are refused, not silently ignored
    ({"presets": {"keras_example": {"field": {"num_levels": 4}}}},
     "unknown key 'presets.keras_example.field.num_levels'. A field of type 'mlp' takes type, num_layers, width, "
     "num_frequencies, skip_every. Did you mean 'presets.keras_example.field.num_layers'?"),
    ({"presets": {"keras_example": {"sampler": {"num_march": 64}}}},
     "unknown key 'presets.keras_example.sampler.num_march'. A sampler of type 'uniform' takes type, num_samples, "
     "stratified."),
    ({"presets": {"keras_example": {"batch": {"candidate_factor": 2}}}},
     "unknown key 'presets.keras_example.batch.candidate_factor'. A batch of mode 'images' takes mode, size."),
    ({"presets": {"hashgrid": {"sampler": {"type": "uniform"}}}},
     "unknown key 'presets.hashgrid.sampler.num_march'. A sampler of type 'uniform'"),
    ({"presets": {"hashgrid": {"sampler": {"type": "occupncy"}}}},
     "'presets.hashgrid.sampler.type' must be one of 'uniform', 'occupancy'; got 'occupncy'. "
     "Did you mean 'occupancy'?"),
    ({"presets": {"hashgrid": {"field": {"type": "siren"}}}},
     "'presets.hashgrid.field.type' must be one of 'hashgrid', 'mlp'; got 'siren'"),
    ({"presets": {"hashgrid": {"field": {"type": None}}}},
     "missing key 'presets.hashgrid.field.type' (one of 'hashgrid', 'mlp')"),
    ({"presets": {"hashgrid": {"sampler": {"decay": None}}}},
     "missing key 'presets.hashgrid.sampler.decay' (a number)"),
    ({"presets": {"hashgrid": {"batch": {"size": -1}}}}, "'presets.hashgrid.batch.size' must be >= 1; got -1"),
    ({"presets": {"hashgrid": {"field": {"max_resolution": 8}}}},
     "'presets.hashgrid.field.max_resolution' must be >= base_resolution (16)"),
    ({"presets": {"keras_example": {"batch": {"mode": "rays", "candidate_factor": 2}}}},
     "'presets.keras_example.batch.candidate_factor' must be 1 with a uniform sampler"),
    ({"presets": {"hashgrid": {"jit_compile": "yes"}}}, "'presets.hashgrid.jit_compile' must be true or false"),
    ({"scene": {"contraction": "always"}}, "'scene.contraction' must be one of 'auto', 'on', 'off'; got 'always'"),
    ({"render": {"fps": 0}}, "'render.fps' must be >= 1"),
    ({"render": {"elevation_deg": "x"}}, "'render.elevation_deg' must be a number or null; got 'x'"),
    ({"mlflow": {"experiment": ""}}, "'mlflow.experiment' must not be empty"),
    ({"presets": {"hashgrid": None, "keras_example": None, "splats": None}}, "'presets' must not be empty"),
])
def test_bad_params_are_refused_with_the_key(change, message):
    with pytest.raises(ConfigError) as error:
        config.from_dict(changed(change))
    assert message in str(error.value)


def test_missing_keys_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="missing key 'epochs'"):
        config.from_dict(changed({"epochs": None}))
    with pytest.raises(ConfigError, match=r"missing key 'render' \(a mapping\)"):
        config.from_dict(changed({"render": None}))
    broken = tmp_path / "params.yaml"
    broken.write_text("epochs: [1,\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        config.load(broken)
    with pytest.raises(ConfigError, match="cannot read the params file"):
        config.load(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="expected a mapping"):
        config.from_dict([1, 2])


def test_error_names_the_file(params_file):
    path = params_file(changed({"epoh": 2}), name="custom.yaml")
    with pytest.raises(ConfigError, match=r"custom.yaml: unknown key 'epoh'"):
        config.load(path)


def test_config_is_frozen():
    cfg = config.from_dict(repo_params())
    with pytest.raises(pydantic.ValidationError):
        cfg.epochs = 2  # type: ignore[misc]


def test_params_are_read_as_yaml_1_2_like_dvc(tmp_path):
    """`1e-2` is a number in YAML 1.2 (DVC's reading; PyYAML's 1.1 makes it a string), and so is `1E3`."""
    text = (REPO / "params.yaml").read_text()
    for old, new in [("learning_rate: 0.01", "learning_rate: 1e-2"),
                     ("final_learning_rate: 0.001", "final_learning_rate: 5e-4"),
                     ("density_threshold: 10.0", "density_threshold: 1E3"), ("contraction: auto", "contraction: off")]:
        assert old in text
        text = text.replace(old, new, 1)
    path = tmp_path / "params.yaml"
    path.write_text(text)
    cfg = config.load(path)
    assert cfg.presets["hashgrid"].optimizer.learning_rate == 0.01
    assert cfg.presets["hashgrid"].optimizer.final_learning_rate == 5e-4
    assert cfg.export.density_threshold == 1000.0
    assert cfg.scene.contraction == "off"  # a string in YAML 1.2 (false in 1.1, which the key refuses)


def test_the_repo_params_read_the_same_as_before():
    """null, booleans, 1.0e-15 and strings read as PyYAML read them (the repo's params.yaml has each)."""
    assert config.load(REPO / "params.yaml") == config.from_dict(repo_params())


@pytest.mark.parametrize("text, message", [
    ("epochs: [1,\n", "is not valid YAML at line 2, column 1: expected the node content, but found '<stream end>'."),
    ("epochs: 1\nseed: 0\nepochs: 2\n", "is not valid YAML at line 3, column 1: found duplicate key \"epochs\""),
    ("epochs: 1\n  seed: 0\n", "is not valid YAML at line 2, column 7: mapping values are not allowed here."),
])
def test_a_yaml_error_names_the_file_and_line_in_one_line(tmp_path, text, message):
    path = tmp_path / "custom.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        config.load(path)
    assert str(error.value).startswith(f"'{path}' ") and message in str(error.value)
    assert "\n" not in str(error.value)


class GrownGridConfig(config.HashGridFieldConfig):
    """HashGridFieldConfig after gaining a key, as a later version may: older models imply 0."""

    implied_by_older_models: ClassVar[dict] = {"appearance_dim": 0}
    appearance_dim: Annotated[int, pydantic.Field(ge=0)]


SAVED_GRID = {"type": "hashgrid", "num_levels": 2, "features_per_level": 2, "log2_table_size": 10,
              "base_resolution": 4, "max_resolution": 16, "width": 8}


def test_a_saved_part_config_takes_the_value_older_models_imply_for_a_new_key():
    part = config.saved_part(GrownGridConfig, SAVED_GRID)
    assert part.appearance_dim == 0 and part.num_levels == 2
    assert config.saved_part(GrownGridConfig, {**SAVED_GRID, "appearance_dim": 8}).appearance_dim == 8
    # today's class gained appearance_dim (issue 23): models saved before it have no embedding
    assert config.saved_part(config.HashGridFieldConfig, SAVED_GRID) == config.HashGridFieldConfig(**SAVED_GRID,
                                                                                                   appearance_dim=0)


@pytest.mark.parametrize("preset, appearance_dim, message", [
    ("keras_example", 16, "'scene.appearance' is 'on' but preset 'keras_example' has a field of type 'mlp', which "
                          "has no appearance embedding; use auto or off."),
    ("hashgrid", 0, "'scene.appearance' is 'on' but 'presets.hashgrid.field.appearance_dim' is 0; give the "
                    "embedding a size (e.g. 16) or use auto or off.")])
def test_appearance_on_needs_a_field_with_an_embedding(preset, appearance_dim, message):
    params = tiny_params()
    params["scene"]["appearance"], params["preset"] = "on", preset
    params["presets"]["hashgrid"]["field"]["appearance_dim"] = appearance_dim
    with pytest.raises(ConfigError) as refused:
        config.from_dict(params)
    assert str(refused.value) == f"params.yaml: {message}"
    params["scene"]["appearance"] = "auto"  # auto turns it on only where the field has one
    assert config.from_dict(params).scene.appearance == "auto"


def test_a_saved_part_config_drops_removed_keys_and_refuses_what_it_cannot_fill():
    assert config.saved_part(config.HashGridFieldConfig, {**SAVED_GRID, "removed_key": 3}).width == 8
    lacking = {key: value for key, value in SAVED_GRID.items() if key != "width"}
    with pytest.raises(ValueError, match="the saved HashGridFieldConfig has no 'width' and "
                                         "HashGridFieldConfig.implied_by_older_models gives no value"):
        config.saved_part(config.HashGridFieldConfig, lacking)
    with pytest.raises(pydantic.ValidationError, match="log2_table_size"):  # still as strict as params.yaml
        config.saved_part(config.HashGridFieldConfig, {**SAVED_GRID, "log2_table_size": 2.5})


def test_params_yaml_gives_every_key_even_one_older_models_imply():
    with pytest.raises(pydantic.ValidationError, match="appearance_dim"):
        GrownGridConfig(**SAVED_GRID)


# Sizes beyond what a 24 GB machine runs (issue 30): each refused up front, naming the key and its bound, where it
# used to ask for tens of GiB (or TiB), overflow an int32 or wrap the hash grid's offsets.
@pytest.mark.parametrize("change, message", [
    ({"render": {"num_frames": 10**7}}, "'render.num_frames' must be <= 100000; got 10000000"),
    ({"render": {"chunk_rays": 10**9}}, "'render.chunk_rays' must be <= 262144; got 1000000000"),
    ({"evaluate": {"chunk_rays": 10**9}}, "'evaluate.chunk_rays' must be <= 262144; got 1000000000"),
    ({"export": {"chunk_points": 10**9}}, "'export.chunk_points' must be <= 4194304; got 1000000000"),
    ({"export": {"num_points": 10**10}}, "'export.num_points' must be <= 16777216; got 10000000000"),
    ({"presets": {"hashgrid": {"sampler": {"num_march": 10**9}}}},
     "'presets.hashgrid.sampler.num_march' must be <= 4096; got 1000000000"),
    ({"presets": {"hashgrid": {"sampler": {"grid_resolution": 10**5}}}},
     "'presets.hashgrid.sampler.grid_resolution' must be <= 512; got 100000"),
    ({"presets": {"hashgrid": {"batch": {"candidate_factor": 10**6}}}},
     "'presets.hashgrid.batch.candidate_factor' must be <= 64; got 1000000"),
    ({"presets": {"hashgrid": {"batch": {"size": 10**8}}}},
     "'presets.hashgrid.batch.size' must be <= 1048576; got 100000000"),
    ({"presets": {"hashgrid": {"field": {"num_levels": 130, "log2_table_size": 24}}}},
     "'presets.hashgrid.field.num_levels' must be <= 32; got 130"),
    ({"presets": {"hashgrid": {"field": {"features_per_level": 64}}}},
     "'presets.hashgrid.field.features_per_level' must be <= 8; got 64"),
    ({"presets": {"hashgrid": {"field": {"max_resolution": 10**7}}}},
     "'presets.hashgrid.field.max_resolution' must be <= 65536; got 10000000"),
    # each key within its bound, together too much
    ({"presets": {"hashgrid": {"field": {"num_levels": 32, "log2_table_size": 24}}}},
     "'presets.hashgrid.field.log2_table_size' makes a hash table of up to 32 levels x 2^24 entries x 2 features = "
     "1073741824 numbers; at most 536870912"),
    ({"presets": {"hashgrid": {"batch": {"size": 65536, "candidate_factor": 8}}}},
     "'presets.hashgrid.batch.size' x candidate_factor x sampler.num_march = 65536 x 8 x 256 = 134217728 grid bins "
     "marched a step; at most 67108864"),
    ({"render": {"chunk_rays": 262144}, "presets": {"hashgrid": {"sampler": {"num_march": 1024}}}},
     "'render.chunk_rays' x 'presets.hashgrid.sampler.num_march' = 262144 x 1024 = 268435456 grid bins marched a "
     "call; at most 67108864"),
])
def test_sizes_beyond_a_24_gb_machine_are_refused_naming_the_key(change, message):
    with pytest.raises(ConfigError) as error:
        config.from_dict(changed(change))
    assert message in str(error.value)


@pytest.mark.parametrize("change", [
    {"presets": {"hashgrid": {"field": {"num_levels": 16, "log2_table_size": 24}}}},  # instant-ngp's largest
    {"presets": {"hashgrid": {"sampler": {"num_march": 1024}}}},
    {"render": {"num_frames": 100_000, "chunk_rays": 131072}, "evaluate": {"chunk_rays": 131072}},
    {"presets": {"hashgrid": {"batch": {"size": 16384, "candidate_factor": 8}}}},
])
def test_generous_sizes_within_the_bounds_are_accepted(change):
    config.from_dict(changed(change))

"""The one typed, validated configuration: params.yaml parsed once into frozen dataclasses.

Every stage receives a ``Config``; nothing else reads params.yaml. Unknown keys, missing
keys, wrong types and out-of-range values are refused with a ``ConfigError`` that names
the key (``presets.hashgrid.sampler.num_samples``), says what was expected, and for a
misspelt key suggests the closest valid one (``epoch`` → ``epochs``).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import yaml

from nerf_pipeline.errors import ConfigError

DEFAULT_PARAMS = "params.yaml"
TINY_NERF_URL = "https://people.eecs.berkeley.edu/~bmild/nerf/tiny_nerf_data.npz"


class _Invalid(Exception):
    """Raised by ``_check`` inside a dataclass; the loader adds the key's full path."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key, self.message = key, message


def _check(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise _Invalid(key, message)


# ----------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class DataConfig:
    """Where the scene comes from (stage ``download``)."""

    # synthetic | tiny_nerf | path to a local .npz | a NeRF-synthetic or instant-ngp/nerfstudio
    # folder (or its transforms*.json)
    source: str = "synthetic"
    # Sampling bounds; null: the source's own (synthetic, tiny_nerf and .npz without them: 2 and 6;
    # transforms folders: derived from the camera positions).
    near: Optional[float] = None
    far: Optional[float] = None
    background: float = 0.0  # grey level behind the scene: 0 black (tiny_nerf), 1 white (NeRF paper)
    downscale: int = 1  # transforms folders: average each downscale x downscale block of pixels
    max_views: Optional[int] = None  # transforms folders: keep at most this many views, evenly spread
    tiny_nerf_url: str = TINY_NERF_URL
    tiny_nerf_sha256: str = ""
    download_retries: int = 3
    download_timeout_s: float = 30.0

    def __post_init__(self):
        _check(self.source != "", "source", "must be 'synthetic', 'tiny_nerf' or the path of a .npz file or folder")
        _check(self.near is None or self.near >= 0, "near", f"must be >= 0 (got {self.near})")
        _check(self.near is None or self.far is None or self.near < self.far, "near",
               f"must satisfy 0 <= near < far (got near={self.near}, far={self.far})")
        _check(0.0 <= self.background <= 1.0, "background", "must be a grey level in [0, 1]")
        _check(self.downscale >= 1, "downscale", "must be a whole number >= 1")
        _check(self.max_views is None or self.max_views >= 2, "max_views", "must be at least 2, or null for all")
        _check(self.download_retries >= 1, "download_retries", "must be at least 1")
        _check(self.download_timeout_s > 0, "download_timeout_s", "must be > 0")


@dataclass(frozen=True)
class SyntheticConfig:
    """The built-in scene that the project renders itself."""

    num_views: int = 100
    image_size: int = 100
    supersample: int = 2
    seed: int = 0

    def __post_init__(self):
        _check(self.num_views >= 2, "num_views", "must be at least 2 (one to train, one to validate)")
        _check(8 <= self.image_size <= 2048, "image_size", "must be between 8 and 2048 pixels")
        _check(1 <= self.supersample <= 8, "supersample", "must be between 1 and 8")


@dataclass(frozen=True)
class SplitConfig:
    val_fraction: float = 0.2
    order: Literal["shuffled", "last"] = "shuffled"  # last: the Keras example's (last views validate)
    seed: int = 0

    def __post_init__(self):
        _check(0.0 < self.val_fraction < 1.0, "val_fraction", f"must be strictly between 0 and 1 (got {self.val_fraction})")


@dataclass(frozen=True)
class FieldConfig:
    """The radiance field: ``mlp`` (positional encoding + MLP) or ``hashgrid`` (instant-ngp style)."""

    type: Literal["mlp", "hashgrid"] = "hashgrid"
    # mlp
    num_layers: int = 8
    num_frequencies: int = 16
    skip_every: int = 4
    # both
    width: int = 64
    # hashgrid
    num_levels: int = 12
    features_per_level: int = 2
    log2_table_size: int = 17
    base_resolution: int = 16
    max_resolution: int = 256

    def __post_init__(self):
        for key in ("num_layers", "width", "num_levels", "features_per_level", "base_resolution"):
            _check(getattr(self, key) >= 1, key, "must be at least 1")
        _check(self.num_frequencies >= 0, "num_frequencies", "must be >= 0")
        _check(self.skip_every >= 0, "skip_every", "must be >= 0 (0: no skip connection)")
        _check(10 <= self.log2_table_size <= 24, "log2_table_size", "must be between 10 and 24")
        _check(self.max_resolution >= self.base_resolution, "max_resolution", "must be >= base_resolution")

    def model_kwargs(self) -> dict:
        """The keyword arguments of the chosen field's Keras layer, with ``type``."""
        keys = {"mlp": ("num_layers", "width", "num_frequencies", "skip_every"),
                "hashgrid": ("num_levels", "features_per_level", "log2_table_size", "base_resolution",
                             "max_resolution", "width")}[self.type]
        return {"type": self.type, **{k: getattr(self, k) for k in keys}}


@dataclass(frozen=True)
class SamplerConfig:
    """Where along rays the field is evaluated (see ``nerf_pipeline.sampling``)."""

    strategy: Literal["uniform", "occupancy"] = "occupancy"
    num_samples: int = 32
    stratified: bool = True  # jitter sample depths while training (never at evaluation)
    num_march: int = 256  # occupancy: bins per ray in which occupancy is read
    grid_resolution: int = 64  # occupancy: cells per side of the grid over the scene cube
    update_every: int = 16  # occupancy: steps between grid updates
    warmup_steps: int = 128  # occupancy: steps before the first update (all cells occupied)
    alpha_threshold: float = 0.01  # occupancy: a cell is empty if crossing it absorbs less light
    decay: float = 0.95  # occupancy: decay of the per-cell running max of density

    def __post_init__(self):
        for key in ("num_samples", "num_march", "grid_resolution", "update_every"):
            _check(getattr(self, key) >= 1, key, "must be at least 1")
        _check(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        _check(0.0 < self.alpha_threshold < 1.0, "alpha_threshold", "must be strictly between 0 and 1")
        _check(0.0 <= self.decay <= 1.0, "decay", "must be in [0, 1]")

    def model_kwargs(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class BatchConfig:
    mode: Literal["rays", "images"] = "rays"  # rays: random rays of all training views; images: whole views
    size: int = 4096  # rays per step (mode rays) or images per step (mode images)
    # Mode rays with occupancy sampling: draw candidate_factor * size rays and train on the size of
    # them that cross occupied space first (the others render as the background whatever the
    # weights, so they carry no gradient).
    candidate_factor: int = 1

    def __post_init__(self):
        _check(self.size >= 1, "size", "must be at least 1")
        _check(self.candidate_factor >= 1, "candidate_factor", "must be at least 1")
        _check(self.mode == "rays" or self.candidate_factor == 1, "candidate_factor",
               "must be 1 with mode 'images' (whole images are trained on as they are)")


@dataclass(frozen=True)
class OptimizerConfig:
    """Adam, with the learning rate decaying exponentially to ``final_learning_rate`` at the last step."""

    learning_rate: float = 1e-2
    final_learning_rate: float = 1e-3
    beta_1: float = 0.9
    beta_2: float = 0.99
    epsilon: float = 1e-15

    def __post_init__(self):
        _check(self.learning_rate > 0, "learning_rate", "must be > 0")
        _check(self.final_learning_rate > 0, "final_learning_rate", "must be > 0")
        _check(0 <= self.beta_1 < 1, "beta_1", "must be in [0, 1)")
        _check(0 <= self.beta_2 < 1, "beta_2", "must be in [0, 1)")
        _check(self.epsilon > 0, "epsilon", "must be > 0")


@dataclass(frozen=True)
class PresetConfig:
    """Everything that defines a model and how it trains (one entry of ``presets``)."""

    # (``dataclasses.field`` spelt out: this class has a member called ``field``.)
    field: FieldConfig = dataclasses.field(default_factory=FieldConfig)
    sampler: SamplerConfig = dataclasses.field(default_factory=SamplerConfig)
    batch: BatchConfig = dataclasses.field(default_factory=BatchConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    steps_per_epoch: Optional[int] = None  # None: one pass over the training rays (or images)
    scene_bound: float = 1.5  # half-size of the cube that holds the scene (hash grid, occupancy)
    jit_compile: bool = True  # XLA-compile the train and render steps

    def __post_init__(self):
        _check(self.steps_per_epoch is None or self.steps_per_epoch >= 1, "steps_per_epoch",
               "must be at least 1, or null for one pass over the training data")
        _check(self.scene_bound > 0, "scene_bound", "must be > 0")


@dataclass(frozen=True)
class EvaluateConfig:
    chunk_rays: int = 16384  # rays rendered per compiled call
    grid_views: int = 4  # val views shown in the PNG grid

    def __post_init__(self):
        _check(self.chunk_rays >= 1, "chunk_rays", "must be at least 1")
        _check(self.grid_views >= 1, "grid_views", "must be at least 1")


@dataclass(frozen=True)
class RenderConfig:
    num_frames: int = 120
    # The orbit's height and distance; null: the median of the scene's cameras.
    # (The Keras example's orbit is elevation 30, radius 4.)
    elevation_deg: Optional[float] = None
    radius: Optional[float] = None
    fps: int = 30
    chunk_rays: int = 16384
    gif_frame_ms: int = 300  # duration of each epoch's frame in the training-progress GIF

    def __post_init__(self):
        _check(self.num_frames >= 1, "num_frames", "must be at least 1")
        _check(self.elevation_deg is None or -90.0 < self.elevation_deg < 90.0, "elevation_deg",
               "must be strictly between -90 and 90, or null")
        _check(self.radius is None or self.radius > 0, "radius", "must be > 0, or null")
        _check(self.fps >= 1, "fps", "must be at least 1")
        _check(self.chunk_rays >= 1, "chunk_rays", "must be at least 1")
        _check(self.gif_frame_ms >= 10, "gif_frame_ms", "must be at least 10")


@dataclass(frozen=True)
class MlflowConfig:
    experiment: str = "nerf-pipeline"

    def __post_init__(self):
        _check(self.experiment.strip() != "", "experiment", "must be a non-empty name")


@dataclass(frozen=True)
class Config:
    """The whole of params.yaml."""

    epochs: int
    seed: int = 0
    preset: str = "hashgrid"
    distribute: Literal["none", "mirrored", "multi_worker"] = "none"  # tf.distribute strategy of training
    data: DataConfig = field(default_factory=DataConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    presets: dict[str, PresetConfig] = field(default_factory=lambda: {"hashgrid": PresetConfig()})
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    # The params as written, flattened ("presets.hashgrid.field.width": 64), for MLflow.
    flat: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        _check(self.epochs >= 1, "epochs", f"must be a whole number >= 1 (got {self.epochs})")
        _check(self.preset in self.presets, "preset",
               f"must name an entry of 'presets' ({', '.join(sorted(self.presets))}); got '{self.preset}'")

    @property
    def model(self) -> PresetConfig:
        """The preset that trains."""
        return self.presets[self.preset]


# ----------------------------------------------------------------------------- loading


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    if origin is dict:
        return "a mapping of names to mappings"
    return {int: "a whole number", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _convert(value, tp, path: str):
    """Check ``value`` against the annotation ``tp``; return it converted (ints to floats, dataclasses built)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, path)
            except ConfigError:
                pass
    elif origin is Literal:
        if value in typing.get_args(tp):
            return value
    elif origin is dict:
        _, value_type = typing.get_args(tp)
        if isinstance(value, dict) and value:
            return {str(k): _convert(v, value_type, f"{path}.{k}") for k, v in value.items()}
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, dict):
            return _build(tp, value, path)
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"params.yaml: '{path}' must be {_type_name(tp)}; got {value!r}.")


def _build(cls, data: dict, path: str = ""):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name != "flat"]
    prefix = f"{path}." if path else ""
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.6)
            hint = f" Did you mean '{prefix}{close[0]}'?" if close else f" Valid keys here: {', '.join(names)}."
            raise ConfigError(f"params.yaml: unknown key '{prefix}{key}'.{hint}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"params.yaml: missing key '{prefix}{f.name}' ({_type_name(hints[f.name])}).")
            continue
        kwargs[f.name] = _convert(data[f.name], hints[f.name], prefix + f.name)
    try:
        return cls(**kwargs)
    except _Invalid as e:
        raise ConfigError(f"params.yaml: '{prefix}{e.key}' {e.message}.") from None


def _flatten(data, prefix: str = "") -> dict:
    flat = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def from_dict(data) -> Config:
    """Validate a parsed params mapping. Raises ``ConfigError``."""
    if not isinstance(data, dict):
        raise ConfigError("params.yaml: expected a mapping of keys to values at the top level.")
    cfg = _build(Config, data)
    return dataclasses.replace(cfg, flat=_flatten(data))


def load(path=DEFAULT_PARAMS) -> Config:
    """Read and validate params.yaml. Raises ``ConfigError`` naming the file and the key."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read the params file '{path}': {e.strerror}.") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"'{path}' is not valid YAML: {e}") from None
    try:
        return from_dict(data)
    except ConfigError as e:
        raise ConfigError(str(e).replace("params.yaml:", f"{path}:", 1)) from None

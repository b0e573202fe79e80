"""The one typed, validated configuration: params.yaml parsed once into frozen pydantic models.

Every stage receives a ``Config``; nothing else reads params.yaml. The values live in one place,
params.yaml: the classes here declare each key's type and range and have no defaults, so what
MLflow logs and DVC tracks is what ran. The parts of a model are tagged unions: a field is a
``HashGridFieldConfig`` or an ``MLPFieldConfig`` by its ``type``, a sampler a
``UniformSamplerConfig`` or an ``OccupancySamplerConfig``, a batch ``RayBatchConfig`` or
``ImageBatchConfig`` by its ``mode``; each accepts only its own keys.

Errors are ``ConfigError``s that name the key's path (``presets.hashgrid.sampler.num_samples``),
say what was expected and, for an unknown key, suggest the closest valid one (``epoch`` →
``epochs``). This module imports neither TensorFlow nor Keras, so light stages stay light.

Saved models keep their field's and sampler's configs; ``saved_part`` reads those with today's
classes, so a model loads after its config class gains a key (``Section.implied_by_older_models``).
"""

from __future__ import annotations

import difflib
import typing
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Optional, TypeVar, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from ruamel.yaml import YAML, YAMLError

from nerf_pipeline.errors import ConfigError

DEFAULT_PARAMS = "params.yaml"

PositiveInt = Annotated[int, Field(ge=1)]
CAMERA_PATHS = ("auto", "orbit", "spiral")
PositiveFloat = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(gt=0, lt=1)]

# Upper bounds on sizes, so that params a 24 GB machine cannot run are refused up front, naming the key, rather than
# asking for tens of GiB (or TiB) at once, overflowing an int32 or taking minutes before any work. Each is generous
# (many times the default, at least the largest that instant-ngp, nerfacc or nerfstudio use) and says why it is safe.
MAX_RENDER_FRAMES = 100_000  # 55 minutes at 30 fps; the render stage streams frames (its poses take 13 MB)
MAX_RENDER_SIDE = 8192  # pixels a side of a rendered frame: its rays and outputs take about 10 GB at 8192²
MAX_CHUNK_RAYS = 2**18  # rays per compiled render call (16x the default), each with num_samples samples
MAX_CHUNK_POINTS = 2**22  # field queries per export call (64x the default): 760 bytes each (measured), 3 GB
# Occupancy-grid bins marched per compiled call (rays x sampler.num_march): about 100 bytes each on TensorFlow's
# path (measured on the CPU without XLA; 50 with it), so 6.4 GiB at most; the default reads 2^21 to 2^22.
MAX_MARCHED_BINS = 2**26
# Numbers in the hash grid's table (levels x 2^log2_table_size x features, counted as if every level were hashed):
# 2 GiB of float32, 8 GiB while training (its gradient and Adam's two moments); instant-ngp's largest, 16 levels of
# 2^24 entries of 2 features, is exactly this.
MAX_HASH_TABLE_NUMBERS = 2**29


class Invalid(ValueError):
    """Raised by a section's cross-key check: ``key`` (relative to the section) is the one to fix."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


class Section(BaseModel):
    """A block of params.yaml: frozen, every key required, unknown keys refused, no type coercion
    (``1.5`` is not a whole number, ``"3"`` not a number; a whole number is a valid float)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    # The keys this class gained after models were first saved, each with the value that does what models
    # saved before it did: a saved model's config lacking one loads with that value (``saved_part``).
    # Declare one in the class whenever you add a key to a field or sampler config, e.g.
    # ``{"appearance_dim": 0}  # added after 0.1.0 (b89c5c3)``; params.yaml must still give every key.
    implied_by_older_models: ClassVar[dict[str, Any]] = {}


# ----------------------------------------------------------------------------- data


class DataConfig(Section):
    """Where the scene comes from (stage ``download``)."""

    # synthetic | tiny_nerf | the path of an .npz, a video, a folder of photos, a COLMAP or LLFF capture,
    # a NeRF-synthetic or instant-ngp/nerfstudio folder (or its transforms*.json); see scenes/sources.py
    source: Annotated[str, Field(min_length=1)]
    # Sampling bounds (in the scene's units after the poses stage); null: the source's own (synthetic,
    # tiny_nerf and .npz without them: 2 and 6; captures: derived from the cameras and the source).
    near: Optional[Annotated[float, Field(ge=0)]]
    far: Optional[PositiveFloat]
    background: Annotated[float, Field(ge=0, le=1)]  # grey level behind the scene: 0 black, 1 white
    downscale: PositiveInt  # the rays stage averages each downscale x downscale block of pixels
    max_views: Optional[Annotated[int, Field(ge=2)]]  # folders and captures: at most this many views, evenly spread
    max_frames: Annotated[int, Field(ge=2)]  # videos: frames taken at even spacing
    drop_blurriest: Annotated[float, Field(ge=0, lt=1)]  # videos: the fraction of those frames dropped as blurriest
    # May the files that a capture's transforms.json (file_path, mask_path) or COLMAP model (image names) names
    # lie outside its folder (absolute, or climbing out with ../)? Off, they are refused: whatever they name
    # would be copied into data/scene and go out with `dvc push` (scenes/folders.py: capture_file).
    allow_paths_outside: bool
    tiny_nerf_url: str
    tiny_nerf_sha256: str
    download_retries: PositiveInt
    download_timeout_s: PositiveFloat

    @model_validator(mode="after")
    def _near_below_far(self):
        if self.near is not None and self.far is not None and self.near >= self.far:
            raise Invalid("near", f"must be below data.far (got near={self.near}, far={self.far})")
        return self


class SyntheticConfig(Section):
    """The built-in scene that the project renders itself."""

    num_views: Annotated[int, Field(ge=2)]
    image_size: Annotated[int, Field(ge=8, le=2048)]
    supersample: Annotated[int, Field(ge=1, le=8)]  # anti-aliasing: supersample² rays per pixel
    seed: int


class SplitConfig(Section):
    val_fraction: Fraction
    # last: the Keras example's (the last views validate); every_8th: views 0, 8, 16, ... validate (the
    # LLFF / mip-NeRF 360 convention, so figures compare with published ones; val_fraction is not used)
    order: Literal["shuffled", "last", "every_8th"]
    seed: int


class PosesConfig(Section):
    """Structure from motion (stage ``poses``) for sources without poses (photos, videos)."""

    matcher: Literal["auto", "sequential", "exhaustive"]  # auto: sequential for video frames, else exhaustive
    max_image_side: Annotated[int, Field(ge=64)]  # SfM runs on copies whose long side is at most this
    min_registered: Fraction  # stop unless at least this fraction of the images registers


class SceneConfig(Section):
    """How the model sees the scene's space (stage ``train``; see ``model.space``)."""

    # Half-size of the box that holds the scene, or, with contraction, the radius of the ball kept
    # as it is (everything beyond is contracted into the shell between it and twice its radius).
    bound: PositiveFloat
    # auto: contract the captures whose scene reaches far beyond the cameras' focus (the scene
    # file says so), not object scenes; on | off force it.
    contraction: Literal["auto", "on", "off"]
    # A learned appearance embedding per training view (exposure, white balance), of the hash-grid
    # field's appearance_dim numbers, fed to its colour head; held-out views (validation, evaluate) and
    # video frames take the mix of their 2 nearest training cameras' (NeRF.appearance_near).
    # auto: for captures (photos, videos, COLMAP, LLFF, unbounded transforms.json: the scenes that
    # contraction auto contracts), not synthetic object scenes; on | off force it.
    appearance: Literal["auto", "on", "off"]
    # A learned correction of each training view's camera pose (rotation and translation), trained with
    # the field at the preset's optimizer.camera_learning_rate; the corrected poses are what export,
    # the viewer and render's path use. auto: for captures (poses from structure from motion or COLMAP:
    # the scenes that contraction auto contracts), not synthetic scenes, whose poses are exact; on | off.
    camera_refinement: Literal["auto", "on", "off"]


# ----------------------------------------------------------------------------- model parts


class HashGridFieldConfig(Section):
    """Multiresolution hash encoding (instant-ngp) + a small density MLP + a view-dependent colour MLP."""

    type: Literal["hashgrid"]
    num_levels: Annotated[int, Field(ge=1, le=32)]  # instant-ngp uses 16; with 2^24 entries, 32 keep offsets in int32
    features_per_level: Annotated[int, Field(ge=1, le=8)]  # instant-ngp's study tries 1 to 8
    log2_table_size: Annotated[int, Field(ge=10, le=24)]
    base_resolution: PositiveInt
    max_resolution: Annotated[int, Field(ge=1, le=65536)]  # instant-ngp's finest is 2048 x the scene's scale (<= 16)
    width: PositiveInt  # hidden units of the density and colour MLPs
    # Numbers per training view in the appearance embedding, when scene.appearance turns it on (0: never)
    appearance_dim: Annotated[int, Field(ge=0)]

    implied_by_older_models: ClassVar[dict[str, Any]] = {"appearance_dim": 0}  # added after b89c5c3 (issue 23)

    @property
    def has_appearance(self) -> bool:
        """Whether the field learns an appearance embedding when ``scene.appearance`` turns it on."""
        return self.appearance_dim > 0

    @model_validator(mode="after")
    def _resolutions(self):
        if self.max_resolution < self.base_resolution:
            raise Invalid("max_resolution", f"must be >= base_resolution ({self.base_resolution})")
        return self

    @model_validator(mode="after")
    def _table_fits(self):
        numbers = self.num_levels * 2**self.log2_table_size * self.features_per_level
        if numbers > MAX_HASH_TABLE_NUMBERS:
            raise Invalid("log2_table_size", f"makes a hash table of up to {self.num_levels} levels x "
                          f"2^{self.log2_table_size} entries x {self.features_per_level} features = {numbers} numbers; "
                          f"at most {MAX_HASH_TABLE_NUMBERS} (2 GiB, 8 GiB while training): lower log2_table_size, "
                          "num_levels or features_per_level")
        return self


class MLPFieldConfig(Section):
    """Positional encoding + a ReLU MLP with a skip connection (the Keras example's field)."""

    type: Literal["mlp"]
    num_layers: PositiveInt
    width: PositiveInt
    num_frequencies: Annotated[int, Field(ge=0)]
    skip_every: Annotated[int, Field(ge=0)]  # 0: no skip connection

    has_appearance: ClassVar[bool] = False  # no appearance embedding (its config has no appearance_dim)


FieldConfig = Annotated[Union[HashGridFieldConfig, MLPFieldConfig], Field(discriminator="type")]


class UniformSamplerConfig(Section):
    """Evenly spaced samples between near and far (the original NeRF and the Keras example)."""

    type: Literal["uniform"]
    num_samples: PositiveInt
    stratified: bool  # jitter sample depths while training (never at evaluation)


class OccupancySamplerConfig(Section):
    """Samples only in the cells of an occupancy grid that may hold matter (instant-ngp, nerfacc)."""

    type: Literal["occupancy"]
    num_samples: PositiveInt
    stratified: bool
    num_march: Annotated[int, Field(ge=1, le=4096)]  # bins per ray in which the grid is read (instant-ngp: 1024)
    grid_resolution: Annotated[int, Field(ge=1, le=512)]  # cells per side of the grid over the scene's space (512 MB)
    update_every: PositiveInt  # training steps between grid updates
    warmup_steps: Annotated[int, Field(ge=0)]  # steps before the first update (all cells occupied until then)
    alpha_threshold: Fraction  # a cell is empty if crossing it absorbs less light than this
    decay: Annotated[float, Field(ge=0, le=1)]  # decay of each cell's running max of density


SamplerConfig = Annotated[Union[UniformSamplerConfig, OccupancySamplerConfig], Field(discriminator="type")]


class RayBatchConfig(Section):
    """Random rays drawn from all training views."""

    mode: Literal["rays"]
    size: Annotated[int, Field(ge=1, le=2**20)]  # rays trained on per step (instant-ngp: 2^18 samples a step)
    # Draw candidate_factor * size rays and train on the size of them that cross occupied space first
    # (the others render as the background whatever the weights, so they carry no gradient).
    # Needs the occupancy sampler when > 1.
    candidate_factor: Annotated[int, Field(ge=1, le=64)]  # (size x it must stay far below int32's 2^31)


class ImageBatchConfig(Section):
    """Whole shuffled training views (the Keras example: 5 per step)."""

    mode: Literal["images"]
    size: PositiveInt  # views per step


BatchConfig = Annotated[Union[RayBatchConfig, ImageBatchConfig], Field(discriminator="mode")]


class OptimizerConfig(Section):
    """Adam, its learning rate decaying exponentially to ``final_learning_rate`` at the last step."""

    learning_rate: PositiveFloat
    final_learning_rate: PositiveFloat
    beta_1: Annotated[float, Field(ge=0, lt=1)]
    beta_2: Annotated[float, Field(ge=0, lt=1)]
    epsilon: PositiveFloat
    # The pose corrections' (scene.camera_refinement): about how far, in radians and scene units, a step moves
    # them at first; it decays with learning_rate (model/pose_refinement.py)
    camera_learning_rate: PositiveFloat
    # The hash table's Adam second moment: samples, the sum of its samples' squared gradients (a row many samples
    # agree on steps up to sqrt(samples) times the learning rate: the coarse levels learn fast); batch, Adam's own,
    # the square of the batch's summed gradient (model/optimizer.py). No effect without a hash table.
    table_second_moment: Literal["samples", "batch"]


class PresetConfig(Section):
    """A NeRF (field + sampler) and how it trains: one entry of ``presets``. ``method`` names the model family
    (``methods.METHODS``): a preset of another family is its own class, chosen by ``method`` (a tagged union)."""

    method: Literal["nerf"]
    field: FieldConfig
    sampler: SamplerConfig
    batch: BatchConfig
    optimizer: OptimizerConfig
    steps_per_epoch: Optional[PositiveInt]  # null: one pass over the training rays (or views)
    jit_compile: bool  # XLA-compile the train and render steps
    # Against floaters: training minimises the MSE plus this times mip-NeRF 360's distortion loss (0: off)
    distortion_weight: Annotated[float, Field(ge=0)]

    @model_validator(mode="after")
    def _candidates_need_occupancy(self):
        if (isinstance(self.batch, RayBatchConfig) and self.batch.candidate_factor > 1
                and not isinstance(self.sampler, OccupancySamplerConfig)):
            raise Invalid("batch.candidate_factor", "must be 1 with a uniform sampler: candidates are chosen by "
                          "the occupancy sampler's grid (the rays that cross occupied space)")
        return self

    @model_validator(mode="after")
    def _marched_bins_fit(self):
        if isinstance(self.batch, RayBatchConfig) and isinstance(self.sampler, OccupancySamplerConfig):
            b, march = self.batch, self.sampler.num_march
            bins = b.size * b.candidate_factor * march
            if bins > MAX_MARCHED_BINS:
                raise Invalid("batch.size", f"x candidate_factor x sampler.num_march = {b.size} x {b.candidate_factor} "
                              f"x {march} = {bins} grid bins marched a step; at most {MAX_MARCHED_BINS} (about 6 GiB): "
                              "lower one of them")
        return self


# ----------------------------------------------------------------------------- 3D Gaussian splatting

MAX_GAUSSIANS = 2**22  # 4 M Gaussians: 1 GiB of parameters and Adam moments (248 bytes each); 3DGS scenes reach 1-6 M


class SplatsInitConfig(Section):
    """The first Gaussians (``splats/gaussians.py``): the scene's sparse points where it has them, else random."""

    num_random: Annotated[int, Field(ge=1, le=MAX_GAUSSIANS)]  # points uniform in the box [-scene.bound, bound]^3
    opacity: Fraction  # each Gaussian's first opacity (3DGS: 0.1)


class SplatsOptimizerConfig(Section):
    """Adam per parameter group, each with its own learning rate (per step; ``splats/training.py``)."""

    means: PositiveFloat  # at the first step, times the cameras' extent (3DGS's spatial_lr_scale)
    means_final: PositiveFloat  # at the last step (exponential decay), times the extent
    sh_dc: PositiveFloat  # the colours' degree-0 SH coefficients
    sh_rest: PositiveFloat  # degrees 1-3 (3DGS: sh_dc / 20)
    opacity: PositiveFloat  # opacity logits
    scales: PositiveFloat  # log scales
    quats: PositiveFloat  # rotations (quaternions)
    # each training view's colour transform (3 x 3 and an offset, from the identity), when scene.appearance is
    # on (3DGS's exposure compensation: 0.01 decaying to 0.001)
    appearance: PositiveFloat
    beta_1: Annotated[float, Field(ge=0, lt=1)]
    beta_2: Annotated[float, Field(ge=0, lt=1)]
    epsilon: PositiveFloat


class DensityControlConfig(Section):
    """Adaptive density control (``splats/density_control.py``): steps are 1-based, as 3DGS counts them."""

    start: Annotated[int, Field(ge=0)]  # densify at the steps after this one ...
    stop: PositiveInt  # ... and before this one (no densification, pruning nor opacity reset from it on)
    every: PositiveInt  # steps between densifications
    grad_threshold: PositiveFloat  # mean NDC gradient norm of a Gaussian's projected mean from which it densifies
    dense_fraction: Fraction  # clone up to this size (times the extent), split above it (3DGS's percent_dense)
    min_opacity: Fraction  # prune below this opacity
    max_world_fraction: PositiveFloat  # prune larger than this (times the extent)
    # prune drawn larger (radius) than this fraction of the image's longer side, after the first opacity reset
    # (null: never)
    max_screen_fraction: Optional[PositiveFloat]
    opacity_reset_every: PositiveInt  # steps between opacity resets
    reset_opacity: Fraction  # a reset lowers every opacity to this
    max_gaussians: Annotated[int, Field(ge=1, le=MAX_GAUSSIANS)]  # densification adds no more than this

    @model_validator(mode="after")
    def _stop_after_start(self):
        if self.stop <= self.start:
            raise Invalid("stop", f"must be above densify.start ({self.start})")
        return self


class CoarseToFineConfig(Section):
    """Train on downscaled views first (``splats/training.py``'s ``StepViews``): ``downscales[i]`` until the
    (0-based) step ``until[i]``, full size after; both empty: full size throughout."""

    downscales: list[Annotated[int, Field(ge=2, le=16)]]  # block sizes, largest first
    until: list[PositiveInt]  # the step each ends at, increasing

    @model_validator(mode="after")
    def _paired(self):
        if len(self.downscales) != len(self.until):
            raise Invalid("until", f"must have as many entries as coarse_to_fine.downscales ({len(self.downscales)})")
        if any(a <= b for a, b in zip(self.downscales, self.downscales[1:])):
            raise Invalid("downscales", "must decrease (coarse first)")
        if any(a >= b for a, b in zip(self.until, self.until[1:])):
            raise Invalid("until", "must increase")
        return self


class SplatsPresetConfig(Section):
    """3D Gaussian splatting (``splats/``): one entry of ``presets`` with ``method: splats``. Trains one view (or a
    ``crop`` of one) a step; the schedules count steps."""

    method: Literal["splats"]
    init: SplatsInitConfig
    sh_degree: Annotated[int, Field(ge=0, le=3)]  # the largest SH degree of the colours
    sh_degree_every: PositiveInt  # steps between raising the degree by one (from 0)
    optimizer: SplatsOptimizerConfig
    ssim_weight: Annotated[float, Field(ge=0, le=1)]  # loss: (1 - this) L1 + this (1 - SSIM)
    crop: Optional[Annotated[int, Field(ge=16, le=MAX_RENDER_SIDE)]]  # train on random crop x crop squares; null: whole
    coarse_to_fine: CoarseToFineConfig
    steps_per_epoch: PositiveInt
    densify: DensityControlConfig

    # What the stages read of every preset: the splats' step is no XLA computation (its rasterizer is a native op),
    # and its batch is one view (or a crop of one).
    jit_compile: ClassVar[bool] = False
    batch: ClassVar[ImageBatchConfig] = ImageBatchConfig(mode="images", size=1)


# A preset is chosen by its method (``methods.METHODS``).
AnyPresetConfig = Annotated[Union[PresetConfig, SplatsPresetConfig], Field(discriminator="method")]


# ----------------------------------------------------------------------------- the rest


class ValidationConfig(Section):
    """Validation during training (each epoch)."""

    max_views: PositiveInt  # at most this many val views, evenly spread, rendered whole


class EvaluateConfig(Section):
    split: Literal["test", "val"]  # test: the scene's test split when it has one (else val, said in the log)
    max_views: Optional[PositiveInt]  # null: every view of the split; else this many, evenly spread
    chunk_rays: Annotated[int, Field(ge=1, le=MAX_CHUNK_RAYS)]  # rays rendered per compiled call
    grid_views: PositiveInt  # views shown in the PNG grid


class ExportConfig(Section):
    # marching cubes: density sampled on resolution^3 points of the box
    resolution: Annotated[int, Field(ge=16, le=512)]
    density_threshold: PositiveFloat  # the mesh is the surface where density (per unit length) crosses this
    chunk_points: Annotated[int, Field(ge=1, le=MAX_CHUNK_POINTS)]  # field queries per compiled call
    # point cloud: training rays rendered (one point each); at most 2^24: their rays and outputs take about 1 GB
    num_points: Annotated[int, Field(ge=1, le=2**24)]
    min_opacity: Annotated[float, Field(gt=0, le=1)]  # point cloud: rays less opaque than this are left out


class RenderConfig(Section):
    # auto: a 360° orbit when the cameras go around the scene, else a spiral where they were
    # (as LLFF renders forward-facing captures); orbit | spiral force one; or the path of a
    # nerfstudio camera_path.json (in camera_paths/, which the render stage depends on)
    camera_path: Annotated[str, Field(min_length=1)]
    num_frames: Annotated[int, Field(ge=1, le=MAX_RENDER_FRAMES)]  # (a camera_path.json: at most as many frames)
    # Output size; null: the training views' size (one given: the other follows their aspect ratio).
    width: Optional[Annotated[int, Field(ge=8, le=MAX_RENDER_SIDE)]]
    height: Optional[Annotated[int, Field(ge=8, le=MAX_RENDER_SIDE)]]
    # The orbit's height and distance; null: the median of the scene's cameras.
    # (The Keras example's orbit is elevation 30, radius 4.)
    elevation_deg: Optional[Annotated[float, Field(gt=-90, lt=90)]]
    radius: Optional[PositiveFloat]
    fps: PositiveInt
    chunk_rays: Annotated[int, Field(ge=1, le=MAX_CHUNK_RAYS)]
    gif_frame_ms: Annotated[int, Field(ge=10)]  # duration of each epoch's frame in the training-progress GIF

    @model_validator(mode="after")
    def _camera_path(self):
        if self.camera_path not in CAMERA_PATHS and not self.camera_path.endswith(".json"):
            raise Invalid("camera_path", f"must be one of {', '.join(CAMERA_PATHS)} or the path of a camera_path.json; "
                                         f"got '{self.camera_path}'")
        return self


class MlflowConfig(Section):
    experiment: Annotated[str, Field(min_length=1)]
    log_every_steps: PositiveInt  # training loss and PSNR are logged (and plotted) every this many steps


class Config(Section):
    """The whole of params.yaml."""

    epochs: PositiveInt
    seed: int
    preset: str  # which entry of ``presets`` trains
    distribute: Literal["none", "mirrored", "multi_worker"]  # tf.distribute strategy of training
    data: DataConfig
    synthetic: SyntheticConfig
    poses: PosesConfig
    split: SplitConfig
    scene: SceneConfig
    presets: Annotated[dict[str, AnyPresetConfig], Field(min_length=1)]
    validation: ValidationConfig
    evaluate: EvaluateConfig
    export: ExportConfig
    render: RenderConfig
    mlflow: MlflowConfig

    @model_validator(mode="after")
    def _preset_exists(self):
        if self.preset not in self.presets:
            close = difflib.get_close_matches(self.preset, list(self.presets), n=1, cutoff=0.6)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise Invalid("preset", f"must name an entry of 'presets' ({', '.join(sorted(self.presets))}); "
                          f"got '{self.preset}'.{hint}")
        return self

    @model_validator(mode="after")
    def _rendered_bins_fit(self):
        sampler = getattr(self.active, "sampler", None)  # (a preset of another method has none)
        if not isinstance(sampler, OccupancySamplerConfig):
            return self
        for key, chunk in (("evaluate.chunk_rays", self.evaluate.chunk_rays),
                           ("render.chunk_rays", self.render.chunk_rays)):
            bins = chunk * sampler.num_march
            if bins > MAX_MARCHED_BINS:
                raise Invalid(key, f"x 'presets.{self.preset}.sampler.num_march' = {chunk} x {sampler.num_march} = "
                              f"{bins} grid bins marched a call; at most {MAX_MARCHED_BINS} (about 6 GiB): lower one "
                              "of them")
        return self

    @model_validator(mode="after")
    def _appearance_needs_an_embedding(self):
        if self.scene.appearance != "on" or self.active.method == "splats":  # (splats: a colour transform a view)
            return self
        field = getattr(self.active, "field", None)
        if field is None:
            raise Invalid("scene.appearance", f"is 'on' but preset '{self.preset}' (method '{self.active.method}') "
                          "has no appearance embedding; use auto or off")
        if field.has_appearance:
            return self
        if getattr(field, "appearance_dim", None) is None:
            raise Invalid("scene.appearance", f"is 'on' but preset '{self.preset}' has a field of type "
                          f"'{field.type}', which has no appearance embedding; use auto or off")
        raise Invalid("scene.appearance", f"is 'on' but 'presets.{self.preset}.field.appearance_dim' is 0; "
                      "give the embedding a size (e.g. 16) or use auto or off")

    @property
    def active(self) -> PresetConfig | SplatsPresetConfig:
        """The preset that trains (``presets[preset]``)."""
        return self.presets[self.preset]

    def used_params(self) -> dict:
        """The params this run uses, flattened (``presets.hashgrid.field.width: 64``), for MLflow:
        every section but the presets that do not train, and ``synthetic`` only for the built-in scene."""
        data = self.model_dump()
        data["presets"] = {self.preset: data["presets"][self.preset]}
        if self.data.source != "synthetic":
            del data["synthetic"]
        return _flatten(data)


# ----------------------------------------------------------------------------- loading


def _flatten(data: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _describe(tp) -> str:
    """What a value of annotation ``tp`` looks like, in words."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return _describe(typing.get_args(tp)[0])
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is Union:
        words = ["null" if a is type(None) else _describe(a) for a in typing.get_args(tp)]
        return " or ".join(dict.fromkeys(words))  # a tagged union's members are all "a mapping"
    if origin is dict or (isinstance(tp, type) and issubclass(tp, BaseModel)):
        return "a mapping"
    return {int: "a whole number", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _tag(model) -> tuple[str, str] | None:
    """A tagged union member's tag key and value (``('type', 'hashgrid')``); None for other sections."""
    for key in ("type", "mode"):
        info = model.model_fields.get(key)
        if info is not None and typing.get_origin(info.annotation) is Literal:
            return key, typing.get_args(info.annotation)[0]
    return None


def _members(annotation) -> dict:
    """A tagged union's members by tag (``{'hashgrid': HashGridFieldConfig, ...}``, ``{'nerf': PresetConfig, ...}``);
    {} for other annotations."""
    if typing.get_origin(annotation) is Annotated:  # (a dict's values keep their Annotated: the presets)
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) is not Union:
        return {}
    members = [m for m in typing.get_args(annotation) if isinstance(m, type) and issubclass(m, Section)]
    return {(_tag(m) or ("method", typing.get_args(m.model_fields["method"].annotation)[0]))[1]: m for m in members}


def _locate(loc: tuple):
    """pydantic's error location → ``(path, model, annotation)``: the key path as written in params.yaml, the
    section that holds its last key and that key's annotation (None for an unknown key). pydantic puts a tagged
    union's chosen tag in the location: that item picks the member, it is not a key."""
    path, model, annotation = [], Config, Config
    for item in loc:
        if item in _members(annotation):
            model = annotation = _members(annotation)[item]
            continue
        if typing.get_origin(annotation) is dict:
            annotation = typing.get_args(annotation)[1]
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model, info = annotation, annotation.model_fields.get(str(item))
            annotation = info.annotation if info is not None else None
        path.append(str(item))
    return ".".join(path), model, annotation


COMPARISONS = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}


def _message(error: dict, source: str) -> str:
    kind, ctx, got = error["type"], error.get("ctx", {}), error["input"]
    path, model, annotation = _locate(error["loc"])
    where = f"'{path}'" if path else "the top level"
    if kind == "extra_forbidden":
        parent, _, key = path.rpartition(".")
        names, tag = list(model.model_fields), _tag(model)
        close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
        if tag:  # a member of a tagged union: say which keys this kind takes
            takes = f" A {parent.rsplit('.', 1)[-1]} of {tag[0]} '{tag[1]}' takes {', '.join(names)}."
        else:
            takes = "" if close else f" Valid keys here: {', '.join(names)}."
        hint = f" Did you mean '{parent + '.' if parent else ''}{close[0]}'?" if close else ""
        return f"{source}: unknown key '{path}'.{takes}{hint}"
    if kind == "missing":
        return f"{source}: missing key '{path}' ({_describe(annotation)})."
    if kind in ("union_tag_not_found", "union_tag_invalid"):
        tag_key, tags = ctx["discriminator"].strip("'"), list(_members(annotation))
        one_of = ", ".join(repr(t) for t in tags)
        if kind == "union_tag_not_found":
            return f"{source}: missing key '{path}.{tag_key}' (one of {one_of})."
        got = got.get(tag_key)
        close = difflib.get_close_matches(str(got), tags, n=1, cutoff=0.6)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        return f"{source}: '{path}.{tag_key}' must be one of {one_of}; got {got!r}.{hint}"
    if kind in COMPARISONS:
        bound = next(iter(ctx.values()))
        bound = bound if isinstance(bound, int) else f"{bound:g}"  # 4194304, not 4.1943e+06
        return f"{source}: {where} must be {COMPARISONS[kind]} {bound}; got {got!r}."
    if kind == "value_error":  # a section's cross-key check
        problem = ctx.get("error")
        if isinstance(problem, Invalid):
            where = f"'{path + '.' if path else ''}{problem.key}'"
        message = str(problem) if problem is not None else error["msg"]
        return f"{source}: {where} {message}" + ("" if message.endswith((".", "?")) else ".")
    if kind in ("too_short", "string_too_short"):
        return f"{source}: {where} must not be empty."
    return f"{source}: {where} must be {_describe(annotation)}; got {got!r}."


def from_dict(data, source: str = DEFAULT_PARAMS) -> Config:
    """Validate a parsed params mapping. Raises ``ConfigError`` (the first problem found)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of keys to values at the top level.")
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        # A misspelt key is both unknown and, under its right name, missing: the unknown one, with its
        # "did you mean", says more.
        errors = sorted(e.errors(), key=lambda error: error["type"] != "extra_forbidden")
        raise ConfigError(_message(errors[0], source)) from None


def load(path=DEFAULT_PARAMS) -> Config:
    """Read and validate params.yaml. Raises ``ConfigError`` naming the file and the key."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read the params file '{path}': {e.strerror}.") from None
    try:
        # YAML 1.2, as DVC reads params.yaml (with ruamel.yaml): 1e-2 is a number, `on` a string, a key
        # given twice is refused. (PyYAML reads YAML 1.1, where 1e-2 is a string and `on` is true.)
        data = YAML(typ="safe").load(text)
    except YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"'{path}' is not valid YAML{at}: {problem}.") from None
    return from_dict(data, str(path))


# ----------------------------------------------------------------------------- saved models


SectionT = TypeVar("SectionT", bound=Section)


def saved_part(cls: type[SectionT], stored: dict) -> SectionT:
    """A model part's config as a saved model stored it (its layer's ``get_config``), read by today's ``cls``.

    Saved models, checkpoints and logged models outlive the config classes: a key ``cls`` gained since
    takes its ``implied_by_older_models`` value, a key it no longer has is dropped, the rest is validated
    as strictly as params.yaml. Raises ``ValueError`` naming a key the saved config lacks that has no
    implied value (Keras, loading a model, wraps it in a ``TypeError``).
    """
    lacking = [key for key in cls.model_fields if key not in stored and key not in cls.implied_by_older_models]
    if lacking:
        raise ValueError(f"the saved {cls.__name__} has no '{lacking[0]}' and {cls.__name__}.implied_by_older_models "
                         "gives no value for models saved before that key")
    kept = {key: value for key, value in stored.items() if key in cls.model_fields}
    return cls.model_validate({**cls.implied_by_older_models, **kept})

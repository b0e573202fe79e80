"""Real captures trained for a wall-clock budget once per params variant: val PSNR/SSIM, each feature on and off.

    python benchmarks/bench_captures.py --data ../shared/data --budget-s 240 \\
        --out benchmarks/results/captures_2core_cpu.json
    python benchmarks/bench_captures.py --data ../shared/data --budget-s 60 --capture beer_colmap \\
        --variant baseline --variant box:scene.contraction=off --out captures.json

The captures (issue 23), found under ``--data``; one that is absent is skipped and said to be:

* ``beer_colmap``: ``beer/`` through its COLMAP model (``sparse/0``), 180×320 (``data.downscale: 4`` of
  720×1280), every 8th view held out (``split.order: every_8th``, LLFF's and mip-NeRF 360's protocol);
* ``beer_video``: ``beer/Beer.mp4``, its frames posed by structure from motion (the poses stage), 71 frames
  taken (as many as ``beer/images`` holds), 180×320, every 8th held out;
* ``stitch``: ``stitch/``, split files with instant-ngp intrinsics, 400×400 (downscale 2), scored on its own
  test split; read from a folder under ``--work`` linking its files, whose ``transforms_val.json`` names
  ``val/`` where the capture's names a ``test/`` folder it does not have (``mended_stitch``; said when done);
* ``turntable``: the chair's 100 training views (``chair/``) at 200×200 composited onto one fixed photo (a
  frame of ``beer/``), a mask per view from the chair's alpha, in nerfstudio's layout with ``mask_path``
  (``turntable``; written under ``--work`` once): an object that turns before a background that does not,
  every 8th view held out and scored on its masks.

Each capture goes through the pipeline's data stages once (``bench_train.prepare_rays``: download, poses
with structure from motion for the video, split, rays), again only for a variant that changes a ``data``,
``poses``, ``split`` or ``synthetic`` key; ``--work`` keeps the rays between runs. A variant is a name and
``KEY=VALUE`` overrides of params.yaml (dotted keys, YAML 1.2 values as DVC reads them), applied after the
capture's own settings and ``--set``; the default list is ``baseline`` (params.yaml as it is) and one variant
per feature in ``FEATURES`` whose keys params.yaml has, each flipping that feature against the default. One
key is the benchmark's own, not params.yaml's: ``bench.train_masks=off`` trains as if the capture had no
masks (scored on them all the same). A variant that, for a capture, trains as an earlier one does (``scene.*``'s
``auto`` resolved; masks off where there are none) is not rerun for it.

Every variant trains as the train stage builds its model (a contracted space for these unbounded captures
under ``scene.contraction: auto``) for ``--budget-s`` s of training time (XLA compilation included, evaluation
excluded), with the learning rate decayed over the budget as ``bench_train`` does; the curve scores
``--curve-views`` held-out views every ``--eval-every-s``; the final figures score every held-out view (PSNR
and SSIM as the evaluate stage computes them, on the kept pixels where the capture has masks) and
``--train-views`` training views (how far val lags train: overfitting; rendered with the mean appearance
embedding). Held-out views are rendered as the evaluate stage renders them, in the appearance of the training
views nearest each (``NeRF.appearance_near``), and scored once more in the mean appearance
(``psnr_mean_appearance``: published protocols' way). The pictures go into ``--pictures`` (default ``WORK/pictures``):
``<capture>-<variant>-heldout.png`` (3 held-out views: truth | rendered, masked-out pixels darkened) and
``<capture>-<variant>-video.png`` (frames 0, 30, 60, 90 of the camera path the render stage takes), and for
the variants trained on the same rays ``<capture>-heldout-<variant>-<variant>….png`` (truth | each variant: the
NeRF beside splats with ``--variant splats:preset=splats``). The JSON is
rewritten after each
variant, so an interrupted run keeps what it measured; a markdown table is printed at the end. Nothing here
asserts a figure.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import nerf_pipeline.runtime.quiet  # noqa: F401  first: TensorFlow's start-up noise filtered, as in stages

import keras
import numpy as np

from nerf_pipeline import config, media, methods, scoring
from nerf_pipeline.benchmarking import (BudgetRecorder, Horizon, cpu_s, eval_schedule, machine, peak_rss_mb,
                                        prepare_rays, read_yaml, set_key)
from nerf_pipeline.methods import Camera
from nerf_pipeline.render_paths import fitted_path
from nerf_pipeline.runtime import atomic
from nerf_pipeline.runtime.errors import UserError
from nerf_pipeline.scenes import ray_files
from nerf_pipeline.scenes.scene import evenly_spread
from nerf_pipeline.training import datasets


def mended_stitch(data: Path, work: Path) -> Path:
    """``stitch/`` as its README describes it: its ``transforms_val.json`` names ``./test/NNNN``, a folder the
    capture does not have; the same frames are in ``val/`` (the README: the test split, the source's val
    frames, points at ``val/``). A folder under ``work`` linking the capture's files, with a val file naming
    ``val/``; the capture itself is left as it is."""
    source, folder = data / "stitch", work / "stitch_source"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for path in source.iterdir():  # anything else as it is: the download stage judges it
        if path.name != "transforms_val.json":
            (folder / path.name).symlink_to(path.resolve())
    val, mended = source / "transforms_val.json", 0
    try:
        meta = json.loads(val.read_text())
        frames = list(meta["frames"])
    except (OSError, ValueError, KeyError, TypeError):  # absent or broken: left for the download stage to refuse
        if val.exists():
            (folder / val.name).symlink_to(val.resolve())
        return folder
    for frame in frames:
        path = str(frame.get("file_path", "")) if isinstance(frame, dict) else ""
        named = path[2:] if path.startswith("./") else path
        if named.startswith("test/") and not list(source.glob(named + "*")) and list(
                source.glob("val/" + named[len("test/"):] + "*")):
            frame["file_path"], mended = "./val/" + named[len("test/"):], mended + 1
    atomic.write_text(folder / val.name, json.dumps(meta, indent=1))
    if mended:
        print(f"[stitch] {source / 'transforms_val.json'} names ./test/ for {mended} frames that are in val/ "
              f"(stitch has no test/ folder): reading a copy naming val/, {folder}", flush=True)
    return folder


TURNTABLE_SIDE = 200  # the chair's 800x800 views averaged in 4x4 blocks


def turntable(data: Path, work: Path, side: int = TURNTABLE_SIDE, split: str = "train") -> Path:
    """A turntable capture made from the chair (issue 23's recipe): its 100 training views (``split``: or its
    200 test views, which circle it in order) at ``side`` x ``side``, composited onto one fixed photo (a frame
    of beer/, the same in every view, as the wall behind an object that turns on a table), a mask per view from
    the chair's alpha (kept where alpha > 1/2), in nerfstudio's layout (``transforms.json`` with a ``mask_path``
    per frame)."""
    import imageio.v3 as iio

    folder = work / "turntable_source"
    if (folder / "transforms.json").is_file():
        return folder
    meta = json.loads((data / "chair" / f"transforms_{split}.json").read_text())
    photo = np.asarray(iio.imread(data / "beer" / "images" / "0000.jpg"), np.float32) / 255.0  # 1280x720
    top = (photo.shape[0] - photo.shape[1]) // 2
    photo = photo[top:top + photo.shape[1]]  # the middle square
    block = photo.shape[0] // side
    photo = photo[:block * side, :block * side].reshape(side, block, side, block, 3).mean((1, 3))
    scratch = work / "turntable_source.partial"
    shutil.rmtree(scratch, ignore_errors=True)
    (scratch / "images").mkdir(parents=True)
    (scratch / "masks").mkdir()
    frames = []
    for frame in meta["frames"]:
        rgba = np.asarray(iio.imread(data / "chair" / (frame["file_path"].lstrip("./") + ".png")), np.float32) / 255.0
        block = rgba.shape[0] // side
        # over the photo as alpha says, averaged in blocks: premultiplied first (the colour of a transparent
        # pixel is not the scene's; NeRF-synthetic's are black)
        rgba[..., :3] *= rgba[..., 3:]
        rgba = rgba[:block * side, :block * side].reshape(side, block, side, block, 4).mean((1, 3))
        alpha = rgba[..., 3:]
        rgb = rgba[..., :3] + photo * (1.0 - alpha)
        stem = Path(frame["file_path"]).name
        iio.imwrite(scratch / "images" / f"{stem}.png", np.round(rgb * 255).astype(np.uint8))
        iio.imwrite(scratch / "masks" / f"{stem}.png", np.where(alpha[..., 0] > 0.5, 255, 0).astype(np.uint8))
        frames.append({"file_path": f"images/{stem}.png", "mask_path": f"masks/{stem}.png",
                       "transform_matrix": frame["transform_matrix"]})
    atomic.write_text(scratch / "transforms.json", json.dumps({"camera_angle_x": meta["camera_angle_x"],
                                                               "frames": frames}, indent=1))
    shutil.rmtree(folder, ignore_errors=True)
    scratch.rename(folder)
    print(f"[turntable] wrote {len(frames)} views of {side}x{side} with masks to {folder}",
          flush=True)
    return folder


@dataclass(frozen=True)
class Capture:
    name: str
    source: str  # relative to --data (or, with ``build``, to the folder it makes)
    present: tuple[str, ...]  # files or folders (relative to --data) whose absence skips the capture
    sets: tuple[str, ...]  # its own params (resolution, split), before --set and the variant's
    about: str
    build: Optional[Callable[[Path, Path], Path]] = None  # (data, work) -> the folder ``source`` is in


CAPTURES = (
    Capture("beer_colmap", "beer", ("beer/sparse/0",), ("data.downscale=4", "split.order=every_8th"),
            "beer/ through its COLMAP model, 180x320, every 8th view held out"),
    Capture("beer_video", "beer/Beer.mp4", ("beer/Beer.mp4",),
            ("data.downscale=4", "split.order=every_8th", "data.max_frames=71"),
            "beer/Beer.mp4, poses by structure from motion, 71 frames, 180x320, every 8th held out"),
    Capture("stitch", ".", ("stitch/transforms_train.json",), ("data.downscale=2",),
            "stitch/ split files (instant-ngp intrinsics), 400x400, its own test split", build=mended_stitch),
    Capture("turntable", ".", ("chair/transforms_train.json", "beer/images/0000.jpg"), ("split.order=every_8th",),
            "the chair's 100 training views on one fixed photo, masks from alpha, 200x200, every 8th held out",
            build=turntable),
)

# Not params.yaml keys: switches of this benchmark, in a variant like a key (``no_masks:bench.train_masks=off``).
BENCH_KEYS = {"bench.train_masks": ("on", "off")}  # off: train as if the capture had no masks (scored on them)

# Features of issue 23 and the overrides that flip each against params.yaml's default; a feature is in the
# default variant list when params.yaml has every key it names (so the script runs before and after each lands).
FEATURES = {
    "no_appearance": ("scene.appearance=off",),  # on for captures by default (auto)
    "camera_refinement": ("scene.camera_refinement=auto",),  # off by default; auto: on for captures
    "distortion": ("presets.hashgrid.distortion_weight=0.002",),  # off by default; nerfacto's weight
    "box": ("scene.contraction=off",),  # contraction is on for captures by default (auto)
    "no_candidates": ("presets.hashgrid.batch.candidate_factor=1",),  # rays through occupied space first: off
    "no_masks": ("bench.train_masks=off",),  # masks are used where a capture has them; run only on those
}

PREP_SECTIONS = ("data", "poses", "split", "synthetic")  # what the data stages read: a change re-prepares


def has_key(params: dict, dotted: str) -> bool:
    for key in dotted.split("."):
        if not isinstance(params, dict) or key not in params:
            return False
        params = params[key]
    return True


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``NAME`` or ``NAME:KEY=VALUE,KEY=VALUE`` -> ``(name, ["KEY=VALUE", ...])``. (A value holding a comma
    is not supported: no key of params.yaml needs one.)"""
    name, _, overrides = text.partition(":")
    sets = [item.strip() for item in overrides.split(",") if item.strip()]
    if not name or any("=" not in item for item in sets):
        raise UserError(f"--variant {text!r}: expected NAME or NAME:KEY=VALUE,KEY=VALUE, "
                        "e.g. box:scene.contraction=off")
    return name, sets


def configured(params: dict, source: str, sets: list[str], params_path: str) -> config.Config:
    """A copy of ``params`` reading ``source``, each ``KEY=VALUE`` applied, validated. An unknown key is refused
    naming it."""
    params = json.loads(json.dumps(params))
    params["data"]["source"] = source  # (not through YAML: a path may hold ': ' or '#')
    for item in sets:
        key, _, value = item.partition("=")
        if key in BENCH_KEYS:
            if value not in BENCH_KEYS[key]:
                raise UserError(f"{item}: {key} takes {' or '.join(BENCH_KEYS[key])}")
            continue  # read by bench_capture
        if not has_key(params, key):
            raise UserError(f"{item}: {params_path} has no key '{key}'")
        set_key(params, key, read_yaml(value, f"the value of {key} in {item!r}"))
    return config.from_dict(params, params_path)


def default_variants(params: dict) -> list[tuple[str, list[str]]]:
    return [("baseline", [])] + [(name, list(sets)) for name, sets in FEATURES.items()
                                 if all(has_key(params, item.partition("=")[0]) or item.partition("=")[0] in BENCH_KEYS
                                        for item in sets)]


def bench_value(sets, key: str) -> str:
    """The value ``sets`` give the benchmark's own ``key`` (the first of ``BENCH_KEYS[key]`` if none)."""
    values = [item.partition("=")[2] for item in sets if item.partition("=")[0] == key]
    return values[-1] if values else BENCH_KEYS[key][0]


def prep_key(cfg: config.Config) -> str:
    """What the data stages read from ``cfg``, hashed: variants that agree on it share the rays."""
    sections = {name: getattr(cfg, name).model_dump(mode="json") for name in PREP_SECTIONS}
    return hashlib.sha256(json.dumps(sections, sort_keys=True).encode()).hexdigest()[:12]


def prepared_rays(cfg: config.Config, capture: Capture, work: Path) -> tuple[Path, dict]:
    """The rays folder of ``cfg``'s data under ``work`` (made by the data stages unless there from an earlier
    run) and what preparing it measured."""
    folder = work / f"{capture.name}-{prep_key(cfg)}"
    done = folder / "prepared.json"
    if done.is_file():
        print(f"[{capture.name}] reusing the rays in {folder}", flush=True)
        return folder / "rays", json.loads(done.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="stages-", dir=folder) as scratch:  # the full-size scene goes
        rays = prepare_rays(cfg, Path(scratch))
        with np.load(Path(scratch) / "cameras.npz") as cameras:
            registered = cameras["registered"] if "registered" in cameras.files else None
            views = int(len(cameras["poses"]))
        if (folder / "rays").exists():  # left by a run that stopped before prepared.json
            shutil.rmtree(folder / "rays")
        rays.rename(folder / "rays")
    prep = {"prepare_s": round(time.perf_counter() - start, 1), "views": views,
            "registered": views if registered is None else int(np.count_nonzero(registered))}
    atomic.write_json(done, prep)
    return folder / "rays", prep


def scores(method, part, views) -> tuple[float, float]:
    """Mean PSNR and SSIM of ``views`` of ``part`` as ``method`` renders them (``scoring.score_views``: the
    evaluate stage's metrics, masked where the part has masks)."""
    rows = scoring.score_views(method, part, views)
    return float(np.mean([row["psnr"] for row in rows])), float(np.mean([row["ssim"] for row in rows]))


PICTURE_VIEWS = 3  # held-out views shown, evenly spread
PICTURE_FRAMES = (0, 30, 60, 90)  # frames of the render stage's camera path shown (of render.num_frames)


def heldout_renders(method, heldout_part) -> list[np.ndarray]:
    """``PICTURE_VIEWS`` held-out views (evenly spread) as ``method`` renders them (evaluate's way), uint8, with
    masks the dropped pixels darkened; the truth's first when ``method`` is None."""
    shown = []
    for view in evenly_spread(heldout_part.num_views, PICTURE_VIEWS):
        rgb = heldout_part.view_rgb(int(view)) if method is None else method.render(
            Camera.of_view(heldout_part, int(view)))["rgb"]
        kept = heldout_part.view_mask(int(view))
        shown.append(media.to_uint8(rgb * (1.0 if kept is None else np.where(kept, 1.0, 0.35)[..., None])))
    return shown


def write_pictures(cfg: config.Config, method, heldout_part, stem: Path) -> tuple[list[str], list[np.ndarray]]:
    """What to look at: ``<stem>-heldout.png`` (rows of held-out views: truth | rendered; with masks, the
    dropped pixels darkened in both) and ``<stem>-video.png`` (frames of the camera path the render stage
    takes, side by side), rendered by ``method`` as evaluate and render do. Returns the files written and the
    held-out renders (``heldout_renders``)."""
    truth, rendered = heldout_renders(None, heldout_part), heldout_renders(method, heldout_part)
    rows = [np.concatenate([a, b], axis=1) for a, b in zip(truth, rendered)]
    # the render stage's path (of the held-out views' size and lens), on the cameras as trained
    render = cfg.render.model_copy(update={"width": None, "height": None})
    path, lenses, height, width, _ = fitted_path(render, method, np.concatenate([method.training_poses(),
                                                                                heldout_part.poses]), heldout_part)
    frames = [media.to_uint8(method.render(Camera(path[i], lenses[i], height, width))["rgb"])
              for i in PICTURE_FRAMES if i < len(path)]
    stem.parent.mkdir(parents=True, exist_ok=True)
    media.write_png(Path(f"{stem}-heldout.png"), np.concatenate(rows, axis=0))
    media.write_png(Path(f"{stem}-video.png"), np.concatenate(frames, axis=1))
    return [f"{stem}-heldout.png", f"{stem}-video.png"], rendered


def write_side_by_side(heldout_part, renders: dict, path: Path) -> str:
    """``path``: the held-out views of ``heldout_renders``, one row each: truth | each variant's render, in the
    order of ``renders`` (variant name -> renders)."""
    columns = [heldout_renders(None, heldout_part), *renders.values()]
    media.write_png(path, np.concatenate([np.concatenate(row, axis=1) for row in zip(*columns)], axis=0))
    return str(path)


def train_variant(cfg: config.Config, name: str, train_part, heldout_part, budget_s: float, every_s: float,
                  curve_views: int, train_views: int, pictures: Path, train_masks: bool = True
                  ) -> tuple[dict, list[np.ndarray]]:
    """Train ``cfg``'s preset for ``budget_s`` s of training time; its curve and final figures, and its renders
    of the pictures' held-out views (``heldout_renders``). ``train_masks``
    False: trained as if ``train_part`` had no masks (scored, like held-out views, on the pixels they keep)."""
    trained_part = train_part
    if not train_masks:
        trained_part = copy.copy(train_part)
        trained_part.masks = None
    datasets.check_batch(cfg, train_part.num_views, train_part.num_views * train_part.height * train_part.width)
    keras.utils.set_random_seed(cfg.seed)
    # as the train stage builds it (the method decides contraction, an appearance embedding, camera refinement)
    method = methods.build(cfg, train_part)
    built = method.tracking_params()
    psnr_key = f"{heldout_part.part}_psnr"
    curve_subset = evenly_spread(heldout_part.num_views, curve_views)
    as_given = method.with_training_poses(train_part.poses)  # (the curve's: as given; the final figures' as trained)
    recorder = BudgetRecorder(lambda: scores(as_given, heldout_part, curve_subset)[0],
                              eval_schedule(budget_s, every_s), budget_s, Horizon(method, budget_s),
                              psnr_key=psnr_key)
    print(f"  [{name}] training {method.name} for {budget_s:.0f} s {method.describe()}", flush=True)
    fit_start, cpu_start = time.perf_counter(), cpu_s()
    method.fit(trained_part, epochs=1, steps_per_epoch=10**9, total_steps=10**6, seed=cfg.seed, callbacks=[recorder])
    train_s = recorder.train_s()
    fit = {"wall_s": round(time.perf_counter() - fit_start, 1), "cpu_s": round(cpu_s() - cpu_start, 1)}
    start = time.perf_counter()
    trained = method.with_training_poses(method.training_poses())  # the poses as trained, computed once
    heldout_psnr, heldout_ssim = scores(trained, heldout_part, range(heldout_part.num_views))
    # the same model, held-out views in the mean appearance (what validation and renders took before)
    mean = method.with_training_poses(None)
    with_appearance = built.get("model.appearance_embedding") == "on"
    mean_psnr, mean_ssim = (heldout_psnr, heldout_ssim) if not with_appearance else scores(
        mean, heldout_part, range(heldout_part.num_views))
    train_psnr, train_ssim = scores(mean, train_part, evenly_spread(train_part.num_views, train_views))
    final_eval_s = time.perf_counter() - start
    shown, rendered = write_pictures(cfg, trained, heldout_part, pictures)
    print(f"  [{name}] {recorder.step} steps in {train_s:.0f} s: {heldout_part.part} PSNR {heldout_psnr:.2f} dB, "
          f"SSIM {heldout_ssim:.3f}; train PSNR {train_psnr:.2f} dB (evaluated in {final_eval_s:.0f} s)", flush=True)
    return {"curve": recorder.curve, "curve_views": [int(v) for v in curve_subset],
            "method": method.name, "built": built, "contracted": built.get("model.space") == "contracted",
            "appearance": with_appearance, "camera_refinement": built.get("model.camera_refinement") == "on",
            "masks": trained_part.masks is not None,
            "camera_corrections": method.training_figures().get("camera_refinement"),
            "final": {"split": heldout_part.part, "num_views": heldout_part.num_views,
                      "psnr": round(heldout_psnr, 3), "ssim": round(heldout_ssim, 4),
                      "psnr_mean_appearance": round(mean_psnr, 3), "ssim_mean_appearance": round(mean_ssim, 4),
                      "masked": heldout_part.masks is not None,
                      "train_psnr": round(train_psnr, 3), "train_ssim": round(train_ssim, 4),
                      "train_views_scored": min(train_views, train_part.num_views),
                      "wall_s": round(train_s, 2), "steps": recorder.step, "eval_s": round(final_eval_s, 1)},
            "steps_per_s": round(recorder.step / train_s, 3), "eval_s_total": round(recorder.eval_s, 2),
            "peak_rss_mb": round(peak_rss_mb(), 1), "pictures": shown,
            # fit: CPU seconds per wall second well below the cores: the process was starved or stopped
            "fit": fit}, rendered


def bench_capture(capture: Capture, variants, plans: dict, work: Path, pictures: Path, args, summary: dict,
                  write) -> None:
    """Every variant of ``capture`` (``plans``: its params per variant name) into ``summary["captures"]``."""
    entry, trained, renders = None, {}, {}  # renders: prepare key -> (held-out part, variant -> renders)
    for name, sets in variants:
        cfg = plans[name]
        rays, prep = prepared_rays(cfg, capture, work)
        train_part, heldout_part = ray_files.load(rays, "train"), ray_files.evaluation_part(rays, cfg.evaluate.split)
        train_masks = bench_value(sets, "bench.train_masks") == "on"
        # What the variant trains, with scene.*'s auto resolved for this capture: one that trains as an
        # earlier variant did (e.g. camera refinement under auto, for a capture that gets none) is not rerun.
        trains = json.dumps([cfg.model_dump(mode="json", exclude={"scene"}), cfg.scene.bound,
                             methods.plan(cfg, train_part), train_masks or train_part.masks is None],
                            sort_keys=True)
        same = next((earlier for earlier, what in trained.items() if what == trains), None)
        if same is not None:
            print(f"  [{name}] not run: for {capture.name} it trains as {same} does", flush=True)
            continue
        trained[name] = trains
        if entry is None:
            entry = summary["captures"][capture.name] = {
                "source": cfg.data.source, "sets": list(capture.sets), "about": capture.about, "prepare": prep,
                "near_far": [train_part.near, train_part.far], "variants": {}}
            print(f"[{capture.name}] {train_part.num_views} train views, scored on {heldout_part.num_views} "
                  f"{heldout_part.part} views of {heldout_part.width}x{heldout_part.height}", flush=True)
        result, rendered = train_variant(cfg, name, train_part, heldout_part, args.budget_s, args.eval_every_s,
                                         args.curve_views, args.train_views, pictures / f"{capture.name}-{name}",
                                         train_masks)
        entry["variants"][name] = {"set": sets, "prepare_key": prep_key(cfg), "size": [heldout_part.height,
                                   heldout_part.width], "split": {"train": train_part.num_views,
                                   heldout_part.part: heldout_part.num_views}, **result}
        renders.setdefault(prep_key(cfg), (heldout_part, {}))[1][name] = rendered
        write()
    # the variants side by side on the same held-out views (those trained on the same rays)
    for heldout_part, rendered in renders.values():
        if len(rendered) > 1:
            path = pictures / f"{capture.name}-heldout-{'-'.join(rendered)}.png"
            entry.setdefault("side_by_side", []).append(
                {"variants": ["truth", *rendered], "picture": write_side_by_side(heldout_part, rendered, path)})
            write()


def markdown_table(summary: dict) -> str:
    """One row per capture and variant: held-out PSNR/SSIM, the change against the capture's baseline."""
    rows = ["| capture | width×height | train / held-out views | variant | on | held-out PSNR (dB) | SSIM "
            "| Δ PSNR vs baseline | train PSNR (dB) | steps |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, capture in summary["captures"].items():
        base = capture["variants"].get("baseline", {}).get("final", {}).get("psnr")
        for variant, result in capture["variants"].items():
            final = result["final"]
            delta = "" if base is None or variant == "baseline" else f"{final['psnr'] - base:+.2f}"
            views = f"{result['split']['train']} / {result['split'][final['split']]} ({final['split']})"
            on = ", ".join(feature for feature in ("contracted", "appearance", "camera_refinement", "masks")
                           if result.get(feature)) or "—"
            rows.append(f"| {name} | {result['size'][1]}×{result['size'][0]} | {views} | {variant} | {on} | "
                        f"{final['psnr']:.2f} | {final['ssim']:.3f} | {delta} | {final['train_psnr']:.2f} | "
                        f"{final['steps']} |")
    for name, reason in [*summary["skipped"].items(), *summary["failed"].items()]:
        rows.append(f"| {name} | | | {'skipped' if name in summary['skipped'] else 'failed'}: {reason} | | | | | | |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--data", required=True,
                        help="the folder holding beer/, stitch/ and chair/, e.g. ../shared/data")
    parser.add_argument("--capture", action="append", default=None, choices=[c.name for c in CAPTURES],
                        help="only these captures (repeatable; default: all)")
    parser.add_argument("--variant", action="append", default=None, metavar="NAME[:KEY=VALUE,...]",
                        help="a variant to train (repeatable; default: baseline and each feature of FEATURES "
                             "whose keys params.yaml has), e.g. box:scene.contraction=off")
    parser.add_argument("--budget-s", type=float, required=True, help="training wall-clock budget per variant")
    parser.add_argument("--eval-every-s", type=float, default=60.0, help="a curve point every this many seconds")
    parser.add_argument("--curve-views", type=int, default=3, help="held-out views each curve point scores")
    parser.add_argument("--train-views", type=int, default=4, help="training views the final train PSNR scores")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="change a params.yaml key for every capture and variant, after the capture's own")
    parser.add_argument("--work", default=None,
                        help="keep the prepared rays here and reuse them in later runs (default: a temporary folder)")
    parser.add_argument("--pictures", default=None,
                        help="write each variant's held-out views and video frames (PNG) here (default: WORK/pictures)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="    %(message)s")  # the stages' own lines (SfM, split, …)
    for noisy in ("absl", "tensorflow", "h5py", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    try:
        params_text = Path(args.params).read_text()
    except OSError as e:
        raise UserError(f"cannot read the params file '{args.params}': {e.strerror}") from None
    params = read_yaml(params_text, args.params)
    variants = [parse_variant(v) for v in args.variant] if args.variant else default_variants(params)
    names = [name for name, _ in variants]
    if len(set(names)) != len(names):
        raise UserError(f"--variant: each variant needs its own name; got {', '.join(names)}")
    data = Path(args.data)
    if not data.is_dir():
        raise UserError(f"--data {data}: not a folder (expected the one holding beer/, stitch/ and chair/)")
    captures = [c for c in CAPTURES if args.capture is None or c.name in args.capture]
    out = Path(args.out)
    summary = {"data": str(data), "machine": machine(), "params": args.params, "set": args.set,
               "budget_s": args.budget_s, "variants": {name: sets for name, sets in variants},
               "captures": {}, "skipped": {}, "failed": {}}

    def write() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(out, json.dumps(summary, indent=1) + "\n")

    scratch = None if args.work else tempfile.TemporaryDirectory(prefix="nerf-bench-captures-")
    work = Path(args.work or scratch.name)
    work.mkdir(parents=True, exist_ok=True)
    pictures = Path(args.pictures) if args.pictures else work / "pictures"
    plans = {}
    for capture in captures:
        missing = [(data / path).as_posix() for path in capture.present if not (data / path).exists()]
        if missing:
            reason = f"{', '.join(missing)} not found"
            print(f"[{capture.name}] skipped: {reason}", flush=True)
            summary["skipped"][capture.name] = reason
            continue
        source = (capture.build(data, work) if capture.build else data) / capture.source
        # Every variant's params are checked before anything trains, so a typo fails in a second, not an hour in.
        plans[capture.name] = {name: configured(params, source.as_posix(), [*capture.sets, *args.set, *sets],
                                                args.params) for name, sets in variants}
    for capture in captures:
        if capture.name not in plans:
            continue
        print(f"[{capture.name}] {capture.about}", flush=True)
        try:
            bench_capture(capture, variants, plans[capture.name], work, pictures, args, summary, write)
        except UserError as e:  # e.g. structure from motion registers too few frames: the other captures still run
            print(f"[{capture.name}] failed: {e}", flush=True)
            summary["failed"][capture.name] = str(e)
            write()
    write()
    table = markdown_table(summary)
    print(table)
    print(f"wrote {out}")


if __name__ == "__main__":
    try:
        main()
    except UserError as e:  # a missing params key, a malformed variant, a bad capture: one line, no traceback
        sys.exit(f"error: {e}")

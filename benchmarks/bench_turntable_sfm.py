"""Structure from motion on a turntable capture, with its masks and without: how many views register, how
well, in what time (issue 30.9).

    python benchmarks/bench_turntable_sfm.py --data ../shared/data --side 400 \\
        --out benchmarks/results/turntable_sfm_2core_cpu.json

The capture is ``bench_captures.py``'s turntable (the chair's views composited onto one fixed photo, a mask per
view from the chair's alpha), made under ``--work`` at ``--side`` pixels from its test views, which circle the
chair in order as a turntable turns it (every ``--every``th), or its training views (``--split train``: 100
from random points of the upper hemisphere, wide apart for matching); only its images
(and, for the masked run, its masks) go to ``sfm.reconstruct``, as the poses stage gives a folder of photos
with ``masks/`` and no poses file. Each run is scored against the chair's true poses: the registered views'
camera centres after the least-squares similarity that best maps them onto the truth (``camera.align_similarity``;
the error is given as a fraction of the cameras' distance from the object), their rotation error after it, and the
focal length against the truth. Figures are printed and written to ``--out``; nothing here asserts a figure.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import nerf_pipeline.runtime.quiet  # noqa: F401  first: start-up noise filtered, as in stages

import numpy as np  # noqa: E402
from bench_captures import turntable  # noqa: E402  (this folder's: python puts a script's folder on the path)

from nerf_pipeline import camera  # noqa: E402
from nerf_pipeline.benchmarking import machine  # noqa: E402
from nerf_pipeline.errors import DataError  # noqa: E402
from nerf_pipeline.runtime import atomic  # noqa: E402
from nerf_pipeline.scenes import sfm  # noqa: E402


def rotation_error_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The angle of ``a @ b.T`` for rotations ``[N, 3, 3]``, in degrees."""
    cosine = (np.trace(a @ np.swapaxes(b, 1, 2), axis1=1, axis2=2) - 1.0) / 2.0
    return np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0)))


def scored(result: sfm.Reconstruction, names: list[str], truth: np.ndarray, focal: float) -> dict:
    """A reconstruction against the true poses ``truth [V, 4, 4]`` of the views ``names``."""
    index = [names.index(name) for name in result.names]
    true_poses, found = truth[index], result.camera_to_world
    figures = {"registered": len(result.names), "of": len(names), "stats": result.stats,
               "focal_px": float(result.intrinsics[0]), "true_focal_px": focal}
    if len(index) >= 3:
        scale, rotation, translation = camera.align_similarity(found[:, :3, 3], true_poses[:, :3, 3])
        centres = scale * found[:, :3, 3] @ rotation.T + translation
        distance = float(np.median(np.linalg.norm(true_poses[:, :3, 3], axis=1)))
        centre_error = np.linalg.norm(centres - true_poses[:, :3, 3], axis=1) / distance
        angles = rotation_error_deg(rotation @ found[:, :3, :3], true_poses[:, :3, :3])
        figures.update({"centre_error_of_distance": {"median": float(np.median(centre_error)),
                                                     "max": float(centre_error.max())},
                        "rotation_error_deg": {"median": float(np.median(angles)), "max": float(angles.max())}})
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--data", required=True, help="the folder holding chair/ and beer/ (../shared/data)")
    parser.add_argument("--side", type=int, default=400, help="the turntable's views are side x side pixels")
    parser.add_argument("--split", default="test", choices=("train", "test"),
                        help="the chair's views made into the capture: test (200 views circling it in order, as a "
                             "turntable turns) or train (100 from random points of the upper hemisphere)")
    parser.add_argument("--every", type=int, default=2, help="take every this many of them (test: 2, 100 views)")
    parser.add_argument("--matcher", default="exhaustive", choices=sfm.MATCHERS,
                        help="as poses.matcher: photos are matched exhaustively")
    parser.add_argument("--work", default=None, help="where the capture and COLMAP's files go (default: a temporary "
                                                     "folder)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    data = Path(args.data)
    if not ((data / "chair" / f"transforms_{args.split}.json").is_file() and (data / "beer" / "images").is_dir()):
        print(f"skipped: {data} has no chair/transforms_{args.split}.json and beer/images/ to make the turntable from")
        return
    scratch = None if args.work else tempfile.TemporaryDirectory(prefix="turntable-sfm-")
    work = Path(args.work or scratch.name) / f"{args.split}-side{args.side}"
    folder = turntable(data, work, args.side, args.split)
    meta = json.loads((folder / "transforms.json").read_text())
    meta["frames"] = meta["frames"][::args.every]
    images = [folder / frame["file_path"] for frame in meta["frames"]]
    masks = [folder / frame["mask_path"] for frame in meta["frames"]]
    truth = np.array([frame["transform_matrix"] for frame in meta["frames"]], np.float64)
    focal = 0.5 * args.side / np.tan(0.5 * meta["camera_angle_x"])
    names = [path.name for path in images]

    out = Path(args.out)
    summary = {"machine": machine(), "capture": f"turntable of the chair's {args.split} views (every {args.every}), "
                                                f"{len(images)} views of {args.side}px",
               "matcher": args.matcher, "runs": {}}
    for label, mask_paths in (("with masks", masks), ("without masks", None)):
        print(f"[{label}] structure from motion on {len(images)} views …", flush=True)
        start = time.perf_counter()
        try:
            result = sfm.reconstruct(images, work / label.replace(" ", "_"), args.matcher, max_image_side=1600,
                                     log=lambda line: print(f"  {line}", flush=True), mask_paths=mask_paths)
            figures = scored(result, names, truth, focal)
        except DataError as e:
            figures = {"registered": 0, "of": len(images), "failed": str(e)}
        figures["seconds"] = round(time.perf_counter() - start, 1)
        summary["runs"][label] = figures
        print(json.dumps({k: v for k, v in figures.items() if k != "stats"}, indent=1), flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(out, json.dumps(summary, indent=1) + "\n")  # after each run: a stopped one keeps the first
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

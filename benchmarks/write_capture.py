"""Write a large capture of the built-in scene, for the memory and speed benchmarks of real resolutions.

    python benchmarks/write_capture.py --out /tmp/capture_1080p --views 300 --width 1920 --height 1080

An instant-ngp ``transforms.json`` (the pipeline normalises its poses) with JPEG frames (quality 95)
in ``images/``, cameras on the upper hemisphere 4 units from the scene, looking at it, with a
phone-like field of view (fx = 0.8 × width). Rendering is the built-in analytic ray tracer, about
0.4 M rays/s on one core: 300 frames of 1920×1080 take about half an hour.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import nerf_pipeline.runtime.quiet  # noqa: F401  first: TensorFlow's start-up noise filtered, as in stages

import imageio.v3 as iio
import numpy as np

from nerf_pipeline import camera
from nerf_pipeline.scenes import synthetic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--views", type=int, default=300)
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    intrinsics = [0.8 * args.width, 0.8 * args.width, args.width / 2, args.height / 2]
    poses = camera.hemisphere_poses(args.views, 4.0, args.seed)
    (args.out / "images").mkdir(parents=True, exist_ok=True)
    frames, start = [], time.perf_counter()
    for i, pose in enumerate(poses):
        rgb, _ = synthetic.trace(*camera.generate_rays(pose, args.height, args.width, intrinsics))
        name = f"images/frame_{i:04d}.jpg"
        iio.imwrite(args.out / name, (rgb * 255 + 0.5).astype(np.uint8), quality=95)
        frames.append({"file_path": name, "transform_matrix": pose.tolist()})
        print(f"\r{i + 1}/{args.views} frames, {time.perf_counter() - start:.0f} s", end="", file=sys.stderr,
              flush=True)
    fx, fy, cx, cy = intrinsics
    meta = {"fl_x": fx, "fl_y": fy, "cx": cx, "cy": cy, "w": args.width, "h": args.height, "aabb_scale": 1,
            "frames": frames}
    (args.out / "transforms.json").write_text(json.dumps(meta))
    print(f"\nwrote {args.out}: {args.views} frames of {args.width}x{args.height}", file=sys.stderr)


if __name__ == "__main__":
    main()

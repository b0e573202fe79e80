"""The Gaussian-splat rasterizer: the native op against its TensorFlow-ops reference, and the op on a full view.

    python benchmarks/bench_splat_rasterizer.py [--repeats 10] [--reference-repeats 2] [--large-repeats 3]
                                                [--skip-small] [--skip-large] [--model FOLDER [--frames 10]]
                                                [--out FILE.json]

Scenes: random Gaussians in the box [-1.5, 1.5]^3 seen from 4 units away by a camera like the NeRF-synthetic
chair's (fx = fy = 1111 at 800 x 800, scaled with the image), opacities uniform in [0.1, 0.9], random colours,
a white background, random rotations and scales log-uniform in a range that makes splats of a few to a few tens
of pixels:
  * small: 128 x 128, 5 k Gaussians (scales 0.02 to 0.08): the op against the reference (TensorFlow's ops,
    traced, and XLA-compiled: every Gaussian against every pixel);
  * large: 800 x 800, 300 k Gaussians (scales 0.005 to 0.02): the op alone, each Gaussian bounded by its
    ellipse's box (the default) and by its square (``rasterize(..., ellipses=False)``: the same images);
  * frame: the same 300 k Gaussians with degree-3 colours, rendered whole through the method
    (``SplatsMethod.render``: projection, colours, the op, depth along the rays), with the projection and colours
    by the native op (a trained model's frames, where it is built), as one XLA computation (without it; its
    compilation given apart) and op by op (as during training without it);
  * model (``--model FOLDER``, a trained model folder, e.g. ``bench_train.py --save-models``'s): ``--frames``
    frames of the Keras example's orbit (radius 4, 30° up) at 800 x 800 and the chair's focal length through
    ``methods.load(FOLDER).render`` (projection by the native op, then by XLA), then the parts of the first:
    projection and colours (native, XLA) and the rasterizer op's forward, with ellipses and with squares.
Times in milliseconds, the median of the repeats, of the rasterizer alone (the projection is done once,
beforehand) but in the frame section: forward (what rendering asks), and forward plus the gradient with respect
to the 2D means, conics, colours, opacities and depths (what training asks); the op's with this machine's
intra-op threads.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import nerf_pipeline.runtime.quiet  # noqa: F401  first: TensorFlow's start-up noise filtered, as in stages

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from nerf_pipeline import camera as camera_math  # noqa: E402
from nerf_pipeline import methods  # noqa: E402
from nerf_pipeline.methods import Camera  # noqa: E402
from nerf_pipeline.splats import gaussians  # noqa: E402
from nerf_pipeline.splats import rasterizer as splats  # noqa: E402
from nerf_pipeline.splats.method import SplatsMethod  # noqa: E402


def make_scene(size: int, count: int, scales: tuple[float, float], seed: int = 0):
    """Rasterizer inputs (means2d, conics, colours, opacities, depths, radii), the camera and the background."""
    rng = np.random.default_rng(seed)
    focal = 1111.0 * size / 800
    camera = splats.Camera.from_focal(camera_math.look_at([0.0, -4.0, 1.0]), focal, size, size)
    means = tf.constant(rng.uniform(-1.5, 1.5, (count, 3)), tf.float32)
    log_scales = tf.constant(rng.uniform(np.log(scales[0]), np.log(scales[1]), (count, 3)), tf.float32)
    quats = tf.constant(rng.normal(size=(count, 4)), tf.float32)
    means2d, conics, depths, radii = splats.project(means, log_scales, quats, camera)
    colors = tf.constant(rng.uniform(0.0, 1.0, (count, 3)), tf.float32)
    opacities = tf.constant(rng.uniform(0.1, 0.9, count), tf.float32)
    return [means2d, conics, colors, opacities, depths, radii], camera, tf.ones([3])


def timed(function, *args, repeats: int, cpu: bool = False):
    """Median wall time in ms; with ``cpu``, also the median CPU time of the process (all threads), which a
    machine shared with other work disturbs less."""
    tf.nest.map_structure(lambda t: t.numpy(), function(*args))  # trace, compile, warm up
    times, cpu_times = [], []
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        tf.nest.map_structure(lambda t: t.numpy(), function(*args))
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    wall = statistics.median(times) * 1000
    return (wall, statistics.median(cpu_times) * 1000) if cpu else wall


def squares(*args):
    """The native op with each Gaussian bounded by its square only (its images, more pixels visited)."""
    return splats.rasterize(*args, ellipses=False)


def tile_entries(inputs, width: int, height: int, background, ellipses: bool) -> int:
    """The op's (Gaussian, tile) entries for these rasterizer inputs."""
    return int(splats.native_library().nerf_splat_rasterize(*inputs, background, width=width, height=height,
                                                           ellipses=ellipses).tile_entries.shape[0])


def functions(rasterizer, width: int, height: int, background, jit_compile: bool = False):
    """(forward, forward + backward) as tf.functions of the rasterizer's inputs."""
    rng = np.random.default_rng(1)
    weights = [tf.constant(rng.normal(size=shape), tf.float32) for shape in ((height, width, 3), (height, width),
                                                                             (height, width))]

    def forward(means2d, conics, colors, opacities, depths, radii):
        return rasterizer(means2d, conics, colors, opacities, depths, radii, width, height, background)

    def forward_backward(means2d, conics, colors, opacities, depths, radii):
        inputs = [means2d, conics, colors, opacities, depths]
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            images = forward(*inputs, radii)
            loss = sum(tf.reduce_sum(image * w) for image, w in zip(images, weights))
        return images, tape.gradient(loss, inputs)

    return (tf.function(forward, jit_compile=jit_compile), tf.function(forward_backward, jit_compile=jit_compile))


def frame(repeats: int, size: int = 800, count: int = 300_000) -> dict:
    """A whole frame through ``SplatsMethod.render`` (make_scene's large Gaussians, degree-3 colours): ms."""
    rng = np.random.default_rng(0)
    arrays = gaussians.initial_arrays(rng.uniform(-1.5, 1.5, (count, 3)), rng.uniform(0, 1, (count, 3)), 0.5)
    arrays["log_scales"] = rng.uniform(np.log(0.005), np.log(0.02), (count, 3)).astype(np.float32)
    arrays["quats"] = rng.normal(size=(count, 4)).astype(np.float32)
    arrays["sh_rest"] = rng.normal(0, 0.05, (count, 15, 3)).astype(np.float32)
    arrays["opacity_logits"] = rng.normal(0, 1, count).astype(np.float32)
    method = SplatsMethod(gaussians.Gaussians(arrays), background=1.0, bound=1.5)
    focal = 1111.0 * size / 800
    cam = Camera(camera_math.look_at([0.0, -4.0, 1.0]), np.float32([focal, focal, size / 2, size / 2]), size, size)
    print(f"\nframe: {size} x {size}, {count:,} Gaussians, degree-3 colours, through SplatsMethod.render")
    out = {"width": size, "height": size, "gaussians": count}
    for name, native, fitting in (("native", True, False), ("xla", False, False), ("op_by_op", False, True)):
        method.native_frames, method._fitting = native, fitting  # (_fitting: what fit sets while it runs)
        start = time.perf_counter()
        method.render(cam)
        first_s = time.perf_counter() - start
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            method.render(cam)
            times.append(time.perf_counter() - start)
        out[name] = {"ms": statistics.median(times) * 1000, "first_call_s": first_s}
        print(f"{name.replace('_', ' '):<28}{out[name]['ms']:>7.1f} ms  (first call, tracing or compiling: "
              f"{first_s:.1f} s)")
    return out


def trained_model(folder: str, frames: int, repeats: int, size: int = 800, focal: float = 1111.1111) -> dict:
    """A trained model's frames, and the parts of one (``--model``): ms."""
    method = methods.load(folder)
    g = getattr(method, "gaussians", None)
    intrinsics = np.float32([focal * size / 800, focal * size / 800, size / 2, size / 2])
    cameras = [Camera(pose, intrinsics, size, size) for pose in camera_math.orbit_poses(frames + 1, 30.0, 4.0)]
    print(f"\nmodel {folder} ({method.name}" + (f", {g.count:,} Gaussians" if g is not None else "") +
          f"): {frames} orbit frames of {size} x {size}")
    out = {"folder": str(folder), "method": method.name, "width": size, "height": size, "frames": frames}
    for name, native in (("native", True), ("xla", False)):
        if g is None and not native:
            break
        if g is not None:
            method.native_frames = native
        method.render(cameras[0])  # (compiles)
        times = []
        for cam in cameras[1:]:
            start = time.perf_counter()
            method.render(cam)
            times.append(time.perf_counter() - start)
        out[f"frame_ms_median_{name}"] = statistics.median(times) * 1000
        out[f"frame_ms_mean_{name}"] = statistics.mean(times) * 1000
        label = "a frame through render" + ("" if g is None else f" ({name})")
        print(f"{label:<34}{out[f'frame_ms_median_{name}']:>7.1f} ms median, {out[f'frame_ms_mean_{name}']:.1f} mean")
    if g is None:
        return out
    cam = cameras[1]
    camera = splats.Camera(cam.pose.astype(np.float32), *(float(v) for v in intrinsics), size, size)
    background = tf.constant([method.background] * 3, tf.float32)
    prepare = tf.function(lambda: splats.frame_inputs(g.means, g.log_scales, g.quats, g.opacity_logits, g.sh(), 3,
                                                      camera), jit_compile=True, autograph=False)
    inputs = [t.numpy() for t in prepare()]
    inputs = [tf.constant(x) for x in inputs]
    out["gaussians"] = g.count
    out["drawn"] = int(tf.math.count_nonzero(inputs[5]))
    native = tf.function(lambda: splats.native_frame_inputs(g.means, g.log_scales, g.quats, g.opacity_logits, g.sh_dc,
                                                            g.sh_rest, 3, camera.c2w, intrinsics, size, size),
                         autograph=False)
    out["projection_and_colours_ms"] = {name: timed(function, repeats=repeats)
                                        for name, function in (("native", native), ("xla", prepare))}
    for name, ms in out["projection_and_colours_ms"].items():
        print(f"{'projection and colours (' + name + ')':<34}{ms:>7.1f} ms ({out['drawn']:,} of {g.count:,} drawn)")
    for name, rasterizer in (("ellipses", splats.rasterize), ("squares", squares)):
        forward, _ = functions(rasterizer, size, size, background)
        entries = tile_entries(inputs, size, size, background, name == "ellipses")
        out[name] = {"forward_ms": timed(forward, *inputs, repeats=repeats), "tile_entries": entries}
        print(f"{'the op forward, ' + name:<34}{out[name]['forward_ms']:>7.1f} ms ({entries:,} entries)")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="timed runs of each of the op's small-scene figures")
    parser.add_argument("--reference-repeats", type=int, default=2,
                        help="timed runs of each of the reference's (seconds each)")
    parser.add_argument("--large-repeats", type=int, default=3, help="timed runs of each large-scene figure")
    parser.add_argument("--skip-small", action="store_true", help="not the small scene (op against reference)")
    parser.add_argument("--skip-large", action="store_true", help="not the large scene and its frame")
    parser.add_argument("--model", help="a trained model folder: its frames, and where a frame's time goes")
    parser.add_argument("--frames", type=int, default=10, help="the model's orbit frames timed")
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args()
    if splats.native_library() is None:
        raise SystemExit("the native splat rasterizer is not available here (see the warning above)")

    threads = tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count()
    results = {"machine": {"cpus": os.cpu_count(), "intra_op_threads": threads, "processor": platform.processor(),
                           "tensorflow": tf.__version__}}
    print(f"{os.cpu_count()} CPUs, TensorFlow {tf.__version__}; times in ms, median of the repeats")

    if not args.skip_small:
        inputs, camera, background = make_scene(128, 5000, (0.02, 0.08))
        visible = int(tf.math.count_nonzero(inputs[5]))
        print(f"\nsmall: {camera.width} x {camera.height}, 5,000 Gaussians ({visible:,} visible)")
        columns = {"native op": functions(splats.rasterize, camera.width, camera.height, background),
                   "TF ops": functions(splats.reference_rasterize, camera.width, camera.height, background),
                   "TF ops (XLA)": functions(splats.reference_rasterize, camera.width, camera.height, background,
                                             jit_compile=True)}
        small = {"width": camera.width, "height": camera.height, "gaussians": 5000, "visible": visible}
        print(f"{'':<20}" + "".join(f"{name:>14}" for name in columns) + f"{'op speed-up':>14}")
        for row, index in (("forward", 0), ("forward + backward", 1)):
            figures = {name: timed(pair[index], *inputs, repeats=args.repeats if name == "native op" else
                                   args.reference_repeats) for name, pair in columns.items()}
            best_reference = min(figures["TF ops"], figures["TF ops (XLA)"])
            print(f"{row:<20}" + "".join(f"{ms:>11.1f} ms" for ms in figures.values())
                  + f"{best_reference / figures['native op']:>13.1f}x")
            small[row.replace(" + ", "_").replace(" ", "_") + "_ms"] = figures
        results["small"] = small

    if not args.skip_large:
        inputs, camera, background = make_scene(800, 300_000, (0.005, 0.02))
        visible = int(tf.math.count_nonzero(inputs[5]))
        library = splats.native_library()
        saved = library.nerf_splat_rasterize(*inputs, background, width=camera.width, height=camera.height)
        entries, last = int(saved.tile_entries.shape[0]), saved.last.numpy()
        square_entries = tile_entries(inputs, camera.width, camera.height, background, ellipses=False)
        print(f"\nlarge: {camera.width} x {camera.height}, 300,000 Gaussians ({visible:,} visible, {entries:,} "
              f"(Gaussian, tile) pairs ({square_entries:,} by squares), a pixel goes {last.mean():.0f} entries down "
              "its tile's list on average)")
        results["large"] = {"width": camera.width, "height": camera.height, "gaussians": 300_000, "visible": visible,
                            "tile_entries": entries, "tile_entries_squares": square_entries,
                            "mean_list_depth": float(last.mean())}
        print(f"{'':<40}{'wall':>10}{'CPU (all threads)':>20}")
        for bound, rasterizer in (("", splats.rasterize), ("squares_", squares)):
            forward, forward_backward = functions(rasterizer, camera.width, camera.height, background)
            forward_ms, forward_cpu_ms = timed(forward, *inputs, repeats=args.large_repeats, cpu=True)
            both_ms, both_cpu_ms = timed(forward_backward, *inputs, repeats=args.large_repeats, cpu=True)
            label = " (squares)" if bound else " (ellipses)"
            for name, wall, cpu in (("forward", forward_ms, forward_cpu_ms),
                                    ("forward + backward", both_ms, both_cpu_ms),
                                    ("backward (the difference)", both_ms - forward_ms, both_cpu_ms - forward_cpu_ms)):
                print(f"{name + label:<40}{wall:>7.1f} ms{cpu:>17.1f} ms")
            results["large"].update({f"{bound}forward_ms": forward_ms, f"{bound}forward_backward_ms": both_ms,
                                     f"{bound}forward_cpu_ms": forward_cpu_ms,
                                     f"{bound}forward_backward_cpu_ms": both_cpu_ms})

    if not args.skip_large:
        results["frame"] = frame(args.large_repeats)
    if args.model:
        results["model"] = trained_model(args.model, args.frames, args.large_repeats)

    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()

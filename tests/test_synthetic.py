"""Tests of the analytic synthetic scene: data set format, hand-computed hits, shading, anti-aliasing."""

from __future__ import annotations

import numpy as np
import pytest

from nerf_pipeline.scenes import synthetic
from nerf_pipeline.camera import generate_rays, hemisphere_poses

DOWN = (0.0, 0.0, -1.0)
LIGHT_Z = float(synthetic.LIGHT_DIRECTION[2])  # n . l for an upward-facing surface


@pytest.fixture(scope="module")
def small():
    return synthetic.render_scene(num_views=8, image_size=24, seed=0)


@pytest.fixture(scope="module")
def medium():
    return synthetic.render_scene(num_views=8, image_size=48, seed=3)


def trace_one(origin, direction):
    """rgb [3] float64 and depth float of a single ray."""
    direction = np.asarray(direction, dtype=np.float64)
    rgb, depth = synthetic.trace(np.asarray(origin, dtype=np.float64), direction / np.linalg.norm(direction))
    return rgb.astype(np.float64), float(depth)


# ------------------------------------------------------------------------ format


def test_keys_shapes_dtypes_and_ranges(small):
    assert set(small) == {"images", "poses", "focal", "near", "far", "depth"}
    images, poses, depth = small["images"], small["poses"], small["depth"]
    assert images.shape == (8, 24, 24, 3) and images.dtype == np.float32
    assert poses.shape == (8, 4, 4) and poses.dtype == np.float32
    assert depth.shape == (8, 24, 24) and depth.dtype == np.float32
    assert np.isfinite(images).all() and np.isfinite(depth).all()
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert depth.min() >= 0.0
    assert type(small["focal"]) is float and small["focal"] == pytest.approx(1.3888889 * 24)
    assert type(small["near"]) is float and small["near"] == 2.0
    assert type(small["far"]) is float and small["far"] == 6.0


def test_default_focal_matches_tiny_nerf():
    data = synthetic.render_scene(num_views=1, image_size=100, supersample=1)
    assert data["focal"] == pytest.approx(138.88889, abs=1e-4)


def test_poses_come_from_hemisphere_poses(small):
    np.testing.assert_array_equal(small["poses"], hemisphere_poses(8, 4.0, 0))
    other_radius = synthetic.render_scene(num_views=2, image_size=8, seed=5, radius=3.5)
    np.testing.assert_array_equal(other_radius["poses"], hemisphere_poses(2, 3.5, 5))


def test_same_seed_is_deterministic_and_seed_moves_cameras(small):
    again = synthetic.render_scene(num_views=8, image_size=24, seed=0)
    for key in ("images", "poses", "depth"):
        np.testing.assert_array_equal(again[key], small[key])
    other = synthetic.render_scene(num_views=8, image_size=24, seed=1)
    assert not np.allclose(other["poses"], small["poses"])
    assert np.abs(other["images"] - small["images"]).mean() > 0.01


def test_black_exactly_where_pixel_misses():
    # A surface colour is never exactly black (every albedo channel > 0 and ambient > 0),
    # so with one ray per pixel black pixels are exactly those with zero depth.
    sharp = synthetic.render_scene(num_views=8, image_size=24, seed=0, supersample=1)
    np.testing.assert_array_equal((sharp["images"] == 0.0).all(axis=-1), sharp["depth"] == 0.0)
    assert (sharp["depth"] == 0.0).any() and (sharp["depth"] > 0.0).any()


# ----------------------------------------------------------------- hand-computed hits


@pytest.mark.parametrize(
    "origin, expected_depth, what",
    [
        ((0.0, 0.0, 5.0), 5.0 - 0.70, "pillar top"),
        ((0.5, 0.45, 5.0), 5.0 - (-0.10 + 0.35), "red sphere top"),
        ((-0.5, 0.4, 5.0), 5.0 - (0.20 + 0.15), "cyan sphere top"),
        ((-0.45, -0.45, 5.0), 5.0 - 0.35, "cylinder cap"),
        ((0.5, -0.58, 5.0), 5.0 - 0.23, "arch lintel"),
        ((0.8, 0.0, 5.0), 5.0 + 0.45, "bare floor"),
        # Inside the turned box's footprint but outside the unturned one's: top at z 0.05.
        ((-0.5 + 0.2 * np.cos(np.pi / 6) - 0.15 * 0.5, 0.4 + 0.2 * 0.5 + 0.15 * np.cos(np.pi / 6), 5.0),
         5.0 - 0.05, "turned box top"),
        # Corner of the unturned box's footprint, outside the turned box: the floor.
        ((-0.5 + 0.24, 0.4 + 0.17, 5.0), 5.0 + 0.45, "floor beside turned box"),
    ],
)
def test_depth_of_vertical_rays(origin, expected_depth, what):
    rgb, depth = trace_one(origin, DOWN)
    assert depth == pytest.approx(expected_depth, abs=1e-5), what
    assert rgb.max() > 0.05, what


def test_horizontal_rays_hit_sides():
    # Towards the red sphere's centre from 3 units away, level with it.
    side = np.array([-0.5, 0.35, 0.0]) / np.linalg.norm([-0.5, 0.35, 0.0])
    _, depth = trace_one(np.array([0.5, 0.45, -0.1]) + 3.0 * side, -side)
    assert depth == pytest.approx(3.0 - 0.35, abs=1e-5)
    # Along the turned box's local x axis onto its +x face (half extent 0.25).
    axis = np.array([np.cos(np.pi / 6), np.sin(np.pi / 6), 0.0])
    _, depth = trace_one(np.array([-0.5, 0.4, -0.2]) + 3.0 * axis, -axis)
    assert depth == pytest.approx(3.0 - 0.25, abs=1e-5)
    # Along the box's diagonal, it reaches further out than along its axes.
    diagonal = np.array([np.cos(np.pi / 6 + np.arctan2(0.18, 0.25)), np.sin(np.pi / 6 + np.arctan2(0.18, 0.25)), 0])
    _, depth = trace_one(np.array([-0.5, 0.4, -0.2]) + 3.0 * diagonal, -diagonal)
    assert depth == pytest.approx(3.0 - np.hypot(0.25, 0.18), abs=1e-3)


def test_rays_that_miss_are_black_with_zero_depth():
    origins = np.array([[0.0, 0.0, 5.0], [4.0, 0.0, 0.0], [0.0, 0.0, 5.0], [3.0, 3.0, 3.0]])
    directions = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])
    rgb, depth = synthetic.trace(origins, directions)
    assert rgb.dtype == np.float32 and depth.dtype == np.float32
    np.testing.assert_array_equal(rgb, 0.0)
    np.testing.assert_array_equal(depth, 0.0)


def test_trace_keeps_batch_shape_and_broadcasts_origins():
    poses = hemisphere_poses(2, 4.0, 0)
    origins, directions = generate_rays(poses, 5, 7, 10.0)
    rgb, depth = synthetic.trace(origins, directions)
    assert rgb.shape == (2, 5, 7, 3) and depth.shape == (2, 5, 7)
    rgb_b, depth_b = synthetic.trace(poses[0, :3, 3], directions[0])
    np.testing.assert_array_equal(rgb_b, rgb[0])
    np.testing.assert_array_equal(depth_b, depth[0])


def test_depth_is_consistent_with_geometry(small):
    origins, directions = generate_rays(small["poses"], 24, 24, small["focal"])
    depth = small["depth"]
    hit = depth > 0
    points = origins[hit] + depth[hit][:, None] * directions[hit]
    assert np.linalg.norm(points, axis=-1).max() <= synthetic.SCENE_RADIUS + 1e-4
    assert depth[hit].min() >= small["near"] and depth[hit].max() <= small["far"]
    # The point is on a surface: a ray starting just short of it stops at once, one
    # starting from the camera stops at the same depth (the rendered depth is the trace depth).
    # (Float32 depths put the point ~1e-6 off the surface, more along the ray at grazing hits.)
    _, just_short = synthetic.trace(points - 1e-3 * directions[hit], directions[hit])
    error = np.abs(just_short - 1e-3)
    assert np.quantile(error, 0.99) < 1e-5 and error.max() < 1e-3
    _, retraced = synthetic.trace(origins, directions)
    np.testing.assert_array_equal(retraced, depth)


# ------------------------------------------------------------------- image content


def test_foreground_coverage_is_plausible(small):
    coverage = (small["depth"] > 0).mean(axis=(1, 2))
    assert 0.15 <= coverage.mean() <= 0.90
    assert coverage.min() > 0.05 and coverage.max() < 0.98


def test_every_material_colour_appears(medium):
    # Shading scales a colour without changing its direction in RGB space, so every
    # material shows up as pixels whose normalised colour matches its albedo's.
    colours = [*synthetic.BASE_COLOURS, synthetic.PILLAR_COLOUR, synthetic.RED, synthetic.BLUE,
               synthetic.CYAN, *synthetic.BAND_COLOURS, synthetic.ORANGE]
    pixels = medium["images"].reshape(-1, 3).astype(np.float64)
    pixels = pixels[pixels.sum(axis=-1) > 0.05]
    chroma = pixels / np.linalg.norm(pixels, axis=-1, keepdims=True)
    for colour in colours:
        target = np.asarray(colour) / np.linalg.norm(colour)
        matching = (chroma @ target > 0.999).sum()
        assert matching >= 3, colour
    # And they are saturated: a good share of lit pixels are far from grey.
    saturation = pixels.max(axis=-1) - pixels.min(axis=-1)
    assert (saturation > 0.3).mean() > 0.2


def test_checkerboard_gives_high_frequency_detail(medium):
    # Two vertical rays 0.2 apart (one check) onto the lit floor see different colours
    # in the ratio of the two check colours.
    rgb_a, depth_a = trace_one((0.8, 0.0, 5.0), DOWN)
    rgb_b, depth_b = trace_one((0.6, 0.0, 5.0), DOWN)
    assert depth_a == pytest.approx(depth_b)
    lit = synthetic.AMBIENT + synthetic.DIFFUSE * LIGHT_Z
    np.testing.assert_allclose(rgb_a, np.asarray(synthetic.BASE_COLOURS[0]) * lit, atol=1e-6)
    np.testing.assert_allclose(rgb_b, np.asarray(synthetic.BASE_COLOURS[1]) * lit, atol=1e-6)
    # In the rendered images neighbouring hit pixels differ a lot somewhere (edges, checks).
    images, depth = medium["images"], medium["depth"]
    both_hit = (depth[:, :, 1:] > 0) & (depth[:, :, :-1] > 0)
    jumps = np.abs(images[:, :, 1:] - images[:, :, :-1]).sum(axis=-1)[both_hit]
    assert (jumps > 0.5).mean() > 0.05
    assert len(np.unique(np.round(images.reshape(-1, 3), 1), axis=0)) > 30


def test_pillar_top_colour_is_lit_albedo():
    rgb, _ = trace_one((0.0, 0.0, 5.0), DOWN)
    expected = np.asarray(synthetic.PILLAR_COLOUR) * (synthetic.AMBIENT + synthetic.DIFFUSE * LIGHT_Z)
    np.testing.assert_allclose(rgb, expected, atol=1e-6)


def test_cast_shadow_darkens_the_floor():
    # The pillar at the origin shades the floor on the side away from the light; the mirror
    # point on the light's side is on the same check colour and lit.
    away = -synthetic.LIGHT_DIRECTION[:2] / np.linalg.norm(synthetic.LIGHT_DIRECTION[:2])
    shadowed = np.append(0.2 * away, 5.0)
    mirror = np.append(-0.2 * away, 5.0)
    rgb_shadow, depth_shadow = trace_one(shadowed, DOWN)
    rgb_lit, depth_lit = trace_one(mirror, DOWN)
    assert depth_shadow == pytest.approx(5.45, abs=1e-5) and depth_lit == pytest.approx(5.45, abs=1e-5)
    albedo = synthetic.PRIMITIVES[0].material.albedo(np.array([[*shadowed[:2], -0.45], [*mirror[:2], -0.45]]))
    np.testing.assert_array_equal(albedo[0], albedo[1])
    np.testing.assert_allclose(rgb_shadow, synthetic.AMBIENT * albedo[0], atol=1e-6)
    np.testing.assert_allclose(rgb_lit, (synthetic.AMBIENT + synthetic.DIFFUSE * LIGHT_Z) * albedo[1], atol=1e-6)
    assert (rgb_lit > 2.5 * rgb_shadow).all()


def test_surface_facing_away_from_light_gets_only_ambient():
    rgb_top, _ = trace_one((0.5, 0.45, 5.0), DOWN)
    side = np.array([-0.5, 0.35, 0.0]) / np.linalg.norm([-0.5, 0.35, 0.0])  # normal with n . l < 0
    rgb_back, _ = trace_one(np.array([0.5, 0.45, -0.1]) + 3.0 * side, -side)
    np.testing.assert_allclose(rgb_back, synthetic.AMBIENT * np.asarray(synthetic.RED), atol=1e-6)
    assert rgb_top[0] > 2.5 * rgb_back[0]


# ------------------------------------------------------------------- anti-aliasing


def test_supersample_1_is_the_pixel_centre_ray():
    data = synthetic.render_scene(num_views=3, image_size=20, seed=2, supersample=1)
    origins, directions = generate_rays(data["poses"], 20, 20, data["focal"])
    rgb, depth = synthetic.trace(origins, directions)
    np.testing.assert_array_equal(data["images"], rgb)
    np.testing.assert_array_equal(data["depth"], depth)
    # subpixel_rays with one sample per pixel builds the same rays.
    sub_origins, sub_directions = synthetic.subpixel_rays(data["poses"], 20, 20, data["focal"], 1)
    np.testing.assert_allclose(sub_directions[..., 0, :], directions, atol=1e-6)
    np.testing.assert_array_equal(sub_origins[..., 0, :], origins)


def test_supersampled_pixel_is_mean_of_its_subpixel_rays(small):
    # Build the 2 x 2 sub-pixel rays of one view by hand from the camera convention.
    view, size = 1, 24
    pose = small["poses"][view].astype(np.float64)
    focal = small["focal"]
    cols, rows = np.meshgrid(np.arange(size), np.arange(size), indexing="xy")
    colours = []
    for v in (0.25, 0.75):
        for u in (0.25, 0.75):
            camera = np.stack([(cols + u - size / 2) / focal, -(rows + v - size / 2) / focal,
                               -np.ones((size, size))], axis=-1)
            directions = camera @ pose[:3, :3].T
            directions /= np.linalg.norm(directions, axis=-1, keepdims=True)
            colours.append(synthetic.trace(pose[:3, 3], directions)[0])
    colours = np.stack(colours)
    assert np.abs(colours - colours[0]).max() > 0.3  # some pixels straddle an edge
    np.testing.assert_allclose(small["images"][view], colours.mean(axis=0), atol=1e-5)


def test_supersampling_smooths_edges_only(small):
    sharp = synthetic.render_scene(num_views=8, image_size=24, seed=0, supersample=1)
    difference = np.abs(small["images"] - sharp["images"]).max(axis=-1)
    np.testing.assert_array_equal(small["depth"], sharp["depth"])
    assert difference.max() > 0.1  # edges are blended
    assert np.median(difference) < 1e-6  # flat interiors and background are unchanged
    # Partly covered silhouette pixels exist: neither black nor a full surface colour.
    partial = (small["depth"] == 0) & (small["images"].max(axis=-1) > 0)
    assert partial.any()


def test_rejects_bad_supersample():
    with pytest.raises(ValueError):
        synthetic.render_scene(num_views=1, image_size=4, supersample=0)

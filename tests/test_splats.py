"""3D Gaussian splatting as a method (``nerf_pipeline/splats/``): the first Gaussians, adaptive density control and
the optimizer's moments through it, the loss, the train step (traced once), the PLY file 3DGS viewers read, the
method behind the protocol, and its preset's params. Training to a PSNR: ``test_splats_training.py`` (slow)."""

import copy

import numpy as np
import pytest
import tensorflow as tf
import yaml
from conftest import REPO, write_rays

from nerf_pipeline import camera, config, methods
from nerf_pipeline.errors import ConfigError
from nerf_pipeline.methods import Camera
from nerf_pipeline.scenes import ray_files
from nerf_pipeline.splats import density_control, gaussians, ply, rasterizer, training
from nerf_pipeline.splats import method as splats_method


def splats_params(**preset_changes) -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["preset"] = "splats"
    params["presets"]["splats"].update(preset_changes)
    return params


@pytest.fixture(scope="module")
def rays_dir(tmp_path_factory):
    return write_rays(tmp_path_factory.mktemp("rays"), num_views=6, image_size=24, num_val=1)


def some_gaussians(count=6, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    arrays = gaussians.initial_arrays(rng.uniform(-0.5, 0.5, (count, 3)), rng.uniform(0, 1, (count, 3)), 0.5)
    arrays["quats"] = rng.normal(size=(count, 4)).astype(np.float32)
    arrays["sh_rest"] = rng.normal(0, 0.1, (count, 15, 3)).astype(np.float32)
    arrays["opacity_logits"] = rng.normal(0, 1, count).astype(np.float32)
    return arrays


# -- the first Gaussians --------------------------------------------------------------------------------------------

def test_random_gaussians_fill_the_box_grey_sized_by_their_neighbours():
    points, colours = gaussians.random_points(500, 1.5, seed=0)
    assert points.shape == (500, 3) and np.abs(points).max() <= 1.5 and points.min() < -1.3
    arrays = gaussians.initial_arrays(points, colours, 0.1)
    assert gaussians.check_arrays(arrays) == 500
    np.testing.assert_allclose(arrays["sh_dc"], 0.0, atol=1e-7)  # grey: colour 0.5
    np.testing.assert_allclose(1 / (1 + np.exp(-arrays["opacity_logits"])), 0.1, rtol=1e-5)
    np.testing.assert_array_equal(arrays["quats"], np.tile([1.0, 0, 0, 0], (500, 1)))
    # on a grid of spacing 0.2, an inner point's 3 nearest neighbours are 0.2 away
    grid = np.stack(np.meshgrid(*[np.arange(5) * 0.2] * 3, indexing="ij"), -1).reshape(-1, 3)
    scales = np.exp(gaussians.initial_arrays(grid, np.full_like(grid, 0.5), 0.1)["log_scales"])
    np.testing.assert_allclose(scales[62], 0.2, rtol=1e-5)  # the centre of the grid


def test_the_scenes_sparse_points_start_the_gaussians_when_it_has_them(rays_dir, tmp_path):
    cfg = config.from_dict(splats_params())
    train = ray_files.load(rays_dir, "train")
    arrays, how = splats_method.initial_gaussians(cfg, train)
    assert len(arrays["means"]) == cfg.active.init.num_random and "random" in how
    folder = write_rays(tmp_path / "rays", num_views=3, image_size=8, num_val=1)
    points = np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32)
    ray_files.write_sparse_points(folder, points, np.full((40, 3), 255, np.uint8))
    arrays, how = splats_method.initial_gaussians(cfg, ray_files.load(folder, "train"))
    np.testing.assert_array_equal(arrays["means"], points)
    np.testing.assert_allclose(arrays["sh_dc"], 0.5 / gaussians.SH_C0, rtol=1e-6)  # white
    assert "40 sparse points" in how


def test_the_rays_stage_carries_a_captures_sparse_points(tmp_path):
    from conftest import run_data_stages, tiny_params

    from nerf_pipeline.stages import rays

    params = tiny_params()
    params["synthetic"].update(num_views=4, image_size=8)
    folder = run_data_stages(tmp_path, params)
    assert ray_files.sparse_points(folder / "rays") is None  # the built-in scene has none
    cameras = dict(np.load(folder / "cameras.npz"))
    points = np.random.default_rng(0).normal(size=(30, 3)).astype(np.float32)
    colours = np.random.default_rng(1).integers(0, 256, (30, 3)).astype(np.uint8)
    np.savez(folder / "cameras.npz", **cameras, points=points, point_colors=colours)
    rays.run(config.from_dict(params), in_scene=folder / "scene", in_cameras=folder / "cameras.npz",
             in_split=folder / "split.json", out_rays=folder / "rays_with_points")
    got_points, got_colours = ray_files.sparse_points(folder / "rays_with_points")
    np.testing.assert_array_equal(got_points, points)
    np.testing.assert_allclose(got_colours, colours / 255.0, rtol=1e-6)


# -- adaptive density control ---------------------------------------------------------------------------------------

def control(arrays, grads, counts=None, radius=None, **settings):
    n = len(arrays["means"])
    options = dict(grad_threshold=2e-4, dense_size=0.1, min_opacity=0.005, max_world_size=1.0, max_screen_size=None,
                   max_gaussians=1000, rng=np.random.default_rng(0))
    options.update(settings)
    return density_control.densify_and_prune(arrays, np.asarray(grads, np.float64) * (1 if counts is None else
                                             np.asarray(counts)), np.ones(n) if counts is None else np.asarray(counts),
                                             np.zeros(n) if radius is None else np.asarray(radius), **options)


def four_gaussians():
    """0: small, high gradient (cloned); 1: large, high gradient (split); 2: transparent (pruned); 3: untouched."""
    arrays = some_gaussians(4)
    arrays["log_scales"][:] = np.log([[0.05] * 3, [0.3, 0.2, 0.1], [0.05] * 3, [0.05] * 3])
    arrays["opacity_logits"][:] = gaussians.logit([0.5, 0.6, 0.001, 0.7])
    return arrays, [1e-3, 1e-3, 0.0, 1e-4]


def test_densification_clones_small_splits_large_and_prunes_transparent_gaussians():
    arrays, grads = four_gaussians()
    out, change = control(arrays, grads)
    assert (change.cloned, change.split, change.pruned) == (1, 1, 1)
    # kept: 0 and 3 (2 pruned, 1 replaced by its halves); then the clone of 0, then the two halves of 1
    np.testing.assert_array_equal(change.rows, [0, 3, 0, 1, 1])
    np.testing.assert_array_equal(change.fresh, [False, False, True, True, True])
    for name in gaussians.NAMES:  # the clone is its original
        np.testing.assert_array_equal(out[name][2], arrays[name][0])
        np.testing.assert_array_equal(out[name][1], arrays[name][3])
    np.testing.assert_allclose(out["log_scales"][3:], arrays["log_scales"][[1, 1]] - np.log(1.6), rtol=1e-6)
    for name in ("quats", "opacity_logits", "sh_dc", "sh_rest"):
        np.testing.assert_array_equal(out[name][3:], arrays[name][[1, 1]])
    # the halves are drawn from the Gaussian: within a few of its scales of its mean, not on it
    offsets = out["means"][3:] - arrays["means"][1]
    assert 0 < np.linalg.norm(offsets, axis=1).min() and np.linalg.norm(offsets, axis=1).max() < 4 * 0.3
    assert not np.allclose(out["means"][3], out["means"][4])


def test_a_split_gaussians_halves_lie_along_its_rotated_axes():
    arrays = some_gaussians(1)
    arrays["log_scales"][:] = np.log([[0.5, 1e-4, 1e-4]])  # a needle along its own x axis
    arrays["quats"][:] = [np.cos(np.pi / 4), 0, 0, np.sin(np.pi / 4)]  # turned 90 degrees about z: along world y
    out, change = control(arrays, [1.0], max_world_size=10.0)
    assert change.split == 1
    offsets = out["means"] - arrays["means"][0]
    assert np.all(np.abs(offsets[:, [0, 2]]) < 1e-3) and np.abs(offsets[:, 1]).max() > 0.01


def test_below_the_threshold_or_never_seen_nothing_changes():
    arrays, _ = four_gaussians()
    arrays["opacity_logits"][2] = 0.0
    out, change = control(arrays, [1e-4, 1.9e-4, 0.0, 1.0], counts=[3, 3, 0, 0])
    assert (change.cloned, change.split, change.pruned) == (0, 0, 0)
    for name in gaussians.NAMES:
        np.testing.assert_array_equal(out[name], arrays[name])


def test_pruning_by_world_size_and_by_screen_size_when_asked():
    arrays, _ = four_gaussians()
    grads = np.zeros(4)
    _, change = control(arrays, grads, max_world_size=0.2)  # Gaussian 1 is 0.3 large
    np.testing.assert_array_equal(change.rows, [0, 3])
    radius = [0.1, 0.1, 0.1, 0.5]
    _, change = control(arrays, grads, radius=radius)  # the screen size only when asked
    np.testing.assert_array_equal(change.rows, [0, 1, 3])
    _, change = control(arrays, grads, radius=radius, max_screen_size=0.15)
    np.testing.assert_array_equal(change.rows, [0, 1])


def test_densification_adds_no_more_than_max_gaussians_largest_gradients_first():
    arrays = some_gaussians(5)
    arrays["log_scales"][:] = np.log(0.01)
    out, change = control(arrays, [1e-3, 5e-3, 2e-3, 4e-3, 3e-3], max_gaussians=7)
    assert change.cloned == 2 and len(out["means"]) == 7
    np.testing.assert_array_equal(change.rows[5:], [1, 3])


def test_the_optimizers_moments_follow_the_gaussians_through_densification(rays_dir):
    """Each kept Gaussian keeps its own Adam moments, new ones start from zero; the statistics start again."""
    arrays, grads = four_gaussians()
    cfg = config.from_dict(splats_params())
    trainer = training.Trainer(gaussians.Gaussians(arrays), cfg.active, background=0.0, extent=1.0,
                               total_steps=100, seed=0)
    trainer.preset = cfg.active.model_copy(update={"densify": cfg.active.densify.model_copy(update={
        "dense_fraction": 0.1, "max_world_fraction": 1.0})})
    for name in gaussians.NAMES:  # moment values that say whose they are: Gaussian i's are i + 1 (m) and 10 (i + 1)
        shape = (4, *gaussians.ROW_SHAPES[name])
        ids = np.arange(1, 5, dtype=np.float32).reshape(-1, *([1] * (len(shape) - 1)))
        trainer.moments[name][0].assign(np.broadcast_to(ids, shape))
        trainer.moments[name][1].assign(np.broadcast_to(10 * ids, shape))
    trainer.stats["grad_sum"].assign(np.asarray(grads, np.float32))
    trainer.stats["count"].assign(np.ones(4, np.float32))
    change = trainer.densify(screen=False)
    np.testing.assert_array_equal(change.rows, [0, 3, 0, 1, 1])
    assert trainer.gaussians.count == 5
    for name in gaussians.NAMES:
        m, v = (moment.numpy() for moment in trainer.moments[name])
        assert m.shape == v.shape == (5, *gaussians.ROW_SHAPES[name])
        np.testing.assert_array_equal(m.reshape(5, -1)[:, 0], [1, 4, 0, 0, 0])
        np.testing.assert_array_equal(v.reshape(5, -1)[:, 0], [10, 40, 0, 0, 0])
    for variable in trainer.stats.values():
        np.testing.assert_array_equal(variable.numpy(), np.zeros(5))
    trainer.reset_opacity()
    opacity = 1 / (1 + np.exp(-trainer.gaussians.opacity_logits.numpy()))
    assert opacity.max() <= 0.01 + 1e-6
    np.testing.assert_array_equal(trainer.moments["opacity_logits"][0].numpy(), np.zeros(5))


# -- the loss and the step -------------------------------------------------------------------------------------------

def _native_ssim_or_skip():
    if training.native_ssim_map(tf.zeros([11, 11, 3]), tf.zeros([11, 11, 3])) is None:
        pytest.skip("the native op library is not available here")


@pytest.mark.parametrize("ssim_map", ["native_ssim_map", "reference_ssim_map"])
def test_ssim_map_is_tensorflows(ssim_map):
    if ssim_map == "native_ssim_map":
        _native_ssim_or_skip()
    rng = np.random.default_rng(0)
    a = rng.uniform(size=(30, 41, 3)).astype(np.float32)
    b = np.clip(a + rng.normal(0, 0.2, a.shape), 0, 1).astype(np.float32)
    ours = getattr(training, ssim_map)(tf.constant(a), tf.constant(b)).numpy()
    theirs = tf.image.ssim(a[None], b[None], max_val=1.0, return_index_map=True).numpy()[0]
    np.testing.assert_allclose(ours, theirs, atol=2e-5)


@pytest.mark.parametrize("shape", [(11, 11, 3), (30, 41, 3), (64, 17, 1), (40, 90, 3)])
def test_the_native_ssim_and_its_gradient_equal_the_reference(shape):
    _native_ssim_or_skip()
    rng = np.random.default_rng(sum(shape))
    target = rng.uniform(size=shape).astype(np.float32)
    x = tf.constant(np.clip(target + rng.normal(0, 0.3, shape), 0, 1).astype(np.float32))
    upstream = tf.constant(rng.normal(size=(shape[0] - 10, shape[1] - 10)).astype(np.float32))
    results = {}
    for name in ("native_ssim_map", "reference_ssim_map"):
        with tf.GradientTape() as tape:
            tape.watch(x)
            ssim = getattr(training, name)(x, tf.constant(target))
            loss = tf.reduce_sum(ssim * upstream)
        results[name] = (ssim.numpy(), tape.gradient(loss, x).numpy())
    (ours, our_grad), (theirs, their_grad) = results["native_ssim_map"], results["reference_ssim_map"]
    assert ours.shape == (shape[0] - 10, shape[1] - 10)
    np.testing.assert_allclose(ours, theirs, atol=2e-6)
    np.testing.assert_allclose(our_grad, their_grad, atol=2e-5 * np.abs(their_grad).max())


def test_the_native_ssim_refuses_what_it_cannot_index():
    _native_ssim_or_skip()
    library = training.rasterizer.native_library()
    window = tf.constant(training._window())
    with pytest.raises(tf.errors.InvalidArgumentError, match="smaller than the window"):
        library.nerf_ssim(tf.zeros([10, 40, 3]), tf.zeros([10, 40, 3]), window, c1=1e-4, c2=9e-4)
    with pytest.raises(tf.errors.InvalidArgumentError, match="differ in shape"):
        library.nerf_ssim(tf.zeros([20, 40, 3]), tf.zeros([20, 41, 3]), window, c1=1e-4, c2=9e-4)
    with pytest.raises(tf.errors.InvalidArgumentError, match="window must be"):
        library.nerf_ssim(tf.zeros([20, 20, 3]), tf.zeros([20, 20, 3]), tf.zeros([0]), c1=1e-4, c2=9e-4)
    with pytest.raises(tf.errors.InvalidArgumentError, match="stats must be"):
        library.nerf_ssim_grad(tf.zeros([20, 20, 3]), tf.zeros([20, 20, 3]), window, tf.zeros([10, 10, 14]),
                               tf.zeros([10, 10]), c1=1e-4, c2=9e-4)


def test_masked_pixels_add_nothing_to_the_loss():
    rng = np.random.default_rng(1)
    target = rng.uniform(size=(24, 24, 3)).astype(np.float32)
    predicted = np.clip(target + rng.normal(0, 0.1, target.shape), 0, 1).astype(np.float32)
    kept = np.ones((24, 24), np.float32)
    kept[:, 15:] = 0
    other = predicted.copy()
    other[:, 15:] = rng.uniform(size=(24, 9, 3))  # what the mask leaves out differs
    losses = [training.image_loss(tf.constant(p), tf.constant(target), tf.constant(kept), 0.2)
              for p in (predicted, other)]
    np.testing.assert_allclose([float(x) for x in losses[0]], [float(x) for x in losses[1]], rtol=1e-6)
    whole = training.image_loss(tf.constant(predicted), tf.constant(target), tf.ones((24, 24)), 0.2)
    l1 = np.abs(predicted - target).mean()
    ssim = float(tf.image.ssim(predicted, target, max_val=1.0))
    np.testing.assert_allclose(float(whole[0]), 0.8 * l1 + 0.2 * (1 - ssim), rtol=1e-5)


def test_schedules():
    preset = config.from_dict(splats_params(sh_degree=2, sh_degree_every=10)).active
    assert [training.sh_degree_at(s, preset) for s in (0, 9, 10, 25, 1000)] == [0, 0, 1, 2, 2]
    opt = preset.optimizer
    assert training.means_learning_rate(0, 100, opt, 2.0) == pytest.approx(2 * opt.means)
    assert training.means_learning_rate(100, 100, opt, 2.0) == pytest.approx(2 * opt.means_final)
    assert training.means_learning_rate(50, 100, opt, 1.0) == pytest.approx(np.sqrt(opt.means * opt.means_final))
    views = [training.view_of_step(s, 5, seed=3) for s in range(10)]
    assert sorted(views[:5]) == sorted(views[5:]) == list(range(5)) and views[:5] != views[5:]
    top, left, h, w = training.crop_of_step(7, 24, 30, 16, seed=0)
    assert (h, w) == (16, 16) and 0 <= top <= 8 and 0 <= left <= 14
    assert training.crop_of_step(7, 24, 30, None, seed=0) == (0, 0, 24, 30)
    centres = np.array([[4, 0, 0], [-4, 0, 0], [0, 2, 0]], np.float32)
    poses = np.tile(np.eye(4, dtype=np.float32), (3, 1, 1))
    poses[:, :3, 3] = centres
    largest = np.linalg.norm(centres - centres.mean(0), axis=1).max()
    assert training.cameras_extent(poses) == pytest.approx(1.1 * largest)


def test_the_step_is_traced_once_through_densification_and_degrees(rays_dir):
    """The Gaussians change in number (densification) and the SH degree goes up, yet the step is traced once; the
    loss falls, and a crop's camera sees what the whole view's sees there."""
    params = splats_params(sh_degree_every=4, steps_per_epoch=30)
    params["presets"]["splats"]["init"]["num_random"] = 300
    params["presets"]["splats"]["densify"].update(start=2, every=5, stop=30, opacity_reset_every=12)
    cfg = config.from_dict(params)
    train = ray_files.load(rays_dir, "train")
    method = splats_method.build(cfg, train)
    trainer = method._make_trainer(total_steps=30)
    losses, counts = [], set()
    for step in range(30):
        losses.append(trainer.train_step(step, *training.step_inputs(train, step, None, seed=0)).loss)
        counts.add(trainer.gaussians.count)
    assert len(counts) > 2, counts  # it densified and pruned
    assert trainer.trace_count() == 1
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    image, kept, c2w, intrinsics = training.step_inputs(train, 3, crop=16, seed=0)
    view = training.view_of_step(3, train.num_views, seed=0)
    top, left, _, _ = training.crop_of_step(3, train.height, train.width, 16, seed=0)
    whole = method.render(Camera.of_view(train, view))["rgb"]
    crop = method.render(Camera(c2w, intrinsics, 16, 16))["rgb"]
    np.testing.assert_allclose(crop, whole[top:top + 16, left:left + 16], atol=1e-5)
    np.testing.assert_array_equal(image, train.images[view, top:top + 16, left:left + 16])


def test_each_training_view_learns_its_exposure_and_held_out_views_take_their_neighbours(rays_dir, tmp_path):
    """With ``scene.appearance`` on, each training view's colour transform learns its view's exposure (two of five
    views made half as bright): the loss ends lower than without, the dark views' transforms darken; a camera
    takes its nearest training views' transform (a view's own at its position), the mean without training poses;
    saved and loaded with the model; a scene without appearance plans none."""
    from nerf_pipeline import trained_folder

    train = copy.copy(ray_files.load(rays_dir, "train"))
    gains = np.ones(train.num_views)
    gains[:2] = 0.5
    train.images = np.round(train.images * gains[:, None, None, None]).astype(np.uint8)
    losses, methods_by_choice = {}, {}
    for choice in ("on", "off"):
        params = splats_params(steps_per_epoch=300)
        params["scene"]["appearance"] = choice
        params["presets"]["splats"]["optimizer"]["appearance"] = 0.02
        params["presets"]["splats"]["init"]["num_random"] = 300
        cfg = config.from_dict(params)
        assert methods.plan(cfg, train) == {"model.appearance_embedding": choice}
        method = methods.build(cfg, train)
        trainer = method._make_trainer(total_steps=300)
        step_losses = [trainer.train_step(step, *training.step_inputs(train, step, None, seed=0)).loss
                       for step in range(300)]
        assert trainer.trace_count() == 1
        losses[choice], methods_by_choice[choice] = np.mean(step_losses[-30:]), method
        if choice == "on":  # a checkpoint's state carries the transforms and their Adam
            state = trainer.state()
            resumed = training.Trainer(gaussians.Gaussians(some_gaussians(3)), cfg.active, background=0.0, extent=1.0,
                                       total_steps=300, seed=0,
                                       appearance=training.identity_appearance(train.num_views))
            resumed.load_state(state)
            for name in ("appearance", "m_appearance", "v_appearance", "appearance_steps"):
                np.testing.assert_array_equal(resumed.state()[name], state[name], err_msg=name)
            assert state["appearance_steps"].sum() == 300
    assert losses["on"] < 0.9 * losses["off"], losses
    method = methods_by_choice["on"]
    assert methods_by_choice["off"].colour_transform(Camera.of_view(train, 0)) is None
    assert method.tracking_params()["model.appearance_embedding"] == "on"
    mean_colour = np.append(train.images.reshape(-1, 3).mean(axis=0) / 255.0, 1.0)
    brightness = [float(np.mean(method.colour_transform(Camera.of_view(train, v)) @ mean_colour))
                  for v in range(train.num_views)]
    assert max(brightness[:2]) < 0.85 * min(brightness[2:]), brightness
    # a training view's own camera takes its own transform; the mean appearance darkens its render less
    transforms = np.stack([method.colour_transform(Camera.of_view(train, v)) for v in range(train.num_views)])
    dark = Camera.of_view(train, 0)
    assert method.with_training_poses(None).colour_transform(dark) == pytest.approx(transforms.mean(axis=0))
    assert method.render(dark)["rgb"].mean() < method.with_training_poses(None).render(dark)["rgb"].mean()
    trained_folder.write_model(tmp_path, method)
    loaded = methods.load(tmp_path, train_part=train)
    np.testing.assert_allclose(loaded.colour_transform(dark), transforms[0], atol=1e-7)
    np.testing.assert_allclose(loaded.render(dark)["rgb"], method.render(dark)["rgb"], atol=1e-6)
    np.testing.assert_allclose(methods.load(tmp_path).colour_transform(dark), transforms.mean(axis=0), atol=1e-6)


def test_coarse_to_fine_views_are_block_means_with_their_camera(rays_dir):
    """Before ``until`` a step trains on its view averaged over ``downscale`` blocks, its camera scaled so that it
    sees what the whole view shows there (a render at the coarse camera is the block mean of the full render, to
    within what a splat varies inside a block); full size after; the schedule is checked by name."""
    params = splats_params(coarse_to_fine={"downscales": [4, 2], "until": [3, 6]})
    cfg = config.from_dict(params)
    train = ray_files.load(rays_dir, "train")
    assert [training.downscale_at(s, cfg.active) for s in (0, 2, 3, 5, 6, 100)] == [4, 4, 2, 2, 1, 1]
    views = training.StepViews(train, cfg.active, seed=0)
    method = splats_method.build(cfg, train)
    arrays = some_gaussians(40)
    arrays["log_scales"] += np.log(3.0)  # large enough to vary little within a 4 x 4 block
    method.gaussians.assign(arrays)
    for step, factor in ((1, 4), (4, 2), (7, 1)):
        image, kept, c2w, intrinsics = views(step)
        view = training.view_of_step(step, train.num_views, seed=0)
        size = train.height // factor
        assert image.shape == (size, size, 3) and image.dtype == np.uint8 and kept is None
        blocks = train.images[view].reshape(size, factor, size, factor, 3).astype(np.float64).mean(axis=(1, 3))
        np.testing.assert_array_equal(image, np.round(blocks).astype(np.uint8))
        np.testing.assert_allclose(intrinsics, train.intrinsics[view] / factor, rtol=1e-6)
        whole = method.render(Camera.of_view(train, view))["rgb"]
        mean = whole.reshape(size, factor, size, factor, 3).mean(axis=(1, 3))
        error, shifted_error = (np.abs(method.render(Camera(c2w, intrinsics + shift, size, size))["rgb"] - mean).mean()
                                for shift in (0.0, np.float32([0, 0, 0.5, 0.5])))  # (a centre half a pixel off)
        assert error < 0.03 and (factor == 1 or error < 0.5 * shifted_error), (factor, error, shifted_error)
    # a masked part: a coarse pixel is kept only where its whole block is (the rays stage's rule)
    masked = copy.copy(train)
    masked.masks = np.zeros(train.images.shape[:3], np.uint8)
    masked.masks[:, :10, :] = 1  # rows 0-9: whole 4 x 4 blocks in rows 0-7, half a block in rows 8-9
    _, kept, _, _ = training.StepViews(masked, cfg.active, seed=0)(1)
    np.testing.assert_array_equal(kept, np.arange(6)[:, None].repeat(6, axis=1) < 2)
    for bad, key in (({"downscales": [2, 4], "until": [3, 6]}, "downscales"),
                     ({"downscales": [4, 2], "until": [6, 3]}, "until"),
                     ({"downscales": [4], "until": [3, 6]}, "until"),
                     ({"downscales": [1], "until": [3]}, "downscales")):
        with pytest.raises(ConfigError, match=f"presets.splats.coarse_to_fine.{key}"):
            config.from_dict(splats_params(coarse_to_fine=bad))


# -- the method and its files ---------------------------------------------------------------------------------------

def test_a_trained_models_frames_compile_projection_once_and_equal_training_renders(rays_dir):
    """Frames take their projection and colours from the native op where it is built; without it (or with
    ``native_frames`` off), out of ``fit`` they are one XLA computation, for every image size, and while ``fit``
    runs (validation) TensorFlow's ops one by one: the same frames."""
    cfg = config.from_dict(splats_params())
    train = ray_files.load(rays_dir, "train")
    method = methods.build(cfg, train)
    method.gaussians.assign(some_gaussians(60))
    native = rasterizer.native_library() is not None
    for cam in (Camera.of_view(train, 0), Camera.of_view(train, 1).resized(17, 30)):
        by_native = method.render(cam)
        method.native_frames = False
        method._fitting = True
        by_ops = method.render(cam)
        method._fitting = False
        compiled = method.render(cam)
        method.native_frames = True
        for key in ("rgb", "depth", "opacity"):
            np.testing.assert_allclose(compiled[key], by_ops[key], atol=2e-5, err_msg=key)
            np.testing.assert_allclose(by_native[key], by_ops[key], atol=2e-4 if native else 0, err_msg=key)
    assert method._projections[1].experimental_get_tracing_count() == 1  # one computation for both sizes


def test_the_method_renders_saves_and_loads_behind_the_protocol(rays_dir, tmp_path):
    from nerf_pipeline import trained_folder

    cfg = config.from_dict(splats_params())
    train, val = ray_files.load(rays_dir, "train"), ray_files.load(rays_dir, "val")
    method = methods.build(cfg, train)
    assert isinstance(method, methods.Method) and method.name == "splats"
    arrays = some_gaussians(50)
    arrays["means"] *= 1.5
    method.gaussians.assign(arrays)
    cam = Camera.of_view(val, 0)
    out = method.render(cam)
    assert out["rgb"].shape == (24, 24, 3) and out["depth"].shape == out["opacity"].shape == (24, 24)
    assert out["opacity"].max() > 0.1
    # depth: the distance along each pixel's unit ray (camera.generate_rays), as the NeRF's
    g = method.gaussians
    z_rgb, z_depth, z_alpha = rasterizer.render(g.means, g.log_scales, g.quats, g.opacity_logits, g.sh(), 3,
                                                rasterizer.Camera(cam.pose, *cam.intrinsics, 24, 24),
                                                tf.zeros(3))
    _, directions = cam.rays()
    forward = -np.asarray(cam.pose)[:3, 2]
    np.testing.assert_allclose(out["depth"] * (directions @ forward), z_depth.numpy(), rtol=1e-4, atol=1e-5)
    trained_folder.write_method(tmp_path, method.name)
    method.save(tmp_path)
    assert (tmp_path / "splats.ply").is_file()
    loaded = methods.load(tmp_path, train_part=train)
    assert isinstance(loaded, splats_method.SplatsMethod)
    np.testing.assert_array_equal(loaded.render(cam)["rgb"], out["rgb"])
    np.testing.assert_array_equal(loaded.training_poses(), train.poses)
    assert loaded.extent() == cfg.scene.bound and loaded.background == cfg.data.background
    with pytest.raises(NotImplementedError):
        loaded.density(np.zeros((4, 3), np.float32))
    points, colours = loaded.points(train, 10, 0.0, seed=0)
    assert points.shape == colours.shape == (10, 3)
    # every pixel of the one val view: a point where it is at least half opaque, at the blend's depth along its ray
    points, colours = loaded.points(val, 24 * 24, 0.5, seed=0)
    kept = out["opacity"] >= 0.5
    assert len(points) == kept.sum() > 0 and np.all((colours >= 0) & (colours <= 1))
    distances = np.linalg.norm(points - cam.position, axis=1)
    np.testing.assert_allclose(np.sort(distances), np.sort(out["depth"][kept] / out["opacity"][kept]), rtol=1e-4)


def test_splats_ply_is_what_3dgs_viewers_read(tmp_path):
    """Written in 3DGS's layout, read back by plyfile (3DGS's own reader), the same Gaussians render the same."""
    plyfile = pytest.importorskip("plyfile")
    arrays = some_gaussians(40, seed=2)
    path = tmp_path / "splats.ply"
    ply.write(path, arrays)
    data = plyfile.PlyData.read(str(path))
    vertex = data["vertex"]
    assert [p.name for p in vertex.properties] == ply.PROPERTIES
    assert all(p.val_dtype in ("f4", "float32", "float") for p in vertex.properties)
    assert data.byte_order == "<" and not data.text
    # as 3DGS's load_ply reads it
    xyz = np.stack([vertex["x"], vertex["y"], vertex["z"]], axis=1)
    dc = np.stack([vertex[f"f_dc_{i}"] for i in range(3)], axis=1)
    rest = np.stack([vertex[f"f_rest_{i}"] for i in range(45)], axis=1).reshape(-1, 3, 15).transpose(0, 2, 1)
    theirs = {"means": xyz, "sh_dc": dc[:, None, :], "sh_rest": rest, "opacity_logits": np.asarray(vertex["opacity"]),
              "log_scales": np.stack([vertex[f"scale_{i}"] for i in range(3)], axis=1),
              "quats": np.stack([vertex[f"rot_{i}"] for i in range(4)], axis=1)}
    ours = ply.read(path)
    for name in gaussians.NAMES:
        np.testing.assert_array_equal(theirs[name], arrays[name], err_msg=name)
        np.testing.assert_array_equal(ours[name], arrays[name], err_msg=name)
    np.testing.assert_array_equal(np.stack([vertex[n] for n in ("nx", "ny", "nz")], 1), 0)
    cam = rasterizer.Camera.from_focal(camera.look_at((0.5, -3.0, 1.0)), 30.0, 32, 24)

    def image(a):
        sh = np.concatenate([a["sh_dc"], a["sh_rest"]], axis=1)
        return rasterizer.render(*(tf.constant(a[n]) for n in ("means", "log_scales", "quats", "opacity_logits")),
                                 tf.constant(sh), 3, cam, tf.zeros(3))[0].numpy()

    expected = image(arrays)
    assert expected.max() > 0.05
    np.testing.assert_array_equal(image(theirs), expected)


def test_a_ply_of_a_lower_degree_or_another_order_reads(tmp_path):
    plyfile = pytest.importorskip("plyfile")
    arrays = some_gaussians(5)
    arrays["sh_rest"][:, 3:] = 0  # degree 1: 3 coefficients a channel
    names = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", *[f"f_rest_{c * 3 + k}" for c in range(3) for k in range(3)],
             "opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    table = ply.to_table(arrays)
    columns = {name: table[:, i] for i, name in enumerate(ply.PROPERTIES)}
    for channel in range(3):
        for k in range(3):
            columns[f"f_rest_{channel * 3 + k}"] = arrays["sh_rest"][:, k, channel]
    order = names[::-1]
    records = np.empty(5, dtype=[(n, "f4") for n in order])
    for n in order:
        records[n] = columns[n]
    plyfile.PlyData([plyfile.PlyElement.describe(records, "vertex")], byte_order="<").write(str(tmp_path / "a.ply"))
    back = ply.read(tmp_path / "a.ply")
    for name in gaussians.NAMES:
        np.testing.assert_array_equal(back[name], arrays[name], err_msg=name)


# -- the preset's params --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path, value, message", [
    ("densify.every", 0, "'presets.splats.densify.every' must be >= 1; got 0"),
    ("densify.grad_treshold", 1e-4, "unknown key 'presets.splats.densify.grad_treshold'. Did you mean "
                                    "'presets.splats.densify.grad_threshold'?"),
    ("densify.stop", 50, "'presets.splats.densify.stop' must be above densify.start (100)"),
    ("optimizer.sh_dc", -0.1, "'presets.splats.optimizer.sh_dc' must be > 0; got -0.1"),
    ("sh_degree", 4, "'presets.splats.sh_degree' must be <= 3; got 4"),
    ("crop", 8, "'presets.splats.crop' must be >= 16; got 8"),
    ("init.opacity", 1.0, "'presets.splats.init.opacity' must be < 1; got 1.0"),
    ("field", {"type": "mlp"}, "unknown key 'presets.splats.field'"),
    ("method", "splat", "'presets.splats.method' must be one of 'nerf', 'splats'; got 'splat'. Did you mean 'splats'?"),
])
def test_a_bad_splats_param_is_refused_by_name(path, value, message):
    params = splats_params()
    section = params["presets"]["splats"]
    *parents, key = path.split(".")
    for parent in parents:
        section = section[parent]
    section[key] = value
    with pytest.raises(ConfigError) as error:
        config.from_dict(copy.deepcopy(params))
    assert message in str(error.value)


def test_the_splats_preset_is_valid_and_chosen_by_its_method():
    cfg = config.from_dict(splats_params())
    assert isinstance(cfg.active, config.SplatsPresetConfig) and cfg.active.method == "splats"
    assert isinstance(cfg.presets["hashgrid"], config.PresetConfig)
    assert methods.module_for(cfg.active.method) is splats_method
    params = splats_params()
    params["scene"]["appearance"] = "on"  # (splats have one: a colour transform per training view)
    assert config.from_dict(params).scene.appearance == "on"


def test_coarse_views_smaller_than_four_pixels_are_refused_by_name(rays_dir):
    cfg = config.from_dict(splats_params(coarse_to_fine={"downscales": [8], "until": [10]}))
    with pytest.raises(ConfigError, match=r"'presets.splats.coarse_to_fine.downscales' holds 8.*24x24"):
        training.StepViews(ray_files.load(rays_dir, "train"), cfg.active, seed=0)

"""The chunked renderer: the same pixels in chunks as at once, background rays skipped exactly, rays stopped once
opaque, few shapes."""

import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_params

from nerf_pipeline.camera import generate_rays
from nerf_pipeline.config import from_dict
from nerf_pipeline.model.nerf import build_nerf
from nerf_pipeline.model.renderer import SMALLEST_CHUNK, ChunkedRenderer, chunk_size
from nerf_pipeline.scenes import synthetic


@pytest.fixture(scope="module")
def rays():
    scene = synthetic.render_scene(num_views=2, image_size=24, seed=0, supersample=1)
    return generate_rays(scene["poses"], 24, 24, scene["focal"])


def model(background=0.0):
    params = tiny_params()
    params["presets"]["hashgrid"]["field"].update(num_levels=4, log2_table_size=12, max_resolution=32)
    nerf = build_nerf(from_dict(params).active, near=2.0, far=6.0, contracted=False, bound=1.5,
                      background=background, seed=0)
    nerf.field.encoding.table.assign(tf.random.normal(nerf.field.encoding.table.shape, seed=3))
    return nerf


def test_chunk_sizes_are_few_powers_of_two():
    assert chunk_size(20000, 16384) == 16384
    assert chunk_size(16384, 16384) == 16384
    assert chunk_size(5000, 16384) == 8192
    assert chunk_size(3, 16384) == SMALLEST_CHUNK
    assert chunk_size(10000, 12000) == 12000  # never more than the configured chunk
    sizes = {chunk_size(n, 16384) for n in range(1, 20000, 37)}
    assert len(sizes) <= 6


def test_chunked_renderer_pads_the_last_chunk(rays):
    origins, directions = rays
    nerf = model()
    whole = ChunkedRenderer(nerf, 100000)(origins, directions)
    chunked = ChunkedRenderer(nerf, 1000)(origins, directions)  # 1152 rays: 1000 + 152 padded
    np.testing.assert_allclose(whole["rgb"], chunked["rgb"], atol=1e-5)


def test_renderer_skips_only_rays_that_would_be_background(rays):
    origins, directions = rays
    nerf = model(background=0.25)
    grid = np.zeros((32, 32, 32), np.float32)
    grid[12:20, 12:20, 10:22] = 1.0  # a block in the middle: many rays miss it
    nerf.sampler.grid.occupied.assign(grid)
    o, d = tf.constant(origins[0].reshape(-1, 3)), tf.constant(directions[0].reshape(-1, 3))
    direct = nerf.render_rays(o, d, training=False)
    hit = nerf.rays_hit(o, d).numpy()
    assert 0 < hit.sum() < len(hit)
    may_hit = nerf.rays_may_hit(o.numpy(), d.numpy())  # the renderer marches only these
    assert np.all(may_hit[hit]) and may_hit.sum() < len(hit)
    rendered = ChunkedRenderer(nerf, 256, stop_transmittance=0.0)(o.numpy(), d.numpy())
    np.testing.assert_allclose(rendered["rgb"], direct["rgb"].numpy(), atol=1e-5)
    np.testing.assert_allclose(rendered["acc"], direct["acc"].numpy(), atol=1e-6)
    np.testing.assert_allclose(rendered["depth"], direct["depth"].numpy(), atol=1e-4)
    np.testing.assert_allclose(rendered["rgb"][~hit], 0.25)


def test_rays_stop_once_opaque_and_differ_by_at_most_the_light_left(rays):
    origins, directions = rays
    nerf = model(background=1.0)
    # A dense medium: exp(4) = 55 per unit of length makes every ray opaque within its first pass of
    # samples (optical depth 4 over each 1/13 of a unit), but not in its first sample.
    bias = nerf.field.density_out.bias.numpy()
    bias[0] = 4.0
    nerf.field.density_out.bias.assign(bias)
    o, d = origins[0].reshape(-1, 3), directions[0].reshape(-1, 3)
    direct = {k: v.numpy() for k, v in nerf.render_rays(tf.constant(o), tf.constant(d), training=False).items()}
    every = ChunkedRenderer(nerf, 256, stop_transmittance=0.0)
    stopping = ChunkedRenderer(nerf, 256, stop_transmittance=1e-4, samples_per_pass=8)
    full, stopped = every(o, d), stopping(o, d)
    hit = nerf.rays_hit(tf.constant(o), tf.constant(d)).numpy()
    assert hit.sum() > 100 and direct["acc"][hit].min() > 1 - 1e-4  # every ray that meets matter ends opaque
    num_samples = nerf.sampler.sampler_config.num_samples
    assert every.samples_evaluated == hit.sum() * num_samples
    assert stopping.samples_evaluated == hit.sum() * 8  # one pass each: the other 3/4 were never asked
    np.testing.assert_allclose(full["rgb"], direct["rgb"], atol=1e-5)
    np.testing.assert_allclose(stopped["rgb"], direct["rgb"], atol=1e-4)
    np.testing.assert_allclose(stopped["depth"], direct["depth"], rtol=1e-3)
    assert np.abs(stopped["rgb"] - direct["rgb"]).max() > 0  # it did stop short, not composite everything


def test_a_changing_number_of_hit_rays_does_not_recompile(rays):
    """The grid changes during training, and so does the number of rays that cross it: the compiled
    render function must not see a new shape each time."""
    origins, directions = rays
    nerf = model()
    renderer = ChunkedRenderer(nerf, 4096)
    rng = np.random.default_rng(0)
    for fraction in (0.2, 0.25, 0.3, 0.35, 0.4, 0.45):
        nerf.sampler.grid.occupied.assign((rng.uniform(size=(32, 32, 32)) < fraction).astype(np.float32))
        renderer(origins[0], directions[0])
    assert renderer.composite_chunk.experimental_get_tracing_count() <= 2

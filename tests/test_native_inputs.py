"""The native kernels on input outside what training normally feeds them: NaN, infinite and huge points, a table
smaller than its levels, an empty occupancy grid.

What TensorFlow's reference does there is the standard: the kernels give what it gives compiled by XLA (as training
runs it), or refuse the input with an InvalidArgumentError; never a read or write out of bounds. Each case runs in a
child process, so a kernel that crashes (SIGSEGV) fails its case rather than killing pytest. The children load the
op library from the user's cache, as the other native tests do (built there once).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

PRELUDE = textwrap.dedent("""
    import numpy as np, tensorflow as tf
    from nerf_pipeline.native import build
    library = build.load("nerf_ops")
    if library is None:
        print("unavailable"); raise SystemExit(0)
""")


def run_child(*parts: str) -> list[str]:
    """The output lines of a child that runs ``parts`` in turn; fails on a crash or an exception, skips where the
    native ops cannot be built."""
    environment = {key: value for key, value in os.environ.items() if key != "NERF_PIPELINE_NATIVE"}
    code = PRELUDE + "".join(textwrap.dedent(part) for part in parts)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**environment, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=900)
    assert result.returncode == 0, f"the child failed ({result.returncode}):\n{result.stderr[-4000:]}"
    lines = result.stdout.splitlines()
    if lines == ["unavailable"]:
        pytest.skip("the native ops are not available here")
    return lines


def test_nan_infinite_and_huge_points_encode_as_the_xla_reference_does():
    """A NaN coordinate made the dense levels read (forward) and write (table gradient) about 2^31 rows past the
    table: exit 139. XLA turns NaN into the integer 0, so the reference reads the cell 0 rows with NaN weights; the
    kernel now does the same: the point encodes as NaN and adds NaN to those rows, nothing out of bounds."""
    lines = run_child("""
        from nerf_pipeline.model.encodings import HashEncoding
        encoding = HashEncoding(5, 2, 12, 4, 96, 1.5)
        assert encoding.uses_native_op and 0 < sum(encoding.level_hashed) < 5  # dense and hashed levels
        encoding.table.assign(tf.random.uniform(encoding.table.shape, -1.0, 1.0, seed=0))
        rng = np.random.default_rng(0)
        points = rng.uniform(-1.5, 1.5, (400, 3)).astype(np.float32)
        points[3] = np.nan
        points[5, 1] = np.nan
        points[7] = [np.inf, -np.inf, 1e30]
        points[9] = [-1e30, 3e38, -3e38]
        points = tf.constant(points)
        upstream = tf.constant(rng.normal(size=(400, encoding.output_dim)).astype(np.float32))

        @tf.function(jit_compile=True)
        def reference(p):
            with tf.GradientTape() as tape:
                encoded = encoding.reference_call(p)
                loss = tf.reduce_sum(encoded * upstream)
            return encoded, tf.convert_to_tensor(tape.gradient(loss, encoding.table))

        want_values, want_table = (t.numpy() for t in reference(points))
        values = encoding(points).numpy()
        table = encoding.table_gradient(points, upstream).numpy()
        points_gradient = encoding.points_gradient(points, upstream).numpy()
        # XLA rounds a little differently from TensorFlow's eager ops (the kernels' exact reference, which refuses a
        # NaN point on a dense level): NaN where XLA has NaN, XLA's values to 1e-4, the eager ones to float rounding.
        np.testing.assert_allclose(values, want_values, rtol=0, atol=1e-4, equal_nan=True)
        np.testing.assert_allclose(table, want_table, rtol=0, atol=1e-3, equal_nan=True)
        finite = np.delete(np.arange(400), [3, 5])
        np.testing.assert_allclose(values[finite], encoding.reference_call(tf.gather(points, finite)).numpy(), rtol=0,
                                   atol=1e-6)
        print("nan points", *np.flatnonzero(np.isnan(values).any(1)))
        print("nan table rows", int(np.isnan(table).any(1).sum()), "of", len(table))
        print("finite points gradient elsewhere", bool(np.isfinite(np.delete(points_gradient, [3, 5], 0)).all()))
    """)
    assert lines[0] == "nan points 3 5"
    nan_rows, total = int(lines[1].split()[3]), int(lines[1].split()[5])
    assert 0 < nan_rows <= 2 * 8 * 5 < total  # the cell-0 corners' rows of the two NaN points, on each level
    assert lines[2] == "finite points gradient elsewhere True"


def test_a_table_smaller_than_its_levels_is_refused():
    """Encoding with a table short of the levels' rows returned heap garbage; now every op refuses it."""
    lines = run_child("""
        from nerf_pipeline.model.encodings import HashEncoding
        encoding = HashEncoding(4, 2, 10, 4, 40, 1.0)
        attrs, rows = encoding._op_attrs(), int(encoding.table.shape[0])
        points = tf.random.uniform([64, 3], -1.0, 1.0, seed=0)
        upstream = tf.ones([64, encoding.output_dim])
        short = encoding.table[:-1]
        overlapping = {**attrs, "offsets": [0, 1] + attrs["offsets"][2:]}
        calls = {
            "encode": lambda: library.nerf_hash_grid_encode(points, short, **attrs),
            "points gradient": lambda: library.nerf_hash_grid_points_grad(points, short, upstream, **attrs),
            "table gradient": lambda: library.nerf_hash_grid_table_grad(points, upstream, table_rows=rows - 1,
                                                                         **attrs),
            "overlapping levels": lambda: library.nerf_hash_grid_encode(points, encoding.table, **overlapping),
            "a table of one dimension": lambda: library.nerf_hash_grid_points_grad(
                points, tf.reshape(encoding.table, [-1]), upstream, **attrs),
        }
        for name, call in calls.items():
            try:
                call()
                print(name, "| not refused")
            except tf.errors.InvalidArgumentError as e:
                print(name, "|", e.message.split("}} ")[-1].split(" [Op:")[0])
        print("rows", rows)
    """)
    rows = int(lines[-1].split()[1])
    assert lines[:-1] == [
        f"encode | the table has {rows - 1} rows but the levels index rows up to {rows} (offsets, resolutions and "
        "log2_table_size do not match the table)",
        f"points gradient | the table has {rows - 1} rows but the levels index rows up to {rows} (offsets, "
        "resolutions and log2_table_size do not match the table)",
        f"table gradient | the table has {rows - 1} rows but the levels index rows up to {rows} (offsets, "
        "resolutions and log2_table_size do not match the table)",
        "overlapping levels | level 1 starts at table row 1, inside the rows of the levels before it (they end at "
        "row 125)",
        "a table of one dimension | table must be [T, F]",
    ]


MARCH = """
    from nerf_pipeline.config import OccupancySamplerConfig
    from nerf_pipeline.model.sampling import make_sampler
    from nerf_pipeline.model.space import BoxSpace
    G, M, S, space = 8, 16, 8, BoxSpace(1.0)
    sampler = make_sampler(OccupancySamplerConfig(
        type="occupancy", num_samples=S, stratified=False, num_march=M, grid_resolution=G, update_every=1,
        warmup_steps=0, alpha_threshold=0.01, decay=0.95))
    attrs = {"extent": 1.0, "contract_bound": 0.0}
"""


def test_nan_and_out_of_range_points_march_as_the_xla_reference_does():
    """Points beyond int32 once the grid scales them went to cell 0 (a C++ cast of such a float is undefined); XLA's
    conversion saturates, so the reference reads the last cell. NaN reads cell 0 in both."""
    lines = run_child(MARCH, """
        grid = np.zeros((G, G, G), np.float32)
        grid[G - 1] = 1.0  # only the +x face is occupied
        grid[0, 0, 0] = 1.0
        sampler.grid.occupied.assign(grid)
        origins = np.zeros((6, 3), np.float32)
        directions = np.array([[1e30, 0, 0], [-1e30, 0, 0], [np.inf, 0, 0], [np.nan, 0, 0], [0.3, 0.2, 0.1],
                               [3e38, -3e38, -3e38]], np.float32)
        origins[3] = [np.nan, np.nan, np.nan]
        edges = np.tile(np.linspace(1.0, 2.0, M + 1, dtype=np.float32), (6, 1))
        origins, directions, edges = (tf.constant(a) for a in (origins, directions, edges))

        @tf.function(jit_compile=True)
        def reference(o, d, e):  # OccupancySampler.march on these edges, then its samples
            middles = 0.5 * (e[:, 1:] + e[:, :-1])
            points = tf.reshape(o[:, None, :] + d[:, None, :] * middles[..., None], [-1, 3])
            bins = tf.reshape(sampler.grid.lookup(points, space.extent), tf.shape(middles))
            bins *= tf.cast(e[:, 1:] > e[:, :-1], tf.float32)
            return (tf.reduce_any(bins > 0, axis=-1), *sampler._sample_bins(e, bins, False, None))

        want_hits, want_t, want_deltas = (t.numpy() for t in reference(origins, directions, edges))
        occupied = tf.convert_to_tensor(sampler.grid.occupied)
        hits = library.nerf_occupancy_hits(origins, directions, edges, occupied, **attrs).numpy()
        t, deltas = library.nerf_occupancy_sample(origins, directions, edges, occupied, tf.fill([6, S], 0.5), **attrs)
        print("reference hits", *want_hits.astype(int))
        print("kernel hits", *hits.astype(int))
        np.testing.assert_allclose(t.numpy(), want_t, rtol=1e-6, equal_nan=True)
        np.testing.assert_allclose(deltas.numpy(), want_deltas, rtol=1e-6, equal_nan=True)
    """)
    assert lines == ["reference hits 1 0 1 1 0 1", "kernel hits 1 0 1 1 0 1"]


def test_an_empty_occupancy_grid_and_nan_sample_offsets_do_not_crash_the_march():
    """A [0, 0, 0] grid made the march read before its buffer; a NaN sample offset made it index its list of
    occupied bins at INT32_MIN. The first is refused, the second gives a NaN depth, as the reference under XLA."""
    lines = run_child(MARCH, """
        origins = tf.constant([[0.0, 0.0, -3.0]] * 4)
        directions = tf.constant([[0.0, 0.0, 1.0]] * 4)
        edges = tf.tile(tf.linspace(2.0, 4.0, M + 1)[None], [4, 1])
        for name, call in {
            "hits": lambda: library.nerf_occupancy_hits(origins, directions, edges, tf.zeros([0, 0, 0]), **attrs),
            "sample": lambda: library.nerf_occupancy_sample(origins, directions, edges, tf.zeros([0, 0, 0]),
                                                            tf.fill([4, S], 0.5), **attrs),
        }.items():
            try:
                call()
                print(name, "| not refused")
            except tf.errors.InvalidArgumentError as e:
                print(name, "|", e.message.split("}} ")[-1].split(" [Op:")[0])
        offsets = np.full([4, S], 0.5, np.float32)
        offsets[1, 2] = offsets[3, :] = np.nan
        t, deltas = library.nerf_occupancy_sample(origins, directions, edges, tf.ones([G, G, G]), offsets, **attrs)
        print("nan depths", *(f"{r},{s}" for r, s in np.argwhere(np.isnan(t.numpy()))))
        print("finite deltas", bool(np.isfinite(deltas.numpy()).all()))
    """)
    assert lines[:2] == ["hits | occupied must be [G, G, G] with G >= 1, got [0,0,0]",
                         "sample | occupied must be [G, G, G] with G >= 1, got [0,0,0]"]
    assert lines[2] == "nan depths 1,2 " + " ".join(f"3,{s}" for s in range(8))
    assert lines[3] == "finite deltas True"

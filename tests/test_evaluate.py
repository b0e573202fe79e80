"""The evaluate stage's split: the scene's test split when it has one (the published protocol), else val."""

import logging

import numpy as np
from conftest import tiny_params

from nerf_pipeline import config
from nerf_pipeline.scenes import ray_files


def rays_folder(folder, parts):
    for part, count in parts.items():
        writer = ray_files.PartWriter(folder, part, count, 4, 4, with_depth=False)
        for _ in range(count):
            writer.add(np.zeros((4, 4, 3), np.uint8))
        writer.finish(np.tile(np.eye(4), (count, 1, 1)), [[4.0, 4.0, 2.0, 2.0]] * count, range(count), 2.0, 6.0, False)
    return folder


def test_the_test_split_when_there_is_one(tmp_path, caplog):
    params = tiny_params()
    split = config.from_dict(params).evaluate.split
    assert ray_files.evaluation_part(rays_folder(tmp_path / "a", {"train": 3, "val": 2, "test": 4}),
                                     split).part == "test"
    with caplog.at_level(logging.INFO):
        assert ray_files.evaluation_part(rays_folder(tmp_path / "b", {"train": 3, "val": 2}), split).part == "val"
    assert "no test split: evaluating on val" in caplog.text
    params["evaluate"]["split"] = "val"
    assert ray_files.evaluation_part(tmp_path / "a", config.from_dict(params).evaluate.split).part == "val"


def grid_of(psnrs, size=24):
    from nerf_pipeline.stages import evaluate

    rng = np.random.default_rng(0)
    panels = [[rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(3)] for _ in psnrs]
    captions = [[f"view {i}", f"PSNR {psnr:.2f} dB", "2 to 6"] for i, psnr in enumerate(psnrs)]
    return evaluate.labelled_grid(panels, captions), panels


def test_the_grid_has_column_titles_and_each_views_psnr():
    """eval/grid.png (issue 30): a title band over the columns, and each row's caption band with its PSNR; 24-pixel
    views are enlarged 4x (nearest), their pixels kept."""
    grid, panels = grid_of([20.0, 30.0])
    column = 96  # 24 px x 4
    assert grid.dtype == np.uint8 and grid.shape[1] == 3 * column
    band = (grid.shape[0] - 2 * column) // 3
    assert band >= 12 and grid.shape[0] == 3 * band + 2 * column
    # the panels, enlarged: each pixel a 4 x 4 block
    for r, row in enumerate(panels):
        top = band + r * (column + band)
        for c, panel in enumerate(row):
            np.testing.assert_array_equal(grid[top:top + column, c * column:(c + 1) * column][::4, ::4], panel)
    # text in every title and caption cell: white strokes on the band's grey
    for c in range(3):
        for top in (0, band + column, 2 * band + 2 * column):
            cell = grid[top:top + band, c * column:(c + 1) * column]
            assert (cell > 200).any() and (cell == 40).mean() > 0.5, (top, c)
    # the prediction's caption says the row's PSNR: it differs between 20.00 and 30.00 dB, and nowhere else
    other, _ = grid_of([20.0, 31.5])
    changed = np.argwhere((grid != other).any(axis=-1))
    assert len(changed)
    rows, cols = changed[:, 0], changed[:, 1]
    assert rows.min() >= 2 * band + 2 * column and cols.min() >= column and cols.max() < 2 * column
    same, _ = grid_of([20.0, 30.0])
    np.testing.assert_array_equal(grid, same)  # deterministic: DVC sees the same file for the same figures


def test_a_wide_view_keeps_its_size_in_the_grid():
    grid, panels = grid_of([25.0], size=120)
    assert grid.shape[1] == 3 * 120
    band = grid.shape[0] - 120
    assert band // 2 >= 12
    np.testing.assert_array_equal(grid[band // 2:band // 2 + 120, 120:240], panels[0][1])

"""Scoring (``nerf_pipeline/scoring/``): the metrics, and the one render-then-score loop giving the figures the
evaluate stage computed before it existed."""

import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_params, write_rays

from nerf_pipeline import config, scoring
from nerf_pipeline.methods.nerf import NeRFMethod
from nerf_pipeline.model.nerf import build_nerf
from nerf_pipeline.model.renderer import ChunkedRenderer
from nerf_pipeline.scenes import ray_files


def test_depth_error_counts_only_pixels_with_a_surface():
    target = np.array([[[0.0, 2.0], [3.0, 0.0]]])
    predicted = np.array([[[9.0, 2.5], [2.0, 9.0]]])
    np.testing.assert_allclose(scoring.depth_errors(predicted, target), [0.75])


def test_psnr_of_mse():
    np.testing.assert_allclose(scoring.psnr_of_mse([0.01, 0.0]), [20.0, 100.0])


def test_score_views_gives_the_evaluate_stages_figures(tmp_path):
    """Each row is what evaluate computed view by view before the seam (the renderer inside ``appearance_near``,
    ``image_metrics``, ``depth_errors``), with the unclipped MSE validation takes; ``on_view`` sees each render."""
    rays = write_rays(tmp_path / "rays", num_views=7, image_size=16, num_val=3)
    train, val = ray_files.load(rays, "train"), ray_files.load(rays, "val")
    model = build_nerf(config.from_dict(tiny_params()).active, near=2.0, far=6.0, contracted=False, bound=1.5,
                       background=0.0, seed=0, appearance_views=train.num_views)
    model.field.appearance.assign(tf.random.normal(model.field.appearance.shape, seed=4))
    model.field.encoding.table.assign(tf.random.normal(model.field.encoding.table.shape, seed=3) * 0.5)
    method = NeRFMethod(model, chunk_rays=128, train_poses=train.poses)
    seen = []
    rows = scoring.score_views(method, val, [0, 2], on_view=lambda view, out, target: seen.append((view, out)))

    renderer = ChunkedRenderer(model, 128)
    for row, view in zip(rows, [0, 2]):
        with model.appearance_near(train.poses[:, :3, 3], val.poses[view][:3, 3]):
            out = renderer(*val.view_rays(view))
        psnr, ssim = scoring.image_metrics(out["rgb"][None], val.view_rgb(view)[None])
        depth_mae = scoring.depth_errors(out["depth"][None], np.asarray(val.depth[view])[None])
        assert row["view_id"] == val.view_ids[view]
        assert (row["psnr"], row["ssim"], row["depth_mae"]) == (float(psnr[0]), float(ssim[0]), float(depth_mae[0]))
        assert row["mse"] == pytest.approx(float(np.mean(np.square(out["rgb"] - val.view_rgb(view)))), rel=1e-6)
        assert row["render_s"] > 0
    assert [view for view, _ in seen] == [0, 2] and seen[0][1]["rgb"].shape == (16, 16, 3)


def test_an_lpips_scorer_adds_its_column(tmp_path):
    rays = write_rays(tmp_path / "rays", num_views=3, image_size=16, num_val=1)
    val = ray_files.load(rays, "val")

    class Grey:  # a method that renders mid-grey everywhere
        name, background = "grey", 0.0

        def render(self, cam):
            return {"rgb": np.full((cam.height, cam.width, 3), 0.5, np.float32),
                    "depth": np.zeros((cam.height, cam.width), np.float32),
                    "opacity": np.ones((cam.height, cam.width), np.float32)}

    (row,) = scoring.score_views(Grey(), val, [0], lpips=lambda predicted, target: np.full(len(predicted), 0.25))
    assert row["lpips"] == 0.25 and row["mse"] == pytest.approx(float(np.mean(np.square(0.5 - val.view_rgb(0)))),
                                                                rel=1e-6)


def test_validations_loss_is_the_kept_pixels_error():
    """``mse`` (validation's loss, issue 30.9) is over the kept pixels, as the PSNR beside it: what a mask leaves
    out, wrong as it may be rendered, adds nothing."""
    import numpy as np

    from nerf_pipeline import scoring

    class Flat:
        def render(self, cam):
            rgb = np.full((cam.height, cam.width, 3), 0.5, np.float32)
            rgb[:, :2] = 1.0  # wrong where the mask leaves out
            return {"rgb": rgb, "depth": np.zeros(rgb.shape[:2], np.float32),
                    "opacity": np.ones(rgb.shape[:2], np.float32)}

    class Part:
        height, width, depth = 16, 16, None
        view_ids = np.array([7])
        poses = np.eye(4, dtype=np.float32)[None]
        intrinsics = np.array([[5.0, 5.0, 8.0, 8.0]], np.float32)

        def view_rgb(self, i):
            return np.full((16, 16, 3), 0.4, np.float32)

        def view_mask(self, i):
            kept = np.ones((16, 16), bool)
            kept[:, :2] = False
            return kept

    (row,) = scoring.score_views(Flat(), Part(), [0])
    assert row["mse"] == pytest.approx(0.01, rel=1e-5)  # 0.1 off on the kept pixels only
    assert row["psnr"] == pytest.approx(20.0, abs=1e-3)

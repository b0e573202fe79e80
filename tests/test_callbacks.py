"""Training's callbacks: the warning when held-out views stop following training (issue 30.9)."""

from nerf_pipeline.training.callbacks import heldout_flat


def rows(train, heldout):
    return [{"epoch": i + 1, "psnr": t, "val_psnr": v} for i, (t, v) in enumerate(zip(train, heldout))]


def test_held_out_views_flat_while_training_climbs_are_named_with_their_likely_causes():
    # the turntable of issue 30.9: val at 8.4 dB for three epochs while training climbed to 25.7
    warning = heldout_flat(rows([18.0, 22.5, 25.7], [8.4, 8.4, 8.5]))
    assert warning.startswith("held-out views are not improving: val PSNR 8.4 -> 8.5 dB over epochs 1-3 while "
                              "training PSNR rose 18.0 -> 25.7 dB")
    assert "camera poses" in warning and "masks" in warning and "too few views" in warning


def test_no_warning_while_held_out_views_improve_or_training_has_not_climbed():
    assert heldout_flat(rows([20.0, 26.0, 29.0], [27.7, 31.8, 32.9])) is None  # the default run: both climb
    assert heldout_flat(rows([20.0, 20.5], [15.0, 15.1])) is None  # neither moved yet
    assert heldout_flat(rows([20.0], [15.0])) is None  # one epoch: nothing to compare

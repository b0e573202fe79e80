"""Training's callbacks: the warning when held-out views stop following training (issue 30.9), and a resumed run's
curves replayed to MLflow."""

from nerf_pipeline.training.callbacks import TrainingRecord, heldout_flat


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


def test_a_resumed_record_replays_its_rows_to_mlflow_as_training_logged_them():
    class Store:
        def __init__(self):
            self.logged = []

        def log_metrics(self, metrics, step):
            self.logged.append((step, metrics))

    store = Store()
    record = {"steps": [{"step": 2, "loss": 0.5, "psnr": 3.0}, {"step": 4, "loss": 0.25, "psnr": 6.0}],
              "history": [{"epoch": 1, "step": 4, "loss": 0.25, "psnr": 6.0, "val_loss": 0.3, "val_psnr": 5.0,
                           "epoch_s": 1.5}]}
    TrainingRecord(store, None, None, [], None, {}, record, steps_per_epoch=4, log_every=2).replay()
    assert store.logged == [(2, {"train/loss": 0.5, "train/psnr": 3.0}), (4, {"train/loss": 0.25, "train/psnr": 6.0}),
                            (4, {"val/loss": 0.3, "val/psnr": 5.0, "time/epoch_s": 1.5})]

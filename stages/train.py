"""DVC stage `train`: parse the paths, call `nerf_pipeline.train.run`."""

from nerf_pipeline import cli, train

if __name__ == "__main__":
    cli.main(train, "in_rays", "out_model", "out_metrics", "out_history", "out_progress", "out_run_file",
             "out_checkpoint")

"""DVC stage `evaluate`: parse the paths, call `nerf_pipeline.evaluate.run`."""

from nerf_pipeline import cli, evaluate

if __name__ == "__main__":
    cli.main(evaluate, "in_model", "in_rays", "in_run_file", "out_metrics", "out_per_view", "out_grid")

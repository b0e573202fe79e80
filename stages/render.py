"""DVC stage `render`: parse the paths, call `nerf_pipeline.render.run`."""

from nerf_pipeline import cli, render

if __name__ == "__main__":
    cli.main(render, "in_model", "in_rays", "in_progress", "in_run_file", "out_video", "out_depth_video", "out_gif")

"""DVC stage `download`: parse the paths, call `nerf_pipeline.download.run`."""

from nerf_pipeline import cli, download

if __name__ == "__main__":
    cli.main(download, "out_scene")

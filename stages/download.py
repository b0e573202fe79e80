"""DVC stage `download`: parse the paths that `nerf_pipeline.stages.download.run` takes, then call it."""

from nerf_pipeline.runtime import cli

if __name__ == "__main__":
    cli.main("download")

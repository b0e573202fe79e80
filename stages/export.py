"""DVC stage `export`: parse the paths that `nerf_pipeline.stages.export.run` takes, then call it."""

from nerf_pipeline.runtime import cli

if __name__ == "__main__":
    cli.main("export")

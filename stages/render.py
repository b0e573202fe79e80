"""DVC stage `render`: parse the paths that `nerf_pipeline.stages.render.run` takes, then call it."""

import _this_tree  # noqa: F401  first: this tree's nerf_pipeline, not the workspace's (see it)
from nerf_pipeline.runtime import cli

if __name__ == "__main__":
    cli.main("render")

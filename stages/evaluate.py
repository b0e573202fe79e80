"""DVC stage `evaluate`: parse the paths that `nerf_pipeline.stages.evaluate.run` takes, then call it."""

from nerf_pipeline.runtime import cli
from nerf_pipeline.stages import evaluate

if __name__ == "__main__":
    cli.main(evaluate)

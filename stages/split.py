"""DVC stage `split`: parse the paths, call `nerf_pipeline.split.run`."""

from nerf_pipeline import cli, split

if __name__ == "__main__":
    cli.main(split, "in_scene", "out_split")

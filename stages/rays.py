"""DVC stage `rays`: parse the paths, call `nerf_pipeline.rays.run`."""

from nerf_pipeline import cli, rays

if __name__ == "__main__":
    cli.main(rays, "in_scene", "in_split", "out_rays")

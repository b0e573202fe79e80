"""3D Gaussian splatting (Kerbl et al. 2023): projection, colours and a CPU rasterizer."""

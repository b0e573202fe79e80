"""nerf-pipeline: train a Neural Radiance Field from posed photos, reproducibly (DVC + MLflow)."""

__version__ = "0.1.0"

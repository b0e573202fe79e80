"""The user's errors' old home: ``nerf_pipeline.errors`` holds them (a base module, which ``config.py`` may import
without importing upward); kept so that code importing them from here still gets the same classes."""

from nerf_pipeline.errors import ConfigError, DataError, UserError

__all__ = ["ConfigError", "DataError", "UserError"]

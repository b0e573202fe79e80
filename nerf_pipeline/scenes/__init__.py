"""Scenes on disk: the normalised scene file, the built-in scene, the layouts users bring, the rays files."""

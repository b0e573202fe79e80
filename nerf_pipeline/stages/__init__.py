"""One module per DVC stage, each with one entry ``run(cfg, *, <input paths>, <output paths>)``."""

"""The NeRF as a composition of small parts (TensorFlow/Keras, no I/O).

``space`` (where the scene lives: a box, or contracted for unbounded captures) → ``sampling``
(where along each ray to evaluate: uniform, or guided by an ``occupancy`` grid) → ``fields``
(colour and density at a point, built on ``encodings``) → ``rendering`` (volume compositing).
``nerf.NeRF`` composes them and trains; ``renderer.ChunkedRenderer`` renders any number of rays.
"""

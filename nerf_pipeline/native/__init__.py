"""Native TensorFlow ops (C++), compiled on the user's machine on first use and cached (``build``)."""

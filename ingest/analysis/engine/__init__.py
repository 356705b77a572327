"""dlib's 68-point shape predictor re-implemented: the model file reader, the compiled kernel,
and the engines (``numba`` and dlib's own) behind one interface."""

"""The closed set of backends: ``cpu`` (onnxruntime) and ``tpu`` (the C++ bmrt engine)."""

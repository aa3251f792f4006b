"""ONNX / TensorRT export helpers (network specs, exporters, validators)."""

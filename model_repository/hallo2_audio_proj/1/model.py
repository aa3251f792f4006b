"""Hallo2 audio proj on the CPU target: its ONNX graph served by onnxruntime inside the python backend."""

from emoserve.triton.onnx_model import OnnxNetworkModel as TritonPythonModel  # noqa: F401

"""A generic python-backend adapter that serves one exported ONNX network with onnxruntime.

Used on the CPU target, where this Triton build has no onnxruntime backend; the GPU target serves the
same file with the native ``onnxruntime_onnx``/``tensorrt_plan`` backends. Requests with equal
non-batch shapes are concatenated into one onnxruntime call (dynamic batching); one response per
request, in order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from emoserve.onnx_runner import OnnxRunner
from emoserve.triton.backend import error_response, load_model_config, model_parameters, typed_parameter


class OnnxNetworkModel:
    def initialize(self, args):
        import triton_python_backend_utils as pb_utils

        self.pb_utils = pb_utils
        config = load_model_config(args)
        parameters = model_parameters(config)
        onnx_path = Path(args["model_repository"]) / args["model_version"] / typed_parameter(parameters, "onnx_file", str, "model.onnx")
        if not onnx_path.is_file():
            raise pb_utils.TritonModelException(f"{onnx_path} is missing: build the repository with `make repo`")
        self.runner = OnnxRunner(onnx_path, typed_parameter(parameters, "intra_op_threads", int, 0))
        declared = [entry["name"] for entry in config["input"]]
        if sorted(declared) != sorted(self.runner.input_names):
            raise pb_utils.TritonModelException(f"config inputs {declared} do not match the ONNX graph's {self.runner.input_names}")
        self.dtypes = {entry["name"]: pb_utils.triton_string_to_numpy(entry["data_type"]) for entry in config["input"]}

    def _as_graph_input(self, name: str, array: np.ndarray) -> np.ndarray:
        array = array.astype(self.dtypes[name], copy=False)
        if self.runner.input_ranks[name] == 1 and array.ndim == 2 and array.shape[1] == 1:
            array = array.reshape(-1)  # a per-item scalar: Triton's [batch, 1] is the graph's [batch]
        return array

    def prepare(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Model-specific checks and reshaping of one request's inputs; ValueError refuses the request."""
        return arrays

    def execute(self, requests):
        pb_utils = self.pb_utils
        feeds, errors = [], {}
        for index, request in enumerate(requests):
            try:
                arrays = {name: self._as_graph_input(name, pb_utils.get_input_tensor_by_name(request, name).as_numpy())
                          for name in self.runner.input_names}
                if any(a.size == 0 for a in arrays.values()):
                    raise ValueError("empty input tensor")
                if any(np.issubdtype(a.dtype, np.floating) and not np.all(np.isfinite(a)) for a in arrays.values()):
                    raise ValueError("input holds NaN or infinite values")
                feeds.append(self.prepare(arrays))
            except ValueError as exc:
                errors[index] = str(exc)
        try:
            outputs = iter(self.runner.run_grouped(feeds))
        except Exception as exc:  # onnxruntime rejected the shapes: every request of the batch learns why
            return [error_response(pb_utils, f"network failed: {exc}", "INTERNAL") for _ in requests]
        responses = []
        for index in range(len(requests)):
            if index in errors:
                responses.append(error_response(pb_utils, errors[index]))
                continue
            result = next(outputs)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(name, value) for name, value in result.items()]))
        return responses

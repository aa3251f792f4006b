"""LAM-A2E network on the CPU target: the exported ONNX graph run by onnxruntime inside the python backend.

(The GPU target replaces this model with Triton's native onnxruntime/TensorRT backend; the tensor names
and shapes are the same.) Dynamic batching hands several requests to one ``execute``; requests of equal
length run as one onnxruntime call.
"""

from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from emoserve.onnx_runner import OnnxRunner
from emoserve.constants import NUM_IDENTITIES
from emoserve.model_catalog import NETWORK_AUDIO, NETWORK_BLENDSHAPES, NETWORK_IDENTITY
from emoserve.triton_backend import error_response, load_model_config, model_parameters, typed_parameter


class TritonPythonModel:
    def initialize(self, args):
        config = load_model_config(args)
        parameters = model_parameters(config)
        onnx_path = Path(args["model_repository"]) / args["model_version"] / typed_parameter(parameters, "onnx_file", str, "model.onnx")
        if not onnx_path.is_file():
            raise pb_utils.TritonModelException(f"{onnx_path} is missing: build the repository with `make repo`")
        self.runner = OnnxRunner(onnx_path, typed_parameter(parameters, "intra_op_threads", int, 0))
        self.logger = pb_utils.Logger

    def execute(self, requests):
        feeds, errors = [], {}
        for index, request in enumerate(requests):
            audio = pb_utils.get_input_tensor_by_name(request, NETWORK_AUDIO).as_numpy()
            ids = pb_utils.get_input_tensor_by_name(request, NETWORK_IDENTITY).as_numpy().reshape(-1)
            if audio.ndim != 2 or audio.shape[1] == 0 or ids.shape[0] != audio.shape[0]:
                errors[index] = f"expected {NETWORK_AUDIO} [batch, samples>0] and {NETWORK_IDENTITY} [batch], got {audio.shape} and {ids.shape}"
            elif ((ids < 0) | (ids >= NUM_IDENTITIES)).any():
                errors[index] = f"{NETWORK_IDENTITY} must be in 0..{NUM_IDENTITIES - 1}, got {ids.tolist()}"
            else:
                feeds.append({NETWORK_AUDIO: audio, NETWORK_IDENTITY: ids.astype(np.int64)})
        outputs = iter(self.runner.run_grouped(feeds))
        responses = []
        for index in range(len(requests)):
            if index in errors:
                responses.append(error_response(pb_utils, errors[index]))
                continue
            tensor = pb_utils.Tensor(NETWORK_BLENDSHAPES, next(outputs)[NETWORK_BLENDSHAPES].astype(np.float32))
            responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
        return responses

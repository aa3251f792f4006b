"""LAM-A2E network on the CPU target: the exported ONNX graph run by onnxruntime inside the python backend.

(The GPU target replaces this model with Triton's native onnxruntime/TensorRT backend; the tensor names
and shapes are the same.) Dynamic batching hands several requests to one ``execute``; requests of equal
length run as one onnxruntime call.
"""

from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from emoserve.a2e.onnx_runner import A2EOnnxRunner
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
        self.runner = A2EOnnxRunner(onnx_path, typed_parameter(parameters, "intra_op_threads", int, 0))
        self.logger = pb_utils.Logger

    def execute(self, requests):
        items, bad = [], {}
        for index, request in enumerate(requests):
            audio = pb_utils.get_input_tensor_by_name(request, NETWORK_AUDIO).as_numpy()
            ids = pb_utils.get_input_tensor_by_name(request, NETWORK_IDENTITY).as_numpy().reshape(-1)
            if audio.ndim != 2 or audio.shape[1] == 0 or ids.shape[0] != audio.shape[0]:
                bad[index] = f"expected {NETWORK_AUDIO} [batch, samples>0] and {NETWORK_IDENTITY} [batch], got {audio.shape} and {ids.shape}"
                items.append(None)
            elif ((ids < 0) | (ids >= NUM_IDENTITIES)).any():
                bad[index] = f"{NETWORK_IDENTITY} must be in 0..{NUM_IDENTITIES - 1}, got {ids.tolist()}"
                items.append(None)
            else:
                items.append((audio, ids))
        runnable = [item for item in items if item is not None]
        outputs = iter(self.runner.run_grouped(runnable)) if runnable else iter(())
        responses = []
        for index, item in enumerate(items):
            if item is None:
                responses.append(error_response(pb_utils, bad[index]))
                continue
            tensor = pb_utils.Tensor(NETWORK_BLENDSHAPES, next(outputs).astype(np.float32))
            responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
        return responses

"""LAM-A2E network on the CPU target: the exported ONNX graph run by onnxruntime inside the python backend.

(The GPU target replaces this model with Triton's native onnxruntime/TensorRT backend; the tensor names
and shapes are the same.) Dynamic batching hands several requests to one ``execute``; requests of equal
length run as one onnxruntime call. An identity outside 0..11 is refused here: the graph's one-hot would
silently turn it into "no identity".
"""

import numpy as np

from emoserve.constants import NUM_IDENTITIES
from emoserve.model_catalog import NETWORK_AUDIO, NETWORK_IDENTITY
from emoserve.triton.onnx_model import OnnxNetworkModel


class TritonPythonModel(OnnxNetworkModel):
    def prepare(self, arrays):
        audio, ids = arrays[NETWORK_AUDIO], arrays[NETWORK_IDENTITY].reshape(-1)
        if audio.ndim != 2 or ids.shape[0] != audio.shape[0]:
            raise ValueError(
                f"expected {NETWORK_AUDIO} [batch, samples] and {NETWORK_IDENTITY} [batch, 1], got {audio.shape} and {ids.shape}"
            )
        if ((ids < 0) | (ids >= NUM_IDENTITIES)).any():
            raise ValueError(f"{NETWORK_IDENTITY} must be in 0..{NUM_IDENTITIES - 1}, got {ids.tolist()}")
        return {NETWORK_AUDIO: audio, NETWORK_IDENTITY: ids.astype(np.int64)}

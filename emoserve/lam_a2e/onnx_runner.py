"""The exported A2E network run with onnxruntime (the CPU Triton model and in-process references)."""

from __future__ import annotations

import numpy as np

from emoserve.model_catalog import NETWORK_AUDIO, NETWORK_BLENDSHAPES, NETWORK_IDENTITY
from emoserve.onnx_runner import OnnxRunner


class A2EOnnxRunner(OnnxRunner):
    def __call__(self, input_values: np.ndarray, id_idx: np.ndarray) -> np.ndarray:
        """``[B, S]`` float32 audio and ``[B]`` identities → ``[B, T, 52]`` blendshapes."""
        feeds = {
            NETWORK_AUDIO: np.asarray(input_values, dtype=np.float32),
            NETWORK_IDENTITY: np.asarray(id_idx, dtype=np.int64).reshape(-1),
        }
        return self.run(feeds)[NETWORK_BLENDSHAPES]

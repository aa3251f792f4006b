"""The exported A2E network run with onnxruntime: what the CPU Triton model and in-process references share."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from emoserve.model_catalog import NETWORK_AUDIO, NETWORK_BLENDSHAPES, NETWORK_IDENTITY


class A2EOnnxRunner:
    def __init__(self, onnx_path: str | Path, intra_op_threads: int = 0):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if intra_op_threads > 0:
            options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"])

    def __call__(self, input_values: np.ndarray, id_idx: np.ndarray) -> np.ndarray:
        """``[B, S]`` float32 audio and ``[B]`` identities → ``[B, T, 52]`` blendshapes."""
        feeds = {
            NETWORK_AUDIO: np.ascontiguousarray(input_values, dtype=np.float32),
            NETWORK_IDENTITY: np.ascontiguousarray(id_idx, dtype=np.int64).reshape(-1),
        }
        return self.session.run([NETWORK_BLENDSHAPES], feeds)[0]

    def run_grouped(self, items: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        """Run ``[b_i, S_i]`` inputs of several requests, one network call per distinct length."""
        results: list[np.ndarray | None] = [None] * len(items)
        by_length: dict[int, list[int]] = {}
        for index, (audio, _) in enumerate(items):
            by_length.setdefault(audio.shape[-1], []).append(index)
        for indices in by_length.values():
            audio = np.concatenate([items[i][0] for i in indices])
            ids = np.concatenate([np.asarray(items[i][1]).reshape(-1) for i in indices])
            output = self(audio, ids)
            offset = 0
            for i in indices:
                rows = items[i][0].shape[0]
                results[i] = output[offset : offset + rows]
                offset += rows
        return results  # type: ignore[return-value]

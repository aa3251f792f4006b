"""An exported ONNX network run with onnxruntime on CPU: what the CPU-target Triton models and the
in-process references share."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class OnnxRunner:
    def __init__(self, onnx_path: str | Path, intra_op_threads: int = 0):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if intra_op_threads > 0:
            options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.input_types = {i.name: i.type for i in self.session.get_inputs()}
        self.input_ranks = {i.name: len(i.shape) for i in self.session.get_inputs()}

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.session.run(self.output_names, {name: np.ascontiguousarray(feeds[name]) for name in self.input_names})
        return dict(zip(self.output_names, outputs))

    def run_grouped(self, requests: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        """Run several requests' ``[b_i, ...]`` inputs, one call per group of equal non-batch shapes."""
        results: list[dict[str, np.ndarray] | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for index, feeds in enumerate(requests):
            signature = tuple(feeds[name].shape[1:] for name in self.input_names)
            groups.setdefault(signature, []).append(index)
        for indices in groups.values():
            stacked = {name: np.concatenate([requests[i][name] for i in indices]) for name in self.input_names}
            outputs = self.run(stacked)
            offset = 0
            for i in indices:
                rows = requests[i][self.input_names[0]].shape[0]
                results[i] = {name: value[offset : offset + rows] for name, value in outputs.items()}
                offset += rows
        return results  # type: ignore[return-value]

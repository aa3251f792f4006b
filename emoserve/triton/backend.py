"""Small helpers shared by the python-backend ``model.py`` adapters (importable without a server)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np


def load_model_config(args: dict) -> dict:
    return json.loads(args["model_config"])


def model_parameters(model_config: dict) -> dict[str, str]:
    return {key: value["string_value"] for key, value in model_config.get("parameters", {}).items()}


def typed_parameter(parameters: dict[str, str], name: str, kind: type, default: Any) -> Any:
    """A config parameter converted to ``kind``; a malformed value fails model loading, not a request."""
    raw = parameters.get(name)
    if raw is None or raw == "":
        return default
    try:
        if kind is bool:
            lowered = raw.strip().lower()
            if lowered not in {"true", "false", "1", "0", "yes", "no"}:
                raise ValueError(raw)
            return lowered in {"true", "1", "yes"}
        return kind(raw)
    except ValueError:
        raise ValueError(f"model parameter {name}={raw!r} is not a valid {kind.__name__}") from None


def optional_input(pb_utils, request, name: str) -> np.ndarray | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def scalar_input(pb_utils, request, name: str, kind: type, default: Any) -> Any:
    value = optional_input(pb_utils, request, name)
    if value is None or value.size == 0:
        return default
    return kind(value.reshape(-1)[0])


def bytes_input(pb_utils, request, name: str) -> bytes | None:
    value = optional_input(pb_utils, request, name)
    if value is None or value.size == 0:
        return None
    item = value.reshape(-1)[0]
    return item if isinstance(item, bytes) else bytes(item)


def error_response(pb_utils, message: str, code_name: str = "INVALID_ARG"):
    code = getattr(pb_utils.TritonError, code_name)
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))


def bls_network(pb_utils, model_name: str, input_names: tuple[str, str], output_name: str):
    """A ``run_network(audio [B,S], ids [B]) -> [B,T,52]`` callable that asks another Triton model (BLS).

    Going through Triton keeps the network on its own backend: onnxruntime-in-python on CPU, native
    onnxruntime/TensorRT on the GPU target.
    """

    def run_network(audio: np.ndarray, ids: np.ndarray) -> np.ndarray:
        request = pb_utils.InferenceRequest(
            model_name=model_name,
            requested_output_names=[output_name],
            inputs=[
                pb_utils.Tensor(input_names[0], np.ascontiguousarray(audio, dtype=np.float32)),
                pb_utils.Tensor(input_names[1], np.ascontiguousarray(ids, dtype=np.int64).reshape(-1, 1)),
            ],
        )
        response = request.exec()
        if response.has_error():
            raise RuntimeError(f"{model_name} failed: {response.error().message()}")
        return pb_utils.get_output_tensor_by_name(response, output_name).as_numpy()

    return run_network

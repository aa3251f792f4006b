"""The pooled async Triton client (gRPC) opened in the app's lifespan, and what every model's engine shares:
tensor helpers, model readiness and config facts, and the Triton-error → typed-error mapping.

Triton's own errors are mapped to the API's typed errors here, and nowhere else. Each model's calls live in
its slice: ``frontend/<model>/engine.py``.
"""

from __future__ import annotations

import logging

import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException

from emoserve.model_catalog import A2E_MODELS, WEIGHTS_PARAMETER
from frontend.errors import ApiError, BadRequest, InferenceFailed, NotFound, ServiceUnavailable

log = logging.getLogger(__name__)

_DATATYPES = {np.dtype(np.float32): "FP32", np.dtype(np.int32): "INT32", np.dtype(np.bool_): "BOOL", np.dtype(np.uint64): "UINT64",
              np.dtype(np.object_): "BYTES"}


def tensor(name: str, value: np.ndarray, batched: bool = False) -> grpcclient.InferInput:
    """An input tensor from an array (``batched``: with a leading batch dimension of 1)."""
    array = value[None] if batched else value
    infer_input = grpcclient.InferInput(name, list(array.shape), _DATATYPES[array.dtype])
    infer_input.set_data_from_numpy(array)
    return infer_input


def bytes_tensor(name: str, value: bytes) -> grpcclient.InferInput:
    return tensor(name, np.array([value], dtype=np.object_))


def requested(*names: str) -> list[grpcclient.InferRequestedOutput]:
    return [grpcclient.InferRequestedOutput(name) for name in names]


def first_text(result, name: str) -> str:
    return result.as_numpy(name).reshape(-1)[0].decode("utf-8")


# Triton 2.51's answer for every request to a model whose python-backend stub died ("Stub process '<model>_0_0'
# is not healthy."), also when quoted by a pipeline that called that model through BLS
STUB_DOWN_MARKER = "is not healthy"


def map_triton_error(exc: InferenceServerException, what: str) -> ApiError:
    status = (exc.status() or "").upper()
    message = exc.message() or str(exc)
    if "CANCELLED" in status:
        return ServiceUnavailable(f"{what} was cancelled ({message})")
    if STUB_DOWN_MARKER in message:  # a python-backend process died: the stack reloads the model (stack/supervision.py)
        return ServiceUnavailable(f"{what}: the model is being restarted after a failure; retry shortly")
    if "INTERNAL" in status:  # a model ran and failed (its message may quote a dependency's error)
        return InferenceFailed(f"{what} failed: {message}")
    if "unknown model" in message or "is not ready" in message:
        return ServiceUnavailable(f"{what}: model not initialised ({message})")
    if "NOT_FOUND" in status or "must specify the START flag" in message or "is not active" in message:
        return NotFound(message)
    if "INVALID_ARG" in status:
        return BadRequest(message)
    if "UNAVAILABLE" in status or "DEADLINE_EXCEEDED" in status:
        return ServiceUnavailable(f"{what}: Triton is unavailable ({message})")
    return InferenceFailed(f"{what} failed: {message}")


class TritonEngine:
    """The one pooled gRPC client of the app; the per-model engines call Triton through it."""

    def __init__(self, url: str, timeout_s: float):
        self.url = url
        self.timeout_s = timeout_s
        self.client = grpcclient.InferenceServerClient(url=url)
        self._model_facts: dict[str, dict] = {}

    async def close(self) -> None:
        await self.client.close()

    async def models_ready(self, models=A2E_MODELS) -> bool:
        try:
            if not await self.client.is_server_ready():
                return False
            for model in models:
                if not await self.client.is_model_ready(model):
                    return False
        except InferenceServerException:
            return False
        return True

    async def model_facts(self, model: str) -> dict:
        """Weights description and whether the model runs on a GPU, from the model's Triton config."""
        if model not in self._model_facts:
            try:
                config = (await self.client.get_model_config(model, as_json=True))["config"]
            except InferenceServerException as exc:
                raise map_triton_error(exc, f"reading {model} config") from None
            instance_kinds = {group.get("kind", "KIND_CPU") for group in config.get("instance_group", [])}
            weights = config.get("parameters", {}).get(WEIGHTS_PARAMETER, {}).get("string_value", "unknown")
            self._model_facts[model] = {"weights": weights, "gpu": "KIND_GPU" in instance_kinds}
        return self._model_facts[model]

    async def infer(self, what: str, **kwargs):
        """One unary call (``client.infer`` keywords) under the client timeout; Triton errors mapped for ``what``."""
        try:
            return await self.client.infer(client_timeout=self.timeout_s, **kwargs)
        except InferenceServerException as exc:
            raise map_triton_error(exc, what) from None

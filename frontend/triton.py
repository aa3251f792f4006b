"""The pooled async Triton client (gRPC) opened in the app's lifespan, and what every model's engine shares:
tensor helpers, model readiness and config facts, and the Triton-error → typed-error mapping.

Triton's own errors are mapped to the API's typed errors here, and nowhere else. Each model's calls live in
its slice: ``frontend/<model>/engine.py``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import grpc
import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.grpc import MAX_GRPC_MESSAGE_SIZE, KeepAliveOptions
from tritonclient.utils import InferenceServerException

from emoserve.model_catalog import A2E_MODELS, INVALID_VIDEO_PREFIX, WEIGHTS_PARAMETER
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
# Triton's answers for a model that is not loaded (unloaded, or being reloaded after a stub died)
MODEL_DOWN_MARKERS = ("unknown model", "is not ready", "has no available versions")
# Triton's answer when a model's bounded queue (max_queue_size) is full, also when a pipeline quotes it
QUEUE_FULL_MARKER = "Exceeds maximum queue size"
# how long a model that answered "stub not healthy" counts as down for health, unless Triton reloaded it sooner
STUB_DOWN_HOLD_S = 10.0


def error_facts(exc: BaseException) -> tuple[str, str]:
    """(status name, message) of a tritonclient error or a raw gRPC one (the aio stream raises ``AioRpcError``)."""
    if isinstance(exc, InferenceServerException):
        return (exc.status() or "").upper(), exc.message() or str(exc)
    if isinstance(exc, grpc.RpcError):
        code = exc.code() if callable(getattr(exc, "code", None)) else None
        details = exc.details() if callable(getattr(exc, "details", None)) else None
        return (code.name if code is not None else "UNKNOWN"), details or ""
    return "", str(exc)


def map_triton_error(exc: BaseException, what: str) -> ApiError:
    status, message = error_facts(exc)
    if "CANCELLED" in status:
        return ServiceUnavailable(f"{what} was cancelled by the inference server; retry shortly")
    if STUB_DOWN_MARKER in message:  # a python-backend process died: the stack reloads the model (stack/supervision.py)
        return ServiceUnavailable(f"{what}: the model is being restarted after a failure; retry shortly")
    if "UNAVAILABLE" in status or "DEADLINE_EXCEEDED" in status:
        # the raw text names Triton's address: logged, not answered
        log.warning("%s: Triton %s: %s", what, status, message)
        reason = "did not answer in time" if "DEADLINE" in status else "is unavailable"
        return ServiceUnavailable(f"{what}: the inference server {reason}; retry shortly")
    if QUEUE_FULL_MARKER in message:
        return ServiceUnavailable(f"{what}: the model is busy (its queue is full); retry shortly")
    if any(marker in message for marker in MODEL_DOWN_MARKERS):  # also when a pipeline quotes it for a model it calls
        return ServiceUnavailable(f"{what}: model not initialised ({message})")
    if not status and message.startswith(INVALID_VIDEO_PREFIX):  # from a stream, where errors carry no status
        return BadRequest(message)
    if "INTERNAL" in status:  # a model ran and failed (its message may quote a dependency's error)
        return InferenceFailed(f"{what} failed: {message}")
    if "NOT_FOUND" in status or "must specify the START flag" in message or "is not active" in message:
        return NotFound(message)
    if "INVALID_ARG" in status:
        return BadRequest(message)
    return InferenceFailed(f"{what} failed: {message}")


# tritonclient's defaults, plus a short reconnect backoff: gRPC's own grows to two minutes while a server is down, so
# a restarted Triton would wait that long for the front end's next connection attempt
_KEEPALIVE = KeepAliveOptions()
CHANNEL_ARGS = [
    ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
    ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
    ("grpc.keepalive_time_ms", _KEEPALIVE.keepalive_time_ms),
    ("grpc.keepalive_timeout_ms", _KEEPALIVE.keepalive_timeout_ms),
    ("grpc.keepalive_permit_without_calls", _KEEPALIVE.keepalive_permit_without_calls),
    ("grpc.http2.max_pings_without_data", _KEEPALIVE.http2_max_pings_without_data),
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


class TritonEngine:
    """The one pooled gRPC client of the app; the per-model engines call Triton through it.

    Health reads :meth:`model_states`: one repository-index call under ``probe_timeout_s``, shared by every health
    route for ``readiness_cache_s``; a model that just answered "stub not healthy" counts as down meanwhile.
    """

    def __init__(self, url: str, timeout_s: float, probe_timeout_s: float = 2.0, readiness_cache_s: float = 1.0):
        self.url = url
        self.timeout_s = timeout_s
        self.probe_timeout_s = probe_timeout_s
        self.readiness_cache_s = readiness_cache_s
        self.client = grpcclient.InferenceServerClient(url=url, channel_args=CHANNEL_ARGS)
        self._model_facts: dict[str, dict] = {}
        self._states: dict[str, str] = {}
        self._states_at = -float("inf")
        self._states_lock = asyncio.Lock()
        self._down_until: dict[str, float] = {}

    async def close(self) -> None:
        await self.client.close()

    async def model_states(self) -> dict[str, str]:
        """{model: Triton state ("READY", "UNAVAILABLE", "LOADING" ...)}; {} when Triton does not answer in time."""
        async with self._states_lock:
            if time.monotonic() - self._states_at >= self.readiness_cache_s:
                self._states = await self._probe_states()
                self._states_at = time.monotonic()
            states = dict(self._states)
        now = time.monotonic()
        for model, until in self._down_until.items():
            if until > now and model in states:
                states[model] = "STUB_DOWN"
        return states

    async def _probe_states(self) -> dict[str, str]:
        try:
            if not await self.client.is_server_ready(client_timeout=self.probe_timeout_s):
                return {}
            index = await self.client.get_model_repository_index(as_json=True, client_timeout=self.probe_timeout_s)
        except InferenceServerException as exc:
            log.debug("Triton readiness probe: %s", exc)
            return {}
        states: dict[str, str] = {}
        for entry in index.get("models", []):
            state = entry.get("state", "")
            # several versions: the model is ready when one is
            if states.get(entry["name"]) != "READY":
                states[entry["name"]] = state
        return states

    async def server_live(self) -> bool:
        """Whether the server answers its liveness probe within ``probe_timeout_s`` (not whether its models are ready)."""
        try:
            return bool(await self.client.is_server_live(client_timeout=self.probe_timeout_s))
        except InferenceServerException as exc:
            log.debug("Triton liveness probe: %s", exc)
            return False

    async def models_ready(self, models=A2E_MODELS) -> bool:
        states = await self.model_states()
        return all(states.get(model) == "READY" for model in models)

    def _note_failure(self, model: str, exc: BaseException) -> None:
        self._states_at = -float("inf")  # whatever failed, the next health probe asks Triton again
        if STUB_DOWN_MARKER in error_facts(exc)[1]:
            self._down_until[model] = time.monotonic() + STUB_DOWN_HOLD_S

    async def model_facts(self, model: str) -> dict:
        """Weights description and whether the model runs on a GPU, from the model's Triton config."""
        if model not in self._model_facts:
            try:
                config = (await self.client.get_model_config(model, as_json=True, client_timeout=self.probe_timeout_s))["config"]
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
        except (InferenceServerException, grpc.RpcError) as exc:
            self._note_failure(kwargs.get("model_name", ""), exc)
            raise map_triton_error(exc, what) from None

    async def stream(self, what: str, model_name: str, inputs, outputs=None, *, timeout_s: float,
                     idle_timeout_s: float | None = None) -> AsyncIterator:
        """The results of one request to a decoupled model, as they arrive, within ``timeout_s`` in all and
        ``idle_timeout_s`` between two responses (a Triton that accepts and never answers is a 503, not a hang).
        Every Triton or gRPC error is raised as the API's typed error; leaving early cancels the call."""

        async def requests():
            yield {"model_name": model_name, "inputs": inputs, "outputs": outputs}

        call = self.client.stream_infer(requests(), stream_timeout=timeout_s)
        iterator = call.__aiter__()
        try:
            while True:
                try:
                    result, error = await asyncio.wait_for(iterator.__anext__(), idle_timeout_s)
                except StopAsyncIteration:
                    return
                except asyncio.TimeoutError:
                    raise ServiceUnavailable(f"{what}: the inference server sent nothing for {idle_timeout_s:.0f}s; "
                                             "retry shortly") from None
                if error is not None:
                    self._note_failure(model_name, error)
                    raise map_triton_error(error, what)
                yield result
        except (InferenceServerException, grpc.RpcError) as exc:
            self._note_failure(model_name, exc)
            raise map_triton_error(exc, what) from None
        finally:
            call.cancel()

"""The pooled async Triton client (gRPC) opened in the app's lifespan, and the A2E calls made through it.

Triton's own errors are mapped to the API's typed errors here, and nowhere else.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass

import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException

from emoserve.model_catalog import (
    AUDIO_BYTES,
    GUIDANCE_SCALE,
    HALLO2_IMAGE,
    HALLO2_PIPELINE_MODEL,
    INFERENCE_STEPS,
    PROGRESS,
    STATUS_MESSAGE,
    USE_CACHE,
    VIDEO_MP4,
    EMOTION_PIPELINE_MODEL,
    MAX_NEW_TOKENS,
    PROMPT,
    REPETITION_PENALTY,
    RESULT_METADATA,
    TEMPERATURE,
    TEXT,
    TEXT_DELTA,
    TOKEN_IDS,
    TOP_P,
    VIDEO,
    A2E_MODELS,
    A2E_NETWORK_MODEL,
    A2E_OFFLINE_MODEL,
    A2E_STREAM_MODEL,
    AUDIO,
    BLENDSHAPES,
    BROW_MOVEMENT,
    CHUNK_INDEX,
    FIRST_FRAME_INDEX,
    ID_IDX,
    MOVEMENT_SMOOTH,
    SEED,
    WEIGHTS_PARAMETER,
)
from frontend.errors import ApiError, BadRequest, InferenceFailed, NotFound, ServiceUnavailable

log = logging.getLogger(__name__)


@dataclass
class GenerationEvent:
    """One piece of a streamed answer: ``delta`` text, or the final answer with its metadata."""

    delta: str | None = None
    text: str | None = None
    token_ids: list[int] | None = None
    metadata: dict | None = None

    @property
    def final(self) -> bool:
        return self.text is not None


@dataclass
class StreamChunkOutput:
    frames: np.ndarray
    first_frame_index: int
    chunk_index: int


def _tensor(name: str, value: np.ndarray, batched: bool) -> grpcclient.InferInput:
    array = value[None] if batched else value
    datatype = {np.dtype(np.float32): "FP32", np.dtype(np.int32): "INT32", np.dtype(np.bool_): "BOOL", np.dtype(np.uint64): "UINT64",
                np.dtype(np.object_): "BYTES"}[array.dtype]
    tensor = grpcclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def _a2e_inputs(audio: np.ndarray, id_idx: int, movement_smooth: bool, brow_movement: bool, seed: int | None, batched: bool):
    inputs = [
        _tensor(AUDIO, np.ascontiguousarray(audio, dtype=np.float32).reshape(-1), batched),
        _tensor(ID_IDX, np.array([id_idx], np.int32), batched),
        _tensor(MOVEMENT_SMOOTH, np.array([movement_smooth], np.bool_), batched),
        _tensor(BROW_MOVEMENT, np.array([brow_movement], np.bool_), batched),
    ]
    if seed is not None:
        inputs.append(_tensor(SEED, np.array([seed], np.uint64), batched))
    return inputs


def map_triton_error(exc: InferenceServerException, what: str) -> ApiError:
    status = (exc.status() or "").upper()
    message = exc.message() or str(exc)
    if "CANCELLED" in status:
        return ServiceUnavailable(f"{what} was cancelled ({message})")
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

    async def gpu_available(self) -> bool:
        try:
            return bool((await self.model_facts(A2E_NETWORK_MODEL))["gpu"])
        except ApiError:
            return False

    async def _infer(self, what: str, **kwargs):
        try:
            return await self.client.infer(client_timeout=self.timeout_s, **kwargs)
        except InferenceServerException as exc:
            raise map_triton_error(exc, what) from None

    async def infer_whole_audio(self, audio: np.ndarray, id_idx: int, movement_smooth: bool, brow_movement: bool, seed: int = 0) -> np.ndarray:
        result = await self._infer(
            "whole-audio inference",
            model_name=A2E_OFFLINE_MODEL,
            inputs=_a2e_inputs(audio, id_idx, movement_smooth, brow_movement, seed, batched=False),
            outputs=[grpcclient.InferRequestedOutput(BLENDSHAPES)],
        )
        return result.as_numpy(BLENDSHAPES)

    async def stream_chunk(
        self,
        correlation_id: int,
        audio: np.ndarray,
        *,
        start: bool,
        end: bool = False,
        id_idx: int = 0,
        movement_smooth: bool = False,
        brow_movement: bool = False,
        seed: int | None = None,
    ) -> StreamChunkOutput:
        result = await self._infer(
            "streaming inference",
            model_name=A2E_STREAM_MODEL,
            inputs=_a2e_inputs(audio, id_idx, movement_smooth, brow_movement, seed, batched=True),
            outputs=[grpcclient.InferRequestedOutput(name) for name in (BLENDSHAPES, FIRST_FRAME_INDEX, CHUNK_INDEX)],
            sequence_id=correlation_id,
            sequence_start=start,
            sequence_end=end,
        )
        return StreamChunkOutput(
            frames=result.as_numpy(BLENDSHAPES)[0],
            first_frame_index=int(result.as_numpy(FIRST_FRAME_INDEX).reshape(-1)[0]),
            chunk_index=int(result.as_numpy(CHUNK_INDEX).reshape(-1)[0]),
        )

    async def stream_emotion_llama(self, video: bytes, prompt: str, sampling: dict[str, float | int | None], timeout_s: float):
        """Async iterator of :class:`GenerationEvent` from the ``emotion_llama`` pipeline (gRPC stream).

        Leaving the iteration early (a client that went away) cancels the gRPC call, which Triton passes
        on to the pipeline as a cancelled request.
        """
        inputs = [
            _tensor(VIDEO, np.array([video], dtype=np.object_), batched=False),
            _tensor(PROMPT, np.array([prompt.encode("utf-8")], dtype=np.object_), batched=False),
        ]
        kinds = {TEMPERATURE: np.float32, TOP_P: np.float32, REPETITION_PENALTY: np.float32, MAX_NEW_TOKENS: np.int32, SEED: np.uint64}
        for name, value in sampling.items():
            if value is not None:
                inputs.append(_tensor(name, np.array([value], dtype=kinds[name]), batched=False))

        async def requests():
            yield {"model_name": EMOTION_PIPELINE_MODEL, "inputs": inputs,
                   "outputs": [grpcclient.InferRequestedOutput(n) for n in (TEXT_DELTA, TEXT, TOKEN_IDS, RESULT_METADATA)]}

        stream = self.client.stream_infer(requests(), stream_timeout=timeout_s)
        try:
            async for result, error in stream:
                if error is not None:
                    raise map_triton_error(error, "Emotion-LLaMA")
                delta = result.as_numpy(TEXT_DELTA)
                if delta is not None:
                    yield GenerationEvent(delta=delta.reshape(-1)[0].decode("utf-8"))
                    continue
                text = result.as_numpy(TEXT)
                if text is not None:
                    metadata = json.loads(result.as_numpy(RESULT_METADATA).reshape(-1)[0])
                    token_ids = [int(t) for t in result.as_numpy(TOKEN_IDS).reshape(-1)]
                    yield GenerationEvent(text=text.reshape(-1)[0].decode("utf-8"), token_ids=token_ids, metadata=metadata)
                    return
            raise InferenceFailed("Emotion-LLaMA: the stream ended without an answer")
        except InferenceServerException as exc:
            raise map_triton_error(exc, "Emotion-LLaMA") from None
        finally:
            stream.cancel()

    async def run_hallo2(
        self,
        image: bytes,
        audio: bytes,
        *,
        steps: int,
        guidance_scale: float,
        use_cache: bool,
        progress,
        cancel: asyncio.Event,
        seed: int | None = None,
    ) -> tuple[bytes, dict]:
        """Stream the ``hallo2`` pipeline: ``await progress(percent, message)`` per step; the MP4 at the end.

        Setting ``cancel`` cancels the gRPC call, which Triton passes to the pipeline as a cancelled request
        (it stops between denoising steps); :class:`asyncio.CancelledError` is raised here then.
        """
        inputs = [
            _tensor(HALLO2_IMAGE, np.array([image], dtype=np.object_), batched=False),
            _tensor(AUDIO_BYTES, np.array([audio], dtype=np.object_), batched=False),
            _tensor(INFERENCE_STEPS, np.array([steps], np.int32), batched=False),
            _tensor(GUIDANCE_SCALE, np.array([guidance_scale], np.float32), batched=False),
            _tensor(USE_CACHE, np.array([use_cache], np.bool_), batched=False),
        ]
        if seed is not None:
            inputs.append(_tensor(SEED, np.array([seed], np.uint64), batched=False))

        async def requests():
            yield {"model_name": HALLO2_PIPELINE_MODEL, "inputs": inputs}

        stream = self.client.stream_infer(requests())
        watcher = asyncio.create_task(cancel.wait())
        try:
            iterator = stream.__aiter__()
            while True:
                step = asyncio.ensure_future(iterator.__anext__())
                done, _ = await asyncio.wait({step, watcher}, return_when=asyncio.FIRST_COMPLETED)
                if watcher in done:
                    step.cancel()
                    raise asyncio.CancelledError("Hallo2 task cancelled")
                try:
                    result, error = step.result()
                except StopAsyncIteration:
                    raise InferenceFailed("Hallo2: the stream ended without a video") from None
                if error is not None:
                    raise map_triton_error(error, "Hallo2")
                video = result.as_numpy(VIDEO_MP4)
                if video is not None:
                    return bytes(video.reshape(-1)[0]), json.loads(result.as_numpy(RESULT_METADATA).reshape(-1)[0])
                await progress(float(result.as_numpy(PROGRESS).reshape(-1)[0]), result.as_numpy(STATUS_MESSAGE).reshape(-1)[0].decode())
        except InferenceServerException as exc:
            raise map_triton_error(exc, "Hallo2") from None
        finally:
            watcher.cancel()
            stream.cancel()

"""Emotion-LLaMA's model calls: :class:`EmotionLlamaEngine` is what the router needs,
:class:`TritonEmotionLlamaEngine` streams the ``emotion_llama`` pipeline of Triton (decoupled, gRPC stream).

(Not to be confused with :class:`emoserve.emotion_llama.engine.EmotionLlamaEngine`, the in-process LLM engine
that the ``emotion_llama_llm`` model runs.)
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Protocol

import numpy as np
from fastapi import Depends, Request

from emoserve.model_catalog import (
    EMOTION_PIPELINE_MODEL,
    MAX_NEW_TOKENS,
    PROMPT,
    REPETITION_PENALTY,
    RESULT_METADATA,
    SEED,
    TEMPERATURE,
    TEXT,
    TEXT_DELTA,
    TOKEN_IDS,
    TOP_P,
    VIDEO,
)
from frontend.deps import engine_from_state
from frontend.errors import InferenceFailed, ServiceUnavailable
from frontend.triton import TritonEngine, bytes_tensor, requested, tensor

Sampling = dict[str, float | int | None]  # tensor name -> value (None: the model's default); see schemas.Sampling.as_inputs


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


class EmotionLlamaEngine(Protocol):
    def stream(self, video: bytes, prompt: str, sampling: Sampling, timeout_s: float) -> AsyncIterator[GenerationEvent]:
        """:class:`GenerationEvent` deltas, then the final one; leaving the iteration early cancels the request."""
        ...

    async def generate(self, video: bytes, prompt: str, sampling: Sampling, timeout_s: float) -> GenerationEvent:
        """The final event (the whole answer), within ``timeout_s``."""
        ...


_SAMPLING_TYPES = {TEMPERATURE: np.float32, TOP_P: np.float32, REPETITION_PENALTY: np.float32, MAX_NEW_TOKENS: np.int32, SEED: np.uint64}


class TritonEmotionLlamaEngine:
    def __init__(self, triton: TritonEngine):
        self.triton = triton

    async def stream(self, video: bytes, prompt: str, sampling: Sampling, timeout_s: float) -> AsyncIterator[GenerationEvent]:
        """Leaving the iteration early (a client that went away) cancels the gRPC call, which Triton passes
        on to the pipeline as a cancelled request."""
        inputs = [bytes_tensor(VIDEO, video), bytes_tensor(PROMPT, prompt.encode("utf-8"))]
        for name, value in sampling.items():
            if value is not None:
                inputs.append(tensor(name, np.array([value], dtype=_SAMPLING_TYPES[name])))

        outputs = requested(TEXT_DELTA, TEXT, TOKEN_IDS, RESULT_METADATA)
        stream = self.triton.stream("Emotion-LLaMA", EMOTION_PIPELINE_MODEL, inputs, outputs, timeout_s=timeout_s, idle_timeout_s=timeout_s)
        try:
            async for result in stream:
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
        finally:
            await stream.aclose()

    async def generate(self, video: bytes, prompt: str, sampling: Sampling, timeout_s: float) -> GenerationEvent:
        async def run() -> GenerationEvent:
            async for event in self.stream(video, prompt, sampling, timeout_s):
                if event.final:
                    return event
            raise ServiceUnavailable("Emotion-LLaMA returned no answer")

        try:
            return await asyncio.wait_for(run(), timeout=timeout_s)
        except asyncio.TimeoutError:
            raise ServiceUnavailable(f"Emotion-LLaMA did not answer within {timeout_s:.0f}s") from None


async def get_engine(request: Request) -> EmotionLlamaEngine:
    return engine_from_state(request, "emotion_llama_engine")


EngineDep = Annotated[EmotionLlamaEngine, Depends(get_engine)]

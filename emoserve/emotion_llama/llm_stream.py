"""One gRPC stream to ``emotion_llama_llm`` on Triton directly: the request, then every response with the time it
arrived. The benchmarks and the integration tests talk to the LLM through it; the front end calls the
``emotion_llama`` pipeline instead.
"""

from __future__ import annotations

import json
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emoserve.emotion_llama.engine import NUM_MULTIMODAL_TOKENS
from emoserve.model_catalog import (
    EMOTION_LLM_MODEL,
    MAX_NEW_TOKENS,
    MIN_NEW_TOKENS,
    MULTIMODAL_EMBEDDINGS,
    PROMPT,
    RESULT_METADATA,
    TEMPERATURE,
    TEXT_DELTA,
    TOKEN_IDS,
)


class LlmStreamError(RuntimeError):
    """Triton answered the stream with an error (its message is Triton's)."""


@dataclass(frozen=True)
class LlmAnswer:
    sent_at: float
    first_delta_at: float | None  # None when no text delta came before the final response
    done_at: float
    deltas: int
    token_ids: list[int]
    metadata: dict


def llm_hidden_size(repository: Path) -> int:
    """The hidden size of the LLM a built model repository holds (the width its multimodal embeddings must have)."""
    return int(json.loads((repository / EMOTION_LLM_MODEL / "1" / "llm" / "config.json").read_text())["hidden_size"])


def fixed_multimodal(hidden: int, seed: int = 0) -> np.ndarray:
    """``[1, NUM_MULTIMODAL_TOKENS, hidden]`` small random embeddings standing in for the encoders' output."""
    return np.random.default_rng(seed).standard_normal((1, NUM_MULTIMODAL_TOKENS, hidden)).astype(np.float32) * 0.02


class LlmStream:
    """Sends one request when created; :meth:`final` reads its answer, :meth:`next` one raw response."""

    def __init__(self, grpc_url: str, hidden: int, question: str, max_new_tokens: int, min_new_tokens: int = 1,
                 temperature: float = 0.0, clock: Callable[[], float] = time.perf_counter):
        import tritonclient.grpc as grpcclient

        self.responses: queue.Queue = queue.Queue()
        self._first_delta_at: float | None = None  # set by first_delta, when the caller reads that one alone
        self._deltas = 0
        self.client = grpcclient.InferenceServerClient(grpc_url)
        self.client.start_stream(callback=lambda result, error: self.responses.put((clock(), result, error)))
        inputs = []
        for name, array, datatype in (
            (MULTIMODAL_EMBEDDINGS, fixed_multimodal(hidden), "FP32"),
            (PROMPT, np.array([[question.encode()]], dtype=np.object_), "BYTES"),
            (TEMPERATURE, np.array([[temperature]], np.float32), "FP32"),
            (MAX_NEW_TOKENS, np.array([[max_new_tokens]], np.int32), "INT32"),
            (MIN_NEW_TOKENS, np.array([[min_new_tokens]], np.int32), "INT32"),
        ):
            tensor = grpcclient.InferInput(name, list(array.shape), datatype)
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        self.sent_at = clock()
        self.client.async_stream_infer(EMOTION_LLM_MODEL, inputs)

    def next(self, timeout_s: float = 60) -> tuple[float, object, object]:
        """(arrival time, result or None, error or None) of the next response; queue.Empty after ``timeout_s``."""
        return self.responses.get(timeout=timeout_s)

    def first_delta(self, timeout_s: float = 60) -> float:
        """The arrival time of the first text delta (the request is decoding then)."""
        arrived, result, error = self.next(timeout_s)
        if error is not None:
            raise LlmStreamError(str(error))
        if result.as_numpy(TEXT_DELTA) is None:
            raise LlmStreamError("the stream ended before its first text delta")
        self._first_delta_at, self._deltas = arrived, 1
        return arrived

    def final(self, timeout_s: float = 120, on_delta: Callable[[int], None] | None = None) -> LlmAnswer:
        """Read up to the final response; ``on_delta(n)`` after the n-th text delta. Raises LlmStreamError."""
        first, deltas = self._first_delta_at, self._deltas
        while True:
            arrived, result, error = self.next(timeout_s)
            if error is not None:
                raise LlmStreamError(str(error))
            if result.as_numpy(TEXT_DELTA) is not None:
                first = arrived if first is None else first
                deltas += 1
                if on_delta is not None:
                    on_delta(deltas)
                continue
            metadata = json.loads(result.as_numpy(RESULT_METADATA).reshape(-1)[0])
            return LlmAnswer(self.sent_at, first, arrived, deltas, result.as_numpy(TOKEN_IDS).reshape(-1).tolist(), metadata)

    def close(self) -> None:
        self.client.stop_stream()
        self.client.close()

    def __enter__(self) -> LlmStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

"""Continuous batching in the real ``emotion_llama_llm`` (tritonserver, tiny repository, gRPC streaming):
a request sent while another is decoding joins its batch at the next step and is answered before it ends.
"""

from __future__ import annotations

import json
import queue
import time

import numpy as np
import tritonclient.grpc as grpcclient

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

QUESTION = "The person in video says: Why are you looking at me like this?  [reason] What is the emotional state?"
LONG_TOKENS = 1000  # EOS ignored (MIN_NEW_TOKENS): long enough to still run when the short one ends
SHORT_TOKENS = 8


class LlmStream:
    """One gRPC stream to ``emotion_llama_llm``: every response with the time it came, in order."""

    def __init__(self, grpc_url: str, hidden: int, max_new_tokens: int, min_new_tokens: int = 1):
        self.responses: queue.Queue = queue.Queue()
        self.client = grpcclient.InferenceServerClient(grpc_url)
        self.client.start_stream(callback=lambda result, error: self.responses.put((time.monotonic(), result, error)))
        multimodal = np.random.default_rng(0).standard_normal((1, NUM_MULTIMODAL_TOKENS, hidden)).astype(np.float32) * 0.02
        inputs = []
        for name, array, datatype in (
            (MULTIMODAL_EMBEDDINGS, multimodal, "FP32"),
            (PROMPT, np.array([[QUESTION.encode()]], dtype=np.object_), "BYTES"),
            (TEMPERATURE, np.array([[0.0]], np.float32), "FP32"),
            (MAX_NEW_TOKENS, np.array([[max_new_tokens]], np.int32), "INT32"),
            (MIN_NEW_TOKENS, np.array([[min_new_tokens]], np.int32), "INT32"),
        ):
            tensor = grpcclient.InferInput(name, list(array.shape), datatype)
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        self.client.async_stream_infer(EMOTION_LLM_MODEL, inputs)

    def first_delta(self, timeout_s: float = 60) -> None:
        _, result, error = self.responses.get(timeout=timeout_s)
        assert error is None, error
        assert result.as_numpy(TEXT_DELTA) is not None

    def final(self, timeout_s: float = 120) -> tuple[float, list[int], dict]:
        """(arrival time, token ids, metadata) of the final response."""
        while True:
            arrived, result, error = self.responses.get(timeout=timeout_s)
            assert error is None, error
            if result.as_numpy(RESULT_METADATA) is not None:
                metadata = json.loads(result.as_numpy(RESULT_METADATA).reshape(-1)[0])
                return arrived, result.as_numpy(TOKEN_IDS).reshape(-1).tolist(), metadata

    def close(self) -> None:
        self.client.stop_stream()
        self.client.close()


def _hidden(tiny_repository) -> int:
    return json.loads((tiny_repository / EMOTION_LLM_MODEL / "1" / "llm" / "config.json").read_text())["hidden_size"]


def test_late_joiner_shares_decode_steps_and_finishes_while_the_first_runs(triton_server, tiny_repository):
    hidden = _hidden(tiny_repository)
    long = LlmStream(triton_server.grpc_url, hidden, LONG_TOKENS, min_new_tokens=LONG_TOKENS)
    try:
        long.first_delta()  # the first request is decoding now
        short = LlmStream(triton_server.grpc_url, hidden, SHORT_TOKENS)
        try:
            short_done, short_tokens, short_metadata = short.final()
        finally:
            short.close()
        long_done, long_tokens, long_metadata = long.final()
    finally:
        long.close()
    assert len(short_tokens) == SHORT_TOKENS and short_metadata["finish_reason"] == "length"
    assert len(long_tokens) == LONG_TOKENS
    assert short_done < long_done, "the late request waited for the running one to finish"
    assert short_metadata["max_step_batch_size"] >= 2 and short_metadata["batch_size"] >= 2
    assert long_metadata["max_step_batch_size"] >= 2
    assert short_metadata["time_to_first_token_seconds"] >= short_metadata["queue_seconds"] >= 0


def test_min_new_tokens_is_honoured_and_checked(triton_server, tiny_repository):
    stream = LlmStream(triton_server.grpc_url, _hidden(tiny_repository), 24, min_new_tokens=24)
    try:
        _, tokens, metadata = stream.final()
    finally:
        stream.close()
    assert len(tokens) == 24 and metadata["finish_reason"] == "length"

    refused = LlmStream(triton_server.grpc_url, _hidden(tiny_repository), 4, min_new_tokens=5)
    try:
        _, result, error = refused.responses.get(timeout=60)
    finally:
        refused.close()
    assert result is None and "min_new_tokens" in str(error)

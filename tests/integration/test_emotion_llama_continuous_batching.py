"""Continuous batching in the real ``emotion_llama_llm`` (tritonserver, tiny repository, gRPC streaming):
a request sent while another is decoding joins its batch at the next step and is answered before it ends.
"""

from __future__ import annotations

from emoserve.emotion_llama.llm_stream import LlmStream, llm_hidden_size

QUESTION = "The person in video says: Why are you looking at me like this?  [reason] What is the emotional state?"
LONG_TOKENS = 1000  # EOS ignored (MIN_NEW_TOKENS): long enough to still run when the short one ends
SHORT_TOKENS = 8


def test_late_joiner_shares_decode_steps_and_finishes_while_the_first_runs(triton_server, tiny_repository):
    hidden = llm_hidden_size(tiny_repository)
    with LlmStream(triton_server.grpc_url, hidden, QUESTION, LONG_TOKENS, min_new_tokens=LONG_TOKENS) as long:
        long.first_delta()  # the first request is decoding now
        with LlmStream(triton_server.grpc_url, hidden, QUESTION, SHORT_TOKENS) as short:
            short_answer = short.final()
        long_answer = long.final()
    short_metadata, long_metadata = short_answer.metadata, long_answer.metadata
    assert len(short_answer.token_ids) == SHORT_TOKENS and short_metadata["finish_reason"] == "length"
    assert len(long_answer.token_ids) == LONG_TOKENS
    assert short_answer.done_at < long_answer.done_at, "the late request waited for the running one to finish"
    assert short_metadata["max_step_batch_size"] >= 2 and short_metadata["batch_size"] >= 2
    assert long_metadata["max_step_batch_size"] >= 2
    assert short_metadata["time_to_first_token_seconds"] >= short_metadata["queue_seconds"] >= 0


def test_min_new_tokens_is_honoured_and_checked(triton_server, tiny_repository):
    with LlmStream(triton_server.grpc_url, llm_hidden_size(tiny_repository), QUESTION, 24, min_new_tokens=24) as stream:
        answer = stream.final()
    assert len(answer.token_ids) == 24 and answer.metadata["finish_reason"] == "length"

    with LlmStream(triton_server.grpc_url, llm_hidden_size(tiny_repository), QUESTION, 4, min_new_tokens=5) as refused:
        _, result, error = refused.next()
    assert result is None and "min_new_tokens" in str(error)

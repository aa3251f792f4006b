"""Emotion-LLaMA's LLM: decoupled, continuously batched, tokens streamed back as they are generated.

Inputs per request: the 260 multimodal embeddings, the user's prompt and optional sampling parameters
(upstream demo defaults otherwise). ``execute`` only validates requests (a bad one gets its own error response,
FINAL) and submits them to :class:`EmotionLlamaEngine`'s decode loop, which runs on its own thread from
``initialize`` to ``finalize`` (:mod:`emoserve.emotion_llama.scheduler`): between two decoding steps waiting
requests are prefilled and join the running batch, and finished or cancelled ones leave it, so a request that
arrives while others decode starts at the next step instead of waiting for their whole batch. The loop thread
sends every piece of text at once as a ``TEXT_DELTA`` response and a final response with the whole ``TEXT``, the
``TOKEN_IDS`` and ``RESULT_METADATA`` (finish reason, parsed emotion and confidence, queue time, time to first
token, per-step batch sizes, weights). Response senders may be used from any thread; each request object is
kept (in its callbacks) until its final response. ``request.is_cancelled()`` is polled between steps.

Dynamic batching stays in the config, with no queue delay: ``execute`` returns at once, so it only hands over
whatever queued meanwhile, and its bounded queue still refuses a flood at the door (UNAVAILABLE). Delaying
requests there would only delay their first token: the decode loop does the batching.
"""

import json
from pathlib import Path

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

from emoserve.emotion_llama.defaults import EMOTION_LLAMA
from emoserve.emotion_llama.engine import (
    EmotionLlamaEngine,
    EngineRequest,
    EngineRequestError,
    EngineResult,
    SchedulerFull,
    SchedulerStopped,
)
from emoserve.emotion_llama.generation import SamplingParams
from emoserve.emotion_llama.prompts import answer_limits
from emoserve.model_catalog import (
    MAX_NEW_TOKENS,
    MIN_NEW_TOKENS,
    MULTIMODAL_EMBEDDINGS,
    PROMPT,
    REPETITION_PENALTY,
    RESULT_METADATA,
    SEED,
    TEMPERATURE,
    TEXT,
    TEXT_DELTA,
    TOKEN_IDS,
    TOP_P,
    WEIGHTS_PARAMETER,
)
from emoserve.triton.backend import (
    bytes_input,
    error_response,
    load_model_config,
    model_parameters,
    optional_input,
    scalar_input,
    typed_parameter,
)

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


def _text(value: str) -> np.ndarray:
    return np.array([[value.encode("utf-8")]], dtype=np.object_)


class TritonPythonModel:
    def initialize(self, args):
        config = load_model_config(args)
        if not pb_utils.using_decoupled_model_transaction_policy(config):
            raise pb_utils.TritonModelException("emotion_llama_llm streams tokens: its config must set decoupled: true")
        parameters = model_parameters(config)
        folder = Path(args["model_repository"]) / args["model_version"] / typed_parameter(parameters, "llm_folder", str, "llm")
        self.max_new_tokens_limit = typed_parameter(parameters, "max_new_tokens_limit", int, EMOTION_LLAMA.max_new_tokens_limit)
        # a KIND_GPU instance (the gpu target) runs on its own GPU; KIND_CPU on the CPU
        device = f"cuda:{args['model_instance_device_id']}" if args.get("model_instance_kind") == "GPU" else "cpu"
        max_prompt_chars = typed_parameter(parameters, "max_prompt_chars", int, EMOTION_LLAMA.max_prompt_chars)
        max_active = typed_parameter(parameters, "max_active_sequences", int, EMOTION_LLAMA.max_active_sequences)
        max_batch_tokens = typed_parameter(parameters, "max_batch_tokens", int, EMOTION_LLAMA.max_batch_tokens)
        max_waiting = typed_parameter(parameters, "max_waiting_requests", int, EMOTION_LLAMA.max_waiting_requests)
        # All decoding runs on the engine's loop thread. Had this (Triton's) thread run multi-threaded torch ops too,
        # libgomp would keep a second worker pool, and with more OpenMP threads than cores it throttles every pool's
        # spin-waiting: decode steps measured 2x slower on 2 cores. So this thread stays single-threaded (loading,
        # prompt embedding) and the loop gets the threads.
        decode_threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            self.engine = EmotionLlamaEngine(folder, max_prompt_chars, device=device, max_active_sequences=max_active,
                                             max_batch_tokens=max_batch_tokens, max_waiting=max_waiting)
        except ValueError as exc:  # a bad scheduling parameter: refuse to load, with its name
            raise pb_utils.TritonModelException(f"emotion_llama_llm: {exc}") from None
        self.weights = parameters.get(WEIGHTS_PARAMETER, "unknown")
        self.logger = pb_utils.Logger
        self.engine.start(intra_op_threads=decode_threads)
        self.logger.log_info(f"emotion_llama_llm: {self.weights} (hidden {self.engine.hidden_size}, family {self.engine.family}, "
                             f"{device}; up to {max_active} sequences / {max_batch_tokens} KV tokens per decode step; "
                             f"{decode_threads} decode threads)")

    def _request(self, request) -> EngineRequest:
        prompt = bytes_input(pb_utils, request, PROMPT)
        if prompt is None:
            raise EngineRequestError(f"{PROMPT} is required")
        embeddings = optional_input(pb_utils, request, MULTIMODAL_EMBEDDINGS)
        if embeddings is None:
            raise EngineRequestError(f"{MULTIMODAL_EMBEDDINGS} is required")
        try:
            question = prompt.decode("utf-8")
        except UnicodeDecodeError:
            raise EngineRequestError(f"{PROMPT} is not valid UTF-8") from None
        defaults = SamplingParams()
        # unset: the task's own length and stop (an [emotion] answer is one sentence)
        max_new_tokens, stop = answer_limits(question, scalar_input(pb_utils, request, MAX_NEW_TOKENS, int, None))
        if not 1 <= max_new_tokens <= self.max_new_tokens_limit:
            raise EngineRequestError(f"max_new_tokens must be in 1..{self.max_new_tokens_limit}, got {max_new_tokens}")
        try:
            params = SamplingParams(
                temperature=scalar_input(pb_utils, request, TEMPERATURE, float, defaults.temperature),
                top_p=scalar_input(pb_utils, request, TOP_P, float, defaults.top_p),
                repetition_penalty=scalar_input(pb_utils, request, REPETITION_PENALTY, float, defaults.repetition_penalty),
                max_new_tokens=max_new_tokens,
                seed=scalar_input(pb_utils, request, SEED, int, None),
                min_new_tokens=scalar_input(pb_utils, request, MIN_NEW_TOKENS, int, defaults.min_new_tokens),
                stop=stop,
            )
        except ValueError as exc:
            raise EngineRequestError(str(exc)) from None
        return EngineRequest(question=question, multimodal=embeddings.reshape(embeddings.shape[-2:]), params=params)

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            try:
                self.engine.submit(self._request(request), *self._callbacks(request, sender))
            except EngineRequestError as exc:
                sender.send(error_response(pb_utils, str(exc)), flags=FINAL)
            except (SchedulerFull, SchedulerStopped) as exc:
                sender.send(error_response(pb_utils, str(exc), "UNAVAILABLE"), flags=FINAL)
        return None

    def _callbacks(self, request, sender):
        """``on_result, on_error, on_token, is_cancelled`` for one request; they run on the decode-loop thread."""

        def on_result(outcome: EngineResult) -> None:
            metadata = dict(outcome.metadata(), weights=self.weights)
            sender.send(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor(TEXT, _text(outcome.text)),
                pb_utils.Tensor(TOKEN_IDS, np.array([outcome.token_ids], dtype=np.int64)),
                pb_utils.Tensor(RESULT_METADATA, _text(json.dumps(metadata))),
            ]), flags=FINAL)

        def on_error(exc: BaseException) -> None:
            self.logger.log_error(f"emotion_llama_llm generation failed: {exc!r}")
            code = "UNAVAILABLE" if isinstance(exc, SchedulerStopped) else "INTERNAL"
            sender.send(error_response(pb_utils, f"generation failed: {exc}", code), flags=FINAL)

        def on_token(token_id: int, delta: str) -> None:
            if delta:
                sender.send(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(TEXT_DELTA, _text(delta))]))

        return on_result, on_error, on_token, request.is_cancelled

    def finalize(self):
        # unfinished requests get UNAVAILABLE (SchedulerStopped) before the model goes
        self.engine.stop()

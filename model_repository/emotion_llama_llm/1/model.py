"""Emotion-LLaMA's LLM: decoupled, dynamically batched, tokens streamed back as they are generated.

Inputs per request: the 260 multimodal embeddings, the user's prompt and optional sampling parameters
(upstream demo defaults otherwise). Dynamic batching hands concurrent requests to one ``execute``, which
decodes them in ONE batched KV-cache loop (:class:`EmotionLlamaEngine`); every generated piece of text
goes out at once as a ``TEXT_DELTA`` response, and a final response carries the whole ``TEXT``, the
``TOKEN_IDS`` and ``RESULT_METADATA`` (finish reason, parsed emotion and confidence). A cancelled request
stops between decoding steps.
"""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from emoserve.emotion_llama.defaults import EMOTION_LLAMA
from emoserve.emotion_llama.engine import EmotionLlamaEngine, EngineRequest, EngineRequestError
from emoserve.emotion_llama.generation import SamplingParams
from emoserve.model_catalog import (
    MAX_NEW_TOKENS,
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
        self.engine = EmotionLlamaEngine(folder, max_prompt_chars, device=device)
        self.weights = parameters.get(WEIGHTS_PARAMETER, "unknown")
        self.logger = pb_utils.Logger
        self.logger.log_info(f"emotion_llama_llm: {self.weights} (hidden {self.engine.hidden_size}, family {self.engine.family}, {device})")

    def _request(self, request) -> EngineRequest:
        prompt = bytes_input(pb_utils, request, PROMPT)
        if prompt is None:
            raise EngineRequestError(f"{PROMPT} is required")
        embeddings = optional_input(pb_utils, request, MULTIMODAL_EMBEDDINGS)
        if embeddings is None:
            raise EngineRequestError(f"{MULTIMODAL_EMBEDDINGS} is required")
        defaults = SamplingParams()
        max_new_tokens = scalar_input(pb_utils, request, MAX_NEW_TOKENS, int, defaults.max_new_tokens)
        if not 1 <= max_new_tokens <= self.max_new_tokens_limit:
            raise EngineRequestError(f"max_new_tokens must be in 1..{self.max_new_tokens_limit}, got {max_new_tokens}")
        try:
            params = SamplingParams(
                temperature=scalar_input(pb_utils, request, TEMPERATURE, float, defaults.temperature),
                top_p=scalar_input(pb_utils, request, TOP_P, float, defaults.top_p),
                repetition_penalty=scalar_input(pb_utils, request, REPETITION_PENALTY, float, defaults.repetition_penalty),
                max_new_tokens=max_new_tokens,
                seed=scalar_input(pb_utils, request, SEED, int, None),
            )
        except ValueError as exc:
            raise EngineRequestError(str(exc)) from None
        try:
            question = prompt.decode("utf-8")
        except UnicodeDecodeError:
            raise EngineRequestError(f"{PROMPT} is not valid UTF-8") from None
        return EngineRequest(question=question, multimodal=embeddings.reshape(embeddings.shape[-2:]), params=params)

    def execute(self, requests):
        senders = [request.get_response_sender() for request in requests]
        parsed, errors = [], {}
        for index, request in enumerate(requests):
            try:
                parsed.append(self._request(request))
            except EngineRequestError as exc:
                errors[index] = str(exc)
                parsed.append(None)
        for index, message in errors.items():
            senders[index].send(error_response(pb_utils, message), flags=FINAL)

        runnable = [i for i in range(len(requests)) if i not in errors]
        if not runnable:
            return None

        def on_token(row: int, token_id: int, delta: str) -> None:
            if delta:
                senders[runnable[row]].send(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(TEXT_DELTA, _text(delta))]))

        def should_stop(row: int) -> bool:
            return requests[runnable[row]].is_cancelled()

        try:
            outcomes = self.engine.run([parsed[i] for i in runnable], on_token, should_stop)
        except Exception as exc:
            self.logger.log_error(f"emotion_llama_llm generation failed: {exc!r}")
            for i in runnable:
                senders[i].send(error_response(pb_utils, f"generation failed: {exc}", "INTERNAL"), flags=FINAL)
            return None

        for i, outcome in zip(runnable, outcomes):
            if isinstance(outcome, EngineRequestError):
                senders[i].send(error_response(pb_utils, str(outcome)), flags=FINAL)
                continue
            metadata = dict(outcome.metadata(), weights=self.weights, batch_size=len(runnable))
            final = pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor(TEXT, _text(outcome.text)),
                pb_utils.Tensor(TOKEN_IDS, np.array([outcome.token_ids], dtype=np.int64)),
                pb_utils.Tensor(RESULT_METADATA, _text(json.dumps(metadata))),
            ])
            senders[i].send(final, flags=FINAL)
        return None

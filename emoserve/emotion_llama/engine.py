"""The Emotion-LLaMA language side as one server-free object: prompt → spliced embeddings → continuously
batched generation (:mod:`emoserve.emotion_llama.scheduler`) → parsed emotion and its confidence.

The Triton ``emotion_llama_llm`` model is a thin adapter over :class:`EmotionLlamaEngine` (:meth:`submit` from
``execute``, results from the engine's decode-loop thread), and the tests use the same engine in-process
(:meth:`run`) as the reference that Triton's output must equal token for token.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from emoserve.emotion_llama.defaults import EMOTION_LLAMA
from emoserve.emotion_llama.generation import FINISH_CANCELLED, PromptCache, SamplingParams, emotion_confidence
from emoserve.emotion_llama.llm import embed_prompt, load_llm
from emoserve.emotion_llama.prompts import EMOTION_LABELS, build_prompt, parse_emotion_label, parse_task, validate_question
from emoserve.emotion_llama.scheduler import (
    ContinuousBatchScheduler,
    GenerationJob,
    SchedulerFull,
    SchedulerStopped,
    SequenceCallbacks,
    SequenceResult,
)
from emoserve.emotion_llama.skinny_gemm import use_skinny_gemm

__all__ = ["EmotionLlamaEngine", "EngineRequest", "EngineRequestError", "EngineResult", "SchedulerFull", "SchedulerStopped"]

NUM_MULTIMODAL_TOKENS = 260  # 256 image tokens, 3 feature tokens (FaceMAE, VideoMAE, HuBERT), 1 CLS token


class EngineRequestError(ValueError):
    """A request the engine refuses (bad prompt, wrong embedding shape, bad sampling parameters)."""


@dataclass
class EngineRequest:
    question: str
    multimodal: np.ndarray  # [260, hidden] float32
    params: SamplingParams = field(default_factory=SamplingParams)


@dataclass
class EngineResult:
    text: str
    token_ids: list[int]
    finish_reason: str
    task: str | None
    emotion: str | None = None
    confidence: float | None = None
    label_probs: dict[str, float] | None = None
    prompt_tokens: int = 0
    # the scheduler's account (SequenceStats.summary): queue_seconds, time_to_first_token_seconds, generation_seconds,
    # decode_steps, max_step_batch_size (rows in its fullest decode step), mean_step_batch_size
    scheduling: dict = field(default_factory=dict)

    def metadata(self) -> dict:
        return {
            "finish_reason": self.finish_reason,
            "task": self.task,
            "emotion": self.emotion,
            "confidence": self.confidence,
            "label_probs": self.label_probs,
            "prompt_tokens": self.prompt_tokens,
            "generated_tokens": len(self.token_ids),
            **self.scheduling,
            # the sequences it was decoded with at most (before continuous batching: the execute's batch)
            "batch_size": self.scheduling.get("max_step_batch_size", 1),
        }


def _label_prefix_text(answer: str) -> str | None:
    """The answer up to its last whitespace-separated word (upstream parses that word as the label)."""
    stripped = answer.rstrip()
    if not stripped:
        return None
    cut = max(stripped.rfind(" "), stripped.rfind("\n"), stripped.rfind("\t"))
    return stripped[: cut + 1] if cut >= 0 else ""


class EmotionLlamaEngine:
    def __init__(
        self,
        folder: str | Path,
        max_question_chars: int = EMOTION_LLAMA.max_prompt_chars,
        device: str = "cpu",
        max_active_sequences: int = EMOTION_LLAMA.max_active_sequences,
        max_batch_tokens: int = EMOTION_LLAMA.max_batch_tokens,
        max_waiting: int = EMOTION_LLAMA.max_waiting_requests,
    ):
        self.model, self.tokenizer, self.family = load_llm(folder)
        self.model.to(device)
        if device == "cpu":  # decode steps are memory-bound: read the weights at the machine's bandwidth
            use_skinny_gemm(self.model)
        self.device = device
        self.hidden_size = int(self.model.config.hidden_size)
        self.max_question_chars = max_question_chars
        self.scheduler = ContinuousBatchScheduler(self.model, self.tokenizer, max_active_sequences, max_batch_tokens,
                                                  max_waiting)

    def start(self, intra_op_threads: int | None = None) -> None:
        """Decode on the engine's own loop thread: :meth:`submit` returns at once, callbacks come from there.

        ``intra_op_threads``: the loop's torch threads (default: the starting thread's count).
        """
        self.scheduler.start(torch.get_num_threads() if intra_op_threads is None else intra_op_threads)

    def stop(self) -> None:
        self.scheduler.stop()

    def _embed(self, request: EngineRequest) -> torch.Tensor:
        try:
            validate_question(request.question, self.max_question_chars)
        except ValueError as exc:
            raise EngineRequestError(str(exc)) from None
        multimodal = np.asarray(request.multimodal, dtype=np.float32)
        if multimodal.shape != (NUM_MULTIMODAL_TOKENS, self.hidden_size):
            raise EngineRequestError(
                f"multimodal embeddings must be [{NUM_MULTIMODAL_TOKENS}, {self.hidden_size}], got {list(multimodal.shape)}"
            )
        if not np.all(np.isfinite(multimodal)):
            raise EngineRequestError("multimodal embeddings hold NaN or infinite values")
        with torch.inference_mode():
            return embed_prompt(self.model, self.tokenizer, build_prompt(request.question, self.family), multimodal)

    def submit(
        self,
        request: EngineRequest,
        on_result: Callable[[EngineResult], None],
        on_error: Callable[[BaseException], None],
        on_token: Callable[[int, str], None] | None = None,
        is_cancelled: Callable[[], bool] | None = None,
    ) -> None:
        """Queue one request for the decode loop; the callbacks come from whoever runs the loop's steps.

        Raises :class:`EngineRequestError` for a request that cannot run and :class:`SchedulerFull` /
        :class:`SchedulerStopped` when it cannot be queued; nothing is queued then.
        """
        prompt_embeds = self._embed(request)
        task = parse_task(request.question)

        def finished(sequence: SequenceResult) -> None:
            generation = sequence.generation
            outcome = EngineResult(
                text=generation.text,
                token_ids=list(generation.token_ids),
                finish_reason=generation.finish_reason,
                task=task,
                prompt_tokens=int(prompt_embeds.shape[0]),
                scheduling=sequence.stats.summary(),
            )
            if task == "emotion" and outcome.finish_reason != FINISH_CANCELLED:
                self._score_emotion(outcome, sequence.prompt_cache)
            on_result(outcome)

        try:
            self.scheduler.submit(GenerationJob(prompt_embeds, request.params, keep_prompt_cache=task == "emotion"),
                                  SequenceCallbacks(finished, on_error, on_token, is_cancelled))
        except ValueError as exc:  # e.g. prompt + max_new_tokens beyond the KV budget
            raise EngineRequestError(str(exc)) from None

    def run(
        self,
        requests: list[EngineRequest],
        on_token: Callable[[int, int, str], None] | None = None,
        should_stop: Callable[[int], bool] | None = None,
    ) -> list[EngineResult | EngineRequestError]:
        """One result per request, in order, decoded together; refused requests get their error and do not run.

        Without a loop thread (:meth:`start`) the caller's thread runs the steps; with one, this waits for it.
        """
        outcomes: list[EngineResult | EngineRequestError | None] = [None] * len(requests)
        done = threading.Semaphore(0)
        submitted = 0
        for index, request in enumerate(requests):
            def store(outcome, index=index) -> None:
                outcomes[index] = outcome
                done.release()

            def fail(exc: BaseException, index=index) -> None:
                outcomes[index] = exc
                done.release()

            try:
                self.submit(
                    request, store, fail,
                    on_token=None if on_token is None else (lambda token, delta, index=index: on_token(index, token, delta)),
                    is_cancelled=None if should_stop is None else (lambda index=index: should_stop(index)),
                )
                submitted += 1
            except EngineRequestError as exc:
                outcomes[index] = exc
        while not self.scheduler.running and self.scheduler.has_work():
            self.scheduler.step()
        for _ in range(submitted):
            done.acquire()
        for outcome in outcomes:
            if isinstance(outcome, BaseException) and not isinstance(outcome, EngineRequestError):
                raise outcome
        return outcomes  # type: ignore[return-value]

    def _score_emotion(self, outcome: EngineResult, prompt_cache: PromptCache) -> None:
        """The label probabilities as continuations of the prompt's cache from its prefill (the prompt is not re-run)."""
        outcome.emotion = parse_emotion_label(outcome.text)
        prefix = _label_prefix_text(outcome.text)
        prefix_ids = self.tokenizer(prefix, add_special_tokens=False).input_ids if prefix else []
        with torch.inference_mode():
            probabilities = emotion_confidence(self.model, None, prefix_ids, prompt_cache=prompt_cache)
        outcome.label_probs = {label: round(float(probabilities[label]), 6) for label in EMOTION_LABELS}
        outcome.confidence = outcome.label_probs[outcome.emotion]

"""The Emotion-LLaMA language side as one server-free object: prompt → spliced embeddings → batched
generation → parsed emotion and its confidence.

The Triton ``emotion_llama_llm`` model is a thin adapter over :class:`EmotionLlamaEngine`, and the tests
use the same engine in-process as the reference that Triton's output must equal token for token.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from emoserve.emotion_llama.defaults import EMOTION_LLAMA
from emoserve.emotion_llama.generation import SamplingParams, emotion_confidence, generate_batch
from emoserve.emotion_llama.llm import embed_prompt, load_llm
from emoserve.emotion_llama.prompts import EMOTION_LABELS, build_prompt, parse_emotion_label, parse_task, validate_question

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
    generation_seconds: float = 0.0

    def metadata(self) -> dict:
        return {
            "finish_reason": self.finish_reason,
            "task": self.task,
            "emotion": self.emotion,
            "confidence": self.confidence,
            "label_probs": self.label_probs,
            "prompt_tokens": self.prompt_tokens,
            "generated_tokens": len(self.token_ids),
            "generation_seconds": round(self.generation_seconds, 4),
        }


def _label_prefix_text(answer: str) -> str | None:
    """The answer up to its last whitespace-separated word (upstream parses that word as the label)."""
    stripped = answer.rstrip()
    if not stripped:
        return None
    cut = max(stripped.rfind(" "), stripped.rfind("\n"), stripped.rfind("\t"))
    return stripped[: cut + 1] if cut >= 0 else ""


class EmotionLlamaEngine:
    def __init__(self, folder: str | Path, max_question_chars: int = EMOTION_LLAMA.max_prompt_chars, device: str = "cpu"):
        self.model, self.tokenizer, self.family = load_llm(folder)
        self.model.to(device)
        self.device = device
        self.hidden_size = int(self.model.config.hidden_size)
        self.max_question_chars = max_question_chars

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
        return embed_prompt(self.model, self.tokenizer, build_prompt(request.question, self.family), multimodal)

    def run(
        self,
        requests: list[EngineRequest],
        on_token: Callable[[int, int, str], None] | None = None,
        should_stop: Callable[[int], bool] | None = None,
    ) -> list[EngineResult | EngineRequestError]:
        """One result per request, in order; refused requests get their error and do not run."""
        outcomes: list[EngineResult | EngineRequestError | None] = [None] * len(requests)
        runnable, embeds = [], []
        for index, request in enumerate(requests):
            try:
                embeds.append(self._embed(request))
                runnable.append(index)
            except EngineRequestError as exc:
                outcomes[index] = exc
        if runnable:
            started = time.perf_counter()

            def forward_token(row: int, token_id: int, delta: str) -> None:
                if on_token is not None:
                    on_token(runnable[row], token_id, delta)

            def stop_row(row: int) -> bool:
                return should_stop(runnable[row]) if should_stop is not None else False

            with torch.inference_mode():
                generated = generate_batch(
                    self.model, self.tokenizer, embeds, [requests[i].params for i in runnable], forward_token, stop_row
                )
            elapsed = time.perf_counter() - started
            for row, index in enumerate(runnable):
                result = generated[row]
                outcome = EngineResult(
                    text=result.text,
                    token_ids=list(result.token_ids),
                    finish_reason=result.finish_reason,
                    task=parse_task(requests[index].question),
                    prompt_tokens=int(embeds[row].shape[0]),
                    generation_seconds=elapsed,
                )
                if outcome.task == "emotion" and outcome.finish_reason != "cancelled":
                    self._score_emotion(outcome, embeds[row])
                outcomes[index] = outcome
        return outcomes  # type: ignore[return-value]

    def _score_emotion(self, outcome: EngineResult, prompt_embeds: torch.Tensor) -> None:
        outcome.emotion = parse_emotion_label(outcome.text)
        prefix = _label_prefix_text(outcome.text)
        prefix_ids = self.tokenizer(prefix, add_special_tokens=False).input_ids if prefix else []
        with torch.inference_mode():
            probabilities = emotion_confidence(self.model, prompt_embeds, prefix_ids)
        outcome.label_probs = {label: round(float(probabilities[label]), 6) for label in EMOTION_LABELS}
        outcome.confidence = outcome.label_probs[outcome.emotion]

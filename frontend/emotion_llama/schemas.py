"""Request and response bodies of the Emotion-LLaMA API (its guide's ``/api/predict/`` and ``/process_video``,
and the additions: sampling fields, the upload endpoint)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from emoserve.emotion_llama.defaults import EMOTION_LLAMA
from emoserve.emotion_llama.prompts import EMOTION_LABELS
from emoserve.model_catalog import MAX_NEW_TOKENS, REPETITION_PENALTY, SEED, TEMPERATURE, TOP_P

# seeds are Triton UINT64 but pass through int64 on the way; the same bound for the JSON bodies and the upload form
SEED_LIMIT = 2**63


class Sampling(BaseModel):
    """Optional generation parameters (an addition to the documented bodies; defaults are upstream's demo)."""

    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    repetition_penalty: float | None = Field(None, ge=1.0, le=2.0)
    max_new_tokens: int | None = Field(None, ge=1, le=EMOTION_LLAMA.max_new_tokens_limit)
    seed: int | None = Field(None, ge=0, lt=SEED_LIMIT)

    def as_inputs(self) -> dict[str, float | int | None]:
        return {TEMPERATURE: self.temperature, TOP_P: self.top_p, REPETITION_PENALTY: self.repetition_penalty,
                MAX_NEW_TOKENS: self.max_new_tokens, SEED: self.seed}


class PredictRequest(Sampling):
    data: list[str] = Field(description="[video_path, prompt_text]", min_length=2, max_length=2)


class PredictResponse(BaseModel):
    data: list[str]
    duration: float
    metadata: dict = Field(default_factory=dict, description="addition: emotion, confidence, weights, timings")


class VideoQuestion(Sampling):
    video_path: str
    question: str


class VideoAnswer(BaseModel):
    response: str
    emotion: str | None = Field(None, description=f"for [emotion] prompts: one of {', '.join(EMOTION_LABELS)}")
    confidence: float | None = Field(None, description="the label's probability from the model's token probabilities")
    label_probs: dict[str, float] | None = None
    duration: float
    metadata: dict = Field(default_factory=dict)

"""Request and response bodies of the Emotion-LLaMA API (its guide's ``/api/predict/`` and ``/process_video``,
and the additions: sampling fields, the upload endpoint)."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from emoserve.emotion_llama.defaults import EMOTION_LLAMA
from emoserve.emotion_llama.prompts import EMOTION_LABELS, TASK_ANSWERS
from emoserve.model_catalog import MAX_NEW_TOKENS, REPETITION_PENALTY, SEED, TEMPERATURE, TOP_P
from frontend.json_types import json_int

# seeds are Triton UINT64; bounded to what a JSON number (and JavaScript) holds exactly, for the JSON bodies and the
# upload form alike
SEED_LIMIT = 2**53


# what the routes accept, in the schema too: a path of names a file system can hold (no NUL byte, none over 255
# characters), a question that is not blank
VideoPath = Annotated[str, Field(min_length=1, max_length=4096, pattern=r"^/?(?:[^/\x00]{1,255}/)*[^/\x00]{1,255}/?$",
                                 description="a video file on the server, inside its media roots")]
def _not_blank(question: str) -> str:
    if not question.strip():
        raise ValueError("the question is empty")
    return question


# the pattern is for the schema; the validator says what is wrong in words
Question = Annotated[str, Field(min_length=1, max_length=EMOTION_LLAMA.max_prompt_chars, json_schema_extra={"pattern": r"\S"},
                                description="the prompt, e.g. '[emotion] What is the emotion expressed in this video?'"),
                     AfterValidator(_not_blank)]


class Sampling(BaseModel):
    """Optional generation parameters (an addition to the documented bodies; defaults are upstream's demo)."""

    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    repetition_penalty: float | None = Field(None, ge=1.0, le=2.0)
    max_new_tokens: json_int(ge=1, le=EMOTION_LLAMA.max_new_tokens_limit, description=(
        f"unset: {EMOTION_LLAMA.max_new_tokens}, and an [emotion] answer ends at its first full stop within "
        f"{TASK_ANSWERS['emotion'].max_new_tokens}")) | None = None
    seed: json_int(ge=0, lt=SEED_LIMIT) | None = None

    model_config = ConfigDict(strict=True)  # JSON bodies: 0 is not a boolean, "7" is not a number
    def as_inputs(self) -> dict[str, float | int | None]:
        return {TEMPERATURE: self.temperature, TOP_P: self.top_p, REPETITION_PENALTY: self.repetition_penalty,
                MAX_NEW_TOKENS: self.max_new_tokens, SEED: self.seed}


class PredictRequest(Sampling):
    data: tuple[VideoPath, Question] = Field(description="[video_path, prompt_text]", strict=False)  # a JSON array


class PredictResponse(BaseModel):
    data: list[str]
    duration: float
    metadata: dict = Field(default_factory=dict, description="addition: emotion, confidence, weights, timings")


class VideoQuestion(Sampling):
    video_path: VideoPath
    question: Question


class VideoAnswer(BaseModel):
    response: str
    emotion: str | None = Field(None, description=f"for [emotion] prompts: one of {', '.join(EMOTION_LABELS)}")
    confidence: float | None = Field(None, description="the label's probability from the model's token probabilities")
    label_probs: dict[str, float] | None = None
    duration: float
    metadata: dict = Field(default_factory=dict)

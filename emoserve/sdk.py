"""Python SDK for the REST front end (the shape the Emotion-LLaMA API overview sketches).

    from emoserve.sdk import EmotionLLaMA
    client = EmotionLLaMA("http://127.0.0.1:8080")
    result = client.analyze("/abs/path/video.mp4", task="emotion")
    print(result.emotion, result.confidence, result.explanation)

Server-side paths must lie inside the server's media roots; ``analyze_file`` uploads a local file instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import httpx

from emoserve.emotion_llama.prompts import EMOTION_LABELS

TASK_PROMPTS = {
    "emotion": "[emotion] What is the emotion expressed in this video?",
    "reason": "[reason] What are the facial expressions and vocal tone used in the video? "
    "What is the intended meaning behind the words? Which emotion does this reflect?",
}


class EmotionLLaMAError(RuntimeError):
    def __init__(self, status_code: int, message: str, details: str | None = None):
        super().__init__(f"{status_code}: {message}" + (f" ({details})" if details else ""))
        self.status_code, self.message, self.details = status_code, message, details


@dataclass
class AnalysisResult:
    explanation: str  # the model's whole answer
    emotion: str | None  # one of EMOTION_LABELS for [emotion] prompts
    confidence: float | None
    label_probs: dict[str, float] | None = None
    duration: float = 0.0
    metadata: dict = field(default_factory=dict)


def question_for(task: str, sentence: str | None = None) -> str:
    if task not in TASK_PROMPTS:
        raise ValueError(f"task must be one of {', '.join(TASK_PROMPTS)}, got {task!r}")
    prompt = TASK_PROMPTS[task]
    return f"The person in video says: {sentence}. {prompt}" if sentence else prompt


class EmotionLLaMA:
    def __init__(self, api_url: str, api_key: str | None = None, timeout_s: float = 600.0):
        headers = {"X-API-Key": api_key} if api_key else {}
        self._client = httpx.Client(base_url=api_url.rstrip("/"), headers=headers, timeout=timeout_s)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "EmotionLLaMA":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @staticmethod
    def _result(response: httpx.Response) -> AnalysisResult:
        body = response.json()
        if response.status_code != 200:
            raise EmotionLLaMAError(response.status_code, body.get("error") or body.get("detail") or response.text, body.get("details"))
        emotion = body.get("emotion")
        if emotion is not None and emotion not in EMOTION_LABELS:
            raise EmotionLLaMAError(500, f"server returned an unknown label {emotion!r}")
        return AnalysisResult(body["response"], emotion, body.get("confidence"), body.get("label_probs"), body.get("duration", 0.0), body.get("metadata", {}))

    def analyze(self, video_path: str | Path, task: str = "emotion", sentence: str | None = None, **sampling) -> AnalysisResult:
        """Ask about a video the SERVER can read (inside its media roots)."""
        body = {"video_path": str(video_path), "question": question_for(task, sentence), **sampling}
        return self._result(self._client.post("/process_video", json=body))

    def analyze_file(self, video_path: str | Path, task: str = "emotion", sentence: str | None = None) -> AnalysisResult:
        """Upload a local video and ask about it."""
        path = Path(video_path)
        with path.open("rb") as handle:
            response = self._client.post(
                "/api/v1/emotion-llama/analyze", files={"video_file": (path.name, handle)}, data={"question": question_for(task, sentence)}
            )
        return self._result(response)

    def stream(self, video_path: str | Path, question: str, **sampling) -> Iterator[str]:
        """Yield the answer's text pieces as the model generates them."""
        import json

        body = {"video_path": str(video_path), "question": question, **sampling}
        with self._client.stream("POST", "/process_video/stream", json=body) as response:
            if response.status_code != 200:
                response.read()
                self._result(response)
            event = None
            for line in response.iter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    payload = json.loads(line[6:])
                    if event == "token":
                        yield payload["delta"]
                    elif event == "error":
                        raise EmotionLLaMAError(payload.get("code", 500), payload.get("error", "error"), payload.get("details"))

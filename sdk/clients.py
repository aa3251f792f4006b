"""Python SDK for the REST front end (the shape the Emotion-LLaMA API overview sketches).

    from emotion_llama import EmotionLLaMA          # or: from sdk import EmotionLLaMA
    client = EmotionLLaMA(api_url="http://127.0.0.1:7889")
    result = client.analyze("video.mp4", task="emotion")
    print(result.emotion, result.confidence, result.explanation)

``analyze`` posts to the Gradio-shaped ``/api/predict/``, so it works against the document's URL (:7889 in
documented-ports mode) and the front end's main port alike; ``analyze_file`` (an upload) and ``stream`` (SSE) use
the FastAPI-shaped routes (:7887, or the main port). Server-side paths must lie inside the server's media roots
(a relative path is relative to the first of them); ``analyze_file`` uploads a local file instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from emoserve.emotion_llama.defaults import EMOTION_LLAMA
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


def _sse_events(response: httpx.Response) -> Iterator[tuple[str, str]]:
    """(event, data) of each server-sent event, and ("", "") for each comment line (a keep-alive)."""
    event = None
    for line in response.iter_lines():
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            yield event or "message", line[6:]
        elif line.startswith(":"):
            yield "", ""
        elif not line:  # the end of one event: the next names its own
            event = None


class _RestClient:
    """One httpx client per SDK client, or the caller's (then the caller closes it)."""

    def __init__(self, base_url: str, api_key: str | None, timeout_s: float, client: httpx.Client | None):
        headers = {"X-API-Key": api_key} if api_key else {}
        self._owns_client = client is None
        self._client = client or httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout_s)

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class EmotionLLaMA(_RestClient):
    def __init__(self, api_url: str, api_key: str | None = None, timeout_s: float = EMOTION_LLAMA.generation_timeout_s,
                 client: httpx.Client | None = None):
        super().__init__(api_url, api_key, timeout_s, client)

    @staticmethod
    def _body(response: httpx.Response) -> dict:
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code != 200:
            raise EmotionLLaMAError(response.status_code, body.get("error") or body.get("detail") or response.text, body.get("details"))
        return body

    @staticmethod
    def _analysis(text: str, emotion: str | None, confidence, label_probs, duration: float, metadata: dict) -> AnalysisResult:
        if emotion is not None and emotion not in EMOTION_LABELS:
            raise EmotionLLaMAError(500, f"server returned an unknown label {emotion!r}")
        return AnalysisResult(text, emotion, confidence, label_probs, duration, metadata)

    @classmethod
    def _result(cls, response: httpx.Response) -> AnalysisResult:
        body = cls._body(response)
        return cls._analysis(body["response"], body.get("emotion"), body.get("confidence"), body.get("label_probs"),
                             body.get("duration", 0.0), body.get("metadata", {}))

    def analyze(self, video_path: str | Path, task: str = "emotion", sentence: str | None = None, **sampling) -> AnalysisResult:
        """Ask about a video the SERVER can read (inside its media roots)."""
        body = self._body(self._client.post("/api/predict/", json={"data": [str(video_path), question_for(task, sentence)], **sampling}))
        metadata = dict(body.get("metadata", {}))
        emotion, confidence, label_probs = (metadata.pop(key, None) for key in ("emotion", "confidence", "label_probs"))
        return self._analysis(body["data"][0], emotion, confidence, label_probs, body.get("duration", 0.0), metadata)

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
                self._body(response)
            for event, data in _sse_events(response):
                payload = json.loads(data)
                if event == "token":
                    yield payload["delta"]
                elif event == "error":
                    raise EmotionLLaMAError(payload.get("code", 500), payload.get("error", "error"), payload.get("details"))


# -- Hallo2 ------------------------------------------------------------------------------------------------


_TASK_NOT_FOUND = "TASK_NOT_FOUND"  # the error_code of an unknown task (a 404 from a route that exists)


class Hallo2Error(RuntimeError):
    """An error answer (``status_code``, ``error_code``), or a task that ended failed/cancelled (``status``)."""

    def __init__(self, message: str, status_code: int | None = None, error_code: str | None = None, status: str | None = None):
        super().__init__(message)
        self.status_code, self.error_code, self.status = status_code, error_code, status


class _Progress:
    """tqdm when installed, else one rewritten line on stderr."""

    def __init__(self, task_id: str, enabled: bool):
        self.enabled, self.bar, self.last = enabled, None, -1
        if not enabled:
            return
        try:
            from tqdm import tqdm

            self.bar = tqdm(total=100, desc=f"hallo2 {task_id[:8]}", unit="%")
        except ImportError:
            self.bar = None

    def update(self, progress: int, message: str | None) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(max(0, progress - self.bar.n))
            self.bar.set_postfix_str(message or "", refresh=True)
        elif progress != self.last:
            import sys

            sys.stderr.write(f"\r{progress:3d}% {message or ''}"[:120].ljust(60))
            sys.stderr.flush()
        self.last = progress

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and self.last >= 0:
            import sys

            sys.stderr.write("\n")


class Hallo2Client(_RestClient):
    """Client of the Hallo2 task API (``emo-hallo-api.zh.md``)::

        client = Hallo2Client("http://127.0.0.1:8080")
        task_id = client.inference("person.jpg", "speech.wav", use_cache=True)
        client.wait_and_download(task_id, "output.mp4")
    """

    def __init__(self, base_url: str, api_key: str | None = None, timeout_s: float = 600.0, client: httpx.Client | None = None):
        super().__init__(base_url, api_key, timeout_s, client)

    @staticmethod
    def _json(response: httpx.Response) -> dict:
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code != 200:
            message = f"{response.status_code}: {body.get('detail') or response.text}"
            raise Hallo2Error(message, response.status_code, body.get("error_code"))
        return body

    def inference(self, image_path: str | Path, audio_path: str | Path, use_cache: bool = True) -> str:
        """Upload the portrait and the speech; answers the queued task's id."""
        image, audio = Path(image_path), Path(audio_path)
        with image.open("rb") as image_handle, audio.open("rb") as audio_handle:
            response = self._client.post("/api/v1/inference/hallo2",
                                         files={"image_file": (image.name, image_handle), "audio_file": (audio.name, audio_handle)},
                                         data={"use_cache": "true" if use_cache else "false"})
        return self._json(response)["task_id"]

    def configure(self, guidance_scale: float | None = None, inference_steps: int | None = None, enable_cache: bool | None = None) -> dict:
        settings = {"guidance_scale": guidance_scale, "inference_steps": inference_steps, "enable_cache": enable_cache}
        body = {k: v for k, v in settings.items() if v is not None}
        return self._json(self._client.post("/api/v1/inference/hallo2/config", json=body))

    def status(self, task_id: str) -> dict:
        return self._json(self._client.get(f"/api/v1/tasks/{task_id}"))

    def logs(self, task_id: str) -> str:
        return self._json(self._client.post(f"/api/v1/tasks/{task_id}/logs"))["logs"]

    def tasks(self) -> dict:
        return self._json(self._client.get("/api/v1/tasks"))["tasks"]

    def cancel(self, task_id: str) -> dict:
        return self._json(self._client.delete(f"/api/v1/tasks/{task_id}"))

    def health(self) -> dict:
        return self._json(self._client.get("/api/v1/health"))

    def download(self, task_id: str, output_path: str | Path) -> Path:
        """The finished task's MP4, written to a temporary name and renamed (never half-written)."""
        output = Path(output_path)
        partial = output.with_name(output.name + ".part")
        with self._client.stream("GET", f"/api/v1/tasks/{task_id}/video") as response:
            if response.status_code != 200:
                response.read()
                self._json(response)
            try:
                with partial.open("wb") as handle:
                    for block in response.iter_bytes():
                        handle.write(block)
            except BaseException:
                partial.unlink(missing_ok=True)
                raise
        partial.replace(output)
        return output

    def follow(self, task_id: str) -> Iterator[dict]:
        """The task's status (the :meth:`status` body) now and after each change until it is finished, from the
        server's event stream (``GET /api/v1/tasks/{id}/events``): no polling, and the end is seen at once."""
        return (state for state in self._follow(task_id) if state is not None)

    def _follow(self, task_id: str) -> Iterator[dict | None]:
        """:meth:`follow`, with None at each keep-alive (a waiting caller's chance to give up)."""
        import json

        with self._client.stream("GET", f"/api/v1/tasks/{task_id}/events") as response:
            if response.status_code != 200:
                response.read()
                self._json(response)
            for event, data in _sse_events(response):
                if event == "status":
                    yield json.loads(data)
                elif event == "":
                    yield None
                elif event == "error":
                    body = json.loads(data)
                    raise Hallo2Error(f"task {task_id}: {body.get('detail')}", None, body.get("error_code"))

    def _states(self, task_id: str, poll_s: float) -> Iterator[dict | None]:
        """:meth:`_follow`; polling :meth:`status` every ``poll_s`` from a server without the event stream, or after
        the stream ended before the task did."""
        import time

        try:
            yield from self._follow(task_id)
        except Hallo2Error as exc:
            if exc.status_code not in (404, 405) or exc.error_code == _TASK_NOT_FOUND:
                raise
        while True:
            yield self.status(task_id)
            time.sleep(poll_s)

    def wait_and_download(self, task_id: str, output_path: str | Path, poll_s: float = 2.0, timeout_s: float = 3600.0,
                          progress: bool = True) -> Path:
        """Wait until the task ends (a progress bar meanwhile), then download its video. The wait follows the task's
        event stream; against a server without one it polls the status every ``poll_s``.

        Raises :class:`Hallo2Error` when the task failed or was cancelled, :class:`TimeoutError` after ``timeout_s``
        (checked at each status change or keep-alive of the stream, or each poll).
        """
        import time

        bar = _Progress(task_id, progress)
        deadline = time.monotonic() + timeout_s
        try:
            for state in self._states(task_id, poll_s):
                if state is None:  # a keep-alive
                    if time.monotonic() >= deadline:
                        raise TimeoutError(f"task {task_id} did not finish within {timeout_s:.0f}s")
                    continue
                bar.update(int(state.get("progress") or 0), state.get("status_message"))
                if state["status"] == "completed":
                    break
                if state["status"] in ("failed", "cancelled"):
                    raise Hallo2Error(f"task {task_id} {state['status']}: {state.get('error') or state.get('status_message')}",
                                      status=state["status"])
                if time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"task {task_id} did not finish within {timeout_s:.0f}s (status {state['status']}, {state.get('progress')}%)"
                    )
        finally:
            bar.close()
        return self.download(task_id, output_path)

"""Emotion-LLaMA end to end: Triton (gRPC streaming) vs the in-process pipeline, and the REST API."""

from __future__ import annotations

import concurrent.futures
import json
import os
import queue
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from emoserve.constants import SAMPLE_RATE
from emoserve.emotion_llama.engine import EmotionLlamaEngine, EngineRequest
from emoserve.emotion_llama.generation import SamplingParams
from emoserve.emotion_llama.preprocess import preprocess_frame
from emoserve.emotion_llama.prompts import EMOTION_LABELS, TASK_ANSWERS
from emoserve.media import decode_video, encode_video
from emoserve.model_catalog import (
    AUDIO_INPUT_VALUES,
    CLS_TOKEN,
    EMOTION_AUDIO_MODEL,
    EMOTION_LLM_MODEL,
    EMOTION_PIPELINE_MODEL,
    EMOTION_VISION_MODEL,
    FEATURE_TOKENS,
    IMAGE_TOKENS,
    MAX_NEW_TOKENS,
    PIXEL_VALUES,
    PROMPT,
    RESULT_METADATA,
    TEMPERATURE,
    TEXT,
    TEXT_DELTA,
    TOKEN_IDS,
    VIDEO,
)
from emoserve.onnx_runner import OnnxRunner
from sdk import EmotionLLaMA, EmotionLLaMAError
from tests.conftest import EXAMPLES

SAMPLE_VIDEO = EXAMPLES / "sample_emotion.mp4"
REASON = "The person in video says: I can't believe it! We actually won the prize!  [reason] What is the emotional state of the person?"
EMOTION = "[emotion] What is the emotion expressed in this video?"
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def reference(tiny_repository):
    """The same pipeline, in this process, from the same files the Triton models load."""
    vision = OnnxRunner(tiny_repository / EMOTION_VISION_MODEL / "1" / "model.onnx")
    audio = OnnxRunner(tiny_repository / EMOTION_AUDIO_MODEL / "1" / "model.onnx")
    engine = EmotionLlamaEngine(tiny_repository / EMOTION_LLM_MODEL / "1" / "llm")

    def run(video: bytes, question: str, params: SamplingParams):
        decoded = decode_video(video)
        pcm = decoded.audio if decoded.audio is not None else np.zeros(SAMPLE_RATE, np.float32)
        image = vision.run({PIXEL_VALUES: preprocess_frame(decoded.first_frame)[None]})
        features = audio.run({AUDIO_INPUT_VALUES: pcm[None]})
        multimodal = np.concatenate([image[IMAGE_TOKENS][0], features[FEATURE_TOKENS][0], image[CLS_TOKEN][0]])
        (result,) = engine.run([EngineRequest(question, multimodal, params)])
        return result

    return run


def greedy(max_new_tokens: int = MAX_TOKENS) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens)


def stream_pipeline(grpc_url: str, video: bytes, question: str, max_new_tokens: int | None = MAX_TOKENS, temperature: float = 0.0):
    """gRPC bidirectional stream to the decoupled pipeline: (deltas, final text, token ids, metadata); ``max_new_tokens``
    None sends none."""
    responses: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(grpc_url)
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    try:
        inputs = []
        for name, array, datatype in (
            (VIDEO, np.array([video], dtype=np.object_), "BYTES"),
            (PROMPT, np.array([question.encode()], dtype=np.object_), "BYTES"),
            (TEMPERATURE, np.array([temperature], np.float32), "FP32"),
            *([(MAX_NEW_TOKENS, np.array([max_new_tokens], np.int32), "INT32")] if max_new_tokens is not None else []),
        ):
            tensor = grpcclient.InferInput(name, list(array.shape), datatype)
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        client.async_stream_infer(EMOTION_PIPELINE_MODEL, inputs)
        deltas = []
        while True:
            result, error = responses.get(timeout=120)
            if error is not None:
                raise error
            if result.as_numpy(TEXT_DELTA) is not None:
                deltas.append(result.as_numpy(TEXT_DELTA).reshape(-1)[0].decode())
                continue
            text = result.as_numpy(TEXT).reshape(-1)[0].decode()
            metadata = json.loads(result.as_numpy(RESULT_METADATA).reshape(-1)[0])
            return deltas, text, result.as_numpy(TOKEN_IDS).reshape(-1).tolist(), metadata
    finally:
        client.stop_stream()
        client.close()


def test_greedy_through_triton_equals_in_process_token_for_token(triton_server, reference):
    video = SAMPLE_VIDEO.read_bytes()
    deltas, text, token_ids, metadata = stream_pipeline(triton_server.grpc_url, video, REASON)
    expected = reference(video, REASON, greedy())
    assert token_ids == expected.token_ids and len(token_ids) > 0
    assert text == expected.text
    assert "".join(deltas) == text  # the stream concatenates to the final answer
    assert metadata["has_audio_track"] is True and metadata["decode_seconds"] >= 0
    assert "seeded-random" in metadata["weights"]


def test_emotion_prompt_carries_label_and_confidence(triton_server, reference):
    video = SAMPLE_VIDEO.read_bytes()
    _, text, _, metadata = stream_pipeline(triton_server.grpc_url, video, EMOTION)
    assert metadata["task"] == "emotion"
    assert metadata["emotion"] in EMOTION_LABELS
    probs = metadata["label_probs"]
    assert set(probs) == set(EMOTION_LABELS) and abs(sum(probs.values()) - 1) < 1e-4
    assert metadata["confidence"] == pytest.approx(probs[metadata["emotion"]])
    expected = reference(video, EMOTION, greedy())
    assert metadata["emotion"] == expected.emotion and metadata["confidence"] == pytest.approx(expected.confidence, abs=1e-5)


def test_an_emotion_question_without_max_new_tokens_gets_the_tasks_limits(triton_server, reference):
    video = SAMPLE_VIDEO.read_bytes()
    _, text, token_ids, metadata = stream_pipeline(triton_server.grpc_url, video, EMOTION, max_new_tokens=None)
    limits = TASK_ANSWERS["emotion"]
    expected = reference(video, EMOTION, SamplingParams(temperature=0.0, max_new_tokens=limits.max_new_tokens, stop=limits.stop))
    assert token_ids == expected.token_ids and text == expected.text
    assert metadata["finish_reason"] in ("stop", "length", "eos") and metadata["generated_tokens"] <= limits.max_new_tokens
    assert metadata["emotion"] == expected.emotion  # scored at the shorter answer's last word


def test_video_without_audio_track_is_answered(triton_server, tmp_path):
    frames = np.zeros((10, 64, 64, 3), np.uint8)
    frames[:, 16:48, 16:48] = (200, 150, 120)
    video = encode_video(frames, fps=10)
    _, text, token_ids, metadata = stream_pipeline(triton_server.grpc_url, video, REASON)
    assert metadata["has_audio_track"] is False and len(token_ids) > 0


def _llm_statistics(triton_server) -> tuple[int, int]:
    client = httpclient.InferenceServerClient(triton_server.http_url)
    try:
        stats = client.get_inference_statistics(EMOTION_LLM_MODEL)["model_stats"][0]
        return int(stats["inference_count"]), int(stats["execution_count"])
    finally:
        client.close()


def test_four_concurrent_requests_are_correct_and_share_decoding(triton_server, reference):
    videos = [SAMPLE_VIDEO.read_bytes()] * 2 + [encode_video(np.full((5, 48, 48, 3), shade, np.uint8), fps=5) for shade in (60, 180)]
    questions = [REASON, EMOTION, REASON, EMOTION]
    before = _llm_statistics(triton_server)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda args: stream_pipeline(triton_server.grpc_url, *args, max_new_tokens=24), zip(videos, questions)))
    for (video, question), (_, text, token_ids, _metadata) in zip(zip(videos, questions), results):
        expected = reference(video, question, greedy(24))
        assert token_ids == expected.token_ids and text == expected.text
    inferences, _ = (a - b for a, b in zip(_llm_statistics(triton_server), before))
    assert inferences == 4
    # continuous batching: execute only queues a request, which then shares decode steps with the running ones
    assert max(r[3]["max_step_batch_size"] for r in results) > 1


# ---- REST ------------------------------------------------------------------------------------------


def test_gradio_predict_shape(api):
    body = {"data": [str(SAMPLE_VIDEO), REASON], "max_new_tokens": MAX_TOKENS, "temperature": 0}
    response = api.post("/api/predict/", json=body)
    assert response.status_code == 200, response.text
    result = response.json()
    assert isinstance(result["data"], list) and len(result["data"]) == 1 and result["data"][0]
    assert result["duration"] > 0 and "weights" in result["metadata"]


def test_process_video_equals_triton_direct(api, triton_server):
    body = {"video_path": str(SAMPLE_VIDEO), "question": REASON, "max_new_tokens": MAX_TOKENS, "temperature": 0}
    response = api.post("/process_video", json=body)
    assert response.status_code == 200, response.text
    _, text, token_ids, _ = stream_pipeline(triton_server.grpc_url, SAMPLE_VIDEO.read_bytes(), REASON)
    assert response.json()["response"] == text
    assert response.json()["metadata"]["generated_tokens"] == len(token_ids)


def test_sse_stream_concatenates_to_the_unary_answer(api):
    body = {"video_path": str(SAMPLE_VIDEO), "question": EMOTION, "max_new_tokens": MAX_TOKENS, "temperature": 0}
    unary = api.post("/process_video", json=body).json()
    deltas, done = [], None
    with api.stream("POST", "/process_video/stream", json=body) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        event = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                payload = json.loads(line[6:])
                if event == "token":
                    deltas.append(payload["delta"])
                elif event == "done":
                    done = payload
    assert done is not None and "".join(deltas) == done["response"] == unary["response"]
    assert done["emotion"] == unary["emotion"] in EMOTION_LABELS


def test_upload_endpoint(api):
    with SAMPLE_VIDEO.open("rb") as handle:
        response = api.post(
            "/api/v1/emotion-llama/analyze",
            files={"video_file": ("clip.mp4", handle)},
            data={"question": EMOTION, "max_new_tokens": str(MAX_TOKENS), "temperature": "0"},
        )
    assert response.status_code == 200, response.text
    assert response.json()["emotion"] in EMOTION_LABELS and 0 <= response.json()["confidence"] <= 1


def test_sdk_analyze(frontend):
    with EmotionLLaMA(frontend.base_url) as client:
        result = client.analyze(SAMPLE_VIDEO, task="emotion", max_new_tokens=MAX_TOKENS)
        assert result.emotion in EMOTION_LABELS and 0 <= result.confidence <= 1 and result.explanation
        uploaded = client.analyze_file(SAMPLE_VIDEO, task="reason")
        assert uploaded.explanation and uploaded.emotion is None
        assert "".join(client.stream(SAMPLE_VIDEO, EMOTION, max_new_tokens=MAX_TOKENS, temperature=0))
        with pytest.raises(EmotionLLaMAError) as error:
            client.analyze("/etc/passwd")
        assert error.value.status_code == 400  # outside the media roots


def _error(response: httpx.Response, status: int, words: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "code", "details"} and body["code"] == status
    assert words.lower() in (body["error"] + " " + str(body["details"])).lower()
    return body


@pytest.fixture()
def media(media_root: Path):
    made = []

    def put(name: str, data: bytes) -> Path:
        path = media_root / name
        path.write_bytes(data)
        made.append(path)
        return path

    yield put
    for path in made:
        path.unlink(missing_ok=True)


def test_bad_inputs_get_clear_4xx_and_the_model_keeps_serving(api, media, media_root, tmp_path):
    def process(path, question=REASON):
        return api.post("/process_video", json={"video_path": str(path), "question": question, "max_new_tokens": 4})

    _error(process(media_root / "missing.mp4"), 404, "not found")
    refused = _error(process("/etc/passwd"), 400, "outside the configured media roots")
    assert "--media-root" in refused["details"] and "EMOSERVE_EMOTION_LLAMA__MEDIA_ROOTS" in refused["details"]
    _error(process(f"{media_root}/../{media_root.name}/../../etc/passwd"), 400, "outside")
    _error(process("../../etc/passwd"), 400, "outside")  # relative: against the first root, and still confined
    outside = tmp_path / "secret.mp4"
    outside.write_bytes(SAMPLE_VIDEO.read_bytes())
    link = media_root / "link.mp4"
    os.symlink(outside, link)
    try:
        _error(process(link), 400, "outside")  # a symlink that leads out of the root
    finally:
        link.unlink()
    _error(process(media_root), 400, "not a regular file")
    not_a_video = b"just some text, not a video\n" * 20
    # the pipeline decodes each video once, so "invalid video" is its answer, given the route's 400 and the input's name
    assert _error(process(media("notes.mp4", not_a_video)), 400, "invalid video")["details"].endswith("notes.mp4")
    uploaded = api.post("/api/v1/emotion-llama/analyze", files={"video_file": ("clip.mp4", not_a_video)}, data={"question": REASON})
    assert _error(uploaded, 400, "invalid video")["details"] == "clip.mp4"
    streamed = api.post("/process_video/stream", json={"video_path": str(media("notes2.mp4", not_a_video)), "question": REASON})
    _error(streamed, 400, "invalid video")  # before the event stream starts, with its status code
    _error(process(media("empty.mp4", b"")), 400, "empty")
    _error(process(SAMPLE_VIDEO, question="   "), 400, "empty")
    _error(process(SAMPLE_VIDEO, question="x" * 5000), 400, "characters")
    _error(api.post("/api/predict/", json={"data": [str(SAMPLE_VIDEO)]}), 400, "invalid request")
    _error(
        api.post("/process_video", json={"video_path": str(SAMPLE_VIDEO), "question": REASON, "max_new_tokens": 0}), 400, "max_new_tokens"
    )
    ok = process(SAMPLE_VIDEO)
    assert ok.status_code == 200 and ok.json()["response"]


def test_http_generate_stream_with_base64_video(triton_server, reference):
    """Triton's own SSE endpoint works for JSON-only clients: the video travels base64-encoded."""
    import base64

    video = SAMPLE_VIDEO.read_bytes()
    body = {"VIDEO_BASE64": base64.b64encode(video).decode(), "PROMPT": REASON, "MAX_NEW_TOKENS": MAX_TOKENS, "TEMPERATURE": 0.0}
    events = []
    with httpx.stream(
        "POST", f"http://{triton_server.http_url}/v2/models/{EMOTION_PIPELINE_MODEL}/generate_stream", json=body, timeout=120
    ) as response:
        assert response.status_code == 200
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
    deltas = [e[TEXT_DELTA] for e in events if TEXT_DELTA in e]
    final = [e for e in events if TEXT in e]
    assert len(final) == 1 and len(deltas) >= 1
    expected = reference(video, REASON, greedy())
    assert "".join(deltas) == final[0][TEXT] == expected.text


def test_pipeline_refuses_two_videos_or_bad_base64(triton_server):
    for body, words in (
        ({"VIDEO_BASE64": "%%% not base64 %%%", "PROMPT": REASON}, "not valid base64"),
        ({"PROMPT": REASON}, "exactly one of"),
    ):
        with httpx.stream(
            "POST", f"http://{triton_server.http_url}/v2/models/{EMOTION_PIPELINE_MODEL}/generate_stream", json=body, timeout=60
        ) as response:
            text = response.read().decode()
        assert words in text

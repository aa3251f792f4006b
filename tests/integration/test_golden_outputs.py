"""Recorded outputs: the same requests, answered byte-for-byte the same across refactorings.

``tests/data/golden_outputs.json`` holds a SHA-256 per request of everything the response carries except what
changes by nature from call to call (timings, generated ids, timestamps). It was recorded before the project's
layout was reorganised; any change to what the REST API or Triton answers for these requests fails here.
Re-record only for an intended change of outputs: ``EMOSERVE_RECORD_GOLDEN=1 pytest tests/integration/test_golden_outputs.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests.conftest import EXAMPLES, FrontendProcess, speech_like

GOLDEN = Path(__file__).resolve().parent.parent / "data" / "golden_outputs.json"
RECORD = os.environ.get("EMOSERVE_RECORD_GOLDEN") == "1"
# values that differ on every call by design
VOLATILE_KEYS = {"inference_time", "duration", "session_id", "task_id", "created_at", "updated_at", "started_at",
                 "completed_at", "timings", "elapsed_s", "request_id"}
SPEECH = EXAMPLES / "speech.wav"
VIDEO = EXAMPLES / "sample_emotion.mp4"
EMOTION_PROMPT = "[emotion] What is the emotion expressed in this video?"
REASON_PROMPT = "The person in video says: I can't believe it! We actually won the prize! [reason] Why?"


def _volatile(key: str) -> bool:
    return key in VOLATILE_KEYS or key == "seconds" or (key.endswith("_seconds") and key != "video_seconds")


def _strip(value):
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in sorted(value.items()) if not _volatile(k)}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _digest(value) -> str:
    if isinstance(value, (bytes, bytearray)):
        return hashlib.sha256(value).hexdigest()
    if isinstance(value, np.ndarray):
        return hashlib.sha256(f"{value.dtype}{value.shape}".encode() + np.ascontiguousarray(value).tobytes()).hexdigest()
    return hashlib.sha256(json.dumps(_strip(value), sort_keys=True).encode()).hexdigest()


class Recorder:
    def __init__(self):
        self.expected = {} if RECORD else json.loads(GOLDEN.read_text())
        self.seen: dict[str, str] = {}

    def check(self, name: str, value) -> None:
        self.seen[name] = _digest(value)
        if os.environ.get("EMOSERVE_GOLDEN_DUMP"):
            with open(os.environ["EMOSERVE_GOLDEN_DUMP"], "a") as dump:
                dump.write(f"{name} {_strip(value) if not isinstance(value, (bytes, np.ndarray)) else self.seen[name]}\n")
        if not RECORD:
            assert self.seen[name] == self.expected[name], f"{name}: the answer differs from the recorded one"


@pytest.fixture(scope="module")
def golden():
    recorder = Recorder()
    yield recorder
    if RECORD:
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps(dict(sorted(recorder.seen.items())), indent=1) + "\n")


def _grpc_tensor(name, array, datatype):
    tensor = grpcclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def _stream_outputs(grpc_url: str, model: str, tensors, outputs: tuple[str, ...]) -> list[dict]:
    """Every response of a decoupled model, as {output name: array}."""
    responses: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(grpc_url)
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    try:
        client.async_stream_infer(model, tensors, enable_empty_final_response=True)
        collected = []
        while True:
            result, error = responses.get(timeout=300)
            assert error is None, error
            arrays = {name: result.as_numpy(name) for name in outputs if result.as_numpy(name) is not None}
            if arrays:
                collected.append(arrays)
            final = result.get_response().parameters.get("triton_final_response")
            if final is not None and final.bool_param:
                return collected
    finally:
        client.stop_stream()
        client.close()


def _without_timings(metadata: np.ndarray) -> dict:
    return json.loads(metadata.reshape(-1)[0])


def _without_blinks(body: dict) -> dict:
    """A REST session's blinks are seeded per session at random by design: everything else must match."""
    from emoserve.constants import ARKIT_BLENDSHAPE_NAMES

    blinks = {ARKIT_BLENDSHAPE_NAMES.index("eyeBlinkLeft"), ARKIT_BLENDSHAPE_NAMES.index("eyeBlinkRight")}
    frames = [dict(frame, weights=[w for i, w in enumerate(frame["weights"]) if i not in blinks]) for frame in body["frames"]]
    return dict(body, frames=frames)


def test_lam_a2e_rest_outputs(api, golden):
    for name, fields in (("infer_default", {}), ("infer_options", {"id_idx": "7", "movement_smooth": "false", "brow_movement": "true"})):
        response = api.post("/api/infer", files={"audio_file": ("speech.wav", SPEECH.read_bytes())}, data=fields)
        assert response.status_code == 200, response.text
        golden.check(f"rest/lam_a2e/{name}", response.json())
    init = api.post("/api/infer_stream_init", json={"id_idx": 3, "brow_movement": True})
    assert init.status_code == 200
    golden.check("rest/lam_a2e/stream_init", init.json())
    session_id = init.json()["session_id"]
    audio = speech_like(2.5, seed=11)
    from emoserve.audio import encode_wav

    for index, start in enumerate(range(0, audio.size, 16000)):
        chunk = encode_wav(audio[start:start + 16000], 16000)
        response = api.post("/api/infer_stream_chunk", data={"session_id": session_id}, files={"audio_chunk": ("c.wav", chunk)})
        assert response.status_code == 200, response.text
        golden.check(f"rest/lam_a2e/stream_chunk_{index}", _without_blinks(response.json()))
    golden.check("rest/lam_a2e/stream_close", api.delete(f"/api/infer_stream_close/{session_id}").json())
    for name, response in (("bad_audio", api.post("/api/infer", files={"audio_file": ("x.wav", b"not audio")})),
                           ("unknown_session", api.delete("/api/infer_stream_close/nope"))):
        golden.check(f"rest/lam_a2e/{name}", [response.status_code, response.json()])


def test_lam_a2e_triton_outputs(triton_server, golden):
    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    try:
        audio = speech_like(1.7, seed=5)
        offline = client.infer("lam_a2e_offline", [_grpc_tensor("AUDIO", audio, "FP32")])
        golden.check("triton/lam_a2e_offline", offline.as_numpy("BLENDSHAPES"))
        network = client.infer("lam_a2e", [_grpc_tensor("input_values", audio[None, :20000], "FP32"),
                                           _grpc_tensor("id_idx", np.array([[4]], np.int64), "INT64")])
        golden.check("triton/lam_a2e", network.as_numpy("blendshapes"))
        for index, start in enumerate(range(0, audio.size, 8000)):
            chunk = audio[None, start:start + 8000]
            out = client.infer("lam_a2e_stream", [_grpc_tensor("AUDIO", chunk, "FP32")], sequence_id=987654321,
                               sequence_start=index == 0, sequence_end=start + 8000 >= audio.size)
            golden.check(f"triton/lam_a2e_stream_{index}", out.as_numpy("BLENDSHAPES"))
    finally:
        client.close()


def test_emotion_llama_rest_outputs(api, golden):
    video_path = str(VIDEO)
    for name, body in (
        ("process_video_emotion", {"video_path": video_path, "question": EMOTION_PROMPT, "max_new_tokens": 10, "temperature": 0.0}),
        ("process_video_reason_seeded", {"video_path": video_path, "question": REASON_PROMPT, "max_new_tokens": 10, "seed": 7}),
    ):
        response = api.post("/process_video", json=body)
        assert response.status_code == 200, response.text
        golden.check(f"rest/emotion_llama/{name}", response.json())
    predict = api.post("/api/predict/", json={"data": [video_path, EMOTION_PROMPT]})
    assert predict.status_code == 200, predict.text
    # the demo's sampling makes the text differ per call, and with it the label's probabilities and (an [emotion]
    # answer ends at its first full stop) its length; the greedy tests in test_emotion_llama pin the length rule
    answer_dependent = ("confidence", "label_probs", "generated_tokens", "finish_reason", "decode_steps", "mean_step_batch_size")
    metadata = {k: v for k, v in predict.json()["metadata"].items() if k not in answer_dependent}
    golden.check("rest/emotion_llama/predict", [len(predict.json()["data"]), metadata])
    missing = api.post("/process_video", json={"video_path": str(EXAMPLES / "missing.mp4"), "question": "x"})
    # the answer names the path it was given: recorded with the checkout's own folder written as <project>
    body = json.loads(missing.text.replace(str(EXAMPLES.parent), "<project>"))
    golden.check("rest/emotion_llama/missing_video", [missing.status_code, body])


def test_emotion_llama_triton_outputs(triton_server, golden):
    tensors = [
        _grpc_tensor("VIDEO", np.array([VIDEO.read_bytes()], dtype=np.object_), "BYTES"),
        _grpc_tensor("PROMPT", np.array([REASON_PROMPT.encode()], dtype=np.object_), "BYTES"),
        _grpc_tensor("TEMPERATURE", np.array([0.0], np.float32), "FP32"),
        _grpc_tensor("MAX_NEW_TOKENS", np.array([9], np.int32), "INT32"),
    ]
    responses = _stream_outputs(triton_server.grpc_url, "emotion_llama", tensors, ("TEXT_DELTA", "TEXT", "TOKEN_IDS", "RESULT_METADATA"))
    golden.check("triton/emotion_llama/deltas", [r["TEXT_DELTA"].reshape(-1)[0].decode() for r in responses if "TEXT_DELTA" in r])
    final = responses[-1]
    golden.check("triton/emotion_llama/text", final["TEXT"].reshape(-1)[0])
    golden.check("triton/emotion_llama/token_ids", final["TOKEN_IDS"])
    golden.check("triton/emotion_llama/metadata", _without_timings(final["RESULT_METADATA"]))


def test_hallo2_outputs(triton_server, tmp_path, golden):
    from emoserve.audio import encode_wav
    from tests.integration.test_hallo2 import portrait_png

    image, audio = portrait_png(), encode_wav(speech_like(1.0, seed=3), 16000)
    tensors = [
        _grpc_tensor("IMAGE", np.array([image], dtype=np.object_), "BYTES"),
        _grpc_tensor("AUDIO_BYTES", np.array([audio], dtype=np.object_), "BYTES"),
        _grpc_tensor("INFERENCE_STEPS", np.array([2], np.int32), "INT32"),
    ]
    responses = _stream_outputs(triton_server.grpc_url, "hallo2", tensors, ("PROGRESS", "STATUS_MESSAGE", "VIDEO_MP4", "RESULT_METADATA"))
    golden.check("triton/hallo2/progress", [float(r["PROGRESS"].reshape(-1)[0]) for r in responses])
    triton_video = bytes(responses[-1]["VIDEO_MP4"].reshape(-1)[0])
    golden.check("triton/hallo2/video", triton_video)
    golden.check("triton/hallo2/metadata", _without_timings(responses[-1]["RESULT_METADATA"]))

    env = {"EMOSERVE_HALLO2__DATABASE_URL": f"sqlite:///{tmp_path / 'tasks.db'}", "EMOSERVE_HALLO2__DATA_DIR": str(tmp_path / "tasks")}
    frontend = FrontendProcess(triton_server.grpc_url, env).start()
    try:
        _hallo2_rest(frontend, image, audio, triton_video, golden)
    finally:
        frontend.stop()


def _hallo2_rest(frontend, image: bytes, audio: bytes, triton_video: bytes, golden) -> None:
    with httpx.Client(base_url=frontend.base_url, timeout=120) as api:
        config = api.post("/api/v1/inference/hallo2/config", json={"inference_steps": 2})
        golden.check("rest/hallo2/config", [config.status_code, config.json()])
        created = api.post("/api/v1/inference/hallo2", files={"image_file": ("p.png", image), "audio_file": ("a.wav", audio)},
                           data={"use_cache": "true"})
        assert created.status_code == 200, created.text
        task_id = created.json()["task_id"]
        golden.check("rest/hallo2/created", created.json())
        deadline = time.monotonic() + 300
        while (status := api.get(f"/api/v1/tasks/{task_id}").json())["status"] not in ("completed", "failed"):
            assert time.monotonic() < deadline
            time.sleep(0.5)
        golden.check("rest/hallo2/status", {k: v for k, v in status.items() if k not in ("result",)})
        video = api.get(f"/api/v1/tasks/{task_id}/video")
        assert video.content == triton_video, "the task's MP4 differs from Triton's answer to the same request"
        golden.check("rest/hallo2/video", [video.status_code, video.headers["content-type"], hashlib.sha256(video.content).hexdigest()])
        golden.check("rest/hallo2/unknown_task", api.get("/api/v1/tasks/nope").json())

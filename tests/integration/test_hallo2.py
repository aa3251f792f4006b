"""Hallo2 end to end (tiny profile): Triton pipeline vs the in-process pipeline, and the task API of
``emo-hallo-api.zh.md`` on a real front end with its SQLite task database."""

from __future__ import annotations

import io
import json
import queue
import time
from pathlib import Path

import av
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from emoserve.audio import encode_wav
from emoserve.hallo2.pipeline import GenerationSettings, Hallo2Pipeline
from emoserve.hallo2.profile import HALLO2_PROFILES
from emoserve.hallo2.served_networks import ServedHallo2Networks, onnx_caller
from emoserve.hallo2.video import decode_image, mux_mp4
from emoserve.media import decode_video
from emoserve.model_catalog import (
    AUDIO_BYTES,
    HALLO2_IMAGE,
    HALLO2_PIPELINE_MODEL,
    INFERENCE_STEPS,
    PROGRESS,
    RESULT_METADATA,
    VIDEO_MP4,
)
from sdk import Hallo2Client
from stack.processes import FrontendProcess
from tests.conftest import EXAMPLES, speech_like

STEPS = 2


def portrait_png() -> bytes:
    """The sample video's first frame (a drawn face) as PNG bytes."""
    frame = decode_video((EXAMPLES / "sample_emotion.mp4").read_bytes()).first_frame
    codec = av.CodecContext.create("png", "w")
    codec.width, codec.height, codec.pix_fmt = frame.shape[1], frame.shape[0], "rgb24"
    packets = codec.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")) + codec.encode(None)
    return b"".join(bytes(packet) for packet in packets)


@pytest.fixture(scope="module")
def inputs() -> tuple[bytes, bytes]:
    return portrait_png(), encode_wav(speech_like(1.0, seed=2))


def video_facts(mp4: bytes) -> tuple[np.ndarray, list[str]]:
    with av.open(io.BytesIO(mp4)) as container:
        kinds = [stream.type for stream in container.streams]
        frames = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])
    return frames, kinds


def stream_hallo2(grpc_url: str, image: bytes, audio: bytes, steps: int = STEPS):
    responses: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(grpc_url)
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    try:
        tensors = []
        for name, array, datatype in (
            (HALLO2_IMAGE, np.array([image], dtype=np.object_), "BYTES"),
            (AUDIO_BYTES, np.array([audio], dtype=np.object_), "BYTES"),
            (INFERENCE_STEPS, np.array([steps], np.int32), "INT32"),
        ):
            tensor = grpcclient.InferInput(name, list(array.shape), datatype)
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        client.async_stream_infer(HALLO2_PIPELINE_MODEL, tensors)
        progress = []
        while True:
            result, error = responses.get(timeout=300)
            if error is not None:
                raise error
            progress.append(float(result.as_numpy(PROGRESS).reshape(-1)[0]))
            video = result.as_numpy(VIDEO_MP4)
            if video is not None:
                return progress, bytes(video.reshape(-1)[0]), json.loads(result.as_numpy(RESULT_METADATA).reshape(-1)[0])
    finally:
        client.stop_stream()
        client.close()


def test_triton_pipeline_equals_in_process_pipeline(triton_server, tiny_repository, inputs):
    image, audio = inputs
    progress, mp4, metadata = stream_hallo2(triton_server.grpc_url, image, audio)
    assert progress == sorted(progress) and progress[-1] == 100.0 and len(progress) > STEPS
    frames, kinds = video_facts(mp4)
    assert frames.shape == (25, 64, 64, 3) and kinds == ["video", "audio"]  # 1 s at 25 fps, with the input audio
    assert metadata["frames"] == 25 and metadata["steps"] == STEPS and "seeded-random" in metadata["weights"]

    from export.hallo2 import ReferenceUNetSpec

    networks = ServedHallo2Networks(onnx_caller(tiny_repository), len(ReferenceUNetSpec(profile="tiny").get_output_names()))
    pipeline = Hallo2Pipeline(networks, HALLO2_PROFILES["tiny"])
    from emoserve.audio import decode_audio

    pcm = decode_audio(audio)
    expected = pipeline.run(decode_image(image), pcm, GenerationSettings(steps=STEPS))
    assert expected.frames.shape == frames.shape
    # the same frames through the same H.264 encoder: what Triton returned, to the last grey level or two
    expected_frames, _ = video_facts(mux_mp4(expected.frames, expected.fps, pcm))
    assert np.abs(frames.astype(int) - expected_frames.astype(int)).max() <= 2


# ---- the task API -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hallo2_api(triton_server, tmp_path_factory):
    data = tmp_path_factory.mktemp("hallo2")
    env = {
        "EMOSERVE_HALLO2__DATABASE_URL": f"sqlite:///{data / 'tasks.db'}",
        "EMOSERVE_HALLO2__DATA_DIR": str(data / "tasks"),
        "EMOSERVE_HALLO2__INFERENCE_STEPS": str(STEPS),
        "EMOSERVE_HALLO2__MAX_CONCURRENT_TASKS": "1",
        "EMOSERVE_HALLO2__POLL_INTERVAL_S": "0.2",
    }
    frontend = FrontendProcess(triton_server.grpc_url, env).start()
    with httpx.Client(base_url=frontend.base_url, timeout=120) as client:
        yield client, frontend, env
    frontend.stop()


def submit(client: httpx.Client, image: bytes, audio: bytes, use_cache: bool = True) -> str:
    response = client.post("/api/v1/inference/hallo2", files={"image_file": ("face.png", image), "audio_file": ("speech.wav", audio)},
                           data={"use_cache": str(use_cache).lower()})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "queued" and body["message"] == "Inference task queued successfully"
    return body["task_id"]


def wait_for(client: httpx.Client, task_id: str, statuses: set[str], timeout_s: float = 240) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = client.get(f"/api/v1/tasks/{task_id}").json()
        if status["status"] in statuses:
            return status
        time.sleep(0.2)
    raise AssertionError(f"task {task_id} still {status['status']} after {timeout_s}s")


def test_documented_workflow_create_poll_download(hallo2_api, inputs):
    client, _, _ = hallo2_api
    health = client.get("/api/v1/health").json()
    assert health["status"] == "healthy" and "hallo2" in health["models_loaded"] and health["uptime"] > 0
    assert client.get("/health").json()["status"] == "healthy"

    task_id = submit(client, *inputs)
    status = wait_for(client, task_id, {"completed", "failed"})
    assert status["status"] == "completed", status
    assert status["progress"] == 100 and status["error"] is None and status["created_at"] and status["updated_at"]
    video = client.get(f"/api/v1/tasks/{task_id}/video")
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    frames, kinds = video_facts(video.content)
    assert frames.shape[0] == 25 and kinds == ["video", "audio"]
    logs = client.post(f"/api/v1/tasks/{task_id}/logs").json()
    assert logs["task_id"] == task_id and "step" in logs["logs"]
    listing = client.get("/api/v1/tasks").json()
    assert task_id in listing["tasks"] and listing["count"] == len(listing["tasks"])


def test_cancel_running_and_queued_tasks(hallo2_api, inputs):
    client, _, _ = hallo2_api
    image, _ = inputs
    long_audio = encode_wav(speech_like(4.0, seed=5))
    client.post("/api/v1/inference/hallo2/config", json={"inference_steps": 30})
    try:
        running = submit(client, image, long_audio)
        queued = submit(client, image, long_audio)
        wait_for(client, running, {"processing"})
        assert client.get(f"/api/v1/tasks/{queued}").json()["status"] == "queued"  # max_concurrent_tasks = 1
        cancelled = client.delete(f"/api/v1/tasks/{queued}")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        stop = client.delete(f"/api/v1/tasks/{running}")
        assert stop.status_code == 200 and stop.json()["status"] == "cancelled"
        assert wait_for(client, running, {"cancelled", "completed", "failed"}, timeout_s=60)["status"] == "cancelled"
        again = client.delete(f"/api/v1/tasks/{running}")
        assert again.status_code == 400 and again.json()["status"] == "error" and again.json()["error_code"]
        assert client.get(f"/api/v1/tasks/{running}/video").status_code in (400, 404)
    finally:
        client.post("/api/v1/inference/hallo2/config", json={"inference_steps": STEPS})
    # the pipeline stopped: the next task runs at once
    follow_up = submit(client, *inputs)
    assert wait_for(client, follow_up, {"completed", "failed"}, timeout_s=120)["status"] == "completed"


def test_a_task_followed_by_its_event_stream_ends_as_its_status_says(hallo2_api, inputs, tmp_path):
    client, frontend, _ = hallo2_api
    task_id = submit(client, *inputs)
    sdk = Hallo2Client(frontend.base_url, client=client)
    states = list(sdk.follow(task_id))  # ends by itself: no polling, no deadline of the test's own
    assert states[-1] == client.get(f"/api/v1/tasks/{task_id}").json()
    assert states[-1]["status"] == "completed" and [s["status"] for s in states[:-1]] != []
    assert {s["status"] for s in states[:-1]} <= {"queued", "processing"}
    progress = [s["progress"] for s in states]
    assert progress == sorted(progress) and len(set(progress)) > 2  # the steps in between, in order
    assert any("step" in (s["status_message"] or "") for s in states)

    # a finished task's stream: its status once; an unknown task: the status route's 404, before any stream
    with client.stream("GET", f"/api/v1/tasks/{task_id}/events") as again:
        assert again.status_code == 200 and again.headers["content-type"].startswith("text/event-stream")
        body = again.read().decode()
    assert body.count("event: status") == 1 and '"status":"completed"' in body
    unknown = client.get("/api/v1/tasks/00000000-0000-0000-0000-000000000000/events")
    assert unknown.status_code == 404 and unknown.json()["error_code"] == "TASK_NOT_FOUND"

    # the documented client's wait, now on the stream: the video arrives as the status route serves it
    second = submit(client, *inputs)
    path = sdk.wait_and_download(second, tmp_path / "second.mp4", poll_s=3600, progress=False)  # polling would wait an hour
    assert path.read_bytes() == client.get(f"/api/v1/tasks/{second}/video").content


def test_bad_files_and_unknown_tasks(hallo2_api, inputs):
    client, _, _ = hallo2_api
    image, audio = inputs
    for files, code in (
        ({"image_file": ("face.png", b"not an image at all"), "audio_file": ("a.wav", audio)}, "INVALID_IMAGE"),
        ({"image_file": ("face.png", image), "audio_file": ("a.wav", b"definitely not audio" * 10)}, "INVALID_AUDIO"),
        ({"image_file": ("face.png", b""), "audio_file": ("a.wav", audio)}, "INVALID_IMAGE"),
    ):
        response = client.post("/api/v1/inference/hallo2", files=files)
        assert response.status_code == 400 and response.json()["error_code"] == code, response.text
    unknown = "00000000-0000-0000-0000-000000000000"
    for method, path in (("GET", f"/api/v1/tasks/{unknown}"), ("GET", f"/api/v1/tasks/{unknown}/video"),
                         ("POST", f"/api/v1/tasks/{unknown}/logs"), ("DELETE", f"/api/v1/tasks/{unknown}")):
        response = client.request(method, path)
        assert response.status_code == 404 and response.json()["error_code"], (method, path, response.text)
    bad_config = client.post("/api/v1/inference/hallo2/config", json={"guidance_scale": 0.1})
    assert bad_config.status_code == 400 and bad_config.json()["error_code"] == "INVALID_CONFIG"


def test_front_end_restart_mid_queue_loses_nothing(triton_server, tmp_path, inputs):
    env = {
        "EMOSERVE_HALLO2__DATABASE_URL": f"sqlite:///{tmp_path / 'tasks.db'}",
        "EMOSERVE_HALLO2__DATA_DIR": str(tmp_path / "tasks"),
        "EMOSERVE_HALLO2__INFERENCE_STEPS": str(STEPS),
        "EMOSERVE_HALLO2__MAX_CONCURRENT_TASKS": "1",
    }
    first = FrontendProcess(triton_server.grpc_url, env).start()
    with httpx.Client(base_url=first.base_url, timeout=60) as client:
        task_ids = [submit(client, *inputs) for _ in range(3)]
    first.stop()  # two or three tasks still queued or running
    second = FrontendProcess(triton_server.grpc_url, env).start()
    try:
        with httpx.Client(base_url=second.base_url, timeout=60) as client:
            for task_id in task_ids:
                assert wait_for(client, task_id, {"completed", "failed"})["status"] == "completed"
                assert client.get(f"/api/v1/tasks/{task_id}/video").status_code == 200
        assert not list(Path(env["EMOSERVE_HALLO2__DATA_DIR"]).rglob("*.tmp*"))  # nothing half-written
    finally:
        second.stop()

"""The Hallo2 REST routes (``emo-hallo-api.zh.md``) on the app of ``create_app``, with an INJECTED Hallo2 engine
whose runner encodes a tiny real MP4 (``emoserve.media.encode_video``); SQLite and the data folder in tmp."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from fractions import Fraction

import av
import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from emoserve.audio import encode_wav
from emoserve.media import encode_video, probe_video
from frontend.config import Settings
from frontend.hallo2.engine import Hallo2Engine
from frontend.hallo2.schemas import GpuDevice, GpuInfo
from frontend.hallo2.tasks import TaskStoreUnavailable
from frontend.hallo2.worker import Hallo2Video
from frontend.main import create_app
from sdk import Hallo2Client, Hallo2Error

pytestmark = pytest.mark.timeout(60)

FRAMES = 6


def encoded_image(codec: str, pix_fmt: str, size: int = 32) -> bytes:
    context = av.CodecContext.create(codec, "w")
    context.width = context.height = size
    context.pix_fmt, context.time_base = pix_fmt, Fraction(1, 25)
    rgb = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=pix_fmt)
    return b"".join(bytes(packet) for packet in context.encode(frame) + context.encode(None))


PNG = encoded_image("png", "rgb24")
JPEG = encoded_image("mjpeg", "yuvj420p")
WAV = encode_wav((0.1 * np.sin(np.linspace(0, 400 * np.pi, 16000))).astype(np.float32))  # 1 s


class Gate(Hallo2Engine):
    """A Hallo2 engine whose runner waits until the test opens it (it runs in the TestClient's event loop thread)."""

    def __init__(self):
        self.open = threading.Event()
        self.open.set()
        self.inputs = []

    async def run(self, inputs, progress, cancel: asyncio.Event) -> Hallo2Video:
        self.inputs.append(inputs)
        await progress(10, "Preprocessing image...")
        while not self.open.is_set():
            if cancel.is_set():
                raise asyncio.CancelledError
            await asyncio.sleep(0.02)
        await progress(60, "Running inference...")
        if inputs.guidance_scale == 13.0:
            raise RuntimeError("the model exploded")
        frames = np.full((FRAMES, 32, 32, 3), 100, np.uint8)
        video = await asyncio.to_thread(encode_video, frames, 25)
        return Hallo2Video(video, {"frames": FRAMES, "fps": 25, "width": 32, "height": 32, "steps": inputs.inference_steps})

    async def models_loaded(self) -> list[str]:
        return ["hallo2"]

    async def gpu_info(self) -> GpuInfo:
        return GpuInfo(available=True, count=1, devices=[GpuDevice(index=0, name="Test GPU", memory_total="24 GB")])


@pytest.fixture()
def gate():
    return Gate()


@pytest.fixture()
def settings(tmp_path):
    return Settings(hallo2={"database_url": f"sqlite:///{tmp_path}/hallo2.db", "data_dir": tmp_path / "data", "poll_interval_s": 0.05,
                            "heartbeat_interval_s": 0.2, "max_upload_bytes": 64 * 1024, "cancel_grace_s": 0.5})


@pytest.fixture()
def client(settings, gate):
    with TestClient(create_app(settings, hallo2_engine=gate)) as test_client:
        yield test_client


def submit(client, image=PNG, audio=WAV, **data):
    files = {"image_file": ("person.png", image), "audio_file": ("speech.wav", audio)}
    return client.post("/api/v1/inference/hallo2", files=files, data=data)


def wait_status(client, task_id, wanted, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/api/v1/tasks/{task_id}").json()
        if body["status"] in wanted:
            return body
        time.sleep(0.05)
    raise AssertionError(f"task {task_id} stayed {body['status']}")


def test_documented_workflow_create_poll_download(client):
    created = submit(client, use_cache="true")
    assert created.status_code == 200
    body = created.json()
    assert body["status"] == "queued" and body["message"] == "Inference task queued successfully"
    task_id = body["task_id"]
    assert str(uuid.UUID(task_id)) == task_id

    status = wait_status(client, task_id, {"completed", "failed"})
    assert list(status) == ["task_id", "status", "progress", "status_message", "result", "error", "created_at", "updated_at"]
    assert status["status"] == "completed" and status["progress"] == 100 and status["error"] is None
    assert status["created_at"].endswith("Z") and status["updated_at"] >= status["created_at"]
    result = status["result"]
    assert result["frames"] == FRAMES and result["fps"] == 25 and result["video_url"] == f"/api/v1/tasks/{task_id}/video"
    assert list(result) == ["frames", "fps", "duration", "width", "height", "processing_time", "video_path", "video_url", "size_bytes"]
    assert (result["duration"], result["width"], result["height"]) == (FRAMES / 25, 32, 32)
    assert result["video_path"] == f"{task_id}/output.mp4"  # inside the task storage: no server folder in answers

    video = client.get(f"/api/v1/tasks/{task_id}/video")
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    assert len(video.content) == result["size_bytes"]
    probe_video(video.content)  # a real, decodable MP4

    logs = client.post(f"/api/v1/tasks/{task_id}/logs").json()
    assert logs["task_id"] == task_id
    for line in ("Task queued", "PNG image, wav audio of 1.00 s", "Preprocessing image...", "Running inference...", "Task completed"):
        assert line in logs["logs"]

    listing = client.get("/api/v1/tasks").json()
    assert listing["count"] == 1 and listing["tasks"][task_id]["status"] == "completed"
    health = client.get("/api/v1/health").json()
    assert health["status"] == "healthy" and health["models_loaded"] == ["hallo2"] and health["uptime"] >= 0
    assert health["tasks"] == {"queued": 0, "running": 0, "completed": 1, "failed": 0, "cancelled": 0}
    assert health["gpu"]["devices"][0]["name"] == "Test GPU"
    assert client.get("/health").json() == {"status": "healthy", "gpu_available": True, "gpu_count": 1, "gpu_name": "Test GPU"}


def test_jpeg_and_use_cache_false(client, gate):
    task_id = submit(client, image=JPEG, use_cache="false").json()["task_id"]
    wait_status(client, task_id, {"completed"})
    assert gate.inputs[0].image == JPEG and gate.inputs[0].audio == WAV and gate.inputs[0].use_cache is False


@pytest.mark.parametrize("image, audio, code, words", [
    (b"this is plain text, not a picture", WAV, "INVALID_IMAGE", "only JPG and PNG"),
    (b"\x89PNG\r\n\x1a\n" + b"garbage" * 20, WAV, "INVALID_IMAGE", "cannot be decoded"),
    (b"", WAV, "INVALID_IMAGE", "empty"),
    (PNG, b"this is plain text, not a sound", "INVALID_AUDIO", "Invalid audio file format"),
    (PNG, b"", "INVALID_AUDIO", "empty"),
])
def test_bad_files_are_refused_by_content(client, image, audio, code, words):
    response = submit(client, image=image, audio=audio)
    assert response.status_code == 400
    body = response.json()
    assert body["error_code"] == code and words in body["detail"]
    assert client.get("/api/v1/tasks").json()["count"] == 0


def test_missing_file_is_a_400_with_a_code(client):
    response = client.post("/api/v1/inference/hallo2", files={"image_file": ("person.png", PNG)})
    assert response.status_code == 400 and response.json()["error_code"] == "INVALID_REQUEST"


def test_oversized_uploads_get_413(client):
    big_audio = WAV + b"\x00" * (48 * 1024)  # over the 64 KiB test limit, under it + multipart overhead: read and refused
    response = submit(client, audio=big_audio)
    assert response.status_code == 413 and response.json()["error_code"] == "FILE_TOO_LARGE"
    huge = b"\x00" * (200 * 1024)  # declared Content-Length alone decides
    response = submit(client, audio=huge)
    assert response.status_code == 413 and response.json()["error_code"] == "FILE_TOO_LARGE"
    declared = response.request.headers["content-length"]
    assert response.json() == {"detail": f"the request body ({declared} bytes declared) exceeds the {64 * 1024} byte limit",
                               "error_code": "FILE_TOO_LARGE"}


def test_unknown_tasks_are_404(client):
    for task_id in (str(uuid.uuid4()), "not-a-uuid", "x%27%20OR%201=1"):
        for method, path in (("GET", ""), ("GET", "/video"), ("POST", "/logs")):
            response = client.request(method, f"/api/v1/tasks/{task_id}{path}")
            assert response.status_code == 404, (method, path)
            assert response.json()["error_code"] == "TASK_NOT_FOUND"
    response = client.delete(f"/api/v1/tasks/{uuid.uuid4()}")
    assert response.status_code == 404
    assert response.json()["status"] == "error" and response.json()["error_code"] == "TASK_NOT_FOUND"


def test_video_before_completion_is_400_and_cancel_while_running(client, gate):
    gate.open.clear()
    running = submit(client).json()["task_id"]
    queued = submit(client).json()["task_id"]  # max_concurrent_tasks = 1: this one waits
    wait_status(client, running, {"processing"})
    for task_id in (running, queued):
        response = client.get(f"/api/v1/tasks/{task_id}/video")
        assert response.status_code == 400 and response.json()["error_code"] == "TASK_NOT_FINISHED"
    assert client.get(f"/api/v1/tasks/{queued}").json()["status"] == "queued"
    assert client.get("/api/v1/health").json()["tasks"]["running"] == 1

    for task_id in (queued, running):  # queued -> cancelled as documented; running -> cancelled too
        response = client.delete(f"/api/v1/tasks/{task_id}")
        assert response.status_code == 200
        assert response.json() == {"status": "cancelled", "task_id": task_id, "message": "Task cancelled successfully"}
    status = wait_status(client, running, {"cancelled"})
    assert status["status_message"] == "Task cancelled while processing"
    listing = client.get("/api/v1/tasks", params={"status": "cancelled"}).json()
    assert listing["count"] == 2

    again = client.delete(f"/api/v1/tasks/{running}")
    assert again.status_code == 400
    assert again.json() == {"status": "error", "detail": f"Task {running} is already cancelled and cannot be cancelled",
                            "error_code": "TASK_NOT_CANCELLABLE"}
    response = client.get(f"/api/v1/tasks/{running}/video")
    assert response.status_code == 400 and response.json()["error_code"] == "TASK_NOT_FINISHED"

    gate.open.set()  # the worker is free again
    later = submit(client).json()["task_id"]
    wait_status(client, later, {"completed"})
    assert client.delete(f"/api/v1/tasks/{later}").json()["error_code"] == "TASK_NOT_CANCELLABLE"


def test_config_applies_to_new_tasks(client, gate):
    assert client.get("/api/v1/inference/hallo2/config").json() == {"guidance_scale": 3.5, "inference_steps": 40, "enable_cache": True}
    response = client.post("/api/v1/inference/hallo2/config", json={"guidance_scale": 7.5, "inference_steps": 25, "enable_cache": False})
    assert response.status_code == 200
    assert response.json()["status"] == "success" and response.json()["message"] == "Configuration updated successfully"
    task_id = submit(client, use_cache="true").json()["task_id"]
    wait_status(client, task_id, {"completed"})
    used = gate.inputs[-1]
    assert (used.guidance_scale, used.inference_steps, used.use_cache) == (7.5, 25, False)  # enable_cache=false wins
    assert "caching is disabled by the configuration" in client.post(f"/api/v1/tasks/{task_id}/logs").json()["logs"]

    client.post("/api/v1/inference/hallo2/config", json={"inference_steps": 3})  # partial update
    assert client.get("/api/v1/inference/hallo2/config").json() == {"guidance_scale": 7.5, "inference_steps": 3, "enable_cache": False}


@pytest.mark.parametrize("body", [
    {"guidance_scale": 0.5}, {"guidance_scale": 25}, {"inference_steps": 0}, {"inference_steps": 101},
    {"inference_steps": 2.5}, {"guidance_scale": "loud"}, {"enable_cache": "maybe"}, {"temperature": 1.0}, {},
])
def test_invalid_config_is_refused(client, body):
    response = client.post("/api/v1/inference/hallo2/config", json=body)
    assert response.status_code == 400 and response.json()["error_code"] == "INVALID_CONFIG"
    assert client.get("/api/v1/inference/hallo2/config").json()["guidance_scale"] == 3.5


def test_list_filter_and_failed_task(client):
    client.post("/api/v1/inference/hallo2/config", json={"guidance_scale": 13.0})  # the test runner fails on 13.0
    task_id = submit(client).json()["task_id"]
    status = wait_status(client, task_id, {"failed"})
    assert status["error"] == "inference failed: the model exploded" and status["result"] is None
    assert client.get("/api/v1/tasks", params={"status": "failed"}).json()["count"] == 1
    assert client.get("/api/v1/tasks", params={"status": "completed"}).json()["count"] == 0
    response = client.get("/api/v1/tasks", params={"status": "sleeping"})
    # the schema's enum: FastAPI's validation, in this API's body, naming the statuses it takes
    assert response.status_code == 400 and response.json()["error_code"] == "INVALID_REQUEST" and "'queued'" in response.json()["detail"]
    assert client.get(f"/api/v1/tasks/{task_id}/video").json()["error_code"] == "TASK_NOT_FINISHED"


def test_tasks_survive_an_app_restart(settings, gate, tmp_path):
    """Queued tasks in the database are run by the next app on the same database and data folder."""
    gate.open.clear()
    with TestClient(create_app(settings, hallo2_engine=gate)) as first:
        ids = [submit(first).json()["task_id"] for _ in range(2)]
        wait_status(first, ids[0], {"processing"})
    # shut down: the running task was re-queued
    gate.open.set()
    with TestClient(create_app(settings, hallo2_engine=gate)) as second:
        for task_id in ids:
            wait_status(second, task_id, {"completed"})
        assert "the server shut down while processing it" in second.post(f"/api/v1/tasks/{ids[0]}/logs").json()["logs"]


def test_sdk_client_waits_and_downloads(client, tmp_path):
    image, audio = tmp_path / "person.jpg", tmp_path / "speech.wav"
    image.write_bytes(JPEG)
    audio.write_bytes(WAV)
    sdk = Hallo2Client("http://testserver", client=client)
    task_id = sdk.inference(image, audio, use_cache=True)
    output = sdk.wait_and_download(task_id, tmp_path / "out.mp4", poll_s=0.05, timeout_s=30)
    probe_video(output.read_bytes())
    assert sdk.status(task_id)["status"] == "completed"
    with pytest.raises(Hallo2Error) as error:
        sdk.cancel(task_id)
    assert error.value.status_code == 400 and error.value.error_code == "TASK_NOT_CANCELLABLE"
    with pytest.raises(Hallo2Error) as error:
        sdk.inference(tmp_path / "speech.wav", audio)  # audio as the image
    assert error.value.error_code == "INVALID_IMAGE"

    sdk.configure(guidance_scale=13.0)  # the test runner fails on 13.0
    failing = sdk.inference(image, audio)
    with pytest.raises(Hallo2Error) as error:
        sdk.wait_and_download(failing, tmp_path / "never.mp4", poll_s=0.05, timeout_s=30, progress=False)
    assert error.value.status == "failed" and not (tmp_path / "never.mp4").exists()


def test_the_sdk_wait_gives_up_at_its_timeout_on_a_quiet_event_stream(settings, gate, tmp_path):
    quiet = settings.model_copy(update={"hallo2": settings.hallo2.model_copy(update={"events_keepalive_s": 0.1})})
    gate.open.clear()  # the task stays at its first progress message
    try:
        with TestClient(create_app(quiet, hallo2_engine=gate)) as client:
            sdk = Hallo2Client("http://testserver", client=client)
            task_id = submit(client).json()["task_id"]
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                sdk.wait_and_download(task_id, tmp_path / "late.mp4", poll_s=3600, timeout_s=0.5, progress=False)
            assert time.monotonic() - started < 10  # the keep-alives let it look at the clock
            assert client.get(f"/api/v1/tasks/{task_id}").json()["status"] == "processing"  # waiting ended, not the task
    finally:
        gate.open.set()


def test_a_task_database_outage_ends_the_event_stream_with_an_error_event(settings, gate, monkeypatch):
    quick = settings.model_copy(update={"hallo2": settings.hallo2.model_copy(update={"events_recheck_s": 0.05})})
    gate.open.clear()  # the task stays running: the stream waits for changes
    try:
        with TestClient(create_app(quick, hallo2_engine=gate)) as client:
            task_id = submit(client).json()["task_id"]
            store = client.app.state.hallo2.store
            with client.stream("GET", f"/api/v1/tasks/{task_id}/events") as events:
                lines = events.iter_lines()
                assert next(lines).startswith("event: status")

                async def unavailable(task_id):
                    raise TaskStoreUnavailable("the task database does not answer")

                monkeypatch.setattr(store, "get", unavailable)
                rest = list(lines)  # the stream ends by itself
            error = json.loads(next(line for line in rest if line.startswith("data: ") and "error_code" in line)[6:])
            assert "event: error" in rest and error["error_code"] == "TASK_STORE_UNAVAILABLE"
            assert "/" not in error["detail"] and store.watching() == 0  # no internals; no watcher left behind
    finally:
        gate.open.set()


def test_the_sdk_polls_a_server_without_the_event_stream(tmp_path):
    """A server of the document's own (no ``/events`` route: 404 without TASK_NOT_FOUND): the SDK waits by polling."""
    task_id, polls = str(uuid.uuid4()), []

    def older_server(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            return httpx.Response(404, json={"detail": "Not Found"})
        if request.url.path.endswith("/video"):
            return httpx.Response(200, content=b"mp4 bytes", headers={"content-type": "video/mp4"})
        polls.append(request.url.path)
        done = len(polls) >= 3
        return httpx.Response(200, json={"task_id": task_id, "status": "completed" if done else "processing",
                                         "progress": 100 if done else 50, "status_message": None})

    with httpx.Client(base_url="http://older", transport=httpx.MockTransport(older_server)) as http:
        sdk = Hallo2Client("http://older", client=http)
        output = sdk.wait_and_download(task_id, tmp_path / "out.mp4", poll_s=0.01, progress=False)
        assert output.read_bytes() == b"mp4 bytes" and polls == [f"/api/v1/tasks/{task_id}"] * 3

    def unknown_task(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"detail": f"Task {task_id} not found", "error_code": "TASK_NOT_FOUND"})

    with httpx.Client(base_url="http://new", transport=httpx.MockTransport(unknown_task)) as http:
        with pytest.raises(Hallo2Error) as unknown:  # a 404 naming the task is the answer, not a reason to poll
            Hallo2Client("http://new", client=http).wait_and_download(task_id, tmp_path / "never.mp4", poll_s=3600)
        assert unknown.value.error_code == "TASK_NOT_FOUND"


def test_each_route_has_its_own_body_limit_counted_as_bytes_arrive(client, settings):
    """Upload routes: their model's limit (+ multipart framing); every other route a JSON body's. Declared or chunked,
    a body over the limit is a 413 in the route's own format, and nothing past the limit is read."""
    from frontend.limits import JSON_BODY_LIMIT, MULTIPART_OVERHEAD_BYTES

    hallo2_limit = settings.hallo2.max_upload_bytes + MULTIPART_OVERHEAD_BYTES

    def chunked(size: int, piece: int = 16 * 1024):
        sent = 0
        while sent < size:
            block = min(piece, size - sent)
            sent += block
            yield b"\0" * block

    boundary = "----limit"
    for body in (b"\0" * (hallo2_limit + 1), chunked(hallo2_limit + 1)):  # with a Content-Length, then without one
        response = client.post("/api/v1/inference/hallo2", content=body,
                               headers={"content-type": f"multipart/form-data; boundary={boundary}"})
        assert response.status_code == 413, response.text
        assert response.json()["error_code"] == "FILE_TOO_LARGE"
        assert f"exceeds the {settings.hallo2.max_upload_bytes} byte limit" in response.json()["detail"]
    # a JSON route is held to a JSON body's limit, in its API's format, chunked too
    for body in (lambda: b" " * (JSON_BODY_LIMIT + 1), lambda: chunked(JSON_BODY_LIMIT + 1)):
        answer = client.post("/process_video", content=body(), headers={"content-type": "application/json"})
        assert answer.status_code == 413 and set(answer.json()) == {"error", "code", "details"}, answer.text
        answer = client.post("/api/v1/inference/hallo2/config", content=body(), headers={"content-type": "application/json"})
        assert answer.status_code == 413 and set(answer.json()) == {"detail", "error_code"}, answer.text
    assert client.get("/api/v1/tasks").json()["count"] == 0


def test_app_includes_every_slice(settings, gate):
    from frontend.emotion_llama import router as emotion_llama_router
    from frontend.hallo2 import router as hallo2_router
    from frontend.lam_a2e import router as lam_a2e_router

    paths = create_app(settings, hallo2_engine=gate).openapi()["paths"]
    for module in (lam_a2e_router, emotion_llama_router, hallo2_router):
        assert {"public", "protected"} <= set(vars(module))
    for path, method in (("/", "get"), ("/api/health", "get"), ("/api/infer", "post"), ("/process_video", "post"),
                         ("/api/predict/", "post"), ("/health", "get"), ("/api/v1/health", "get"), ("/api/v1/inference/hallo2", "post"),
                         ("/api/v1/tasks/{task_id}", "delete")):
        assert method in paths[path], path


def test_a_full_queue_is_503_with_retry_after_and_the_task_list_is_paged(tmp_path, gate):
    settings = Settings(hallo2={"database_url": f"sqlite:///{tmp_path}/hallo2.db", "data_dir": tmp_path / "data",
                                "poll_interval_s": 0.05, "max_queued_tasks": 2, "max_concurrent_tasks": 1})
    gate.open.clear()  # the first task holds the only slot; the next ones wait in the queue
    with TestClient(create_app(settings, hallo2_engine=gate)) as client:
        first = submit(client).json()["task_id"]
        wait_status(client, first, {"processing"})
        queued = [submit(client).json()["task_id"] for _ in range(2)]
        refused = submit(client)
        assert refused.status_code == 503 and int(refused.headers["retry-after"]) > 0
        assert refused.json()["error_code"] == "QUEUE_FULL" and "2 tasks waiting" in refused.json()["detail"]
        page = client.get("/api/v1/tasks", params={"limit": 2}).json()
        assert page["count"] == 2 and page["total"] == 3 and list(page["tasks"]) == [first, queued[0]]
        assert list(client.get("/api/v1/tasks", params={"limit": 2, "offset": 2}).json()["tasks"]) == [queued[1]]
        assert client.get("/api/v1/tasks", params={"status": "queued"}).json()["total"] == 2
        for bad in ({"limit": 0}, {"limit": 1001}, {"offset": -1}):
            answer = client.get("/api/v1/tasks", params=bad)
            assert answer.status_code == 400 and answer.json()["error_code"] == "INVALID_REQUEST"
        gate.open.set()
        for task_id in (first, *queued):
            wait_status(client, task_id, {"completed"})
        assert submit(client).status_code == 200  # room again


def test_routing_errors_answer_in_each_apis_format(client):
    wrong_method = client.get("/process_video")
    assert wrong_method.status_code == 405 and set(wrong_method.json()) == {"error", "code", "details"}
    hallo2 = client.put("/api/v1/tasks")
    assert hallo2.status_code == 405 and hallo2.json()["error_code"] == "METHOD_NOT_ALLOWED"
    lam = client.get("/api/infer")
    assert lam.status_code == 405 and set(lam.json()) == {"detail"}
    unknown = client.get("/no/such/route")
    assert unknown.status_code == 404 and unknown.json() == {"detail": "Not Found"}

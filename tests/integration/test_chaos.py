"""Chaos against real processes: a Triton that is gone or hangs, ``kill -9`` of the whole stack in the middle of a
Hallo2 task, SIGTERM in the middle of a streaming request. Each fault is answered with 503 in the route's own
format (never 500, never text/plain), recovery needs no help, and nothing is lost or left behind: no task, no
process, no shared-memory region.

(The stub and tritonserver kills, with the supervisor bringing them back, are in ``test_supervision.py``.)
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import pytest

from emoserve.audio import encode_wav
from stack.processes import FrontendProcess, StackProcess, free_port
from tests.conftest import EXAMPLES, speech_like, wait_until
from tests.integration.test_hallo2 import portrait_png

SPEECH = (EXAMPLES / "speech.wav").read_bytes()
VIDEO = str(EXAMPLES / "sample_emotion.mp4")


def wait_for_task(api: httpx.Client, task_id: str, predicate, timeout_s: float, what: str) -> dict:
    """The task's status body once ``predicate(body)`` holds."""
    return wait_until(lambda: (body := api.get(f"/api/v1/tasks/{task_id}").json()) and predicate(body) and body, timeout_s, what)


def task_env(folder: Path, **extra: str) -> dict[str, str]:
    return {"EMOSERVE_HALLO2__DATABASE_URL": f"sqlite:///{folder / 'tasks.db'}", "EMOSERVE_HALLO2__DATA_DIR": str(folder / "tasks"),
            **extra}


def route_calls(api: httpx.Client):
    """One request per route that needs Triton, with the error body its API documents."""
    return {
        "/api/infer": (lambda: api.post("/api/infer", files={"audio_file": ("s.wav", SPEECH)}), {"detail"}),
        "/api/infer_stream_init": (lambda: api.post("/api/infer_stream_init", json={}), {"detail"}),
        "/process_video": (lambda: api.post("/process_video", json={"video_path": VIDEO, "question": "hi"}),
                           {"error", "code", "details"}),
        "/api/predict/": (lambda: api.post("/api/predict/", json={"data": [VIDEO, "hi"]}), {"error", "code", "details"}),
    }


def assert_no_internals(text: str, port: int) -> None:
    assert f":{port}" not in text and "ipv4" not in text and "127.0.0.1" not in text, text


@pytest.fixture()
def hung_triton():
    """A TCP endpoint that accepts and never answers (the one fake in the suite: a hung server is not reproducible
    with the real one on demand)."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    accepted = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(timeout=5)
    for connection in accepted:
        connection.close()
    listener.close()


@pytest.mark.parametrize("fault", ["gone", "hung"])
def test_a_triton_that_is_gone_or_hangs_is_503_in_each_api_format(fault, hung_triton, tmp_path):
    port = free_port() if fault == "gone" else hung_triton
    env = task_env(tmp_path, EMOSERVE_TRITON_TIMEOUT_S="3", EMOSERVE_EMOTION_LLAMA__GENERATION_TIMEOUT_S="3",
                   EMOSERVE_TRITON_PROBE_TIMEOUT_S="1", EMOSERVE_HALLO2__PROGRESS_TIMEOUT_S="2",
                   EMOSERVE_HALLO2__UNAVAILABLE_RETRIES="2", EMOSERVE_HALLO2__RETRY_BACKOFF_S="0.5")
    frontend = FrontendProcess(f"127.0.0.1:{port}", env).start(wait_healthy=False)
    try:
        with httpx.Client(base_url=frontend.base_url, timeout=30) as api:
            for route, (call, fields) in route_calls(api).items():
                started = time.monotonic()
                answer = call()
                assert answer.status_code == 503, (route, answer.text)
                assert answer.headers["content-type"] == "application/json" and set(answer.json()) == fields, (route, answer.text)
                assert int(answer.headers["retry-after"]) > 0 and answer.headers["x-request-id"]
                assert time.monotonic() - started < 10, f"{route} took {time.monotonic() - started:.1f}s"
                assert_no_internals(answer.text, port)
            stream = api.post("/process_video/stream", json={"video_path": VIDEO, "question": "hi"})
            # a failure before the first token is the route's status, not an error event in a 200 stream
            assert stream.status_code == 503 and set(stream.json()) == {"error", "code", "details"}, stream.text
            assert int(stream.headers["retry-after"]) > 0
            assert_no_internals(stream.text, port)
            for health in ("/api/health", "/health", "/api/v1/health", "/readyz"):
                started = time.monotonic()
                answer = api.get(health)
                assert time.monotonic() - started < 5, f"{health} hung"
                assert answer.status_code == (503 if health == "/readyz" else 200)
            assert api.get("/api/health").json()["model_loaded"] is False
            assert api.get("/health").json()["status"] == "unhealthy"
            assert api.get("/livez").status_code == 200
            # a Hallo2 task waits for Triton (bounded re-runs with backoff), then fails with a clean message
            created = api.post("/api/v1/inference/hallo2", files={"image_file": ("p.png", portrait_png()), "audio_file": ("a.wav", SPEECH)})
            assert created.status_code == 200, created.text
            task_id = created.json()["task_id"]
            waiting = wait_for_task(api, task_id, lambda t: t["status"] == "processing" and "Waiting for the inference server"
                                    in (t["status_message"] or ""), 30, "the task waiting")
            assert waiting["error"] is None
            failed = wait_for_task(api, task_id, lambda t: t["status"] == "failed", 60, "the task failing")
            assert "retry shortly" in failed["error"]
            assert_no_internals(failed["error"], port)
            logs = api.post(f"/api/v1/tasks/{task_id}/logs").text
            assert logs.count("Waiting for the inference server") == 2
            metrics = api.get("/metrics").text
            assert 'emoserve_hallo2_task_outcomes_total{outcome="retried"} 2.0' in metrics
            assert 'emoserve_http_requests_total{method="POST",route="/api/infer",status="503"} 1.0' in metrics
    finally:
        frontend.stop()


def stack_leftovers(launcher_pid: int) -> tuple[list[str], list[int]]:
    """Shared-memory regions and processes (tritonserver, stubs) that carry a launcher's pid in their shm prefix."""
    marker = f"emoserve_{launcher_pid}_"
    regions = sorted(p.name for p in Path("/dev/shm").glob(f"{marker}*"))
    processes = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if marker.encode() in (proc / "cmdline").read_bytes() and "Z" not in (proc / "stat").read_text().rsplit(")", 1)[1].split()[:1]:
                processes.append(int(proc.name))
        except OSError:
            continue
    return regions, processes


def task_statuses(database: Path) -> dict[str, str]:
    with sqlite3.connect(database) as connection:
        return dict(connection.execute("SELECT task_id, status FROM hallo2_tasks").fetchall())


def test_kill_9_of_the_stack_mid_task_then_sigterm_mid_stream_lose_nothing(tiny_repository, tmp_path):
    env = task_env(tmp_path, EMOSERVE_HALLO2__INFERENCE_STEPS="12", EMOSERVE_SHUTDOWN_GRACE_S="20")
    first = StackProcess(tiny_repository, tmp_path / "run", env).start()
    first_pid = first.process.pid
    try:
        api = httpx.Client(base_url=first.base_url, timeout=60)
        audio = encode_wav(speech_like(2.0, seed=4), 16000)
        task_id = api.post("/api/v1/inference/hallo2", files={"image_file": ("p.png", portrait_png()),
                                                              "audio_file": ("a.wav", audio)}).json()["task_id"]
        wait_for_task(api, task_id, lambda t: t["progress"] > 0, 120, "the task running")
        assert stack_leftovers(first_pid)[0], "the running stack has its shared memory"
        first.kill()  # kill -9: none of the stack's own clean-up runs
        api.close()
    finally:
        first.kill()
    # tritonserver dies with its launcher (parent-death signal); the stubs notice their server is gone
    wait_until(lambda: stack_leftovers(first_pid)[1] == [], 30, "no process of the killed stack left")
    assert task_statuses(tmp_path / "tasks.db")[task_id] == "processing"  # nobody could say otherwise

    second = StackProcess(tiny_repository, tmp_path / "run", env).start()
    second_pid = second.process.pid
    try:
        assert stack_leftovers(first_pid) == ([], []), "the next start removes what the killed stack left"
        api = httpx.Client(base_url=second.base_url, timeout=120)
        # the interrupted task is queued again and completes; nothing was lost
        done = wait_for_task(api, task_id, lambda t: t["status"] in ("completed", "failed"), 240, "the interrupted task finishing")
        assert done["status"] == "completed", done
        assert api.get(f"/api/v1/tasks/{task_id}/video").content[4:8] == b"ftyp"

        # SIGTERM while a streaming chunk and a Hallo2 task are in flight: the chunk is answered, the task is put back
        session = api.post("/api/infer_stream_init", json={}).json()["session_id"]
        assert api.post("/api/infer_stream_chunk", data={"session_id": session},
                        files={"audio_chunk": ("c.wav", encode_wav(speech_like(1.0), 16000))}).status_code == 200
        running = api.post("/api/v1/inference/hallo2", files={"image_file": ("p.png", portrait_png()),
                                                              "audio_file": ("a.wav", audio)}).json()["task_id"]
        wait_for_task(api, running, lambda t: t["progress"] > 0, 120, "the second task running")
        answers = []
        chunk = threading.Thread(target=lambda: answers.append(api.post(
            "/api/infer_stream_chunk", data={"session_id": session},
            files={"audio_chunk": ("c.wav", encode_wav(speech_like(4.0, seed=9), 16000))})))
        chunk.start()
        time.sleep(0.3)  # the chunk is being processed
        os.kill(second_pid, signal.SIGTERM)
        chunk.join(timeout=60)
        assert answers and answers[0].status_code == 200, answers and answers[0].text
        assert second.process.wait(timeout=60) == 0
        second.process = None
        api.close()
    finally:
        second.kill()
    assert stack_leftovers(second_pid) == ([], []), "SIGTERM stops Triton, its stubs and their shared memory"
    statuses = task_statuses(tmp_path / "tasks.db")
    assert statuses == {task_id: "completed", running: "queued"}, statuses

"""Hallo2 tasks across machines, with real parts on loopback: one PostgreSQL 15 cluster, one tritonserver (tiny
profile), two front ends with their embedded worker off, two ``python -m frontend.hallo2 worker`` processes, one
shared task folder. Every task runs exactly once; status, logs, cancel and download work from either front end; a
worker killed with SIGKILL mid-task has its task finished by the other after the lease."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from emoserve.audio import encode_wav
from stack.processes import PROJECT_ROOT, FrontendProcess, free_port
from tests.conftest import speech_like, wait_until
from tests.integration.test_hallo2 import portrait_png

pytestmark = pytest.mark.timeout(300)

LEASE_S = 4.0


class WorkerProcess:
    def __init__(self, triton_grpc_url: str, env: dict[str, str]):
        self.port = free_port()
        self.env = dict(os.environ, **env)
        self.triton_grpc_url = triton_grpc_url
        handle, name = tempfile.mkstemp(prefix="hallo2-worker-", suffix=".log")
        os.close(handle)
        self.log_path = Path(name)
        self.process: subprocess.Popen | None = None

    def start(self) -> WorkerProcess:
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "frontend.hallo2", "worker", "--triton-url", self.triton_grpc_url, "--port", str(self.port)],
                cwd=PROJECT_ROOT, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env)
        wait_until(lambda: self._ready(), 90, "the worker's /readyz")
        return self

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"the worker exited:\n{self.log_path.read_text(errors='replace')}")
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log_path.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def cluster(triton_server, postgres, tmp_path_factory):
    env = {
        "EMOSERVE_HALLO2__DATABASE_URL": postgres.create_database(),
        "EMOSERVE_HALLO2__DATA_DIR": str(tmp_path_factory.mktemp("shared_task_files")),
        "EMOSERVE_HALLO2__EMBEDDED_WORKER": "false",
        "EMOSERVE_HALLO2__INFERENCE_STEPS": "1",
        "EMOSERVE_HALLO2__POLL_INTERVAL_S": "0.2",
        "EMOSERVE_HALLO2__HEARTBEAT_INTERVAL_S": "0.5",
        "EMOSERVE_HALLO2__STALE_AFTER_S": str(LEASE_S),
        "EMOSERVE_HALLO2__PROGRESS_INTERVAL_S": "0.2",
    }
    frontends = [FrontendProcess(triton_server.grpc_url, env).start() for _ in range(2)]
    workers = [WorkerProcess(triton_server.grpc_url, env).start() for _ in range(2)]
    clients = [httpx.Client(base_url=f.base_url, timeout=60) for f in frontends]
    yield clients, workers, env
    for client in clients:
        client.close()
    for process in workers + frontends:
        process.stop()


def submit(client: httpx.Client, audio: bytes) -> str:
    response = client.post("/api/v1/inference/hallo2", files={"image_file": ("p.png", portrait_png()), "audio_file": ("a.wav", audio)})
    assert response.status_code == 200, response.text
    return response.json()["task_id"]


def status(client: httpx.Client, task_id: str) -> dict:
    return client.get(f"/api/v1/tasks/{task_id}").json()


def test_twenty_tasks_across_two_front_ends_run_exactly_once_on_two_workers(cluster):
    clients, workers, _ = cluster
    audio = encode_wav(speech_like(0.4, seed=3))
    task_ids = [submit(clients[i % 2], audio) for i in range(20)]
    for i, task_id in enumerate(task_ids):  # each read through the other front end than the one it was sent to
        other = clients[(i + 1) % 2]
        done = wait_until(lambda c=other, t=task_id: (s := status(c, t))["status"] in ("completed", "failed") and s, 240, f"task {i}")
        assert done["status"] == "completed", done
    ran_on = set()
    for i, task_id in enumerate(task_ids):
        other = clients[(i + 1) % 2]
        logs = other.post(f"/api/v1/tasks/{task_id}/logs").json()["logs"]
        assert logs.count("Processing started by worker") == 1 and logs.count("Task completed") == 1, logs
        ran_on.add(logs.split("Processing started by worker ")[1].split()[0])
        video = other.get(f"/api/v1/tasks/{task_id}/video")
        assert video.status_code == 200 and video.content[4:8] == b"ftyp"
    assert len(ran_on) == 2  # both workers took tasks


def test_a_cancel_through_either_front_end_reaches_the_worker(cluster):
    clients, _, _ = cluster
    clients[0].post("/api/v1/inference/hallo2/config", json={"inference_steps": 30})
    try:
        task_id = submit(clients[0], encode_wav(speech_like(3.0, seed=4)))
        wait_until(lambda: status(clients[1], task_id)["status"] == "processing", 60, "the task running")
        assert clients[1].delete(f"/api/v1/tasks/{task_id}").status_code == 200
        logs = wait_until(lambda: "Processing stopped" in (text := clients[0].post(f"/api/v1/tasks/{task_id}/logs").json()["logs"])
                          and text, 30, "the worker stopping the cancelled task")
        assert status(clients[0], task_id)["status"] == "cancelled" and "Task cancelled while processing" in logs
    finally:
        clients[0].post("/api/v1/inference/hallo2/config", json={"inference_steps": 1})


def test_a_worker_killed_mid_task_has_its_task_finished_by_the_other(cluster):
    clients, workers, _ = cluster
    clients[0].post("/api/v1/inference/hallo2/config", json={"inference_steps": 6})
    try:
        task_id = submit(clients[0], encode_wav(speech_like(2.0, seed=6)))
        running = wait_until(lambda: (s := status(clients[1], task_id))["status"] == "processing" and s["progress"] > 0 and s,
                             60, "the task running")
        assert running
        logs = clients[1].post(f"/api/v1/tasks/{task_id}/logs").json()["logs"]
        holder = logs.split("Processing started by worker ")[1].split()[0]
        victim = next(w for w in workers if f":{w.process.pid}:" in holder)
        killed_at = time.monotonic()
        victim.kill()  # kill -9: no re-queue of its own
        done = wait_until(lambda: (s := status(clients[1], task_id))["status"] in ("completed", "failed") and s, 180,
                          "the task finishing on the other worker")
        assert done["status"] == "completed", done
        assert time.monotonic() - killed_at >= LEASE_S * 0.5  # it waited for the lease, not sooner
        logs = clients[0].post(f"/api/v1/tasks/{task_id}/logs").json()["logs"]
        assert f"worker {holder} stopped while processing it" in logs and logs.count("Processing started by worker") == 2
        assert clients[1].get(f"/api/v1/tasks/{task_id}/video").status_code == 200
    finally:
        clients[0].post("/api/v1/inference/hallo2/config", json={"inference_steps": 1})

"""Loopback helpers shared by the tests and the benchmarks: free ports and a front-end child process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_up(process: subprocess.Popen, probe, timeout_s: float, what: str, log_text) -> bool:
    """Poll ``probe()`` until it is true (True) or ``timeout_s`` passed (False); the process exiting is an error."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}:\n{log_text()}")
        try:
            if probe():
                return True
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.3)
    return False


class FrontendProcess:
    """``python -m frontend`` on a free loopback port; ``start()`` waits until its health says healthy."""

    def __init__(self, triton_grpc_url: str, env: dict[str, str] | None = None, log_path: Path | None = None, log_level: str = "info"):
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.triton_grpc_url = triton_grpc_url
        self.env = dict(os.environ, **(env or {}))
        self.log_level = log_level
        self._owns_log = log_path is None
        if log_path is None:
            handle, name = tempfile.mkstemp(prefix="frontend-", suffix=".log")
            os.close(handle)
            log_path = Path(name)
        self.log_path = Path(log_path)
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 90.0, wait_healthy: bool = True) -> FrontendProcess:
        import httpx

        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "frontend", "--host", "127.0.0.1", "--port", str(self.port),
                 "--triton-url", self.triton_grpc_url, "--log-level", self.log_level],
                cwd=PROJECT_ROOT, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env,
            )
        def healthy() -> bool:
            return httpx.get(f"{self.base_url}/api/health", timeout=2).json().get("status") == "healthy" or not wait_healthy

        if not _wait_up(self.process, healthy, timeout_s, "front end", self.log_text):
            self.stop()
            raise RuntimeError(f"front end not healthy after {timeout_s:.0f}s:\n{self.log_text()}")
        return self

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return "(no front-end log)"

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        if self._owns_log:
            self.log_path.unlink(missing_ok=True)


class StackProcess:
    """``python -m stack`` (tritonserver + front end, supervised) on free loopback ports, in ``workdir`` (its
    ``logs/`` and, unless ``env`` says otherwise, its Hallo2 ``data/``). ``start()`` waits for ``/readyz``."""

    def __init__(self, model_repository: Path, workdir: Path, env: dict[str, str] | None = None):
        self.model_repository = Path(model_repository)
        self.workdir = Path(workdir)
        self.port, self.triton_http_port, self.triton_grpc_port, self.triton_metrics_port = (free_port() for _ in range(4))
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.env = dict(os.environ, **(env or {}))
        self.log_path = self.workdir / "stack.log"
        self.process: subprocess.Popen | None = None

    @property
    def triton_grpc_url(self) -> str:
        return f"127.0.0.1:{self.triton_grpc_port}"

    def start(self, timeout_s: float = 180.0) -> StackProcess:
        import httpx

        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "stack", "--host", "127.0.0.1", "--port", str(self.port),
                 "--model-repository", str(self.model_repository), "--triton-http-port", str(self.triton_http_port),
                 "--triton-grpc-port", str(self.triton_grpc_port), "--triton-metrics-port", str(self.triton_metrics_port)],
                cwd=self.workdir, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env,
            )
        def ready() -> bool:
            return httpx.get(f"{self.base_url}/readyz", timeout=3).status_code == 200

        if not _wait_up(self.process, ready, timeout_s, "the stack", self.log_text):
            self.kill()
            raise RuntimeError(f"the stack was not ready after {timeout_s:.0f}s:\n{self.log_text()}")
        return self

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return "(no stack log)"

    def terminate(self, timeout_s: float = 60.0) -> int:
        """SIGTERM (what an orchestrator sends) and wait for the exit; its code."""
        process = self.process
        if process is None:
            return 0
        process.terminate()
        try:
            return process.wait(timeout=timeout_s)
        finally:
            self.process = None

    def kill(self) -> None:
        """``kill -9`` of the stack process (no clean-up of its own runs)."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=10)

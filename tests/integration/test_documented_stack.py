"""``python -m stack --documented-ports`` on the documents' real ports: each API on its document's port, Triton
moved to :data:`stack.triton_server.MOVED_PORTS` (printed at start, reachable by tritonclient)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import httpx
import pytest

from frontend.config import DOCUMENTED_PORT_NUMBERS
from stack.__main__ import triton_port_choice
from stack.processes import PROJECT_ROOT
from stack.triton_server import DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT, DEFAULT_METRICS_PORT, MOVED_PORTS
from tests.conftest import free_port, wait_until


def _in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_triton_ports_move_only_in_documented_mode():
    assert triton_port_choice(False, None, None, None) == (DEFAULT_HTTP_PORT, DEFAULT_GRPC_PORT, DEFAULT_METRICS_PORT)
    assert triton_port_choice(True, None, None, None) == MOVED_PORTS
    assert triton_port_choice(True, 9000, None, 9002) == (9000, MOVED_PORTS[1], 9002)
    assert not set(MOVED_PORTS) & set(DOCUMENTED_PORT_NUMBERS.values())


def test_the_stack_on_the_documented_ports(tiny_repository, tmp_path):
    wanted = [*DOCUMENTED_PORT_NUMBERS.values(), *MOVED_PORTS]
    busy = [port for port in wanted if _in_use(port)]
    if busy:
        pytest.skip(f"ports {busy} are in use on this machine")
    main_port = free_port()
    log = tmp_path / "stack.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "stack", "--documented-ports", "--port", str(main_port),
                                    "--model-repository", str(tiny_repository)], cwd=tmp_path, stdout=out,
                                   stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
    try:
        wait_until(lambda: process.poll() is not None or _ready(main_port), 180, "the stack")
        assert process.poll() is None, log.read_text()
        printed = log.read_text()
        assert f":{MOVED_PORTS[0]}" in printed and f"grpc 127.0.0.1:{MOVED_PORTS[1]}" in printed, printed
        for port in DOCUMENTED_PORT_NUMBERS.values():
            assert f"127.0.0.1:{port}" in printed
        import tritonclient.http as httpclient

        assert httpclient.InferenceServerClient(f"127.0.0.1:{MOVED_PORTS[0]}").is_model_ready("lam_a2e_stream")
        assert httpx.get(f"http://127.0.0.1:{DOCUMENTED_PORT_NUMBERS['lam_a2e']}/").json()["service"] == "LAM-A2E API"
        assert httpx.get(f"http://127.0.0.1:{DOCUMENTED_PORT_NUMBERS['hallo2']}/api/v1/health").status_code == 200
    finally:
        process.terminate()
        assert process.wait(timeout=60) == 0


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False

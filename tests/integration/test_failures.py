"""Server-side failures through the REST API: a network that is gone (500) and a model not loaded (503).

Uses its own Triton in explicit model-control mode so models can be unloaded without disturbing the
other tests' server.
"""

from __future__ import annotations

import httpx
import pytest
import tritonclient.http as httpclient

from emoserve.audio import encode_wav
from emoserve.model_catalog import A2E_NETWORK_MODEL, A2E_OFFLINE_MODEL, A2E_STREAM_MODEL
from stack.triton_server import TritonServer, TritonServerOptions
from tests.conftest import FrontendProcess, free_port, speech_like

TRITON_IDLE_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def explicit_triton(tmp_path_factory):
    from export.build_repository import BuildSettings, build_repository

    # Triton's own sequence idle timeout is short here; the front end's stays at its 300 s default
    repository = build_repository(
        tmp_path_factory.mktemp("short_idle_repository"),
        BuildSettings(profile="tiny", slices=("lam_a2e",), stream_idle_timeout_s=TRITON_IDLE_TIMEOUT_S),
    )
    options = TritonServerOptions(
        repository,
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        extra_args=["--model-control-mode=explicit", "--load-model=*"],
    )
    with TritonServer(options) as server:
        yield server


@pytest.fixture(scope="module")
def fault_frontend(explicit_triton):
    process = FrontendProcess(explicit_triton.grpc_url).start()
    yield process
    process.stop()


def _infer(frontend: FrontendProcess) -> httpx.Response:
    return httpx.post(f"{frontend.base_url}/api/infer", files={"audio_file": ("a.wav", encode_wav(speech_like(1.0)))}, timeout=60)


def test_network_failure_inside_the_pipeline_is_500_and_recovers(explicit_triton, fault_frontend):
    control = httpclient.InferenceServerClient(explicit_triton.http_url)
    session = httpx.post(f"{fault_frontend.base_url}/api/infer_stream_init", json={}).json()["session_id"]
    control.unload_model(A2E_NETWORK_MODEL)
    try:
        response = _infer(fault_frontend)
        assert response.status_code == 500
        assert "failed" in response.json()["detail"] and A2E_NETWORK_MODEL in response.json()["detail"]
        # a new session is refused while the models cannot serve; an open one learns of the failure on its chunk
        refused = httpx.post(f"{fault_frontend.base_url}/api/infer_stream_init", json={})
        assert refused.status_code == 503 and refused.headers["retry-after"]
        chunk = httpx.post(
            f"{fault_frontend.base_url}/api/infer_stream_chunk",
            data={"session_id": session},
            files={"audio_chunk": ("c.wav", encode_wav(speech_like(1.0)))},
            timeout=60,
        )
        assert chunk.status_code == 500
        assert httpx.get(f"{fault_frontend.base_url}/api/health").json()["status"] == "not_ready"
    finally:
        control.load_model(A2E_NETWORK_MODEL)
    assert _infer(fault_frontend).status_code == 200
    control.close()


def test_unloaded_model_is_503_and_recovers(explicit_triton, fault_frontend):
    control = httpclient.InferenceServerClient(explicit_triton.http_url)
    control.unload_model(A2E_OFFLINE_MODEL)
    try:
        response = _infer(fault_frontend)
        assert response.status_code == 503 and "not initialised" in response.json()["detail"]
        health = httpx.get(f"{fault_frontend.base_url}/api/health").json()
        assert health["status"] == "not_ready" and health["model_loaded"] is False
    finally:
        control.load_model(A2E_OFFLINE_MODEL)
    assert control.is_model_ready(A2E_STREAM_MODEL)
    assert _infer(fault_frontend).status_code == 200
    control.close()


def test_sequence_expired_inside_triton_is_404_and_frees_the_rest_session(fault_frontend):
    import time

    base = fault_frontend.base_url
    before = httpx.get(f"{base}/api/health").json()["sessions"]
    session = httpx.post(f"{base}/api/infer_stream_init", json={}).json()["session_id"]

    def chunk() -> httpx.Response:
        return httpx.post(
            f"{base}/api/infer_stream_chunk",
            data={"session_id": session},
            files={"audio_chunk": ("c.wav", encode_wav(speech_like(1.0)))},
            timeout=60,
        )

    assert chunk().status_code == 200
    time.sleep(TRITON_IDLE_TIMEOUT_S * 3)
    expired = chunk()
    assert expired.status_code == 404 and "expired on the inference server" in expired.json()["detail"]
    assert httpx.get(f"{base}/api/health").json()["sessions"] == before
    assert chunk().status_code == 404

"""Server-side failures through the REST API: a network that fails (500), a network or model not loaded (503).

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
from tests.conftest import FrontendProcess, free_port, speech_like, wait_until

# a session's sequence starts at its init, so this is also the longest a test may pause between two calls of a session
TRITON_IDLE_TIMEOUT_S = 3.0
MAX_QUEUE_SIZE = 1


@pytest.fixture(scope="module")
def explicit_triton(tmp_path_factory):
    from export.build_repository import BuildSettings, build_repository

    # Triton's own sequence idle timeout is short here; the front end's stays at its 300 s default
    repository = build_repository(
        tmp_path_factory.mktemp("short_idle_repository"),
        BuildSettings(profile="tiny", slices=("lam_a2e",), stream_idle_timeout_s=TRITON_IDLE_TIMEOUT_S,
                      max_queue_size=MAX_QUEUE_SIZE),
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


# a test-only network that runs and fails every request: what a model bug or an out-of-memory looks like
FAILING_NETWORK = b"""
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse(error=pb_utils.TritonError("the network ran out of memory (test fault)"))
                for _ in requests]
"""


def _chunk(frontend: FrontendProcess, session: str) -> httpx.Response:
    return httpx.post(f"{frontend.base_url}/api/infer_stream_chunk", data={"session_id": session},
                      files={"audio_chunk": ("c.wav", encode_wav(speech_like(1.0)))}, timeout=60)


def test_a_network_that_fails_inside_the_pipeline_is_500_and_recovers(explicit_triton, fault_frontend):
    control = httpclient.InferenceServerClient(explicit_triton.http_url)
    model_file = explicit_triton.options.model_repository / A2E_NETWORK_MODEL / "1" / "model.py"
    served = model_file.read_bytes()
    model_file.write_bytes(FAILING_NETWORK)  # this module's own repository: a reload serves the failing network
    control.load_model(A2E_NETWORK_MODEL)
    model_file.write_bytes(served)
    session = httpx.post(f"{fault_frontend.base_url}/api/infer_stream_init", json={}).json()["session_id"]
    try:
        response = _infer(fault_frontend)
        assert response.status_code == 500, response.text
        assert "failed" in response.json()["detail"] and "ran out of memory" in response.json()["detail"]
        chunk = _chunk(fault_frontend, session)
        assert chunk.status_code == 500 and "ran out of memory" in chunk.json()["detail"]
    finally:
        control.load_model(A2E_NETWORK_MODEL)  # the repository's own model again
    assert _infer(fault_frontend).status_code == 200
    control.close()


def test_a_network_that_is_not_loaded_is_503_for_its_pipeline_and_recovers(explicit_triton, fault_frontend):
    control = httpclient.InferenceServerClient(explicit_triton.http_url)
    session = httpx.post(f"{fault_frontend.base_url}/api/infer_stream_init", json={}).json()["session_id"]
    control.unload_model(A2E_NETWORK_MODEL)  # what a reload after a dead stub looks like from outside
    try:
        response = _infer(fault_frontend)
        assert response.status_code == 503 and response.headers["retry-after"], response.text
        assert "not initialised" in response.json()["detail"] and A2E_NETWORK_MODEL in response.json()["detail"]
        # a new session is refused while the models cannot serve; an open one learns of it on its next chunk
        refused = httpx.post(f"{fault_frontend.base_url}/api/infer_stream_init", json={})
        assert refused.status_code == 503 and refused.headers["retry-after"]
        assert _chunk(fault_frontend, session).status_code == 503
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
    # the earlier tests' sessions expired inside Triton too: the sweep rechecks quiet sessions and frees them
    wait_until(lambda: httpx.get(f"{base}/api/health").json()["sessions"] == 0, 40, "the earlier tests' sessions freed")
    before = 0
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


def test_a_full_model_queue_is_refused_at_once_and_answered_503(explicit_triton):
    """max_queue_size from the build: requests beyond the queue get Triton's UNAVAILABLE at once, the front end's 503."""
    import asyncio

    import numpy as np
    import tritonclient.grpc.aio as aioclient
    from tritonclient.utils import InferenceServerException

    from frontend.errors import ServiceUnavailable
    from frontend.triton import map_triton_error

    async def flood() -> list:
        client = aioclient.InferenceServerClient(explicit_triton.grpc_url)
        audio = np.zeros((1, 16000), np.float32)
        inputs = [aioclient.InferInput("input_values", list(audio.shape), "FP32"), aioclient.InferInput("id_idx", [1, 1], "INT64")]
        inputs[0].set_data_from_numpy(audio)
        inputs[1].set_data_from_numpy(np.zeros((1, 1), np.int64))
        try:
            return await asyncio.gather(*(client.infer(A2E_NETWORK_MODEL, inputs) for _ in range(24)), return_exceptions=True)
        finally:
            await client.close()

    results = asyncio.run(flood())
    refused = [r for r in results if isinstance(r, InferenceServerException)]
    assert refused and len(refused) < len(results), [str(r) for r in refused[:3]]
    assert all("Exceeds maximum queue size" in r.message() for r in refused)
    assert type(map_triton_error(refused[0], "whole-audio inference")) is ServiceUnavailable

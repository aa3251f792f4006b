"""LAM-A2E streaming sessions across replicas, with real processes on loopback: two tritonserver processes (tiny
profile, the lam_a2e slice only) and two front ends, each configured with both replicas and one signing key. A
session's chunks alternate between the front ends and give the frames one front end gives; a forged or altered
session id is a 404; a Triton killed with SIGKILL loses its sessions (a 404 that says to start a new session) while
new sessions go to the live one; a front end killed with SIGKILL: the client goes on with the same session on the
other."""

from __future__ import annotations

import json
import os
import signal

import httpx
import numpy as np
import pytest

from emoserve.audio import encode_wav
from emoserve.constants import ARKIT_BLENDSHAPE_NAMES
from frontend.lam_a2e.tokens import SessionTokens
from stack.processes import FrontendProcess, free_port
from stack.triton_server import TritonServer, TritonServerOptions
from tests.conftest import speech_like

pytestmark = pytest.mark.timeout(300)

KEY = "test-signing-key-shared-by-both-front-ends"
BLINKS = [ARKIT_BLENDSHAPE_NAMES.index("eyeBlinkLeft"), ARKIT_BLENDSHAPE_NAMES.index("eyeBlinkRight")]
CHUNKS = [encode_wav(piece, 16000) for piece in np.split(speech_like(4.0, seed=42), 4)]


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    from export.build_repository import BuildSettings, build_repository

    repository = build_repository(tmp_path_factory.mktemp("lam_a2e_repository"), BuildSettings(profile="tiny", slices=("lam_a2e",)))
    servers = []
    try:
        for _ in range(2):
            servers.append(TritonServer(TritonServerOptions(repository, http_port=free_port(), grpc_port=free_port(),
                                                            metrics_port=free_port())).start())
        yield servers
    finally:
        for server in servers:
            server.stop()


@pytest.fixture(scope="module")
def frontends(replicas):
    env = {"EMOSERVE_LAM_A2E__TRITON_REPLICAS": json.dumps([s.grpc_url for s in replicas]), "EMOSERVE_LAM_A2E__SESSION_KEY": KEY}
    processes = []
    try:
        for _ in range(2):
            processes.append(FrontendProcess(replicas[0].grpc_url, env).start())
        yield processes
    finally:
        for process in processes:
            process.stop()


@pytest.fixture(scope="module")
def apis(frontends):
    clients = [httpx.Client(base_url=f.base_url, timeout=60) for f in frontends]
    yield clients
    for client in clients:
        client.close()


def open_session(api: httpx.Client) -> str:
    response = api.post("/api/infer_stream_init", json={"id_idx": 2})
    assert response.status_code == 200, response.text
    return response.json()["session_id"]


def chunk(api: httpx.Client, session_id: str, index: int) -> httpx.Response:
    return api.post("/api/infer_stream_chunk", data={"session_id": session_id}, files={"audio_chunk": ("c.wav", CHUNKS[index])})


def frames(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    weights = np.array([frame["weights"] for frame in response.json()["frames"]])
    return np.delete(weights, BLINKS, axis=1)  # blinks are seeded per session at random by design


def assert_no_address(response: httpx.Response) -> None:
    assert "127.0.0.1" not in response.text and "localhost" not in response.text, response.text


def test_chunks_alternating_between_front_ends_give_the_frames_of_one(apis):
    one = open_session(apis[0])
    through_one = [chunk(apis[0], one, i) for i in range(4)]
    alternating = open_session(apis[1])
    through_both = [chunk(apis[i % 2], alternating, i) for i in range(4)]
    for a, b in zip(through_one, through_both):
        np.testing.assert_allclose(frames(a), frames(b), atol=1e-6)
        assert b.json()["metadata"]["chunk_index"] == a.json()["metadata"]["chunk_index"]
        assert b.json()["metadata"]["start_time"] == a.json()["metadata"]["start_time"]
    assert [r.json()["metadata"]["chunk_index"] for r in through_both] == [1, 2, 3, 4]
    # closed through the other front end than the one that opened it: gone for both
    assert apis[0].delete(f"/api/infer_stream_close/{alternating}").status_code == 200
    assert apis[1].delete(f"/api/infer_stream_close/{one}").status_code == 200
    for api in apis:
        assert chunk(api, alternating, 0).status_code == 404
        assert api.delete(f"/api/infer_stream_close/{one}").status_code == 404


def test_a_forged_or_altered_session_id_is_404(apis):
    session_id = open_session(apis[0])
    altered = session_id[:20] + ("A" if session_id[20] != "A" else "B") + session_id[21:]
    # well formed, but signed with another key; and one naming a replica no front end has
    forged = SessionTokens(b"another key").issue(b"\0" * 8, 1)
    for api in apis:
        for bad in (altered, forged, session_id[:-1], session_id + "A", "00000000-0000-0000-0000-000000000000"):
            response = chunk(api, bad, 0)
            assert response.status_code == 404 and set(response.json()) == {"detail"}, response.text
            assert_no_address(response)
            assert api.delete(f"/api/infer_stream_close/{bad}").status_code == 404
    assert chunk(apis[1], session_id, 0).json()["metadata"]["chunk_index"] == 1  # the real one was not touched
    assert apis[1].delete(f"/api/infer_stream_close/{session_id}").status_code == 200


def test_a_killed_triton_loses_its_sessions_and_new_sessions_go_to_the_live_one(apis, replicas):
    # each front end places by its own view (which may still count sessions closed through the other one), so the
    # test reads each session's replica from its id (it holds the signing key) and opens until both hold some
    tokens = SessionTokens(KEY.encode())
    tag_of = {tokens.replica_tag(replica.grpc_url): index for index, replica in enumerate(replicas)}
    sessions: list[str] = []
    while len(sessions) < 4 or len({tag_of[tokens.read(s).replica_tag] for s in sessions}) < 2:
        assert len(sessions) < 12, "new sessions never reached the second replica"
        sessions.append(open_session(apis[len(sessions) % 2]))
    for session_id in sessions:
        assert chunk(apis[0], session_id, 0).status_code == 200
    on_victim = [tag_of[tokens.read(s).replica_tag] == 1 for s in sessions]
    victim = replicas[1]
    os.kill(victim.process.pid, signal.SIGKILL)
    victim.process.wait(timeout=10)
    answers = [chunk(apis[i % 2], session_id, 1) for i, session_id in enumerate(sessions)]
    lost = [a for a in answers if a.status_code == 404]
    assert [a.status_code for a in answers] == [404 if gone else 200 for gone in on_victim], [a.text for a in answers]
    for answer in lost:
        assert "start a new session" in answer.json()["detail"] and set(answer.json()) == {"detail"}
        assert_no_address(answer)
    for api in apis:
        assert api.get("/api/health").json()["status"] == "healthy"
        for _ in range(3):  # new sessions: all on the live replica
            fresh = open_session(api)
            assert [chunk(api, fresh, i).status_code for i in range(2)] == [200, 200]
            assert api.delete(f"/api/infer_stream_close/{fresh}").status_code == 200


def test_a_killed_front_end_the_client_continues_the_session_on_the_other(apis, frontends):
    reference = open_session(apis[0])
    expected = [frames(chunk(apis[0], reference, i)) for i in range(4)]
    session_id = open_session(apis[1])
    assert frames(chunk(apis[1], session_id, 0)).shape == expected[0].shape
    os.kill(frontends[1].process.pid, signal.SIGKILL)
    frontends[1].process.wait(timeout=10)
    later = [chunk(apis[0], session_id, i) for i in range(1, 4)]
    for answer, want in zip(later, expected[1:]):
        np.testing.assert_allclose(frames(answer), want, atol=1e-6)
    assert [a.json()["metadata"]["chunk_index"] for a in later] == [2, 3, 4]
    assert apis[0].delete(f"/api/infer_stream_close/{session_id}").status_code == 200

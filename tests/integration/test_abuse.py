"""Hostile input against the live front end (tiny models, real Triton): decompression bombs, lying headers, paths
and numbers outside what the server can take. Each is a 4xx in the route's own error format, decided without
decoding the bomb (the front end's peak memory is measured), and the stack still serves afterwards."""

from __future__ import annotations

from pathlib import Path

import pytest

from emoserve.audio import encode_wav
from emoserve.hallo2.defaults import HALLO2
from tests.conftest import EXAMPLES, png_header_only, silent_flac, speech_like, wav_with_header
from tests.integration.test_hallo2 import portrait_png

SPEECH = (EXAMPLES / "speech.wav").read_bytes()
VIDEO = str(EXAMPLES / "sample_emotion.mp4")
# what a refused bomb may still cost the front end (a decoded one costs hundreds of MB)
MEMORY_BUDGET_BYTES = 64 * 1024 * 1024


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.fixture(scope="module")
def flac_700s() -> bytes:
    return silent_flac(700)


def test_audio_bombs_are_refused_from_their_headers(api, frontend, flac_700s):
    before = peak_rss(frontend.process.pid)
    assert len(flac_700s) < 400_000  # 700 s of silence: ~11 M samples in a few hundred KB
    cases = {
        "a 1 Hz header": (wav_with_header(1), "unsupported sample rate 1 Hz"),
        "a 64-channel header": (wav_with_header(16000, channels=64), "unsupported channel count 64"),
        "700 s of silent FLAC": (flac_700s, "longer than the 600 s limit"),
    }
    for name, (data, words) in cases.items():
        answer = api.post("/api/infer", files={"audio_file": ("a.wav", data)})
        assert answer.status_code == 400 and set(answer.json()) == {"detail"}, (name, answer.text)
        assert words in answer.json()["detail"], (name, answer.text)
    chunk_session = api.post("/api/infer_stream_init", json={}).json()["session_id"]
    answer = api.post("/api/infer_stream_chunk", data={"session_id": chunk_session}, files={"audio_chunk": ("c.wav", silent_flac(40))})
    assert answer.status_code == 400 and "longer than the 30 s limit" in answer.json()["detail"]
    api.delete(f"/api/infer_stream_close/{chunk_session}")
    assert peak_rss(frontend.process.pid) - before < MEMORY_BUDGET_BYTES
    assert api.post("/api/infer", files={"audio_file": ("s.wav", SPEECH)}).status_code == 200


def test_too_short_audio_is_a_400_naming_the_minimum(api):
    answer = api.post("/api/infer", files={"audio_file": ("a.wav", encode_wav(speech_like(0.0005), 16000))})
    assert answer.status_code == 400 and "too short" in answer.json()["detail"] and "25 ms" in answer.json()["detail"]


def test_hallo2_refuses_the_models_limits_at_submission(api, frontend):
    before = peak_rss(frontend.process.pid)
    for image, audio, words in (
        (png_header_only(16000, 16000), SPEECH, "too large (16000x16000"),
        (png_header_only(7000, 7000), SPEECH, "too large (7000x7000"),
        (portrait_png(), silent_flac(HALLO2.max_audio_seconds + 30), f"longer than the {HALLO2.max_audio_seconds:g} s limit"),
    ):
        answer = api.post("/api/v1/inference/hallo2", files={"image_file": ("p.png", image), "audio_file": ("a.flac", audio)})
        assert answer.status_code == 400, answer.text
        body = answer.json()
        assert set(body) == {"detail", "error_code"} and words in body["detail"], body
        assert body["error_code"] in ("INVALID_IMAGE", "INVALID_AUDIO")
    assert peak_rss(frontend.process.pid) - before < MEMORY_BUDGET_BYTES


@pytest.mark.parametrize("video_path, status, words", [
    # refused by the schema's path pattern: the answer names the field (data.0 is /api/predict/'s video path)
    ("examples/sample\x00.mp4", 400, ("video_path", "data.0")),
    ("/" + "v" * 300 + ".mp4", 400, ("video_path", "data.0")),
    ("/etc/passwd", 400, ("outside the configured media roots",) * 2),
])
def test_hostile_video_paths_are_refused_without_server_folders(api, video_path, status, words):
    answers = (api.post("/process_video", json={"video_path": video_path, "question": "hi"}),
               api.post("/api/predict/", json={"data": [video_path, "hi"]}))
    for answer, named in zip(answers, words):
        assert answer.status_code == status and answer.headers["content-type"] == "application/json", answer.text
        body = answer.json()
        assert set(body) == {"error", "code", "details"} and named in body["error"], body
        assert str(EXAMPLES) not in answer.text and str(EXAMPLES.parent) not in answer.text


def test_a_seed_past_64_bits_is_a_400_on_every_route(api):
    upload = api.post("/api/v1/emotion-llama/analyze", files={"video_file": ("v.mp4", Path(VIDEO).read_bytes())},
                      data={"question": "hi", "seed": str(2**64)})
    assert upload.status_code == 400 and "seed" in upload.json()["error"]
    body = api.post("/process_video", json={"video_path": VIDEO, "question": "hi", "seed": 2**64})
    assert body.status_code == 400 and "seed" in body.json()["error"]


def test_a_chunked_upload_is_stopped_at_the_routes_limit(api, frontend):
    limit = 4 * 1024 * 1024  # the test front end's /api/infer limit

    def body():
        boundary = b"--x\r\nContent-Disposition: form-data; name=\"audio_file\"; filename=\"a.wav\"\r\n\r\n"
        yield boundary
        for _ in range(200):  # 200 MiB, no Content-Length: counted as it arrives (the client sends it all the same)
            yield b"\0" * (1024 * 1024)

    before = peak_rss(frontend.process.pid)
    answer = api.post("/api/infer", content=body(), headers={"content-type": "multipart/form-data; boundary=x"})
    assert answer.status_code == 413 and set(answer.json()) == {"detail"} and f"{limit} byte limit" in answer.json()["detail"]
    assert peak_rss(frontend.process.pid) - before < MEMORY_BUDGET_BYTES


def test_one_client_cannot_take_every_streaming_session(triton_server):
    import httpx

    from stack.processes import FrontendProcess

    frontend = FrontendProcess(triton_server.grpc_url, {"EMOSERVE_LAM_A2E__MAX_SESSIONS_PER_CLIENT": "2"}).start()
    try:
        with httpx.Client(base_url=frontend.base_url, timeout=30) as client:
            opened = [client.post("/api/infer_stream_init", json={}).json()["session_id"] for _ in range(2)]
            refused = client.post("/api/infer_stream_init", json={})
            assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0
            assert set(refused.json()) == {"detail"} and "already has 2 streaming sessions" in refused.json()["detail"]
            # another API key is another client
            assert client.post("/api/infer_stream_init", json={}, headers={"X-API-Key": "other"}).status_code == 200
            client.delete(f"/api/infer_stream_close/{opened[0]}")
            assert client.post("/api/infer_stream_init", json={}).status_code == 200
    finally:
        frontend.stop()

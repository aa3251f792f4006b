"""The documents' own client code against this stack: the LAM-A2E microphone scenario (raw PCM chunks, with
``requests``), the documented ports (one front end in documented-ports mode, on free ports standing in for
8000/8001/7887/7889), and the documented SDK imports (``emotion_llama``, ``emo_hallo.client``) plus the LAM client."""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import pytest
import requests

from emoserve.constants import ARKIT_BLENDSHAPE_NAMES, NUM_BLENDSHAPES, SAMPLE_RATE
from emoserve.emotion_llama.prompts import EMOTION_LABELS
from frontend.config import DOCUMENTED_PORT_NUMBERS
from tests.conftest import EXAMPLES, FrontendProcess, free_port, speech_like
from tests.integration.test_rest_api import EYE_BLINKS, wav_bytes, weights_of

SAMPLE_VIDEO = EXAMPLES / "sample_emotion.mp4"
OTHER_CHANNELS = [i for i in range(NUM_BLENDSHAPES) if i not in EYE_BLINKS]  # blinks are seeded per session


@pytest.fixture(scope="module")
def ports() -> dict[str, int]:
    return {name: free_port() for name in DOCUMENTED_PORT_NUMBERS}


@pytest.fixture(scope="module")
def documented(triton_server, media_root, ports):
    """A front end in documented-ports mode (each API also on its own port); one streaming session at a time."""
    env = {"EMOSERVE_DOCUMENTED_PORTS": "true", "EMOSERVE_DOCUMENTED_PORT_NUMBERS": json.dumps(ports),
           "EMOSERVE_LAM_A2E__MAX_SESSIONS": "1",
           "EMOSERVE_EMOTION_LLAMA__MEDIA_ROOTS": json.dumps([str(EXAMPLES), str(media_root)])}
    process = FrontendProcess(triton_server.grpc_url, env).start()
    yield process
    process.stop()


def url(ports: dict[str, int], server: str) -> str:
    return f"http://localhost:{ports[server]}"


def microphone(seconds: int, seed: int) -> list[bytes]:
    """What ``stream.read(16000)`` of the document's pyaudio stream (paInt16, mono, 16 kHz) returns, second by second."""
    samples = (speech_like(float(seconds), seed=seed) * 20000).astype(np.int16)
    return [samples[i : i + SAMPLE_RATE].tobytes() for i in range(0, samples.size, SAMPLE_RATE)]


def test_the_lam_documents_microphone_scenario_byte_for_byte(documented, ports):
    base = url(ports, "lam_a2e")
    # -- the document's code, with the microphone replaced by numpy-made int16 frames --
    session = requests.post(f"{base}/api/infer_stream_init", json={"id_idx": 0}).json()
    session_id = session["session_id"]
    responses = []
    try:
        for audio_data in microphone(3, seed=21):
            files = {"audio_chunk": ("chunk.wav", audio_data)}
            data = {"session_id": session_id}
            response = requests.post(f"{base}/api/infer_stream_chunk", files=files, data=data)
            blendshapes = response.json()
            responses.append((response.status_code, blendshapes))
    finally:
        closed = requests.delete(f"{base}/api/infer_stream_close/{session_id}")
    # -- the checks --
    assert closed.status_code == 200
    assert [status for status, _ in responses] == [200, 200, 200], responses
    assert [body["metadata"]["chunk_index"] for _, body in responses] == [1, 2, 3]
    assert all(body["names"] == list(ARKIT_BLENDSHAPE_NAMES) and len(body["frames"]) == 30 for _, body in responses)

    # the same samples as WAV chunks give the same frames
    with httpx.Client(base_url=base, timeout=120) as api:
        wav_session = api.post("/api/infer_stream_init", json={"id_idx": 0}).json()["session_id"]
        as_wav = []
        for audio_data in microphone(3, seed=21):
            samples = np.frombuffer(audio_data, "<i2").astype(np.float32) / 32768
            answer = api.post("/api/infer_stream_chunk", data={"session_id": wav_session},
                              files={"audio_chunk": ("chunk.wav", wav_bytes(samples))})
            as_wav.append(weights_of(answer.json()))
        api.delete(f"/api/infer_stream_close/{wav_session}")
    raw = np.concatenate([weights_of(body) for _, body in responses])
    np.testing.assert_array_equal(raw[:, OTHER_CHANNELS], np.concatenate(as_wav)[:, OTHER_CHANNELS])


def test_whole_file_raw_pcm_and_declared_layouts(api):
    samples = speech_like(2.0, seed=22)
    as_wav = api.post("/api/infer", files={"audio_file": ("a.wav", wav_bytes(samples))}).json()
    s16 = (np.clip(samples, -1, 1) * 32767).astype(np.int16)
    wav16 = api.post("/api/infer", files={"audio_file": ("a.wav", wav_bytes(s16 / np.float32(32768)))}).json()
    raw16 = api.post("/api/infer", files={"audio_file": ("a.pcm", s16.tobytes())}).json()
    assert weights_of(raw16).shape == (60, NUM_BLENDSHAPES)
    np.testing.assert_array_equal(weights_of(raw16), weights_of(wav16))
    # float32 stereo at 48 kHz, declared in the form: the same speech as the 16 kHz WAV, resampled
    from scipy.signal import resample_poly

    at_48k = resample_poly(samples, 3, 1).astype("<f4")
    stereo = np.stack([at_48k, at_48k], axis=1)
    declared = api.post("/api/infer", files={"audio_file": ("a.raw", stereo.tobytes())},
                        data={"encoding": "f32le", "sample_rate": "48000", "channels": "2"})
    assert declared.status_code == 200, declared.text
    assert np.abs(weights_of(declared.json()) - weights_of(as_wav)).mean() < 0.02


def test_raw_pcm_mistakes_are_clear_400s(api):
    session_id = api.post("/api/infer_stream_init", json={}).json()["session_id"]
    try:
        def chunk(data: bytes, **fields) -> httpx.Response:
            return api.post("/api/infer_stream_chunk", data={"session_id": session_id, **fields},
                            files={"audio_chunk": ("chunk.wav", data)})

        odd = chunk(b"\x01" * 16001)
        assert odd.status_code == 400
        assert "16001 bytes of raw PCM" in odd.json()["detail"] and "s16le, 16000 Hz, mono" in odd.json()["detail"]
        assert "sample_rate/encoding/channels" in odd.json()["detail"]  # says how to declare another layout
        assert chunk(b"").status_code == 400 and "empty" in chunk(b"").json()["detail"]
        stereo_odd = chunk(b"\x00" * 16002, channels="2")
        assert stereo_odd.status_code == 400 and "4-byte sample frames" in stereo_odd.json()["detail"]
        conflicting = chunk(wav_bytes(speech_like(1.0, seed=23)), sample_rate="8000")
        assert conflicting.status_code == 400 and "WAV file" in conflicting.json()["detail"]
        unknown = chunk(b"\x00" * 3200, encoding="s24le")
        assert unknown.status_code == 400 and "encoding" in unknown.json()["detail"]
        slow = chunk(b"\x00" * 3200, sample_rate="100")
        assert slow.status_code == 400 and "sample_rate" in slow.json()["detail"]
        # the session survived every refusal
        assert chunk(microphone(1, seed=24)[0]).status_code == 200
    finally:
        api.delete(f"/api/infer_stream_close/{session_id}")


def test_each_documented_port_serves_only_its_api(documented, ports):
    def get(server: str, path: str) -> httpx.Response:
        return httpx.get(url(ports, server) + path, timeout=30)

    assert get("lam_a2e", "/").json()["service"] == "LAM-A2E API"
    assert get("lam_a2e", "/api/health").status_code == 200
    assert get("hallo2", "/api/v1/health").status_code == 200 and get("hallo2", "/health").status_code == 200
    refused = [("lam_a2e", "/api/v1/tasks"), ("hallo2", "/"), ("hallo2", "/api/health"), ("emotion_llama_gradio", "/process_video"),
               ("emotion_llama_fastapi", "/api/predict/"), ("emotion_llama_fastapi", "/api/health"), ("lam_a2e", "/metrics")]
    for server, path in refused:
        assert get(server, path).status_code == 404, (server, path)
    # each 404 in that API's error format
    assert set(get("hallo2", "/").json()) == {"detail", "error_code"}
    assert set(get("emotion_llama_gradio", "/process_video").json()) == {"error", "code", "details"}
    for server, expected in (("lam_a2e", "/api/infer"), ("hallo2", "/api/v1/tasks/{task_id}"),
                             ("emotion_llama_gradio", "/api/predict/"), ("emotion_llama_fastapi", "/process_video")):
        assert get(server, "/docs").status_code == 200
        paths = set(get(server, "/openapi.json").json()["paths"])
        assert expected in paths and "/livez" not in paths, (server, paths)
    assert set(get("emotion_llama_gradio", "/openapi.json").json()["paths"]) == {"/api/predict/"}
    # the main port still serves everything
    assert httpx.get(documented.base_url + "/api/v1/health").status_code == 200
    assert httpx.get(documented.base_url + "/").json()["service"] == "LAM-A2E API"


def test_documented_sdk_imports_on_the_documented_ports(documented, ports, tmp_path):
    from emo_hallo.client import Hallo2Client
    from emotion_llama import EmotionLLaMA
    from tests.integration.test_hallo2 import portrait_png

    # the overview's example, against the Gradio port; a relative path is relative to the first media root
    client = EmotionLLaMA(api_url=url(ports, "emotion_llama_gradio"))
    result = client.analyze(video_path=SAMPLE_VIDEO.name, task="emotion", max_new_tokens=8, temperature=0)
    assert result.emotion in EMOTION_LABELS and 0 <= result.confidence <= 1 and result.explanation
    assert set(result.label_probs) == set(EMOTION_LABELS) and result.metadata["weights"]
    absolute = client.analyze(video_path=str(SAMPLE_VIDEO), task="emotion", max_new_tokens=8, temperature=0)
    assert (absolute.explanation, absolute.emotion) == (result.explanation, result.emotion)
    streamed = EmotionLLaMA(url(ports, "emotion_llama_fastapi")).stream(SAMPLE_VIDEO.name, "[reason] Why?", max_new_tokens=6,
                                                                       temperature=0)
    assert "".join(streamed)

    # the Hallo2 document's example, against the Hallo2 port
    (tmp_path / "person.png").write_bytes(portrait_png())
    (tmp_path / "speech.wav").write_bytes(wav_bytes(speech_like(1.0, seed=25)))
    hallo = Hallo2Client(base_url=url(ports, "hallo2"))
    task_id = hallo.inference(image_path=tmp_path / "person.png", audio_path=tmp_path / "speech.wav", use_cache=True)
    output = hallo.wait_and_download(task_id, output_path=tmp_path / "output.mp4", poll_s=0.5, timeout_s=300, progress=False)
    assert output.read_bytes()[4:8] == b"ftyp"


def test_lam_client_sync_and_async(documented, ports, example_wav):
    from sdk.lam_a2e import AsyncLamA2EClient, LamA2EClient

    base = url(ports, "lam_a2e")
    frames = microphone(3, seed=26)
    with LamA2EClient(base) as client:
        whole = client.infer(example_wav)
        assert whole.frames.shape[1] == NUM_BLENDSHAPES and whole.names == list(ARKIT_BLENDSHAPE_NAMES)
        assert client.infer(np.frombuffer(b"".join(frames), np.int16)).frames.shape == (90, NUM_BLENDSHAPES)
        with client.stream(id_idx=1) as session:
            from_bytes = list(session.feed(b"".join(frames)))  # PCM bytes, cut into 1 s chunks
            assert [chunk.metadata["chunk_index"] for chunk in from_bytes] == [1, 2, 3]
            assert [chunk.start_time for chunk in from_bytes] == [0.0, 1.0, 2.0]
        assert client.health()["sessions"] == 0  # the context manager closed it
        with client.stream(id_idx=1) as session:
            from_arrays = [session.send(np.frombuffer(frame, np.int16)) for frame in frames]
        from_file = None
        with client.stream() as session:
            from_file = list(session.feed(example_wav, chunk_seconds=1.0))
        assert len(from_file) >= 2
    sync_frames = np.concatenate([c.frames for c in from_bytes])
    np.testing.assert_array_equal(sync_frames[:, OTHER_CHANNELS], np.concatenate([c.frames for c in from_arrays])[:, OTHER_CHANNELS])

    async def run() -> np.ndarray:
        async def live():  # an async source, e.g. a microphone callback's queue
            for frame in frames:
                yield frame
                await asyncio.sleep(0)

        async with AsyncLamA2EClient(base) as client, client.stream(id_idx=1) as session:
            return np.concatenate([chunk.frames async for chunk in session.feed(live())])

    np.testing.assert_array_equal(asyncio.run(run())[:, OTHER_CHANNELS], sync_frames[:, OTHER_CHANNELS])


def test_lam_client_waits_out_a_503_as_retry_after_says(documented, ports):
    import threading
    import time

    from sdk.lam_a2e import LamA2EClient, LamA2EError

    with LamA2EClient(url(ports, "lam_a2e")) as client:
        holder = client.stream()  # the front end takes one session (EMOSERVE_LAM_A2E__MAX_SESSIONS=1)
        with pytest.raises(LamA2EError) as error:
            LamA2EClient(url(ports, "lam_a2e"), retries=0).stream()
        assert error.value.status_code == 503
        threading.Timer(1.0, holder.close).start()
        started = time.monotonic()
        with client.stream() as session:  # 503 (Retry-After: 5), waits, and the retry gets the freed slot
            assert session.send(microphone(1, seed=27)[0]).frames.shape == (30, NUM_BLENDSHAPES)
        assert time.monotonic() - started >= 4.5

"""Shared fixtures: a tiny-profile model repository, a REAL tritonserver, a REAL front-end process.

Nothing here fakes Triton: integration tests talk to the bundled tritonserver over HTTP/gRPC, and to
the front end over HTTP on loopback.
"""

from __future__ import annotations

import io
import json
import struct
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from stack.processes import FrontendProcess, free_port  # noqa: F401  (re-exported for tests)
from tests.postgres import postgres  # noqa: F401  (the throwaway PostgreSQL cluster fixture)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = PROJECT_ROOT / "examples"


def speech_like(seconds: float, seed: int = 0, sample_rate: int = 16000, with_pauses: bool = True) -> np.ndarray:
    """Voiced, syllable-modulated test audio with pauses (deterministic)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    pitch = 120 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / sample_rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 8))
    syllables = np.clip(np.sin(2 * np.pi * 3.3 * t + rng.uniform(0, 6)), 0, None) ** 2
    pauses = (np.sin(2 * np.pi * 0.25 * t) > -0.6).astype(float) if with_pauses else 1.0
    audio = 0.25 * voiced * syllables * pauses + 0.005 * rng.standard_normal(t.size)
    return audio.astype(np.float32)


# hostile media: tiny files whose headers promise what a server must not decode
def wav_with_header(sample_rate: int, channels: int = 1, samples: int = 1000) -> bytes:
    """A valid 16-bit PCM WAV whose header says ``sample_rate``/``channels`` (2 KB for 1000 samples)."""
    data = np.zeros(samples * channels, np.int16).tobytes()
    fmt = struct.pack("<HHIIHH", 1, channels, sample_rate, sample_rate * channels * 2, channels * 2, 16)
    return (b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt
            + b"data" + struct.pack("<I", len(data)) + data)


def silent_flac(seconds: float, sample_rate: int = 16000) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(int(seconds * sample_rate), np.float32), sample_rate, format="FLAC")
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` (its pixel data would be hundreds of MB: it is never read)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda kind, body: struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))  # noqa: E731
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 4096)) + chunk(b"IEND", b"")


def wait_until(predicate, timeout_s: float, what: str):
    """``predicate()``'s first truthy value, polled every 0.2 s; AssertionError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what} not within {timeout_s:.0f}s")


@pytest.fixture(scope="session", autouse=True)
def hallo2_task_database(tmp_path_factory):
    """Front ends started by the tests keep their Hallo2 tasks in a throwaway database, not in ./data."""
    import os

    folder = tmp_path_factory.mktemp("hallo2_default")
    saved = {key: os.environ.get(key) for key in ("EMOSERVE_HALLO2__DATABASE_URL", "EMOSERVE_HALLO2__DATA_DIR")}
    os.environ["EMOSERVE_HALLO2__DATABASE_URL"] = f"sqlite:///{folder / 'tasks.db'}"
    os.environ["EMOSERVE_HALLO2__DATA_DIR"] = str(folder / "tasks")
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def tiny_repository(tmp_path_factory) -> Path:
    from export.build_repository import BuildSettings, build_repository

    out = tmp_path_factory.mktemp("model_repository")
    build_repository(out, BuildSettings(profile="tiny", seed=0, llm="tiny", encoder_profile="tiny"))
    return out


@pytest.fixture(scope="session")
def triton_server(tiny_repository):
    from stack.triton_server import TritonServer, TritonServerOptions

    options = TritonServerOptions(tiny_repository, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
    server = TritonServer(options)
    server.start()
    yield server
    server.stop()
    print(server.log_tail(20))


@pytest.fixture(scope="session")
def media_root(tmp_path_factory) -> Path:
    """A second media root for the front end, where tests put the files they make."""
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def frontend(triton_server, media_root):
    env = {
        "EMOSERVE_LAM_A2E__MAX_UPLOAD_BYTES": str(4 * 1024 * 1024),
        "EMOSERVE_EMOTION_LLAMA__MEDIA_ROOTS": json.dumps([str(EXAMPLES), str(media_root)]),
    }
    process = FrontendProcess(triton_server.grpc_url, env).start()
    yield process
    process.stop()


@pytest.fixture()
def api(frontend):
    with httpx.Client(base_url=frontend.base_url, timeout=120) as client:
        yield client


@pytest.fixture(scope="session")
def example_wav() -> Path:
    path = EXAMPLES / "speech.wav"
    assert path.is_file(), "examples/speech.wav is part of the repository"
    return path

"""Client of the LAM-A2E API (``lam-a2e-api.zh.md``): whole-file inference and streaming sessions, sync and asyncio.

    from sdk.lam_a2e import LamA2EClient
    with LamA2EClient("http://127.0.0.1:8000") as client:
        result = client.infer("speech.wav")                 # result.frames: [frames, 52] at 30 fps
        with client.stream(id_idx=0) as session:            # the session is closed on leaving the block
            for chunk in session.feed(microphone_frames):   # numpy arrays, PCM bytes or files
                render(chunk.frames)

Audio may be a file path, the bytes of an audio file, bare PCM bytes (s16le, 16 kHz, mono: what a microphone
gives; another layout with ``encoding``/``sample_rate``/``channels``), or a numpy array (``[samples]`` or
``[samples, channels]``, float or int16, at ``sample_rate``). An answer 503 with ``Retry-After`` (the server or a
model is restarting, a queue is full) is retried ``retries`` times after the time it names.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from emoserve.audio import DOCUMENTED_PCM, RawPcm
from emoserve.constants import SAMPLE_RATE

MAX_RETRY_AFTER_S = 30.0  # a server asking for longer is not waited for


class LamA2EError(RuntimeError):
    def __init__(self, status_code: int, message: str):
        super().__init__(f"{status_code}: {message}")
        self.status_code, self.message = status_code, message


@dataclass
class BlendshapeResult:
    names: list[str]
    frames: np.ndarray  # [frames, 52] float32
    times: np.ndarray  # seconds of each frame from the start of this answer
    metadata: dict = field(default_factory=dict)

    @property
    def start_time(self) -> float:
        """A streaming chunk's first frame on the session's clock (0 for a whole file)."""
        return float(self.metadata.get("start_time", 0.0))


def _result(body: dict) -> BlendshapeResult:
    frames = np.asarray([frame["weights"] for frame in body["frames"]], dtype=np.float32).reshape(-1, len(body["names"]))
    times = np.asarray([frame["time"] for frame in body["frames"]], dtype=np.float64)
    return BlendshapeResult(body["names"], frames, times, body["metadata"])


def _checked(response: httpx.Response) -> dict:
    try:
        body = response.json()
    except ValueError:
        body = {}
    if response.status_code != 200:
        raise LamA2EError(response.status_code, body.get("detail") or response.text)
    return body


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds to wait before a retry, None when the answer is not one to retry."""
    if response.status_code != 503:
        return None
    try:
        return min(float(response.headers.get("Retry-After", "1")), MAX_RETRY_AFTER_S)
    except ValueError:
        return 1.0


def audio_part(audio, sample_rate: int = SAMPLE_RATE, pcm: RawPcm | None = None) -> tuple[tuple[str, bytes], dict[str, str]]:
    """The multipart file and the raw-PCM form fields for ``audio`` (see the module docstring)."""
    if isinstance(audio, (str, Path)):
        return (Path(audio).name, Path(audio).read_bytes()), {}
    if isinstance(audio, (bytes, bytearray, memoryview)):
        fields = {} if pcm is None else {"encoding": pcm.encoding, "sample_rate": str(pcm.sample_rate), "channels": str(pcm.channels)}
        return ("audio.pcm", bytes(audio)), fields
    array = np.asarray(audio)
    channels = 1 if array.ndim == 1 else array.shape[1]
    if array.dtype == np.int16:
        data, encoding = array.astype("<i2").tobytes(), "s16le"
    else:
        data, encoding = array.astype("<f4").tobytes(), "f32le"
    return ("audio.pcm", data), {"encoding": encoding, "sample_rate": str(sample_rate), "channels": str(channels)}


def chunks_of(source, chunk_seconds: float, sample_rate: int = SAMPLE_RATE) -> Iterator:
    """``source`` cut into chunks of about ``chunk_seconds``: an iterable of chunks is passed on as it is; one
    array, PCM bytes (the documented s16le 16 kHz mono) or an audio file (read with soundfile) is cut."""
    if isinstance(source, (str, Path)):
        import soundfile as sf

        source, sample_rate = sf.read(str(source), dtype="float32", always_2d=False)
    if isinstance(source, (bytes, bytearray, memoryview)):
        step = int(chunk_seconds * DOCUMENTED_PCM.sample_rate) * 2
        yield from (bytes(source[i : i + step]) for i in range(0, len(source), step))
        return
    if isinstance(source, np.ndarray):
        step = int(chunk_seconds * sample_rate)
        yield from (source[i : i + step] for i in range(0, len(source), step))
        return
    yield from source


def _infer_request(audio, id_idx: int, ex_vol: bool, movement_smooth: bool, brow_movement: bool, sample_rate: int,
                   pcm: RawPcm | None) -> dict:
    part, fields = audio_part(audio, sample_rate, pcm)
    options = {"id_idx": str(id_idx), "ex_vol": str(ex_vol).lower(), "movement_smooth": str(movement_smooth).lower(),
               "brow_movement": str(brow_movement).lower()}
    return {"files": {"audio_file": part}, "data": {**options, **fields}}


def _init_request(id_idx: int, movement_smooth: bool, brow_movement: bool) -> dict:
    return {"json": {"id_idx": id_idx, "movement_smooth": movement_smooth, "brow_movement": brow_movement}}


class _Session:
    def __init__(self, session_id: str, id_idx: int, sample_rate: int):
        self.session_id, self.id_idx, self.sample_rate = session_id, id_idx, sample_rate
        self.closed = False

    def _chunk_request(self, audio, pcm: RawPcm | None) -> dict:
        part, fields = audio_part(audio, self.sample_rate, pcm)
        return {"files": {"audio_chunk": part}, "data": {"session_id": self.session_id, **fields}}


class StreamSession(_Session):
    """One streaming session; ``send`` posts a chunk, ``feed`` posts many and yields each answer as it comes."""

    def __init__(self, client: LamA2EClient, session_id: str, id_idx: int, sample_rate: int):
        super().__init__(session_id, id_idx, sample_rate)
        self._client = client

    def send(self, audio, pcm: RawPcm | None = None) -> BlendshapeResult:
        return _result(self._client._post("/api/infer_stream_chunk", **self._chunk_request(audio, pcm)))

    def feed(self, source, chunk_seconds: float = 1.0) -> Iterator[BlendshapeResult]:
        for chunk in chunks_of(source, chunk_seconds, self.sample_rate):
            yield self.send(chunk)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._client._request("DELETE", f"/api/infer_stream_close/{self.session_id}", missing_ok=True)

    def __enter__(self) -> StreamSession:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class LamA2EClient:
    def __init__(self, base_url: str, api_key: str | None = None, timeout_s: float = 120.0, retries: int = 3,
                 client: httpx.Client | None = None):
        headers = {"X-API-Key": api_key} if api_key else {}
        self._owns_client = client is None
        self._client = client or httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout_s)
        self.retries = retries

    def _request(self, method: str, path: str, missing_ok: bool = False, **kwargs) -> dict:
        for attempt in range(self.retries + 1):
            response = self._client.request(method, path, **kwargs)
            wait = _retry_after(response)
            if wait is None or attempt == self.retries:
                break
            time.sleep(wait)
        if missing_ok and response.status_code == 404:
            return {}
        return _checked(response)

    def _post(self, path: str, **kwargs) -> dict:
        return self._request("POST", path, **kwargs)

    def health(self) -> dict:
        return self._request("GET", "/api/health")

    def infer(self, audio, id_idx: int = 0, ex_vol: bool = False, movement_smooth: bool = False, brow_movement: bool = False,
              sample_rate: int = SAMPLE_RATE, pcm: RawPcm | None = None) -> BlendshapeResult:
        return _result(self._post("/api/infer", **_infer_request(audio, id_idx, ex_vol, movement_smooth, brow_movement, sample_rate, pcm)))

    def stream(self, id_idx: int = 0, movement_smooth: bool = True, brow_movement: bool = False,
               sample_rate: int = SAMPLE_RATE) -> StreamSession:
        """A new session (close it, or use it as a context manager); ``sample_rate`` is that of arrays sent to it."""
        body = self._post("/api/infer_stream_init", **_init_request(id_idx, movement_smooth, brow_movement))
        return StreamSession(self, body["session_id"], body["id_idx"], sample_rate)

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> LamA2EClient:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class AsyncStreamSession(_Session):
    def __init__(self, client: AsyncLamA2EClient, init_request: dict, sample_rate: int):
        super().__init__("", init_request["json"]["id_idx"], sample_rate)
        self._client, self._init_request = client, init_request

    async def open(self) -> AsyncStreamSession:
        body = await self._client._request("POST", "/api/infer_stream_init", **self._init_request)
        self.session_id, self.id_idx = body["session_id"], body["id_idx"]
        return self

    async def send(self, audio, pcm: RawPcm | None = None) -> BlendshapeResult:
        return _result(await self._client._request("POST", "/api/infer_stream_chunk", **self._chunk_request(audio, pcm)))

    async def feed(self, source, chunk_seconds: float = 1.0) -> AsyncIterator[BlendshapeResult]:
        """Chunks from an array, bytes, a file, an iterable or an async iterable (e.g. a live microphone queue)."""
        if hasattr(source, "__aiter__"):
            async for chunk in source:
                yield await self.send(chunk)
            return
        for chunk in chunks_of(source, chunk_seconds, self.sample_rate):
            yield await self.send(chunk)

    async def close(self) -> None:
        if self.session_id and not self.closed:
            self.closed = True
            await self._client._request("DELETE", f"/api/infer_stream_close/{self.session_id}", missing_ok=True)

    async def __aenter__(self) -> AsyncStreamSession:
        return await self.open()

    async def __aexit__(self, *exc_info) -> None:
        await self.close()


class AsyncLamA2EClient:
    def __init__(self, base_url: str, api_key: str | None = None, timeout_s: float = 120.0, retries: int = 3,
                 client: httpx.AsyncClient | None = None):
        headers = {"X-API-Key": api_key} if api_key else {}
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout_s)
        self.retries = retries

    async def _request(self, method: str, path: str, missing_ok: bool = False, **kwargs) -> dict:
        for attempt in range(self.retries + 1):
            response = await self._client.request(method, path, **kwargs)
            wait = _retry_after(response)
            if wait is None or attempt == self.retries:
                break
            await asyncio.sleep(wait)
        if missing_ok and response.status_code == 404:
            return {}
        return _checked(response)

    async def infer(self, audio, id_idx: int = 0, ex_vol: bool = False, movement_smooth: bool = False,
                    brow_movement: bool = False, sample_rate: int = SAMPLE_RATE, pcm: RawPcm | None = None) -> BlendshapeResult:
        request = _infer_request(audio, id_idx, ex_vol, movement_smooth, brow_movement, sample_rate, pcm)
        return _result(await self._request("POST", "/api/infer", **request))

    def stream(self, id_idx: int = 0, movement_smooth: bool = True, brow_movement: bool = False,
               sample_rate: int = SAMPLE_RATE) -> AsyncStreamSession:
        """``async with client.stream() as session:`` opens the session on entry and closes it on exit."""
        return AsyncStreamSession(self, _init_request(id_idx, movement_smooth, brow_movement), sample_rate)

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> AsyncLamA2EClient:
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.aclose()


__all__ = ["AsyncLamA2EClient", "AsyncStreamSession", "BlendshapeResult", "LamA2EClient", "LamA2EError", "StreamSession",
           "audio_part", "chunks_of"]

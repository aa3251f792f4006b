"""REST load generator: front-end overhead as REST / Triton-direct per scenario, plus what only served requests
show — LAM-A2E real-time capacity, Emotion-LLaMA time to first token and tokens/s, Hallo2 seconds per denoising step.

    python -m benchmarks.rest_load --quick       # tiny models, concurrency 1 and 2, <= 8 requests per level: ~3-4 min
    python -m benchmarks.rest_load               # full A2E, SmolLM2 + small encoders, concurrency 1 and 4: ~12 min

One async closed-loop generator (:func:`run_load`) drives both paths of four scenarios with the same inputs and
concurrency: ``POST /api/infer`` vs ``lam_a2e_offline``; A2E streaming sessions vs one ``lam_a2e_stream`` sequence
per session (plus an in-process reference and a paced real-time capacity ladder); ``sdk.EmotionLLaMA.stream`` vs
the ``emotion_llama`` gRPC stream; ``sdk.Hallo2Client`` tasks vs the ``hallo2`` gRPC stream. REST goes through the
project's SDK where it has a client (in worker threads) and httpx for the LAM-A2E routes; Triton-direct through the
front end's own engines (``frontend.*.engine``), so the ratio isolates what the front end adds. It builds (or
re-uses) ``benchmarks/.work/repo-rest-<variant>``, starts its own tritonserver and front end on free loopback
ports (stopped in ``finally``) and refuses any URL whose host is not loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import dataclasses
import datetime as _dt
import ipaddress
import itertools
import json
import logging
import math
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from benchmarks import common as c
from benchmarks.common import LatencyStats, ms, ratio

log = logging.getLogger("rest_load")

CHUNK_SECONDS = 1.0
REALTIME_P99_LIMIT_S = 1.0  # capacity criterion: p99 chunk latency below the chunk duration
HALLO2_AUDIO_SECONDS = 1.0
HALLO2_GUIDANCE_SCALE = 3.5  # upstream's default
HALLO2_POLL_INTERVAL_S = 0.05  # only against a front end without the task event stream (the SDK then polls)
# as many tasks in flight as the deepest level sends, so both paths keep the same number of requests at Triton (its one
# `hallo2` instance runs them one at a time either way); the default, 1, queues them in the front end instead, which
# measures the queue's policy, not the front end's overhead
HALLO2_MAX_CONCURRENT_TASKS = 4
GREEDY_SEED = 0
CLEANUP_TIMEOUT_S = 5.0  # closing a session / cancelling a task left behind by a failed or timed-out request
STEP_RE = re.compile(r"clip (\d+)/(\d+) step (\d+)/(\d+)")
NAN = float("nan")


# --------------------------------------------------------------------------------------------- loopback guard


class NotLoopbackError(ValueError):
    """A URL whose host is not this machine: the load generator never sends traffic elsewhere."""


def require_loopback(url: str) -> str:
    """``url`` unchanged when its host is loopback (127.0.0.0/8, ::1, localhost), else :class:`NotLoopbackError`.
    Accepts ``http://host:port/...`` as well as gRPC's bare ``host:port``."""
    try:
        host = urlsplit(url if "://" in url else f"//{url}").hostname
    except ValueError:
        host = None
    try:
        loopback = bool(host) and (host.lower() == "localhost" or ipaddress.ip_address(host).is_loopback)
    except ValueError:
        loopback = False
    if not loopback:
        raise NotLoopbackError(f"refusing {url!r}: its host {host!r} is not loopback (127.0.0.1, ::1 or localhost); "
                               "this load generator only targets servers on this machine")
    return url


def loopback_http_client(base_url: str, connections: int, timeout_s: float, sync: bool = False):
    """An httpx client (``AsyncClient``, or ``Client`` with ``sync``) that checks every request's URL (an absolute
    URL could otherwise leave ``base_url``) and ignores proxy settings (they must not carry loopback traffic away)."""
    import httpx

    require_loopback(base_url)

    def check(request: httpx.Request) -> None:
        require_loopback(str(request.url))

    async def check_async(request: httpx.Request) -> None:
        check(request)

    key = os.environ.get("EMOSERVE_API_KEY")
    return (httpx.Client if sync else httpx.AsyncClient)(
        base_url=base_url, headers={"X-API-Key": key} if key else {}, trust_env=False,
        timeout=httpx.Timeout(timeout_s, connect=10.0), event_hooks={"request": [check if sync else check_async]},
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections))


# --------------------------------------------------------------------------------------------- load generator


@dataclass
class LoadResult:
    """One path at one concurrency. ``stats`` holds the successful requests' latencies, the errors and the wall time."""

    concurrency: int
    max_requests: int
    max_seconds: float
    stats: LatencyStats = field(default_factory=LatencyStats)
    values: list[Any] = field(default_factory=list)  # what each successful call returned, in completion order
    started: int = 0
    peak_in_flight: int = 0
    stopped_by: str = ""  # "count" or "time"
    warmup_errors: list[str] = field(default_factory=list)
    skipped: str = ""  # why the level was not run

    @property
    def completed(self) -> int:
        return self.stats.n

    @property
    def errors(self) -> list[str]:
        return self.stats.errors

    @property
    def throughput(self) -> float:
        """Successful requests per second of wall time (first request sent to last one answered)."""
        return self.stats.n / self.stats.wall_s if self.stats.wall_s > 0 else NAN


def describe_error(exc: BaseException, timeout_s: float) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return f"TimeoutError: no answer within {timeout_s:g} s"
    return f"{type(exc).__name__}: {exc}"[:300]


async def _drive(call: Callable[[], Awaitable[Any]], concurrency: int, max_requests: int, max_seconds: float,
                 request_timeout_s: float, result: LoadResult) -> None:
    """``concurrency`` closed-loop workers: none starts a request once ``max_requests`` were started or
    ``max_seconds`` have passed; requests already in flight finish (each within its own timeout)."""
    in_flight = 0
    started_at = time.perf_counter()

    async def worker() -> None:
        nonlocal in_flight
        while result.started < max_requests and time.perf_counter() < started_at + max_seconds:
            result.started += 1
            in_flight += 1
            result.peak_in_flight = max(result.peak_in_flight, in_flight)
            began = time.perf_counter()
            try:
                value = await asyncio.wait_for(call(), timeout=request_timeout_s)
            except Exception as exc:  # noqa: BLE001 - counted and reported; CancelledError still propagates
                result.stats.errors.append(describe_error(exc, request_timeout_s))
            else:
                result.stats.samples.append(time.perf_counter() - began)
                result.values.append(value)
            finally:
                in_flight -= 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.stats.wall_s = time.perf_counter() - started_at
    result.stopped_by = "count" if result.started >= max_requests else "time"


def merged(parts: list[LoadResult]) -> LoadResult:
    """One path's blocks of a level as one result: every sample, error and value; the blocks' wall times added."""
    first, result = parts[0], LoadResult(parts[0].concurrency, sum(p.max_requests for p in parts),
                                         sum(p.max_seconds for p in parts))
    for part in parts:
        result.stats.samples += part.stats.samples
        result.stats.errors += part.stats.errors
        result.stats.wall_s += part.stats.wall_s
        result.values += part.values
        result.started += part.started
        result.peak_in_flight = max(result.peak_in_flight, part.peak_in_flight)
    result.warmup_errors = first.warmup_errors
    result.stopped_by = "time" if any(p.stopped_by == "time" for p in parts) else "count"
    return result


async def run_load(call: Callable[[], Awaitable[Any]], concurrency: int, max_requests: int, max_seconds: float, *,
                   request_timeout_s: float = 60.0, warmup_requests: int = 0) -> LoadResult:
    """Closed-loop load: ``concurrency`` workers each send a request as soon as their previous one is answered.

    Stops at whichever bound comes first, ``max_requests`` started or ``max_seconds`` elapsed (in-flight
    requests finish). ``warmup_requests`` are sent first at the same concurrency (bounded by
    ``request_timeout_s`` in all) and not recorded, except their errors in ``warmup_errors``.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    if max_requests < 1 or max_seconds <= 0 or request_timeout_s <= 0:
        raise ValueError("max_requests, max_seconds and request_timeout_s must be positive")
    warm = LoadResult(concurrency, warmup_requests, request_timeout_s)
    if warmup_requests > 0:
        await _drive(call, min(concurrency, warmup_requests), warmup_requests, request_timeout_s, request_timeout_s, warm)
    result = LoadResult(concurrency, max_requests, max_seconds, warmup_errors=warm.errors)
    await _drive(call, concurrency, max_requests, max_seconds, request_timeout_s, result)
    return result


# --------------------------------------------------------------------------------------------- figures


def cell(text: str) -> str:
    """Free text (an error message) made safe for a markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def fmt(value: float, digits: int = 2) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def overhead_ratios(rest: LoadResult, triton: LoadResult) -> tuple[str, str, str]:
    """(p50 REST/Triton, p99 REST/Triton, throughput Triton/REST): each > 1x when the front end costs something."""
    return (ratio(rest.stats.p(50), triton.stats.p(50)), ratio(rest.stats.p(99), triton.stats.p(99)),
            ratio(triton.throughput, rest.throughput))


def load_row(path: str, result: LoadResult) -> list[str]:
    """A scenario table row: path, concurrency, requests, errors, req/s, p50/p95/p99/mean/max ms, bound."""
    if result.skipped:
        return [path, str(result.concurrency), "-", "-", "-", "-", "-", "-", "-", "-", cell(f"skipped: {result.skipped}")]
    s = result.stats
    requests = f"{s.n} of {result.started}" if s.n != result.started else str(s.n)
    return [path, str(result.concurrency), requests, str(len(s.errors)), fmt(result.throughput), ms(s.p(50)), ms(s.p(95)),
            ms(s.p(99)), ms(s.mean), ms(s.max), f"{result.stopped_by} ({result.max_requests} / {result.max_seconds:.0f} s)"]


LOAD_HEADER = ["path", "concurrency", "requests", "errors", "req/s", "p50 ms", "p95 ms", "p99 ms", "mean ms", "max ms",
               "stopped by (count / time bound)"]


def chunk_result(session_result: LoadResult) -> LoadResult:
    """Per-chunk figures of a streaming run: every successful session returned its chunks' latencies."""
    chunks = LoadResult(session_result.concurrency, session_result.max_requests, session_result.max_seconds,
                        skipped=session_result.skipped, started=session_result.started, stopped_by=session_result.stopped_by)
    chunks.stats.samples = [latency for value in session_result.values for latency in value]
    chunks.stats.wall_s = session_result.stats.wall_s
    return chunks


def values_stats(result: LoadResult, attribute: str) -> LatencyStats:
    """One attribute of the values a path returned (``Answer.ttft_s``, ...), NaNs left out."""
    return LatencyStats(samples=[float(v) for v in (getattr(value, attribute) for value in result.values) if v == v])


# --------------------------------------------------------------------------------------------- plan and inputs


@dataclass(frozen=True)
class Plan:
    variant: str  # "quick" or "full"
    a2e_profile: str
    llm: str
    encoder_profile: str
    hallo2_profile: str
    concurrency: tuple[int, ...]
    max_requests: int  # per path and level
    max_path_seconds: float  # per path and level: the per-level time bound
    time_budget_s: float  # every level together (priming, build, start-up and the capacity ladders excluded)
    stream_chunks: int
    capacity_levels: tuple[int, ...]  # the session-count ladder of the real-time capacity run
    capacity_chunks: int  # 1 s chunks per paced session
    capacity_budget_s: float  # both paths' ladders together
    max_new_tokens: int = 16
    hallo2_steps: int = 2
    # each path's share of a level runs in up to this many blocks, the paths alternating (ABBA...), so a drift of the
    # shared machine's speed within the level lands on both paths alike; fewer at high concurrency, where every
    # block needs a few rounds of requests per worker
    rounds: int = 4

    def rounds_at(self, concurrency: int) -> int:
        return max(1, min(self.rounds, self.max_requests // (3 * concurrency)))


QUICK_PLAN = Plan("quick", a2e_profile="tiny", llm="tiny", encoder_profile="tiny", hallo2_profile="tiny",
                  concurrency=(1, 2), max_requests=8, max_path_seconds=30.0, time_budget_s=120.0, stream_chunks=3,
                  capacity_levels=(1, 4), capacity_chunks=3, capacity_budget_s=30.0)
FULL_PLAN = Plan("full", a2e_profile="full", llm="smollm2", encoder_profile="small", hallo2_profile="tiny",
                 concurrency=(1, 4), max_requests=24, max_path_seconds=60.0, time_budget_s=360.0, stream_chunks=5,
                 capacity_levels=(1, 2, 3, 4, 5, 6, 8, 10, 12, 16), capacity_chunks=10, capacity_budget_s=240.0)


@dataclass
class Inputs:
    """Everything both paths send, prepared once. The ``*_pcm`` arrays are what the front end decodes the WAVs to;
    ``folder`` holds the Hallo2 inputs as files (the SDK uploads files) and the REST path's downloads."""

    speech_wav: bytes
    speech_pcm: np.ndarray
    chunk_wavs: list[bytes]
    chunk_pcm: list[np.ndarray]
    video: bytes
    portrait: bytes
    hallo2_wav: bytes
    folder: Path


def load_inputs(plan: Plan, folder: Path) -> Inputs:
    from emoserve.audio import decode_audio, encode_wav
    from emoserve.constants import SAMPLE_RATE

    speech_wav, speech = c.SPEECH_WAV.read_bytes(), c.load_speech()
    step, count = int(CHUNK_SECONDS * SAMPLE_RATE), max(plan.stream_chunks, plan.capacity_chunks)
    long = np.tile(speech, count * step // speech.size + 2)  # the speech repeated: consecutive 1 s chunks
    chunk_wavs = [encode_wav(np.ascontiguousarray(long[i * step: (i + 1) * step], np.float32)) for i in range(count)]
    inputs = Inputs(speech_wav=speech_wav, speech_pcm=decode_audio(speech_wav, SAMPLE_RATE, False),  # as /api/infer does
                    chunk_wavs=chunk_wavs, chunk_pcm=[decode_audio(wav, SAMPLE_RATE, False) for wav in chunk_wavs],
                    video=c.SAMPLE_VIDEO.read_bytes(), portrait=c.PORTRAIT_PNG.read_bytes(),
                    hallo2_wav=encode_wav(speech[: int(HALLO2_AUDIO_SECONDS * SAMPLE_RATE)]), folder=folder)
    (folder / "portrait.png").write_bytes(inputs.portrait)
    (folder / "speech.wav").write_bytes(inputs.hallo2_wav)
    return inputs


# --------------------------------------------------------------------------------------------- scenarios


@dataclass
class Scenario:
    key: str
    title: str
    rest_label: str
    triton_label: str
    rest: Callable[..., Awaitable[Any]]
    triton: Callable[..., Awaitable[Any]]
    request_timeout_s: float
    unit: str  # what one "request" of the load generator is
    note: str
    warmup_rounds: int = 1  # per level: rounds of `concurrency` requests sent before measuring
    stats_models: tuple[str, ...] = ()  # Triton statistics deltas around every Triton-direct level


@dataclass
class Answer:
    text: str
    ttft_s: float
    total_s: float
    tokens: int = 0  # Triton-direct: the final response's token ids (the SSE events carry text only)

    @property
    def decode_tps(self) -> float:
        """Tokens/s after the first token: (generated - 1) / (final - first token)."""
        return (self.tokens - 1) / (self.total_s - self.ttft_s) if self.tokens > 1 and self.total_s > self.ttft_s else NAN


@dataclass
class Video:
    size: int  # a Hallo2 answer via Triton-direct: the MP4's size, the pipeline's own figures, the step intervals
    total_s: float = NAN
    seconds: float = NAN  # what the `hallo2` model reports (pipeline + MP4 mux)
    frames: int = 0
    clips: int = 0
    steps: int = 0
    step_intervals: list[float] = field(default_factory=list)  # between consecutive denoising steps of a clip

    @property
    def per_step_s(self) -> float:
        return self.total_s / (self.clips * self.steps) if self.clips and self.steps else NAN


def _checked(response, what: str):
    if response.status_code != 200:
        raise RuntimeError(f"HTTP {response.status_code} from {what}: {response.text[:200]}")
    return response


async def _best_effort(awaitable: Awaitable[Any]) -> None:
    """Clean-up after a failed or timed-out request (the front end's idle sweeps would free it later anyway)."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(awaitable, timeout=CLEANUP_TIMEOUT_S)


async def _wait_for_slot(pace_start: float | None, index: int) -> None:
    """Paced sessions send chunk ``index`` at ``pace_start + index`` s (at once when they are already late)."""
    if pace_start is not None:
        await asyncio.sleep(max(0.0, pace_start + index * CHUNK_SECONDS - time.perf_counter()))


_sequence_ids = itertools.count((os.getpid() << 32) | 1)  # distinct from the front end's random 63-bit ids


def build_scenarios(http, sdk, engines, inputs: Inputs, plan: Plan) -> list[Scenario]:
    """The four scenarios. ``http``: the async httpx client of the front end; ``sdk``: (``EmotionLLaMA``,
    ``Hallo2Client``); ``engines``: the front end's Triton engines (LAM-A2E, Emotion-LLaMA, Hallo2)."""
    from emoserve import model_catalog as mc
    from emoserve.constants import FPS
    from frontend.emotion_llama.schemas import Sampling
    from frontend.lam_a2e.schemas import StreamInitRequest

    (a2e, llama_engine, hallo2_engine), (llama, hallo) = engines, sdk

    # /api/infer with only the file: id_idx 0, no vocal extraction, no smoothing, no brows; the route's seed is 0
    async def rest_infer() -> np.ndarray:
        response = await http.post("/api/infer", files={"audio_file": ("speech.wav", inputs.speech_wav, "audio/wav")})
        return np.asarray([frame["weights"] for frame in _checked(response, "/api/infer").json()["frames"]], dtype=np.float32)

    async def triton_infer() -> np.ndarray:
        return await a2e.infer_whole_audio(inputs.speech_pcm, 0, False, False, seed=0)

    # a session as /api/infer_stream_init's default body opens it (id 0, movement_smooth on, brows off)
    session, chunk_frames = StreamInitRequest(), round(CHUNK_SECONDS * FPS)

    def check_frames(index: int, frames: int) -> None:
        if frames != chunk_frames:
            raise RuntimeError(f"chunk {index}: {frames} frames, expected {chunk_frames}")

    async def rest_session(chunks: int = plan.stream_chunks, pace_start: float | None = None) -> list[float]:
        response = await http.post("/api/infer_stream_init", json=session.model_dump())
        session_id, latencies, closed = _checked(response, "stream init").json()["session_id"], [], False
        try:
            for index in range(chunks):
                await _wait_for_slot(pace_start, index)
                began = time.perf_counter()
                response = _checked(await http.post("/api/infer_stream_chunk", data={"session_id": session_id}, files={
                    "audio_chunk": ("chunk.wav", inputs.chunk_wavs[index], "audio/wav")}), "stream chunk")
                frames = len(response.json()["frames"])
                latencies.append(time.perf_counter() - began)
                check_frames(index, frames)
            _checked(await http.delete(f"/api/infer_stream_close/{session_id}"), "stream close")
            closed = True
        finally:
            if not closed:
                await _best_effort(http.delete(f"/api/infer_stream_close/{session_id}"))
        return latencies

    async def triton_session(chunks: int = plan.stream_chunks, pace_start: float | None = None) -> list[float]:
        # the front end seeds a session with its (random) correlation id; here both are a unique sequence id
        sequence_id, latencies, started, ended = next(_sequence_ids), [], False, False
        try:
            for index in range(chunks):
                await _wait_for_slot(pace_start, index)
                began = time.perf_counter()
                output = await a2e.stream_chunk(sequence_id, inputs.chunk_pcm[index], start=index == 0, end=index == chunks - 1,
                                                id_idx=session.id_idx, movement_smooth=session.movement_smooth,
                                                brow_movement=session.brow_movement, seed=sequence_id)
                latencies.append(time.perf_counter() - began)
                started, ended = True, index == chunks - 1
                check_frames(index, len(output.frames))
        finally:
            if started and not ended:  # cut short: free the sequence's state in the model, as the front end's close does
                await _best_effort(a2e.end_sequence(sequence_id))
        return latencies

    sampling, llama_timeout, hallo2_timeout = Sampling(temperature=0.0, max_new_tokens=plan.max_new_tokens, seed=GREEDY_SEED), 180.0, 300.0

    def rest_predict() -> Answer:
        began, first, pieces = time.perf_counter(), NAN, []
        for delta in llama.stream(c.SAMPLE_VIDEO, c.PROMPT_TEXT, **sampling.model_dump(exclude_none=True)):
            first = time.perf_counter() - began if first != first else first
            pieces.append(delta)
        return Answer("".join(pieces), first, time.perf_counter() - began)

    async def triton_predict() -> Answer:
        # the route reads the file and probes it, then relays exactly this stream (frontend.emotion_llama.router)
        began, first, pieces = time.perf_counter(), NAN, []
        async with contextlib.aclosing(llama_engine.stream(inputs.video, c.PROMPT_TEXT, sampling.as_inputs(), llama_timeout)) as events:
            async for event in events:
                if event.final:
                    return Answer("".join(pieces), first, time.perf_counter() - began, len(event.token_ids or []))
                first = time.perf_counter() - began if first != first else first
                pieces.append(event.delta or "")
        raise RuntimeError("the stream ended without a final answer")

    def rest_hallo2() -> int:
        task_id = hallo.inference(inputs.folder / "portrait.png", inputs.folder / "speech.wav", use_cache=False)
        video = inputs.folder / f"{task_id}.mp4"
        try:
            hallo.wait_and_download(task_id, video, poll_s=HALLO2_POLL_INTERVAL_S, timeout_s=hallo2_timeout, progress=False)
        except Exception:
            with contextlib.suppress(Exception):  # a timed-out task must not keep the pipeline busy for the next requests
                hallo.cancel(task_id)
            raise
        size = video.stat().st_size
        video.unlink()
        return size

    async def triton_hallo2() -> Video:
        began, marks = time.perf_counter(), []

        async def progress(percent: float, message: str) -> None:
            if match := STEP_RE.search(message):
                marks.append((match.group(1), time.perf_counter()))

        # what the task worker's runner sends (TritonHallo2Engine.run): the uploaded bytes, no seed
        result = await hallo2_engine.generate(inputs.portrait, inputs.hallo2_wav, steps=plan.hallo2_steps, use_cache=False,
                                              guidance_scale=HALLO2_GUIDANCE_SCALE, progress=progress, cancel=asyncio.Event())
        meta = result.metadata
        return Video(len(result.video), time.perf_counter() - began, float(meta.get("seconds", NAN)), int(meta.get("frames", 0)),
                     int(meta.get("clips", 0)), int(meta.get("steps", plan.hallo2_steps)),
                     [b - a for (clip_a, a), (clip_b, b) in zip(marks, marks[1:]) if clip_a == clip_b])

    return [
        Scenario("infer", "LAM-A2E whole file", "`POST /api/infer`", f"`{mc.A2E_OFFLINE_MODEL}`", rest_infer, triton_infer, 60.0,
                 "request", f"`{c.SPEECH_WAV.relative_to(c.PROJECT_ROOT)}` (7 s) as a multipart upload; the route decodes it "
                 f"to 16 kHz PCM and calls `{mc.A2E_OFFLINE_MODEL}`. Triton-direct sends the same PCM and options."),
        Scenario("stream", "LAM-A2E streaming sessions", "`/api/infer_stream_*`", f"`{mc.A2E_STREAM_MODEL}` sequence",
                 rest_session, triton_session, 120.0, "session",
                 f"One request = one session of {plan.stream_chunks} × {CHUNK_SECONDS:g} s chunks. REST: init, the chunks "
                 "(multipart WAV), close (one more, empty, END chunk to Triton). Triton-direct: the same chunks decoded as the "
                 "route decodes them, START on the first, END on the last, a unique correlation id per session."),
        Scenario("predict", "Emotion-LLaMA", "`sdk.EmotionLLaMA.stream`", f"`{mc.EMOTION_PIPELINE_MODEL}` stream",
                 lambda: asyncio.to_thread(rest_predict), triton_predict, llama_timeout, "request",
                 f"`{c.SAMPLE_VIDEO.relative_to(c.PROJECT_ROOT)}` by server-side path (`POST /process_video/stream`, "
                 f"server-sent events), the `[reason]` prompt, greedy, max_new_tokens {plan.max_new_tokens}, seed "
                 f"{GREEDY_SEED}; latency to the answer's end. Triton-direct: one gRPC stream to the final response.",
                 stats_models=(mc.EMOTION_LLM_MODEL,)),
        Scenario("hallo2", "Hallo2 tasks", "`sdk.Hallo2Client` task", f"`{mc.HALLO2_PIPELINE_MODEL}` stream",
                 lambda: asyncio.to_thread(rest_hallo2), triton_hallo2, hallo2_timeout, "task",
                 f"`{c.PORTRAIT_PNG.relative_to(c.PROJECT_ROOT)}` + {HALLO2_AUDIO_SECONDS:g} s of speech, {plan.hallo2_steps} "
                 f"denoising steps, guidance {HALLO2_GUIDANCE_SCALE:g}, no cache. REST = `inference` (upload), then "
                 "`wait_and_download` (it follows the task's event stream `GET /api/v1/tasks/{id}/events`, then downloads "
                 f"the video). The front end runs up to {HALLO2_MAX_CONCURRENT_TASKS} tasks at once (`max_concurrent_tasks`; "
                 "the default 1 would queue them in the front end), so both paths keep as many requests at Triton, whose one "
                 "`hallo2` instance runs them one at a time. No per-level warm-up.", warmup_rounds=0,
                 stats_models=tuple(mc.HALLO2_NETWORK_MODELS)),
    ]


def inprocess_chunks(runner, chunk_pcm: list[np.ndarray], sessions: int) -> LatencyStats:
    """The stream model's pipeline without Triton: every session's chunk k in ONE ``StreamSessionStore.process``
    call (perfectly batched: a lower bound for any server); every chunk of a round is charged the round's time."""
    from emoserve.lam_a2e.postprocess import PostprocessOptions
    from emoserve.lam_a2e.sessions import ChunkRequest, StreamSessionStore
    from frontend.lam_a2e.schemas import StreamInitRequest

    session, store, stats = StreamInitRequest(), StreamSessionStore(), LatencyStats()
    options = PostprocessOptions(movement_smooth=session.movement_smooth, brow_movement=session.brow_movement)
    began_all = time.perf_counter()
    for index, pcm in enumerate(chunk_pcm):
        requests = [ChunkRequest(correlation_id=s + 1, audio=pcm, start=index == 0, end=index == len(chunk_pcm) - 1,
                                 id_idx=session.id_idx, options=options, seed=s) for s in range(sessions)]
        began = time.perf_counter()
        results = store.process(requests, runner)
        elapsed = time.perf_counter() - began
        stats.errors += [str(r) for r in results if isinstance(r, Exception)]
        stats.samples += [elapsed for r in results if not isinstance(r, Exception)]
    stats.wall_s = time.perf_counter() - began_all
    return stats


async def capacity_ladder(session: Callable[..., Awaitable[list[float]]], plan: Plan, budget: c.Budget) -> tuple[int | None, list]:
    """Sessions paced at one chunk per second, started evenly over one second; a level passes when every chunk
    succeeds and the p99 chunk latency is below ``REALTIME_P99_LIMIT_S``. The ladder stops at the first failure."""
    rows, best, needed = [], None, plan.capacity_chunks * CHUNK_SECONDS + 3.0
    for count in plan.capacity_levels:
        if budget.remaining() < needed:
            rows.append([str(count), "-", "-", "-", "-", "not run (time budget)"])
            break
        start = time.perf_counter() + 0.5
        outcomes = await asyncio.gather(*(asyncio.wait_for(session(plan.capacity_chunks, start + s * CHUNK_SECONDS / count),
                                                           timeout=needed + 30.0) for s in range(count)), return_exceptions=True)
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        stats = LatencyStats(samples=[latency for o in outcomes if not isinstance(o, BaseException) for latency in o])
        passed = not errors and stats.n == count * plan.capacity_chunks and stats.p(99) < REALTIME_P99_LIMIT_S
        failed = f" ({len(errors)} session(s) failed: {cell(describe_error(errors[0], needed + 30))[:120]})" if errors else ""
        verdict = "pass" if passed else "fail" + failed
        rows.append([str(count), str(stats.n), ms(stats.p(50)), ms(stats.p(99)), ms(stats.max), verdict])
        log.info("capacity at %d sessions: p99 %s ms -> %s", count, ms(stats.p(99)), verdict)
        if not passed:
            break
        best = count
    return best, rows


# --------------------------------------------------------------------------------------------- measurement


@dataclass
class Priming:
    """One request per path before the budget starts: lazy initialisation, a latency estimate, the same-work check."""

    rest_s: float = NAN
    triton_s: float = NAN
    rest_value: Any = None
    triton_value: Any = None
    error: str = ""


@dataclass
class Level:
    scenario: str
    concurrency: int
    rest: LoadResult
    triton: LoadResult
    triton_stats: dict[str, dict] = field(default_factory=dict)  # model -> statistics delta around the Triton-direct run
    inprocess: LatencyStats | None = None  # streaming: the in-process reference's per-chunk latencies


@dataclass
class Outcome:
    scenarios: list[Scenario]
    priming: dict[str, Priming]
    levels: list[Level]
    hallo2_config: dict
    budget_s: float
    used_s: float
    capacity: dict[str, tuple[int | None, list[list[str]]]] = field(default_factory=dict)  # path -> (best, rows)


async def prime(scenario: Scenario) -> Priming:
    primed = Priming()
    for path, call in (("rest", scenario.rest), ("triton", scenario.triton)):
        began = time.perf_counter()
        try:
            value = await asyncio.wait_for(call(), timeout=scenario.request_timeout_s)
        except Exception as exc:  # noqa: BLE001 - the scenario is reported as not measured
            primed.error = f"{path}: {describe_error(exc, scenario.request_timeout_s)}"
            return primed
        setattr(primed, f"{path}_s", time.perf_counter() - began)
        setattr(primed, f"{path}_value", value)
    return primed


async def measure(plan: Plan, base_url: str, grpc_url: str, inputs: Inputs, repository: Path, phase_times: dict[str, float]) -> Outcome:
    from emoserve.lam_a2e.onnx_runner import A2EOnnxRunner
    from emoserve.model_catalog import A2E_NETWORK_MODEL
    from frontend.emotion_llama.engine import TritonEmotionLlamaEngine
    from frontend.hallo2.engine import TritonHallo2Engine
    from frontend.lam_a2e.engine import TritonLamA2EEngine
    from frontend.triton import TritonEngine
    from sdk import EmotionLLaMA, Hallo2Client

    longest, connections = 300.0, max(*plan.concurrency, *plan.capacity_levels) + 2
    triton = TritonEngine(require_loopback(grpc_url), timeout_s=longest)
    http, sync_http = (loopback_http_client(base_url, connections, longest, sync) for sync in (False, True))
    llama = EmotionLLaMA(base_url, client=sync_http)  # the SDK over the guarded client (loopback only, no proxy from the environment)
    asyncio.get_running_loop().set_default_executor(concurrent.futures.ThreadPoolExecutor(connections))  # for the SDK calls
    try:
        hallo = Hallo2Client(base_url, client=sync_http)
        # new tasks take their steps and guidance from the store's config: set them the documented way
        updated = await asyncio.to_thread(hallo.configure, guidance_scale=HALLO2_GUIDANCE_SCALE, inference_steps=plan.hallo2_steps)
        config = updated.get("config", updated)
        scenarios = build_scenarios(http, (llama, hallo), (TritonLamA2EEngine(triton), TritonEmotionLlamaEngine(triton),
                                                           TritonHallo2Engine(triton)), inputs, plan)
        runner = A2EOnnxRunner(repository / A2E_NETWORK_MODEL / "1" / "model.onnx")
        t0 = time.perf_counter()
        priming = {scenario.key: await prime(scenario) for scenario in scenarios}
        for key, primed in priming.items():
            log.info("primed %s: REST %s ms, Triton %s ms %s", key, ms(primed.rest_s), ms(primed.triton_s), primed.error)
        inprocess_chunks(runner, inputs.chunk_pcm[:plan.stream_chunks], max(plan.concurrency))  # first-call allocations
        phase_times["priming (one request per path)"] = time.perf_counter() - t0

        budget = c.Budget(plan.time_budget_s)
        plan_levels = [(scenario, concurrency) for scenario in scenarios for concurrency in plan.concurrency]
        # seconds per request; the priming figure carries lazy initialisation, so a measured level replaces it
        estimates = {key: max(primed.rest_s, primed.triton_s) for key, primed in priming.items()}
        levels: list[Level] = []
        for index, (scenario, concurrency) in enumerate(plan_levels):
            primed = priming[scenario.key]
            # the latency of one request at this concurrency if the server serialised them: a conservative estimate
            per_round = estimates[scenario.key] * concurrency
            share = budget.remaining() / (len(plan_levels) - index)  # what earlier levels left unused flows on
            path_seconds = min(plan.max_path_seconds, share / 2 - (scenario.warmup_rounds + 1) * per_round)
            reason = f"priming failed ({primed.error[:120]})" if primed.error else ""
            if not reason and path_seconds < per_round:
                reason = f"time budget ({max(share, 0):.0f} s left for the level, ~{per_round:.1f} s per round)"
            level = Level(scenario.key, concurrency, *(LoadResult(concurrency, 0, 0.0, skipped=reason) for _ in range(2)))
            levels.append(level)
            if reason:
                log.warning("%s at concurrency %d skipped: %s", scenario.key, concurrency, reason)
                continue
            # the paths alternate block by block (ABBA...), so slow drift of a shared machine does not favour one
            rounds, parts = plan.rounds_at(concurrency), {"rest": [], "triton": []}
            order = ["rest", "triton"] if index % 2 == 0 else ["triton", "rest"]
            for block in range(rounds):
                for path in order if block % 2 == 0 else order[::-1]:
                    watched = scenario.stats_models if path == "triton" else ()
                    before = await asyncio.to_thread(c.settled_statistics, grpc_url, watched) if watched else {}
                    parts[path].append(await run_load(
                        getattr(scenario, path), concurrency, -(-plan.max_requests // rounds), path_seconds / rounds,
                        request_timeout_s=scenario.request_timeout_s,
                        warmup_requests=scenario.warmup_rounds * concurrency if block == 0 else 0))
                    if watched:
                        after = await asyncio.to_thread(c.settled_statistics, grpc_url, watched)
                        for m in watched:
                            delta = c.statistics_delta(before[m], after[m])
                            so_far = level.triton_stats.get(m, {})
                            level.triton_stats[m] = {k: so_far.get(k, 0) + v for k, v in delta.items()}
            for path in order:
                result = merged(parts[path])
                setattr(level, path, result)
                log.info("%s %s c=%d: %d ok, %d errors, p50 %s ms, %.2f req/s, %d blocks, stopped by %s", scenario.key, path,
                         concurrency, result.completed, len(result.errors), ms(result.stats.p(50)), result.throughput, rounds,
                         result.stopped_by)
            if scenario.key == "stream":
                level.inprocess = inprocess_chunks(runner, inputs.chunk_pcm[:plan.stream_chunks], concurrency)
            measured = max(level.rest.stats.p(50), level.triton.stats.p(50)) / concurrency
            if not math.isnan(measured):  # NaN when a path had no successful request: keep the previous estimate
                estimates[scenario.key] = measured
        outcome = Outcome(scenarios, priming, levels, config, plan.time_budget_s, plan.time_budget_s - budget.remaining())

        t0, stream, capacity_budget = time.perf_counter(), scenarios[1], c.Budget(plan.capacity_budget_s)  # scenarios[1]: streaming
        for label, session, share in (("REST", stream.rest, 0.5), ("Triton-direct", stream.triton, 1.0)):
            if not priming["stream"].error:
                outcome.capacity[label] = await capacity_ladder(session, plan, c.Budget(capacity_budget.remaining() * share))
        phase_times["real-time capacity ladders"] = time.perf_counter() - t0
        return outcome
    finally:
        await http.aclose()
        sync_http.close()
        await triton.close()


# --------------------------------------------------------------------------------------------- report


def same_work_note(outcome: Outcome) -> list[str]:
    """What the priming requests returned on both paths: evidence that both did the same work."""
    notes = []
    for key, primed in outcome.priming.items():
        rest, triton = primed.rest_value, primed.triton_value
        every = {path: [value for level in outcome.levels if level.scenario == key for value in getattr(level, path).values]
                 for path in ("rest", "triton")}
        if primed.error:
            notes.append(f"{key}: priming failed — {primed.error}")
        elif key == "infer":
            notes.append(f"`/api/infer` vs Triton-direct: {rest.shape[0]} frames each, largest absolute difference "
                         f"{float(np.max(np.abs(rest - triton))):.2e}" if rest.shape == triton.shape else
                         f"`/api/infer` vs Triton-direct: shapes differ ({rest.shape} vs {triton.shape})")
        elif key == "stream":
            notes.append(f"streaming: {len(rest)} / {len(triton)} chunks per session (REST / Triton-direct), frame count "
                         "checked on every chunk")
        elif key == "predict":
            answers = Counter(v.text for v in [rest, triton, *every["rest"], *every["triton"]])
            notes.append(f"Emotion-LLaMA: {'the same' if rest.text == triton.text else 'DIFFERENT'} answer on both paths at "
                         f"priming; {len(answers)} distinct answer(s) over every request (greedy)")
        elif key == "hallo2":
            sizes = {"REST": {rest, *every["rest"]}, "Triton-direct": {v.size for v in [triton, *every["triton"]]}}
            notes.append("Hallo2: MP4 over every request — " + "; ".join(f"{p} {len(s)} distinct size(s), {min(s)}–{max(s)} bytes"
                                                                         for p, s in sizes.items())
                         + " (the same bytes in and the pipeline's default seed on both paths" + (
                             "; the output varies run to run on each path alike, so its size is no same-work check)"
                             if all(len(s) > 1 for s in sizes.values()) else ")"))
    return notes


def write_report(report: c.Report, plan: Plan, outcome: Outcome) -> list[list[str]]:
    """Scenario tables, the ratio section, the capacity ladders and the errors; returns the Summary rows (the ratios and
    the per-model figures: capacity, TTFT and tokens/s, seconds per denoising step)."""
    levels = {s.key: [lv for lv in outcome.levels if lv.scenario == s.key] for s in outcome.scenarios}
    ratio_rows, summary = [], []
    for scenario in outcome.scenarios:
        report.table(f"{scenario.title} — latency per {scenario.unit}", LOAD_HEADER,
                     [load_row(f"{path} {label}", getattr(level, attr)) for level in levels[scenario.key]
                      for path, label, attr in (("REST", scenario.rest_label, "rest"), ("Triton-direct", scenario.triton_label, "triton"))],
                     note=scenario.note + f" Request timeout {scenario.request_timeout_s:.0f} s.")
        for level in levels[scenario.key]:
            if level.rest.skipped:
                ratio_rows.append([scenario.title, str(level.concurrency), "-", "-", "-", "-", "-", cell(f"skipped: {level.rest.skipped}")])
                continue
            note = ""
            if scenario.key == "predict":  # the answers' time to first token: SSE event vs TEXT_DELTA response
                rest_ttft, triton_ttft = values_stats(level.rest, "ttft_s"), values_stats(level.triton, "ttft_s")
                note = f"TTFT p50 {ratio(rest_ttft.p(50), triton_ttft.p(50))}, p95 {ratio(rest_ttft.p(95), triton_ttft.p(95))}"
            ratio_rows.append([scenario.title, str(level.concurrency), *overhead_ratios(level.rest, level.triton),
                               ms(level.rest.stats.p(50)), ms(level.triton.stats.p(50)), note])
            if scenario.key == "stream":
                rest, triton, local = chunk_result(level.rest), chunk_result(level.triton), level.inprocess or LatencyStats()
                ratio_rows.append([f"{scenario.title} (per chunk)", str(level.concurrency), *overhead_ratios(rest, triton),
                                   ms(rest.stats.p(50)), ms(triton.stats.p(50)), f"Triton-direct / in-process p50 "
                                   f"{ratio(triton.stats.p(50), local.p(50))}, p99 {ratio(triton.stats.p(99), local.p(99))}"])
    report.table("1. REST / Triton-direct", ["scenario", "concurrency", "p50 ratio (REST/Triton)", "p99 ratio (REST/Triton)",
                                            "throughput ratio (Triton/REST)", "REST p50 ms", "Triton p50 ms", "note"], ratio_rows,
                 note="Every ratio reads \"how many times worse via REST\" (latency REST / Triton-direct, throughput Triton-direct / "
                      "REST): 1.00x = the front end costs nothing measurable. *Per chunk* rows compare the chunk requests within "
                      "sessions; their note is what Triton adds over the in-process pipeline (every session's chunk in one call).")
    report.table(f"2. LAM-A2E real-time capacity — sessions paced at one {CHUNK_SECONDS:g} s chunk per second, {plan.capacity_chunks} "
                 "chunks each", ["path", "sessions", "chunks", "p50 ms", "p99 ms", "max ms", "verdict"],
                 [[path, *row] for path, (_, ladder) in outcome.capacity.items() for row in ladder],
                 note=f"A level passes when every chunk succeeds and the p99 chunk latency < {REALTIME_P99_LIMIT_S * 1000:.0f} ms; "
                      "sessions start staggered over one second; the ladder stops at the first failure.")
    errors = [f"- {level.scenario}, {path}, concurrency {level.concurrency}{kind}: {count}× {message}"
              for level in outcome.levels for path, result in (("REST", level.rest), ("Triton-direct", level.triton))
              for kind, found in (("", result.errors), (" (warm-up)", result.warmup_errors))
              for message, count in Counter(found).most_common(3 if not kind else 1)]
    report.add("### Errors\n\n" + ("\n".join(errors) if errors else "none") + "\n")

    per_scenario: dict[str, list[str]] = {}  # one line per scenario: its ratios at every concurrency
    for row in ratio_rows:
        figures = "skipped" if row[2] == "-" else f"p50 {row[2]}, p99 {row[3]}, throughput {row[4]}"
        per_scenario.setdefault(row[0], []).append(f"c={row[1]}: {figures}")
    summary = [[f"front-end overhead (REST / Triton-direct), {name}", "; ".join(parts)] for name, parts in per_scenario.items()]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    summary += [[f"LAM-A2E real-time capacity (sessions, p99 < {REALTIME_P99_LIMIT_S:g} s), {path}",
                 "below the first level" if best is None else f"{best} ({best / cores:.1f} per core, {cores} cores)"]
                for path, (best, _) in outcome.capacity.items()]
    for level in levels["predict"]:
        for path, result in (("REST SSE", level.rest), ("Triton-direct", level.triton)):
            if result.values:
                ttft, decode = values_stats(result, "ttft_s"), values_stats(result, "decode_tps")
                tokens = sum(v.tokens for v in result.values)
                llm = next(iter(level.triton_stats.values()), None) if path == "Triton-direct" else None
                summary.append([f"Emotion-LLaMA {path}, concurrency {level.concurrency}", f"TTFT p50 {fmt(ttft.p(50), 3)} s, p95 "
                                f"{fmt(ttft.p(95), 3)} s" + (f"; decode {fmt(decode.p(50), 1)} tok/s per request, aggregate "
                                f"{fmt(tokens / result.stats.wall_s, 1)} tok/s" if tokens else "")
                                + (f"; LLM batching: {llm['inference_count']} requests in {llm['execution_count']} executions"
                                   if llm else "")])
    for level in levels["hallo2"]:
        if videos := level.triton.values:  # Triton-direct: Video answers; Σ network figures from Triton's statistics
            n, frames, e2e = len(videos), videos[0].frames, level.triton.stats.p(50)
            request, compute = sum(v.total_s for v in videos) / n, sum(d["compute_s"] for d in level.triton_stats.values()) / n
            steps = LatencyStats(samples=[d for v in videos for d in v.step_intervals])
            per_step = LatencyStats(samples=[v.per_step_s for v in videos if v.per_step_s == v.per_step_s])
            summary.append([f"Hallo2 Triton-direct, concurrency {level.concurrency} ({n} requests, {plan.hallo2_steps} steps)",
                            f"step interval p50 {ms(steps.p(50))} ms, request / (clips × steps) p50 {ms(per_step.p(50))} ms; request "
                            f"{fmt(request, 3)} s, pipeline model {fmt(sum(v.seconds for v in videos) / n, 3)} s, Σ network compute "
                            f"{fmt(compute, 3)} s, Σ network queue {fmt(sum(d['queue_s'] for d in level.triton_stats.values()) / n, 3)} s: "
                            f"request / Σ compute {ratio(request, compute)}; {fmt(e2e / (frames / 25 or HALLO2_AUDIO_SECONDS))} "
                            f"s per video s, {fmt(frames / e2e)} frames/s (p50)"])
    return summary


def report_header(plan: Plan, command: str, started_at: _dt.datetime, load_before: str, versions_now: dict[str, str],
                  repository: Path, outcome: Outcome) -> str:
    from emoserve import model_catalog as mc

    manifest = json.loads((repository / "weights.json").read_text())
    weights = "; ".join(f"{name}: {manifest.get(key, {}).get('weights', '?')}"
                        for name, key in (("LAM-A2E", "lam_a2e"), ("Emotion-LLaMA", "emotion_llama"), ("Hallo2", "hallo2")))
    slices = {"LAM-A2E": mc.A2E_MODELS, "Hallo2": mc.HALLO2_MODELS,
              "Emotion-LLaMA": (mc.EMOTION_PIPELINE_MODEL, mc.EMOTION_LLM_MODEL, mc.EMOTION_VISION_MODEL, mc.EMOTION_AUDIO_MODEL)}
    size = lambda models: sum(p.stat().st_size for m in models for p in (repository / m).rglob("*") if p.is_file()) / 1e6  # noqa: E731
    return "\n".join([
        f"# REST load generator — front-end overhead as REST / Triton-direct ({plan.variant})", "",
        f"- date: {started_at.isoformat(timespec='seconds')}",
        f"- command: `{command}` (from the repository root)",
        *c.environment_lines(versions_now),
        f"- model repository: `{repository.relative_to(c.PROJECT_ROOT)}` — " + ", ".join(f"{n} {size(m):.1f} MB" for n, m in slices.items())
        + f"; LAM-A2E `{plan.a2e_profile}`, LLM `{plan.llm}`, encoders `{plan.encoder_profile}`, Hallo2 `{plan.hallo2_profile}`",
        f"- weights: {weights} (seeded-random weights give the networks' real cost at their size, not meaningful outputs)",
        f"- plan: concurrency {', '.join(map(str, plan.concurrency))}; per path and level at most {plan.max_requests} requests and "
        f"{plan.max_path_seconds:.0f} s, in {', '.join(str(plan.rounds_at(n)) for n in plan.concurrency)} block(s) per path "
        f"alternating with the other path's (ABBA); {plan.time_budget_s:.0f} s for all levels (levels that do not fit are skipped "
        "and listed); "
        f"capacity ladder {plan.capacity_levels} in {plan.capacity_budget_s:.0f} s; Hallo2 task config: {outcome.hallo2_config}",
        f"- load average at start (1/5/15 min): {load_before}; the load generator (this process: httpx, the `sdk` clients in "
        "worker threads, the front end's Triton engines) shares the cores with the servers; method: `benchmarks/README.md`", "",
    ])


def run(args: argparse.Namespace) -> int:
    from export.build_repository import BuildSettings
    from stack.processes import FrontendProcess

    plan = QUICK_PLAN if args.quick else FULL_PLAN
    overrides = {"time_budget_s": args.time_budget, "concurrency": tuple(args.concurrency) if args.concurrency else None,
                 "max_new_tokens": args.max_new_tokens, "hallo2_steps": args.hallo2_steps}
    plan = dataclasses.replace(plan, **{k: v for k, v in overrides.items() if v is not None})
    out_path = Path(args.out or c.RESULTS_DIR / ("rest-load-quick.md" if args.quick else "rest-load.md"))
    command = "python -m benchmarks.rest_load " + " ".join(shlex.quote(a) for a in args.argv)
    started_at, load_before, phase_times = _dt.datetime.now().astimezone(), c.load_average(), {}

    t0 = time.perf_counter()
    repository = c.build(c.WORK_DIR / f"repo-rest-{plan.variant}", BuildSettings(
        profile=plan.a2e_profile, llm=plan.llm, encoder_profile=plan.encoder_profile, hallo2_profile=plan.hallo2_profile, seed=0))
    phase_times["repository build / reuse"] = time.perf_counter() - t0
    task_dir = Path(tempfile.mkdtemp(prefix="rest-load-", dir=c.WORK_DIR))
    inputs, server, frontend = load_inputs(plan, task_dir), c.triton_server(repository, f"tritonserver-rest-{plan.variant}"), None
    try:
        t0 = time.perf_counter()
        server.start()
        phase_times["tritonserver start"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        # server-side media from examples/, and a Hallo2 task store of its own (a fresh database: default config)
        frontend = FrontendProcess(server.grpc_url, log_path=c.WORK_DIR / "logs" / f"frontend-rest-{plan.variant}.log", env={
            "EMOSERVE_EMOTION_LLAMA__MEDIA_ROOTS": json.dumps([str(c.EXAMPLES_DIR)]),
            "EMOSERVE_HALLO2__DATABASE_URL": f"sqlite:///{task_dir / 'hallo2.db'}",
            "EMOSERVE_HALLO2__DATA_DIR": str(task_dir / "tasks"),
            "EMOSERVE_HALLO2__MAX_CONCURRENT_TASKS": str(HALLO2_MAX_CONCURRENT_TASKS)}, log_level="warning").start()
        phase_times["front end start"] = time.perf_counter() - t0
        require_loopback(frontend.base_url)
        versions_now = c.versions(require_loopback(server.grpc_url), c.DEFAULT_DISTRIBUTIONS + ("httpx", "av", "transformers"))
        t0 = time.perf_counter()
        outcome = asyncio.run(measure(plan, frontend.base_url, server.grpc_url, inputs, repository, phase_times))
        phase_times["levels (budget)"] = (time.perf_counter() - t0 - phase_times["priming (one request per path)"]
                                          - phase_times["real-time capacity ladders"])
    finally:
        if frontend is not None:
            frontend.stop()
        server.stop()
        shutil.rmtree(task_dir, ignore_errors=True)

    report = c.Report()
    report.add(report_header(plan, command, started_at, load_before, versions_now, repository, outcome))
    summary = write_report(report, plan, outcome)
    measured = [r for level in outcome.levels for r in (level.rest, level.triton) if not r.skipped]
    skipped = [f"{level.scenario} c={level.concurrency}" for level in outcome.levels if level.rest.skipped]
    summary += [["requests measured (REST + Triton-direct)", str(sum(r.completed for r in measured))],
                ["errors", str(sum(len(r.errors) for r in measured))],
                ["levels skipped", ", ".join(skipped) or "none"],
                *(["same work", cell(note)] for note in same_work_note(outcome)),
                ["measurement time used / budget", f"{outcome.used_s:.0f} s / {outcome.budget_s:.0f} s"],
                ["load average at end (1/5/15 min)", c.load_average()],
                *([f"time: {phase}", f"{seconds:.1f} s"] for phase, seconds in phase_times.items())]
    report.table("Summary", ["item", "value"], summary)
    report.write(out_path)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny models, concurrency 1 and 2, at most 8 requests per level")
    parser.add_argument("--out", type=Path, default=None,
                        help="results markdown (default benchmarks/results/rest-load.md, rest-load-quick.md with --quick)")
    parser.add_argument("--time-budget", type=float, default=None, help="seconds for all levels together (default 360, 120 "
                        "with --quick); build, start-up, priming and the capacity ladders excluded")
    parser.add_argument("--concurrency", type=int, nargs="+", default=None, help="concurrency levels (default 1 4; 1 2 with --quick)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="Emotion-LLaMA tokens per answer (default 16)")
    parser.add_argument("--hallo2-steps", type=int, default=None, help="Hallo2 denoising steps per task (default 2)")
    args = parser.parse_args(argv)
    args.argv = argv
    if args.time_budget is not None and args.time_budget <= 0:
        parser.error("--time-budget must be positive")
    if args.concurrency and min(args.concurrency) < 1:
        parser.error("--concurrency levels must be at least 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    c.raise_on_sigterm()
    return run(args)


if __name__ == "__main__":
    sys.exit(main())

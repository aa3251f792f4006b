"""REST load generator for the front end: front-end overhead as REST / Triton-direct, per scenario.

    python -m benchmarks.rest_load --quick       # tiny models, concurrency 1 and 2, <= 8 requests per level: ~2-3 min
    python -m benchmarks.rest_load               # full A2E, SmolLM2 + small encoders, concurrency 1 and 4

One async, closed-loop load generator (:func:`run_load`: ``concurrency`` workers, bounded in request count
and in time, one timeout per request, errors counted rather than raised) drives both paths of four
scenarios, at the same concurrency and with the same inputs:

* ``POST /api/infer`` (``examples/speech.wav``)  vs  ``lam_a2e_offline``;
* A2E streaming sessions (init, N x 1 s chunks, close)  vs  ``lam_a2e_stream`` as one sequence per session;
* ``POST /api/predict/`` (``examples/sample_emotion.mp4``, greedy, 16 new tokens)  vs  ``emotion_llama`` (gRPC stream);
* a Hallo2 task (create, poll every 50 ms, download)  vs  ``hallo2`` (gRPC stream, until the video).

The Triton-direct path calls Triton through the front end's own client code (``frontend.triton.TritonEngine``,
``tritonclient.grpc.aio``) from this process, so it sends exactly the tensors the front end sends and the ratio
isolates what the front end adds. It builds (or re-uses) ``benchmarks/.work/repo-rest-<variant>``, starts its
own tritonserver and front end on free loopback ports (both stopped in ``finally``), and refuses any URL whose
host is not loopback. The report goes to ``--out`` and stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as _dt
import ipaddress
import json
import logging
import math
import os
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

from benchmarks.common import (
    DEFAULT_DISTRIBUTIONS,
    PROJECT_ROOT,
    RESULTS_DIR,
    WORK_DIR,
    Budget,
    LatencyStats,
    Report,
    machine_description,
    ms,
    raise_on_sigterm,
    ratio,
    versions,
)

log = logging.getLogger("rest_load")

EXAMPLES_DIR = PROJECT_ROOT / "examples"
SPEECH_WAV = EXAMPLES_DIR / "speech.wav"
PORTRAIT_PNG = EXAMPLES_DIR / "portrait.png"

CHUNK_SECONDS = 1.0
HALLO2_AUDIO_SECONDS = 1.0
HALLO2_GUIDANCE_SCALE = 3.5  # upstream's default
HALLO2_POLL_INTERVAL_S = 0.05
HALLO2_MAX_CONCURRENT_TASKS = 1  # the front end's default; the Triton `hallo2` model has one instance anyway
GREEDY_SEED = 0
CLEANUP_TIMEOUT_S = 5.0  # closing a session / cancelling a task left behind by a failed or timed-out request


# --------------------------------------------------------------------------------------------- loopback guard


class NotLoopbackError(ValueError):
    """A URL whose host is not this machine: the load generator never sends traffic elsewhere."""


def require_loopback(url: str) -> str:
    """``url`` unchanged when its host is loopback (127.0.0.0/8, ::1, localhost), else :class:`NotLoopbackError`.

    Accepts ``http://host:port/...`` as well as gRPC's bare ``host:port``.
    """
    try:
        host = urlsplit(url if "://" in url else f"//{url}").hostname
    except ValueError:
        host = None
    loopback = False
    if host:
        if host.lower() == "localhost":
            loopback = True
        else:
            try:
                loopback = ipaddress.ip_address(host).is_loopback
            except ValueError:
                loopback = False
    if not loopback:
        raise NotLoopbackError(f"refusing {url!r}: its host {host!r} is not loopback (127.0.0.1, ::1 or localhost); "
                               "this load generator only targets servers on this machine")
    return url


def loopback_http_client(base_url: str, connections: int, timeout_s: float):
    """An ``httpx.AsyncClient`` that checks every request's URL (an absolute URL could otherwise leave ``base_url``)."""
    import httpx

    from benchmarks.emotion_llama_bench import api_headers

    require_loopback(base_url)

    async def check(request: httpx.Request) -> None:
        require_loopback(str(request.url))

    # trust_env=False: a proxy set in the environment must not carry loopback traffic elsewhere
    return httpx.AsyncClient(base_url=base_url, headers=api_headers(), trust_env=False,
                             timeout=httpx.Timeout(timeout_s, connect=10.0),
                             limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
                             event_hooks={"request": [check]})


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
        return self.stats.n / self.stats.wall_s if self.stats.wall_s > 0 else float("nan")


def describe_error(exc: BaseException, timeout_s: float) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return f"TimeoutError: no answer within {timeout_s:g} s"
    return f"{type(exc).__name__}: {exc}"[:300]


async def _drive(call: Callable[[], Awaitable[Any]], concurrency: int, max_requests: int, max_seconds: float,
                 request_timeout_s: float, result: LoadResult) -> None:
    """``concurrency`` closed-loop workers: none starts a request once ``max_requests`` were started or
    ``max_seconds`` have passed; requests already in flight finish (each within its own timeout)."""
    samples, errors, values = result.stats.samples, result.stats.errors, result.values
    in_flight = 0
    started_at = time.perf_counter()
    deadline = started_at + max_seconds

    async def worker() -> None:
        nonlocal in_flight
        while result.started < max_requests and time.perf_counter() < deadline:
            result.started += 1
            in_flight += 1
            result.peak_in_flight = max(result.peak_in_flight, in_flight)
            began = time.perf_counter()
            try:
                value = await asyncio.wait_for(call(), timeout=request_timeout_s)
            except Exception as exc:  # noqa: BLE001 - counted and reported; CancelledError still propagates
                errors.append(describe_error(exc, request_timeout_s))
            else:
                samples.append(time.perf_counter() - began)
                values.append(value)
            finally:
                in_flight -= 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.stats.wall_s = time.perf_counter() - started_at
    result.stopped_by = "count" if result.started >= max_requests else "time"


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
    if warmup_requests > 0:
        warm = LoadResult(concurrency, warmup_requests, request_timeout_s)
        await _drive(call, min(concurrency, warmup_requests), warmup_requests, request_timeout_s, request_timeout_s, warm)
        warmup_errors = warm.errors
    else:
        warmup_errors = []
    result = LoadResult(concurrency, max_requests, max_seconds, warmup_errors=warmup_errors)
    await _drive(call, concurrency, max_requests, max_seconds, request_timeout_s, result)
    return result


# --------------------------------------------------------------------------------------------- figures


def cell(text: str) -> str:
    """Free text (an error message) made safe for a markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def fmt_rate(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}"


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
    bound = f"{result.stopped_by} ({result.max_requests} / {result.max_seconds:.0f} s)"
    return [path, str(result.concurrency), requests, str(len(s.errors)), fmt_rate(result.throughput),
            ms(s.p(50)), ms(s.p(95)), ms(s.p(99)), ms(s.mean), ms(s.max), bound]


LOAD_HEADER = ["path", "concurrency", "requests", "errors", "req/s", "p50 ms", "p95 ms", "p99 ms", "mean ms", "max ms",
               "stopped by (count / time bound)"]


def chunk_result(session_result: LoadResult) -> LoadResult:
    """Per-chunk figures of a streaming run: every successful session returned its chunks' latencies."""
    chunks = LoadResult(session_result.concurrency, session_result.max_requests, session_result.max_seconds,
                        skipped=session_result.skipped, started=session_result.started,
                        stopped_by=session_result.stopped_by)
    chunks.stats.samples = [latency for value in session_result.values for latency in value]
    chunks.stats.wall_s = session_result.stats.wall_s
    return chunks


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
    time_budget_s: float  # every level together (priming, build and start-up excluded)
    stream_chunks: int
    max_new_tokens: int = 16
    hallo2_steps: int = 2


QUICK_PLAN = Plan("quick", a2e_profile="tiny", llm="tiny", encoder_profile="tiny", hallo2_profile="tiny",
                  concurrency=(1, 2), max_requests=8, max_path_seconds=30.0, time_budget_s=120.0, stream_chunks=3)
FULL_PLAN = Plan("full", a2e_profile="full", llm="smollm2", encoder_profile="small", hallo2_profile="tiny",
                 concurrency=(1, 4), max_requests=24, max_path_seconds=60.0, time_budget_s=360.0, stream_chunks=5)


@dataclass
class Inputs:
    """Everything both paths send, prepared once. The ``*_pcm`` arrays are what the front end decodes the WAVs to."""

    speech_wav: bytes
    speech_pcm: np.ndarray
    chunk_wavs: list[bytes]
    chunk_pcm: list[np.ndarray]
    video: bytes
    portrait: bytes
    hallo2_wav: bytes


def load_inputs(plan: Plan) -> Inputs:
    from benchmarks.a2e_bench import load_speech, session_chunks
    from benchmarks.emotion_llama_bench import SAMPLE_VIDEO
    from emoserve.audio import decode_audio, encode_wav
    from emoserve.constants import SAMPLE_RATE

    speech_wav = SPEECH_WAV.read_bytes()
    speech = load_speech()
    chunk_wavs = [encode_wav(chunk) for chunk in session_chunks(speech, 0, plan.stream_chunks)]
    return Inputs(
        speech_wav=speech_wav,
        speech_pcm=decode_audio(speech_wav, SAMPLE_RATE, False),  # as /api/infer does (ex_vol false)
        chunk_wavs=chunk_wavs,
        chunk_pcm=[decode_audio(wav, SAMPLE_RATE, False) for wav in chunk_wavs],  # as /api/infer_stream_chunk does
        video=SAMPLE_VIDEO.read_bytes(),
        portrait=PORTRAIT_PNG.read_bytes(),
        hallo2_wav=encode_wav(speech[: int(HALLO2_AUDIO_SECONDS * SAMPLE_RATE)]),
    )


# --------------------------------------------------------------------------------------------- scenarios


@dataclass
class Scenario:
    key: str
    title: str
    rest_label: str
    triton_label: str
    rest: Callable[[], Awaitable[Any]]
    triton: Callable[[], Awaitable[Any]]
    request_timeout_s: float
    unit: str  # what one "request" of the load generator is
    warmup_rounds: int = 1  # per level: rounds of `concurrency` requests sent before measuring
    note: str = ""


def _checked(response, what: str):
    if response.status_code != 200:
        raise RuntimeError(f"HTTP {response.status_code} from {what}: {response.text[:200]}")
    return response


async def _best_effort(awaitable: Awaitable[Any]) -> None:
    """Clean-up after a failed or timed-out request (the front end's idle sweeps would free it later anyway)."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(awaitable, timeout=CLEANUP_TIMEOUT_S)


def build_scenarios(http, engine, inputs: Inputs, plan: Plan) -> list[Scenario]:
    """The four scenarios; ``engine`` is a ``frontend.triton.TritonEngine`` on the same Triton as the front end."""
    from benchmarks.a2e_bench import next_sequence_id
    from benchmarks.emotion_llama_bench import PROMPT_TEXT, SAMPLE_VIDEO
    from emoserve.constants import FPS
    from emoserve.model_catalog import (
        A2E_OFFLINE_MODEL,
        A2E_STREAM_MODEL,
        EMOTION_PIPELINE_MODEL,
        HALLO2_PIPELINE_MODEL,
    )
    from frontend.hallo2.tasks import CANCELLED, COMPLETED, FAILED
    from frontend.emotion_llama.router import Sampling
    from frontend.lam_a2e.schemas import StreamInitRequest

    # /api/infer with only the file: id_idx 0, no vocal extraction, no smoothing, no brows; the route's seed is 0
    async def rest_infer() -> np.ndarray:
        response = _checked(await http.post("/api/infer", files={"audio_file": ("speech.wav", inputs.speech_wav, "audio/wav")}),
                            "/api/infer")
        return np.asarray([frame["weights"] for frame in response.json()["frames"]], dtype=np.float32)

    async def triton_infer() -> np.ndarray:
        return await engine.infer_whole_audio(inputs.speech_pcm, 0, False, False, seed=0)

    # a session as /api/infer_stream_init's default body opens it (id 0, movement_smooth on, brows off)
    session_defaults = StreamInitRequest()
    chunk_frames = round(CHUNK_SECONDS * FPS)

    async def rest_session() -> list[float]:
        response = _checked(await http.post("/api/infer_stream_init", json=session_defaults.model_dump()), "stream init")
        session_id = response.json()["session_id"]
        latencies: list[float] = []
        closed = False
        try:
            for index, wav in enumerate(inputs.chunk_wavs):
                began = time.perf_counter()
                response = _checked(await http.post("/api/infer_stream_chunk", data={"session_id": session_id},
                                                    files={"audio_chunk": ("chunk.wav", wav, "audio/wav")}), "stream chunk")
                frames = len(response.json()["frames"])
                latencies.append(time.perf_counter() - began)
                if frames != chunk_frames:
                    raise RuntimeError(f"chunk {index}: {frames} frames, expected {chunk_frames}")
            _checked(await http.delete(f"/api/infer_stream_close/{session_id}"), "stream close")
            closed = True
        finally:
            if not closed:
                await _best_effort(http.delete(f"/api/infer_stream_close/{session_id}"))
        return latencies

    async def triton_session() -> list[float]:
        # the front end seeds a session with its (random) correlation id; here both are a unique sequence id
        sequence_id = next_sequence_id()
        latencies: list[float] = []
        started = ended = False
        last = len(inputs.chunk_pcm) - 1
        try:
            for index, pcm in enumerate(inputs.chunk_pcm):
                began = time.perf_counter()
                output = await engine.stream_chunk(sequence_id, pcm, start=index == 0, end=index == last,
                                                   id_idx=session_defaults.id_idx,
                                                   movement_smooth=session_defaults.movement_smooth,
                                                   brow_movement=session_defaults.brow_movement, seed=sequence_id)
                latencies.append(time.perf_counter() - began)
                started, ended = True, index == last
                if len(output.frames) != chunk_frames:
                    raise RuntimeError(f"chunk {index}: {len(output.frames)} frames, expected {chunk_frames}")
        finally:
            if started and not ended:  # cut short: free the sequence's state in the model, as the front end's close does
                await _best_effort(engine.stream_chunk(sequence_id, np.zeros(0, np.float32), start=False, end=True))
        return latencies

    sampling = Sampling(temperature=0.0, max_new_tokens=plan.max_new_tokens, seed=GREEDY_SEED)
    llama_timeout = 180.0

    async def rest_predict() -> str:
        body = {"data": [str(SAMPLE_VIDEO), PROMPT_TEXT], **sampling.model_dump(exclude_none=True)}
        return _checked(await http.post("/api/predict/", json=body), "/api/predict/").json()["data"][0]

    async def triton_predict() -> str:
        # the route reads the file and probes it, then relays exactly this stream (frontend.emotion_llama.router.answer)
        async with contextlib.aclosing(engine.stream_emotion_llama(inputs.video, PROMPT_TEXT, sampling.as_inputs(),
                                                                   llama_timeout)) as events:
            async for event in events:
                if event.final:
                    return event.text or ""
        raise RuntimeError("the stream ended without a final answer")

    async def rest_hallo2() -> int:
        response = _checked(await http.post(
            "/api/v1/inference/hallo2", data={"use_cache": "false"},
            files={"image_file": ("portrait.png", inputs.portrait, "image/png"),
                   "audio_file": ("speech.wav", inputs.hallo2_wav, "audio/wav")}), "create task")
        task_id = response.json()["task_id"]
        finished = False
        try:
            while True:
                task = _checked(await http.get(f"/api/v1/tasks/{task_id}"), "task status").json()
                if task["status"] == COMPLETED:
                    break
                if task["status"] in (FAILED, CANCELLED):
                    finished = True
                    raise RuntimeError(f"task {task['status']}: {task.get('error')}")
                await asyncio.sleep(HALLO2_POLL_INTERVAL_S)
            video = _checked(await http.get(f"/api/v1/tasks/{task_id}/video"), "task video").content
            finished = True
        finally:
            if not finished:  # a timed-out task must not keep the pipeline busy for the next requests
                await _best_effort(http.delete(f"/api/v1/tasks/{task_id}"))
        if not video:
            raise RuntimeError("empty video")
        return len(video)

    async def triton_hallo2() -> int:
        async def progress(percent: float, message: str) -> None:
            return None

        # what the task worker's runner sends (frontend.main.create_app.hallo2_runner): the uploaded bytes, no seed
        video, _ = await engine.run_hallo2(inputs.portrait, inputs.hallo2_wav, steps=plan.hallo2_steps,
                                           guidance_scale=HALLO2_GUIDANCE_SCALE, use_cache=False, progress=progress,
                                           cancel=asyncio.Event())
        return len(video)

    return [
        Scenario("infer", "LAM-A2E whole file", "`POST /api/infer`", f"`{A2E_OFFLINE_MODEL}`", rest_infer, triton_infer,
                 request_timeout_s=60.0, unit="request",
                 note=f"`{SPEECH_WAV.relative_to(PROJECT_ROOT)}` (7 s) as a multipart upload; the route decodes it to 16 kHz "
                      f"PCM and calls `{A2E_OFFLINE_MODEL}` with it. Triton-direct sends the same decoded PCM and options."),
        Scenario("stream", "LAM-A2E streaming sessions", "`/api/infer_stream_*`", f"`{A2E_STREAM_MODEL}` sequence",
                 rest_session, triton_session, request_timeout_s=120.0, unit="session",
                 note=f"One request = one session of {plan.stream_chunks} × {CHUNK_SECONDS:g} s chunks of speech. REST: init, "
                      f"the chunks (multipart WAV), close (which sends Triton one more, empty, END chunk). Triton-direct: the "
                      f"same chunks decoded as the route decodes them, START on the first, END on the last, a unique "
                      f"correlation id per session."),
        Scenario("predict", "Emotion-LLaMA", "`POST /api/predict/`", f"`{EMOTION_PIPELINE_MODEL}` stream", rest_predict,
                 triton_predict, request_timeout_s=llama_timeout, unit="request",
                 note=f"`{SAMPLE_VIDEO.relative_to(PROJECT_ROOT)}` by server-side path, the `[reason]` prompt of "
                      f"`emotion_llama_bench`, temperature 0 (greedy), max_new_tokens {plan.max_new_tokens}, seed "
                      f"{GREEDY_SEED}. Triton-direct: the decoupled pipeline over one gRPC stream until the final response."),
        Scenario("hallo2", "Hallo2 tasks", "`/api/v1` task", f"`{HALLO2_PIPELINE_MODEL}` stream", rest_hallo2,
                 triton_hallo2, request_timeout_s=300.0, unit="task", warmup_rounds=0,
                 note=f"`{PORTRAIT_PNG.relative_to(PROJECT_ROOT)}` + {HALLO2_AUDIO_SECONDS:g} s of speech, "
                      f"{plan.hallo2_steps} denoising steps, guidance {HALLO2_GUIDANCE_SCALE:g}, no cache. REST latency = "
                      f"create → status polled every {HALLO2_POLL_INTERVAL_S * 1000:.0f} ms until completed → video "
                      f"downloaded; the front end runs {HALLO2_MAX_CONCURRENT_TASKS} task at a time "
                      f"(`max_concurrent_tasks`) and the Triton `{HALLO2_PIPELINE_MODEL}` model has one instance, so "
                      "both paths run the pipeline one request at a time. No per-level warm-up (no batch shapes to warm)."),
    ]


# --------------------------------------------------------------------------------------------- measurement


@dataclass
class Priming:
    """One request per path before the budget starts: lazy initialisation, a latency estimate, the same-work check."""

    rest_s: float = float("nan")
    triton_s: float = float("nan")
    rest_value: Any = None
    triton_value: Any = None
    error: str = ""

    @property
    def estimate_s(self) -> float:
        return max(self.rest_s, self.triton_s)


@dataclass
class Level:
    scenario: str
    concurrency: int
    rest: LoadResult
    triton: LoadResult


@dataclass
class Outcome:
    scenarios: list[Scenario]
    priming: dict[str, Priming]
    levels: list[Level]
    hallo2_config: dict
    budget_s: float
    used_s: float


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


def skipped_level(concurrency: int, reason: str) -> LoadResult:
    return LoadResult(concurrency, 0, 0.0, skipped=reason)


async def measure(plan: Plan, base_url: str, grpc_url: str, inputs: Inputs, phase_times: dict[str, float]) -> Outcome:
    from frontend.triton import TritonEngine

    longest = 300.0
    engine = TritonEngine(require_loopback(grpc_url), timeout_s=longest)
    http = loopback_http_client(base_url, max(plan.concurrency) + 2, longest)
    try:
        # new tasks take their steps and guidance from the store's config: set them the documented way
        config = _checked(await http.post("/api/v1/inference/hallo2/config",
                                          json={"inference_steps": plan.hallo2_steps, "guidance_scale": HALLO2_GUIDANCE_SCALE}),
                          "hallo2 config").json()["config"]
        scenarios = build_scenarios(http, engine, inputs, plan)

        t0 = time.perf_counter()
        priming: dict[str, Priming] = {}
        for scenario in scenarios:
            priming[scenario.key] = await prime(scenario)
            log.info("primed %s: REST %s ms, Triton %s ms%s", scenario.key, ms(priming[scenario.key].rest_s),
                     ms(priming[scenario.key].triton_s), f" ({priming[scenario.key].error})" if priming[scenario.key].error else "")
        phase_times["priming (one request per path)"] = time.perf_counter() - t0

        budget = Budget(plan.time_budget_s)
        plan_levels = [(s, c) for s in scenarios for c in plan.concurrency]
        # seconds per request; the priming figure carries lazy initialisation, so a measured level replaces it
        estimates = {key: primed.estimate_s for key, primed in priming.items()}
        levels: list[Level] = []
        for index, (scenario, concurrency) in enumerate(plan_levels):
            primed = priming[scenario.key]
            if primed.error:
                reason = f"priming failed ({primed.error[:120]})"
                levels.append(Level(scenario.key, concurrency, skipped_level(concurrency, reason), skipped_level(concurrency, reason)))
                continue
            # the latency of one request at this concurrency if the server serialised them: a conservative estimate
            per_round = estimates[scenario.key] * concurrency
            share = budget.remaining() / (len(plan_levels) - index)  # what earlier levels left unused flows on
            path_seconds = min(plan.max_path_seconds, share / 2 - (scenario.warmup_rounds + 1) * per_round)
            if path_seconds < per_round:
                reason = f"time budget ({max(share, 0):.0f} s left for the level, ~{per_round:.1f} s per round)"
                levels.append(Level(scenario.key, concurrency, skipped_level(concurrency, reason), skipped_level(concurrency, reason)))
                log.warning("%s at concurrency %d skipped: %s", scenario.key, concurrency, reason)
                continue
            results: dict[str, LoadResult] = {}
            # alternate which path goes first, so slow drift of a shared machine does not always favour one
            order = ("rest", "triton") if index % 2 == 0 else ("triton", "rest")
            for path in order:
                results[path] = await run_load(getattr(scenario, path), concurrency, plan.max_requests, path_seconds,
                                               request_timeout_s=scenario.request_timeout_s,
                                               warmup_requests=scenario.warmup_rounds * concurrency)
                r = results[path]
                log.info("%s %s c=%d: %d ok, %d errors, p50 %s ms, %.2f req/s, stopped by %s", scenario.key, path,
                         concurrency, r.completed, len(r.errors), ms(r.stats.p(50)), r.throughput, r.stopped_by)
            levels.append(Level(scenario.key, concurrency, results["rest"], results["triton"]))
            measured = max(results["rest"].stats.p(50), results["triton"].stats.p(50)) / concurrency
            if not math.isnan(measured):  # NaN when a path had no successful request: keep the previous estimate
                estimates[scenario.key] = measured
        return Outcome(scenarios, priming, levels, config, plan.time_budget_s, plan.time_budget_s - budget.remaining())
    finally:
        await http.aclose()
        await engine.close()


# --------------------------------------------------------------------------------------------- servers


def ensure_repository(plan: Plan) -> Path:
    from export.build_repository import BuildSettings, build_repository

    out = WORK_DIR / f"repo-rest-{plan.variant}"
    started = time.perf_counter()
    # all three slices; ONNX exports and the LLM conversion are cached in the output folder by fingerprint
    build_repository(out, BuildSettings(profile=plan.a2e_profile, llm=plan.llm, encoder_profile=plan.encoder_profile,
                                        hallo2_profile=plan.hallo2_profile, seed=0))
    log.info("model repository %s ready in %.1f s", out, time.perf_counter() - started)
    return out


def frontend_environment(task_dir: Path) -> dict[str, str]:
    """Server-side media from examples/, and a Hallo2 task store of its own (a fresh database: default config)."""
    return {
        "EMOSERVE_MEDIA_ROOTS": json.dumps([str(EXAMPLES_DIR)]),
        "EMOSERVE_HALLO2_DATABASE_URL": f"sqlite:///{task_dir / 'hallo2.db'}",
        "EMOSERVE_HALLO2_DATA_DIR": str(task_dir / "tasks"),
        "EMOSERVE_MAX_CONCURRENT_TASKS": str(HALLO2_MAX_CONCURRENT_TASKS),
    }


def repository_sizes(repository: Path) -> dict[str, float]:
    from emoserve.model_catalog import (
        A2E_MODELS,
        EMOTION_AUDIO_MODEL,
        EMOTION_LLM_MODEL,
        EMOTION_PIPELINE_MODEL,
        EMOTION_VISION_MODEL,
        HALLO2_MODELS,
    )

    slices = {"LAM-A2E": A2E_MODELS,
              "Emotion-LLaMA": (EMOTION_PIPELINE_MODEL, EMOTION_LLM_MODEL, EMOTION_VISION_MODEL, EMOTION_AUDIO_MODEL),
              "Hallo2": HALLO2_MODELS}
    sizes = {}
    for name, models in slices.items():
        total = 0
        for model in models:
            total += sum(p.stat().st_size for p in (repository / model).rglob("*") if p.is_file() and "__pycache__" not in p.parts)
        sizes[name] = total / 1e6
    return sizes


# --------------------------------------------------------------------------------------------- report


def same_work_note(outcome: Outcome) -> list[str]:
    """What the priming requests returned on both paths: evidence that both did the same work."""
    notes = []
    for key, primed in outcome.priming.items():
        if primed.error:
            notes.append(f"{key}: priming failed — {primed.error}")
            continue
        rest, triton = primed.rest_value, primed.triton_value
        if key == "infer":
            if rest.shape == triton.shape:
                notes.append(f"`/api/infer` vs Triton-direct: {rest.shape[0]} frames each, largest absolute difference "
                             f"{float(np.max(np.abs(rest - triton))):.2e}")
            else:
                notes.append(f"`/api/infer` vs Triton-direct: shapes differ ({rest.shape} vs {triton.shape})")
        elif key == "stream":
            notes.append(f"streaming: {len(rest)} / {len(triton)} chunks per session (REST / Triton-direct), "
                         "frame count checked on every chunk")
        elif key == "predict":
            answers = Counter(v for level in outcome.levels if level.scenario == key
                              for r in (level.rest, level.triton) for v in r.values)
            answers.update([rest, triton])
            notes.append(f"Emotion-LLaMA: {'the same' if rest == triton else 'DIFFERENT'} answer on both paths at priming; "
                         f"{len(answers)} distinct answer(s) over every request (greedy)")
        elif key == "hallo2":
            per_path = {"rest": Counter([rest]), "triton": Counter([triton])}
            for level in outcome.levels:
                if level.scenario == key:
                    per_path["rest"].update(level.rest.values)
                    per_path["triton"].update(level.triton.values)
            shown = {path: f"{len(sizes)} distinct size(s), {min(sizes)}–{max(sizes)} bytes" for path, sizes in per_path.items()}
            varies = all(len(sizes) > 1 for sizes in per_path.values())
            notes.append(f"Hallo2: MP4 over every request — REST {shown['rest']}; Triton-direct {shown['triton']} (the same "
                         "bytes in and the pipeline's default seed on both paths"
                         + ("; the output varies run to run on each path alike, so its size is no same-work check)"
                            if varies else ")"))
    return notes


def write_report(report: Report, plan: Plan, outcome: Outcome) -> list[list[str]]:
    """Scenario tables, the ratio section and the errors; returns the ratio rows for the summary."""
    by_scenario: dict[str, list[Level]] = {}
    for level in outcome.levels:
        by_scenario.setdefault(level.scenario, []).append(level)
    ratio_rows: list[list[str]] = []
    for scenario in outcome.scenarios:
        rows = []
        for level in by_scenario.get(scenario.key, []):
            rows.append(load_row(f"REST {scenario.rest_label}", level.rest))
            rows.append(load_row(f"Triton-direct {scenario.triton_label}", level.triton))
        report.table(f"{scenario.title} — latency per {scenario.unit}", LOAD_HEADER, rows,
                     note=scenario.note + f" Request timeout {scenario.request_timeout_s:.0f} s.")
        if scenario.key == "stream":
            chunk_rows = []
            for level in by_scenario.get(scenario.key, []):
                for label, result in ((f"REST {scenario.rest_label}", level.rest), (f"Triton-direct {scenario.triton_label}", level.triton)):
                    chunks = chunk_result(result)
                    if chunks.skipped:
                        chunk_rows.append([label, str(level.concurrency), "-", "-", "-", "-", "-", "-"])
                        continue
                    s = chunks.stats
                    chunk_rows.append([label, str(level.concurrency), str(s.n), fmt_rate(chunks.throughput),
                                       ms(s.p(50)), ms(s.p(95)), ms(s.p(99)), ms(s.mean)])
            report.table(f"{scenario.title} — latency per {CHUNK_SECONDS:g} s chunk",
                         ["path", "concurrent sessions", "chunks", "chunks/s", "p50 ms", "p95 ms", "p99 ms", "mean ms"],
                         chunk_rows, note="Chunks of the sessions that completed (a failed session's chunks are left out).")
        for level in by_scenario.get(scenario.key, []):
            if level.rest.skipped:
                ratio_rows.append([scenario.title, str(level.concurrency), "-", "-", "-", "-", "-",
                                   cell(f"skipped: {level.rest.skipped}")])
                continue
            p50, p99, throughput = overhead_ratios(level.rest, level.triton)
            ratio_rows.append([scenario.title, str(level.concurrency), p50, p99, throughput, ms(level.rest.stats.p(50)),
                               ms(level.triton.stats.p(50)), ""])
            if scenario.key == "stream":
                rest_chunks, triton_chunks = chunk_result(level.rest), chunk_result(level.triton)
                p50, p99, throughput = overhead_ratios(rest_chunks, triton_chunks)
                ratio_rows.append([f"{scenario.title} (per chunk)", str(level.concurrency), p50, p99, throughput,
                                   ms(rest_chunks.stats.p(50)), ms(triton_chunks.stats.p(50)), ""])

    report.table(
        "1. REST / Triton-direct",
        ["scenario", "concurrency", "p50 ratio (REST/Triton)", "p99 ratio (REST/Triton)", "throughput ratio (Triton/REST)",
         "REST p50 ms", "Triton p50 ms", "note"],
        ratio_rows,
        note=("Front-end overhead: every ratio reads \"how many times worse via REST\" — latency REST / Triton-direct, "
              "throughput Triton-direct / REST — so 1.00x means the front end costs nothing measurable and 1.30x means "
              "30 % more. Both paths ran at the same concurrency with the same inputs and the same work; the Triton-direct "
              "path is the front end's own gRPC client code called from this process. The difference is what the front "
              "end adds: HTTP parsing and the multipart upload, the WAV decode (A2E) or the file read and `probe_video` "
              "(Emotion-LLaMA) before it calls Triton, the asyncio gRPC hop, building and serialising the JSON answer "
              "(A2E frames) and parsing it in the client, streaming session bookkeeping and the extra empty END call of "
              "a session's close; for Hallo2 also the task store (SQLite rows, input and output files), the worker's "
              "hand-off and the status polling, which alone adds up to one poll interval "
              f"({HALLO2_POLL_INTERVAL_S * 1000:.0f} ms) per task. The *per chunk* rows compare single chunk requests "
              "within sessions; the session rows include init/close."),
    )

    error_lines = []
    for level in outcome.levels:
        for path, result in (("REST", level.rest), ("Triton-direct", level.triton)):
            for message, count in Counter(result.errors).most_common(3):
                error_lines.append(f"- {level.scenario}, {path}, concurrency {level.concurrency}: {count}× {message}")
            for message, count in Counter(result.warmup_errors).most_common(1):
                error_lines.append(f"- {level.scenario}, {path}, concurrency {level.concurrency} (warm-up): {count}× {message}")
    report.add("### Errors\n\n" + ("\n".join(error_lines) if error_lines else "none") + "\n")
    return ratio_rows


def report_header(plan: Plan, command: str, started_at: _dt.datetime, load_before: tuple[float, float, float],
                  versions_now: dict[str, str], repository: Path, outcome: Outcome) -> str:
    manifest = json.loads((repository / "weights.json").read_text())
    weights = {name: manifest.get(key, {}).get("weights", "?")
               for name, key in (("LAM-A2E", "lam_a2e"), ("Emotion-LLaMA", "emotion_llama"), ("Hallo2", "hallo2"))}
    sizes = ", ".join(f"{name} {mb:.1f} MB" for name, mb in repository_sizes(repository).items())
    return "\n".join([
        f"# REST load generator — front-end overhead as REST / Triton-direct ({plan.variant})",
        "",
        f"- date: {started_at.isoformat(timespec='seconds')}",
        f"- command: `{command}` (from the repository root)",
        "- machine: " + "; ".join(f"{k} {v}" for k, v in machine_description().items()),
        "- versions: " + "; ".join(f"{k} {v}" for k, v in versions_now.items()),
        (f"- model repository: `{repository.relative_to(PROJECT_ROOT)}` — {sizes}; LAM-A2E `{plan.a2e_profile}`, "
         f"LLM `{plan.llm}`, encoders `{plan.encoder_profile}`, Hallo2 `{plan.hallo2_profile}`"),
        ("- weights: " + "; ".join(f"{name}: {text}" for name, text in weights.items())
         + " (seeded-random weights give the networks' real cost at their size but meaningless outputs; the "
           "`smollm2` LLM of the full variant is the real SmolLM2-135M)"),
        (f"- plan: concurrency {', '.join(map(str, plan.concurrency))}; per path and level at most {plan.max_requests} "
         f"requests and {plan.max_path_seconds:.0f} s (in-flight requests finish); time budget {plan.time_budget_s:.0f} s "
         f"for all levels (levels that do not fit are skipped and listed); Hallo2 task config in the front end: "
         f"{outcome.hallo2_config}"),
        (f"- load average at start (1/5/15 min): {load_before[0]:.2f} / {load_before[1]:.2f} / {load_before[2]:.2f} "
         "(other work on the machine skews every figure)"),
        ("- load generator: this process, one asyncio loop (httpx for REST, `tritonclient.grpc.aio` through "
         "`frontend.triton.TritonEngine` for Triton-direct), on the same cores as the servers; all traffic on loopback"),
        "",
        ("Method: closed loop — `concurrency` workers each send the next request as soon as the previous one is "
         "answered; a level stops when its request count or its time bound is reached (whichever first; requests in "
         "flight finish). Each scenario is primed once per path before the budget starts; each level then sends one "
         "warm-up round (`concurrency` requests, not recorded; none for Hallo2) before measuring. The two paths of a "
         "level run one after the other with the same bounds, alternating which goes first. Latency is per request "
         "from send to complete answer; req/s = successful requests / wall time of the level; errors are counted, "
         "not retried."),
        "",
    ])


def default_out(quick: bool) -> Path:
    return RESULTS_DIR / ("rest-load-quick.md" if quick else "rest-load.md")


def run(args: argparse.Namespace) -> int:
    from stack.processes import FrontendProcess, free_port
    from stack.triton_server import TritonServer, TritonServerOptions

    plan = QUICK_PLAN if args.quick else FULL_PLAN
    if args.time_budget is not None:
        plan = dataclasses.replace(plan, time_budget_s=args.time_budget)
    out_path = Path(args.out or default_out(args.quick))
    command = "python -m benchmarks.rest_load " + " ".join(shlex.quote(a) for a in args.argv)
    started_at = _dt.datetime.now().astimezone()
    load_before = os.getloadavg()
    phase_times: dict[str, float] = {}

    t0 = time.perf_counter()
    repository = ensure_repository(plan)
    phase_times["repository build / reuse"] = time.perf_counter() - t0
    logs = WORK_DIR / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    triton_log = logs / f"tritonserver-rest-{plan.variant}.log"
    triton_log.unlink(missing_ok=True)
    inputs = load_inputs(plan)

    task_dir = Path(tempfile.mkdtemp(prefix="rest-load-hallo2-", dir=WORK_DIR))
    server = TritonServer(TritonServerOptions(repository, http_port=free_port(), grpc_port=free_port(),
                                              metrics_port=free_port(), log_path=triton_log))
    frontend: FrontendProcess | None = None
    try:
        t0 = time.perf_counter()
        server.start()
        phase_times["tritonserver start"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        frontend = FrontendProcess(server.grpc_url, env=frontend_environment(task_dir),
                                   log_path=logs / f"frontend-rest-{plan.variant}.log", log_level="warning").start()
        phase_times["front end start"] = time.perf_counter() - t0
        require_loopback(frontend.base_url)
        versions_now = versions(require_loopback(server.grpc_url), DEFAULT_DISTRIBUTIONS + ("httpx", "av", "transformers"))
        t0 = time.perf_counter()
        outcome = asyncio.run(measure(plan, frontend.base_url, server.grpc_url, inputs, phase_times))
        phase_times["levels (budget)"] = time.perf_counter() - t0 - phase_times["priming (one request per path)"]
    finally:
        if frontend is not None:
            frontend.stop()
        server.stop()
        shutil.rmtree(task_dir, ignore_errors=True)

    report = Report()
    report.add(report_header(plan, command, started_at, load_before, versions_now, repository, outcome))
    ratio_rows = write_report(report, plan, outcome)

    # one line per scenario: its ratios at every concurrency (rows: scenario, concurrency, p50, p99, throughput, ...)
    per_scenario: dict[str, list[str]] = {}
    for row in ratio_rows:
        figures = "skipped" if row[2] == "-" else f"p50 {row[2]}, p99 {row[3]}, throughput {row[4]}"
        per_scenario.setdefault(row[0], []).append(f"c={row[1]}: {figures}")
    summary = [[f"front-end overhead (REST / Triton-direct), {name}", "; ".join(parts)] for name, parts in per_scenario.items()]
    measured = [r for level in outcome.levels for r in (level.rest, level.triton) if not r.skipped]
    summary.append(["requests measured (REST + Triton-direct)", str(sum(r.completed for r in measured))])
    summary.append(["errors", str(sum(len(r.errors) for r in measured))])
    skipped = [f"{level.scenario} c={level.concurrency}" for level in outcome.levels if level.rest.skipped]
    summary.append(["levels skipped", ", ".join(skipped) if skipped else "none"])
    summary += [["same work", cell(note)] for note in same_work_note(outcome)]
    summary.append(["measurement time used / budget", f"{outcome.used_s:.0f} s / {outcome.budget_s:.0f} s"])
    load_after = os.getloadavg()
    summary.append(["load average at end (1/5/15 min)", f"{load_after[0]:.2f} / {load_after[1]:.2f} / {load_after[2]:.2f}"])
    summary += [[f"time: {phase}", f"{seconds:.1f} s"] for phase, seconds in phase_times.items()]
    report.table("Summary", ["item", "value"], summary)

    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(report.text())
    print(f"results written to {out_path}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="tiny models, concurrency 1 and 2, at most 8 requests per level, 120 s budget")
    parser.add_argument("--out", type=Path, default=None,
                        help="results markdown (default benchmarks/results/rest-load.md, rest-load-quick.md with --quick)")
    parser.add_argument("--time-budget", type=float, default=None,
                        help="seconds for all levels together (default 360, 120 with --quick); build, start-up and "
                             "priming excluded")
    args = parser.parse_args(argv)
    args.argv = argv
    if args.time_budget is not None and args.time_budget <= 0:
        parser.error("--time-budget must be positive")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise

    raise_on_sigterm()
    return run(args)


if __name__ == "__main__":
    sys.exit(main())

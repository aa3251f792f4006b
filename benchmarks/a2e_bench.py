"""LAM-A2E serving benchmark: REST front end vs Triton gRPC vs the in-process pipeline, on this machine's CPU.

    python -m benchmarks.a2e_bench                 # full profile (upstream dimensions), ~10 min on 2 cores
    python -m benchmarks.a2e_bench --quick         # tiny profile, few requests: a < 60 s smoke run

It builds (or re-uses) a model repository in ``benchmarks/.work/repo-<profile>``, starts its own
tritonserver on free loopback ports and its own front-end process (``python -m frontend``), and measures

1. ``POST /api/infer`` latency for a 5 s clip (sequential requests);
2. per-chunk streaming latency with 1 s chunks sent back-to-back by 1, 4 and 8 concurrent sessions, via
   REST, via Triton gRPC directly (``lam_a2e_stream``, sequence ids) and via the in-process pipeline
   (``StreamSessionStore`` + ``A2EOnnxRunner``, all sessions in one batch per round);
3. real-time capacity: sessions paced at one 1 s chunk per second, staggered evenly over the second;
   a session count passes when every chunk succeeded and the p99 chunk latency is below 1 s;
4. batching evidence from Triton's statistics around the 8-session gRPC (and REST) run.

The results go to a markdown file (``--out``) and to stdout. All traffic is to 127.0.0.1; every loop is
bounded in count and in time. Servers are stopped in ``finally`` blocks.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import datetime as _dt
import logging
import os
import shlex
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from benchmarks.common import (
    PROJECT_ROOT,
    RESULTS_DIR,
    WORK_DIR,
    Budget,
    LatencyStats,
    Report,
    latency_row,
    machine_description,
    ms,
    raise_on_sigterm,
    ratio,
    settled_statistics,
    statistics_delta,
    versions,
)
from emoserve.constants import SAMPLE_RATE
from stack.processes import FrontendProcess, free_port

EXAMPLE_WAV = PROJECT_ROOT / "examples" / "speech.wav"

CHUNK_SECONDS = 1.0
REALTIME_P99_LIMIT_S = 1.0  # capacity criterion: p99 chunk latency below the chunk duration
REQUEST_TIMEOUT_S = 60.0

log = logging.getLogger("a2e_bench")


# --------------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class BenchPlan:
    infer_requests: int
    infer_clip_seconds: float
    stream_chunks: int
    stream_concurrency: tuple[int, ...]
    capacity_levels: tuple[int, ...]
    capacity_chunks: int
    rest_capacity: bool
    time_budget_s: float


FULL_PLAN = BenchPlan(
    infer_requests=20,
    infer_clip_seconds=5.0,
    stream_chunks=12,
    stream_concurrency=(1, 4, 8),
    # the full network takes ~0.4 s per 1 s window on one 2-core box, so the interesting range is small
    capacity_levels=(1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 24, 32),
    capacity_chunks=10,
    rest_capacity=True,
    time_budget_s=540.0,
)

QUICK_PLAN = BenchPlan(
    infer_requests=5,
    infer_clip_seconds=5.0,
    stream_chunks=3,
    stream_concurrency=(1, 4, 8),
    capacity_levels=(1, 4),
    capacity_chunks=2,
    rest_capacity=True,
    time_budget_s=45.0,
)


# --------------------------------------------------------------------------------------------- helpers


def load_speech() -> np.ndarray:
    from emoserve.audio import decode_audio

    return decode_audio(EXAMPLE_WAV.read_bytes(), SAMPLE_RATE)


def session_audio(speech: np.ndarray, session: int, seconds: float) -> np.ndarray:
    """Speech for one session: examples/speech.wav repeated, shifted per session so sessions differ."""
    needed = int(seconds * SAMPLE_RATE)
    reps = needed // speech.size + 2
    long = np.tile(speech, reps)
    offset = (session * 5333) % speech.size
    return np.ascontiguousarray(long[offset : offset + needed], dtype=np.float32)


def session_chunks(speech: np.ndarray, session: int, count: int) -> list[np.ndarray]:
    audio = session_audio(speech, session, count * CHUNK_SECONDS)
    step = int(CHUNK_SECONDS * SAMPLE_RATE)
    return [audio[i * step : (i + 1) * step] for i in range(count)]


# --------------------------------------------------------------------------------------------- processes


def ensure_repository(profile: str) -> Path:
    from export.build_repository import BuildSettings, build_repository

    out = WORK_DIR / f"repo-{profile}"
    started = time.perf_counter()
    build_repository(out, BuildSettings(profile=profile, seed=0, slices=("lam_a2e",)))  # the ONNX export is cached by fingerprint
    log.info("model repository %s ready in %.1f s", out, time.perf_counter() - started)
    return out


# --------------------------------------------------------------------------------------------- session drivers
#
# A driver runs ONE session: it sends its chunks (back-to-back, or paced by ``schedule``) and returns the
# per-chunk latencies. ``gate`` (a barrier) makes all sessions of a run start sending together; ``stop_at``
# (a monotonic deadline) bounds it in time.


@dataclass
class SessionResult:
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    max_lag_s: float = 0.0  # paced runs: how far behind its 1 chunk/s schedule the session fell


def _wait_until(moment: float, stop_at: float) -> bool:
    delay = moment - time.monotonic()
    if delay > 0:
        if moment > stop_at:
            return False
        time.sleep(delay)
    return time.monotonic() < stop_at


def rest_session(base_url: str, chunks_wav: list[bytes], session: int, gate: threading.Barrier | None,
                 stop_at: float, pace_start: float | None = None) -> SessionResult:
    import httpx

    result = SessionResult()
    with httpx.Client(base_url=base_url, timeout=REQUEST_TIMEOUT_S) as client:
        session_id = None
        try:
            response = client.post("/api/infer_stream_init", json={"id_idx": session % 12})
            response.raise_for_status()
            session_id = response.json()["session_id"]
        except Exception as exc:  # noqa: BLE001 - reported in the table
            result.errors.append(f"init: {exc}")
        if gate is not None:
            try:
                gate.wait(timeout=REQUEST_TIMEOUT_S)
            except threading.BrokenBarrierError:
                pass
        if session_id is None:
            return result
        try:
            for index, wav in enumerate(chunks_wav):
                if pace_start is not None:
                    scheduled = pace_start + index * CHUNK_SECONDS
                    if not _wait_until(scheduled, stop_at):
                        break
                    result.max_lag_s = max(result.max_lag_s, time.monotonic() - scheduled)
                elif time.monotonic() >= stop_at:
                    break
                started = time.perf_counter()
                try:
                    response = client.post("/api/infer_stream_chunk", data={"session_id": session_id},
                                           files={"audio_chunk": ("chunk.wav", wav, "audio/wav")})
                    response.raise_for_status()
                    frames = len(response.json()["frames"])
                except Exception as exc:  # noqa: BLE001
                    result.errors.append(f"chunk {index}: {exc}")
                    break
                result.latencies.append(time.perf_counter() - started)
                if frames != 30:
                    result.errors.append(f"chunk {index}: {frames} frames, expected 30")
        finally:
            try:
                client.delete(f"/api/infer_stream_close/{session_id}")
            except Exception:  # noqa: BLE001 - the front end's idle timeout frees it anyway
                pass
    return result


def _stream_inputs(chunk: np.ndarray, session: int):
    import tritonclient.grpc as grpcclient

    from emoserve.model_catalog import AUDIO, BROW_MOVEMENT, ID_IDX, MOVEMENT_SMOOTH, SEED

    def tensor(name, array, datatype):
        t = grpcclient.InferInput(name, list(array.shape), datatype)
        t.set_data_from_numpy(array)
        return t

    # the same options the REST front end sends for a default session (movement_smooth on, brows off)
    return [
        tensor(AUDIO, np.ascontiguousarray(chunk, dtype=np.float32).reshape(1, -1), "FP32"),
        tensor(ID_IDX, np.array([[session % 12]], np.int32), "INT32"),
        tensor(MOVEMENT_SMOOTH, np.array([[True]], np.bool_), "BOOL"),
        tensor(BROW_MOVEMENT, np.array([[False]], np.bool_), "BOOL"),
        tensor(SEED, np.array([[session]], np.uint64), "UINT64"),
    ]


_SEQUENCE_BASE = (os.getpid() << 32) | 1  # distinct from earlier runs' and the front end's (random 63-bit) ids
_sequence_counter = iter(range(_SEQUENCE_BASE, _SEQUENCE_BASE + 10_000_000))
_sequence_lock = threading.Lock()


def next_sequence_id() -> int:
    with _sequence_lock:
        return next(_sequence_counter)


def triton_session(grpc_url: str, chunks: list[np.ndarray], session: int, gate: threading.Barrier | None,
                   stop_at: float, pace_start: float | None = None) -> SessionResult:
    import tritonclient.grpc as grpcclient

    from emoserve.model_catalog import A2E_STREAM_MODEL, BLENDSHAPES

    result = SessionResult()
    sequence_id = next_sequence_id()
    client = grpcclient.InferenceServerClient(grpc_url)
    inputs = [_stream_inputs(chunk, session) for chunk in chunks]
    started_sequence = ended = False
    try:
        if gate is not None:
            try:
                gate.wait(timeout=REQUEST_TIMEOUT_S)
            except threading.BrokenBarrierError:
                pass
        for index in range(len(chunks)):
            if pace_start is not None:
                scheduled = pace_start + index * CHUNK_SECONDS
                if not _wait_until(scheduled, stop_at):
                    break
                result.max_lag_s = max(result.max_lag_s, time.monotonic() - scheduled)
            elif time.monotonic() >= stop_at:
                break
            last = index == len(chunks) - 1
            started = time.perf_counter()
            try:
                response = client.infer(A2E_STREAM_MODEL, inputs[index], sequence_id=sequence_id,
                                        sequence_start=index == 0, sequence_end=last, client_timeout=REQUEST_TIMEOUT_S)
                frames = response.as_numpy(BLENDSHAPES).shape[1]
            except Exception as exc:  # noqa: BLE001
                result.errors.append(f"chunk {index}: {exc}")
                break
            result.latencies.append(time.perf_counter() - started)
            started_sequence, ended = True, last
            if frames != 30:
                result.errors.append(f"chunk {index}: {frames} frames, expected 30")
    finally:
        if started_sequence and not ended:  # cut short: free the sequence's state in the model
            try:
                client.infer(A2E_STREAM_MODEL, _stream_inputs(np.zeros(0, np.float32), session), sequence_id=sequence_id,
                             sequence_end=True, client_timeout=REQUEST_TIMEOUT_S)
            except Exception:  # noqa: BLE001
                pass
        client.close()
    return result


def run_sessions(count: int, driver: Callable[[int, threading.Barrier, float, float | None], SessionResult],
                 stop_at: float, paced: bool = False) -> tuple[LatencyStats, float]:
    """Run ``count`` sessions in threads; returns the pooled latencies and the worst schedule lag."""
    gate = threading.Barrier(count)
    stats = LatencyStats()
    max_lag = 0.0
    pace_origin = time.monotonic() + 0.5 if paced else None  # sessions staggered evenly over one chunk period
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(count, thread_name_prefix="session") as pool:
        futures = [
            pool.submit(driver, s, None if paced else gate, stop_at,
                        None if pace_origin is None else pace_origin + s * CHUNK_SECONDS / count)
            for s in range(count)
        ]
        for future in futures:
            result = future.result()
            stats.samples.extend(result.latencies)
            stats.errors.extend(result.errors)
            max_lag = max(max_lag, result.max_lag_s)
    stats.wall_s = time.perf_counter() - started
    return stats, max_lag


def inprocess_stream(runner, speech: np.ndarray, concurrency: int, chunk_count: int, stop_at: float) -> LatencyStats:
    """The Triton stream model's pipeline without Triton: every session's chunk k in ONE ``process`` call."""
    from emoserve.lam_a2e.postprocess import PostprocessOptions
    from emoserve.lam_a2e.sessions import ChunkRequest, StreamSessionStore

    store = StreamSessionStore()
    chunks = [session_chunks(speech, s, chunk_count) for s in range(concurrency)]
    stats = LatencyStats()
    started_all = time.perf_counter()
    ended = True
    for index in range(chunk_count):
        if time.monotonic() >= stop_at:
            break
        requests = [
            ChunkRequest(correlation_id=s + 1, audio=chunks[s][index], start=index == 0, end=index == chunk_count - 1,
                         id_idx=s % 12, options=PostprocessOptions(movement_smooth=True), seed=s)
            for s in range(concurrency)
        ]
        started = time.perf_counter()
        results = store.process(requests, runner)
        elapsed = time.perf_counter() - started
        for result in results:
            if isinstance(result, Exception):
                stats.errors.append(str(result))
            else:
                stats.samples.append(elapsed)  # every chunk of the round waits for the whole round
        ended = index == chunk_count - 1
    if not ended:
        for s in range(concurrency):
            store.close(s + 1)
    stats.wall_s = time.perf_counter() - started_all
    return stats


# --------------------------------------------------------------------------------------------- phases


def warm_up(frontend_url: str, grpc_url: str, runner, speech: np.ndarray, clip_wav: bytes, concurrencies: tuple[int, ...]) -> None:
    """First calls at each batch shape allocate ONNX Runtime buffers; keep that out of the figures."""
    import httpx

    from emoserve.audio import encode_wav
    from emoserve.constants import WINDOW_SAMPLES

    with httpx.Client(base_url=frontend_url, timeout=REQUEST_TIMEOUT_S) as client:
        client.post("/api/infer", files={"audio_file": ("clip.wav", clip_wav, "audio/wav")}).raise_for_status()
    stop_at = time.monotonic() + 120
    for count in sorted({1, max(concurrencies)}):
        run_sessions(count, lambda s, g, d, p: triton_session(grpc_url, session_chunks(speech, s, 2), s, g, d, p), stop_at)
    wavs = [encode_wav(c) for c in session_chunks(speech, 0, 2)]
    run_sessions(1, lambda s, g, d, p: rest_session(frontend_url, wavs, s, g, d, p), stop_at)
    for batch in sorted(set(concurrencies)):
        runner(np.zeros((batch, WINDOW_SAMPLES), np.float32), np.zeros(batch, np.int64))


def bench_infer(report: Report, frontend_url: str, clip_wav: bytes, clip_seconds: float, requests: int, budget: Budget) -> LatencyStats:
    import httpx

    stats = LatencyStats()
    started_all = time.perf_counter()
    with httpx.Client(base_url=frontend_url, timeout=REQUEST_TIMEOUT_S) as client:
        for _ in range(requests):
            if budget.remaining() <= 0:
                break
            started = time.perf_counter()
            try:
                response = client.post("/api/infer", files={"audio_file": ("clip.wav", clip_wav, "audio/wav")})
                response.raise_for_status()
                frames = len(response.json()["frames"])
            except Exception as exc:  # noqa: BLE001
                stats.errors.append(str(exc))
                continue
            stats.samples.append(time.perf_counter() - started)
            if frames != int(round(clip_seconds * 30)):
                stats.errors.append(f"{frames} frames for a {clip_seconds:g} s clip")
    stats.wall_s = time.perf_counter() - started_all
    report.table(
        f"1. `POST /api/infer`, {clip_seconds:g} s clip, sequential requests",
        ["path", "requests", "p50 ms", "p95 ms", "p99 ms", "mean ms", "max ms", "errors"],
        [latency_row("REST → Triton `lam_a2e_offline`", stats)],
        note=f"Real-time factor at p50: {stats.p(50) / clip_seconds:.3f} (latency / audio duration)." if stats.n else "",
    )
    return stats


def bench_streaming(report: Report, frontend_url: str, grpc_url: str, runner, speech: np.ndarray, plan: BenchPlan,
                    budget: Budget) -> dict:
    from emoserve.audio import encode_wav
    from emoserve.model_catalog import A2E_NETWORK_MODEL, A2E_STREAM_MODEL

    results: dict[int, dict[str, LatencyStats]] = {}
    batching: dict[str, dict[str, dict]] = {}
    top = max(plan.stream_concurrency)
    models = (A2E_STREAM_MODEL, A2E_NETWORK_MODEL)
    for concurrency in plan.stream_concurrency:
        # a whole level is skipped rather than cut when the budget cannot cover it
        if budget.remaining() < 5:
            log.warning("time budget spent: streaming at %d sessions skipped", concurrency)
            break
        stop_at = time.monotonic() + max(budget.remaining() / 3, 5)
        per_path: dict[str, LatencyStats] = {}
        wavs = [[encode_wav(c) for c in session_chunks(speech, s, plan.stream_chunks)] for s in range(concurrency)]
        chunks = [session_chunks(speech, s, plan.stream_chunks) for s in range(concurrency)]

        snapshots = {}
        if concurrency == top:
            snapshots["REST"] = settled_statistics(grpc_url, models)
        per_path["REST"], _ = run_sessions(concurrency, lambda s, g, d, p: rest_session(frontend_url, wavs[s], s, g, d, p), stop_at)
        if concurrency == top:
            after = settled_statistics(grpc_url, models)
            batching["REST"] = {m: statistics_delta(snapshots["REST"][m], after[m]) for m in after}
            snapshots["Triton gRPC"] = after

        stop_at = time.monotonic() + max(budget.remaining() / 3, 5)
        per_path["Triton gRPC"], _ = run_sessions(concurrency, lambda s, g, d, p: triton_session(grpc_url, chunks[s], s, g, d, p), stop_at)
        if concurrency == top:
            after = settled_statistics(grpc_url, models)
            batching["Triton gRPC"] = {m: statistics_delta(snapshots["Triton gRPC"][m], after[m]) for m in after}

        stop_at = time.monotonic() + max(budget.remaining() / 3, 5)
        per_path["in-process"] = inprocess_stream(runner, speech, concurrency, plan.stream_chunks, stop_at)
        results[concurrency] = per_path
        log.info("streaming at %d sessions done (%.0f s of budget left)", concurrency, budget.remaining())

    rows = []
    for concurrency, per_path in results.items():
        for path, stats in per_path.items():
            throughput = stats.n / stats.wall_s if stats.wall_s > 0 else float("nan")
            expected = concurrency * plan.stream_chunks
            count = str(stats.n) if stats.n == expected else f"{stats.n} of {expected} (cut)"
            rows.append([str(concurrency), path, count, ms(stats.p(50)), ms(stats.p(99)), ms(stats.mean),
                         f"{throughput:.2f}", str(len(stats.errors))])
    report.table(
        f"2. Streaming: per-chunk latency, {CHUNK_SECONDS:g} s chunks sent back-to-back, {plan.stream_chunks} chunks per session",
        ["sessions", "path", "chunks", "p50 ms", "p99 ms", "mean ms", "chunks/s", "errors"],
        rows,
        note=("REST = front end → Triton `lam_a2e_stream`; Triton gRPC = `lam_a2e_stream` called directly with sequence ids; "
              "in-process = `StreamSessionStore.process` + `A2EOnnxRunner` in this process, all sessions' chunk k in one "
              "call (every chunk of a round is charged the round's time). chunks/s = audio seconds processed per wall second."),
    )
    ratio_rows = []
    for concurrency, per_path in results.items():
        rest, triton, local = per_path["REST"], per_path["Triton gRPC"], per_path["in-process"]
        ratio_rows.append([str(concurrency), ratio(rest.p(50), triton.p(50)), ratio(rest.p(99), triton.p(99)),
                           ratio(triton.p(50), local.p(50)), ratio(triton.p(99), local.p(99))])
    report.table(
        "2b. Streaming overhead ratios",
        ["sessions", "REST/Triton p50", "REST/Triton p99", "Triton/in-process p50", "Triton/in-process p99"],
        ratio_rows,
        note="REST/Triton = cost of the front end (HTTP, multipart, WAV decode, JSON frames); Triton/in-process = cost of "
             "Triton (gRPC, sequence batcher queueing, python-backend IPC, BLS call to `lam_a2e`).",
    )
    return {"latency": results, "batching": batching}


def report_batching(report: Report, batching: dict, concurrency: int, chunks: int) -> None:
    if not batching:
        report.add(f"### 2c. Batching evidence\n\n(not measured: the {concurrency}-session run did not take place)\n")
        return
    rows = []
    for path, models in batching.items():
        for model, delta in models.items():
            inferences, executions = delta["inference_count"], delta["execution_count"]
            histogram = ", ".join(f"{size}×{count}" for size, count in delta["batches"].items()) or "-"
            rows.append([path, f"`{model}`", str(inferences), str(executions),
                         f"{inferences / executions:.2f}" if executions else "n/a",
                         "yes" if 0 < executions < inferences else "no", histogram])
    report.table(
        f"2c. Batching evidence: Triton statistics around the {concurrency}-session streaming run ({chunks} chunks per session)",
        ["run", "model", "inference_count", "execution_count", "avg batch", "batched across sessions", "batch size × executions"],
        rows,
        note=("Deltas of `get_inference_statistics`. executions < inferences means one model execution served chunks of "
              "several sessions. The `lam_a2e` network is called by `lam_a2e_stream` (BLS), one call per round with all of "
              "that execution's sessions; REST rows include the empty END chunk each session's close sends."),
    )


def bench_capacity(report: Report, label: str, driver_factory, speech: np.ndarray, plan: BenchPlan, budget: Budget,
                   reserve_s: float = 0.0) -> int | None:
    rows = []
    best: int | None = None
    for count in plan.capacity_levels:
        expected = plan.capacity_chunks * CHUNK_SECONDS + 3.0
        if budget.remaining() - reserve_s < expected:
            rows.append([str(count), "-", "-", "-", "-", "-", "not run (time budget)"])
            break
        stop_at = time.monotonic() + expected + 2 * REALTIME_P99_LIMIT_S + 5
        driver = driver_factory(count)
        stats, lag = run_sessions(count, driver, stop_at, paced=True)
        expected_chunks = count * plan.capacity_chunks
        passed = not stats.errors and stats.n == expected_chunks and stats.p(99) < REALTIME_P99_LIMIT_S
        verdict = "pass" if passed else ("fail" + (f" ({len(stats.errors)} errors)" if stats.errors else "")
                                         + (f" ({stats.n}/{expected_chunks} chunks)" if stats.n != expected_chunks else ""))
        rows.append([str(count), str(stats.n), ms(stats.p(50)), ms(stats.p(99)), ms(stats.max), f"{lag * 1000:.0f}", verdict])
        log.info("capacity %s at %d sessions: p99 %s ms -> %s", label, count, ms(stats.p(99)), verdict)
        if not passed:
            break
        best = count
    report.table(
        f"3. Real-time capacity via {label}: sessions paced at one {CHUNK_SECONDS:g} s chunk per second, "
        f"{plan.capacity_chunks} chunks each",
        ["sessions", "chunks", "p50 ms", "p99 ms", "max ms", "max lag ms", "verdict"],
        rows,
        note=(f"Criterion: a level passes when every chunk succeeds and the p99 chunk latency < {REALTIME_P99_LIMIT_S * 1000:.0f} ms "
              f"(the chunk duration). Sessions start staggered evenly over one second; a session whose reply is late sends its "
              f"next chunk at once (max lag = worst delay behind the 1 chunk/s schedule). The ladder stops at the first failure. "
              f"**Capacity via {label}: {best if best is not None else 'below the first level'} sessions**"
              + (" (the largest level tried; the real limit may be higher)." if best == plan.capacity_levels[-1] else ".")),
    )
    return best


# --------------------------------------------------------------------------------------------- main


def default_out(profile: str, quick: bool) -> Path:
    return RESULTS_DIR / (f"a2e-{profile}-quick.md" if quick else f"a2e-{profile}.md")


def run(args: argparse.Namespace) -> int:
    from emoserve.lam_a2e.onnx_runner import A2EOnnxRunner
    from emoserve.audio import encode_wav
    from emoserve.model_catalog import A2E_NETWORK_MODEL
    from stack.triton_server import TritonServer, TritonServerOptions
    from export.build_repository import BuildSettings

    plan = QUICK_PLAN if args.quick else FULL_PLAN
    if args.no_rest_capacity:
        plan = dataclasses.replace(plan, rest_capacity=False)
    if args.time_budget is not None:
        plan = dataclasses.replace(plan, time_budget_s=args.time_budget)
    out_path = args.out or default_out(args.profile, args.quick)
    command = "python -m benchmarks.a2e_bench " + " ".join(shlex.quote(a) for a in args.argv)
    started_at = _dt.datetime.now().astimezone()
    load_before = os.getloadavg()
    phase_times: dict[str, float] = {}

    t0 = time.perf_counter()
    repository = ensure_repository(args.profile)
    phase_times["repository build / reuse"] = time.perf_counter() - t0
    logs = WORK_DIR / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    triton_log = logs / f"tritonserver-{args.profile}.log"
    triton_log.unlink(missing_ok=True)

    speech = load_speech()
    clip = session_audio(speech, 0, plan.infer_clip_seconds)
    clip_wav = encode_wav(clip)

    report = Report()
    server = TritonServer(TritonServerOptions(repository, http_port=free_port(), grpc_port=free_port(),
                                              metrics_port=free_port(), log_path=triton_log))
    frontend: FrontendProcess | None = None
    try:
        t0 = time.perf_counter()
        server.start()
        phase_times["tritonserver start"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        frontend = FrontendProcess(server.grpc_url, log_path=logs / f"frontend-{args.profile}.log", log_level="warning").start()
        phase_times["front end start"] = time.perf_counter() - t0
        runner = A2EOnnxRunner(repository / A2E_NETWORK_MODEL / "1" / "model.onnx")
        versions_now = versions(server.grpc_url)

        t0 = time.perf_counter()
        warm_up(frontend.base_url, server.grpc_url, runner, speech, clip_wav, plan.stream_concurrency)
        phase_times["warm-up"] = time.perf_counter() - t0

        budget = Budget(plan.time_budget_s)
        build = BuildSettings(profile=args.profile, seed=0)
        header = [
            f"# LAM-A2E serving benchmark — `{args.profile}` profile{' (quick)' if args.quick else ''}",
            "",
            f"- date: {started_at.isoformat(timespec='seconds')}",
            f"- command: `{command}` (from the repository root)",
            f"- profile: `{args.profile}` (model repository `{repository.relative_to(PROJECT_ROOT)}`, "
            f"ONNX {(repository / A2E_NETWORK_MODEL / '1' / 'model.onnx').stat().st_size / 1e6:.1f} MB, seeded-random weights)",
            "- machine: " + "; ".join(f"{k} {v}" for k, v in machine_description().items()),
            "- versions: " + "; ".join(f"{k} {v}" for k, v in versions_now.items()),
            f"- load average at start (1/5/15 min): {load_before[0]:.2f} / {load_before[1]:.2f} / {load_before[2]:.2f} "
            "(other work on the machine skews every figure)",
            f"- Triton batching settings (export.build_repository.BuildSettings defaults): `lam_a2e_stream` sequence "
            f"batcher `oldest`, max batch {build.stream_max_batch}, queue delay {build.stream_queue_delay_us} µs, 1 instance; "
            f"`lam_a2e` dynamic batching, max batch {build.network_max_batch}, queue delay {build.network_queue_delay_us} µs, "
            f"{build.network_instances} instance(s), onnxruntime intra-op threads {build.onnx_threads or 'default'}",
            "- load generator: this process (threads, httpx / tritonclient gRPC) on the same cores as the servers; "
            "all traffic on 127.0.0.1",
            "",
        ]
        report.add("\n".join(header))

        t0 = time.perf_counter()
        bench_infer(report, frontend.base_url, clip_wav, plan.infer_clip_seconds, plan.infer_requests, budget)
        phase_times["1. /api/infer"] = time.perf_counter() - t0

        # capacity runs need a share of the budget: streaming may use what is left beyond that reserve
        capacity_reserve = min(budget.remaining() * 0.55, budget.remaining() - 5)
        streaming_budget = Budget(max(budget.remaining() - capacity_reserve, 5))
        t0 = time.perf_counter()
        streaming = bench_streaming(report, frontend.base_url, server.grpc_url, runner, speech, plan, streaming_budget)
        phase_times["2. streaming"] = time.perf_counter() - t0
        report_batching(report, streaming["batching"], max(plan.stream_concurrency), plan.stream_chunks)

        t0 = time.perf_counter()
        rest_reserve = budget.remaining() * 0.45 if plan.rest_capacity else 0.0
        capacity = {
            "Triton gRPC": bench_capacity(
                report, "Triton gRPC",
                lambda n: (lambda s, g, d, p: triton_session(server.grpc_url, session_chunks(speech, s, plan.capacity_chunks), s, g, d, p)),
                speech, plan, budget, reserve_s=rest_reserve),
        }
        if plan.rest_capacity:
            chunk_wavs: dict[int, list[bytes]] = {}

            def rest_driver(n):
                for s in range(n):
                    if s not in chunk_wavs:
                        chunk_wavs[s] = [encode_wav(c) for c in session_chunks(speech, s, plan.capacity_chunks)]
                return lambda s, g, d, p: rest_session(frontend.base_url, chunk_wavs[s], s, g, d, p)

            capacity["REST"] = bench_capacity(report, "REST", rest_driver, speech, plan, budget)
        phase_times["3. capacity"] = time.perf_counter() - t0

        summary = [["real-time capacity (sessions, p99 < 1 s)", f"{path}: {best if best is not None else '< first level'}"]
                   for path, best in capacity.items()]
        load_after = os.getloadavg()
        summary.append(["load average at end (1/5/15 min)", f"{load_after[0]:.2f} / {load_after[1]:.2f} / {load_after[2]:.2f}"])
        summary += [[f"time: {phase}", f"{seconds:.1f} s"] for phase, seconds in phase_times.items()]
        report.table("Summary", ["item", "value"], summary)
    finally:
        if frontend is not None:
            frontend.stop()
        server.stop()

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(report.text())
    print(f"results written to {out_path}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=("full", "tiny"), default=None,
                        help="model profile (default: full; tiny with --quick)")
    parser.add_argument("--quick", action="store_true", help="few requests and a short capacity ladder (< 60 s smoke run)")
    parser.add_argument("--out", type=Path, default=None,
                        help="results markdown (default benchmarks/results/a2e-<profile>.md, a2e-<profile>-quick.md with --quick)")
    parser.add_argument("--no-rest-capacity", action="store_true", help="measure real-time capacity via Triton gRPC only")
    parser.add_argument("--time-budget", type=float, default=None,
                        help="seconds for the measurement phases (default 540 full, 45 quick); start-up excluded")
    args = parser.parse_args(argv)
    args.argv = argv
    if args.profile is None:
        args.profile = "tiny" if args.quick else "full"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise

    raise_on_sigterm()
    return run(args)


if __name__ == "__main__":
    sys.exit(main())

"""The REST load generator's core (benchmarks.rest_load) without any server: bounds, concurrency, errors, the
loopback guard and the ratio / percentile formatting. Every test runs in well under a second."""

from __future__ import annotations

import asyncio
import time

import pytest

from benchmarks.common import LatencyStats
from benchmarks.rest_load import (
    FULL_PLAN,
    LoadResult,
    NotLoopbackError,
    chunk_result,
    load_row,
    loopback_http_client,
    merged,
    overhead_ratios,
    require_loopback,
    run_load,
)

pytestmark = pytest.mark.timeout(30)


def sleeper(seconds: float):
    async def call() -> str:
        await asyncio.sleep(seconds)
        return "ok"

    return call


def test_stops_at_the_count_bound():
    result = asyncio.run(run_load(sleeper(0.005), concurrency=3, max_requests=7, max_seconds=10.0))
    assert result.started == 7 and result.completed == 7 and result.errors == []
    assert result.stopped_by == "count"
    assert result.values == ["ok"] * 7
    assert result.stats.wall_s < 1.0


def test_stops_at_the_time_bound_and_lets_in_flight_requests_finish():
    began = time.perf_counter()
    result = asyncio.run(run_load(sleeper(0.05), concurrency=2, max_requests=10_000, max_seconds=0.25))
    elapsed = time.perf_counter() - began
    assert result.stopped_by == "time"
    assert 2 <= result.completed < 10_000
    assert result.completed == result.started  # nothing was cut off: in-flight requests were awaited
    assert elapsed < 0.25 + 0.05 + 0.2  # the bound, one request in flight, scheduling slack
    assert result.throughput == pytest.approx(result.completed / result.stats.wall_s)


def test_blocks_of_one_path_merge_into_one_result():
    blocks = [asyncio.run(run_load(sleeper(0.005), concurrency=2, max_requests=4, max_seconds=10.0)) for _ in range(3)]
    blocks[1].stats.errors.append("TimeoutError: no answer")
    blocks[2].stopped_by = "time"
    result = merged(blocks)
    assert result.completed == 12 and result.started == 12 and result.values == ["ok"] * 12
    assert result.errors == ["TimeoutError: no answer"] and result.stopped_by == "time" and result.max_requests == 12
    assert result.stats.wall_s == pytest.approx(sum(b.stats.wall_s for b in blocks))  # throughput over the blocks' time only
    assert sorted(result.stats.samples) == sorted(x for b in blocks for x in b.stats.samples)


def test_levels_split_into_alternating_blocks_only_where_each_block_keeps_its_workers_busy():
    assert FULL_PLAN.rounds_at(1) == FULL_PLAN.rounds  # 24 requests: 4 blocks of 6
    assert FULL_PLAN.rounds_at(4) == 2  # 2 blocks of 12: 3 requests per worker each
    assert FULL_PLAN.rounds_at(16) == 1


def test_never_more_than_concurrency_in_flight():
    in_flight = peak = 0

    async def call() -> None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.002)
        in_flight -= 1

    result = asyncio.run(run_load(call, concurrency=4, max_requests=40, max_seconds=5.0))
    assert peak == 4 and result.peak_in_flight == 4
    assert result.completed == 40


def test_errors_and_timeouts_are_counted_not_raised():
    calls = 0

    async def flaky() -> int:
        nonlocal calls
        calls += 1
        if calls % 3 == 0:
            raise RuntimeError(f"boom {calls}")
        if calls % 3 == 1:
            await asyncio.sleep(1.0)  # beyond the request timeout
        return calls

    result = asyncio.run(run_load(flaky, concurrency=2, max_requests=9, max_seconds=5.0, request_timeout_s=0.05))
    assert result.started == 9
    assert result.completed == 3  # calls 2, 5, 8
    assert len(result.errors) == 6
    assert sum("RuntimeError: boom" in e for e in result.errors) == 3
    assert sum(e.startswith("TimeoutError") and "0.05 s" in e for e in result.errors) == 3


def test_warm_up_requests_are_not_recorded():
    calls = 0

    async def call() -> int:
        nonlocal calls
        calls += 1
        mine = calls
        await asyncio.sleep(0.001)
        return mine

    result = asyncio.run(run_load(call, concurrency=2, max_requests=4, max_seconds=5.0, warmup_requests=2))
    assert calls == 6
    assert result.completed == 4 and result.started == 4
    assert sorted(result.values) == [3, 4, 5, 6]


@pytest.mark.parametrize("bad", [{"concurrency": 0}, {"max_requests": 0}, {"max_seconds": 0.0}])
def test_refuses_unbounded_or_empty_runs(bad):
    arguments = {"concurrency": 1, "max_requests": 1, "max_seconds": 1.0} | bad
    with pytest.raises(ValueError):
        asyncio.run(run_load(sleeper(0), **arguments))


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080", "http://localhost:80/api", "127.0.0.1:8001", "localhost:8001",
                                 "http://[::1]:9000/x", "[::1]:8001", "http://LOCALHOST:1"])
def test_loopback_urls_pass(url):
    assert require_loopback(url) == url


@pytest.mark.parametrize("url", ["http://example.com:8080", "10.0.0.5:8001", "http://192.168.1.2", "http://0.0.0.0:80",
                                 "http://127.0.0.1.example.com/", "http://user@example.com", "", "http://"])
def test_non_loopback_urls_are_refused(url):
    with pytest.raises(NotLoopbackError, match="not loopback"):
        require_loopback(url)


def test_http_client_refuses_a_remote_base_url_and_a_remote_absolute_url():
    with pytest.raises(NotLoopbackError):
        loopback_http_client("http://example.com", connections=2, timeout_s=1.0)

    async def absolute_url_request() -> None:
        client = loopback_http_client("http://127.0.0.1:9", connections=2, timeout_s=1.0)
        try:
            await client.get("http://example.com/")  # refused by the request hook before any connection
        finally:
            await client.aclose()

    with pytest.raises(NotLoopbackError):
        asyncio.run(absolute_url_request())


def result_with(samples_s: list[float], wall_s: float, concurrency: int = 1) -> LoadResult:
    result = LoadResult(concurrency, max_requests=len(samples_s), max_seconds=10.0, started=len(samples_s), stopped_by="count")
    result.stats = LatencyStats(samples=samples_s, wall_s=wall_s)
    return result


def test_overhead_ratios_read_rest_over_triton_for_latency_and_triton_over_rest_for_throughput():
    rest = result_with([0.030] * 10, wall_s=0.30)  # 33.3 req/s
    triton = result_with([0.020] * 10, wall_s=0.20)  # 50 req/s
    assert overhead_ratios(rest, triton) == ("1.50x", "1.50x", "1.50x")
    empty = result_with([], wall_s=0.0)
    assert overhead_ratios(empty, triton) == ("n/a", "n/a", "n/a")


def test_percentiles_and_row_formatting():
    result = result_with([i / 1000 for i in range(1, 101)], wall_s=2.0, concurrency=2)  # 1..100 ms
    result.stats.errors.append("RuntimeError: x")
    result.started = 101
    row = load_row("REST", result)
    assert row[:5] == ["REST", "2", "100 of 101", "1", "50.00"]
    assert row[5:10] == ["50.5", "95.0", "99.0", "50.5", "100.0"]  # p50, p95, p99, mean, max in ms
    assert row[10] == "count (100 / 10 s)"
    skipped = load_row("REST", LoadResult(4, 0, 0.0, skipped="time budget"))
    assert skipped[1] == "4" and skipped[-1] == "skipped: time budget"


def test_chunk_figures_pool_the_sessions_chunk_latencies():
    sessions = result_with([0.3, 0.3], wall_s=0.6)
    sessions.values = [[0.1, 0.1, 0.1], [0.1, 0.2, 0.1]]
    chunks = chunk_result(sessions)
    assert chunks.completed == 6
    assert chunks.throughput == pytest.approx(10.0)
    assert chunks.stats.max == pytest.approx(0.2)


def test_capacity_ladder_stops_at_the_first_level_over_the_real_time_limit():
    import dataclasses

    from benchmarks.common import Budget
    from benchmarks.rest_load import FULL_PLAN, capacity_ladder

    plan = dataclasses.replace(FULL_PLAN, capacity_levels=(1, 2, 3, 4), capacity_chunks=1)
    live = 0

    async def session(chunks: int, pace_start: float) -> list[float]:
        nonlocal live
        live += 1
        await asyncio.sleep(max(0.0, pace_start - time.perf_counter()))
        return [0.05] * chunks if live <= 3 else [1.5] * chunks  # the third level's sessions (4..6) run late

    best, rows = asyncio.run(capacity_ladder(session, plan, Budget(60)))
    assert best == 2 and [row[0] for row in rows] == ["1", "2", "3"]
    assert rows[0][1:] == ["1", "50.0", "50.0", "50.0", "pass"] and rows[2][-1] == "fail"


def test_the_report_carries_ratios_capacity_and_per_model_figures():
    import numpy as np

    from benchmarks import rest_load as rl
    from benchmarks.common import Report

    def result(samples: list[float], values: list) -> LoadResult:
        loaded = LoadResult(1, len(samples), 10.0, started=len(samples), stopped_by="count")
        loaded.stats = LatencyStats(samples=samples, wall_s=sum(samples))
        loaded.values = values
        return loaded

    frames = np.zeros((30, 52), np.float32)
    video = rl.Video(1000, total_s=2.0, seconds=1.9, frames=25, clips=7, steps=2, step_intervals=[0.03, 0.03])
    llm_stats = {"inference_count": 4, "execution_count": 2, "compute_s": 1.0, "queue_s": 0.1}
    levels = [
        rl.Level("infer", 1, result([0.5, 0.5], [frames, frames]), result([0.4, 0.4], [frames, frames])),
        rl.Level("stream", 1, result([1.0], [[0.2, 0.2]]), result([0.8], [[0.1, 0.1]]), inprocess=LatencyStats([0.05, 0.05], wall_s=0.1)),
        rl.Level("predict", 1, result([2.0], [rl.Answer("same", 1.0, 2.0)]), result([1.0], [rl.Answer("same", 0.5, 1.0, 17)]),
                 triton_stats={"emotion_llama_llm": llm_stats}),
        rl.Level("hallo2", 1, result([3.0], [1000]), result([2.0], [video]),
                 triton_stats={"hallo2_denoising_unet": dict(llm_stats, compute_s=1.6)}),
        rl.Level("hallo2", 4, *(LoadResult(4, 0, 0.0, skipped="time budget") for _ in range(2))),
    ]
    scenarios = [rl.Scenario(key, key, "`rest`", "`triton`", sleeper(0), sleeper(0), 10.0, "request", "note")
                 for key in ("infer", "stream", "predict", "hallo2")]
    priming = {"infer": rl.Priming(0.5, 0.4, frames, frames), "stream": rl.Priming(1.0, 0.8, [0.2], [0.1]),
               "predict": rl.Priming(2.0, 1.0, rl.Answer("same", 1.0, 2.0), rl.Answer("same", 0.5, 1.0, 17)),
               "hallo2": rl.Priming(3.0, 2.0, 1000, video)}
    outcome = rl.Outcome(scenarios, priming, levels, {"inference_steps": 2}, 360.0, 100.0,
                         capacity={"REST": (6, [["6", "60", "150.0", "170.0", "171.0", "pass"]]), "Triton-direct": (None, [])})
    report = Report()
    summary = dict(rl.write_report(report, rl.FULL_PLAN, outcome))
    text = report.text()
    assert "### 1. REST / Triton-direct" in text and "| REST | 6 | 60 | 150.0 | 170.0 | 171.0 | pass |" in text
    assert summary["front-end overhead (REST / Triton-direct), infer"] == "c=1: p50 1.25x, p99 1.25x, throughput 1.25x"
    assert "Triton-direct / in-process p50 2.00x, p99 2.00x" in text
    assert "TTFT p50 2.00x, p95 2.00x" in text  # the SSE path's first token over Triton-direct's
    assert summary["LAM-A2E real-time capacity (sessions, p99 < 1 s), REST"].startswith("6 (")
    assert summary["LAM-A2E real-time capacity (sessions, p99 < 1 s), Triton-direct"] == "below the first level"
    assert summary["Emotion-LLaMA Triton-direct, concurrency 1"] == (
        "TTFT p50 0.500 s, p95 0.500 s; decode 32.0 tok/s per request, aggregate 17.0 tok/s; LLM batching: 4 requests in 2 executions")
    assert summary["Hallo2 Triton-direct, concurrency 1 (1 requests, 2 steps)"] == (
        "step interval p50 30.0 ms, request / (clips × steps) p50 142.9 ms; request 2.000 s, pipeline model 1.900 s, Σ network "
        "compute 1.600 s, Σ network queue 0.100 s: request / Σ compute 1.25x; 2.00 s per video s, 12.50 frames/s (p50)")
    assert "c=4: skipped" in summary["front-end overhead (REST / Triton-direct), hallo2"]
    notes = rl.same_work_note(outcome)
    assert "largest absolute difference 0.00e+00" in notes[0] and "the same answer on both paths" in notes[2]
    assert notes[3].startswith("Hallo2: MP4 over every request — REST 1 distinct size(s), 1000–1000 bytes")


def test_in_process_reference_batches_every_session_into_one_call():
    import numpy as np

    from benchmarks import floor
    from benchmarks import perf_analyzer as pa
    from benchmarks.rest_load import inprocess_chunks
    from emoserve.model_catalog import A2E_NETWORK_MODEL, NETWORK_AUDIO, NETWORK_BLENDSHAPES, NETWORK_IDENTITY

    nets, calls = floor.TorchNetworks(pa.build_settings("tiny"), llm_folder=lambda: None), []

    def runner(batch, ids):
        calls.append(batch.shape[0])
        return nets.run(A2E_NETWORK_MODEL, {NETWORK_AUDIO: batch, NETWORK_IDENTITY: ids})[0][NETWORK_BLENDSHAPES]

    chunks = list(np.random.default_rng(0).standard_normal((2, 16000)).astype(np.float32) * 0.1)
    stats = inprocess_chunks(runner, chunks, sessions=3)
    assert calls == [3, 3] and stats.n == 6 and not stats.errors

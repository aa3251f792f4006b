"""Emotion-LLaMA serving benchmark: time to first token and tokens/s via Triton gRPC streaming and via REST.

    python -m benchmarks.emotion_llama_bench                  # SmolLM2-135M + small encoders, < 8 min on 2 cores
    python -m benchmarks.emotion_llama_bench --quick          # tiny LLM + tiny encoders, few requests: < 90 s

It builds (or re-uses) a model repository with only the Emotion-LLaMA slice in
``benchmarks/.work/repo-emotion-<llm>-<encoders>``, starts its own tritonserver on free loopback ports and
its own front end (``python -m frontend``), warms every path up and then measures, always with the same
video (``examples/sample_emotion.mp4``), the same ``[reason]`` prompt, greedy decoding (temperature 0) and a
fixed ``max_new_tokens``:

1. video decode time in this process (``emoserve.media.decode_video``, and ``probe_video``, which the front
   end runs before it forwards a video);
2. time to first token (TTFT), decode tokens/s and end-to-end tokens/s at concurrency 1 and 4, via Triton
   gRPC streaming (the decoupled ``emotion_llama`` pipeline called directly) and via REST server-sent
   events (``POST /process_video/stream``); end-to-end seconds per video via REST unary ``POST /process_video``;
3. REST/Triton ratios for TTFT and end-to-end time;
4. batching evidence: ``get_inference_statistics`` deltas of ``emotion_llama_llm`` (and the encoders) around
   every concurrency-4 run, and the ``batch_size`` the answers' metadata report;
5. the pipeline's own breakdown from ``RESULT_METADATA`` (decode, encode, LLM first token, generation).

The results go to a markdown file (``--out``) and to stdout. All traffic is to 127.0.0.1; every loop is
bounded in count and in time. Servers are stopped in ``finally`` blocks.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import datetime as _dt
import json
import logging
import os
import queue
import shlex
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

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
    percentile,
    raise_on_sigterm,
    ratio,
    settled_statistics,
    statistics_delta,
    versions,
)
from stack.processes import FrontendProcess, free_port

EXAMPLES_DIR = PROJECT_ROOT / "examples"
SAMPLE_VIDEO = EXAMPLES_DIR / "sample_emotion.mp4"
# a [reason] prompt: a free-text answer (no label scoring after generation), so generation runs to the token limit
PROMPT_TEXT = "The person in video says: I can't believe it! We actually won the prize!  [reason] What is the emotional state of the person?"
SEED_VALUE = 0
REQUEST_TIMEOUT_S = 180.0  # one whole answer; the stream is abandoned (and cancelled) beyond it

log = logging.getLogger("emotion_llama_bench")


# --------------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class BenchPlan:
    max_new_tokens: int
    decode_repeats: int
    sequential_requests: int  # per streaming path at concurrency 1
    concurrency: int
    concurrent_rounds: int  # per streaming path: rounds of `concurrency` simultaneous requests
    unary_requests: int  # REST unary at concurrency 1
    unary_rounds: int  # REST unary rounds at `concurrency`
    time_budget_s: float


FULL_PLAN = BenchPlan(
    max_new_tokens=64,
    decode_repeats=20,
    sequential_requests=8,
    concurrency=4,
    concurrent_rounds=3,
    unary_requests=5,
    unary_rounds=2,
    time_budget_s=300.0,
)

QUICK_PLAN = BenchPlan(
    max_new_tokens=16,
    decode_repeats=5,
    sequential_requests=3,
    concurrency=4,
    concurrent_rounds=1,
    unary_requests=2,
    unary_rounds=1,
    time_budget_s=40.0,
)


# --------------------------------------------------------------------------------------------- samples


@dataclass
class Sample:
    """One answered request, times in seconds from just before the request was sent."""

    first_token_s: float | None  # None for unary requests
    total_s: float
    tokens: int
    text: str
    metadata: dict

    @property
    def decode_tps(self) -> float:
        """Tokens/s after the first token: (generated - 1) / (final - first token)."""
        if self.first_token_s is None or self.tokens < 2 or self.total_s <= self.first_token_s:
            return float("nan")
        return (self.tokens - 1) / (self.total_s - self.first_token_s)

    @property
    def e2e_tps(self) -> float:
        return self.tokens / self.total_s if self.total_s > 0 else float("nan")


@dataclass
class PathRun:
    path: str
    concurrency: int
    planned: int
    samples: list[Sample] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    skipped: str = ""

    def stats(self, value: Callable[[Sample], float | None]) -> LatencyStats:
        values = [value(s) for s in self.samples]
        return LatencyStats(samples=[float(v) for v in values if v is not None and v == v])


def fmt_s(seconds: float, digits: int = 3) -> str:
    return "n/a" if seconds != seconds else f"{seconds:.{digits}f}"


def fmt_rate(value: float) -> str:
    return "n/a" if value != value else f"{value:.1f}"


# --------------------------------------------------------------------------------------------- clients


def api_headers() -> dict[str, str]:
    key = os.environ.get("EMOSERVE_API_KEY")
    return {"X-API-Key": key} if key else {}


def rest_body(plan: BenchPlan) -> dict:
    return {"video_path": str(SAMPLE_VIDEO), "question": PROMPT_TEXT, "max_new_tokens": plan.max_new_tokens,
            "temperature": 0.0, "seed": SEED_VALUE}


class TritonStreamWorker:
    """One client (one gRPC channel) per worker; one bidirectional stream per request, as the front end does."""

    def __init__(self, grpc_url: str, video: bytes, plan: BenchPlan):
        import tritonclient.grpc as grpcclient

        from emoserve.model_catalog import MAX_NEW_TOKENS, PROMPT, SEED, TEMPERATURE, VIDEO

        self.client = grpcclient.InferenceServerClient(grpc_url)
        self.inputs = []
        for name, array, datatype in (
            (VIDEO, np.array([video], dtype=np.object_), "BYTES"),
            (PROMPT, np.array([PROMPT_TEXT.encode()], dtype=np.object_), "BYTES"),
            (TEMPERATURE, np.array([0.0], np.float32), "FP32"),
            (MAX_NEW_TOKENS, np.array([plan.max_new_tokens], np.int32), "INT32"),
            (SEED, np.array([SEED_VALUE], np.uint64), "UINT64"),
        ):
            tensor = grpcclient.InferInput(name, list(array.shape), datatype)
            tensor.set_data_from_numpy(array)
            self.inputs.append(tensor)

    def request(self) -> Sample:
        from emoserve.model_catalog import EMOTION_PIPELINE_MODEL, RESULT_METADATA, TEXT, TEXT_DELTA, TOKEN_IDS

        responses: queue.Queue = queue.Queue()
        self.client.start_stream(callback=lambda result, error: responses.put((time.perf_counter(), result, error)))
        finished = False
        try:
            started = time.perf_counter()
            self.client.async_stream_infer(EMOTION_PIPELINE_MODEL, self.inputs)
            deadline = started + REQUEST_TIMEOUT_S
            first = None
            while True:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    raise TimeoutError(f"no final response within {REQUEST_TIMEOUT_S:.0f} s")
                try:
                    arrived, result, error = responses.get(timeout=remaining)
                except queue.Empty:
                    raise TimeoutError(f"no final response within {REQUEST_TIMEOUT_S:.0f} s") from None
                if error is not None:
                    raise RuntimeError(f"Triton: {error}")
                if result.as_numpy(TEXT_DELTA) is not None:
                    if first is None:
                        first = arrived - started
                    continue
                text = result.as_numpy(TEXT)
                if text is None:
                    continue
                finished = True
                tokens = result.as_numpy(TOKEN_IDS).reshape(-1)
                return Sample(first_token_s=first, total_s=arrived - started, tokens=int(tokens.size),
                              text=text.reshape(-1)[0].decode(),
                              metadata=json.loads(result.as_numpy(RESULT_METADATA).reshape(-1)[0]))
        finally:
            self.client.stop_stream(cancel_requests=not finished)

    def close(self) -> None:
        self.client.close()


class RestStreamWorker:
    """``POST /process_video/stream`` over one keep-alive HTTP connection per worker."""

    def __init__(self, base_url: str, plan: BenchPlan):
        import httpx

        self.client = httpx.Client(base_url=base_url, headers=api_headers(),
                                   timeout=httpx.Timeout(REQUEST_TIMEOUT_S, connect=10.0))
        self.body = rest_body(plan)

    def request(self) -> Sample:
        started = time.perf_counter()
        deadline = started + REQUEST_TIMEOUT_S
        first = None
        with self.client.stream("POST", "/process_video/stream", json=self.body) as response:
            if response.status_code != 200:
                response.read()
                raise RuntimeError(f"HTTP {response.status_code}: {response.text[:300]}")
            event = None
            for line in response.iter_lines():
                now = time.perf_counter()
                if now > deadline:
                    raise TimeoutError(f"no done event within {REQUEST_TIMEOUT_S:.0f} s")
                if line.startswith("event: "):
                    event = line[7:].strip()
                elif line.startswith("data: "):
                    if event == "token":
                        if first is None:
                            first = now - started
                    elif event == "done":
                        payload = json.loads(line[6:])
                        metadata = payload.get("metadata") or {}
                        return Sample(first_token_s=first, total_s=now - started,
                                      tokens=int(metadata.get("generated_tokens", 0)), text=payload.get("response", ""),
                                      metadata=metadata)
                    elif event == "error":
                        raise RuntimeError(f"SSE error event: {line[6:][:300]}")
        raise RuntimeError("the event stream ended without a done event")

    def close(self) -> None:
        self.client.close()


class RestUnaryWorker:
    """``POST /process_video``: the whole answer in one JSON body."""

    def __init__(self, base_url: str, plan: BenchPlan):
        import httpx

        self.client = httpx.Client(base_url=base_url, headers=api_headers(),
                                   timeout=httpx.Timeout(REQUEST_TIMEOUT_S, connect=10.0))
        self.body = rest_body(plan)

    def request(self) -> Sample:
        started = time.perf_counter()
        response = self.client.post("/process_video", json=self.body)
        total = time.perf_counter() - started
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {response.text[:300]}")
        payload = response.json()
        metadata = payload.get("metadata") or {}
        return Sample(first_token_s=None, total_s=total, tokens=int(metadata.get("generated_tokens", 0)),
                      text=payload.get("response", ""), metadata=metadata)

    def close(self) -> None:
        self.client.close()


def run_round(run: PathRun, workers: list, pool: concurrent.futures.ThreadPoolExecutor) -> None:
    """One request per worker, all released together by a barrier; answers and errors go into ``run``."""
    gate = threading.Barrier(len(workers))

    def one(worker):
        try:
            gate.wait(timeout=30)
        except threading.BrokenBarrierError:
            pass
        return worker.request()

    started = time.perf_counter()
    futures = [pool.submit(one, worker) for worker in workers]
    for future in futures:
        try:
            run.samples.append(future.result(timeout=REQUEST_TIMEOUT_S + 40))
        except Exception as exc:  # noqa: BLE001 - reported in the tables
            run.errors.append(f"{type(exc).__name__}: {exc}"[:300])
    run.wall_s += time.perf_counter() - started


def add_deltas(total: dict | None, delta: dict) -> dict:
    if total is None:
        return {key: (dict(value) if isinstance(value, dict) else value) for key, value in delta.items()}
    batches = dict(total["batches"])
    for size, count in delta["batches"].items():
        batches[size] = batches.get(size, 0) + count
    return {"inference_count": total["inference_count"] + delta["inference_count"],
            "execution_count": total["execution_count"] + delta["execution_count"],
            "batches": dict(sorted(batches.items()))}


def run_level(concurrency: int, paths: list[tuple[str, int]], factories: dict[str, Callable[[], object]], level: Budget,
              grpc_url: str, batching: dict[str, dict] | None, overall: Budget | None = None) -> list[PathRun]:
    """All paths at one concurrency, their rounds interleaved (round 0 of every path, then round 1, ...) so that
    drift on a shared machine does not favour one path. The first round of every path runs while ``overall``
    lasts; later rounds only while ``level`` lasts too. With ``batching`` given, Triton statistics deltas around every round are summed
    per path into it."""
    runs = {path: PathRun(path=path, concurrency=concurrency, planned=concurrency * rounds) for path, rounds in paths}
    workers: dict[str, list] = {}
    try:
        for path, _ in paths:
            workers[path] = [factories[path]() for _ in range(concurrency)]
        snapshot = settled_statistics(grpc_url, llm_models()) if batching is not None else None
        with concurrent.futures.ThreadPoolExecutor(concurrency, thread_name_prefix="client") as pool:
            for index in range(max(rounds for _, rounds in paths)):
                for path, rounds in paths:
                    if index >= rounds:
                        continue
                    if (index > 0 and level.remaining() <= 0) or (overall is not None and overall.remaining() <= 0):
                        runs[path].skipped = runs[path].skipped or (
                            f"cut after {index} of {rounds} rounds (time budget)" if index else "not run (time budget)")
                        continue
                    run_round(runs[path], workers[path], pool)
                    if batching is not None:
                        after = settled_statistics(grpc_url, llm_models())
                        per_model = batching.setdefault(path, {})
                        for model in after:
                            per_model[model] = add_deltas(per_model.get(model), statistics_delta(snapshot[model], after[model]))
                        snapshot = after
    finally:
        for path_workers in workers.values():
            for worker in path_workers:
                worker.close()
    for run in runs.values():
        log.info("%s at concurrency %d: %d answers, %d errors, %.1f s%s", run.path, concurrency, len(run.samples),
                 len(run.errors), run.wall_s, f" ({run.skipped})" if run.skipped else "")
    return list(runs.values())


# --------------------------------------------------------------------------------------------- phases


def ensure_repository(llm: str, encoders: str) -> Path:
    from export.build_repository import BuildSettings, build_repository

    out = WORK_DIR / f"repo-emotion-{llm}-{encoders}"
    started = time.perf_counter()
    # the LLM conversion and the ONNX exports are cached in the output folder
    build_repository(out, BuildSettings(slices=("emotion_llama",), llm=llm, encoder_profile=encoders, seed=0))
    log.info("model repository %s ready in %.1f s", out, time.perf_counter() - started)
    return out


def bench_decode(report: Report, video: bytes, repeats: int, budget: Budget) -> dict:
    from emoserve.media import decode_video, probe_video

    decoded = decode_video(video)  # warm-up (codec initialisation)
    probe_video(video)
    results = {}
    for label, fn in (("`decode_video` (first frame + 16 kHz audio track)", decode_video),
                      ("`probe_video` (first frame only; the front end's check)", probe_video)):
        stats = LatencyStats()
        started_all = time.perf_counter()
        for _ in range(repeats):
            if budget.remaining() <= 0 and stats.n:
                break
            started = time.perf_counter()
            fn(video)
            stats.samples.append(time.perf_counter() - started)
        stats.wall_s = time.perf_counter() - started_all
        results[label] = stats
    audio_s = 0.0 if decoded.audio is None else decoded.audio.size / 16000
    rows = [[label, str(s.n), fmt_s(s.p(50) * 1000, 1), fmt_s(s.p(95) * 1000, 1), fmt_s(s.mean * 1000, 1), fmt_s(s.max * 1000, 1)]
            for label, s in results.items()]
    report.table(
        "1. Video decode in this process",
        ["call", "repeats", "p50 ms", "p95 ms", "mean ms", "max ms"],
        rows,
        note=(f"`{SAMPLE_VIDEO.relative_to(PROJECT_ROOT)}`: {len(video) / 1024:.0f} KiB, "
              f"{fmt_s(decoded.duration_s or float('nan'), 2)} s, first frame {decoded.first_frame.shape[1]}×{decoded.first_frame.shape[0]}, "
              f"audio track {audio_s:.2f} s at 16 kHz. One thread, PyAV; the pipeline model decodes the same way in its "
              "Triton stub (its own figure is `decode_seconds` in table 5, which also includes the frame preprocessing)."),
    )
    return results


WARM_UP_TOKENS = 8


def warm_up(grpc_url: str, frontend_url: str, video: bytes, plan: BenchPlan) -> None:
    """First requests load lazy state (ONNX Runtime buffers, torch kernels for each batch size); keep that out.

    Every path once at concurrency 1, then one concurrent round via Triton (the batch shapes are the same
    whichever path sends), with a few tokens each: the warm-up is not part of the time budget.
    """
    short = dataclasses.replace(plan, max_new_tokens=min(plan.max_new_tokens, WARM_UP_TOKENS))
    factories = {
        "Triton gRPC": lambda: TritonStreamWorker(grpc_url, video, short),
        "REST SSE": lambda: RestStreamWorker(frontend_url, short),
        "REST unary": lambda: RestUnaryWorker(frontend_url, short),
    }
    for concurrency, paths in ((1, list(factories)), (plan.concurrency, ["Triton gRPC"])):
        for run in run_level(concurrency, [(path, 1) for path in paths], factories, Budget(600), grpc_url, None):
            if run.errors:
                raise RuntimeError(f"warm-up {run.path} at concurrency {concurrency} failed: {run.errors[0]}")


def report_latency(report: Report, runs: list[PathRun], plan: BenchPlan) -> None:
    rows = []
    for run in runs:
        if not run.samples:
            rows.append([run.path, str(run.concurrency), f"0 of {run.planned}", *["-"] * 7,
                         str(len(run.errors)) + (f" ({run.errors[0]})" if run.errors else "") + (f"; {run.skipped}" if run.skipped else "")])
            continue
        ttft = run.stats(lambda s: s.first_token_s)
        total = run.stats(lambda s: s.total_s)
        decode = run.stats(lambda s: s.decode_tps)
        e2e = run.stats(lambda s: s.e2e_tps)
        tokens = [s.tokens for s in run.samples]
        token_text = "-" if not tokens else (str(tokens[0]) if min(tokens) == max(tokens) else f"{min(tokens)}–{max(tokens)}")
        aggregate = sum(tokens) / run.wall_s if run.wall_s > 0 and tokens else float("nan")
        count = str(len(run.samples)) if len(run.samples) == run.planned else f"{len(run.samples)} of {run.planned}"
        rows.append([
            run.path, str(run.concurrency), count, token_text,
            fmt_s(ttft.p(50)), fmt_s(ttft.p(95)), fmt_s(total.p(50)), fmt_s(total.p(95)),
            fmt_rate(decode.p(50)), fmt_rate(e2e.p(50)), fmt_rate(aggregate),
            str(len(run.errors)) + (f" ({run.errors[0]})" if run.errors else "") + (f"; {run.skipped}" if run.skipped else ""),
        ])
    report.table(
        f"2. Time to first token and tokens/s — greedy, max_new_tokens {plan.max_new_tokens}, same video and prompt",
        ["path", "concurrency", "answers", "tokens", "TTFT p50 s", "TTFT p95 s", "end-to-end p50 s", "end-to-end p95 s",
         "decode tok/s p50", "e2e tok/s p50", "aggregate tok/s", "errors"],
        rows,
        note=("Per request, from just before it is sent: TTFT = first streamed text (a `TEXT_DELTA` response / an SSE "
              "`token` event); end-to-end = the final response / the `done` event / the unary reply. decode tok/s = "
              "(generated − 1) / (end-to-end − TTFT); e2e tok/s = generated / end-to-end; aggregate tok/s = all "
              "tokens of the path / the summed wall time of its rounds. Every round's requests start together (barrier); "
              "the paths' rounds are interleaved (round 0 of each path, then round 1, ...). Triton gRPC = the decoupled `emotion_llama` pipeline called directly "
              "(one gRPC stream per request); REST SSE = `POST /process_video/stream`; REST unary = `POST /process_video` "
              "(no TTFT). p95 of a handful of samples is close to the maximum."),
    )


def report_ratios(report: Report, runs: list[PathRun]) -> None:
    by_key = {(run.path, run.concurrency): run for run in runs if run.samples}
    rows = []
    for concurrency in sorted({run.concurrency for run in runs}):
        triton = by_key.get(("Triton gRPC", concurrency))
        sse = by_key.get(("REST SSE", concurrency))
        unary = by_key.get(("REST unary", concurrency))

        def p(run, q, key):
            return run.stats(key).p(q) if run is not None else float("nan")

        ttft = lambda s: s.first_token_s  # noqa: E731
        total = lambda s: s.total_s  # noqa: E731
        rows.append([
            str(concurrency),
            ratio(p(sse, 50, ttft), p(triton, 50, ttft)), ratio(p(sse, 95, ttft), p(triton, 95, ttft)),
            ratio(p(sse, 50, total), p(triton, 50, total)), ratio(p(sse, 95, total), p(triton, 95, total)),
            ratio(p(unary, 50, total), p(triton, 50, total)), ratio(p(unary, 95, total), p(triton, 95, total)),
        ])
    report.table(
        "3. REST / Triton ratios",
        ["concurrency", "SSE/Triton TTFT p50", "SSE/Triton TTFT p95", "SSE/Triton e2e p50", "SSE/Triton e2e p95",
         "unary/Triton e2e p50", "unary/Triton e2e p95"],
        rows,
        note=("What the front end adds on top of Triton: HTTP + JSON, reading the file from the media root, "
              "`probe_video` (a first-frame decode, table 1) before forwarding, the asyncio gRPC hop, and SSE framing "
              "per token. The REST paths send the video's bytes to Triton like the direct client does."),
    )


def llm_models() -> tuple[str, ...]:
    from emoserve.model_catalog import EMOTION_AUDIO_MODEL, EMOTION_LLM_MODEL, EMOTION_VISION_MODEL

    return (EMOTION_LLM_MODEL, EMOTION_VISION_MODEL, EMOTION_AUDIO_MODEL)


def report_batching(report: Report, batching: dict[str, dict], runs: list[PathRun], concurrency: int, settings) -> None:
    rows = []
    for path, models in batching.items():
        run = next((r for r in runs if r.path == path and r.concurrency == concurrency), None)
        reported = Counter(s.metadata.get("batch_size") for s in run.samples) if run is not None else Counter()
        reported_text = ", ".join(f"{size}×{count}" for size, count in sorted(reported.items(), key=lambda kv: str(kv[0]))) or "-"
        for model, delta in models.items():
            inferences, executions = delta["inference_count"], delta["execution_count"]
            histogram = ", ".join(f"{size}×{count}" for size, count in delta["batches"].items()) or "-"
            rows.append([path, f"`{model}`", str(inferences), str(executions),
                         f"{inferences / executions:.2f}" if executions else "n/a",
                         "yes" if 0 < executions < inferences else "no", histogram,
                         reported_text if model == llm_models()[0] else ""])
    if not rows:
        report.add(f"### 4. Batching evidence\n\n(not measured: no concurrency-{concurrency} run took place)\n")
        return
    report.table(
        f"4. Batching evidence: Triton statistics around the concurrency-{concurrency} runs",
        ["run", "model", "inference_count", "execution_count", "avg batch", "batched", "batch size × executions",
         "metadata batch_size × answers"],
        rows,
        note=(f"Deltas of `get_inference_statistics` around each run (warm-up excluded). executions < inferences means one "
              f"execution served several requests: the LLM decodes a dynamic batch in ONE KV-cache loop "
              f"(`emotion_llama_llm`: max batch {settings.llm_max_batch}, queue delay {settings.llm_queue_delay_us / 1000:g} ms; "
              f"`emotion_llama` pipeline: {settings.pipeline_instances} instances, each holding one request through its BLS "
              "calls; encoders: dynamic batching, 2 ms). The last column is the `batch_size` each answer's metadata "
              "reports (the size of the LLM batch that generated it). A batch is closed when its loop starts: a "
              "request arriving later waits for the running batch to finish."),
    )


def metadata_p50(run: PathRun, key: str) -> float:
    values = [s.metadata.get(key) for s in run.samples]
    return percentile([float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)], 50)


def report_breakdown(report: Report, runs: list[PathRun]) -> None:
    keys = ("decode_seconds", "encode_seconds", "llm_first_token_seconds", "generation_seconds")
    rows = []
    for run in runs:
        if not run.samples:
            continue

        parts = {key: metadata_p50(run, key) for key in keys}
        ttft = run.stats(lambda s: s.first_token_s).p(50)
        outside = run.stats(lambda s: None if s.first_token_s is None else
                            s.first_token_s - sum(float(s.metadata.get(k) or 0.0) for k in keys[:3])).p(50)
        rows.append([run.path, str(run.concurrency), *(fmt_s(parts[k]) for k in keys), fmt_s(ttft), fmt_s(outside)])
    report.table(
        "5. The pipeline's own breakdown (medians of `RESULT_METADATA`)",
        ["path", "concurrency", "decode s", "encode s", "LLM first token s", "generation s", "client TTFT p50 s",
         "TTFT − (decode + encode + LLM first token) p50 s"],
        rows,
        note=("decode = `decode_video` + first-frame preprocessing in the pipeline stub; encode = the vision and audio "
              "encoder BLS calls; LLM first token = from the LLM BLS request to its first `TEXT_DELTA` (dynamic-batcher "
              "queueing, prompt embedding, prefill, first step); generation = the LLM's whole batched loop. The last "
              "column (median over requests of TTFT − decode − encode − LLM first token) is what the client sees beyond the "
              "pipeline's own steps: gRPC/HTTP, the front end's file read and `probe_video`, input transfer to the stub, "
              "waiting for a free pipeline instance, response forwarding."),
    )


def report_answers(report: Report, runs: list[PathRun]) -> None:
    texts = Counter(s.text for run in runs for s in run.samples)
    if not texts:
        return
    lines = ["### 6. Answers", "",
             f"{sum(texts.values())} answers, {len(texts)} distinct text(s) (greedy decoding: the same video and prompt "
             "should give the same answer on every path; batched decoding with padding may differ in the last digits of "
             "the logits and so, rarely, in a token)."]
    for text, count in texts.most_common(3):
        shown = text.replace("\n", " ").replace("|", "\\|")
        lines.append(f"- {count}×: “{shown[:300]}{'…' if len(shown) > 300 else ''}”")
    report.add("\n".join(lines) + "\n")


# --------------------------------------------------------------------------------------------- main


def default_out(llm: str, encoders: str, quick: bool) -> Path:
    return RESULTS_DIR / f"emotion-llama-{llm}-{encoders}{'-quick' if quick else ''}.md"


def run(args: argparse.Namespace) -> int:
    from emoserve.model_catalog import EMOTION_LLM_MODEL
    from stack.triton_server import TritonServer, TritonServerOptions
    from export.build_repository import BuildSettings

    plan = QUICK_PLAN if args.quick else FULL_PLAN
    if args.max_new_tokens is not None:
        plan = dataclasses.replace(plan, max_new_tokens=args.max_new_tokens)
    if args.time_budget is not None:
        plan = dataclasses.replace(plan, time_budget_s=args.time_budget)
    name = f"{args.llm}-{args.encoder_profile}"
    out_path = Path(args.out or default_out(args.llm, args.encoder_profile, args.quick))
    command = "python -m benchmarks.emotion_llama_bench " + " ".join(shlex.quote(a) for a in args.argv)
    started_at = _dt.datetime.now().astimezone()
    load_before = os.getloadavg()
    phase_times: dict[str, float] = {}
    video = SAMPLE_VIDEO.read_bytes()

    t0 = time.perf_counter()
    repository = ensure_repository(args.llm, args.encoder_profile)
    phase_times["repository build / reuse"] = time.perf_counter() - t0
    logs = WORK_DIR / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    triton_log = logs / f"tritonserver-emotion-{name}.log"
    triton_log.unlink(missing_ok=True)
    weights = json.loads((repository / "weights.json").read_text()).get("emotion_llama", {}).get("weights", "?")

    report = Report()
    server = TritonServer(TritonServerOptions(repository, http_port=free_port(), grpc_port=free_port(),
                                              metrics_port=free_port(), log_path=triton_log))
    frontend: FrontendProcess | None = None
    try:
        t0 = time.perf_counter()
        server.start()
        phase_times["tritonserver start"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        # the repository holds only the Emotion-LLaMA slice: /api/health (LAM-A2E models) stays "not_ready",
        # so wait for the front end to answer at all; Triton itself is ready (all models loaded) at this point
        frontend = FrontendProcess(server.grpc_url, env={"EMOSERVE_MEDIA_ROOTS": json.dumps([str(EXAMPLES_DIR)])},
                                   log_path=logs / f"frontend-emotion-{name}.log", log_level="warning").start(wait_healthy=False)
        phase_times["front end start"] = time.perf_counter() - t0
        versions_now = versions(server.grpc_url, DEFAULT_DISTRIBUTIONS + ("transformers", "av", "httpx"))

        t0 = time.perf_counter()
        warm_up(server.grpc_url, frontend.base_url, video, plan)
        phase_times["warm-up"] = time.perf_counter() - t0

        budget = Budget(plan.time_budget_s)
        build = BuildSettings()
        header = [
            f"# Emotion-LLaMA serving benchmark — LLM `{args.llm}`, encoders `{args.encoder_profile}`{' (quick)' if args.quick else ''}",
            "",
            f"- date: {started_at.isoformat(timespec='seconds')}",
            f"- command: `{command}` (from the repository root)",
            f"- model repository: `{repository.relative_to(PROJECT_ROOT)}` (Emotion-LLaMA slice only); weights: {weights}",
            f"- request: `{SAMPLE_VIDEO.relative_to(PROJECT_ROOT)}`, prompt “{PROMPT_TEXT}”, temperature 0 (greedy; "
            f"repetition penalty at the default 1.05), max_new_tokens {plan.max_new_tokens}, seed {SEED_VALUE}",
            "- machine: " + "; ".join(f"{k} {v}" for k, v in machine_description().items()),
            "- versions: " + "; ".join(f"{k} {v}" for k, v in versions_now.items()),
            f"- load average at start (1/5/15 min): {load_before[0]:.2f} / {load_before[1]:.2f} / {load_before[2]:.2f} "
            "(other work on the machine skews every figure)",
            f"- Triton settings (export.build_repository.BuildSettings defaults): `emotion_llama_llm` dynamic batching, max "
            f"batch {build.llm_max_batch}, queue delay {build.llm_queue_delay_us / 1000:g} ms, 1 instance; `emotion_llama` "
            f"{build.pipeline_instances} instances; encoders max batch 8, queue delay 2 ms, 1 instance each",
            "- load generator: this process (threads; tritonclient gRPC / httpx) on the same cores as the servers; "
            "all traffic on 127.0.0.1",
            "",
        ]
        report.add("\n".join(header))

        t0 = time.perf_counter()
        bench_decode(report, video, plan.decode_repeats, budget)
        phase_times["1. video decode"] = time.perf_counter() - t0

        grpc_url, base_url = server.grpc_url, frontend.base_url
        factories = {
            "Triton gRPC": lambda: TritonStreamWorker(grpc_url, video, plan),
            "REST SSE": lambda: RestStreamWorker(base_url, plan),
            "REST unary": lambda: RestUnaryWorker(base_url, plan),
        }
        levels = [
            (1, [("Triton gRPC", plan.sequential_requests), ("REST SSE", plan.sequential_requests), ("REST unary", plan.unary_requests)]),
            (plan.concurrency, [("Triton gRPC", plan.concurrent_rounds), ("REST SSE", plan.concurrent_rounds), ("REST unary", plan.unary_rounds)]),
        ]
        runs: list[PathRun] = []
        batching: dict[str, dict] = {}
        t0 = time.perf_counter()
        for index, (concurrency, paths) in enumerate(levels):
            if budget.remaining() <= 0:
                runs += [PathRun(path=path, concurrency=concurrency, planned=concurrency * rounds, skipped="not run (time budget)")
                         for path, rounds in paths]
                log.warning("time budget spent: concurrency %d skipped", concurrency)
                continue
            # the higher level gets the larger share: its rounds take longer
            share = 1.0 if index == len(levels) - 1 else 0.45
            level = Budget(budget.remaining() * share)
            runs += run_level(concurrency, paths, factories, level, grpc_url, batching if concurrency > 1 else None, budget)
        phase_times["2. requests"] = time.perf_counter() - t0

        report_latency(report, runs, plan)
        report_ratios(report, runs)
        report_batching(report, batching, runs, plan.concurrency, build)
        report_breakdown(report, runs)
        report_answers(report, runs)

        summary = []
        for concurrency in (1, plan.concurrency):
            run_ = next((r for r in runs if r.path == "Triton gRPC" and r.concurrency == concurrency and r.samples), None)
            if run_ is not None:
                summary.append([f"Triton gRPC, concurrency {concurrency}",
                                f"TTFT p50 {fmt_s(run_.stats(lambda s: s.first_token_s).p(50))} s, decode "
                                f"{fmt_rate(run_.stats(lambda s: s.decode_tps).p(50))} tok/s per request"])
        llm_delta = batching.get("Triton gRPC", {}).get(EMOTION_LLM_MODEL)
        if llm_delta:
            summary.append([f"LLM batching at concurrency {plan.concurrency} (Triton gRPC)",
                            f"{llm_delta['inference_count']} requests in {llm_delta['execution_count']} executions"])
        errors = sum(len(r.errors) for r in runs)
        summary.append(["errors", str(errors)])
        load_after = os.getloadavg()
        summary.append(["load average at end (1/5/15 min)", f"{load_after[0]:.2f} / {load_after[1]:.2f} / {load_after[2]:.2f}"])
        summary += [[f"time: {phase}", f"{seconds:.1f} s"] for phase, seconds in phase_times.items()]
        report.table("Summary", ["item", "value"], summary)
    finally:
        if frontend is not None:
            frontend.stop()
        server.stop()

    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(report.text())
    print(f"results written to {out_path}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llm", choices=("smollm2", "tiny"), default=None,
                        help="the LLM (default: smollm2; tiny with --quick)")
    parser.add_argument("--encoder-profile", choices=("small", "tiny"), default=None,
                        help="encoder size (default: small; tiny with --quick)")
    parser.add_argument("--quick", action="store_true", help="tiny models, few requests, max_new_tokens 16 (< 90 s smoke run)")
    parser.add_argument("--out", type=Path, default=None,
                        help="results markdown (default benchmarks/results/emotion-llama-<llm>-<encoders>.md, "
                             "...-quick.md with --quick)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="tokens per answer (default 64, 16 with --quick)")
    parser.add_argument("--time-budget", type=float, default=None,
                        help="seconds for the measurement phases (default 300, 40 with --quick); build, start-up and "
                             "warm-up excluded")
    args = parser.parse_args(argv)
    args.argv = argv
    if args.llm is None:
        args.llm = "tiny" if args.quick else "smollm2"
    if args.encoder_profile is None:
        args.encoder_profile = "tiny" if args.quick else "small"
    if args.max_new_tokens is not None and not 1 <= args.max_new_tokens <= 1024:
        parser.error("--max-new-tokens must be in 1..1024")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise

    raise_on_sigterm()
    return run(args)


if __name__ == "__main__":
    sys.exit(main())

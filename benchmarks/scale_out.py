"""LAM-A2E streaming capacity with 1 vs 2 Triton replicas behind 2 front ends (the scale-out layout of README).

    python -m benchmarks.scale_out                   # full A2E profile, 1, 2, 1, 2 replicas, sessions 1..8: ~6 min
    python -m benchmarks.scale_out --quick           # tiny profile, 1 4 8 sessions, 4 chunks, 1 and 2 replicas: ~2 min

For each topology it starts the Triton replicas (lam_a2e slice only, one repository) and two front ends, each
configured with every replica and one signing key, then runs a ladder of session counts: every session is paced like
a live microphone (one 1 s chunk of ``examples/speech.wav`` per second, sessions staggered over one second), opened on
one front end and its chunks alternating between both. A level passes when every chunk is answered and the p99 chunk
latency stays below the chunk's duration (real time); the capacity is the largest passing level (the ladder stops at
the first failure). Where the sessions went is read from each replica's ``lam_a2e_stream`` statistics. Report:
``benchmarks/results/scale-out.md``. Everything listens on loopback only and is stopped in ``finally``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import json
import logging
import shlex
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field

import httpx
import numpy as np

from benchmarks import common as c
from benchmarks.common import LatencyStats, ms

log = logging.getLogger("scale_out")

CHUNK_SECONDS = 1.0
STREAM_MODEL = "lam_a2e_stream"
SESSION_KEY = "benchmark-signing-key"
SWEEP_INTERVAL_S = 1.0  # each front end rechecks quiet sessions after 2 sweeps: closed elsewhere -> out of its load view


@dataclass
class Level:
    sessions: int
    stats: LatencyStats
    per_replica: list[int] = field(default_factory=list)  # lam_a2e_stream requests each replica served

    @property
    def passed(self) -> bool:
        return not self.stats.errors and self.stats.p(99) < CHUNK_SECONDS


def speech_chunks(count: int) -> list[bytes]:
    from emoserve.audio import encode_wav
    from emoserve.constants import SAMPLE_RATE

    speech = c.load_speech()
    step = int(CHUNK_SECONDS * SAMPLE_RATE)
    looped = np.tile(speech, -(-count * step // speech.size))
    return [encode_wav(looped[i * step:(i + 1) * step], SAMPLE_RATE) for i in range(count)]


async def one_session(apis: list[httpx.AsyncClient], index: int, chunks: list[bytes], start_at: float, stats: LatencyStats) -> None:
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, start_at - loop.time()))
    first = apis[index % len(apis)]
    response = await first.post("/api/infer_stream_init", json={"id_idx": index % 12})
    if response.status_code != 200:
        stats.errors.append(f"init {response.status_code}: {response.text[:120]}")
        return
    session_id = response.json()["session_id"]
    try:
        for k, chunk in enumerate(chunks):
            await asyncio.sleep(max(0.0, start_at + 0.2 + k * CHUNK_SECONDS - loop.time()))  # paced like a microphone
            api = apis[(index + k) % len(apis)]  # chunks alternate between the front ends
            sent = time.perf_counter()
            response = await api.post("/api/infer_stream_chunk", data={"session_id": session_id},
                                      files={"audio_chunk": ("c.wav", chunk)})
            if response.status_code != 200:
                stats.errors.append(f"chunk {response.status_code}: {response.text[:120]}")
                return
            stats.samples.append(time.perf_counter() - sent)
    finally:
        await apis[(index + 1) % len(apis)].delete(f"/api/infer_stream_close/{session_id}")


async def run_level(base_urls: list[str], sessions: int, chunks: list[bytes]) -> LatencyStats:
    stats = LatencyStats()
    limits = httpx.Limits(max_connections=sessions + 4)
    apis = [httpx.AsyncClient(base_url=url, timeout=30, limits=limits) for url in base_urls]
    try:
        start = asyncio.get_running_loop().time() + 0.5
        began = time.perf_counter()
        outcomes = await asyncio.gather(*(one_session(apis, s, chunks, start + s * CHUNK_SECONDS / sessions, stats)
                                          for s in range(sessions)), return_exceptions=True)
        stats.wall_s = time.perf_counter() - began
        stats.errors += [f"{type(o).__name__}: {o}" for o in outcomes if isinstance(o, BaseException)]
    finally:
        for api in apis:
            await api.aclose()
    return stats


def run_topology(repository, replicas: int, levels: list[int], chunks: list[bytes]) -> list[Level]:
    from stack.processes import FrontendProcess

    with ExitStack() as stack:
        servers = []
        for i in range(replicas):
            server = c.triton_server(repository, f"scale-out-{replicas}-triton-{i}")
            stack.callback(server.stop)
            servers.append(server.start())
        env = {"EMOSERVE_LAM_A2E__TRITON_REPLICAS": json.dumps([s.grpc_url for s in servers]),
               "EMOSERVE_LAM_A2E__SESSION_KEY": SESSION_KEY, "EMOSERVE_LOG_LEVEL": "warning",
               "EMOSERVE_LAM_A2E__SESSION_SWEEP_INTERVAL_S": str(SWEEP_INTERVAL_S),
               "EMOSERVE_HALLO2__DATABASE_URL": f"sqlite:///{c.WORK_DIR}/scale-out-hallo2.db",
               "EMOSERVE_HALLO2__DATA_DIR": str(c.WORK_DIR / "scale-out-hallo2")}
        frontends = []
        for i in range(2):
            frontend = FrontendProcess(servers[0].grpc_url, env, log_path=c.WORK_DIR / "logs" / f"scale-out-{replicas}-frontend-{i}.log",
                                       log_level="warning")
            stack.callback(frontend.stop)
            frontends.append(frontend.start())
        asyncio.run(run_level([f.base_url for f in frontends], 1, chunks[:2]))  # warm-up: every process has served a chunk
        results = []
        for sessions in levels:
            time.sleep(3 * SWEEP_INTERVAL_S)  # the previous level's sessions have left every front end's view
            before = [c.model_statistics(s.grpc_url, STREAM_MODEL)["inference_count"] for s in servers]
            stats = asyncio.run(run_level([f.base_url for f in frontends], sessions, chunks))
            after = [c.settled_statistics(s.grpc_url, (STREAM_MODEL,))[STREAM_MODEL]["inference_count"] for s in servers]
            level = Level(sessions, stats, [a - b for a, b in zip(after, before)])
            results.append(level)
            log.info("%d replica(s), %d sessions: p50 %s ms, p99 %s ms, errors %d, per replica %s -> %s", replicas, sessions,
                     ms(stats.p(50)), ms(stats.p(99)), len(stats.errors), level.per_replica, "pass" if level.passed else "FAIL")
            if not level.passed:
                break
        return results


def capacity(levels: list[Level]) -> int | None:
    passed = [level.sessions for level in levels if level.passed]
    return max(passed) if passed and levels[0].passed else None


def report(args, command: str, outcomes: list[tuple[int, str, list[Level]]], wall_s: float) -> c.Report:
    out = c.Report()
    out.add(f"# LAM-A2E streaming: 1 vs 2 Triton replicas behind 2 front ends\n\n"
            f"- date: {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}\n- command: `{command}`\n"
            + "\n".join(c.environment_lines(c.versions(None))) +
            f"\n- load average after the run: {c.load_average()}\n- profile: `{args.profile}` (seeded-random weights); "
            f"{args.chunks} chunks of {CHUNK_SECONDS:g} s per session; wall time {wall_s:.0f} s\n")
    rows = []
    for replicas, load, levels in outcomes:
        for level in levels:
            rows.append([str(replicas), load, str(level.sessions), ms(level.stats.p(50)), ms(level.stats.p(99)), ms(level.stats.max),
                         str(len(level.stats.errors)), " / ".join(str(n) for n in level.per_replica), "pass" if level.passed else "fail"])
    out.table("Paced sessions (one 1 s chunk per second each), chunks alternating between the two front ends",
              ["Triton replicas", "load average at start", "sessions", "chunk p50 ms", "chunk p99 ms", "max ms", "errors",
               "stream requests per replica", "real time (p99 < 1 s)"], rows,
              "Each session is opened on one front end and sends its chunks alternately to both; requests per replica "
              "include each session's START and END (two empty requests).")
    summary = [[f"{replicas} replica(s), run {i + 1}", str(capacity(levels) or 0)] for i, (replicas, _, levels) in enumerate(outcomes)]
    out.table("Summary: real-time capacity (sessions)", ["topology", "capacity"], summary,
              "All processes share this machine's CPUs: two replicas here split the same cores, so their capacity shows "
              "what routing costs and how evenly sessions spread, not what a second machine adds.")
    errors = sorted({e for _, _, levels in outcomes for level in levels for e in level.stats.errors})
    if errors:
        out.add("### Errors (distinct)\n\n" + "\n".join(f"- `{e}`" for e in errors[:20]) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=("tiny", "full"), default="full")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 2, 3, 4, 5, 6, 8])
    parser.add_argument("--chunks", type=int, default=6, help="1 s chunks per session")
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 1, 2],
                        help="topologies in order (each is measured again to show the machine's run-to-run noise)")
    parser.add_argument("--out", default=str(c.RESULTS_DIR / "scale-out.md"))
    parser.add_argument("--quick", action="store_true", help="tiny profile, 1 4 8 sessions, 4 chunks, 1 and 2 replicas once")
    args = parser.parse_args(argv)
    if args.quick:
        args.profile, args.levels, args.chunks, args.replicas = "tiny", [1, 4, 8], 4, [1, 2]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    c.raise_on_sigterm()
    from export.build_repository import BuildSettings

    command = shlex.join([".venv/bin/python", "-m", "benchmarks.scale_out", *(argv if argv is not None else sys.argv[1:])])
    began = time.perf_counter()
    repository = c.build(c.WORK_DIR / f"repo-scale-out-{args.profile}", BuildSettings(profile=args.profile, slices=("lam_a2e",)))
    chunks = speech_chunks(args.chunks)
    outcomes = [(replicas, c.load_average(), run_topology(repository, replicas, sorted(args.levels), chunks))
                for replicas in args.replicas]
    from pathlib import Path

    report(args, command, outcomes, time.perf_counter() - began).write(Path(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

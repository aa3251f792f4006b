"""Emotion-LLaMA requests and Hallo2 tasks with 1 vs 2 Triton replicas behind 2 front ends (README, Capacity).

    python -m benchmarks.scale_out_tasks            # SmolLM2 + tiny Hallo2; topologies 1, 2, 2:split, 1, 2:split: ~10 min
    python -m benchmarks.scale_out_tasks --quick    # fewer requests and tasks; 1 and 2:split: ~4 min

The layout is the Kubernetes one (README): each front end talks to one Triton replica (front end ``i`` to replica
``i mod replicas``), and for Hallo2 each front end's embedded worker claims tasks from one shared task database.
Per topology:

* **LLM**: ``--llm-clients`` closed-loop clients send ``POST /process_video`` (``examples/sample_emotion.mp4`` by
  server-side path, the ``[reason]`` prompt, greedy, ``--max-new-tokens``), request ``k`` to front end ``k mod 2``,
  ``--llm-requests`` in all: requests/s, latency, and how many each replica's ``emotion_llama`` answered.
* **Hallo2**: ``--tasks`` tasks (``examples/portrait.png`` + 1 s of speech, 2 denoising steps, no cache) submitted at
  once, alternately to both front ends, each followed to its end on its event stream: tasks/s from the first
  submission to the last completion, and how many each replica's ``hallo2`` ran (together exactly ``--tasks``: each
  task ran once).

A topology ``N`` starts N replicas as they come (each process sizes its thread pools to every core of the machine);
``N:split`` starts each with ``OMP_NUM_THREADS`` = cores / N, as replicas sharing one host should be configured: the
LLM decodes with torch's OpenMP threads, and more of them than cores throttle each other's spin-waiting.

The task database is an SQLite file (WAL) both front ends open: the claim is one atomic statement there too; a
cluster uses PostgreSQL. Everything listens on loopback only and is stopped in ``finally``. All processes share this
machine's cores, so a second replica shows what the layout costs here, not what a second machine adds. Report:
``benchmarks/results/scale-out-tasks.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import json
import logging
import os
import shlex
import shutil
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from benchmarks import common as c
from benchmarks.common import LatencyStats, ms

log = logging.getLogger("scale_out_tasks")

FRONT_ENDS = 2
LLM_MODEL, HALLO2_MODEL = "emotion_llama", "hallo2"
HALLO2_STEPS, HALLO2_AUDIO_SECONDS = 2, 1.0


@dataclass(frozen=True)
class Topology:
    replicas: int
    split_threads: bool = False  # OMP_NUM_THREADS = cores / replicas in each replica

    @classmethod
    def parse(cls, text: str) -> Topology:
        count, _, mode = text.partition(":")
        if not count.isdigit() or int(count) < 1 or mode not in ("", "split"):
            raise argparse.ArgumentTypeError(f"a topology is N or N:split (N >= 1), not {text!r}")
        return cls(int(count), mode == "split")

    def threads(self) -> int | None:
        return max(1, (os.cpu_count() or 1) // self.replicas) if self.split_threads else None

    def __str__(self) -> str:
        threads = self.threads()
        return f"{self.replicas} ({threads} thread(s) each)" if threads else f"{self.replicas} (a thread per core each)"


@dataclass
class Run:
    topology: Topology
    load_at_start: str
    llm: LatencyStats = field(default_factory=LatencyStats)
    llm_per_replica: list[int] = field(default_factory=list)
    tokens: int = 0
    hallo2: LatencyStats = field(default_factory=LatencyStats)  # seconds from submission to completion, per task
    hallo2_per_replica: list[int] = field(default_factory=list)

    def llm_rate(self) -> float:
        return self.llm.n / self.llm.wall_s if self.llm.wall_s else float("nan")

    def hallo2_rate(self) -> float:
        return self.hallo2.n / self.hallo2.wall_s if self.hallo2.wall_s else float("nan")


async def llm_load(base_urls: list[str], clients: int, requests: int, max_new_tokens: int, stats: LatencyStats) -> int:
    """Closed loop: ``clients`` workers share ``requests``; request k goes to front end k mod 2. Answers' tokens."""
    body = {"video_path": str(c.SAMPLE_VIDEO), "question": c.PROMPT_TEXT, "max_new_tokens": max_new_tokens,
            "temperature": 0.0, "seed": 0}
    apis = [httpx.AsyncClient(base_url=url, timeout=300) for url in base_urls]
    issued, tokens = iter(range(requests)), 0

    async def client() -> None:
        nonlocal tokens
        for k in issued:
            sent = time.perf_counter()
            response = await apis[k % len(apis)].post("/process_video", json=body)
            if response.status_code != 200:
                stats.errors.append(f"{response.status_code}: {response.text[:120]}")
                continue
            stats.samples.append(time.perf_counter() - sent)
            tokens += int(response.json()["metadata"].get("generated_tokens", 0))

    try:
        began = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        stats.wall_s = time.perf_counter() - began
    finally:
        for api in apis:
            await api.aclose()
    return tokens


async def hallo2_load(base_urls: list[str], tasks: int, image: bytes, audio: bytes, stats: LatencyStats) -> None:
    """Submit every task at once (task k to front end k mod 2), then follow each on its event stream to its end."""
    apis = [httpx.AsyncClient(base_url=url, timeout=600) for url in base_urls]

    async def one(k: int) -> None:
        api = apis[k % len(apis)]
        sent = time.perf_counter()
        created = await api.post("/api/v1/inference/hallo2", files={"image_file": ("portrait.png", image),
                                                                     "audio_file": ("speech.wav", audio)},
                                 data={"use_cache": "false"})
        if created.status_code != 200:
            stats.errors.append(f"submit {created.status_code}: {created.text[:120]}")
            return
        task_id, last = created.json()["task_id"], {}
        async with api.stream("GET", f"/api/v1/tasks/{task_id}/events") as events:
            async for line in events.aiter_lines():
                if line.startswith("data: "):
                    last = json.loads(line[6:])
        if last.get("status") != "completed":
            stats.errors.append(f"task {last.get('status')}: {last.get('error')}")
            return
        stats.samples.append(time.perf_counter() - sent)

    try:
        began = time.perf_counter()
        await asyncio.gather(*(one(k) for k in range(tasks)))
        stats.wall_s = time.perf_counter() - began
    finally:
        for api in apis:
            await api.aclose()


def wait_ready(urls: list[str], timeout_s: float = 300.0) -> None:
    """Every front end ready (``/readyz``: the slices its replica serves, and the task store)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if all(httpx.get(f"{url}/readyz", timeout=5).status_code == 200 for url in urls):
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the front ends {urls} did not serve Hallo2 and Emotion-LLaMA within {timeout_s:.0f} s")
        time.sleep(1)


def counts(servers, model: str) -> list[int]:
    return [c.settled_statistics(s.grpc_url, (model,))[model]["inference_count"] for s in servers]


def run_topology(repository: Path, topology: Topology, args, image: bytes, audio: bytes) -> Run:
    from stack.processes import FrontendProcess

    run, replicas = Run(topology, c.load_average()), topology.replicas
    environment = {"OMP_NUM_THREADS": str(topology.threads())} if topology.threads() else {}
    data = Path(tempfile.mkdtemp(prefix="scale-out-tasks-", dir=c.WORK_DIR))
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, data, True)
        servers = []
        for i in range(replicas):
            server = c.triton_server(repository, f"scale-out-tasks-{replicas}-triton-{i}", environment)
            stack.callback(server.stop)
            servers.append(server.start())
        env = {"EMOSERVE_EMOTION_LLAMA__MEDIA_ROOTS": json.dumps([str(c.EXAMPLES_DIR)]), "EMOSERVE_LOG_LEVEL": "warning",
               "EMOSERVE_HALLO2__DATABASE_URL": f"sqlite:///{data / 'tasks.db'}", "EMOSERVE_HALLO2__DATA_DIR": str(data / "tasks"),
               "EMOSERVE_HALLO2__INFERENCE_STEPS": str(HALLO2_STEPS),
               # two workers share the database: neither may take the other's running tasks at its start
               "EMOSERVE_HALLO2__RECOVER_ALL_ON_STARTUP": "false"}
        frontends = []
        for i in range(FRONT_ENDS):
            frontend = FrontendProcess(servers[i % replicas].grpc_url, env, log_level="warning",
                                       log_path=c.WORK_DIR / "logs" / f"scale-out-tasks-{replicas}-frontend-{i}.log")
            stack.callback(frontend.stop)
            frontends.append(frontend.start(wait_healthy=False))
        urls = [f.base_url for f in frontends]
        wait_ready(urls)
        # warm-up: each replica has answered once
        asyncio.run(llm_load(urls, FRONT_ENDS, FRONT_ENDS, args.max_new_tokens, LatencyStats()))
        asyncio.run(hallo2_load(urls, FRONT_ENDS, image, audio, LatencyStats()))

        before = counts(servers, LLM_MODEL)
        run.tokens = asyncio.run(llm_load(urls, args.llm_clients, args.llm_requests, args.max_new_tokens, run.llm))
        run.llm_per_replica = [a - b for a, b in zip(counts(servers, LLM_MODEL), before)]
        log.info("%s, LLM: %d requests in %.1f s, p50 %s ms, per replica %s, errors %d", topology, run.llm.n,
                 run.llm.wall_s, ms(run.llm.p(50)), run.llm_per_replica, len(run.llm.errors))

        before = counts(servers, HALLO2_MODEL)
        asyncio.run(hallo2_load(urls, args.tasks, image, audio, run.hallo2))
        run.hallo2_per_replica = [a - b for a, b in zip(counts(servers, HALLO2_MODEL), before)]
        log.info("%s, Hallo2: %d tasks in %.1f s, per replica %s, errors %d", topology, run.hallo2.n,
                 run.hallo2.wall_s, run.hallo2_per_replica, len(run.hallo2.errors))
    return run


def report(args, command: str, runs: list[Run], wall_s: float) -> c.Report:
    out = c.Report()
    out.add(f"# Emotion-LLaMA requests and Hallo2 tasks: 1 vs 2 Triton replicas behind 2 front ends\n\n"
            f"- date: {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}\n- command: `{command}`\n"
            + "\n".join(c.environment_lines(c.versions(None))) +
            f"\n- load average after the run: {c.load_average()}\n- models: LLM `smollm2` (SmolLM2-135M-Instruct, real "
            f"weights), encoders `small` and Hallo2 `tiny` (seeded-random); wall time {wall_s:.0f} s\n"
            f"- method: `benchmarks/scale_out_tasks.py` (front end i talks to replica i mod replicas; one shared SQLite "
            f"task database)\n")
    out.table(f"LLM: {args.llm_clients} closed-loop clients, {args.llm_requests} `POST /process_video` requests "
              f"({args.max_new_tokens} tokens, greedy), alternating front ends",
              ["Triton replicas (threads)", "load average at start", "requests", "errors", "wall s", "requests/s", "tokens/s",
               "p50 ms", "p95 ms", "requests per replica"],
              [[str(r.topology), r.load_at_start, str(r.llm.n), str(len(r.llm.errors)), f"{r.llm.wall_s:.1f}",
                f"{r.llm_rate():.2f}", f"{r.tokens / r.llm.wall_s:.1f}" if r.llm.wall_s else "n/a", ms(r.llm.p(50)),
                ms(r.llm.p(95)), " / ".join(map(str, r.llm_per_replica))] for r in runs])
    out.table(f"Hallo2: {args.tasks} tasks submitted at once, alternating front ends ({HALLO2_STEPS} steps, "
              f"{HALLO2_AUDIO_SECONDS:g} s of audio, no cache)",
              ["Triton replicas (threads)", "tasks completed", "errors", "first submission to last completion s", "tasks/s",
               "p50 s to completion", "tasks run per replica"],
              [[str(r.topology), str(r.hallo2.n), str(len(r.hallo2.errors)), f"{r.hallo2.wall_s:.1f}", f"{r.hallo2_rate():.2f}",
                f"{r.hallo2.p(50):.1f}", " / ".join(map(str, r.hallo2_per_replica))] for r in runs],
              "Tasks run per replica add up to the tasks submitted: each ran exactly once.")
    out.table("Summary", ["topology", "LLM requests/s", "Hallo2 tasks/s"],
              [[f"{r.topology}, run {i + 1}", f"{r.llm_rate():.2f}", f"{r.hallo2_rate():.2f}"] for i, r in enumerate(runs)],
              "All processes share this machine's 2 cores: a second replica splits the same cores (and holds a second "
              "copy of the weights), so it shows what the layout costs here, not what a second machine adds.")
    errors = sorted({e for r in runs for e in r.llm.errors + r.hallo2.errors})
    if errors:
        out.add("### Errors (distinct)\n\n" + "\n".join(f"- `{e}`" for e in errors[:20]) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topologies", type=Topology.parse, nargs="+",
                        default=[Topology(1), Topology(2), Topology(2, True), Topology(1), Topology(2, True)],
                        help="in order, each N (replicas) or N:split (cores split between them); the repeats show the "
                        "machine's run-to-run noise")
    parser.add_argument("--llm-clients", type=int, default=4)
    parser.add_argument("--llm-requests", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--tasks", type=int, default=12)
    parser.add_argument("--out", default=str(c.RESULTS_DIR / "scale-out-tasks.md"))
    parser.add_argument("--quick", action="store_true", help="8 LLM requests, 4 tasks, topologies 1 and 2:split")
    args = parser.parse_args(argv)
    if args.quick:
        args.topologies, args.llm_requests, args.tasks = [Topology(1), Topology(2, True)], 8, 4
    if args.llm_clients < 1 or args.llm_requests < 1 or args.tasks < 1:
        parser.error("clients, requests and tasks must be at least 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    c.raise_on_sigterm()
    from emoserve.audio import encode_wav
    from emoserve.constants import SAMPLE_RATE
    from export.build_repository import BuildSettings

    command = shlex.join([".venv/bin/python", "-m", "benchmarks.scale_out_tasks", *(argv if argv is not None else sys.argv[1:])])
    began = time.perf_counter()
    repository = c.build(c.WORK_DIR / "repo-scale-out-tasks", BuildSettings(
        profile="tiny", llm="smollm2", encoder_profile="small", hallo2_profile="tiny", slices=("emotion_llama", "hallo2"), seed=0))
    image = c.PORTRAIT_PNG.read_bytes()
    audio = encode_wav(c.load_speech()[: int(HALLO2_AUDIO_SECONDS * SAMPLE_RATE)], SAMPLE_RATE)
    runs = [run_topology(repository, topology, args, image, audio) for topology in args.topologies]
    report(args, command, runs, time.perf_counter() - began).write(Path(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

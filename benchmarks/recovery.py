"""Time to recover from each fault, on the whole stack (``python -m stack``, tiny profile, real processes).

    python -m benchmarks.recovery             # each fault 3 times: ~4 min on 2 cores
    python -m benchmarks.recovery --quick     # once each: ~2 min

Faults: ``kill -9`` of the LAM-A2E network's python-backend stub (the supervisor reloads the model), ``kill -9`` of
tritonserver (the supervisor restarts it), ``kill -9`` of the stack in the middle of a Hallo2 task followed by a new
start (the task is re-queued and runs again), and SIGTERM with a streaming chunk in flight (drain, then exit).
For the first two, ``/api/infer`` is sent every 0.25 s from the fault on: the time to recover is the time to the
first 200, and every answer in between is counted by status (503 is the contract; a 500 would be a defect).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

from benchmarks import common as c

log = logging.getLogger("benchmarks.recovery")

POLL_S = 0.25


def _children(pid: int) -> list[int]:
    """Children of every thread of ``pid`` (the supervisor's thread starts a restarted tritonserver)."""
    children = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return children


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def tritonserver_pid(stack_pid: int) -> int:
    return next(pid for pid in _children(stack_pid) if _cmdline(pid).split(b"\0")[0].endswith(b"tritonserver"))


def stub_pid(stack_pid: int, model: str) -> int:
    return next(pid for pid in _children(tritonserver_pid(stack_pid)) if f"/{model}/1/model.py".encode() in _cmdline(pid))


def infer(api: httpx.Client) -> int:
    try:
        return api.post("/api/infer", files={"audio_file": ("speech.wav", c.SPEECH_WAV.read_bytes())}).status_code
    except httpx.HTTPError:
        return 0  # no answer at all


def until_serving(api: httpx.Client, fault_at: float, timeout_s: float = 120.0) -> tuple[float, Counter]:
    """Seconds from ``fault_at`` to the first 200 of /api/infer, and the statuses answered before it."""
    seen: Counter = Counter()
    while time.monotonic() - fault_at < timeout_s:
        status = infer(api)
        if status == 200:
            return time.monotonic() - fault_at, seen
        seen[status] += 1
        time.sleep(POLL_S)
    return float("nan"), seen


def kill_and_recover(stack, victim: str) -> tuple[float, Counter]:
    with httpx.Client(base_url=stack.base_url, timeout=60) as api:
        assert infer(api) == 200, "the stack does not serve before the fault"
        pid = stub_pid(stack.process.pid, "lam_a2e") if victim == "stub" else tritonserver_pid(stack.process.pid)
        os.kill(pid, signal.SIGKILL)
        return until_serving(api, time.monotonic())


def stack_restart_mid_task(repository: Path, workdir: Path, env: dict) -> dict[str, float]:
    from stack.processes import StackProcess

    first = StackProcess(repository, workdir, env).start()
    with httpx.Client(base_url=first.base_url, timeout=60) as api:
        task_id = api.post("/api/v1/inference/hallo2", files={"image_file": ("p.png", c.PORTRAIT_PNG.read_bytes()),
                                                              "audio_file": ("a.wav", c.SPEECH_WAV.read_bytes())}).json()["task_id"]
        while api.get(f"/api/v1/tasks/{task_id}").json()["progress"] <= 0:
            time.sleep(POLL_S)
    first.kill()
    restarted = time.monotonic()
    second = StackProcess(repository, workdir, env).start()
    ready_s = time.monotonic() - restarted
    try:
        with httpx.Client(base_url=second.base_url, timeout=60) as api:
            while (status := api.get(f"/api/v1/tasks/{task_id}").json()["status"]) not in ("completed", "failed"):
                time.sleep(POLL_S)
        done_s = time.monotonic() - restarted
    finally:
        second.terminate()
    return {"ready_s": ready_s, "task_done_s": done_s, "completed": float(status == "completed")}


def sigterm_with_chunk_in_flight(stack) -> tuple[float, int]:
    from emoserve.audio import encode_wav

    with httpx.Client(base_url=stack.base_url, timeout=60) as api:
        session = api.post("/api/infer_stream_init", json={}).json()["session_id"]
        answers: list[int] = []
        chunk = encode_wav(c.load_speech()[: 4 * 16000], 16000)
        sender = threading.Thread(target=lambda: answers.append(api.post(
            "/api/infer_stream_chunk", data={"session_id": session}, files={"audio_chunk": ("c.wav", chunk)}).status_code))
        sender.start()
        time.sleep(0.3)
        sent = time.monotonic()
        stack.process.send_signal(signal.SIGTERM)
        stack.process.wait(timeout=120)
        exit_s = time.monotonic() - sent
        stack.process = None
        sender.join(timeout=60)
    return exit_s, answers[0] if answers else 0


def _seconds(values: list[float]) -> str:
    good = [v for v in values if v == v]
    if not good:
        return "n/a"
    return f"{statistics.median(good):.1f} / {max(good):.1f}"


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="each fault once")
    parser.add_argument("--repeats", type=int, default=None, help="runs per fault (default 3, 1 with --quick)")
    parser.add_argument("--out", type=Path, default=c.RESULTS_DIR / "recovery.md")
    args = parser.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 3)
    c.raise_on_sigterm()

    from export.build_repository import BuildSettings
    from stack.processes import StackProcess

    repository = c.build(c.WORK_DIR / "recovery-tiny", BuildSettings(profile="tiny", llm="tiny", encoder_profile="tiny"))
    workdir = Path(tempfile.mkdtemp(prefix="recovery-", dir=c.WORK_DIR))
    env = {"EMOSERVE_HALLO2__DATABASE_URL": f"sqlite:///{workdir / 'tasks.db'}", "EMOSERVE_HALLO2__DATA_DIR": str(workdir / "tasks"),
           "EMOSERVE_HALLO2__INFERENCE_STEPS": "4"}
    started = time.perf_counter()
    rows = []
    stack = StackProcess(repository, workdir, env).start()
    try:
        faults = (("stub", "kill -9 of the lam_a2e stub (model reload)"), ("tritonserver", "kill -9 of tritonserver (restart)"))
        for victim, title in faults:
            times, statuses = [], Counter()
            for run in range(repeats):
                seconds, seen = kill_and_recover(stack, victim)
                log.info("%s run %d: serving again after %.1f s, answers meanwhile %s", victim, run + 1, seconds, dict(seen))
                times.append(seconds)
                statuses.update(seen)
            during = ", ".join(f"{count}× {status or 'no answer'}" for status, count in sorted(statuses.items())) or "none"
            rows.append([title, str(repeats), _seconds(times), during])
        exit_times, chunk_statuses = [], Counter()
        for _ in range(repeats):
            if stack.process is None:
                stack = StackProcess(repository, workdir, env).start()
            exit_s, status = sigterm_with_chunk_in_flight(stack)
            exit_times.append(exit_s)
            chunk_statuses[status] += 1
        rows.append(["SIGTERM with a streaming chunk in flight (time to exit)", str(repeats), _seconds(exit_times),
                     "in-flight chunk: " + ", ".join(f"{n}× {s}" for s, n in sorted(chunk_statuses.items()))])
    finally:
        if stack.process is not None:
            stack.terminate()
    restart = [stack_restart_mid_task(repository, workdir, env) for _ in range(repeats)]
    rows.append(["kill -9 of the stack mid Hallo2 task, new start (time to /readyz)", str(repeats),
                 _seconds([r["ready_s"] for r in restart]), "—"])
    rows.append(["… and to the interrupted task completed (re-run from the start, 4 steps)", str(repeats),
                 _seconds([r["task_done_s"] for r in restart]), f"{sum(int(r['completed']) for r in restart)} of {repeats} completed"])

    report = c.Report()
    report.add("\n".join([
        "# Recovery: time to serve again after each fault", "",
        f"- command: `.venv/bin/python -m benchmarks.recovery{' --quick' if args.quick else ''}`",
        "- stack: `python -m stack`, tiny profile, supervisor polling every 0.5 s; probe: `/api/infer` every 0.25 s",
        *c.environment_lines(c.versions(None)),
        f"- load average at end (1/5/15 min): {c.load_average()}; whole run {time.perf_counter() - started:.0f} s", ""]))
    report.table("Summary", ["fault", "runs", "seconds to recover, median / max", "answers during the fault"], rows,
                 note="A 503 with Retry-After is the contract during a fault; any 500 would be a defect.")
    report.write(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Every benchmark in one command, one results file.

    python -m benchmarks.run_all            # every step, full variant: ~65 min on 2 cores (make bench)
    python -m benchmarks.run_all --quick    # the same, each in its quick variant: ~20 min

Runs ``benchmarks.perf_analyzer``, ``floor``, ``tuning``, ``rest_load``, ``recovery``, ``llm_decode``, ``llm_batching``,
``scale_out`` and ``scale_out_tasks`` one after the other (each starts and stops its own servers; ``--quick`` is
passed on; each has a wall-clock timeout and a failed step is reported, not fatal), then writes ``benchmarks/RESULTS.md`` (``--out``):
machine, versions, date, the exact commands and every report's headline sections. Logs: ``benchmarks/.work/logs/run_all-<step>.log``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks import common as c

log = logging.getLogger("run_all")

DEFAULT_OUT = c.PROJECT_ROOT / "benchmarks" / "RESULTS.md"
STEP_NAMES = ("perf_analyzer", "floor", "tuning", "rest_load", "recovery", "llm_decode", "llm_batching", "scale_out",
              "scale_out_tasks")


@dataclass
class Step:
    name: str
    title: str
    results: Path  # the report the step writes
    timeout_s: float
    sections: tuple[str, ...]  # "### <prefix>" sections of its report copied into RESULTS.md
    quoted: tuple[str, ...]  # the sections whose tables are quoted, row by row, in the headline figures
    headline_columns: tuple[str, ...] = ()  # the columns quoted (all if empty)
    rc: int | None = None
    seconds: float = 0.0
    error: str = ""
    skipped: bool = False  # --skip: its report (if any) comes from an earlier run

    @property
    def module(self) -> str:
        return f"benchmarks.{self.name}"

    def command(self, quick: bool) -> list[str]:
        out = self.results.relative_to(c.PROJECT_ROOT) if self.results.is_relative_to(c.PROJECT_ROOT) else self.results
        return [sys.executable, "-m", self.module, *(["--quick"] if quick else []), "--out", str(out)]

    def shown(self, quick: bool) -> str:
        return " ".join([".venv/bin/python", *self.command(quick)[1:]])


def steps(quick: bool) -> list[Step]:
    q = "-quick" if quick else ""
    return [
        Step("perf_analyzer", "perf_analyzer — p50 / p95 / p99 latency and throughput per Triton model",
             c.RESULTS_DIR / f"perf_analyzer{q}.md", 600.0 if quick else 1080.0,
             # the last two: a report written before its Summary / Per model layout
             ("Summary", "Per model", "perf_analyzer — every model", "Decoupled models"), ("Summary",), ("value",)),
        Step("floor", "FLOP floor — measured time over floor", c.RESULTS_DIR / f"floor{q}.md", 240.0 if quick else 420.0,
             ("Measured time over floor", "Summary"), ("Measured time over floor",), ("p50 / floor",)),
        Step("tuning", "Triton configuration tuning", c.RESULTS_DIR / f"tuning{q}.md", 360.0 if quick else 720.0,
             ("Decisions",), ("Decisions",), ("defaults",)),
        Step("rest_load", "REST load generator — front end vs Triton-direct, per-model serving figures", c.RESULTS_DIR / f"rest-load{q}.md",
             600.0 if quick else 1260.0, ("1. REST / Triton-direct", "Summary"), ("1. REST / Triton-direct",)),
        Step("recovery", "Recovery — time to serve again after each fault", c.RESULTS_DIR / f"recovery{q}.md",
             300.0 if quick else 600.0, ("Summary",), ("Summary",), ("seconds to recover, median / max",)),
        Step("llm_decode", "LLM decode step — bandwidth floor and lower-precision weights", c.RESULTS_DIR / f"llm-decode{q}.md",
             300.0 if quick else 600.0, ("Summary", "Decode step", "Quality gate"), ("Summary",)),
        Step("llm_batching", "LLM continuous batching — throughput, late joiners, floor", c.RESULTS_DIR / f"llm-batching{q}.md",
             300.0 if quick else 900.0, ("Summary", "Throughput"), ("Summary",), ("measured", "met")),
        Step("scale_out", "Scale-out — LAM-A2E streams, 1 vs 2 Triton replicas behind 2 front ends",
             c.RESULTS_DIR / f"scale-out{q}.md", 300.0 if quick else 600.0, ("Summary",), ("Summary",)),
        Step("scale_out_tasks", "Scale-out — Emotion-LLaMA requests and Hallo2 tasks, 1 vs 2 Triton replicas behind 2 front ends",
             c.RESULTS_DIR / f"scale-out-tasks{q}.md", 420.0 if quick else 900.0, ("Summary",), ("Summary",)),
    ]


def run_step(step: Step, quick: bool) -> None:
    log_path = c.WORK_DIR / "logs" / f"run_all-{step.name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log.info("step %s: %s (timeout %.0f s, log %s)", step.name, step.shown(quick), step.timeout_s, log_path)
    started = time.perf_counter()
    with log_path.open("w") as handle:
        proc = subprocess.Popen(step.command(quick), cwd=c.PROJECT_ROOT, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            step.rc = proc.wait(timeout=step.timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)  # SIGTERM first: every benchmark stops its servers in ``finally`` blocks
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            step.rc, step.error = None, f"timed out after {step.timeout_s:.0f} s"
        except BaseException:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
            raise
    step.seconds = time.perf_counter() - started
    if step.rc not in (0, None):
        tail = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()][-3:]
        step.error = f"exit status {step.rc}: " + " / ".join(tail)[-400:]
    log.info("step %s: %s in %.0f s", step.name, "ok" if step.rc == 0 else step.error, step.seconds)



def md_sections(text: str, prefix: str) -> str:
    """The ``### <prefix>...`` section of a report (heading to the next heading), or ''."""
    out, inside = [], False
    for line in text.splitlines():
        if line.startswith("#"):
            if inside:
                break
            inside = line.startswith("### " + prefix)
            if inside:
                out.append("#" + line)  # one level down inside RESULTS.md
        elif inside:
            out.append(line)
    return "\n".join(out).strip()


def table_headline(section: str, columns: tuple[str, ...] = ()) -> list[str]:
    """Every row of the first markdown table in ``section`` as 'first cell: header value, ...' (only ``columns``
    when given)."""
    rows = [line for line in section.splitlines() if line.startswith("|")]
    if len(rows) < 3:
        return []
    cells = lambda line: [cell.strip() for cell in line.strip().strip("|").split("|")]  # noqa: E731
    header = cells(rows[0])
    return [f"{header[0]} {values[0]}: " + ", ".join(f"{h} {v}" for h, v in zip(header[1:], values[1:]) if not columns or h in columns)
            for values in map(cells, rows[2:])]


def write_results(out: Path, quick: bool, all_steps: list[Step], started_at: _dt.datetime, total_s: float, command: str) -> str:
    rel = lambda p: p.relative_to(out.parent) if p.is_relative_to(out.parent) else p  # noqa: E731
    reports = {step.name: step.results.read_text() if step.rc == 0 and step.results.exists() else "" for step in all_steps}
    version_info = c.versions(None)
    for line in reports["perf_analyzer"].splitlines():  # the server's version, as perf_analyzer's run saw it
        if line.startswith("- versions:") and "tritonserver " in line:
            version_info["tritonserver"] = line.split("tritonserver ", 1)[1].split(";")[0]
    lines = ["# Benchmark results" + (" — QUICK VARIANT" if quick else ""), ""]
    if quick:
        lines += ["> **This is the quick variant** (`python -m benchmarks.run_all --quick`): tiny networks, short measurement "
                  "windows, few requests — a smoke run of the whole suite whose figures show where the time goes, not what the "
                  "full-size models do. `make bench` runs the full variant.", ""]
    lines += [
        f"- date: {started_at.isoformat(timespec='seconds')}; whole run {total_s / 60:.1f} min",
        f"- command: `{command}` (from the repository root)",
        "- machine: " + "; ".join(f"{k} {v}" for k, v in c.machine_description().items()),
        "- versions: " + "; ".join(f"{k} {v}" for k, v in version_info.items()),
        f"- load average at end (1/5/15 min): {c.load_average()} — every step runs its load generator on the same cores as "
        "its servers; other work on the machine skews the figures",
        "- weights: seeded-random (no model hub is reachable here), except the real SmolLM2-135M in the LLM slot of the "
        "runs that say so (`rest_load`, `llm_decode`, `llm_batching`); the timings are those of the network sizes named in "
        "each report", "",
        "## Headline figures (from the step reports)", "",
    ]
    body, headlines = [], []
    for step in all_steps:
        link = f"[`{rel(step.results)}`]({rel(step.results)})"
        body += [f"### {step.title} — {link}", ""]
        if not reports[step.name]:
            body += [f"Not available: {step.error or 'no results file'}", ""]
            continue
        header = [line for line in reports[step.name].splitlines()[:14]
                  if line.startswith(("- perf_analyzer:", "- repository", "- profile", "- request", "- model repository"))]
        body += header + ([""] if header else [])
        for prefix in step.sections:
            section = md_sections(reports[step.name], prefix)
            if prefix == "Summary":  # keep the figures, drop the phase timings and the load average
                section = "\n".join(line for line in section.splitlines() if not line.startswith(("| time:", "| load average")))
            if section and prefix in step.quoted:
                quoted = "; ".join(table_headline(section, step.headline_columns))
                headlines.append(f"- {step.title} ({prefix.rstrip('.')} of {link}): {quoted}")
            body += [section, ""] if section else []
    lines += [*headlines, "", "## Steps and exact commands", "", "| step | command | results | time | status |", "|---|---|---|---|---|"]
    for step in all_steps:
        status = "ok" if step.rc == 0 and not step.skipped else f"**failed**: {step.error.replace('|', '/')}"
        if step.skipped:
            written = _dt.datetime.fromtimestamp(step.results.stat().st_mtime, _dt.timezone.utc) if step.results.exists() else None
            status = step.error + (f" (written {written.isoformat(timespec='seconds')})" if written else "")
        link = f"[`{rel(step.results)}`]({rel(step.results)})" if step.results.exists() else "—"
        lines.append(f"| {step.name} | `{step.shown(quick)}` | {link} | {'—' if step.skipped else f'{step.seconds:.0f} s'} | {status} |")
    lines += ["", "## Results", "", *body, "## How to read these figures", "",
              "See [`benchmarks/README.md`](README.md): REST/Triton is what the FastAPI front end adds on top of Triton (near 1x = "
              "cheap next to the model); Triton/in-process is what Triton adds over the bare pipeline. perf_analyzer numbers are "
              "Triton alone, no front end. Percentiles of small samples are close to the maximum.", ""]
    text = "\n".join(lines)
    out.write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="every benchmark in its quick variant (~15 min in all)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the combined results file (default benchmarks/RESULTS.md)")
    parser.add_argument("--skip", nargs="*", default=[], choices=STEP_NAMES, help="steps to leave out (their reports stay linked)")
    args = parser.parse_args(argv)

    c.raise_on_sigterm()
    started_at, started = _dt.datetime.now(_dt.timezone.utc), time.perf_counter()
    all_steps = steps(args.quick)
    for step in all_steps:
        if step.name in args.skip:
            step.skipped, step.rc = True, 0 if step.results.exists() else None
            step.error = "skipped (--skip)" + ("; results file from an earlier run" if step.results.exists() else "")
            continue
        run_step(step, args.quick)
    command = "python -m benchmarks.run_all" + (" --quick" if args.quick else "") + (" --skip " + " ".join(args.skip) if args.skip else "")
    print(write_results(args.out.resolve(), args.quick, all_steps, started_at, time.perf_counter() - started, command))
    log.info("wrote %s in %.1f min", args.out, (time.perf_counter() - started) / 60)
    return 0 if all(step.rc == 0 for step in all_steps) else 1


if __name__ == "__main__":
    sys.exit(main())

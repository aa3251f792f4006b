"""Every benchmark in one command, one results file.

    python -m benchmarks.run_all            # all seven steps, full variant: ~40 min on 2 cores (make bench)
    python -m benchmarks.run_all --quick    # the same, each in its quick variant: ~15 min

Runs, one after the other (each starts and stops its own ``tritonserver``, so they never share the cores):

1. ``benchmarks.perf_analyzer`` — perf_analyzer against every Triton model (CSV per model in
   ``benchmarks/results/perf_analyzer[-quick]/``);
2. ``benchmarks.floor`` — FLOPs of one request per model from the network definitions, this machine's sustained
   GEMM rate, and perf_analyzer's measured time over that floor;
3. ``benchmarks.tuning`` — Triton configuration experiments (instances, batching delays, sequence-batcher
   candidates, onnxruntime threads), each variant a rebuilt repository and a fresh server;
4. ``benchmarks.a2e_bench`` — LAM-A2E: REST vs Triton gRPC vs in-process, real-time capacity;
5. ``benchmarks.emotion_llama_bench`` — Emotion-LLaMA: TTFT and tokens/s via Triton, REST SSE, REST unary;
6. ``benchmarks.hallo2_bench`` — Hallo2: seconds per step, overhead, cache, in process vs Triton;
7. ``benchmarks.rest_load`` — async REST load generator: every documented route vs the same work sent to Triton
   directly, front-end overhead as a ratio.

``--quick`` is passed to every one of them. Each writes its own results file; this script then writes
``benchmarks/RESULTS.md`` (``--out``): machine, versions, date, the exact commands, one table per model with
p50/p95/p99 latency and throughput from the perf_analyzer CSVs, and the other steps' results files with their
headline sections (floor ratios, tuning decisions, REST/Triton ratios). Every step has a wall-clock timeout; a
failed step is reported, not fatal for the others. Logs: ``benchmarks/.work/logs/run_all-<step>.log``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.common import PROJECT_ROOT, RESULTS_DIR, WORK_DIR, machine_description, raise_on_sigterm, versions
from benchmarks.perf_analyzer import server_compute_us

log = logging.getLogger("run_all")

DEFAULT_OUT = PROJECT_ROOT / "benchmarks" / "RESULTS.md"
STEP_NAMES = ("perf_analyzer", "floor", "tuning", "a2e", "emotion_llama", "hallo2", "rest_load")


@dataclass
class Step:
    name: str
    title: str
    module: str
    results: Path  # the results file the step writes
    timeout_s: float
    extra: list[str] = field(default_factory=list)
    headline_sections: tuple[str, ...] = ()  # "### <prefix>" sections of its report copied into RESULTS.md
    headline_columns: tuple[str, ...] = ()  # the columns of a section's table quoted in the headlines (all if empty)
    rc: int | None = None
    seconds: float = 0.0
    error: str = ""
    skipped: bool = False  # --skip: its results file (if any) comes from an earlier run

    def command(self, quick: bool) -> list[str]:
        return [sys.executable, "-m", self.module, *(["--quick"] if quick else []), *self.extra,
                "--out", str(self.results.relative_to(PROJECT_ROOT))]

    def shown(self, quick: bool) -> str:
        parts = self.command(quick)
        return " ".join([".venv/bin/python", *parts[1:]])


def steps(quick: bool) -> list[Step]:
    q = "-quick" if quick else ""
    a2e_profile = "tiny" if quick else "full"
    llm, encoders = ("tiny", "tiny") if quick else ("smollm2", "small")
    # perf_analyzer (and the floor, at the same shapes) serve the tiny LAM-A2E in both variants: the full-size
    # network is measured by a2e_bench and the tuning experiments
    return [
        Step("perf_analyzer", "perf_analyzer — every Triton model", "benchmarks.perf_analyzer",
             RESULTS_DIR / f"perf_analyzer{q}.md", 600.0 if quick else 1080.0),
        Step("floor", "FLOP floor — measured time over floor", "benchmarks.floor", RESULTS_DIR / f"floor{q}.md",
             240.0 if quick else 420.0, headline_sections=("Measured time over floor", "Summary"),
             headline_columns=("p50 / floor",)),
        Step("tuning", "Triton configuration tuning", "benchmarks.tuning", RESULTS_DIR / f"tuning{q}.md",
             360.0 if quick else 720.0, headline_sections=("Decisions",), headline_columns=("defaults",)),
        Step("a2e", "LAM-A2E", "benchmarks.a2e_bench", RESULTS_DIR / f"a2e-{a2e_profile}{q}.md", 300.0 if quick else 900.0,
             headline_sections=("2b.", "Summary")),
        Step("emotion_llama", "Emotion-LLaMA", "benchmarks.emotion_llama_bench",
             RESULTS_DIR / f"emotion-llama-{llm}-{encoders}{q}.md", 300.0 if quick else 720.0,
             headline_sections=("3. REST / Triton", "Summary")),
        Step("hallo2", "Hallo2", "benchmarks.hallo2_bench", RESULTS_DIR / f"hallo2-tiny{q}.md", 300.0 if quick else 480.0,
             headline_sections=("2c.", "Summary")),
        Step("rest_load", "REST load generator — front end vs Triton-direct", "benchmarks.rest_load",
             RESULTS_DIR / f"rest-load{q}.md", 420.0 if quick else 720.0, headline_sections=("1. REST / Triton-direct", "Summary")),
    ]


# --------------------------------------------------------------------------------------------- running


def run_step(step: Step, quick: bool) -> None:
    logs = WORK_DIR / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"run_all-{step.name}.log"
    log.info("step %s: %s (timeout %.0f s, log %s)", step.name, step.shown(quick), step.timeout_s, log_path)
    started = time.perf_counter()
    with log_path.open("w") as handle:
        proc = subprocess.Popen(step.command(quick), cwd=PROJECT_ROOT, stdout=handle, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            step.rc = proc.wait(timeout=step.timeout_s)
        except subprocess.TimeoutExpired:
            # SIGTERM first: every benchmark stops its servers in ``finally`` blocks
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            step.rc = None
            step.error = f"timed out after {step.timeout_s:.0f} s"
        except BaseException:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
            raise
    step.seconds = time.perf_counter() - started
    if step.rc not in (0, None):
        tail = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()][-3:]
        step.error = f"exit status {step.rc}: " + " / ".join(tail)[-400:]
    log.info("step %s: %s in %.0f s", step.name, "ok" if step.rc == 0 else step.error, step.seconds)


# --------------------------------------------------------------------------------------------- report


def results_time(path: Path) -> str:
    return _dt.datetime.fromtimestamp(path.stat().st_mtime, _dt.timezone.utc).isoformat(timespec="seconds")


def md_sections(text: str, prefix: str) -> str:
    """The ``### <prefix>...`` section of a report (heading to the next heading), or ''."""
    lines, out, inside = text.splitlines(), [], False
    for line in lines:
        if line.startswith("#"):
            if inside:
                break
            inside = line.startswith("### " + prefix)
            if inside:
                out.append("#" + line)  # one level down inside RESULTS.md
            continue
        if inside:
            out.append(line)
    return "\n".join(out).strip()


def table_headline(section: str, columns: tuple[str, ...] = ()) -> list[str]:
    """Every row of the first markdown table in ``section`` as 'first cell: header value, ...' (only ``columns``
    when given)."""
    rows = [line for line in section.splitlines() if line.startswith("|")]
    if len(rows) < 3:
        return []
    cells = lambda line: [c.strip() for c in line.strip().strip("|").split("|")]  # noqa: E731
    header = cells(rows[0])
    out = []
    for line in rows[2:]:
        values = cells(line)
        pairs = [(h, v) for h, v in zip(header[1:], values[1:]) if not columns or h in columns]
        out.append(f"{header[0]} {values[0]}: " + ", ".join(f"{h} {v}" for h, v in pairs))
    return out


def ms(value) -> str:
    return "—" if value in (None, "") else f"{float(value) / 1000:.1f}"


def fmt_rate(value) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "—"
    return f"{number:.1f}" if number >= 10 else f"{number:.2f}"


def perf_analyzer_tables(summary: dict, csv_dir: Path) -> list[str]:
    out = []
    by_model: dict[str, list[dict]] = {}
    for result in summary.get("results", []):
        by_model.setdefault(result["target"]["model"], []).append(result)
    for model, results in by_model.items():
        kind = results[0]["target"]["kind"]
        rows = []
        for result in results:
            protocol = result["target"]["protocol"]
            if result.get("skipped"):
                rows.append(f"| {protocol} | — | — | — | — | — | — | — | not run: {result['skipped']} |")
            for level in result["levels"]:
                if not level["ok"]:
                    rows.append(f"| {protocol} | {level['concurrency']} | — | — | — | — | — | — | "
                                f"**not measured**: {level['error'].replace('|', '/')} |")
                    continue
                row, resp = level["row"], level.get("responses") or {}
                compute = server_compute_us(row)
                notes = [level.get("error", "")]
                if resp:
                    notes.insert(0, f"first response p50/p95/p99 {resp['first p50']:.1f} / {resp['first p95']:.1f} / "
                                    f"{resp['first p99']:.1f} ms, {resp['responses_per_request']:.0f} responses/request")
                if result["target"].get("request_count"):
                    notes.append("fixed request count")
                rows.append(f"| {protocol} | {level['concurrency']} | {fmt_rate(row.get('Inferences/Second'))} | "
                            f"{ms(row.get('p50 latency'))} | {ms(row.get('p95 latency'))} | {ms(row.get('p99 latency'))} | "
                            f"{ms(row.get('Server Queue'))} | {compute / 1000:.1f} | {'; '.join(n for n in notes if n)} |")
        slug = results[0]["target"]["model"]
        csv_file = csv_dir / f"{slug}.csv"
        link = f" — CSV [`{csv_file.relative_to(PROJECT_ROOT / 'benchmarks')}`]({csv_file.relative_to(PROJECT_ROOT / 'benchmarks')})" if csv_file.exists() else ""
        kind_note = {"sequence": "sequence model: concurrency = concurrent 8-chunk sequences",
                     "decoupled": "decoupled, gRPC streaming: latency = request to the final response"}.get(kind, "stateless")
        out += [f"#### `{model}` ({kind_note}){link}", "",
                "| protocol | concurrency | infer/s | p50 ms | p95 ms | p99 ms | server queue ms | server compute ms | note |",
                "|---|---|---|---|---|---|---|---|---|", *rows, ""]
    return out


def driven_summary(summary: dict) -> tuple[list[str], list[str]]:
    ok, failed = [], []
    for result in summary.get("results", []):
        name = result["target"]["label"] or result["target"]["model"]
        levels = result["levels"]
        good = [lv for lv in levels if lv["ok"]]
        if good and len(good) == len(levels):
            ok.append(name)
        elif good:
            ok.append(name + " (some levels not measured)")
            failed += [f"{name} c{lv['concurrency']}: {lv['error']}" for lv in levels if not lv["ok"]]
        else:
            failed.append(f"{name}: {result.get('skipped') or '; '.join(lv['error'] for lv in levels)}")
    return ok, failed


def write_results(out: Path, quick: bool, all_steps: list[Step], started_at: _dt.datetime, total_s: float,
                  command: str) -> str:
    rel = lambda p: p.relative_to(out.parent) if p.is_relative_to(out.parent) else p  # noqa: E731
    pa_step = all_steps[0]
    pa_json = pa_step.results.with_suffix(".json")
    summary = json.loads(pa_json.read_text()) if pa_json.exists() and pa_step.rc == 0 else {}
    tritonserver = next((line.split("tritonserver ", 1)[1].split(";")[0] for line in summary.get("header", [])
                         if line.startswith("- versions:") and "tritonserver " in line), "")
    version_info = versions(None)
    if tritonserver:
        version_info["tritonserver"] = tritonserver
    pa_line = next((line[2:] for line in summary.get("header", []) if line.startswith("- perf_analyzer:")), "")
    lines = [
        "# Benchmark results" + (" — QUICK VARIANT" if quick else ""),
        "",
    ]
    if quick:
        lines += ["> **This is the quick variant** (`python -m benchmarks.run_all --quick`): tiny networks, short "
                  "measurement windows, few requests — a smoke run of the whole suite whose figures show where the "
                  "time goes, not what the full-size models do. `make bench` runs the full variant.", ""]
    lines += [
        f"- date: {started_at.isoformat(timespec='seconds')}; whole run {total_s / 60:.1f} min",
        f"- command: `{command}` (from the repository root)",
        "- machine: " + "; ".join(f"{k} {v}" for k, v in machine_description().items()),
        "- versions: " + "; ".join(f"{k} {v}" for k, v in version_info.items()),
        f"- load average at end (1/5/15 min): {' / '.join(f'{v:.2f}' for v in os.getloadavg())} — every step runs its "
        "load generator on the same cores as its servers; other work on the machine skews the figures",
        "- weights: seeded-random everywhere (no model hub is reachable here); the timings are those of the network "
        "sizes named in each report",
        "",
        "## Steps and exact commands",
        "",
        "| step | command | results | time | status |",
        "|---|---|---|---|---|",
    ]
    for step in all_steps:
        status = "ok" if step.rc == 0 and not step.skipped else f"**failed**: {step.error.replace('|', '/')}"
        if step.skipped:
            status = step.error + (f" (written {results_time(step.results)})" if step.results.exists() else "")
        link = f"[`{rel(step.results)}`]({rel(step.results)})" if step.results.exists() else "—"
        duration = "—" if step.skipped else f"{step.seconds:.0f} s"
        lines.append(f"| {step.name} | `{step.shown(quick)}` | {link} | {duration} | {status} |")
    lines.append("")

    lines += ["## perf_analyzer — p50 / p95 / p99 latency and throughput per model", ""]
    if summary:
        ok, failed = driven_summary(summary)
        lines += [f"- {pa_line}" if pa_line else "",
                  *(line for line in summary.get("header", []) if line.startswith("- repository")),
                  f"- full report (input data, every perf_analyzer command line): [`{rel(pa_step.results)}`]({rel(pa_step.results)})",
                  f"- driven by perf_analyzer: {', '.join(f'`{m}`' for m in ok) or 'none'}",
                  f"- not (fully) measured: {'; '.join(failed) if failed else 'none'}",
                  "- latencies are perf_analyzer's client-side percentiles in ms; server queue / compute are Triton's "
                  "per-request averages; infer/s = completed requests per second",
                  ""]
        lines += perf_analyzer_tables(summary, pa_step.results.with_suffix(""))
    else:
        lines += [f"perf_analyzer step did not produce results: {pa_step.error or 'no summary file'}", ""]

    headlines: list[str] = []
    lines += ["## Floor, tuning, per-slice serving benchmarks, REST load", ""]
    for step in all_steps[1:]:
        lines += [f"### {step.title} — [`{rel(step.results)}`]({rel(step.results)})", ""]
        if step.rc != 0 or not step.results.exists():
            lines += [f"Not available: {step.error or 'no results file'}", ""]
            continue
        text = step.results.read_text()
        header = [line for line in text.splitlines()[:12] if line.startswith("- profile") or line.startswith("- request")]
        lines += header + ([""] if header else [])
        for prefix in step.headline_sections:
            section = md_sections(text, prefix)
            if prefix == "Summary":  # keep the figures, drop the phase timings and the load average
                section = "\n".join(line for line in section.splitlines()
                                     if not line.startswith(("| time:", "| load average")))
            if section:
                lines += [section, ""]
            if prefix != "Summary" and section:
                headlines.append(f"- {step.title} ({prefix.rstrip('.')} of [`{rel(step.results)}`]({rel(step.results)})): "
                                 + "; ".join(table_headline(section, step.headline_columns)))
    if summary:
        ok, failed = driven_summary(summary)
        headlines.insert(0, f"- perf_analyzer: {len(ok)} of {len(summary.get('results', []))} model targets driven"
                            + (f"; not measured: {'; '.join(failed)}" if failed else " at every concurrency level"))
    if headlines:
        at = lines.index("## Steps and exact commands")
        lines[at:at] = ["## Headline figures (from the step reports)", "", *headlines, ""]
    lines += ["## How to read these figures", "",
              "See [`benchmarks/README.md`](README.md): REST/Triton is what the FastAPI front end adds on top of Triton "
              "(near 1x = cheap next to the model); Triton/in-process is what Triton adds over the bare pipeline. "
              "perf_analyzer numbers are Triton alone, no front end. Percentiles of small samples are close to the maximum.",
              ""]
    text = "\n".join(lines)
    out.write_text(text)
    return text


# --------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="every benchmark in its quick variant (< 15 min in all)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the combined results file (default benchmarks/RESULTS.md)")
    parser.add_argument("--skip", nargs="*", default=[], choices=STEP_NAMES,
                        help="steps to leave out (their existing results files are still linked)")
    args = parser.parse_args(argv)

    raise_on_sigterm()
    started_at = _dt.datetime.now(_dt.timezone.utc)
    started = time.perf_counter()
    all_steps = steps(args.quick)
    for step in all_steps:
        if step.name in args.skip:
            step.skipped = True
            step.rc = 0 if step.results.exists() else None
            step.error = "skipped (--skip); results file from an earlier run" if step.results.exists() else "skipped (--skip)"
            continue
        run_step(step, args.quick)
    command = "python -m benchmarks.run_all" + (" --quick" if args.quick else "") + (
        " --skip " + " ".join(args.skip) if args.skip else "")
    text = write_results(args.out.resolve(), args.quick, all_steps, started_at, time.perf_counter() - started, command)
    print(text)
    log.info("wrote %s in %.1f min", args.out, (time.perf_counter() - started) / 60)
    return 0 if all(step.rc == 0 for step in all_steps) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Triton configuration tuning, recorded as experiments: which generated config settings serve best here.

    python -m benchmarks.tuning            # LAM-A2E full profile, SmolLM2 LLM: ~8 min on 2 cores
    python -m benchmarks.tuning --quick    # tiny networks, three variants per experiment: ~3 min

Every knob under test is a field of ``export.build_repository.BuildSettings`` — the object that writes every
``config.pbtxt`` — so a variant is ``dataclasses.replace(defaults, **overrides)``: the repository is rebuilt with
it (ONNX exports are cached by fingerprint, only the configs change), a fresh ``tritonserver`` starts, and
perf_analyzer drives the model under test at one fixed load. Experiments:

1. ``lam_a2e`` (the A2E network, dynamic batching) at concurrency 4: instance count, onnxruntime intra-op
   threads, dynamic-batching queue delay (0 / 2 / 10 ms);
2. ``lam_a2e_stream`` (sequence batcher, ``oldest``) with 8 live 8-chunk sequences: queue delay, max batch
   (= preferred batch, 4 / 8), ``max_candidate_sequences``;
3. ``emotion_llama_llm`` (decoupled, token streaming) at concurrency 4: dynamic-batching queue delay.

The verdict rule: the best variant is the one with the highest throughput among those whose p99 latency is
within ``P99_SLACK`` of the lowest p99 (so no variant wins by starving some requests — e.g. too few candidate
sequences park whole streams in a backlog); the current default is kept when it is eligible and within
``NOISE_MARGIN`` of the best (run-to-run noise on a shared 2-core machine is of that order), otherwise the
report says which default to change. Output: ``benchmarks/results/tuning[-quick].md``
(one table per experiment with every variant's settings, throughput, p50/p95/p99, Triton queue/compute and the
verdict) and the perf_analyzer CSVs in ``benchmarks/results/tuning[-quick]/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.common import (
    PROJECT_ROOT, RESULTS_DIR, WORK_DIR, Report, machine_description, raise_on_sigterm, versions,
)
from benchmarks.perf_analyzer import (
    LOG_DIR,
    SAMPLE_VIDEO,
    SEQUENCE_LENGTH,
    Target,
    TargetResult,
    a2e_stream_rows,
    a2e_window_rows,
    emotion_embeddings,
    llm_rows,
    load_speech,
    pa_environment,
    perf_analyzer_version,
    run_target,
    server_compute_us,
    us_to_ms,
    write_json,
)
from emoserve.model_catalog import A2E_NETWORK_MODEL, A2E_STREAM_MODEL, EMOTION_LLM_MODEL
from stack.processes import free_port
from export.build_repository import BuildSettings, build_repository

log = logging.getLogger("tuning")

# two full runs of the same settings differed by up to ~8 % in throughput on this 2-core machine
NOISE_MARGIN = 0.10
# a variant may not buy throughput by starving some requests: its p99 must stay within this factor of the best p99
P99_SLACK = 1.5
DECISIONS_HEADER = ["model", "best measured settings", "defaults", "verdict"]
TUNING_DATA_DIR = WORK_DIR / "tuning-data"


@dataclass(frozen=True)
class Variant:
    label: str
    overrides: tuple[tuple[str, object], ...] = ()

    def settings(self, base: BuildSettings) -> BuildSettings:
        return dataclasses.replace(base, **dict(self.overrides))

    @property
    def is_default(self) -> bool:
        return not self.overrides


@dataclass(frozen=True)
class Experiment:
    slug: str
    title: str
    model: str
    kind: str  # perf_analyzer target kind: "stateless" | "sequence" | "decoupled"
    concurrency: int
    slices: tuple[str, ...]
    knobs: tuple[str, ...]  # the BuildSettings fields the variants move
    variants: tuple[Variant, ...]
    # a fixed request count per concurrent client, not time windows: every variant gets exactly the same work,
    # and full-size networks at a few requests/s never "stabilise" within perf_analyzer's windows
    requests_per_client: int


DEFAULTS = Variant("current default")


def experiments(quick: bool) -> list[Experiment]:
    """The defaults plus the variants around them (labels name the moved value; a default that changes must be
    moved out of its experiment's variants, which the tests check)."""
    a2e_network = [
        DEFAULTS,
        Variant("no batching delay", (("network_queue_delay_us", 0),)),
        Variant("2 instances x 1 thread", (("network_instances", 2), ("onnx_threads", 1))),
    ]
    stream = [
        DEFAULTS,
        Variant("no batching delay", (("stream_queue_delay_us", 0),)),
        Variant("4 candidate sequences", (("stream_candidate_sequences", 4),)),
    ]
    llm = [DEFAULTS, Variant("no batching delay", (("llm_queue_delay_us", 0),))]
    if not quick:
        a2e_network += [Variant("2 ms batching delay", (("network_queue_delay_us", 2000),)),
                        Variant("1 instance x 1 thread", (("onnx_threads", 1),))]
        stream += [Variant("10 ms batching delay", (("stream_queue_delay_us", 10000),)),
                   Variant("max batch 8", (("stream_max_batch", 8),))]
        llm += [Variant("5 ms batching delay", (("llm_queue_delay_us", 5000),)),
                Variant("50 ms batching delay", (("llm_queue_delay_us", 50000),))]
    return [
        Experiment("a2e-network", "LAM-A2E network: instances, onnxruntime threads, dynamic-batching delay",
                   A2E_NETWORK_MODEL, "stateless", 4, ("lam_a2e",),
                   ("network_instances", "onnx_threads", "network_queue_delay_us"), tuple(a2e_network),
                   requests_per_client=100 if quick else 16),
        Experiment("a2e-stream", "LAM-A2E streaming: sequence-batcher delay, max batch, candidate sequences",
                   A2E_STREAM_MODEL, "sequence", 8, ("lam_a2e",),
                   ("stream_queue_delay_us", "stream_max_batch", "stream_candidate_sequences"), tuple(stream),
                   requests_per_client=4 * SEQUENCE_LENGTH if quick else 2 * SEQUENCE_LENGTH),
        Experiment("llm", "Emotion-LLaMA LLM: dynamic-batching delay (requests decoding together)",
                   EMOTION_LLM_MODEL, "decoupled", 4, ("emotion_llama",), ("llm_queue_delay_us",), tuple(llm),
                   requests_per_client=12 if quick else 4),
    ]


def base_settings(quick: bool) -> BuildSettings:
    if quick:
        return BuildSettings(profile="tiny", llm="tiny", encoder_profile="tiny", hallo2_profile="tiny", seed=0)
    return BuildSettings(profile="full", llm="smollm2", encoder_profile="small", hallo2_profile="tiny", seed=0)


def knob_values(settings: BuildSettings, knobs: tuple[str, ...]) -> str:
    return ", ".join(f"`{knob}={getattr(settings, knob)}`" for knob in knobs)


# --------------------------------------------------------------------------------------------- runs


@dataclass
class VariantResult:
    variant: Variant
    settings: BuildSettings
    result: TargetResult | None = None
    error: str = ""

    @property
    def row(self) -> dict:
        if self.result and self.result.levels and self.result.levels[0].ok:
            return self.result.levels[0].row
        return {}

    @property
    def throughput(self) -> float:
        """Requests / (first send to last response) from the per-request timestamps: perf_analyzer's own
        Inferences/Second for a fixed request count divides by whole seconds, too coarse for runs of ~10 s."""
        if not self.row:
            return 0.0
        exact = self.result.levels[0].responses.get("throughput")
        if exact:
            return float(exact)
        try:
            return float(self.row.get("Inferences/Second", 0) or 0)
        except ValueError:
            return 0.0

    @property
    def p99_ms(self) -> float:
        try:
            return float(self.row.get("p99 latency", "nan")) / 1000
        except ValueError:
            return float("nan")

    @property
    def failure(self) -> str:
        if self.error:
            return self.error
        if self.result is None or not self.result.levels:
            return "not run"
        return self.result.levels[0].error if not self.result.levels[0].ok else ""


def input_rows(experiment: Experiment, grpc_url: str) -> list:
    speech = load_speech()
    long_speech = np.tile(speech, 2)
    if experiment.model == A2E_NETWORK_MODEL:
        return a2e_window_rows(long_speech)
    if experiment.model == A2E_STREAM_MODEL:
        return a2e_stream_rows(long_speech)
    # the LLM's input is what the served encoders make of the sample video
    return llm_rows(emotion_embeddings(grpc_url, SAMPLE_VIDEO.read_bytes()))


def run_variant(experiment: Experiment, variant: Variant, base: BuildSettings, data: dict[str, Path], env: dict[str, str],
                csv_dir: Path, interval_ms: int, max_trials: int, deadline: float) -> VariantResult:
    from stack.triton_server import TritonServer, TritonServerOptions

    settings = variant.settings(dataclasses.replace(base, slices=experiment.slices))
    outcome = VariantResult(variant, settings)
    if deadline - time.monotonic() < 20:
        outcome.error = "skipped: tuning time budget spent"
        return outcome
    # one folder per slice: the experiments of a slice share its (cached) ONNX exports
    repository = build_repository(WORK_DIR / f"tune-{'-'.join(experiment.slices)}", settings)
    server = TritonServer(TritonServerOptions(repository, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                                              log_path=WORK_DIR / "logs" / f"tuning-{experiment.slug}-triton.log"))
    try:
        server.start()
        if experiment.slug not in data:
            data[experiment.slug] = write_json(experiment.slug, input_rows(experiment, server.grpc_url), TUNING_DATA_DIR)
        label = f"{experiment.model}-{variant.label.replace(' ', '-')}"
        timeout_s = 180.0 if experiment.kind == "decoupled" else 120.0
        urls = {"grpc": server.grpc_url}
        # one request per client first: onnxruntime's first runs allocate, and the LLM's first batch warms torch
        warm_up = Target(experiment.model, experiment.kind, (experiment.concurrency,), label=label + "-warm-up",
                         request_count=SEQUENCE_LENGTH if experiment.kind == "sequence" else 1, timeout_s=timeout_s)
        run_target(warm_up, data[experiment.slug], urls, env, WORK_DIR / "tuning-warm-up", interval_ms, max_trials, deadline)
        target = Target(experiment.model, experiment.kind, (experiment.concurrency,), label=label,
                        request_count=experiment.requests_per_client, timeout_s=timeout_s, profile_export=True)
        outcome.result = run_target(target, data[experiment.slug], urls, env, csv_dir, interval_ms, max_trials, deadline)
    except Exception as exc:  # noqa: BLE001 - a variant that cannot start is a recorded result, not the end of the suite
        outcome.error = f"{type(exc).__name__}: {str(exc)[:300]}"
        log.exception("variant %s / %s failed", experiment.slug, variant.label)
    finally:
        server.stop()
    log.info("  %s / %s: %s", experiment.slug, variant.label,
             f"{outcome.throughput:.1f} infer/s" if outcome.row else outcome.failure)
    return outcome


# --------------------------------------------------------------------------------------------- verdict


@dataclass
class Verdict:
    best: VariantResult | None
    default: VariantResult | None
    keep_default: bool
    text: str


def eligible(measured: list[VariantResult], slack: float = P99_SLACK) -> list[VariantResult]:
    lowest = min(r.p99_ms for r in measured)
    return [r for r in measured if r.p99_ms <= slack * lowest]


def verdict(results: list[VariantResult], margin: float = NOISE_MARGIN) -> Verdict:
    measured = [r for r in results if r.row]
    default = next((r for r in results if r.variant.is_default), None)
    if not measured:
        return Verdict(None, default, True, "no variant measured: defaults unchanged")
    candidates = eligible(measured)
    best = max(candidates, key=lambda r: r.throughput)
    if default is None or not default.row:
        return Verdict(best, default, True, "the default was not measured: no verdict, defaults unchanged")
    if default in candidates and default.throughput >= (1 - margin) * best.throughput:
        if best is default:
            return Verdict(best, default, True, "keep the defaults: the current default is the best measured")
        return Verdict(best, default, True, f"keep the defaults: the best measured, {best.variant.label}, serves "
                                            f"{best.throughput / default.throughput:.2f}x the default's throughput — "
                                            f"within the {margin:.0%} noise margin")
    changed = {k: v for k, v in best.variant.overrides}
    return Verdict(best, default, False,
                   f"**change the defaults**: {best.variant.label} serves {best.throughput / default.throughput:.2f}x the "
                   f"default's throughput at p99 {best.p99_ms:.0f} ms (default {default.p99_ms:.0f} ms) — set " + ", ".join(f"`BuildSettings.{k} = {v}`" for k, v in changed.items()))


# --------------------------------------------------------------------------------------------- report


def variant_row(experiment: Experiment, outcome: VariantResult, decision: Verdict, all_measured: list[VariantResult]) -> list[str]:
    settings = knob_values(outcome.settings, experiment.knobs)
    label = outcome.variant.label + (" **(best)**" if decision.best is outcome else "")
    if outcome.row and outcome not in eligible([r for r in all_measured if r.row]):
        label += f" (p99 over {P99_SLACK}x the best p99: not eligible)"
    if not outcome.row:
        return [label, settings, "—", "—", "—", "—", "—", "—", outcome.failure.replace("|", "/")]
    row = outcome.row
    compute = server_compute_us(row)
    note = outcome.result.levels[0].error if outcome.result else ""
    return [label, settings, f"{outcome.throughput:.1f}", us_to_ms(row.get("p50 latency")), us_to_ms(row.get("p95 latency")),
            us_to_ms(row.get("p99 latency")), us_to_ms(row.get("Server Queue")), f"{compute / 1000:.1f}", note]


def load_note(experiment: Experiment) -> str:
    return {"stateless": f"concurrency {experiment.concurrency}",
            "sequence": f"{experiment.concurrency} live {SEQUENCE_LENGTH}-chunk sequences (1 s chunks)",
            "decoupled": f"concurrency {experiment.concurrency}, gRPC streaming, 16 greedy tokens; latency to the final response"}[experiment.kind]


def write_report(report: Report, all_results: list[tuple[Experiment, list[VariantResult]]]) -> list[list[str]]:
    decisions = []
    for experiment, results in all_results:
        decision = verdict(results)
        report.table(
            f"{experiment.title} — `{experiment.model}`",
            ["variant", "settings", "infer/s", "p50 ms", "p95 ms", "p99 ms", "server queue ms", "server compute ms", "note"],
            [variant_row(experiment, r, decision, results) for r in results],
            note=f"Load: {load_note(experiment)}, {experiment.requests_per_client * experiment.concurrency} requests "
                 f"(fixed count, after a warm-up). Each variant = the generated repository rebuilt with these BuildSettings "
                 f"and a fresh tritonserver. Verdict: {decision.text}.")
        decisions.append([f"`{experiment.model}`", knob_values(decision.best.settings, experiment.knobs) if decision.best else "—",
                          "kept" if decision.keep_default else "change", decision.text])
    return decisions


def outputs_for(quick: bool) -> tuple[Path, Path]:
    stem = "tuning-quick" if quick else "tuning"
    return RESULTS_DIR / f"{stem}.md", RESULTS_DIR / stem


def run(args: argparse.Namespace) -> int:
    started_at = _dt.datetime.now(_dt.timezone.utc)
    started = time.monotonic()
    env = pa_environment()
    md_path, csv_dir = outputs_for(args.quick)
    md_path = args.out or md_path
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    interval_ms, max_trials = (3000, 5) if args.quick else (4000, 6)
    base = base_settings(args.quick)
    deadline = time.monotonic() + args.time_budget
    data: dict[str, Path] = {}
    all_results = []
    for experiment in experiments(args.quick):
        if args.experiments and experiment.slug not in args.experiments:
            continue
        log.info("experiment %s: %d variants", experiment.slug, len(experiment.variants))
        all_results.append((experiment, [run_variant(experiment, variant, base, data, env, csv_dir, interval_ms, max_trials, deadline)
                                         for variant in experiment.variants]))

    report = Report()
    command = "python -m benchmarks.tuning" + (" --quick" if args.quick else "")
    report.add("\n".join([
        f"# Triton configuration tuning{' (quick)' if args.quick else ''}",
        "",
        f"- date: {started_at.isoformat(timespec='seconds')}; {(time.monotonic() - started) / 60:.1f} min",
        f"- command: `{command}` (from the repository root)",
        f"- networks: LAM-A2E `{base.profile}`, LLM `{base.llm}` (+ `{base.encoder_profile}` encoders for its input); "
        "CPU target (python backend + onnxruntime / torch)",
        f"- perf_analyzer: {perf_analyzer_version(env)}, `-i grpc`, a fixed `--request-count` per variant after a "
        f"warm-up run of one request per client; CSVs in `{csv_dir.relative_to(PROJECT_ROOT)}/`",
        "- machine: " + "; ".join(f"{k} {v}" for k, v in machine_description().items()),
        "- versions: " + "; ".join(f"{k} {v}" for k, v in versions(None).items()),
        f"- load average at end (1/5/15 min): {' / '.join(f'{v:.2f}' for v in os.getloadavg())}",
        f"- rule: best = highest throughput among the variants whose p99 is within {P99_SLACK}x of the lowest p99; "
        f"the current default is kept when it is among them and within {NOISE_MARGIN:.0%} of the best's throughput",
        "",
    ]))
    decisions = write_report(report, all_results)
    report.table("Decisions", DECISIONS_HEADER, decisions,
                 note="The defaults live in `export.build_repository.BuildSettings`; every generated `config.pbtxt` "
                      "(CPU and GPU targets) takes them from there.")
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(report.text())
    log.info("wrote %s", md_path)
    measured_any = any(r.row for _, results in all_results for r in results)
    return 0 if measured_any else 1


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny networks, three variants per experiment")
    parser.add_argument("--experiments", nargs="*", default=None, choices=("a2e-network", "a2e-stream", "llm"))
    parser.add_argument("--time-budget", type=float, default=None,
                        help="seconds for all variants (default 540, 240 with --quick); variants that do not fit are skipped")
    parser.add_argument("--out", type=Path, default=None, help="markdown report path")
    args = parser.parse_args(argv)
    if args.time_budget is None:
        args.time_budget = 240.0 if args.quick else 540.0

    raise_on_sigterm()
    return run(args)


if __name__ == "__main__":
    sys.exit(main())

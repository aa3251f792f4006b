"""Triton configuration tuning, recorded as experiments: which generated config settings serve best here.

    python -m benchmarks.tuning            # LAM-A2E full profile, SmolLM2 LLM: ~8 min on 2 cores
    python -m benchmarks.tuning --quick    # tiny networks, three variants per experiment: ~3 min

Every knob is a field of ``export.build_repository.BuildSettings`` (which writes every ``config.pbtxt``): a variant
is ``dataclasses.replace(defaults, **overrides)``, a rebuilt repository (ONNX exports are cached) and a fresh
tritonserver, driven by perf_analyzer at one fixed load and request count. Experiments: the ``lam_a2e`` network
(instances, onnxruntime threads, batching delay), ``lam_a2e_stream`` (sequence-batcher delay, max batch, candidate
sequences) and ``emotion_llama_llm`` (batching delay). Verdict: the best variant has the highest throughput among
those whose p99 is within ``P99_SLACK`` of the lowest p99; the default is kept when it is among them and within
``NOISE_MARGIN`` of the best. Report: ``benchmarks/results/tuning[-quick].md`` (``--out``).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks import common as c
from benchmarks import perf_analyzer as pa
from emoserve.model_catalog import A2E_NETWORK_MODEL, A2E_STREAM_MODEL
from emoserve.model_catalog import EMOTION_LLM_MODEL as LLM_MODEL
from export.build_repository import BuildSettings

log = logging.getLogger("tuning")

# two full runs of the same settings differed by up to ~8 % in throughput on this 2-core machine
NOISE_MARGIN = 0.10
# a variant may not buy throughput by starving some requests: its p99 must stay within this factor of the best p99
P99_SLACK = 1.5
DECISIONS_HEADER = ["model", "best measured settings", "defaults", "verdict"]
TUNING_DATA_DIR = c.WORK_DIR / "tuning-data"


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
    # the decode loop batches per step, so its default has no delay; 20 ms was the default of per-execute batching
    llm = [DEFAULTS, Variant("20 ms batching delay", (("llm_queue_delay_us", 20000),))]
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
                   requests_per_client=4 * pa.SEQUENCE_LENGTH if quick else 2 * pa.SEQUENCE_LENGTH),
        Experiment("llm", "Emotion-LLaMA LLM: dynamic-batching delay in front of the continuous-batching decode loop",
                   LLM_MODEL, "decoupled", 4, ("emotion_llama",), ("llm_queue_delay_us",), tuple(llm),
                   requests_per_client=12 if quick else 4),
    ]


def base_settings(quick: bool) -> BuildSettings:
    if quick:
        return BuildSettings(profile="tiny", llm="tiny", encoder_profile="tiny", hallo2_profile="tiny", seed=0)
    return BuildSettings(profile="full", llm="smollm2", encoder_profile="small", hallo2_profile="tiny", seed=0)


def knob_values(settings: BuildSettings, knobs: tuple[str, ...]) -> str:
    return ", ".join(f"`{knob}={getattr(settings, knob)}`" for knob in knobs)



@dataclass
class VariantResult:
    variant: Variant
    settings: BuildSettings
    result: pa.TargetResult | None = None
    error: str = ""

    @property
    def level(self) -> pa.Level | None:
        return self.result.levels[0] if self.result and self.result.levels else None

    @property
    def row(self) -> dict:
        return self.level.row if self.level and self.level.ok else {}

    @property
    def throughput(self) -> float:
        """Requests / (first send to last response) from the per-request timestamps: perf_analyzer's own
        Inferences/Second for a fixed request count divides by whole seconds, too coarse for runs of ~10 s."""
        try:
            return float(self.level.responses.get("throughput") or self.row.get("Inferences/Second", 0) or 0) if self.row else 0.0
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
        return self.error or ("not run" if self.level is None else "" if self.level.ok else self.level.error)


def input_rows(experiment: Experiment, grpc_url: str) -> list:
    long_speech = np.tile(c.load_speech(), 2)
    if experiment.model == A2E_NETWORK_MODEL:
        return pa.a2e_window_rows(long_speech)
    if experiment.model == A2E_STREAM_MODEL:
        return pa.a2e_stream_rows(long_speech)
    # the LLM's input is what the served encoders make of the sample video
    return pa.llm_rows(pa.emotion_embeddings(grpc_url, c.SAMPLE_VIDEO.read_bytes()))


def run_variant(experiment: Experiment, variant: Variant, base: BuildSettings, data: dict[str, Path], env: dict[str, str],
                interval_ms: int, max_trials: int, deadline: float) -> VariantResult:
    settings = variant.settings(dataclasses.replace(base, slices=experiment.slices))
    outcome = VariantResult(variant, settings)
    if deadline - time.monotonic() < 20:
        outcome.error = "skipped: tuning time budget spent"
        return outcome
    # one folder per slice: the experiments of a slice share its (cached) ONNX exports
    server = c.triton_server(c.build(c.WORK_DIR / f"tune-{'-'.join(experiment.slices)}", settings), f"tuning-{experiment.slug}-triton")
    try:
        server.start()
        if experiment.slug not in data:
            data[experiment.slug] = pa.write_json(experiment.slug, input_rows(experiment, server.grpc_url), TUNING_DATA_DIR)
        label = f"{experiment.model}-{variant.label.replace(' ', '-')}"
        timeout_s = 180.0 if experiment.kind == "decoupled" else 120.0
        urls = {"grpc": server.grpc_url}
        # one request per client first: onnxruntime's first runs allocate, and the LLM's first batch warms torch
        warm_up = pa.Target(experiment.model, experiment.kind, (experiment.concurrency,), label=label + "-warm-up",
                            request_count=pa.SEQUENCE_LENGTH if experiment.kind == "sequence" else 1, timeout_s=timeout_s)
        pa.run_target(warm_up, data[experiment.slug], urls, env, interval_ms, max_trials, deadline)
        target = pa.Target(experiment.model, experiment.kind, (experiment.concurrency,), label=label,
                           request_count=experiment.requests_per_client, timeout_s=timeout_s, profile_export=True)
        outcome.result = pa.run_target(target, data[experiment.slug], urls, env, interval_ms, max_trials, deadline)
    except Exception as exc:  # noqa: BLE001 - a variant that cannot start is a recorded result, not the end of the suite
        outcome.error = f"{type(exc).__name__}: {str(exc)[:300]}"
        log.exception("variant %s / %s failed", experiment.slug, variant.label)
    finally:
        server.stop()
    log.info("  %s / %s: %s", experiment.slug, variant.label,
             f"{outcome.throughput:.1f} infer/s" if outcome.row else outcome.failure)
    return outcome



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
                   f"default's throughput at p99 {best.p99_ms:.0f} ms (default {default.p99_ms:.0f} ms) — set "
                   + ", ".join(f"`BuildSettings.{k} = {v}`" for k, v in changed.items()))



def variant_row(experiment: Experiment, outcome: VariantResult, decision: Verdict, all_measured: list[VariantResult]) -> list[str]:
    settings = knob_values(outcome.settings, experiment.knobs)
    label = outcome.variant.label + (" **(best)**" if decision.best is outcome else "")
    if outcome.row and outcome not in eligible([r for r in all_measured if r.row]):
        label += f" (p99 over {P99_SLACK}x the best p99: not eligible)"
    if not outcome.row:
        return [label, settings, "—", "—", "—", "—", "—", "—", outcome.failure.replace("|", "/")]
    row = outcome.row
    compute = pa.server_compute_us(row)
    note = outcome.result.levels[0].error if outcome.result else ""
    return [label, settings, f"{outcome.throughput:.1f}", pa.us_to_ms(row.get("p50 latency")), pa.us_to_ms(row.get("p95 latency")),
            pa.us_to_ms(row.get("p99 latency")), pa.us_to_ms(row.get("Server Queue")), f"{compute / 1000:.1f}", note]


def load_note(experiment: Experiment) -> str:
    return {"stateless": f"concurrency {experiment.concurrency}",
            "sequence": f"{experiment.concurrency} live {pa.SEQUENCE_LENGTH}-chunk sequences (1 s chunks)",
            "decoupled": f"concurrency {experiment.concurrency}, gRPC streaming, 16 greedy tokens; latency to the final response",
            }[experiment.kind]


def write_report(report: c.Report, all_results: list[tuple[Experiment, list[VariantResult]]]) -> list[list[str]]:
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


def run(args: argparse.Namespace) -> int:
    started_at = _dt.datetime.now(_dt.timezone.utc)
    started = time.monotonic()
    env = pa.pa_environment()
    md_path = args.out or c.RESULTS_DIR / ("tuning-quick.md" if args.quick else "tuning.md")
    pa.LOG_DIR.mkdir(parents=True, exist_ok=True)
    interval_ms, max_trials = (3000, 5) if args.quick else (4000, 6)
    base = base_settings(args.quick)
    deadline = time.monotonic() + args.time_budget
    data: dict[str, Path] = {}
    all_results = []
    for experiment in experiments(args.quick):
        if args.experiments and experiment.slug not in args.experiments:
            continue
        log.info("experiment %s: %d variants", experiment.slug, len(experiment.variants))
        all_results.append((experiment, [run_variant(experiment, variant, base, data, env, interval_ms, max_trials, deadline)
                                         for variant in experiment.variants]))

    report = c.Report()
    command = "python -m benchmarks.tuning" + (" --quick" if args.quick else "")
    report.add("\n".join([
        f"# Triton configuration tuning{' (quick)' if args.quick else ''}",
        "",
        f"- date: {started_at.isoformat(timespec='seconds')}; {(time.monotonic() - started) / 60:.1f} min",
        f"- command: `{command}` (from the repository root)",
        f"- networks: LAM-A2E `{base.profile}`, LLM `{base.llm}` (+ `{base.encoder_profile}` encoders for its input); "
        "CPU target (python backend + onnxruntime / torch)",
        f"- perf_analyzer: {pa.perf_analyzer_version(env)}, `-i grpc`, a fixed `--request-count` per variant after a "
        f"warm-up run of one request per client; raw CSVs in `{pa.LOG_DIR.relative_to(c.PROJECT_ROOT)}/`",
        *c.environment_lines(c.versions(None)),
        f"- load average at end (1/5/15 min): {c.load_average()}",
        f"- rule: best = highest throughput among the variants whose p99 is within {P99_SLACK}x of the lowest p99; "
        f"the current default is kept when it is among them and within {NOISE_MARGIN:.0%} of the best's throughput",
        "",
    ]))
    decisions = write_report(report, all_results)
    report.table("Decisions", DECISIONS_HEADER, decisions,
                 note="The defaults live in `export.build_repository.BuildSettings`; every generated `config.pbtxt` "
                      "(CPU and GPU targets) takes them from there.")
    report.write(md_path)
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

    c.raise_on_sigterm()
    return run(args)


if __name__ == "__main__":
    sys.exit(main())

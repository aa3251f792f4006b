"""Hallo2 benchmark (tiny profile, CPU): seconds per denoising step, pipeline overhead, the image/audio cache,
end-to-end seconds per video second — in process and via Triton gRPC streaming.

    python -m benchmarks.hallo2_bench                 # 10 steps, 3 cache rounds: ~2-3 min on 2 cores
    python -m benchmarks.hallo2_bench --quick         # 3 steps, 1 round, few repeats: < 1 min smoke run

Only the ``tiny`` Hallo2 profile (64 px, 4-frame clips, seeded-random weights) is practical on a CPU: the
``full`` profile (512 px, SD1.5-sized UNets, 16-frame clips) needs minutes per denoising step here. The
figures are therefore those of the tiny networks, where fixed per-call costs weigh much more than they
would with the real sizes.

It builds (or re-uses) a repository with only the Hallo2 slice in ``benchmarks/.work/repo-hallo2-tiny``.
Input: the first frame of ``examples/sample_emotion.mp4`` (a drawn face) as a PNG portrait and the first
1 s of ``examples/speech.wav`` (-> 25 video frames = 7 clips of 4 frames, the last padded). Then:

1. in process (``Hallo2Pipeline`` over ``ServedHallo2Networks(onnx_caller(repo))``, onnxruntime in this
   process, Triton not running yet): the denoiser network alone (its real inputs, batch 2 = one CFG pair),
   and per cache round four pipeline runs — ``use_cache=True`` twice (a miss, then a hit of the per-image
   and per-audio caches) and ``use_cache=False`` twice. Every network call is timed by model name
   (a wrapper around the caller), every progress callback is time-stamped;
2. via Triton (its own ``tritonserver`` on free loopback ports; the decoupled ``hallo2`` model over gRPC
   streaming), the same four requests per round: the pipeline model holds its caches across requests.
   Every PROGRESS response is time-stamped on arrival; ``get_inference_statistics`` deltas give the
   server-side compute time of each network model.

Each cache round uses its own variant of the inputs (one pixel and one audio sample changed), so its first
``use_cache=True`` run is a cache miss in both paths. Results go to ``benchmarks/results/hallo2-tiny.md``
(``--out``) and stdout. All traffic is on 127.0.0.1; every loop is bounded; the server is stopped in
``finally``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import os
import queue
import re
import shlex
import sys
import time
from collections import defaultdict
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
    raise_on_sigterm,
    versions,
)
from stack.processes import free_port

EXAMPLES_DIR = PROJECT_ROOT / "examples"
SAMPLE_VIDEO = EXAMPLES_DIR / "sample_emotion.mp4"
SPEECH = EXAMPLES_DIR / "speech.wav"
PROFILE = "tiny"
AUDIO_SECONDS = 1.0
SAMPLE_RATE = 16000
SEED_VALUE = 42
GUIDANCE = 3.5  # GenerationSettings' default (upstream's)
REQUEST_TIMEOUT_S = 180.0
STEP_RE = re.compile(r"clip (\d+)/(\d+) step (\d+)/(\d+)")

log = logging.getLogger("hallo2_bench")


@dataclass(frozen=True)
class BenchPlan:
    steps: int
    denoiser_repeats: int
    cache_rounds: int
    time_budget_s: float


FULL_PLAN = BenchPlan(steps=10, denoiser_repeats=40, cache_rounds=3, time_budget_s=270.0)
QUICK_PLAN = BenchPlan(steps=3, denoiser_repeats=10, cache_rounds=1, time_budget_s=60.0)
RUN_KINDS = (("cache miss", True), ("cache hit", True), ("no cache #1", False), ("no cache #2", False))


# --------------------------------------------------------------------------------------------- inputs


def png_bytes(frame: np.ndarray) -> bytes:
    import av

    codec = av.CodecContext.create("png", "w")
    codec.width, codec.height, codec.pix_fmt = frame.shape[1], frame.shape[0], "rgb24"
    packets = codec.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")) + codec.encode(None)
    return b"".join(bytes(packet) for packet in packets)


@dataclass
class Inputs:
    label: str
    png: bytes
    wav: bytes
    image: np.ndarray  # decoded from png, what Triton decodes too
    audio: np.ndarray  # decoded from wav


def make_inputs(variant: int, label: str) -> Inputs:
    """The portrait and 1 s of speech; ``variant`` > 0 changes one pixel and one audio sample (new cache keys)."""
    from emoserve.audio import decode_audio, encode_wav
    from emoserve.hallo2.video import decode_image
    from emoserve.media import decode_video

    frame = decode_video(SAMPLE_VIDEO.read_bytes()).first_frame.copy()
    speech = decode_audio(SPEECH.read_bytes(), SAMPLE_RATE)[: int(AUDIO_SECONDS * SAMPLE_RATE)].copy()
    if variant:
        frame[0, 0, 0] = np.uint8((int(frame[0, 0, 0]) + variant) % 256)
        speech[0] += np.float32(variant / 32768.0)
    png, wav = png_bytes(frame), encode_wav(speech, SAMPLE_RATE)
    return Inputs(label, png, wav, decode_image(png), decode_audio(wav, SAMPLE_RATE))


# --------------------------------------------------------------------------------------------- runs


@dataclass
class Run:
    path: str  # "in-process" / "Triton"
    round: int
    kind: str
    use_cache: bool
    total_s: float = float("nan")
    events: list[tuple[float, float, str]] = field(default_factory=list)  # (seconds since start, percent, message)
    network: dict[str, list] = field(default_factory=dict)  # model -> [calls, seconds] (in process)
    prep: dict[str, tuple[float, float]] = field(default_factory=dict)  # "image"/"audio" -> (wall s, network s)
    info: dict = field(default_factory=dict)
    error: str = ""

    @property
    def clips_steps(self) -> tuple[int, int]:
        for _, _, message in reversed(self.events):
            m = STEP_RE.search(message)
            if m:
                return int(m.group(2)), int(m.group(4))
        return 0, 0

    def step_intervals(self) -> list[float]:
        """Times between consecutive "step" progress events of the same clip."""
        out, prev = [], None
        for t, _, message in self.events:
            m = STEP_RE.search(message)
            if m is None:
                prev = None
                continue
            if prev is not None and prev[0] == m.group(1):
                out.append(t - prev[1])
            prev = (m.group(1), t)
        return out

    @property
    def per_step_s(self) -> float:
        clips, steps = self.clips_steps
        return self.total_s / (clips * steps) if clips and steps else float("nan")

    @property
    def network_s(self) -> float:
        return sum(s for _, s in self.network.values())


class TimedCaller:
    """Wraps a ``Caller``: count and seconds of every network call by model; keeps one denoiser input set."""

    def __init__(self, inner, capture_model: str):
        self.inner = inner
        self.capture_model = capture_model
        self.captured: tuple[dict, list] | None = None
        self.calls: dict[str, list] = defaultdict(lambda: [0, 0.0])
        self.seconds = 0.0

    def reset(self) -> None:
        self.calls = defaultdict(lambda: [0, 0.0])
        self.seconds = 0.0

    def __call__(self, model, inputs, outputs):
        started = time.perf_counter()
        result = self.inner(model, inputs, outputs)
        elapsed = time.perf_counter() - started
        entry = self.calls[model]
        entry[0] += 1
        entry[1] += elapsed
        self.seconds += elapsed
        if model == self.capture_model and self.captured is None:
            self.captured = ({k: np.array(v, copy=True) for k, v in inputs.items()}, list(outputs))
        return result


class InProcess:
    def __init__(self, repository: Path):
        from emoserve.hallo2.pipeline import Hallo2Pipeline
        from emoserve.hallo2.profile import HALLO2_PROFILES
        from emoserve.hallo2.served_networks import ServedHallo2Networks, onnx_caller
        from emoserve.model_catalog import HALLO2_DENOISING_UNET_MODEL
        from export.hallo2 import ReferenceUNetSpec

        self.reference_features = len(ReferenceUNetSpec(profile=PROFILE).get_output_names())
        self.caller = TimedCaller(onnx_caller(repository), HALLO2_DENOISING_UNET_MODEL)
        self.pipeline = Hallo2Pipeline(ServedHallo2Networks(self.caller, self.reference_features), HALLO2_PROFILES[PROFILE])
        self.prep: dict[str, tuple[float, float]] = {}
        for name in ("image", "audio"):
            original = getattr(self.pipeline, f"prepare_{name}")
            setattr(self.pipeline, f"prepare_{name}", self._timed_prep(name, original))

    def _timed_prep(self, name, fn):
        def wrapper(*args, **kwargs):
            started, net_before = time.perf_counter(), self.caller.seconds
            try:
                return fn(*args, **kwargs)
            finally:
                self.prep[name] = (time.perf_counter() - started, self.caller.seconds - net_before)

        return wrapper

    def run(self, inputs: Inputs, steps: int, use_cache: bool, round_: int = -1, kind: str = "") -> Run:
        from emoserve.hallo2.pipeline import GenerationSettings

        run = Run("in-process", round_, kind, use_cache)
        self.caller.reset()
        self.prep = {}
        settings = GenerationSettings(steps=steps, guidance_scale=GUIDANCE, seed=SEED_VALUE, use_cache=use_cache)
        started = time.perf_counter()
        video = self.pipeline.run(inputs.image, inputs.audio, settings,
                                  progress=lambda pct, msg: run.events.append((time.perf_counter() - started, pct, msg)))
        run.total_s = time.perf_counter() - started
        run.network = {model: list(v) for model, v in self.caller.calls.items()}
        run.prep = dict(self.prep)
        run.info = dict(video.info, frames=int(video.frames.shape[0]))
        return run


# --------------------------------------------------------------------------------------------- Triton


def triton_request(grpc_url: str, inputs: Inputs, steps: int, use_cache: bool, round_: int = -1, kind: str = "") -> Run:
    import tritonclient.grpc as grpcclient

    from emoserve.model_catalog import (
        AUDIO_BYTES,
        GUIDANCE_SCALE,
        HALLO2_IMAGE,
        HALLO2_PIPELINE_MODEL,
        INFERENCE_STEPS,
        PROGRESS,
        RESULT_METADATA,
        SEED,
        STATUS_MESSAGE,
        USE_CACHE,
        VIDEO_MP4,
    )

    run = Run("Triton", round_, kind, use_cache)
    responses: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(grpc_url)
    client.start_stream(callback=lambda result, error: responses.put((time.perf_counter(), result, error)))
    try:
        tensors = []
        for name, array, datatype in (
            (HALLO2_IMAGE, np.array([inputs.png], dtype=np.object_), "BYTES"),
            (AUDIO_BYTES, np.array([inputs.wav], dtype=np.object_), "BYTES"),
            (INFERENCE_STEPS, np.array([steps], np.int32), "INT32"),
            (GUIDANCE_SCALE, np.array([GUIDANCE], np.float32), "FP32"),
            (SEED, np.array([SEED_VALUE], np.uint64), "UINT64"),
            (USE_CACHE, np.array([use_cache], np.bool_), "BOOL"),
        ):
            tensor = grpcclient.InferInput(name, list(array.shape), datatype)
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        started = time.perf_counter()
        client.async_stream_infer(HALLO2_PIPELINE_MODEL, tensors)
        deadline = started + REQUEST_TIMEOUT_S
        for _ in range(100_000):  # bounded: a few responses per step
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                raise TimeoutError(f"no video within {REQUEST_TIMEOUT_S:.0f} s")
            try:
                arrived, result, error = responses.get(timeout=remaining)
            except queue.Empty:
                raise TimeoutError(f"no video within {REQUEST_TIMEOUT_S:.0f} s") from None
            if error is not None:
                raise RuntimeError(f"Triton: {error}")
            message = result.as_numpy(STATUS_MESSAGE)
            text = "" if message is None else message.reshape(-1)[0].decode()
            run.events.append((arrived - started, float(result.as_numpy(PROGRESS).reshape(-1)[0]), text))
            video = result.as_numpy(VIDEO_MP4)
            if video is not None:
                run.total_s = arrived - started
                run.info = json.loads(result.as_numpy(RESULT_METADATA).reshape(-1)[0])
                run.info["mp4_bytes"] = len(bytes(video.reshape(-1)[0]))
                return run
        raise RuntimeError("too many responses")
    finally:
        client.stop_stream()
        client.close()


def network_statistics(grpc_url: str, models: tuple[str, ...]) -> dict[str, dict[str, float]]:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(grpc_url)
    out = {}
    try:
        for model in models:
            stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
            inf = stats.get("inference_stats", {})

            def ns(key, inf=inf):
                return float(inf.get(key, {}).get("ns", 0)) / 1e9

            out[model] = {"requests": float(inf.get("success", {}).get("count", 0)),
                          "executions": float(stats.get("execution_count", 0)),
                          "request_s": ns("success"), "queue_s": ns("queue"),
                          "compute_s": ns("compute_input") + ns("compute_infer") + ns("compute_output")}
    finally:
        client.close()
    return out


def settled_network_statistics(grpc_url: str, models: tuple[str, ...], timeout_s: float = 3.0) -> dict:
    deadline = time.monotonic() + timeout_s
    current = network_statistics(grpc_url, models)
    while time.monotonic() < deadline:
        time.sleep(0.25)
        again = network_statistics(grpc_url, models)
        if again == current:
            break
        current = again
    return current


# --------------------------------------------------------------------------------------------- formatting


def fs(seconds: float, digits: int = 3) -> str:
    return "n/a" if seconds != seconds else f"{seconds:.{digits}f}"


def fms(seconds: float, digits: int = 1) -> str:
    return "n/a" if seconds != seconds else f"{seconds * 1000:.{digits}f}"


def pct(a: float, b: float) -> str:
    return "n/a" if a != a or b != b or b <= 0 else f"{100 * a / b:.1f}%"


def mean(values) -> float:
    values = [v for v in values if v == v]
    return float(np.mean(values)) if values else float("nan")


def stats_row(label: str, values: list[float], extra: list[str] | None = None) -> list[str]:
    s = LatencyStats(samples=list(values))
    return [label, str(s.n), fms(s.p(50)), fms(s.mean), fms(s.p(95)), fms(min(values) if values else float("nan")),
            fms(s.max)] + (extra or [])


# --------------------------------------------------------------------------------------------- phases


def bench_denoiser(proc: InProcess, repeats: int, budget: Budget) -> tuple[list[float], dict]:
    from emoserve.model_catalog import HALLO2_DENOISING_UNET_MODEL

    if proc.caller.captured is None:
        raise RuntimeError("no denoiser call captured during the warm-up")
    inputs, outputs = proc.caller.captured
    for _ in range(3):
        proc.caller.inner(HALLO2_DENOISING_UNET_MODEL, inputs, outputs)
    samples = []
    for _ in range(repeats):
        if budget.remaining() <= 0 and len(samples) >= 5:
            break
        started = time.perf_counter()
        proc.caller.inner(HALLO2_DENOISING_UNET_MODEL, inputs, outputs)
        samples.append(time.perf_counter() - started)
    shapes = {k: tuple(v.shape) for k, v in inputs.items()}
    return samples, shapes


def cache_rounds(call, variants: list[Inputs], steps: int, budget: Budget, path: str) -> list[Run]:
    runs = []
    for round_, inputs in enumerate(variants):
        if round_ and budget.remaining() <= 0:
            log.warning("%s: time budget spent, cache round %d skipped", path, round_ + 1)
            break
        for kind, use_cache in RUN_KINDS:
            try:
                run = call(inputs, steps, use_cache, round_ + 1, kind)
            except Exception as exc:  # noqa: BLE001
                run = Run(path, round_ + 1, kind, use_cache, error=f"{type(exc).__name__}: {exc}")
                log.error("%s %s failed: %s", path, kind, exc)
            log.info("%s round %d %s: %.2f s", path, round_ + 1, kind, run.total_s)
            runs.append(run)
    return runs


# --------------------------------------------------------------------------------------------- report


def report_steps(report: Report, denoiser: list[float], shapes: dict, proc_runs: list[Run], triton_runs: list[Run],
                 triton_net: dict | None, plan: BenchPlan) -> dict:
    from emoserve.model_catalog import HALLO2_DENOISING_UNET_MODEL

    base = LatencyStats(samples=denoiser).p(50)
    rows = [stats_row("denoiser network alone (in-process onnxruntime, batch 2)", denoiser, ["1.00x"])]
    figures = {"denoiser_p50": base}
    for path, runs in (("in-process", proc_runs), ("Triton", triton_runs)):
        ok = [r for r in runs if not r.error]
        intervals = [d for r in ok for d in r.step_intervals()]
        s = LatencyStats(samples=intervals)
        rows.append(stats_row(f"{path}: between consecutive step progress events", intervals, [f"{s.p(50) / base:.2f}x" if base else "n/a"]))
        figures[f"{path}_interval_p50"] = s.p(50)
        for kind in ("cache hit", "no cache"):
            per = [r.per_step_s for r in ok if r.kind.startswith(kind)]
            rows.append(stats_row(f"{path}: whole pipeline / (clips × steps), {kind}", per,
                                  [f"{LatencyStats(samples=per).p(50) / base:.2f}x" if per and base else "n/a"]))
            figures[f"{path}_per_step_{kind}"] = LatencyStats(samples=per).p(50)
    if triton_net and HALLO2_DENOISING_UNET_MODEL in triton_net:
        d = triton_net[HALLO2_DENOISING_UNET_MODEL]
        if d["executions"]:
            per_call = d["compute_s"] / d["executions"]
            rows.append(["Triton `hallo2_denoising_unet` compute per execution (server statistics, mean)",
                         str(int(d["executions"])), "-", fms(per_call), "-", "-", "-", f"{per_call / base:.2f}x" if base else "n/a"])
            figures["triton_denoiser_compute"] = per_call
    shape_text = ", ".join(f"`{k}` {list(v)}" for k, v in shapes.items() if k in ("sample", "audio_tokens", "face_features", "timestep"))
    report.table(
        f"1. Seconds per denoising step — {plan.steps} steps, guidance {GUIDANCE} (CFG batch 2), clip of "
        f"{shapes.get('sample', ('?',) * 3)[2]} frames",
        ["what", "n", "p50 ms", "mean ms", "p95 ms", "min ms", "max ms", "p50 / denoiser alone"],
        rows,
        note=("*Denoiser alone*: `hallo2_denoising_unet` called with the inputs of a real pipeline step (captured), "
              f"through the same onnxruntime session the pipeline uses; {shape_text}, plus 4 reference features, "
              "masks and `ref_mask`. *Between step events*: the time from one denoising step's progress callback (in process) / "
              "PROGRESS response arriving at the client (Triton) to the next step's within the same clip: one denoiser "
              "call plus the DDIM update, CFG mix and (Triton) the BLS round trip and one progress response. "
              "*Whole pipeline / (clips × steps)*: a run's total time spread over its denoising steps — it includes "
              "image and audio preparation, the reference UNet, VAE and (Triton) the MP4 mux and gRPC, so it is "
              "the per-step cost of the whole request at this step count. Cache-hit runs skip the image/audio preparation."),
    )
    return figures


def report_overhead(report: Report, proc_runs: list[Run], triton_runs: list[Run], triton_net: dict | None) -> dict:
    ok = [r for r in proc_runs if not r.error]
    rows, figures = [], {}
    for kind in ("cache miss", "cache hit", "no cache"):
        group = [r for r in ok if r.kind.startswith(kind)]
        if not group:
            continue
        wall = mean(r.total_s for r in group)
        net = mean(r.network_s for r in group)
        over = wall - net
        img = mean(r.prep["image"][0] - r.prep["image"][1] for r in group if "image" in r.prep)
        aud = mean(r.prep["audio"][0] - r.prep["audio"][1] for r in group if "audio" in r.prep)
        rest = over - (img if img == img else 0) - (aud if aud == aud else 0)
        calls = mean(sum(c for c, _ in r.network.values()) for r in group)
        rows.append([kind, str(len(group)), fs(wall), fs(net), f"{calls:.0f}", fs(over), pct(over, wall), f"{wall / net:.2f}x" if net else "n/a",
                     fs(img), fs(aud), fs(rest), fms(rest / calls, 2) if calls else "n/a"])
        figures[kind] = (wall, net, over)
    report.table(
        "2a. In-process pipeline overhead over the sum of its network calls (means per run)",
        ["runs", "n", "wall s", "Σ network s", "network calls", "overhead s", "overhead / wall", "wall / Σ network",
         "image prep non-network s", "audio prep non-network s", "rest s", "rest per call ms"],
        rows,
        note=("Σ network = the time spent inside the caller (onnxruntime `session.run` plus `OnnxRunner`'s input "
              "copying), summed over every call of the run; overhead = wall − Σ network, i.e. everything the "
              "pipeline does in Python/numpy around the networks. Image prep non-network = `prepare_image` minus its "
              "network calls (face detection, face mesh, masks, crop/resize; the embedding is zeros without "
              "InsightFace); audio prep non-network = `prepare_audio` minus the audio encoder; rest = the clip loop "
              "(DDIM updates, CFG mix, motion masks, mask tiling, `ServedHallo2Networks` input packing)."),
    )
    per_model: dict[str, list] = defaultdict(lambda: [0, 0.0])
    for r in ok:
        for model, (count, seconds) in r.network.items():
            per_model[model][0] += count
            per_model[model][1] += seconds
    total_net = sum(s for _, s in per_model.values())
    total_wall = sum(r.total_s for r in ok)
    n = len(ok) or 1
    rows = []
    for model, (count, seconds) in sorted(per_model.items(), key=lambda kv: -kv[1][1]):
        tri = ""
        if triton_net and model in triton_net and triton_net[model]["executions"]:
            d = triton_net[model]
            tri = f"{fms(d['compute_s'] / d['executions'], 2)} / {fms(d['queue_s'] / max(d['requests'], 1), 2)}"
        rows.append([f"`{model}`", f"{count / n:.1f}", fs(seconds / n), fms(seconds / count, 2) if count else "n/a",
                     pct(seconds, total_net), pct(seconds, total_wall), tri or "-"])
    rows.append(["Σ networks", f"{sum(c for c, _ in per_model.values()) / n:.1f}", fs(total_net / n), "", "100%",
                 pct(total_net, total_wall), ""])
    rows.append(["pipeline overhead (wall − Σ)", "", fs((total_wall - total_net) / n), "", "", pct(total_wall - total_net, total_wall), ""])
    report.table(
        f"2b. Network calls by model, in process ({len(ok)} runs of every kind together)",
        ["model", "calls / run", "s / run", "ms / call", "share of network time", "share of wall time",
         "Triton compute / queue ms per call"],
        rows,
        note=("The last column, from Triton's statistics over the measured Triton requests: compute (input + infer + output) "
              "per execution and queue time per request of the same model behind the `hallo2` pipeline's BLS calls "
              "(dynamic batching with a 1 ms queue delay)."),
    )
    t_ok = [r for r in triton_runs if not r.error]
    if t_ok and triton_net:
        total = sum(r.total_s for r in t_ok)
        net = sum(d["compute_s"] for d in triton_net.values())
        queue_s = sum(d["queue_s"] for d in triton_net.values())
        server = sum(float(r.info.get("seconds", float("nan"))) for r in t_ok)
        rows = [[str(len(t_ok)), fs(total / len(t_ok)), fs(server / len(t_ok)), fs(net / len(t_ok)), fs(queue_s / len(t_ok)),
                 fs((total - net) / len(t_ok)), pct(total - net, total), f"{total / net:.2f}x" if net else "n/a"]]
        report.table(
            "2c. Via Triton: request time over the networks' server-side compute (means per request)",
            ["requests", "client request s", "pipeline model s (metadata)", "Σ network compute s", "Σ network queue s",
             "overhead s", "overhead / request", "request / Σ compute"],
            rows,
            note=("Client request = from sending the request to the final response; pipeline model s = the `seconds` the "
                  "`hallo2` model reports (pipeline + MP4 mux); Σ network compute = deltas of Triton's compute "
                  "statistics for the eight `hallo2_*` network models around the measured requests, divided by their "
                  "number. Overhead here adds BLS IPC, dynamic-batching queue delay, progress responses, the mux and gRPC."),
        )
        figures["triton"] = (total / len(t_ok), net / len(t_ok))
    return figures


def report_cache(report: Report, proc_runs: list[Run], triton_runs: list[Run]) -> dict:
    rows, figures = [], {}
    for path, runs in (("in-process", proc_runs), ("Triton", triton_runs)):
        rounds = sorted({r.round for r in runs})
        for round_ in rounds:
            by_kind = {r.kind: r for r in runs if r.round == round_}
            cells = [fs(by_kind[k].total_s, 2) if k in by_kind and not by_kind[k].error else
                     (f"error: {by_kind[k].error}" if k in by_kind else "-") for k, _ in RUN_KINDS]
            rows.append([path, str(round_), *cells])
        ok = [r for r in runs if not r.error]
        miss = mean(r.total_s for r in ok if r.kind == "cache miss")
        hit = mean(r.total_s for r in ok if r.kind == "cache hit")
        nocache = mean(r.total_s for r in ok if r.kind.startswith("no cache"))
        figures[path] = (miss, hit, nocache)
    report.table(
        "3a. Effect of `use_cache` on a repeated image and audio — seconds per run",
        ["path", "round", "use_cache=True #1 (miss)", "use_cache=True #2 (hit)", "use_cache=False #1", "use_cache=False #2"],
        rows,
        note=("Per round: the same portrait and audio four times in this order. Each round uses its own one-pixel / "
              "one-sample variant of the inputs, so its first `use_cache=True` run misses the caches (per image "
              "content hash: face detection + masks + VAE-encoded reference + image tokens + face-locator features; "
              "per audio content hash: the wav2vec2 features) and the second hits them. `use_cache=False` neither "
              "reads nor fills the caches. In process the pipeline object is reused; via Triton the `hallo2` model "
              "instance keeps the caches across requests."),
    )
    rows = []
    for path, (miss, hit, nocache) in figures.items():
        rows.append([path, fs(miss), fs(hit), fs(nocache), fs(miss - hit), fs(nocache - hit), pct(nocache - hit, nocache)])
    proc_hit = [r for r in proc_runs if r.kind == "cache hit" and not r.error]
    proc_no = [r for r in proc_runs if r.kind.startswith("no cache") and not r.error]
    saved_calls = mean(sum(c for c, _ in r.network.values()) for r in proc_no) - mean(sum(c for c, _ in r.network.values()) for r in proc_hit)
    image_prep = mean(r.prep["image"][0] for r in proc_no if "image" in r.prep)
    audio_prep = mean(r.prep["audio"][0] for r in proc_no if "audio" in r.prep)
    report.table(
        "3b. Cache summary (means)",
        ["path", "miss s", "hit s", "no cache s", "miss − hit s", "no cache − hit s", "saved by the cache"],
        rows,
        note=(f"In process a cache hit skips {saved_calls:.0f} network calls per run; uncached `prepare_image` takes "
              f"{fs(image_prep)} s and `prepare_audio` {fs(audio_prep)} s (means of the `use_cache=False` runs) — "
              "the most a hit can save. Differences of a few tens of ms are within the run-to-run noise of 2 shared cores."),
    )
    figures["prep"] = (image_prep, audio_prep)
    return figures


def report_e2e(report: Report, triton_runs: list[Run], proc_runs: list[Run], plan: BenchPlan, per_step: dict) -> dict:
    rows, figures = [], {}
    video_s = AUDIO_SECONDS
    for path, runs in (("Triton", triton_runs), ("in-process", proc_runs)):
        ok = [r for r in runs if not r.error]
        for label, select in (("cache hit", lambda r: r.kind == "cache hit"), ("cache miss", lambda r: r.kind == "cache miss"),
                              ("no cache", lambda r: r.kind.startswith("no cache")), ("all", lambda r: True)):
            group = [r for r in ok if select(r)]
            if not group:
                continue
            total = LatencyStats(samples=[r.total_s for r in group])
            frames = int(group[0].info.get("frames", 0))
            server = mean(float(r.info.get("seconds", float("nan"))) for r in group) if path == "Triton" else float("nan")
            rows.append([path, label, str(total.n), str(frames), fs(total.p(50), 2), fs(total.max, 2), fs(total.p(50) / video_s, 2),
                         f"{frames / total.p(50):.2f}" if frames else "n/a", fs(server, 2)])
            figures[(path, label)] = (total.p(50), frames)
    report.table(
        f"4. End-to-end seconds per video second — {video_s:g} s of audio, {plan.steps} steps, guidance {GUIDANCE}",
        ["path", "runs", "n", "frames", "p50 s", "max s", "s per video s (p50)", "frames/s (p50)", "pipeline model s (metadata)"],
        rows,
        note=("Triton: from sending the gRPC stream request (PNG + WAV bytes) to the response carrying the MP4 "
              "(H.264 + AAC mux included); in-process: `Hallo2Pipeline.run` on decoded inputs (no decode, no mux). "
              f"The output is {int(AUDIO_SECONDS * 25)} frames at 25 fps from "
              "ceil(25 / 4) = 7 clips of 4 frames (the last one padded). With the default 40 steps the denoising "
              "part scales about linearly: add (40 − steps) × clips × the per-step interval of table 1."),
    )
    hit = figures.get(("Triton", "cache hit"))
    interval = per_step.get("Triton_interval_p50", float("nan"))
    if hit and interval == interval:
        clips = 7
        estimate = hit[0] + (40 - plan.steps) * clips * interval
        figures["estimate40"] = estimate
        report.add(f"Estimate for the default 40 steps via Triton (cache hit): {fs(hit[0], 2)} + (40 − {plan.steps}) × {clips} × "
                   f"{fs(interval)} ≈ {estimate:.1f} s per video second ({25 / estimate:.2f} frames/s).\n")
    return figures


# --------------------------------------------------------------------------------------------- main


def ensure_repository() -> Path:
    from export.build_repository import BuildSettings, build_repository

    out = WORK_DIR / f"repo-hallo2-{PROFILE}"
    started = time.perf_counter()
    build_repository(out, BuildSettings(slices=("hallo2",), hallo2_profile=PROFILE))
    log.info("model repository %s ready in %.1f s", out, time.perf_counter() - started)
    return out


def run(args) -> int:
    from emoserve.model_catalog import HALLO2_NETWORK_MODELS
    from stack.triton_server import TritonServer, TritonServerOptions

    plan = QUICK_PLAN if args.quick else FULL_PLAN
    if args.steps is not None:
        plan = BenchPlan(args.steps, plan.denoiser_repeats, plan.cache_rounds, plan.time_budget_s)
    if args.time_budget is not None:
        plan = BenchPlan(plan.steps, plan.denoiser_repeats, plan.cache_rounds, args.time_budget)
    out_path = args.out or (RESULTS_DIR / f"hallo2-{PROFILE}{'-quick' if args.quick else ''}.md")
    command = " ".join(["python -m benchmarks.hallo2_bench", *(shlex.quote(a) for a in args.argv)])
    started_at = _dt.datetime.now().astimezone()
    load_before = os.getloadavg()
    phase_times: dict[str, float] = {}
    all_started = time.perf_counter()

    t0 = time.perf_counter()
    repository = ensure_repository()
    phase_times["repository build / reuse"] = time.perf_counter() - t0
    weights = json.loads((repository / "weights.json").read_text()).get("hallo2", {}).get("weights", "?")
    warm_inputs = make_inputs(0, "original")
    variants = [make_inputs(round_ + 1, f"variant {round_ + 1}") for round_ in range(plan.cache_rounds)]
    budget = Budget(plan.time_budget_s)

    # ---- in process (before Triton starts: the two do not share the cores)
    t0 = time.perf_counter()
    proc = InProcess(repository)
    proc.run(warm_inputs, 2, use_cache=False)  # ONNX sessions, face detector/mesh, first-call allocations
    phase_times["in-process warm-up"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    denoiser, shapes = bench_denoiser(proc, plan.denoiser_repeats, budget)
    proc_budget = Budget(budget.remaining() * 0.4)
    proc_runs = cache_rounds(lambda i, s, c, r, k: proc.run(i, s, c, r, k), variants, plan.steps, proc_budget, "in-process")
    phase_times["in-process measurements"] = time.perf_counter() - t0

    logs = WORK_DIR / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    triton_log = logs / f"tritonserver-hallo2-{PROFILE}.log"
    triton_log.unlink(missing_ok=True)
    server = TritonServer(TritonServerOptions(repository, http_port=free_port(), grpc_port=free_port(),
                                              metrics_port=free_port(), log_path=triton_log))
    report = Report()
    try:
        t0 = time.perf_counter()
        server.start()
        phase_times["tritonserver start"] = time.perf_counter() - t0
        versions_now = versions(server.grpc_url, DEFAULT_DISTRIBUTIONS + ("av", "mediapipe"))
        t0 = time.perf_counter()
        # use_cache=False: warms every model without filling the pipeline model's caches
        triton_request(server.grpc_url, warm_inputs, plan.steps, use_cache=False)
        phase_times["Triton warm-up"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        before = settled_network_statistics(server.grpc_url, HALLO2_NETWORK_MODELS)
        triton_runs = cache_rounds(lambda i, s, c, r, k: triton_request(server.grpc_url, i, s, c, r, k),
                                   variants, plan.steps, Budget(max(budget.remaining(), 1.0)), "Triton")
        after = settled_network_statistics(server.grpc_url, HALLO2_NETWORK_MODELS)
        phase_times["Triton measurements"] = time.perf_counter() - t0
        triton_net = {m: {k: after[m][k] - before[m][k] for k in after[m]} for m in HALLO2_NETWORK_MODELS}
    finally:
        server.stop()

    clips = next((r.clips_steps[0] for r in proc_runs + triton_runs if r.clips_steps[0]), 0)
    header = [
        f"# Hallo2 benchmark — `{PROFILE}` profile{' (quick)' if args.quick else ''}",
        "",
        f"- date: {started_at.isoformat(timespec='seconds')}",
        f"- command: `{command}` (from the repository root)",
        f"- model repository: `{repository.relative_to(PROJECT_ROOT)}` (Hallo2 slice only); weights: {weights}",
        f"- profile: `{PROFILE}` — 64×64 px, 8×8 latents, clips of 4 frames + 2 motion frames, UNet widths (32, 64). "
        "It is the only profile that is practical on this CPU (the `full` profile, 512 px with SD1.5-sized UNets and "
        "16-frame clips, takes minutes per step here); with tiny networks fixed per-call costs weigh far more than "
        "they would at the real size, so the overhead ratios below are upper bounds for the full profile",
        f"- settings: {plan.steps} denoising steps (DDIM), guidance scale {GUIDANCE} (CFG: the denoiser runs on a batch of 2), "
        f"seed {SEED_VALUE}, motion mask rate 0.25; {AUDIO_SECONDS:g} s of `{SPEECH.relative_to(PROJECT_ROOT)}` -> "
        f"{int(AUDIO_SECONDS * 25)} frames at 25 fps = {clips} clips; portrait = first frame of "
        f"`{SAMPLE_VIDEO.relative_to(PROJECT_ROOT)}` as PNG ({warm_inputs.image.shape[1]}×{warm_inputs.image.shape[0]})",
        f"- plan: denoiser alone × {plan.denoiser_repeats}, {plan.cache_rounds} cache round(s) of 4 runs per path, "
        f"time budget {plan.time_budget_s:g} s for the measurements",
        "- machine: " + "; ".join(f"{k} {v}" for k, v in machine_description().items()),
        "- versions: " + "; ".join(f"{k} {v}" for k, v in versions_now.items()),
        f"- load average at start (1/5/15 min): {load_before[0]:.2f} / {load_before[1]:.2f} / {load_before[2]:.2f} "
        "(other work on the machine skews every figure)",
        "- Triton: `hallo2` (python backend, decoupled, 1 instance) calling the eight `hallo2_*` ONNX models "
        "(python backend + onnxruntime, max batch 8, dynamic batching 1 ms, 1 instance each) through BLS; "
        "client = this process, gRPC streaming on 127.0.0.1. In-process runs took place before tritonserver started.",
        "",
    ]
    report.add("\n".join(header))
    per_step = report_steps(report, denoiser, shapes, proc_runs, triton_runs, triton_net, plan)
    overhead = report_overhead(report, proc_runs, triton_runs, triton_net)
    cache = report_cache(report, proc_runs, triton_runs)
    e2e = report_e2e(report, triton_runs, proc_runs, plan, per_step)

    summary = [
        ["denoiser alone p50 (in-process, batch 2)", f"{fms(per_step['denoiser_p50'])} ms"],
        ["step interval p50, in-process / Triton",
         f"{fms(per_step.get('in-process_interval_p50', float('nan')))} / {fms(per_step.get('Triton_interval_p50', float('nan')))} ms"],
        ["whole pipeline per step p50 (cache hit), in-process / Triton",
         f"{fms(per_step.get('in-process_per_step_cache hit', float('nan')))} / {fms(per_step.get('Triton_per_step_cache hit', float('nan')))} ms"],
    ]
    if "no cache" in overhead:
        wall, net, over = overhead["no cache"]
        summary.append(["in-process overhead over Σ network (no cache)", f"{over:.3f} s of {wall:.3f} s ({pct(over, wall)}; wall/Σ {wall / net:.2f}x)"])
    if "cache hit" in overhead:
        wall, net, over = overhead["cache hit"]
        summary.append(["in-process overhead over Σ network (cache hit)", f"{over:.3f} s of {wall:.3f} s ({pct(over, wall)}; wall/Σ {wall / net:.2f}x)"])
    for path in ("in-process", "Triton"):
        if path in cache:
            miss, hit, nocache = cache[path]
            summary.append([f"use_cache, {path}: miss / hit / no cache", f"{fs(miss, 2)} / {fs(hit, 2)} / {fs(nocache, 2)} s"])
    hit = e2e.get(("Triton", "cache hit"))
    if hit:
        summary.append(["Triton end-to-end (cache hit)", f"{hit[0] / AUDIO_SECONDS:.2f} s per video s, {hit[1] / hit[0]:.2f} frames/s"])
    errors = sum(1 for r in proc_runs + triton_runs if r.error)
    summary.append(["errors", str(errors)])
    load_after = os.getloadavg()
    summary.append(["load average at end (1/5/15 min)", f"{load_after[0]:.2f} / {load_after[1]:.2f} / {load_after[2]:.2f}"])
    summary += [[f"time: {phase}", f"{seconds:.1f} s"] for phase, seconds in phase_times.items()]
    summary.append(["time: whole benchmark", f"{time.perf_counter() - all_started:.1f} s"])
    report.table("Summary", ["item", "value"], summary)

    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(report.text())
    print(f"results written to {out_path}", flush=True)
    return 1 if errors else 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 steps, 1 cache round, few repeats (< 1 min smoke run)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps per run (default 10, 3 with --quick)")
    parser.add_argument("--out", type=Path, default=None,
                        help="results markdown (default benchmarks/results/hallo2-tiny.md, hallo2-tiny-quick.md with --quick)")
    parser.add_argument("--time-budget", type=float, default=None,
                        help="seconds for the measurements (default 270, 60 with --quick); build, start-up and warm-up excluded")
    args = parser.parse_args(argv)
    args.argv = argv
    if args.steps is not None and not 1 <= args.steps <= 100:
        parser.error("--steps must be in 1..100")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    raise_on_sigterm()
    return run(args)


if __name__ == "__main__":
    sys.exit(main())

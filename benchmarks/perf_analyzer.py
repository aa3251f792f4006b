"""perf_analyzer against every Triton model of the stack (gRPC; stateless, sequence and decoupled models).

    python -m benchmarks.perf_analyzer            # 4 s windows, concurrency 1/2/4: ~12-13 min on 2 cores
    python -m benchmarks.perf_analyzer --quick    # 3 s windows, fewer levels for the Hallo2 networks: ~5-6 min

The ``perf_analyzer`` binary of ``tritonclient==2.51.0`` (it links ``libb64.so.0d`` / ``libcudart.so.12``, which
``nvidia_pytriton.libs`` carries hash-suffixed: ``benchmarks/.work/palibs/`` gets symlinks on ``LD_LIBRARY_PATH``)
against one repository with all three slices (``benchmarks/.work/repo-pa-<a2e profile>``) on its own tritonserver,
with ``--input-data`` built from the example media (``benchmarks/.work/pa-data/``); one run per model and level,
each bounded by a subprocess timeout. Report: ``benchmarks/results/perf_analyzer[-quick].md`` (``--out``); the
parsed rows (read by ``run_all`` and ``floor``), the CSVs and the logs stay in ``benchmarks/.work/``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import csv
import datetime as _dt
import glob
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import sysconfig
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from benchmarks import common as c

log = logging.getLogger("perf_analyzer_bench")

SAMPLE_RATE = 16000
A2E_WINDOW_SAMPLES = 34133  # the streaming model's 64-frame network window (README)
STREAM_CHUNK_SAMPLES = SAMPLE_RATE  # 1 s chunks, as the REST streaming clients send
SEQUENCE_LENGTH = 8
HALLO2_AUDIO_SECONDS = 1.0
PALIBS = c.WORK_DIR / "palibs"
DATA_DIR = c.WORK_DIR / "pa-data"
LOG_DIR = c.WORK_DIR / "logs" / "perf_analyzer"


# --------------------------------------------------------------------------------------------- binary


def perf_analyzer_binary() -> Path:
    candidate = Path(sys.executable).parent / "perf_analyzer"
    if not candidate.exists():
        raise FileNotFoundError(f"{candidate} is missing: pip install tritonclient==2.51.0 (its wheel carries the binary)")
    return candidate


def prepare_palibs(folder: Path = PALIBS) -> Path:
    """Symlink the wheel's hash-suffixed libb64 / libcudart under the sonames perf_analyzer asks for."""
    libs = Path(sysconfig.get_paths()["purelib"]) / "nvidia_pytriton.libs"
    folder.mkdir(parents=True, exist_ok=True)
    for soname, pattern in (("libb64.so.0d", "libb64-*.so.0d"), ("libcudart.so.12", "libcudart-*.so.12*")):
        matches = sorted(glob.glob(str(libs / pattern)))
        if not matches:
            raise FileNotFoundError(f"no {pattern} in {libs} (nvidia-pytriton wheel)")
        link = folder / soname
        if link.is_symlink() or link.exists():
            if os.path.realpath(link) == os.path.realpath(matches[0]):
                continue
            link.unlink()
        link.symlink_to(matches[0])
    return folder


def pa_environment() -> dict[str, str]:
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(prepare_palibs()), env.get("LD_LIBRARY_PATH", "")) if p)
    return env


def perf_analyzer_version(env: dict[str, str]) -> str:
    from importlib import metadata

    try:
        out = subprocess.run([str(perf_analyzer_binary()), "--version"], env=env, capture_output=True, text=True, timeout=20)
        first = (out.stdout + out.stderr).strip().splitlines()[0] if out.returncode == 0 and (out.stdout + out.stderr).strip() else ""
    except (OSError, subprocess.TimeoutExpired):
        first = ""
    return f"tritonclient {metadata.version('tritonclient')} wheel" + (f" ({first})" if first else "")


def build_settings(a2e_profile: str):
    from export.build_repository import BuildSettings

    return BuildSettings(profile=a2e_profile, llm="tiny", encoder_profile="tiny", hallo2_profile="tiny", seed=0)


# --------------------------------------------------------------------------------------------- input data


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def tensor(array: np.ndarray) -> dict:
    """A numeric tensor for perf_analyzer's JSON: raw little-endian bytes as base64 plus the shape."""
    array = np.ascontiguousarray(array)
    return {"content": {"b64": b64(array.tobytes())}, "shape": list(array.shape)}


def bytes_tensor(data: bytes) -> dict:
    """A one-element BYTES tensor. perf_analyzer 2.51 takes ``b64`` content of a BYTES input as the *serialized*
    tensor (each element: uint32 little-endian length, then the bytes), so the length prefix goes in here."""
    return {"content": {"b64": b64(len(data).to_bytes(4, "little") + data)}, "shape": [1]}


def text_tensor(text: str) -> dict:
    return {"content": [text], "shape": [1]}


def write_json(name: str, data: list, folder: Path = DATA_DIR) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps({"data": data}))
    return path


def capture_hallo2_inputs(repository: Path, portrait: np.ndarray, audio: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    """The first real input set of every Hallo2 network, from one in-process pipeline run (1 step)."""
    from emoserve.hallo2.pipeline import GenerationSettings, Hallo2Pipeline
    from emoserve.hallo2.profile import HALLO2_PROFILES
    from emoserve.hallo2.served_networks import ServedHallo2Networks, onnx_caller
    from export.hallo2 import ReferenceUNetSpec

    inner = onnx_caller(repository)
    captured: dict[str, dict[str, np.ndarray]] = {}

    def caller(model, inputs, outputs):
        captured.setdefault(model, {k: np.array(v, copy=True) for k, v in inputs.items()})
        return inner(model, inputs, outputs)

    features = len(ReferenceUNetSpec(profile="tiny").get_output_names())
    pipeline = Hallo2Pipeline(ServedHallo2Networks(caller, features), HALLO2_PROFILES["tiny"])
    pipeline.run(portrait, audio, GenerationSettings(steps=1, guidance_scale=3.5, seed=42, use_cache=False))
    return captured


def emotion_embeddings(grpc_url: str, video: bytes) -> np.ndarray:
    """What the pipeline hands the LLM: image tokens + audio feature tokens + CLS, from the served encoders."""
    import tritonclient.grpc as grpcclient

    from emoserve import model_catalog as mc
    from emoserve.emotion_llama.preprocess import preprocess_frame
    from emoserve.media import decode_video

    decoded = decode_video(video, max_audio_seconds=30.0)
    pixels = preprocess_frame(decoded.first_frame)[None].astype(np.float32)
    audio = decoded.audio if decoded.audio is not None and decoded.audio.size else np.zeros(SAMPLE_RATE, np.float32)
    client = grpcclient.InferenceServerClient(grpc_url)
    try:
        def infer(model, name, array, outputs):
            inp = grpcclient.InferInput(name, list(array.shape), "FP32")
            inp.set_data_from_numpy(array)
            result = client.infer(model, [inp], outputs=[grpcclient.InferRequestedOutput(o) for o in outputs])
            return [result.as_numpy(o) for o in outputs]

        tokens, cls = infer(mc.EMOTION_VISION_MODEL, mc.PIXEL_VALUES, pixels, [mc.IMAGE_TOKENS, mc.CLS_TOKEN])
        (features,) = infer(mc.EMOTION_AUDIO_MODEL, mc.AUDIO_INPUT_VALUES, audio[None].astype(np.float32), [mc.FEATURE_TOKENS])
    finally:
        client.close()
    return np.concatenate([tokens[0], features[0], cls[0]], axis=0).astype(np.float32)


GREEDY_16_TOKENS = {"TEMPERATURE": {"content": [0.0], "shape": [1]}, "MAX_NEW_TOKENS": {"content": [16], "shape": [1]}}


def a2e_window_rows(long_speech: np.ndarray) -> list[dict]:
    """``lam_a2e``: the streaming model's 64-frame window at four offsets, four identities."""
    return [{"input_values": tensor(long_speech[offset: offset + A2E_WINDOW_SAMPLES].astype(np.float32)),
             "id_idx": {"content": [i % 12], "shape": [1]}} for i, offset in enumerate((0, 8000, 24000, 40000))]


def a2e_stream_rows(long_speech: np.ndarray) -> list[list[dict]]:
    """``lam_a2e_stream``: two streams of ``SEQUENCE_LENGTH`` consecutive 1 s chunks (different start offsets)."""
    return [[{"AUDIO": tensor(long_speech[start + k * STREAM_CHUNK_SAMPLES: start + (k + 1) * STREAM_CHUNK_SAMPLES].astype(np.float32)),
              "ID_IDX": {"content": [stream], "shape": [1]}} for k in range(SEQUENCE_LENGTH)]
            for stream, start in enumerate((0, 3 * SAMPLE_RATE))]


def llm_rows(embeddings: np.ndarray) -> list[dict]:
    """``emotion_llama_llm``: the video's multimodal embeddings, the [reason] prompt, greedy, 16 new tokens."""
    return [dict({"MULTIMODAL_EMBEDDINGS": tensor(embeddings), "PROMPT": text_tensor(c.PROMPT_TEXT)}, **GREEDY_16_TOKENS)]


@dataclass
class InputFiles:
    files: dict[str, Path] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)


def make_input_data(repository: Path, grpc_url: str) -> InputFiles:
    """Every model's ``--input-data`` JSON, from the example media (nothing random)."""
    from emoserve.audio import encode_wav
    from emoserve.emotion_llama.preprocess import preprocess_frame
    from emoserve.hallo2.video import decode_image
    from emoserve.media import decode_video
    from emoserve.model_catalog import HALLO2_NETWORK_MODELS

    out = InputFiles()

    def add(model: str, rows: list, note: str) -> None:
        out.files[model], out.notes[model] = write_json(model, rows), note

    speech = c.load_speech()
    long_speech = np.tile(speech, 2)  # 14 s: room for shifted windows and 8 s streams
    add("lam_a2e", a2e_window_rows(long_speech), f"speech windows of {A2E_WINDOW_SAMPLES} samples (64 frames), 4 offsets")
    # lam_a2e_offline: the whole 7 s clip as WAV bytes (decode + network + post-processing in the model)
    add("lam_a2e_offline", [{
        "AUDIO_BYTES": bytes_tensor(encode_wav(speech, SAMPLE_RATE)), "ID_IDX": {"content": [3], "shape": [1]},
        "MOVEMENT_SMOOTH": {"content": [True], "shape": [1]}, "BROW_MOVEMENT": {"content": [True], "shape": [1]}}],
        f"`examples/speech.wav` as WAV bytes ({len(speech) / SAMPLE_RATE:.1f} s)")
    streams = a2e_stream_rows(long_speech)
    add("lam_a2e_stream", streams, f"{len(streams)} streams of {SEQUENCE_LENGTH} consecutive 1 s speech chunks")

    video = c.SAMPLE_VIDEO.read_bytes()
    decoded = decode_video(video, max_audio_seconds=30.0)
    add("emotion_llama_vision", [{"pixel_values": tensor(preprocess_frame(decoded.first_frame).astype(np.float32))}],
        "first frame of `examples/sample_emotion.mp4`, CLIP-preprocessed to 3×448×448")
    audio = decoded.audio if decoded.audio is not None and decoded.audio.size else speech
    add("emotion_llama_audio", [{"input_values": tensor(audio.astype(np.float32))}],
        f"the video's audio track ({audio.size / SAMPLE_RATE:.1f} s)" if audio is not speech
        else "`examples/speech.wav` (the video has no audio track)")
    embeddings = emotion_embeddings(grpc_url, video)
    add("emotion_llama_llm", llm_rows(embeddings), f"the served encoders' {embeddings.shape[0]}×{embeddings.shape[1]} "
        "embeddings of the video, a [reason] prompt, greedy, 16 new tokens")
    add("emotion_llama", [dict({"VIDEO": bytes_tensor(video), "PROMPT": text_tensor(c.PROMPT_TEXT)}, **GREEDY_16_TOKENS)],
        f"`examples/sample_emotion.mp4` bytes ({len(video) / 1024:.0f} KiB), [reason] prompt, greedy, 16 new tokens")

    # Hallo2: the portrait + 1 s of speech; the networks get inputs captured from a real pipeline run
    portrait_png = c.PORTRAIT_PNG.read_bytes()
    hallo_audio = speech[: int(HALLO2_AUDIO_SECONDS * SAMPLE_RATE)].copy()
    add("hallo2", [{"IMAGE": bytes_tensor(portrait_png), "AUDIO_BYTES": bytes_tensor(encode_wav(hallo_audio, SAMPLE_RATE)),
                    "INFERENCE_STEPS": {"content": [2], "shape": [1]}, "SEED": {"content": [42], "shape": [1]},
                    "USE_CACHE": {"content": [False], "shape": [1]}}],
        "`examples/portrait.png` + 1 s of speech (7 clips of 4 frames), 2 denoising steps, CFG 3.5, no cache")
    captured = capture_hallo2_inputs(repository, decode_image(portrait_png), hallo_audio)
    for model in HALLO2_NETWORK_MODELS:
        if model not in captured:
            out.notes[model] = "not called by the pipeline run (no captured input)"
            continue
        # batch item 0 (perf_analyzer: -b 1)
        add(model, [{name: tensor(value[0]) for name, value in captured[model].items()}],
            "inputs captured from a real pipeline run (portrait + speech), batch item 0")
    return out


# --------------------------------------------------------------------------------------------- runs


@dataclass
class Target:
    model: str
    kind: str  # "stateless" | "sequence" | "decoupled"
    levels: tuple[int, ...]
    protocol: str = "grpc"
    label: str = ""
    request_count: int = 0  # > 0: a fixed number of requests instead of stabilised time windows
    timeout_s: float = 90.0
    # per-request timestamps (--profile-export-file): always for decoupled models; for others when the exact
    # throughput of a fixed request count matters (perf_analyzer's own figure has whole-second resolution there)
    profile_export: bool = False

    @property
    def name(self) -> str:
        return self.label or self.model


@dataclass
class Level:
    concurrency: int
    ok: bool
    command: str
    seconds: float
    row: dict = field(default_factory=dict)
    error: str = ""
    responses: dict = field(default_factory=dict)  # from the profile export: first/final response percentiles (ms), throughput


@dataclass
class TargetResult:
    target: Target
    levels: list[Level] = field(default_factory=list)
    skipped: str = ""


def targets(quick: bool) -> list[Target]:
    from emoserve.model_catalog import HALLO2_NETWORK_MODELS

    three = (1, 2, 4)
    nets = (1, 4) if quick else three
    out = [
        Target("lam_a2e", "stateless", three),
        Target("lam_a2e", "stateless", (1, 4), protocol="http", label="lam_a2e (HTTP/REST)"),
        Target("lam_a2e_offline", "stateless", (1, 2)),
        Target("lam_a2e_stream", "sequence", (1, 4, 8)),
        Target("emotion_llama_vision", "stateless", nets),
        Target("emotion_llama_audio", "stateless", nets),
        Target("emotion_llama_llm", "decoupled", nets),
        Target("emotion_llama", "decoupled", (1, 2) if quick else three),
    ]
    heavy = ("hallo2_denoising_unet", "hallo2_vae_decoder")  # the two networks that dominate a Hallo2 run
    out += [Target(model, "stateless", (nets if model in heavy else (1, 4)) if not quick else (nets if model == heavy[0] else (1,)))
            for model in HALLO2_NETWORK_MODELS]
    out.append(Target("hallo2", "decoupled", (1,), request_count=3 if quick else 5, timeout_s=150.0 if quick else 300.0))
    return out


def pa_command(target: Target, level: int, data: Path, url: str, csv_path: Path, interval_ms: int, max_trials: int,
               request_count: int = 0) -> list[str]:
    cmd = [str(perf_analyzer_binary()), "-m", target.model, "-i", target.protocol, "-u", url,
           "--input-data", str(data), "--concurrency-range", f"{level}:{level}", "-f", str(csv_path),
           "-s", "30", "--max-trials", str(max_trials)]
    if request_count or target.request_count:
        cmd += ["--request-count", str(request_count or target.request_count * max(level, 1))]
    else:
        cmd += ["--measurement-interval", str(interval_ms)]
    if target.kind == "sequence":
        cmd += ["--sequence-length", str(SEQUENCE_LENGTH), "--sequence-length-variation", "0"]
    if target.kind == "decoupled":
        cmd += ["--streaming"]
    if target.kind == "decoupled" or target.profile_export:
        cmd += ["--profile-export-file", str(csv_path.with_suffix(".profile.json"))]
    return cmd


def response_latencies(profile_path: Path) -> dict:
    """Per-request time to the first and to the final response, and the throughput of the whole experiment
    (requests / first send to last response), from ``--profile-export-file`` (ns timestamps)."""
    try:
        # the export embeds request inputs / outputs; binary ones (a PNG, an MP4) are written raw, not UTF-8
        export = json.loads(profile_path.read_bytes().decode("utf-8", errors="replace"), strict=False)
    except (OSError, ValueError):
        return {}
    first, final, responses, sent, done = [], [], [], [], []
    for experiment in export.get("experiments", [])[-1:]:
        for request in experiment.get("requests", []):
            stamps, start = request.get("response_timestamps") or [], request.get("timestamp")
            if not stamps or start is None:
                continue
            first.append((min(stamps) - start) / 1e6)
            final.append((max(stamps) - start) / 1e6)
            responses.append(len(stamps))
            sent.append(start)
            done.append(max(stamps))
    if not first:
        return {}
    span_s = (max(done) - min(sent)) / 1e9
    return {"requests": len(first), "responses_per_request": float(np.mean(responses)),
            "throughput": len(first) / span_s if span_s > 0 else float("nan"),
            **{f"first p{p}": float(np.percentile(first, p)) for p in (50, 95, 99)},
            **{f"final p{p}": float(np.percentile(final, p)) for p in (50, 95, 99)}}


def parse_csv(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        rows = [row for row in csv.reader(handle) if row]
    if len(rows) < 2:
        return []
    return [dict(zip(rows[0], row)) for row in rows[1:] if len(row) == len(rows[0])]


def error_reason(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    keys = ("error", "failed", "unable", "unsupported", "not supported", "invalid", "thread [")
    found = next((line for line in lines if "had error" in line), None) or next(
        (line for line in lines if any(key in line.lower() for key in keys)), None)
    return (found or (lines[-1] if lines else "no output"))[:300]


def run_once(cmd: list[str], env: dict[str, str], timeout: float, log_path: Path) -> tuple[int | None, str, str, float]:
    """One perf_analyzer process (own process group, killed on timeout): (rc or None on timeout, output, shown, s)."""
    if "--profile-export-file" in cmd:  # perf_analyzer refuses an existing export path
        Path(cmd[cmd.index("--profile-export-file") + 1]).unlink(missing_ok=True)
    shown = " ".join(shlex.quote(str(part)) for part in cmd).replace(str(c.PROJECT_ROOT) + "/", "")
    started = time.perf_counter()
    try:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        try:
            output, _ = proc.communicate(timeout=timeout)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                output, _ = proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                output, _ = proc.communicate()
            rc = None
    except OSError as exc:
        output, rc = str(exc), -1
    seconds = time.perf_counter() - started
    with log_path.open("a") as handle:
        handle.write(f"$ {shown}\n\n{output}\n")
    return rc, output, shown, seconds


def run_target(target: Target, data: Path | None, urls: dict[str, str], env: dict[str, str], interval_ms: int, max_trials: int,
               deadline: float) -> TargetResult:
    """One perf_analyzer run per concurrency level (CSV, profile export and log in ``LOG_DIR``). A level that does not
    stabilise within ``max_trials`` windows is measured once more with a fixed ``--request-count`` (about two windows'
    worth of requests at the rate of the last stable level), and marked so."""
    result = TargetResult(target)
    if data is None:
        result.skipped = "no input data"
        return result
    slug, last_rate = target.name.replace(" ", "_").replace("(", "").replace(")", "").replace("/", "-"), 0.0
    for level in target.levels:
        remaining = deadline - time.monotonic()
        if remaining < 5:
            result.levels.append(Level(level, False, "", 0.0, error="skipped: suite time budget spent"))
            continue
        csv_path, log_path = LOG_DIR / f"{slug}-c{level}.csv", LOG_DIR / f"{slug}-c{level}.log"
        csv_path.unlink(missing_ok=True)
        log_path.unlink(missing_ok=True)
        cmd = pa_command(target, level, data, urls[target.protocol], csv_path, interval_ms, max_trials)
        log.info("perf_analyzer %s concurrency %d (timeout %.0f s)", target.name, level, min(target.timeout_s, remaining))
        rc, output, shown, seconds = run_once(cmd, env, min(target.timeout_s, remaining), log_path)
        note = ""
        if rc not in (0, None) and "stable measurement" in output and not target.request_count:
            remaining = deadline - time.monotonic()
            count = max(8 * level, int(2 * interval_ms / 1000 * (last_rate or 10.0) * min(level, 2)))
            if remaining > 5:
                log.info("  unstable; once more with --request-count %d", count)
                cmd = pa_command(target, level, data, urls[target.protocol], csv_path, interval_ms, max_trials, count)
                rc, output, shown, more = run_once(cmd, env, min(target.timeout_s, remaining), log_path)
                seconds += more
                note = f"unstable within {max_trials} windows; fixed count of {count} requests"
        rows = parse_csv(csv_path)
        if rc == 0 and rows:
            row = rows[-1]
            result.levels.append(Level(level, True, shown, seconds, row=row, error=note,
                                       responses=response_latencies(csv_path.with_suffix(".profile.json"))))
            with contextlib.suppress(ValueError):
                last_rate = float(row.get("Inferences/Second", 0) or 0)
        elif rc is None:
            result.levels.append(Level(level, False, shown, seconds, error=f"timed out after {seconds:.0f} s"))
        else:
            result.levels.append(Level(level, False, shown, seconds, error=f"rc {rc}: {error_reason(output)}"))
    return result


# --------------------------------------------------------------------------------------------- report


def us_to_ms(value: str) -> str:
    try:
        return f"{float(value) / 1000:.1f}"
    except (TypeError, ValueError):
        return "n/a"


def server_compute_us(row: dict) -> float:
    """Triton's compute time of a perf_analyzer CSV row: input + infer + output, µs."""
    return sum(float(row.get(k, 0) or 0) for k in ("Server Compute Input", "Server Compute Infer", "Server Compute Output"))


def rate(value: str) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return f"{number:.1f}" if number >= 10 else f"{number:.2f}"


MODEL_HEADER = ["protocol", "concurrency", "infer/s", "p50 ms", "p95 ms", "p99 ms", "server queue ms", "server compute ms", "note"]
KIND_NOTES = {"sequence": f"sequence model: concurrency = concurrent {SEQUENCE_LENGTH}-chunk sequences",
              "decoupled": "decoupled, gRPC streaming: latency = request to the final response"}


def level_row(result: TargetResult, level: Level) -> list[str]:
    """One row of a model's table (``MODEL_HEADER``); decoupled models note their first-response percentiles."""
    if not level.ok:
        return [result.target.protocol, str(level.concurrency), *["—"] * 6, "**not measured**: " + level.error.replace("|", "/")]
    r, resp = level.row, level.responses
    notes = [f"first response p50/p95/p99 {resp['first p50']:.1f} / {resp['first p95']:.1f} / {resp['first p99']:.1f} ms, "
             f"{resp['responses_per_request']:.0f} responses/request" if resp else "", level.error,
             "fixed request count" if result.target.request_count else ""]
    return [result.target.protocol, str(level.concurrency), rate(r.get("Inferences/Second", "")), us_to_ms(r.get("p50 latency")),
            us_to_ms(r.get("p95 latency")), us_to_ms(r.get("p99 latency")), us_to_ms(r.get("Server Queue")),
            us_to_ms(str(server_compute_us(r))), "; ".join(n for n in notes if n)]


def write_outputs(results: list[TargetResult], inputs: InputFiles, header_lines: list[str], md_path: Path, json_path: Path) -> str:
    """The report — a summary, one table per model (the section ``run_all`` copies into RESULTS.md), the input data and
    every command line — and the parsed rows as JSON (``floor`` reads them)."""
    report = c.Report()
    report.add("\n".join(header_lines) + "\n")
    driven = [r.target.name for r in results if r.levels and all(level.ok for level in r.levels)]
    missing = [f"{r.target.name}: {r.skipped}" for r in results if r.skipped] + [
        f"{r.target.name} c{level.concurrency}: {level.error}" for r in results for level in r.levels if not level.ok]
    report.table("Summary", ["item", "value"], [
        ["model targets driven at every concurrency level", f"{len(driven)} of {len(results)}: " + ", ".join(f"`{m}`" for m in driven)],
        ["not (fully) measured", "; ".join(missing).replace("|", "/") or "none"]])
    blocks = ["### Per model", "", "Latencies are perf_analyzer's client-side percentiles in ms; server queue / compute are "
              "Triton's per-request averages; infer/s = completed requests per second.", ""]
    for model in dict.fromkeys(r.target.model for r in results):
        mine = [r for r in results if r.target.model == model]
        rows = [level_row(r, level) for r in mine for level in r.levels]
        rows += [[r.target.protocol, *["—"] * 7, f"not run: {r.skipped}"] for r in mine if r.skipped]
        blocks += [f"**`{model}`** ({KIND_NOTES.get(mine[0].target.kind, 'stateless')})", "", "| " + " | ".join(MODEL_HEADER) + " |",
                   "|" + "---|" * len(MODEL_HEADER), *("| " + " | ".join(row) + " |" for row in rows), ""]
    report.add("\n".join(blocks))
    report.table("Input data", ["model", "input data"], [[f"`{m}`", note] for m, note in inputs.notes.items()])
    commands = [level.command for r in results for level in r.levels if level.command]
    report.add("### Commands\n\n```bash\n" + "\n".join(commands) + "\n```\n")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps({"header": header_lines, "inputs": inputs.notes, "results": [
        {"target": asdict(r.target), "skipped": r.skipped, "levels": [asdict(level) for level in r.levels]} for r in results]}, indent=1))
    return report.write(md_path)


# --------------------------------------------------------------------------------------------- main


def outputs_for(quick: bool, out: Path | None = None) -> tuple[Path, Path]:
    """(markdown report, parsed JSON): only the report goes to ``results/``, the JSON (run_all, floor) to ``.work/``."""
    md_path = out or c.RESULTS_DIR / ("perf_analyzer-quick.md" if quick else "perf_analyzer.md")
    return md_path, c.WORK_DIR / f"{md_path.stem}.json"


def run(args: argparse.Namespace) -> int:
    started_at, suite_started, load_before = _dt.datetime.now(_dt.timezone.utc), time.monotonic(), c.load_average()
    env, a2e_profile = pa_environment(), args.a2e_profile or "tiny"
    interval_ms, max_trials = args.measurement_interval or (3000 if args.quick else 4000), 5 if args.quick else 8
    md_path, json_path = outputs_for(args.quick, args.out)
    LOG_DIR.mkdir(parents=True, exist_ok=True)

    repository = c.build(c.WORK_DIR / f"repo-pa-{a2e_profile}", build_settings(a2e_profile))
    server = c.triton_server(repository, "perf_analyzer-triton")
    try:
        t0 = time.perf_counter()
        server.start()
        start_s = time.perf_counter() - t0
        urls = {"grpc": server.grpc_url, "http": server.http_url}
        versions_now = c.versions(server.grpc_url)
        t0 = time.perf_counter()
        inputs = make_input_data(repository, server.grpc_url)
        data_s = time.perf_counter() - t0
        deadline = time.monotonic() + args.time_budget
        results = []
        for target in targets(args.quick):
            if args.models and target.model not in args.models:
                continue
            results.append(run_target(target, inputs.files.get(target.model), urls, env, interval_ms, max_trials, deadline))
            for level in results[-1].levels:
                log.info("  %s c%d: %s", target.name, level.concurrency,
                         f"{level.row.get('Inferences/Second')} infer/s, p50 {us_to_ms(level.row.get('p50 latency'))} ms"
                         if level.ok else level.error)
    finally:
        server.stop()
    build_used = build_settings(a2e_profile)
    header = [
        f"# perf_analyzer — every Triton model{' (quick)' if args.quick else ''}", "",
        f"- date: {started_at.isoformat(timespec='seconds')}",
        f"- command: `python -m benchmarks.perf_analyzer{' --quick' if args.quick else ''}` (from the repository root); "
        f"whole suite {time.monotonic() - suite_started:.0f} s (tritonserver start {start_s:.0f} s, input data {data_s:.0f} s)",
        f"- perf_analyzer: {perf_analyzer_version(env)}, `-i grpc` (one row `-i http`), `-s 30`, `--max-trials {max_trials}`, "
        f"`--measurement-interval {interval_ms}` (time windows) unless a fixed `--request-count` is noted; one run per "
        "concurrency level, each with a subprocess timeout",
        f"- repository `{repository.relative_to(c.PROJECT_ROOT)}`: LAM-A2E `{build_used.profile}` profile, Emotion-LLaMA LLM "
        f"`{build_used.llm}` + `{build_used.encoder_profile}` encoders, Hallo2 `{build_used.hallo2_profile}` — seeded-random "
        "weights, timings of these sizes only",
        *c.environment_lines(versions_now),
        f"- load average (1/5/15 min) at start {load_before}, at end {c.load_average()} — perf_analyzer and the server share "
        "the cores, other work on the machine skews every figure",
    ]
    write_outputs(results, inputs, header, md_path, json_path)
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 s windows, fewer concurrency levels for the slow networks")
    parser.add_argument("--a2e-profile", choices=("tiny", "full"), default=None, help="LAM-A2E network size (default tiny)")
    parser.add_argument("--measurement-interval", type=int, default=None, help="ms per window (default 4000, 3000 with --quick)")
    parser.add_argument("--time-budget", type=float, default=None,
                        help="seconds for all perf_analyzer runs (default 780, 420 with --quick); levels that do not fit are skipped")
    parser.add_argument("--models", nargs="*", default=None, help="only these models")
    parser.add_argument("--out", type=Path, default=None, help="markdown report path")
    args = parser.parse_args(argv)
    if args.time_budget is None:
        args.time_budget = 420.0 if args.quick else 780.0
    c.raise_on_sigterm()
    return run(args)


if __name__ == "__main__":
    sys.exit(main())

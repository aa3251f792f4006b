"""perf_analyzer against every Triton model of the stack (gRPC; stateless, sequence and decoupled models).

    python -m benchmarks.perf_analyzer            # 4 s windows, concurrency 1/2/4: ~12-13 min on 2 cores
    python -m benchmarks.perf_analyzer --quick    # 3 s windows, fewer levels for the Hallo2 networks: ~5-6 min

It uses the ``perf_analyzer`` binary of ``tritonclient==2.51.0`` (``.venv/bin/perf_analyzer``, same release as
the server). That binary links ``libb64.so.0d`` and ``libcudart.so.12``; both ship (hash-suffixed) in
``nvidia_pytriton.libs``, so ``benchmarks/.work/palibs/`` gets symlinks under the sonames and goes on the
subprocess's ``LD_LIBRARY_PATH`` (``shared/notes/triton-on-cpu.md``).

Steps: build (or re-use) one repository with all three slices in tiny/fast settings in
``benchmarks/.work/repo-pa-<a2e profile>`` (``--a2e-profile full`` puts the 102 M-parameter LAM-A2E network in
it), start ``tritonserver`` on free loopback ports, write realistic ``--input-data`` JSON files
(``benchmarks/.work/pa-data/``): speech windows from ``examples/speech.wav``, the first frame, audio track and
bytes of ``examples/sample_emotion.mp4``, ``examples/portrait.png`` (BYTES inputs as ``{"b64": ...}``), the
Hallo2 network inputs captured from one real in-process pipeline run, and the Emotion-LLaMA multimodal
embeddings computed by the served encoders. Then one perf_analyzer run per model and concurrency level, each
bounded by a subprocess timeout; a model perf_analyzer cannot drive is recorded with the reason.

Output: ``benchmarks/results/perf_analyzer[-quick]/<model>.csv`` (perf_analyzer's CSV rows, one per level),
``benchmarks/results/perf_analyzer[-quick].md`` (tables) and ``...json`` (the parsed rows, read by
``benchmarks.run_all``). Logs of every run: ``benchmarks/.work/logs/perf_analyzer/``.
"""

from __future__ import annotations

import argparse
import base64
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

from benchmarks.common import (
    PROJECT_ROOT, RESULTS_DIR, WORK_DIR, Report, machine_description, raise_on_sigterm, versions,
)
from stack.processes import free_port

log = logging.getLogger("perf_analyzer_bench")

EXAMPLES_DIR = PROJECT_ROOT / "examples"
SPEECH = EXAMPLES_DIR / "speech.wav"
SAMPLE_VIDEO = EXAMPLES_DIR / "sample_emotion.mp4"
PORTRAIT = EXAMPLES_DIR / "portrait.png"
SAMPLE_RATE = 16000
A2E_WINDOW_SAMPLES = 34133  # the streaming model's 64-frame network window (README)
STREAM_CHUNK_SAMPLES = SAMPLE_RATE  # 1 s chunks, as the REST streaming clients send
SEQUENCE_LENGTH = 8
PROMPT_TEXT = "The person in video says: I can't believe it! We actually won the prize!  [reason] What is the emotional state of the person?"
HALLO2_AUDIO_SECONDS = 1.0
PALIBS = WORK_DIR / "palibs"
DATA_DIR = WORK_DIR / "pa-data"
LOG_DIR = WORK_DIR / "logs" / "perf_analyzer"


# --------------------------------------------------------------------------------------------- binary


def site_packages() -> Path:
    return Path(sysconfig.get_paths()["purelib"])


def perf_analyzer_binary() -> Path:
    candidate = Path(sys.executable).parent / "perf_analyzer"
    if not candidate.exists():
        raise FileNotFoundError(f"{candidate} is missing: pip install tritonclient==2.51.0 (its wheel carries the binary)")
    return candidate


def prepare_palibs(folder: Path = PALIBS) -> Path:
    """Symlink the wheel's hash-suffixed libb64 / libcudart under the sonames perf_analyzer asks for."""
    libs = site_packages() / "nvidia_pytriton.libs"
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
        text = (out.stdout + out.stderr).strip().splitlines()
        first = text[0] if text and out.returncode == 0 else ""
    except (OSError, subprocess.TimeoutExpired):
        first = ""
    return f"tritonclient {metadata.version('tritonclient')} wheel" + (f" ({first})" if first else "")


# --------------------------------------------------------------------------------------------- repository


def ensure_repository(a2e_profile: str) -> Path:
    from export.build_repository import build_repository

    out = WORK_DIR / f"repo-pa-{a2e_profile}"
    started = time.perf_counter()
    build_repository(out, build_settings(a2e_profile))  # ONNX exports are cached by fingerprint
    log.info("repository %s ready in %.1f s", out, time.perf_counter() - started)
    return out


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


def load_speech() -> np.ndarray:
    from emoserve.audio import decode_audio

    return decode_audio(SPEECH.read_bytes(), SAMPLE_RATE)


def png_bytes(frame: np.ndarray) -> bytes:
    import av

    codec = av.CodecContext.create("png", "w")
    codec.width, codec.height, codec.pix_fmt = frame.shape[1], frame.shape[0], "rgb24"
    packets = codec.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")) + codec.encode(None)
    return b"".join(bytes(packet) for packet in packets)


def capture_hallo2_inputs(repository: Path, portrait: np.ndarray, audio: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    """The first real input set of every Hallo2 network, from one in-process pipeline run (1 step)."""
    from emoserve.hallo2.pipeline import GenerationSettings, Hallo2Pipeline
    from emoserve.hallo2.profile import HALLO2_PROFILES
    from emoserve.hallo2.served_networks import ServedHallo2Networks, onnx_caller
    from export.hallo2 import ReferenceUNetSpec

    inner = onnx_caller(repository)
    captured: dict[str, dict[str, np.ndarray]] = {}

    def caller(model, inputs, outputs):
        if model not in captured:
            captured[model] = {k: np.array(v, copy=True) for k, v in inputs.items()}
        return inner(model, inputs, outputs)

    features = len(ReferenceUNetSpec(profile="tiny").get_output_names())
    pipeline = Hallo2Pipeline(ServedHallo2Networks(caller, features), HALLO2_PROFILES["tiny"])
    pipeline.run(portrait, audio, GenerationSettings(steps=1, guidance_scale=3.5, seed=42, use_cache=False))
    return captured


def emotion_embeddings(grpc_url: str, video: bytes) -> np.ndarray:
    """What the pipeline hands the LLM: image tokens + audio feature tokens + CLS, from the served encoders."""
    import tritonclient.grpc as grpcclient

    from emoserve.emotion_llama.preprocess import preprocess_frame
    from emoserve.media import decode_video
    from emoserve.model_catalog import (AUDIO_INPUT_VALUES, CLS_TOKEN, EMOTION_AUDIO_MODEL, EMOTION_VISION_MODEL,
                                        FEATURE_TOKENS, IMAGE_TOKENS, PIXEL_VALUES)

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

        tokens, cls = infer(EMOTION_VISION_MODEL, PIXEL_VALUES, pixels, [IMAGE_TOKENS, CLS_TOKEN])
        (features,) = infer(EMOTION_AUDIO_MODEL, AUDIO_INPUT_VALUES, audio[None].astype(np.float32), [FEATURE_TOKENS])
    finally:
        client.close()
    return np.concatenate([tokens[0], features[0], cls[0]], axis=0).astype(np.float32)


GREEDY_16_TOKENS = {"TEMPERATURE": {"content": [0.0], "shape": [1]}, "MAX_NEW_TOKENS": {"content": [16], "shape": [1]}}


def a2e_window_rows(long_speech: np.ndarray) -> list[dict]:
    """``lam_a2e``: the streaming model's 64-frame window at four offsets, four identities."""
    rows = []
    for i, offset in enumerate((0, 8000, 24000, 40000)):
        window = long_speech[offset: offset + A2E_WINDOW_SAMPLES].astype(np.float32)
        rows.append({"input_values": tensor(window), "id_idx": {"content": [i % 12], "shape": [1]}})
    return rows


def a2e_stream_rows(long_speech: np.ndarray) -> list[list[dict]]:
    """``lam_a2e_stream``: two streams of ``SEQUENCE_LENGTH`` consecutive 1 s chunks (different start offsets)."""
    streams = []
    for stream, start in enumerate((0, 3 * SAMPLE_RATE)):
        steps = []
        for k in range(SEQUENCE_LENGTH):
            chunk = long_speech[start + k * STREAM_CHUNK_SAMPLES: start + (k + 1) * STREAM_CHUNK_SAMPLES].astype(np.float32)
            steps.append({"AUDIO": tensor(chunk), "ID_IDX": {"content": [stream], "shape": [1]}})
        streams.append(steps)
    return streams


def llm_rows(embeddings: np.ndarray) -> list[dict]:
    """``emotion_llama_llm``: the video's multimodal embeddings, the [reason] prompt, greedy, 16 new tokens."""
    return [dict({"MULTIMODAL_EMBEDDINGS": tensor(embeddings), "PROMPT": text_tensor(PROMPT_TEXT)}, **GREEDY_16_TOKENS)]


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
    speech = load_speech()
    long_speech = np.tile(speech, 2)  # 14 s: room for shifted windows and 8 s streams

    out.files["lam_a2e"] = write_json("lam_a2e", a2e_window_rows(long_speech))
    out.notes["lam_a2e"] = f"speech windows of {A2E_WINDOW_SAMPLES} samples (64 frames), 4 offsets"

    # lam_a2e_offline: the whole 7 s clip as WAV bytes (decode + network + post-processing in the model)
    out.files["lam_a2e_offline"] = write_json("lam_a2e_offline", [{
        "AUDIO_BYTES": bytes_tensor(encode_wav(speech, SAMPLE_RATE)), "ID_IDX": {"content": [3], "shape": [1]},
        "MOVEMENT_SMOOTH": {"content": [True], "shape": [1]}, "BROW_MOVEMENT": {"content": [True], "shape": [1]}}])
    out.notes["lam_a2e_offline"] = f"`examples/speech.wav` as WAV bytes ({len(speech) / SAMPLE_RATE:.1f} s)"

    streams = a2e_stream_rows(long_speech)
    out.files["lam_a2e_stream"] = write_json("lam_a2e_stream", streams)
    out.notes["lam_a2e_stream"] = f"{len(streams)} streams of {SEQUENCE_LENGTH} consecutive 1 s speech chunks"

    # Emotion-LLaMA
    video = SAMPLE_VIDEO.read_bytes()
    decoded = decode_video(video, max_audio_seconds=30.0)
    pixels = preprocess_frame(decoded.first_frame).astype(np.float32)
    out.files["emotion_llama_vision"] = write_json("emotion_llama_vision", [{"pixel_values": tensor(pixels)}])
    out.notes["emotion_llama_vision"] = "first frame of `examples/sample_emotion.mp4`, CLIP-preprocessed to 3×448×448"
    audio = decoded.audio if decoded.audio is not None and decoded.audio.size else speech
    out.files["emotion_llama_audio"] = write_json("emotion_llama_audio", [{"input_values": tensor(audio.astype(np.float32))}])
    out.notes["emotion_llama_audio"] = (f"the video's audio track ({audio.size / SAMPLE_RATE:.1f} s)" if audio is not speech
                                        else "`examples/speech.wav` (the video has no audio track)")
    embeddings = emotion_embeddings(grpc_url, video)
    out.files["emotion_llama_llm"] = write_json("emotion_llama_llm", llm_rows(embeddings))
    out.notes["emotion_llama_llm"] = (f"the served encoders' {embeddings.shape[0]}×{embeddings.shape[1]} embeddings of the "
                                      "video, a [reason] prompt, greedy, 16 new tokens")
    out.files["emotion_llama"] = write_json("emotion_llama", [
        dict({"VIDEO": bytes_tensor(video), "PROMPT": text_tensor(PROMPT_TEXT)}, **GREEDY_16_TOKENS)])
    out.notes["emotion_llama"] = f"`examples/sample_emotion.mp4` bytes ({len(video) / 1024:.0f} KiB), [reason] prompt, greedy, 16 new tokens"

    # Hallo2: the portrait + 1 s of speech; the networks get inputs captured from a real pipeline run
    portrait_png = PORTRAIT.read_bytes()
    hallo_audio = speech[: int(HALLO2_AUDIO_SECONDS * SAMPLE_RATE)].copy()
    out.files["hallo2"] = write_json("hallo2", [{
        "IMAGE": bytes_tensor(portrait_png), "AUDIO_BYTES": bytes_tensor(encode_wav(hallo_audio, SAMPLE_RATE)),
        "INFERENCE_STEPS": {"content": [2], "shape": [1]}, "SEED": {"content": [42], "shape": [1]},
        "USE_CACHE": {"content": [False], "shape": [1]}}])
    out.notes["hallo2"] = "`examples/portrait.png` + 1 s of speech (7 clips of 4 frames), 2 denoising steps, CFG 3.5, no cache"
    captured = capture_hallo2_inputs(repository, decode_image(portrait_png), hallo_audio)
    for model in HALLO2_NETWORK_MODELS:
        if model not in captured:
            out.notes[model] = "not called by the pipeline run (no captured input)"
            continue
        row = {name: tensor(value[0]) for name, value in captured[model].items()}  # batch item 0 (perf_analyzer: -b 1)
        out.files[model] = write_json(model, [row])
        out.notes[model] = "inputs captured from a real pipeline run (portrait + speech), batch item 0"
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
    note: str = ""


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
            stamps = request.get("response_timestamps") or []
            start = request.get("timestamp")
            if not stamps or start is None:
                continue
            first.append((min(stamps) - start) / 1e6)
            final.append((max(stamps) - start) / 1e6)
            responses.append(len(stamps))
            sent.append(start)
            done.append(max(stamps))
    if not first:
        return {}
    q = lambda values, p: float(np.percentile(values, p))  # noqa: E731
    span_s = (max(done) - min(sent)) / 1e9
    return {"requests": len(first), "responses_per_request": float(np.mean(responses)),
            "throughput": len(first) / span_s if span_s > 0 else float("nan"),
            **{f"first p{p}": q(first, p) for p in (50, 95, 99)}, **{f"final p{p}": q(final, p) for p in (50, 95, 99)}}


def parse_csv(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        rows = [row for row in csv.reader(handle) if row]
    if len(rows) < 2:
        return []
    header = rows[0]
    return [dict(zip(header, row)) for row in rows[1:] if len(row) == len(header)]


def error_reason(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        if "had error" in line:
            return line[:300]
    for line in lines:
        low = line.lower()
        if any(key in low for key in ("error", "failed", "unable", "unsupported", "not supported", "invalid", "thread [")):
            return line[:300]
    return (lines[-1][:300] if lines else "no output")


def run_once(cmd: list[str], env: dict[str, str], timeout: float, log_path: Path) -> tuple[int | None, str, str, float]:
    """One perf_analyzer process (own process group, killed on timeout): (rc or None on timeout, output, shown, s)."""
    if "--profile-export-file" in cmd:  # perf_analyzer refuses an existing export path
        Path(cmd[cmd.index("--profile-export-file") + 1]).unlink(missing_ok=True)
    shown = " ".join(shlex.quote(str(part)) for part in cmd).replace(str(PROJECT_ROOT) + "/", "")
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


def run_target(target: Target, data: Path | None, urls: dict[str, str], env: dict[str, str], out_dir: Path,
               interval_ms: int, max_trials: int, deadline: float) -> TargetResult:
    """One perf_analyzer run per concurrency level. A level that does not stabilise within ``max_trials``
    windows is measured once more with a fixed ``--request-count`` (about two windows' worth of requests at
    the rate of the last stable level), and marked so."""
    result = TargetResult(target)
    if data is None:
        result.skipped = "no input data"
        return result
    slug = target.name.replace(" ", "_").replace("(", "").replace(")", "").replace("/", "-")
    merged: list[list[str]] = []
    header: list[str] | None = None
    last_rate = 0.0
    for level in target.levels:
        remaining = deadline - time.monotonic()
        if remaining < 5:
            result.levels.append(Level(level, False, "", 0.0, error="skipped: suite time budget spent"))
            continue
        csv_path = LOG_DIR / f"{slug}-c{level}.csv"
        log_path = LOG_DIR / f"{slug}-c{level}.log"
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
            try:
                last_rate = float(row.get("Inferences/Second", 0) or 0)
            except ValueError:
                pass
            if header is None:
                header = list(row.keys())
                merged.append(header)
            merged.append([row.get(key, "") for key in header])
        elif rc is None:
            result.levels.append(Level(level, False, shown, seconds, error=f"timed out after {seconds:.0f} s"))
        else:
            result.levels.append(Level(level, False, shown, seconds, error=f"rc {rc}: {error_reason(output)}"))
    if merged:
        out_dir.mkdir(parents=True, exist_ok=True)
        with (out_dir / f"{slug}.csv").open("w", newline="") as handle:
            csv.writer(handle).writerows(merged)
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


TABLE_HEADER = ["model", "protocol", "concurrency", "infer/s", "p50 ms", "p95 ms", "p99 ms", "responses/s",
                "server queue ms", "server compute ms", "note"]
DECOUPLED_NOTE = "gRPC streaming; latency to the final response (first responses: next table)"


def level_row(result: TargetResult, level: Level) -> list[str]:
    t = result.target
    if not level.ok:
        return [f"`{t.model}`", t.protocol, str(level.concurrency), "—", "—", "—", "—", "—", "—", "—", level.error.replace("|", "/")]
    r = level.row
    compute = server_compute_us(r)
    notes = [{"sequence": f"{SEQUENCE_LENGTH}-chunk sequences; concurrency = live sequences",
              "decoupled": DECOUPLED_NOTE}.get(t.kind, "")]
    if t.request_count:
        notes.append(f"{t.request_count * level.concurrency} requests (fixed count)")
    notes.append(level.error)
    return [f"`{t.model}`", t.protocol, str(level.concurrency), rate(r.get("Inferences/Second", "")),
            us_to_ms(r.get("p50 latency")), us_to_ms(r.get("p95 latency")), us_to_ms(r.get("p99 latency")),
            rate(r.get("Response Throughput", "")) if "Response Throughput" in r else "—",
            us_to_ms(r.get("Server Queue")), us_to_ms(str(compute)), "; ".join(n for n in notes if n)]


def summary_rows(results: list[TargetResult]) -> list[list[str]]:
    rows = []
    for result in results:
        if result.skipped:
            rows.append([f"`{result.target.model}`", result.target.protocol, "—", "—", "—", "—", "—", "—", "—", "—",
                         f"not run: {result.skipped}"])
        rows += [level_row(result, level) for level in result.levels]
    return rows


def write_outputs(results: list[TargetResult], inputs: InputFiles, header_lines: list[str], md_path: Path,
                  json_path: Path, csv_dir: Path) -> str:
    report = Report()
    report.add("\n".join(header_lines) + "\n")
    report.table("perf_analyzer — every model", TABLE_HEADER, summary_rows(results),
                 note="Latencies are client-side (perf_analyzer), in ms; server queue / compute are Triton's own averages. "
                      f"CSV per model: `{csv_dir.relative_to(PROJECT_ROOT)}/`.")
    report.table("Input data", ["model", "input data"],
                 [[f"`{m}`", note] for m, note in inputs.notes.items()])
    decoupled = [[f"`{r.target.model}`", str(level.concurrency), str(level.responses["requests"]),
                  f"{level.responses['responses_per_request']:.1f}",
                  *(f"{level.responses[f'{kind} p{p}']:.1f}" for kind in ("first", "final") for p in (50, 95, 99))]
                 for r in results for level in r.levels if level.ok and level.responses]
    if decoupled:
        report.table("Decoupled models — time to first and to final response", [
            "model", "concurrency", "requests", "responses/request", "first p50 ms", "first p95 ms", "first p99 ms",
            "final p50 ms", "final p95 ms", "final p99 ms"], decoupled,
            note="From perf_analyzer's `--profile-export-file` (every request sent at that concurrency level, client timestamps): "
                 "first = first streamed response (a text delta / a progress event), final = the last response.")
    commands = [level.command for r in results for level in r.levels if level.command]
    if commands:
        report.add("### Commands\n\n```bash\n" + "\n".join(commands) + "\n```\n")
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(report.text())
    json_path.write_text(json.dumps({
        "header": header_lines,
        "results": [{"target": asdict(r.target), "skipped": r.skipped,
                     "levels": [asdict(level) for level in r.levels]} for r in results],
        "inputs": inputs.notes,
    }, indent=1))
    return report.text()


# --------------------------------------------------------------------------------------------- main


def outputs_for(quick: bool) -> tuple[Path, Path, Path]:
    stem = "perf_analyzer-quick" if quick else "perf_analyzer"
    return RESULTS_DIR / f"{stem}.md", RESULTS_DIR / f"{stem}.json", RESULTS_DIR / stem


def run(args: argparse.Namespace) -> int:
    from stack.triton_server import TritonServer, TritonServerOptions

    started_at = _dt.datetime.now(_dt.timezone.utc)
    suite_started = time.monotonic()
    load_before = os.getloadavg()
    env = pa_environment()
    pa_version = perf_analyzer_version(env)
    a2e_profile = args.a2e_profile or "tiny"
    interval_ms = args.measurement_interval or (3000 if args.quick else 4000)
    max_trials = 5 if args.quick else 8
    md_path, json_path, csv_dir = outputs_for(args.quick)
    if args.out:
        md_path, json_path = args.out, args.out.with_suffix(".json")
    LOG_DIR.mkdir(parents=True, exist_ok=True)

    repository = ensure_repository(a2e_profile)
    server = TritonServer(TritonServerOptions(repository, http_port=free_port(), grpc_port=free_port(),
                                              metrics_port=free_port(), log_path=WORK_DIR / "logs" / "perf_analyzer-triton.log"))
    try:
        t0 = time.perf_counter()
        server.start()
        start_s = time.perf_counter() - t0
        urls = {"grpc": server.grpc_url, "http": server.http_url}
        versions_now = versions(server.grpc_url)
        t0 = time.perf_counter()
        inputs = make_input_data(repository, server.grpc_url)
        data_s = time.perf_counter() - t0
        deadline = time.monotonic() + args.time_budget
        results = []
        for target in targets(args.quick):
            if args.models and target.model not in args.models:
                continue
            results.append(run_target(target, inputs.files.get(target.model), urls, env, csv_dir, interval_ms, max_trials, deadline))
            done = results[-1]
            for level in done.levels:
                log.info("  %s c%d: %s", target.name, level.concurrency,
                         f"{level.row.get('Inferences/Second')} infer/s, p50 {us_to_ms(level.row.get('p50 latency'))} ms"
                         if level.ok else level.error)
    finally:
        server.stop()
    load_after = os.getloadavg()
    command = "python -m benchmarks.perf_analyzer" + (" --quick" if args.quick else "")
    build = build_settings(a2e_profile)
    header = [
        f"# perf_analyzer — every Triton model{' (quick)' if args.quick else ''}",
        "",
        f"- date: {started_at.isoformat(timespec='seconds')}",
        f"- command: `{command}` (from the repository root); whole suite {time.monotonic() - suite_started:.0f} s "
        f"(tritonserver start {start_s:.0f} s, input data {data_s:.0f} s)",
        f"- perf_analyzer: {pa_version}, `-i grpc` (one row `-i http`), `-s 30`, `--max-trials {max_trials}`, "
        f"`--measurement-interval {interval_ms}` (time windows) unless a fixed `--request-count` is noted; one run per "
        "concurrency level, each with a subprocess timeout",
        f"- repository `{repository.relative_to(PROJECT_ROOT)}`: LAM-A2E `{build.profile}` profile, Emotion-LLaMA LLM "
        f"`{build.llm}` + `{build.encoder_profile}` encoders, Hallo2 `{build.hallo2_profile}` — seeded-random weights, "
        "timings of these sizes only",
        "- machine: " + "; ".join(f"{k} {v}" for k, v in machine_description().items()),
        "- versions: " + "; ".join(f"{k} {v}" for k, v in versions_now.items()),
        f"- load average (1/5/15 min) at start {load_before[0]:.2f} / {load_before[1]:.2f} / {load_before[2]:.2f}, "
        f"at end {load_after[0]:.2f} / {load_after[1]:.2f} / {load_after[2]:.2f} — perf_analyzer and the server share "
        "the cores, other work on the machine skews every figure",
    ]
    print(write_outputs(results, inputs, header, md_path, json_path, csv_dir))
    failed = [f"{r.target.name} c{level.concurrency}" for r in results for level in r.levels if not level.ok]
    log.info("wrote %s (%d level(s) not measured: %s)", md_path, len(failed), ", ".join(failed) or "none")
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

    raise_on_sigterm()
    return run(args)


if __name__ == "__main__":
    sys.exit(main())

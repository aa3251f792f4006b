"""Helpers shared by the benchmarks: latency statistics, Triton statistics deltas, the machine and version
header, a markdown report, a wall-clock budget and a tritonserver on free loopback ports."""

from __future__ import annotations

import logging
import os
import platform
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parent.parent
WORK_DIR = PROJECT_ROOT / "benchmarks" / ".work"  # repositories, logs, raw perf_analyzer files (not committed)
RESULTS_DIR = PROJECT_ROOT / "benchmarks" / "results"  # the markdown reports RESULTS.md links
EXAMPLES_DIR = PROJECT_ROOT / "examples"
SPEECH_WAV = EXAMPLES_DIR / "speech.wav"
SAMPLE_VIDEO = EXAMPLES_DIR / "sample_emotion.mp4"
PORTRAIT_PNG = EXAMPLES_DIR / "portrait.png"
# a [reason] prompt: a free-text answer (no label scoring after generation), so generation runs to the token limit
PROMPT_TEXT = ("The person in video says: I can't believe it! We actually won the prize!  [reason] "
               "What is the emotional state of the person?")

log = logging.getLogger("benchmarks")


def raise_on_sigterm() -> None:
    """SIGTERM (``run_all``'s step timeout, a ``kill``) becomes KeyboardInterrupt, so the ``finally`` blocks stop
    tritonserver, the front end and perf_analyzer instead of leaving them running."""

    def _terminate(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)


class Budget:
    """A wall-clock deadline for the measurement phases (the repository build and start-ups excluded)."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds

    def remaining(self) -> float:
        return self.deadline - time.monotonic()


def load_speech():
    from emoserve.audio import decode_audio
    from emoserve.constants import SAMPLE_RATE

    return decode_audio(SPEECH_WAV.read_bytes(), SAMPLE_RATE)


def build(out: Path, settings) -> Path:
    """``export.build_repository`` into ``out`` (ONNX exports and the LLM conversion are cached by fingerprint)."""
    from export.build_repository import build_repository

    started = time.perf_counter()
    build_repository(out, settings)
    log.info("model repository %s ready in %.1f s", out, time.perf_counter() - started)
    return out


def triton_server(repository: Path, log_name: str, environment: dict[str, str] | None = None):
    """A ``stack.triton_server.TritonServer`` on free loopback ports (not started), its log in ``.work/logs``;
    ``environment``: variables for the server and its stubs (over this process's)."""
    from stack.processes import free_port
    from stack.triton_server import TritonServer, TritonServerOptions

    log_path = WORK_DIR / "logs" / f"{log_name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.unlink(missing_ok=True)
    return TritonServer(TritonServerOptions(repository, http_port=free_port(), grpc_port=free_port(),
                                            metrics_port=free_port(), log_path=log_path, environment=dict(environment or {})))



@dataclass
class LatencyStats:
    samples: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def n(self) -> int:
        return len(self.samples)

    def p(self, q: float) -> float:
        return float(np.percentile(np.asarray(self.samples, dtype=np.float64), q)) if self.samples else float("nan")

    @property
    def mean(self) -> float:
        return float(np.mean(self.samples)) if self.samples else float("nan")

    @property
    def max(self) -> float:
        return float(np.max(self.samples)) if self.samples else float("nan")


def ms(seconds: float) -> str:
    return "n/a" if seconds != seconds else f"{seconds * 1000:.1f}"  # NaN check


def ratio(a: float, b: float) -> str:
    if a != a or b != b or b <= 0:
        return "n/a"
    return f"{a / b:.2f}x"



def model_statistics(grpc_url: str, model: str) -> dict:
    """Counts and cumulative seconds of one model (``get_inference_statistics``)."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(grpc_url)
    try:
        stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    finally:
        client.close()
    inference = stats.get("inference_stats", {})
    seconds = lambda key: float(inference.get(key, {}).get("ns", 0)) / 1e9  # noqa: E731
    return {"inference_count": int(stats.get("inference_count", 0)), "execution_count": int(stats.get("execution_count", 0)),
            "compute_s": seconds("compute_input") + seconds("compute_infer") + seconds("compute_output"), "queue_s": seconds("queue")}


def settled_statistics(grpc_url: str, models: tuple[str, ...], timeout_s: float = 3.0) -> dict[str, dict]:
    """Statistics once they stop changing: Triton may record an execution just after its responses went out."""
    deadline = time.monotonic() + timeout_s
    current = {m: model_statistics(grpc_url, m) for m in models}
    while time.monotonic() < deadline:
        time.sleep(0.25)
        again = {m: model_statistics(grpc_url, m) for m in models}
        if again == current:
            break
        current = again
    return current


def statistics_delta(before: dict, after: dict) -> dict:
    return {key: after[key] - before[key] for key in after}



def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def machine_description() -> dict[str, str]:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info = {"nproc": f"{usable} usable (os.cpu_count {os.cpu_count()})"}
    models = [line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines() if line.startswith("model name")]
    info["cpu"] = models[0] if models else platform.processor() or "unknown"
    memory = [int(line.split()[1]) for line in _read("/proc/meminfo").splitlines() if line.startswith("MemTotal:")]
    if memory:
        info["memory"] = f"{memory[0] / 1024 / 1024:.1f} GiB"
    quota = _read("/sys/fs/cgroup/cpu.max").split()
    if len(quota) == 2:
        info["cgroup cpu.max"] = "unlimited" if quota[0] == "max" else f"{int(quota[0]) / int(quota[1]):.2f} CPUs"
    info["kernel"] = platform.release()
    return info


DEFAULT_DISTRIBUTIONS = ("onnxruntime", "torch", "tritonclient", "nvidia-pytriton", "fastapi", "uvicorn", "numpy")


def versions(grpc_url: str | None, distributions: tuple[str, ...] = DEFAULT_DISTRIBUTIONS) -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in distributions:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    if grpc_url:
        try:
            import tritonclient.grpc as grpcclient

            client = grpcclient.InferenceServerClient(grpc_url)
            try:
                out["tritonserver"] = client.get_server_metadata(as_json=True).get("version", "?") + " (nvidia-pytriton wheel)"
            finally:
                client.close()
        except Exception as exc:  # noqa: BLE001
            out["tritonserver"] = f"unknown ({exc})"
    return out


def load_average() -> str:
    return " / ".join(f"{v:.2f}" for v in os.getloadavg())


def environment_lines(versions_now: dict[str, str]) -> list[str]:
    """The machine and versions lines of every report's header."""
    return ["- machine: " + "; ".join(f"{k} {v}" for k, v in machine_description().items()),
            "- versions: " + "; ".join(f"{k} {v}" for k, v in versions_now.items())]



class Report:
    def __init__(self):
        self.sections: list[str] = []

    def add(self, text: str) -> None:
        self.sections.append(text)
        print(text, flush=True)

    def table(self, title: str, header: list[str], rows: list[list[str]], note: str = "") -> None:
        lines = [f"### {title}", "", *([note, ""] if note else []), "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        self.add("\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n")

    def text(self) -> str:
        return "\n".join(self.sections)

    def write(self, path: Path) -> str:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.text())
        log.info("wrote %s", path)
        return self.text()

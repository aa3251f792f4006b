"""Helpers shared by the serving benchmarks: latency statistics, Triton statistics deltas, the machine and
version header, a markdown report and a wall-clock budget."""

from __future__ import annotations

import os
import platform
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parent.parent
WORK_DIR = PROJECT_ROOT / "benchmarks" / ".work"
RESULTS_DIR = PROJECT_ROOT / "benchmarks" / "results"


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


# --------------------------------------------------------------------------------------------- latency


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else float("nan")


@dataclass
class LatencyStats:
    samples: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def n(self) -> int:
        return len(self.samples)

    def p(self, q: float) -> float:
        return percentile(self.samples, q)

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


# --------------------------------------------------------------------------------------------- Triton statistics


def model_statistics(grpc_url: str, model: str) -> dict:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(grpc_url)
    try:
        stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    finally:
        client.close()
    batches = {}
    for entry in stats.get("batch_stats", []):
        batches[int(entry["batch_size"])] = int(entry.get("compute_infer", {}).get("count", 0))
    return {
        "inference_count": int(stats.get("inference_count", 0)),
        "execution_count": int(stats.get("execution_count", 0)),
        "batches": batches,
    }


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
    batches = {size: after["batches"].get(size, 0) - before["batches"].get(size, 0) for size in after["batches"]}
    return {
        "inference_count": after["inference_count"] - before["inference_count"],
        "execution_count": after["execution_count"] - before["execution_count"],
        "batches": {size: count for size, count in sorted(batches.items()) if count > 0},
    }


# --------------------------------------------------------------------------------------------- environment


def machine_description() -> dict[str, str]:
    info = {"nproc": str(os.cpu_count())}
    try:
        info["nproc"] = f"{len(os.sched_getaffinity(0))} usable (os.cpu_count {os.cpu_count()})"
    except AttributeError:
        pass
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        models = [line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")]
        info["cpu"] = models[0] if models else platform.processor() or "unknown"
    except OSError:
        info["cpu"] = platform.processor() or "unknown"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["memory"] = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    try:
        quota = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        info["cgroup cpu.max"] = "unlimited" if quota[0] == "max" else f"{int(quota[0]) / int(quota[1]):.2f} CPUs"
    except (OSError, ValueError, IndexError):
        pass
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


# --------------------------------------------------------------------------------------------- report


class Report:
    def __init__(self):
        self.sections: list[str] = []

    def add(self, text: str) -> None:
        self.sections.append(text)
        print(text, flush=True)

    def table(self, title: str, header: list[str], rows: list[list[str]], note: str = "") -> None:
        lines = [f"### {title}", ""]
        if note:
            lines += [note, ""]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join("---" for _ in header) + "|")
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        self.add("\n".join(lines) + "\n")

    def text(self) -> str:
        return "\n".join(self.sections)


def latency_row(label: str, stats: LatencyStats) -> list[str]:
    return [label, str(stats.n), ms(stats.p(50)), ms(stats.p(95)), ms(stats.p(99)), ms(stats.mean), ms(stats.max), str(len(stats.errors))]

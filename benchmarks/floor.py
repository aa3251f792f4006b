"""Per-model FLOP floor: how far every model perf_analyzer drives is from pure arithmetic on this machine.

    python -m benchmarks.floor --quick     # 1024² GEMMs for ~2 s per engine + every model's count: ~1 min on 2 cores
    python -m benchmarks.floor             # 2048² GEMMs for ~6 s per engine: ~1-2 min
    python -m benchmarks.floor --a2e-profile full --perf-json benchmarks/results/perf_analyzer.json

**Floor** of a model = FLOPs of one perf_analyzer request / the sustained fp32 GEMM rate of the engine that runs
it here (onnxruntime for the exported ONNX networks, torch for the LLM inside the python backend).

* **GEMM rate, measured once**: a one-node ``MatMul`` ONNX graph (the weight matrix an initializer, as in the
  served graphs) in an :class:`~emoserve.onnx_runner.OnnxRunner` — the session the served networks use
  (intra-op threads = all cores, inter-op 1) — and ``torch.mm`` at torch's default thread count; after a
  warm-up, GFLOP/s per time window: *sustained* = median window, *best* = fastest window.
* **FLOPs of one request**: ``torch.utils.flop_counter.FlopCounterMode`` (1 multiply-add = 2 FLOPs; counts
  mm/addmm/bmm/baddbmm, convolutions of every rank, SDPA) around the PyTorch modules the repository's ONNX
  graphs are exported from, at the profiles of ``perf_analyzer.build_settings`` and at the exact inputs of
  perf_analyzer's ``--input-data`` (``benchmarks/.work/pa-data/``; derived the same way when absent).
  Seeded-random modules: weights do not change FLOPs. torch's counter has SDPA formulas for the CUDA kernels
  only, so the CPU kernel (``_scaled_dot_product_flash_attention_for_cpu``, used by the Hallo2 UNets and
  the HF LLM) gets the same formula here. Composite models run the project's own code with counting
  network callers: ``lam_a2e_offline`` (one network call over the whole clip), ``lam_a2e_stream``
  (``StreamSessionStore`` over one 8-chunk sequence, per chunk), ``emotion_llama_llm``
  (``EmotionLlamaEngine``: prefill + greedy decode steps with KV cache), ``emotion_llama`` (video decode →
  both encoders → the LLM) and ``hallo2`` (``Hallo2Pipeline`` over ``ServedHallo2Networks``).
* **Measured**: perf_analyzer's JSON (``benchmarks/results/perf_analyzer[-quick].json``) at concurrency 1:
  server compute (input + infer + output) and p50 latency, each over the floor.

Output: ``benchmarks/results/floor[-quick].md`` (``--out``) and a ``.json`` next to it.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as _dt
import json
import logging
import math
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import PROJECT_ROOT, RESULTS_DIR, WORK_DIR, Report, machine_description, versions
from benchmarks.perf_analyzer import server_compute_us
from emoserve.constants import NUM_MULTIMODAL_TOKENS, SAMPLE_RATE, WINDOW_SAMPLES
from emoserve.model_catalog import (
    A2E_NETWORK_MODEL,
    A2E_OFFLINE_MODEL,
    A2E_STREAM_MODEL,
    AUDIO,
    AUDIO_BYTES,
    AUDIO_INPUT_VALUES,
    BROW_MOVEMENT,
    CLS_TOKEN,
    EMOTION_AUDIO_MODEL,
    EMOTION_LLM_MODEL,
    EMOTION_PIPELINE_MODEL,
    EMOTION_VISION_MODEL,
    EX_VOL,
    FEATURE_TOKENS,
    GUIDANCE_SCALE,
    HALLO2_IMAGE,
    HALLO2_NETWORK_MODELS,
    HALLO2_PIPELINE_MODEL,
    HALLO2_REFERENCE_UNET_MODEL,
    ID_IDX,
    IMAGE_TOKENS,
    INFERENCE_STEPS,
    MAX_NEW_TOKENS,
    MOVEMENT_SMOOTH,
    MULTIMODAL_EMBEDDINGS,
    NETWORK_AUDIO,
    NETWORK_BLENDSHAPES,
    NETWORK_IDENTITY,
    PIXEL_VALUES,
    PROMPT,
    REPETITION_PENALTY,
    SEED,
    TEMPERATURE,
    TOP_P,
    USE_CACHE,
    VIDEO,
)

log = logging.getLogger("floor")

ENGINE_ORT = "onnxruntime"
ENGINE_TORCH = "torch"


# --------------------------------------------------------------------------------------------- GEMM rate


@dataclass
class GemmRate:
    engine: str
    size: int  # square matrices: one call = 2 * size**3 FLOPs
    threads: str
    window_gflops: list[float] = field(default_factory=list)
    calls: int = 0
    seconds: float = 0.0

    @property
    def sustained(self) -> float:
        """GFLOP/s of the median window: what the engine keeps up, not its luckiest moment."""
        return statistics.median(self.window_gflops) if self.window_gflops else float("nan")

    @property
    def best(self) -> float:
        return max(self.window_gflops) if self.window_gflops else float("nan")

    def to_dict(self) -> dict:
        return dict(asdict(self), sustained_gflops=self.sustained, best_gflops=self.best)


def windowed_rates(run: Callable[[], object], flops_per_call: float, seconds: float, window_s: float,
                   warmup_s: float) -> tuple[list[float], int]:
    """GFLOP/s of consecutive windows of ``run`` calls (each window at least ``window_s`` and one call) for
    about ``seconds`` after ``warmup_s`` of warm-up (thread pools, pre-packed weights, caches)."""
    deadline = time.perf_counter() + warmup_s
    run()
    while time.perf_counter() < deadline:
        run()
    rates, calls = [], 0
    end = time.perf_counter() + seconds
    while True:
        started, count = time.perf_counter(), 0
        while True:
            run()
            count += 1
            elapsed = time.perf_counter() - started
            if elapsed >= window_s:
                break
        rates.append(count * flops_per_call / elapsed / 1e9)
        calls += count
        if time.perf_counter() >= end:
            return rates, calls


def matmul_onnx(path: Path, size: int, seed: int = 0) -> Path:
    """A one-node fp32 ``MatMul`` graph, ``A [n, n] @ B [n, n]`` with B an initializer (a weight, as in the
    served graphs, so onnxruntime may pre-pack it the way it does theirs)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(seed).standard_normal((size, size), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["A", "B"], ["C"])], "gemm",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, [size, size])],
        [helper.make_tensor_value_info("C", TensorProto.FLOAT, [size, size])],
        [numpy_helper.from_array(weight, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every onnxruntime the project supports
    onnx.save(model, str(path))
    return path


def onnxruntime_gemm_rate(size: int, seconds: float, window_s: float, warmup_s: float = 0.5) -> GemmRate:
    from emoserve.onnx_runner import OnnxRunner

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="floor-gemm-") as folder:
        runner = OnnxRunner(matmul_onnx(Path(folder) / "matmul.onnx", size))  # the served networks' session options
        a = np.random.default_rng(1).standard_normal((size, size), dtype=np.float32)
        rates, calls = windowed_rates(lambda: runner.run({"A": a}), 2.0 * size**3, seconds, window_s, warmup_s)
    return GemmRate(ENGINE_ORT, size, "intra-op default (all cores), inter-op 1 (OnnxRunner)", rates, calls,
                    time.perf_counter() - started)


def torch_gemm_rate(size: int, seconds: float, window_s: float, warmup_s: float = 0.5) -> GemmRate:
    import torch

    started = time.perf_counter()
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator)
    b = torch.randn(size, size, generator=generator)
    out = torch.empty(size, size)
    with torch.inference_mode():
        rates, calls = windowed_rates(lambda: torch.mm(a, b, out=out), 2.0 * size**3, seconds, window_s, warmup_s)
    return GemmRate(ENGINE_TORCH, size, f"{torch.get_num_threads()} (torch default)", rates, calls,
                    time.perf_counter() - started)


# --------------------------------------------------------------------------------------------- FLOP counting


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def flop_counter():
    """A ``FlopCounterMode`` that also counts CPU attention.

    torch registers SDPA formulas for the CUDA kernels only; on CPU ``F.scaled_dot_product_attention``
    dispatches to ``aten._scaled_dot_product_flash_attention_for_cpu``, which the stock counter skips
    silently (the Hallo2 UNets and the HF LLM attend through it). It gets the same two-bmm formula.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode, flop_registry

    mapping = {}
    cpu_sdpa = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_sdpa is not None and cpu_sdpa not in flop_registry:
        mapping[cpu_sdpa] = _cpu_sdpa_flops
    return FlopCounterMode(display=False, custom_mapping=mapping)


# name fragments of aten ops that multiply matrices; one of them without a formula would be missed arithmetic
COMPUTE_OP_FRAGMENTS = ("mm", "conv", "attention", "matmul", "einsum", "linear", "dot", "mv", "rnn", "lstm", "gru")
NOT_MATMUL_PREFIXES = ("upsample",)  # upsample_linear1d & co. interpolate: elementwise work, like the floor ignores
UNCOUNTED_COMPUTE_OPS: Counter = Counter()  # op name -> calls seen by count_flops without a formula


def _audit_mode(counter):
    """A dispatch mode that records matmul-like ops the counter has no formula for (none expected)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class ComputeOpAudit(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            packet = func._overloadpacket
            name = str(packet).split(".")[-1]
            if (packet not in counter.flop_registry and not name.startswith(NOT_MATMUL_PREFIXES)
                    and any(f in name for f in COMPUTE_OP_FRAGMENTS)):
                UNCOUNTED_COMPUTE_OPS[str(packet)] += 1
            return func(*args, **(kwargs or {}))

    return ComputeOpAudit()


@contextlib.contextmanager
def counting():
    """``with counting() as counter:`` — FLOPs of everything run inside, under ``no_grad`` and the op audit.

    ``no_grad``, not ``inference_mode``: under inference mode the counter's module tracker breaks weight-norm
    parametrizations (the wav2vec2/HuBERT positional conv: "ParametrizedConv1d has no attribute weight")."""
    import torch

    counter = flop_counter()
    # the audit is the outer mode: it sees what the counter passes on, i.e. composite ops (aten.linear,
    # aten.scaled_dot_product_attention) only after the counter has decomposed and counted them
    with torch.no_grad(), _audit_mode(counter), counter:
        yield counter


def count_flops(fn: Callable, *args, **kwargs) -> tuple[Any, int]:
    """``(fn(*args, **kwargs), FLOPs it ran)`` with 1 multiply-add = 2 FLOPs."""
    with counting() as counter:
        result = fn(*args, **kwargs)
    return result, int(counter.get_total_flops())


def counter_self_check() -> list[tuple[str, int, int]]:
    """``(what, counted, analytic)`` for a Linear, conv1d/2d/3d and CPU SDPA: the counter's coverage on this
    torch build, checked at every run (the report says whether all match)."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    x1, w1 = torch.randn(1, 3, 20, generator=g), torch.randn(5, 3, 4, generator=g)
    x2, w2 = torch.randn(1, 3, 9, 9, generator=g), torch.randn(5, 3, 3, 3, generator=g)
    x3, w3 = torch.randn(1, 3, 4, 6, 6, generator=g), torch.randn(5, 3, 2, 3, 3, generator=g)
    q = torch.randn(2, 3, 7, 8, generator=g)
    k = torch.randn(2, 3, 5, 8, generator=g)
    lin = torch.randn(6, 10, generator=g)
    checks = [
        ("linear [6, 10] x [10, 4]", lambda: F.linear(lin, torch.ones(4, 10)), 2 * 6 * 10 * 4),
        ("conv1d", lambda: F.conv1d(x1, w1), 2 * 17 * 5 * 3 * 4),
        ("conv2d", lambda: F.conv2d(x2, w2), 2 * 7 * 7 * 5 * 3 * 9),
        ("conv3d", lambda: F.conv3d(x3, w3), 2 * 3 * 4 * 4 * 5 * 3 * 18),
        ("scaled_dot_product_attention (CPU)", lambda: F.scaled_dot_product_attention(q, k, k), 2 * 2 * (2 * 3 * 7 * 5 * 8)),
    ]
    return [(what, count_flops(fn)[1], expected) for what, fn, expected in checks]


# --------------------------------------------------------------------------------------------- request inputs


def decode_tensor(entry: dict, dtype) -> np.ndarray:
    """A numeric tensor of perf_analyzer's JSON (``{"content": {"b64": ...} | [values], "shape": [...]}``)."""
    content = entry["content"]
    if isinstance(content, dict):
        array = np.frombuffer(base64.b64decode(content["b64"]), dtype=np.dtype(dtype).newbyteorder("<"))
    else:
        array = np.asarray(content, dtype=dtype)
    return array.reshape(entry["shape"]).astype(dtype)


def decode_bytes(entry: dict) -> bytes:
    """A one-element BYTES tensor: perf_analyzer's serialized form carries a uint32 length prefix
    (``perf_analyzer.bytes_tensor``)."""
    raw = base64.b64decode(entry["content"]["b64"])
    length = int.from_bytes(raw[:4], "little")
    return raw[4: 4 + length]


def scalar(row: dict, name: str, kind: type, default):
    """An optional one-element input of a request row, as the python models read it (``scalar_input``)."""
    entry = row.get(name)
    if entry is None:
        return default
    content = entry["content"]
    if isinstance(content, dict):
        raise TypeError(f"{name}: expected a JSON value, got b64 content")
    return kind(content[0])


def text(row: dict, name: str) -> str:
    return str(row[name]["content"][0])


def graph_feeds(row: dict, layout: dict[str, tuple[np.dtype, int]]) -> dict[str, np.ndarray]:
    """The graph inputs one perf_analyzer request becomes (``-b 1``): Triton puts a batch dimension in front
    of the JSON shape, and the ONNX adapter turns a per-item scalar's ``[batch, 1]`` into the graph's
    ``[batch]`` (``OnnxNetworkModel._as_graph_input``)."""
    feeds = {}
    for name, (dtype, rank) in layout.items():
        value = decode_tensor(row[name], dtype)[None]
        if rank == 1 and value.ndim == 2 and value.shape[1] == 1:
            value = value.reshape(-1)
        feeds[name] = value
    return feeds


def load_pa_data(models: list[str], data_dir: Path) -> dict[str, list]:
    """perf_analyzer's ``--input-data`` rows per model (a sequence model's rows are lists of steps)."""
    out = {}
    for model in models:
        path = data_dir / f"{model}.json"
        if path.is_file():
            out[model] = json.loads(path.read_text())["data"]
    return out


def derive_requests(missing: set[str], nets: TorchNetworks) -> dict[str, list]:
    """perf_analyzer's requests for the models without a pa-data file, built as ``make_input_data`` builds
    them, except that the LLM's embeddings come from the torch encoders (the served ones are their ONNX
    export) and the Hallo2 networks' inputs are captured later from the counted pipeline run."""
    from benchmarks import perf_analyzer as pa
    from emoserve.audio import encode_wav
    from emoserve.emotion_llama.preprocess import preprocess_frame
    from emoserve.media import decode_video

    out: dict[str, list] = {}
    speech = pa.load_speech()
    long_speech = np.tile(speech, 2)

    def one(value) -> dict:
        return {"content": [value], "shape": [1]}

    sampling = {TEMPERATURE: one(0.0), MAX_NEW_TOKENS: one(16)}
    if A2E_NETWORK_MODEL in missing:
        out[A2E_NETWORK_MODEL] = [{NETWORK_AUDIO: pa.tensor(long_speech[: pa.A2E_WINDOW_SAMPLES].astype(np.float32)),
                                   NETWORK_IDENTITY: one(0)}]
    if A2E_OFFLINE_MODEL in missing:
        out[A2E_OFFLINE_MODEL] = [{AUDIO_BYTES: pa.bytes_tensor(encode_wav(speech, SAMPLE_RATE)), ID_IDX: one(3),
                                   MOVEMENT_SMOOTH: one(True), BROW_MOVEMENT: one(True)}]
    if A2E_STREAM_MODEL in missing:
        chunk = pa.STREAM_CHUNK_SAMPLES
        out[A2E_STREAM_MODEL] = [[{AUDIO: pa.tensor(long_speech[k * chunk: (k + 1) * chunk].astype(np.float32)),
                                   ID_IDX: one(0)} for k in range(pa.SEQUENCE_LENGTH)]]
    video = pa.SAMPLE_VIDEO.read_bytes()
    decoded = decode_video(video, max_audio_seconds=nets.settings.emotion_audio_seconds)
    pixels = preprocess_frame(decoded.first_frame).astype(np.float32)
    audio = decoded.audio if decoded.audio is not None and decoded.audio.size else speech
    if EMOTION_VISION_MODEL in missing:
        out[EMOTION_VISION_MODEL] = [{PIXEL_VALUES: pa.tensor(pixels)}]
    if EMOTION_AUDIO_MODEL in missing:
        out[EMOTION_AUDIO_MODEL] = [{AUDIO_INPUT_VALUES: pa.tensor(audio.astype(np.float32))}]
    if EMOTION_LLM_MODEL in missing:
        vision, _ = nets.run(EMOTION_VISION_MODEL, {PIXEL_VALUES: pixels[None]})
        features, _ = nets.run(EMOTION_AUDIO_MODEL, {AUDIO_INPUT_VALUES: audio[None].astype(np.float32)})
        embeddings = np.concatenate([vision[IMAGE_TOKENS][0], features[FEATURE_TOKENS][0], vision[CLS_TOKEN][0]])
        out[EMOTION_LLM_MODEL] = [dict({MULTIMODAL_EMBEDDINGS: pa.tensor(embeddings.astype(np.float32)),
                                        PROMPT: pa.text_tensor(pa.PROMPT_TEXT)}, **sampling)]
    if EMOTION_PIPELINE_MODEL in missing:
        out[EMOTION_PIPELINE_MODEL] = [dict({VIDEO: pa.bytes_tensor(video), PROMPT: pa.text_tensor(pa.PROMPT_TEXT)},
                                            **sampling)]
    if HALLO2_PIPELINE_MODEL in missing:
        hallo_audio = speech[: int(pa.HALLO2_AUDIO_SECONDS * SAMPLE_RATE)].copy()
        out[HALLO2_PIPELINE_MODEL] = [{HALLO2_IMAGE: pa.bytes_tensor(pa.PORTRAIT.read_bytes()),
                                       AUDIO_BYTES: pa.bytes_tensor(encode_wav(hallo_audio, SAMPLE_RATE)),
                                       INFERENCE_STEPS: one(2), SEED: one(42), USE_CACHE: one(False)}]
    return out


# --------------------------------------------------------------------------------------------- the networks


class TorchNetworks:
    """The PyTorch modules the repository's ONNX graphs are exported from, at its profiles, each with the
    export spec that names (and orders) its inputs and outputs; built on first use.

    Weights are seeded-random: FLOPs do not depend on them. The LAM-A2E network skips ``build_network``'s
    demo calibration (a forward pass over 12 x 3 s of audio that only rescales the output layer)."""

    def __init__(self, settings, llm_folder: Callable[[], Path]):
        self.settings = settings
        self._llm_folder = llm_folder
        self._networks: dict[str, tuple[Any, Any]] = {}
        self._engine = None

    def llm_hidden(self) -> int:
        return int(json.loads((self._llm_folder() / "config.json").read_text())["hidden_size"])

    def get(self, model: str) -> tuple[Any, Any]:
        if model not in self._networks:
            self._networks.update(self._build(model))
        return self._networks[model]

    def _build(self, model: str) -> dict[str, tuple[Any, Any]]:
        import torch

        s = self.settings
        if model == A2E_NETWORK_MODEL:
            from emoserve.lam_a2e.network import LamA2ENetwork
            from export.lam_a2e import A2ENetworkSpec

            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(s.seed)
                network = LamA2ENetwork(s.profile).eval()
            return {model: (network, A2ENetworkSpec())}
        if model in (EMOTION_VISION_MODEL, EMOTION_AUDIO_MODEL):
            from emoserve.emotion_llama.encoders import build_encoders
            from export.emotion_llama import AudioEncoderSpec, VisionEncoderSpec

            hidden = self.llm_hidden()
            vision, audio = build_encoders(s.encoder_profile, llm_hidden=hidden, seed=s.seed)
            return {EMOTION_VISION_MODEL: (vision, VisionEncoderSpec(llm_hidden=hidden)),
                    EMOTION_AUDIO_MODEL: (audio, AudioEncoderSpec(llm_hidden=hidden))}
        if model in HALLO2_NETWORK_MODELS:
            from export.hallo2 import _networks  # the (module, spec) pairs the repository exports

            return {name: (network.eval(), spec) for name, (network, spec) in _networks(s).items()}
        raise KeyError(f"{model} is not an exported network")

    def layout(self, model: str) -> dict[str, tuple[np.dtype, int]]:
        """Input name -> (numpy dtype, rank) of the exported graph, from the spec's sample input."""
        _, spec = self.get(model)
        sample = spec.get_sample_input(*spec.get_export_sample_shape())
        return {name: (np.dtype(str(t.dtype).replace("torch.", "")), t.ndim)
                for name, t in zip(spec.get_input_names(), sample)}

    def run(self, model: str, feeds: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
        """The module on the graph's inputs (numpy, in the spec's order): ``({output name: array}, FLOPs)``."""
        import torch

        network, spec = self.get(model)
        args = [torch.from_numpy(np.ascontiguousarray(feeds[name])) for name in spec.get_input_names()]
        result, flops = count_flops(network, *args)
        outputs = (result,) if isinstance(result, torch.Tensor) else tuple(result)
        return {name: value.numpy() for name, value in zip(spec.get_output_names(), outputs)}, flops

    def engine(self):
        """The LLM side exactly as ``emotion_llama_llm`` runs it (``EmotionLlamaEngine`` on the weight folder)."""
        if self._engine is None:
            from emoserve.emotion_llama.engine import EmotionLlamaEngine

            self._engine = EmotionLlamaEngine(self._llm_folder(), self.settings.max_prompt_chars)
        return self._engine


class CountingCaller:
    """A ``ServedHallo2Networks`` caller that runs the torch modules and records calls, FLOPs and the first
    inputs of every network (what ``perf_analyzer.capture_hallo2_inputs`` captures with the ONNX caller)."""

    def __init__(self, nets: TorchNetworks):
        self.nets = nets
        self.calls: Counter = Counter()
        self.flops: Counter = Counter()
        self.first_inputs: dict[str, dict[str, np.ndarray]] = {}

    def __call__(self, model: str, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        self.first_inputs.setdefault(model, {k: np.array(v, copy=True) for k, v in inputs.items()})
        result, flops = self.nets.run(model, inputs)
        self.calls[model] += 1
        self.flops[model] += flops
        return {name: result[name] for name in outputs}


# --------------------------------------------------------------------------------------------- per-model counts


@dataclass
class NetworkCalls:
    network: str  # a network model, or a phase of the LLM ("emotion_llama_llm prefill")
    engine: str
    calls: float  # per request (a stream's calls are averaged over its chunks)
    flops: float  # all calls of one request together


@dataclass
class ModelCount:
    model: str
    parts: list[NetworkCalls] = field(default_factory=list)
    note: str = ""  # what the request is and what is counted
    error: str = ""  # set when the model could not be counted: why
    seconds: float = 0.0

    @property
    def flops(self) -> float | None:
        return None if self.error or not self.parts else float(sum(p.flops for p in self.parts))

    def flops_by_engine(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for part in self.parts:
            out[part.engine] = out.get(part.engine, 0.0) + part.flops
        return out

    @property
    def engine(self) -> str:
        return " + ".join(self.flops_by_engine()) or "—"

    def floor_s(self, rates_gflops: dict[str, float]) -> float | None:
        """Each engine's FLOPs at that engine's sustained rate (a composite may use both)."""
        if self.flops is None:
            return None
        return sum(flops / (rates_gflops[engine] * 1e9) for engine, flops in self.flops_by_engine().items())

    def to_dict(self, rates_gflops: dict[str, float]) -> dict:
        return dict(asdict(self), flops=self.flops, engine=self.engine, floor_s=self.floor_s(rates_gflops))


def shapes(feeds: dict[str, np.ndarray], most: int = 5) -> str:
    """``name [shape], ...`` of the first ``most`` inputs (the denoiser has 28)."""
    shown = [f"{name} {list(value.shape)}" for name, value in list(feeds.items())[:most]]
    return ", ".join(shown) + (f" + {len(feeds) - most} more inputs" if len(feeds) > most else "")


def count_network(model: str, rows: list[dict], nets: TorchNetworks) -> ModelCount:
    """A stateless network: perf_analyzer cycles through the rows; rows of equal shapes cost the same."""
    layout = nets.layout(model)
    per_shape: dict[tuple, int] = {}
    signatures = []
    for row in rows:
        feeds = graph_feeds(row, layout)
        signature = tuple(value.shape for value in feeds.values())
        if signature not in per_shape:
            per_shape[signature] = nets.run(model, feeds)[1]
        signatures.append(signature)
    flops = float(np.mean([per_shape[s] for s in signatures]))
    note = shapes(graph_feeds(rows[0], layout))
    if len(rows) > 1:
        note += f" ({len(rows)} rows, {len(per_shape)} distinct shape(s))"
    return ModelCount(model, [NetworkCalls(model, ENGINE_ORT, 1, flops)], note)


def count_a2e_offline(row: dict, nets: TorchNetworks) -> ModelCount:
    """``lam_a2e_offline``: the decoded clip through the network once (the model does not window it)."""
    from emoserve.audio import decode_audio

    audio = decode_audio(decode_bytes(row[AUDIO_BYTES]), SAMPLE_RATE, vocals_only=scalar(row, EX_VOL, bool, False))
    feeds = {NETWORK_AUDIO: audio[None].astype(np.float32), NETWORK_IDENTITY: np.array([scalar(row, ID_IDX, int, 0)], np.int64)}
    _, flops = nets.run(A2E_NETWORK_MODEL, feeds)
    note = (f"WAV decoded to {audio.size} samples ({audio.size / SAMPLE_RATE:.1f} s), one `{A2E_NETWORK_MODEL}` call "
            f"[1, {audio.size}]; post-processing (numpy) not counted")
    return ModelCount(A2E_OFFLINE_MODEL, [NetworkCalls(A2E_NETWORK_MODEL, ENGINE_ORT, 1, flops)], note)


def count_a2e_stream(sequence: list[dict], nets: TorchNetworks) -> ModelCount:
    """``lam_a2e_stream``: one perf_analyzer sequence through ``StreamSessionStore`` (what the Triton model
    runs), every window through the network; per request = per chunk, averaged over the sequence."""
    from emoserve.lam_a2e.postprocess import PostprocessOptions
    from emoserve.lam_a2e.sessions import ChunkRequest, StreamSessionStore

    calls, flops, windows = 0, 0, []

    def run_network(batch: np.ndarray, ids: np.ndarray) -> np.ndarray:
        nonlocal calls, flops
        out, counted = nets.run(A2E_NETWORK_MODEL, {NETWORK_AUDIO: batch, NETWORK_IDENTITY: ids})
        calls, flops = calls + 1, flops + counted
        windows.append(list(batch.shape))
        return out[NETWORK_BLENDSHAPES]

    store = StreamSessionStore()
    chunk_samples = []
    for k, step in enumerate(sequence):
        audio = decode_tensor(step[AUDIO], np.float32)
        chunk_samples.append(audio.size)
        options = PostprocessOptions(movement_smooth=scalar(step, MOVEMENT_SMOOTH, bool, False),
                                     brow_movement=scalar(step, BROW_MOVEMENT, bool, False))
        request = ChunkRequest(correlation_id=1, audio=audio[None], start=k == 0, end=k == len(sequence) - 1,
                               id_idx=scalar(step, ID_IDX, int, 0), options=options, seed=scalar(step, SEED, int, None))
        (result,) = store.process([request], run_network)
        if isinstance(result, Exception):
            raise result
    n = len(sequence)
    chunk = int(np.median(chunk_samples))
    note = (f"{n}-chunk sequence of {chunk}-sample chunks, per chunk: {calls / n:g} `{A2E_NETWORK_MODEL}` call(s) on "
            f"a {windows[0]} window ({WINDOW_SAMPLES - min(chunk, WINDOW_SAMPLES)} samples of left context + the chunk)")
    return ModelCount(A2E_STREAM_MODEL, [NetworkCalls(A2E_NETWORK_MODEL, ENGINE_ORT, calls / n, flops / n)], note)


def count_llm(engine, question: str, embeddings: np.ndarray, params) -> tuple[list[NetworkCalls], str]:
    """The engine's whole request under one counter, split per forward call of the LLM: the prefill (prompt
    with the spliced embeddings, logits of the last position only), the KV-cache decode steps, and the label
    scoring pass that ``[emotion]`` prompts add."""
    from emoserve.emotion_llama.engine import EngineRequest

    phases: list[tuple[str, int, int]] = []  # (phase, tokens, FLOPs)
    marks: list[int] = []
    with counting() as counter:
        def before(module, args, kwargs):
            marks.append(int(counter.get_total_flops()))

        def after(module, args, kwargs, output):
            embeds = kwargs.get("inputs_embeds")
            tokens = int(embeds.shape[1]) if embeds is not None else 0
            phase = "prefill" if not phases else ("decode step" if tokens == 1 else "emotion label scoring")
            phases.append((phase, tokens, int(counter.get_total_flops()) - marks.pop()))

        hooks = [engine.model.register_forward_pre_hook(before, with_kwargs=True),
                 engine.model.register_forward_hook(after, with_kwargs=True)]
        try:
            (outcome,) = engine.run([EngineRequest(question=question, multimodal=embeddings, params=params)])
        finally:
            for hook in hooks:
                hook.remove()
    if isinstance(outcome, Exception):
        raise outcome
    parts: dict[str, NetworkCalls] = {}
    for phase, _, flops in phases:
        name = f"{EMOTION_LLM_MODEL} {phase}"
        part = parts.setdefault(name, NetworkCalls(name, ENGINE_TORCH, 0, 0))
        part.calls += 1
        part.flops += flops
    prefill_tokens = phases[0][1] if phases else 0
    note = (f"{prefill_tokens}-token prefill ({NUM_MULTIMODAL_TOKENS} multimodal embeddings + prompt), {len(outcome.token_ids)} generated "
            f"tokens ({outcome.finish_reason}), greedy = {params.greedy}")
    return list(parts.values()), note


def llm_request(row: dict):
    from emoserve.emotion_llama.generation import SamplingParams

    defaults = SamplingParams()  # what emotion_llama_llm uses for an absent input
    params = SamplingParams(
        temperature=scalar(row, TEMPERATURE, float, defaults.temperature),
        top_p=scalar(row, TOP_P, float, defaults.top_p),
        repetition_penalty=scalar(row, REPETITION_PENALTY, float, defaults.repetition_penalty),
        max_new_tokens=scalar(row, MAX_NEW_TOKENS, int, defaults.max_new_tokens),
        seed=scalar(row, SEED, int, None))
    return text(row, PROMPT), params


def count_emotion_llm(row: dict, nets: TorchNetworks) -> ModelCount:

    embeddings = decode_tensor(row[MULTIMODAL_EMBEDDINGS], np.float32)
    question, params = llm_request(row)
    parts, note = count_llm(nets.engine(), question, embeddings.reshape(embeddings.shape[-2:]), params)
    return ModelCount(EMOTION_LLM_MODEL, parts, note)


def count_emotion_pipeline(row: dict, nets: TorchNetworks) -> ModelCount:
    """``emotion_llama``: what its ``_multimodal`` does (decode, first frame, audio track or a silent second,
    both encoders), then the LLM on the concatenated 260 embeddings."""
    from emoserve.emotion_llama.preprocess import preprocess_frame
    from emoserve.media import decode_video

    decoded = decode_video(decode_bytes(row[VIDEO]), max_audio_seconds=nets.settings.emotion_audio_seconds)
    pixels = preprocess_frame(decoded.first_frame)[None].astype(np.float32)
    audio = decoded.audio if decoded.audio is not None and decoded.audio.size else np.zeros(SAMPLE_RATE, np.float32)
    vision, vision_flops = nets.run(EMOTION_VISION_MODEL, {PIXEL_VALUES: pixels})
    features, audio_flops = nets.run(EMOTION_AUDIO_MODEL, {AUDIO_INPUT_VALUES: audio[None].astype(np.float32)})
    embeddings = np.concatenate([vision[IMAGE_TOKENS][0], features[FEATURE_TOKENS][0], vision[CLS_TOKEN][0]]).astype(np.float32)
    question, params = llm_request(row)
    llm_parts, llm_note = count_llm(nets.engine(), question, embeddings, params)
    parts = [NetworkCalls(EMOTION_VISION_MODEL, ENGINE_ORT, 1, vision_flops),
             NetworkCalls(EMOTION_AUDIO_MODEL, ENGINE_ORT, 1, audio_flops), *llm_parts]
    note = (f"video decoded: pixels {list(pixels.shape)}, audio [1, {audio.size}]; LLM: {llm_note}; "
            "video decode and preprocessing not counted")
    return ModelCount(EMOTION_PIPELINE_MODEL, parts, note)


def count_hallo2_pipeline(row: dict, nets: TorchNetworks) -> tuple[ModelCount, CountingCaller]:
    """``hallo2``: the model's own input handling and ``Hallo2Pipeline.run`` over ``ServedHallo2Networks`` with a
    caller that runs the torch modules (as ``capture_hallo2_inputs`` runs it with the ONNX caller)."""
    from emoserve.audio import decode_audio
    from emoserve.hallo2.pipeline import GenerationSettings, Hallo2Pipeline
    from emoserve.hallo2.profile import HALLO2_PROFILES
    from emoserve.hallo2.served_networks import ServedHallo2Networks
    from emoserve.hallo2.video import decode_image

    image = decode_image(decode_bytes(row[HALLO2_IMAGE]))
    audio = decode_audio(decode_bytes(row[AUDIO_BYTES]), SAMPLE_RATE)
    defaults = GenerationSettings()
    settings = GenerationSettings(steps=scalar(row, INFERENCE_STEPS, int, defaults.steps),
                                  guidance_scale=scalar(row, GUIDANCE_SCALE, float, defaults.guidance_scale),
                                  seed=scalar(row, SEED, int, defaults.seed),
                                  use_cache=scalar(row, USE_CACHE, bool, True))
    caller = CountingCaller(nets)
    features = len(nets.get(HALLO2_REFERENCE_UNET_MODEL)[1].get_output_names())
    pipeline = Hallo2Pipeline(ServedHallo2Networks(caller, features), HALLO2_PROFILES[nets.settings.hallo2_profile])
    video = pipeline.run(image, audio, settings)
    parts = [NetworkCalls(model, ENGINE_ORT, caller.calls[model], caller.flops[model])
             for model in HALLO2_NETWORK_MODELS if caller.calls[model]]
    note = (f"portrait {image.shape[1]}x{image.shape[0]} + {audio.size / SAMPLE_RATE:.2f} s audio -> "
            f"{video.info['clips']} clips x {settings.steps} steps, guidance {settings.guidance_scale:g} "
            f"({'CFG batch 2' if settings.guidance_scale > 1 else 'no CFG'}), face found: {video.info['face_found']}; "
            "face detection/mesh (mediapipe TFLite), DDIM and MP4 muxing not counted")
    return ModelCount(HALLO2_PIPELINE_MODEL, parts, note), caller


# --------------------------------------------------------------------------------------------- all models


def llm_folder_for(settings, repository: Path) -> Path:
    """The repository's LLM weight folder, or the same LLM prepared once under ``.work/floor/`` (same seed)."""
    from emoserve.emotion_llama import llm
    from export.emotion_llama import LLM_FOLDER, _prepare_llm

    served = repository / EMOTION_LLM_MODEL / "1" / LLM_FOLDER
    if llm.is_complete(served):
        return served
    own = WORK_DIR / "floor" / f"llm-{settings.llm}-seed{settings.seed}"
    if not llm.is_complete(own):
        log.info("no LLM folder in %s: preparing the %s LLM in %s", repository, settings.llm, own)
        _prepare_llm(settings, own)
    return own


def driven_models(quick: bool) -> list[str]:
    """Every model perf_analyzer drives, in its order."""
    from benchmarks.perf_analyzer import targets

    seen: list[str] = []
    for target in targets(quick):
        if target.model not in seen:
            seen.append(target.model)
    return seen


def count_models(models: list[str], nets: TorchNetworks, data_dir: Path) -> tuple[list[ModelCount], dict[str, str]]:
    """A :class:`ModelCount` per model (``error`` set where it could not be counted) and where each request
    came from. Runs torch on one thread: counting needs the shapes only, and on 2 busy cores OpenMP's
    synchronisation makes the thousands of tiny ops of the tiny networks many times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _count_models(models, nets, data_dir)
    finally:
        torch.set_num_threads(threads)


def _count_models(models: list[str], nets: TorchNetworks, data_dir: Path) -> tuple[list[ModelCount], dict[str, str]]:
    from benchmarks import perf_analyzer as pa

    requests = load_pa_data(models, data_dir)
    sources = {m: f"`{shown_path(data_dir / f'{m}.json')}`" for m in requests}
    missing = {m for m in models if m not in requests}
    if missing:
        log.info("no pa-data for %s: deriving those requests as make_input_data does", ", ".join(sorted(missing)))
        try:
            derived = derive_requests(missing, nets)
        except Exception as exc:  # noqa: BLE001  (counted models still get reported)
            log.exception("could not derive the missing requests")
            derived = {}
            for model in missing:
                sources[model] = f"not available: {exc}"
        for model, rows in derived.items():
            requests[model] = rows
            sources[model] = "derived (no pa-data file)"

    counts: dict[str, ModelCount] = {}

    def attempt(model: str, fn: Callable[[], ModelCount]) -> None:
        started = time.perf_counter()
        try:
            count = fn()
        except Exception as exc:  # noqa: BLE001  (a model that cannot be counted is reported, not fatal)
            log.exception("counting %s failed", model)
            count = ModelCount(model, error=f"not counted: {type(exc).__name__}: {exc}"[:300])
        count.seconds = time.perf_counter() - started
        counts[model] = count
        flops = count.flops
        log.info("%s: %s in %.1f s", model, f"{flops / 1e9:.4g} GFLOP" if flops is not None else count.error, count.seconds)

    # the Hallo2 pipeline first: its run also yields the networks' inputs when their pa-data is missing
    if HALLO2_PIPELINE_MODEL in models and HALLO2_PIPELINE_MODEL in requests:
        def hallo2() -> ModelCount:
            count, caller = count_hallo2_pipeline(requests[HALLO2_PIPELINE_MODEL][0], nets)
            for network in HALLO2_NETWORK_MODELS:
                if network in models and network not in requests and network in caller.first_inputs:
                    # batch item 0, as make_input_data writes it (perf_analyzer sends -b 1)
                    requests[network] = [{k: pa.tensor(v[0]) for k, v in caller.first_inputs[network].items()}]
                    sources[network] = "captured from the counted `hallo2` run (no pa-data file)"
            return count
        attempt(HALLO2_PIPELINE_MODEL, hallo2)

    special: dict[str, Callable[[list], ModelCount]] = {
        A2E_OFFLINE_MODEL: lambda rows: count_a2e_offline(rows[0], nets),
        A2E_STREAM_MODEL: lambda rows: count_a2e_stream(rows[0], nets),
        EMOTION_LLM_MODEL: lambda rows: count_emotion_llm(rows[0], nets),
        EMOTION_PIPELINE_MODEL: lambda rows: count_emotion_pipeline(rows[0], nets),
    }
    for model in models:
        if model in counts:
            continue
        if model not in requests:
            counts[model] = ModelCount(model, error=f"not counted: no request ({sources.get(model, 'no pa-data')})")
            sources.setdefault(model, "none")
            continue
        rows = requests[model]
        attempt(model, (lambda rows=rows, model=model: special[model](rows)) if model in special
                else (lambda rows=rows, model=model: count_network(model, rows, nets)))
    return [counts[m] for m in models], sources


# --------------------------------------------------------------------------------------------- measured


@dataclass
class Measured:
    compute_ms: float | None = None
    p50_ms: float | None = None
    note: str = ""


def measured_at_concurrency_1(summary: dict) -> dict[str, Measured]:
    """Per model, perf_analyzer's concurrency-1 row over gRPC (``lam_a2e`` also has an HTTP target)."""
    out: dict[str, Measured] = {}
    for result in summary.get("results", []):
        target = result["target"]
        if target.get("protocol", "grpc") != "grpc" or target["model"] in out:
            continue
        level = next((lv for lv in result.get("levels", []) if lv["concurrency"] == 1), None)
        if result.get("skipped"):
            out[target["model"]] = Measured(note=f"not run: {result['skipped']}")
        elif level is None:
            out[target["model"]] = Measured(note="no concurrency-1 level")
        elif not level["ok"]:
            out[target["model"]] = Measured(note=f"not measured: {level['error']}"[:200])
        else:
            row = level["row"]
            try:
                compute = server_compute_us(row) / 1000
                p50 = float(row["p50 latency"]) / 1000
                out[target["model"]] = Measured(compute, p50)
            except (KeyError, ValueError) as exc:
                out[target["model"]] = Measured(note=f"unreadable row: {exc}")
    return out


# --------------------------------------------------------------------------------------------- report


def fmt_gflop(flops: float | None) -> str:
    return "—" if flops is None else f"{flops / 1e9:.3g}"


def fmt_ms(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "—"
    return f"{value:.3g}" if value < 10 else f"{value:.1f}"


def fmt_ratio(measured_ms: float | None, floor_ms: float | None) -> str:
    """measured / floor as "37.2x"; "—" when either is missing."""
    if measured_ms is None or floor_ms is None or floor_ms <= 0 or math.isnan(measured_ms):
        return "—"
    r = measured_ms / floor_ms
    return f"{r:,.0f}x" if r >= 100 else (f"{r:.1f}x" if r >= 10 else f"{r:.2f}x")


def fmt_calls(calls: float) -> str:
    return f"{calls:g}"


def floor_rows(counts: list[ModelCount], rates: dict[str, float], measured: dict[str, Measured]) -> list[list[str]]:
    rows = []
    for count in counts:
        floor_s = count.floor_s(rates)
        floor_ms = None if floor_s is None else floor_s * 1000
        # without a perf_analyzer JSON every measured cell is "—" and the header says why; with one, say per row
        m = measured.get(count.model, Measured(note="not in the perf_analyzer run" if measured else ""))
        note = count.error or count.note
        if m.note:
            note += f"; perf_analyzer: {m.note}"
        rows.append([f"`{count.model}`", count.engine, fmt_gflop(count.flops), fmt_ms(floor_ms), fmt_ms(m.compute_ms),
                     fmt_ms(m.p50_ms), fmt_ratio(m.compute_ms, floor_ms), fmt_ratio(m.p50_ms, floor_ms),
                     note.replace("|", "/")])
    return rows


FLOOR_HEADER = ["model", "engine", "GFLOP / request", "floor ms", "server compute ms", "p50 ms", "compute / floor",
                "p50 / floor", "request and what is counted"]

FLOOR_EXPLANATION = (
    "**Floor** = FLOPs of one perf_analyzer request / this machine's *sustained* fp32 GEMM rate of the engine that "
    "runs it (onnxruntime for the exported ONNX networks, torch for the LLM in the python backend; a composite that "
    "uses both adds the two). FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` (matmuls, convolutions "
    "of every rank, attention; 1 multiply-add = 2 FLOPs) on the PyTorch modules the ONNX graphs are exported from, at "
    "the exact inputs perf_analyzer sends. The floor is what pure arithmetic at the big-GEMM rate would take: it "
    "ignores memory bandwidth, elementwise work (norms, activations, softmax, resampling), small-matrix inefficiency "
    "and every per-request cost (gRPC, python-backend IPC, BLS, decoding, post-processing). So it is a lower bound, "
    "and ratios ≫ 1 on these tiny networks mean fixed overheads dominate, not arithmetic. *compute / floor* = Triton's "
    "server compute time (input + infer + output) at concurrency 1 over the floor; *p50 / floor* adds the client, "
    "gRPC and queueing (decoupled models: request to the final response). A ratio below 1x means the network ran "
    "faster in the perf_analyzer run than the GEMM did here: onnxruntime's convolutions can beat one fp32 MatMul's "
    "rate, and the two measurements were taken at different times — more load on the machine during the GEMM "
    "lowers the rate (compare the load averages of both reports).")


def write_outputs(header_lines: list[str], counts: list[ModelCount], gemm: dict[str, GemmRate],
                  measured: dict[str, Measured], sources: dict[str, str], md_path: Path, json_path: Path,
                  self_check: list[tuple[str, int, int]], uncounted_ops: dict[str, int]) -> str:
    rates = {engine: rate.sustained for engine, rate in gemm.items()}
    report = Report()
    report.add("\n".join(header_lines) + "\n")
    report.table("Measured time over floor", FLOOR_HEADER, floor_rows(counts, rates, measured), note=FLOOR_EXPLANATION)

    composite_rows = []
    for count in counts:
        total = count.flops
        if total is None or (len(count.parts) == 1 and count.parts[0].network == count.model):
            continue
        for part in count.parts:
            share = f"{100 * part.flops / total:.1f} %" if total else "—"
            composite_rows.append([f"`{count.model}`", f"`{part.network}`", part.engine, fmt_calls(part.calls),
                                   fmt_gflop(part.flops), share])
    report.table("Composite models — network calls per request", ["model", "network / phase", "engine", "calls",
                                                                  "GFLOP", "share"], composite_rows,
                 note="Calls per perf_analyzer request (`lam_a2e_stream`: per chunk, averaged over the 8-chunk "
                      "sequence); GFLOP = all calls of one request together.")

    report.table("GEMM rate", ["engine", "matrices", "threads", "windows", "calls", "sustained GFLOP/s (median)",
                               "best GFLOP/s", "window spread GFLOP/s"],
                 [[r.engine, f"{r.size}×{r.size} fp32", r.threads, str(len(r.window_gflops)), str(r.calls),
                   f"{r.sustained:.1f}", f"{r.best:.1f}",
                   f"{min(r.window_gflops):.1f} – {max(r.window_gflops):.1f}" if r.window_gflops else "—"]
                  for r in gemm.values()],
                 note="One GEMM = 2·n³ FLOPs. onnxruntime: a one-node `MatMul` graph (weight as an initializer) in an "
                      "`OnnxRunner`, the session the served networks use; torch: `torch.mm`. Windows follow a warm-up; "
                      "other work on the machine lowers single windows (the median is the floor's rate).")

    report.table("Request sources", ["model", "request"], [[f"`{m}`", sources.get(m, "—")] for m in (c.model for c in counts)])

    covered = [c for c in counts if c.flops is not None]
    with_measured = [c for c in covered if measured.get(c.model, Measured()).compute_ms is not None]
    summary = [
        ["onnxruntime GEMM sustained / best", f"{gemm[ENGINE_ORT].sustained:.1f} / {gemm[ENGINE_ORT].best:.1f} GFLOP/s "
                                              f"({gemm[ENGINE_ORT].size}² fp32)"],
        ["torch GEMM sustained / best", f"{gemm[ENGINE_TORCH].sustained:.1f} / {gemm[ENGINE_TORCH].best:.1f} GFLOP/s "
                                        f"({gemm[ENGINE_TORCH].size}² fp32)"],
        ["models covered (FLOPs counted)", f"{len(covered)} of {len(counts)} models perf_analyzer drives"],
        ["models with measured time", f"{len(with_measured)} of {len(covered)}"],
        ["not counted", "; ".join(f"`{c.model}`: {c.error}" for c in counts if c.flops is None) or "none"],
        ["FLOP counter self-check (counted = analytic)",
         "not run" if not self_check else
         "all match: " + ", ".join(what for what, _, _ in self_check)
         if all(got == want for _, got, want in self_check) else
         "**mismatch**: " + ", ".join(f"{what} {got} vs {want}" for what, got, want in self_check if got != want)],
        ["matmul-like ops seen without a FLOP formula",
         ", ".join(f"`{op}` ×{n}" for op, n in uncounted_ops.items()) or "none (every mm/conv/attention op was counted)"],
    ]
    report.table("Summary", ["item", "value"], [[k, v.replace("|", "/")] for k, v in summary])

    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(report.text())
    json_path.write_text(json.dumps({
        "header": header_lines,
        "gemm": {engine: rate.to_dict() for engine, rate in gemm.items()},
        "models": [dict(c.to_dict(rates), measured=asdict(measured.get(c.model, Measured())), request=sources.get(c.model))
                   for c in counts],
        "counter_self_check": [{"what": what, "counted": got, "analytic": want} for what, got, want in self_check],
        "uncounted_compute_ops": uncounted_ops,
    }, indent=1))
    return report.text()


# --------------------------------------------------------------------------------------------- main


def shown_path(path: Path) -> str:
    """A path as the reports show it: relative to the repository root when inside it."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(PROJECT_ROOT)) if resolved.is_relative_to(PROJECT_ROOT) else str(path)


def outputs_for(quick: bool) -> tuple[Path, Path]:
    stem = "floor-quick" if quick else "floor"
    return RESULTS_DIR / f"{stem}.md", RESULTS_DIR / f"{stem}.json"


def perf_json_header_check(summary: dict, a2e_profile: str) -> str:
    """A warning when the perf_analyzer run served another LAM-A2E profile than the one counted here."""
    line = next((x for x in summary.get("header", []) if x.startswith("- repository")), "")
    if line and f"LAM-A2E `{a2e_profile}`" not in line:
        return f"**warning**: the perf_analyzer run's repository differs from the counted one ({line[2:]})"
    return ""


def run(args: argparse.Namespace) -> int:
    from benchmarks import perf_analyzer as pa

    started_at = _dt.datetime.now(_dt.timezone.utc)
    started = time.perf_counter()
    load_before = os.getloadavg()
    md_path, json_path = outputs_for(args.quick)
    if args.out:
        md_path, json_path = args.out, args.out.with_suffix(".json")
    perf_json = args.perf_json or pa.outputs_for(args.quick)[1]
    size = args.gemm_size or (1024 if args.quick else 2048)
    seconds = args.gemm_seconds or (2.0 if args.quick else 6.0)
    window_s = 0.25 if args.quick else 1.0

    # GEMM first, on a quiet process (nothing else of this script is running yet)
    gemm = {}
    for measure in (onnxruntime_gemm_rate, torch_gemm_rate):
        rate = measure(size, seconds, window_s)
        gemm[rate.engine] = rate
        log.info("%s GEMM %d²: sustained %.1f GFLOP/s, best %.1f (%d windows)", rate.engine, size, rate.sustained,
                 rate.best, len(rate.window_gflops))
    gemm_s = time.perf_counter() - started

    build = pa.build_settings(args.a2e_profile)
    repository = WORK_DIR / f"repo-pa-{args.a2e_profile}"  # where perf_analyzer.ensure_repository builds it
    nets = TorchNetworks(build, lambda: llm_folder_for(build, repository))
    t0 = time.perf_counter()
    self_check = counter_self_check()
    UNCOUNTED_COMPUTE_OPS.clear()
    counts, sources = count_models(driven_models(args.quick), nets, pa.DATA_DIR)
    count_s = time.perf_counter() - t0

    summary: dict = {}
    perf_line = f"- measured: `{shown_path(perf_json)}` is missing — the measured columns are \"—\" (run `python -m benchmarks.perf_analyzer" \
                f"{' --quick' if args.quick else ''}` first)"
    if perf_json.is_file():
        summary = json.loads(perf_json.read_text())
        date = next((x[len("- date: "):] for x in summary.get("header", []) if x.startswith("- date: ")), "unknown date")
        perf_line = f"- measured: `{shown_path(perf_json)}` (perf_analyzer run of {date}), concurrency 1, gRPC"
        warning = perf_json_header_check(summary, args.a2e_profile)
        if warning:
            perf_line += f"\n- {warning}"
    measured = measured_at_concurrency_1(summary)

    load_after = os.getloadavg()
    ort, tch = gemm[ENGINE_ORT], gemm[ENGINE_TORCH]
    command = "python -m benchmarks.floor" + (" --quick" if args.quick else "") + \
              (f" --a2e-profile {args.a2e_profile}" if args.a2e_profile != "tiny" else "")
    header = [
        f"# FLOP floor — measured time over floor{' (quick)' if args.quick else ''}",
        "",
        f"- date: {started_at.isoformat(timespec='seconds')}",
        f"- command: `{command}` (from the repository root); {time.perf_counter() - started:.0f} s "
        f"(GEMM rates {gemm_s:.0f} s, FLOP counts {count_s:.0f} s)",
        f"- GEMM rate (fp32, {size}×{size}, {seconds:g} s per engine in {window_s:g} s windows): onnxruntime sustained "
        f"{ort.sustained:.1f} GFLOP/s (best {ort.best:.1f}), torch sustained {tch.sustained:.1f} GFLOP/s "
        f"(best {tch.best:.1f}); floors use the sustained rate of the engine that runs the model: onnxruntime for "
        "the ONNX networks, torch for `emotion_llama_llm`",
        f"- counted modules: LAM-A2E `{build.profile}`, Emotion-LLaMA LLM `{build.llm}` + `{build.encoder_profile}` "
        f"encoders, Hallo2 `{build.hallo2_profile}` (`perf_analyzer.build_settings`), seeded-random weights; FLOPs by "
        "`torch.utils.flop_counter.FlopCounterMode` (+ the CPU SDPA kernel), 1 multiply-add = 2 FLOPs",
        f"- requests: perf_analyzer's input data in `{shown_path(pa.DATA_DIR)}/` (table *Request sources*)",
        perf_line,
        "- machine: " + "; ".join(f"{k} {v}" for k, v in machine_description().items()),
        "- versions: " + "; ".join(f"{k} {v}" for k, v in versions(None, ("onnxruntime", "torch", "onnx", "transformers",
                                                                             "numpy")).items()),
        f"- load average (1/5/15 min) at start {load_before[0]:.2f} / {load_before[1]:.2f} / {load_before[2]:.2f}, "
        f"at end {load_after[0]:.2f} / {load_after[1]:.2f} / {load_after[2]:.2f} — other work on the machine lowers "
        "the GEMM rate",
    ]
    print(write_outputs(header, counts, gemm, measured, sources, md_path, json_path, self_check,
                        dict(UNCOUNTED_COMPUTE_OPS)))
    log.info("wrote %s and %s in %.0f s", md_path, json_path, time.perf_counter() - started)
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1024² GEMMs for 2 s per engine; perf_analyzer-quick.json")
    parser.add_argument("--a2e-profile", choices=("tiny", "full"), default="tiny",
                        help="LAM-A2E network size of the perf_analyzer repository (default tiny)")
    parser.add_argument("--perf-json", type=Path, default=None,
                        help="perf_analyzer's parsed results (default benchmarks/results/perf_analyzer[-quick].json)")
    parser.add_argument("--out", type=Path, default=None, help="markdown report (default benchmarks/results/floor[-quick].md)")
    parser.add_argument("--gemm-size", type=int, default=None, help="GEMM matrix side (default 2048, 1024 with --quick)")
    parser.add_argument("--gemm-seconds", type=float, default=None, help="GEMM seconds per engine (default 6, 2 with --quick)")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

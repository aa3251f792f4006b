"""Per-model FLOP floor: how far every model perf_analyzer drives is from pure arithmetic on this machine.

    python -m benchmarks.floor --quick     # 1024² GEMMs for ~2 s per engine + every model's count: ~1 min on 2 cores
    python -m benchmarks.floor             # 2048² GEMMs for ~6 s per engine: ~1-2 min

**Floor** of a model = FLOPs of one perf_analyzer request (``torch.utils.flop_counter`` on the PyTorch modules the
ONNX graphs are exported from, on the exact requests in ``benchmarks/.work/pa-data/``; composite models run the
project's own pipeline code with counting network callers) / the sustained fp32 GEMM rate of the engine that runs
it here (onnxruntime for the ONNX networks, torch for the LLM). The report puts perf_analyzer's concurrency-1 server
compute and p50 (``benchmarks/.work/perf_analyzer[-quick].json``) over the floor. Output:
``benchmarks/results/floor[-quick].md`` (``--out``). No server is started.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as _dt
import json
import logging
import math
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import perf_analyzer as pa
from benchmarks.common import PROJECT_ROOT, RESULTS_DIR, WORK_DIR, Report, environment_lines, load_average, versions
from emoserve import model_catalog as mc
from emoserve.constants import NUM_MULTIMODAL_TOKENS, SAMPLE_RATE, WINDOW_SAMPLES

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

    @property
    def sustained(self) -> float:
        """GFLOP/s of the median window: what the engine keeps up, not its luckiest moment."""
        return statistics.median(self.window_gflops) if self.window_gflops else float("nan")

    @property
    def best(self) -> float:
        return max(self.window_gflops) if self.window_gflops else float("nan")


def windowed_rates(run: Callable[[], object], flops_per_call: float, seconds: float, window_s: float,
                   warmup_s: float) -> tuple[list[float], int]:
    """GFLOP/s of consecutive windows of ``run`` calls (each at least ``window_s`` and one call) for about
    ``seconds`` after ``warmup_s`` of warm-up (thread pools, pre-packed weights, caches)."""
    deadline = time.perf_counter() + warmup_s
    run()
    while time.perf_counter() < deadline:
        run()
    rates, calls, end = [], 0, time.perf_counter() + seconds
    while not rates or time.perf_counter() < end:
        started, count = time.perf_counter(), 0
        while not count or time.perf_counter() - started < window_s:
            run()
            count += 1
        rates.append(count * flops_per_call / (time.perf_counter() - started) / 1e9)
        calls += count
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

    with tempfile.TemporaryDirectory(prefix="floor-gemm-") as folder:
        runner = OnnxRunner(matmul_onnx(Path(folder) / "matmul.onnx", size))  # the served networks' session options
        a = np.random.default_rng(1).standard_normal((size, size), dtype=np.float32)
        rates, calls = windowed_rates(lambda: runner.run({"A": a}), 2.0 * size**3, seconds, window_s, warmup_s)
    return GemmRate(ENGINE_ORT, size, "intra-op default (all cores), inter-op 1 (OnnxRunner)", rates, calls)


def torch_gemm_rate(size: int, seconds: float, window_s: float, warmup_s: float = 0.5) -> GemmRate:
    import torch

    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(size, size, generator=generator), torch.randn(size, size, generator=generator)
    out = torch.empty(size, size)
    with torch.inference_mode():
        rates, calls = windowed_rates(lambda: torch.mm(a, b, out=out), 2.0 * size**3, seconds, window_s, warmup_s)
    return GemmRate(ENGINE_TORCH, size, f"{torch.get_num_threads()} (torch default)", rates, calls)


# --------------------------------------------------------------------------------------------- FLOP counting


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def flop_counter():
    """A ``FlopCounterMode`` that also counts CPU attention: torch registers SDPA formulas for the CUDA kernels
    only, and on CPU ``F.scaled_dot_product_attention`` dispatches to
    ``aten._scaled_dot_product_flash_attention_for_cpu`` (the Hallo2 UNets and the HF LLM attend through it)."""
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
    parametrizations (the wav2vec2/HuBERT positional conv)."""
    import torch

    counter = flop_counter()
    # the audit is the outer mode: it sees composite ops (aten.linear, SDPA) only after the counter decomposed them
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
    q, k = torch.randn(2, 3, 7, 8, generator=g), torch.randn(2, 3, 5, 8, generator=g)
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
    array = (np.frombuffer(base64.b64decode(content["b64"]), dtype=np.dtype(dtype).newbyteorder("<")) if isinstance(content, dict)
             else np.asarray(content, dtype=dtype))
    return array.reshape(entry["shape"]).astype(dtype)


def decode_bytes(entry: dict) -> bytes:
    """A one-element BYTES tensor: perf_analyzer's serialized form carries a uint32 length prefix."""
    raw = base64.b64decode(entry["content"]["b64"])
    return raw[4: 4 + int.from_bytes(raw[:4], "little")]


def scalar(row: dict, name: str, kind: type, default):
    """An optional one-element input of a request row, as the python models read it."""
    entry = row.get(name)
    if entry is None:
        return default
    if isinstance(entry["content"], dict):
        raise TypeError(f"{name}: expected a JSON value, got b64 content")
    return kind(entry["content"][0])


def graph_feeds(row: dict, layout: dict[str, tuple[np.dtype, int]]) -> dict[str, np.ndarray]:
    """The graph inputs one perf_analyzer request becomes (``-b 1``): Triton puts a batch dimension in front
    of the JSON shape, and the ONNX adapter turns a per-item scalar's ``[batch, 1]`` into the graph's ``[batch]``."""
    feeds = {}
    for name, (dtype, rank) in layout.items():
        value = decode_tensor(row[name], dtype)[None]
        feeds[name] = value.reshape(-1) if rank == 1 and value.ndim == 2 and value.shape[1] == 1 else value
    return feeds


# --------------------------------------------------------------------------------------------- the networks


class TorchNetworks:
    """The PyTorch modules the repository's ONNX graphs are exported from, at its profiles, each with the export
    spec that names (and orders) its inputs and outputs; built on first use. Weights are seeded-random: FLOPs do
    not depend on them (the LAM-A2E network skips ``build_network``'s demo calibration)."""

    def __init__(self, settings, llm_folder: Callable[[], Path]):
        self.settings = settings
        self._llm_folder = llm_folder
        self._networks: dict[str, tuple[Any, Any]] = {}
        self._engine = None

    def get(self, model: str) -> tuple[Any, Any]:
        if model not in self._networks:
            self._networks.update(self._build(model))
        return self._networks[model]

    def _build(self, model: str) -> dict[str, tuple[Any, Any]]:
        import torch

        s = self.settings
        if model == mc.A2E_NETWORK_MODEL:
            from emoserve.lam_a2e.network import LamA2ENetwork
            from export.lam_a2e import A2ENetworkSpec

            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(s.seed)
                return {model: (LamA2ENetwork(s.profile).eval(), A2ENetworkSpec())}
        if model in (mc.EMOTION_VISION_MODEL, mc.EMOTION_AUDIO_MODEL):
            from emoserve.emotion_llama.encoders import build_encoders
            from export.emotion_llama import AudioEncoderSpec, VisionEncoderSpec

            hidden = int(json.loads((self._llm_folder() / "config.json").read_text())["hidden_size"])
            vision, audio = build_encoders(s.encoder_profile, llm_hidden=hidden, seed=s.seed)
            return {mc.EMOTION_VISION_MODEL: (vision, VisionEncoderSpec(llm_hidden=hidden)),
                    mc.EMOTION_AUDIO_MODEL: (audio, AudioEncoderSpec(llm_hidden=hidden))}
        if model in mc.HALLO2_NETWORK_MODELS:
            from export.hallo2 import _networks  # the (module, spec) pairs the repository exports

            return {name: (network.eval(), spec) for name, (network, spec) in _networks(s).items()}
        raise KeyError(f"{model} is not an exported network")

    def layout(self, model: str) -> dict[str, tuple[np.dtype, int]]:
        """Input name -> (numpy dtype, rank) of the exported graph, from the spec's sample input."""
        _, spec = self.get(model)
        sample = spec.get_sample_input(*spec.get_export_sample_shape())
        return {name: (np.dtype(str(t.dtype).replace("torch.", "")), t.ndim) for name, t in zip(spec.get_input_names(), sample)}

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


# --------------------------------------------------------------------------------------------- per-model counts


@dataclass
class NetworkCalls:
    network: str
    engine: str
    calls: float  # per request (a stream's calls are averaged over its chunks)
    flops: float  # all calls of one request together


@dataclass
class ModelCount:
    model: str
    parts: list[NetworkCalls] = field(default_factory=list)
    note: str = ""  # what the request is and what is counted
    error: str = ""  # set when the model could not be counted: why

    @property
    def flops(self) -> float | None:
        return None if self.error or not self.parts else float(sum(p.flops for p in self.parts))

    def flops_by_engine(self) -> dict[str, float]:
        return {engine: sum(p.flops for p in self.parts if p.engine == engine) for engine in dict.fromkeys(p.engine for p in self.parts)}

    @property
    def engine(self) -> str:
        return " + ".join(self.flops_by_engine()) or "—"

    def floor_s(self, rates_gflops: dict[str, float]) -> float | None:
        """Each engine's FLOPs at that engine's sustained rate (a composite may use both)."""
        return None if self.flops is None else sum(f / (rates_gflops[e] * 1e9) for e, f in self.flops_by_engine().items())


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
    note = shapes(graph_feeds(rows[0], layout)) + (f" ({len(rows)} rows, {len(per_shape)} distinct shape(s))" if len(rows) > 1 else "")
    return ModelCount(model, [NetworkCalls(model, ENGINE_ORT, 1, float(np.mean([per_shape[s] for s in signatures])))], note)


def count_a2e_offline(row: dict, nets: TorchNetworks) -> ModelCount:
    """``lam_a2e_offline``: the decoded clip through the network once (the model does not window it)."""
    from emoserve.audio import decode_audio

    audio = decode_audio(decode_bytes(row[mc.AUDIO_BYTES]), SAMPLE_RATE, vocals_only=scalar(row, mc.EX_VOL, bool, False))
    feeds = {mc.NETWORK_AUDIO: audio[None].astype(np.float32), mc.NETWORK_IDENTITY: np.array([scalar(row, mc.ID_IDX, int, 0)], np.int64)}
    _, flops = nets.run(mc.A2E_NETWORK_MODEL, feeds)
    note = (f"WAV decoded to {audio.size} samples ({audio.size / SAMPLE_RATE:.1f} s), one `{mc.A2E_NETWORK_MODEL}` call "
            f"[1, {audio.size}]; post-processing (numpy) not counted")
    return ModelCount(mc.A2E_OFFLINE_MODEL, [NetworkCalls(mc.A2E_NETWORK_MODEL, ENGINE_ORT, 1, flops)], note)


def count_a2e_stream(sequence: list[dict], nets: TorchNetworks) -> ModelCount:
    """``lam_a2e_stream``: one perf_analyzer sequence through ``StreamSessionStore`` (what the Triton model
    runs), every window through the network; per request = per chunk, averaged over the sequence."""
    from emoserve.lam_a2e.postprocess import PostprocessOptions
    from emoserve.lam_a2e.sessions import ChunkRequest, StreamSessionStore

    calls, flops, windows = 0, 0, []

    def run_network(batch: np.ndarray, ids: np.ndarray) -> np.ndarray:
        nonlocal calls, flops
        out, counted = nets.run(mc.A2E_NETWORK_MODEL, {mc.NETWORK_AUDIO: batch, mc.NETWORK_IDENTITY: ids})
        calls, flops = calls + 1, flops + counted
        windows.append(list(batch.shape))
        return out[mc.NETWORK_BLENDSHAPES]

    store, chunk_samples = StreamSessionStore(), []
    for k, step in enumerate(sequence):
        audio = decode_tensor(step[mc.AUDIO], np.float32)
        chunk_samples.append(audio.size)
        options = PostprocessOptions(movement_smooth=scalar(step, mc.MOVEMENT_SMOOTH, bool, False),
                                     brow_movement=scalar(step, mc.BROW_MOVEMENT, bool, False))
        request = ChunkRequest(correlation_id=1, audio=audio[None], start=k == 0, end=k == len(sequence) - 1,
                               id_idx=scalar(step, mc.ID_IDX, int, 0), options=options, seed=scalar(step, mc.SEED, int, None))
        (result,) = store.process([request], run_network)
        if isinstance(result, Exception):
            raise result
    n, chunk = len(sequence), int(np.median(chunk_samples))
    note = (f"{n}-chunk sequence of {chunk}-sample chunks, per chunk: {calls / n:g} `{mc.A2E_NETWORK_MODEL}` call(s) on "
            f"a {windows[0]} window ({WINDOW_SAMPLES - min(chunk, WINDOW_SAMPLES)} samples of left context + the chunk)")
    return ModelCount(mc.A2E_STREAM_MODEL, [NetworkCalls(mc.A2E_NETWORK_MODEL, ENGINE_ORT, calls / n, flops / n)], note)


def count_llm(row: dict, embeddings: np.ndarray, nets: TorchNetworks) -> tuple[NetworkCalls, str]:
    """The engine's whole request (prefill, KV-cache decode steps, label scoring for ``[emotion]`` prompts)."""
    from emoserve.emotion_llama.engine import EngineRequest
    from emoserve.emotion_llama.generation import SamplingParams

    d = SamplingParams()  # what emotion_llama_llm uses for an absent input
    params = SamplingParams(temperature=scalar(row, mc.TEMPERATURE, float, d.temperature), top_p=scalar(row, mc.TOP_P, float, d.top_p),
                            repetition_penalty=scalar(row, mc.REPETITION_PENALTY, float, d.repetition_penalty),
                            max_new_tokens=scalar(row, mc.MAX_NEW_TOKENS, int, d.max_new_tokens), seed=scalar(row, mc.SEED, int, None))
    engine, tokens = nets.engine(), []  # tokens of every forward call: the prefill's, then 1 per decode step
    hook = engine.model.register_forward_pre_hook(
        lambda module, args, kwargs: tokens.append(int(kwargs["inputs_embeds"].shape[1]) if kwargs.get("inputs_embeds") is not None else 0),
        with_kwargs=True)
    try:
        (outcome,), flops = count_flops(engine.run, [EngineRequest(question=str(row[mc.PROMPT]["content"][0]),
                                                                   multimodal=embeddings, params=params)])
    finally:
        hook.remove()
    if isinstance(outcome, Exception):
        raise outcome
    note = (f"{tokens[0] if tokens else 0}-token prefill ({NUM_MULTIMODAL_TOKENS} multimodal embeddings + prompt), "
            f"{len(outcome.token_ids)} generated tokens ({outcome.finish_reason}), greedy = {params.greedy}")
    return NetworkCalls(mc.EMOTION_LLM_MODEL, ENGINE_TORCH, len(tokens), flops), note


def count_emotion_llm(row: dict, nets: TorchNetworks) -> ModelCount:
    embeddings = decode_tensor(row[mc.MULTIMODAL_EMBEDDINGS], np.float32)
    part, note = count_llm(row, embeddings.reshape(embeddings.shape[-2:]), nets)
    return ModelCount(mc.EMOTION_LLM_MODEL, [part], note)


def count_emotion_pipeline(row: dict, nets: TorchNetworks) -> ModelCount:
    """``emotion_llama``: decode, first frame, audio track (or a silent second), both encoders, then the LLM."""
    from emoserve.emotion_llama.preprocess import preprocess_frame
    from emoserve.media import decode_video

    decoded = decode_video(decode_bytes(row[mc.VIDEO]), max_audio_seconds=nets.settings.emotion_audio_seconds)
    pixels = preprocess_frame(decoded.first_frame)[None].astype(np.float32)
    audio = decoded.audio if decoded.audio is not None and decoded.audio.size else np.zeros(SAMPLE_RATE, np.float32)
    vision, vision_flops = nets.run(mc.EMOTION_VISION_MODEL, {mc.PIXEL_VALUES: pixels})
    features, audio_flops = nets.run(mc.EMOTION_AUDIO_MODEL, {mc.AUDIO_INPUT_VALUES: audio[None].astype(np.float32)})
    embeddings = np.concatenate([vision[mc.IMAGE_TOKENS][0], features[mc.FEATURE_TOKENS][0], vision[mc.CLS_TOKEN][0]])
    llm, llm_note = count_llm(row, embeddings.astype(np.float32), nets)
    return ModelCount(mc.EMOTION_PIPELINE_MODEL, [NetworkCalls(mc.EMOTION_VISION_MODEL, ENGINE_ORT, 1, vision_flops),
                                                  NetworkCalls(mc.EMOTION_AUDIO_MODEL, ENGINE_ORT, 1, audio_flops), llm],
                      f"video decoded: pixels {list(pixels.shape)}, audio [1, {audio.size}]; LLM: {llm_note}; video decode and "
                      "preprocessing not counted")


def count_hallo2_pipeline(row: dict, nets: TorchNetworks) -> ModelCount:
    """``hallo2``: the model's input handling and ``Hallo2Pipeline.run`` over ``ServedHallo2Networks`` with a
    caller that runs the torch modules and counts every call."""
    from emoserve.audio import decode_audio
    from emoserve.hallo2.pipeline import GenerationSettings, Hallo2Pipeline
    from emoserve.hallo2.profile import HALLO2_PROFILES
    from emoserve.hallo2.served_networks import ServedHallo2Networks
    from emoserve.hallo2.video import decode_image

    image = decode_image(decode_bytes(row[mc.HALLO2_IMAGE]))
    audio = decode_audio(decode_bytes(row[mc.AUDIO_BYTES]), SAMPLE_RATE)
    d = GenerationSettings()
    settings = GenerationSettings(steps=scalar(row, mc.INFERENCE_STEPS, int, d.steps), seed=scalar(row, mc.SEED, int, d.seed),
                                  guidance_scale=scalar(row, mc.GUIDANCE_SCALE, float, d.guidance_scale),
                                  use_cache=scalar(row, mc.USE_CACHE, bool, True))
    calls, flops = Counter(), Counter()

    def caller(model: str, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        result, counted = nets.run(model, inputs)
        calls[model] += 1
        flops[model] += counted
        return {name: result[name] for name in outputs}

    features = len(nets.get(mc.HALLO2_REFERENCE_UNET_MODEL)[1].get_output_names())
    pipeline = Hallo2Pipeline(ServedHallo2Networks(caller, features), HALLO2_PROFILES[nets.settings.hallo2_profile])
    video = pipeline.run(image, audio, settings)
    note = (f"portrait {image.shape[1]}x{image.shape[0]} + {audio.size / SAMPLE_RATE:.2f} s audio -> "
            f"{video.info['clips']} clips x {settings.steps} steps, guidance {settings.guidance_scale:g} "
            f"({'CFG batch 2' if settings.guidance_scale > 1 else 'no CFG'}), face found: {video.info['face_found']}; "
            "face detection/mesh (mediapipe TFLite), DDIM and MP4 muxing not counted")
    return ModelCount(mc.HALLO2_PIPELINE_MODEL, [NetworkCalls(m, ENGINE_ORT, calls[m], flops[m]) for m in mc.HALLO2_NETWORK_MODELS
                                                 if calls[m]], note)


# --------------------------------------------------------------------------------------------- all models


def count_models(models: list[str], nets: TorchNetworks, data_dir: Path) -> list[ModelCount]:
    """A :class:`ModelCount` per model (``error`` set where it could not be counted) on perf_analyzer's requests.
    Runs torch on one thread: counting needs the shapes only, and on 2 busy cores OpenMP's synchronisation makes
    the thousands of tiny ops of the tiny networks many times slower."""
    import torch

    special: dict[str, Callable[[list, TorchNetworks], ModelCount]] = {
        mc.A2E_OFFLINE_MODEL: lambda rows, n: count_a2e_offline(rows[0], n),
        mc.A2E_STREAM_MODEL: lambda rows, n: count_a2e_stream(rows[0], n),
        mc.EMOTION_LLM_MODEL: lambda rows, n: count_emotion_llm(rows[0], n),
        mc.EMOTION_PIPELINE_MODEL: lambda rows, n: count_emotion_pipeline(rows[0], n),
        mc.HALLO2_PIPELINE_MODEL: lambda rows, n: count_hallo2_pipeline(rows[0], n),
    }
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    counts = []
    try:
        for model in models:
            path = data_dir / f"{model}.json"
            if not path.is_file():
                counts.append(ModelCount(model, error=f"not counted: no request (`{path.name}` missing: run benchmarks.perf_analyzer)"))
                continue
            rows, started = json.loads(path.read_text())["data"], time.perf_counter()
            try:
                count = special[model](rows, nets) if model in special else count_network(model, rows, nets)
            except Exception as exc:  # noqa: BLE001  (a model that cannot be counted is reported, not fatal)
                log.exception("counting %s failed", model)
                count = ModelCount(model, error=f"not counted: {type(exc).__name__}: {exc}"[:300])
            log.info("%s: %s in %.1f s", model, f"{count.flops / 1e9:.4g} GFLOP" if count.flops is not None else count.error,
                     time.perf_counter() - started)
            counts.append(count)
    finally:
        torch.set_num_threads(threads)
    return counts


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
        model = target["model"]
        if result.get("skipped") or level is None or not level["ok"]:
            out[model] = Measured(note=f"not run: {result['skipped']}" if result.get("skipped") else "no concurrency-1 level"
                                  if level is None else f"not measured: {level['error']}"[:200])
            continue
        try:
            out[model] = Measured(pa.server_compute_us(level["row"]) / 1000, float(level["row"]["p50 latency"]) / 1000)
        except (KeyError, ValueError) as exc:
            out[model] = Measured(note=f"unreadable row: {exc}")
    return out


# --------------------------------------------------------------------------------------------- report


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


FLOOR_HEADER = ["model", "engine", "GFLOP / request", "floor ms", "server compute ms", "p50 ms", "compute / floor",
                "p50 / floor", "request and what is counted"]

FLOOR_EXPLANATION = (
    "**Floor** = FLOPs of one perf_analyzer request (`torch.utils.flop_counter`, 1 multiply-add = 2 FLOPs, on the PyTorch "
    "modules the ONNX graphs are exported from, at the exact inputs perf_analyzer sends) / this machine's *sustained* fp32 "
    "GEMM rate of the engine that runs it (a composite using both engines adds the two). It ignores memory bandwidth, "
    "elementwise work, small-matrix inefficiency and every per-request cost (gRPC, IPC, BLS, decoding), so it is a lower "
    "bound: ratios ≫ 1 mean fixed overheads dominate. *compute / floor* = Triton's server compute at concurrency 1 over the "
    "floor; *p50 / floor* adds the client, gRPC and queueing. Below 1x: the network beat one big fp32 MatMul's rate, or the "
    "machine was busier during the GEMM.")


def floor_rows(counts: list[ModelCount], rates: dict[str, float], measured: dict[str, Measured]) -> list[list[str]]:
    rows = []
    for count in counts:
        floor_s = count.floor_s(rates)
        floor_ms = None if floor_s is None else floor_s * 1000
        # without a perf_analyzer JSON every measured cell is "—" and the header says why; with one, say per row
        m = measured.get(count.model, Measured(note="not in the perf_analyzer run" if measured else ""))
        note = (count.error or count.note) + (f"; perf_analyzer: {m.note}" if m.note else "")
        rows.append([f"`{count.model}`", count.engine, "—" if count.flops is None else f"{count.flops / 1e9:.3g}", fmt_ms(floor_ms),
                     fmt_ms(m.compute_ms), fmt_ms(m.p50_ms), fmt_ratio(m.compute_ms, floor_ms), fmt_ratio(m.p50_ms, floor_ms),
                     note.replace("|", "/")])
    return rows


def write_outputs(header_lines: list[str], counts: list[ModelCount], gemm: dict[str, GemmRate], measured: dict[str, Measured],
                  md_path: Path, self_check: list[tuple[str, int, int]], uncounted_ops: dict[str, int]) -> str:
    report = Report()
    report.add("\n".join(header_lines) + "\n")
    rates = {engine: rate.sustained for engine, rate in gemm.items()}
    report.table("Measured time over floor", FLOOR_HEADER, floor_rows(counts, rates, measured), note=FLOOR_EXPLANATION)
    covered = [c for c in counts if c.flops is not None]
    with_measured = [c for c in covered if measured.get(c.model, Measured()).compute_ms is not None]
    check = ("not run" if not self_check else "all match: " + ", ".join(what for what, _, _ in self_check)
             if all(got == want for _, got, want in self_check) else
             "**mismatch**: " + ", ".join(f"{what} {got} vs {want}" for what, got, want in self_check if got != want))
    summary = [
        *[[f"{rate.engine} GEMM sustained / best", f"{rate.sustained:.1f} / {rate.best:.1f} GFLOP/s ({rate.size}² fp32)"]
          for rate in gemm.values()],
        ["models covered (FLOPs counted)", f"{len(covered)} of {len(counts)} models perf_analyzer drives"],
        ["models with measured time", f"{len(with_measured)} of {len(covered)}"],
        ["not counted", "; ".join(f"`{c.model}`: {c.error}" for c in counts if c.flops is None) or "none"],
        ["FLOP counter self-check (counted = analytic)", check],
        ["matmul-like ops seen without a FLOP formula",
         ", ".join(f"`{op}` ×{n}" for op, n in uncounted_ops.items()) or "none (every mm/conv/attention op was counted)"],
    ]
    report.table("Summary", ["item", "value"], [[k, v.replace("|", "/")] for k, v in summary])
    return report.write(md_path)


# --------------------------------------------------------------------------------------------- main


def run(args: argparse.Namespace) -> int:
    from export.emotion_llama import LLM_FOLDER

    started_at, started, load_before = _dt.datetime.now(_dt.timezone.utc), time.perf_counter(), load_average()
    md_path = args.out or RESULTS_DIR / ("floor-quick.md" if args.quick else "floor.md")
    perf_json = args.perf_json or pa.outputs_for(args.quick)[1]
    size, seconds = args.gemm_size or (1024 if args.quick else 2048), args.gemm_seconds or (2.0 if args.quick else 6.0)
    window_s = 0.25 if args.quick else 1.0
    # GEMM first, on a quiet process (nothing else of this script is running yet)
    gemm = {rate.engine: rate for rate in (measure(size, seconds, window_s) for measure in (onnxruntime_gemm_rate, torch_gemm_rate))}
    build = pa.build_settings(args.a2e_profile)
    # the LLM of the repository benchmarks.perf_analyzer built (its config also gives the encoders' output width)
    llm_folder = WORK_DIR / f"repo-pa-{args.a2e_profile}" / mc.EMOTION_LLM_MODEL / "1" / LLM_FOLDER
    self_check = counter_self_check()
    UNCOUNTED_COMPUTE_OPS.clear()
    models = list(dict.fromkeys(target.model for target in pa.targets(args.quick)))  # every model perf_analyzer drives
    counts = count_models(models, TorchNetworks(build, lambda: llm_folder), pa.DATA_DIR)
    summary = json.loads(perf_json.read_text()) if perf_json.is_file() else {}
    date = next((x[len("- date: "):] for x in summary.get("header", []) if x.startswith("- date: ")), "")
    shown = perf_json.resolve().relative_to(PROJECT_ROOT) if perf_json.resolve().is_relative_to(PROJECT_ROOT) else perf_json
    header = [
        f"# FLOP floor — measured time over floor{' (quick)' if args.quick else ''}", "",
        f"- date: {started_at.isoformat(timespec='seconds')}",
        f"- command: `python -m benchmarks.floor{' --quick' if args.quick else ''}"
        f"{f' --a2e-profile {args.a2e_profile}' if args.a2e_profile != 'tiny' else ''}` (from the repository root); "
        f"{time.perf_counter() - started:.0f} s",
        f"- GEMM rate (fp32, {size}×{size}, {seconds:g} s per engine in {window_s:g} s windows): "
        + ", ".join(f"{r.engine} sustained {r.sustained:.1f} GFLOP/s (best {r.best:.1f})" for r in gemm.values())
        + "; floors use the sustained rate of the engine that runs the model (torch for `emotion_llama_llm`)",
        f"- counted modules: LAM-A2E `{build.profile}`, Emotion-LLaMA LLM `{build.llm}` + `{build.encoder_profile}` encoders, "
        f"Hallo2 `{build.hallo2_profile}` (`perf_analyzer.build_settings`), seeded-random weights",
        f"- requests: perf_analyzer's input data in `{pa.DATA_DIR.relative_to(PROJECT_ROOT)}/`",
        f"- measured: `{shown}` (perf_analyzer run of {date}), concurrency 1, gRPC" if summary else
        f"- measured: `{shown}` is missing — the measured columns are \"—\" (run benchmarks.perf_analyzer first)",
        *environment_lines(versions(None, ("onnxruntime", "torch", "onnx", "transformers", "numpy"))),
        f"- load average (1/5/15 min) at start {load_before}, at end {load_average()} — other work on the machine lowers the GEMM rate",
    ]
    write_outputs(header, counts, gemm, measured_at_concurrency_1(summary), md_path, self_check, dict(UNCOUNTED_COMPUTE_OPS))
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1024² GEMMs for 2 s per engine; perf_analyzer-quick's rows")
    parser.add_argument("--a2e-profile", choices=("tiny", "full"), default="tiny",
                        help="LAM-A2E network size of the perf_analyzer repository (default tiny)")
    parser.add_argument("--perf-json", type=Path, default=None,
                        help="perf_analyzer's parsed rows (default benchmarks/.work/perf_analyzer[-quick].json)")
    parser.add_argument("--out", type=Path, default=None, help="markdown report (default benchmarks/results/floor[-quick].md)")
    parser.add_argument("--gemm-size", type=int, default=None, help="GEMM matrix side (default 2048, 1024 with --quick)")
    parser.add_argument("--gemm-seconds", type=float, default=None, help="GEMM seconds per engine (default 6, 2 with --quick)")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

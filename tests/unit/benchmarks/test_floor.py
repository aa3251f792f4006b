"""benchmarks.floor: the FLOP counts against analytic formulas, the GEMM measurement and the report (no server)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from benchmarks import floor
from benchmarks import perf_analyzer as pa
from benchmarks.run_all import md_sections
from emoserve.constants import WINDOW_SAMPLES
from emoserve.model_catalog import A2E_NETWORK_MODEL, A2E_STREAM_MODEL, AUDIO, ID_IDX, NETWORK_AUDIO, NETWORK_IDENTITY


@pytest.fixture(scope="module")
def tiny_nets() -> floor.TorchNetworks:
    # only the LAM-A2E network is used here, so no LLM folder is needed
    return floor.TorchNetworks(pa.build_settings("tiny"), llm_folder=lambda: None)


def test_linear_counts_two_flops_per_multiply_add():
    batch, tokens, width_in, width_out = 3, 5, 12, 7
    _, flops = floor.count_flops(nn.Linear(width_in, width_out), torch.randn(batch, tokens, width_in))
    assert flops == 2 * batch * tokens * width_in * width_out  # the bias add is elementwise: not counted


def test_transformer_attention_matmuls_are_counted():
    """One wav2vec2 attention block (the A2E / HuBERT encoders): 4 projections + QK^T + AV."""
    from emoserve.nn.wav2vec2 import Wav2Vec2Attention

    batch, frames, width, heads = 2, 9, 16, 4
    counter = floor.flop_counter()
    with torch.no_grad(), counter:
        Wav2Vec2Attention(width, heads)(torch.randn(batch, frames, width))
    projections = 4 * 2 * batch * frames * width * width
    attention = 2 * 2 * batch * frames * frames * width  # QK^T and AV over all heads
    assert counter.get_total_flops() == projections + attention
    by_op = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    assert by_op["aten.bmm"] == attention


def test_cpu_sdpa_attention_is_counted():
    """The Hallo2 UNets' cross-attention goes through F.scaled_dot_product_attention, whose CPU kernel the stock
    counter skips: floor.flop_counter must count it (with a mask, as the UNets call it)."""
    from emoserve.hallo2.unet import Attention

    n, q_tokens, kv_tokens, width, context_width, heads, dim_head = 2, 6, 4, 16, 8, 2, 8
    inner = heads * dim_head
    x, context = torch.randn(n, q_tokens, width), torch.randn(n, kv_tokens, context_width)
    bias = torch.zeros(n, 1, q_tokens, kv_tokens)
    _, flops = floor.count_flops(Attention(width, heads, dim_head, cross_attention_dim=context_width), x, context, bias)
    projections = 2 * n * (q_tokens * width * inner + 2 * kv_tokens * context_width * inner + q_tokens * inner * width)
    attention = 2 * 2 * n * heads * q_tokens * kv_tokens * dim_head
    assert flops == projections + attention
    with torch.no_grad(), torch.utils.flop_counter.FlopCounterMode(display=False) as stock:
        Attention(width, heads, dim_head, cross_attention_dim=context_width)(x, context, bias)
    assert stock.get_total_flops() == projections  # why the custom formula exists


def test_counter_self_check_covers_convolutions_and_attention():
    checks = floor.counter_self_check()
    assert {"conv1d", "conv2d", "conv3d"} <= {what for what, _, _ in checks}
    assert all(got == want for _, got, want in checks), checks


def test_audit_flags_a_matmul_without_formula():
    floor.UNCOUNTED_COMPUTE_OPS.clear()
    floor.count_flops(nn.Linear(4, 3), torch.randn(2, 4))
    assert not floor.UNCOUNTED_COMPUTE_OPS  # aten.linear is decomposed and counted, not flagged
    floor.count_flops(torch.dot, torch.randn(5), torch.randn(5))
    assert floor.UNCOUNTED_COMPUTE_OPS == {"aten.dot": 1}
    floor.UNCOUNTED_COMPUTE_OPS.clear()


def test_tiny_a2e_count_doubles_with_the_batch(tiny_nets):
    audio = np.random.default_rng(0).standard_normal((2, 8000)).astype(np.float32) * 0.1
    ids = np.array([0, 5], np.int64)
    _, one = tiny_nets.run(A2E_NETWORK_MODEL, {NETWORK_AUDIO: audio[:1], NETWORK_IDENTITY: ids[:1]})
    _, two = tiny_nets.run(A2E_NETWORK_MODEL, {NETWORK_AUDIO: audio, NETWORK_IDENTITY: ids})
    assert one > 0 and two == 2 * one


def test_graph_feeds_add_the_batch_and_flatten_per_item_scalars(tiny_nets):
    row = {NETWORK_AUDIO: pa.tensor(np.zeros(500, np.float32)), NETWORK_IDENTITY: {"content": [3], "shape": [1]}}
    feeds = floor.graph_feeds(row, tiny_nets.layout(A2E_NETWORK_MODEL))
    assert feeds[NETWORK_AUDIO].shape == (1, 500) and feeds[NETWORK_AUDIO].dtype == np.float32
    assert feeds[NETWORK_IDENTITY].tolist() == [3] and feeds[NETWORK_IDENTITY].dtype == np.int64
    assert floor.decode_bytes(pa.bytes_tensor(b"RIFF....")) == b"RIFF...."


def test_stream_request_is_one_window_per_chunk(tiny_nets):
    chunks = np.random.default_rng(1).standard_normal((3, 16000)).astype(np.float32) * 0.1
    sequence = [{AUDIO: pa.tensor(chunk), ID_IDX: {"content": [0], "shape": [1]}} for chunk in chunks]
    count = floor.count_a2e_stream(sequence, tiny_nets)
    window = np.zeros((1, WINDOW_SAMPLES), np.float32)
    _, per_window = tiny_nets.run(A2E_NETWORK_MODEL, {NETWORK_AUDIO: window, NETWORK_IDENTITY: np.zeros(1, np.int64)})
    assert count.model == A2E_STREAM_MODEL
    assert [(p.network, p.calls) for p in count.parts] == [(A2E_NETWORK_MODEL, 1)]
    assert count.flops == per_window


def test_gemm_rate_with_a_tiny_window_is_positive():
    for measure in (floor.onnxruntime_gemm_rate, floor.torch_gemm_rate):
        rate = measure(64, seconds=0.02, window_s=0.005, warmup_s=0.0)
        assert rate.window_gflops and rate.sustained > 0 and rate.best >= rate.sustained and rate.calls >= 1


def test_ratio_formatting():
    assert floor.fmt_ratio(37.2, 1.0) == "37.2x"
    assert floor.fmt_ratio(1.5, 2.0) == "0.75x"
    assert floor.fmt_ratio(12345.0, 1.0) == "12,345x"
    assert floor.fmt_ratio(None, 1.0) == floor.fmt_ratio(3.0, None) == floor.fmt_ratio(3.0, 0.0) == "—"


def test_report_without_perf_analyzer_rows(tmp_path):
    counts = [
        floor.ModelCount("net_a", [floor.NetworkCalls("net_a", floor.ENGINE_ORT, 1, 2e9)], "x [1, 4]"),
        floor.ModelCount("composite", [floor.NetworkCalls("net_a", floor.ENGINE_ORT, 2, 4e9),
                                       floor.NetworkCalls("llm decode step", floor.ENGINE_TORCH, 3, 1e9)]),
        floor.ModelCount("broken", error="not counted: no request"),
    ]
    gemm = {engine: floor.GemmRate(engine, 64, "1", [10.0, 20.0, 30.0], 3) for engine in (floor.ENGINE_ORT, floor.ENGINE_TORCH)}
    measured = floor.measured_at_concurrency_1({"results": [
        {"target": {"model": "net_a", "protocol": "grpc"}, "skipped": "",
         "levels": [{"concurrency": 1, "ok": True, "error": "",
                     "row": {"p50 latency": "800000", "Server Compute Input": "100", "Server Compute Infer": "200000",
                             "Server Compute Output": "99900"}}]},
        {"target": {"model": "composite", "protocol": "grpc"}, "skipped": "",
         "levels": [{"concurrency": 1, "ok": False, "error": "rc 99: failed", "row": {}}]},
    ]})
    assert measured["net_a"].compute_ms == pytest.approx(300.0) and measured["composite"].compute_ms is None
    md = tmp_path / "floor.md"
    text = floor.write_outputs(["# test"], counts, gemm, measured, md, [], {})
    assert "### Measured time over floor" in text and md.read_text() == text
    section = md_sections(text, "Measured time over floor")  # what run_all copies into RESULTS.md
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in section.splitlines()
            if line.startswith("| `")}
    # net_a: 2 GFLOP at the 20 GFLOP/s median = 100 ms; compute 300 ms, p50 800 ms
    assert rows["`net_a`"][:7] == ["onnxruntime", "2", "100.0", "300.0", "800.0", "3.00x", "8.00x"]
    # composite: both engines add up (4 + 1 GFLOP at 20 GFLOP/s = 250 ms), measured level failed -> "—"
    assert rows["`composite`"][:7] == ["onnxruntime + torch", "5", "250.0", "—", "—", "—", "—"]
    assert "not measured: rc 99" in rows["`composite`"][7]
    assert rows["`broken`"][1:4] == ["—", "—", "—"] and "not counted" in rows["`broken`"][7]
    no_data = floor.write_outputs(["# test"], counts[:1], gemm, {}, md, [], {})
    assert "| `net_a` | onnxruntime | 2 | 100.0 | — | — | — | — | x [1, 4] |" in no_data

"""Unit tests for emoserve.lam_a2e.streaming with a deterministic fake network (no torch)."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from emoserve.constants import NUM_BLENDSHAPES, SAMPLE_RATE, WINDOW_FRAMES, WINDOW_SAMPLES, num_output_frames
from emoserve.lam_a2e.postprocess import LEFT_RIGHT_PAIRS, PostprocessOptions, blendshape_index
from emoserve.lam_a2e.streaming import (
    MAX_SUBCHUNK_SAMPLES,
    StreamContext,
    finish_subchunk,
    new_stream_context,
    prepare_window,
    process_chunk,
    split_chunk,
)

_CHANNEL_WEIGHTS = np.linspace(-2.0, 2.0, NUM_BLENDSHAPES)


def fake_network(windows: np.ndarray, id_idx: np.ndarray) -> np.ndarray:
    """Sigmoid of the per-frame mean |audio| plus its running mean (so the left context matters)."""
    windows = np.asarray(windows, dtype=np.float64)
    assert windows.ndim == 2 and windows.shape[1] == WINDOW_SAMPLES
    edges = (np.arange(WINDOW_FRAMES + 1) * WINDOW_SAMPLES) // WINDOW_FRAMES
    envelope = np.stack([np.abs(windows[:, a:b]).mean(axis=1) for a, b in zip(edges[:-1], edges[1:])], axis=1)
    running = np.cumsum(envelope, axis=1) / np.arange(1, WINDOW_FRAMES + 1)
    ids = np.asarray(id_idx, dtype=np.float64).reshape(-1, 1, 1)
    z = 8.0 * envelope[..., None] * _CHANNEL_WEIGHTS + 6.0 * running[..., None] - 1.0 + 0.05 * ids
    return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)


class CountingNetwork:
    def __init__(self):
        self.calls: list[tuple[tuple[int, ...], np.ndarray]] = []

    def __call__(self, windows, id_idx):
        self.calls.append((windows.shape, np.array(id_idx)))
        return fake_network(windows, id_idx)


def speech_like(seconds: float, seed: int = 0) -> np.ndarray:
    """Amplitude-modulated noise with a few quiet gaps."""
    n = int(round(seconds * SAMPLE_RATE))
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SAMPLE_RATE
    envelope = 0.15 * (0.6 + 0.4 * np.sin(2 * np.pi * 3.0 * t + seed)) * (np.sin(2 * np.pi * 0.4 * t + seed) > -0.7)
    return (rng.normal(0, 1, n) * envelope).astype(np.float32)


def run_chunks(ctx: StreamContext, audio: np.ndarray, sizes: list[int], network=fake_network) -> list[np.ndarray]:
    outputs, start = [], 0
    for size in sizes:
        outputs.append(process_chunk(ctx, audio[start : start + size], network))
        start += size
    return outputs


def snapshot(ctx: StreamContext) -> dict:
    return {
        "previous_audio": ctx.previous_audio.copy(),
        "previous_expression": None if ctx.previous_expression is None else ctx.previous_expression.copy(),
        "previous_volume": None if ctx.previous_volume is None else ctx.previous_volume.copy(),
        "counters": (ctx.samples_seen, ctx.frames_emitted, ctx.chunks_seen),
        "rng": copy.deepcopy(ctx.rng.bit_generator.state),
        "blink": (ctx.blink_state.next_blink_frame, ctx.blink_state.pending.copy()),
    }


def assert_snapshot_equal(a: dict, b: dict):
    np.testing.assert_array_equal(a["previous_audio"], b["previous_audio"])
    for key in ("previous_expression", "previous_volume"):
        assert (a[key] is None) == (b[key] is None)
        if a[key] is not None:
            np.testing.assert_array_equal(a[key], b[key])
    assert a["counters"] == b["counters"]
    assert a["rng"] == b["rng"]
    assert a["blink"][0] == b["blink"][0]
    np.testing.assert_array_equal(a["blink"][1], b["blink"][1])


# --- frame accounting -----------------------------------------------------------------------------


def test_five_one_second_chunks_give_150_frames():
    ctx = new_stream_context(0, PostprocessOptions(), seed=1)
    audio = speech_like(5.0)
    outputs = run_chunks(ctx, audio, [SAMPLE_RATE] * 5)
    assert [o.shape for o in outputs] == [(30, NUM_BLENDSHAPES)] * 5
    frames = np.concatenate(outputs)
    assert frames.shape == (150, NUM_BLENDSHAPES) == (num_output_frames(audio.size), NUM_BLENDSHAPES)
    assert frames.dtype == np.float32 and frames.min() >= 0 and frames.max() <= 1
    assert (ctx.samples_seen, ctx.frames_emitted, ctx.chunks_seen) == (80000, 150, 5)
    for left, right in LEFT_RIGHT_PAIRS:
        np.testing.assert_array_equal(frames[:, blendshape_index(left)], frames[:, blendshape_index(right)])


@pytest.mark.parametrize(
    "sizes",
    [
        [11200, 20800, 40000],  # 0.7 s, 1.3 s, 2.5 s
        [1234, 5555, 17, 1, 999, 32000, 32001, 70000, 0, 533, 534],
        [100] * 50,
    ],
)
def test_uneven_chunks_total_matches_whole_file(sizes):
    ctx = new_stream_context(3, PostprocessOptions(movement_smooth=True, brow_movement=True), seed=9)
    audio = speech_like(sum(sizes) / SAMPLE_RATE, seed=2)[: sum(sizes)]
    outputs = run_chunks(ctx, audio, sizes)
    cumulative, emitted = 0, 0
    for size, out in zip(sizes, outputs):
        cumulative += size
        assert out.shape == (num_output_frames(cumulative) - emitted, NUM_BLENDSHAPES)
        emitted += out.shape[0]
    assert emitted == num_output_frames(sum(sizes)) == ctx.frames_emitted
    frames = np.concatenate(outputs)
    assert np.all(np.isfinite(frames)) and frames.min() >= 0 and frames.max() <= 1


def test_uneven_example_is_135_frames():
    ctx = new_stream_context(0, PostprocessOptions(), seed=0)
    outputs = run_chunks(ctx, speech_like(4.5), [11200, 20800, 40000])
    assert [o.shape[0] for o in outputs] == [21, 39, 75]
    assert sum(o.shape[0] for o in outputs) == num_output_frames(72000) == 135


# --- splitting ------------------------------------------------------------------------------------


def test_split_chunk():
    assert split_chunk(np.zeros(0, np.float32)) == []
    assert [p.size for p in split_chunk(np.zeros(32000))] == [32000]
    assert [p.size for p in split_chunk(np.zeros(32001))] == [16001, 16000]
    audio = np.arange(100000, dtype=np.float32)
    pieces = split_chunk(audio)
    assert len(pieces) == 4 and all(p.size <= MAX_SUBCHUNK_SAMPLES for p in pieces)
    assert all(p.dtype == np.float32 for p in pieces)
    np.testing.assert_array_equal(np.concatenate(pieces), audio)
    assert [p.size for p in split_chunk(audio[None, :])] == [25000] * 4  # [1, N] accepted
    with pytest.raises(ValueError):
        split_chunk(np.zeros((2, 100)))


def test_long_chunk_is_processed_in_subchunks():
    network = CountingNetwork()
    ctx = new_stream_context(5, PostprocessOptions(), seed=0)
    out = process_chunk(ctx, speech_like(5.0), network)
    assert out.shape == (150, NUM_BLENDSHAPES)
    assert len(network.calls) == 3  # 80000 samples -> 3 sub-chunks of <= 32000
    for shape, ids in network.calls:
        assert shape == (1, WINDOW_SAMPLES)
        np.testing.assert_array_equal(ids, [5])
        assert ids.dtype == np.int64
    assert ctx.chunks_seen == 1
    # the same as feeding those sub-chunks one by one
    ctx2 = new_stream_context(5, PostprocessOptions(), seed=0)
    parts = [process_chunk(ctx2, p, fake_network) for p in split_chunk(speech_like(5.0))]
    np.testing.assert_array_equal(np.concatenate(parts), out)


def test_oversized_subchunk_rejected():
    ctx = new_stream_context(0, PostprocessOptions(), seed=0)
    with pytest.raises(ValueError):
        prepare_window(ctx, np.zeros(MAX_SUBCHUNK_SAMPLES + 1, np.float32))


# --- empty chunks ---------------------------------------------------------------------------------


def test_empty_chunk():
    network = CountingNetwork()
    ctx = new_stream_context(0, PostprocessOptions(), seed=0)
    before = snapshot(ctx)
    out = process_chunk(ctx, np.zeros(0, np.float32), network)
    assert out.shape == (0, NUM_BLENDSHAPES) and out.dtype == np.float32
    assert network.calls == []
    assert_snapshot_equal(before, snapshot(ctx))
    process_chunk(ctx, speech_like(1.0), network)
    before = snapshot(ctx)
    out = process_chunk(ctx, np.array([], dtype=np.float32), network)
    assert out.shape == (0, NUM_BLENDSHAPES)
    assert_snapshot_equal(before, snapshot(ctx))
    # prepare/finish with an empty sub-chunk are harmless too
    window, n_new = prepare_window(ctx, np.zeros(0, np.float32))
    assert window.shape == (WINDOW_SAMPLES,) and n_new == 0
    out = finish_subchunk(ctx, np.zeros(0, np.float32), np.zeros((WINDOW_FRAMES, NUM_BLENDSHAPES), np.float32), 0)
    assert out.shape == (0, NUM_BLENDSHAPES)
    assert_snapshot_equal(before, snapshot(ctx))


def test_tiny_subchunk_without_a_new_frame_is_carried():
    ctx = new_stream_context(0, PostprocessOptions(), seed=0)
    process_chunk(ctx, speech_like(1.0), fake_network)  # 16000 samples = exactly 30 frames
    window, n_new = prepare_window(ctx, np.full(1, 0.5, np.float32))
    assert n_new == 1  # the 16001st sample starts frame 30
    process_chunk(ctx, np.full(1, 0.5, np.float32), fake_network)
    window, n_new = prepare_window(ctx, np.full(100, 0.5, np.float32))
    assert n_new == 0
    network = CountingNetwork()
    out = process_chunk(ctx, np.full(100, 0.5, np.float32), network)
    assert out.shape == (0, NUM_BLENDSHAPES) and network.calls == []
    assert ctx.samples_seen == 16101 and ctx.previous_audio[-1] == np.float32(0.5)


# --- context --------------------------------------------------------------------------------------


def test_prepare_window_uses_real_previous_audio():
    audio = speech_like(3.0, seed=4)
    ctx = new_stream_context(0, PostprocessOptions(), seed=0)
    first = audio[:SAMPLE_RATE]
    window0, n0 = prepare_window(ctx, first)
    # no history yet: zero-filled on the left
    assert n0 == 30
    np.testing.assert_array_equal(window0[: WINDOW_SAMPLES - first.size], 0)
    np.testing.assert_array_equal(window0[WINDOW_SAMPLES - first.size :], first)
    process_chunk(ctx, first, fake_network)
    second = audio[SAMPLE_RATE : 2 * SAMPLE_RATE]
    window1, _ = prepare_window(ctx, second)
    context_length = WINDOW_SAMPLES - second.size  # 18133 > 16000 samples of history
    np.testing.assert_array_equal(window1[context_length - SAMPLE_RATE : context_length], first)
    np.testing.assert_array_equal(window1[: context_length - SAMPLE_RATE], 0)
    np.testing.assert_array_equal(window1[context_length:], second)
    process_chunk(ctx, second, fake_network)
    third = audio[2 * SAMPLE_RATE :]
    window2, _ = prepare_window(ctx, third)
    np.testing.assert_array_equal(window2[:context_length], audio[: 2 * SAMPLE_RATE][-context_length:])
    # the upstream (buggy) behaviour would zero-fill the context: the network output differs
    zero_filled = np.concatenate([np.zeros(context_length, np.float32), third])
    assert not np.array_equal(window2, zero_filled)
    assert not np.allclose(fake_network(window2[None], np.zeros(1, np.int64))[0, -30:],
                           fake_network(zero_filled[None], np.zeros(1, np.int64))[0, -30:])
    assert ctx.previous_audio.size == 2 * SAMPLE_RATE
    process_chunk(ctx, third, fake_network)
    process_chunk(ctx, speech_like(2.0, seed=5), fake_network)
    assert ctx.previous_audio.size == WINDOW_SAMPLES
    assert ctx.previous_expression.shape == (WINDOW_FRAMES, NUM_BLENDSHAPES)
    assert ctx.previous_volume.shape == (WINDOW_FRAMES,)


def test_prepare_window_does_not_mutate_context():
    ctx = new_stream_context(0, PostprocessOptions(movement_smooth=True), seed=0)
    process_chunk(ctx, speech_like(1.3), fake_network)
    before = snapshot(ctx)
    window, n_new = prepare_window(ctx, speech_like(0.7, seed=1))
    assert window.dtype == np.float32 and window.shape == (WINDOW_SAMPLES,)
    assert n_new == num_output_frames(int(1.3 * SAMPLE_RATE) + int(0.7 * SAMPLE_RATE)) - ctx.frames_emitted
    assert_snapshot_equal(before, snapshot(ctx))


def test_previous_expression_is_the_emitted_tail():
    ctx = new_stream_context(0, PostprocessOptions(), seed=0)
    outputs = run_chunks(ctx, speech_like(4.0), [SAMPLE_RATE] * 4)
    frames = np.concatenate(outputs)
    np.testing.assert_array_equal(ctx.previous_expression, frames[-WINDOW_FRAMES:])


def test_finish_subchunk_checks_arguments():
    ctx = new_stream_context(0, PostprocessOptions(), seed=0)
    chunk = speech_like(1.0)
    window, n_new = prepare_window(ctx, chunk)
    output = fake_network(window[None], np.zeros(1, np.int64))[0]
    with pytest.raises(ValueError):
        finish_subchunk(ctx, chunk, output, n_new + 1)
    with pytest.raises(ValueError):
        finish_subchunk(ctx, chunk, output[:, :10], n_new)
    out = finish_subchunk(ctx, chunk, output, n_new)
    assert out.shape == (30, NUM_BLENDSHAPES)


def test_new_stream_context_validates_identity():
    with pytest.raises(ValueError):
        new_stream_context(12, PostprocessOptions(), seed=0)
    with pytest.raises(ValueError):
        new_stream_context(-1, PostprocessOptions(), seed=0)


# --- isolation and batching -----------------------------------------------------------------------


def test_state_isolation_interleaved_equals_alone():
    audio_a, audio_b = speech_like(4.0, seed=1), speech_like(4.0, seed=2)
    sizes_a = [16000, 11200, 20800, 16000]
    sizes_b = [8000, 40000, 5000, 11000]
    options = PostprocessOptions(movement_smooth=True, brow_movement=True)

    alone_a = run_chunks(new_stream_context(1, options, seed=10), audio_a, sizes_a)
    alone_b = run_chunks(new_stream_context(7, options, seed=20), audio_b, sizes_b)

    ctx_a, ctx_b = new_stream_context(1, options, seed=10), new_stream_context(7, options, seed=20)
    inter_a, inter_b, sa, sb = [], [], 0, 0
    for size_a, size_b in zip(sizes_a, sizes_b):
        inter_b.append(process_chunk(ctx_b, audio_b[sb : sb + size_b], fake_network))
        inter_a.append(process_chunk(ctx_a, audio_a[sa : sa + size_a], fake_network))
        sa, sb = sa + size_a, sb + size_b
    for x, y in zip(alone_a + alone_b, inter_a + inter_b):
        np.testing.assert_array_equal(x, y)


def test_batched_network_call_equals_per_session_calls():
    sessions = [(0, 1, speech_like(3.0, seed=1)), (4, 2, speech_like(3.0, seed=2)), (11, 3, speech_like(3.0, seed=3))]
    chunk = SAMPLE_RATE
    reference = []
    for id_idx, seed, audio in sessions:
        ctx = new_stream_context(id_idx, PostprocessOptions(), seed=seed)
        reference.append(np.concatenate(run_chunks(ctx, audio, [chunk] * 3)))

    contexts = [new_stream_context(i, PostprocessOptions(), seed=s) for i, s, _ in sessions]
    batched = [[] for _ in sessions]
    for k in range(3):
        subchunks = [audio[k * chunk : (k + 1) * chunk] for _, _, audio in sessions]
        prepared = [prepare_window(ctx, sub) for ctx, sub in zip(contexts, subchunks)]
        windows = np.stack([w for w, _ in prepared])
        ids = np.array([ctx.id_idx for ctx in contexts], dtype=np.int64)
        outputs = fake_network(windows, ids)  # ONE call for all sessions
        for j, (ctx, sub, (_, n_new)) in enumerate(zip(contexts, subchunks, prepared)):
            batched[j].append(finish_subchunk(ctx, sub, outputs[j], n_new))
    for ref, got in zip(reference, batched):
        np.testing.assert_array_equal(ref, np.concatenate(got))


# --- post-processing in the stream ----------------------------------------------------------------


def test_stream_blinks_deterministic_per_seed():
    audio = speech_like(10.0)
    def run(seed, blink=True):
        ctx = new_stream_context(0, PostprocessOptions(blink=blink), seed=seed)
        return np.concatenate(run_chunks(ctx, audio, [SAMPLE_RATE] * 10))
    a, b, c = run(1), run(1), run(2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    no_blink = run(1, blink=False)
    left = blendshape_index("eyeBlinkLeft")
    changed = np.flatnonzero(a[:, left] != no_blink[:, left])
    assert changed.size >= 2 * 6  # 300 frames hold at least 2 blinks
    assert a[:, left].max() > 0.7 and a[:, left].max() <= 1.0
    others = [i for i in range(NUM_BLENDSHAPES) if i not in (left, blendshape_index("eyeBlinkRight"))]
    np.testing.assert_array_equal(a[:, others], no_blink[:, others])


def test_stream_mouth_mute_in_silence():
    audio = np.concatenate([speech_like(1.0), np.zeros(2 * SAMPLE_RATE, np.float32)])
    def run(movement_smooth):
        ctx = new_stream_context(0, PostprocessOptions(movement_smooth=movement_smooth, blink=False), seed=0)
        return np.concatenate(run_chunks(ctx, audio, [SAMPLE_RATE] * 3))
    muted, plain = run(True), run(False)
    jaw = blendshape_index("jawOpen")
    np.testing.assert_array_equal(muted[:28], plain[:28])
    assert np.all(muted[40:85, jaw] <= 0.1 * plain[40:85, jaw] + 1e-6)
    brow = blendshape_index("browInnerUp")
    np.testing.assert_allclose(muted[:, brow], plain[:, brow], atol=1e-6)


def test_stream_brow_movement_only_with_loud_audio():
    quiet = (np.random.default_rng(0).normal(0, 0.01, 3 * SAMPLE_RATE)).astype(np.float32)
    loud = (np.random.default_rng(0).normal(0, 0.3, 3 * SAMPLE_RATE)).astype(np.float32)
    brow = [blendshape_index(n) for n in ("browInnerUp", "browOuterUpLeft")]
    for audio, expect_change in ((quiet, False), (loud, True)):
        outs = []
        for flag in (False, True):
            ctx = new_stream_context(0, PostprocessOptions(brow_movement=flag, blink=False), seed=0)
            outs.append(np.concatenate(run_chunks(ctx, audio, [SAMPLE_RATE] * 3)))
        assert (not np.allclose(outs[0][:, brow], outs[1][:, brow])) == expect_change


_LOCAL_CONTEXT_FRAMES = 15  # the local network's receptive field: 0.5 s of past audio


def local_network(audio: np.ndarray, id_idx: np.ndarray) -> np.ndarray:
    """A network whose frame t depends only on the 0.5 s of audio before it, at any input length.

    For such a network, streaming with real left context must reproduce whole-file inference once
    the context covers the receptive field; zero-filled context (upstream's bug) cannot.
    """
    audio = np.asarray(audio, dtype=np.float64)
    frames = num_output_frames(audio.shape[1])
    edges = np.minimum((np.arange(frames + 1) * SAMPLE_RATE) // 30, audio.shape[1])
    envelope = np.stack([np.abs(audio[:, a:b]).mean(axis=1) if b > a else np.zeros(audio.shape[0])
                         for a, b in zip(edges[:-1], edges[1:])], axis=1)
    kernel = np.ones(_LOCAL_CONTEXT_FRAMES) / _LOCAL_CONTEXT_FRAMES
    smoothed = np.stack([np.convolve(row, kernel)[: row.size] for row in envelope])
    z = 10.0 * smoothed[..., None] * _CHANNEL_WEIGHTS - 0.5 + 0.05 * np.asarray(id_idx, dtype=np.float64).reshape(-1, 1, 1)
    return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)


def test_streaming_with_real_context_matches_whole_file_once_context_covers_the_receptive_field():
    from emoserve.lam_a2e.postprocess import postprocess_offline

    audio = speech_like(5.0, seed=3)
    options = PostprocessOptions(blink=False)
    whole = postprocess_offline(local_network(audio[None], np.array([1]))[0], audio, options, np.random.default_rng(0))

    def streamed(zero_fill_context: bool) -> np.ndarray:
        ctx = new_stream_context(1, options, seed=0)
        outputs = []
        for start in range(0, audio.size, SAMPLE_RATE):
            if zero_fill_context:  # upstream's bug: every chunk sees zeros on its left
                ctx.previous_audio = np.zeros(0, np.float32)
            outputs.append(process_chunk(ctx, audio[start : start + SAMPLE_RATE], local_network))
        return np.concatenate(outputs)

    with_context, zero_filled = streamed(False), streamed(True)
    assert with_context.shape == whole.shape == (150, NUM_BLENDSHAPES)
    settled = slice(_LOCAL_CONTEXT_FRAMES + 5, None)  # past the receptive field and the first blend
    error_with_context = np.abs(with_context[settled] - whole[settled]).mean()
    error_zero_filled = np.abs(zero_filled[settled] - whole[settled]).mean()
    assert error_with_context < 0.01, error_with_context
    assert error_zero_filled > 5 * error_with_context, (error_zero_filled, error_with_context)

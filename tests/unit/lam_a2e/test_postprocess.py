"""Unit tests for emoserve.lam_a2e.postprocess (numpy-only LAM-A2E post-processing)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import savgol_filter

from emoserve.constants import ARKIT_BLENDSHAPE_NAMES, NUM_BLENDSHAPES, SAMPLE_RATE, num_output_frames
from emoserve.lam_a2e.postprocess import (
    BROW_NAMES,
    LEFT_RIGHT_PAIRS,
    MOUTH_JAW_NAMES,
    PostprocessOptions,
    apply_brow_movement,
    apply_offline_blinks,
    apply_stream_blinks,
    blend_frames,
    blendshape_index,
    find_silent_regions,
    mute_silent_mouth,
    new_blink_state,
    postprocess_offline,
    rms_volume,
    savgol_smooth,
    symmetrize,
)

MOUTH_COLS = np.array([blendshape_index(n) for n in MOUTH_JAW_NAMES])
OTHER_COLS = np.array([i for i in range(NUM_BLENDSHAPES) if i not in set(MOUTH_COLS.tolist())])
BROW_COLS = np.array([blendshape_index(n) for n in BROW_NAMES])
BLINK_L, BLINK_R = blendshape_index("eyeBlinkLeft"), blendshape_index("eyeBlinkRight")


def random_expression(frames: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.2, 0.8, size=(frames, NUM_BLENDSHAPES)).astype(np.float32)


# --- name groups --------------------------------------------------------------------------------


def test_name_groups_match_upstream():
    assert len(MOUTH_JAW_NAMES) == 29
    assert "mouthClose" not in MOUTH_JAW_NAMES and "tongueOut" not in MOUTH_JAW_NAMES
    assert {"jawOpen", "jawForward", "jawLeft", "jawRight", "cheekPuff", "noseSneerLeft"} <= set(MOUTH_JAW_NAMES)
    assert len(LEFT_RIGHT_PAIRS) == 20
    assert ("jawLeft", "jawRight") in LEFT_RIGHT_PAIRS and ("eyeBlinkLeft", "eyeBlinkRight") in LEFT_RIGHT_PAIRS
    assert all(n in ARKIT_BLENDSHAPE_NAMES for pair in LEFT_RIGHT_PAIRS for n in pair)
    assert [ARKIT_BLENDSHAPE_NAMES[i] for i in BROW_COLS] == list(BROW_NAMES)


# --- RMS volume ---------------------------------------------------------------------------------


def test_rms_volume_frame_count_and_padding():
    for n in (0, 1, 532, 533, 534, 16000, 16001, 34133, 48000):
        assert rms_volume(np.ones(n, np.float32)).shape == (num_output_frames(n),)
    audio = np.full(16000, 0.5, np.float32)
    v = rms_volume(audio, num_frames=40)  # pad: frames past the audio are silent
    assert v.shape == (40,) and v.dtype == np.float32
    assert np.all(v[31:] == 0)
    assert rms_volume(audio, num_frames=10).shape == (10,)
    np.testing.assert_array_equal(rms_volume(audio, num_frames=10), rms_volume(audio)[:10])


def test_rms_volume_framing_values():
    # constant amplitude: interior frames have exactly that RMS; frame 0 is half zero-padded
    audio = np.full(SAMPLE_RATE, 0.5, np.float32)
    v = rms_volume(audio)
    assert v.shape == (30,)
    np.testing.assert_allclose(v[1:29], 0.5, rtol=1e-6)
    np.testing.assert_allclose(v[0], 0.5 * np.sqrt(267 / 533), rtol=1e-5)
    # reference: explicit loop over frames of length 533 centred on round(t * 16000 / 30)
    rng = np.random.default_rng(3)
    audio = rng.normal(0, 0.1, 20000).astype(np.float32)
    v = rms_volume(audio)
    padded = np.concatenate([np.zeros(266), audio.astype(np.float64), np.zeros(533)])
    for t in range(v.size):
        c = int(np.floor(t * 16000 / 30 + 0.5))
        frame = padded[c : c + 533]
        assert v[t] == pytest.approx(np.sqrt(np.mean(frame**2)), rel=1e-5)


def test_rms_volume_silence_then_speech():
    audio = np.concatenate([np.zeros(SAMPLE_RATE), np.full(SAMPLE_RATE, 0.3)]).astype(np.float32)
    v = rms_volume(audio)
    assert v.shape == (60,)
    assert np.all(v[:30] < 0.001) and v[29] == 0
    assert np.all(v[31:59] > 0.29)


# --- mouth mute -----------------------------------------------------------------------------------


def test_find_silent_regions_min_length():
    vol = np.full(40, 0.5, np.float32)
    vol[5:11] = 0.0  # 6 frames: too short
    assert find_silent_regions(vol) == []
    vol[5:12] = 0.0  # 7 frames
    assert find_silent_regions(vol) == [(5, 12)]
    vol2 = np.zeros(7, np.float32)  # a region at the very start (upstream needs 8 there)
    assert find_silent_regions(vol2) == [(0, 7)]
    vol3 = np.full(10, 0.001, np.float32)  # strictly below the threshold
    assert find_silent_regions(vol3) == []


def test_mouth_mute_needs_seven_silent_frames():
    x = random_expression(40)
    vol = np.full(40, 0.1, np.float32)
    vol[10:16] = 0.0  # 6 silent frames
    np.testing.assert_array_equal(mute_silent_mouth(x, vol), x)


def test_mouth_mute_touches_only_mouth_shapes_in_the_silence():
    x = random_expression(60)
    original = x.copy()
    vol = np.full(60, 0.1, np.float32)
    vol[20:40] = 0.0
    y = mute_silent_mouth(x, vol)
    np.testing.assert_array_equal(x, original)  # input not modified
    np.testing.assert_array_equal(y[:, OTHER_COLS], x[:, OTHER_COLS])
    np.testing.assert_array_equal(y[:20], x[:20])
    np.testing.assert_array_equal(y[40:], x[40:])
    # interior of the silence: exactly x0.1
    np.testing.assert_allclose(y[23:37][:, MOUTH_COLS], 0.1 * x[23:37][:, MOUTH_COLS], rtol=1e-6)
    # edges: 3-frame linear blend from the frame before / towards the frame after
    pre, post = x[19, MOUTH_COLS], x[40, MOUTH_COLS]
    for i in range(3):
        w = (i + 1) / 4
        np.testing.assert_allclose(y[20 + i, MOUTH_COLS], pre * (1 - w) + 0.1 * x[20 + i, MOUTH_COLS] * w, rtol=1e-5)
        np.testing.assert_allclose(y[39 - i, MOUTH_COLS], post * (1 - w) + 0.1 * x[39 - i, MOUTH_COLS] * w, rtol=1e-5)


def test_mouth_mute_leaves_processed_frames_alone():
    x = random_expression(50)
    vol = np.full(50, 0.1, np.float32)
    vol[25:45] = 0.0  # silence starting 5 frames before the boundary at 30
    y = mute_silent_mouth(x, vol, processed_frames=30)
    np.testing.assert_array_equal(y[:30], x[:30])
    np.testing.assert_allclose(y[30:42][:, MOUTH_COLS], 0.1 * x[30:42][:, MOUTH_COLS], rtol=1e-6)
    # a silence only 4 frames long in the new part still counts thanks to 3 silent processed frames
    vol = np.full(50, 0.1, np.float32)
    vol[27:34] = 0.0
    y = mute_silent_mouth(x, vol, processed_frames=30)
    assert not np.allclose(y[30:34][:, MOUTH_COLS], x[30:34][:, MOUTH_COLS])


# --- frame blending -------------------------------------------------------------------------------


def test_blend_first_chunk_from_zero():
    x = random_expression(10)
    y = blend_frames(x, processed_frames=0)
    for k in range(3):
        np.testing.assert_allclose(y[k], x[k] * (k + 1) / 4, rtol=1e-6)
    np.testing.assert_array_equal(y[3:], x[3:])
    short = blend_frames(x[:2])  # fewer frames than the window
    np.testing.assert_allclose(short[0], x[0] / 3, rtol=1e-6)
    np.testing.assert_allclose(short[1], x[1] * 2 / 3, rtol=1e-6)


def test_blend_continuity_from_last_processed_frame():
    x = random_expression(40)
    x[30:] = np.clip(x[30:] + 0.5, 0, 1.5)  # a jump at the chunk boundary
    y = blend_frames(x, processed_frames=30)
    np.testing.assert_array_equal(y[:30], x[:30])
    np.testing.assert_array_equal(y[35:], x[35:])
    ref = x[29]
    for k in range(5):
        w = (k + 1) / 6
        np.testing.assert_allclose(y[30 + k], ref * (1 - w) + x[30 + k] * w, rtol=1e-6)
    # the jump into the first new frame shrinks to a sixth
    assert np.max(np.abs(y[30] - y[29])) <= np.max(np.abs(x[30] - x[29])) / 6 + 1e-6


# --- Savitzky-Golay ---------------------------------------------------------------------------------


def test_savgol_clipped_and_matches_scipy_inside_range():
    rng = np.random.default_rng(1)
    x = rng.uniform(-0.5, 1.5, size=(50, NUM_BLENDSHAPES)).astype(np.float32)
    y = savgol_smooth(x)
    assert y.dtype == np.float32 and y.shape == x.shape
    assert y.min() >= 0.0 and y.max() <= 1.0
    ref = np.clip(savgol_filter(x.astype(np.float64), 5, 2, axis=0, mode="mirror"), 0, 1)
    np.testing.assert_allclose(y, ref, atol=1e-6)
    # a quadratic in time passes through the interior unchanged
    t = np.linspace(0, 1, 30)[:, None]
    q = np.repeat(0.2 + 0.3 * t + 0.2 * t**2, NUM_BLENDSHAPES, axis=1).astype(np.float32)
    np.testing.assert_allclose(savgol_smooth(q)[2:-2], q[2:-2], atol=1e-6)
    for n in (0, 1, 2, 4):
        assert savgol_smooth(x[:n]).shape == (n, NUM_BLENDSHAPES)


# --- symmetrisation -----------------------------------------------------------------------------------


def test_symmetrize_pairs_equal_average():
    x = random_expression(12)
    y = symmetrize(x)
    paired = set()
    for left, right in LEFT_RIGHT_PAIRS:
        li, ri = blendshape_index(left), blendshape_index(right)
        paired |= {li, ri}
        np.testing.assert_array_equal(y[:, li], y[:, ri])
        np.testing.assert_allclose(y[:, li], (x[:, li] + x[:, ri]) / 2, rtol=1e-6)
    unpaired = [i for i in range(NUM_BLENDSHAPES) if i not in paired]
    assert len(unpaired) == 12
    np.testing.assert_array_equal(y[:, unpaired], x[:, unpaired])


# --- blinks ---------------------------------------------------------------------------------------


def _blink_starts(column: np.ndarray) -> list[int]:
    nonzero = column > 0
    return [i for i in range(column.size) if nonzero[i] and (i == 0 or not nonzero[i - 1])]


def test_offline_blinks_deterministic_and_in_range():
    x = random_expression(600)
    a = apply_offline_blinks(x, np.random.default_rng(7))
    b = apply_offline_blinks(x, np.random.default_rng(7))
    c = apply_offline_blinks(x, np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    others = [i for i in range(NUM_BLENDSHAPES) if i not in (BLINK_L, BLINK_R)]
    np.testing.assert_array_equal(a[:, others], x[:, others])
    np.testing.assert_array_equal(a[:, BLINK_L], a[:, BLINK_R])
    assert a[:, BLINK_L].min() >= 0 and a[:, BLINK_L].max() <= 1.0
    # the blink column is reset; a blink starts at frame 0, then every 7 + 60..119 frames
    column = a[:, BLINK_L]
    starts = [0]
    i = 7
    while i < column.size:
        if column[i] > 0:
            starts.append(i)
            i += 7
        else:
            i += 1
    gaps = np.diff(starts)
    # (one pattern starts with 0.0, so a detected start can be one frame late)
    assert len(starts) >= 5 and np.all(gaps >= 66) and np.all(gaps <= 127)
    for s in starts:
        peak = column[s : s + 7].max()
        assert 0.8 * 0.945 - 1e-6 <= peak <= 0.956 + 1e-6
    assert np.all(column[starts[-1] + 7 :] == 0)


def test_stream_blinks_independent_of_chunking():
    x = random_expression(400)
    whole, state_whole = apply_stream_blinks(x, 0, new_blink_state(np.random.default_rng(5)), np.random.default_rng(11))
    rng_state = np.random.default_rng(5)
    state = new_blink_state(rng_state)
    rng = np.random.default_rng(11)
    pieces, start = [], 0
    for size in (30, 7, 1, 45, 64, 13, 100, 140):
        out, state = apply_stream_blinks(x[start : start + size], start, state, rng)
        pieces.append(out)
        start += size
    np.testing.assert_array_equal(np.concatenate(pieces), whole)
    assert state.next_blink_frame == state_whole.next_blink_frame
    # blinks exist, equal on both eyes, in [0, 1]; other columns untouched
    changed = np.flatnonzero(whole[:, BLINK_L] != x[:, BLINK_L])
    assert changed.size >= 3 * 6
    assert changed[0] >= 40
    np.testing.assert_array_equal(whole[changed, BLINK_L], whole[changed, BLINK_R])
    assert whole.min() >= 0 and whole.max() <= 1


def test_stream_blinks_seed_dependence():
    x = np.zeros((300, NUM_BLENDSHAPES), np.float32)
    def run(seed):
        rng = np.random.default_rng(seed)
        return apply_stream_blinks(x, 0, new_blink_state(rng), rng)[0]
    np.testing.assert_array_equal(run(1), run(1))
    assert not np.array_equal(run(1), run(2))


# --- brow movement --------------------------------------------------------------------------------


def test_brow_movement_only_where_loud():
    x = np.full((150, NUM_BLENDSHAPES), 0.1, np.float32)
    quiet = np.full(150, 0.05, np.float32)
    np.testing.assert_array_equal(apply_brow_movement(x, quiet, np.random.default_rng(0)), x)
    loud = quiet.copy()
    loud[60:80] = 0.2  # one loud run of 20 frames (> hold threshold)
    for seed in range(6):
        y = apply_brow_movement(x, loud, np.random.default_rng(seed))
        changed_rows, changed_cols = np.nonzero(y != x)
        assert changed_rows.size > 0
        assert set(changed_cols.tolist()) <= set(BROW_COLS.tolist())
        # rise starts at most (peak index <= 15) frames before the loud run and the hold ends with it
        assert changed_rows.min() >= 60 - 15 and changed_rows.max() <= 79
        assert y.min() >= 0 and y.max() <= 1
    short = quiet.copy()
    short[100:106] = 0.2  # 6 loud frames: whole curve centred on them
    y = apply_brow_movement(x, short, np.random.default_rng(1))
    rows = np.unique(np.nonzero(y != x)[0])
    assert rows.size > 0 and rows.min() >= 100 - 12 and rows.max() <= 106 + 12
    short[100:105] = 0.05  # 5 loud frames: too short
    np.testing.assert_array_equal(apply_brow_movement(x, short, np.random.default_rng(1)), x)


def test_brow_movement_deterministic_for_seed():
    x = random_expression(300) * 0.5
    vol = np.abs(np.sin(np.arange(300) / 7.0)).astype(np.float32) * 0.2
    a = apply_brow_movement(x, vol, np.random.default_rng(4))
    b = apply_brow_movement(x, vol, np.random.default_rng(4))
    np.testing.assert_array_equal(a, b)


# --- whole-file pipeline --------------------------------------------------------------------------


def test_postprocess_offline_pipeline():
    rng = np.random.default_rng(0)
    audio = np.concatenate([rng.normal(0, 0.2, 32000), np.zeros(16000), rng.normal(0, 0.2, 16000)]).astype(np.float32)
    frames = num_output_frames(audio.size)
    x = random_expression(frames)
    for options in (PostprocessOptions(), PostprocessOptions(True, True, True), PostprocessOptions(False, False, False)):
        y = postprocess_offline(x, audio, options, np.random.default_rng(1))
        assert y.shape == x.shape and y.dtype == np.float32
        assert y.min() >= 0 and y.max() <= 1
        for left, right in LEFT_RIGHT_PAIRS:
            np.testing.assert_array_equal(y[:, blendshape_index(left)], y[:, blendshape_index(right)])
        np.testing.assert_array_equal(y, postprocess_offline(x, audio, options, np.random.default_rng(1)))
    plain = postprocess_offline(x, audio, PostprocessOptions(blink=False), np.random.default_rng(1))
    np.testing.assert_allclose(plain, symmetrize(savgol_smooth(x)), atol=1e-7)
    muted = postprocess_offline(x, audio, PostprocessOptions(movement_smooth=True, blink=False), np.random.default_rng(1))
    jaw = blendshape_index("jawOpen")
    assert muted[70:85, jaw].max() < 0.5 * plain[70:85, jaw].min()
    np.testing.assert_allclose(muted[:55], plain[:55], atol=1e-6)

"""LAM-A2E blendshape post-processing in plain numpy (no torch, no librosa).

A re-implementation of the post-processing in upstream ``aigc3d/LAM_Audio2Expression``
(``models/utils.py`` and ``engines/infer.py``). Every stage is its own function on float32
``[T, 52]`` arrays (ARKit order of :data:`emoserve.constants.ARKIT_BLENDSHAPE_NAMES`), returns a new
array, and never changes its input. Randomness (blinks, brow gestures) comes from an explicit
:class:`numpy.random.Generator`, so a seed makes the result reproducible.

Pipelines
---------
Streaming (``engines/infer.py: apply_expression_postprocessing``), over previous+new frames, see
:mod:`emoserve.lam_a2e.streaming`:

1. :func:`mute_silent_mouth` (only when ``movement_smooth``),
2. :func:`blend_frames` (5-frame blend from the last processed frame; first chunk 3 frames from 0),
3. :func:`savgol_smooth` (Savitzky–Golay, window 5, order 2, ``mode='mirror'``, clip to [0, 1]),
4. :func:`symmetrize`,
5. :func:`apply_stream_blinks` (a blink every 40–99 frames).

Offline / whole file (``Audio2ExpressionInfer.infer``), :func:`postprocess_offline`:
mouth mute (if ``movement_smooth``) → brow gestures (if ``brow_movement``) → Savitzky–Golay + clip →
symmetrize → :func:`apply_offline_blinks` (blink columns reset, a blink at frame 0, then every
7 + 60–119 frames). Upstream's offline path does no frame blending.

Where we deliberately differ from upstream
------------------------------------------
* Volume (:func:`rms_volume`): frames are centred on the exact 30 fps timeline
  (``round(t * sr / 30)``) with librosa's centred, zero-padded framing and frame length
  ``int(sr / 30)``. Upstream uses ``librosa.feature.rms`` with hop ``int(sr / 30) = 533`` instead of
  533.33, which drifts by one third of a sample per frame (~11 frames after 10 minutes of audio).
* Silent-region detection requires ``>= 7`` consecutive silent frames everywhere; upstream's
  ``find_low_value_regions`` under-counts its first region by one (needs 8 there) and never finds a
  region consisting of a single low frame.
* The mouth mute's edge blends touch only the 29 mouth/jaw shapes it attenuated (upstream blends the
  whole row, i.e. it also smears eyes/brows at silence edges), never rewrite already-emitted frames
  (index ``< processed_frames``), and blend into a silence that starts exactly at the chunk
  boundary (upstream skips that blend because of its ``region[0] - processed_frames`` bound).
* Streaming blinks keep explicit bookkeeping (:class:`BlinkState`: frame of the next blink and the
  unfinished tail of a blink cut by a chunk boundary) instead of re-deriving the last blink from
  ``eyeBlinkLeft > 0.5`` in the previous frames; upstream's derivation mixes array indices and
  frame distances, and it cannot continue a blink across chunks (it only places blinks that fit).
* Brow gestures (:func:`apply_brow_movement`) are only applied offline upstream; the streaming module
  offers them per sub-chunk as an extension (see there).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.signal import savgol_filter

from emoserve.constants import ARKIT_BLENDSHAPE_NAMES, FPS, NUM_BLENDSHAPES, SAMPLE_RATE

# ---------------------------------------------------------------------------------------------
# Blendshape name groups, derived by name from ARKIT_BLENDSHAPE_NAMES.
# ---------------------------------------------------------------------------------------------

_NAME_TO_INDEX = {name: i for i, name in enumerate(ARKIT_BLENDSHAPE_NAMES)}


def blendshape_index(name: str) -> int:
    """Column of ``name`` in the network output (KeyError for an unknown name)."""
    return _NAME_TO_INDEX[name]


def _indices(names: tuple[str, ...]) -> np.ndarray:
    return np.array([blendshape_index(n) for n in names], dtype=np.intp)


# Upstream MOUTH_BLENDSHAPES: every mouth* shape except mouthClose, the four jaw* shapes, the two
# noseSneer* shapes and cheekPuff (29 shapes; mouthClose and tongueOut are not attenuated).
MOUTH_JAW_NAMES: tuple[str, ...] = tuple(
    n
    for n in ARKIT_BLENDSHAPE_NAMES
    if (n.startswith("mouth") and n != "mouthClose") or n.startswith("jaw") or n.startswith("noseSneer")
) + ("cheekPuff",)

# Upstream ARKitLeftRightPair: every "...Left" shape whose "...Right" twin exists (20 pairs).
LEFT_RIGHT_PAIRS: tuple[tuple[str, str], ...] = tuple(
    (n, n[: -len("Left")] + "Right")
    for n in ARKIT_BLENDSHAPE_NAMES
    if n.endswith("Left") and n[: -len("Left")] + "Right" in _NAME_TO_INDEX
)

# Columns the brow curves are added to (upstream's ``[:, :5]``), in the curves' column order.
BROW_NAMES: tuple[str, ...] = ("browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight")

BLINK_NAMES: tuple[str, str] = ("eyeBlinkLeft", "eyeBlinkRight")

MOUTH_JAW_INDICES = _indices(MOUTH_JAW_NAMES)
LEFT_INDICES = _indices(tuple(left for left, _ in LEFT_RIGHT_PAIRS))
RIGHT_INDICES = _indices(tuple(right for _, right in LEFT_RIGHT_PAIRS))
BROW_INDICES = _indices(BROW_NAMES)
BLINK_INDICES = _indices(BLINK_NAMES)

assert len(MOUTH_JAW_NAMES) == 29 and len(set(MOUTH_JAW_NAMES)) == 29
assert len(LEFT_RIGHT_PAIRS) == 20

# ---------------------------------------------------------------------------------------------
# Upstream constants (numeric data from models/utils.py).
# ---------------------------------------------------------------------------------------------

SILENCE_RMS_THRESHOLD = 0.001
MIN_SILENCE_FRAMES = 7
MOUTH_MUTE_FACTOR = 0.1
MOUTH_MUTE_BLEND_FRAMES = 3
FIRST_BLEND_FRAMES = 3
NEXT_BLEND_FRAMES = 5
SAVGOL_WINDOW = 5
SAVGOL_ORDER = 2
BLINK_FRAMES = 7
BLINK_SCALE_RANGE = (0.8, 1.0)
OFFLINE_BLINK_INTERVAL = (60, 120)  # numpy-style [low, high): 60..119 frames
STREAM_BLINK_INTERVAL = (40, 100)  # 40..99 frames
BROW_RMS_THRESHOLD = 0.08
BROW_SEGMENT_FRAMES = 150
BROW_MIN_REGION_FRAMES = 6
BROW_HOLD_THRESHOLD = 10
BROW_STRENGTH_RANGE = (0.7, 1.3)

BLINK_PATTERNS: tuple[np.ndarray, ...] = tuple(
    np.array(p, dtype=np.float32)
    for p in (
        (0.365, 0.950, 0.956, 0.917, 0.367, 0.119, 0.025),
        (0.235, 0.910, 0.945, 0.778, 0.191, 0.235, 0.089),
        (0.870, 0.950, 0.949, 0.696, 0.191, 0.073, 0.007),
        (0.000, 0.557, 0.953, 0.942, 0.426, 0.148, 0.018),
    )
)

# Brow gesture curves (upstream BROW1 / BROW2), columns in BROW_NAMES order.
BROW_CURVES: tuple[np.ndarray, ...] = (
    np.array(
        [
            [0.05597309, 0.05727929, 0.07995935, 0.0, 0.0],
            [0.00757574, 0.00936678, 0.12242376, 0.0, 0.0],
            [0.0, 0.0, 0.14943372, 0.04535687, 0.04264118],
            [0.0, 0.0, 0.18015374, 0.09019445, 0.08736137],
            [0.0, 0.0, 0.20549579, 0.12802747, 0.12450772],
            [0.0, 0.0, 0.21098022, 0.1369939, 0.13343132],
            [0.0, 0.0, 0.20904602, 0.13903855, 0.13562402],
            [0.0, 0.0, 0.20365039, 0.13977394, 0.13653506],
            [0.0, 0.0, 0.19714841, 0.14096624, 0.13805152],
            [0.0, 0.0, 0.20325482, 0.17303431, 0.17028868],
            [0.0, 0.0, 0.21990852, 0.20164253, 0.19818163],
            [0.0, 0.0, 0.23858181, 0.21908803, 0.21540019],
            [0.0, 0.0, 0.2567876, 0.23762083, 0.23396946],
            [0.0, 0.0, 0.34093422, 0.27898848, 0.27651772],
            [0.0, 0.0, 0.45288125, 0.35008961, 0.34887788],
            [0.0, 0.0, 0.48076251, 0.36878952, 0.36778417],
            [0.0, 0.0, 0.47798249, 0.36362219, 0.36145973],
            [0.0, 0.0, 0.46186113, 0.33865979, 0.33597934],
            [0.0, 0.0, 0.45264384, 0.33152157, 0.32891783],
            [0.0, 0.0, 0.40986338, 0.29646468, 0.2945672],
            [0.0, 0.0, 0.35628179, 0.23356403, 0.23155804],
            [0.0, 0.0, 0.30870566, 0.1780673, 0.17637439],
            [0.0, 0.0, 0.25293985, 0.10710219, 0.10622486],
            [0.0, 0.0, 0.18743332, 0.03252602, 0.03244236],
            [0.02340254, 0.02364671, 0.15736724, 0.0, 0.0],
        ],
        dtype=np.float32,
    ),
    np.array(
        [
            [0.0, 0.0, 0.09799323, 0.05944436, 0.05002545],
            [0.0, 0.0, 0.09780276, 0.07674237, 0.01636653],
            [0.0, 0.0, 0.11136199, 0.1027964, 0.04249811],
            [0.0, 0.0, 0.26883412, 0.15861984, 0.15832305],
            [0.0, 0.0, 0.42191629, 0.27038204, 0.27007768],
            [0.0, 0.0, 0.3404977, 0.21633868, 0.21597538],
            [0.0, 0.0, 0.27301185, 0.17176409, 0.17134669],
            [0.0, 0.0, 0.25960442, 0.15670464, 0.15622253],
            [0.0, 0.0, 0.22877269, 0.11805892, 0.11754539],
            [0.0, 0.0, 0.1451605, 0.06389034, 0.0636282],
        ],
        dtype=np.float32,
    ),
)
# Frame of each curve's peak (maximum browInnerUp).
BROW_CURVE_PEAKS: tuple[int, ...] = tuple(int(np.argmax(c[:, 2])) for c in BROW_CURVES)


@dataclass(frozen=True)
class PostprocessOptions:
    """Per-request switches (upstream config ``movement_smooth`` / ``brow_movement``; blinks are always on upstream)."""

    movement_smooth: bool = False
    brow_movement: bool = False
    blink: bool = True


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _as_expression(expression: np.ndarray) -> np.ndarray:
    """A float32 ``[T, 52]`` copy."""
    x = np.array(expression, dtype=np.float32, copy=True)
    if x.ndim != 2 or x.shape[1] != NUM_BLENDSHAPES:
        raise ValueError(f"expression must have shape [T, {NUM_BLENDSHAPES}], got {x.shape}")
    return x


def _as_mono(audio: np.ndarray) -> np.ndarray:
    a = np.asarray(audio)
    if a.ndim != 1:
        if a.size != a.shape[-1]:
            raise ValueError(f"audio must be mono (1-D), got shape {a.shape}")
        a = a.reshape(-1)
    return a


def frames_for_samples(num_samples: int, sample_rate: int = SAMPLE_RATE) -> int:
    """``ceil(num_samples * FPS / sample_rate)`` in exact integer arithmetic."""
    return (int(num_samples) * FPS + int(sample_rate) - 1) // int(sample_rate)


def frame_centers(first_frame: int, num_frames: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Sample index of the centre of 30 fps frames ``first_frame .. first_frame + num_frames - 1``."""
    t = np.arange(int(first_frame), int(first_frame) + int(num_frames), dtype=np.int64)
    # round(t * sr / FPS) with integer arithmetic (half rounds up)
    return (2 * t * int(sample_rate) + FPS) // (2 * FPS)


def rms_at(audio: np.ndarray, centers: np.ndarray, frame_length: int) -> np.ndarray:
    """RMS of ``frame_length``-sample frames centred on ``centers`` (samples outside ``audio`` count as 0).

    Frame ``c`` covers ``[c - frame_length // 2, c - frame_length // 2 + frame_length)``, exactly like
    librosa's ``center=True`` framing with constant (zero) padding.
    """
    a = _as_mono(audio).astype(np.float64)
    centers = np.asarray(centers, dtype=np.int64)
    frame_length = max(int(frame_length), 1)
    if centers.size == 0:
        return np.zeros(0, dtype=np.float32)
    cumulative = np.concatenate([[0.0], np.cumsum(a * a)])
    lo = np.clip(centers - frame_length // 2, 0, a.size)
    hi = np.clip(centers - frame_length // 2 + frame_length, 0, a.size)
    energy = np.maximum(cumulative[hi] - cumulative[lo], 0.0)
    return np.sqrt(energy / frame_length).astype(np.float32)


def rms_volume(audio: np.ndarray, sample_rate: int = SAMPLE_RATE, num_frames: int | None = None) -> np.ndarray:
    """One RMS value per 30 fps frame, float32 ``[num_frames]``.

    Frame length ``int(sample_rate / 30)`` (533 at 16 kHz), frame ``t`` centred on sample
    ``round(t * sample_rate / 30)``, zero padding at both ends (librosa ``rms(center=True)``). By
    default there are ``ceil(len(audio) * 30 / sample_rate)`` frames (upstream's trim); with
    ``num_frames`` the result has exactly that many (frames past the audio read as silence).
    """
    a = _as_mono(audio)
    if num_frames is None:
        num_frames = frames_for_samples(a.size, sample_rate)
    if num_frames < 0:
        raise ValueError(f"num_frames must be >= 0, got {num_frames}")
    return rms_at(a, frame_centers(0, num_frames, sample_rate), int(sample_rate / FPS))


# ---------------------------------------------------------------------------------------------
# Stage 1: mouth mute during silence
# ---------------------------------------------------------------------------------------------


def find_silent_regions(
    volume: np.ndarray, threshold: float = SILENCE_RMS_THRESHOLD, min_frames: int = MIN_SILENCE_FRAMES
) -> list[tuple[int, int]]:
    """``[start, end)`` runs of at least ``min_frames`` consecutive frames with ``volume < threshold``."""
    low = np.asarray(volume).reshape(-1) < threshold
    if not low.any():
        return []
    padded = np.concatenate([[False], low, [False]]).astype(np.int8)
    edges = np.diff(padded)
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    return [(int(s), int(e)) for s, e in zip(starts, ends) if e - s >= min_frames]


def mute_silent_mouth(
    expression: np.ndarray,
    volume: np.ndarray,
    processed_frames: int = 0,
    threshold: float = SILENCE_RMS_THRESHOLD,
    min_silence_frames: int = MIN_SILENCE_FRAMES,
    blend_frames: int = MOUTH_MUTE_BLEND_FRAMES,
    factor: float = MOUTH_MUTE_FACTOR,
) -> np.ndarray:
    """Scale the 29 mouth/jaw shapes by ``factor`` where the audio is silent (upstream ``smooth_mouth_movements``).

    A silence is ``>= min_silence_frames`` consecutive frames with RMS ``< threshold``. Inside each
    silence the first ``blend_frames`` frames are blended from the frame before it and the last
    ``blend_frames`` towards the frame after it (linear weights ``(i + 1) / (n + 1)``). Frames before
    ``processed_frames`` (already emitted in a stream) are only used as context and left untouched;
    a silence that began in them still counts towards the minimum length.
    """
    x = _as_expression(expression)
    total = x.shape[0]
    p = max(int(processed_frames), 0)
    vol = np.asarray(volume, dtype=np.float32).reshape(-1)[:total]
    cols = MOUTH_JAW_INDICES
    for start, end in find_silent_regions(vol, threshold, min_silence_frames):
        first = max(start, p)
        if first >= end:
            continue
        x[first:end, cols] *= factor
        # transition into the silence, from the (unmuted) frame before it
        if start >= max(p, 1):
            n = min(blend_frames, end - start)
            pre = x[start - 1, cols].copy()
            for i in range(n):
                w = (i + 1) / (n + 1)
                x[start + i, cols] = pre * (1 - w) + x[start + i, cols] * w
        # transition out of the silence, towards the (unmuted) frame after it
        n = min(blend_frames, total - end, end - start)
        if n > 0:
            post = x[end, cols].copy()
            for i in range(n):
                idx = end - 1 - i
                if idx < p:
                    break
                w = (i + 1) / (n + 1)
                x[idx, cols] = post * (1 - w) + x[idx, cols] * w
    return x


# ---------------------------------------------------------------------------------------------
# Stage 2: blend new frames from the last processed frame
# ---------------------------------------------------------------------------------------------


def blend_frames(
    expression: np.ndarray,
    processed_frames: int = 0,
    initial_window: int = FIRST_BLEND_FRAMES,
    subsequent_window: int = NEXT_BLEND_FRAMES,
) -> np.ndarray:
    """Linear blend of the first new frames from a reference (upstream ``apply_frame_blending``).

    With ``processed_frames > 0`` frames ``p .. p + 4`` are blended from frame ``p - 1`` (the last
    emitted frame); otherwise frames ``0 .. 2`` are blended from the neutral (all-zero) face. Frame
    ``p + k`` of ``n`` blended frames becomes ``ref * (1 - w) + frame * w`` with ``w = (k + 1) / (n + 1)``.
    """
    x = _as_expression(expression)
    p = int(processed_frames)
    if p > 0:
        reference = x[p - 1].copy()
        n = min(subsequent_window, x.shape[0] - p)
    else:
        p = 0
        reference = np.zeros(NUM_BLENDSHAPES, dtype=np.float32)
        n = min(initial_window, x.shape[0])
    for k in range(max(n, 0)):
        w = (k + 1) / (n + 1)
        x[p + k] = reference * (1 - w) + x[p + k] * w
    return x


# ---------------------------------------------------------------------------------------------
# Stage 3: Savitzky-Golay smoothing
# ---------------------------------------------------------------------------------------------


def savgol_smooth(
    expression: np.ndarray, window_length: int = SAVGOL_WINDOW, polyorder: int = SAVGOL_ORDER
) -> np.ndarray:
    """Savitzky–Golay filter along time (``mode='mirror'``, float64 inside), clipped to [0, 1]."""
    x = _as_expression(expression)
    if x.shape[0] == 0:
        return x
    smoothed = savgol_filter(x.astype(np.float64), window_length, polyorder, axis=0, mode="mirror")
    return np.clip(smoothed, 0.0, 1.0).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Stage 4: left/right symmetrisation
# ---------------------------------------------------------------------------------------------


def symmetrize(expression: np.ndarray) -> np.ndarray:
    """Replace each of the 20 Left/Right pairs by their average (upstream ``symmetrize_blendshapes``, mode 'average')."""
    x = _as_expression(expression)
    mean = (x[:, LEFT_INDICES] + x[:, RIGHT_INDICES]) / 2
    x[:, LEFT_INDICES] = mean
    x[:, RIGHT_INDICES] = mean
    return x


# ---------------------------------------------------------------------------------------------
# Stage 5: eye blinks
# ---------------------------------------------------------------------------------------------


def _random_blink(rng: np.random.Generator, scale_range: tuple[float, float]) -> np.ndarray:
    scale = np.float32(rng.uniform(*scale_range))  # upstream's draw order: scale, then pattern
    pattern = BLINK_PATTERNS[int(rng.integers(0, len(BLINK_PATTERNS)))]
    return (pattern * scale).astype(np.float32)


def apply_offline_blinks(
    expression: np.ndarray,
    rng: np.random.Generator,
    interval: tuple[int, int] = OFFLINE_BLINK_INTERVAL,
    scale_range: tuple[float, float] = BLINK_SCALE_RANGE,
) -> np.ndarray:
    """Whole-file blinks (upstream ``apply_random_eye_blinks``).

    The network's eyeBlinkLeft/Right are reset to 0; a 7-frame pattern × U(0.8, 1.0) is written to
    both at frame 0 and then every ``7 + U{60..119}`` frames, as long as a whole blink fits strictly
    before the end (upstream's ``while current < n - 7``).
    """
    x = _as_expression(expression)
    total = x.shape[0]
    x[:, BLINK_INDICES] = 0.0
    current = 0
    while current < total - BLINK_FRAMES:
        values = _random_blink(rng, scale_range)
        x[current : current + BLINK_FRAMES, BLINK_INDICES[0]] = values
        x[current : current + BLINK_FRAMES, BLINK_INDICES[1]] = values
        current += BLINK_FRAMES + int(rng.integers(*interval))
    return x


@dataclass
class BlinkState:
    """Streaming blink bookkeeping: global frame where the next blink starts, and the unwritten tail
    of a blink that a chunk boundary cut (written at the start of the next frames)."""

    next_blink_frame: int
    pending: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))


def new_blink_state(rng: np.random.Generator, interval: tuple[int, int] = STREAM_BLINK_INTERVAL) -> BlinkState:
    """First blink ``U{40..99}`` frames into the stream (as upstream's first chunk)."""
    return BlinkState(next_blink_frame=int(rng.integers(*interval)))


def apply_stream_blinks(
    expression: np.ndarray,
    first_frame: int,
    state: BlinkState,
    rng: np.random.Generator,
    interval: tuple[int, int] = STREAM_BLINK_INTERVAL,
    scale_range: tuple[float, float] = BLINK_SCALE_RANGE,
) -> tuple[np.ndarray, BlinkState]:
    """Blinks for new streaming frames ``first_frame ..`` (global indices); returns ``(frames, new_state)``.

    Like upstream's ``apply_random_eye_blinks_context`` the network's own eyeBlink values are kept
    outside blinks; a blink overwrites both eyeBlink columns with pattern × U(0.8, 1.0) and the next
    one starts ``7 + U{40..99}`` frames after it. The result does not depend on how the frames are
    split into chunks (a cut blink is finished in the next call). ``state`` is not changed.
    """
    x = _as_expression(expression)
    total = x.shape[0]
    left, right = BLINK_INDICES
    pending = state.pending
    k = min(pending.size, total)
    x[:k, left] = pending[:k]
    x[:k, right] = pending[:k]
    pending = pending[k:]
    next_frame = int(state.next_blink_frame)
    end_frame = int(first_frame) + total
    while next_frame < end_frame:
        offset = max(next_frame - int(first_frame), 0)
        values = _random_blink(rng, scale_range)
        m = min(BLINK_FRAMES, total - offset)
        x[offset : offset + m, left] = values[:m]
        x[offset : offset + m, right] = values[:m]
        pending = values[m:]
        next_frame += BLINK_FRAMES + int(rng.integers(*interval))
    return x, BlinkState(next_blink_frame=next_frame, pending=np.array(pending, dtype=np.float32))


# ---------------------------------------------------------------------------------------------
# Brow gestures
# ---------------------------------------------------------------------------------------------


def _loud_regions(volume: np.ndarray, threshold: float, min_frames: int) -> list[np.ndarray]:
    loud = np.asarray(volume).reshape(-1) > threshold
    padded = np.concatenate([[False], loud, [False]]).astype(np.int8)
    edges = np.diff(padded)
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return [np.arange(s, e) for s, e in zip(starts, ends) if e - s >= min_frames]


def apply_brow_movement(
    expression: np.ndarray,
    volume: np.ndarray,
    rng: np.random.Generator,
    threshold: float = BROW_RMS_THRESHOLD,
    segment_frames: int = BROW_SEGMENT_FRAMES,
    min_region_frames: int = BROW_MIN_REGION_FRAMES,
    hold_threshold: int = BROW_HOLD_THRESHOLD,
    strength_range: tuple[float, float] = BROW_STRENGTH_RANGE,
) -> np.ndarray:
    """Add brow-raise gestures during loud speech (upstream ``apply_random_brow_movement``), clip to [0, 1].

    Per 150-frame segment: among the runs of ``>= 6`` frames with RMS ``> 0.08`` pick one at random,
    pick one of the two recorded brow curves, and a strength U(0.7, 1.3). A run longer than 10 frames
    gets the curve's rise aligned so its peak falls on the loudest frame, then the peak frame held
    until the run ends; a shorter run gets the whole curve centred on it. Gestures that would not fit
    inside the segment are dropped. Only the five brow shapes change (besides the final clip).
    """
    x = _as_expression(expression)
    vol = np.asarray(volume, dtype=np.float32).reshape(-1)[: x.shape[0]]
    cols = BROW_INDICES
    for seg_start in range(0, vol.size, segment_frames):
        seg_end = min(seg_start + segment_frames, vol.size)
        seg_volume = vol[seg_start:seg_end]
        regions = _loud_regions(seg_volume, threshold, min_region_frames)
        if not regions:
            continue
        region = regions[int(rng.integers(len(regions)))]
        region_start, region_length = int(region[0]), int(region.size)
        which = int(rng.integers(0, len(BROW_CURVES)))
        curve, peak = BROW_CURVES[which], BROW_CURVE_PEAKS[which]
        if region_length > hold_threshold:
            local_peak = int(np.argmax(seg_volume[region]))
            peak_frame = seg_start + region_start + local_peak
            rise = curve[: peak + 1]
            insert_start = max(peak_frame - peak, seg_start)
            insert_end = min(peak_frame + (region_length - local_peak), seg_end)
            strength = np.float32(rng.uniform(*strength_range))
            if insert_start + rise.shape[0] <= seg_end:
                x[insert_start : insert_start + rise.shape[0], cols] += rise * strength
                hold_start = insert_start + rise.shape[0]
                if insert_end > hold_start:
                    x[hold_start:insert_end, cols] += curve[peak] * strength
        else:
            length = curve.shape[0]
            position = seg_start + region_start + (region_length - length) // 2
            position = max(seg_start, min(position, seg_end - length))
            if position + length <= seg_end:
                strength = np.float32(rng.uniform(*strength_range))
                x[position : position + length, cols] += curve * strength
    return np.clip(x, 0.0, 1.0).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Whole-file pipeline
# ---------------------------------------------------------------------------------------------


def postprocess_offline(
    expression: np.ndarray,
    audio: np.ndarray,
    options: PostprocessOptions,
    rng: np.random.Generator,
    sample_rate: int = SAMPLE_RATE,
) -> np.ndarray:
    """Whole-file post-processing in upstream ``Audio2ExpressionInfer.infer`` order; float32 ``[T, 52]``.

    mouth mute (``movement_smooth``) → brow gestures (``brow_movement``) → Savitzky–Golay + clip →
    symmetrize → blinks every 7 + 60..119 frames (``blink``). ``audio`` is the mono input at
    ``sample_rate``; its volume is computed for exactly ``T`` frames.
    """
    x = _as_expression(expression)
    volume = rms_volume(audio, sample_rate, num_frames=x.shape[0])
    if options.movement_smooth:
        x = mute_silent_mouth(x, volume, processed_frames=0)
    if options.brow_movement:
        x = apply_brow_movement(x, volume, rng)
    x = savgol_smooth(x)
    x = symmetrize(x)
    if options.blink:
        x = apply_offline_blinks(x, rng)
    return x

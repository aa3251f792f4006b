"""Streaming LAM-A2E: per-session context, window preparation and post-processing, in plain numpy.

Re-implements upstream ``Audio2ExpressionInfer.infer_streaming_audio`` (``engines/infer.py`` of
``aigc3d/LAM_Audio2Expression``) with the network factored out, so one batched network call can serve
many sessions:

1. :func:`split_chunk` cuts a client chunk into sub-chunks of at most
   :data:`MAX_SUBCHUNK_SAMPLES` (2 s); a window of :data:`~emoserve.constants.WINDOW_FRAMES` = 64
   frames = 34133 samples cannot hold more than that plus context. Sub-chunks are processed in order.
2. :func:`prepare_window` left-fills the sub-chunk to ``WINDOW_SAMPLES`` with context and tells how
   many new frames it yields. It does not change the context.
3. The caller runs the network on the window(s) (``[B, WINDOW_SAMPLES]`` float32 and ``[B]`` int64
   identities → ``[B, WINDOW_FRAMES, 52]``).
4. :func:`finish_subchunk` takes the tail rows of the window's output, post-processes them together
   with the carried previous frames (mouth mute if ``movement_smooth`` → frame blending →
   Savitzky–Golay + clip → symmetrisation → blinks, see :mod:`emoserve.lam_a2e.postprocess`) and updates
   the context.

:func:`process_chunk` does all of this for one session with a ``run_network`` callable.

Deliberate differences from upstream
------------------------------------
* **Real audio context (upstream bug fixed).** Upstream checks ``context['is_initial_input']`` to
  decide whether to zero-pad, but every returned context is a fresh copy of ``DEFAULT_CONTEXT`` in
  which that flag is ``True`` (it only ever sets a different key, ``first_input_flag``, to False).
  So upstream always left-pads every chunk with zeros and never uses the previous audio. Here the
  left context is the most recent real previous audio of the session; zeros fill only the part
  for which there is not enough history yet (start of the stream).
* **Frame accounting.** Upstream emits ``ceil(len(chunk) * 30 / 16000)`` frames per chunk, so the
  rounding error accumulates over chunks. Here a sub-chunk emits
  ``num_output_frames(samples_so_far) - frames_emitted_before``, so after any sequence of chunks the
  total equals ``num_output_frames(total_samples)``, the same as a whole-file run (5 × 1 s → 30
  frames each, 150 in all). A sub-chunk too short to complete a frame emits none (its audio is
  still carried as context).
* **Volume.** The RMS of new frame ``t`` is taken on the session's global 30 fps timeline (centre
  ``round(t * 16000 / 30)``) from the window, i.e. with real previous audio on its left, instead of
  from the chunk alone with zero padding (upstream also shrinks the RMS frame to the chunk length
  for chunks shorter than one frame).
* **Blinks** use explicit bookkeeping in the context (:class:`~emoserve.lam_a2e.postprocess.BlinkState`),
  so the blink rhythm (one every 7 + 40..99 frames) does not depend on the chunk size and a blink
  cut by a chunk boundary finishes in the next chunk. Upstream re-derives the last blink from
  ``eyeBlinkLeft > 0.5`` and only places blinks that fit in the current chunk.
* **Options.** Upstream's streaming post-processing always applies the mouth mute and never brow
  gestures. Here the mouth mute follows ``options.movement_smooth`` (as in upstream's offline path),
  and ``options.brow_movement`` adds brow gestures to each sub-chunk's new frames (after the mouth
  mute, before blending, chosen per sub-chunk rather than per 150-frame segment). ``options.blink``
  turns blinks off (then the network's own eyeBlink values pass through).

Mutable state lives only in :class:`StreamContext`; contexts share nothing, so sessions can be
interleaved in any order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from emoserve.constants import (
    FPS,
    NUM_BLENDSHAPES,
    NUM_IDENTITIES,
    SAMPLE_RATE,
    WINDOW_FRAMES,
    WINDOW_SAMPLES,
    num_output_frames,
)
from emoserve.lam_a2e.postprocess import (
    BlinkState,
    PostprocessOptions,
    apply_brow_movement,
    apply_stream_blinks,
    blend_frames,
    frame_centers,
    mute_silent_mouth,
    new_blink_state,
    rms_at,
    savgol_smooth,
    symmetrize,
)

MAX_SUBCHUNK_SAMPLES = 32000
"""Longest sub-chunk (2 s) run through one window; longer chunks are split by :func:`split_chunk`."""

RMS_FRAME_LENGTH = SAMPLE_RATE // FPS  # 533, upstream int(1 / 30 * sr)

RunNetwork = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _empty_frames() -> np.ndarray:
    return np.zeros((0, NUM_BLENDSHAPES), dtype=np.float32)


@dataclass
class StreamContext:
    """Everything a streaming session carries from one sub-chunk to the next."""

    id_idx: int
    options: PostprocessOptions
    rng: np.random.Generator
    blink_state: BlinkState
    previous_audio: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    """Most recent audio of the session, at most WINDOW_SAMPLES samples, float32."""
    previous_expression: np.ndarray | None = None
    """Last (at most WINDOW_FRAMES) emitted, post-processed frames ``[<=64, 52]`` float32; None before any."""
    previous_volume: np.ndarray | None = None
    """RMS of those frames, ``[<=64]`` float32; None before any."""
    samples_seen: int = 0
    frames_emitted: int = 0
    chunks_seen: int = 0
    """Non-empty client chunks processed (maintained by the caller of finish_subchunk / by process_chunk)."""


def new_stream_context(id_idx: int, options: PostprocessOptions, seed: int) -> StreamContext:
    """A fresh session for identity ``id_idx`` (0..11); ``seed`` makes its blinks/brows reproducible."""
    id_idx = int(id_idx)
    if not 0 <= id_idx < NUM_IDENTITIES:
        raise ValueError(f"id_idx must be in 0..{NUM_IDENTITIES - 1}, got {id_idx}")
    rng = np.random.default_rng(seed)
    return StreamContext(id_idx=id_idx, options=options, rng=rng, blink_state=new_blink_state(rng))


def _as_audio(chunk: np.ndarray) -> np.ndarray:
    a = np.asarray(chunk, dtype=np.float32)
    if a.ndim != 1:
        if a.size != (a.shape[-1] if a.ndim else 1):
            raise ValueError(f"audio chunk must be mono (1-D), got shape {a.shape}")
        a = a.reshape(-1)
    return a


def split_chunk(chunk: np.ndarray) -> list[np.ndarray]:
    """Split a chunk into consecutive, near-equal sub-chunks of at most MAX_SUBCHUNK_SAMPLES (``[]`` for an empty chunk)."""
    audio = _as_audio(chunk)
    if audio.size == 0:
        return []
    pieces = -(-audio.size // MAX_SUBCHUNK_SAMPLES)
    return [np.ascontiguousarray(p) for p in np.array_split(audio, pieces)]


def _window(previous_audio: np.ndarray, subchunk: np.ndarray) -> np.ndarray:
    context_length = WINDOW_SAMPLES - subchunk.size
    history = previous_audio[previous_audio.size - min(context_length, previous_audio.size) :]
    window = np.zeros(WINDOW_SAMPLES, dtype=np.float32)
    window[context_length - history.size : context_length] = history
    window[context_length:] = subchunk
    return window


def _check_subchunk(subchunk: np.ndarray) -> np.ndarray:
    audio = _as_audio(subchunk)
    if audio.size > MAX_SUBCHUNK_SAMPLES:
        raise ValueError(
            f"sub-chunk of {audio.size} samples exceeds MAX_SUBCHUNK_SAMPLES={MAX_SUBCHUNK_SAMPLES}; use split_chunk"
        )
    return audio


def prepare_window(ctx: StreamContext, subchunk: np.ndarray) -> tuple[np.ndarray, int]:
    """``(window, n_new_frames)``: the ``(WINDOW_SAMPLES,)`` float32 network input and how many frames it adds.

    The window ends with ``subchunk``; before it comes the session's most recent previous audio,
    zero-filled on the left only where the session has less history. ``ctx`` is not changed.
    """
    audio = _check_subchunk(subchunk)
    window = _window(ctx.previous_audio, audio)
    n_new = num_output_frames(ctx.samples_seen + audio.size) - ctx.frames_emitted
    return window, int(n_new)


def finish_subchunk(
    ctx: StreamContext, subchunk: np.ndarray, window_expression: np.ndarray, n_new_frames: int
) -> np.ndarray:
    """Post-process the last ``n_new_frames`` rows of the window's network output and advance ``ctx``.

    ``window_expression`` is the network output ``[WINDOW_FRAMES, 52]`` for the window from
    :func:`prepare_window` (with the same ``ctx`` and ``subchunk``). Returns float32
    ``[n_new_frames, 52]`` in [0, 1]. Updates previous audio (last WINDOW_SAMPLES samples), previous
    expression/volume (last WINDOW_FRAMES frames), blink state and the sample/frame counters.
    """
    audio = _check_subchunk(subchunk)
    expected = num_output_frames(ctx.samples_seen + audio.size) - ctx.frames_emitted
    if int(n_new_frames) != expected:
        raise ValueError(f"n_new_frames={n_new_frames} does not match this context and sub-chunk ({expected})")
    n_new = expected
    output = np.asarray(window_expression, dtype=np.float32)
    if output.ndim != 2 or output.shape[1] != NUM_BLENDSHAPES or output.shape[0] < n_new:
        raise ValueError(f"window_expression must have shape [{WINDOW_FRAMES}, {NUM_BLENDSHAPES}], got {output.shape}")

    if n_new > 0:
        window = _window(ctx.previous_audio, audio)
        # global frames E .. E+n_new-1 on the 30 fps timeline; the window covers samples [S - W, S)
        total_samples = ctx.samples_seen + audio.size
        centers = frame_centers(ctx.frames_emitted, n_new) - (total_samples - WINDOW_SAMPLES)
        volume = rms_at(window, centers, RMS_FRAME_LENGTH)
        frames = _postprocess_new_frames(ctx, output[output.shape[0] - n_new :], volume)
    else:
        volume = np.zeros(0, dtype=np.float32)
        frames = _empty_frames()

    ctx.previous_audio = np.concatenate([ctx.previous_audio, audio])[-WINDOW_SAMPLES:].astype(np.float32)
    ctx.samples_seen += audio.size
    ctx.frames_emitted += n_new
    if n_new > 0:
        if ctx.previous_expression is None:
            ctx.previous_expression, ctx.previous_volume = frames.copy(), volume.copy()
        else:
            ctx.previous_expression = np.concatenate([ctx.previous_expression, frames])[-WINDOW_FRAMES:]
            ctx.previous_volume = np.concatenate([ctx.previous_volume, volume])[-WINDOW_FRAMES:]
    return frames


def _postprocess_new_frames(ctx: StreamContext, new: np.ndarray, volume: np.ndarray) -> np.ndarray:
    """The streaming chain over previous+new frames; returns the new frames only. Advances ctx.rng/blink_state."""
    options = ctx.options
    new = np.array(new, dtype=np.float32, copy=True)
    if ctx.previous_expression is None:
        previous = _empty_frames()
        previous_volume = np.zeros(0, dtype=np.float32)
    else:
        previous, previous_volume = ctx.previous_expression, ctx.previous_volume
    p = previous.shape[0]
    x = np.concatenate([previous, new])
    if options.movement_smooth:
        x = mute_silent_mouth(x, np.concatenate([previous_volume, volume]), processed_frames=p)
    if options.brow_movement:
        x[p:] = apply_brow_movement(x[p:], volume, ctx.rng)
    x = blend_frames(x, processed_frames=p)
    x = savgol_smooth(x)
    x = symmetrize(x)
    out = x[p:]
    if options.blink:
        out, ctx.blink_state = apply_stream_blinks(out, ctx.frames_emitted, ctx.blink_state, ctx.rng)
    return np.ascontiguousarray(out, dtype=np.float32)


def process_chunk(ctx: StreamContext, chunk: np.ndarray, run_network: RunNetwork) -> np.ndarray:
    """Process one client chunk of any length for one session; float32 ``[n, 52]``.

    ``run_network(windows [B, WINDOW_SAMPLES] float32, id_idx [B] int64) -> [B, WINDOW_FRAMES, 52]``
    is called once per sub-chunk (B = 1), skipped for a sub-chunk that completes no frame. An empty
    chunk returns ``[0, 52]`` and changes nothing.
    """
    outputs = []
    subchunks = split_chunk(chunk)
    for subchunk in subchunks:
        window, n_new = prepare_window(ctx, subchunk)
        if n_new > 0:
            expression = np.asarray(run_network(window[None, :], np.array([ctx.id_idx], dtype=np.int64)))
            if expression.ndim != 3 or expression.shape[0] != 1:
                raise ValueError(f"run_network must return [1, {WINDOW_FRAMES}, {NUM_BLENDSHAPES}], got {expression.shape}")
            expression = expression[0]
        else:
            expression = np.zeros((WINDOW_FRAMES, NUM_BLENDSHAPES), dtype=np.float32)
        outputs.append(finish_subchunk(ctx, subchunk, expression, n_new))
    if subchunks:
        ctx.chunks_seen += 1
    return np.concatenate(outputs) if outputs else _empty_frames()

"""Hallo2 audio bookkeeping that needs no torch (numpy only): frame counts and 5-frame windows.

* :func:`audio_frames` -- the number of 25 fps frames for ``num_samples`` 16 kHz samples, computed
  EXACTLY as upstream's ``hallo/datasets/audio_processor.py`` does
  (``math.ceil(len(audio) / sample_rate * fps)`` in float64).  Note that the float arithmetic
  rounds up some exact multiples of 640 samples (e.g. 4480 samples -> 8 frames, not 7); the exported
  ``hallo2_audio_encoder`` graph uses the same float64 formula, so both sides always agree.
* :func:`audio_windows` -- upstream ``scripts/inference_long.py::process_audio_emb``: for every frame
  ``i`` the features of frames ``i-2 .. i+2``, indices clamped to ``[0, T-1]``.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["SAMPLE_RATE", "FPS", "WINDOW", "audio_frames", "window_indices", "audio_windows"]

SAMPLE_RATE = 16000
FPS = 25
WINDOW = 5  # frames i-2 .. i+2


def audio_frames(num_samples: int, sample_rate: int = SAMPLE_RATE, fps: int = FPS) -> int:
    """``ceil(num_samples / sample_rate * fps)`` with upstream's float64 arithmetic (same order of ops)."""
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    return math.ceil(float(num_samples) / sample_rate * fps)


def window_indices(num_frames: int, window: int = WINDOW, frames: int | None = None) -> np.ndarray:
    """int64 [F, window] source-frame indices ``clip(i + j, 0, num_frames - 1)``, j = -window//2 .. window//2.

    ``frames`` (default ``num_frames``) is the number of output rows F.
    """
    if num_frames < 1:
        raise ValueError("need at least one audio frame")
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be a positive odd number, got {window}")
    f = num_frames if frames is None else int(frames)
    half = window // 2
    idx = np.arange(f, dtype=np.int64)[:, None] + np.arange(-half, half + 1, dtype=np.int64)[None, :]
    return np.clip(idx, 0, num_frames - 1)


def audio_windows(features: np.ndarray, frames: int | None = None, window: int = WINDOW) -> np.ndarray:
    """``features`` [T, L, D] (one clip's audio features) -> [F, window, L, D] windows.

    ``frames`` (default T) is the number of windows F; rows ``i >= T`` (when F > T) and the edges
    use clamped indices, as upstream's ``process_audio_emb`` does for i = 0..T-1.  Any trailing
    feature dimensions are carried along (``features`` may be [T, ...]).
    """
    features = np.asarray(features)
    if features.ndim < 1 or features.shape[0] < 1:
        raise ValueError(f"features must be [T, ...] with T >= 1, got shape {features.shape}")
    return features[window_indices(features.shape[0], window, frames)]

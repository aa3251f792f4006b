"""Image preprocessing for the Emotion-LLaMA vision encoder, in numpy only (no torch, no Pillow).

The pipeline model imports this without loading torch into its stub process.
"""

from __future__ import annotations

import math

import numpy as np

from emoserve.constants import CLIP_MEAN, CLIP_STD, IMAGE_SIZE

# Upstream: Blip2ImageEvalProcessor = torchvision Resize((448, 448), BICUBIC) on a PIL image
# (i.e. PIL's Image.resize) -> ToTensor -> Normalize(CLIP mean, std).  Pillow is not a dependency
# here, so PIL's 8-bit bicubic resampler (libImaging/Resample.c: separable, horizontal pass first,
# a = -0.5, support scaled by the reduction factor (antialias), 22-bit fixed-point coefficients,
# uint8 rounding/clipping after each pass) is reproduced exactly in numpy.

_PIL_PRECISION_BITS = 32 - 8 - 2
_BICUBIC_A = -0.5
_BICUBIC_SUPPORT = 2.0


def _bicubic(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    a = _BICUBIC_A
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def _pil_coeffs(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """PIL ``precompute_coeffs`` + ``normalize_coeffs_8bpc``: (indices [out, K], int coefficients [out, K])."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = _BICUBIC_SUPPORT * filterscale
    ksize = math.ceil(support) * 2 + 1
    center = (np.arange(out_size, dtype=np.float64) + 0.5) * scale
    ss = 1.0 / filterscale
    xmin = np.trunc(center - support + 0.5).astype(np.int64)
    xmin = np.maximum(xmin, 0)
    xmax = np.minimum(np.trunc(center + support + 0.5).astype(np.int64), in_size) - xmin  # count
    taps = np.arange(ksize, dtype=np.int64)
    valid = taps[None, :] < xmax[:, None]
    w = _bicubic(((taps[None, :] + xmin[:, None]) - center[:, None] + 0.5) * ss)
    w = np.where(valid, w, 0.0)
    ww = np.zeros(out_size, dtype=np.float64)
    for j in range(ksize):  # sequential sum, as in C
        ww = ww + w[:, j]
    w = np.where(ww[:, None] != 0.0, w / np.where(ww == 0.0, 1.0, ww)[:, None], w)
    scaled = w * float(1 << _PIL_PRECISION_BITS)
    kk = np.where(w < 0, np.trunc(-0.5 + scaled), np.trunc(0.5 + scaled)).astype(np.int64)
    kk = np.where(valid, kk, 0)
    idx = np.minimum(xmin[:, None] + taps[None, :], in_size - 1)
    return idx, kk


def _pil_resample_axis(img: np.ndarray, out_size: int, axis: int) -> np.ndarray:
    idx, kk = _pil_coeffs(img.shape[axis], out_size)
    src = np.moveaxis(img, axis, -1).astype(np.int64)  # [..., in]
    acc = np.full(src.shape[:-1] + (out_size,), 1 << (_PIL_PRECISION_BITS - 1), dtype=np.int64)
    for j in range(idx.shape[1]):
        acc += src[..., idx[:, j]] * kk[:, j]
    out = np.clip(acc >> _PIL_PRECISION_BITS, 0, 255).astype(np.uint8)
    return np.moveaxis(out, -1, axis)


def resize_bicubic_pil(
    rgb: np.ndarray, size: tuple[int, int] | int, *, pillow12_pass_order: bool = False
) -> np.ndarray:
    """``PIL.Image.fromarray(rgb).resize((w, h), Image.BICUBIC)`` for uint8 [H, W, C], bit-exact.

    ``size`` is ``(height, width)`` (or one int).  Pillow <= 11 (upstream pins Pillow 10.1.0) always
    runs the horizontal pass first; newer Pillow runs the vertical pass first when the height shrinks
    by more than twice as many pixels as the width (``pillow12_pass_order=True`` reproduces that).
    The two orders differ by a few grey levels because of the intermediate uint8 rounding.
    """
    if isinstance(size, int):
        size = (size, size)
    out_h, out_w = size
    arr = np.asarray(rgb)
    if arr.dtype != np.uint8 or arr.ndim != 3:
        raise ValueError(f"expected a uint8 [H, W, C] image, got {arr.dtype} {arr.shape}")
    in_h, in_w = arr.shape[:2]
    horizontal_first = True
    if pillow12_pass_order:
        horizontal_first = not (in_h - out_h > 0 and (in_h - out_h) > (in_w - out_w) * 2)
    passes = [(out_w, 1), (out_h, 0)] if horizontal_first else [(out_h, 0), (out_w, 1)]
    for out, axis in passes:
        if arr.shape[axis] != out:
            arr = _pil_resample_axis(arr, out, axis=axis)
    return np.ascontiguousarray(arr)


def preprocess_frame(rgb: np.ndarray, image_size: int = IMAGE_SIZE) -> np.ndarray:
    """RGB uint8 [H, W, 3] -> float32 [3, S, S]: PIL bicubic resize, /255, CLIP mean/std (upstream eval processor)."""
    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 [H, W, 3] frame, got {arr.dtype} {arr.shape}")
    resized = resize_bicubic_pil(arr, image_size)
    x = resized.astype(np.float32) / np.float32(255.0)  # ToTensor
    mean = np.asarray(CLIP_MEAN, dtype=np.float32)
    std = np.asarray(CLIP_STD, dtype=np.float32)
    x = (x - mean) / std  # Normalize (float32, per channel)
    return np.ascontiguousarray(x.transpose(2, 0, 1))

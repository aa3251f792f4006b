"""PIL's 8-bit resampler reproduced in numpy (no Pillow, no torch): what upstream's preprocessing runs.

Upstream resizes with ``PIL.Image.resize`` (via torchvision on PIL images): libImaging/Resample.c —
separable, horizontal pass first (Pillow <= 11), support scaled by the reduction factor (antialias),
22-bit fixed-point coefficients, uint8 rounding/clipping after each pass. Bicubic (a = -0.5) for
Emotion-LLaMA's frames, bilinear for Hallo2's masks.
"""

from __future__ import annotations

import math

import numpy as np

_PIL_PRECISION_BITS = 32 - 8 - 2
_BICUBIC_A = -0.5


def _bicubic(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    a = _BICUBIC_A
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def _bilinear(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


FILTERS = {"bicubic": (_bicubic, 2.0), "bilinear": (_bilinear, 1.0)}


def _pil_coeffs(in_size: int, out_size: int, kernel, kernel_support: float) -> tuple[np.ndarray, np.ndarray]:
    """PIL ``precompute_coeffs`` + ``normalize_coeffs_8bpc``: (indices [out, K], int coefficients [out, K])."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = kernel_support * filterscale
    ksize = math.ceil(support) * 2 + 1
    center = (np.arange(out_size, dtype=np.float64) + 0.5) * scale
    ss = 1.0 / filterscale
    xmin = np.maximum(np.trunc(center - support + 0.5).astype(np.int64), 0)
    count = np.minimum(np.trunc(center + support + 0.5).astype(np.int64), in_size) - xmin
    taps = np.arange(ksize, dtype=np.int64)
    valid = taps[None, :] < count[:, None]
    w = np.where(valid, kernel(((taps[None, :] + xmin[:, None]) - center[:, None] + 0.5) * ss), 0.0)
    ww = np.zeros(out_size, dtype=np.float64)
    for j in range(ksize):  # sequential sum, as in C
        ww = ww + w[:, j]
    w = np.where(ww[:, None] != 0.0, w / np.where(ww == 0.0, 1.0, ww)[:, None], w)
    scaled = w * float(1 << _PIL_PRECISION_BITS)
    kk = np.where(w < 0, np.trunc(-0.5 + scaled), np.trunc(0.5 + scaled)).astype(np.int64)
    kk = np.where(valid, kk, 0)
    idx = np.minimum(xmin[:, None] + taps[None, :], in_size - 1)
    return idx, kk


def _resample_axis(img: np.ndarray, out_size: int, axis: int, resample: str) -> np.ndarray:
    idx, kk = _pil_coeffs(img.shape[axis], out_size, *FILTERS[resample])
    src = np.moveaxis(img, axis, -1).astype(np.int64)  # [..., in]
    acc = np.full(src.shape[:-1] + (out_size,), 1 << (_PIL_PRECISION_BITS - 1), dtype=np.int64)
    for j in range(idx.shape[1]):
        acc += src[..., idx[:, j]] * kk[:, j]
    out = np.clip(acc >> _PIL_PRECISION_BITS, 0, 255).astype(np.uint8)
    return np.moveaxis(out, -1, axis)


def pil_resize(img: np.ndarray, size: tuple[int, int] | int, resample: str = "bicubic", *, pillow12_pass_order: bool = False) -> np.ndarray:
    """``PIL.Image.fromarray(img).resize((w, h), resample)`` for uint8 ``[H, W]`` / ``[H, W, C]``, bit-exact.

    ``size`` is ``(height, width)`` (or one int). Pillow <= 11 (upstreams pin Pillow 10) always runs the
    horizontal pass first; newer Pillow runs the vertical pass first when the height shrinks by more than
    twice as many pixels as the width (``pillow12_pass_order=True``); the orders differ by a few grey
    levels because of the intermediate uint8 rounding.
    """
    if isinstance(size, int):
        size = (size, size)
    out_h, out_w = size
    arr = np.asarray(img)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3):
        raise ValueError(f"expected a uint8 [H, W] or [H, W, C] image, got {arr.dtype} {arr.shape}")
    in_h, in_w = arr.shape[:2]
    horizontal_first = True
    if pillow12_pass_order:
        horizontal_first = not (in_h - out_h > 0 and (in_h - out_h) > (in_w - out_w) * 2)
    passes = [(out_w, 1), (out_h, 0)] if horizontal_first else [(out_h, 0), (out_w, 1)]
    for out, axis in passes:
        if arr.shape[axis] != out:
            arr = _resample_axis(arr, out, axis, resample)
    return np.ascontiguousarray(arr)

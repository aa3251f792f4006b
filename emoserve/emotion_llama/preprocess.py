"""Image preprocessing for the Emotion-LLaMA vision encoder, in numpy only (no torch, no Pillow).

The pipeline model imports this without loading torch into its stub process.
"""

from __future__ import annotations

import numpy as np

from emoserve.constants import CLIP_MEAN, CLIP_STD, IMAGE_SIZE
from emoserve.imaging import pil_resize

# Upstream: Blip2ImageEvalProcessor = torchvision Resize((448, 448), BICUBIC) on a PIL image
# (i.e. PIL's Image.resize) -> ToTensor -> Normalize(CLIP mean, std).


def resize_bicubic_pil(rgb: np.ndarray, size: tuple[int, int] | int, *, pillow12_pass_order: bool = False) -> np.ndarray:
    """``PIL.Image.fromarray(rgb).resize((w, h), Image.BICUBIC)`` for uint8 [H, W, C], bit-exact."""
    if np.asarray(rgb).ndim != 3:
        raise ValueError(f"expected a uint8 [H, W, C] image, got {np.asarray(rgb).dtype} {np.asarray(rgb).shape}")
    return pil_resize(rgb, size, "bicubic", pillow12_pass_order=pillow12_pass_order)


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

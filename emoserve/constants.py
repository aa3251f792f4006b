"""Project-wide constants shared by the A2E network, export and post-processing.

Audio is mono float32 at :data:`SAMPLE_RATE` Hz; the LAM-A2E network emits
:data:`NUM_BLENDSHAPES` ARKit blendshape weights per frame at :data:`FPS`.
"""

from __future__ import annotations

SAMPLE_RATE = 16000
"""Input audio sample rate (Hz) expected by the A2E network."""

FPS = 30
"""Output blendshape frame rate (frames per second)."""

NUM_IDENTITIES = 12
"""Number of speaking-style identities of the streaming LAM-A2E model (id_idx 0..11)."""

WINDOW_FRAMES = 64
"""Streaming window length in output frames (upstream ``max_frame_length``)."""

WINDOW_SAMPLES = 34133
"""Streaming window length in samples: 16000 * 64 // 30; ceil(34133 * 30 / 16000) == 64."""

ARKIT_BLENDSHAPE_NAMES: tuple[str, ...] = (
    "browDownLeft",
    "browDownRight",
    "browInnerUp",
    "browOuterUpLeft",
    "browOuterUpRight",
    "cheekPuff",
    "cheekSquintLeft",
    "cheekSquintRight",
    "eyeBlinkLeft",
    "eyeBlinkRight",
    "eyeLookDownLeft",
    "eyeLookDownRight",
    "eyeLookInLeft",
    "eyeLookInRight",
    "eyeLookOutLeft",
    "eyeLookOutRight",
    "eyeLookUpLeft",
    "eyeLookUpRight",
    "eyeSquintLeft",
    "eyeSquintRight",
    "eyeWideLeft",
    "eyeWideRight",
    "jawForward",
    "jawLeft",
    "jawOpen",
    "jawRight",
    "mouthClose",
    "mouthDimpleLeft",
    "mouthDimpleRight",
    "mouthFrownLeft",
    "mouthFrownRight",
    "mouthFunnel",
    "mouthLeft",
    "mouthLowerDownLeft",
    "mouthLowerDownRight",
    "mouthPressLeft",
    "mouthPressRight",
    "mouthPucker",
    "mouthRight",
    "mouthRollLower",
    "mouthRollUpper",
    "mouthShrugLower",
    "mouthShrugUpper",
    "mouthSmileLeft",
    "mouthSmileRight",
    "mouthStretchLeft",
    "mouthStretchRight",
    "mouthUpperUpLeft",
    "mouthUpperUpRight",
    "noseSneerLeft",
    "noseSneerRight",
    "tongueOut",
)
"""The 52 ARKit blendshape names in the network's output-channel order."""

NUM_BLENDSHAPES = 52
"""Number of output channels (len(ARKIT_BLENDSHAPE_NAMES))."""

assert len(ARKIT_BLENDSHAPE_NAMES) == NUM_BLENDSHAPES


def num_output_frames(num_samples: int) -> int:
    """Number of 30 fps output frames for ``num_samples`` samples at 16 kHz.

    ``ceil(num_samples * FPS / SAMPLE_RATE)`` computed with exact integer
    arithmetic (upstream uses float ``math.ceil(n / 16000 * 30)``, which agrees
    except where float rounding error bumps an exact multiple up, e.g. 132800).
    """
    n = int(num_samples)
    if n < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    return (n * FPS + SAMPLE_RATE - 1) // SAMPLE_RATE


# =========================================================================== Emotion-LLaMA
# Image preprocessing of Emotion-LLaMA / MiniGPT-v2 (``Blip2ImageEvalProcessor``, image_size 448):
# first RGB frame -> bicubic resize to 448x448 -> ToTensor (/255) -> Normalize(CLIP mean/std).

IMAGE_SIZE = 448
"""Side of the square image fed to the EVA-CLIP ViT-g (pixels)."""

VIT_PATCH_SIZE = 14
"""ViT patch size: (448 / 14)^2 = 1024 patch tokens (+1 CLS)."""

CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
"""Per-channel (RGB) mean of the image normalisation (OpenAI CLIP statistics)."""

CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
"""Per-channel (RGB) standard deviation of the image normalisation."""

NUM_IMAGE_TOKENS = 256
"""LLM tokens from the image: 1024 patch tokens regrouped 4 at a time."""

NUM_FEATURE_TOKENS = 3
"""LLM tokens from ``video_features``: FaceMAE, VideoMAE, HuBERT (in that order)."""

NUM_MULTIMODAL_TOKENS = NUM_IMAGE_TOKENS + NUM_FEATURE_TOKENS + 1
"""cat(256 image tokens, 3 feature tokens, 1 CLS token) = 260 embeddings per clip."""

"""Export specs: ONNX I/O names, dynamic axes and TensorRT optimisation profiles.

Modelled on the ``BaseModel`` helpers of NVIDIA's TensorRT ``demo/Diffusion``
(``get_input_names`` / ``get_output_names`` / ``get_dynamic_axes`` /
``get_input_profile`` / ``get_sample_input``).  Dynamic dimensions are *batch* and, for audio
inputs, *number of samples*.

Every spec also says which input shape the ONNX export traces with
(:meth:`BaseNetworkSpec.get_export_sample_shape`, the arguments of ``get_sample_input``) and, when
known, the expected output shapes for a given input shape (:meth:`BaseNetworkSpec.get_output_shapes`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from emoserve.constants import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGE_SIZE,
    NUM_BLENDSHAPES,
    NUM_FEATURE_TOKENS,
    NUM_IDENTITIES,
    NUM_IMAGE_TOKENS,
    SAMPLE_RATE,
    WINDOW_SAMPLES,
    num_output_frames,
)
from emoserve.model_catalog import (
    A2E_NETWORK_MODEL,
    AUDIO_INPUT_VALUES,
    CLS_TOKEN,
    EMOTION_AUDIO_MODEL,
    EMOTION_VISION_MODEL,
    FEATURE_TOKENS,
    IMAGE_TOKENS,
    NETWORK_AUDIO,
    NETWORK_BLENDSHAPES,
    NETWORK_IDENTITY,
    PIXEL_VALUES,
)

__all__ = [
    "BaseNetworkSpec",
    "A2ENetworkSpec",
    "VisionEncoderSpec",
    "AudioEncoderSpec",
    "A2E_EXPORT_SAMPLE_SHAPE",
    "Shape",
    "InputProfile",
]

Shape = tuple[int, ...]
InputProfile = dict[str, list[Shape]]  # name -> [min, opt, max]

# A2E trace shape: batch 2 (so batch is never specialised to 1) and a sample count whose frame
# count (ceil(20000 * 30 / 16000) = 38) is not an exact division, exercising the ceil in the graph.
A2E_EXPORT_SAMPLE_SHAPE: tuple[int, int] = (2, 20000)


class BaseNetworkSpec:
    """Interface shared by export specs (one per exported network)."""

    name: str = "network"

    def get_input_names(self) -> list[str]:
        raise NotImplementedError

    def get_output_names(self) -> list[str]:
        raise NotImplementedError

    def get_dynamic_axes(self) -> dict[str, dict[int, str]]:
        raise NotImplementedError

    def get_input_profile(self, *args: Any, **kwargs: Any) -> InputProfile:
        raise NotImplementedError

    def get_sample_input(self, *args: Any, **kwargs: Any) -> tuple[Tensor, ...]:
        raise NotImplementedError

    def get_export_sample_shape(self) -> tuple[int, ...]:
        """Positional arguments of :meth:`get_sample_input` used to trace the ONNX export."""
        raise NotImplementedError

    def get_output_shapes(self, *shape: int) -> list[Shape] | None:
        """Expected output shapes (in output order) for ``get_sample_input(*shape)``; None if unknown."""
        return None

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable description (stored in export sidecars)."""
        return {"name": self.name, "inputs": self.get_input_names(), "outputs": self.get_output_names()}

    def _describe_dynamic_axes(self) -> dict[str, dict[str, str]]:
        return {k: {str(a): n for a, n in v.items()} for k, v in self.get_dynamic_axes().items()}

    @staticmethod
    def _check_range(what: str, vals: tuple[int, int, int], lower: int) -> None:
        lo, opt, hi = vals
        if not (lower <= lo <= opt <= hi):
            raise ValueError(f"{what} profile must satisfy {lower} <= min <= opt <= max, got {vals}")


@dataclass
class A2ENetworkSpec(BaseNetworkSpec):
    """Spec of :class:`emoserve.a2e.network.LamA2ENetwork`.

    ONNX contract::

        inputs : input_values  float32 [batch, samples]   raw 16 kHz mono audio
                 id_idx        int64   [batch]            identity index 0..num_identities-1
        output : blendshapes   float32 [batch, frames, 52] in [0, 1], 30 fps,
                 frames = ceil(samples * 30 / 16000)

    Defaults of the TensorRT profile: batch 1/1/``max_batch``; samples
    ``min_samples`` (400 = the wav2vec2 conv receptive field, 1 frame) /
    ``opt_samples`` (the 64-frame streaming window) / ``max_samples`` (10 s).
    """

    name: str = A2E_NETWORK_MODEL
    num_identities: int = NUM_IDENTITIES
    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 8
    min_samples: int = 400
    opt_samples: int = WINDOW_SAMPLES
    max_samples: int = 160_000

    def get_input_names(self) -> list[str]:
        return [NETWORK_AUDIO, NETWORK_IDENTITY]

    def get_output_names(self) -> list[str]:
        return [NETWORK_BLENDSHAPES]

    def get_dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {
            NETWORK_AUDIO: {0: "batch", 1: "samples"},
            NETWORK_IDENTITY: {0: "batch"},
            NETWORK_BLENDSHAPES: {0: "batch", 1: "frames"},
        }

    def get_input_profile(
        self,
        batch_min: int | None = None,
        batch_opt: int | None = None,
        batch_max: int | None = None,
        samples_min: int | None = None,
        samples_opt: int | None = None,
        samples_max: int | None = None,
    ) -> InputProfile:
        """TensorRT optimisation profile: ``{input name: [min_shape, opt_shape, max_shape]}``."""
        b = (
            self.min_batch if batch_min is None else batch_min,
            self.opt_batch if batch_opt is None else batch_opt,
            self.max_batch if batch_max is None else batch_max,
        )
        s = (
            self.min_samples if samples_min is None else samples_min,
            self.opt_samples if samples_opt is None else samples_opt,
            self.max_samples if samples_max is None else samples_max,
        )
        self._check_range("batch", b, lower=1)
        self._check_range("samples", s, lower=self.min_samples)
        return {
            NETWORK_AUDIO: [(b[0], s[0]), (b[1], s[1]), (b[2], s[2])],
            NETWORK_IDENTITY: [(b[0],), (b[1],), (b[2],)],
        }

    def get_output_shape(self, batch: int, samples: int) -> Shape:
        return (batch, num_output_frames(samples), NUM_BLENDSHAPES)

    def get_output_shapes(self, batch: int, samples: int) -> list[Shape]:
        return [self.get_output_shape(batch, samples)]

    def get_export_sample_shape(self) -> tuple[int, int]:
        return A2E_EXPORT_SAMPLE_SHAPE

    def get_shape_dict(self, batch: int, samples: int) -> dict[str, Shape]:
        return {
            NETWORK_AUDIO: (batch, samples),
            NETWORK_IDENTITY: (batch,),
            NETWORK_BLENDSHAPES: self.get_output_shape(batch, samples),
        }

    def get_sample_input(
        self, batch: int, samples: int, *, seed: int = 0, device: str | torch.device = "cpu"
    ) -> tuple[Tensor, Tensor]:
        """Deterministic random (audio, id_idx) pair; audio ~ N(0, 0.1^2) clipped to [-1, 1]."""
        if batch < 1 or samples < self.min_samples:
            raise ValueError(f"need batch >= 1 and samples >= {self.min_samples}, got ({batch}, {samples})")
        gen = torch.Generator().manual_seed(seed)
        audio = (torch.randn(batch, samples, generator=gen) * 0.1).clamp_(-1.0, 1.0)
        ids = torch.randint(0, self.num_identities, (batch,), generator=gen, dtype=torch.int64)
        return audio.to(device), ids.to(device)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["dynamic_axes"] = self._describe_dynamic_axes()
        return d


def _pick(default: int, override: int | None) -> int:
    return default if override is None else override


@dataclass
class VisionEncoderSpec(BaseNetworkSpec):
    """Spec of :class:`emoserve.emotion_llama.encoders.VisionEncoder` (EVA ViT-g + projections).

    ONNX contract::

        input  : pixel_values  float32 [batch, 3, 448, 448]  CLIP-normalised RGB (preprocess_frame)
        outputs: image_tokens  float32 [batch, 256, llm_hidden]
                 cls_token     float32 [batch, 1, llm_hidden]

    Only the batch is dynamic.  The export traces with batch 2 (so batch is never specialised to 1).
    """

    name: str = EMOTION_VISION_MODEL
    llm_hidden: int = 4096
    image_size: int = IMAGE_SIZE
    num_image_tokens: int = NUM_IMAGE_TOKENS
    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 8
    export_batch: int = 2

    def get_input_names(self) -> list[str]:
        return [PIXEL_VALUES]

    def get_output_names(self) -> list[str]:
        return [IMAGE_TOKENS, CLS_TOKEN]

    def get_dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {PIXEL_VALUES: {0: "batch"}, IMAGE_TOKENS: {0: "batch"}, CLS_TOKEN: {0: "batch"}}

    def get_input_shape(self, batch: int) -> Shape:
        return (batch, 3, self.image_size, self.image_size)

    def get_input_profile(
        self, batch_min: int | None = None, batch_opt: int | None = None, batch_max: int | None = None
    ) -> InputProfile:
        b = (_pick(self.min_batch, batch_min), _pick(self.opt_batch, batch_opt), _pick(self.max_batch, batch_max))
        self._check_range("batch", b, lower=1)
        return {PIXEL_VALUES: [self.get_input_shape(x) for x in b]}

    def get_output_shapes(self, batch: int) -> list[Shape]:
        return [(batch, self.num_image_tokens, self.llm_hidden), (batch, 1, self.llm_hidden)]

    def get_shape_dict(self, batch: int) -> dict[str, Shape]:
        image_tokens, cls_token = self.get_output_shapes(batch)
        return {PIXEL_VALUES: self.get_input_shape(batch), IMAGE_TOKENS: image_tokens, CLS_TOKEN: cls_token}

    def get_export_sample_shape(self) -> tuple[int]:
        return (self.export_batch,)

    def get_sample_input(
        self, batch: int, *, seed: int = 0, device: str | torch.device = "cpu"
    ) -> tuple[Tensor]:
        """A deterministic random image in [0, 1], CLIP-normalised."""
        if batch < 1:
            raise ValueError(f"need batch >= 1, got {batch}")
        gen = torch.Generator().manual_seed(seed)
        img = torch.rand(batch, 3, self.image_size, self.image_size, generator=gen)
        mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        return (((img - mean) / std).to(device),)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(dynamic_axes=self._describe_dynamic_axes(), llm_hidden=self.llm_hidden, image_size=self.image_size)
        return d


@dataclass
class AudioEncoderSpec(BaseNetworkSpec):
    """Spec of :class:`emoserve.emotion_llama.encoders.AudioFeatureEncoder` (HuBERT + feats projections).

    ONNX contract::

        input : input_values    float32 [batch, samples]  raw 16 kHz mono PCM (normalised in-graph),
                                samples >= 400 (one HuBERT conv frame)
        output: feature_tokens  float32 [batch, 3, llm_hidden]  FaceMAE (zeros), VideoMAE (zeros), HuBERT

    TensorRT profile defaults: batch 1/1/``max_batch``; samples 400 / 5 s / 30 s.
    """

    name: str = EMOTION_AUDIO_MODEL
    llm_hidden: int = 4096
    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 8
    min_samples: int = 400
    opt_samples: int = 5 * SAMPLE_RATE
    max_samples: int = 30 * SAMPLE_RATE
    export_shape: tuple[int, int] = (2, 20000)

    def get_input_names(self) -> list[str]:
        return [AUDIO_INPUT_VALUES]

    def get_output_names(self) -> list[str]:
        return [FEATURE_TOKENS]

    def get_dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {AUDIO_INPUT_VALUES: {0: "batch", 1: "samples"}, FEATURE_TOKENS: {0: "batch"}}

    def get_input_profile(
        self,
        batch_min: int | None = None,
        batch_opt: int | None = None,
        batch_max: int | None = None,
        samples_min: int | None = None,
        samples_opt: int | None = None,
        samples_max: int | None = None,
    ) -> InputProfile:
        b = (_pick(self.min_batch, batch_min), _pick(self.opt_batch, batch_opt), _pick(self.max_batch, batch_max))
        s = (
            _pick(self.min_samples, samples_min),
            _pick(self.opt_samples, samples_opt),
            _pick(self.max_samples, samples_max),
        )
        self._check_range("batch", b, lower=1)
        self._check_range("samples", s, lower=self.min_samples)
        return {AUDIO_INPUT_VALUES: [(b[0], s[0]), (b[1], s[1]), (b[2], s[2])]}

    def get_output_shapes(self, batch: int, samples: int) -> list[Shape]:
        return [(batch, NUM_FEATURE_TOKENS, self.llm_hidden)]

    def get_shape_dict(self, batch: int, samples: int) -> dict[str, Shape]:
        return {AUDIO_INPUT_VALUES: (batch, samples), FEATURE_TOKENS: self.get_output_shapes(batch, samples)[0]}

    def get_export_sample_shape(self) -> tuple[int, int]:
        return tuple(self.export_shape)  # type: ignore[return-value]

    def get_sample_input(
        self, batch: int, samples: int, *, seed: int = 0, device: str | torch.device = "cpu"
    ) -> tuple[Tensor]:
        """Deterministic random audio ~ N(0, 0.1^2) clipped to [-1, 1]."""
        if batch < 1 or samples < self.min_samples:
            raise ValueError(f"need batch >= 1 and samples >= {self.min_samples}, got ({batch}, {samples})")
        gen = torch.Generator().manual_seed(seed)
        audio = (torch.randn(batch, samples, generator=gen) * 0.1).clamp_(-1.0, 1.0)
        return (audio.to(device),)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(dynamic_axes=self._describe_dynamic_axes(), llm_hidden=self.llm_hidden)
        return d

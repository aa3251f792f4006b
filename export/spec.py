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


# ============================================================================ Hallo2 components
# VAE halves, audio encoder and the three conditioning networks (emoserve.hallo2.vae / audio /
# projections).  Every spec takes the Hallo2 profile name ("full" = upstream sizes, "tiny" = tests).

from emoserve.hallo2.audio_windows import audio_frames as _hallo2_audio_frames
from emoserve.hallo2.profile import Hallo2Profile
from emoserve.hallo2.profile import get_profile as _hallo2_profile
from emoserve.model_catalog import (
    HALLO2_AUDIO,
    HALLO2_AUDIO_ENCODER_MODEL,
    HALLO2_AUDIO_FEATURES,
    HALLO2_AUDIO_PROJ_MODEL,
    HALLO2_AUDIO_TOKENS,
    HALLO2_AUDIO_WINDOWS,
    HALLO2_FACE_EMBEDDING,
    HALLO2_FACE_FEATURES,
    HALLO2_FACE_LOCATOR_MODEL,
    HALLO2_FACE_MASK,
    HALLO2_IMAGE_PROJ_MODEL,
    HALLO2_IMAGE_TOKENS,
    HALLO2_LATENTS,
    HALLO2_PIXELS,
    HALLO2_VAE_DECODER_MODEL,
    HALLO2_VAE_ENCODER_MODEL,
)

__all__ += [
    "VaeEncoderSpec",
    "VaeDecoderSpec",
    "Hallo2AudioEncoderSpec",
    "AudioProjSpec",
    "ImageProjSpec",
    "FaceLocatorSpec",
]


@dataclass
class _Hallo2Spec(BaseNetworkSpec):
    """Shared plumbing: a Hallo2 profile, a batch range and a (batch[, frames]) trace shape."""

    profile: str = "full"
    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 8
    export_shape: tuple[int, ...] = (2,)

    @property
    def prof(self) -> Hallo2Profile:
        return _hallo2_profile(self.profile)

    def _batches(self, lo: int | None, opt: int | None, hi: int | None) -> tuple[int, int, int]:
        b = (_pick(self.min_batch, lo), _pick(self.opt_batch, opt), _pick(self.max_batch, hi))
        self._check_range("batch", b, lower=1)
        return b

    def get_export_sample_shape(self) -> tuple[int, ...]:
        return tuple(self.export_shape)

    @staticmethod
    def _gen(seed: int) -> torch.Generator:
        return torch.Generator().manual_seed(seed)

    @staticmethod
    def _need(cond: bool, what: str) -> None:
        if not cond:
            raise ValueError(what)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(dynamic_axes=self._describe_dynamic_axes(), profile=self.profile)
        return d


@dataclass
class VaeEncoderSpec(_Hallo2Spec):
    """Spec of :class:`emoserve.hallo2.vae.VaeEncoder`.

    ONNX contract::

        input : pixels   float32 [batch, 3, H, W]  RGB in [-1, 1], H = W = profile image size (512)
        output: latents  float32 [batch, 4, H/8, W/8]  posterior mean x 0.18215

    Batch is dynamic (TensorRT opt 3: the reference image + 2 motion frames of a clip).
    """

    name: str = HALLO2_VAE_ENCODER_MODEL
    opt_batch: int = 3

    def get_input_names(self) -> list[str]:
        return [HALLO2_PIXELS]

    def get_output_names(self) -> list[str]:
        return [HALLO2_LATENTS]

    def get_dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {HALLO2_PIXELS: {0: "batch"}, HALLO2_LATENTS: {0: "batch"}}

    def get_input_shape(self, batch: int) -> Shape:
        return (batch, 3, self.prof.image_size, self.prof.image_size)

    def get_input_profile(
        self, batch_min: int | None = None, batch_opt: int | None = None, batch_max: int | None = None
    ) -> InputProfile:
        return {HALLO2_PIXELS: [self.get_input_shape(b) for b in self._batches(batch_min, batch_opt, batch_max)]}

    def get_output_shapes(self, batch: int) -> list[Shape]:
        p = self.prof
        return [(batch, p.latent_channels, p.latent_size, p.latent_size)]

    def get_sample_input(self, batch: int, *, seed: int = 0, device: str | torch.device = "cpu") -> tuple[Tensor]:
        """A deterministic random image in [-1, 1]."""
        self._need(batch >= 1, f"need batch >= 1, got {batch}")
        pixels = torch.rand(self.get_input_shape(batch), generator=self._gen(seed)) * 2.0 - 1.0
        return (pixels.to(device),)


@dataclass
class VaeDecoderSpec(_Hallo2Spec):
    """Spec of :class:`emoserve.hallo2.vae.VaeDecoder`.

    ONNX contract::

        input : latents  float32 [batch, 4, h, w]  scaled latents (x 0.18215), h = w = image size / 8
        output: pixels   float32 [batch, 3, 8h, 8w]  RGB clamped to [-1, 1]

    Batch is dynamic (frames of a clip are decoded as a batch; TensorRT opt/max 4/16).
    """

    name: str = HALLO2_VAE_DECODER_MODEL
    opt_batch: int = 4
    max_batch: int = 16

    def get_input_names(self) -> list[str]:
        return [HALLO2_LATENTS]

    def get_output_names(self) -> list[str]:
        return [HALLO2_PIXELS]

    def get_dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {HALLO2_LATENTS: {0: "batch"}, HALLO2_PIXELS: {0: "batch"}}

    def get_input_shape(self, batch: int) -> Shape:
        p = self.prof
        return (batch, p.latent_channels, p.latent_size, p.latent_size)

    def get_input_profile(
        self, batch_min: int | None = None, batch_opt: int | None = None, batch_max: int | None = None
    ) -> InputProfile:
        return {HALLO2_LATENTS: [self.get_input_shape(b) for b in self._batches(batch_min, batch_opt, batch_max)]}

    def get_output_shapes(self, batch: int) -> list[Shape]:
        return [(batch, 3, self.prof.image_size, self.prof.image_size)]

    def get_sample_input(self, batch: int, *, seed: int = 0, device: str | torch.device = "cpu") -> tuple[Tensor]:
        """Deterministic latents ~ N(0, 1) (the scale of scaled SD latents)."""
        self._need(batch >= 1, f"need batch >= 1, got {batch}")
        return (torch.randn(self.get_input_shape(batch), generator=self._gen(seed)).to(device),)


@dataclass
class Hallo2AudioEncoderSpec(_Hallo2Spec):
    """Spec of :class:`emoserve.hallo2.audio.Hallo2AudioEncoder` (wav2vec2-base-960h, all layers, 25 fps).

    ONNX contract::

        input : audio           float32 [batch, samples]  raw 16 kHz mono PCM (normalised in-graph), >= 400
        output: audio_features  float32 [batch, frames, L, D]  frames = ceil(samples / 16000 * 25)
                                 (upstream's float64 formula), L = 12 layers, D = 768

    TensorRT profile defaults: batch 1/1/``max_batch``; samples 400 / 10 s / 60 s (upstream's segment).
    """

    name: str = HALLO2_AUDIO_ENCODER_MODEL
    max_batch: int = 4
    min_samples: int = 400
    opt_samples: int = 10 * SAMPLE_RATE
    max_samples: int = 60 * SAMPLE_RATE
    export_shape: tuple[int, ...] = (2, 20000)

    def get_input_names(self) -> list[str]:
        return [HALLO2_AUDIO]

    def get_output_names(self) -> list[str]:
        return [HALLO2_AUDIO_FEATURES]

    def get_dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {HALLO2_AUDIO: {0: "batch", 1: "samples"}, HALLO2_AUDIO_FEATURES: {0: "batch", 1: "frames"}}

    def get_input_profile(
        self,
        batch_min: int | None = None,
        batch_opt: int | None = None,
        batch_max: int | None = None,
        samples_min: int | None = None,
        samples_opt: int | None = None,
        samples_max: int | None = None,
    ) -> InputProfile:
        b = self._batches(batch_min, batch_opt, batch_max)
        s = (
            _pick(self.min_samples, samples_min),
            _pick(self.opt_samples, samples_opt),
            _pick(self.max_samples, samples_max),
        )
        self._check_range("samples", s, lower=self.min_samples)
        return {HALLO2_AUDIO: [(b[0], s[0]), (b[1], s[1]), (b[2], s[2])]}

    def get_output_shapes(self, batch: int, samples: int) -> list[Shape]:
        p = self.prof
        return [(batch, _hallo2_audio_frames(samples, SAMPLE_RATE, p.fps), p.wav2vec_layers, p.wav2vec_hidden)]

    def get_sample_input(
        self, batch: int, samples: int, *, seed: int = 0, device: str | torch.device = "cpu"
    ) -> tuple[Tensor]:
        """Deterministic random audio ~ N(0, 0.1^2) clipped to [-1, 1]."""
        self._need(batch >= 1 and samples >= self.min_samples,
                   f"need batch >= 1 and samples >= {self.min_samples}, got ({batch}, {samples})")
        audio = (torch.randn(batch, samples, generator=self._gen(seed)) * 0.1).clamp_(-1.0, 1.0)
        return (audio.to(device),)


@dataclass
class _Hallo2FramesSpec(_Hallo2Spec):
    """A network with one ``[batch, frames, ...]``-shaped input: batch 1/1/max, frames 1 / clip / clip + motion."""

    def get_input_profile(
        self,
        batch_min: int | None = None,
        batch_opt: int | None = None,
        batch_max: int | None = None,
        frames_min: int = 1,
        frames_opt: int | None = None,
        frames_max: int | None = None,
    ) -> InputProfile:
        b = self._batches(batch_min, batch_opt, batch_max)
        p = self.prof
        f = (frames_min, _pick(p.clip_frames, frames_opt), _pick(p.total_frames, frames_max))
        self._check_range("frames", f, lower=1)
        return {self.get_input_names()[0]: [self.get_input_shape(x, y) for x, y in zip(b, f)]}


@dataclass
class AudioProjSpec(_Hallo2FramesSpec):
    """Spec of :class:`emoserve.hallo2.projections.AudioProjModel`.

    ONNX contract::

        input : audio_windows  float32 [batch, frames, 5, L, D]  (features of frames i-2..i+2, clamped)
        output: audio_tokens   float32 [batch, frames, 32, C]

    TensorRT profile defaults: batch 1/1/``max_batch``; frames 1 / clip / clip + motion frames.
    (Upstream's unconditional branch uses zero tokens, so guidance needs no second run of this net.)
    """

    name: str = HALLO2_AUDIO_PROJ_MODEL
    max_batch: int = 4
    export_shape: tuple[int, ...] = (2, 5)

    def get_input_names(self) -> list[str]:
        return [HALLO2_AUDIO_WINDOWS]

    def get_output_names(self) -> list[str]:
        return [HALLO2_AUDIO_TOKENS]

    def get_dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {HALLO2_AUDIO_WINDOWS: {0: "batch", 1: "frames"}, HALLO2_AUDIO_TOKENS: {0: "batch", 1: "frames"}}

    def get_input_shape(self, batch: int, frames: int) -> Shape:
        p = self.prof
        return (batch, frames, p.audio_window, p.wav2vec_layers, p.wav2vec_hidden)

    def get_output_shapes(self, batch: int, frames: int) -> list[Shape]:
        p = self.prof
        return [(batch, frames, p.audio_tokens, p.audio_token_dim)]

    def get_sample_input(
        self, batch: int, frames: int, *, seed: int = 0, device: str | torch.device = "cpu"
    ) -> tuple[Tensor]:
        """Deterministic features ~ N(0, 0.5^2) (roughly the scale of wav2vec2 hidden states)."""
        self._need(batch >= 1 and frames >= 1, f"need batch >= 1 and frames >= 1, got ({batch}, {frames})")
        return ((torch.randn(self.get_input_shape(batch, frames), generator=self._gen(seed)) * 0.5).to(device),)


@dataclass
class ImageProjSpec(_Hallo2Spec):
    """Spec of :class:`emoserve.hallo2.projections.ImageProjModel`.

    ONNX contract::

        input : face_embedding  float32 [batch, 512]  InsightFace embedding (zeros: no face / unconditional)
        output: image_tokens    float32 [batch, 4, C]
    """

    name: str = HALLO2_IMAGE_PROJ_MODEL

    def get_input_names(self) -> list[str]:
        return [HALLO2_FACE_EMBEDDING]

    def get_output_names(self) -> list[str]:
        return [HALLO2_IMAGE_TOKENS]

    def get_dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {HALLO2_FACE_EMBEDDING: {0: "batch"}, HALLO2_IMAGE_TOKENS: {0: "batch"}}

    def get_input_profile(
        self, batch_min: int | None = None, batch_opt: int | None = None, batch_max: int | None = None
    ) -> InputProfile:
        d = self.prof.face_embedding_dim
        return {HALLO2_FACE_EMBEDDING: [(b, d) for b in self._batches(batch_min, batch_opt, batch_max)]}

    def get_output_shapes(self, batch: int) -> list[Shape]:
        p = self.prof
        return [(batch, p.image_tokens, p.cross_attention_dim)]

    def get_sample_input(self, batch: int, *, seed: int = 0, device: str | torch.device = "cpu") -> tuple[Tensor]:
        """Deterministic embeddings ~ N(0, 1) (InsightFace's raw embedding has norm ~20-25)."""
        self._need(batch >= 1, f"need batch >= 1, got {batch}")
        return (torch.randn(batch, self.prof.face_embedding_dim, generator=self._gen(seed)).to(device),)


@dataclass
class FaceLocatorSpec(_Hallo2FramesSpec):
    """Spec of :class:`emoserve.hallo2.projections.FaceLocatorNet`.

    ONNX contract::

        input : face_mask      float32 [batch, 1, frames, H, W]  face region (expanded x1.2) in [0, 1]
        output: face_features  float32 [batch, 320, frames, H/8, W/8]

    TensorRT profile defaults: batch 1/1/``max_batch``; frames 1 / clip / clip + motion frames.
    """

    name: str = HALLO2_FACE_LOCATOR_MODEL
    max_batch: int = 2
    export_shape: tuple[int, ...] = (2, 3)

    def get_input_names(self) -> list[str]:
        return [HALLO2_FACE_MASK]

    def get_output_names(self) -> list[str]:
        return [HALLO2_FACE_FEATURES]

    def get_dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {HALLO2_FACE_MASK: {0: "batch", 2: "frames"}, HALLO2_FACE_FEATURES: {0: "batch", 2: "frames"}}

    def get_input_shape(self, batch: int, frames: int) -> Shape:
        s = self.prof.image_size
        return (batch, 1, frames, s, s)

    def get_output_shapes(self, batch: int, frames: int) -> list[Shape]:
        p = self.prof
        return [(batch, p.face_locator_channels, frames, p.latent_size, p.latent_size)]

    def get_sample_input(
        self, batch: int, frames: int, *, seed: int = 0, device: str | torch.device = "cpu"
    ) -> tuple[Tensor]:
        """A deterministic random binary mask (per pixel, then the same for every frame, as upstream)."""
        self._need(batch >= 1 and frames >= 1, f"need batch >= 1 and frames >= 1, got ({batch}, {frames})")
        s = self.prof.image_size
        mask = (torch.rand(batch, 1, 1, s, s, generator=self._gen(seed)) > 0.5).to(torch.float32)
        return (mask.expand(batch, 1, frames, s, s).contiguous().to(device),)


# ============================================================================ Hallo2 UNets
# emoserve.hallo2.unet: the reference UNet2D (reference features as explicit outputs) and the
# denoising UNet3D (reference features, masks and conditions as explicit inputs).

from emoserve.hallo2.unet import mask_token_counts as _hallo2_mask_tokens
from emoserve.hallo2.unet import reference_feature_layout as _hallo2_ref_layout
from emoserve.model_catalog import (
    HALLO2_DENOISING_UNET_MODEL,
    HALLO2_FACE_MASK_PREFIX,
    HALLO2_FULL_MASK_PREFIX,
    HALLO2_LIP_MASK_PREFIX,
    HALLO2_MODEL_OUTPUT,
    HALLO2_REF_FEAT_PREFIX,
    HALLO2_REF_LATENTS,
    HALLO2_REF_MASK,
    HALLO2_REFERENCE_UNET_MODEL,
    HALLO2_SAMPLE,
    HALLO2_TIMESTEP,
)

__all__ += ["ReferenceUNetSpec", "DenoisingUNetSpec"]


def _hallo2_ref_names(profile: str) -> list[str]:
    return [f"{HALLO2_REF_FEAT_PREFIX}{i}" for i in range(len(_hallo2_ref_layout(profile)))]


def _hallo2_mask_names(profile: str) -> list[str]:
    n = len(_hallo2_mask_tokens(profile))
    return [f"{pre}{i}" for pre in (HALLO2_FULL_MASK_PREFIX, HALLO2_FACE_MASK_PREFIX, HALLO2_LIP_MASK_PREFIX)
            for i in range(n)]


@dataclass
class ReferenceUNetSpec(_Hallo2Spec):
    """Spec of :class:`emoserve.hallo2.unet.ReferenceUNet2D`.

    ONNX contract::

        inputs : ref_latents   float32 [batch, 4, h, w]   scaled VAE latents (reference image, motion frames)
                 timestep      int64   [batch]            upstream: 0
                 image_tokens  float32 [batch, 4, C]      ImageProjModel output
        outputs: ref_feat_i    float32 [batch, L_i, C_i]  i = 0..K-1 (K = 16 full / 4 tiny), the ``norm1``
                                                          output of each spatial transformer block
                                                          (``reference_feature_layout``)

    Only the batch is dynamic (a video needs ``1 + motion_frames`` images per guidance branch).
    """

    name: str = HALLO2_REFERENCE_UNET_MODEL
    max_batch: int = 6

    def get_input_names(self) -> list[str]:
        return [HALLO2_REF_LATENTS, HALLO2_TIMESTEP, HALLO2_IMAGE_TOKENS]

    def get_output_names(self) -> list[str]:
        return _hallo2_ref_names(self.profile)

    def get_dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {name: {0: "batch"} for name in self.get_input_names() + self.get_output_names()}

    def get_input_shapes(self, batch: int) -> dict[str, Shape]:
        p = self.prof
        return {
            HALLO2_REF_LATENTS: (batch, p.latent_channels, p.latent_size, p.latent_size),
            HALLO2_TIMESTEP: (batch,),
            HALLO2_IMAGE_TOKENS: (batch, p.image_tokens, p.cross_attention_dim),
        }

    def get_input_profile(
        self, batch_min: int | None = None, batch_opt: int | None = None, batch_max: int | None = None
    ) -> InputProfile:
        shapes = [self.get_input_shapes(b) for b in self._batches(batch_min, batch_opt, batch_max)]
        return {name: [s[name] for s in shapes] for name in self.get_input_names()}

    def get_output_shapes(self, batch: int) -> list[Shape]:
        return [(batch, tokens, ch) for _, tokens, ch in _hallo2_ref_layout(self.profile)]

    def get_sample_input(
        self, batch: int, *, seed: int = 0, device: str | torch.device = "cpu"
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Latents ~ N(0, 1), timestep 0 (as upstream), tokens ~ N(0, 1)."""
        self._need(batch >= 1, f"need batch >= 1, got {batch}")
        g = self._gen(seed)
        s = self.get_input_shapes(batch)
        return (
            torch.randn(s[HALLO2_REF_LATENTS], generator=g).to(device),
            torch.zeros(batch, dtype=torch.int64, device=device),
            torch.randn(s[HALLO2_IMAGE_TOKENS], generator=g).to(device),
        )


@dataclass
class DenoisingUNetSpec(_Hallo2Spec):
    """Spec of :class:`emoserve.hallo2.unet.DenoisingUNet3D`.

    ONNX contract (input order as listed)::

        inputs : sample         float32 [batch, 4, frames, h, w]   noisy latents
                 timestep       int64   [batch]
                 image_tokens   float32 [batch, 4, C]              (CFG uncond: image_proj(zeros))
                 audio_tokens   float32 [batch, frames, 32, C]     (uncond: zeros)
                 face_features  float32 [batch, C0, frames, h, w]  face locator output (uncond: zeros)
                 full_mask_i, face_mask_i, lip_mask_i  float32 [batch, (h/2^i)^2]  i = 0..n-1
                 ref_mask       float32 [batch]                    1 = cond (reads the reference), 0 = uncond
                 ref_feat_i     float32 [batch, 1 + motion_frames, L_i, C_i]  i = 0..K-1
        output : model_output   float32 [batch, 4, frames, h, w]   v-prediction

    Dynamic: batch (everywhere) and frames (``sample``, ``audio_tokens``, ``face_features``,
    ``model_output``); ``frames + motion_frames <= motion_max_positions`` (32).
    TensorRT profile defaults: batch 1/2/``max_batch`` (2 = one CFG pair); frames 1 / clip / clip.
    """

    name: str = HALLO2_DENOISING_UNET_MODEL
    max_batch: int = 4
    opt_batch: int = 2
    export_shape: tuple[int, ...] = (2, 5)

    def get_input_names(self) -> list[str]:
        return (
            [HALLO2_SAMPLE, HALLO2_TIMESTEP, HALLO2_IMAGE_TOKENS, HALLO2_AUDIO_TOKENS, HALLO2_FACE_FEATURES]
            + _hallo2_mask_names(self.profile)
            + [HALLO2_REF_MASK]
            + _hallo2_ref_names(self.profile)
        )

    def get_output_names(self) -> list[str]:
        return [HALLO2_MODEL_OUTPUT]

    def get_dynamic_axes(self) -> dict[str, dict[int, str]]:
        axes: dict[str, dict[int, str]] = {name: {0: "batch"} for name in self.get_input_names()}
        for name, axis in ((HALLO2_SAMPLE, 2), (HALLO2_AUDIO_TOKENS, 1), (HALLO2_FACE_FEATURES, 2)):
            axes[name] = {0: "batch", axis: "frames"}
        axes[HALLO2_MODEL_OUTPUT] = {0: "batch", 2: "frames"}
        return axes

    def get_input_shapes(self, batch: int, frames: int) -> dict[str, Shape]:
        p = self.prof
        s = p.latent_size
        shapes: dict[str, Shape] = {
            HALLO2_SAMPLE: (batch, p.latent_channels, frames, s, s),
            HALLO2_TIMESTEP: (batch,),
            HALLO2_IMAGE_TOKENS: (batch, p.image_tokens, p.cross_attention_dim),
            HALLO2_AUDIO_TOKENS: (batch, frames, p.audio_tokens, p.audio_token_dim),
            HALLO2_FACE_FEATURES: (batch, p.face_locator_channels, frames, s, s),
        }
        tokens = _hallo2_mask_tokens(self.profile)
        for name in _hallo2_mask_names(self.profile):
            shapes[name] = (batch, tokens[int(name.rsplit("_", 1)[1])])
        shapes[HALLO2_REF_MASK] = (batch,)
        for name, (_, n_tok, ch) in zip(_hallo2_ref_names(self.profile), _hallo2_ref_layout(self.profile)):
            shapes[name] = (batch, 1 + p.motion_frames, n_tok, ch)
        return shapes

    def get_input_profile(
        self,
        batch_min: int | None = None,
        batch_opt: int | None = None,
        batch_max: int | None = None,
        frames_min: int = 1,
        frames_opt: int | None = None,
        frames_max: int | None = None,
    ) -> InputProfile:
        b = self._batches(batch_min, batch_opt, batch_max)
        p = self.prof
        f = (frames_min, _pick(p.clip_frames, frames_opt), _pick(p.clip_frames, frames_max))
        self._check_range("frames", f, lower=1)
        self._need(f[2] + p.motion_frames <= p.motion_max_positions,
                   f"frames + motion frames must be <= {p.motion_max_positions}")
        shapes = [self.get_input_shapes(x, y) for x, y in zip(b, f)]
        return {name: [s[name] for s in shapes] for name in self.get_input_names()}

    def get_output_shapes(self, batch: int, frames: int) -> list[Shape]:
        return [self.get_input_shapes(batch, frames)[HALLO2_SAMPLE]]

    def get_sample_input(
        self, batch: int, frames: int, *, seed: int = 0, device: str | torch.device = "cpu"
    ) -> tuple[Tensor, ...]:
        """Deterministic inputs: Gaussian latents / tokens / features (reference features ~ N(0, 1), like
        LayerNorm outputs), binary-ish masks, timesteps in [0, 1000), ``ref_mask`` alternating 0, 1, ..."""
        p = self.prof
        self._need(batch >= 1 and frames >= 1, f"need batch >= 1 and frames >= 1, got ({batch}, {frames})")
        self._need(frames + p.motion_frames <= p.motion_max_positions,
                   f"frames + motion frames must be <= {p.motion_max_positions}")
        g = self._gen(seed)
        out: list[Tensor] = []
        for name, shape in self.get_input_shapes(batch, frames).items():
            if name == HALLO2_TIMESTEP:
                t = torch.randint(0, 1000, shape, generator=g, dtype=torch.int64)
            elif name == HALLO2_REF_MASK:
                t = (torch.arange(batch) % 2).to(torch.float32)
            elif name in (HALLO2_SAMPLE, HALLO2_AUDIO_TOKENS, HALLO2_IMAGE_TOKENS) or name.startswith(
                HALLO2_REF_FEAT_PREFIX
            ):
                t = torch.randn(shape, generator=g)
            elif name == HALLO2_FACE_FEATURES:
                t = torch.randn(shape, generator=g) * 0.5
            else:  # masks
                t = (torch.rand(shape, generator=g) > 0.4).to(torch.float32)
            out.append(t.to(device))
        return tuple(out)

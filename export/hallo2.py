"""The Hallo2 part of the model repository: eight exported networks and the decoupled pipeline.

Every network is exported to ONNX from one spec (below) and served by the generic ONNX
adapter on the ``cpu`` target (native ``onnxruntime_onnx`` on ``gpu``); its config's tensors come from the same
spec (the export stamps the spec's static dims on the graph, and a test compares the two). The ``hallo2`` pipeline
model (python, decoupled) runs the DDIM loop and calls the networks through BLS.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from emoserve.constants import (
    SAMPLE_RATE,
)
from emoserve.hallo2.audio_windows import audio_frames as _hallo2_audio_frames
from emoserve.hallo2.profile import Hallo2Profile
from emoserve.hallo2.profile import get_profile as _hallo2_profile
from emoserve.hallo2.unet import mask_token_counts as _hallo2_mask_tokens
from emoserve.hallo2.unet import reference_feature_layout as _hallo2_ref_layout
from emoserve.model_catalog import (
    AUDIO_BYTES,
    GUIDANCE_SCALE,
    HALLO2_AUDIO,
    HALLO2_AUDIO_ENCODER_MODEL,
    HALLO2_AUDIO_FEATURES,
    HALLO2_AUDIO_PROJ_MODEL,
    HALLO2_AUDIO_TOKENS,
    HALLO2_AUDIO_WINDOWS,
    HALLO2_DENOISING_UNET_MODEL,
    HALLO2_FACE_EMBEDDING,
    HALLO2_FACE_FEATURES,
    HALLO2_FACE_LOCATOR_MODEL,
    HALLO2_FACE_MASK,
    HALLO2_FACE_MASK_PREFIX,
    HALLO2_FULL_MASK_PREFIX,
    HALLO2_IMAGE,
    HALLO2_IMAGE_PROJ_MODEL,
    HALLO2_IMAGE_TOKENS,
    HALLO2_LATENTS,
    HALLO2_LIP_MASK_PREFIX,
    HALLO2_MODEL_OUTPUT,
    HALLO2_PIPELINE_MODEL,
    HALLO2_PIXELS,
    HALLO2_REF_FEAT_PREFIX,
    HALLO2_REF_LATENTS,
    HALLO2_REF_MASK,
    HALLO2_REFERENCE_UNET_MODEL,
    HALLO2_SAMPLE,
    HALLO2_TIMESTEP,
    HALLO2_VAE_DECODER_MODEL,
    HALLO2_VAE_ENCODER_MODEL,
    INFERENCE_STEPS,
    PROGRESS,
    RESULT_METADATA,
    SEED,
    STATUS_MESSAGE,
    USE_CACHE,
    VIDEO_MP4,
)
from export.base import BaseNetworkSpec, InputProfile, Shape, pick
from export.model_config import (
    BOOL,
    FP32,
    INT32,
    STRING,
    UINT64,
    ConfigRecipe,
    ModelConfig,
    input_tensor,
    network_overlay,
    network_recipe,
    optional_scalars,
    output_tensor,
    python_model,
    set_instances,
    set_parameters,
    set_weights,
)

if TYPE_CHECKING:
    from export.build_repository import BuildSettings

# BLS requests larger than a network's max batch are split by the pipeline (e.g. decoding a 16-frame clip)
# VAE halves, audio encoder and the three conditioning networks (emoserve.hallo2.vae / audio /
# projections).  Every spec takes the Hallo2 profile name ("full" = upstream sizes, "tiny" = tests).



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
        b = (pick(self.min_batch, lo), pick(self.opt_batch, opt), pick(self.max_batch, hi))
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
            pick(self.min_samples, samples_min),
            pick(self.opt_samples, samples_opt),
            pick(self.max_samples, samples_max),
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
        f = (frames_min, pick(p.clip_frames, frames_opt), pick(p.total_frames, frames_max))
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
        f = (frames_min, pick(p.clip_frames, frames_opt), pick(p.clip_frames, frames_max))
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



NETWORK_MAX_BATCH = 8
NETWORK_QUEUE_DELAY_US = 1000

_SPECS = {
    HALLO2_VAE_ENCODER_MODEL: VaeEncoderSpec,
    HALLO2_VAE_DECODER_MODEL: VaeDecoderSpec,
    HALLO2_AUDIO_ENCODER_MODEL: Hallo2AudioEncoderSpec,
    HALLO2_AUDIO_PROJ_MODEL: AudioProjSpec,
    HALLO2_IMAGE_PROJ_MODEL: ImageProjSpec,
    HALLO2_FACE_LOCATOR_MODEL: FaceLocatorSpec,
    HALLO2_REFERENCE_UNET_MODEL: ReferenceUNetSpec,
    HALLO2_DENOISING_UNET_MODEL: DenoisingUNetSpec,
}


def network_spec(name: str, settings: BuildSettings) -> _Hallo2Spec:
    return _SPECS[name](profile=settings.hallo2_profile)


def network_max_batch(name: str, settings: BuildSettings) -> int:
    """A TensorRT plan cannot take a batch past its profile, which comes from the spec."""
    if settings.target == "gpu" and settings.tensorrt:
        return min(NETWORK_MAX_BATCH, network_spec(name, settings).max_batch)
    return NETWORK_MAX_BATCH


def _networks(settings: BuildSettings) -> dict[str, tuple]:
    """Each network model's (module, spec) pair, built with the profile's seeded demo weights."""
    from emoserve.hallo2.audio import build_audio_encoder
    from emoserve.hallo2.projections import build_projections
    from emoserve.hallo2.unet import build_denoising_unet, build_reference_unet
    from emoserve.hallo2.vae import build_vae

    profile, seed = settings.hallo2_profile, settings.seed
    vae = build_vae(profile, seed=seed)
    projections = build_projections(profile, seed=seed)
    modules = {
        HALLO2_VAE_ENCODER_MODEL: vae.encoder_net(),
        HALLO2_VAE_DECODER_MODEL: vae.decoder_net(),
        HALLO2_AUDIO_ENCODER_MODEL: build_audio_encoder(profile, seed=seed),
        HALLO2_AUDIO_PROJ_MODEL: projections.audio_proj,
        HALLO2_IMAGE_PROJ_MODEL: projections.image_proj,
        HALLO2_FACE_LOCATOR_MODEL: projections.face_locator,
        HALLO2_REFERENCE_UNET_MODEL: build_reference_unet(profile, seed=seed),
        HALLO2_DENOISING_UNET_MODEL: build_denoising_unet(profile, seed=seed),
    }
    return {name: (module, network_spec(name, settings)) for name, module in modules.items()}


def describe_weights(settings: BuildSettings) -> str:
    return f"{settings.hallo2_profile} profile, seeded-random (seed {settings.seed}) - NOT a trained model"


def _network_recipe(name: str) -> ConfigRecipe:
    def overlay(config: ModelConfig, settings: BuildSettings, spec: _Hallo2Spec) -> None:
        network_overlay(config, settings, spec, max_batch=network_max_batch(name, settings), queue_delay_us=NETWORK_QUEUE_DELAY_US,
                        tensorrt=settings.tensorrt and settings.target == "gpu", weights=describe_weights(settings))

    return network_recipe(name, lambda settings: network_spec(name, settings), overlay)


def _pipeline_base() -> ModelConfig:
    return python_model(
        HALLO2_PIPELINE_MODEL,
        inputs=[
            input_tensor(HALLO2_IMAGE, STRING, [1]),
            input_tensor(AUDIO_BYTES, STRING, [1]),
            *optional_scalars((GUIDANCE_SCALE, FP32), (INFERENCE_STEPS, INT32), (USE_CACHE, BOOL), (SEED, UINT64)),
        ],
        outputs=[
            output_tensor(PROGRESS, FP32, [1]),
            output_tensor(STATUS_MESSAGE, STRING, [1]),
            output_tensor(VIDEO_MP4, STRING, [1]),
            output_tensor(RESULT_METADATA, STRING, [1]),
        ],
        decoupled=True,
    )


def _pipeline_overlay(config: ModelConfig, settings: BuildSettings) -> None:
    set_instances(config, settings.hallo2_instances)
    set_parameters(
        config,
        profile=settings.hallo2_profile,
        reference_features=len(_hallo2_ref_names(settings.hallo2_profile)),
        # JSON {model: max batch}: the pipeline splits larger BLS requests
        network_max_batch=json.dumps({name: network_max_batch(name, settings) for name in _SPECS}),
        max_audio_seconds=settings.hallo2_max_audio_seconds,
    )
    set_weights(config, describe_weights(settings))


CONFIGS: dict[str, ConfigRecipe] = {
    **{name: _network_recipe(name) for name in _SPECS},
    HALLO2_PIPELINE_MODEL: ConfigRecipe(_pipeline_base, _pipeline_overlay),
}


def build_hallo2(out: Path, settings: BuildSettings) -> None:
    """Export the networks (and their plans); the configs come from :data:`CONFIGS`."""
    from export.onnx_export import export_onnx

    for name, (network, spec) in _networks(settings).items():
        onnx_path = export_onnx(network.eval(), spec, out / name / "1" / "model.onnx")
        if settings.target == "gpu":
            (onnx_path.parent / "model.py").unlink(missing_ok=True)
            if settings.tensorrt:
                from export.tensorrt import build_plan

                # the plan's profile comes from the same spec as the export; Triton may not batch past it
                build_plan(onnx_path, onnx_path.with_name("model.plan"), spec.get_input_profile(), fp16=True)

"""LAM-A2E streaming network (aigc3d/LAM_Audio2Expression) re-implemented in plain PyTorch.

Architecture (``configs/lam_audio2exp_config_streaming.py`` + ``models/network.py`` +
``models/encoder/wav2vec.py`` upstream)::

    audio [B, S] (16 kHz, raw, un-normalised)
      -> wav2vec2-base conv feature extractor         [B, 512, L]   (~50 Hz)
      -> linear interpolation (align_corners=True)    [B, 512, T]   T = ceil(S * 30 / 16000)
      -> wav2vec2 feature projection + 12-layer post-LN transformer encoder   [B, T, 768]
      -> feature_projection Linear 768 -> 512
      -> identity encoder: one-hot(id) -> Conv1d(12 -> 64), concat -> 3 residual Conv1d+LN+ReLU
      -> decoder: 3 x Conv1d+LN+ReLU
      -> output_proj Linear 512 -> 52 -> sigmoid     [B, T, 52]

Module / parameter names mirror upstream so that an official checkpoint's state_dict
(``DefaultEstimator`` -> ``backbone`` -> ``Audio2Expression``, the audio encoder being a
HuggingFace ``Wav2Vec2Model`` subclass with an extra ``lm_head``) loads 1:1 with
``strict=True`` after stripping the DDP ``module.`` prefix.  Modules that upstream
creates but never uses in ``forward`` (``audio_encoder.masked_spec_embed``,
``audio_encoder.lm_head``, ``identity_encoder.grus``) are kept so the strict load
succeeds; they do not take part in the computation (nor in the ONNX graph).

This module does not depend on ``transformers``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emoserve.constants import FPS, NUM_BLENDSHAPES, NUM_IDENTITIES, SAMPLE_RATE
from emoserve.nn.checkpoints import preview, sha256_file, torch_load
from emoserve.nn.wav2vec2 import (  # noqa: F401  (re-exported: historical import location)
    Wav2Vec2Attention,
    Wav2Vec2Config,
    Wav2Vec2Encoder,
    Wav2Vec2EncoderLayer,
    Wav2Vec2FeatureEncoder,
    Wav2Vec2FeatureProjection,
    Wav2Vec2FeedForward,
    Wav2Vec2PositionalConvEmbedding,
    conv_min_input_samples,
    conv_output_length,
    remap_legacy_weight_norm,
)

__all__ = [
    "A2EProfile",
    "PROFILES",
    "LamA2ENetwork",
    "build_network",
    "load_official_checkpoint",
    "feature_extractor_output_length",
    "min_input_samples",
    "count_parameters",
]

_LOG = logging.getLogger(__name__)


# --------------------------------------------------------------------------- profiles


@dataclass(frozen=True)
class A2EProfile:
    """Size hyper-parameters of the LAM-A2E network.

    Defaults are the upstream streaming model: wav2vec2-base encoder
    (``configs/wav2vec2_config.json``) and the ``Audio2Expression`` backbone of
    ``configs/lam_audio2exp_config_streaming.py``.
    """

    name: str = "full"
    # --- wav2vec2 conv feature extractor (feat_extract_norm="group", conv_bias=False, gelu)
    conv_dim: tuple[int, ...] = (512, 512, 512, 512, 512, 512, 512)
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    conv_bias: bool = False
    # --- wav2vec2 transformer encoder (post-LN, do_stable_layer_norm=False)
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    num_conv_pos_embeddings: int = 128  # positional conv kernel size
    num_conv_pos_embedding_groups: int = 16
    layer_norm_eps: float = 1e-5
    # HF creates ``masked_spec_embed`` when mask_time_prob/mask_feature_prob > 0 (0.05 upstream)
    masked_spec_embed: bool = True
    # ``lm_head = nn.Linear(1024, 32)`` added by upstream's Wav2Vec2Model subclass (unused)
    lm_head_in: int = 1024
    lm_head_out: int = 32
    # --- Audio2Expression backbone
    hidden_dim: int = 512
    num_identity_classes: int = NUM_IDENTITIES
    identity_feat_dim: int = 64
    expression_dim: int = NUM_BLENDSHAPES
    first_net_layers: int = 3  # SeqTranslator1D(min_layers_num=3)
    decoder_depth: int = 3
    conv_norm_kernel: int = 3  # ConvNormRelu default kernel (stride 1, padding 1)

    def __post_init__(self) -> None:
        n = len(self.conv_dim)
        if not (len(self.conv_kernel) == len(self.conv_stride) == n):
            raise ValueError("conv_dim, conv_kernel and conv_stride must have equal lengths")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be divisible by num_attention_heads")
        if self.hidden_size % self.num_conv_pos_embedding_groups:
            raise ValueError("hidden_size must be divisible by num_conv_pos_embedding_groups")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def wav2vec2_config(self) -> Wav2Vec2Config:
        """The wav2vec2-base encoder part (group-norm conv extractor, post-LN encoder)."""
        return Wav2Vec2Config(
            conv_dim=self.conv_dim,
            conv_kernel=self.conv_kernel,
            conv_stride=self.conv_stride,
            conv_bias=self.conv_bias,
            feat_extract_norm="group",
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            intermediate_size=self.intermediate_size,
            num_conv_pos_embeddings=self.num_conv_pos_embeddings,
            num_conv_pos_embedding_groups=self.num_conv_pos_embedding_groups,
            layer_norm_eps=self.layer_norm_eps,
            do_stable_layer_norm=False,
            masked_spec_embed=self.masked_spec_embed,
        )


PROFILES: dict[str, A2EProfile] = {
    "full": A2EProfile(name="full"),
    # Very small network for tests: identical conv kernels/strides (so the ~50 Hz feature
    # rate, minimum input length and all frame counts are identical to "full").
    "tiny": A2EProfile(
        name="tiny",
        conv_dim=(16, 16, 16, 16, 16, 16, 16),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        lm_head_in=16,
        lm_head_out=8,
        hidden_dim=32,
        identity_feat_dim=8,
    ),
}


def _get_profile(profile: str | A2EProfile) -> A2EProfile:
    if isinstance(profile, A2EProfile):
        return profile
    try:
        return PROFILES[profile]
    except KeyError:
        raise ValueError(f"unknown A2E profile {profile!r}; choose from {sorted(PROFILES)}") from None


def feature_extractor_output_length(num_samples: int, profile: str | A2EProfile = "full") -> int:
    """Number of wav2vec2 conv-feature frames (~50 Hz) produced for ``num_samples`` samples."""
    return conv_output_length(num_samples, _get_profile(profile).wav2vec2_config())


def min_input_samples(profile: str | A2EProfile = "full") -> int:
    """Smallest input length that yields at least one conv feature frame (400 for wav2vec2)."""
    return conv_min_input_samples(_get_profile(profile).wav2vec2_config())


# --------------------------------------------------------------------------- wav2vec2 pieces
# The generic wav2vec2 blocks live in :mod:`emoserve.nn.wav2vec2` (shared with Emotion-LLaMA's
# HuBERT); names follow transformers' modeling_wav2vec2 (v4.36) so that keys such as
# ``audio_encoder.encoder.layers.0.attention.q_proj.weight`` match upstream checkpoints.


class Wav2Vec2AudioEncoder(nn.Module):
    """Upstream ``models/encoder/wav2vec.py::Wav2Vec2Model`` (HF Wav2Vec2Model + lm_head).

    ``forward`` = feature extractor -> linear interpolation to ``frame_num`` frames
    (``align_corners=True``) -> feature projection -> transformer encoder.
    """

    def __init__(self, p: A2EProfile) -> None:
        super().__init__()
        cfg = p.wav2vec2_config()
        self.feature_extractor = Wav2Vec2FeatureEncoder(cfg)
        self.feature_projection = Wav2Vec2FeatureProjection(cfg)
        if cfg.masked_spec_embed:
            # Only used for SpecAugment during training; kept for state_dict compatibility.
            self.masked_spec_embed = nn.Parameter(torch.empty(cfg.hidden_size).uniform_())
        self.encoder = Wav2Vec2Encoder(cfg)
        self.lm_head = nn.Linear(p.lm_head_in, p.lm_head_out)  # unused upstream as well

    def forward(self, input_values: Tensor, frame_num: Tensor | int) -> Tensor:
        feats = self.feature_extractor(input_values)  # [B, C, L]
        feats = _resample_linear(feats, frame_num)  # [B, C, T]
        hidden = self.feature_projection(feats.transpose(1, 2))  # [B, T, H]
        return self.encoder(hidden)


def _resample_linear(x: Tensor, size: Tensor | int) -> Tensor:
    """``F.interpolate(x, size, mode='linear', align_corners=True)`` with a traceable size."""
    if isinstance(size, Tensor):
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            # Keep the size symbolic (derived from the input shape) in the traced graph.
            return F.interpolate(x, size=[size], mode="linear", align_corners=True)
        size = int(size)
    return F.interpolate(x, size=size, mode="linear", align_corners=True)


# --------------------------------------------------------------------------- A2E backbone


class ConvNormRelu(nn.Module):
    """Upstream ``ConvNormRelu(type='1d', norm='ln')``: Conv1d -> LayerNorm(C) [+ residual] -> ReLU."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, residual: bool = False) -> None:
        super().__init__()
        pad = (kernel - 1) // 2
        self.residual = residual
        if residual:
            if in_ch == out_ch:
                self.residual_layer: nn.Module = nn.Identity()
            else:
                self.residual_layer = nn.Sequential(
                    nn.Conv1d(in_ch, out_ch, kernel_size=kernel, stride=1, padding=pad)
                )
        self.conv = nn.Conv1d(in_ch, out_ch, kernel_size=kernel, stride=1, padding=pad)
        self.norm = nn.LayerNorm(out_ch)
        self.dropout = nn.Dropout(0.0)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:  # [B, C, T]
        out = self.dropout(self.conv(x))
        out = self.norm(out.transpose(1, 2)).transpose(1, 2)
        if self.residual:
            out = out + self.residual_layer(x)
        return self.relu(out)


class SeqTranslator1D(nn.Module):
    def __init__(self, c_in: int, c_out: int, num_layers: int, kernel: int) -> None:
        super().__init__()
        layers = [ConvNormRelu(c_in, c_out, kernel, residual=True)]
        layers += [ConvNormRelu(c_out, c_out, kernel, residual=True) for _ in range(num_layers - 1)]
        self.conv_layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_layers(x)


class AudioIdentityEncoder(nn.Module):
    """One-hot identity -> Conv1d(k=1) features concatenated to audio features -> residual convs."""

    def __init__(self, p: A2EProfile) -> None:
        super().__init__()
        self.id_mlp = nn.Conv1d(p.num_identity_classes, p.identity_feat_dim, 1, 1)
        self.first_net = SeqTranslator1D(
            p.hidden_dim + p.identity_feat_dim, p.hidden_dim, p.first_net_layers, p.conv_norm_kernel
        )
        # Created (but never used in forward) upstream; kept for strict state_dict loading.
        self.grus = nn.GRU(p.hidden_dim, p.hidden_dim, 1, batch_first=True)
        self.dropout = nn.Dropout(0.1)

    def forward(self, audio_features: Tensor, identity: Tensor) -> Tensor:
        """audio_features [B, hidden_dim, T]; identity one-hot [B, num_identity_classes] float."""
        x = self.dropout(audio_features)
        # Upstream repeats the one-hot over time before the k=1 conv; the conv output is
        # time-invariant, so computing it once and broadcasting is numerically identical.
        id_feat = self.id_mlp(identity.unsqueeze(-1))  # [B, F, 1]
        id_feat = id_feat.expand(-1, -1, x.shape[2])
        return self.first_net(torch.cat([x, id_feat], dim=1))


class Audio2Expression(nn.Module):
    """Upstream ``models/network.py::Audio2Expression`` (streaming config, no transformer)."""

    def __init__(self, p: A2EProfile) -> None:
        super().__init__()
        self.audio_encoder = Wav2Vec2AudioEncoder(p)
        self.feature_projection = nn.Linear(p.hidden_size, p.hidden_dim)
        self.identity_encoder = AudioIdentityEncoder(p)
        self.decoder = nn.ModuleList(
            [
                nn.Sequential(
                    *[ConvNormRelu(p.hidden_dim, p.hidden_dim, p.conv_norm_kernel) for _ in range(p.decoder_depth)]
                )
            ]
        )
        self.output_proj = nn.Linear(p.hidden_dim, p.expression_dim)

    def forward(self, input_values: Tensor, identity_onehot: Tensor, time_steps: Tensor | int) -> Tensor:
        hidden = self.audio_encoder(input_values, frame_num=time_steps)  # [B, T, 768]
        feats = self.feature_projection(hidden).transpose(1, 2)  # [B, 512, T]
        feats = self.identity_encoder(feats, identity_onehot)
        feats = self.decoder[0](feats)
        return torch.sigmoid(self.output_proj(feats.transpose(1, 2)))  # [B, T, 52]


class LamA2ENetwork(nn.Module):
    """LAM-A2E streaming network with an index-based identity input.

    ``forward(input_values [B, S] float32, id_idx [B] int64) -> blendshapes [B, T, 52]`` with
    ``T = ceil(S * 30 / 16000)`` (integer arithmetic, computed from the input shape so it
    stays dynamic in traced/ONNX graphs).  Values are in [0, 1] (sigmoid).

    The upstream ``Audio2Expression`` lives under ``self.backbone`` (as inside upstream's
    ``DefaultEstimator``), so state_dict keys are ``backbone.audio_encoder...`` etc.
    """

    def __init__(self, profile: str | A2EProfile = "full") -> None:
        super().__init__()
        self.profile = _get_profile(profile)
        self.backbone = Audio2Expression(self.profile)
        # Where the weights came from; used as the export cache fingerprint.
        self.provenance: dict[str, Any] = {"profile": self.profile.name, "seed": None, "checkpoint": None}

    @property
    def num_identities(self) -> int:
        return self.profile.num_identity_classes

    def forward(self, input_values: Tensor, id_idx: Tensor) -> Tensor:
        num_samples = input_values.shape[1]
        # ceil(S * FPS / SR) with integer ops; under tracing ``num_samples`` is a 0-d tensor,
        # so the frame count is recorded as shape arithmetic rather than a constant.
        if isinstance(num_samples, Tensor):
            time_steps: Tensor | int = torch.div(num_samples * FPS + (SAMPLE_RATE - 1), SAMPLE_RATE, rounding_mode="floor")
        else:
            time_steps = (num_samples * FPS + SAMPLE_RATE - 1) // SAMPLE_RATE  # int / SymInt
        onehot = F.one_hot(id_idx.to(torch.int64), self.profile.num_identity_classes).to(input_values.dtype)
        return self.backbone(input_values, onehot, time_steps)


# --------------------------------------------------------------------------- builders / loading


def build_network(profile: str = "full", seed: int = 0) -> LamA2ENetwork:
    """Network with deterministic, seeded random ("demo") weights, in eval mode.

    The global RNG state is left untouched.
    """
    prof = _get_profile(profile)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = LamA2ENetwork(prof)
    net.provenance = {"profile": prof.name, "seed": int(seed), "checkpoint": None}
    _calibrate_demo_output(net.eval())
    return net


_DEMO_OUTPUT_STD = 1.5
_DEMO_OUTPUT_MEAN = -1.0


def _calibration_audio(seconds: float = 3.0) -> Tensor:
    """A deterministic voiced, syllable-modulated signal (no RNG): what calibration looks at."""
    t = torch.arange(int(seconds * SAMPLE_RATE), dtype=torch.float64) / SAMPLE_RATE
    pitch_phase = 2 * torch.pi * (120 * t + 10 * torch.sin(2 * torch.pi * 0.7 * t))
    voiced = sum(torch.sin(k * pitch_phase) / k for k in range(1, 6))
    envelope = torch.clamp(torch.sin(2 * torch.pi * 3.0 * t), min=0) ** 2
    return (0.3 * voiced * envelope).to(torch.float32)[None]


@torch.no_grad()
def _calibrate_demo_output(net: LamA2ENetwork) -> None:
    """Rescale the random output layer so demo blendshapes move with the audio.

    With default initialisation the pre-sigmoid activations of a random network have a tiny spread,
    so every frame is ~0.5 and nothing visibly depends on the audio. An LSUV-style, data-dependent
    rescale of ``output_proj`` (per channel: std 1.5, mean -1 on a fixed calibration signal) gives
    demo output a realistic range (mostly small weights with audio-driven peaks). Official
    checkpoints are never touched.
    """
    captured: list[Tensor] = []
    handle = net.backbone.output_proj.register_forward_hook(lambda module, args, out: captured.append(out))
    try:
        audio = _calibration_audio()
        ids = torch.arange(net.num_identities, dtype=torch.int64)
        net(audio.expand(len(ids), -1), ids)
    finally:
        handle.remove()
    pre = captured[0].reshape(-1, captured[0].shape[-1]).to(torch.float64)
    mean, std = pre.mean(0), pre.std(0).clamp_min(1e-6)
    gain = _DEMO_OUTPUT_STD / std
    layer = net.backbone.output_proj
    layer.weight.mul_(gain[:, None].to(layer.weight.dtype))
    layer.bias.copy_(((layer.bias.to(torch.float64) - mean) * gain + _DEMO_OUTPUT_MEAN).to(layer.bias.dtype))


def _normalise_keys(state_dict: Mapping[str, Tensor], expected: set[str]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith("module."):
            key = key[len("module."):]
        out[key] = value
    # A bare Audio2Expression state_dict (saved without the DefaultEstimator wrapper).
    if out and not any(k.startswith("backbone.") for k in out) and any(
        k.startswith("audio_encoder.") for k in out
    ):
        out = {"backbone." + k: v for k, v in out.items()}
    # Old-style torch.nn.utils.weight_norm names for the positional conv.
    return remap_legacy_weight_norm(out, expected)


def load_official_checkpoint(
    path: str | Path, profile: str = "full", *, weights_only: bool | None = None
) -> LamA2ENetwork:
    """Load an upstream LAM-A2E checkpoint (e.g. ``lam_audio2exp_streaming.tar``).

    Format: ``torch.load(path)["state_dict"]`` with keys ``module.backbone.<...>`` (the
    ``module.`` DDP prefix is optional).  Loading is strict: any missing / unexpected key
    or shape mismatch raises ``ValueError`` naming the offending keys.

    ``weights_only=None`` tries the safe ``weights_only=True`` unpickler first and falls back
    to a full unpickle (trusted files only); pass ``True``/``False`` to force either.
    """
    path = Path(path)
    ckpt = torch_load(path, weights_only)
    if not isinstance(ckpt, Mapping) or "state_dict" not in ckpt:
        keys = list(ckpt.keys())[:10] if isinstance(ckpt, Mapping) else type(ckpt).__name__
        raise ValueError(f"{path}: expected a dict with a 'state_dict' entry, got {keys}")

    net = LamA2ENetwork(profile)
    expected_sd = net.state_dict()
    expected = set(expected_sd)
    sd = _normalise_keys(ckpt["state_dict"], expected)

    missing = sorted(expected - set(sd))
    unexpected = sorted(set(sd) - expected)
    if missing or unexpected:
        raise ValueError(
            f"{path}: checkpoint does not match the {net.profile.name!r} A2E profile: "
            f"{len(missing)} missing key(s) {preview(missing)}; "
            f"{len(unexpected)} unexpected key(s) {preview(unexpected)}"
        )
    mismatched = [
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected_sd.items()
        if tuple(sd[k].shape) != tuple(v.shape)
    ]
    if mismatched:
        raise ValueError(f"{path}: shape mismatch for {len(mismatched)} key(s): {preview(mismatched)}")

    net.load_state_dict(sd, strict=True)
    net.provenance = {"profile": net.profile.name, "seed": None, "checkpoint": sha256_file(path)}
    return net.eval()


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

"""wav2vec2 / HuBERT building blocks in plain PyTorch (no ``transformers`` dependency).

Module and parameter names follow transformers' ``modeling_wav2vec2`` / ``modeling_hubert`` so
that HuggingFace checkpoints load 1:1, e.g. ``feature_extractor.conv_layers.0.conv.weight``,
``encoder.pos_conv_embed.conv.parametrizations.weight.original0``,
``encoder.layers.3.attention.q_proj.weight``, ``encoder.layers.3.feed_forward.output_dense.bias``.

Two encoder flavours (``Wav2Vec2Config.do_stable_layer_norm``):

* ``False`` (wav2vec2-base, LAM-A2E): post-LN layers, the encoder LayerNorm is applied right after
  the positional convolution;
* ``True`` (large models, e.g. chinese-hubert-large): pre-LN ("stable layer norm") layers, the
  encoder LayerNorm is applied after the last layer.

Two conv feature-extractor flavours (``Wav2Vec2Config.feat_extract_norm``): ``"group"`` (GroupNorm
on the first layer only) and ``"layer"`` (LayerNorm over channels after every conv).

Dropouts are kept as modules (no-ops in eval) but nothing here implements SpecAugment or
LayerDrop; ``masked_spec_embed`` exists only so that checkpoints load strictly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "Wav2Vec2Config",
    "GroupNormConvLayer",
    "NoLayerNormConvLayer",
    "LayerNormConvLayer",
    "Wav2Vec2FeatureEncoder",
    "Wav2Vec2FeatureProjection",
    "Wav2Vec2PositionalConvEmbedding",
    "Wav2Vec2Attention",
    "Wav2Vec2FeedForward",
    "Wav2Vec2EncoderLayer",
    "Wav2Vec2EncoderLayerStableLayerNorm",
    "Wav2Vec2Encoder",
    "Wav2Vec2EncoderStableLayerNorm",
    "HubertModel",
    "conv_output_length",
    "conv_min_input_samples",
    "remap_legacy_weight_norm",
    "WEIGHT_NORM_LEGACY",
]


@dataclass(frozen=True)
class Wav2Vec2Config:
    """The subset of HF ``Wav2Vec2Config`` / ``HubertConfig`` fields that shape the modules."""

    conv_dim: tuple[int, ...] = (512, 512, 512, 512, 512, 512, 512)
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    conv_bias: bool = False
    feat_extract_norm: str = "group"  # "group" | "layer"
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    layer_norm_eps: float = 1e-5
    do_stable_layer_norm: bool = False
    # HF creates ``masked_spec_embed`` when mask_time_prob / mask_feature_prob > 0 (the default).
    masked_spec_embed: bool = True

    def __post_init__(self) -> None:
        n = len(self.conv_dim)
        if not (len(self.conv_kernel) == len(self.conv_stride) == n):
            raise ValueError("conv_dim, conv_kernel and conv_stride must have equal lengths")
        if self.feat_extract_norm not in ("group", "layer"):
            raise ValueError(f"feat_extract_norm must be 'group' or 'layer', got {self.feat_extract_norm!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be divisible by num_attention_heads")
        if self.hidden_size % self.num_conv_pos_embedding_groups:
            raise ValueError("hidden_size must be divisible by num_conv_pos_embedding_groups")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def conv_output_length(num_samples: int, cfg: Wav2Vec2Config) -> int:
    """Number of conv feature frames (~50 Hz for 16 kHz input) for ``num_samples`` samples."""
    length = int(num_samples)
    for k, s in zip(cfg.conv_kernel, cfg.conv_stride):
        length = (length - k) // s + 1
    return max(length, 0)


def conv_min_input_samples(cfg: Wav2Vec2Config) -> int:
    """Smallest input that yields one conv frame (the receptive field: 400 for wav2vec2/HuBERT)."""
    length = 1
    for k, s in reversed(list(zip(cfg.conv_kernel, cfg.conv_stride))):
        length = (length - 1) * s + k
    return length


# --------------------------------------------------------------------------- conv feature encoder


class GroupNormConvLayer(nn.Module):
    """Conv1d -> GroupNorm(one group per channel) -> GELU (first layer when ``feat_extract_norm='group'``)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, bias: bool) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_ch, out_ch, kernel_size=kernel, stride=stride, bias=bias)
        self.layer_norm = nn.GroupNorm(num_groups=out_ch, num_channels=out_ch, affine=True)

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.layer_norm(self.conv(x)))


class NoLayerNormConvLayer(nn.Module):
    """Conv1d -> GELU (layers 1.. when ``feat_extract_norm='group'``)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, bias: bool) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_ch, out_ch, kernel_size=kernel, stride=stride, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.conv(x))


class LayerNormConvLayer(nn.Module):
    """Conv1d -> LayerNorm over channels -> GELU (every layer when ``feat_extract_norm='layer'``)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, bias: bool) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_ch, out_ch, kernel_size=kernel, stride=stride, bias=bias)
        self.layer_norm = nn.LayerNorm(out_ch, elementwise_affine=True)  # HF: default eps 1e-5

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        x = self.layer_norm(x.transpose(-2, -1)).transpose(-2, -1)
        return F.gelu(x)


class Wav2Vec2FeatureEncoder(nn.Module):
    """Raw audio [B, S] -> conv features [B, C, L] (~50 Hz for 16 kHz audio)."""

    def __init__(self, cfg: Wav2Vec2Config) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 1
        for i, (out_ch, k, s) in enumerate(zip(cfg.conv_dim, cfg.conv_kernel, cfg.conv_stride)):
            if cfg.feat_extract_norm == "layer":
                cls: type[nn.Module] = LayerNormConvLayer
            else:
                cls = GroupNormConvLayer if i == 0 else NoLayerNormConvLayer
            layers.append(cls(in_ch, out_ch, k, s, cfg.conv_bias))
            in_ch = out_ch
        self.conv_layers = nn.ModuleList(layers)

    def forward(self, input_values: Tensor) -> Tensor:
        x = input_values.unsqueeze(1)
        for layer in self.conv_layers:
            x = layer(x)
        return x


class Wav2Vec2FeatureProjection(nn.Module):
    """LayerNorm(conv_dim) -> Linear(conv_dim -> hidden_size) (-> dropout, a no-op in eval)."""

    def __init__(self, cfg: Wav2Vec2Config) -> None:
        super().__init__()
        self.layer_norm = nn.LayerNorm(cfg.conv_dim[-1], eps=cfg.layer_norm_eps)
        self.projection = nn.Linear(cfg.conv_dim[-1], cfg.hidden_size)
        self.dropout = nn.Dropout(0.1)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.projection(self.layer_norm(x)))


# --------------------------------------------------------------------------- transformer encoder


class Wav2Vec2PositionalConvEmbedding(nn.Module):
    """Grouped Conv1d with weight norm (dim=2), 'same' padding trim, GELU.

    Weight norm uses ``torch.nn.utils.parametrizations.weight_norm`` like transformers
    >= 4.3x with torch >= 2.1, giving keys ``conv.parametrizations.weight.original0`` (g) /
    ``original1`` (v).  Legacy ``conv.weight_g`` / ``conv.weight_v`` keys are remapped by
    :func:`remap_legacy_weight_norm`.
    """

    def __init__(self, cfg: Wav2Vec2Config) -> None:
        super().__init__()
        k = cfg.num_conv_pos_embeddings
        conv = nn.Conv1d(
            cfg.hidden_size,
            cfg.hidden_size,
            kernel_size=k,
            padding=k // 2,
            groups=cfg.num_conv_pos_embedding_groups,
        )
        self.conv = nn.utils.parametrizations.weight_norm(conv, name="weight", dim=2)
        self._trim = 1 if k % 2 == 0 else 0  # Wav2Vec2SamePadLayer

    def forward(self, x: Tensor) -> Tensor:  # x: [B, T, H]
        y = self.conv(x.transpose(1, 2))
        if self._trim:
            y = y[:, :, : -self._trim]
        return F.gelu(y).transpose(1, 2)


class Wav2Vec2Attention(nn.Module):
    """Multi-head self-attention (eager HF formulation: q is scaled before q @ k^T)."""

    def __init__(self, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scaling = self.head_dim**-0.5
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def _heads(self, x: Tensor) -> Tensor:  # [B, T, E] -> [B, H, T, D]
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        q = self._heads(self.q_proj(x) * self.scaling)
        k = self._heads(self.k_proj(x))
        v = self._heads(self.v_proj(x))
        attn = torch.softmax(torch.matmul(q, k.transpose(-1, -2)), dim=-1)
        out = torch.matmul(attn, v).transpose(1, 2).flatten(2)
        return self.out_proj(out)


class Wav2Vec2FeedForward(nn.Module):
    def __init__(self, cfg: Wav2Vec2Config) -> None:
        super().__init__()
        self.intermediate_dropout = nn.Dropout(0.1)
        self.intermediate_dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.output_dense = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.output_dropout = nn.Dropout(0.1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.intermediate_dropout(F.gelu(self.intermediate_dense(x)))
        return self.output_dropout(self.output_dense(x))


class Wav2Vec2EncoderLayer(nn.Module):
    """Post-LN transformer layer (``do_stable_layer_norm=False``)."""

    def __init__(self, cfg: Wav2Vec2Config) -> None:
        super().__init__()
        self.attention = Wav2Vec2Attention(cfg.hidden_size, cfg.num_attention_heads)
        self.dropout = nn.Dropout(0.1)
        self.layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.feed_forward = Wav2Vec2FeedForward(cfg)
        self.final_layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer_norm(x + self.dropout(self.attention(x)))
        return self.final_layer_norm(x + self.feed_forward(x))


class Wav2Vec2EncoderLayerStableLayerNorm(nn.Module):
    """Pre-LN transformer layer (``do_stable_layer_norm=True``); same parameter names as the post-LN one."""

    def __init__(self, cfg: Wav2Vec2Config) -> None:
        super().__init__()
        self.attention = Wav2Vec2Attention(cfg.hidden_size, cfg.num_attention_heads)
        self.dropout = nn.Dropout(0.1)
        self.layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.feed_forward = Wav2Vec2FeedForward(cfg)
        self.final_layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.dropout(self.attention(self.layer_norm(x)))
        return x + self.feed_forward(self.final_layer_norm(x))


class Wav2Vec2Encoder(nn.Module):
    """Post-LN encoder: LayerNorm(x + pos_conv(x)) -> layers."""

    def __init__(self, cfg: Wav2Vec2Config) -> None:
        super().__init__()
        self.pos_conv_embed = Wav2Vec2PositionalConvEmbedding(cfg)
        self.layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(0.1)
        self.layers = nn.ModuleList(Wav2Vec2EncoderLayer(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(self, x: Tensor) -> Tensor:
        x = self.dropout(self.layer_norm(x + self.pos_conv_embed(x)))
        for layer in self.layers:
            x = layer(x)
        return x


class Wav2Vec2EncoderStableLayerNorm(nn.Module):
    """Pre-LN encoder: x + pos_conv(x) -> layers -> LayerNorm (the last hidden state)."""

    def __init__(self, cfg: Wav2Vec2Config) -> None:
        super().__init__()
        self.pos_conv_embed = Wav2Vec2PositionalConvEmbedding(cfg)
        self.layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(0.1)
        self.layers = nn.ModuleList(
            Wav2Vec2EncoderLayerStableLayerNorm(cfg) for _ in range(cfg.num_hidden_layers)
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.dropout(x + self.pos_conv_embed(x))
        for layer in self.layers:
            x = layer(x)
        return self.layer_norm(x)


class HubertModel(nn.Module):
    """HF ``HubertModel`` / ``Wav2Vec2Model`` body: ``forward(input_values [B, S]) -> last_hidden_state [B, T, H]``.

    No attention mask: every row is treated as un-padded audio.  Keys: ``feature_extractor.*``,
    ``feature_projection.*``, ``masked_spec_embed`` (if ``cfg.masked_spec_embed``), ``encoder.*``.
    """

    def __init__(self, cfg: Wav2Vec2Config) -> None:
        super().__init__()
        self.config = cfg
        self.feature_extractor = Wav2Vec2FeatureEncoder(cfg)
        self.feature_projection = Wav2Vec2FeatureProjection(cfg)
        if cfg.masked_spec_embed:
            # Only used for SpecAugment during training; kept for state_dict compatibility.
            self.masked_spec_embed = nn.Parameter(torch.empty(cfg.hidden_size).uniform_())
        if cfg.do_stable_layer_norm:
            self.encoder: nn.Module = Wav2Vec2EncoderStableLayerNorm(cfg)
        else:
            self.encoder = Wav2Vec2Encoder(cfg)

    def forward(self, input_values: Tensor) -> Tensor:
        feats = self.feature_extractor(input_values)  # [B, C, L]
        hidden = self.feature_projection(feats.transpose(1, 2))  # [B, L, H]
        return self.encoder(hidden)


# --------------------------------------------------------------------------- checkpoint keys

WEIGHT_NORM_LEGACY: dict[str, str] = {
    ".weight_g": ".parametrizations.weight.original0",
    ".weight_v": ".parametrizations.weight.original1",
}
"""Old ``torch.nn.utils.weight_norm`` parameter suffixes -> parametrization names."""


def remap_legacy_weight_norm(state_dict: Mapping[str, Tensor], expected: set[str]) -> dict[str, Tensor]:
    """Rename ``*.weight_g`` / ``*.weight_v`` keys to the parametrization names present in ``expected``."""
    fixed: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key not in expected:
            for old, new in WEIGHT_NORM_LEGACY.items():
                if key.endswith(old) and key[: -len(old)] + new in expected:
                    key = key[: -len(old)] + new
                    break
        fixed[key] = value
    return fixed

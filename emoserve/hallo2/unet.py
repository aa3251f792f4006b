"""Hallo2's two UNets in plain PyTorch: the reference UNet2D and the denoising UNet3D.

Module and parameter names follow upstream (fudan-generative-vision/hallo2 @58a9aa6,
``hallo/models/unet_2d_condition.py``, ``unet_3d.py``, ``unet_3d_blocks.py``, ``transformer_3d.py``,
``attention.py``, ``motion_module.py``, ``resnet.py``) so that the official ``net.pth``
(``reference_unet.*`` / ``denoising_unet.*`` prefixes) or separate ``reference_unet.pth`` /
``denoising_unet.pth`` / ``motion_module.pth`` state dicts load, e.g.
``down_blocks.0.attentions.1.transformer_blocks.0.attn1.to_q.weight``,
``down_blocks.0.audio_modules.0.transformer_blocks.0.attn2_1.to_k.weight``,
``mid_block.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.1.pos_encoder.pe``.
``InflatedConv3d`` / ``InflatedGroupNorm`` are per-frame ``Conv2d`` / ``GroupNorm`` (same parameters), so
the denoiser keeps its activations as ``[(B F), C, h, w]`` and only regroups frames for the motion modules.

What upstream does through hooks (``ReferenceAttentionControl`` in ``mutual_self_attention.py``) is
explicit here, so that both networks export to ONNX as plain graphs:

* the reference UNet returns, for every spatial transformer block (``fusion_blocks="full"``: down, mid
  and up blocks, in forward order), the ``norm1`` output of that block (what upstream writes into
  ``block.bank``): ``ref_feat_i`` ``[N, L_i, C_i]`` (``L_i`` = tokens at that resolution);
* the denoiser takes them back as ``ref_feat_i`` ``[B, R, L_i, C_i]`` with ``R = 1 + motion_frames``
  (image 0 = the reference image, then the motion frames, i.e. upstream's ``bank`` regrouped per video).
  Its spatial self-attention ("read" mode) uses keys/values ``cat([norm1(x), ref_feat[:, 0]])``; the
  motion frames' features (``ref_feat[:, 1:]``) are prepended in time to the input of the motion module
  that follows the block and dropped after it (upstream's ``motion_frames`` path).
* ``ref_mask`` ``[B]`` (1 = conditional, 0 = unconditional) reproduces upstream's CFG ``uc_mask``: in
  the unconditional half of the batch the spatial self-attention does not see the reference features
  (plain self-attention; implemented as a -10000 logit bias on the reference keys, which underflows to
  an exact zero weight in float32).

Upstream quirks reproduced on purpose (they define what the released weights were trained/used with):

* the audio modules' inner width is ``heads * (block_input_channels // heads)`` (their ``in_channels``
  argument), so e.g. ``down_blocks.1.audio_modules.0`` projects 640 -> 320 -> 640;
* the denoiser is never put in eval mode upstream and has gradient checkpointing enabled, so its blocks run
  the "checkpointed" branch: cross-attention blocks concatenate the motion-frame features before their
  motion modules, while ``DownBlock3D`` / ``UpBlock3D`` skip their motion modules (their weights exist and
  load, but are unused).  ``plain_block_motion_modules=True`` runs them (upstream's eval-mode branch).
* upstream's read hook tiles the reference features over the flattened ``(B F)`` rows with
  ``[:, 0].repeat(1, F, 1, 1)``, so row ``b*F + k`` reads video ``(b*F + k) mod B``'s reference (with CFG,
  ``B = 2``, the conditional frames alternately read the reference features computed with the unconditional
  and the conditional image tokens).  By default every video reads its own reference (the only sound choice
  when a server batch mixes requests); ``upstream_ref_tiling=True`` reproduces upstream exactly for a batch
  that is one ``[uncond, cond]`` pair.
* the audio cross-attention is three attentions (``attn2_0/1/2``) weighted by the full/face/lip masks of the
  block's resolution (mask level = block depth: down ``i``, mid ``n-1``, up ``n-1-i``), each followed by a
  1x1 ``zero_conv_*``, summed with weights ``motion_scale`` (upstream: pose/face/lip weights, all 1.0).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emoserve.hallo2.profile import Hallo2Profile, get_profile
from emoserve.nn.checkpoints import check_and_load, read_state_dict, record_checkpoint, sha256_file

__all__ = [
    "ReferenceUNet2D",
    "DenoisingUNet3D",
    "build_reference_unet",
    "build_denoising_unet",
    "load_reference_unet",
    "load_denoising_unet",
    "reference_feature_layout",
    "mask_token_counts",
    "REF_ATTN_NEG",
    "DEMO_CONV_OUT_GAIN",
]

REF_ATTN_NEG = -10000.0
"""Logit bias that removes the reference keys in the unconditional branch (``ref_mask`` = 0)."""

DEMO_CONV_OUT_GAIN = 4.0
"""Seeded demo weights: ``conv_out`` is scaled by this factor so that the (random) v-predictions have a
per-element std of order 1 like a trained v-prediction model's, instead of ~0.1 with PyTorch's default init."""

_NORM_EPS = 1e-5  # UNet resnets / conv_norm_out (SD1.5 ``norm_eps``)
_ATTN_NORM_EPS = 1e-6  # GroupNorm of the (spatial / audio / temporal) transformers
_MOTION_GROUPS = 32  # upstream's TemporalTransformer3DModel keeps its default norm_num_groups=32 in every profile


# ----------------------------------------------------------------------------------------------
# layout helpers
# ----------------------------------------------------------------------------------------------


def reference_feature_layout(profile: str | Hallo2Profile) -> list[tuple[str, int, int]]:
    """``(module path, tokens, channels)`` of every spatial transformer block, in forward order.

    The i-th entry is ``ref_feat_i``: produced by the reference UNet's block of that path and read by the
    denoiser's block of the same path (upstream pairs writer and reader blocks the same way).
    """
    p = get_profile(profile)
    boc = p.unet_block_out_channels
    n = len(boc)
    out: list[tuple[str, int, int]] = []
    for i in range(n - 1):  # CrossAttnDownBlock (the last down block has no attention)
        side = p.latent_size // (2**i)
        out += [(f"down_blocks.{i}.attentions.{j}", side * side, boc[i]) for j in range(p.layers_per_block)]
    side = p.latent_size // (2 ** (n - 1))
    out.append(("mid_block.attentions.0", side * side, boc[-1]))
    rev = list(reversed(boc))
    for i in range(1, n):  # CrossAttnUpBlock (the first up block has no attention)
        side = p.latent_size // (2 ** (n - 1 - i))
        out += [(f"up_blocks.{i}.attentions.{j}", side * side, rev[i]) for j in range(p.layers_per_block + 1)]
    return out


def mask_token_counts(profile: str | Hallo2Profile) -> list[int]:
    """Tokens of the full/face/lip masks at each level: ``(latent/2^i)^2`` (64^2, 32^2, 16^2, 8^2 for 512 px)."""
    p = get_profile(profile)
    return [s * s for s in p.mask_sizes]


# ----------------------------------------------------------------------------------------------
# building blocks (diffusers / upstream names)
# ----------------------------------------------------------------------------------------------


def timestep_embedding(timesteps: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """diffusers ``Timesteps(dim, flip_sin_to_cos=True, downscale_freq_shift=0)``."""
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    emb = timesteps.to(torch.float32)[:, None] * torch.exp(exponent)[None, :]
    return torch.cat([torch.cos(emb), torch.sin(emb)], dim=-1)


class TimestepEmbedding(nn.Module):
    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


class Attention(nn.Module):
    """diffusers ``Attention`` (``to_q/to_k/to_v`` without bias, ``to_out.0`` with bias)."""

    def __init__(self, query_dim: int, heads: int, dim_head: int, cross_attention_dim: int | None = None) -> None:
        super().__init__()
        inner = heads * dim_head
        kv_dim = query_dim if cross_attention_dim is None else cross_attention_dim
        self.heads = heads
        self.dim_head = dim_head
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(kv_dim, inner, bias=False)
        self.to_v = nn.Linear(kv_dim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, query_dim), nn.Dropout(0.0)])

    def forward(self, x: Tensor, context: Tensor | None = None, bias: Tensor | None = None) -> Tensor:
        ctx = x if context is None else context
        n = x.shape[0]
        q = self.to_q(x).reshape(n, -1, self.heads, self.dim_head).transpose(1, 2)
        k = self.to_k(ctx).reshape(n, -1, self.heads, self.dim_head).transpose(1, 2)
        v = self.to_v(ctx).reshape(n, -1, self.heads, self.dim_head).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        out = out.transpose(1, 2).reshape(n, -1, self.heads * self.dim_head)
        return self.to_out[1](self.to_out[0](out))


class GEGLU(nn.Module):
    def __init__(self, dim: int, inner: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x: Tensor) -> Tensor:
        h, gate = self.proj(x).chunk(2, dim=-1)
        return h * F.gelu(gate)


class FeedForward(nn.Module):
    """diffusers ``FeedForward(dim, activation_fn="geglu")``: ``net.0.proj``, ``net.2``."""

    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        self.net = nn.ModuleList([GEGLU(dim, dim * mult), nn.Dropout(0.0), nn.Linear(dim * mult, dim)])

    def forward(self, x: Tensor) -> Tensor:
        for m in self.net:
            x = m(x)
        return x


class ResnetBlock(nn.Module):
    """``ResnetBlock2D`` / ``ResnetBlock3D`` (inflated = per frame): ``norm1 conv1 time_emb_proj norm2 conv2``."""

    def __init__(self, in_ch: int, out_ch: int, temb_ch: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch, eps=_NORM_EPS)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_ch, out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch, eps=_NORM_EPS)
        self.dropout = nn.Dropout(0.0)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.nonlinearity = nn.SiLU()
        self.conv_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = self.conv1(self.nonlinearity(self.norm1(x)))
        h = h + self.time_emb_proj(self.nonlinearity(temb))[:, :, None, None]
        h = self.conv2(self.dropout(self.nonlinearity(self.norm2(h))))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return x + h


class Downsample(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _to_tokens(x: Tensor) -> Tensor:
    """[N, C, h, w] -> [N, h*w, C]."""
    return x.flatten(2).transpose(1, 2)


def _to_map(x: Tensor, h: int, w: int) -> Tensor:
    """[N, h*w, C] -> [N, C, h, w]."""
    return x.transpose(1, 2).reshape(x.shape[0], -1, h, w)


class BasicTransformerBlock(nn.Module):
    """Spatial transformer block: self-attention, cross-attention to the image tokens, GEGLU feed-forward.

    Upstream's ``BasicTransformerBlock`` (reference UNet, "write" mode: returns ``norm1(x)`` as the
    reference feature) and ``TemporalBasicTransformerBlock`` (denoiser, "read" mode: self-attention keys and
    values extended with the reference feature) have the same parameters.
    """

    def __init__(self, dim: int, heads: int, cross_attention_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads, dim // heads)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, heads, dim // heads, cross_attention_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward_write(self, x: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        n = self.norm1(x)
        x = self.attn1(n) + x
        x = self.attn2(self.norm2(x), context) + x
        x = self.ff(self.norm3(x)) + x
        return x, n

    def forward_read(self, x: Tensor, context: Tensor, ref: Tensor, ref_keep: Tensor) -> Tensor:
        """``x`` [(B F), L, C]; ``ref`` [(B F), L, C] (the reference image's feature, per frame);
        ``ref_keep`` [(B F)] 1 / 0 (conditional / unconditional)."""
        n = self.norm1(x)
        kv = torch.cat([n, ref], dim=1)
        tokens = n.shape[1]
        neg = ((1.0 - ref_keep) * REF_ATTN_NEG)[:, None].expand(-1, tokens)
        bias = torch.cat([torch.zeros_like(neg), neg], dim=1)[:, None, None, :]
        x = self.attn1(n, kv, bias) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    """``Transformer2DModel`` / ``Transformer3DModel`` (1 layer, conv ``proj_in`` / ``proj_out``)."""

    def __init__(self, channels: int, heads: int, cross_attention_dim: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=_ATTN_NORM_EPS)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(channels, heads, cross_attention_dim)])
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward_write(self, x: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        h, w = x.shape[-2:]
        t = _to_tokens(self.proj_in(self.norm(x)))
        t, feat = self.transformer_blocks[0].forward_write(t, context)
        return self.proj_out(_to_map(t, h, w)) + x, feat

    def forward_read(self, x: Tensor, context: Tensor, ref: Tensor, ref_keep: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        t = _to_tokens(self.proj_in(self.norm(x)))
        t = self.transformer_blocks[0].forward_read(t, context, ref, ref_keep)
        return self.proj_out(_to_map(t, h, w)) + x


class AudioTemporalBasicTransformerBlock(nn.Module):
    """Upstream's audio block with ``stack_enable_blocks`` on (every block in Hallo2): self-attention, then
    three audio cross-attentions masked by the full / face / lip masks, each through a 1x1 zero-conv."""

    def __init__(self, dim: int, heads: int, audio_dim: int) -> None:
        super().__init__()
        dh = dim // heads
        self.zero_conv_full = nn.Conv2d(dim, dim, 1)
        self.zero_conv_face = nn.Conv2d(dim, dim, 1)
        self.zero_conv_lip = nn.Conv2d(dim, dim, 1)
        self.attn1 = Attention(dim, heads, dh)
        self.norm1 = nn.LayerNorm(dim)
        self.attn2_0 = Attention(dim, heads, dh, audio_dim)
        self.attn2_1 = Attention(dim, heads, dh, audio_dim)
        self.attn2_2 = Attention(dim, heads, dh, audio_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(
        self, x: Tensor, audio: Tensor, masks: tuple[Tensor, Tensor, Tensor], hw: tuple[int, int],
        scale: tuple[float, float, float],
    ) -> Tensor:
        x = self.attn1(self.norm1(x)) + x
        n = self.norm2(x)
        out = x
        for attn, conv, mask, s in zip(
            (self.attn2_0, self.attn2_1, self.attn2_2),
            (self.zero_conv_full, self.zero_conv_face, self.zero_conv_lip),
            masks,
            scale,
        ):
            a = attn(n, audio) * mask[:, :, None]
            a = _to_tokens(conv(_to_map(a, *hw)))
            out = out + (a if s == 1.0 else a * s)
        return self.ff(self.norm3(out)) + out


class AudioTransformer(nn.Module):
    """``Transformer3DModel(use_audio_module=True)``: ``norm proj_in transformer_blocks.0 proj_out``."""

    def __init__(self, channels: int, inner: int, heads: int, audio_dim: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=_ATTN_NORM_EPS)
        self.proj_in = nn.Conv2d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList([AudioTemporalBasicTransformerBlock(inner, heads, audio_dim)])
        self.proj_out = nn.Conv2d(inner, channels, 1)

    def forward(self, x: Tensor, audio: Tensor, masks: tuple[Tensor, Tensor, Tensor],
                scale: tuple[float, float, float]) -> Tensor:
        h, w = x.shape[-2:]
        t = _to_tokens(self.proj_in(self.norm(x)))
        t = self.transformer_blocks[0](t, audio, masks, (h, w), scale)
        return self.proj_out(_to_map(t, h, w)) + x


class PositionalEncoding(nn.Module):
    """Sinusoidal temporal positions (``pe`` buffer ``[1, max_len, dim]``, as upstream)."""

    def __init__(self, dim: int, max_len: int) -> None:
        super().__init__()
        position = torch.arange(max_len, dtype=torch.float32)[:, None]
        div_term = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
        pe = torch.zeros(1, max_len, dim)
        pe[0, :, 0::2] = torch.sin(position * div_term)
        pe[0, :, 1::2] = torch.cos(position * div_term)
        self.register_buffer("pe", pe)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.pe[:, : x.shape[1]]


class VersatileAttention(Attention):
    """Temporal self-attention over frames (``attention_mode="Temporal"``) with positional encoding."""

    def __init__(self, dim: int, heads: int, max_len: int) -> None:
        super().__init__(dim, heads, dim // heads)
        self.pos_encoder = PositionalEncoding(dim, max_len)

    def forward_temporal(self, x: Tensor, frames: int) -> Tensor:
        """``x`` [(B T), L, C] -> attention along T for every token position."""
        bt, tokens, c = x.shape
        seq = x.reshape(-1, frames, tokens, c).transpose(1, 2).reshape(-1, frames, c)  # [(B L), T, C]
        seq = self.forward(self.pos_encoder(seq))
        return seq.reshape(-1, tokens, frames, c).transpose(1, 2).reshape(bt, tokens, c)


class TemporalTransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, max_len: int, n_attention: int = 2) -> None:
        super().__init__()
        self.attention_blocks = nn.ModuleList([VersatileAttention(dim, heads, max_len) for _ in range(n_attention)])
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in range(n_attention)])
        self.ff = FeedForward(dim)
        self.ff_norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, frames: int) -> Tensor:
        for attn, norm in zip(self.attention_blocks, self.norms):
            x = attn.forward_temporal(norm(x), frames) + x
        return self.ff(self.ff_norm(x)) + x


class TemporalTransformer3DModel(nn.Module):
    def __init__(self, channels: int, heads: int, max_len: int, groups: int, n_attention: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=_ATTN_NORM_EPS)
        self.proj_in = nn.Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList([TemporalTransformerBlock(channels, heads, max_len, n_attention)])
        self.proj_out = nn.Linear(channels, channels)

    def forward(self, x: Tensor, frames: int) -> Tensor:
        """``x`` [(B T), C, h, w] (frames contiguous per video)."""
        h, w = x.shape[-2:]
        t = self.proj_in(_to_tokens(self.norm(x)))
        for block in self.transformer_blocks:
            t = block(t, frames)
        return _to_map(self.proj_out(t), h, w) + x


class VanillaTemporalModule(nn.Module):
    """AnimateDiff "Vanilla" motion module: ``temporal_transformer`` (2 x Temporal_Self, 1 block)."""

    def __init__(self, channels: int, heads: int, max_len: int, groups: int, n_attention: int = 2) -> None:
        super().__init__()
        self.temporal_transformer = TemporalTransformer3DModel(channels, heads, max_len, groups, n_attention)

    def forward(self, x: Tensor, frames: int) -> Tensor:
        return self.temporal_transformer(x, frames)


# ----------------------------------------------------------------------------------------------
# reference UNet2D
# ----------------------------------------------------------------------------------------------


class _Block(nn.Module):
    """A down / up / mid block container with upstream's child names (``resnets``, ``attentions``, ...)."""


def _make_down_block(p: Hallo2Profile, i: int, in_ch: int, out_ch: int, temb: int, *, video: bool) -> _Block:
    n = len(p.unet_block_out_channels)
    cross = i < n - 1
    heads, g = p.attention_head_dim, p.norm_num_groups
    blk = _Block()
    blk.has_cross_attention = cross
    blk.resnets = nn.ModuleList(
        [ResnetBlock(in_ch if j == 0 else out_ch, out_ch, temb, g) for j in range(p.layers_per_block)]
    )
    if cross:
        blk.attentions = nn.ModuleList(
            [SpatialTransformer(out_ch, heads, p.cross_attention_dim, g) for _ in range(p.layers_per_block)]
        )
        if video:
            blk.audio_modules = nn.ModuleList(
                [
                    AudioTransformer(out_ch, heads * ((in_ch if j == 0 else out_ch) // heads), heads,
                                     p.audio_token_dim, g)
                    for j in range(p.layers_per_block)
                ]
            )
    if video:
        blk.motion_modules = nn.ModuleList(
            [_motion(p, out_ch) for _ in range(p.layers_per_block)]
        )
    blk.downsamplers = nn.ModuleList([Downsample(out_ch)]) if i < n - 1 else None
    return blk


def _make_up_block(
    p: Hallo2Profile, i: int, in_ch: int, out_ch: int, prev_ch: int, temb: int, *, video: bool
) -> _Block:
    n = len(p.unet_block_out_channels)
    cross = i > 0
    heads, g = p.attention_head_dim, p.norm_num_groups
    layers = p.layers_per_block + 1
    blk = _Block()
    blk.has_cross_attention = cross
    blk.resnets = nn.ModuleList(
        [
            ResnetBlock((prev_ch if j == 0 else out_ch) + (in_ch if j == layers - 1 else out_ch), out_ch, temb, g)
            for j in range(layers)
        ]
    )
    if cross:
        blk.attentions = nn.ModuleList(
            [SpatialTransformer(out_ch, heads, p.cross_attention_dim, g) for _ in range(layers)]
        )
        if video:
            blk.audio_modules = nn.ModuleList(
                [AudioTransformer(out_ch, heads * (in_ch // heads), heads, p.audio_token_dim, g) for _ in range(layers)]
            )
    if video:
        blk.motion_modules = nn.ModuleList([_motion(p, out_ch) for _ in range(layers)])
    blk.upsamplers = nn.ModuleList([Upsample(out_ch)]) if i < n - 1 else None
    return blk


def _make_mid_block(p: Hallo2Profile, ch: int, temb: int, *, video: bool) -> _Block:
    heads, g = p.attention_head_dim, p.norm_num_groups
    blk = _Block()
    blk.has_cross_attention = True
    blk.attentions = nn.ModuleList([SpatialTransformer(ch, heads, p.cross_attention_dim, g)])
    blk.resnets = nn.ModuleList([ResnetBlock(ch, ch, temb, g), ResnetBlock(ch, ch, temb, g)])
    if video:
        blk.audio_modules = nn.ModuleList([AudioTransformer(ch, heads * (ch // heads), heads, p.audio_token_dim, g)])
        blk.motion_modules = nn.ModuleList([_motion(p, ch)])
    return blk


def _motion(p: Hallo2Profile, ch: int) -> VanillaTemporalModule:
    return VanillaTemporalModule(ch, p.motion_heads, p.motion_max_positions, min(_MOTION_GROUPS, ch), p.motion_layers)


class _UNetBase(nn.Module):
    def __init__(self, profile: str | Hallo2Profile, *, video: bool) -> None:
        super().__init__()
        p = get_profile(profile)
        self.profile = p
        boc = p.unet_block_out_channels
        n = len(boc)
        temb = boc[0] * 4
        self.conv_in = nn.Conv2d(p.latent_channels, boc[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(boc[0], temb)
        self.down_blocks = nn.ModuleList()
        out_ch = boc[0]
        for i in range(n):
            in_ch, out_ch = out_ch, boc[i]
            self.down_blocks.append(_make_down_block(p, i, in_ch, out_ch, temb, video=video))
        self.up_blocks = nn.ModuleList()
        rev = list(reversed(boc))
        out_ch = rev[0]
        for i in range(n):
            prev_ch, out_ch = out_ch, rev[i]
            in_ch = rev[min(i + 1, n - 1)]
            self.up_blocks.append(_make_up_block(p, i, in_ch, out_ch, prev_ch, temb, video=video))
        self.mid_block = _make_mid_block(p, boc[-1], temb, video=video)
        self.provenance: dict[str, Any] = {"profile": p.name, "seed": None, "checkpoint": None}

    def _temb(self, timestep: Tensor) -> Tensor:
        return self.time_embedding(timestep_embedding(timestep, self.profile.unet_block_out_channels[0]))

    @property
    def num_reference_features(self) -> int:
        return len(reference_feature_layout(self.profile))


class ReferenceUNet2D(_UNetBase):
    """Upstream's reference ``UNet2DConditionModel`` (SD1.5 layout, no ``conv_norm_out`` / ``conv_out``).

    ``forward(ref_latents [N,4,h,w], timestep [N] int64, image_tokens [N,4,C])`` returns the tuple
    ``(ref_feat_0, ..., ref_feat_{K-1})``, ``ref_feat_i`` ``[N, L_i, C_i]`` as listed by
    :func:`reference_feature_layout`.  Upstream runs it once per clip with timestep 0 on the reference
    image and the motion frames.
    """

    def __init__(self, profile: str | Hallo2Profile = "full") -> None:
        super().__init__(profile, video=False)
        self.provenance["component"] = "reference_unet"

    def forward(self, ref_latents: Tensor, timestep: Tensor, image_tokens: Tensor) -> tuple[Tensor, ...]:
        temb = self._temb(timestep)
        ctx = image_tokens
        feats: list[Tensor] = []
        x = self.conv_in(ref_latents)
        skips = [x]
        for blk in self.down_blocks:
            for j, res in enumerate(blk.resnets):
                x = res(x, temb)
                if blk.has_cross_attention:
                    x, f = blk.attentions[j].forward_write(x, ctx)
                    feats.append(f)
                skips.append(x)
            if blk.downsamplers is not None:
                x = blk.downsamplers[0](x)
                skips.append(x)
        mid = self.mid_block
        x = mid.resnets[0](x, temb)
        x, f = mid.attentions[0].forward_write(x, ctx)
        feats.append(f)
        x = mid.resnets[1](x, temb)
        for i, blk in enumerate(self.up_blocks):
            for j, res in enumerate(blk.resnets):
                x = res(torch.cat([x, skips.pop()], dim=1), temb)
                if blk.has_cross_attention:
                    x, f = blk.attentions[j].forward_write(x, ctx)
                    feats.append(f)
            if blk.upsamplers is not None and i < len(self.up_blocks) - 1:
                x = blk.upsamplers[0](x)
        # Everything after the last transformer block (upstream: nothing with parameters) is unused.
        return tuple(feats)


# ----------------------------------------------------------------------------------------------
# denoising UNet3D
# ----------------------------------------------------------------------------------------------


class DenoisingUNet3D(_UNetBase):
    """Upstream's ``UNet3DConditionModel`` with audio modules, motion modules and reference reading.

    Flat ONNX-friendly signature (input order = :meth:`input_names`)::

        forward(sample        [B, 4, F, h, w]    noisy latents (scheduler-scaled)
                timestep      [B]    int64
                image_tokens  [B, 4, C]          ImageProjModel output (CFG uncond: image_proj(zeros))
                audio_tokens  [B, F, 32, Ca]     AudioProjModel output (uncond: zeros)
                face_features [B, C0, F, h, w]   FaceLocator output, added after conv_in (uncond: zeros)
                full_mask_0 .. full_mask_{n-1}   [B, (h/2^i)*(w/2^i)]  per level i, same for every frame
                face_mask_0 .. face_mask_{n-1}   "
                lip_mask_0  .. lip_mask_{n-1}    "
                ref_mask      [B]    float32     1 = read the reference features, 0 = CFG uncond branch
                ref_feat_0 .. ref_feat_{K-1}     [B, R, L_i, C_i]  R = 1 + motion frames (image 0 = ref)
        ) -> model_output [B, 4, F, h, w]   (v-prediction)

    ``n`` = number of UNet levels (4 full, 2 tiny); ``K`` = :func:`reference_feature_layout` length.
    ``R + F`` must not exceed ``motion_max_positions`` (32).  Use :meth:`denoise` for keyword calls.
    """

    def __init__(
        self,
        profile: str | Hallo2Profile = "full",
        *,
        motion_scale: tuple[float, float, float] = (1.0, 1.0, 1.0),
        plain_block_motion_modules: bool = False,
        upstream_ref_tiling: bool = False,
    ) -> None:
        super().__init__(profile, video=True)
        p = self.profile
        self.conv_norm_out = nn.GroupNorm(p.norm_num_groups, p.unet_block_out_channels[0], eps=_NORM_EPS)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(p.unet_block_out_channels[0], p.latent_channels, 3, padding=1)
        self.motion_scale = tuple(float(s) for s in motion_scale)
        self.plain_block_motion_modules = bool(plain_block_motion_modules)
        self.upstream_ref_tiling = bool(upstream_ref_tiling)
        self.num_levels = len(p.unet_block_out_channels)
        self.provenance["component"] = "denoising_unet"

    # -- names -------------------------------------------------------------------------------
    def mask_names(self) -> list[str]:
        return [f"{kind}_mask_{i}" for kind in ("full", "face", "lip") for i in range(self.num_levels)]

    def reference_names(self) -> list[str]:
        return [f"ref_feat_{i}" for i in range(self.num_reference_features)]

    def input_names(self) -> list[str]:
        return (
            ["sample", "timestep", "image_tokens", "audio_tokens", "face_features"]
            + self.mask_names()
            + ["ref_mask"]
            + self.reference_names()
        )

    def denoise(
        self,
        sample: Tensor,
        timestep: Tensor,
        image_tokens: Tensor,
        audio_tokens: Tensor,
        face_features: Tensor,
        full_masks: Sequence[Tensor],
        face_masks: Sequence[Tensor],
        lip_masks: Sequence[Tensor],
        ref_feats: Sequence[Tensor],
        ref_mask: Tensor | None = None,
    ) -> Tensor:
        """Keyword-friendly wrapper of :meth:`forward` (``ref_mask`` defaults to ones)."""
        if ref_mask is None:
            ref_mask = torch.ones(sample.shape[0], dtype=sample.dtype, device=sample.device)
        return self(
            sample, timestep, image_tokens, audio_tokens, face_features,
            *full_masks, *face_masks, *lip_masks, ref_mask, *ref_feats,
        )

    # -- forward -----------------------------------------------------------------------------
    def forward(self, sample: Tensor, timestep: Tensor, image_tokens: Tensor, audio_tokens: Tensor,
                face_features: Tensor, *rest: Tensor) -> Tensor:
        n, k = self.num_levels, self.num_reference_features
        if len(rest) != 3 * n + 1 + k:
            raise ValueError(f"expected {3 * n} masks, ref_mask and {k} reference features, got {len(rest)} tensors")
        full_m, face_m, lip_m = rest[:n], rest[n:2 * n], rest[2 * n:3 * n]
        ref_mask = rest[3 * n]
        refs = list(rest[3 * n + 1:])

        b, c, frames, h, w = sample.shape
        self._frames = frames

        def per_frame(t: Tensor) -> Tensor:  # [B, ...] -> [(B F), ...]
            return t.unsqueeze(1).expand(-1, frames, *t.shape[1:]).reshape(-1, *t.shape[1:])

        temb = per_frame(self._temb(timestep))
        ctx = per_frame(image_tokens)
        audio = audio_tokens.reshape(-1, *audio_tokens.shape[2:])
        masks = [tuple(per_frame(m[i]) for m in (full_m, face_m, lip_m)) for i in range(n)]
        ref_keep = per_frame(ref_mask.to(sample.dtype))
        # reference image features per frame, motion-frame features per video
        if self.upstream_ref_tiling:
            # upstream's ``[:, 0].repeat(1, F, 1, 1)`` tiles the batch: row b*F+k reads video (b*F+k) mod B
            src = torch.arange(b * frames, device=sample.device) % b
            spatial_refs = [r[:, 0].index_select(0, src) for r in refs]
        else:
            spatial_refs = [per_frame(r[:, 0]) for r in refs]
        motion_refs = [r[:, 1:] for r in refs]

        x = sample.transpose(1, 2).reshape(-1, c, h, w)
        face = face_features.transpose(1, 2).reshape(-1, face_features.shape[1], h, w)
        x = self.conv_in(x) + face

        ref_i = 0
        skips = [x]
        for i, blk in enumerate(self.down_blocks):
            for j, res in enumerate(blk.resnets):
                x = res(x, temb)
                if blk.has_cross_attention:
                    x = self._attend(blk, j, x, ctx, audio, masks[i], spatial_refs[ref_i], motion_refs[ref_i], ref_keep)
                    ref_i += 1
                elif self.plain_block_motion_modules:
                    x = blk.motion_modules[j](x, frames)
                skips.append(x)
            if blk.downsamplers is not None:
                x = blk.downsamplers[0](x)
                skips.append(x)
        mid = self.mid_block
        x = mid.resnets[0](x, temb)
        x = self._attend(mid, 0, x, ctx, audio, masks[n - 1], spatial_refs[ref_i], motion_refs[ref_i], ref_keep)
        ref_i += 1
        x = mid.resnets[1](x, temb)
        for i, blk in enumerate(self.up_blocks):
            for j, res in enumerate(blk.resnets):
                x = res(torch.cat([x, skips.pop()], dim=1), temb)
                if blk.has_cross_attention:
                    x = self._attend(blk, j, x, ctx, audio, masks[n - 1 - i], spatial_refs[ref_i],
                                     motion_refs[ref_i], ref_keep)
                    ref_i += 1
                elif self.plain_block_motion_modules:
                    x = blk.motion_modules[j](x, frames)
            if blk.upsamplers is not None:
                x = blk.upsamplers[0](x)
        x = self.conv_out(self.conv_act(self.conv_norm_out(x)))
        return x.reshape(b, frames, self.profile.latent_channels, h, w).transpose(1, 2)

    def _attend(self, blk: _Block, j: int, x: Tensor, ctx: Tensor, audio: Tensor,
                masks: tuple[Tensor, Tensor, Tensor], ref: Tensor, motion_ref: Tensor, ref_keep: Tensor) -> Tensor:
        """Spatial (reference-reading) attention -> audio attention -> motion module with motion frames."""
        frames = self._frames
        x = blk.attentions[j].forward_read(x, ctx, ref, ref_keep)
        x = blk.audio_modules[j](x, audio, masks, self.motion_scale)
        bf, ch, h, w = x.shape
        m = motion_ref.shape[1]
        if m == 0:
            return blk.motion_modules[j](x, frames)
        # motion-frame features [B, M, L, C] -> [B, M, C, h, w], prepended in time
        mf = motion_ref.transpose(2, 3).reshape(-1, m, ch, h, w)
        seq = torch.cat([mf, x.reshape(-1, frames, ch, h, w)], dim=1)
        seq = blk.motion_modules[j](seq.reshape(-1, ch, h, w), frames + m)
        return seq.reshape(-1, frames + m, ch, h, w)[:, m:].reshape(-1, ch, h, w)


# ----------------------------------------------------------------------------------------------
# construction and checkpoints
# ----------------------------------------------------------------------------------------------


def _seeded(module: nn.Module, seed: int) -> None:
    """Deterministic re-initialisation of every parameter (PyTorch default init under a fixed seed).

    Unlike upstream's training init, nothing is zero-initialised (motion ``proj_out``, audio zero-convs), so
    that every path of the demo networks influences the output.
    """
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(int(seed))
    try:
        for m in module.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                m.reset_parameters()
            elif isinstance(m, (nn.LayerNorm, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
    finally:
        torch.random.set_rng_state(gen_state)


def build_reference_unet(profile: str | Hallo2Profile = "tiny", seed: int = 0) -> ReferenceUNet2D:
    """A reference UNet with seeded demo weights (eval mode)."""
    net = ReferenceUNet2D(profile)
    _seeded(net, seed)
    net.provenance.update(seed=int(seed), checkpoint=None)
    return net.eval()


def build_denoising_unet(profile: str | Hallo2Profile = "tiny", seed: int = 0) -> DenoisingUNet3D:
    """A denoising UNet with seeded demo weights (eval mode); ``conv_out`` x :data:`DEMO_CONV_OUT_GAIN`."""
    net = DenoisingUNet3D(profile)
    _seeded(net, seed + 1)
    with torch.no_grad():
        net.conv_out.weight.mul_(DEMO_CONV_OUT_GAIN)
        net.conv_out.bias.mul_(DEMO_CONV_OUT_GAIN)
    net.provenance.update(seed=int(seed), checkpoint=None)
    return net.eval()


_UNET_FILES = ("net.pth", "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


def _select(sd: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Strip ``prefix`` (``net.pth`` layout) when present; otherwise keep the dict as is."""
    if any(k.startswith(prefix) for k in sd):
        return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    return dict(sd)


def _optional_pe(net: nn.Module, sd: dict[str, Tensor]) -> tuple[str, ...]:
    """Positional-encoding buffers are deterministic: absent or differently sized ones keep ours."""
    keys = tuple(k for k in net.state_dict() if k.endswith("pos_encoder.pe"))
    own = net.state_dict()
    for k in keys:
        if k in sd and tuple(sd[k].shape) != tuple(own[k].shape):
            sd.pop(k)
    return keys


def load_reference_unet(path: str | Path, profile: str | Hallo2Profile = "full") -> ReferenceUNet2D:
    """Reference UNet from ``net.pth`` (keys ``reference_unet.*``), ``reference_unet.pth`` or a diffusers
    SD1.5 ``unet`` folder/file (its ``conv_norm_out`` / ``conv_out``, absent upstream, are ignored).

    Missing, unexpected or mis-shaped keys raise ``ValueError`` naming them.
    """
    sd, file = read_state_dict(path, _UNET_FILES + ("reference_unet.pth",))
    sd = _select(sd, "reference_unet.")
    for k in [k for k in sd if k.startswith(("conv_norm_out.", "conv_out."))]:
        sd.pop(k)
    net = ReferenceUNet2D(profile)
    check_and_load(net, sd, f"{file} (reference UNet)")
    net.provenance.update(seed=None, checkpoint=sha256_file(file))
    return net.eval()


def load_denoising_unet(
    path: str | Path,
    motion_module_path: str | Path | None = None,
    profile: str | Hallo2Profile = "full",
) -> DenoisingUNet3D:
    """Denoising UNet from ``net.pth`` (keys ``denoising_unet.*``) or ``denoising_unet.pth``, optionally
    completed / overridden by a motion-module state dict (``motion_module.pth`` / AnimateDiff
    ``mm_sd_v15_v2.ckpt``: keys ``*.motion_modules.*``), as upstream's ``from_pretrained_2d`` merges them.

    Missing, unexpected or mis-shaped keys raise ``ValueError`` naming them (``pos_encoder.pe`` buffers
    may be absent).
    """
    sd, file = read_state_dict(path, _UNET_FILES + ("denoising_unet.pth",))
    sd = _select(sd, "denoising_unet.")
    digests = [sha256_file(file)]
    if motion_module_path is not None:
        mm, mm_file = read_state_dict(motion_module_path, ("motion_module.pth",))
        mm = _select(mm, "denoising_unet.")
        sd.update(mm)
        digests.append(sha256_file(mm_file))
    net = DenoisingUNet3D(profile)
    optional = _optional_pe(net, sd)
    check_and_load(net, sd, f"{file} (denoising UNet)", optional=optional)
    record_checkpoint(net, "+".join(digests))
    return net.eval()

"""``AutoencoderKL`` (``stabilityai/sd-vae-ft-mse``, as Hallo2 uses it) in plain PyTorch.

Module / parameter names follow diffusers (0.32) ``AutoencoderKL`` so that the official
``diffusion_pytorch_model.safetensors`` / ``.bin`` loads 1:1::

    encoder.conv_in                      Conv2d 3 -> C0
    encoder.down_blocks.N.resnets.M      ResnetBlock2D (norm1, conv1, norm2, conv2[, conv_shortcut])
    encoder.down_blocks.N.downsamplers.0.conv   (all blocks but the last; pad (0,1,0,1), stride 2)
    encoder.mid_block.resnets.{0,1}, encoder.mid_block.attentions.0 (group_norm, to_q, to_k, to_v, to_out.0)
    encoder.conv_norm_out, encoder.conv_out     (-> 2 * latent channels: mean, logvar)
    quant_conv                           Conv2d 8 -> 8, k=1
    post_quant_conv                      Conv2d 4 -> 4, k=1
    decoder.conv_in, decoder.mid_block..., decoder.up_blocks.N.resnets.M (layers_per_block + 1 each),
    decoder.up_blocks.N.upsamplers.0.conv       (all blocks but the last; nearest x2 then conv)
    decoder.conv_norm_out, decoder.conv_out

Older checkpoints name the mid-block attention ``query`` / ``key`` / ``value`` / ``proj_attn``
(diffusers' deprecated ``AttentionBlock``, sometimes with 1x1-conv shaped weights); the loader renames
and reshapes them like diffusers does.

Exported pieces (Hallo2 usage in ``hallo/animate/face_animate.py``):

* :class:`VaeEncoder`: ``pixels`` [B, 3, H, W] in [-1, 1] -> ``latents`` [B, 4, H/8, W/8] =
  ``latent_dist.mean * 0.18215`` (the reference image and motion frames use the posterior mean);
* :class:`VaeDecoder`: ``latents`` [B, 4, h, w] (scaled) -> ``pixels`` [B, 3, 8h, 8w]
  = ``decode(latents / 0.18215)`` clamped to [-1, 1] (upstream then maps ``(x / 2 + 0.5).clamp(0, 1)``,
  which is the same clamp).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emoserve.hallo2.profile import Hallo2Profile, get_profile
from emoserve.nn.checkpoints import (
    check_and_load,
    record_checkpoint,
    state_dict_source,
)

__all__ = [
    "ResnetBlock2D",
    "VaeAttention",
    "Encoder",
    "Decoder",
    "AutoencoderKL",
    "VaeEncoder",
    "VaeDecoder",
    "build_vae",
    "load_vae",
    "convert_deprecated_vae_keys",
    "VAE_FILE_NAMES",
]

_LOG = logging.getLogger(__name__)

_EPS = 1e-6  # diffusers' VAE uses resnet_eps=1e-6 everywhere (resnets, attention and output norms)

VAE_FILE_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


class ResnetBlock2D(nn.Module):
    """diffusers ``ResnetBlock2D`` without a time embedding: GN-SiLU-conv-GN-SiLU-conv + shortcut."""

    def __init__(self, in_ch: int, out_ch: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch, eps=_EPS, affine=True)
        self.conv1 = nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=1, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_ch, eps=_EPS, affine=True)
        self.dropout = nn.Dropout(0.0)
        self.conv2 = nn.Conv2d(out_ch, out_ch, kernel_size=3, stride=1, padding=1)
        self.conv_shortcut = nn.Conv2d(in_ch, out_ch, kernel_size=1) if in_ch != out_ch else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return x + h


class VaeAttention(nn.Module):
    """Single-head spatial self-attention of the VAE mid block (diffusers ``Attention`` from the
    deprecated attention block: group norm, q/k/v/out linear layers, residual connection)."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, channels, eps=_EPS, affine=True)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels), nn.Dropout(0.0)])
        self.scale = channels**-0.5

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        tokens = self.group_norm(x).flatten(2).transpose(1, 2)  # [B, HW, C]
        q, k, v = self.to_q(tokens), self.to_k(tokens), self.to_v(tokens)
        attn = torch.softmax(torch.matmul(q, k.transpose(1, 2)) * self.scale, dim=-1)
        out = self.to_out[1](self.to_out[0](torch.matmul(attn, v)))
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class UNetMidBlock2D(nn.Module):
    """resnet -> attention -> resnet (keys ``resnets.0``, ``attentions.0``, ``resnets.1``)."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.attentions = nn.ModuleList([VaeAttention(channels, groups)])
        self.resnets = nn.ModuleList([ResnetBlock2D(channels, channels, groups) for _ in range(2)])

    def forward(self, x: Tensor) -> Tensor:
        x = self.resnets[0](x)
        return self.resnets[1](self.attentions[0](x))


class Downsample2D(nn.Module):
    """Asymmetric zero pad (right/bottom by 1) then a stride-2 3x3 conv (``downsample_padding=0``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample2D(nn.Module):
    """Nearest-neighbour x2 then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class DownEncoderBlock2D(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, num_layers: int, groups: int, add_downsample: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock2D(in_ch if i == 0 else out_ch, out_ch, groups) for i in range(num_layers)]
        )
        self.downsamplers = nn.ModuleList([Downsample2D(out_ch)]) if add_downsample else None

    def forward(self, x: Tensor) -> Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
        return x


class UpDecoderBlock2D(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, num_layers: int, groups: int, add_upsample: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock2D(in_ch if i == 0 else out_ch, out_ch, groups) for i in range(num_layers)]
        )
        self.upsamplers = nn.ModuleList([Upsample2D(out_ch)]) if add_upsample else None

    def forward(self, x: Tensor) -> Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class Encoder(nn.Module):
    """diffusers VAE ``Encoder`` (``double_z=True``): pixels -> [mean, logvar] moments (before quant_conv)."""

    def __init__(self, p: Hallo2Profile) -> None:
        super().__init__()
        ch, g = p.vae_block_out_channels, p.vae_norm_num_groups
        self.conv_in = nn.Conv2d(3, ch[0], kernel_size=3, stride=1, padding=1)
        blocks = []
        prev = ch[0]
        for i, out in enumerate(ch):
            blocks.append(DownEncoderBlock2D(prev, out, p.vae_layers_per_block, g, add_downsample=i < len(ch) - 1))
            prev = out
        self.down_blocks = nn.ModuleList(blocks)
        self.mid_block = UNetMidBlock2D(ch[-1], g)
        self.conv_norm_out = nn.GroupNorm(g, ch[-1], eps=_EPS)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(ch[-1], 2 * p.latent_channels, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(self.conv_act(self.conv_norm_out(x)))


class Decoder(nn.Module):
    """diffusers VAE ``Decoder``: latents (after post_quant_conv) -> pixels."""

    def __init__(self, p: Hallo2Profile) -> None:
        super().__init__()
        ch, g = p.vae_block_out_channels, p.vae_norm_num_groups
        rev = list(reversed(ch))
        self.conv_in = nn.Conv2d(p.latent_channels, rev[0], kernel_size=3, stride=1, padding=1)
        self.mid_block = UNetMidBlock2D(rev[0], g)
        blocks = []
        prev = rev[0]
        for i, out in enumerate(rev):
            blocks.append(UpDecoderBlock2D(prev, out, p.vae_layers_per_block + 1, g, add_upsample=i < len(rev) - 1))
            prev = out
        self.up_blocks = nn.ModuleList(blocks)
        self.conv_norm_out = nn.GroupNorm(g, ch[0], eps=_EPS)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(ch[0], 3, kernel_size=3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(self.conv_act(self.conv_norm_out(x)))


def _check_vae_profile(p: Hallo2Profile) -> None:
    factor = 2 ** (len(p.vae_block_out_channels) - 1)
    if factor != p.vae_scale_factor:
        raise ValueError(
            f"profile {p.name!r}: {len(p.vae_block_out_channels)} VAE blocks downsample by {factor}, "
            f"but vae_scale_factor is {p.vae_scale_factor}"
        )
    if any(c % p.vae_norm_num_groups for c in p.vae_block_out_channels):
        raise ValueError(f"profile {p.name!r}: VAE widths must be divisible by vae_norm_num_groups")


class AutoencoderKL(nn.Module):
    """The whole VAE with diffusers' state-dict layout (``encoder``, ``decoder``, ``quant_conv``,
    ``post_quant_conv``).  :meth:`encoder_net` / :meth:`decoder_net` give the exported halves."""

    def __init__(self, profile: str | Hallo2Profile = "full") -> None:
        super().__init__()
        p = get_profile(profile)
        _check_vae_profile(p)
        self.profile = p
        self.encoder = Encoder(p)
        self.decoder = Decoder(p)
        self.quant_conv = nn.Conv2d(2 * p.latent_channels, 2 * p.latent_channels, kernel_size=1)
        self.post_quant_conv = nn.Conv2d(p.latent_channels, p.latent_channels, kernel_size=1)
        self.provenance: dict[str, Any] = {"component": "vae", "profile": p.name, "seed": None, "checkpoint": None}

    def encode_mean(self, pixels: Tensor) -> Tensor:
        """Unscaled posterior mean ``latent_dist.mean``."""
        moments = self.quant_conv(self.encoder(pixels))
        return moments[:, : self.profile.latent_channels]

    def decode(self, z: Tensor) -> Tensor:
        """Unscaled latents -> unclamped decoder output."""
        return self.decoder(self.post_quant_conv(z))

    def encoder_net(self) -> VaeEncoder:
        return VaeEncoder(self)

    def decoder_net(self) -> VaeDecoder:
        return VaeDecoder(self)


class VaeEncoder(nn.Module):
    """``pixels`` [B, 3, H, W] in [-1, 1] -> ``latents`` [B, 4, H/8, W/8] (posterior mean x scaling).

    Shares the parameters of the :class:`AutoencoderKL` it is built from.
    """

    def __init__(self, vae: AutoencoderKL) -> None:
        super().__init__()
        self.profile = vae.profile
        self.encoder = vae.encoder
        self.quant_conv = vae.quant_conv
        self.latent_channels = vae.profile.latent_channels
        self.scaling = float(vae.profile.vae_scaling)
        self.provenance = dict(vae.provenance, component="vae_encoder")

    def forward(self, pixels: Tensor) -> Tensor:
        moments = self.quant_conv(self.encoder(pixels))
        return moments[:, : self.latent_channels] * self.scaling


class VaeDecoder(nn.Module):
    """``latents`` [B, 4, h, w] (scaled) -> ``pixels`` [B, 3, 8h, 8w] clamped to [-1, 1]."""

    def __init__(self, vae: AutoencoderKL) -> None:
        super().__init__()
        self.profile = vae.profile
        self.post_quant_conv = vae.post_quant_conv
        self.decoder = vae.decoder
        self.scaling = float(vae.profile.vae_scaling)
        self.provenance = dict(vae.provenance, component="vae_decoder")

    def forward(self, latents: Tensor) -> Tensor:
        pixels = self.decoder(self.post_quant_conv(latents / self.scaling))
        return pixels.clamp(-1.0, 1.0)


def build_vae(profile: str | Hallo2Profile = "full", seed: int = 0) -> AutoencoderKL:
    """A VAE with deterministic, seeded random ("demo") weights (PyTorch default init), in eval mode.

    The global RNG state is left untouched.
    """
    p = get_profile(profile)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKL(p)
    vae.provenance.update(seed=int(seed))
    return vae.eval()


_DEPRECATED_ATTENTION = {"query.": "to_q.", "key.": "to_k.", "value.": "to_v.", "proj_attn.": "to_out.0."}


def convert_deprecated_vae_keys(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename the old ``AttentionBlock`` keys of the mid blocks (``query``/``key``/``value``/``proj_attn``)
    to ``to_q``/``to_k``/``to_v``/``to_out.0`` and squeeze 1x1-conv shaped attention weights."""
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        if ".mid_block.attentions." in key:
            head, _, tail = key.partition(".mid_block.attentions.")
            idx, _, leaf = tail.partition(".")
            for old, new in _DEPRECATED_ATTENTION.items():
                if leaf.startswith(old):
                    leaf = new + leaf[len(old):]
                    break
            key = f"{head}.mid_block.attentions.{idx}.{leaf}"
            if leaf.split(".")[0] in ("to_q", "to_k", "to_v", "to_out") and leaf.endswith("weight") and value.ndim == 4:
                value = value[:, :, 0, 0]
        out[key] = value
    return out


def _check_config(folder: Path, p: Hallo2Profile) -> None:
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        return
    cfg = json.loads(cfg_path.read_text())
    checks = {
        "block_out_channels": tuple(p.vae_block_out_channels),
        "latent_channels": p.latent_channels,
        "layers_per_block": p.vae_layers_per_block,
        "norm_num_groups": p.vae_norm_num_groups,
    }
    for key, want in checks.items():
        if key in cfg:
            got = tuple(cfg[key]) if isinstance(cfg[key], list) else cfg[key]
            if got != want:
                raise ValueError(f"{cfg_path}: {key}={got!r} does not match the {p.name!r} profile ({want!r})")
    scaling = cfg.get("scaling_factor")
    if scaling is not None and abs(float(scaling) - p.vae_scaling) > 1e-9:
        _LOG.warning("%s: scaling_factor %s differs from the profile's %s (the profile's is used)",
                     cfg_path, scaling, p.vae_scaling)


def load_vae(
    path_or_folder: str | Path | Mapping[str, Tensor],
    profile: str | Hallo2Profile = "full",
    *,
    weights_only: bool | None = None,
) -> AutoencoderKL:
    """Load a diffusers ``AutoencoderKL`` checkpoint (e.g. ``pretrained_models/sd-vae-ft-mse``).

    Accepts the model folder (``diffusion_pytorch_model.safetensors`` preferred, else ``.bin``; its
    ``config.json`` is checked against the profile), one of those files, or a state dict.  Strict:
    ``ValueError`` names missing / unexpected keys and shape mismatches.
    """
    p = get_profile(profile)
    vae = AutoencoderKL(p)
    raw, digest, where = state_dict_source(
        path_or_folder, VAE_FILE_NAMES, weights_only=weights_only, check_folder=lambda folder: _check_config(folder, p)
    )
    sd = convert_deprecated_vae_keys(raw)
    check_and_load(vae, sd, f"VAE checkpoint {where}")
    record_checkpoint(vae, digest)
    return vae.eval()

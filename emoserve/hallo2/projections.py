"""Hallo2's small conditioning networks with upstream's parameter names.

* :class:`AudioProjModel` (``hallo/models/audio_proj.py``): audio windows [B, F, 5, L, D] ->
  flatten(5*L*D) -> Linear+ReLU -> Linear+ReLU -> Linear -> [B, F, 32, C] -> LayerNorm(C).
  Keys ``proj1``, ``proj2``, ``proj3``, ``norm``.
* :class:`ImageProjModel` (``hallo/models/image_proj.py``): face embedding [B, 512] -> Linear ->
  [B, 4, C] -> LayerNorm(C).  Keys ``proj``, ``norm``.
* :class:`FaceLocator` (``hallo/models/face_locator.py``): per-frame 2-D convs (``InflatedConv3d``)
  ``conv_in`` (3 -> 16) + SiLU, ``blocks`` (3x3 same-width conv, 3x3 stride-2 conv, each + SiLU) per
  width step, ``conv_out`` (-> 320); 8x spatial downsampling.  Upstream's FaceLocator takes the
  3-channel (RGB-converted) face-region mask; :class:`FaceLocatorNet` (the exported network) takes a
  1-channel mask [B, 1, F, H, W] and repeats it to 3 channels, which is what upstream's RGB mask is.

In upstream's ``net.pth`` (``scripts/inference_long.py::Net``) these live under ``audioproj.``,
``imageproj.`` and ``face_locator.``; :func:`load_projections` reads them from there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
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
    "AudioProjModel",
    "ImageProjModel",
    "InflatedConv3d",
    "FaceLocator",
    "FaceLocatorNet",
    "Hallo2Projections",
    "build_projections",
    "load_projections",
    "NET_PREFIXES",
]

NET_PREFIXES = {"audio_proj": "audioproj.", "image_proj": "imageproj.", "face_locator": "face_locator."}
"""Prefix of each network inside upstream's ``net.pth``."""


class AudioProjModel(nn.Module):
    """``forward(audio_windows [B, F, seq_len, blocks, channels]) -> [B, F, context_tokens, output_dim]``."""

    def __init__(
        self,
        seq_len: int = 5,
        blocks: int = 12,
        channels: int = 768,
        intermediate_dim: int = 512,
        output_dim: int = 768,
        context_tokens: int = 32,
    ) -> None:
        super().__init__()
        self.seq_len = seq_len
        self.blocks = blocks
        self.channels = channels
        self.input_dim = seq_len * blocks * channels
        self.intermediate_dim = intermediate_dim
        self.context_tokens = context_tokens
        self.output_dim = output_dim
        self.proj1 = nn.Linear(self.input_dim, intermediate_dim)
        self.proj2 = nn.Linear(intermediate_dim, intermediate_dim)
        self.proj3 = nn.Linear(intermediate_dim, context_tokens * output_dim)
        self.norm = nn.LayerNorm(output_dim)
        self.provenance: dict[str, Any] = {"component": "audio_proj", "seed": None, "checkpoint": None}

    def forward(self, audio_windows: Tensor) -> Tensor:
        b, f = audio_windows.shape[0], audio_windows.shape[1]
        x = audio_windows.reshape(b * f, self.input_dim)
        x = torch.relu(self.proj1(x))
        x = torch.relu(self.proj2(x))
        tokens = self.proj3(x).reshape(b * f, self.context_tokens, self.output_dim)
        return self.norm(tokens).reshape(b, f, self.context_tokens, self.output_dim)


class ImageProjModel(nn.Module):
    """``forward(face_embedding [B, clip_embeddings_dim]) -> [B, tokens, cross_attention_dim]``."""

    def __init__(
        self, cross_attention_dim: int = 768, clip_embeddings_dim: int = 512, clip_extra_context_tokens: int = 4
    ) -> None:
        super().__init__()
        self.cross_attention_dim = cross_attention_dim
        self.clip_extra_context_tokens = clip_extra_context_tokens
        self.proj = nn.Linear(clip_embeddings_dim, clip_extra_context_tokens * cross_attention_dim)
        self.norm = nn.LayerNorm(cross_attention_dim)
        self.provenance: dict[str, Any] = {"component": "image_proj", "seed": None, "checkpoint": None}

    def forward(self, face_embedding: Tensor) -> Tensor:
        tokens = self.proj(face_embedding).reshape(-1, self.clip_extra_context_tokens, self.cross_attention_dim)
        return self.norm(tokens)


class InflatedConv3d(nn.Conv2d):
    """A Conv2d applied to every frame of a [B, C, F, H, W] video (parameters of a plain Conv2d)."""

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        b, c, f, h, w = x.shape
        y = super().forward(x.transpose(1, 2).reshape(b * f, c, h, w))
        return y.reshape(b, f, y.shape[1], y.shape[2], y.shape[3]).transpose(1, 2)


class FaceLocator(nn.Module):
    """Upstream ``FaceLocator``: ``forward(conditioning [B, C_in, F, H, W]) -> [B, C_out, F, H/8, W/8]``."""

    def __init__(
        self,
        conditioning_embedding_channels: int = 320,
        conditioning_channels: int = 3,
        block_out_channels: tuple[int, ...] = (16, 32, 64, 128),
        *,
        zero_init_out: bool = True,
    ) -> None:
        super().__init__()
        self.conditioning_channels = conditioning_channels
        self.conv_in = InflatedConv3d(conditioning_channels, block_out_channels[0], kernel_size=3, padding=1)
        self.blocks = nn.ModuleList()
        for c_in, c_out in zip(block_out_channels[:-1], block_out_channels[1:]):
            self.blocks.append(InflatedConv3d(c_in, c_in, kernel_size=3, padding=1))
            self.blocks.append(InflatedConv3d(c_in, c_out, kernel_size=3, padding=1, stride=2))
        self.conv_out = InflatedConv3d(
            block_out_channels[-1], conditioning_embedding_channels, kernel_size=3, padding=1
        )
        if zero_init_out:  # upstream: zero_module(conv_out) (training start)
            nn.init.zeros_(self.conv_out.weight)
            nn.init.zeros_(self.conv_out.bias)

    def forward(self, conditioning: Tensor) -> Tensor:
        x = F.silu(self.conv_in(conditioning))
        for block in self.blocks:
            x = F.silu(block(x))
        return self.conv_out(x)


class FaceLocatorNet(nn.Module):
    """The exported face locator: ``face_mask`` [B, 1, F, H, W] in [0, 1] -> ``face_features`` [B, C, F, h, w].

    The single-channel mask is repeated to upstream's 3 (RGB) channels.  State-dict keys are
    ``face_locator.*`` -- the same prefix as in ``net.pth``.
    """

    def __init__(self, face_locator: FaceLocator) -> None:
        super().__init__()
        self.face_locator = face_locator
        self.provenance: dict[str, Any] = {"component": "face_locator", "seed": None, "checkpoint": None}

    def forward(self, face_mask: Tensor) -> Tensor:
        x = face_mask.expand(-1, self.face_locator.conditioning_channels, -1, -1, -1)
        return self.face_locator(x)


@dataclass
class Hallo2Projections:
    """The three conditioning networks of one profile (each an ``nn.Module`` with its own provenance)."""

    profile: Hallo2Profile
    audio_proj: AudioProjModel
    image_proj: ImageProjModel
    face_locator: FaceLocatorNet

    def modules(self) -> dict[str, nn.Module]:
        return {"audio_proj": self.audio_proj, "image_proj": self.image_proj, "face_locator": self.face_locator}

    def eval(self) -> Hallo2Projections:
        for m in self.modules().values():
            m.eval()
        return self


def _make(p: Hallo2Profile, *, zero_init_out: bool) -> Hallo2Projections:
    audio_proj = AudioProjModel(
        seq_len=p.audio_window,
        blocks=p.wav2vec_layers,
        channels=p.wav2vec_hidden,
        intermediate_dim=p.audio_proj_intermediate_dim,
        output_dim=p.audio_token_dim,
        context_tokens=p.audio_tokens,
    )
    image_proj = ImageProjModel(
        cross_attention_dim=p.cross_attention_dim,
        clip_embeddings_dim=p.face_embedding_dim,
        clip_extra_context_tokens=p.image_tokens,
    )
    face_locator = FaceLocatorNet(
        FaceLocator(
            conditioning_embedding_channels=p.face_locator_channels,
            conditioning_channels=3,
            block_out_channels=tuple(p.face_locator_block_out_channels),
            zero_init_out=zero_init_out,
        )
    )
    for m in (audio_proj, image_proj, face_locator):
        m.provenance["profile"] = p.name
    return Hallo2Projections(p, audio_proj, image_proj, face_locator)


def build_projections(profile: str | Hallo2Profile = "full", seed: int = 0) -> Hallo2Projections:
    """The three networks with deterministic, seeded random ("demo") weights, in eval mode.

    Unlike upstream's training init, the face locator's ``conv_out`` is NOT zeroed (a zero network
    would make demo output and export parity checks trivial).  The global RNG state is left untouched.
    """
    p = get_profile(profile)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        proj = _make(p, zero_init_out=False)
    for m in proj.modules().values():
        m.provenance["seed"] = int(seed)
    return proj.eval()


def load_projections(
    src: str | Path | Mapping[str, Tensor],
    profile: str | Hallo2Profile = "full",
    *,
    weights_only: bool | None = None,
) -> Hallo2Projections:
    """Load ``audioproj.*``, ``imageproj.*`` and ``face_locator.*`` from upstream's ``net.pth``.

    ``src``: the ``net.pth`` file, its folder (``pretrained_models/hallo2``), or a state dict.  Keys of
    the other networks in ``net.pth`` (``reference_unet.``, ``denoising_unet.``) are ignored; a
    ``module.`` prefix is stripped.  Strict per network: ``ValueError`` names missing / unexpected keys.
    """
    p = get_profile(profile)
    proj = _make(p, zero_init_out=True)
    raw, digest, where = state_dict_source(src, ("net.pth",), weights_only=weights_only)
    raw = {(k.removeprefix("module.")): v for k, v in raw.items()}
    targets: dict[str, tuple[nn.Module, str]] = {
        "audio_proj": (proj.audio_proj, NET_PREFIXES["audio_proj"]),
        "image_proj": (proj.image_proj, NET_PREFIXES["image_proj"]),
        # FaceLocatorNet's own keys already start with "face_locator."
        "face_locator": (proj.face_locator, ""),
    }
    for part, (module, strip) in targets.items():
        prefix = NET_PREFIXES[part]
        sd = {k[len(strip):]: v for k, v in raw.items() if k.startswith(prefix)}
        check_and_load(module, sd, f"{part} ({prefix}*) in {where}")
        record_checkpoint(module, digest)
    return proj.eval()

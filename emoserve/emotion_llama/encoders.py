"""Emotion-LLaMA multimodal encoders in plain PyTorch (ZebangCheng/Emotion-LLaMA @ 4ee28d2).

Upstream pipeline (``minigpt4/models/minigpt_v2.py::MiniGPTv2.encode_img``,
``minigpt4/conversation/conversation.py::Chat.encode_img``)::

    first RGB frame -> bicubic 448x448 -> /255 -> CLIP mean/std            [B, 3, 448, 448]
      -> EVA-CLIP ViT-g (39 blocks, width 1408, patch 14, no final norm)  [B, 1025, 1408]
      -> ln_vision (LayerNorm, eps 1e-5)
         CLS   [B, 1, 1408]    -> cls_tk_llama_proj  Linear(1408 -> D)     [B, 1, D]
         1024 patches, regrouped 4 at a time [B, 256, 5632] -> llama_proj  [B, 256, D]

    16 kHz mono PCM -> Wav2Vec2FeatureExtractor (do_normalize: zero mean / unit variance)
      -> chinese-hubert-large (HF HubertModel) last hidden state [B, T, 1024] -> mean over T
      video_features = [zeros (FaceMAE), zeros (VideoMAE), HuBERT]          [B, 3, 1024]
      -> feats_llama_proj1/2/3 (one Linear(1024 -> D) per slot), stacked     [B, 3, D]

    multimodal embeddings = cat(image tokens, feature tokens, CLS) = [B, 260, D]

Here the vision half is :class:`VisionEncoder` and the audio half :class:`AudioFeatureEncoder`;
the upstream demo's input normalisation of the audio happens *inside* ``forward`` so the ONNX graph
takes raw PCM.  Module / parameter names mirror upstream (``visual_encoder.blocks.0.attn.q_bias``,
``hubert.encoder.layers.0.attention.q_proj.weight``, ``llama_proj.weight``, ...), so the official
checkpoints load with the loaders below.

Numerics: upstream runs the ViT in fp16 (``vit_precision: fp16`` converts its Linear/Conv weights)
under CUDA autocast; this implementation computes in fp32 (TensorRT may later pick fp16).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emoserve.constants import IMAGE_SIZE, VIT_PATCH_SIZE
from emoserve.nn.checkpoints import check_and_load, preview, sha256_file, torch_load
from emoserve.nn.wav2vec2 import (
    HubertModel,
    Wav2Vec2Config,
    conv_min_input_samples,
    remap_legacy_weight_norm,
)

__all__ = [
    "EncoderProfile",
    "ENCODER_PROFILES",
    "CHINESE_HUBERT_LARGE",
    "EvaVisionTransformer",
    "VisionEncoder",
    "AudioFeatureEncoder",
    "build_encoders",
    "load_eva_vit_g",
    "load_hf_hubert",
    "load_emotion_llama_projections",
    "interpolate_pos_embed",
    "normalize_audio",
    "min_audio_samples",
    "count_parameters",
    "parameter_counts",
]

_LOG = logging.getLogger(__name__)

# --------------------------------------------------------------------------- profiles

CHINESE_HUBERT_LARGE = Wav2Vec2Config(
    conv_dim=(512,) * 7,
    conv_kernel=(10, 3, 3, 3, 3, 2, 2),
    conv_stride=(5, 2, 2, 2, 2, 2, 2),
    conv_bias=False,
    feat_extract_norm="layer",
    hidden_size=1024,
    num_hidden_layers=24,
    num_attention_heads=16,
    intermediate_size=4096,
    num_conv_pos_embeddings=128,
    num_conv_pos_embedding_groups=16,
    layer_norm_eps=1e-5,
    do_stable_layer_norm=True,
    masked_spec_embed=True,
)
"""TencentGameMate/chinese-hubert-large ``config.json`` (HubertModel, pre-LN, layer-norm conv extractor)."""

AUDIO_NORM_EPS = 1e-7
"""``Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm``: (x - mean) / sqrt(var + 1e-7)."""


@dataclass(frozen=True)
class EncoderProfile:
    """Sizes of the two encoders.  ``full`` is upstream; the LLM width is a constructor argument.

    Every profile keeps 448 px / patch 14, i.e. 1024 patches -> 256 image tokens, and the
    wav2vec2 conv strides (so token counts, the 400-sample minimum input and the ~50 Hz frame
    rate are the same in every profile).
    """

    name: str = "full"
    # --- EVA-CLIP ViT-g (``create_eva_vit_g``)
    image_size: int = IMAGE_SIZE
    patch_size: int = VIT_PATCH_SIZE
    vit_width: int = 1408
    vit_depth: int = 39
    vit_heads: int = 16  # 1408 // 88
    vit_mlp_ratio: float = 4.3637  # mlp hidden = int(1408 * 4.3637) = 6144
    vit_layer_norm_eps: float = 1e-6
    ln_vision_eps: float = 1e-5  # MiniGPT's LayerNorm subclass: torch default eps
    tokens_per_image_token: int = 4  # patches regrouped 4 at a time -> llama_proj input 4 * width
    # --- HuBERT
    hubert: Wav2Vec2Config = field(default=CHINESE_HUBERT_LARGE)

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError("image_size must be a multiple of patch_size")
        if self.vit_width % self.vit_heads:
            raise ValueError("vit_width must be divisible by vit_heads")
        if self.num_patches % self.tokens_per_image_token:
            raise ValueError("the number of patches must be divisible by tokens_per_image_token")

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    @property
    def num_image_tokens(self) -> int:
        return self.num_patches // self.tokens_per_image_token

    @property
    def vit_mlp_hidden(self) -> int:
        return int(self.vit_width * self.vit_mlp_ratio)

    @property
    def feature_dim(self) -> int:
        """Width of each ``video_features`` slot (1024 upstream: FaceMAE, VideoMAE, HuBERT)."""
        return self.hubert.hidden_size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


ENCODER_PROFILES: dict[str, EncoderProfile] = {
    "full": EncoderProfile(name="full"),
    "small": EncoderProfile(
        name="small",
        vit_width=384,
        vit_depth=6,
        vit_heads=6,
        hubert=Wav2Vec2Config(
            conv_dim=(256,) * 7,
            conv_kernel=CHINESE_HUBERT_LARGE.conv_kernel,
            conv_stride=CHINESE_HUBERT_LARGE.conv_stride,
            conv_bias=False,
            feat_extract_norm="layer",
            hidden_size=256,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=1024,
            num_conv_pos_embeddings=128,
            num_conv_pos_embedding_groups=16,
            do_stable_layer_norm=True,
        ),
    ),
    "tiny": EncoderProfile(
        name="tiny",
        vit_width=32,
        vit_depth=2,
        vit_heads=2,
        hubert=Wav2Vec2Config(
            conv_dim=(16,) * 7,
            conv_kernel=CHINESE_HUBERT_LARGE.conv_kernel,
            conv_stride=CHINESE_HUBERT_LARGE.conv_stride,
            conv_bias=False,
            feat_extract_norm="layer",
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=4,
            do_stable_layer_norm=True,
        ),
    ),
}


def _get_profile(profile: str | EncoderProfile) -> EncoderProfile:
    if isinstance(profile, EncoderProfile):
        return profile
    try:
        return ENCODER_PROFILES[profile]
    except KeyError:
        raise ValueError(f"unknown encoder profile {profile!r}; choose from {sorted(ENCODER_PROFILES)}") from None


def min_audio_samples(profile: str | EncoderProfile = "full") -> int:
    """Shortest audio giving one HuBERT frame (400 samples = 25 ms at 16 kHz)."""
    return conv_min_input_samples(_get_profile(profile).hubert)


# --------------------------------------------------------------------------- EVA-CLIP ViT-g
# Names follow minigpt4/models/eva_vit.py (BEiT/EVA style): q/v biases are separate parameters
# (k has none), no layer scale (init_values=None), no relative position bias, absolute pos_embed,
# no final norm (the model returns all 1 + N tokens of the last block).


class EvaPatchEmbed(nn.Module):
    def __init__(self, p: EncoderProfile) -> None:
        super().__init__()
        self.img_size = (p.image_size, p.image_size)
        self.patch_size = (p.patch_size, p.patch_size)
        self.num_patches = p.num_patches
        self.proj = nn.Conv2d(3, p.vit_width, kernel_size=p.patch_size, stride=p.patch_size)

    def forward(self, x: Tensor) -> Tensor:
        if not torch.jit.is_tracing() and tuple(x.shape[-2:]) != self.img_size:
            raise ValueError(f"input image size {tuple(x.shape[-2:])} != model {self.img_size}")
        return self.proj(x).flatten(2).transpose(1, 2)  # [B, N, W]


class EvaAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias)  # [B, N, 3W]
        qkv = qkv.unflatten(-1, (3, self.num_heads, self.head_dim)).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # [B, H, N, D]
        attn = torch.softmax(torch.matmul(q * self.scale, k.transpose(-2, -1)), dim=-1)
        out = torch.matmul(attn, v).transpose(1, 2).flatten(2)
        return self.proj(out)


class EvaMlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class EvaBlock(nn.Module):
    """Pre-LN block: x + attn(norm1(x)); x + mlp(norm2(x))."""

    def __init__(self, p: EncoderProfile) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(p.vit_width, eps=p.vit_layer_norm_eps)
        self.attn = EvaAttention(p.vit_width, p.vit_heads)
        self.norm2 = nn.LayerNorm(p.vit_width, eps=p.vit_layer_norm_eps)
        self.mlp = EvaMlp(p.vit_width, p.vit_mlp_hidden)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class EvaVisionTransformer(nn.Module):
    """``forward(pixel_values [B, 3, S, S]) -> [B, 1 + N, W]`` (CLS first)."""

    def __init__(self, p: EncoderProfile) -> None:
        super().__init__()
        self.num_features = self.embed_dim = p.vit_width
        self.patch_embed = EvaPatchEmbed(p)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, p.vit_width))
        self.pos_embed = nn.Parameter(torch.zeros(1, p.num_patches + 1, p.vit_width))
        self.blocks = nn.ModuleList(EvaBlock(p) for _ in range(p.vit_depth))

    @torch.no_grad()
    def init_weights_like_upstream(self) -> None:
        """timm-style init of ``VisionTransformer.__init__`` (trunc normal 0.02, depth-rescaled outputs)."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for layer_id, blk in enumerate(self.blocks, start=1):
            blk.attn.proj.weight.div_(math.sqrt(2.0 * layer_id))
            blk.mlp.fc2.weight.div_(math.sqrt(2.0 * layer_id))

    def forward(self, pixel_values: Tensor) -> Tensor:
        x = self.patch_embed(pixel_values)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat((cls, x), dim=1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return x


# --------------------------------------------------------------------------- encoders


class VisionEncoder(nn.Module):
    """``forward(pixel_values [B, 3, 448, 448]) -> (image_tokens [B, 256, D], cls_token [B, 1, D])``.

    ``pixel_values`` are CLIP-normalised RGB (see :func:`preprocess_frame`).
    """

    def __init__(self, profile: str | EncoderProfile = "full", llm_hidden: int = 4096) -> None:
        super().__init__()
        self.profile = _get_profile(profile)
        self.llm_hidden = int(llm_hidden)
        p = self.profile
        self.visual_encoder = EvaVisionTransformer(p)
        self.ln_vision = nn.LayerNorm(p.vit_width, eps=p.ln_vision_eps)
        self.llama_proj = nn.Linear(p.vit_width * p.tokens_per_image_token, self.llm_hidden)
        self.cls_tk_llama_proj = nn.Linear(p.vit_width, self.llm_hidden)
        self.provenance: dict[str, Any] = {"component": "vision", "profile": p.name, "llm_hidden": self.llm_hidden,
                                           "seed": None, "checkpoint": None}

    def forward(self, pixel_values: Tensor) -> tuple[Tensor, Tensor]:
        embeds = self.ln_vision(self.visual_encoder(pixel_values))  # [B, 1 + N, W]
        cls_token = self.cls_tk_llama_proj(embeds[:, 0, :]).unsqueeze(1)  # [B, 1, D] (static 1 in ONNX)
        patches = embeds[:, 1:, :]  # [B, N, W]
        p = self.profile
        # Upstream: view(bs, pn / 4, hs * 4) -- 4 consecutive patch tokens concatenated per LLM token.
        patches = patches.reshape(patches.shape[0], p.num_image_tokens, p.tokens_per_image_token * p.vit_width)
        return self.llama_proj(patches), cls_token


def normalize_audio(input_values: Tensor, eps: float = AUDIO_NORM_EPS) -> Tensor:
    """Per-row zero-mean / unit-variance normalisation (HF ``Wav2Vec2FeatureExtractor``, do_normalize)."""
    centred = input_values - input_values.mean(dim=-1, keepdim=True)
    var = centred.square().mean(dim=-1, keepdim=True)
    return centred / torch.sqrt(var + eps)


class AudioFeatureEncoder(nn.Module):
    """``forward(input_values [B, S] raw 16 kHz PCM) -> feature_tokens [B, 3, D]``.

    Slots: ``feats_llama_proj1(0)`` (FaceMAE), ``feats_llama_proj2(0)`` (VideoMAE) -- upstream's
    demo feeds zeros, so these equal the projection biases -- and ``feats_llama_proj3`` of the
    time-averaged last HuBERT hidden state.  Each row is normalised over its full length (as the
    upstream feature extractor does for one unpadded clip), so rows of a batch must be unpadded.
    """

    def __init__(
        self, profile: str | EncoderProfile = "full", llm_hidden: int = 4096, *, normalize_input: bool = True
    ) -> None:
        super().__init__()
        self.profile = _get_profile(profile)
        self.llm_hidden = int(llm_hidden)
        self.normalize_input = normalize_input
        p = self.profile
        self.hubert = HubertModel(p.hubert)
        self.feats_llama_proj1 = nn.Linear(p.feature_dim, self.llm_hidden)
        self.feats_llama_proj2 = nn.Linear(p.feature_dim, self.llm_hidden)
        self.feats_llama_proj3 = nn.Linear(p.feature_dim, self.llm_hidden)
        self.provenance: dict[str, Any] = {"component": "audio", "profile": p.name, "llm_hidden": self.llm_hidden,
                                           "seed": None, "checkpoint": None}

    def audio_feature(self, input_values: Tensor) -> Tensor:
        """The HuBERT ``video_features`` slot: mean over time of the last hidden state, [B, H]."""
        x = normalize_audio(input_values) if self.normalize_input else input_values
        return self.hubert(x).mean(dim=1)

    def forward(self, input_values: Tensor) -> Tensor:
        audio = self.audio_feature(input_values)  # [B, H]
        zeros = torch.zeros_like(audio)  # FaceMAE / VideoMAE features are zeros in upstream's demo
        return torch.stack(
            [self.feats_llama_proj1(zeros), self.feats_llama_proj2(zeros), self.feats_llama_proj3(audio)], dim=1
        )


def build_encoders(
    profile: str | EncoderProfile = "full", llm_hidden: int = 4096, seed: int = 0
) -> tuple[VisionEncoder, AudioFeatureEncoder]:
    """Both encoders with deterministic, seeded random ("demo") weights, in eval mode.

    The ViT gets upstream's timm-style init; ``ln_vision`` stays at identity (upstream keeps it
    frozen at its default init).  The global RNG state is left untouched.
    """
    prof = _get_profile(profile)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vision = VisionEncoder(prof, llm_hidden)
        vision.visual_encoder.init_weights_like_upstream()
        audio = AudioFeatureEncoder(prof, llm_hidden)
    for enc in (vision, audio):
        enc.provenance.update(seed=int(seed), checkpoint=None)
    return vision.eval(), audio.eval()


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def parameter_counts(profile: str | EncoderProfile = "full", llm_hidden: int = 4096) -> dict[str, int]:
    """Parameter counts per part, computed on the meta device (no memory, no init)."""
    with torch.device("meta"):
        vision = VisionEncoder(profile, llm_hidden)
        audio = AudioFeatureEncoder(profile, llm_hidden)
    return {
        "visual_encoder": count_parameters(vision.visual_encoder),
        "ln_vision": count_parameters(vision.ln_vision),
        "llama_proj": count_parameters(vision.llama_proj),
        "cls_tk_llama_proj": count_parameters(vision.cls_tk_llama_proj),
        "vision_total": count_parameters(vision),
        "hubert": count_parameters(audio.hubert),
        "feats_llama_proj": sum(count_parameters(getattr(audio, f"feats_llama_proj{i}")) for i in (1, 2, 3)),
        "audio_total": count_parameters(audio),
    }


# --------------------------------------------------------------------------- checkpoint loading


def _record_checkpoint(module: nn.Module, part: str, digest: str | None) -> None:
    prov = getattr(module, "provenance", None)
    if prov is None:
        return
    if digest is None:
        # In-memory weights: make the export fingerprint hash the weights themselves.
        prov.update(seed=None, checkpoint=None)
        return
    ckpts = dict(prov.get("checkpoint") or {}) if isinstance(prov.get("checkpoint"), dict) else {}
    ckpts[part] = digest
    prov["checkpoint"] = ckpts


def interpolate_pos_embed(pos_embed: Tensor, num_patches: int, num_extra_tokens: int = 1) -> Tensor:
    """Resize a ``[1, extra + g*g, W]`` pos_embed to ``num_patches`` patches (upstream ``interpolate_pos_embed``).

    The ``num_extra_tokens`` leading (CLS) embeddings are kept; the square patch grid is resized with
    bicubic interpolation (``align_corners=False``) in fp32 -- e.g. EVA ViT-g's 16x16 grid (224 px)
    -> 32x32 (448 px).  Returned unchanged (as fp32) when the grid already matches.
    """
    pos_embed = pos_embed.float()
    width = pos_embed.shape[-1]
    orig_size = int((pos_embed.shape[-2] - num_extra_tokens) ** 0.5)
    new_size = int(num_patches**0.5)
    if orig_size == new_size:
        return pos_embed
    extra = pos_embed[:, :num_extra_tokens]
    grid = pos_embed[:, num_extra_tokens:].reshape(-1, orig_size, orig_size, width).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(new_size, new_size), mode="bicubic", align_corners=False)
    return torch.cat((extra, grid.permute(0, 2, 3, 1).flatten(1, 2)), dim=1)


# Keys an EVA/timm ViT checkpoint may carry that upstream's model lacks and ignores (strict=False).
_EVA_IGNORABLE_PREFIXES = ("head.", "norm.", "fc_norm.", "rel_pos_bias.", "lm_head.", "mask_token")
_EVA_IGNORABLE_SUFFIXES = (".relative_position_index",)


def load_eva_vit_g(
    vision: VisionEncoder, path: str | Path | Mapping[str, Tensor], *, weights_only: bool | None = None
) -> VisionEncoder:
    """Load EVA-CLIP ViT-g weights (LAVIS ``eva_vit_g.pth``) into ``vision.visual_encoder``.

    As upstream's ``create_eva_vit_g``: a plain state dict with ``VisionTransformer`` keys
    (``cls_token``, ``pos_embed``, ``patch_embed.proj.*``, ``blocks.N.{norm1,attn.qkv,attn.q_bias,
    attn.v_bias,attn.proj,norm2,mlp.fc1,mlp.fc2}.*``); ``pos_embed`` is bicubically resized when its
    grid differs (224 px checkpoint -> 448 px model).  ``module.`` / ``visual_encoder.`` prefixes are
    stripped.  Unlike upstream (``strict=False``) missing keys raise ``ValueError``; a few known
    head/norm keys upstream's model lacks are ignored with a warning, other unexpected keys raise.
    """
    digest = None
    if isinstance(path, Mapping):
        raw = path
    else:
        path = Path(path)
        raw = torch_load(path, weights_only)
        digest = sha256_file(path)
    if isinstance(raw, Mapping) and "model" in raw and isinstance(raw["model"], Mapping):
        raw = raw["model"]
    sd: dict[str, Tensor] = {}
    for key, value in raw.items():
        for prefix in ("module.", "visual_encoder."):
            key = key.removeprefix(prefix)
        sd[key] = value
    if any(k.startswith(("llama_model.", "llama_proj.")) for k in raw):
        # A full MiniGPT checkpoint: keep only the ViT part.
        sd = {k[len("visual_encoder."):]: v for k, v in raw.items() if k.startswith("visual_encoder.")}
    ignored = sorted(
        k for k in sd if k.startswith(_EVA_IGNORABLE_PREFIXES) or k.endswith(_EVA_IGNORABLE_SUFFIXES)
    )
    if ignored:
        _LOG.warning("EVA ViT checkpoint: ignoring %d key(s) upstream's model lacks: %s", len(ignored), preview(ignored))
        for k in ignored:
            del sd[k]
    if "pos_embed" in sd:
        vit = vision.visual_encoder
        sd["pos_embed"] = interpolate_pos_embed(
            sd["pos_embed"], vision.profile.num_patches, num_extra_tokens=vit.pos_embed.shape[-2] - vit.patch_embed.num_patches
        )
    check_and_load(vision.visual_encoder, sd, f"EVA ViT checkpoint {path if digest else '<state_dict>'}")
    _record_checkpoint(vision, "eva_vit_g", digest)
    return vision


def _read_hf_state_dict(src: Path, weights_only: bool | None) -> tuple[dict[str, Tensor], Path]:
    if src.is_dir():
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (src / name).is_file():
                src = src / name
                break
        else:
            raise ValueError(f"{src}: no model.safetensors or pytorch_model.bin")
    if src.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(src), device="cpu")), src
    return dict(torch_load(src, weights_only)), src


def load_hf_hubert(
    audio: AudioFeatureEncoder, folder_or_state_dict: str | Path | Mapping[str, Tensor], *,
    weights_only: bool | None = None,
) -> AudioFeatureEncoder:
    """Load a HuggingFace ``HubertModel`` checkpoint (e.g. TencentGameMate/chinese-hubert-large).

    Accepts a model folder (``model.safetensors`` preferred, else ``pytorch_model.bin``), one of
    those files, or a state dict.  Keys are ``HubertModel`` keys, optionally prefixed ``hubert.``
    (as in ``HubertFor*`` heads, whose own head keys are then ignored).  Legacy weight-norm keys
    (``encoder.pos_conv_embed.conv.weight_g``/``weight_v``) are renamed.  ``masked_spec_embed``
    (training only) may be absent.  Strict otherwise: ``ValueError`` names missing / unexpected keys.
    """
    digest = None
    if isinstance(folder_or_state_dict, Mapping):
        raw = dict(folder_or_state_dict)
        where = "<state_dict>"
    else:
        raw, file = _read_hf_state_dict(Path(folder_or_state_dict), weights_only)
        digest = sha256_file(file)
        where = str(file)
    if any(k.startswith("hubert.") for k in raw):
        dropped = sorted(k for k in raw if not k.startswith("hubert."))
        if dropped:
            _LOG.info("HuBERT checkpoint: ignoring %d non-encoder key(s): %s", len(dropped), preview(dropped))
        raw = {k[len("hubert."):]: v for k, v in raw.items() if k.startswith("hubert.")}
    expected = set(audio.hubert.state_dict())
    sd = remap_legacy_weight_norm(raw, expected)
    check_and_load(audio.hubert, sd, f"HuBERT checkpoint {where}", optional=("masked_spec_embed",))
    _record_checkpoint(audio, "hubert", digest)
    return audio


_VISION_PROJECTIONS = ("llama_proj", "cls_tk_llama_proj")
_AUDIO_PROJECTIONS = ("feats_llama_proj1", "feats_llama_proj2", "feats_llama_proj3")


def load_emotion_llama_projections(
    vision: VisionEncoder,
    audio: AudioFeatureEncoder,
    ckpt: str | Path | Mapping[str, Any],
    *,
    weights_only: bool | None = None,
) -> tuple[VisionEncoder, AudioFeatureEncoder]:
    """Load the trained projections from an Emotion-LLaMA checkpoint (``torch.load(path)["model"]``).

    Required: ``llama_proj.*``, ``cls_tk_llama_proj.*``, ``feats_llama_proj{1,2,3}.*`` (weight and
    bias each; shapes checked, so an LLM-width mismatch is reported).  ``ln_vision.*`` is loaded when
    present, otherwise reset to identity (upstream keeps it frozen at its default init, so training
    checkpoints, which only hold trainable parameters, do not contain it).  ``visual_encoder.*`` keys,
    if any, are loaded into the ViT (upstream's ``strict=False`` load would do the same).  LLM keys
    (``llama_model.*``, LoRA) are left for the LLM loader; other keys are ignored with a warning.
    """
    sd, where, digest = _read_emotion_llama_checkpoint(ckpt, weights_only)

    def part(prefixes: tuple[str, ...]) -> dict[str, Tensor]:
        return {k: v for k, v in sd.items() if k.split(".", 1)[0] in prefixes}

    vision_sd = part(_VISION_PROJECTIONS)
    audio_sd = part(_AUDIO_PROJECTIONS)
    _check_projections(vision, audio, vision_sd, audio_sd, where)

    ln_sd = {k[len("ln_vision."):]: v for k, v in sd.items() if k.startswith("ln_vision.")}
    vit_sd = {k[len("visual_encoder."):]: v for k, v in sd.items() if k.startswith("visual_encoder.")}
    known = set(vision_sd) | set(audio_sd) | {f"ln_vision.{k}" for k in ln_sd} | {f"visual_encoder.{k}" for k in vit_sd}
    other = sorted(k for k in sd if k not in known and not k.startswith("llama_model."))
    if other:
        _LOG.warning("Emotion-LLaMA checkpoint %s: ignoring %d unknown key(s): %s", where, len(other), preview(other))

    with torch.no_grad():
        for target, sub in ((vision, vision_sd), (audio, audio_sd)):
            params = dict(target.named_parameters())
            for k, v in sub.items():
                params[k].copy_(v.to(params[k].dtype))
        _load_vision_extras(vision, ln_sd, vit_sd, where)
    _record_checkpoint(vision, "emotion_llama", digest)
    _record_checkpoint(audio, "emotion_llama", digest)
    return vision, audio


def _read_emotion_llama_checkpoint(
    ckpt: str | Path | Mapping[str, Any], weights_only: bool | None
) -> tuple[dict[str, Tensor], str, str | None]:
    """``(state dict without "module." prefixes, where, file sha256 or None)`` of a checkpoint or a dict."""
    digest = None
    if isinstance(ckpt, Mapping):
        raw = ckpt
        where = "<state_dict>"
    else:
        path = Path(ckpt)
        raw = torch_load(path, weights_only)
        digest = sha256_file(path)
        where = str(path)
    if isinstance(raw, Mapping) and "model" in raw and isinstance(raw["model"], Mapping):
        raw = raw["model"]
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: expected a dict with a 'model' state dict, got {type(raw).__name__}")
    return {(k.removeprefix("module.")): v for k, v in raw.items()}, where, digest


def _check_projections(
    vision: VisionEncoder,
    audio: AudioFeatureEncoder,
    vision_sd: dict[str, Tensor],
    audio_sd: dict[str, Tensor],
    where: str,
) -> None:
    """Exactly the projections' weight and bias keys, each with the model's shape (``ValueError`` otherwise)."""
    required_v = {f"{m}.{t}" for m in _VISION_PROJECTIONS for t in ("weight", "bias")}
    required_a = {f"{m}.{t}" for m in _AUDIO_PROJECTIONS for t in ("weight", "bias")}
    missing = sorted((required_v - set(vision_sd)) | (required_a - set(audio_sd)))
    unexpected = sorted((set(vision_sd) - required_v) | (set(audio_sd) - required_a))
    if missing or unexpected:
        raise ValueError(
            f"Emotion-LLaMA checkpoint {where}: {len(missing)} missing key(s) {preview(missing)}; "
            f"{len(unexpected)} unexpected key(s) {preview(unexpected)}"
        )
    for target, sub in ((vision, vision_sd), (audio, audio_sd)):
        exp = target.state_dict()
        bad = [
            f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(exp[k].shape)}"
            for k, v in sub.items()
            if tuple(v.shape) != tuple(exp[k].shape)
        ]
        if bad:
            raise ValueError(
                f"Emotion-LLaMA checkpoint {where}: shape mismatch for {len(bad)} key(s) "
                f"(LLM hidden size of the model is {target.llm_hidden}): {preview(bad)}"
            )


def _load_vision_extras(vision: VisionEncoder, ln_sd: dict[str, Tensor], vit_sd: dict[str, Tensor], where: str) -> None:
    """``ln_vision`` from the checkpoint or reset to identity; ``visual_encoder`` keys, if any, into the ViT."""
    if ln_sd:
        check_and_load(vision.ln_vision, ln_sd, f"Emotion-LLaMA checkpoint {where} (ln_vision)")
    else:
        nn.init.ones_(vision.ln_vision.weight)
        nn.init.zeros_(vision.ln_vision.bias)
    if vit_sd:
        exp = vision.visual_encoder.state_dict()
        bad = sorted(k for k in vit_sd if k not in exp or tuple(exp[k].shape) != tuple(vit_sd[k].shape))
        if bad:
            raise ValueError(f"Emotion-LLaMA checkpoint {where}: bad visual_encoder key(s) {preview(bad)}")
        vision.visual_encoder.load_state_dict({**exp, **vit_sd}, strict=True)

"""Hallo2 audio encoder: wav2vec2-base-960h, all hidden layers, resampled to 25 fps.

Reproduces upstream ``hallo/datasets/audio_processor.py`` (``AudioProcessor.preprocess``) +
``hallo/models/wav2vec.py`` (``Wav2VecModel.forward``), using the shared blocks of
:mod:`emoserve.nn.wav2vec2`::

    audio [B, S] raw 16 kHz
      -> Wav2Vec2FeatureExtractor normalisation (per row: (x - mean) / sqrt(var + 1e-7))
      -> conv feature extractor (group-norm flavour)              [B, 512, L]   (~50 Hz)
      -> linear interpolation, align_corners=True, to T frames    [B, 512, T]   (BEFORE the transformer,
         T = ceil(S / 16000 * 25), upstream's float arithmetic)       exactly as upstream's linear_interpolation)
      -> feature_projection (LayerNorm + Linear 512 -> 768)
      -> post-LN encoder: LayerNorm(x + pos_conv(x)) -> 12 layers
      -> outputs of the 12 layers (``hidden_states[1:]``), stacked   [B, T, 12, 768]

Parameter names are HF ``Wav2Vec2Model``'s (``feature_extractor.conv_layers.0.conv.weight``,
``encoder.layers.3.attention.q_proj.weight`` ...); :func:`load_wav2vec2` reads the HF folder of
``facebook/wav2vec2-base-960h`` (a ``Wav2Vec2ForCTC``: ``wav2vec2.`` prefix, ``lm_head`` dropped).

Rows of a batch are normalised over their whole length, so each row must be one unpadded segment
(upstream normalises each <= 60 s segment, then zero-pads the LAST one to a clip multiple AFTER
normalising: a pipeline that wants bit-faithful padding should pad the features, not the audio).
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

from emoserve.hallo2.audio_windows import FPS, SAMPLE_RATE, audio_frames
from emoserve.hallo2.profile import Hallo2Profile, get_profile
from emoserve.nn.checkpoints import (
    check_and_load,
    preview,
    record_checkpoint,
    state_dict_source,
)
from emoserve.nn.wav2vec2 import (
    Wav2Vec2Config,
    Wav2Vec2Encoder,
    Wav2Vec2FeatureEncoder,
    Wav2Vec2FeatureProjection,
    conv_min_input_samples,
    remap_legacy_weight_norm,
)

__all__ = [
    "Hallo2AudioEncoder",
    "wav2vec2_config",
    "normalize_audio",
    "build_audio_encoder",
    "load_wav2vec2",
    "min_audio_samples",
    "WAV2VEC2_FILE_NAMES",
    "AUDIO_NORM_EPS",
]

_LOG = logging.getLogger(__name__)

AUDIO_NORM_EPS = 1e-7  # transformers' Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm
WAV2VEC2_FILE_NAMES = ("model.safetensors", "pytorch_model.bin")


def wav2vec2_config(profile: str | Hallo2Profile = "full") -> Wav2Vec2Config:
    """wav2vec2-base(-960h) arrangement: group-norm conv extractor without bias, post-LN encoder."""
    p = get_profile(profile)
    return Wav2Vec2Config(
        conv_dim=(p.wav2vec_conv_dim,) * 7,
        conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        conv_stride=(5, 2, 2, 2, 2, 2, 2),
        conv_bias=False,
        feat_extract_norm="group",
        hidden_size=p.wav2vec_hidden,
        num_hidden_layers=p.wav2vec_layers,
        num_attention_heads=p.wav2vec_heads,
        intermediate_size=p.wav2vec_intermediate,
        num_conv_pos_embeddings=128,
        num_conv_pos_embedding_groups=16,
        layer_norm_eps=1e-5,
        do_stable_layer_norm=False,
        masked_spec_embed=True,  # wav2vec2-base-960h: mask_time_prob 0.05
    )


def min_audio_samples(profile: str | Hallo2Profile = "full") -> int:
    """Shortest input that gives one conv frame (400 samples = 25 ms)."""
    return conv_min_input_samples(wav2vec2_config(profile))


def normalize_audio(audio: Tensor, eps: float = AUDIO_NORM_EPS) -> Tensor:
    """Per-row zero-mean / unit-variance normalisation (population variance), as HF's feature extractor."""
    centred = audio - audio.mean(dim=-1, keepdim=True)
    var = centred.square().mean(dim=-1, keepdim=True)
    return centred / torch.sqrt(var + eps)


def _num_frames(num_samples: Tensor | int) -> Tensor | int:
    """``ceil(S / 16000 * 25)`` in float64 (upstream's formula); symbolic under tracing."""
    if isinstance(num_samples, Tensor):
        # Explicit float64 constants: Python scalars would be exported as float32 constants, and float32
        # rounding differs from upstream's float64 (e.g. 4480 samples -> 7 instead of 8 frames).
        # 1-element (not 0-d) tensors: the exporter's scalar type analysis casts 0-d operands to float32.
        s = num_samples.reshape(1).to(torch.float64)
        rate = torch.full((1,), float(SAMPLE_RATE), dtype=torch.float64)
        fps = torch.full((1,), float(FPS), dtype=torch.float64)
        return torch.ceil(s / rate * fps).to(torch.int64)[0]
    return audio_frames(int(num_samples))


def _resample_linear(x: Tensor, size: Tensor | int) -> Tensor:
    """``F.interpolate(x, size, mode='linear', align_corners=True)`` with a traceable size."""
    if isinstance(size, Tensor):
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return F.interpolate(x, size=[size], mode="linear", align_corners=True)
        size = int(size)
    return F.interpolate(x, size=size, mode="linear", align_corners=True)


class Hallo2AudioEncoder(nn.Module):
    """``forward(audio [B, S] raw 16 kHz) -> audio_features [B, T, layers, hidden]``, T = ceil(S/16000*25).

    State-dict keys are those of HF ``Wav2Vec2Model`` (``feature_extractor.*``, ``feature_projection.*``,
    ``masked_spec_embed``, ``encoder.*``).  ``normalize_input=False`` skips the feature-extractor
    normalisation (a checkpoint whose preprocessor has ``do_normalize: false``).
    """

    def __init__(self, profile: str | Hallo2Profile = "full", *, normalize_input: bool = True) -> None:
        super().__init__()
        p = get_profile(profile)
        self.profile = p
        cfg = wav2vec2_config(p)
        self.config = cfg
        self.normalize_input = normalize_input
        self.feature_extractor = Wav2Vec2FeatureEncoder(cfg)
        self.feature_projection = Wav2Vec2FeatureProjection(cfg)
        # Only used for SpecAugment in training; kept so HF checkpoints load strictly.
        self.masked_spec_embed = nn.Parameter(torch.empty(cfg.hidden_size).uniform_())
        self.encoder = Wav2Vec2Encoder(cfg)
        self.provenance: dict[str, Any] = {"component": "audio_encoder", "profile": p.name,
                                           "seed": None, "checkpoint": None}

    def forward(self, audio: Tensor) -> Tensor:
        frames = _num_frames(audio.shape[1])
        x = normalize_audio(audio) if self.normalize_input else audio
        feats = self.feature_extractor(x)  # [B, C, L]
        feats = _resample_linear(feats, frames)  # [B, C, T]
        hidden = self.feature_projection(feats.transpose(1, 2))  # [B, T, H]
        enc = self.encoder
        hidden = enc.dropout(enc.layer_norm(hidden + enc.pos_conv_embed(hidden)))
        layers = []
        for layer in enc.layers:
            hidden = layer(hidden)
            layers.append(hidden)
        return torch.stack(layers, dim=2)  # [B, T, num_layers, H]


def build_audio_encoder(profile: str | Hallo2Profile = "full", seed: int = 0) -> Hallo2AudioEncoder:
    """Audio encoder with deterministic, seeded random ("demo") weights, in eval mode (global RNG untouched)."""
    p = get_profile(profile)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        enc = Hallo2AudioEncoder(p)
    enc.provenance.update(seed=int(seed))
    return enc.eval()


def _check_hf_config(folder: Path, enc: Hallo2AudioEncoder) -> None:
    cfg_path = folder / "config.json"
    if cfg_path.is_file():
        cfg = json.loads(cfg_path.read_text())
        c = enc.config
        want = {
            "hidden_size": c.hidden_size,
            "num_hidden_layers": c.num_hidden_layers,
            "num_attention_heads": c.num_attention_heads,
            "intermediate_size": c.intermediate_size,
            "feat_extract_norm": c.feat_extract_norm,
            "do_stable_layer_norm": c.do_stable_layer_norm,
            "conv_bias": c.conv_bias,
            "conv_dim": list(c.conv_dim),
        }
        for key, value in want.items():
            if key in cfg and cfg[key] != value:
                raise ValueError(f"{cfg_path}: {key}={cfg[key]!r} does not match the profile ({value!r})")
    pre = folder / "preprocessor_config.json"
    if pre.is_file():
        enc.normalize_input = bool(json.loads(pre.read_text()).get("do_normalize", True))


def load_wav2vec2(
    src: str | Path | Mapping[str, Tensor],
    profile: str | Hallo2Profile = "full",
    *,
    weights_only: bool | None = None,
) -> Hallo2AudioEncoder:
    """Load HF wav2vec2 weights (``pretrained_models/wav2vec/wav2vec2-base-960h``).

    Accepts the model folder (``model.safetensors`` preferred, else ``pytorch_model.bin``; its
    ``config.json`` is checked and ``preprocessor_config.json``'s ``do_normalize`` honoured), one of
    those files, or a state dict.  Keys are ``Wav2Vec2Model`` keys, optionally prefixed ``wav2vec2.``
    (``Wav2Vec2ForCTC``: the head's keys are then ignored).  Legacy weight-norm keys
    (``encoder.pos_conv_embed.conv.weight_g`` / ``weight_v``) are renamed; ``masked_spec_embed`` may be
    absent.  Strict otherwise: ``ValueError`` names missing / unexpected keys and shape mismatches.
    """
    enc = Hallo2AudioEncoder(profile)
    raw, digest, where = state_dict_source(
        src, WAV2VEC2_FILE_NAMES, weights_only=weights_only, check_folder=lambda folder: _check_hf_config(folder, enc)
    )
    if any(k.startswith("wav2vec2.") for k in raw):
        dropped = sorted(k for k in raw if not k.startswith("wav2vec2."))
        if dropped:
            _LOG.info("wav2vec2 checkpoint: ignoring %d head key(s): %s", len(dropped), preview(dropped))
        raw = {k[len("wav2vec2."):]: v for k, v in raw.items() if k.startswith("wav2vec2.")}
    sd = remap_legacy_weight_norm(raw, set(enc.state_dict()))
    check_and_load(enc, sd, f"wav2vec2 checkpoint {where}", optional=("masked_spec_embed",))
    record_checkpoint(enc, digest)
    return enc.eval()

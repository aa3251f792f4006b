"""Emotion-LLaMA encoders: shapes, upstream parameter names, HF HuBERT parity, loaders, preprocessing."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from emoserve.constants import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGE_SIZE,
    NUM_FEATURE_TOKENS,
    NUM_IMAGE_TOKENS,
    NUM_MULTIMODAL_TOKENS,
)
from emoserve.emotion_llama.encoders import (
    CHINESE_HUBERT_LARGE,
    ENCODER_PROFILES,
    AudioFeatureEncoder,
    VisionEncoder,
    build_encoders,
    load_emotion_llama_projections,
    load_eva_vit_g,
    load_hf_hubert,
    min_audio_samples,
    normalize_audio,
    parameter_counts,
)
from emoserve.emotion_llama.preprocess import preprocess_frame, resize_bicubic_pil

D = 64  # LLM hidden size used by the tests


@pytest.fixture(scope="module")
def tiny() -> tuple[VisionEncoder, AudioFeatureEncoder]:
    return build_encoders("tiny", llm_hidden=D, seed=0)


def _image(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(seed))


def _audio(batch: int, samples: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, samples, generator=torch.Generator().manual_seed(seed)) * 0.1


# --------------------------------------------------------------------------- shapes / semantics


def test_shapes_and_multimodal_layout(tiny) -> None:
    vision, audio = tiny
    with torch.no_grad():
        image_tokens, cls_token = vision(_image(2))
        feature_tokens = audio(_audio(2, 16000))
    assert image_tokens.shape == (2, NUM_IMAGE_TOKENS, D) == (2, 256, D)
    assert cls_token.shape == (2, 1, D)
    assert feature_tokens.shape == (2, NUM_FEATURE_TOKENS, D) == (2, 3, D)
    # upstream order: cat(image tokens, feature tokens, CLS)
    embeds = torch.cat([image_tokens, feature_tokens, cls_token], dim=1)
    assert embeds.shape == (2, NUM_MULTIMODAL_TOKENS, D) == (2, 260, D)


def test_regrouping_matches_upstream_view(tiny) -> None:
    """llama_proj sees 4 consecutive ln_vision patch tokens concatenated (upstream ``view(bs, pn/4, hs*4)``)."""
    vision, _ = tiny
    x = _image(1, seed=3)
    with torch.no_grad():
        embeds = vision.ln_vision(vision.visual_encoder(x))
        assert embeds.shape == (1, 1025, vision.profile.vit_width)
        bs, pn, hs = embeds[:, 1:].shape
        expected = vision.llama_proj(embeds[:, 1:].contiguous().view(bs, pn // 4, hs * 4))
        expected_cls = vision.cls_tk_llama_proj(embeds[:, :1])
        image_tokens, cls_token = vision(x)
    torch.testing.assert_close(image_tokens, expected, rtol=0, atol=0)
    torch.testing.assert_close(cls_token, expected_cls, rtol=0, atol=0)


def test_feature_slots_1_2_are_projection_biases(tiny) -> None:
    _, audio = tiny
    with torch.no_grad():
        a = audio(_audio(2, 16000, seed=1))
        b = audio(_audio(2, 24000, seed=2))
    for out in (a, b):
        assert torch.equal(out[:, 0], audio.feats_llama_proj1.bias.expand(2, -1))
        assert torch.equal(out[:, 1], audio.feats_llama_proj2.bias.expand(2, -1))
    assert not torch.allclose(a[:, 2], b[:, 2])  # the HuBERT slot depends on the audio
    assert not torch.allclose(a[0, 2], a[1, 2])


def test_audio_slot_is_time_mean_of_last_hidden_state(tiny) -> None:
    _, audio = tiny
    x = _audio(1, 20000, seed=4)
    with torch.no_grad():
        hidden = audio.hubert(normalize_audio(x))  # [1, T, H]
        assert hidden.shape[1] == 62  # ~50 Hz HuBERT frames for 1.25 s
        expected = audio.feats_llama_proj3(hidden.mean(dim=1))
        got = audio(x)[:, 2]
    torch.testing.assert_close(got, expected)


def test_audio_normalisation_happens_inside_forward(tiny) -> None:
    """Upstream's Wav2Vec2FeatureExtractor(do_normalize=True): gain/offset of the PCM do not matter."""
    _, audio = tiny
    x = _audio(1, 16000, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(audio(x), audio(3.0 * x + 0.01), rtol=1e-4, atol=1e-4)


def test_normalize_audio_matches_hf_feature_extractor() -> None:
    transformers = pytest.importorskip("transformers")
    fe = transformers.Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True, return_attention_mask=True
    )
    x = (np.random.default_rng(0).standard_normal(12345) * 0.2 + 0.05).astype(np.float64)  # soundfile gives float64
    ref = fe(x, sampling_rate=16000, return_tensors="pt").input_values
    ours = normalize_audio(torch.from_numpy(x.astype(np.float32))[None])
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_seeded_determinism() -> None:
    state = torch.random.get_rng_state()
    v1, a1 = build_encoders("tiny", llm_hidden=D, seed=0)
    v2, a2 = build_encoders("tiny", llm_hidden=D, seed=0)
    v3, a3 = build_encoders("tiny", llm_hidden=D, seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    for m1, m2, m3 in ((v1, v2, v3), (a1, a2, a3)):
        s1, s2, s3 = m1.state_dict(), m2.state_dict(), m3.state_dict()
        assert all(torch.equal(s1[k], s2[k]) for k in s1)
        assert any(not torch.equal(s1[k], s3[k]) for k in s1)
    assert v1.provenance["seed"] == 0 and a1.provenance["llm_hidden"] == D
    # upstream keeps ln_vision frozen at its default (identity) init
    assert torch.equal(v1.ln_vision.weight, torch.ones_like(v1.ln_vision.weight))
    assert torch.equal(v1.ln_vision.bias, torch.zeros_like(v1.ln_vision.bias))


# --------------------------------------------------------------------------- names / profiles

# Keys verified against minigpt4/models/eva_vit.py (VisionTransformer / Block / Attention / Mlp) and
# minigpt4/models/minigpt_v2.py (ln_vision, llama_proj, cls_tk_llama_proj, feats_llama_proj1..3).
UPSTREAM_VISION_KEYS = [
    "visual_encoder.cls_token",
    "visual_encoder.pos_embed",
    "visual_encoder.patch_embed.proj.weight",
    "visual_encoder.patch_embed.proj.bias",
    "visual_encoder.blocks.0.norm1.weight",
    "visual_encoder.blocks.0.attn.qkv.weight",
    "visual_encoder.blocks.0.attn.q_bias",
    "visual_encoder.blocks.0.attn.v_bias",
    "visual_encoder.blocks.0.attn.proj.weight",
    "visual_encoder.blocks.0.attn.proj.bias",
    "visual_encoder.blocks.1.norm2.bias",
    "visual_encoder.blocks.1.mlp.fc1.weight",
    "visual_encoder.blocks.1.mlp.fc2.bias",
    "ln_vision.weight",
    "ln_vision.bias",
    "llama_proj.weight",
    "llama_proj.bias",
    "cls_tk_llama_proj.weight",
    "cls_tk_llama_proj.bias",
]
# HF HubertModel keys (feat_extract_norm="layer", do_stable_layer_norm=True), under ``hubert.``.
UPSTREAM_AUDIO_KEYS = [
    "hubert.feature_extractor.conv_layers.0.conv.weight",
    "hubert.feature_extractor.conv_layers.0.layer_norm.weight",
    "hubert.feature_extractor.conv_layers.6.layer_norm.bias",
    "hubert.feature_projection.layer_norm.weight",
    "hubert.feature_projection.projection.weight",
    "hubert.masked_spec_embed",
    "hubert.encoder.pos_conv_embed.conv.bias",
    "hubert.encoder.pos_conv_embed.conv.parametrizations.weight.original0",
    "hubert.encoder.pos_conv_embed.conv.parametrizations.weight.original1",
    "hubert.encoder.layer_norm.weight",
    "hubert.encoder.layers.0.attention.q_proj.weight",
    "hubert.encoder.layers.0.attention.out_proj.bias",
    "hubert.encoder.layers.0.layer_norm.weight",
    "hubert.encoder.layers.1.feed_forward.intermediate_dense.weight",
    "hubert.encoder.layers.1.feed_forward.output_dense.bias",
    "hubert.encoder.layers.1.final_layer_norm.bias",
    "feats_llama_proj1.weight",
    "feats_llama_proj2.bias",
    "feats_llama_proj3.weight",
]


def test_parameter_names_follow_upstream(tiny) -> None:
    vision, audio = tiny
    vkeys, akeys = set(vision.state_dict()), set(audio.state_dict())
    assert set(UPSTREAM_VISION_KEYS) <= vkeys
    assert set(UPSTREAM_AUDIO_KEYS) <= akeys
    assert "visual_encoder.blocks.0.attn.qkv.bias" not in vkeys  # k has no bias (q_bias / v_bias only)
    assert not any("gamma_" in k or "relative_position" in k or k.startswith("visual_encoder.norm") for k in vkeys)
    assert not any("conv.bias" in k for k in akeys if "feature_extractor" in k)  # conv_bias=False


def test_full_profile_is_upstream() -> None:
    p = ENCODER_PROFILES["full"]
    assert (p.image_size, p.patch_size, p.vit_width, p.vit_depth, p.vit_heads) == (448, 14, 1408, 39, 16)
    assert p.vit_mlp_hidden == 6144 and p.vit_layer_norm_eps == 1e-6 and p.ln_vision_eps == 1e-5
    assert p.num_patches == 1024 and p.num_image_tokens == 256 and p.feature_dim == 1024
    h = p.hubert
    assert h is CHINESE_HUBERT_LARGE
    assert (h.hidden_size, h.num_hidden_layers, h.num_attention_heads, h.intermediate_size) == (1024, 24, 16, 4096)
    assert h.feat_extract_norm == "layer" and h.do_stable_layer_norm and not h.conv_bias
    assert (h.num_conv_pos_embeddings, h.num_conv_pos_embedding_groups) == (128, 16)
    for name in ("small", "tiny"):
        assert ENCODER_PROFILES[name].num_image_tokens == 256  # 448 px / patch 14 everywhere
    assert min_audio_samples("tiny") == min_audio_samples("full") == 400


def test_full_parameter_counts() -> None:
    counts = parameter_counts("full", llm_hidden=4096)  # meta device: no memory
    assert counts["visual_encoder"] == 986_975_872  # EVA-CLIP ViT-g, 39 blocks
    assert counts["llama_proj"] == 5632 * 4096 + 4096
    assert counts["cls_tk_llama_proj"] == 1408 * 4096 + 4096
    assert counts["feats_llama_proj"] == 3 * (1024 * 4096 + 4096)
    transformers = pytest.importorskip("transformers")
    with torch.device("meta"):
        hf = transformers.HubertModel(_hf_config(transformers, CHINESE_HUBERT_LARGE))
    assert counts["hubert"] == sum(p.numel() for p in hf.parameters())
    with torch.device("meta"):
        ours = AudioFeatureEncoder("full", 4096).hubert
    assert set(ours.state_dict()) == set(hf.state_dict())


# --------------------------------------------------------------------------- HF HuBERT parity / loader


def _hf_config(transformers, cfg):
    return transformers.HubertConfig(
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        intermediate_size=cfg.intermediate_size,
        conv_dim=list(cfg.conv_dim),
        conv_kernel=list(cfg.conv_kernel),
        conv_stride=list(cfg.conv_stride),
        conv_bias=cfg.conv_bias,
        feat_extract_norm=cfg.feat_extract_norm,
        do_stable_layer_norm=cfg.do_stable_layer_norm,
        num_conv_pos_embeddings=cfg.num_conv_pos_embeddings,
        num_conv_pos_embedding_groups=cfg.num_conv_pos_embedding_groups,
        feat_proj_layer_norm=True,
        layer_norm_eps=cfg.layer_norm_eps,
    )


@pytest.fixture(scope="module")
def hf_tiny_hubert():
    transformers = pytest.importorskip("transformers")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(123)
        model = transformers.HubertModel(_hf_config(transformers, ENCODER_PROFILES["tiny"].hubert)).eval()
    return model


def test_hubert_matches_transformers(hf_tiny_hubert) -> None:
    _, audio = build_encoders("tiny", llm_hidden=D, seed=9)
    load_hf_hubert(audio, hf_tiny_hubert.state_dict())
    x = _audio(2, 16000, seed=6)
    with torch.no_grad():
        ref = hf_tiny_hubert(x).last_hidden_state  # == hidden_states[-1] in upstream's transformers 4.x
        got = audio.hubert(x)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_load_hf_hubert_folder_and_prefixed_legacy_bin(hf_tiny_hubert, tmp_path) -> None:
    x = _audio(1, 20000, seed=7)
    reference = build_encoders("tiny", llm_hidden=D, seed=0)[1]
    load_hf_hubert(reference, hf_tiny_hubert.state_dict())
    with torch.no_grad():
        expected = reference(x)

    # 1) a save_pretrained folder (model.safetensors)
    hf_tiny_hubert.save_pretrained(tmp_path / "hf")
    audio = build_encoders("tiny", llm_hidden=D, seed=0)[1]
    load_hf_hubert(audio, tmp_path / "hf")
    with torch.no_grad():
        torch.testing.assert_close(audio(x), expected, rtol=0, atol=0)
    assert "hubert" in audio.provenance["checkpoint"]

    # 2) pytorch_model.bin, HubertFor* layout: ``hubert.`` prefix, legacy weight-norm names, head keys
    sd = {}
    for k, v in hf_tiny_hubert.state_dict().items():
        k = k.replace("parametrizations.weight.original0", "weight_g").replace("parametrizations.weight.original1", "weight_v")
        sd["hubert." + k] = v.clone()
    sd["lm_head.weight"] = torch.zeros(4, 32)
    folder = tmp_path / "bin"
    folder.mkdir()
    torch.save(sd, folder / "pytorch_model.bin")
    audio = build_encoders("tiny", llm_hidden=D, seed=0)[1]
    load_hf_hubert(audio, folder)
    with torch.no_grad():
        torch.testing.assert_close(audio(x), expected, rtol=0, atol=0)

    # 3) masked_spec_embed (training only) may be missing
    sd = {k: v for k, v in hf_tiny_hubert.state_dict().items() if k != "masked_spec_embed"}
    load_hf_hubert(build_encoders("tiny", llm_hidden=D, seed=0)[1], sd)


def test_load_hf_hubert_errors_name_keys(hf_tiny_hubert) -> None:
    audio = build_encoders("tiny", llm_hidden=D, seed=0)[1]
    sd = dict(hf_tiny_hubert.state_dict())
    del sd["encoder.layers.1.attention.k_proj.weight"]
    with pytest.raises(ValueError, match=r"encoder\.layers\.1\.attention\.k_proj\.weight"):
        load_hf_hubert(audio, sd)
    sd = dict(hf_tiny_hubert.state_dict())
    sd["encoder.layers.7.attention.k_proj.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"unexpected.*encoder\.layers\.7"):
        load_hf_hubert(audio, sd)


def test_end_to_end_audio_matches_upstream_recipe(hf_tiny_hubert) -> None:
    """feature extractor -> HubertModel -> last hidden layer -> mean over time -> feats_llama_proj3."""
    transformers = pytest.importorskip("transformers")
    _, audio = build_encoders("tiny", llm_hidden=D, seed=0)
    load_hf_hubert(audio, hf_tiny_hubert.state_dict())
    samples = np.random.default_rng(1).standard_normal(24000) * 0.05
    fe = transformers.Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True)
    input_values = fe(samples, sampling_rate=16000, return_tensors="pt").input_values
    with torch.no_grad():
        last = hf_tiny_hubert(input_values).last_hidden_state
        audio_feature = torch.mean(last[0].unsqueeze(0), dim=1, keepdim=True)  # [1, 1, H]
        video_features = torch.cat([torch.zeros(1, 2, audio.profile.feature_dim), audio_feature], dim=1)
        expected = torch.stack(
            [getattr(audio, f"feats_llama_proj{i + 1}")(video_features[:, i]) for i in range(3)], dim=1
        )
        got = audio(torch.from_numpy(samples.astype(np.float32))[None])
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- EVA ViT loader


def test_load_eva_vit_g_round_trip(tmp_path) -> None:
    src, _ = build_encoders("tiny", llm_hidden=D, seed=5)
    path = tmp_path / "eva_vit_g.pth"
    sd = {k: v.clone() for k, v in src.visual_encoder.state_dict().items()}
    sd["head.weight"] = torch.zeros(10, src.profile.vit_width)  # classifier head: ignored, like upstream
    torch.save(sd, path)
    dst, _ = build_encoders("tiny", llm_hidden=D, seed=0)
    load_eva_vit_g(dst, path)
    x = _image(1, seed=8)
    with torch.no_grad():
        torch.testing.assert_close(dst.visual_encoder(x), src.visual_encoder(x), rtol=0, atol=0)
    assert dst.provenance["checkpoint"]["eva_vit_g"].startswith("sha256:")


def test_load_eva_vit_g_interpolates_224px_pos_embed() -> None:
    """eva_vit_g.pth is a 224 px model (16x16 grid + CLS); upstream resizes pos_embed bicubically to 32x32."""
    src, _ = build_encoders("tiny", llm_hidden=D, seed=5)
    width = src.profile.vit_width
    sd = {k: v.clone() for k, v in src.visual_encoder.state_dict().items()}
    pos224 = torch.randn(1, 1 + 16 * 16, width, generator=torch.Generator().manual_seed(0))
    sd["pos_embed"] = pos224
    dst, _ = build_encoders("tiny", llm_hidden=D, seed=0)
    load_eva_vit_g(dst, sd)
    grid = pos224[:, 1:].reshape(1, 16, 16, width).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(32, 32), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).flatten(1, 2)
    expected = torch.cat([pos224[:, :1], grid], dim=1)
    assert dst.visual_encoder.pos_embed.shape == (1, 1025, width)
    torch.testing.assert_close(dst.visual_encoder.pos_embed.data, expected, rtol=0, atol=0)


def test_load_eva_vit_g_errors_name_keys() -> None:
    src, _ = build_encoders("tiny", llm_hidden=D, seed=5)
    dst, _ = build_encoders("tiny", llm_hidden=D, seed=0)
    sd = dict(src.visual_encoder.state_dict())
    del sd["blocks.1.attn.v_bias"]
    with pytest.raises(ValueError, match=r"missing.*blocks\.1\.attn\.v_bias"):
        load_eva_vit_g(dst, sd)
    sd = dict(src.visual_encoder.state_dict())
    sd["blocks.0.attn.qkv.bias"] = torch.zeros(3 * src.profile.vit_width)
    with pytest.raises(ValueError, match=r"unexpected.*blocks\.0\.attn\.qkv\.bias"):
        load_eva_vit_g(dst, sd)
    sd = dict(src.visual_encoder.state_dict())
    sd["blocks.0.mlp.fc1.weight"] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match=r"shape mismatch.*blocks\.0\.mlp\.fc1\.weight"):
        load_eva_vit_g(dst, sd)


# --------------------------------------------------------------------------- Emotion-LLaMA projections


def _emotion_llama_ckpt(vision: VisionEncoder, audio: AudioFeatureEncoder) -> dict:
    model = {}
    for prefix, module in (
        ("llama_proj", vision.llama_proj),
        ("cls_tk_llama_proj", vision.cls_tk_llama_proj),
        ("feats_llama_proj1", audio.feats_llama_proj1),
        ("feats_llama_proj2", audio.feats_llama_proj2),
        ("feats_llama_proj3", audio.feats_llama_proj3),
    ):
        for name, value in module.state_dict().items():
            model[f"{prefix}.{name}"] = value.clone()
    # LoRA keys of the LLM: handled by the LLM loader, ignored here
    model["llama_model.base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"] = torch.zeros(64, 8)
    model["llama_model.base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight"] = torch.zeros(8, 64)
    return {"model": model, "optimizer": None, "epoch": 3}


def test_load_emotion_llama_projections_round_trip(tmp_path) -> None:
    src_v, src_a = build_encoders("tiny", llm_hidden=D, seed=5)
    dst_v, dst_a = build_encoders("tiny", llm_hidden=D, seed=0)
    # same frozen encoders, different projections
    dst_v.visual_encoder.load_state_dict(src_v.visual_encoder.state_dict())
    dst_a.hubert.load_state_dict(src_a.hubert.state_dict())
    with torch.no_grad():
        dst_v.ln_vision.weight.fill_(2.0)  # must be reset to upstream's identity
    path = tmp_path / "Emotion_LLaMA.pth"
    torch.save(_emotion_llama_ckpt(src_v, src_a), path)
    load_emotion_llama_projections(dst_v, dst_a, path)
    x, s = _image(1, seed=2), _audio(1, 16000, seed=2)
    with torch.no_grad():
        for got, exp in zip(dst_v(x), src_v(x)):
            torch.testing.assert_close(got, exp, rtol=0, atol=0)
        torch.testing.assert_close(dst_a(s), src_a(s), rtol=0, atol=0)
    assert dst_v.provenance["checkpoint"]["emotion_llama"] == dst_a.provenance["checkpoint"]["emotion_llama"]


def test_load_emotion_llama_projections_errors(tmp_path) -> None:
    src_v, src_a = build_encoders("tiny", llm_hidden=D, seed=5)
    ckpt = _emotion_llama_ckpt(src_v, src_a)
    del ckpt["model"]["feats_llama_proj2.bias"]
    dst_v, dst_a = build_encoders("tiny", llm_hidden=D, seed=0)
    with pytest.raises(ValueError, match=r"missing.*feats_llama_proj2\.bias"):
        load_emotion_llama_projections(dst_v, dst_a, ckpt)
    # a checkpoint for another LLM width
    other_v, other_a = build_encoders("tiny", llm_hidden=2 * D, seed=5)
    with pytest.raises(ValueError, match=r"shape mismatch.*llama_proj\.weight"):
        load_emotion_llama_projections(dst_v, dst_a, _emotion_llama_ckpt(other_v, other_a))


# --------------------------------------------------------------------------- image preprocessing


def _frame(h: int, w: int, seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    smooth = np.stack([127 + 120 * np.sin(xx / 9.0 + yy / 13.0), (xx * 255) // (w - 1), (yy * 255) // (h - 1)], -1)
    return np.clip(smooth + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


# sha256 (first 32 hex) of ``Image.fromarray(_frame(h, w)).resize((448, 448), Image.BICUBIC)``,
# computed with Pillow 10.1.0 (upstream's pin) and Pillow 13.0.0.
PIL_GOLDEN = {
    (720, 1280): ("ece1e4dae3357c3816a488cb97636d67", "ece1e4dae3357c3816a488cb97636d67"),
    (300, 200): ("b055350014d06ab6635283e1d13026d9", "b055350014d06ab6635283e1d13026d9"),
    # the height shrinks > 2x more than the width: Pillow >= 12 runs the vertical pass first
    (600, 500): ("8c167ea8a0c2e485c0dbc318ef32f865", "c1e8a0cee6ef839976ef769a9076e416"),
}


@pytest.mark.parametrize("hw", sorted(PIL_GOLDEN))
def test_resize_is_bit_exact_with_pillow_golden(hw) -> None:
    pil10, pil13 = PIL_GOLDEN[hw]
    frame = _frame(*hw)
    assert hashlib.sha256(resize_bicubic_pil(frame, 448).tobytes()).hexdigest()[:32] == pil10
    assert hashlib.sha256(resize_bicubic_pil(frame, 448, pillow12_pass_order=True).tobytes()).hexdigest()[:32] == pil13


def test_resize_against_installed_pillow() -> None:
    PIL = pytest.importorskip("PIL")
    from PIL import Image

    new_order = int(PIL.__version__.split(".")[0]) >= 12
    rng = np.random.default_rng(0)
    for h, w, oh, ow in [(37, 53, 448, 448), (1080, 1920, 448, 448), (449, 447, 448, 448), (90, 700, 120, 33)]:
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        ref = np.asarray(Image.fromarray(img).resize((ow, oh), Image.BICUBIC))
        np.testing.assert_array_equal(resize_bicubic_pil(img, (oh, ow), pillow12_pass_order=new_order), ref)


def test_preprocess_frame_normalisation() -> None:
    assert CLIP_MEAN == (0.48145466, 0.4578275, 0.40821073)
    assert CLIP_STD == (0.26862954, 0.26130258, 0.27577711)
    assert IMAGE_SIZE == 448
    out = preprocess_frame(_frame(720, 1280))
    assert out.shape == (3, 448, 448) and out.dtype == np.float32
    # a constant image stays constant: (v / 255 - mean) / std per channel (torchvision ToTensor + Normalize)
    value = np.array([10, 128, 250], dtype=np.uint8)
    flat = preprocess_frame(np.broadcast_to(value, (300, 500, 3)).copy())
    expected = (value.astype(np.float32) / np.float32(255) - np.float32(CLIP_MEAN)) / np.float32(CLIP_STD)
    np.testing.assert_array_equal(flat, np.broadcast_to(expected[:, None, None], (3, 448, 448)))
    # resized pixels feed the normalisation
    resized = resize_bicubic_pil(_frame(720, 1280), 448).astype(np.float32) / np.float32(255)
    np.testing.assert_allclose(out, ((resized - np.float32(CLIP_MEAN)) / np.float32(CLIP_STD)).transpose(2, 0, 1))
    with pytest.raises(ValueError):
        preprocess_frame(np.zeros((10, 10), dtype=np.uint8))

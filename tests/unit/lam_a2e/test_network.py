"""LAM-A2E network: shapes, determinism, identity conditioning, official-checkpoint loading."""

from __future__ import annotations

import pytest
import torch

from emoserve.constants import (
    ARKIT_BLENDSHAPE_NAMES,
    NUM_BLENDSHAPES,
    NUM_IDENTITIES,
    WINDOW_FRAMES,
    WINDOW_SAMPLES,
    num_output_frames,
)
from emoserve.lam_a2e.network import (
    PROFILES,
    LamA2ENetwork,
    build_network,
    count_parameters,
    feature_extractor_output_length,
    load_official_checkpoint,
    min_input_samples,
)


@pytest.fixture(scope="module")
def tiny() -> LamA2ENetwork:
    return build_network("tiny", seed=0)


def _audio(batch: int, samples: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, samples, generator=gen) * 0.1


def test_constants() -> None:
    assert len(ARKIT_BLENDSHAPE_NAMES) == NUM_BLENDSHAPES == 52
    assert NUM_IDENTITIES == 12
    assert num_output_frames(WINDOW_SAMPLES) == WINDOW_FRAMES == 64
    assert num_output_frames(WINDOW_SAMPLES - 1) == 64 and num_output_frames(34134) == 65
    assert min_input_samples("full") == min_input_samples("tiny") == 400
    assert feature_extractor_output_length(16000) == 49


@pytest.mark.parametrize(
    ("samples", "frames"),
    [(16000, 30), (WINDOW_SAMPLES, 64), (8000, 15), (48000, 90), (5 * 16000, 150), (400, 1), (20001, 38)],
)
def test_output_shape_and_range(tiny: LamA2ENetwork, samples: int, frames: int) -> None:
    assert num_output_frames(samples) == frames
    with torch.no_grad():
        out = tiny(_audio(2, samples), torch.tensor([0, 11]))
    assert out.shape == (2, frames, NUM_BLENDSHAPES)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_identity_changes_output(tiny: LamA2ENetwork) -> None:
    audio = _audio(1, 16000).repeat(NUM_IDENTITIES, 1)
    with torch.no_grad():
        out = tiny(audio, torch.arange(NUM_IDENTITIES))
    for i in range(1, NUM_IDENTITIES):
        assert not torch.allclose(out[0], out[i], atol=1e-6), f"id 0 and id {i} give the same output"


def test_batch_rows_independent(tiny: LamA2ENetwork) -> None:
    audio = _audio(3, 16000)
    ids = torch.tensor([1, 4, 7])
    with torch.no_grad():
        batched = tiny(audio, ids)
        single = torch.cat([tiny(audio[i : i + 1], ids[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=0)


def test_seeded_build_is_deterministic() -> None:
    a = build_network("tiny", seed=123)
    b = build_network("tiny", seed=123)
    c = build_network("tiny", seed=124)
    sd_a, sd_b, sd_c = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    assert any(not torch.equal(sd_a[k], sd_c[k]) for k in sd_a)
    x, ids = _audio(1, 16000), torch.tensor([3])
    with torch.no_grad():
        torch.testing.assert_close(a(x, ids), b(x, ids), atol=0, rtol=0)
    assert not a.training


def test_build_does_not_touch_global_rng() -> None:
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    build_network("tiny", seed=0)
    torch.testing.assert_close(torch.rand(3), expected)


def _save_official(path, net: LamA2ENetwork, rename=None, drop=None) -> None:
    sd = {}
    for k, v in net.state_dict().items():
        if k == drop:
            continue
        if rename:
            for old, new in rename.items():
                k = k.replace(old, new)
        sd["module." + k] = v.clone()
    torch.save({"state_dict": sd, "epoch": 100}, path)


def test_load_synthetic_official_checkpoint(tmp_path, tiny: LamA2ENetwork) -> None:
    path = tmp_path / "lam_audio2exp_streaming.tar"
    _save_official(path, tiny)
    loaded = load_official_checkpoint(path, "tiny")
    assert not loaded.training
    assert loaded.provenance["checkpoint"].startswith("sha256:")
    x, ids = _audio(2, WINDOW_SAMPLES, seed=1), torch.tensor([2, 9])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, ids), tiny(x, ids), atol=0, rtol=0)


def test_load_checkpoint_with_legacy_weight_norm_names(tmp_path, tiny: LamA2ENetwork) -> None:
    path = tmp_path / "legacy.tar"
    _save_official(
        path,
        tiny,
        rename={"parametrizations.weight.original0": "weight_g", "parametrizations.weight.original1": "weight_v"},
    )
    loaded = load_official_checkpoint(path, "tiny")
    x, ids = _audio(1, 16000), torch.tensor([5])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, ids), tiny(x, ids), atol=0, rtol=0)


def test_missing_key_raises(tmp_path, tiny: LamA2ENetwork) -> None:
    key = "backbone.output_proj.bias"
    path = tmp_path / "broken.tar"
    _save_official(path, tiny, drop=key)
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        load_official_checkpoint(path, "tiny")


def test_wrong_profile_raises(tmp_path, tiny: LamA2ENetwork) -> None:
    path = tmp_path / "tiny.tar"
    _save_official(path, tiny)
    with pytest.raises(ValueError, match=r"does not match the 'full' A2E profile: \d+ missing key"):
        load_official_checkpoint(path, "full")


def test_shape_mismatch_raises(tmp_path, tiny: LamA2ENetwork) -> None:
    path = tmp_path / "shape.tar"
    sd = {"module." + k: v.clone() for k, v in tiny.state_dict().items()}
    sd["module.backbone.output_proj.bias"] = torch.zeros(51)
    torch.save({"state_dict": sd}, path)
    with pytest.raises(ValueError, match=r"shape mismatch .*backbone\.output_proj\.bias"):
        load_official_checkpoint(path, "tiny")


def test_not_a_checkpoint_raises(tmp_path) -> None:
    path = tmp_path / "bad.tar"
    torch.save({"model": {}}, path)
    with pytest.raises(ValueError, match="state_dict"):
        load_official_checkpoint(path, "tiny")


# Keys of the official streaming checkpoint after stripping "module." — derived from
# upstream aigc3d/LAM_Audio2Expression: models/default.py (DefaultEstimator.backbone),
# models/network.py (Audio2Expression / AudioIdentityEncoder / ConvNormRelu),
# models/encoder/wav2vec.py (HF Wav2Vec2Model subclass + lm_head) and
# configs/wav2vec2_config.json (feat_extract_norm="group", conv_bias=false,
# mask_time_prob=0.05, 12 layers); transformers 4.36.2 + torch 2.1.2 weight-norm naming.
UPSTREAM_KEYS_WITH_SHAPES = {
    "backbone.audio_encoder.masked_spec_embed": (768,),
    "backbone.audio_encoder.feature_extractor.conv_layers.0.conv.weight": (512, 1, 10),
    "backbone.audio_encoder.feature_extractor.conv_layers.0.layer_norm.weight": (512,),
    "backbone.audio_encoder.feature_extractor.conv_layers.6.conv.weight": (512, 512, 2),
    "backbone.audio_encoder.feature_projection.layer_norm.weight": (512,),
    "backbone.audio_encoder.feature_projection.projection.weight": (768, 512),
    "backbone.audio_encoder.encoder.pos_conv_embed.conv.bias": (768,),
    "backbone.audio_encoder.encoder.pos_conv_embed.conv.parametrizations.weight.original0": (1, 1, 128),
    "backbone.audio_encoder.encoder.pos_conv_embed.conv.parametrizations.weight.original1": (768, 48, 128),
    "backbone.audio_encoder.encoder.layer_norm.weight": (768,),
    "backbone.audio_encoder.encoder.layers.0.attention.q_proj.weight": (768, 768),
    "backbone.audio_encoder.encoder.layers.11.feed_forward.intermediate_dense.weight": (3072, 768),
    "backbone.audio_encoder.encoder.layers.11.final_layer_norm.bias": (768,),
    "backbone.audio_encoder.lm_head.weight": (32, 1024),
    "backbone.feature_projection.weight": (512, 768),
    "backbone.identity_encoder.id_mlp.weight": (64, 12, 1),
    "backbone.identity_encoder.first_net.conv_layers.0.residual_layer.0.weight": (512, 576, 3),
    "backbone.identity_encoder.first_net.conv_layers.0.conv.weight": (512, 576, 3),
    "backbone.identity_encoder.first_net.conv_layers.2.norm.weight": (512,),
    "backbone.identity_encoder.grus.weight_ih_l0": (1536, 512),
    "backbone.decoder.0.2.conv.weight": (512, 512, 3),
    "backbone.output_proj.weight": (52, 512),
    "backbone.output_proj.bias": (52,),
}


def test_full_profile_matches_upstream_layout() -> None:
    net = LamA2ENetwork(PROFILES["full"])  # construction only; no forward pass
    sd = net.state_dict()
    for key, shape in UPSTREAM_KEYS_WITH_SHAPES.items():
        assert key in sd, key
        assert tuple(sd[key].shape) == shape, (key, tuple(sd[key].shape))
    assert not any("first_net.conv_layers.1.residual_layer" in k for k in sd)  # Identity residual
    assert not any("transformer_encoder" in k for k in sd)  # use_transformer=False
    assert len(sd) == 249
    # wav2vec2-base (HF Wav2Vec2Model) = 94,371,712; + lm_head 32,800 + A2E head 7,708,532.
    audio_encoder = net.backbone.audio_encoder
    assert count_parameters(audio_encoder) - count_parameters(audio_encoder.lm_head) == 94_371_712
    assert count_parameters(net) == 102_113_044
    assert count_parameters(build_network("tiny")) < 100_000

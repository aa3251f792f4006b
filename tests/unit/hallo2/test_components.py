"""Hallo2 VAE, audio encoder, audio windows and conditioning projections (tiny profile).

Shapes, the VAE round trip, frame counts and window clamping, loaders on synthetic checkpoints with
upstream key names, and ONNX export + onnxruntime parity at shapes other than the trace shape.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from emoserve.hallo2.audio import build_audio_encoder, load_wav2vec2, min_audio_samples
from emoserve.hallo2.audio_windows import audio_frames, audio_windows, window_indices
from emoserve.hallo2.profile import get_profile
from emoserve.hallo2.projections import build_projections, load_projections
from emoserve.hallo2.vae import build_vae, load_vae
from export.hallo2 import (
    AudioProjSpec,
    FaceLocatorSpec,
    Hallo2AudioEncoderSpec,
    ImageProjSpec,
    VaeDecoderSpec,
    VaeEncoderSpec,
)
from export.onnx_export import export_onnx, validate_onnx

P = get_profile("tiny")


@pytest.fixture(scope="module")
def vae():
    return build_vae("tiny", seed=0)


@pytest.fixture(scope="module")
def audio_encoder():
    return build_audio_encoder("tiny", seed=0)


@pytest.fixture(scope="module")
def projections():
    return build_projections("tiny", seed=0)


def _perturbed(state_dict: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: v + 0.01 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
            for k, v in state_dict.items()}


# --------------------------------------------------------------------------- VAE


def test_vae_shapes_and_round_trip(vae) -> None:
    enc, dec = vae.encoder_net(), vae.decoder_net()
    pixels = torch.rand(2, 3, P.image_size, P.image_size) * 2 - 1
    with torch.no_grad():
        latents = enc(pixels)
        out = dec(latents)
        mean = vae.encode_mean(pixels)
    assert latents.shape == (2, 4, P.image_size // 8, P.image_size // 8)
    torch.testing.assert_close(latents, mean * P.vae_scaling)
    assert out.shape == pixels.shape
    assert torch.isfinite(out).all() and out.min() >= -1.0 and out.max() <= 1.0
    with torch.no_grad():  # the decoder divides by the scaling factor before post_quant_conv
        torch.testing.assert_close(out, vae.decode(latents / P.vae_scaling).clamp(-1, 1))


def test_vae_parameter_names_follow_diffusers(vae) -> None:
    keys = set(vae.state_dict())
    for key in (
        "encoder.conv_in.weight",
        "encoder.down_blocks.0.resnets.0.norm1.weight",
        "encoder.down_blocks.0.downsamplers.0.conv.weight",
        "encoder.down_blocks.1.resnets.0.conv_shortcut.weight",
        "encoder.mid_block.attentions.0.to_q.weight",
        "encoder.mid_block.attentions.0.to_out.0.bias",
        "encoder.mid_block.resnets.1.conv2.weight",
        "encoder.conv_norm_out.weight",
        "quant_conv.weight",
        "post_quant_conv.weight",
        f"decoder.up_blocks.0.resnets.{P.vae_layers_per_block}.conv1.weight",  # layers_per_block + 1
        "decoder.up_blocks.0.upsamplers.0.conv.weight",
        "decoder.conv_out.bias",
    ):
        assert key in keys, key
    last = len(P.vae_block_out_channels) - 1
    assert f"encoder.down_blocks.{last}.downsamplers.0.conv.weight" not in keys
    assert f"decoder.up_blocks.{last}.upsamplers.0.conv.weight" not in keys


def test_load_vae_from_diffusers_folder(vae, tmp_path) -> None:
    from safetensors.torch import save_file

    sd = _perturbed(vae.state_dict(), 1)
    # Old diffusers attention names with 1x1-conv weights (as in early sd-vae-ft-mse uploads).
    old = {}
    for k, v in sd.items():
        for new, legacy in (("to_q.", "query."), ("to_k.", "key."), ("to_v.", "value."), ("to_out.0.", "proj_attn.")):
            if ".attentions.0." + new in k:
                k = k.replace(".attentions.0." + new, ".attentions.0." + legacy)
                if k.endswith("weight"):
                    v = v[:, :, None, None]
        old[k] = v.contiguous()
    folder = tmp_path / "sd-vae"
    folder.mkdir()
    save_file(old, str(folder / "diffusion_pytorch_model.safetensors"))
    (folder / "config.json").write_text(json.dumps(
        {"block_out_channels": list(P.vae_block_out_channels), "latent_channels": 4,
         "layers_per_block": P.vae_layers_per_block, "norm_num_groups": P.vae_norm_num_groups,
         "scaling_factor": 0.18215}))
    loaded = load_vae(folder, "tiny")
    assert str(loaded.provenance["checkpoint"]).startswith("sha256:")
    ref = build_vae("tiny", seed=0)
    ref.load_state_dict(sd)
    pixels = torch.rand(1, 3, P.image_size, P.image_size) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded.encoder_net()(pixels), ref.encoder_net()(pixels), rtol=0, atol=0)
        z = ref.encoder_net()(pixels)
        torch.testing.assert_close(loaded.decoder_net()(z), ref.decoder_net()(z), rtol=0, atol=0)

    torch.save({k: v for k, v in sd.items() if k != "post_quant_conv.bias"}, tmp_path / "broken.bin")
    with pytest.raises(ValueError, match="post_quant_conv.bias"):
        load_vae(tmp_path / "broken.bin", "tiny")
    (folder / "config.json").write_text(json.dumps({"block_out_channels": [1, 2]}))
    with pytest.raises(ValueError, match="block_out_channels"):
        load_vae(folder, "tiny")


def test_full_sizes_match_upstream_parameter_counts() -> None:
    """sd-vae-ft-mse has 83,653,863 parameters, wav2vec2-base (no CTC head) 94,371,712."""
    from emoserve.hallo2.audio import Hallo2AudioEncoder
    from emoserve.hallo2.vae import AutoencoderKL

    with torch.device("meta"):
        vae, enc = AutoencoderKL("full"), Hallo2AudioEncoder("full")
    assert sum(p.numel() for p in vae.parameters()) == 83_653_863
    assert len(vae.state_dict()) == 248
    assert sum(p.numel() for p in enc.parameters()) == 94_371_712


# --------------------------------------------------------------------------- audio


@pytest.mark.parametrize("samples", [400, 700, 4480, 16000, 20001, 33333])
def test_audio_frames_follow_upstream(audio_encoder, samples) -> None:
    expected = math.ceil(samples / 16000 * 25)  # upstream's float formula (4480 -> 8, not 7)
    assert audio_frames(samples) == expected
    with torch.no_grad():
        out = audio_encoder(torch.randn(2, samples) * 0.1)
    assert out.shape == (2, expected, P.wav2vec_layers, P.wav2vec_hidden)
    assert torch.isfinite(out).all()


def test_audio_encoder_matches_a_step_by_step_reference(audio_encoder) -> None:
    """Normalise -> conv -> interpolate (before the transformer) -> projection -> encoder, all layers."""
    import torch.nn.functional as F

    enc = audio_encoder
    audio = torch.randn(1, 12345) * 0.2 + 0.05
    x = audio.numpy()[0]
    x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)  # HF Wav2Vec2FeatureExtractor (numpy)
    t = math.ceil(12345 / 16000 * 25)
    with torch.no_grad():
        feats = enc.feature_extractor(torch.from_numpy(x)[None])
        feats = F.interpolate(feats, size=t, mode="linear", align_corners=True).transpose(1, 2)
        h = enc.feature_projection(feats)
        h = enc.encoder.layer_norm(h + enc.encoder.pos_conv_embed(h))
        hidden = []
        for layer in enc.encoder.layers:
            h = layer(h)
            hidden.append(h)
        ref = torch.stack(hidden, dim=2)
        out = enc(audio)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    assert min_audio_samples("tiny") == 400


def test_load_wav2vec2_from_hf_ctc_folder(audio_encoder, tmp_path) -> None:
    sd = _perturbed(audio_encoder.state_dict(), 2)
    ckpt = {"wav2vec2." + k: v for k, v in sd.items()}
    # legacy weight-norm names, as in the original wav2vec2-base-960h upload
    for name, legacy in (("original0", "weight_g"), ("original1", "weight_v")):
        ckpt[f"wav2vec2.encoder.pos_conv_embed.conv.{legacy}"] = ckpt.pop(
            f"wav2vec2.encoder.pos_conv_embed.conv.parametrizations.weight.{name}")
    ckpt["lm_head.weight"] = torch.zeros(32, P.wav2vec_hidden)
    ckpt["lm_head.bias"] = torch.zeros(32)
    folder = tmp_path / "wav2vec2-base-960h"
    folder.mkdir()
    torch.save(ckpt, folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps({"hidden_size": P.wav2vec_hidden, "feat_extract_norm": "group"}))
    (folder / "preprocessor_config.json").write_text(json.dumps({"do_normalize": True}))
    loaded = load_wav2vec2(folder, "tiny")
    ref = build_audio_encoder("tiny", seed=0)
    ref.load_state_dict(sd)
    audio = torch.randn(2, 9000) * 0.1
    with torch.no_grad():
        torch.testing.assert_close(loaded(audio), ref(audio), rtol=0, atol=0)

    del ckpt["wav2vec2.encoder.layers.1.final_layer_norm.bias"]
    with pytest.raises(ValueError, match=r"encoder\.layers\.1\.final_layer_norm\.bias"):
        load_wav2vec2(ckpt, "tiny")


def test_audio_windows_clamp_at_the_edges() -> None:
    feats = np.arange(6, dtype=np.float32)[:, None, None] * np.ones((6, 2, 3), np.float32)
    win = audio_windows(feats)
    assert win.shape == (6, 5, 2, 3)
    assert win[:, :, 0, 0].tolist() == [
        [0, 0, 0, 1, 2],
        [0, 0, 1, 2, 3],
        [0, 1, 2, 3, 4],
        [1, 2, 3, 4, 5],
        [2, 3, 4, 5, 5],
        [3, 4, 5, 5, 5],
    ]
    assert window_indices(1).tolist() == [[0, 0, 0, 0, 0]]
    assert audio_windows(feats, frames=8)[7, :, 0, 0].tolist() == [5, 5, 5, 5, 5]
    # upstream's process_audio_emb, literally
    t = torch.from_numpy(feats)
    ref = torch.stack([torch.stack([t[max(min(i + j, 5), 0)] for j in range(-2, 3)]) for i in range(6)])
    np.testing.assert_array_equal(win, ref.numpy())


def test_audio_windows_module_needs_no_torch() -> None:
    import subprocess
    import sys

    code = ("import sys; import emoserve.hallo2.audio_windows as w; "
            "assert 'torch' not in sys.modules, 'torch imported'; print(w.audio_frames(4480))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "8"


# --------------------------------------------------------------------------- projections


def test_projection_shapes(projections) -> None:
    with torch.no_grad():
        tokens = projections.audio_proj(torch.randn(2, 3, 5, P.wav2vec_layers, P.wav2vec_hidden))
        image = projections.image_proj(torch.randn(2, 512))
        face = projections.face_locator(torch.rand(2, 1, 3, P.image_size, P.image_size))
    assert tokens.shape == (2, 3, P.audio_tokens, P.audio_token_dim)
    assert image.shape == (2, P.image_tokens, P.cross_attention_dim)
    assert face.shape == (2, P.face_locator_channels, 3, P.latent_size, P.latent_size)
    # frames are independent (the projection is per frame)
    x = torch.randn(1, 4, 5, P.wav2vec_layers, P.wav2vec_hidden)
    with torch.no_grad():
        torch.testing.assert_close(projections.audio_proj(x)[:, 2:3], projections.audio_proj(x[:, 2:3]))


def test_load_projections_from_net_pth(projections, tmp_path) -> None:
    parts = projections.modules()
    sd = {}
    for part, prefix in (("audio_proj", "audioproj."), ("image_proj", "imageproj."), ("face_locator", "")):
        sd.update({prefix + k: v for k, v in _perturbed(parts[part].state_dict(), 3).items()})
    assert "face_locator.conv_in.weight" in sd and "face_locator.blocks.5.weight" in sd
    assert "face_locator.conv_out.bias" in sd and "audioproj.proj3.weight" in sd and "imageproj.norm.bias" in sd
    net = dict(sd)
    net["reference_unet.conv_in.weight"] = torch.zeros(1)  # other networks of net.pth are ignored
    torch.save(net, tmp_path / "net.pth")
    loaded = load_projections(tmp_path, "tiny")
    lp = loaded.modules()
    assert all(torch.equal(v, sd[k]) for k, v in {
        **{"audioproj." + k: v for k, v in lp["audio_proj"].state_dict().items()},
        **{"imageproj." + k: v for k, v in lp["image_proj"].state_dict().items()},
        **lp["face_locator"].state_dict()}.items())
    x = torch.randn(1, 2, 5, P.wav2vec_layers, P.wav2vec_hidden)
    mask = torch.rand(1, 1, 2, P.image_size, P.image_size)
    with torch.no_grad():
        assert not torch.equal(loaded.audio_proj(x), projections.audio_proj(x))
        # the 1-channel mask is upstream's 3-channel (RGB) mask
        fl = lp["face_locator"].face_locator
        torch.testing.assert_close(loaded.face_locator(mask), fl(mask.expand(-1, 3, -1, -1, -1)))

    del net["imageproj.proj.bias"]
    with pytest.raises(ValueError, match=r"proj\.bias"):
        load_projections(net, "tiny")


# --------------------------------------------------------------------------- ONNX


def _cases(vae, audio_encoder, projections):
    return [
        (vae.encoder_net(), VaeEncoderSpec(profile="tiny"), [(1,), (3,)]),
        (vae.decoder_net(), VaeDecoderSpec(profile="tiny"), [(1,), (3,)]),
        (audio_encoder, Hallo2AudioEncoderSpec(profile="tiny"), [(1, 400), (1, 700), (1, 4480), (3, 16000)]),
        (projections.audio_proj, AudioProjSpec(profile="tiny"), [(1, P.clip_frames), (3, 1)]),
        (projections.image_proj, ImageProjSpec(profile="tiny"), [(1,), (3,)]),
        (projections.face_locator, FaceLocatorSpec(profile="tiny"), [(1, P.clip_frames), (3, 1)]),
    ]


def test_onnx_export_and_parity(vae, audio_encoder, projections, tmp_path) -> None:
    import onnx

    for net, spec, shapes in _cases(vae, audio_encoder, projections):
        assert spec.get_export_sample_shape() not in shapes
        path = export_onnx(net, spec, tmp_path / f"{spec.name}.onnx")
        model = onnx.load(str(path))
        assert [i.name for i in model.graph.input] == spec.get_input_names()
        assert [o.name for o in model.graph.output] == spec.get_output_names()
        worst = validate_onnx(net, path, spec, shapes, atol=1e-4)
        assert worst <= 1e-4, (spec.name, worst)


def test_spec_profiles() -> None:
    full = VaeEncoderSpec()
    assert full.get_input_profile()["pixels"] == [(1, 3, 512, 512), (3, 3, 512, 512), (8, 3, 512, 512)]
    assert VaeDecoderSpec().get_output_shapes(2) == [(2, 3, 512, 512)]
    aspec = Hallo2AudioEncoderSpec()
    assert aspec.get_output_shapes(1, 16000 * 60) == [(1, 1500, 12, 768)]
    assert aspec.get_input_profile()["audio"][2] == (4, 960000)
    assert AudioProjSpec().get_input_profile()["audio_windows"][1] == (1, 16, 5, 12, 768)
    assert AudioProjSpec().get_output_shapes(1, 16) == [(1, 16, 32, 768)]
    assert ImageProjSpec().get_output_shapes(2) == [(2, 4, 768)]
    assert FaceLocatorSpec().get_output_shapes(1, 16) == [(1, 320, 16, 64, 64)]
    assert FaceLocatorSpec().get_input_profile()["face_mask"][2] == (2, 1, 18, 512, 512)

"""Hallo2 reference / denoising UNets (tiny profile): contract, conditioning paths, motion, loaders, ONNX."""

from __future__ import annotations

import onnx
import pytest
import torch

from emoserve.hallo2.profile import get_profile
from emoserve.hallo2.unet import (
    DenoisingUNet3D,
    ReferenceUNet2D,
    VanillaTemporalModule,
    build_denoising_unet,
    build_reference_unet,
    load_denoising_unet,
    load_reference_unet,
    mask_token_counts,
    reference_feature_layout,
)
from export.hallo2 import DenoisingUNetSpec, ReferenceUNetSpec
from export.onnx_export import export_onnx, validate_onnx

P = get_profile("tiny")
B, F = 2, 4
R = 1 + P.motion_frames


@pytest.fixture(scope="module")
def nets():
    return build_reference_unet("tiny", seed=0), build_denoising_unet("tiny", seed=0)


@pytest.fixture(scope="module")
def inputs(nets):
    ref_net, _ = nets
    g = torch.Generator().manual_seed(3)
    s = P.latent_size
    ref_lat = torch.randn(B * R, 4, s, s, generator=g)
    img = torch.randn(B, P.image_tokens, P.cross_attention_dim, generator=g)
    with torch.no_grad():
        feats = ref_net(ref_lat, torch.zeros(B * R, dtype=torch.long), img.repeat_interleave(R, 0))
    masks = [[(torch.rand(B, n, generator=g) > 0.3).float() for n in mask_token_counts(P)] for _ in range(3)]
    return dict(
        sample=torch.randn(B, 4, F, s, s, generator=g),
        timestep=torch.tensor([900, 250]),
        image_tokens=img,
        audio_tokens=torch.randn(B, F, P.audio_tokens, P.audio_token_dim, generator=g),
        face_features=torch.randn(B, P.face_locator_channels, F, s, s, generator=g) * 0.5,
        full_masks=masks[0],
        face_masks=masks[1],
        lip_masks=masks[2],
        ref_feats=[f.reshape(B, R, *f.shape[1:]) for f in feats],
        ref_mask=torch.ones(B),
    )


def _run(net: DenoisingUNet3D, **kw) -> torch.Tensor:
    with torch.no_grad():
        return net.denoise(**kw)


def test_reference_features_match_denoiser_contract(nets, inputs) -> None:
    ref_net, den = nets
    layout = reference_feature_layout(P)
    assert len(layout) == den.num_reference_features == 4  # down 1 + mid 1 + up 2
    assert len(reference_feature_layout("full")) == 16
    assert [(n, t, c) for n, t, c in layout] == [
        ("down_blocks.0.attentions.0", 64, 32),
        ("mid_block.attentions.0", 16, 64),
        ("up_blocks.1.attentions.0", 64, 32),
        ("up_blocks.1.attentions.1", 64, 32),
    ]
    for (path, tokens, ch), feat in zip(layout, inputs["ref_feats"]):
        assert tuple(feat.shape) == (B, R, tokens, ch)
        # the feature is the norm1 output of the block of that path (LayerNorm: zero mean per token)
        assert isinstance(ref_net.get_submodule(path), type(den.get_submodule(path)))
        assert feat.mean(-1).abs().max() < 1e-4
    out = _run(den, **inputs)
    assert out.shape == (B, 4, F, P.latent_size, P.latent_size) and torch.isfinite(out).all()
    assert 0.3 < out.std() < 5.0  # demo conv_out gain: non-trivial v-predictions
    assert den.input_names() == DenoisingUNetSpec(profile="tiny").get_input_names()


@pytest.mark.parametrize("field", ["ref_feats", "audio_tokens", "face_features", "image_tokens", "masks"])
def test_every_condition_is_used(nets, inputs, field) -> None:
    _, den = nets
    base = _run(den, **inputs)
    kw = dict(inputs)
    if field == "ref_feats":
        kw["ref_feats"] = [r.clone() for r in inputs["ref_feats"]]
        kw["ref_feats"][2][:, 0] += 0.5 * torch.randn_like(kw["ref_feats"][2][:, 0])  # reference image feature
    elif field == "masks":
        kw["lip_masks"] = [1.0 - m for m in inputs["lip_masks"]]
    else:
        kw[field] = inputs[field] + 0.5 * torch.randn_like(inputs[field])
    assert (_run(den, **kw) - base).abs().max() > 1e-3


def test_unconditional_branch(nets, inputs) -> None:
    _, den = nets
    cond = _run(den, **inputs)
    uncond_kw = dict(
        inputs,
        audio_tokens=torch.zeros_like(inputs["audio_tokens"]),
        face_features=torch.zeros_like(inputs["face_features"]),
        ref_mask=torch.zeros(B),
    )
    uncond = _run(den, **uncond_kw)
    assert (uncond - cond).abs().max() > 1e-2
    # ref_mask = 0: the reference image's features are not read (plain self-attention) ...
    changed = [r.clone() for r in inputs["ref_feats"]]
    for r in changed:
        r[:, 0] += torch.randn_like(r[:, 0])
    assert (_run(den, **dict(uncond_kw, ref_feats=changed)) - uncond).abs().max() < 1e-5
    # ... while the motion frames' features still enter the motion modules (as upstream)
    changed = [r.clone() for r in inputs["ref_feats"]]
    changed[0][:, 1:] += torch.randn_like(changed[0][:, 1:])  # (a constant shift would be normalised away)
    assert (_run(den, **dict(uncond_kw, ref_feats=changed)) - uncond).abs().max() > 1e-3
    # per-sample: ref_mask only affects its own batch entry
    mixed = _run(den, **dict(inputs, ref_mask=torch.tensor([1.0, 0.0])))
    assert torch.allclose(mixed[0], cond[0], atol=1e-5) and (mixed[1] - cond[1]).abs().max() > 1e-3


def test_motion_module_mixes_frames(nets, inputs, monkeypatch) -> None:
    _, den = nets
    kw = dict(inputs, sample=inputs["sample"].clone())
    base = _run(den, **kw)
    kw2 = dict(kw, sample=kw["sample"].clone())
    kw2["sample"][:, :, 0] += 1.0
    moved = _run(den, **kw2)
    assert (moved[:, :, 3] - base[:, :, 3]).abs().max() > 1e-3
    # spatial-only path (motion modules bypassed): frame 3 no longer sees frame 0
    monkeypatch.setattr(VanillaTemporalModule, "forward", lambda self, x, frames: x)
    base_s, moved_s = _run(den, **kw), _run(den, **kw2)
    assert (moved_s[:, :, 3] - base_s[:, :, 3]).abs().max() < 1e-5
    assert (moved_s[:, :, 0] - base_s[:, :, 0]).abs().max() > 1e-3


def _perturbed(sd: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: (v + 0.01 * torch.randn(v.shape, generator=g)) if v.is_floating_point() and "pos_encoder" not in k
            else v.clone() for k, v in sd.items()}


def test_loaders_on_synthetic_checkpoints(tmp_path, nets, inputs) -> None:
    ref_net, den = nets
    ref_sd, den_sd = _perturbed(ref_net.state_dict(), 1), _perturbed(den.state_dict(), 2)
    # hallo2 net.pth: one dict with the Net wrapper's prefixes (plus the other sub-networks)
    net_pth = {f"reference_unet.{k}": v for k, v in ref_sd.items()}
    net_pth.update({f"denoising_unet.{k}": v for k, v in den_sd.items()})
    net_pth["imageproj.proj.weight"] = torch.zeros(3)
    torch.save(net_pth, tmp_path / "net.pth")
    ref2 = load_reference_unet(tmp_path / "net.pth", profile="tiny")
    den2 = load_denoising_unet(tmp_path / "net.pth", profile="tiny")
    assert ref2.provenance["checkpoint"].startswith("sha256:") and ref2.provenance["seed"] is None
    for k, v in ref_sd.items():
        assert torch.equal(ref2.state_dict()[k], v)
    expected = DenoisingUNet3D("tiny")
    expected.load_state_dict(den_sd)
    expected.eval()
    assert torch.equal(_run(den2, **inputs), _run(expected, **inputs))
    assert not torch.equal(_run(den2, **inputs), _run(den, **inputs))

    # hallo-style separate files: denoising_unet.pth without motion modules + motion_module.pth
    motion = {k: v for k, v in den_sd.items() if ".motion_modules." in k and not k.endswith("pos_encoder.pe")}
    rest = {k: v for k, v in den_sd.items() if ".motion_modules." not in k}
    torch.save(rest, tmp_path / "denoising_unet.pth")
    torch.save(motion, tmp_path / "motion_module.pth")
    den3 = load_denoising_unet(tmp_path / "denoising_unet.pth", tmp_path / "motion_module.pth", profile="tiny")
    assert torch.equal(_run(den3, **inputs), _run(expected, **inputs))
    torch.save(ref_sd, tmp_path / "reference_unet.pth")
    assert torch.equal(load_reference_unet(tmp_path / "reference_unet.pth", profile="tiny").conv_in.weight,
                       ref_sd["conv_in.weight"])

    # a missing key is named
    with pytest.raises(ValueError, match="down_blocks.0.motion_modules.0.temporal_transformer.proj_in.weight"):
        load_denoising_unet(tmp_path / "denoising_unet.pth", profile="tiny")
    broken = dict(ref_sd)
    del broken["mid_block.attentions.0.transformer_blocks.0.attn1.to_q.weight"]
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match=r"mid_block\.attentions\.0\.transformer_blocks\.0\.attn1\.to_q\.weight"):
        load_reference_unet(tmp_path / "broken.pth", profile="tiny")


def test_full_profile_layout_on_meta_device() -> None:
    with torch.device("meta"):
        ref_net, den = ReferenceUNet2D("full"), DenoisingUNet3D("full")
    # parameter counts of upstream's modules (checked against hallo2's classes on the meta device)
    assert sum(p.numel() for p in ref_net.parameters()) == 859_508_800
    assert sum(p.numel() for p in den.parameters()) == 1_525_528_324
    sd = den.state_dict()
    # the audio module of a widening block keeps upstream's narrower inner width (640 -> 320 -> 640)
    assert tuple(sd["down_blocks.1.audio_modules.0.proj_in.weight"].shape) == (320, 640, 1, 1)
    assert tuple(sd["mid_block.motion_modules.0.temporal_transformer.transformer_blocks.0."
                    "attention_blocks.1.pos_encoder.pe"].shape) == (1, 32, 1280)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, nets):
    ref_net, den = nets
    d = tmp_path_factory.mktemp("hallo2_unet_onnx")
    rs, ds = ReferenceUNetSpec(profile="tiny"), DenoisingUNetSpec(profile="tiny")
    return (ref_net, rs, export_onnx(ref_net, rs, d / "ref.onnx")), (den, ds, export_onnx(den, ds, d / "den.onnx"))


def _dims(v) -> list:
    return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]


def test_onnx_reference_unet(exported) -> None:
    (net, spec, path), _ = exported
    model = onnx.load(str(path))
    assert [o.name for o in model.graph.output] == [f"ref_feat_{i}" for i in range(4)]
    assert _dims(model.graph.input[0]) == ["batch", 4, 8, 8]
    assert spec.get_export_sample_shape() == (2,)
    assert validate_onnx(net, path, spec, [(1,), (3,)], atol=1e-4) <= 1e-4


def test_onnx_denoising_unet(exported) -> None:
    _, (net, spec, path) = exported
    model = onnx.load(str(path))
    ins = {i.name: i for i in model.graph.input}
    assert list(ins) == net.input_names()
    assert _dims(ins["sample"]) == ["batch", 4, "frames", 8, 8]
    assert _dims(ins["audio_tokens"]) == ["batch", "frames", 32, 32]
    assert _dims(ins["ref_feat_1"]) == ["batch", 3, 16, 64]
    assert ins["timestep"].type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert _dims(model.graph.output[0]) == ["batch", 4, "frames", 8, 8]
    assert spec.get_export_sample_shape() == (2, 5)
    assert validate_onnx(net, path, spec, [(1, 6), (3, 4)], atol=1e-4) <= 1e-4

"""One-off check against upstream hallo2 @58a9aa6 (not collected by pytest; needs diffusers==0.32.2 + einops).

Setup used: pip install --target /tmp/uplibs --no-deps diffusers==0.32.2 einops==0.8.0, a stub xformers package in
/tmp/uplibs, upstream sources (hallo/, configs/) in /tmp/h2.  Run from the repo root with the project venv.
Tiny sizes, random weights copied into both; compares one CFG denoiser call incl. ReferenceAttentionControl.
SAME=1 neutralises upstream reference-tiling quirk for the default (per-video) pairing.
"""
import sys, torch, warnings
warnings.filterwarnings("ignore")
sys.path.insert(0, "/tmp/uplibs"); sys.path.insert(0, "/tmp/h2")
from hallo.models.unet_3d import UNet3DConditionModel
from hallo.models.unet_2d_condition import UNet2DConditionModel
from hallo.models.mutual_self_attention import ReferenceAttentionControl
from emoserve.hallo2.unet import ReferenceUNet2D, DenoisingUNet3D
from emoserve.hallo2.profile import get_profile
torch.manual_seed(0)
p = get_profile("tiny")
cfg = dict(use_inflated_groupnorm=True, unet_use_cross_frame_attention=False, unet_use_temporal_attention=False,
  use_motion_module=True, use_audio_module=True, motion_module_resolutions=[1,2,4,8], motion_module_mid_block=True,
  motion_module_decoder_only=False, motion_module_type="Vanilla",
  motion_module_kwargs=dict(num_attention_heads=2, num_transformer_block=1, attention_block_types=["Temporal_Self","Temporal_Self"],
     temporal_position_encoding=True, temporal_position_encoding_max_len=32, temporal_attention_dim_div=1),
  audio_attention_dim=32, stack_enable_blocks_name=["up","down","mid"], stack_enable_blocks_depth=[0,1,2,3])
base = dict(sample_size=8, in_channels=4, flip_sin_to_cos=True, freq_shift=0, block_out_channels=(32,64), layers_per_block=1,
  cross_attention_dim=32, attention_head_dim=2, norm_num_groups=8, norm_eps=1e-5)
up3 = UNet3DConditionModel(**base, out_channels=4, down_block_types=("CrossAttnDownBlock3D","DownBlock3D"),
   up_block_types=("UpBlock3D","CrossAttnUpBlock3D"), **cfg)
up2 = UNet2DConditionModel(**base, down_block_types=("CrossAttnDownBlock2D","DownBlock2D"), up_block_types=("UpBlock2D","CrossAttnUpBlock2D"))
with torch.no_grad():
    for m in (up3, up2):
        for k, v in m.named_parameters():
            v.copy_(torch.randn_like(v) * (0.2 if v.dim() > 1 else 0.05) + (1.0 if ("norm" in k and k.endswith("weight") and v.dim()==1) else 0.0))
up2.register_to_config(center_input_sample=False); up3.register_to_config(center_input_sample=False)
mine3 = DenoisingUNet3D("tiny"); mine2 = ReferenceUNet2D("tiny")
mine3.load_state_dict(up3.state_dict(), strict=True); mine2.load_state_dict(up2.state_dict(), strict=True)
mine3.eval(); mine2.eval(); up2.eval()
# upstream's effective inference mode for the denoiser: train() + gradient checkpointing
up3.train()
for m in up3.modules():
    if hasattr(m, "gradient_checkpointing"): m.gradient_checkpointing = True
F, M, h = 4, 2, 8
g = torch.Generator().manual_seed(1)
ref_lat = torch.randn(1 + M, 4, h, h, generator=g)
u_tok, c_tok = torch.randn(1, 4, 32, generator=g), torch.randn(1, 4, 32, generator=g)
ehs = torch.cat([u_tok, c_tok])
latents = torch.randn(1, 4, F, h, h, generator=g)
face = torch.randn(1, 32, F, h, h, generator=g)
audio = torch.randn(1, F, 32, 32, generator=g)
m0 = [torch.rand(1, 64, generator=g) for _ in range(3)]; m1 = [torch.rand(1, 16, generator=g) for _ in range(3)]
t = torch.tensor(700)
import os
EHS_W = torch.cat([c_tok, c_tok]) if os.environ.get('SAME') else ehs
writer = ReferenceAttentionControl(up2, do_classifier_free_guidance=True, mode="write", batch_size=1, fusion_blocks="full")
reader = ReferenceAttentionControl(up3, do_classifier_free_guidance=True, mode="read", batch_size=1, fusion_blocks="full")
with torch.no_grad():
    up2(ref_lat.repeat(2, 1, 1, 1), torch.zeros_like(t), encoder_hidden_states=EHS_W, return_dict=False)
    reader.update(writer, dtype=torch.float32)
    def lvl(ms, i): return torch.cat([ms[i].repeat(F, 1)] * 2)
    full = [lvl(m0,0), lvl(m0,0), lvl(m0,0), lvl(m1,0)]
    facem = [lvl(m0,1), lvl(m0,1), lvl(m0,1), lvl(m1,1)]
    lip = [lvl(m0,2), lvl(m0,2), lvl(m0,2), lvl(m1,2)]
    ref_out = up3(torch.cat([latents]*2), t, encoder_hidden_states=ehs, mask_cond_fea=torch.cat([torch.zeros_like(face), face]),
        full_mask=full, face_mask=facem, lip_mask=lip, audio_embedding=torch.cat([torch.zeros_like(audio), audio]),
        motion_scale=[1.0, 1.0, 1.0], return_dict=False)[0]
    # ours: explicit features; upstream's interleaving of image tokens in the writer ([u,c] repeated x3)
    feats = mine2(ref_lat.repeat(2, 1, 1, 1), torch.zeros(6, dtype=torch.long), EHS_W.repeat(3, 1, 1))
    refs = [f.reshape(2, 1 + M, *f.shape[1:]) for f in feats]
    out = mine3.denoise(torch.cat([latents]*2), t.repeat(2), ehs, torch.cat([torch.zeros_like(audio), audio]),
        torch.cat([torch.zeros_like(face), face]), [torch.cat([m0[0]]*2), torch.cat([m1[0]]*2)],
        [torch.cat([m0[1]]*2), torch.cat([m1[1]]*2)], [torch.cat([m0[2]]*2), torch.cat([m1[2]]*2)], refs,
        ref_mask=torch.tensor([0.0, 1.0]))
print("upstream out std", ref_out.std().item(), "max abs diff", (out - ref_out).abs().max().item())
# sanity: the bank contents equal our features
for i, (w, f) in enumerate(zip(sorted([m for m in __import__('hallo.models.mutual_self_attention', fromlist=['x']).torch_dfs(up2) if type(m).__name__=='BasicTransformerBlock'], key=lambda x: -x.norm1.normalized_shape[0]), [])):
    pass
mine3.upstream_ref_tiling = True
with torch.no_grad():
    out2 = mine3.denoise(torch.cat([latents]*2), t.repeat(2), ehs, torch.cat([torch.zeros_like(audio), audio]),
        torch.cat([torch.zeros_like(face), face]), [torch.cat([m0[0]]*2), torch.cat([m1[0]]*2)],
        [torch.cat([m0[1]]*2), torch.cat([m1[1]]*2)], [torch.cat([m0[2]]*2), torch.cat([m1[2]]*2)], refs,
        ref_mask=torch.tensor([0.0, 1.0]))
print("upstream_ref_tiling: max abs diff", (out2 - ref_out).abs().max().item(), "per-video vs tiled", (out2-out).abs().max().item())

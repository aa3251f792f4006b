"""Upstream hallo2 @58a9aa6 vs emoserve UNets at full size on the meta device: state-dict keys, shapes, counts.
(Same setup as hallo2_unet_parity.py; not collected by pytest.)
"""
import sys, torch
sys.path.insert(0, "/tmp/uplibs"); sys.path.insert(0, "/tmp/h2")
from hallo.models.unet_3d import UNet3DConditionModel
from hallo.models.unet_2d_condition import UNet2DConditionModel
from emoserve.hallo2.unet import ReferenceUNet2D, DenoisingUNet3D
import yaml
cfg = yaml.safe_load(open("/tmp/h2/configs/inference/long.yaml"))["unet_additional_kwargs"]
sd15 = dict(sample_size=64, in_channels=4, out_channels=4, flip_sin_to_cos=True, freq_shift=0,
  block_out_channels=(320,640,1280,1280), layers_per_block=2, cross_attention_dim=768, attention_head_dim=8,
  norm_num_groups=32, norm_eps=1e-5)
with torch.device("meta"):
    up3 = UNet3DConditionModel(**sd15, **cfg)
    sd2 = {k: v for k, v in sd15.items() if k != "out_channels"}
    up2 = UNet2DConditionModel(**sd2, down_block_types=("CrossAttnDownBlock2D",)*3+("DownBlock2D",),
        up_block_types=("UpBlock2D",)+("CrossAttnUpBlock2D",)*3)
    mine3 = DenoisingUNet3D("full"); mine2 = ReferenceUNet2D("full")
def cmp(a, b, name):
    sa = {k: tuple(v.shape) for k, v in a.state_dict().items()}
    sb = {k: tuple(v.shape) for k, v in b.state_dict().items()}
    print(name, "upstream", len(sa), "mine", len(sb))
    print("  only upstream:", sorted(set(sa)-set(sb))[:20])
    print("  only mine:", sorted(set(sb)-set(sa))[:20])
    bad = [(k, sa[k], sb[k]) for k in set(sa)&set(sb) if sa[k]!=sb[k]]
    print("  shape mismatch:", bad[:10])
    print("  params upstream", sum(v.numel() for v in a.parameters()), "mine", sum(v.numel() for v in b.parameters()))
cmp(up3, mine3, "denoising")
cmp(up2, mine2, "reference")

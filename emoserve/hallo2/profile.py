"""Hallo2 size profiles: ``full`` (upstream's SD1.5-based sizes) and ``tiny`` (tests / demo).

Both profiles describe the SAME architecture (block types, attention arrangement, motion modules,
audio/face conditioning); ``tiny`` only shrinks widths, depths and image size so that tests run on
a CPU in seconds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Hallo2Profile", "HALLO2_PROFILES", "get_profile"]


@dataclass(frozen=True)
class Hallo2Profile:
    """Sizes of every Hallo2 network (VAE, UNets, audio/image projections, face locator, wav2vec2)."""

    name: str
    image_size: int  # pixels (square)
    # --- VAE (sd-vae-ft-mse) ---
    latent_channels: int = 4
    vae_scale_factor: int = 8
    vae_scaling: float = 0.18215
    vae_block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    vae_layers_per_block: int = 2
    vae_norm_num_groups: int = 32
    # --- UNets (SD1.5) ---
    unet_block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    attention_head_dim: int = 8  # diffusers' (mis)naming: the NUMBER of heads of the spatial attention
    norm_num_groups: int = 32
    cross_attention_dim: int = 768
    # --- conditioning tokens ---
    audio_tokens: int = 32
    audio_token_dim: int = 768
    audio_window: int = 5  # audio frames per video frame (i-2 .. i+2)
    audio_proj_intermediate_dim: int = 512
    image_tokens: int = 4
    face_embedding_dim: int = 512
    face_locator_channels: int = 320  # = unet_block_out_channels[0]
    # FaceLocator(conditioning_embedding_channels=320) keeps its default block_out_channels upstream
    face_locator_block_out_channels: tuple[int, ...] = (16, 32, 64, 128)
    # --- clip / video ---
    clip_frames: int = 16
    motion_frames: int = 2
    fps: int = 25
    # --- wav2vec2 (audio encoder) ---
    wav2vec_hidden: int = 768
    wav2vec_layers: int = 12
    wav2vec_heads: int = 12
    wav2vec_intermediate: int = 3072
    wav2vec_conv_dim: int = 512
    # --- motion module (AnimateDiff "Vanilla" temporal transformer) ---
    motion_heads: int = 8
    motion_layers: int = 2  # temporal self-attention blocks per transformer ("Temporal_Self", "Temporal_Self")
    motion_max_positions: int = 32

    @property
    def latent_size(self) -> int:
        return self.image_size // self.vae_scale_factor

    @property
    def heads(self) -> int:
        """Number of heads of the spatial attentions (upstream ``attention_head_dim``)."""
        return self.attention_head_dim

    @property
    def num_heads(self) -> int:
        return self.attention_head_dim

    @property
    def total_frames(self) -> int:
        """Frames the denoiser sees per clip: motion frames + clip frames."""
        return self.clip_frames + self.motion_frames

    @property
    def mask_sizes(self) -> tuple[int, ...]:
        """Side lengths of the full/face/lip masks (one per UNet resolution): 64/32/16/8 for 512 px."""
        return tuple(self.latent_size // (2**i) for i in range(len(self.unet_block_out_channels)))

    def describe(self) -> dict[str, Any]:
        d = asdict(self)
        d["latent_size"] = self.latent_size
        return d


HALLO2_PROFILES: dict[str, Hallo2Profile] = {
    "full": Hallo2Profile(name="full", image_size=512),
    "tiny": Hallo2Profile(
        name="tiny",
        image_size=64,
        # 4 blocks (3 downsamplers) like sd-vae-ft-mse, so latents are image_size / 8 as in "full"
        vae_block_out_channels=(32, 64, 64, 64),
        vae_layers_per_block=1,
        vae_norm_num_groups=8,
        unet_block_out_channels=(32, 64),
        layers_per_block=1,
        attention_head_dim=2,
        norm_num_groups=8,
        cross_attention_dim=32,
        audio_token_dim=32,
        audio_proj_intermediate_dim=32,
        face_locator_channels=32,
        face_locator_block_out_channels=(4, 8, 16, 16),
        clip_frames=4,
        motion_frames=2,
        wav2vec_hidden=32,
        wav2vec_layers=2,
        wav2vec_heads=2,
        wav2vec_intermediate=64,
        wav2vec_conv_dim=32,
        motion_heads=2,
        motion_max_positions=32,
    ),
}


def get_profile(profile: str | Hallo2Profile) -> Hallo2Profile:
    """A profile by name (``"full"`` / ``"tiny"``) or the profile itself."""
    if isinstance(profile, Hallo2Profile):
        return profile
    try:
        return HALLO2_PROFILES[profile]
    except KeyError:
        raise ValueError(f"unknown Hallo2 profile {profile!r}; known: {sorted(HALLO2_PROFILES)}") from None

"""Export specs: ONNX I/O names, dynamic axes and TensorRT optimisation profiles.

Modelled on the ``BaseModel`` helpers of NVIDIA's TensorRT ``demo/Diffusion``
(``get_input_names`` / ``get_output_names`` / ``get_dynamic_axes`` /
``get_input_profile`` / ``get_sample_input``), specialised for audio networks whose
dynamic dimensions are *batch* and *number of samples*.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from emoserve.constants import NUM_BLENDSHAPES, NUM_IDENTITIES, WINDOW_SAMPLES, num_output_frames
from emoserve.model_catalog import A2E_NETWORK_MODEL, NETWORK_AUDIO, NETWORK_BLENDSHAPES, NETWORK_IDENTITY

__all__ = ["BaseNetworkSpec", "A2ENetworkSpec", "Shape", "InputProfile"]

Shape = tuple[int, ...]
InputProfile = dict[str, list[Shape]]  # name -> [min, opt, max]


class BaseNetworkSpec:
    """Interface shared by export specs (one per exported network)."""

    name: str = "network"

    def get_input_names(self) -> list[str]:
        raise NotImplementedError

    def get_output_names(self) -> list[str]:
        raise NotImplementedError

    def get_dynamic_axes(self) -> dict[str, dict[int, str]]:
        raise NotImplementedError

    def get_input_profile(self, *args: Any, **kwargs: Any) -> InputProfile:
        raise NotImplementedError

    def get_sample_input(self, *args: Any, **kwargs: Any) -> tuple[Tensor, ...]:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable description (stored in export sidecars)."""
        return {"name": self.name, "inputs": self.get_input_names(), "outputs": self.get_output_names()}


@dataclass
class A2ENetworkSpec(BaseNetworkSpec):
    """Spec of :class:`emoserve.a2e.network.LamA2ENetwork`.

    ONNX contract::

        inputs : input_values  float32 [batch, samples]   raw 16 kHz mono audio
                 id_idx        int64   [batch]            identity index 0..num_identities-1
        output : blendshapes   float32 [batch, frames, 52] in [0, 1], 30 fps,
                 frames = ceil(samples * 30 / 16000)

    Defaults of the TensorRT profile: batch 1/1/``max_batch``; samples
    ``min_samples`` (400 = the wav2vec2 conv receptive field, 1 frame) /
    ``opt_samples`` (the 64-frame streaming window) / ``max_samples`` (10 s).
    """

    name: str = A2E_NETWORK_MODEL
    num_identities: int = NUM_IDENTITIES
    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 8
    min_samples: int = 400
    opt_samples: int = WINDOW_SAMPLES
    max_samples: int = 160_000

    def get_input_names(self) -> list[str]:
        return [NETWORK_AUDIO, NETWORK_IDENTITY]

    def get_output_names(self) -> list[str]:
        return [NETWORK_BLENDSHAPES]

    def get_dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {
            NETWORK_AUDIO: {0: "batch", 1: "samples"},
            NETWORK_IDENTITY: {0: "batch"},
            NETWORK_BLENDSHAPES: {0: "batch", 1: "frames"},
        }

    def get_input_profile(
        self,
        batch_min: int | None = None,
        batch_opt: int | None = None,
        batch_max: int | None = None,
        samples_min: int | None = None,
        samples_opt: int | None = None,
        samples_max: int | None = None,
    ) -> InputProfile:
        """TensorRT optimisation profile: ``{input name: [min_shape, opt_shape, max_shape]}``."""
        b = (
            self.min_batch if batch_min is None else batch_min,
            self.opt_batch if batch_opt is None else batch_opt,
            self.max_batch if batch_max is None else batch_max,
        )
        s = (
            self.min_samples if samples_min is None else samples_min,
            self.opt_samples if samples_opt is None else samples_opt,
            self.max_samples if samples_max is None else samples_max,
        )
        self._check_range("batch", b, lower=1)
        self._check_range("samples", s, lower=self.min_samples)
        return {
            NETWORK_AUDIO: [(b[0], s[0]), (b[1], s[1]), (b[2], s[2])],
            NETWORK_IDENTITY: [(b[0],), (b[1],), (b[2],)],
        }

    def get_output_shape(self, batch: int, samples: int) -> Shape:
        return (batch, num_output_frames(samples), NUM_BLENDSHAPES)

    def get_shape_dict(self, batch: int, samples: int) -> dict[str, Shape]:
        return {
            NETWORK_AUDIO: (batch, samples),
            NETWORK_IDENTITY: (batch,),
            NETWORK_BLENDSHAPES: self.get_output_shape(batch, samples),
        }

    def get_sample_input(
        self, batch: int, samples: int, *, seed: int = 0, device: str | torch.device = "cpu"
    ) -> tuple[Tensor, Tensor]:
        """Deterministic random (audio, id_idx) pair; audio ~ N(0, 0.1^2) clipped to [-1, 1]."""
        if batch < 1 or samples < self.min_samples:
            raise ValueError(f"need batch >= 1 and samples >= {self.min_samples}, got ({batch}, {samples})")
        gen = torch.Generator().manual_seed(seed)
        audio = (torch.randn(batch, samples, generator=gen) * 0.1).clamp_(-1.0, 1.0)
        ids = torch.randint(0, self.num_identities, (batch,), generator=gen, dtype=torch.int64)
        return audio.to(device), ids.to(device)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["dynamic_axes"] = {k: {str(a): n for a, n in v.items()} for k, v in self.get_dynamic_axes().items()}
        return d

    @staticmethod
    def _check_range(what: str, vals: tuple[int, int, int], lower: int) -> None:
        lo, opt, hi = vals
        if not (lower <= lo <= opt <= hi):
            raise ValueError(f"{what} profile must satisfy {lower} <= min <= opt <= max, got {vals}")

"""Export specs: the base every network's spec implements (one spec per network, in ``export/<model>.py``).

Modelled on the ``BaseModel`` helpers of NVIDIA's TensorRT ``demo/Diffusion``
(``get_input_names`` / ``get_output_names`` / ``get_dynamic_axes`` /
``get_input_profile`` / ``get_sample_input``): the same spec drives the ONNX export, its parity checks and the
TensorRT optimisation profiles. Dynamic dimensions are *batch* and, for audio inputs, *number of samples*.

Every spec also says which input shape the ONNX export traces with
(:meth:`BaseNetworkSpec.get_export_sample_shape`, the arguments of ``get_sample_input``) and, when
known, the expected output shapes for a given input shape (:meth:`BaseNetworkSpec.get_output_shapes`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

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

    def get_export_sample_shape(self) -> tuple[int, ...]:
        """Positional arguments of :meth:`get_sample_input` used to trace the ONNX export."""
        raise NotImplementedError

    def get_output_shapes(self, *shape: int) -> list[Shape] | None:
        """Expected output shapes (in output order) for ``get_sample_input(*shape)``; None if unknown."""
        return None

    def get_output_dtypes(self) -> list[torch.dtype]:
        """Output element types in output order (a Triton config needs them before anything is exported)."""
        return [torch.float32] * len(self.get_output_names())

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable description (stored in export sidecars)."""
        return {"name": self.name, "inputs": self.get_input_names(), "outputs": self.get_output_names()}

    def _describe_dynamic_axes(self) -> dict[str, dict[str, str]]:
        return {k: {str(a): n for a, n in v.items()} for k, v in self.get_dynamic_axes().items()}

    @staticmethod
    def _check_range(what: str, vals: tuple[int, int, int], lower: int) -> None:
        lo, opt, hi = vals
        if not (lower <= lo <= opt <= hi):
            raise ValueError(f"{what} profile must satisfy {lower} <= min <= opt <= max, got {vals}")


def pick(default: int, override: int | None) -> int:
    return default if override is None else override

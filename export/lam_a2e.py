"""LAM-A2E in the model repository: the network's export spec and the three models' configs.

* ``lam_a2e`` — the exported network (python + onnxruntime on the ``cpu`` target; native
  ``onnxruntime_onnx`` or a TensorRT plan on ``gpu``, the plan's profile from :class:`A2ENetworkSpec`);
* ``lam_a2e_stream`` — sequence-batched streaming, per-sequence context keyed by correlation id;
* ``lam_a2e_offline`` — whole audio (PCM or encoded bytes) through upstream's offline chain.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from emoserve.constants import (
    NUM_BLENDSHAPES,
    NUM_IDENTITIES,
    WINDOW_SAMPLES,
    num_output_frames,
)
from emoserve.model_catalog import (
    A2E_NETWORK_MODEL,
    A2E_OFFLINE_MODEL,
    A2E_STREAM_MODEL,
    AUDIO,
    AUDIO_BYTES,
    BLENDSHAPES,
    BROW_MOVEMENT,
    CHUNK_INDEX,
    EX_VOL,
    FIRST_FRAME_INDEX,
    ID_IDX,
    MOVEMENT_SMOOTH,
    NETWORK_AUDIO,
    NETWORK_BLENDSHAPES,
    NETWORK_IDENTITY,
    SEED,
    WEIGHTS_PARAMETER,
)
from export.base import BaseNetworkSpec, InputProfile, Shape
from export.pbtxt import (
    onnx_network_header,
    optional_scalars,
    parameter,
    tensor,
    tensor_block,
)

if TYPE_CHECKING:
    from export.build_repository import BuildSettings

log = logging.getLogger(__name__)

# A2E trace shape: batch 2 (so batch is never specialised to 1) and a sample count whose frame
# count (ceil(20000 * 30 / 16000) = 38) is not an exact division, exercising the ceil in the graph.
A2E_EXPORT_SAMPLE_SHAPE: tuple[int, int] = (2, 20000)


@dataclass
class A2ENetworkSpec(BaseNetworkSpec):
    """Spec of :class:`emoserve.lam_a2e.network.LamA2ENetwork`.

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

    def get_output_shapes(self, batch: int, samples: int) -> list[Shape]:
        return [self.get_output_shape(batch, samples)]

    def get_export_sample_shape(self) -> tuple[int, int]:
        return A2E_EXPORT_SAMPLE_SHAPE

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
        d["dynamic_axes"] = self._describe_dynamic_axes()
        return d


def network_config(settings: "BuildSettings") -> str:
    # the graph takes id_idx as [batch]: the native backends reshape Triton's [batch, 1] to it
    identity_extra = "reshape: { shape: [ ] }" if settings.target == "gpu" else ""
    return "\n".join([
        *onnx_network_header(A2E_NETWORK_MODEL, settings, max_batch=settings.network_max_batch,
                             queue_delay_us=settings.network_queue_delay_us, instances=settings.network_instances,
                             tensorrt=settings.tensorrt),
        *tensor_block("input", [tensor(NETWORK_AUDIO, "TYPE_FP32", "-1"), tensor(NETWORK_IDENTITY, "TYPE_INT64", "1", identity_extra)]),
        *tensor_block("output", [tensor(NETWORK_BLENDSHAPES, "TYPE_FP32", f"-1, {NUM_BLENDSHAPES}")]),
        parameter(WEIGHTS_PARAMETER, settings.weights_description()),
        "",
    ])


def stream_config(settings: "BuildSettings") -> str:
    inputs = [
        tensor(AUDIO, "TYPE_FP32", "-1", "allow_ragged_batch: true"),
        *optional_scalars((ID_IDX, "TYPE_INT32"), (MOVEMENT_SMOOTH, "TYPE_BOOL"), (BROW_MOVEMENT, "TYPE_BOOL"), (SEED, "TYPE_UINT64")),
    ]
    outputs = [
        tensor(BLENDSHAPES, "TYPE_FP32", f"-1, {NUM_BLENDSHAPES}"),
        tensor(FIRST_FRAME_INDEX, "TYPE_INT64", "1"),
        tensor(CHUNK_INDEX, "TYPE_INT64", "1"),
    ]
    idle_us = int(settings.stream_idle_timeout_s * 1_000_000)
    return "\n".join([
        f'name: "{A2E_STREAM_MODEL}"',
        'backend: "python"',
        f"max_batch_size: {settings.stream_max_batch}",
        *tensor_block("input", inputs),
        *tensor_block("output", outputs),
        "sequence_batching {",
        f"  max_sequence_idle_microseconds: {idle_us}",
        "  control_input [",
        '    { name: "START" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ] },',
        '    { name: "END" control [ { kind: CONTROL_SEQUENCE_END int32_false_true: [ 0, 1 ] } ] },',
        '    { name: "CORRID" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 } ] }',
        "  ]",
        "  oldest {",
        f"    max_candidate_sequences: {settings.stream_candidate_sequences}",
        f"    preferred_batch_size: [ {settings.stream_max_batch} ]",
        f"    max_queue_delay_microseconds: {settings.stream_queue_delay_us}",
        "  }",
        "}",
        # one instance: a sequence's state lives in exactly one stub process
        "instance_group [ { count: 1 kind: KIND_CPU } ]",
        parameter(WEIGHTS_PARAMETER, settings.weights_description()),
        "",
    ])


def offline_config(settings: "BuildSettings") -> str:
    inputs = [
        tensor(AUDIO, "TYPE_FP32", "-1", "optional: true"),
        *optional_scalars(
            (AUDIO_BYTES, "TYPE_STRING"), (ID_IDX, "TYPE_INT32"), (MOVEMENT_SMOOTH, "TYPE_BOOL"), (BROW_MOVEMENT, "TYPE_BOOL"),
            (EX_VOL, "TYPE_BOOL"), (SEED, "TYPE_UINT64"),
        ),
    ]
    return "\n".join([
        f'name: "{A2E_OFFLINE_MODEL}"',
        'backend: "python"',
        "max_batch_size: 0",
        *tensor_block("input", inputs),
        *tensor_block("output", [tensor(BLENDSHAPES, "TYPE_FP32", f"-1, {NUM_BLENDSHAPES}")]),
        f"instance_group [ {{ count: {settings.offline_instances} kind: KIND_CPU }} ]",
        parameter("max_audio_seconds", settings.max_audio_seconds),
        parameter(WEIGHTS_PARAMETER, settings.weights_description()),
        "",
    ])


def _export_network(settings: "BuildSettings", version_dir: Path) -> Path:
    from emoserve.lam_a2e.network import build_network, load_official_checkpoint
    from export.onnx_export import export_onnx

    onnx_path = version_dir / "model.onnx"
    if settings.checkpoint is not None:
        network = load_official_checkpoint(settings.checkpoint, settings.profile)
    else:
        network = build_network(settings.profile, seed=settings.seed)
    spec = A2ENetworkSpec(max_batch=settings.network_max_batch)
    export_onnx(network, spec, onnx_path)
    return onnx_path


def build_lam_a2e(out: Path, settings: "BuildSettings") -> dict[str, str]:
    version_dir = out / A2E_NETWORK_MODEL / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = _export_network(settings, version_dir)
    if settings.target == "gpu":
        # the native backend replaces the python adapter on the GPU target
        (version_dir / "model.py").unlink(missing_ok=True)
        if settings.tensorrt:
            from export.tensorrt import build_a2e_plan

            build_a2e_plan(onnx_path, version_dir / "model.plan", max_batch=settings.network_max_batch)
    return {
        A2E_NETWORK_MODEL: network_config(settings),
        A2E_STREAM_MODEL: stream_config(settings),
        A2E_OFFLINE_MODEL: offline_config(settings),
    }



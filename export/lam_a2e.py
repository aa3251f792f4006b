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
)
from export.base import BaseNetworkSpec, InputProfile, Shape
from export.model_config import (
    BOOL,
    FP32,
    INT32,
    INT64,
    STRING,
    UINT64,
    ConfigRecipe,
    ModelConfig,
    add_sequence_controls,
    input_tensor,
    network_overlay,
    network_recipe,
    optional_scalars,
    output_tensor,
    python_model,
    set_instances,
    set_oldest_sequence_batching,
    set_parameters,
    set_weights,
    to_text,
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


def _network_spec(settings: BuildSettings) -> A2ENetworkSpec:
    return A2ENetworkSpec(max_batch=settings.network_max_batch)


def _network_overlay(config: ModelConfig, settings: BuildSettings, spec: A2ENetworkSpec) -> None:
    network_overlay(config, settings, spec, max_batch=settings.network_max_batch, queue_delay_us=settings.network_queue_delay_us,
                    instances=settings.network_instances, tensorrt=settings.tensorrt, weights=settings.weights_description())


def _stream_base() -> ModelConfig:
    config = python_model(
        A2E_STREAM_MODEL,
        inputs=[
            input_tensor(AUDIO, FP32, [-1], allow_ragged_batch=True),
            *optional_scalars((ID_IDX, INT32), (MOVEMENT_SMOOTH, BOOL), (BROW_MOVEMENT, BOOL), (SEED, UINT64)),
        ],
        outputs=[
            output_tensor(BLENDSHAPES, FP32, [-1, NUM_BLENDSHAPES]),
            output_tensor(FIRST_FRAME_INDEX, INT64, [1]),
            output_tensor(CHUNK_INDEX, INT64, [1]),
        ],
    )
    add_sequence_controls(config)
    # one instance: a sequence's state lives in exactly one stub process
    set_instances(config, 1)
    return config


def _stream_overlay(config: ModelConfig, settings: BuildSettings) -> None:
    set_oldest_sequence_batching(config, max_batch=settings.stream_max_batch, idle_us=int(settings.stream_idle_timeout_s * 1_000_000),
                                 candidate_sequences=settings.stream_candidate_sequences, queue_delay_us=settings.stream_queue_delay_us)
    set_weights(config, settings.weights_description())


def _offline_base() -> ModelConfig:
    return python_model(
        A2E_OFFLINE_MODEL,
        inputs=[
            input_tensor(AUDIO, FP32, [-1], optional=True),
            *optional_scalars((AUDIO_BYTES, STRING), (ID_IDX, INT32), (MOVEMENT_SMOOTH, BOOL), (BROW_MOVEMENT, BOOL),
                              (EX_VOL, BOOL), (SEED, UINT64)),
        ],
        outputs=[output_tensor(BLENDSHAPES, FP32, [-1, NUM_BLENDSHAPES])],
    )


def _offline_overlay(config: ModelConfig, settings: BuildSettings) -> None:
    set_instances(config, settings.offline_instances)
    set_parameters(config, max_audio_seconds=settings.max_audio_seconds)
    set_weights(config, settings.weights_description())


CONFIGS: dict[str, ConfigRecipe] = {
    A2E_NETWORK_MODEL: network_recipe(A2E_NETWORK_MODEL, _network_spec, _network_overlay),
    A2E_STREAM_MODEL: ConfigRecipe(_stream_base, _stream_overlay),
    A2E_OFFLINE_MODEL: ConfigRecipe(_offline_base, _offline_overlay),
}


def _config_text(model: str, settings: BuildSettings) -> str:
    from export.model_config import read_committed

    return to_text(CONFIGS[model].over(read_committed(model), settings))


def network_config(settings: BuildSettings) -> str:
    return _config_text(A2E_NETWORK_MODEL, settings)


def stream_config(settings: BuildSettings) -> str:
    return _config_text(A2E_STREAM_MODEL, settings)


def offline_config(settings: BuildSettings) -> str:
    return _config_text(A2E_OFFLINE_MODEL, settings)


def _export_network(settings: BuildSettings, version_dir: Path) -> Path:
    from emoserve.lam_a2e.network import build_network, load_official_checkpoint
    from export.onnx_export import export_onnx

    onnx_path = version_dir / "model.onnx"
    if settings.checkpoint is not None:
        network = load_official_checkpoint(settings.checkpoint, settings.profile)
    else:
        network = build_network(settings.profile, seed=settings.seed)
    export_onnx(network, _network_spec(settings), onnx_path)
    return onnx_path


def build_lam_a2e(out: Path, settings: BuildSettings) -> None:
    """Export the network (and its plan); the configs come from :data:`CONFIGS`."""
    version_dir = out / A2E_NETWORK_MODEL / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = _export_network(settings, version_dir)
    if settings.target == "gpu":
        # the native backend replaces the python adapter on the GPU target
        (version_dir / "model.py").unlink(missing_ok=True)
        if settings.tensorrt:
            from export.tensorrt import build_a2e_plan

            build_a2e_plan(onnx_path, version_dir / "model.plan", max_batch=settings.network_max_batch)



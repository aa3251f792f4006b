"""The Hallo2 part of the model repository: eight exported networks and the decoupled pipeline.

Every network is exported to ONNX from one spec (``export/spec.py``) and served by the generic ONNX
adapter on the ``cpu`` target (native ``onnxruntime_onnx`` on ``gpu``); its config's tensors are read
off the exported graph, so a config cannot disagree with its file. The ``hallo2`` pipeline model (python,
decoupled) runs the DDIM loop and calls the networks through BLS.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from emoserve.model_catalog import (
    AUDIO_BYTES,
    GUIDANCE_SCALE,
    HALLO2_AUDIO_ENCODER_MODEL,
    HALLO2_AUDIO_PROJ_MODEL,
    HALLO2_DENOISING_UNET_MODEL,
    HALLO2_FACE_LOCATOR_MODEL,
    HALLO2_IMAGE,
    HALLO2_IMAGE_PROJ_MODEL,
    HALLO2_PIPELINE_MODEL,
    HALLO2_REFERENCE_UNET_MODEL,
    HALLO2_VAE_DECODER_MODEL,
    HALLO2_VAE_ENCODER_MODEL,
    INFERENCE_STEPS,
    PROGRESS,
    RESULT_METADATA,
    SEED,
    STATUS_MESSAGE,
    USE_CACHE,
    VIDEO_MP4,
    WEIGHTS_PARAMETER,
)
from export.pbtxt import onnx_network_header, onnx_tensors, optional_scalars, parameter, tensor, tensor_block

if TYPE_CHECKING:
    from export.build_repository import BuildSettings

# BLS requests larger than a network's max batch are split by the pipeline (e.g. decoding a 16-frame clip)
NETWORK_MAX_BATCH = 8


def _networks(settings: "BuildSettings") -> dict[str, tuple]:
    """Each network model's (module, spec) pair, built with the profile's seeded demo weights."""
    from emoserve.hallo2.audio import build_audio_encoder
    from emoserve.hallo2.projections import build_projections
    from emoserve.hallo2.unet import build_denoising_unet, build_reference_unet
    from emoserve.hallo2.vae import build_vae
    from export import spec as specs

    profile, seed = settings.hallo2_profile, settings.seed
    vae = build_vae(profile, seed=seed)
    projections = build_projections(profile, seed=seed)
    return {
        HALLO2_VAE_ENCODER_MODEL: (vae.encoder_net(), specs.VaeEncoderSpec(profile=profile)),
        HALLO2_VAE_DECODER_MODEL: (vae.decoder_net(), specs.VaeDecoderSpec(profile=profile)),
        HALLO2_AUDIO_ENCODER_MODEL: (build_audio_encoder(profile, seed=seed), specs.Hallo2AudioEncoderSpec(profile=profile)),
        HALLO2_AUDIO_PROJ_MODEL: (projections.audio_proj, specs.AudioProjSpec(profile=profile)),
        HALLO2_IMAGE_PROJ_MODEL: (projections.image_proj, specs.ImageProjSpec(profile=profile)),
        HALLO2_FACE_LOCATOR_MODEL: (projections.face_locator, specs.FaceLocatorSpec(profile=profile)),
        HALLO2_REFERENCE_UNET_MODEL: (build_reference_unet(profile, seed=seed), specs.ReferenceUNetSpec(profile=profile)),
        HALLO2_DENOISING_UNET_MODEL: (build_denoising_unet(profile, seed=seed), specs.DenoisingUNetSpec(profile=profile)),
    }


def describe_weights(settings: "BuildSettings") -> str:
    return f"{settings.hallo2_profile} profile, seeded-random (seed {settings.seed}) - NOT a trained model"


def network_config(settings: "BuildSettings", name: str, onnx_path: Path, weights: str, max_batch: int = NETWORK_MAX_BATCH) -> str:
    inputs, outputs = onnx_tensors(onnx_path, reshape_per_item_scalars=settings.target == "gpu")
    return "\n".join([
        *onnx_network_header(name, settings, max_batch=max_batch, queue_delay_us=1000,
                             tensorrt=settings.tensorrt and settings.target == "gpu"),
        *tensor_block("input", inputs),
        *tensor_block("output", outputs),
        parameter(WEIGHTS_PARAMETER, weights),
        "",
    ])


def pipeline_config(settings: "BuildSettings", reference_features: int, weights: str, max_batches: dict[str, int]) -> str:
    inputs = [
        tensor(HALLO2_IMAGE, "TYPE_STRING", "1"),
        tensor(AUDIO_BYTES, "TYPE_STRING", "1"),
        *optional_scalars((GUIDANCE_SCALE, "TYPE_FP32"), (INFERENCE_STEPS, "TYPE_INT32"), (USE_CACHE, "TYPE_BOOL"), (SEED, "TYPE_UINT64")),
    ]
    outputs = [
        tensor(PROGRESS, "TYPE_FP32", "1"),
        tensor(STATUS_MESSAGE, "TYPE_STRING", "1"),
        tensor(VIDEO_MP4, "TYPE_STRING", "1"),
        tensor(RESULT_METADATA, "TYPE_STRING", "1"),
    ]
    return "\n".join([
        f'name: "{HALLO2_PIPELINE_MODEL}"',
        'backend: "python"',
        "max_batch_size: 0",
        "model_transaction_policy { decoupled: true }",
        *tensor_block("input", inputs),
        *tensor_block("output", outputs),
        f"instance_group [ {{ count: {settings.hallo2_instances} kind: KIND_CPU }} ]",
        parameter("profile", settings.hallo2_profile),
        parameter("reference_features", reference_features),
        # JSON {model: max batch}: the pipeline splits larger BLS requests
        "parameters { key: \"network_max_batch\" value: { string_value: '" + json.dumps(max_batches) + "' } }",
        parameter("max_audio_seconds", settings.hallo2_max_audio_seconds),
        parameter(WEIGHTS_PARAMETER, weights),
        "",
    ])


def build_hallo2(out: Path, settings: "BuildSettings") -> dict[str, str]:
    from export.onnx_export import export_onnx

    weights = describe_weights(settings)
    configs: dict[str, str] = {}
    max_batches: dict[str, int] = {}
    reference_features = 0
    for name, (network, spec) in _networks(settings).items():
        onnx_path = export_onnx(network.eval(), spec, out / name / "1" / "model.onnx")
        max_batch = NETWORK_MAX_BATCH
        if settings.target == "gpu":
            (onnx_path.parent / "model.py").unlink(missing_ok=True)
            if settings.tensorrt:
                from export.tensorrt import build_plan

                # the plan's profile comes from the same spec as the export; Triton may not batch past it
                build_plan(onnx_path, onnx_path.with_name("model.plan"), spec.get_input_profile(), fp16=True)
                max_batch = min(max_batch, spec.max_batch)
        configs[name] = network_config(settings, name, onnx_path, weights, max_batch)
        max_batches[name] = max_batch
        if name == HALLO2_REFERENCE_UNET_MODEL:
            reference_features = len(spec.get_output_names())
    configs[HALLO2_PIPELINE_MODEL] = pipeline_config(settings, reference_features, weights, max_batches)
    return configs

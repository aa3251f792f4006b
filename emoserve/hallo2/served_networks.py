"""The :class:`~emoserve.hallo2.pipeline.Hallo2Networks` protocol over exported networks.

One implementation, two transports: :func:`onnx_caller` runs the repository's ONNX files in this process
(the reference the tests compare Triton with), :func:`bls_caller` asks the Triton models (what the
``hallo2`` pipeline model uses, so the GPU target's native backends serve the networks there).
Batches larger than a model's ``max_batch_size`` are split, in order.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from emoserve import model_catalog as names

Caller = Callable[[str, dict[str, np.ndarray], list[str]], dict[str, np.ndarray]]

def reference_feature_names(count: int) -> list[str]:
    return [f"{names.HALLO2_REF_FEAT_PREFIX}{i}" for i in range(count)]


class ServedHallo2Networks:
    def __init__(self, call: Caller, reference_features: int):
        self.call = call
        self.reference_outputs = reference_feature_names(reference_features)

    def _one(self, model: str, inputs: dict[str, np.ndarray], output: str) -> np.ndarray:
        return self.call(model, {k: np.ascontiguousarray(v) for k, v in inputs.items()}, [output])[output]

    def encode_image(self, pixels: np.ndarray) -> np.ndarray:
        return self._one(names.HALLO2_VAE_ENCODER_MODEL, {names.HALLO2_PIXELS: pixels.astype(np.float32)}, names.HALLO2_LATENTS)

    def decode(self, latents: np.ndarray) -> np.ndarray:
        return self._one(names.HALLO2_VAE_DECODER_MODEL, {names.HALLO2_LATENTS: latents.astype(np.float32)}, names.HALLO2_PIXELS)

    def audio_features(self, audio: np.ndarray) -> np.ndarray:
        feeds = {names.HALLO2_AUDIO: audio.astype(np.float32)[None]}
        return self._one(names.HALLO2_AUDIO_ENCODER_MODEL, feeds, names.HALLO2_AUDIO_FEATURES)[0]

    def audio_tokens(self, windows: np.ndarray) -> np.ndarray:
        return self._one(names.HALLO2_AUDIO_PROJ_MODEL, {names.HALLO2_AUDIO_WINDOWS: windows.astype(np.float32)}, names.HALLO2_AUDIO_TOKENS)

    def image_tokens(self, face_embedding: np.ndarray) -> np.ndarray:
        feeds = {names.HALLO2_FACE_EMBEDDING: face_embedding.astype(np.float32)}
        return self._one(names.HALLO2_IMAGE_PROJ_MODEL, feeds, names.HALLO2_IMAGE_TOKENS)

    def face_features(self, mask: np.ndarray) -> np.ndarray:
        return self._one(names.HALLO2_FACE_LOCATOR_MODEL, {names.HALLO2_FACE_MASK: mask.astype(np.float32)}, names.HALLO2_FACE_FEATURES)

    def reference(self, ref_latents: np.ndarray, timestep: np.ndarray, image_tokens: np.ndarray) -> list:
        inputs = {
            names.HALLO2_REF_LATENTS: ref_latents.astype(np.float32),
            names.HALLO2_TIMESTEP: np.asarray(timestep, np.int64).reshape(-1),
            names.HALLO2_IMAGE_TOKENS: image_tokens.astype(np.float32),
        }
        outputs = self.call(names.HALLO2_REFERENCE_UNET_MODEL, inputs, self.reference_outputs)
        return [outputs[name] for name in self.reference_outputs]

    def denoise(self, sample, timestep, image_tokens, audio_tokens, face_features, masks: dict, ref_feats: list) -> np.ndarray:
        batch, frames = sample.shape[0], sample.shape[2]
        inputs = {
            names.HALLO2_SAMPLE: sample.astype(np.float32),
            names.HALLO2_TIMESTEP: np.asarray(timestep, np.int64).reshape(-1),
            names.HALLO2_IMAGE_TOKENS: image_tokens.astype(np.float32),
            names.HALLO2_AUDIO_TOKENS: audio_tokens.astype(np.float32),
            names.HALLO2_FACE_FEATURES: face_features.astype(np.float32),
            # with guidance the batch is [uncond, cond], and upstream's uncond half does not read the reference bank
            names.HALLO2_REF_MASK: np.array([0.0, 1.0] if batch == 2 else [1.0] * batch, np.float32),
        }
        inputs.update(denoiser_mask_inputs(masks, batch, frames))
        for name, feature in zip(self.reference_outputs, ref_feats):
            feature = np.asarray(feature, np.float32)  # [(b r), L, C], reference frames within each sample
            inputs[name] = feature.reshape(batch, feature.shape[0] // batch, *feature.shape[1:])
        return self._one(names.HALLO2_DENOISING_UNET_MODEL, inputs, names.HALLO2_MODEL_OUTPUT)


def denoiser_mask_inputs(masks: dict, batch: int, frames: int) -> dict[str, np.ndarray]:
    """The pipeline's per-frame masks ``{"full_mask": [[B*F, s*s] per resolution], ...}`` as the graph's
    per-sample ``full_mask_i`` [B, s*s] inputs (the mask is the same for every frame of a clip)."""
    inputs = {}
    for kind, per_resolution in masks.items():
        for index, mask in enumerate(per_resolution):
            mask = np.asarray(mask, np.float32)
            inputs[f"{kind}_{index}"] = mask.reshape(batch, frames, -1)[:, 0] if mask.shape[0] == batch * frames else mask
    return inputs


def onnx_caller(repository: Path, intra_op_threads: int = 0) -> Caller:
    from emoserve.onnx_runner import OnnxRunner

    runners: dict[str, OnnxRunner] = {}

    def call(model: str, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        if model not in runners:
            runners[model] = OnnxRunner(Path(repository) / model / "1" / "model.onnx", intra_op_threads)
        result = runners[model].run(inputs)
        return {name: result[name] for name in outputs}

    return call


def bls_caller(pb_utils, max_batches: dict[str, int], default_max_batch: int = 8) -> Caller:
    """Triton BLS calls; a batch over its model's max batch is sent in order as several requests."""

    def request(model: str, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        # a per-item scalar (e.g. the timestep, [batch]) is [batch, 1] to Triton
        tensors = [pb_utils.Tensor(name, np.ascontiguousarray(value.reshape(-1, 1) if value.ndim == 1 else value))
                   for name, value in inputs.items()]
        response = pb_utils.InferenceRequest(model_name=model, inputs=tensors, requested_output_names=outputs).exec()
        if response.has_error():
            raise RuntimeError(f"{model} failed: {response.error().message()}")
        return {name: pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in outputs}

    def call(model: str, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        batch = next(iter(inputs.values())).shape[0]
        max_batch = max_batches.get(model, default_max_batch)
        if batch <= max_batch:
            return request(model, inputs, outputs)
        pieces = [request(model, {k: v[i : i + max_batch] for k, v in inputs.items()}, outputs) for i in range(0, batch, max_batch)]
        return {name: np.concatenate([p[name] for p in pieces]) for name in outputs}

    return call

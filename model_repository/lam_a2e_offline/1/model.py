"""LAM-A2E whole-audio inference: raw 16 kHz PCM (``AUDIO``) or an encoded file (``AUDIO_BYTES``) in,
``[T, 52]`` blendshapes out, with upstream's offline post-processing.

The network runs once over the whole clip (through the ``lam_a2e`` model, so the GPU target's native
backend is used there); clips longer than ``max_audio_seconds`` are refused rather than risking the
quadratic attention cost.
"""

import numpy as np
import triton_python_backend_utils as pb_utils

from emoserve.audio import AudioDecodeError, AudioTooLong, decode_audio, extract_vocals
from emoserve.constants import NUM_IDENTITIES, SAMPLE_RATE
from emoserve.lam_a2e.defaults import LAM_A2E
from emoserve.lam_a2e.postprocess import PostprocessOptions, postprocess_offline
from emoserve.model_catalog import (
    A2E_NETWORK_MODEL,
    AUDIO,
    AUDIO_BYTES,
    BLENDSHAPES,
    BROW_MOVEMENT,
    EX_VOL,
    ID_IDX,
    MOVEMENT_SMOOTH,
    NETWORK_AUDIO,
    NETWORK_BLENDSHAPES,
    NETWORK_IDENTITY,
    SEED,
)
from emoserve.triton.backend import (
    bls_network,
    bytes_input,
    error_response,
    load_model_config,
    model_parameters,
    optional_input,
    scalar_input,
    typed_parameter,
)


class BadRequest(ValueError):
    pass


class TritonPythonModel:
    def initialize(self, args):
        parameters = model_parameters(load_model_config(args))
        self.max_audio_seconds = typed_parameter(parameters, "max_audio_seconds", float, LAM_A2E.max_audio_seconds)
        self.run_network = bls_network(pb_utils, A2E_NETWORK_MODEL, (NETWORK_AUDIO, NETWORK_IDENTITY), NETWORK_BLENDSHAPES)
        self.logger = pb_utils.Logger

    def _audio(self, request, vocals_only: bool) -> np.ndarray:
        encoded = bytes_input(pb_utils, request, AUDIO_BYTES)
        pcm = optional_input(pb_utils, request, AUDIO)
        if (encoded is None) == (pcm is None):
            raise BadRequest(f"send exactly one of {AUDIO} (float32 PCM at {SAMPLE_RATE} Hz) or {AUDIO_BYTES} (an encoded file)")
        if encoded is not None:
            try:
                audio = decode_audio(encoded, SAMPLE_RATE, vocals_only=vocals_only, max_seconds=self.max_audio_seconds)
            except AudioTooLong:
                raise BadRequest(f"audio is longer than the {self.max_audio_seconds:g} s limit") from None
            except AudioDecodeError as exc:
                raise BadRequest(f"invalid audio: {exc}") from None
        else:
            audio = np.asarray(pcm, dtype=np.float32).reshape(-1)
            if not np.all(np.isfinite(audio)):
                raise BadRequest("audio holds NaN or infinite samples")
            if vocals_only:
                audio = extract_vocals(audio[None], SAMPLE_RATE)
        if audio.size == 0:
            raise BadRequest("audio holds no samples")
        if audio.size < LAM_A2E.min_audio_samples:
            raise BadRequest(f"audio is too short ({audio.size} samples at {SAMPLE_RATE} Hz; at least {LAM_A2E.min_audio_samples})")
        if audio.size > self.max_audio_seconds * SAMPLE_RATE:
            raise BadRequest(f"audio is {audio.size / SAMPLE_RATE:.1f}s long; the limit is {self.max_audio_seconds:.0f}s")
        return audio

    def _infer(self, request) -> np.ndarray:
        id_idx = scalar_input(pb_utils, request, ID_IDX, int, 0)
        if not 0 <= id_idx < NUM_IDENTITIES:
            raise BadRequest(f"id_idx must be in 0..{NUM_IDENTITIES - 1}, got {id_idx}")
        audio = self._audio(request, scalar_input(pb_utils, request, EX_VOL, bool, False))
        options = PostprocessOptions(
            movement_smooth=scalar_input(pb_utils, request, MOVEMENT_SMOOTH, bool, False),
            brow_movement=scalar_input(pb_utils, request, BROW_MOVEMENT, bool, False),
        )
        seed = scalar_input(pb_utils, request, SEED, int, 0)
        expression = self.run_network(audio[None], np.array([id_idx], np.int64))[0]
        return postprocess_offline(expression, audio, options, np.random.default_rng(seed))

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                frames = self._infer(request).astype(np.float32)
            except BadRequest as exc:
                responses.append(error_response(pb_utils, str(exc)))
                continue
            except Exception as exc:
                self.logger.log_error(f"lam_a2e_offline failed: {exc!r}")
                responses.append(error_response(pb_utils, f"inference failed: {exc}", "INTERNAL"))
                continue
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(BLENDSHAPES, frames)]))
        return responses

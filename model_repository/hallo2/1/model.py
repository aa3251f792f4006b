"""Hallo2 pipeline: portrait + audio → talking-head MP4, decoupled, with progress and cancellation.

Per request: decode the image (JPG/PNG) and the audio (any format, 16 kHz mono) in memory, run
:class:`~emoserve.hallo2.pipeline.Hallo2Pipeline` — face detection and masks, audio features, the clip
loop with DDIM and classifier-free guidance — whose networks are the ``hallo2_*`` Triton models called
through BLS, and mux the frames with the input audio into an H.264/AAC MP4. Every denoising step sends
a ``PROGRESS``/``STATUS_MESSAGE`` response; the final response carries ``VIDEO_MP4`` and
``RESULT_METADATA``. A cancelled request stops between steps. Image and audio preprocessing is cached
per content hash (``USE_CACHE``).
"""

import json
import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils

from emoserve.audio import AudioDecodeError, AudioTooLong, decode_audio
from emoserve.constants import SAMPLE_RATE
from emoserve.hallo2.defaults import HALLO2
from emoserve.hallo2.pipeline import GenerationSettings, Hallo2Pipeline, PipelineCancelled
from emoserve.hallo2.profile import HALLO2_PROFILES
from emoserve.hallo2.served_networks import ServedHallo2Networks, bls_caller
from emoserve.hallo2.video import ImageDecodeError, decode_image, mux_mp4
from emoserve.model_catalog import (
    AUDIO_BYTES,
    GUIDANCE_SCALE,
    HALLO2_IMAGE,
    INFERENCE_STEPS,
    PROGRESS,
    RESULT_METADATA,
    SEED,
    STATUS_MESSAGE,
    USE_CACHE,
    VIDEO_MP4,
    WEIGHTS_PARAMETER,
)
from emoserve.triton.backend import bytes_input, error_response, load_model_config, model_parameters, scalar_input, typed_parameter

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class BadRequest(ValueError):
    pass


def _text(value: str) -> np.ndarray:
    return np.array([value.encode("utf-8")], dtype=np.object_)


class TritonPythonModel:
    def initialize(self, args):
        config = load_model_config(args)
        if not pb_utils.using_decoupled_model_transaction_policy(config):
            raise pb_utils.TritonModelException("hallo2 streams progress: its config must set decoupled: true")
        parameters = model_parameters(config)
        profile_name = typed_parameter(parameters, "profile", str, "tiny")
        if profile_name not in HALLO2_PROFILES:
            raise pb_utils.TritonModelException(f"unknown Hallo2 profile {profile_name!r}")
        self.profile = HALLO2_PROFILES[profile_name]
        self.max_audio_seconds = typed_parameter(parameters, "max_audio_seconds", float, HALLO2.max_audio_seconds)
        self.weights = parameters.get(WEIGHTS_PARAMETER, "unknown")
        networks = ServedHallo2Networks(
            bls_caller(pb_utils, json.loads(typed_parameter(parameters, "network_max_batch", str, "{}"))),
            reference_features=typed_parameter(parameters, "reference_features", int, 0),
        )
        self.pipeline = Hallo2Pipeline(networks, self.profile)
        self.lock = threading.Lock()  # the pipeline's caches are shared by this instance's requests
        self.logger = pb_utils.Logger

    def _inputs(self, request):
        image_bytes = bytes_input(pb_utils, request, HALLO2_IMAGE)
        audio_bytes = bytes_input(pb_utils, request, AUDIO_BYTES)
        if not image_bytes:
            raise BadRequest(f"{HALLO2_IMAGE} is empty: send a JPG or PNG file's bytes")
        if not audio_bytes:
            raise BadRequest(f"{AUDIO_BYTES} is empty: send an audio file's bytes")
        try:
            image = decode_image(image_bytes)
        except ImageDecodeError as exc:
            raise BadRequest(f"invalid image: {exc}") from None
        try:
            audio = decode_audio(audio_bytes, SAMPLE_RATE, max_seconds=self.max_audio_seconds)
        except AudioTooLong:
            raise BadRequest(f"audio is longer than the {self.max_audio_seconds:g} s limit") from None
        except AudioDecodeError as exc:
            raise BadRequest(f"invalid audio: {exc}") from None
        if audio.size > self.max_audio_seconds * SAMPLE_RATE:
            raise BadRequest(f"audio is {audio.size / SAMPLE_RATE:.1f}s long; the limit is {self.max_audio_seconds:.0f}s")
        defaults = GenerationSettings()
        settings = GenerationSettings(
            steps=scalar_input(pb_utils, request, INFERENCE_STEPS, int, defaults.steps),
            guidance_scale=scalar_input(pb_utils, request, GUIDANCE_SCALE, float, defaults.guidance_scale),
            seed=scalar_input(pb_utils, request, SEED, int, defaults.seed),
            use_cache=scalar_input(pb_utils, request, USE_CACHE, bool, True),
        )
        try:
            settings.validate(self.profile)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        return image, audio, settings

    def _run(self, request, sender) -> None:
        image, audio, settings = self._inputs(request)
        started = time.perf_counter()

        def progress(percent: float, message: str) -> None:
            self.logger.log_verbose(f"hallo2 progress {percent:.1f}% {message}")
            sender.send(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor(PROGRESS, np.array([percent], np.float32)),
                pb_utils.Tensor(STATUS_MESSAGE, _text(message)),
            ]))

        with self.lock:
            video = self.pipeline.run(image, audio, settings, progress=progress, cancelled=request.is_cancelled)
        mp4 = mux_mp4(video.frames, video.fps, audio, SAMPLE_RATE)
        metadata = dict(video.info, frames=int(video.frames.shape[0]), fps=video.fps, width=int(video.frames.shape[2]),
                        height=int(video.frames.shape[1]), seconds=round(time.perf_counter() - started, 3),
                        profile=self.profile.name, weights=self.weights, steps=settings.steps,
                        guidance_scale=settings.guidance_scale, use_cache=settings.use_cache)
        sender.send(pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor(PROGRESS, np.array([100.0], np.float32)),
            pb_utils.Tensor(STATUS_MESSAGE, _text("completed")),
            pb_utils.Tensor(VIDEO_MP4, np.array([mp4], dtype=np.object_)),
            pb_utils.Tensor(RESULT_METADATA, _text(json.dumps(metadata, default=str))),
        ]), flags=FINAL)

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            try:
                self._run(request, sender)
            except BadRequest as exc:
                sender.send(error_response(pb_utils, str(exc)), flags=FINAL)
            except PipelineCancelled:
                sender.send(error_response(pb_utils, "request cancelled", "CANCELLED"), flags=FINAL)
            except Exception as exc:
                self.logger.log_error(f"hallo2 pipeline failed: {exc!r}")
                sender.send(error_response(pb_utils, f"generation failed: {exc}", "INTERNAL"), flags=FINAL)
        return None

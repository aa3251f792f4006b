"""Emotion-LLaMA pipeline: video bytes + prompt in, streamed text out — BLS over the encoders and the LLM.

BLS rather than an ensemble: the steps between the networks are code (video decoding, the first-frame
preprocessing, the zero FaceMAE/VideoMAE slots, the 260-token assembly), the LLM is decoupled and its
stream must be forwarded as it arrives, and a cancelled request must stop the work in between.

Per request: decode the video in memory (first RGB frame, 16 kHz audio track; a silent second when the
video has none) → ``emotion_llama_vision`` (256 image tokens + CLS) and ``emotion_llama_audio``
(FaceMAE, VideoMAE, HuBERT feature tokens), both at once → cat(256, 3, 1) = 260 embeddings →
``emotion_llama_llm``, whose ``TEXT_DELTA`` responses are forwarded one by one; the final response adds
decode/encode timings. The video is decoded here only: the front end sends it unopened, and an undecodable
one comes back as INVALID_ARG ("invalid video: ...").

The two encoders are separate Triton models with their own processes, so their BLS calls run on two threads
and overlap (what ``async_exec`` does with its executor, without making ``execute`` a coroutine: the LLM
stream is forwarded by blocking iteration).
"""

import base64
import binascii
import json
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import triton_python_backend_utils as pb_utils

from emoserve.constants import SAMPLE_RATE
from emoserve.emotion_llama.defaults import EMOTION_LLAMA
from emoserve.emotion_llama.preprocess import preprocess_frame
from emoserve.media import VideoDecodeError, decode_video
from emoserve.model_catalog import (
    AUDIO_INPUT_VALUES,
    CLS_TOKEN,
    EMOTION_AUDIO_MODEL,
    EMOTION_LLM_MODEL,
    EMOTION_VISION_MODEL,
    FEATURE_TOKENS,
    IMAGE_TOKENS,
    INVALID_VIDEO_PREFIX,
    MAX_NEW_TOKENS,
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
from emoserve.triton.backend import bytes_input, error_response, load_model_config, model_parameters, typed_parameter

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
SAMPLING_INPUTS = (TEMPERATURE, TOP_P, REPETITION_PENALTY, MAX_NEW_TOKENS, SEED)


class PipelineError(Exception):
    def __init__(self, message: str, code=None):
        super().__init__(message)
        self.code = code if code is not None else pb_utils.TritonError.INVALID_ARG


class Cancelled(Exception):
    pass


def _bls(model: str, inputs: list, outputs: list[str]) -> dict[str, np.ndarray]:
    response = pb_utils.InferenceRequest(model_name=model, inputs=inputs, requested_output_names=outputs).exec()
    if response.has_error():
        raise PipelineError(f"{model} failed: {response.error().message()}", pb_utils.TritonError.INTERNAL)
    return {name: pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in outputs}


class TritonPythonModel:
    def initialize(self, args):
        config = load_model_config(args)
        if not pb_utils.using_decoupled_model_transaction_policy(config):
            raise pb_utils.TritonModelException("emotion_llama streams text: its config must set decoupled: true")
        parameters = model_parameters(config)
        self.max_video_bytes = typed_parameter(parameters, "max_video_bytes", int, EMOTION_LLAMA.max_video_bytes)
        # HuBERT attends over the whole track, so only its first max_audio_seconds are encoded
        self.max_audio_seconds = typed_parameter(parameters, "max_audio_seconds", float, EMOTION_LLAMA.max_audio_seconds)
        self.logger = pb_utils.Logger
        # one thread per encoder for each instance: an instance runs one request at a time
        self.encoder_calls = ThreadPoolExecutor(max_workers=2, thread_name_prefix="emotion_llama_encoder")

    def finalize(self):
        self.encoder_calls.shutdown(wait=True)

    def _multimodal(self, video: bytes) -> tuple[np.ndarray, dict]:
        timings = {}
        started = time.perf_counter()
        try:
            decoded = decode_video(video, max_audio_seconds=self.max_audio_seconds)
        except VideoDecodeError as exc:
            raise PipelineError(f"{INVALID_VIDEO_PREFIX}{exc}") from None
        pixels = preprocess_frame(decoded.first_frame)[None]
        audio = decoded.audio if decoded.audio is not None and decoded.audio.size else np.zeros(SAMPLE_RATE, np.float32)
        timings["decode_seconds"] = time.perf_counter() - started

        started = time.perf_counter()
        vision_call = self.encoder_calls.submit(
            _bls, EMOTION_VISION_MODEL, [pb_utils.Tensor(PIXEL_VALUES, pixels.astype(np.float32))], [IMAGE_TOKENS, CLS_TOKEN])
        audio_call = self.encoder_calls.submit(
            _bls, EMOTION_AUDIO_MODEL, [pb_utils.Tensor(AUDIO_INPUT_VALUES, audio[None].astype(np.float32))], [FEATURE_TOKENS])
        vision, features = vision_call.result(), audio_call.result()
        timings["encode_seconds"] = time.perf_counter() - started
        multimodal = np.concatenate([vision[IMAGE_TOKENS][0], features[FEATURE_TOKENS][0], vision[CLS_TOKEN][0]], axis=0)
        info = {"has_audio_track": decoded.audio is not None, "video_seconds": decoded.duration_s}
        return multimodal.astype(np.float32), dict(timings, **info)

    def _video(self, request) -> bytes:
        video = bytes_input(pb_utils, request, VIDEO)
        encoded = bytes_input(pb_utils, request, VIDEO_BASE64)
        if (video is None) == (encoded is None):
            raise PipelineError(f"send exactly one of {VIDEO} (the file's bytes) or {VIDEO_BASE64}")
        if encoded is not None:
            try:
                video = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                raise PipelineError(f"{VIDEO_BASE64} is not valid base64") from None
        if not video:
            raise PipelineError("the video is empty: send the video file's bytes")
        return video

    def _run(self, request, sender) -> None:
        video = self._video(request)
        prompt = bytes_input(pb_utils, request, PROMPT)
        if len(video) > self.max_video_bytes:
            raise PipelineError(f"video is {len(video)} bytes; the limit is {self.max_video_bytes}")
        if prompt is None:
            raise PipelineError(f"{PROMPT} is required")
        multimodal, info = self._multimodal(video)
        if request.is_cancelled():
            raise Cancelled()

        llm_inputs = [
            pb_utils.Tensor(MULTIMODAL_EMBEDDINGS, multimodal[None]),
            pb_utils.Tensor(PROMPT, np.array([[prompt]], dtype=np.object_)),
        ]
        for name in SAMPLING_INPUTS:  # forwarded unchanged; the LLM validates them
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is not None:
                llm_inputs.append(pb_utils.Tensor(name, tensor.as_numpy().reshape(1, -1)))
        started = time.perf_counter()
        stream = pb_utils.InferenceRequest(
            model_name=EMOTION_LLM_MODEL, inputs=llm_inputs, requested_output_names=[TEXT_DELTA, TEXT, TOKEN_IDS, RESULT_METADATA]
        ).exec(decoupled=True)
        first_token_seconds = None
        for response in stream:
            if response.has_error():  # keep the LLM's code: a bad prompt stays INVALID_ARG
                error = response.error()
                raise PipelineError(error.message(), error.code() if hasattr(error, "code") else pb_utils.TritonError.INTERNAL)
            if request.is_cancelled():
                if hasattr(stream, "cancel"):
                    stream.cancel()
                raise Cancelled()
            delta = pb_utils.get_output_tensor_by_name(response, TEXT_DELTA)
            if delta is not None:
                if first_token_seconds is None:
                    first_token_seconds = time.perf_counter() - started
                sender.send(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(TEXT_DELTA, delta.as_numpy().reshape(1))]))
                continue
            text = pb_utils.get_output_tensor_by_name(response, TEXT)
            if text is None:  # an empty closing response
                continue
            metadata = json.loads(pb_utils.get_output_tensor_by_name(response, RESULT_METADATA).as_numpy().reshape(-1)[0])
            metadata.update({key: (round(value, 4) if isinstance(value, float) else value) for key, value in info.items()})
            metadata["llm_first_token_seconds"] = None if first_token_seconds is None else round(first_token_seconds, 4)
            token_ids = pb_utils.get_output_tensor_by_name(response, TOKEN_IDS).as_numpy().reshape(-1)
            sender.send(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor(TEXT, text.as_numpy().reshape(1)),
                pb_utils.Tensor(TOKEN_IDS, token_ids.astype(np.int64)),
                pb_utils.Tensor(RESULT_METADATA, np.array([json.dumps(metadata).encode()], dtype=np.object_)),
            ]), flags=FINAL)
            return
        raise PipelineError(f"{EMOTION_LLM_MODEL} ended without a final response", pb_utils.TritonError.INTERNAL)

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            try:
                self._run(request, sender)
            except Cancelled:
                sender.send(error_response(pb_utils, "request cancelled", "CANCELLED"), flags=FINAL)
            except PipelineError as exc:
                sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc), exc.code)), flags=FINAL)
            except Exception as exc:
                self.logger.log_error(f"emotion_llama pipeline failed: {exc!r}")
                sender.send(error_response(pb_utils, f"pipeline failed: {exc}", "INTERNAL"), flags=FINAL)
        return None

"""Front-end settings and the Triton-error → HTTP mapping (no server needed)."""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
import pytest
from tritonclient.utils import InferenceServerException

from emoserve.emotion_llama.defaults import EMOTION_LLAMA
from emoserve.hallo2.defaults import HALLO2
from emoserve.lam_a2e.defaults import LAM_A2E
from frontend.config import Settings, load_settings
from frontend.errors import BadRequest, InferenceFailed, NotFound, ServiceUnavailable
from frontend.triton import map_triton_error


@pytest.fixture(autouse=True)
def no_emoserve_environment(monkeypatch):
    import os

    for name in list(os.environ):
        if name.startswith("EMOSERVE_"):
            monkeypatch.delenv(name)


def test_config_file_sets_values_and_overrides_win(tmp_path):
    config = tmp_path / "stack.env"
    config.write_text("EMOSERVE_LAM_A2E__MAX_SESSIONS=7\nEMOSERVE_API_KEY=abc\nEMOSERVE_TRITON_GRPC_URL=example:1\n")
    settings = load_settings(config, triton_grpc_url="127.0.0.1:9001")
    assert settings.lam_a2e.max_sessions == 7 and settings.api_key == "abc"
    assert settings.triton_grpc_url == "127.0.0.1:9001"


def test_nested_settings_from_the_environment(monkeypatch):
    monkeypatch.setenv("EMOSERVE_HALLO2__DATABASE_URL", "sqlite:////tmp/x.db")
    monkeypatch.setenv("EMOSERVE_HALLO2__INFERENCE_STEPS", "7")
    monkeypatch.setenv("EMOSERVE_EMOTION_LLAMA__MEDIA_ROOTS", '["/srv/a", "/srv/b"]')
    monkeypatch.setenv("EMOSERVE_LAM_A2E__MAX_UPLOAD_BYTES", "1234")
    settings = load_settings(hallo2={"poll_interval_s": 0.5})  # an override merges with the environment
    assert settings.hallo2.database_url == "sqlite:////tmp/x.db" and settings.hallo2.inference_steps == 7
    assert settings.hallo2.poll_interval_s == 0.5
    assert settings.emotion_llama.media_roots == [Path("/srv/a"), Path("/srv/b")]
    assert settings.lam_a2e.max_upload_bytes == 1234


def test_lam_a2e_replicas_and_session_key_from_the_environment(monkeypatch):
    assert Settings().lam_a2e.replica_urls("127.0.0.1:8001") == ["127.0.0.1:8001"]  # make run: the one Triton
    assert Settings().lam_a2e.session_key is None
    monkeypatch.setenv("EMOSERVE_LAM_A2E__TRITON_REPLICAS", '["triton-0.triton-headless:8001", "triton-1.triton-headless:8001"]')
    monkeypatch.setenv("EMOSERVE_LAM_A2E__SESSION_KEY", "s3cret")
    settings = load_settings()
    assert settings.lam_a2e.replica_urls(settings.triton_grpc_url) == ["triton-0.triton-headless:8001", "triton-1.triton-headless:8001"]
    assert settings.lam_a2e.session_key.get_secret_value() == "s3cret" and "s3cret" not in repr(settings)


def test_defaults_are_the_models_own():
    settings = Settings()
    assert settings.lam_a2e.max_audio_seconds == LAM_A2E.max_audio_seconds == 600.0
    assert settings.lam_a2e.max_upload_bytes == LAM_A2E.max_upload_bytes and settings.lam_a2e.max_sessions == LAM_A2E.max_sessions
    assert settings.emotion_llama.max_video_bytes == EMOTION_LLAMA.max_video_bytes == 200 * 1024 * 1024
    assert settings.emotion_llama.max_prompt_chars == EMOTION_LLAMA.max_prompt_chars == 2000
    assert (settings.hallo2.guidance_scale, settings.hallo2.inference_steps) == (HALLO2.guidance_scale, HALLO2.inference_steps) == (3.5, 40)
    assert settings.hallo2.max_upload_bytes == HALLO2.max_upload_bytes


def test_build_settings_share_the_models_defaults():
    from export.build_repository import BuildSettings

    build = BuildSettings()
    assert build.max_video_bytes == EMOTION_LLAMA.max_video_bytes  # the pipeline refuses what the front end refuses
    assert (build.max_new_tokens_limit, build.max_prompt_chars, build.emotion_audio_seconds) == (
        EMOTION_LLAMA.max_new_tokens_limit, EMOTION_LLAMA.max_prompt_chars, EMOTION_LLAMA.max_audio_seconds)
    assert build.max_audio_seconds == LAM_A2E.max_audio_seconds and build.hallo2_max_audio_seconds == HALLO2.max_audio_seconds


def test_flat_names_are_no_longer_read_and_say_so(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("EMOSERVE_HALLO2_DATABASE_URL", "sqlite:////tmp/old.db")
    config = tmp_path / "old.env"
    config.write_text("EMOSERVE_MAX_UPLOAD_BYTES=5\nEMOSERVE_MAX_HALLO2_UPLOAD_BYTES=6\n")
    with caplog.at_level(logging.WARNING, logger="frontend.config"):
        settings = load_settings(config)
    assert settings.hallo2.database_url == Settings().hallo2.database_url and settings.lam_a2e.max_upload_bytes == LAM_A2E.max_upload_bytes
    warned = caplog.text
    for old, new in (("EMOSERVE_HALLO2_DATABASE_URL", "EMOSERVE_HALLO2__DATABASE_URL"),
                     ("EMOSERVE_MAX_UPLOAD_BYTES", "EMOSERVE_LAM_A2E__MAX_UPLOAD_BYTES"),
                     ("EMOSERVE_MAX_HALLO2_UPLOAD_BYTES", "EMOSERVE_HALLO2__MAX_UPLOAD_BYTES")):
        assert f"{old} is no longer read: use {new}" in warned


def test_missing_config_file_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_settings(tmp_path / "nope.env")


def test_invalid_setting_is_refused(tmp_path):
    config = tmp_path / "bad.env"
    config.write_text("EMOSERVE_LAM_A2E__MAX_SESSIONS=0\n")
    with pytest.raises(ValueError, match="max_sessions"):
        load_settings(config)


@pytest.mark.parametrize(
    "status, message, expected, shown",
    [
        ("StatusCode.INVALID_ARGUMENT", "id_idx must be in 0..11, got 12", BadRequest, "id_idx must be in 0..11"),
        ("StatusCode.INVALID_ARGUMENT", "inference request for sequence 5 to model 'lam_a2e_stream' must specify the START flag", NotFound,
         "must specify the START flag"),
        ("StatusCode.NOT_FOUND", "sequence 5 is not active", NotFound, "sequence 5 is not active"),
        # a model the pipeline calls is not loaded (being reloaded after a dead stub): down, not failed
        ("StatusCode.INTERNAL", "inference failed: lam_a2e failed: Request for unknown model", ServiceUnavailable, "model not initialised"),
        ("StatusCode.INTERNAL", "lam_a2e failed: Model lam_a2e - Failed for execute the inference request. Model 'lam_a2e' is not ready.",
         ServiceUnavailable, "model not initialised"),
        ("StatusCode.INTERNAL", "inference failed: lam_a2e failed: the network ran out of memory", InferenceFailed, "ran out of memory"),
        # the gRPC layer's text names Triton's address: the answer says what happened, not where
        ("StatusCode.UNAVAILABLE", "failed to connect to all addresses; last error: ipv4:10.1.2.3:8001", ServiceUnavailable,
         "the inference server is unavailable"),
        ("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded", ServiceUnavailable, "the inference server did not answer in time"),
        ("StatusCode.NOT_FOUND", "Request for unknown model: 'lam_a2e_offline' is not found", ServiceUnavailable,
         "Request for unknown model"),
        ("StatusCode.UNKNOWN", "something else", InferenceFailed, "something else"),
    ],
)
def test_triton_errors_map_to_api_errors(status, message, expected, shown):
    error = map_triton_error(InferenceServerException(msg=message, status=status), "whole-audio inference")
    assert type(error) is expected
    assert shown in error.detail
    assert "10.1.2.3" not in error.detail


class _AioRpcError(grpc.RpcError):
    """What grpc.aio raises from a stream (tritonclient does not wrap stream errors)."""

    def __init__(self, code: grpc.StatusCode, details: str):
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize("code, expected", [
    (grpc.StatusCode.UNAVAILABLE, ServiceUnavailable),
    (grpc.StatusCode.DEADLINE_EXCEEDED, ServiceUnavailable),
    (grpc.StatusCode.CANCELLED, ServiceUnavailable),
    (grpc.StatusCode.INTERNAL, InferenceFailed),
    (grpc.StatusCode.INVALID_ARGUMENT, BadRequest),
])
def test_raw_grpc_errors_of_streams_are_mapped_too(code, expected):
    error = map_triton_error(_AioRpcError(code, "ipv4:127.0.0.1:8001: boom"), "Emotion-LLaMA")
    assert type(error) is expected
    if expected is ServiceUnavailable:
        assert "127.0.0.1" not in error.detail and "retry shortly" in error.detail


@pytest.mark.parametrize("message", [
    "Stub process 'lam_a2e_offline_0_0' is not healthy.",
    "network failed: lam_a2e failed: Stub process 'lam_a2e_0_0' is not healthy.",  # quoted by a BLS pipeline
])
def test_a_dead_stub_is_503_not_500(message):
    error = map_triton_error(InferenceServerException(msg=message, status="StatusCode.INTERNAL"), "whole-audio inference")
    assert type(error) is ServiceUnavailable and "retry shortly" in error.detail and "Stub process" not in error.detail


def test_503_answers_carry_retry_after_in_the_route_format():
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from frontend.errors import ERROR_FIELD_TAG, install_error_handlers

    app = FastAPI()
    install_error_handlers(app)

    @app.get("/plain")
    async def plain():
        raise ServiceUnavailable("model restarting")

    @app.get("/tagged", tags=[ERROR_FIELD_TAG])
    async def tagged():
        raise ServiceUnavailable("model restarting")

    client = TestClient(app)
    plain_answer, tagged_answer = client.get("/plain"), client.get("/tagged")
    assert plain_answer.status_code == tagged_answer.status_code == 503
    assert plain_answer.headers["retry-after"] == tagged_answer.headers["retry-after"] == str(ServiceUnavailable.retry_after_s)
    assert plain_answer.json() == {"detail": "model restarting"}
    assert tagged_answer.json() == {"error": "model restarting", "code": 503, "details": None}

"""Front-end settings and the Triton-error → HTTP mapping (no server needed)."""

from __future__ import annotations

import pytest
from tritonclient.utils import InferenceServerException

from frontend.config import load_settings
from frontend.errors import BadRequest, InferenceFailed, NotFound, ServiceUnavailable
from frontend.triton import map_triton_error


def test_config_file_sets_values_and_overrides_win(tmp_path, monkeypatch):
    monkeypatch.delenv("EMOSERVE_MAX_SESSIONS", raising=False)
    config = tmp_path / "stack.env"
    config.write_text("EMOSERVE_MAX_SESSIONS=7\nEMOSERVE_API_KEY=abc\nEMOSERVE_TRITON_GRPC_URL=example:1\n")
    settings = load_settings(config, triton_grpc_url="127.0.0.1:9001")
    assert settings.max_sessions == 7 and settings.api_key == "abc"
    assert settings.triton_grpc_url == "127.0.0.1:9001"


def test_missing_config_file_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_settings(tmp_path / "nope.env")


def test_invalid_setting_is_refused(tmp_path):
    config = tmp_path / "bad.env"
    config.write_text("EMOSERVE_MAX_SESSIONS=0\n")
    with pytest.raises(ValueError, match="max_sessions"):
        load_settings(config)


@pytest.mark.parametrize(
    "status, message, expected",
    [
        ("StatusCode.INVALID_ARGUMENT", "id_idx must be in 0..11, got 12", BadRequest),
        ("StatusCode.INVALID_ARGUMENT", "inference request for sequence 5 to model 'lam_a2e_stream' must specify the START flag", NotFound),
        ("StatusCode.NOT_FOUND", "sequence 5 is not active", NotFound),
        ("StatusCode.INTERNAL", "inference failed: lam_a2e failed: Request for unknown model", InferenceFailed),
        ("StatusCode.UNAVAILABLE", "failed to connect to all addresses", ServiceUnavailable),
        ("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded", ServiceUnavailable),
        ("StatusCode.NOT_FOUND", "Request for unknown model: 'lam_a2e_offline' is not found", ServiceUnavailable),
        ("StatusCode.UNKNOWN", "something else", InferenceFailed),
    ],
)
def test_triton_errors_map_to_api_errors(status, message, expected):
    error = map_triton_error(InferenceServerException(msg=message, status=status), "whole-audio inference")
    assert type(error) is expected
    assert message.split(":")[0] in error.detail

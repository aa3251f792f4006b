"""The decoders refuse what they cannot bound before decoding it: audio layout and length from the header (then
counted while decoding in blocks), image size from the PNG/JPEG header. Plus any bytes, truncated and corrupted files
(hypothesis): a clean ``*DecodeError``, never another exception."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st

from emoserve.audio import AudioDecodeError, AudioTooLong, decode_audio, encode_wav
from emoserve.hallo2.video import ImageDecodeError, header_size, probe_image
from tests.conftest import png_header_only, silent_flac, wav_with_header
from tests.integration.test_hallo2 import portrait_png


def test_audio_layout_outside_real_recordings_is_refused():
    with pytest.raises(AudioDecodeError, match="unsupported sample rate 1 Hz"):
        decode_audio(wav_with_header(1))
    with pytest.raises(AudioDecodeError, match="unsupported channel count 64"):
        decode_audio(wav_with_header(16000, channels=64))
    assert decode_audio(wav_with_header(8000, channels=2, samples=800)).shape == (1600,)


@pytest.mark.parametrize("fmt", ["WAV", "FLAC", "OGG"])
def test_audio_longer_than_the_limit_is_refused_and_the_limit_itself_passes(fmt):
    audio = np.zeros(16000 * 3, np.float32)
    buffer = io.BytesIO()
    sf.write(buffer, audio, 16000, format=fmt)
    with pytest.raises(AudioTooLong, match="longer than the 2 s limit"):
        decode_audio(buffer.getvalue(), max_seconds=2)
    assert decode_audio(buffer.getvalue(), max_seconds=3).size == audio.size


def test_a_header_that_understates_the_length_bounds_what_is_read():
    data = bytearray(encode_wav(np.zeros(16000 * 5, np.float32), 16000))
    # the RIFF and data sizes say 1 s; libsndfile reads what the data chunk says, and never more than the limit
    struct.pack_into("<I", data, 40, 32000)
    assert decode_audio(bytes(data), max_seconds=2).size == 16000


def test_compressed_silence_is_refused_from_its_header():
    with pytest.raises(AudioTooLong):
        decode_audio(silent_flac(700), max_seconds=600)


def test_image_size_comes_from_the_header():
    assert header_size(png_header_only(16000, 9000), "png") == (16000, 9000)
    with pytest.raises(ImageDecodeError, match="too large"):
        probe_image(png_header_only(16000, 16000))
    png = portrait_png()
    info = probe_image(png)
    assert header_size(png, "png") == (info.width, info.height)


_WAV = encode_wav(np.sin(np.arange(1600, dtype=np.float32) / 5) * 0.1, 16000)
_PNG = portrait_png()


def _only_own_errors(data: bytes) -> None:
    from emoserve.media import VideoDecodeError, probe_video

    for decode, own_error in ((lambda b: decode_audio(b, max_seconds=10), AudioDecodeError), (probe_image, ImageDecodeError),
                              (probe_video, VideoDecodeError)):
        try:
            decode(data)
        except own_error:
            pass


@settings(max_examples=150, deadline=None, derandomize=True)  # the same examples every run: CI stays reproducible
@given(st.binary(max_size=4096))
def test_any_bytes_are_decoded_or_refused_with_the_decoders_own_error(data):
    _only_own_errors(data)


@settings(max_examples=150, deadline=None, derandomize=True)  # the same examples every run: CI stays reproducible
@given(st.sampled_from([_WAV, _PNG]), st.data())
def test_truncated_and_corrupted_files_are_refused_with_the_decoders_own_error(original, data):
    cut = data.draw(st.integers(0, len(original)))
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(original) - 1), st.integers(0, 255)), max_size=8))
    corrupted = bytearray(original[:cut] if data.draw(st.booleans()) else original)
    for position, value in flips:
        if position < len(corrupted):
            corrupted[position] = value
    _only_own_errors(bytes(corrupted))


def test_a_video_whose_frames_are_over_the_picture_limit_is_refused_from_its_header(monkeypatch):
    from emoserve import media

    video = media.encode_video(np.full((3, 64, 64, 3), 90, np.uint8), 10)
    media.probe_video(video)
    monkeypatch.setattr(media, "MAX_PICTURE_PIXELS", 64 * 64 - 1)  # the check, on a video small enough to make here
    with pytest.raises(media.VideoDecodeError, match=r"too large \(64x64"):
        media.probe_video(video)

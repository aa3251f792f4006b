"""The decoders refuse what they cannot bound before decoding it: audio layout and length from the header (then
counted while decoding in blocks), image size from the PNG/JPEG header. Plus random and truncated bytes: a clean
``*DecodeError``, never another exception."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
import soundfile as sf

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


@pytest.mark.parametrize("seed", range(20))
def test_random_and_truncated_bytes_are_clean_decode_errors(seed):
    rng = np.random.default_rng(seed)
    wav, png = encode_wav(np.zeros(1600, np.float32), 16000), portrait_png()
    for data in (rng.bytes(int(rng.integers(1, 4096))), wav[: int(rng.integers(1, len(wav)))],
                 b"RIFF" + rng.bytes(60), png[: int(rng.integers(1, 64))]):
        try:
            decode_audio(data, max_seconds=10)
        except AudioDecodeError:
            pass
        try:
            probe_image(data)
        except ImageDecodeError:
            pass


def test_a_video_whose_frames_are_over_the_picture_limit_is_refused_from_its_header(monkeypatch):
    from emoserve import media

    video = media.encode_video(np.full((3, 64, 64, 3), 90, np.uint8), 10)
    media.probe_video(video)
    monkeypatch.setattr(media, "MAX_PICTURE_PIXELS", 64 * 64 - 1)  # the check, on a video small enough to make here
    with pytest.raises(media.VideoDecodeError, match=r"too large \(64x64"):
        media.probe_video(video)

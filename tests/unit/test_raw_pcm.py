"""Headerless audio: the exact rule that tells a container from raw PCM, and raw PCM decoding."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from emoserve.audio import (
    CONTAINER_SIGNATURES,
    DOCUMENTED_PCM,
    AudioDecodeError,
    AudioTooLong,
    RawPcm,
    container_format,
    decode_audio,
    decode_raw_pcm,
)
from tests.conftest import speech_like


def _encoded(audio: np.ndarray, container: str, codec: str, rate: int = 16000) -> bytes:
    import av

    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as output:
        stream = output.add_stream(codec, rate=rate)
        frame = av.AudioFrame.from_ndarray(audio[None, :].astype(np.float32), format="flt", layout="mono")
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            output.mux(packet)
    return buffer.getvalue()


def _without_id3(mp3: bytes) -> bytes:
    assert mp3[:3] == b"ID3"
    size = (mp3[6] << 21) | (mp3[7] << 14) | (mp3[8] << 7) | mp3[9]  # syncsafe
    return mp3[10 + size :]


def test_every_container_the_decoders_read_is_recognised():
    audio = speech_like(1.0, seed=1)
    for subtype_format in ("WAV", "FLAC", "OGG", "AIFF", "CAF", "AU", "W64"):
        buffer = io.BytesIO()
        sf.write(buffer, audio, 16000, format=subtype_format)
        assert container_format(buffer.getvalue()) is not None, subtype_format
    mp3 = _encoded(audio, "mp3", "mp3")
    assert container_format(mp3) == "MP3"
    assert container_format(_without_id3(mp3)) == "MPEG audio"  # untagged: two frame headers in a row
    assert container_format(_encoded(audio, "adts", "aac")) == "MPEG audio"
    assert container_format(_encoded(audio, "mp4", "aac")) == "MP4/M4A"
    assert decode_audio(_without_id3(mp3), headerless=DOCUMENTED_PCM).size > 12000  # decoded as MP3, not as samples


def test_raw_samples_are_not_taken_for_a_container():
    # -1 (FF FF) is an MPEG sync word: one header alone must not make samples an MP3
    for samples in (np.full(16000, -1, np.int16), np.zeros(16000, np.int16), (speech_like(1.0, seed=2) * 32767).astype(np.int16)):
        assert container_format(samples.astype("<i2").tobytes()) is None
    rng = np.random.default_rng(0)
    noise = [rng.integers(-32768, 32767, 8000, dtype=np.int16).tobytes() for _ in range(200)]
    assert sum(container_format(block) is not None for block in noise) == 0
    assert all(len(magic) >= 3 for _, magic, _ in CONTAINER_SIGNATURES)


def test_documented_pcm_decodes_like_the_same_samples_in_a_wav():
    samples = (speech_like(1.0, seed=3) * 20000).astype(np.int16)
    wav = io.BytesIO()
    sf.write(wav, samples, 16000, format="WAV", subtype="PCM_16")
    raw = decode_audio(samples.astype("<i2").tobytes(), headerless=DOCUMENTED_PCM)
    np.testing.assert_array_equal(raw, decode_audio(wav.getvalue()))
    np.testing.assert_array_equal(raw, samples / np.float32(32768))


@pytest.mark.parametrize("encoding, dtype, scale, offset", [
    ("s16be", ">i2", 32768, 0), ("s32le", "<i4", 2**31, 0), ("f32le", "<f4", 1, 0), ("u8", "u1", 128, 128)])
def test_declared_raw_layouts(encoding, dtype, scale, offset):
    signal = speech_like(0.5, seed=4, sample_rate=48000) * 0.5
    stereo = np.stack([signal, -signal], axis=1)
    data = (stereo * scale + offset).astype(dtype).tobytes()
    channels, rate = decode_raw_pcm(data, RawPcm(encoding, 48000, 2))
    assert rate == 48000 and channels.shape == (2, signal.size)
    np.testing.assert_allclose(channels[0], signal, atol=2 / scale + 1e-6)
    np.testing.assert_allclose(channels[1], -signal, atol=2 / scale + 1e-6)
    mono = decode_audio(data, headerless=RawPcm(encoding, 48000, 2))
    assert mono.size == signal.size // 3  # resampled to 16 kHz and mixed down


def test_raw_pcm_errors_name_the_problem():
    with pytest.raises(AudioDecodeError, match="whole number of 2-byte sample frames"):
        decode_audio(b"\x00" * 16001, headerless=DOCUMENTED_PCM)
    with pytest.raises(AudioDecodeError, match="4-byte sample frames"):
        decode_audio(b"\x00" * 16002, headerless=RawPcm("s16le", 16000, 2))
    with pytest.raises(AudioDecodeError, match="empty"):
        decode_audio(b"", headerless=DOCUMENTED_PCM)
    with pytest.raises(AudioDecodeError, match="sample rate"):
        decode_audio(b"\x00" * 200, headerless=RawPcm("s16le", 100, 1))
    with pytest.raises(AudioTooLong):  # from the byte count, before anything is converted
        decode_audio(b"\x00" * (2 * 16000 * 3), max_seconds=2, headerless=DOCUMENTED_PCM)
    with pytest.raises(AudioDecodeError):  # without a headerless format, bytes must be a container
        decode_audio(np.zeros(1600, np.int16).tobytes())

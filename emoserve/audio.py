"""Audio decoding and vocal extraction, entirely in memory (no temp files, safe under concurrency).

``decode_audio`` accepts WAV/FLAC/OGG/MP3 through libsndfile and anything else FFmpeg reads (M4A/AAC,
Opus, ...) through PyAV, at any sample rate and channel count, and returns float32 at 16 kHz. Callers that take
headerless audio (LAM-A2E's routes: the documented microphone client posts bare 16-bit samples) pass a
:class:`RawPcm` format: bytes that start with none of :data:`CONTAINER_SIGNATURES` (and are no MPEG/ADTS frame
stream, see :func:`container_format`) are then read as those samples.

``extract_vocals`` is what ``ex_vol=true`` does here. Upstream shells out to spleeter, which is not
installed there either, so upstream's flag silently does nothing. We do a deterministic DSP vocal
extraction instead:

1. centre-channel extraction for multi-channel input: lead vocals are mixed to the centre, so the
   mid signal's STFT magnitude is reduced by the side signal's (wide instruments, reverb);
2. a speech-band mask (80 Hz – 7.6 kHz) that removes rumble and hiss;
3. spectral gating: per frequency bin, a noise floor is estimated as a low percentile of that bin over
   time, and bins that do not rise clearly above it (stationary music beds, hum, noise) are attenuated.

It is no source-separation network, but it measurably lowers steady accompaniment and noise relative to
speech (see the unit tests), which is what the expression network is sensitive to.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from scipy import signal as sps

from emoserve.constants import SAMPLE_RATE


class AudioDecodeError(ValueError):
    """The bytes are empty, not audio, or audio with no samples."""


class AudioTooLong(AudioDecodeError):
    """The audio is longer than the caller's limit (found from the header or while decoding, never after)."""


# what a real recording can have; a header outside these is refused before anything is decoded (a 2 KB WAV that
# says 1 Hz would otherwise be resampled to a 16 kHz signal 16000 times its size)
MIN_SOURCE_RATE = 4000
MAX_SOURCE_RATE = 384000
MAX_CHANNELS = 8
_BLOCK_FRAMES = 1 << 16


def _check_layout(rate: int, channels: int) -> None:
    if not MIN_SOURCE_RATE <= rate <= MAX_SOURCE_RATE:
        raise AudioDecodeError(f"unsupported sample rate {rate} Hz (supported: {MIN_SOURCE_RATE}-{MAX_SOURCE_RATE} Hz)")
    if not 1 <= channels <= MAX_CHANNELS:
        raise AudioDecodeError(f"unsupported channel count {channels} (supported: 1-{MAX_CHANNELS})")


def _too_long(max_seconds: float) -> AudioTooLong:
    return AudioTooLong(f"the audio is longer than the {max_seconds:g} s limit")


def _decode_with_soundfile(data: bytes, max_seconds: float | None) -> tuple[np.ndarray, int] | None:
    import soundfile as sf

    try:
        source = sf.SoundFile(io.BytesIO(data))
    except Exception:  # libsndfile says "format not recognised" in several exception types
        return None
    with source:
        rate, channels = int(source.samplerate), int(source.channels)
        _check_layout(rate, channels)
        limit = None if max_seconds is None else int(max_seconds * rate)
        if limit is not None and source.frames > limit:  # the header's length: nothing decoded yet
            raise _too_long(max_seconds)
        blocks, total = [], 0
        try:
            # in blocks, so that a header that understates the length still stops at the limit
            while block := len(chunk := source.read(_BLOCK_FRAMES, dtype="float32", always_2d=True)):
                total += block
                if limit is not None and total > limit:
                    raise _too_long(max_seconds)
                blocks.append(chunk)
        except AudioDecodeError:
            raise
        except Exception as exc:  # a truncated or corrupt body after a valid header
            raise AudioDecodeError(f"the audio cannot be decoded ({type(exc).__name__})") from None
    audio = np.concatenate(blocks) if blocks else np.zeros((0, channels), np.float32)
    return audio.T, rate


def _decode_with_pyav(data: bytes, max_seconds: float | None) -> tuple[np.ndarray, int]:
    import av

    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                raise AudioDecodeError("the file has no audio stream")
            stream = container.streams.audio[0]
            rate = stream.codec_context.sample_rate or stream.rate or 0
            channels = stream.codec_context.channels or 1
            _check_layout(int(rate), int(channels))
            if max_seconds is not None and container.duration is not None and container.duration / 1e6 > max_seconds + 1:
                raise _too_long(max_seconds)
            limit = None if max_seconds is None else int(max_seconds * rate)
            resampler = av.AudioResampler(format="fltp", layout="stereo" if channels > 1 else "mono", rate=rate)
            pieces, total = [], 0
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    pieces.append(out.to_ndarray())
                    total += pieces[-1].shape[1]
                if limit is not None and total > limit:
                    raise _too_long(max_seconds)
            for out in resampler.resample(None):
                pieces.append(out.to_ndarray())
    except AudioDecodeError:
        raise
    except Exception as exc:  # PyAV raises a family of FFmpeg errors for garbage input
        raise AudioDecodeError(f"not a supported audio file ({type(exc).__name__})") from None
    if not pieces:
        raise AudioDecodeError("the audio stream holds no samples")
    return np.concatenate(pieces, axis=1).astype(np.float32), int(rate)


# (offset, bytes, name) of every container the decoders above read; the exact rule that tells a file from raw PCM
CONTAINER_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"RIFF", "WAV"), (0, b"RIFX", "WAV"), (0, b"RF64", "WAV"), (0, b"riff", "Wave64"),
    (0, b"FORM", "AIFF"), (0, b"fLaC", "FLAC"), (0, b"OggS", "Ogg"), (0, b"caff", "CAF"), (0, b".snd", "AU"),
    (0, b"ID3", "MP3"), (4, b"ftyp", "MP4/M4A"), (0, b"\x1a\x45\xdf\xa3", "Matroska/WebM"), (0, b"#!AMR", "AMR"),
    (0, b"\x30\x26\xb2\x75\x8e\x66\xcf\x11", "ASF/WMA"),
)

# MPEG-1/2/2.5 audio bit rates (kbit/s) by [MPEG-1?][layer I, II, III][index]
_MPEG_BITRATES = {
    (True, 3): (0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (True, 2): (0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (True, 1): (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (False, 3): (0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (False, 2): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (False, 1): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_MPEG_SAMPLE_RATES = (44100, 48000, 32000)


def _frame_length(header: bytes) -> int | None:
    """Length of the MPEG audio or ADTS frame that starts with ``header``, None when it is no valid frame header."""
    if len(header) < 7 or header[0] != 0xFF or header[1] & 0xE0 != 0xE0:
        return None
    version, layer = (header[1] >> 3) & 3, (header[1] >> 1) & 3
    if layer == 0:  # ADTS (AAC): 12 sync bits, 13-bit frame length
        if header[1] & 0xF0 != 0xF0:
            return None
        length = ((header[3] & 3) << 11) | (header[4] << 3) | (header[5] >> 5)
        return length if length >= 7 else None
    bitrate_index, rate_index, padding = header[2] >> 4, (header[2] >> 2) & 3, (header[2] >> 1) & 1
    if version == 1 or bitrate_index in (0, 15) or rate_index == 3:
        return None
    mpeg1 = version == 3
    bitrate = _MPEG_BITRATES[(mpeg1, layer)][bitrate_index] * 1000
    rate = _MPEG_SAMPLE_RATES[rate_index] >> (0 if mpeg1 else 1 if version == 2 else 2)
    if layer == 3:  # layer I: 4-byte slots
        return (12 * bitrate // rate + padding) * 4
    return (144 if mpeg1 or layer == 2 else 72) * bitrate // rate + padding


def container_format(data: bytes) -> str | None:
    """The container ``data`` starts with, or None: then it is raw PCM to a caller that accepts it.

    A signature at its offset (:data:`CONTAINER_SIGNATURES`), or an untagged MPEG audio / ADTS stream: a valid
    frame header at byte 0 and the next one right after that frame (one header alone is too likely in raw
    samples: the 16-bit value -1 is the bytes of an MPEG sync word)."""
    for offset, magic, name in CONTAINER_SIGNATURES:
        if data[offset : offset + len(magic)] == magic:
            return name
    length = _frame_length(data[:7])
    if length is not None and (length == len(data) or _frame_length(data[length : length + 7]) is not None):
        return "MPEG audio"
    return None


# sample layouts a raw upload may declare (numpy dtype, offset, full scale)
RAW_ENCODINGS: dict[str, tuple[str, float, float]] = {
    "s16le": ("<i2", 0.0, 32768.0),
    "s16be": (">i2", 0.0, 32768.0),
    "s32le": ("<i4", 0.0, 2147483648.0),
    "f32le": ("<f4", 0.0, 1.0),
    "u8": ("u1", 128.0, 128.0),
}


@dataclass(frozen=True)
class RawPcm:
    """Headerless interleaved samples; the default is what the LAM-A2E document's microphone client sends."""

    encoding: str = "s16le"
    sample_rate: int = SAMPLE_RATE
    channels: int = 1

    def describe(self) -> str:
        layout = "mono" if self.channels == 1 else f"{self.channels} channels"
        return f"{self.encoding}, {self.sample_rate} Hz, {layout}"


DOCUMENTED_PCM = RawPcm()


def decode_raw_pcm(data: bytes, pcm: RawPcm, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """float32 ``[channels, samples]`` at the format's own rate; the length is known before anything is converted."""
    if pcm.encoding not in RAW_ENCODINGS:
        raise AudioDecodeError(f"unknown raw PCM encoding {pcm.encoding!r} (known: {', '.join(RAW_ENCODINGS)})")
    _check_layout(pcm.sample_rate, pcm.channels)
    dtype, offset, scale = RAW_ENCODINGS[pcm.encoding]
    frame_bytes = np.dtype(dtype).itemsize * pcm.channels
    if len(data) % frame_bytes:
        raise AudioDecodeError(f"{len(data)} bytes of raw PCM ({pcm.describe()}) are not a whole number of "
                               f"{frame_bytes}-byte sample frames")
    if max_seconds is not None and len(data) // frame_bytes > max_seconds * pcm.sample_rate:
        raise _too_long(max_seconds)
    samples = (np.frombuffer(data, dtype=dtype).astype(np.float32) - offset) / scale
    return samples.reshape(-1, pcm.channels).T, pcm.sample_rate


def decode_audio_channels(data: bytes, sample_rate: int = SAMPLE_RATE, max_seconds: float | None = None,
                          headerless: RawPcm | None = None) -> np.ndarray:
    """Decode any supported container to float32 ``[channels, samples]`` at ``sample_rate``; :class:`AudioTooLong`
    past ``max_seconds``, found from the header or while decoding (memory stays bounded by the limit).

    With ``headerless``, bytes in no known container (:func:`container_format`) are raw PCM in that format."""
    if not data:
        raise AudioDecodeError("the audio file is empty")
    if headerless is not None and container_format(data) is None:
        audio, rate = decode_raw_pcm(data, headerless, max_seconds)
    else:
        decoded = _decode_with_soundfile(data, max_seconds)
        audio, rate = decoded if decoded is not None else _decode_with_pyav(data, max_seconds)
    if audio.shape[1] == 0:
        raise AudioDecodeError("the audio file holds no samples")
    if not np.all(np.isfinite(audio)):
        raise AudioDecodeError("the audio holds NaN or infinite samples")
    return resample(audio, rate, sample_rate)


def decode_audio(data: bytes, sample_rate: int = SAMPLE_RATE, vocals_only: bool = False, max_seconds: float | None = None,
                 headerless: RawPcm | None = None) -> np.ndarray:
    """Decode to mono float32 at ``sample_rate``; ``vocals_only`` applies :func:`extract_vocals`."""
    channels = decode_audio_channels(data, sample_rate, max_seconds, headerless)
    if vocals_only:
        return extract_vocals(channels, sample_rate)
    return channels.mean(axis=0).astype(np.float32)


def resample(audio: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    if source_rate <= 0:
        raise AudioDecodeError(f"invalid sample rate {source_rate}")
    if source_rate == target_rate:
        return np.ascontiguousarray(audio, dtype=np.float32)
    divisor = math.gcd(source_rate, target_rate)
    return sps.resample_poly(audio, target_rate // divisor, source_rate // divisor, axis=-1).astype(np.float32)


def encode_wav(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """16-bit PCM WAV bytes (for examples, tests and clients)."""
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, np.asarray(audio, dtype=np.float32), sample_rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


_VOCAL_BAND_HZ = (80.0, 7600.0)
_NOISE_FLOOR_PERCENTILE = 20.0
_GATE_MARGIN = 2.0


def extract_vocals(channels: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Mono vocal estimate of ``[channels, samples]`` audio (see the module docstring)."""
    channels = np.atleast_2d(np.asarray(channels, dtype=np.float32))
    num_samples = channels.shape[1]
    nperseg = 512
    if num_samples < nperseg:
        return channels.mean(axis=0).astype(np.float32)
    mid = channels.mean(axis=0)
    freqs, _, mid_spec = sps.stft(mid, fs=sample_rate, nperseg=nperseg, noverlap=nperseg * 3 // 4)
    magnitude = np.abs(mid_spec)
    if channels.shape[0] > 1:
        side = (channels[0] - channels[1]) / 2.0
        _, _, side_spec = sps.stft(side, fs=sample_rate, nperseg=nperseg, noverlap=nperseg * 3 // 4)
        magnitude = np.maximum(magnitude - np.abs(side_spec), 0.0)
    band = ((freqs >= _VOCAL_BAND_HZ[0]) & (freqs <= _VOCAL_BAND_HZ[1])).astype(np.float32)[:, None]
    floor = np.percentile(magnitude, _NOISE_FLOOR_PERCENTILE, axis=1, keepdims=True)
    gate = np.clip((magnitude - _GATE_MARGIN * floor) / np.maximum(magnitude, 1e-8), 0.0, 1.0)
    mask = band * gate * (magnitude / np.maximum(np.abs(mid_spec), 1e-8)).clip(0.0, 1.0)
    _, vocals = sps.istft(mid_spec * mask, fs=sample_rate, nperseg=nperseg, noverlap=nperseg * 3 // 4)
    vocals = vocals[:num_samples]
    if vocals.shape[0] < num_samples:
        vocals = np.pad(vocals, (0, num_samples - vocals.shape[0]))
    return vocals.astype(np.float32)

"""Video decoding for Emotion-LLaMA, in memory (no temp files, nothing shared between requests).

What upstream's demo takes from a video: its FIRST RGB frame (for the vision encoder) and its audio
track as 16 kHz mono (for HuBERT). Upstream extracts the audio into one fixed ``audio.wav`` with ffmpeg,
so concurrent requests overwrite each other's audio; here both come straight out of PyAV.

A video without an audio track is accepted: its audio is ``None`` and the pipeline feeds the audio slot
one second of silence, which is what HuBERT would see for a silent track (documented in the README).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from emoserve.audio import AudioDecodeError, resample
from emoserve.constants import SAMPLE_RATE

# the largest picture decoded anywhere (a video's first frame, Hallo2's portrait), checked from the header before
# FFmpeg allocates it: ~6300 x 6300
MAX_PICTURE_PIXELS = 40_000_000


class VideoDecodeError(ValueError):
    """The bytes are empty, not a video, or a video without a decodable frame."""


@dataclass
class DecodedVideo:
    first_frame: np.ndarray  # uint8 [H, W, 3] RGB
    audio: np.ndarray | None  # float32 [samples] mono at SAMPLE_RATE, None without an audio track
    duration_s: float | None


def _first_frame(container) -> np.ndarray:
    stream = container.streams.video[0]
    for frame in container.decode(stream):
        return frame.to_ndarray(format="rgb24")
    raise VideoDecodeError("the video stream holds no decodable frame")


def _audio_track(container, max_seconds: float | None) -> np.ndarray | None:
    import av

    if not container.streams.audio:
        return None
    stream = container.streams.audio[0]
    rate = stream.codec_context.sample_rate or stream.rate or SAMPLE_RATE
    resampler = av.AudioResampler(format="fltp", layout="mono", rate=rate)
    pieces, total = [], 0
    limit = None if max_seconds is None else int(max_seconds * rate)
    for frame in container.decode(stream):
        for out in resampler.resample(frame):
            pieces.append(out.to_ndarray()[0])
            total += pieces[-1].size
        if limit is not None and total >= limit:
            break
    if not pieces:
        return None
    audio = np.concatenate(pieces).astype(np.float32)
    if limit is not None:
        audio = audio[:limit]
    return resample(audio, int(rate), SAMPLE_RATE)


def _open_first_frame(data: bytes) -> tuple[np.ndarray, float | None]:
    import av

    if not data:
        raise VideoDecodeError("the video file is empty")
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise VideoDecodeError("the file has no video stream")
            stream = container.streams.video[0]
            width, height = stream.codec_context.width or 0, stream.codec_context.height or 0
            if width * height > MAX_PICTURE_PIXELS:
                raise VideoDecodeError(f"the video's frames are too large ({width}x{height} > {MAX_PICTURE_PIXELS} pixels)")
            duration = float(container.duration / av.time_base) if container.duration else None
            return _first_frame(container), duration
    except VideoDecodeError:
        raise
    except Exception as exc:  # PyAV raises a family of FFmpeg errors for garbage input
        raise VideoDecodeError(f"not a supported video file ({type(exc).__name__})") from None


def probe_video(data: bytes) -> None:
    """Raise :class:`VideoDecodeError` unless the bytes are a video whose first frame decodes."""
    _open_first_frame(data)


def decode_video(data: bytes, max_audio_seconds: float | None = 600.0) -> DecodedVideo:
    """First RGB frame and 16 kHz mono audio of an encoded video (MP4/AVI/MOV/MKV/WebM ...)."""
    import av

    frame, duration = _open_first_frame(data)
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            audio = _audio_track(container, max_audio_seconds)
    except AudioDecodeError:
        raise
    except Exception as exc:
        raise VideoDecodeError(f"the audio track cannot be decoded ({type(exc).__name__}: {exc})") from None
    return DecodedVideo(first_frame=frame, audio=audio, duration_s=duration)


# x264's SIMD paths make a different bitstream from run to run for frames this small (64x64: 4 distinct
# encodings in 12 runs, decoded frames up to 66 grey levels apart; 128x128 and up: identical in every run);
# its C paths are reproducible and cost nothing at such sizes
X264_SIMD_MIN_SIDE = 128


def _x264_options(height: int, width: int) -> dict[str, str]:
    return {"x264-params": "asm=0"} if min(height, width) < X264_SIMD_MIN_SIDE else {}


def encode_video(frames: np.ndarray, fps: int, audio: np.ndarray | None = None, sample_rate: int = SAMPLE_RATE) -> bytes:
    """H.264 MP4 (with an AAC track when ``audio`` is given) from uint8 ``[T, H, W, 3]`` RGB frames."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        video = container.add_stream("libx264", rate=fps, options=_x264_options(frames.shape[1], frames.shape[2]))
        video.height, video.width = frames.shape[1], frames.shape[2]
        video.pix_fmt = "yuv420p"
        sound = container.add_stream("aac", rate=sample_rate) if audio is not None else None
        for rgb in frames:
            for packet in video.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")):
                container.mux(packet)
        for packet in video.encode(None):
            container.mux(packet)
        if sound is not None:
            samples = av.AudioFrame.from_ndarray(np.asarray(audio, np.float32)[None], format="fltp", layout="mono")
            samples.sample_rate = sample_rate
            for packet in sound.encode(samples):
                container.mux(packet)
            for packet in sound.encode(None):
                container.mux(packet)
    return buffer.getvalue()

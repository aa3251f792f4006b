"""Hallo2 media I/O, in memory: reference-image decoding (JPEG/PNG, by content, with PyAV) and MP4 muxing.

No Pillow: PyAV's ``png_pipe``/``jpeg_pipe`` demuxers and FFmpeg's decoders read the image.  Like
upstream's ``Image.open(...).convert("RGB")`` an alpha channel is dropped (not composited) and the EXIF
orientation is not applied.  MP4 muxing reuses :func:`emoserve.media.encode_video` (H.264 + AAC).
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import numpy as np

from emoserve.media import MAX_PICTURE_PIXELS, encode_video

__all__ = ["MAX_IMAGE_PIXELS", "ImageDecodeError", "ImageInfo", "decode_image", "mux_mp4", "probe_image"]

MAX_IMAGE_PIXELS = MAX_PICTURE_PIXELS  # the portrait: the one picture limit (decompression bombs)
MIN_IMAGE_SIDE = 8
_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class ImageDecodeError(ValueError):
    """The bytes are empty, not a JPEG/PNG image, or an image that cannot be decoded."""


@dataclass(frozen=True)
class ImageInfo:
    format: str  # "jpeg" | "png"
    width: int
    height: int


def _sniff(data: bytes) -> str:
    if not data:
        raise ImageDecodeError("the image file is empty")
    if data.startswith(_JPEG_MAGIC):
        return "jpeg"
    if data.startswith(_PNG_MAGIC):
        return "png"
    raise ImageDecodeError("only JPG and PNG images are accepted (checked by content)")


# JPEG start-of-frame markers (they carry the picture's size): C0-CF except DHT (C4), JPG (C8) and DAC (CC)
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def header_size(data: bytes, kind: str) -> tuple[int, int]:
    """(width, height) from the PNG IHDR chunk or the JPEG start-of-frame segment, without decoding anything."""
    if kind == "png":
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise ImageDecodeError("the PNG image cannot be decoded (it has no IHDR header)")
        return struct.unpack(">II", data[16:24])
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            break
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            position += 2
            continue
        if marker in _JPEG_SOF:
            if position + 9 > len(data):
                break
            height, width = struct.unpack(">HH", data[position + 5 : position + 9])
            return width, height
        position += 2 + struct.unpack(">H", data[position + 2 : position + 4])[0]
    raise ImageDecodeError("the JPEG image cannot be decoded (it has no frame header)")


def _decode(data: bytes) -> tuple[str, np.ndarray]:
    import av

    kind = _sniff(data)
    width, height = header_size(data, kind)
    if width * height > MAX_IMAGE_PIXELS:  # a decompression bomb is refused before FFmpeg allocates anything
        raise ImageDecodeError(f"the image is too large ({width}x{height} > {MAX_IMAGE_PIXELS} pixels)")
    if min(width, height) < MIN_IMAGE_SIDE:
        raise ImageDecodeError(f"the image is too small ({width}x{height}; at least {MIN_IMAGE_SIDE} px a side)")
    demuxer = "jpeg_pipe" if kind == "jpeg" else "png_pipe"
    try:
        with av.open(io.BytesIO(data), mode="r", format=demuxer) as container:
            if not container.streams.video:
                raise ImageDecodeError("the file holds no image")
            stream = container.streams.video[0]
            w, h = stream.codec_context.width, stream.codec_context.height
            if w and h and w * h > MAX_IMAGE_PIXELS:
                raise ImageDecodeError(f"the image is too large ({w}x{h} > {MAX_IMAGE_PIXELS} pixels)")
            for frame in container.decode(stream):
                if frame.width * frame.height > MAX_IMAGE_PIXELS:
                    raise ImageDecodeError(f"the image is too large ({frame.width}x{frame.height})")
                rgb = frame.to_ndarray(format="rgb24")
                break
            else:
                raise ImageDecodeError("the image holds no decodable picture")
    except ImageDecodeError:
        raise
    except Exception as exc:  # FFmpeg errors for truncated / corrupt data
        raise ImageDecodeError(f"the {kind.upper()} image cannot be decoded ({type(exc).__name__})") from None
    if min(rgb.shape[:2]) < MIN_IMAGE_SIDE:
        raise ImageDecodeError(f"the image is too small ({rgb.shape[1]}x{rgb.shape[0]}; at least {MIN_IMAGE_SIDE} px a side)")
    return kind, np.ascontiguousarray(rgb)


def probe_image(data: bytes) -> ImageInfo:
    """Validate JPEG/PNG bytes by content and decoding; returns format and size, or raises ImageDecodeError."""
    kind, rgb = _decode(data)
    return ImageInfo(format=kind, width=int(rgb.shape[1]), height=int(rgb.shape[0]))


def decode_image(data: bytes) -> np.ndarray:
    """JPEG/PNG bytes -> RGB uint8 ``[H, W, 3]``."""
    return _decode(data)[1]


def mux_mp4(frames: np.ndarray, fps: int, audio: np.ndarray | None = None, sample_rate: int = 16000) -> bytes:
    """H.264 (+ AAC) MP4 bytes from uint8 ``[N, H, W, 3]`` frames.

    The audio is cut (or zero-padded) to the video's duration ``N / fps`` -- upstream cuts the driving
    audio to each clip's length (``AudioFileClip.subclip``); odd frame sizes are edge-padded to even
    (yuv420p needs even sides)."""
    video = np.asarray(frames)
    if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8 or video.shape[0] == 0:
        raise ValueError(f"expected uint8 [N, H, W, 3] frames with N > 0, got {video.dtype} {video.shape}")
    if int(fps) <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    pad_h, pad_w = video.shape[1] % 2, video.shape[2] % 2
    if pad_h or pad_w:
        video = np.pad(video, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    track = None
    if audio is not None:
        track = np.asarray(audio, np.float32).reshape(-1)
        want = int(round(video.shape[0] / fps * sample_rate))
        track = track[:want] if track.size >= want else np.pad(track, (0, want - track.size))
        track = np.clip(track, -1.0, 1.0)
    return encode_video(video, int(fps), track, int(sample_rate))

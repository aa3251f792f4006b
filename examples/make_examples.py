"""Regenerate the example media (needs Debian's espeak-ng and sox; the outputs are committed).

    python examples/make_examples.py

* ``speech.wav``: 7 s of synthetic English speech, 16 kHz mono 16-bit PCM.
* ``portrait.png``: the same drawn face, mouth nearly closed (the Hallo2 examples' source image).
* ``sample_emotion.mp4``: 4 s, 320×320 H.264 at 25 fps with an AAC track of synthetic speech; a drawn
  cartoon face whose mouth opens with the speech envelope. No recorded person: free to use.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import numpy as np

from emoserve.audio import decode_audio, encode_wav
from emoserve.media import encode_video

HERE = Path(__file__).resolve().parent
SPEECH_SENTENCE = "Hello! I am so happy to see you today. This is a short test of the audio to expression service."
VIDEO_SENTENCE = "I can't believe it! We actually won the prize!"
VIDEO_FPS = 25
VIDEO_SIZE = 320


def speak(text: str, speed: int = 150) -> np.ndarray:
    with tempfile.TemporaryDirectory() as folder:
        raw = Path(folder) / "speech.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", str(speed), "-w", str(raw), text], check=True)
        return decode_audio(raw.read_bytes())


def draw_face(mouth_open: float) -> np.ndarray:
    size = VIDEO_SIZE
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    frame = np.empty((size, size, 3), np.uint8)
    frame[:] = (70, 110, 160)  # background
    centre = size / 2
    face = ((x - centre) / 110) ** 2 + ((y - centre) / 135) ** 2 <= 1
    frame[face] = (236, 196, 160)
    for eye_x in (centre - 42, centre + 42):
        frame[((x - eye_x) / 14) ** 2 + ((y - (centre - 35)) / 9) ** 2 <= 1] = (40, 30, 30)
        brow = (np.abs(y - (centre - 62) + 0.25 * np.abs(x - eye_x)) < 3) & (np.abs(x - eye_x) < 22)
        frame[brow] = (60, 40, 30)
    mouth_height = 6 + 30 * mouth_open
    frame[((x - centre) / 38) ** 2 + ((y - (centre + 55)) / mouth_height) ** 2 <= 1] = (150, 40, 50)
    return frame


def png_bytes(rgb: np.ndarray) -> bytes:
    import av

    codec = av.CodecContext.create("png", "w")
    codec.width, codec.height, codec.pix_fmt = rgb.shape[1], rgb.shape[0], "rgb24"
    packets = codec.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")) + codec.encode(None)
    return b"".join(bytes(packet) for packet in packets)


def make_video() -> bytes:
    audio = speak(VIDEO_SENTENCE)
    seconds = len(audio) / 16000
    frames = int(np.ceil(seconds * VIDEO_FPS))
    hop = 16000 // VIDEO_FPS
    envelope = np.array([np.sqrt(np.mean(audio[i * hop : (i + 1) * hop] ** 2)) if i * hop < len(audio) else 0.0 for i in range(frames)])
    envelope = np.clip(envelope / max(envelope.max(), 1e-6), 0, 1)
    return encode_video(np.stack([draw_face(level) for level in envelope]), VIDEO_FPS, audio)


if __name__ == "__main__":
    (HERE / "speech.wav").write_bytes(encode_wav(speak(SPEECH_SENTENCE)))
    (HERE / "sample_emotion.mp4").write_bytes(make_video())
    (HERE / "portrait.png").write_bytes(png_bytes(draw_face(mouth_open=0.1)))
    print("wrote", HERE / "speech.wav", HERE / "sample_emotion.mp4", HERE / "portrait.png")

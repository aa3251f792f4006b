"""Hallo2 generation loop, server-free and torch-free (numpy only).

The networks are reached only through :class:`Hallo2Networks` (numpy in, numpy out): the Triton ``hallo2``
model implements it with BLS calls to the ``hallo2_*`` ONNX models, the unit tests with a tiny numpy fake.

Upstream (fudan-generative-vision/hallo2 @58a9aa6) ``scripts/inference_long.py`` +
``hallo/animate/face_animate.py``, reproduced step by step:

1. reference image -> square crop (centred on the face; identity for square inputs) -> PIL-bilinear
   resize to the profile size -> pixels in [-1, 1]; face detection + face-mesh masks (``faces.py``);
   InsightFace embedding (None here -> zeros(512), upstream's no-face value).
2. audio (16 kHz mono) in 60 s segments -> wav2vec2 features at 25 fps ``[T, L, D]`` per segment, the last
   segment zero-padded so the total is a multiple of ``clip_frames`` (upstream pads the same way; it only
   checks the last segment's own length, which drops frames when that length happens to be a multiple of
   the clip -- here the TOTAL is padded); windows ``i-2 .. i+2`` clamped over the whole sequence.
3. ``ceil(T / clip_frames)`` clips: motion frames = the reference image repeated (first clip) or the last
   ``motion_frames`` decoded frames of the previous clip (float, clamped to [-1, 1]); motion pixels are
   zeroed where ``rand(H, W) <= 0.25`` outside the face region (one mask per clip, shared by the frames);
   VAE-encode (posterior mean x 0.18215); reference UNet ONCE per clip at timestep 0 on
   ``[ref, motion...]`` tiled for the two CFG branches, with the image tokens tiled the way upstream's
   ``encoder_hidden_states.repeat(tmp, 1, 1)`` does (sample ``i`` gets branch ``i % 2``'s tokens);
   latents ``randn [1, 4, F, h, w]``; DDIM (``scheduler.py``) with CFG when ``guidance_scale > 1``:
   batch ``[uncond, cond]`` where uncond = image tokens of a ZERO face embedding, zero audio tokens, zero
   face-locator features; ``noise = u + g (c - u)``.
4. decode every clip, ``uint8(clip(x/2+0.5, 0, 1) * 255)`` (upstream truncates), concatenate, trim to
   ``ceil(audio_seconds * 25)`` frames.

Randomness: one ``numpy.random.Generator(PCG64(seed))`` per request, drawn in upstream's order (per clip:
motion mask, then latents).  Upstream draws from torch's CPU generator, so the NUMBERS differ from an
upstream run with the same seed; runs here are reproducible for a seed.
"""

from __future__ import annotations

import functools
import hashlib
import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from emoserve.hallo2.defaults import HALLO2
from emoserve.hallo2.faces import (
    FACE_EXPAND_RATIO,
    FaceAnalyzer,
    FaceMasks,
    build_masks,
    default_analyzer,
    face_embedding,
    resize_bilinear_pil,
    square_crop,
)
from emoserve.hallo2.profile import Hallo2Profile
from emoserve.hallo2.scheduler import DDIMScheduler

__all__ = [
    "AUDIO_SAMPLE_RATE",
    "GeneratedVideo",
    "GenerationSettings",
    "Hallo2Networks",
    "Hallo2Pipeline",
    "LRUCache",
    "PipelineCancelled",
    "PreparedAudio",
    "PreparedImage",
    "audio_windows",
    "num_video_frames",
]

AUDIO_SAMPLE_RATE = 16000
AUDIO_SEGMENT_SECONDS = 60  # upstream cut_audio(length=60)
MOTION_MASK_RATE = 0.25


class PipelineCancelled(RuntimeError):
    """The request was cancelled between two denoising steps."""


@runtime_checkable
class Hallo2Networks(Protocol):
    """What the pipeline needs from the networks; numpy float32 in and out.

    Shapes (``B`` batch: 2 = [uncond, cond] with CFG, else 1; ``F`` clip frames; ``M`` motion frames;
    ``H = W`` image size; ``h = w = H / 8``; ``C`` token width; ``C0`` face-locator channels):

    * ``encode_image(pixels [N, 3, H, W] in [-1, 1]) -> [N, 4, h, w]`` posterior mean, already x 0.18215;
    * ``decode(latents [N, 4, h, w]) -> [N, 3, H, W]`` in [-1, 1] (unscaling inside);
    * ``audio_features(audio [S] raw 16 kHz) -> [ceil(S / 640), L, D]`` (normalisation inside);
    * ``audio_tokens(windows [1, F, 5, L, D]) -> [1, F, 32, C]``;
    * ``image_tokens(face_embedding [N, 512]) -> [N, 4, C]`` (called with N = 2: [zeros, embedding]);
    * ``face_features(mask [1, 1, F, H, W]) -> [1, C0, F, h, w]`` (upstream's FaceLocator reads the mask
      PNG as RGB: three identical channels -- an implementation repeats the channel if it needs 3);
    * ``reference(ref_latents [B*(1+M), 4, h, w], timestep [B*(1+M)] int64 (zeros),
      image_tokens [B*(1+M), 4, C]) -> list`` of reference features, ordered ``(b s)``: sample
      ``b*(1+M) + s`` is frame ``s`` (0 = reference, 1.. = motion frames) of branch ``b``;
    * ``denoise(sample [B, 4, F, h, w], timestep [B] int64, image_tokens [B, 4, C], audio_tokens
      [B, F, 32, C], face_features [B, C0, F, h, w], masks, ref_feats) -> [B, 4, F, h, w]`` (v-prediction);
      ``masks = {"full_mask": [...], "face_mask": [...], "lip_mask": [...]}``, each a list with one float32
      ``[B*F, s*s]`` array per UNet resolution ``s`` in ``profile.mask_sizes`` (upstream's
      ``mask.view(1, -1).repeat(F, 1)`` then ``cat([mask] * 2)`` for CFG).
    """

    def encode_image(self, pixels: np.ndarray) -> np.ndarray: ...

    def decode(self, latents: np.ndarray) -> np.ndarray: ...

    def audio_features(self, audio: np.ndarray) -> np.ndarray: ...

    def audio_tokens(self, windows: np.ndarray) -> np.ndarray: ...

    def image_tokens(self, face_embedding: np.ndarray) -> np.ndarray: ...

    def face_features(self, mask: np.ndarray) -> np.ndarray: ...

    def reference(self, ref_latents: np.ndarray, timestep: np.ndarray, image_tokens: np.ndarray) -> list: ...

    def denoise(
        self,
        sample: np.ndarray,
        timestep: np.ndarray,
        image_tokens: np.ndarray,
        audio_tokens: np.ndarray,
        face_features: np.ndarray,
        masks: dict,
        ref_feats: list,
    ) -> np.ndarray: ...


@dataclass(frozen=True)
class GenerationSettings:
    steps: int = HALLO2.inference_steps
    guidance_scale: float = HALLO2.guidance_scale
    seed: int = 42
    fps: int = 25
    use_cache: bool = True
    face_expand_ratio: float = FACE_EXPAND_RATIO
    motion_mask_rate: float = MOTION_MASK_RATE  # upstream use_mask + mask_rate

    def validate(self, profile: Hallo2Profile) -> None:
        if not 1 <= int(self.steps) <= 1000:
            raise ValueError(f"steps must be in [1, 1000], got {self.steps}")
        if not np.isfinite(self.guidance_scale) or self.guidance_scale < 0:
            raise ValueError(f"guidance_scale must be a finite number >= 0, got {self.guidance_scale}")
        if int(self.fps) != profile.fps:
            raise ValueError(f"fps must be {profile.fps} (the audio features are computed at {profile.fps} fps)")
        if not 1.0 <= self.face_expand_ratio <= 4.0:
            raise ValueError(f"face_expand_ratio must be in [1, 4], got {self.face_expand_ratio}")
        if not 0.0 <= self.motion_mask_rate < 1.0:
            raise ValueError(f"motion_mask_rate must be in [0, 1), got {self.motion_mask_rate}")


@dataclass
class GeneratedVideo:
    frames: np.ndarray  # uint8 [N, H, W, 3]
    fps: int
    info: dict = field(default_factory=dict)


@dataclass
class PreparedImage:
    pixels: np.ndarray  # float32 [1, 3, H, W] in [-1, 1]
    masks: FaceMasks
    face_box: tuple | None  # in the input image's pixels
    embedding: np.ndarray  # float32 [512] (zeros without a face/InsightFace)
    ref_latent: np.ndarray  # [1, 4, h, w]
    image_tokens: np.ndarray  # [2, 4, C]: [zero embedding, embedding]
    face_features: np.ndarray  # [1, C0, F, h, w]


@dataclass
class PreparedAudio:
    features: np.ndarray  # [T_padded, L, D], T_padded a multiple of clip_frames
    num_frames: int  # ceil(samples / 640): frames of the output video


def num_video_frames(num_samples: int, fps: int = 25, sample_rate: int = AUDIO_SAMPLE_RATE) -> int:
    """Upstream ``seq_len = ceil(len / sample_rate * fps)``."""
    return int(math.ceil(num_samples / sample_rate * fps))


def audio_windows(features: np.ndarray, radius: int = 2) -> np.ndarray:
    """Upstream ``process_audio_emb``: ``[T, L, D] -> [T, 2r+1, L, D]`` of frames ``i-r .. i+r``, clamped."""
    t = features.shape[0]
    idx = np.clip(np.arange(t)[:, None] + np.arange(-radius, radius + 1)[None, :], 0, t - 1)
    return features[idx]


class LRUCache:
    """A small thread-safe LRU map (values computed outside the lock)."""

    def __init__(self, maxsize: int):
        self.maxsize = max(int(maxsize), 0)
        self._data: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key):
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                self.hits += 1
                return self._data[key]
            self.misses += 1
            return None

    def put(self, key, value) -> None:
        if self.maxsize == 0:
            return
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)


def _digest(arr: np.ndarray, *extra) -> str:
    h = hashlib.sha256()
    a = np.ascontiguousarray(arr)
    h.update(f"{a.dtype.str}{a.shape}{extra}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


class Hallo2Pipeline:
    def __init__(
        self,
        networks: Hallo2Networks,
        profile: Hallo2Profile,
        *,
        face_analyzer: FaceAnalyzer | None = None,
        image_cache_size: int = 8,
        audio_cache_size: int = 8,
        embedder: Callable[[np.ndarray], np.ndarray | None] = face_embedding,
    ):
        self.networks = networks
        self.profile = profile
        self.face_analyzer = face_analyzer if face_analyzer is not None else default_analyzer()
        self.embedder = embedder
        self.image_cache = LRUCache(image_cache_size)
        self.audio_cache = LRUCache(audio_cache_size)

    # ------------------------------------------------------------------ image
    def prepare_image(self, image_rgb: np.ndarray, settings: GenerationSettings = GenerationSettings()) -> PreparedImage:
        img = np.asarray(image_rgb)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8 or min(img.shape[:2]) < 8:
            raise ValueError(f"expected an RGB uint8 [H, W, 3] image (>= 8 px), got {img.dtype} {img.shape}")
        p = self.profile
        key = _digest(img, p.name, p.image_size, p.clip_frames, settings.face_expand_ratio)
        if settings.use_cache:
            hit = self.image_cache.get(key)
            if hit is not None:
                return hit
        detection = self.face_analyzer.detect(img)
        x0, y0, side = square_crop(img.shape[0], img.shape[1], detection.box if detection else None)
        crop = np.ascontiguousarray(img[y0 : y0 + side, x0 : x0 + side])
        landmarks = self.face_analyzer.landmarks(crop) if detection is not None else None
        crop_detection = None
        if detection is not None and landmarks is None:
            bx = detection.box
            crop_detection = type(detection)(
                (bx[0] - x0, bx[1] - y0, bx[2] - x0, bx[3] - y0),
                detection.score,
                detection.keypoints - np.array([x0, y0], np.float32),
            )
        masks = build_masks(
            landmarks, side, side, p.image_size, p.mask_sizes, settings.face_expand_ratio, detection=crop_detection
        )
        resized = resize_bilinear_pil(crop, p.image_size)
        pixels = (resized.astype(np.float32) / np.float32(255.0) - np.float32(0.5)) / np.float32(0.5)
        pixels = np.ascontiguousarray(pixels.transpose(2, 0, 1)[None])
        emb = self.embedder(crop) if detection is not None else None
        embedding = np.zeros(p.face_embedding_dim, np.float32) if emb is None else np.asarray(emb, np.float32).reshape(-1)
        ref_latent = np.asarray(self.networks.encode_image(pixels), np.float32)
        tokens = np.asarray(self.networks.image_tokens(np.stack([np.zeros_like(embedding), embedding])), np.float32)
        locator_in = np.broadcast_to(masks.face_region[None, None, None], (1, 1, p.clip_frames) + masks.face_region.shape)
        face_feats = np.asarray(self.networks.face_features(np.ascontiguousarray(locator_in, np.float32)), np.float32)
        prepared = PreparedImage(
            pixels=pixels,
            masks=masks,
            face_box=detection.box if detection is not None else None,
            embedding=embedding,
            ref_latent=ref_latent,
            image_tokens=tokens,
            face_features=face_feats,
        )
        if settings.use_cache:
            self.image_cache.put(key, prepared)
        return prepared

    # ------------------------------------------------------------------ audio
    def prepare_audio(self, audio: np.ndarray, settings: GenerationSettings = GenerationSettings()) -> PreparedAudio:
        wav = np.asarray(audio, np.float32).reshape(-1)
        if wav.size == 0:
            raise ValueError("the audio is empty")
        if not np.all(np.isfinite(wav)):
            raise ValueError("the audio holds NaN or infinite samples")
        p = self.profile
        key = _digest(wav, p.name, p.clip_frames)
        if settings.use_cache:
            hit = self.audio_cache.get(key)
            if hit is not None:
                return hit
        hop = AUDIO_SAMPLE_RATE // p.fps  # 640 samples per video frame
        seg_len = AUDIO_SEGMENT_SECONDS * AUDIO_SAMPLE_RATE
        segments = [wav[i : i + seg_len] for i in range(0, wav.size, seg_len)]
        total = 0
        pieces = []
        for i, seg in enumerate(segments):
            seq_len = num_video_frames(seg.size, p.fps)
            if i == len(segments) - 1 and (total + seq_len) % p.clip_frames:
                pad = p.clip_frames - (total + seq_len) % p.clip_frames
                seq_len += pad
                # upstream appends pad * 640 zeros and passes seq_len explicitly; the audio encoder here
                # derives its frame count from the length with the same float formula, which rounds some
                # exact multiples of 640 up (17920 samples -> 29 frames), so drop the few samples needed
                padded = seg.size + pad * hop
                while num_video_frames(padded, p.fps) > seq_len:
                    padded -= 1
                seg = np.concatenate([seg, np.zeros(padded - seg.size, np.float32)])
            feats = np.asarray(self.networks.audio_features(seg), np.float32)
            if feats.shape[0] != seq_len:
                raise RuntimeError(f"audio_features returned {feats.shape[0]} frames for {seg.size} samples, expected {seq_len}")
            pieces.append(feats)
            total += seq_len
        prepared = PreparedAudio(features=np.concatenate(pieces, axis=0), num_frames=num_video_frames(wav.size, p.fps))
        if settings.use_cache:
            self.audio_cache.put(key, prepared)
        return prepared

    # ------------------------------------------------------------------ generation
    def run(
        self,
        image_rgb: np.ndarray,
        audio: np.ndarray,
        settings: GenerationSettings = GenerationSettings(),
        progress: Callable[[float, str], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> GeneratedVideo:
        p = self.profile
        settings.validate(p)
        report = progress or (lambda _pct, _msg: None)
        check = _cancellation_check(cancelled)

        check()
        report(0.0, "preparing image")
        image = self.prepare_image(image_rgb, settings)
        check()
        report(0.0, "preparing audio")
        prepared_audio = self.prepare_audio(audio, settings)
        check()

        F = p.clip_frames
        windows = audio_windows(prepared_audio.features, radius=p.audio_window // 2)
        n_clips = windows.shape[0] // F
        steps = int(settings.steps)
        scheduler = DDIMScheduler()
        timesteps = scheduler.set_timesteps(steps)
        rng = np.random.Generator(np.random.PCG64(int(settings.seed)))
        shared = self._clip_inputs(image, cfg=settings.guidance_scale > 1.0)
        tracker = _ClipProgress(report, n_clips, steps)

        outputs: list[np.ndarray] = []
        previous: np.ndarray | None = None  # float [F, 3, H, W] in [-1, 1]
        for clip in range(n_clips):
            check()
            # rng draw order (upstream's): the clip's motion mask, then its initial latents
            motion = self._motion_pixels(image, previous, shared.keep_face, settings.motion_mask_rate, rng)
            ref_feats = self._reference_features(image, motion, shared)
            audio_in = self._clip_audio_tokens(windows[clip * F : (clip + 1) * F], shared.cfg)
            latents = self._denoise_clip(
                rng,
                scheduler,
                timesteps,
                shared,
                audio_in,
                ref_feats,
                settings.guidance_scale,
                check,
                on_step=functools.partial(tracker.step_done, clip),
            )
            check()
            video01 = self._decode_clip(latents)
            previous = video01 * 2.0 - 1.0
            outputs.append(video01)
            tracker.clip_decoded(clip)

        frames = _to_uint8_frames(outputs, prepared_audio.num_frames)
        report(100.0, "done")
        return GeneratedVideo(
            frames=frames,
            fps=p.fps,
            info={
                "clips": n_clips,
                "steps": steps,
                "guidance_scale": float(settings.guidance_scale),
                "seed": int(settings.seed),
                "face_found": image.masks.has_face,
                "mask_source": image.masks.source,
                "face_box": image.face_box,
            },
        )

    def _clip_inputs(self, image: PreparedImage, cfg: bool) -> _ClipInputs:
        """The per-request inputs every clip shares, batched ``[uncond, cond]`` when ``cfg``."""
        batch = 2 if cfg else 1
        rows = batch * self.profile.clip_frames
        tokens = image.image_tokens if cfg else image.image_tokens[1:]
        face_feats = (
            np.concatenate([np.zeros_like(image.face_features), image.face_features]) if cfg else image.face_features
        )
        masks = {
            name: [np.ascontiguousarray(np.tile(m[None], (rows, 1))) for m in getattr(image.masks, name)]
            for name in ("full_mask", "face_mask", "lip_mask")
        }
        ref_tokens = np.ascontiguousarray(np.tile(tokens, (1 + self.profile.motion_frames, 1, 1)))  # upstream .repeat(1 + M, 1, 1)
        keep_face = image.masks.face_region > 0  # upstream face_mask.bool()
        return _ClipInputs(cfg, batch, tokens, face_feats, masks, ref_tokens, keep_face)

    def _motion_pixels(
        self,
        image: PreparedImage,
        previous: np.ndarray | None,
        keep_face: np.ndarray,
        mask_rate: float,
        rng: np.random.Generator,
    ) -> np.ndarray:
        """The clip's motion frames: the reference image (first clip) or the previous clip's last frames,
        zeroed where ``rand(H, W) <= mask_rate`` outside the face (ONE draw per clip when ``mask_rate > 0``)."""
        M, size = self.profile.motion_frames, self.profile.image_size
        if previous is None:
            motion = np.repeat(image.pixels, M, axis=0)
        else:
            motion = previous[-M:].copy()
        if mask_rate > 0:
            keep = (rng.random((size, size)) > mask_rate) | keep_face
            motion = motion * keep[None, None].astype(np.float32)
        return motion

    def _reference_features(self, image: PreparedImage, motion: np.ndarray, shared: _ClipInputs) -> list:
        """VAE-encode the motion frames and run the reference UNet once on ``[ref, motion...]`` per branch."""
        motion_latents = np.asarray(self.networks.encode_image(np.ascontiguousarray(motion, np.float32)), np.float32)
        ref_latents = np.concatenate([image.ref_latent, motion_latents], axis=0)  # [1 + M, 4, h, w]
        ref_batch = np.ascontiguousarray(np.tile(ref_latents, (shared.batch, 1, 1, 1)))
        return self.networks.reference(ref_batch, np.zeros(ref_batch.shape[0], np.int64), shared.ref_tokens)

    def _clip_audio_tokens(self, clip_windows: np.ndarray, cfg: bool) -> np.ndarray:
        """Audio tokens of the clip's ``[F, 5, L, D]`` windows, with zero tokens for the uncond branch."""
        audio_tok = np.asarray(self.networks.audio_tokens(np.ascontiguousarray(clip_windows[None])), np.float32)
        return np.concatenate([np.zeros_like(audio_tok), audio_tok]) if cfg else audio_tok

    def _denoise_clip(
        self,
        rng: np.random.Generator,
        scheduler: DDIMScheduler,
        timesteps: np.ndarray,
        shared: _ClipInputs,
        audio_in: np.ndarray,
        ref_feats: list,
        guidance_scale: float,
        check: Callable[[], None],
        on_step: Callable[[int], None],
    ) -> np.ndarray:
        """Draw the clip's initial latents ``randn [1, 4, F, h, w]`` and run DDIM (CFG when ``shared.cfg``)."""
        p = self.profile
        cfg, B = shared.cfg, shared.batch
        latents = rng.standard_normal((1, p.latent_channels, p.clip_frames, p.latent_size, p.latent_size), dtype=np.float32)
        latents = latents * np.float32(scheduler.init_noise_sigma)
        for i, t in enumerate(timesteps):
            check()
            model_in = scheduler.scale_model_input(np.concatenate([latents] * B) if cfg else latents, int(t))
            out = np.asarray(
                self.networks.denoise(
                    np.ascontiguousarray(model_in),
                    np.full((B,), int(t), np.int64),
                    shared.tokens,
                    audio_in,
                    shared.face_feats,
                    shared.masks,
                    ref_feats,
                ),
                np.float32,
            )
            if cfg:
                uncond, cond = out[:1], out[1:]
                out = uncond + np.float32(guidance_scale) * (cond - uncond)
            latents = scheduler.step(out, int(t), latents)
            on_step(i)
        return latents

    def _decode_clip(self, latents: np.ndarray) -> np.ndarray:
        """``[1, 4, F, h, w]`` latents -> ``[F, 3, H, W]`` frames in [0, 1]."""
        frame_latents = np.ascontiguousarray(latents[0].transpose(1, 0, 2, 3))  # [F, 4, h, w]
        decoded = np.asarray(self.networks.decode(frame_latents), np.float32)  # [F, 3, H, W]
        return np.clip(decoded / 2 + 0.5, 0.0, 1.0)


@dataclass(frozen=True)
class _ClipInputs:
    """Per-request inputs shared by every clip; ``batch`` rows (2 = [uncond, cond] with CFG)."""

    cfg: bool
    batch: int
    tokens: np.ndarray  # [batch, 4, C] image tokens
    face_feats: np.ndarray  # [batch, C0, F, h, w]
    masks: dict  # {"full_mask" | "face_mask" | "lip_mask": [[batch * F, s * s] per UNet resolution]}
    ref_tokens: np.ndarray  # [batch * (1 + M), 4, C]: the image tokens tiled as upstream's repeat
    keep_face: np.ndarray  # bool [H, W]: motion pixels never masked


class _ClipProgress:
    """Reports ``100 * done / total_units`` after each finished unit: a denoising step or a clip decode."""

    def __init__(self, report: Callable[[float, str], None], n_clips: int, steps: int):
        self.report = report
        self.n_clips = n_clips
        self.steps = steps
        self.total_units = n_clips * (steps + 1)
        self.done = 0

    def step_done(self, clip: int, step: int) -> None:
        self._advance(f"clip {clip + 1}/{self.n_clips} step {step + 1}/{self.steps}")

    def clip_decoded(self, clip: int) -> None:
        self._advance(f"clip {clip + 1}/{self.n_clips} decoded")

    def _advance(self, message: str) -> None:
        self.done += 1
        self.report(100.0 * self.done / self.total_units, message)


def _cancellation_check(cancelled: Callable[[], bool] | None) -> Callable[[], None]:
    is_cancelled = cancelled or (lambda: False)

    def check() -> None:
        if is_cancelled():
            raise PipelineCancelled("generation cancelled")

    return check


def _to_uint8_frames(clips: list[np.ndarray], num_frames: int) -> np.ndarray:
    """Concatenate the clips' [0, 1] frames, trim to the audio's length, ``uint8 [N, H, W, 3]`` (upstream truncates)."""
    video = np.concatenate(clips, axis=0)[:num_frames]
    frames = np.clip(video * 255, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(frames)

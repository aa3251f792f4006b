"""Hallo2 pipeline logic without a server or torch: DDIM, masks, clip loop, CFG, caches, muxing.

The networks are a tiny deterministic numpy implementation of ``Hallo2Networks`` written here."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest

from emoserve.hallo2.faces import (
    FaceDetection,
    build_masks,
    expand_region,
    face_embedding,
)
from emoserve.hallo2.pipeline import (
    GenerationSettings,
    Hallo2Networks,
    Hallo2Pipeline,
    PipelineCancelled,
    audio_windows,
    num_video_frames,
)
from emoserve.hallo2.profile import get_profile
from emoserve.hallo2.scheduler import DDIMScheduler
from emoserve.hallo2.video import ImageDecodeError, decode_image, mux_mp4, probe_image

PROFILE = get_profile("tiny")
ROOT = Path(__file__).resolve().parents[3]


# ------------------------------------------------------------------------------------------ DDIM
def _reference_alphas_cumprod() -> np.ndarray:
    """Independent float64 derivation: linear betas -> Lin et al. zero-terminal-SNR rescale."""
    betas = np.linspace(0.00085, 0.012, 1000, dtype=np.float64)
    sqrt_ab = np.sqrt(np.cumprod(1 - betas))
    s0, sT = sqrt_ab[0], sqrt_ab[-1]
    sqrt_ab = (sqrt_ab - sT) * s0 / (s0 - sT)
    return sqrt_ab**2


def test_ddim_zero_snr_alphas():
    s = DDIMScheduler()
    ref = _reference_alphas_cumprod()
    assert s.alphas_cumprod.shape == (1000,)
    np.testing.assert_allclose(s.alphas_cumprod, ref, rtol=2e-5, atol=1e-7)
    assert s.alphas_cumprod[-1] == 0.0  # zero terminal SNR
    assert abs(s.alphas_cumprod[0] - (1 - 0.00085)) < 1e-6  # first SNR kept
    assert np.all(np.diff(s.alphas_cumprod) < 0)


def test_ddim_trailing_timesteps():
    s = DDIMScheduler()
    t40 = s.set_timesteps(40)
    assert t40.dtype == np.int64 and len(t40) == 40
    assert t40.tolist() == [999 - 25 * i for i in range(40)]
    assert s.set_timesteps(2).tolist() == [999, 499]
    assert s.set_timesteps(3).tolist() == [999, 666, 332]


def test_ddim_v_prediction_step_closed_form():
    s = DDIMScheduler()
    s.set_timesteps(40)
    rng = np.random.default_rng(0)
    x, v = rng.standard_normal((2, 1, 4, 2, 3, 3)).astype(np.float32)
    a = _reference_alphas_cumprod()
    for t, prev in ((999, 974), (524, 499), (24, None)):
        at, ap = a[t], (a[prev] if prev is not None else 1.0)
        x0 = np.sqrt(at) * x - np.sqrt(1 - at) * v
        eps = np.sqrt(at) * v + np.sqrt(1 - at) * x
        want = np.sqrt(ap) * x0 + np.sqrt(1 - ap) * eps
        np.testing.assert_allclose(s.step(v, t, x), want, rtol=1e-4, atol=1e-5)


def test_ddim_oracle_v_recovers_x0():
    """With the exact v of a known (x0, eps), deterministic DDIM lands on x0 (x_T = eps at zero SNR)."""
    s = DDIMScheduler()
    a = s.alphas_cumprod.astype(np.float64)
    rng = np.random.default_rng(1)
    x0, eps = rng.standard_normal((2, 64))
    x = eps.astype(np.float32)
    for t in s.set_timesteps(10):
        v = np.sqrt(a[t]) * eps - np.sqrt(1 - a[t]) * x0
        x = s.step(v.astype(np.float32), int(t), x)
    np.testing.assert_allclose(x, x0, atol=1e-4)


# ------------------------------------------------------------------------------------------ fakes
class FakeNetworks:
    """Deterministic numpy stand-in for the Hallo2 networks (tiny profile shapes), counting calls."""

    def __init__(self, profile=PROFILE):
        self.p = profile
        rng = np.random.default_rng(1234)
        C = profile.audio_token_dim
        self.w_img = rng.standard_normal((profile.face_embedding_dim, profile.image_tokens * C)).astype(np.float32) * 0.01
        self.b_img = rng.standard_normal(profile.image_tokens * C).astype(np.float32) * 0.1
        self.w_audio = rng.standard_normal((profile.wav2vec_layers, profile.wav2vec_hidden)).astype(np.float32)
        self.calls: dict[str, int] = {}
        self.log: list[tuple[str, dict]] = []
        self.frozen = False

    def _rec(self, name, **kw):
        assert not self.frozen, f"{name} called after cancellation"
        self.calls[name] = self.calls.get(name, 0) + 1
        self.log.append((name, kw))

    def total_calls(self) -> int:
        return sum(self.calls.values())

    def encode_image(self, pixels):
        n, c, H, W = pixels.shape
        assert (c, H, W) == (3, self.p.image_size, self.p.image_size)
        self._rec("encode_image", pixels=pixels.copy())
        s = self.p.vae_scale_factor
        pooled = pixels.reshape(n, 3, H // s, s, W // s, s).mean(axis=(3, 5))
        return np.concatenate([pooled, pooled.mean(axis=1, keepdims=True)], axis=1) * np.float32(0.18215)

    def decode(self, latents):
        self._rec("decode", latents=latents.copy())
        s = self.p.vae_scale_factor
        up = np.repeat(np.repeat(latents[:, :3] / 0.18215, s, axis=2), s, axis=3)
        return np.tanh(up).astype(np.float32)

    def audio_features(self, audio):
        self._rec("audio_features", samples=audio.size)
        T = num_video_frames(audio.size)  # float ceil(S / 16000 * 25), as the real audio encoder
        padded = np.pad(audio, (0, max(T * 640 - audio.size, 0)))[: T * 640]
        rms = np.sqrt((padded.reshape(T, 640) ** 2).mean(axis=1))
        return (rms[:, None, None] * self.w_audio[None]).astype(np.float32)

    def audio_tokens(self, windows):
        _, F, win, L, D = windows.shape
        assert (win, L, D) == (5, self.p.wav2vec_layers, self.p.wav2vec_hidden)
        self._rec("audio_tokens", windows=windows.copy())
        m = windows.mean(axis=(2, 3))  # [1, F, D]
        return np.repeat(m[:, :, None, :], self.p.audio_tokens, axis=2).astype(np.float32)

    def image_tokens(self, face_embedding):
        self._rec("image_tokens", emb=face_embedding.copy())
        out = face_embedding @ self.w_img + self.b_img
        return out.reshape(face_embedding.shape[0], self.p.image_tokens, -1).astype(np.float32)

    def face_features(self, mask):
        _, one, F, H, W = mask.shape
        assert one == 1 and F == self.p.clip_frames
        self._rec("face_features", mask=mask.copy())
        s = self.p.vae_scale_factor
        pooled = mask.reshape(1, 1, F, H // s, s, W // s, s).mean(axis=(4, 6))
        return np.repeat(pooled, self.p.face_locator_channels, axis=1).astype(np.float32)

    def reference(self, ref_latents, timestep, image_tokens):
        assert ref_latents.shape[0] == timestep.shape[0] == image_tokens.shape[0]
        assert timestep.dtype == np.int64 and np.all(timestep == 0)
        self._rec("reference", ref_latents=ref_latents.copy(), image_tokens=image_tokens.copy())
        return [ref_latents.mean(axis=(2, 3)) + image_tokens.mean(axis=(1, 2))[:, None]]

    def denoise(self, sample, timestep, image_tokens, audio_tokens, face_features, masks, ref_feats):
        B, c, F, h, w = sample.shape
        assert c == 4 and F == self.p.clip_frames and h == w == self.p.latent_size
        assert timestep.shape == (B,) and timestep.dtype == np.int64
        assert image_tokens.shape[0] == audio_tokens.shape[0] == face_features.shape[0] == B
        for name in ("full_mask", "face_mask", "lip_mask"):
            assert [m.shape for m in masks[name]] == [(B * F, s * s) for s in self.p.mask_sizes]
        assert ref_feats[0].shape[0] == B * (1 + self.p.motion_frames)
        self._rec(
            "denoise",
            B=B,
            image_tokens=image_tokens.copy(),
            audio_tokens=audio_tokens.copy(),
            face_features=face_features.copy(),
        )
        cond = (
            image_tokens.mean(axis=(1, 2))[:, None, None, None, None]
            + audio_tokens.mean(axis=(2, 3))[:, None, :, None, None]
            + face_features.mean(axis=1, keepdims=True)
            + ref_feats[0].reshape(B, -1, 4).mean(axis=1)[:, :, None, None, None]
        )
        return (0.5 * sample + cond).astype(np.float32)


class FakeAnalyzer:
    """A detector that 'finds' a face in a fixed box (or none), with synthetic mesh landmarks."""

    def __init__(self, face=True):
        self.face = face
        self.detect_calls = 0

    def detect(self, rgb):
        self.detect_calls += 1
        if not self.face:
            return None
        h, w = rgb.shape[:2]
        box = (0.3 * w, 0.25 * h, 0.7 * w, 0.75 * h)
        kps = np.array([[0.4 * w, 0.4 * h], [0.6 * w, 0.4 * h], [0.5 * w, 0.5 * h],
                        [0.5 * w, 0.65 * h], [0.3 * w, 0.45 * h], [0.7 * w, 0.45 * h]], np.float32)
        return FaceDetection(box, 0.9, kps)

    def landmarks(self, rgb):
        if not self.face:
            return None
        h, w = rgb.shape[:2]
        rng = np.random.default_rng(7)
        pts = np.stack([rng.uniform(0.3 * w, 0.7 * w, 468), rng.uniform(0.25 * h, 0.75 * h, 468)], axis=1)
        return pts


def _image(seed=0, size=96):
    rng = np.random.default_rng(seed)
    return (rng.random((size, size, 3)) * 255).astype(np.uint8)


def _audio(seconds, seed=0):
    rng = np.random.default_rng(seed)
    n = int(round(seconds * 16000))
    return (0.3 * np.sin(np.arange(n) / 16000 * 2 * np.pi * 220) * rng.random(n)).astype(np.float32)


def _pipe(face=True):
    nets = FakeNetworks()
    assert isinstance(nets, Hallo2Networks)
    return Hallo2Pipeline(nets, PROFILE, face_analyzer=FakeAnalyzer(face)), nets


FAST = GenerationSettings(steps=2)


# ------------------------------------------------------------------------------------------ pipeline
@pytest.mark.parametrize("seconds, frames", [(1.0, 25), (1.5, 38)])
def test_frame_count_and_clips(seconds, frames):
    pipe, nets = _pipe()
    out = pipe.run(_image(), _audio(seconds), FAST)
    assert frames == num_video_frames(int(seconds * 16000)) == math.ceil(seconds * 25)
    assert out.frames.shape == (frames, PROFILE.image_size, PROFILE.image_size, 3)
    assert out.frames.dtype == np.uint8 and out.fps == 25
    clips = math.ceil(frames / PROFILE.clip_frames)
    assert out.info["clips"] == clips
    assert nets.calls["decode"] == clips and nets.calls["reference"] == clips
    assert nets.calls["denoise"] == clips * 2
    assert nets.calls["audio_tokens"] == clips


def test_motion_frames_carry_over_and_masking():
    pipe, nets = _pipe()
    img = _image(3)
    pipe.run(img, _audio(0.5), GenerationSettings(steps=2, seed=5))
    M, F = PROFILE.motion_frames, PROFILE.clip_frames
    enc = [kw["pixels"] for name, kw in nets.log if name == "encode_image"]
    decs = [kw["latents"] for name, kw in nets.log if name == "decode"]
    refs = [kw for name, kw in nets.log if name == "reference"]
    prepared = pipe.prepare_image(img)
    assert len(enc) == 1 + len(decs)  # the reference once (cached afterwards) + motion frames per clip
    face = prepared.masks.face_region > 0
    outside = ~face
    for clip, motion in enumerate(enc[1:]):
        assert motion.shape == (M, 3, PROFILE.image_size, PROFILE.image_size)
        if clip == 0:
            expected = np.repeat(prepared.pixels, M, axis=0)  # reference image repeated
        else:
            decoded = np.tanh(np.repeat(np.repeat(decs[clip - 1][:, :3] / 0.18215, 8, axis=2), 8, axis=3))
            expected = np.clip(decoded / 2 + 0.5, 0, 1)[-M:] * 2 - 1  # last frames of the previous clip
        kept = np.isclose(motion, expected, atol=1e-5)
        zeroed = motion == 0
        assert np.all(kept | zeroed)
        dropped = zeroed.all(axis=(0, 1)) & ~np.isclose(expected, 0).any(axis=(0, 1))
        assert not dropped[face].any()  # never masked inside the face region
        rate = dropped[outside].mean()
        assert 0.1 < rate < 0.4, rate  # rand < 0.25 outside the face
        # reference UNet input: [ref, motion...] for each CFG branch, tokens tiled as upstream's repeat
        ref = refs[clip]
        assert ref["ref_latents"].shape[0] == 2 * (1 + M)
        np.testing.assert_allclose(ref["ref_latents"][0], prepared.ref_latent[0])
        np.testing.assert_allclose(ref["ref_latents"][: 1 + M], ref["ref_latents"][1 + M :])
        for i in range(2 * (1 + M)):
            np.testing.assert_allclose(ref["image_tokens"][i], prepared.image_tokens[i % 2])
    assert len(decs) == math.ceil(num_video_frames(8000) / F)


def test_classifier_free_guidance_two_branches():
    pipe, nets = _pipe()
    img, aud = _image(1), _audio(0.3)
    out35 = pipe.run(img, aud, GenerationSettings(steps=2, guidance_scale=3.5))
    den = [kw for name, kw in nets.log if name == "denoise"]
    assert all(d["B"] == 2 for d in den)
    d = den[0]
    prepared = pipe.prepare_image(img)
    zero_tokens = nets.image_tokens(np.zeros((1, 512), np.float32))[0]
    np.testing.assert_allclose(d["image_tokens"][0], zero_tokens, rtol=1e-6)  # tokens of a zeroed embedding
    np.testing.assert_allclose(d["image_tokens"][1], prepared.image_tokens[1])
    assert np.all(d["audio_tokens"][0] == 0) and np.any(d["audio_tokens"][1] != 0)
    assert np.all(d["face_features"][0] == 0) and np.any(d["face_features"][1] != 0)
    nets.log.clear()
    out10 = pipe.run(img, aud, GenerationSettings(steps=2, guidance_scale=1.0))
    assert all(kw["B"] == 1 for name, kw in nets.log if name == "denoise")  # upstream: no CFG at scale <= 1
    assert not np.array_equal(out10.frames, out35.frames)
    out20 = pipe.run(img, aud, GenerationSettings(steps=2, guidance_scale=2.0))
    assert not np.array_equal(out20.frames, out35.frames)


def test_seeded_determinism():
    pipe, _ = _pipe()
    img, aud = _image(2), _audio(0.4)
    a = pipe.run(img, aud, GenerationSettings(steps=2, seed=42))
    b = pipe.run(img, aud, GenerationSettings(steps=2, seed=42, use_cache=False))
    c = pipe.run(img, aud, GenerationSettings(steps=2, seed=43))
    assert np.array_equal(a.frames, b.frames)
    assert not np.array_equal(a.frames, c.frames)


def test_progress_monotone_to_100():
    pipe, _ = _pipe()
    seen = []
    pipe.run(_image(), _audio(0.5), GenerationSettings(steps=3), progress=lambda pct, msg: seen.append((pct, msg)))
    values = [v for v, _ in seen]
    assert values == sorted(values) and values[-1] == 100.0 and values[0] == 0.0
    clips = math.ceil(num_video_frames(8000) / PROFILE.clip_frames)
    assert sum("step" in m for _, m in seen) == clips * 3  # a report after every DDIM step


def test_cancellation_between_steps():
    pipe, nets = _pipe()
    state = {"reports": 0}

    def progress(pct, msg):
        if "step" in msg:
            state["reports"] += 1

    def cancelled():
        if state["reports"] >= 3:
            nets.frozen = True  # any network call from here on fails the test
            return True
        return False

    with pytest.raises(PipelineCancelled):
        pipe.run(_image(), _audio(1.0), GenerationSettings(steps=2), progress=progress, cancelled=cancelled)
    assert nets.calls["denoise"] == 3 and state["reports"] == 3
    nets.frozen = False
    before = nets.total_calls()
    with pytest.raises(PipelineCancelled):
        pipe.run(_image(9), _audio(1.0), FAST, cancelled=lambda: True)
    assert nets.total_calls() == before  # cancelled before anything ran


def test_caches_hit_and_bypass():
    pipe, nets = _pipe()
    img, aud = _image(4), _audio(0.5)
    pipe.run(img, aud, FAST)
    first = dict(nets.calls)
    clips = first["decode"]
    assert first["audio_features"] == 1 and first["image_tokens"] == 1 and first["face_features"] == 1
    assert first["encode_image"] == 1 + clips
    nets.calls.clear()
    pipe.run(img, aud, FAST)
    assert nets.calls.get("audio_features", 0) == 0
    assert nets.calls.get("image_tokens", 0) == 0 and nets.calls.get("face_features", 0) == 0
    assert nets.calls["encode_image"] == clips  # motion frames only; the reference latent is cached
    assert pipe.face_analyzer.detect_calls == 1
    assert pipe.image_cache.hits >= 1 and pipe.audio_cache.hits >= 1
    nets.calls.clear()
    pipe.run(img, aud, GenerationSettings(steps=2, use_cache=False))
    assert nets.calls == first and pipe.face_analyzer.detect_calls == 2
    nets.calls.clear()
    pipe.run(_image(5), aud, FAST)  # new image, same audio
    assert nets.calls["image_tokens"] == 1 and nets.calls.get("audio_features", 0) == 0


def test_cache_is_bounded():
    nets = FakeNetworks()
    pipe = Hallo2Pipeline(nets, PROFILE, face_analyzer=FakeAnalyzer(), image_cache_size=2)
    for seed in range(4):
        pipe.prepare_image(_image(seed))
    assert len(pipe.image_cache) == 2
    nets.calls.clear()
    pipe.prepare_image(_image(3))  # most recent: hit
    pipe.prepare_image(_image(0))  # evicted: recomputed
    assert nets.calls["image_tokens"] == 1


def test_no_face_zero_embedding_and_fallback_masks():
    pipe, nets = _pipe(face=False)
    out = pipe.run(_image(6), _audio(0.2), FAST)
    assert out.info["face_found"] is False and out.info["mask_source"] == "fallback"
    prepared = pipe.prepare_image(_image(6))
    assert np.all(prepared.embedding == 0) and prepared.embedding.shape == (512,)
    emb_calls = [kw["emb"] for name, kw in nets.log if name == "image_tokens"]
    assert np.all(emb_calls[0] == 0)
    m = prepared.masks
    assert np.all(m.face_region == 1)
    assert all(np.all(x == 1) for x in m.face_mask)
    assert all(np.all(x == 0) for x in m.lip_mask) and all(np.all(x == 0) for x in m.full_mask)
    assert [x.size for x in m.face_mask] == [s * s for s in PROFILE.mask_sizes]
    assert face_embedding(_image(6)) is None  # no InsightFace configured


def test_masks_from_landmarks_follow_upstream():
    rng = np.random.default_rng(0)
    H = W = 200
    lm = np.stack([rng.uniform(60, 140, 468), rng.uniform(50, 160, 468)], axis=1)
    masks = build_masks(lm, H, W, 64, (64, 32, 16, 8))
    assert masks.has_face and masks.source == "face_mesh"
    assert [x.size for x in masks.full_mask] == [64 * 64, 32 * 32, 16 * 16, 8 * 8]
    full, face, lip = masks.full_mask[0], masks.face_mask[0], masks.lip_mask[0]
    assert full.max() <= 1 and face.max() <= 1 and lip.max() == 1.0
    # background = 1 - blurred face (uint8 truncation), face = blurred face - lip (saturating)
    assert np.all(full + face <= 1.0 + 2 / 255 + 1e-6)
    assert np.all(face <= 1.0 - full + 2 / 255 + 1e-6)
    # the expanded (x1.2) silhouette box drawn binary
    from emoserve.hallo2.faces import SILHOUETTE_IDS

    pts = lm[SILHOUETTE_IDS]
    lo, hi = np.round(pts.min(0)), np.round(pts.max(0))
    x0, x1, y0, y1 = expand_region([lo[0], hi[0], lo[1], hi[1]], W, H, 1.2)
    assert masks.boxes["face"] == (x0, x1, y0, y1)
    assert abs((x1 - x0) - 1.2 * (hi[0] - lo[0])) <= 2
    assert set(np.unique(masks.face_region > 0)) == {False, True}


def test_expand_region_shifts_inside_image():
    assert expand_region([0, 10, 0, 10], 100, 100, 2.0) == (0, 20, 0, 20)
    assert expand_region([90, 100, 40, 60], 100, 100, 2.0) == (80, 100, 30, 70)


def test_audio_segments_and_windows():
    pipe, nets = _pipe()
    n = 61 * 16000 + 123
    prepared = pipe.prepare_audio(np.full(n, 0.1, np.float32))
    assert prepared.num_frames == math.ceil(n / 640)
    assert prepared.features.shape[0] % PROFILE.clip_frames == 0
    assert prepared.features.shape[0] - prepared.num_frames < PROFILE.clip_frames
    assert [kw["samples"] for name, kw in nets.log if name == "audio_features"][0] == 60 * 16000  # 60 s segments
    # 16000 samples = 25 frames -> padded to 28; 16000 + 3 * 640 samples would give 29 with float ceil
    nets.log.clear()
    short = pipe.prepare_audio(np.full(16000, 0.1, np.float32))
    assert short.num_frames == 25 and short.features.shape[0] == 28
    assert num_video_frames(16000 + 3 * 640) == 29
    assert num_video_frames(next(kw["samples"] for name, kw in nets.log if name == "audio_features")) == 28
    feats = np.arange(6, dtype=np.float32).reshape(6, 1, 1)
    win = audio_windows(feats)
    assert win.shape == (6, 5, 1, 1)
    assert win[0, :, 0, 0].tolist() == [0, 0, 0, 1, 2] and win[5, :, 0, 0].tolist() == [3, 4, 5, 5, 5]


def test_invalid_inputs():
    pipe, _ = _pipe()
    with pytest.raises(ValueError):
        pipe.run(_image(), np.zeros(0, np.float32), FAST)
    with pytest.raises(ValueError):
        pipe.run(_image(), _audio(0.2), GenerationSettings(fps=30))
    with pytest.raises(ValueError):
        pipe.run(np.zeros((32, 32), np.uint8), _audio(0.2), FAST)


# ------------------------------------------------------------------------------------------ real detector
def _cartoon_face() -> np.ndarray:
    import av

    with av.open(str(ROOT / "examples" / "sample_emotion.mp4")) as c:
        for frame in c.decode(video=0):
            return frame.to_ndarray(format="rgb24")
    raise AssertionError("no frame")


def test_mediapipe_face_masks_on_drawn_face():
    pytest.importorskip("mediapipe")
    from emoserve.hallo2.faces import FaceAnalyzer

    analyzer = FaceAnalyzer()
    img = _cartoon_face()  # project-made cartoon face (examples/README.md)
    det = analyzer.detect(img)
    assert det is not None and det.score > 0.5
    lm = analyzer.landmarks(img)
    assert lm is not None and lm.shape == (468, 2)
    masks = build_masks(lm, img.shape[0], img.shape[1], 64, (8, 4))
    assert masks.source == "face_mesh"
    fx0, fx1, fy0, fy1 = masks.boxes["face"]
    lx0, lx1, ly0, ly1 = masks.boxes["lip"]
    assert fx0 <= lx0 < lx1 <= fx1 and (ly0 + ly1) / 2 > (fy0 + fy1) / 2  # lips inside, in the lower half
    assert analyzer.detect((np.random.default_rng(0).random((128, 128, 3)) * 40).astype(np.uint8)) is None


# ------------------------------------------------------------------------------------------ media
def test_mux_mp4_is_reproducible_for_small_frames():
    # blocky 64x64 frames (like the tiny profile's): x264's SIMD paths gave 6 different bitstreams in 10 runs
    coarse = np.random.default_rng(0).random((25, 8, 8, 3))
    frames = (np.repeat(np.repeat(coarse, 8, 1), 8, 2) * 255).astype(np.uint8)
    encodings = {mux_mp4(frames, 25, _audio(1.0), 16000) for _ in range(10)}
    assert len(encodings) == 1


def test_mux_mp4_reads_back():
    import av

    frames = (np.random.default_rng(0).random((13, 64, 64, 3)) * 255).astype(np.uint8)
    data = mux_mp4(frames, 25, _audio(2.0), 16000)  # longer audio is cut to the video
    with av.open(io.BytesIO(data)) as c:
        assert c.streams.video and c.streams.audio
        assert sum(1 for _ in c.decode(video=0)) == 13
    with av.open(io.BytesIO(data)) as c:
        dur = sum(f.samples for f in c.decode(audio=0)) / c.streams.audio[0].rate
    # decoded AAC carries up to two extra 1024-sample frames (encoder priming + last-frame padding)
    assert 13 / 25 - 0.01 <= dur <= 13 / 25 + 2 * 1024 / 16000 + 0.01


def test_decode_and_probe_images():
    from fractions import Fraction

    import av

    rgb = np.zeros((40, 60, 3), np.uint8)
    rgb[:, :30] = (200, 30, 60)

    def encode(codec, pix):
        ctx = av.CodecContext.create(codec, "w")
        ctx.width, ctx.height, ctx.pix_fmt, ctx.time_base = 60, 40, pix, Fraction(1, 25)
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=pix)
        return b"".join(bytes(p) for p in ctx.encode(frame) + ctx.encode(None))

    png, jpg = encode("png", "rgb24"), encode("mjpeg", "yuvj444p")
    assert np.array_equal(decode_image(png), rgb)
    assert np.abs(decode_image(jpg).astype(int) - rgb).mean() < 8
    assert probe_image(png).format == "png" and probe_image(jpg).format == "jpeg"
    assert (probe_image(jpg).width, probe_image(jpg).height) == (60, 40)
    for bad in (b"", b"GIF89a....", png[:40], b"\xff\xd8\xff" + b"\x00" * 50):
        with pytest.raises(ImageDecodeError):
            decode_image(bad)

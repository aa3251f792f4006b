"""Face detection, landmarks and Hallo2's face/lip/background masks (numpy + mediapipe; no torch, no cv2).

Upstream (fudan-generative-vision/hallo2 @58a9aa6, ``hallo/datasets/image_processor.py`` +
``hallo/utils/util.py``):

* the face EMBEDDING comes from InsightFace (``FaceAnalysis``, largest face); with no face upstream uses
  ``bbox = whole image`` and ``embedding = zeros(512)``;
* the MASKS come from mediapipe's 468-point face mesh (``get_landmark``): the bounding box of the face
  silhouette points expanded x ``face_expand_ratio`` (1.2) and of the lip points expanded x2.0
  (``expand_region``) are drawn as binary rectangles at the image's own resolution; then
  ``blur_mask``: resize to 64x64 (cv2 INTER_LINEAR), Gaussian blur 51x51 (face) / 31x31 (lip),
  min-max normalise to 0..255;  ``sep_background = 255 - face_blur`` (uint8 truncation),
  ``sep_face = face_blur - sep_lip`` (saturating), ``sep_lip = lip_blur``; each is resized (PIL bilinear)
  to latent/1, /2, /4, /8 and flattened to ``[1, s*s]`` (full/face/lip masks for the audio attention);
* the face REGION (face-locator input and motion-frame mask) is the binary face rectangle resized (PIL
  bilinear) to the model's image size, as three identical channels in [0, 1].

Here: the detector is mediapipe 0.10.21's BlazeFace (``face_detection_full_range_sparse.tflite``, shipped
in the wheel) and the landmarks are the same 468-point topology from the legacy ``FaceMesh`` solution
(``face_landmark.tflite`` in the wheel) -- upstream loads ``face_landmarker_v2_with_blendshapes.task``
from its pretrained-models folder, which is not available offline.  cv2 resize/blur and PIL's bilinear
resize are reproduced in numpy (PIL bilinear bit-exact; cv2 resize within 1 and cv2's fixed-point
Gaussian blur within 4 grey levels of 255, checked against opencv 4.11).

No face (or mediapipe missing): upstream's InsightFace fallback is "the entire image is the face region"
with a zero embedding; upstream's mediapipe mask step has no fallback (it would crash).  Here the fallback
masks are: face region = whole image, face mask = 1 everywhere, lip mask = 0, background mask = 0.

Face EMBEDDING: InsightFace (``buffalo_l``) is not installable here, so :func:`face_embedding` returns
``None`` (-> the pipeline uses zeros, exactly upstream's no-face behaviour) unless an InsightFace model is
configured -- and no loader for one is implemented yet, so a configured path raises a clear error.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

import numpy as np

from emoserve.imaging import pil_resize

__all__ = [
    "LIP_IDS",
    "SILHOUETTE_IDS",
    "FaceAnalyzer",
    "FaceDetection",
    "FaceMasks",
    "blur_mask",
    "build_masks",
    "expand_region",
    "face_embedding",
    "resize_bilinear_cv2",
    "resize_bilinear_pil",
    "square_crop",
]

# mediapipe face-mesh indices upstream uses (hallo/utils/util.py)
SILHOUETTE_IDS = [
    10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288,
    397, 365, 379, 378, 400, 377, 152, 148, 176, 149, 150, 136,
    172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109,
]  # fmt: skip
LIP_IDS = [61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 146, 91, 181, 84, 17, 314, 405, 321, 375]

FACE_EXPAND_RATIO = 1.2
LIP_EXPAND_RATIO = 2.0
BLUR_SIZE = 64
FACE_BLUR_KERNEL = 51
LIP_BLUR_KERNEL = 31
INSIGHTFACE_ENV = "EMOSERVE_HALLO2_INSIGHTFACE"


# --------------------------------------------------------------------------------------------------
# resampling (numpy reproductions of PIL bilinear and cv2 INTER_LINEAR for uint8 images)
# --------------------------------------------------------------------------------------------------
def resize_bilinear_pil(img: np.ndarray, size: tuple[int, int] | int) -> np.ndarray:
    """``PIL.Image.fromarray(img).resize((w, h), BILINEAR)`` for uint8 ``[H, W]`` / ``[H, W, C]``
    (torchvision ``Resize`` on a PIL image; horizontal pass first, as Pillow <= 11)."""
    return pil_resize(img, size, "bilinear")


def resize_bilinear_cv2(img: np.ndarray, size: tuple[int, int] | int) -> np.ndarray:
    """``cv2.resize(img, (w, h))`` (INTER_LINEAR, half-pixel centres, no antialias) for uint8 ``[H, W]``,
    computed in float and rounded (OpenCV's fixed point differs by at most one grey level)."""
    if isinstance(size, int):
        size = (size, size)
    arr = np.asarray(img).astype(np.float64)
    out = arr
    for axis, n_out in ((0, size[0]), (1, size[1])):
        n_in = out.shape[axis]
        if n_in == n_out:
            continue
        pos = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
        i0 = np.floor(pos).astype(np.int64)
        frac = pos - i0
        frac = np.where(i0 < 0, 0.0, frac)
        i0 = np.clip(i0, 0, n_in - 1)
        frac = np.where(i0 >= n_in - 1, 0.0, frac)
        i1 = np.minimum(i0 + 1, n_in - 1)
        a = np.take(out, i0, axis=axis)
        b = np.take(out, i1, axis=axis)
        shape = [1] * out.ndim
        shape[axis] = n_out
        frac = frac.reshape(shape)
        out = a * (1.0 - frac) + b * frac
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _gaussian_kernel(ksize: int) -> np.ndarray:
    """``cv2.getGaussianKernel(ksize, 0)``: sigma = 0.3 * ((ksize - 1) * 0.5 - 1) + 0.8."""
    sigma = 0.3 * ((ksize - 1) * 0.5 - 1) + 0.8
    x = np.arange(ksize, dtype=np.float64) - (ksize - 1) / 2
    k = np.exp(-(x**2) / (2 * sigma**2))
    return k / k.sum()


def _reflect101_index(n: int, radius: int) -> np.ndarray:
    idx = np.arange(-radius, n + radius)
    period = 2 * (n - 1) if n > 1 else 1
    idx = np.mod(idx, period)
    return np.where(idx >= n, period - idx, idx)


def blur_mask(mask: np.ndarray, resize_dim: int = BLUR_SIZE, kernel_size: int = FACE_BLUR_KERNEL) -> np.ndarray:
    """Upstream ``blur_mask``: cv2 resize to ``resize_dim``, GaussianBlur(k, k, sigma 0, BORDER_REFLECT_101),
    ``cv2.normalize(NORM_MINMAX, 0, 255)`` (a constant image normalises to 0, as in OpenCV)."""
    small = resize_bilinear_cv2(mask, resize_dim).astype(np.float64)
    k = _gaussian_kernel(kernel_size)
    r = kernel_size // 2
    for axis in (0, 1):
        idx = _reflect101_index(small.shape[axis], r)
        padded = np.take(small, idx, axis=axis)
        acc = np.zeros_like(small)
        n = small.shape[axis]
        for j in range(kernel_size):
            acc += k[j] * np.take(padded, np.arange(j, j + n), axis=axis)
        small = acc
    blurred = np.clip(np.rint(small), 0, 255)
    lo, hi = blurred.min(), blurred.max()
    scale = 255.0 / (hi - lo) if hi - lo > 0 else 0.0
    return np.clip(np.rint(blurred * scale - lo * scale), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------------
# geometry
# --------------------------------------------------------------------------------------------------
def expand_region(region, image_w: int, image_h: int, expand_ratio: float = 1.0) -> tuple[int, int, int, int]:
    """Upstream ``expand_region``: (min_x, max_x, min_y, max_y) grown about its centre, shifted inside."""
    min_x, max_x, min_y, max_y = (float(v) for v in region)
    mid_x = (max_x + min_x) // 2
    side_x = (max_x - min_x) * expand_ratio
    mid_y = (max_y + min_y) // 2
    side_y = (max_y - min_y) * expand_ratio
    min_x, max_x = mid_x - side_x // 2, mid_x + side_x // 2
    min_y, max_y = mid_y - side_y // 2, mid_y + side_y // 2
    if min_x < 0:
        max_x -= min_x
        min_x = 0
    if max_x > image_w:
        min_x -= max_x - image_w
        max_x = image_w
    if min_y < 0:
        max_y -= min_y
        min_y = 0
    if max_y > image_h:
        min_y -= max_y - image_h
        max_y = image_h
    return round(min_x), round(max_x), round(min_y), round(max_y)


def _box_mask(points: np.ndarray, height: int, width: int, ratio: float) -> np.ndarray:
    lo = np.round(points.min(axis=0))
    hi = np.round(points.max(axis=0))
    x0, x1, y0, y1 = expand_region([lo[0], hi[0], lo[1], hi[1]], width, height, ratio)
    mask = np.zeros((height, width), np.uint8)
    mask[max(round(y0), 0) : max(round(y1), 0), max(round(x0), 0) : max(round(x1), 0)] = 255
    return mask


def square_crop(height: int, width: int, face_box: tuple[float, float, float, float] | None) -> tuple[int, int, int]:
    """(x0, y0, side) of the largest square crop, centred on the face when there is one.

    Upstream resizes the reference image straight to 512x512 (its README asks for square images); for a
    square input this crop is the whole image, so the two agree."""
    side = min(height, width)
    if face_box is None:
        cx, cy = width / 2, height / 2
    else:
        cx, cy = (face_box[0] + face_box[2]) / 2, (face_box[1] + face_box[3]) / 2
    x0 = int(round(min(max(cx - side / 2, 0), width - side)))
    y0 = int(round(min(max(cy - side / 2, 0), height - side)))
    return x0, y0, side


# --------------------------------------------------------------------------------------------------
# detection (mediapipe)
# --------------------------------------------------------------------------------------------------
@dataclass
class FaceDetection:
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels
    score: float
    keypoints: np.ndarray  # [6, 2] pixels: right eye, left eye, nose tip, mouth centre, right ear, left ear


class FaceAnalyzer:
    """mediapipe BlazeFace detection + 468-point face mesh; lazy, one graph at a time (thread-safe)."""

    def __init__(self, min_confidence: float = 0.5):
        self.min_confidence = min_confidence
        self._lock = threading.Lock()
        self._detector = None
        self._mesh = None
        self._error: str | None = None

    @staticmethod
    def available() -> bool:
        try:
            import mediapipe  # noqa: F401
        except Exception:
            return False
        return True

    def _load(self) -> bool:
        if self._detector is not None:
            return True
        if self._error is not None:
            return False
        try:
            import mediapipe as mp

            self._detector = mp.solutions.face_detection.FaceDetection(
                model_selection=1, min_detection_confidence=self.min_confidence
            )
            self._mesh = mp.solutions.face_mesh.FaceMesh(
                static_image_mode=True, max_num_faces=1, min_detection_confidence=self.min_confidence
            )
        except Exception as exc:  # mediapipe missing or broken: documented no-face fallback
            self._error = f"{type(exc).__name__}: {exc}"
            return False
        return True

    @property
    def error(self) -> str | None:
        return self._error

    def detect(self, rgb: np.ndarray) -> FaceDetection | None:
        """The largest detected face, or None."""
        rgb = np.ascontiguousarray(rgb)
        h, w = rgb.shape[:2]
        with self._lock:
            if not self._load():
                return None
            result = self._detector.process(rgb)
        best = None
        for det in result.detections or []:
            rb = det.location_data.relative_bounding_box
            x0, y0 = max(rb.xmin * w, 0.0), max(rb.ymin * h, 0.0)
            x1, y1 = min((rb.xmin + rb.width) * w, w), min((rb.ymin + rb.height) * h, h)
            if x1 <= x0 or y1 <= y0:
                continue
            kps = np.array([[k.x * w, k.y * h] for k in det.location_data.relative_keypoints], np.float32)
            cand = FaceDetection((x0, y0, x1, y1), float(det.score[0]), kps)
            if best is None or (x1 - x0) * (y1 - y0) > (best.box[2] - best.box[0]) * (best.box[3] - best.box[1]):
                best = cand
        return best

    def landmarks(self, rgb: np.ndarray) -> np.ndarray | None:
        """[468, 2] pixel coordinates of the face mesh (one face), or None."""
        rgb = np.ascontiguousarray(rgb)
        h, w = rgb.shape[:2]
        with self._lock:
            if not self._load():
                return None
            result = self._mesh.process(rgb)
        faces = result.multi_face_landmarks
        if not faces:
            return None
        return np.array([[p.x * w, p.y * h] for p in faces[0].landmark[:468]], np.float64)


_DEFAULT_ANALYZER: FaceAnalyzer | None = None
_DEFAULT_LOCK = threading.Lock()


def default_analyzer() -> FaceAnalyzer:
    global _DEFAULT_ANALYZER
    with _DEFAULT_LOCK:
        if _DEFAULT_ANALYZER is None:
            _DEFAULT_ANALYZER = FaceAnalyzer()
        return _DEFAULT_ANALYZER


# --------------------------------------------------------------------------------------------------
# masks
# --------------------------------------------------------------------------------------------------
@dataclass
class FaceMasks:
    """Everything Hallo2 derives from the reference face, at the model's resolution."""

    face_region: np.ndarray  # float32 [H, W] in [0, 1] (binary box, bilinear-resized): face locator / motion mask
    full_mask: list[np.ndarray]  # per UNet resolution: float32 [s*s] (background = 1 - blurred face)
    face_mask: list[np.ndarray]  # float32 [s*s] (blurred face minus blurred lip)
    lip_mask: list[np.ndarray]  # float32 [s*s] (blurred lip)
    has_face: bool
    source: str  # "face_mesh" | "detector_box" | "fallback"
    boxes: dict = field(default_factory=dict)  # "face"/"lip": (x0, x1, y0, y1) in crop pixels


def _flatten_levels(mask64: np.ndarray, sizes) -> list[np.ndarray]:
    return [(resize_bilinear_pil(mask64, s).astype(np.float32) / np.float32(255.0)).reshape(-1) for s in sizes]


def build_masks(
    landmarks: np.ndarray | None,
    height: int,
    width: int,
    image_size: int,
    mask_sizes,
    face_expand_ratio: float = FACE_EXPAND_RATIO,
    *,
    detection: FaceDetection | None = None,
) -> FaceMasks:
    """Upstream's masks from face-mesh landmarks given in ``height x width`` pixels.

    Without landmarks but with a detector box, the box stands in for the silhouette and a box around the
    mouth key point (35% x 12% of the face, before the x2 lip expansion) for the lips.  Without either: the no-face fallback."""
    if landmarks is not None:
        silhouette = np.take(landmarks, SILHOUETTE_IDS, axis=0)
        lips = np.take(landmarks, LIP_IDS, axis=0)
        source = "face_mesh"
    elif detection is not None:
        x0, y0, x1, y1 = detection.box
        silhouette = np.array([[x0, y0], [x1, y1]], np.float64)
        mx, my = detection.keypoints[3]
        fw, fh = x1 - x0, y1 - y0
        lips = np.array([[mx - 0.175 * fw, my - 0.06 * fh], [mx + 0.175 * fw, my + 0.06 * fh]])
        source = "detector_box"
    else:
        ones = np.ones((image_size, image_size), np.float32)
        return FaceMasks(
            face_region=ones,
            full_mask=[np.zeros(s * s, np.float32) for s in mask_sizes],
            face_mask=[np.ones(s * s, np.float32) for s in mask_sizes],
            lip_mask=[np.zeros(s * s, np.float32) for s in mask_sizes],
            has_face=False,
            source="fallback",
        )
    face_box_mask = _box_mask(silhouette, height, width, face_expand_ratio)
    lip_box_mask = _box_mask(lips, height, width, LIP_EXPAND_RATIO)
    face_blur = blur_mask(face_box_mask, BLUR_SIZE, FACE_BLUR_KERNEL)
    sep_lip = blur_mask(lip_box_mask, BLUR_SIZE, LIP_BLUR_KERNEL)
    sep_background = ((1.0 - face_blur / 255.0) * 255).astype(np.uint8)  # upstream truncates
    sep_face = np.clip(face_blur.astype(np.int16) - sep_lip.astype(np.int16), 0, 255).astype(np.uint8)
    region = resize_bilinear_pil(face_box_mask, image_size).astype(np.float32) / np.float32(255.0)
    ys, xs = np.nonzero(face_box_mask)
    ly, lx = np.nonzero(lip_box_mask)
    boxes = {}
    if xs.size:
        boxes["face"] = (int(xs.min()), int(xs.max()) + 1, int(ys.min()), int(ys.max()) + 1)
    if lx.size:
        boxes["lip"] = (int(lx.min()), int(lx.max()) + 1, int(ly.min()), int(ly.max()) + 1)
    return FaceMasks(
        face_region=region,
        full_mask=_flatten_levels(sep_background, mask_sizes),
        face_mask=_flatten_levels(sep_face, mask_sizes),
        lip_mask=_flatten_levels(sep_lip, mask_sizes),
        has_face=True,
        source=source,
        boxes=boxes,
    )


# --------------------------------------------------------------------------------------------------
# face embedding
# --------------------------------------------------------------------------------------------------
def face_embedding(image: np.ndarray, model_dir: str | None = None) -> np.ndarray | None:
    """InsightFace 512-d identity embedding of the largest face, or None.

    Upstream runs InsightFace ``FaceAnalysis`` (antelopev2/buffalo ArcFace).  InsightFace cannot be
    installed here and its weights are not available offline, so this returns ``None`` -- the pipeline then
    feeds ``zeros(512)``, which is exactly what upstream does when it finds no face.  Setting
    ``EMOSERVE_HALLO2_INSIGHTFACE`` (or ``model_dir``) to a model folder is reserved for a real loader,
    which is not implemented: it raises instead of silently returning zeros.
    """
    configured = model_dir or os.environ.get(INSIGHTFACE_ENV)
    if not configured:
        return None
    raise NotImplementedError(
        f"an InsightFace model is configured ({configured}) but no InsightFace loader is implemented; "
        f"unset {INSIGHTFACE_ENV} to use upstream's no-face zero embedding"
    )

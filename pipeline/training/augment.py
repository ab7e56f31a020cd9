"""Training augmentations of face crops: the paper's photometric/geometric set and Face-Cutout.

Two kinds of augmentation, applied in this order by :func:`augment_face`:

1. **Face-Cutout** (Das, Seferbekov, Datta, Islam and Amin, "Towards Solving the DeepFake
   Problem: An Analysis on Improving DeepFake Detection using Dynamic Face Augmentation",
   arXiv:2102.09603, ICCV Workshops 2021). Deepfake datasets are oversampled (many fakes of a few
   actors), so a detector learns to recognise faces instead of manipulation traces; occluding
   landmark-driven facial regions makes it look everywhere. The paper grew out of the DFDC
   winner's landmark dropout (Seferbekov, ``selimsef/dfdc_deepfake_challenge``:
   ``remove_eyes``/``remove_nose``/``remove_mouth``, a thick line through MTCNN's points). With
   MTCNN's five points we occlude one of: a thick line through both eyes, a thick line from
   between the eyes down to the nose tip, a thick line through both mouth corners, or the convex
   polygon (with a thick outline) of 3-5 of the five points. Thickness is proportional to the
   inter-eye distance, so the occlusion scales with the face; the fill is black or the crop's mean
   colour. It runs *before* the geometric transforms, which would move the landmarks.
2. **The paper's augmentations** (MeVer DeepFake Detection Service, section 3.2): small
   rotation, horizontal flip, colour jitter, rare greyscale, motion or Gaussian blur, ISO noise,
   coarse dropout, and, rarely, sun flare and rain. Argument names follow albumentations 2.x
   (``num_holes_range``, ``hole_height_range``, ``border_mode``, ``fill``), which emits no
   deprecation warnings for them.

Inputs everywhere: ``crop`` is an ``(H, W, 3) uint8`` RGB face crop (the face box grown 1.3x, so
the face fills the central ~77%), ``landmarks`` a ``(5, 2) float32`` array of MTCNN's points in
crop pixels, ``(x, y)`` in MTCNN's order: left eye, right eye, nose, left mouth corner, right
mouth corner. All randomness comes from the ``rng`` argument, so a seed reproduces an output.
"""

from __future__ import annotations

import os
from typing import Final, Literal

import cv2
import numpy as np

# albumentations asks PyPI for a newer version when it is imported unless this is set; importing
# a module of this project never touches the network (STYLE.md, habit 7). A user's own setting wins.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
import albumentations as A

#: Indices of MTCNN's five landmarks.
LEFT_EYE: Final = 0
RIGHT_EYE: Final = 1
NOSE: Final = 2
LEFT_MOUTH: Final = 3
RIGHT_MOUTH: Final = 4

CutoutRegion = Literal["eyes", "nose", "mouth", "polygon"]
CUTOUT_REGIONS: Final[tuple[CutoutRegion, ...]] = ("eyes", "nose", "mouth", "polygon")

#: Line thickness of each Face-Cutout region, as a range of multiples of the inter-eye distance.
#: The DFDC winner dilates a line by ``d // 4`` (eyes, nose; d = inter-eye distance) or
#: ``mouth width // 3`` (mouth) pixels per side, i.e. about 0.5x and 0.6x the inter-eye distance
#: in all; we draw around those values. A polygon is filled, so its outline only needs to cover
#: the case of (nearly) collinear points.
CUTOUT_THICKNESS: Final[dict[CutoutRegion, tuple[float, float]]] = {
    "eyes": (0.3, 0.6),
    "nose": (0.3, 0.5),
    "mouth": (0.3, 0.6),
    "polygon": (0.05, 0.25),
}

#: Below this inter-eye distance (pixels) the landmarks are treated as degenerate.
MIN_EYE_DISTANCE_PX: Final = 2.0


def check_face_inputs(crop: np.ndarray, landmarks: np.ndarray) -> None:
    """Raise ``ValueError`` unless ``crop`` is ``(H, W, 3) uint8`` and ``landmarks`` ``(5, 2)``."""
    if crop.ndim != 3 or crop.shape[2] != 3 or crop.dtype != np.uint8:
        raise ValueError(f"crop must be an (H, W, 3) uint8 array, got {crop.shape} {crop.dtype}")
    if crop.shape[0] == 0 or crop.shape[1] == 0:
        raise ValueError(f"crop is empty: {crop.shape}")
    if landmarks.shape != (5, 2):
        raise ValueError(f"landmarks must be MTCNN's (5, 2) points, got shape {landmarks.shape}")


def draw_seed(rng: np.random.Generator) -> int:
    """A seed for an albumentations pipeline, drawn from ``rng`` (in ``[0, 2**31)``)."""
    return int(rng.integers(0, 2**31))


def paper_augmentations(seed: int | None = None) -> A.Compose:
    """The paper's training augmentations (section 3.2) as one albumentations pipeline.

    Image in, image out: ``(H, W, 3) uint8`` RGB, same size (rotation keeps the frame and fills
    the corners by reflection rather than black, which real crops never have). ``seed`` fixes
    the pipeline's random draws (``None``: albumentations seeds it from the OS).
    """
    return A.Compose(
        [
            A.Rotate(limit=(-10, 10), border_mode=cv2.BORDER_REFLECT_101, p=0.5),
            A.HorizontalFlip(p=0.5),
            # Hue is kept small: albumentations' default (+-0.5) turns skin any colour.
            A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.05, p=0.5),
            A.ToGray(p=0.05),
            A.OneOf(
                [
                    A.MotionBlur(blur_limit=(3, 7), p=1.0),
                    A.GaussianBlur(blur_limit=(3, 7), sigma_limit=(0.3, 1.5), p=1.0),
                ],
                p=0.2,
            ),
            A.ISONoise(color_shift=(0.01, 0.05), intensity=(0.1, 0.5), p=0.2),
            A.CoarseDropout(
                num_holes_range=(1, 4),
                hole_height_range=(0.05, 0.15),
                hole_width_range=(0.05, 0.15),
                fill=0,
                p=0.1,
            ),
            # The default 400 px flare would swamp a 224-380 px crop.
            A.RandomSunFlare(flare_roi=(0, 0, 1, 0.5), src_radius=100, p=0.05),
            A.RandomRain(slant_range=(-10, 10), blur_value=3, brightness_coefficient=0.9, p=0.05),
        ],
        seed=seed,
    )


def _usable_landmarks(landmarks: np.ndarray, width: int, height: int) -> bool:
    """Whether all five points are finite, inside the crop, and the eyes are apart."""
    pts = landmarks.astype(np.float64)
    if not np.all(np.isfinite(pts)):
        return False
    inside = (pts[:, 0] >= 0) & (pts[:, 0] <= width) & (pts[:, 1] >= 0) & (pts[:, 1] <= height)
    if not np.all(inside):
        return False
    return float(np.linalg.norm(pts[RIGHT_EYE] - pts[LEFT_EYE])) >= MIN_EYE_DISTANCE_PX


def _pixel(point: np.ndarray) -> tuple[int, int]:
    return (round(float(point[0])), round(float(point[1])))


def cutout_mask(
    shape: tuple[int, int],
    landmarks: np.ndarray,
    region: CutoutRegion,
    thickness_px: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """The ``(H, W) bool`` region Face-Cutout occludes (``rng`` picks the polygon's points)."""
    mask = np.zeros(shape, dtype=np.uint8)
    pts = landmarks.astype(np.float64)
    if region == "eyes":
        cv2.line(mask, _pixel(pts[LEFT_EYE]), _pixel(pts[RIGHT_EYE]), 1, thickness_px)
    elif region == "nose":
        # From between the eyes down to the nose tip: the bridge of the nose.
        eye_centre = (pts[LEFT_EYE] + pts[RIGHT_EYE]) / 2
        cv2.line(mask, _pixel(eye_centre), _pixel(pts[NOSE]), 1, thickness_px)
    elif region == "mouth":
        cv2.line(mask, _pixel(pts[LEFT_MOUTH]), _pixel(pts[RIGHT_MOUTH]), 1, thickness_px)
    else:
        count = int(rng.integers(3, 6))
        chosen = np.sort(rng.choice(5, size=count, replace=False))
        hull = cv2.convexHull(np.rint(pts[chosen]).astype(np.int32))
        cv2.fillConvexPoly(mask, hull, 1)
        cv2.polylines(mask, [hull], isClosed=True, color=1, thickness=thickness_px)
    return mask.astype(bool)


def face_cutout(crop: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Face-Cutout: occlude one landmark-driven region of the face.

    ``crop``: ``(H, W, 3) uint8``; ``landmarks``: ``(5, 2)`` MTCNN points in crop pixels.
    Returns a new ``(H, W, 3) uint8`` array (``crop`` is not modified). The region is one of
    eyes, nose, mouth or a polygon through 3-5 of the points, drawn ``0.05-0.6x`` the inter-eye
    distance thick (see :data:`CUTOUT_THICKNESS`) and filled with black or the crop's mean
    colour. Landmarks outside the crop, not finite, or with the eyes less than
    :data:`MIN_EYE_DISTANCE_PX` apart: an unchanged copy.
    """
    check_face_inputs(crop, landmarks)
    out = crop.copy()
    height, width = crop.shape[:2]
    if not _usable_landmarks(landmarks, width, height):
        return out
    eye_distance = float(np.linalg.norm(landmarks[RIGHT_EYE] - landmarks[LEFT_EYE]))
    region = CUTOUT_REGIONS[int(rng.integers(len(CUTOUT_REGIONS)))]
    low, high = CUTOUT_THICKNESS[region]
    thickness_px = max(1, round(rng.uniform(low, high) * eye_distance))
    mask = cutout_mask((height, width), landmarks, region, thickness_px, rng)
    if rng.random() < 0.5:
        out[mask] = 0
    else:
        out[mask] = np.rint(crop.reshape(-1, 3).mean(axis=0)).astype(np.uint8)
    return out


def augment_face(
    crop: np.ndarray,
    landmarks: np.ndarray,
    rng: np.random.Generator,
    *,
    cutout_p: float = 0.5,
    augmentations: A.Compose | None = None,
) -> np.ndarray:
    """One training view of a face: Face-Cutout with probability ``cutout_p``, then the paper's set.

    ``crop``: ``(H, W, 3) uint8`` RGB; ``landmarks``: ``(5, 2)`` MTCNN points in crop pixels.
    Returns a new ``(H, W, 3) uint8`` array; ``crop`` is not modified. ``augmentations``: a
    pipeline built once (e.g. :func:`paper_augmentations`) to save building one per call; it is
    re-seeded from ``rng`` on every call, so the output depends on ``rng`` alone either way (and
    one pipeline must not be shared by threads that call this at the same time).
    """
    if not 0.0 <= cutout_p <= 1.0:
        raise ValueError(f"cutout_p must be in [0, 1], got {cutout_p}")
    check_face_inputs(crop, landmarks)
    # Both draws happen on every call, so the rng stream does not depend on the branch taken.
    do_cutout = rng.random() < cutout_p
    seed = draw_seed(rng)
    face = face_cutout(crop, landmarks, rng) if do_cutout else crop
    if augmentations is None:
        augmentations = paper_augmentations(seed)
    else:
        augmentations.set_random_seed(seed)
    out = np.ascontiguousarray(augmentations(image=face)["image"])
    if np.shares_memory(out, crop):
        out = out.copy()
    assert out.shape == crop.shape and out.dtype == np.uint8, (out.shape, out.dtype)
    return out

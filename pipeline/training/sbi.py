"""Self-blended images (SBI) from a face crop and MTCNN's five landmarks.

Shiohara and Yamasaki, "Detecting Deepfakes with Self-Blended Images", CVPR 2022
(arXiv:2204.08376; reference code ``mapooon/SelfBlendedImages``, ``src/utils/sbi.py`` and
``funcs.py``). A pseudo-fake is made from one real face alone: a copy of it (the *source*) is
slightly altered in colour, frequency content and geometry, and blended back into the original
(the *target*) through a soft face mask. The result carries the generic traces of face swapping
(blending boundary, colour and resolution mismatch, slight misalignment) without any identity
change, so a detector trained on real vs. self-blended faces learns those traces rather than one
generator's fingerprints.

**The mask, and how it differs from the paper.** SBI takes the convex hull of 81 dlib landmarks
(the 68 standard points, whose jaw contour follows the real face outline, plus 13 forehead points
up to the hairline; a quarter of the time only the 68), deforms it (Face X-ray's random hull types
and an elastic transform), and softens its edge. MTCNN gives only five points (eyes, nose tip,
mouth corners), so :func:`face_mask` builds the hull from those five plus points extrapolated in
the face's own frame (vertical axis from the eyes' midpoint to the mouth's midpoint, eye-mouth
distance ``d``, inter-eye distance ``e``):

* forehead: one point 0.8-1.0 ``d`` above the eye line and two widened ones beside it (a quarter
  of the time, as SBI's 68-point hull, only brow height, 0.3-0.4 ``d``);
* temples: 0.5-0.65 ``e`` outward from each eye;
* cheeks: 0.4-0.55 ``e`` outward from each mouth corner;
* jaw: two points 0.65 ``e`` either side of the mouth and 0.3 ``d`` below it, and a chin point
  0.45-0.65 ``d`` below the mouth.

Each extrapolated point is then jittered (normal, 4% of ``(d + e) / 2``) in place of SBI's
elastic deformation. The hull is therefore smaller and coarser than the paper's (at most twelve
vertices, no landmark-based jaw contour, no real hairline), and its boundary is less face-shaped:
proportions of an average frontal face, not of this face. The edge is softened exactly as in
SBI's ``get_blend_mask`` (resize to 192-256 px, Gaussian blur with an odd 5-25 px kernel, keep
only the fully-inside part, blur again with another kernel and sigma 5-45, normalise, resize
back), and the mask is scaled by a blend ratio drawn from {0.25, 0.5, 0.75, 1, 1, 1}.

**The source augmentations** (paper section 3.2, "source-target augmentation"): colour (RGB
shift p=0.3, hue/saturation/value, brightness/contrast +-0.1), frequency (one of downscale by 2
or 4 with nearest-neighbour down and bilinear up, or sharpen), then a small geometric change
(scale 0.95-1.05 about the centre, translation up to +-3% of the side, borders reflected). The
upstream code passes hue/saturation/value shifts of +-0.3, which on uint8 images shift nothing;
here they are small but real (hue +-3 of OpenCV's 180, saturation and value +-10 of 255).
Upstream applies the colour/frequency set to the target instead of the source half of the time;
here the target is always the untouched crop, so the fake differs from the real crop only inside
the mask and the pair is ``(crop, fake)``.

Inputs: ``crop`` is an ``(H, W, 3) uint8`` RGB face crop (face box grown 1.3x), ``landmarks`` a
``(5, 2) float32`` array of MTCNN's points in crop pixels, ``(x, y)``, in MTCNN's order: left
eye, right eye, nose, left mouth corner, right mouth corner. All randomness comes from ``rng``.
"""

from __future__ import annotations

import os
from typing import Final

import cv2
import numpy as np

from pipeline.training.augment import (
    LEFT_EYE,
    LEFT_MOUTH,
    RIGHT_EYE,
    RIGHT_MOUTH,
    check_face_inputs,
    draw_seed,
)

# albumentations asks PyPI for a newer version when it is imported unless this is set; importing
# a module of this project never touches the network (STYLE.md, habit 7). A user's own setting wins.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
import albumentations as A

#: SBI's blend ratios (``dynamic_blend``): a full-strength blend half of the time.
BLEND_RATIOS: Final = (0.25, 0.5, 0.75, 1.0, 1.0, 1.0)

#: Tries at a blend that differs from the input before :func:`self_blend` gives up.
MAX_TRIES: Final = 4

#: Below this eye-eye or eye-mouth distance (pixels) the landmarks are treated as degenerate.
MIN_FACE_SCALE_PX: Final = 2.0


def hull_points(landmarks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The five points and the face outline extrapolated from them: ``(15, 2)`` float64 pixels.

    Raises ``ValueError`` for non-finite landmarks or eyes (or eyes and mouth) closer than
    :data:`MIN_FACE_SCALE_PX`.
    """
    pts = landmarks.astype(np.float64)
    if not np.all(np.isfinite(pts)):
        raise ValueError(f"landmarks are not finite: {landmarks.tolist()}")
    eye_centre = (pts[LEFT_EYE] + pts[RIGHT_EYE]) / 2
    mouth_centre = (pts[LEFT_MOUTH] + pts[RIGHT_MOUTH]) / 2
    down = mouth_centre - eye_centre
    d = float(np.linalg.norm(down))
    e = float(np.linalg.norm(pts[RIGHT_EYE] - pts[LEFT_EYE]))
    if d < MIN_FACE_SCALE_PX or e < MIN_FACE_SCALE_PX:
        raise ValueError(
            f"degenerate landmarks (eye-mouth {d:.1f} px, eye-eye {e:.1f} px): {landmarks.tolist()}"
        )
    up = -down / d
    # Perpendicular to the face's vertical axis, pointing from the left eye to the right one
    # (the sign test keeps it so for a mirrored or strongly rolled face).
    right = np.array([-up[1], up[0]])
    if float(np.dot(right, pts[RIGHT_EYE] - pts[LEFT_EYE])) < 0:
        right = -right

    # SBI drops its 13 forehead points a quarter of the time; the hull then stops at the brows.
    top = (rng.uniform(0.3, 0.4) if rng.random() < 0.25 else rng.uniform(0.8, 1.0)) * d
    temple = rng.uniform(0.5, 0.65) * e
    cheek = rng.uniform(0.4, 0.55) * e
    chin = rng.uniform(0.45, 0.65) * d
    outline = np.stack(
        [
            eye_centre + top * up,
            eye_centre + 0.8 * top * up - 0.75 * (e / 2 + temple) * right,
            eye_centre + 0.8 * top * up + 0.75 * (e / 2 + temple) * right,
            pts[LEFT_EYE] - temple * right,
            pts[RIGHT_EYE] + temple * right,
            pts[LEFT_MOUTH] - cheek * right,
            pts[RIGHT_MOUTH] + cheek * right,
            mouth_centre - 0.65 * e * right - 0.3 * d * up,
            mouth_centre + 0.65 * e * right - 0.3 * d * up,
            mouth_centre - chin * up,
        ]
    )
    outline += rng.normal(0.0, 0.04 * (d + e) / 2, size=outline.shape)
    return np.concatenate([pts, outline])


def blend_mask(hull: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """SBI's ``get_blend_mask``: a binary ``(H, W)`` mask, its edge softened: float32 in [0, 1].

    The work is done at a random 192-256 px size, as upstream, so the blur widths are fractions
    of the crop whatever its resolution. An all-zero result means the hull was thinner than the
    first kernel.
    """
    height, width = hull.shape
    size_h, size_w = (int(v) for v in rng.integers(192, 257, size=2))
    kernel_1, kernel_2 = (int(v) for v in rng.choice(np.arange(5, 26, 2), size=2))
    sigma_2 = float(rng.integers(5, 46))
    small = cv2.resize(hull.astype(np.float32), (size_w, size_h), interpolation=cv2.INTER_LINEAR)
    blurred = np.asarray(cv2.GaussianBlur(small, (kernel_1, kernel_1), 0), dtype=np.float32)
    if blurred.max() <= 0:
        return np.zeros((height, width), np.float32)
    blurred /= blurred.max()
    # Upstream keeps exactly the pixels equal to the maximum (the kernel fully inside the hull),
    # an erosion by half a kernel; the tolerance absorbs float32 rounding of the kernel's sum.
    blurred[blurred < 1 - 1e-4] = 0
    if blurred.max() <= 0:
        return np.zeros((height, width), np.float32)
    blurred = np.asarray(cv2.GaussianBlur(blurred, (kernel_2, kernel_2), sigma_2), np.float32)
    blurred /= blurred.max()
    out = cv2.resize(blurred, (width, height), interpolation=cv2.INTER_LINEAR)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def face_mask(
    shape: tuple[int, int], landmarks: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """The soft blending mask of a face: ``(H, W) float32`` in [0, 1] for a crop of ``shape``.

    The jittered convex hull of :func:`hull_points` (parts outside the crop are cut off), its
    edge softened by :func:`blend_mask`, times a blend ratio from :data:`BLEND_RATIOS`: the
    inside of the face equals the ratio, the far background 0. ``landmarks``: ``(5, 2)`` MTCNN
    points in crop pixels. Raises ``ValueError`` for degenerate landmarks.
    """
    if landmarks.shape != (5, 2):
        raise ValueError(f"landmarks must be MTCNN's (5, 2) points, got shape {landmarks.shape}")
    height, width = shape
    hull = np.zeros((height, width), np.uint8)
    polygon = cv2.convexHull(np.rint(hull_points(landmarks, rng)).astype(np.int32))
    cv2.fillConvexPoly(hull, polygon, 1)
    mask = blend_mask(hull, rng)
    ratio = float(rng.choice(BLEND_RATIOS))
    return (mask * ratio).astype(np.float32)


def source_augmentations(seed: int | None = None) -> A.Compose:
    """SBI's source augmentations: colour, then frequency, then a small affine change.

    Image in, image out: ``(H, W, 3) uint8`` RGB, same size.
    """
    return A.Compose(
        [
            A.RGBShift(r_shift_limit=20, g_shift_limit=20, b_shift_limit=20, p=0.3),
            A.HueSaturationValue(hue_shift_limit=3, sat_shift_limit=10, val_shift_limit=10, p=1.0),
            A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=1.0),
            A.OneOf(
                [
                    # Upstream's RandomDownScale: by 2 or 4, nearest down, bilinear back up.
                    A.Downscale(
                        scale_range=(0.25, 0.5),
                        interpolation_pair={
                            "downscale": cv2.INTER_NEAREST,
                            "upscale": cv2.INTER_LINEAR,
                        },
                        p=1.0,
                    ),
                    A.Sharpen(alpha=(0.2, 0.5), lightness=(0.5, 1.0), p=1.0),
                ],
                p=1.0,
            ),
            A.Affine(
                scale=(0.95, 1.05),
                translate_percent={"x": (-0.03, 0.03), "y": (-0.03, 0.03)},
                border_mode=cv2.BORDER_REFLECT_101,
                p=1.0,
            ),
        ],
        seed=seed,
    )


def self_blend(
    crop: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A self-blended fake of ``crop``: ``(fake, mask)``.

    ``fake = mask * source + (1 - mask) * crop``, rounded to ``(H, W, 3) uint8``, where the
    source is ``crop`` after :func:`source_augmentations`; ``mask`` is the ``(H, W) float32``
    [0, 1] mask of :func:`face_mask` that was used. Pixels where ``mask == 0`` equal ``crop``'s;
    ``crop`` is not modified. A draw whose fake equals ``crop`` (empty mask) is redrawn, up to
    :data:`MAX_TRIES` draws in all; the last one is returned even then. Raises ``ValueError``
    for a crop that is not ``(H, W, 3) uint8`` or degenerate landmarks.
    """
    check_face_inputs(crop, landmarks)
    target = crop.astype(np.float32)
    fake, mask = crop.copy(), np.zeros(crop.shape[:2], np.float32)
    for _ in range(MAX_TRIES):
        mask = face_mask(crop.shape[:2], landmarks, rng)
        source = source_augmentations(draw_seed(rng))(image=crop)["image"]
        alpha = mask[..., None]
        blended = alpha * source.astype(np.float32) + (1 - alpha) * target
        fake = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
        if not np.array_equal(fake, crop):
            break
    return fake, mask

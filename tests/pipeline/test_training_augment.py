"""Training augmentations: the paper's set, Face-Cutout and self-blended images, on a real face."""

from __future__ import annotations

import warnings
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pytest
from facenet_pytorch import MTCNN

from pipeline.faces import crop as cut_box
from pipeline.faces import square_box
from pipeline.training import augment, sbi
from pipeline.training.augment import (
    CUTOUT_REGIONS,
    LEFT_EYE,
    LEFT_MOUTH,
    NOSE,
    RIGHT_EYE,
    RIGHT_MOUTH,
    CutoutRegion,
    augment_face,
    cutout_mask,
    face_cutout,
    paper_augmentations,
)
from pipeline.training.sbi import BLEND_RATIOS, MAX_TRIES, face_mask, self_blend

CROP_SIDE = 256


@pytest.fixture(scope="module")
def face(shared_data: Path) -> tuple[np.ndarray, np.ndarray]:
    """A real ``(256, 256, 3) uint8`` face crop (margin 1.3) and its ``(5, 2)`` MTCNN landmarks."""
    bgr = cv2.imread(str(shared_data / "faces/fr_obama.jpg"))
    assert bgr is not None
    image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    boxes, probs, points = MTCNN(keep_all=False).detect(image, landmarks=True)
    best = int(np.argmax(probs))  # the photo's second, tiny "face" is a false detection
    x1, y1, x2, y2 = (float(v) for v in boxes[best])
    box = square_box((x1, y1, x2, y2), image.shape[1], image.shape[0], margin=1.3)
    crop = cut_box(image, box)
    scale = CROP_SIDE / crop.shape[0]
    crop = cv2.resize(crop, (CROP_SIDE, CROP_SIDE), interpolation=cv2.INTER_AREA)
    landmarks = ((points[best] - np.array(box[:2])) * scale).astype(np.float32)
    crop.flags.writeable = False  # a test that modifies the shared crop fails loudly
    return crop, landmarks


def _pixel(point: np.ndarray) -> tuple[int, int]:
    """``(row, column)`` of an ``(x, y)`` point."""
    return round(float(point[1])), round(float(point[0]))


def _corners(image: np.ndarray, fraction: float = 0.1) -> list[np.ndarray]:
    k = max(1, int(image.shape[0] * fraction))
    return [image[:k, :k], image[:k, -k:], image[-k:, :k], image[-k:, -k:]]


# --------------------------------------------------------------------------------------------
# The paper's augmentations


def test_paper_augmentations_emit_no_warnings_with_every_transform_applied(
    face: tuple[np.ndarray, np.ndarray],
) -> None:
    crop, _ = face
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        augmentations = paper_augmentations(seed=0)
        # Each transform alone at p=1, the rare ones (sun flare, rain) and each blur included.
        every = [
            child
            for transform in augmentations.transforms
            for child in (transform.transforms if isinstance(transform, A.OneOf) else [transform])
        ]
        assert len(every) == 10
        for transform in every:
            transform.p = 1.0
            out = A.Compose([transform], seed=1)(image=crop)["image"]
            assert out.shape == crop.shape and out.dtype == np.uint8, transform
        for seed in range(8):
            out = paper_augmentations(seed=seed)(image=crop)["image"]
            assert out.shape == crop.shape and out.dtype == np.uint8


def test_paper_augmentations_are_reproducible_from_the_seed(
    face: tuple[np.ndarray, np.ndarray],
) -> None:
    crop, _ = face
    first = paper_augmentations(seed=3)(image=crop)["image"]
    assert np.array_equal(first, paper_augmentations(seed=3)(image=crop)["image"])
    others = [paper_augmentations(seed=s)(image=crop)["image"] for s in range(4, 8)]
    assert any(not np.array_equal(first, other) for other in others)


# --------------------------------------------------------------------------------------------
# Face-Cutout


@pytest.mark.parametrize(
    ("region", "covered"),
    [
        ("eyes", [LEFT_EYE, RIGHT_EYE]),
        ("nose", [NOSE]),
        ("mouth", [LEFT_MOUTH, RIGHT_MOUTH]),
    ],
)
def test_cutout_mask_covers_its_landmarks_and_not_the_corners(
    face: tuple[np.ndarray, np.ndarray], region: CutoutRegion, covered: list[int]
) -> None:
    crop, landmarks = face
    mask = cutout_mask(crop.shape[:2], landmarks, region, 20, np.random.default_rng(0))
    assert mask.dtype == bool and mask.shape == crop.shape[:2]
    assert all(mask[_pixel(landmarks[i])] for i in covered)
    assert not any(corner.any() for corner in _corners(mask))


def test_cutout_polygon_covers_three_or_more_landmarks(
    face: tuple[np.ndarray, np.ndarray],
) -> None:
    crop, landmarks = face
    for seed in range(10):
        mask = cutout_mask(crop.shape[:2], landmarks, "polygon", 3, np.random.default_rng(seed))
        assert sum(bool(mask[_pixel(p)]) for p in landmarks) >= 3
        assert 0 < mask.mean() < 0.5


def test_face_cutout_occludes_near_the_landmarks_only(
    face: tuple[np.ndarray, np.ndarray],
) -> None:
    crop, landmarks = face
    eye_distance = float(np.linalg.norm(landmarks[RIGHT_EYE] - landmarks[LEFT_EYE]))
    rows, cols = np.mgrid[: crop.shape[0], : crop.shape[1]]
    for seed in range(20):
        out = face_cutout(crop, landmarks, np.random.default_rng(seed))
        assert out.shape == crop.shape and out.dtype == np.uint8
        changed = np.any(out != crop, axis=2)
        assert changed.sum() > 0.2 * eye_distance**2, seed
        # Every occluded pixel lies within one inter-eye distance of some landmark.
        nearest = np.min(
            [np.hypot(cols - x, rows - y) for x, y in landmarks.astype(np.float64)], axis=0
        )
        assert nearest[changed].max() < eye_distance, seed
        assert all(np.array_equal(a, b) for a, b in zip(_corners(out), _corners(crop), strict=True))


def test_face_cutout_is_reproducible_from_the_rng(face: tuple[np.ndarray, np.ndarray]) -> None:
    crop, landmarks = face
    first = face_cutout(crop, landmarks, np.random.default_rng(7))
    assert np.array_equal(first, face_cutout(crop, landmarks, np.random.default_rng(7)))
    others = [face_cutout(crop, landmarks, np.random.default_rng(s)) for s in range(8, 12)]
    assert any(not np.array_equal(first, other) for other in others)


@pytest.mark.parametrize(
    "landmarks",
    [
        np.array([[10, 10], [300, 10], [20, 20], [10, 30], [30, 30]], np.float32),  # outside
        np.array([[10, 10], [20, 10], [np.nan, 20], [10, 30], [30, 30]], np.float32),
        np.array([[10, 10], [10.5, 10], [15, 20], [10, 30], [30, 30]], np.float32),  # eyes 0.5 px
    ],
    ids=["outside", "nan", "degenerate"],
)
def test_face_cutout_leaves_a_crop_with_unusable_landmarks_unchanged(
    landmarks: np.ndarray,
) -> None:
    crop = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    out = face_cutout(crop, landmarks, np.random.default_rng(0))
    assert np.array_equal(out, crop) and not np.shares_memory(out, crop)


def test_face_cutout_rejects_wrong_shapes() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="uint8"):
        face_cutout(np.zeros((8, 8, 3), np.float32), np.zeros((5, 2), np.float32), rng)
    with pytest.raises(ValueError, match=r"\(5, 2\)"):
        face_cutout(np.zeros((8, 8, 3), np.uint8), np.zeros((68, 2), np.float32), rng)


def test_face_cutout_draws_every_region(
    face: tuple[np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    crop, landmarks = face
    drawn: set[str] = set()

    def recording_mask(
        shape: tuple[int, int],
        landmarks: np.ndarray,
        region: CutoutRegion,
        thickness_px: int,
        rng: np.random.Generator,
    ) -> np.ndarray:
        drawn.add(region)
        return cutout_mask(shape, landmarks, region, thickness_px, rng)

    monkeypatch.setattr(augment, "cutout_mask", recording_mask)
    for seed in range(40):
        face_cutout(crop, landmarks, np.random.default_rng(seed))
    assert drawn == set(CUTOUT_REGIONS)


# --------------------------------------------------------------------------------------------
# augment_face


def test_augment_face_keeps_shape_and_input_and_follows_the_rng(
    face: tuple[np.ndarray, np.ndarray],
) -> None:
    crop, landmarks = face
    before = crop.copy()
    outs = [augment_face(crop, landmarks, np.random.default_rng(s)) for s in range(6)]
    assert all(o.shape == crop.shape and o.dtype == np.uint8 for o in outs)
    assert not any(np.shares_memory(o, crop) for o in outs)
    assert np.array_equal(crop, before)
    assert np.array_equal(outs[0], augment_face(crop, landmarks, np.random.default_rng(0)))
    assert any(not np.array_equal(outs[0], other) for other in outs[1:])


def test_augment_face_with_a_prebuilt_pipeline_depends_on_the_rng_alone(
    face: tuple[np.ndarray, np.ndarray],
) -> None:
    crop, landmarks = face
    prebuilt = paper_augmentations()
    for seed in range(4):
        built_here = augment_face(crop, landmarks, np.random.default_rng(seed))
        reused = augment_face(crop, landmarks, np.random.default_rng(seed), augmentations=prebuilt)
        assert np.array_equal(built_here, reused), seed


def test_augment_face_cutout_probability(face: tuple[np.ndarray, np.ndarray]) -> None:
    crop, landmarks = face
    identity = A.Compose([])
    never = augment_face(
        crop, landmarks, np.random.default_rng(0), cutout_p=0.0, augmentations=identity
    )
    assert np.array_equal(never, crop) and not np.shares_memory(never, crop)
    always = augment_face(
        crop, landmarks, np.random.default_rng(0), cutout_p=1.0, augmentations=identity
    )
    assert not np.array_equal(always, crop)
    with pytest.raises(ValueError, match="cutout_p"):
        augment_face(crop, landmarks, np.random.default_rng(0), cutout_p=1.5)


# --------------------------------------------------------------------------------------------
# Self-blended images


def test_face_mask_covers_the_face_and_not_the_background(
    face: tuple[np.ndarray, np.ndarray],
) -> None:
    crop, landmarks = face
    mouth_centre = (landmarks[LEFT_MOUTH] + landmarks[RIGHT_MOUTH]) / 2
    for seed in range(12):
        mask = face_mask(crop.shape[:2], landmarks, np.random.default_rng(seed))
        assert mask.shape == crop.shape[:2] and mask.dtype == np.float32
        assert mask.min() >= 0.0 and mask.max() <= 1.0
        ratio = float(mask.max())
        assert any(np.isclose(ratio, r) for r in BLEND_RATIOS), ratio
        assert mask[_pixel(landmarks[NOSE])] == pytest.approx(ratio, abs=1e-4)
        assert mask[_pixel(mouth_centre)] >= 0.5 * ratio
        assert mask[_pixel(landmarks[LEFT_EYE])] >= 0.25 * ratio
        assert mask[_pixel(landmarks[RIGHT_EYE])] >= 0.25 * ratio
        assert mask[_pixel(landmarks[LEFT_MOUTH])] > 0 and mask[_pixel(landmarks[RIGHT_MOUTH])] > 0
        assert all(not corner.any() for corner in _corners(mask))
        # The face box (grown 1.3x) fills ~59% of the crop; the eroded hull a part of that.
        assert 0.10 <= float((mask > 0).mean()) <= 0.70, seed


def test_face_mask_is_reproducible_from_the_rng(face: tuple[np.ndarray, np.ndarray]) -> None:
    crop, landmarks = face
    first = face_mask(crop.shape[:2], landmarks, np.random.default_rng(1))
    assert np.array_equal(first, face_mask(crop.shape[:2], landmarks, np.random.default_rng(1)))
    assert not np.array_equal(first, face_mask(crop.shape[:2], landmarks, np.random.default_rng(2)))


def test_face_mask_rejects_degenerate_landmarks() -> None:
    same_point = np.full((5, 2), 30.0, np.float32)
    with pytest.raises(ValueError, match="degenerate"):
        face_mask((64, 64), same_point, np.random.default_rng(0))
    with pytest.raises(ValueError, match="finite"):
        face_mask((64, 64), np.full((5, 2), np.nan, np.float32), np.random.default_rng(0))


def test_self_blend_changes_the_face_only(face: tuple[np.ndarray, np.ndarray]) -> None:
    crop, landmarks = face
    before = crop.copy()
    for seed in range(8):
        fake, mask = self_blend(crop, landmarks, np.random.default_rng(seed))
        assert fake.shape == crop.shape and fake.dtype == np.uint8
        assert mask.shape == crop.shape[:2] and mask.dtype == np.float32
        changed = np.any(fake != crop, axis=2)
        assert not changed[mask == 0].any(), seed
        assert all(
            np.array_equal(a, b) for a, b in zip(_corners(fake), _corners(crop), strict=True)
        )
        inside = mask >= 0.9 * mask.max()
        assert changed[inside].mean() > 0.3, seed
    assert np.array_equal(crop, before)


def test_self_blend_is_reproducible_from_the_rng(face: tuple[np.ndarray, np.ndarray]) -> None:
    crop, landmarks = face
    fake, mask = self_blend(crop, landmarks, np.random.default_rng(5))
    again, again_mask = self_blend(crop, landmarks, np.random.default_rng(5))
    assert np.array_equal(fake, again) and np.array_equal(mask, again_mask)
    other, _ = self_blend(crop, landmarks, np.random.default_rng(6))
    assert not np.array_equal(fake, other)


def test_self_blend_redraws_an_empty_mask_a_bounded_number_of_times(
    face: tuple[np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    crop, landmarks = face
    calls: list[int] = []

    def empty_mask(
        shape: tuple[int, int], landmarks: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        calls.append(1)
        return np.zeros(shape, np.float32)

    monkeypatch.setattr(sbi, "face_mask", empty_mask)
    fake, mask = self_blend(crop, landmarks, np.random.default_rng(0))
    assert len(calls) == MAX_TRIES
    assert np.array_equal(fake, crop) and not np.shares_memory(fake, crop) and not mask.any()

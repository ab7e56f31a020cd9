"""Face detection: box maths, frame selection, and MTCNN on the shared real photos."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from facenet_pytorch import MTCNN
from pydantic import ValidationError

from pipeline.faces import (
    Detection,
    FaceDetector,
    FaceSettings,
    FixedShapeBatches,
    crop,
    select_frame_times,
    square_box,
)
from tests.support.videos import read_frames_at

# --------------------------------------------------------------------------------------------
# Box maths (unit)


def test_square_box_grows_the_longer_side_by_the_margin_around_the_centre() -> None:
    # 40 x 60 face centred at (120, 130): side 1.3 * 60 = 78.
    assert square_box((100, 100, 140, 160), 640, 480) == (81.0, 91.0, 159.0, 169.0)
    assert square_box((100, 100, 140, 160), 640, 480, margin=1.0) == (90.0, 100.0, 150.0, 160.0)


def test_square_box_is_shifted_inside_the_frame_not_clipped() -> None:
    # Near the top-left corner: side 65, shifted right/down to start at the frame edge.
    x1, y1, x2, y2 = square_box((0, 0, 50, 50), 640, 480)
    assert (x1, y1) == (0.0, 0.0) and x2 - x1 == y2 - y1 == 65
    # Near the bottom-right corner.
    assert square_box((600, 440, 640, 480), 640, 480) == (588.0, 428.0, 640.0, 480.0)
    # Larger than the frame's shorter side: reduced to it, centred where the frame allows.
    assert square_box((10, 0, 110, 90), 120, 90) == (15.0, 0.0, 105.0, 90.0)


def test_square_box_invariants_on_random_boxes() -> None:
    rng = np.random.default_rng(0)
    for _ in range(500):
        width, height = (int(v) for v in rng.integers(40, 2000, size=2))
        w, h = rng.uniform(12, min(width, height), size=2)
        x1, y1 = rng.uniform(0, width - w), rng.uniform(0, height - h)
        raw = (x1, y1, x1 + w, y1 + h)
        bx1, by1, bx2, by2 = square_box(raw, width, height)
        side = bx2 - bx1
        assert side == by2 - by1 and side == int(side)
        assert bx1 >= 0 and bx2 <= width and by1 >= 0 and by2 <= height
        assert side == min(round(1.3 * max(w, h)), width, height)
        if side >= max(w, h):  # not reduced below the face: the face is inside (to a pixel)
            assert bx1 <= x1 + 1 and by1 <= y1 + 1 and bx2 >= x1 + w - 1 and by2 >= y1 + h - 1


def test_crop_returns_the_box_pixels() -> None:
    frame = np.arange(90 * 120 * 3, dtype=np.uint32).reshape(90, 120, 3).astype(np.uint8)
    det = Detection(
        box=(15.0, 0.0, 105.0, 90.0),
        raw_box=(10.0, 0.0, 110.0, 90.0),
        confidence=0.99,
        landmarks=np.zeros((5, 2), np.float32),
    )
    out = crop(frame, det)
    assert out.shape == (90, 90, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, frame[0:90, 15:105])
    assert out.base is None or out.base is not frame  # a copy
    with pytest.raises(ValueError, match="not inside"):
        crop(frame, (100.0, 0.0, 130.0, 30.0))


def test_settings_validate() -> None:
    s = FaceSettings()
    assert (s.margin, s.min_face_size_px, s.min_confidence, s.max_frames_per_shot) == (
        1.3,
        40,
        0.9,
        64,
    )
    assert s.thresholds == (0.6, 0.7, 0.7)
    with pytest.raises(ValidationError):
        FaceSettings(margin=0.5)
    with pytest.raises(ValidationError):
        FaceSettings(unknown=1)


# --------------------------------------------------------------------------------------------
# Frame selection (unit)


def test_select_frame_times_keeps_every_frame_of_a_short_shot() -> None:
    times = select_frame_times(0.0, 2.0, 25.0)
    assert len(times) == 50
    assert times == [k / 25.0 for k in range(50)]


def test_select_frame_times_spreads_64_unique_frames_over_a_long_shot() -> None:
    times = select_frame_times(10.0, 40.0, 25.0)
    assert len(times) == 64 == len(set(times))
    assert times[0] == 10.0 and times[-1] == pytest.approx(39.96)
    assert times == sorted(times)
    gaps = np.diff(np.round(np.array(times) * 25.0))
    assert gaps.min() == 11 and gaps.max() == 12  # 749 frames / 63 gaps, rounded


def test_select_frame_times_boundaries() -> None:
    # [1.5, 3.0) at 25 fps: frames 38 (1.52 s) to 74 (2.96 s).
    times = select_frame_times(1.5, 3.0, 25.0)
    assert (times[0], times[-1], len(times)) == (38 / 25, 74 / 25, 37)
    # Adjacent shots share no frame and miss none.
    a, b = select_frame_times(0.0, 4.5, 29.97), select_frame_times(4.5, 9.0, 29.97)
    assert round(a[-1] * 29.97) + 1 == round(b[0] * 29.97)
    assert select_frame_times(3.0, 3.0, 25.0) == []
    assert select_frame_times(0.0, 10.0, 25.0, max_frames=1) == [0.0]
    with pytest.raises(ValueError):
        select_frame_times(0.0, 1.0, 0.0)


# --------------------------------------------------------------------------------------------
# MTCNN on real photos

# Faces counted by eye, once, on full-size copies of the photos.
MULTI_PERSON = {
    "facenet_multiface.jpg": 6,  # six people on a staircase
    "fr_two_people.jpg": 2,  # two portraits side by side
    "dlib_bald_guys.jpg": 24,  # a collage of 24 portrait tiles
    "dlib_2008_002470.jpg": 6,  # six people at a table, faces 29 to 47 px wide
    "insightface_t1.jpg": 6,  # six people around a card table
}


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    # Frames are reduced to 640 px for speed; min_face_size_px is lowered from 40 to 20 because
    # dlib_2008_002470.jpg (500 x 332) has real faces 29 to 47 px wide.
    return FaceDetector(FaceSettings(max_side_px=640, min_face_size_px=20))


def _rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert bgr is not None, path
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def detections(shared_data: Path, detector: FaceDetector) -> dict[str, list[Detection]]:
    """Every face and non-face photo, detected once (one photo per call)."""
    out = {}
    for folder in ("faces", "nonface"):
        for path in sorted((shared_data / folder).iterdir()):
            if path.suffix.lower() in (".jpg", ".png"):
                out[f"{folder}/{path.name}"] = detector.detect([_rgb(path)])[0]
    return out


def test_every_face_photo_has_a_face(detections: dict[str, list[Detection]]) -> None:
    faces = {k: len(v) for k, v in detections.items() if k.startswith("faces/")}
    assert len(faces) == 13
    assert all(n >= 1 for n in faces.values()), faces


def test_no_face_in_non_face_photos(detections: dict[str, list[Detection]]) -> None:
    # Includes the hard negatives: dogs and a cat.
    nonface = {k: len(v) for k, v in detections.items() if k.startswith("nonface/")}
    assert set(nonface) == {
        "nonface/dlib_dogs.jpg",
        "nonface/imageio_bricks.jpg",
        "nonface/imageio_chelsea.png",
        "nonface/imageio_coffee.png",
    }
    assert all(n == 0 for n in nonface.values()), nonface


@pytest.mark.parametrize(("name", "count"), sorted(MULTI_PERSON.items()))
def test_face_counts_in_group_photos(
    detections: dict[str, list[Detection]], name: str, count: int
) -> None:
    assert len(detections[f"faces/{name}"]) == count


def test_detections_are_square_enlarged_and_inside(
    shared_data: Path, detections: dict[str, list[Detection]]
) -> None:
    for key, dets in detections.items():
        if not dets:
            continue
        height, width = _rgb(shared_data / key).shape[:2]
        confidences = [d.confidence for d in dets]
        assert confidences == sorted(confidences, reverse=True)
        for d in dets:
            assert 0.9 <= d.confidence <= 1.0
            x1, y1, x2, y2 = d.box
            assert x2 - x1 == y2 - y1 > 0
            assert x1 >= 0 and x2 <= width and y1 >= 0 and y2 <= height
            rw, rh = d.raw_box[2] - d.raw_box[0], d.raw_box[3] - d.raw_box[1]
            assert max(rw, rh) >= 20
            assert x2 - x1 == min(round(1.3 * max(rw, rh)), width, height)
            # The enlarged box holds the part of the face box that is inside the frame.
            assert x1 <= max(0, d.raw_box[0]) + 1 and y1 <= max(0, d.raw_box[1]) + 1
            assert x2 >= min(width, d.raw_box[2]) - 1 and y2 >= min(height, d.raw_box[3]) - 1
            # Eyes, nose and mouth lie in the face box (for a face cut by the frame edge, as in
            # fr_obama_partial_face.jpg, they can lie outside the frame).
            assert d.landmarks.shape == (5, 2) and d.landmarks.dtype == np.float32
            lx, ly = d.landmarks[:, 0], d.landmarks[:, 1]
            assert (lx >= d.raw_box[0]).all() and (lx <= d.raw_box[2]).all()
            assert (ly >= d.raw_box[1]).all() and (ly <= d.raw_box[3]).all()


def test_reduced_frames_map_boxes_back_to_full_resolution(
    shared_data: Path, detections: dict[str, list[Detection]]
) -> None:
    from pipeline.tracks import box_iou

    image = _rgb(shared_data / "faces/fr_two_people.jpg")  # 1126 x 661, reduced to 640 above
    full = FaceDetector(FaceSettings(max_side_px=None, min_face_size_px=20)).detect([image])[0]
    reduced = detections["faces/fr_two_people.jpg"]
    assert len(full) == len(reduced) == 2
    for a in reduced:
        assert max(box_iou(a.raw_box, b.raw_box) for b in full) > 0.8
        assert max(box_iou(a.box, b.box) for b in full) > 0.8


def test_batched_detection_equals_one_by_one(shared_data: Path, detector: FaceDetector) -> None:
    frames = [f for _, f in read_frames_at(shared_data / "deepfake/ffpp_c23_634.mp4", [0, 4, 8])]
    square = _rgb(shared_data / "faces/fr_obama_small.jpg")  # another size in the same call
    batched = detector.detect([frames[0], square, frames[1], frames[2]])
    single = [detector.detect([f])[0] for f in (frames[0], square, frames[1], frames[2])]
    assert [len(d) for d in batched] == [len(d) for d in single] == [1, 1, 1, 1]
    for got, want in zip(batched, single, strict=True):
        for a, b in zip(got, want, strict=True):
            np.testing.assert_allclose(a.raw_box, b.raw_box, atol=1e-2)
            assert a.box == b.box
            assert a.confidence == pytest.approx(b.confidence, abs=1e-4)
            np.testing.assert_allclose(a.landmarks, b.landmarks, atol=1e-2)
    assert detector.detect([]) == []


def test_refinement_nets_run_in_fixed_shapes_with_unchanged_outputs() -> None:
    # MTCNN's own R- and O-nets (weights from the facenet-pytorch wheel), on candidate counts
    # below, at and across the chunk and bucket sizes: (count, batch shapes the net must see).
    mtcnn = MTCNN().eval()
    rng = torch.Generator().manual_seed(0)
    cases = [(1, [8]), (7, [8]), (8, [8]), (9, [16]), (33, [64]), (64, [64]), (65, [64, 8])]
    cases.append((200, [64, 64, 64, 8]))
    for net, side in ((mtcnn.rnet, 24), (mtcnn.onet, 48)):
        wrapped = FixedShapeBatches(net, max_batch=64, min_batch=8)
        for n, chunks in cases:
            x = torch.rand((n, 3, side, side), generator=rng) * 2 - 1
            shapes: list[int] = []
            with torch.inference_mode():
                want = net(x)
                hook = net.register_forward_pre_hook(
                    lambda _, args, seen=shapes: seen.append(len(args[0]))
                )
                got = wrapped(x)
                hook.remove()
            assert shapes == chunks
            assert len(got) == len(want)
            for g, w in zip(got, want, strict=True):
                assert g.shape == w.shape
                torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError):
        FixedShapeBatches(mtcnn.rnet, max_batch=4, min_batch=8)


def test_fixed_shape_refinement_finds_the_same_faces(
    shared_data: Path, detector: FaceDetector
) -> None:
    # 24 portrait tiles: hundreds of R-net and dozens of O-net candidates, several chunks each.
    image = _rgb(shared_data / "faces/dlib_bald_guys.jpg")
    plain = FaceDetector(detector.settings)
    for name in ("rnet", "onet"):
        wrapper = getattr(plain._mtcnn, name)
        assert isinstance(wrapper, FixedShapeBatches)
        setattr(plain._mtcnn, name, wrapper.net)
    candidates: list[int] = []
    hook = detector._mtcnn.rnet.register_forward_pre_hook(
        lambda _, args: candidates.append(len(args[0]))
    )
    try:
        got = detector.detect([image])[0]
    finally:
        hook.remove()
    want = plain.detect([image])[0]
    assert sum(candidates) > 64
    assert len(got) == len(want) == MULTI_PERSON["dlib_bald_guys.jpg"]
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a.raw_box, b.raw_box, atol=1e-2)
        assert a.confidence == pytest.approx(b.confidence, abs=1e-4)


def test_frames_smaller_than_the_minimum_face_have_no_faces(detector: FaceDetector) -> None:
    tiny = [np.full((8, 8, 3), 128, np.uint8), np.full((19, 30, 3), 128, np.uint8)]
    assert detector.detect(tiny) == [[], []]


def test_detect_rejects_non_rgb_frames(detector: FaceDetector) -> None:
    with pytest.raises(ValueError, match="uint8 RGB"):
        detector.detect([np.zeros((32, 32), np.uint8)])


def test_crops_of_real_faces(shared_data: Path, detections: dict[str, list[Detection]]) -> None:
    image = _rgb(shared_data / "faces/facenet_multiface.jpg")
    for d in detections["faces/facenet_multiface.jpg"]:
        c = crop(image, d)
        side = int(d.box[2] - d.box[0])
        assert c.shape == (side, side, 3)

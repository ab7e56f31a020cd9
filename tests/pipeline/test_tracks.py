"""Face tracks: the face graph rules on synthetic boxes, the embedder's checkpoint handling, and
tracks of real people in real videos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from facenet_pytorch import InceptionResnetV1

from pipeline.errors import CheckpointError
from pipeline.faces import FaceDetector, FaceSettings, select_frame_times
from pipeline.tracks import (
    FaceEmbedder,
    TrackFace,
    Tracks,
    box_iou,
    build_tracks,
    load_inception_resnet_v1,
)
from tests.support.videos import ClipSpec, read_frames_at, side_by_side, video_info

# --------------------------------------------------------------------------------------------
# Graph rules (unit)


def _face(pos: int, x: float, y: float, side: float = 80) -> TrackFace:
    return TrackFace(pos, (x, y, x + side, y + side))


def test_box_iou() -> None:
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0
    assert box_iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0


def test_two_people_moving_are_two_tracks() -> None:
    a = [_face(k, 100 + 6 * k, 100) for k in range(10)]  # walking right
    b = [_face(k, 500 - 4 * k, 120 + 2 * k) for k in range(10)]  # walking left and down
    faces = [f for pair in zip(a, b, strict=True) for f in pair]  # interleaved, as per frame
    tracks = build_tracks(faces, n_sampled_frames=10)
    assert tracks.cues == ["iou"]
    assert tracks.clusters == [list(range(0, 20, 2)), list(range(1, 20, 2))]
    assert tracks.dropped == []


def test_a_spurious_one_off_detection_is_dropped() -> None:
    faces = [_face(k, 100 + 3 * k, 100) for k in range(10)]
    faces.append(_face(4, 600, 300, side=30))  # a false positive in one frame
    tracks = build_tracks(faces, n_sampled_frames=10)
    assert tracks.clusters == [list(range(10))]
    assert tracks.dropped == [[10]]


@pytest.mark.parametrize(
    ("n_frames", "kept_size", "dropped_size", "fraction"),
    [(10, 2, 1, 0.2), (15, 3, 2, 0.2), (64, 13, 12, 0.2), (5, 1, 0, 0.2), (25, 7, 6, 0.28)],
)
def test_twenty_percent_rule_is_exact_at_the_boundary(
    n_frames: int, kept_size: int, dropped_size: int, fraction: float
) -> None:
    # A cluster of exactly 20% of the sampled frames is kept; one face fewer is dropped. (In
    # floating point 0.28 * 25 is 7.000000000000001: the last case checks that rounding does
    # not drop a cluster that is exactly at the boundary.)
    kept = [_face(k, 100, 100) for k in range(kept_size)]
    other = [_face(k, 600, 100) for k in range(dropped_size)]
    tracks = build_tracks(kept + other, n_sampled_frames=n_frames, min_fraction=fraction)
    assert tracks.clusters == [list(range(kept_size))]
    assert tracks.dropped == ([list(range(kept_size, kept_size + dropped_size))] if other else [])


def test_overlap_bridges_one_missed_frame_but_not_two() -> None:
    one_gap = [_face(k, 100 + 2 * k, 100) for k in (0, 1, 2, 4, 5, 6)]
    assert build_tracks(one_gap, 7).clusters == [list(range(6))]
    two_gap = [_face(k, 100 + 2 * k, 100) for k in (0, 1, 2, 5, 6, 7)]
    assert build_tracks(two_gap, 8).clusters == [[0, 1, 2], [3, 4, 5]]
    assert build_tracks(one_gap, 7, max_frame_gap=1).clusters == [[0, 1, 2], [3, 4, 5]]


def test_embedding_edges_join_a_track_across_a_gap() -> None:
    # The same person before and after a long gap, at another place: only the embeddings link.
    faces = [_face(k, 100, 100) for k in (0, 1, 2)] + [_face(k, 400, 200) for k in (7, 8, 9)]
    rng = np.random.default_rng(0)
    person = rng.normal(size=512)
    emb = np.stack([person + 0.3 * rng.normal(size=512) for _ in faces]).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    assert (emb @ emb.T > 0.8).all()
    without = build_tracks(faces, 10)
    assert without.clusters == [[0, 1, 2], [3, 4, 5]] and without.cues == ["iou"]
    joined = build_tracks(faces, 10, emb)
    assert joined.clusters == [list(range(6))]
    assert joined.cues == ["iou", "embedding"]


def test_embedding_similarity_must_exceed_the_threshold() -> None:
    faces = [_face(0, 100, 100), _face(4, 400, 100)]
    # Two unit vectors with cosine similarity exactly 0.8 (0.6^2 + 0.8^2 = 1).
    emb = np.array([[1.0, 0.0], [0.8, 0.6]], dtype=np.float64)
    assert build_tracks(faces, 5, emb).clusters == [[0], [1]]
    assert build_tracks(faces, 5, emb, sim_threshold=0.79).clusters == [[0, 1]]


def test_faces_of_one_frame_are_not_linked_by_overlap() -> None:
    faces = [_face(0, 100, 100), _face(0, 110, 100)]
    assert build_tracks(faces, 1).clusters == [[0], [1]]


def test_clusters_are_sorted_by_size() -> None:
    small = [_face(k, 600, 100) for k in range(3)]
    large = [_face(k, 100, 100) for k in range(6)]
    tracks = build_tracks(small + large, 6)
    assert tracks.clusters == [[3, 4, 5, 6, 7, 8], [0, 1, 2]]


def test_build_tracks_edge_cases() -> None:
    assert build_tracks([], 0) == Tracks(clusters=[], dropped=[], cues=["iou"])
    assert build_tracks([], 10, np.zeros((0, 512), np.float32)).cues == ["iou", "embedding"]
    with pytest.raises(ValueError, match="frame_pos"):
        build_tracks([_face(5, 0, 0)], 5)
    with pytest.raises(ValueError, match="embeddings"):
        build_tracks([_face(0, 0, 0)], 1, np.zeros((2, 512), np.float32))


# --------------------------------------------------------------------------------------------
# Embedder checkpoint handling


@pytest.fixture(scope="module")
def facenet_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised InceptionResnetV1 saved the way facenet-pytorch's VGGFace2 file is:
    the embedding network plus its 8631-way training classifier (``logits.*``)."""
    torch.manual_seed(0)
    model = InceptionResnetV1(pretrained=None, classify=True, num_classes=8631)
    path = tmp_path_factory.mktemp("facenet") / "20180402-114759-vggface2.pt"
    torch.save(model.state_dict(), path)
    return path


def test_embedder_round_trip_shapes_and_norms(facenet_weights: Path) -> None:
    embedder = FaceEmbedder(facenet_weights)
    rng = np.random.default_rng(1)
    crops = [rng.integers(0, 256, size=(s, s, 3), dtype=np.uint8) for s in (60, 160, 300)]
    emb = embedder.embed(crops)
    assert emb.shape == (3, 512) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # Batched equals one by one; loading is deterministic.
    np.testing.assert_allclose(embedder.embed(crops[1:2])[0], emb[1], atol=1e-4)
    again = FaceEmbedder(facenet_weights).embed(crops)
    np.testing.assert_allclose(again, emb, atol=1e-5)
    assert embedder.embed([]).shape == (0, 512)


def test_embedder_preprocessing_is_facenet_fixed_standardisation() -> None:
    crop = np.full((80, 80, 3), 255, dtype=np.uint8)
    crop[:, :, 1] = 0
    x = FaceEmbedder.preprocess([crop])
    assert x.shape == (1, 3, 160, 160)
    assert float(x[0, 0].mean()) == pytest.approx((255 - 127.5) / 128)
    assert float(x[0, 1].mean()) == pytest.approx((0 - 127.5) / 128)
    with pytest.raises(ValueError, match="uint8 RGB"):
        FaceEmbedder.preprocess([np.zeros((10, 10), np.uint8)])


def test_embedder_loads_a_file_without_the_classifier(tmp_path: Path) -> None:
    path = tmp_path / "embedding_only.pt"
    torch.save(InceptionResnetV1(pretrained=None).state_dict(), path)
    model = load_inception_resnet_v1(path)
    assert not hasattr(model, "logits")


def test_embedder_missing_corrupt_or_mismatched_file_is_a_clear_error(
    tmp_path: Path, facenet_weights: Path
) -> None:
    with pytest.raises(CheckpointError, match=r"absent\.pt"):
        FaceEmbedder(tmp_path / "absent.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(facenet_weights.read_bytes()[:4096])
    with pytest.raises(CheckpointError, match=r"corrupt\.pt"):
        FaceEmbedder(corrupt)
    wrong = tmp_path / "wrong.pt"
    state = InceptionResnetV1(pretrained=None).state_dict()
    del state["last_bn.running_mean"]
    torch.save(state, wrong)
    with pytest.raises(CheckpointError, match=r"wrong\.pt does not match"):
        FaceEmbedder(wrong)
    not_a_dict = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), not_a_dict)
    with pytest.raises(CheckpointError, match="not a state dict"):
        FaceEmbedder(not_a_dict)


# --------------------------------------------------------------------------------------------
# Real videos: one track per visible person


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector(FaceSettings(max_side_px=640))


def _shot_tracks(
    detector: FaceDetector, path: Path, start_s: float, end_s: float, n: int
) -> tuple[list[TrackFace], Tracks]:
    fps, _, _, _ = video_info(path)
    times = select_frame_times(start_s, end_s, fps, n)
    frames = [f for _, f in read_frames_at(path, times)]
    assert len(frames) == len(times) == n
    per_frame = detector.detect(frames)
    faces = [TrackFace(pos, d.box) for pos, dets in enumerate(per_frame) for d in dets]
    return faces, build_tracks(faces, n)


def test_one_track_for_the_presenter_false_detections_dropped(
    shared_data: Path, detector: FaceDetector
) -> None:
    """ffpp_c23_004.mp4 (looked at): one presenter, all 12.4 s. MTCNN also fires, above 0.9,
    on a fixed spot of the city-lights backdrop from about 10 s on and on the Chewbacca inset
    picture: 4 and 1 of the 24 sampled frames, under the 20% rule."""
    path = shared_data / "deepfake/ffpp_c23_004.mp4"
    fps, n_frames, _, _ = video_info(path)
    faces, tracks = _shot_tracks(detector, path, 0.0, n_frames / fps, 24)
    assert len(tracks.clusters) == 1
    presenter = tracks.clusters[0]
    assert len(presenter) >= 20
    # The presenter sits in the middle of the 1280-px frame, to the right of the inset.
    assert all(500 < (faces[i].box[0] + faces[i].box[2]) / 2 < 1000 for i in presenter)
    assert len(tracks.dropped) >= 1


def test_one_track_for_the_singer(shared_data: Path, detector: FaceDetector) -> None:
    """fr_short_hamilton_clip.mp4 from the cut at 2.74 s to the cut at 7.04 s: one man singing
    and gesturing, moving across the stage (32 of its 129 frames sampled)."""
    _faces, tracks = _shot_tracks(
        detector, shared_data / "videos/fr_short_hamilton_clip.mp4", 2.74, 7.04, 32
    )
    assert len(tracks.clusters) == 1
    assert len(tracks.clusters[0]) >= 30


def test_two_tracks_for_two_people_side_by_side(
    shared_data: Path, detector: FaceDetector, tmp_path: Path
) -> None:
    """Two real talking-head clips placed side by side in one frame: two people, two tracks."""
    left = ClipSpec(shared_data / "deepfake/dfdc_lynaeydofd.mp4", 0.0, 4.0)
    right = ClipSpec(shared_data / "deepfake/ffpp_c23_634.mp4", 0.0, 4.0)
    video = side_by_side(left, right, tmp_path / "two.mp4", tile_size=(360, 360), fps=10.0)
    faces, tracks = _shot_tracks(detector, video.path, 0.0, video.duration_s, 12)
    assert [len(c) for c in tracks.clusters] == [12, 12]
    centres = sorted(
        np.mean([(faces[i].box[0] + faces[i].box[2]) / 2 for i in c]) for c in tracks.clusters
    )
    assert centres[0] < 360 < centres[1]

"""Shot segmentation: Chamfer similarity, peak picking, the 1.5 s rule, and cuts in real footage."""

from __future__ import annotations

import itertools
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.models import resnet18, resnet50

from pipeline.errors import CheckpointError
from pipeline.segment import (
    ColourHistogramRegions,
    RegionFeatureExtractor,
    ResNetRMAC,
    SegmentSettings,
    Shot,
    build_extractor,
    chamfer_similarity,
    detect_cuts,
    grid_regions,
    rmac_regions,
    segment,
    segment_features,
    shots_from_cuts,
)
from tests.support.videos import (
    ClipSpec,
    SyntheticVideo,
    concatenate_clips,
    sample_frames,
    video_info,
)

# --------------------------------------------------------------------------------------------
# Chamfer similarity


def _unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_chamfer_of_identical_sets_is_one() -> None:
    a = _unit_rows(np.random.default_rng(0), 14, 64)
    assert chamfer_similarity(a, a) == pytest.approx(1.0, abs=1e-6)
    # Order of regions does not matter.
    assert chamfer_similarity(a, a[::-1]) == pytest.approx(1.0, abs=1e-6)


def test_chamfer_is_symmetric_and_averages_both_directions() -> None:
    a = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    b = np.array([[1.0, 0.0], [1.0, 0.0]], dtype=np.float32)
    # CS(a, b) = mean(1, 0) = 0.5 and CS(b, a) = mean(1, 1) = 1: the symmetric value is 0.75.
    assert chamfer_similarity(a, b) == pytest.approx(0.75)
    assert chamfer_similarity(b, a) == pytest.approx(0.75)
    rng = np.random.default_rng(1)
    x, y = _unit_rows(rng, 14, 32), _unit_rows(rng, 21, 32)
    assert chamfer_similarity(x, y) == pytest.approx(chamfer_similarity(y, x), abs=1e-6)
    assert chamfer_similarity(x, y) < 0.9


def test_chamfer_rejects_mismatched_dimensions() -> None:
    with pytest.raises(ValueError):
        chamfer_similarity(np.zeros((3, 4), np.float32), np.zeros((3, 5), np.float32))


# --------------------------------------------------------------------------------------------
# Region descriptors


def test_grid_regions_cover_the_frame_at_three_scales() -> None:
    regions = grid_regions(90, 160)
    assert len(regions) == 1 + 4 + 9
    assert regions[0] == (0, 0, 90, 160)
    # Each scale tiles the frame exactly.
    for start, g in ((1, 2), (5, 3)):
        tiles = regions[start : start + g * g]
        assert sum((y1 - y0) * (x1 - x0) for y0, x0, y1, x1 in tiles) == 90 * 160


def test_rmac_regions_follow_the_reference_layout() -> None:
    regions = rmac_regions(7, 12)
    assert regions[0] == (0, 0, 7, 12)
    assert len(regions) == 1 + 2 + 6 + 12
    assert all(0 <= y0 < y1 <= 7 and 0 <= x0 < x1 <= 12 for y0, x0, y1, x1 in regions)
    # Square map: the level-1 region is the whole map and appears once.
    assert len(rmac_regions(7, 7)) == 1 + 4 + 9
    assert rmac_regions(1, 1) == [(0, 0, 1, 1)]


def test_histogram_descriptor_shapes_norms_and_discrimination() -> None:
    rng = np.random.default_rng(2)
    frame = rng.integers(0, 256, size=(120, 200, 3), dtype=np.uint8)
    frame[:, :100] = (200, 40, 40)
    ext = ColourHistogramRegions()
    assert isinstance(ext, RegionFeatureExtractor)
    feats = ext([frame, frame, 255 - frame])
    assert len(feats) == 3
    for f in feats:
        assert f.shape == (14, 8 * 4 * 4) and f.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(f, axis=1), 1.0, atol=1e-5)
        assert (f >= 0).all()
    assert chamfer_similarity(feats[0], feats[1]) == pytest.approx(1.0, abs=1e-6)
    assert chamfer_similarity(feats[0], feats[2]) < 0.8
    red, blue = np.zeros((2, 60, 80, 3), np.uint8)
    red[:] = (200, 30, 30)
    blue[:] = (30, 30, 200)
    assert chamfer_similarity(*ext([red, blue])) < 0.1


def test_histogram_descriptor_rejects_non_rgb_frames() -> None:
    with pytest.raises(ValueError, match="uint8 RGB"):
        ColourHistogramRegions()([np.zeros((10, 10), np.uint8)])
    with pytest.raises(ValueError, match="uint8 RGB"):
        ColourHistogramRegions()([np.zeros((10, 10, 3), np.float32)])


@pytest.fixture(scope="module")
def resnet50_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state dict of a randomly initialised torchvision resnet50, saved as a user would."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("rmac") / "resnet50.pth"
    torch.save(resnet50(weights=None).state_dict(), path)
    return path


def test_resnet_rmac_round_trip_shapes_and_norms(resnet50_weights: Path) -> None:
    ext = ResNetRMAC(resnet50_weights, short_side=224)
    assert ext.name == "rmac"
    assert isinstance(ext, RegionFeatureExtractor)
    rng = np.random.default_rng(3)
    frames = [rng.integers(0, 256, size=(360, 640, 3), dtype=np.uint8) for _ in range(3)]
    feats = ext(frames)
    # 360 x 640 -> 224 x 398 -> a 7 x 13 conv map: 1 + 3 + 8 + 15 R-MAC regions of 2048 channels.
    assert len(rmac_regions(7, 13)) == 27
    assert [f.shape for f in feats] == [(27, 2048)] * 3
    for f in feats:
        assert f.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(f, axis=1), 1.0, atol=1e-4)
    # Batched equals one by one; an identical frame has similarity 1.
    np.testing.assert_allclose(ext(frames[1:2])[0], feats[1], atol=1e-4)
    assert chamfer_similarity(feats[0], ext([frames[0]])[0]) == pytest.approx(1.0, abs=1e-4)
    # Other sizes in one call: grouped by size, order kept.
    square = rng.integers(0, 256, size=(300, 300, 3), dtype=np.uint8)
    mixed = ext([frames[0], square])
    assert mixed[0].shape == (27, 2048) and mixed[1].shape == (14, 2048)


def test_resnet_rmac_missing_corrupt_or_mismatched_file_is_a_clear_error(
    tmp_path: Path, resnet50_weights: Path
) -> None:
    missing = tmp_path / "nope.pth"
    with pytest.raises(CheckpointError, match=r"nope\.pth"):
        ResNetRMAC(missing)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(resnet50_weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"corrupt\.pth"):
        ResNetRMAC(corrupt)
    other = tmp_path / "resnet18.pth"
    torch.save(resnet18(weights=None).state_dict(), other)
    with pytest.raises(CheckpointError, match=r"resnet18\.pth does not match"):
        ResNetRMAC(other)
    not_a_dict = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], not_a_dict)
    with pytest.raises(CheckpointError, match="not a state dict"):
        ResNetRMAC(not_a_dict)


def test_build_extractor_auto_picks_rmac_only_when_weights_exist(
    tmp_path: Path, resnet50_weights: Path
) -> None:
    assert build_extractor("auto", None).name == "histogram"
    assert build_extractor("auto", tmp_path / "absent.pth").name == "histogram"
    assert build_extractor("histogram", resnet50_weights).name == "histogram"
    assert build_extractor("auto", resnet50_weights).name == "rmac"
    with pytest.raises(CheckpointError, match=r"absent\.pth"):
        build_extractor("rmac", tmp_path / "absent.pth")
    with pytest.raises(CheckpointError):
        build_extractor("rmac", None)


# --------------------------------------------------------------------------------------------
# Peaks and shots (unit)


def test_detect_cuts_needs_both_the_floor_and_the_local_margin() -> None:
    times = [float(t) for t in range(12)]
    d = np.full(11, 0.02)
    d[3] = 0.5  # a clear cut
    d[5] = 0.12  # a bump below the absolute floor
    assert detect_cuts(times, distances=d, threshold=0.15, margin=0.1) == [3.5]
    # Sustained motion: a high plateau is not a run of cuts, a peak on it still is.
    d2 = np.full(11, 0.3)
    d2[7] = 0.8
    assert detect_cuts(times, distances=d2, threshold=0.15, margin=0.1) == [7.5]
    # Two cuts one sample apart are both kept (the median ignores the other peak).
    d3 = np.full(11, 0.02)
    d3[[4, 5]] = 0.6
    assert detect_cuts(times, distances=d3, threshold=0.15, margin=0.1) == [4.5, 5.5]


def test_detect_cuts_edge_cases() -> None:
    assert detect_cuts([], distances=np.zeros(0)) == []
    assert detect_cuts([0.0], distances=np.zeros(0)) == []
    assert detect_cuts([0.0, 1.0], distances=np.array([0.9])) == [0.5]
    with pytest.raises(ValueError):
        detect_cuts([0.0, 1.0, 2.0], distances=np.zeros(1))
    with pytest.raises(ValueError):
        detect_cuts([0.0, 1.0])


def _spans(shots: list[Shot]) -> list[tuple[float, float]]:
    return [(s.start_s, s.end_s) for s in shots]


def test_shots_from_cuts_without_short_shots() -> None:
    shots = shots_from_cuts([4.5, 10.5], 20.0)
    assert _spans(shots) == [(0.0, 4.5), (4.5, 10.5), (10.5, 20.0)]
    assert [s.index for s in shots] == [0, 1, 2]
    assert shots[1].duration_s == pytest.approx(6.0)
    # Unsorted, duplicated and out-of-range cuts are tolerated.
    assert _spans(shots_from_cuts([10.5, 4.5, 4.5, 0.0, -1.0, 20.0, 25.0], 20.0)) == _spans(shots)
    assert _spans(shots_from_cuts([], 20.0)) == [(0.0, 20.0)]


def test_shots_from_cuts_merges_short_shots_into_a_neighbour() -> None:
    # Short first shot: only a right neighbour.
    assert _spans(shots_from_cuts([1.0, 5.0], 10.0)) == [(0.0, 5.0), (5.0, 10.0)]
    # Short last shot: only a left neighbour.
    assert _spans(shots_from_cuts([5.0, 9.0], 10.0)) == [(0.0, 5.0), (5.0, 10.0)]
    # Short middle shot: into the shorter neighbour (left is 3 s, right 6 s).
    assert _spans(shots_from_cuts([3.0, 4.0], 10.0)) == [(0.0, 4.0), (4.0, 10.0)]
    assert _spans(shots_from_cuts([6.0, 7.0], 10.0)) == [(0.0, 6.0), (6.0, 10.0)]
    # Equal neighbours: into the left one.
    assert _spans(shots_from_cuts([4.0, 5.0], 9.0)) == [(0.0, 5.0), (5.0, 9.0)]
    # Exactly 1.5 s is long enough.
    assert _spans(shots_from_cuts([1.5, 3.0], 4.5)) == [(0.0, 1.5), (1.5, 3.0), (3.0, 4.5)]
    # A burst of cuts collapses to shots that all respect the minimum.
    # [2, 2.5) joins [2.5, 3); [3, 3.5) joins [3.5, 4); then [2, 3) joins [3, 4).
    assert _spans(shots_from_cuts([2.0, 2.5, 3.0, 3.5, 4.0], 10.0)) == [
        (0.0, 2.0),
        (2.0, 4.0),
        (4.0, 10.0),
    ]


def test_shots_from_cuts_short_videos() -> None:
    assert _spans(shots_from_cuts([0.5], 1.2)) == [(0.0, 1.2)]
    assert _spans(shots_from_cuts([], 0.0)) == [(0.0, 0.0)]
    assert _spans(shots_from_cuts([0.7], 1.4)) == [(0.0, 1.4)]
    with pytest.raises(ValueError):
        shots_from_cuts([], -1.0)


def test_shots_from_cuts_invariants_on_random_cuts() -> None:
    rng = np.random.default_rng(4)
    for _ in range(200):
        duration = float(rng.uniform(0.5, 60))
        cuts = rng.uniform(0, duration, size=int(rng.integers(0, 30))).round(1).tolist()
        shots = shots_from_cuts(cuts, duration, 1.5)
        assert shots[0].start_s == 0.0 and shots[-1].end_s == duration
        assert all(a.end_s == b.start_s for a, b in itertools.pairwise(shots))
        if duration >= 1.5:
            assert all(s.duration_s >= 1.5 for s in shots)
        else:
            assert len(shots) == 1
        kept_cuts = {s.start_s for s in shots[1:]}
        assert kept_cuts <= set(cuts)


# --------------------------------------------------------------------------------------------
# Whole step, bounded memory


@dataclass
class _Frame:
    time_s: float
    image: np.ndarray


def test_segment_keeps_only_descriptors_while_streaming() -> None:
    rng = np.random.default_rng(5)
    palette = rng.integers(0, 256, size=(3, 3), dtype=np.uint8)
    alive: list[weakref.ref[np.ndarray]] = []
    batch_size = 4

    def frames():
        for k in range(30):
            # Arrays are freed by reference counting as soon as nothing holds them: never more
            # frames alive than one pending batch (plus the one being made).
            assert sum(r() is not None for r in alive) <= batch_size
            image = np.empty((72, 128, 3), dtype=np.uint8)
            image[:] = palette[k // 10]  # three "shots" of 10 s
            image[: 10 + k % 10] += 7  # a little motion
            alive.append(weakref.ref(image))
            yield _Frame(float(k), image)

    seg = segment(frames(), 30.0, ColourHistogramRegions(), SegmentSettings(batch_size=batch_size))
    assert seg.method == "histogram"
    assert seg.times_s == [float(k) for k in range(30)]
    assert len(seg.distances) == 29
    assert seg.cuts_s == [9.5, 19.5]
    assert _spans(seg.shots) == [(0.0, 9.5), (9.5, 19.5), (19.5, 30.0)]


def test_segment_of_empty_and_one_frame_videos() -> None:
    ext = ColourHistogramRegions()
    empty = segment([], 0.0, ext)
    assert _spans(empty.shots) == [(0.0, 0.0)] and empty.distances == [] and empty.cuts_s == []
    one = segment([(0.0, np.zeros((20, 30, 3), np.uint8))], 0.04, ext)
    assert _spans(one.shots) == [(0.0, 0.04)] and one.distances == []


def test_segment_features_uses_settings_threshold() -> None:
    feats = [np.eye(4, dtype=np.float32)[[k % 4]] for k in (0, 0, 0, 1, 1, 1)]
    times = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    seg = segment_features(times, feats, 6.0, "histogram", SegmentSettings())
    assert seg.cuts_s == [2.5]
    assert segment_features(times, feats, 6.0, "x", SegmentSettings(cut_threshold=1.5)).cuts_s == []
    with pytest.raises(ValueError, match="increasing"):
        segment_features([0.0, 0.0], feats[:2], 1.0, "x")


# --------------------------------------------------------------------------------------------
# Real footage


def _clips(data: Path) -> list[ClipSpec]:
    v, d = data / "videos", data / "deepfake"
    return [
        ClipSpec(v / "sadtalker_WDA_AlexandriaOcasioCortez_000.mp4", 0.0, 5.0),
        ClipSpec(d / "ffpp_c23_634.mp4", 1.0, 6.0),
        ClipSpec(v / "liveportrait_d12.mp4", 0.0, 4.0),
        ClipSpec(d / "ffpp_c23_519.mp4", 10.0, 7.0),
        ClipSpec(v / "fr_short_hamilton_clip.mp4", 3.0, 4.0, "reverse"),
        ClipSpec(d / "dfdc_lynaeydofd.mp4", 1.0, 4.0),
        # The same scene continuing, hue-rotated: only the colours change at this cut.
        ClipSpec(d / "dfdc_lynaeydofd.mp4", 5.0, 4.0, "hue_shift"),
        ClipSpec(v / "facenet_video.mp4", 0.0, 4.0),
        ClipSpec(d / "ffpp_c23_634.mp4", 8.0, 3.0, "invert"),
        ClipSpec(d / "dfdc_yhffcuhhjy.mp4", 2.0, 6.0),
        ClipSpec(d / "ffpp_c23_519.mp4", 0.0, 5.0, "reverse"),
        ClipSpec(v / "sadtalker_WDA_AlexandriaOcasioCortez_000.mp4", 5.0, 3.0, "hue_shift"),
    ]


@pytest.fixture(scope="session")
def concatenated_video(
    shared_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> SyntheticVideo:
    """12 pieces of 8 real videos, 3 to 7 s each, cut together: 11 known hard cuts."""
    out = tmp_path_factory.mktemp("segment") / "concatenated.mp4"
    return concatenate_clips(_clips(shared_data), out, size=(640, 360), fps=10.0)


def _match(found: list[float], truth: list[float], tolerance: float) -> tuple[float, float]:
    """(recall, precision) with one-to-one matching within ``tolerance`` seconds."""
    unmatched = list(truth)
    hits = 0
    for t in found:
        near = [u for u in unmatched if abs(u - t) <= tolerance]
        if near:
            unmatched.remove(min(near, key=lambda u: abs(u - t)))
            hits += 1
    return hits / len(truth), (hits / len(found) if found else 1.0)


def test_cuts_in_concatenated_real_clips(concatenated_video: SyntheticVideo) -> None:
    video = concatenated_video
    assert len(video.cut_times_s) == 11
    seg = segment(sample_frames(video.path, 1.0), video.duration_s, ColourHistogramRegions())
    recall, precision = _match(seg.cuts_s, list(video.cut_times_s), tolerance=1.0)
    assert recall >= 0.95 and precision >= 0.95, (seg.cuts_s, video.cut_times_s)
    # Every clip is 3 s or longer, so no shot is merged away: one shot per clip.
    assert len(seg.shots) == len(video.clips)
    assert seg.shots[-1].end_s == pytest.approx(video.duration_s)


@pytest.mark.parametrize(
    "name",
    [
        # A presenter with inset pictures that change three times (not cuts).
        "deepfake/ffpp_c23_004.mp4",
        "deepfake/ffpp_c23_519.mp4",  # 30 s news presenter
        "deepfake/dfdc_yhffcuhhjy.mp4",  # hand-held, person moving and gesturing
        "videos/facenet_video.mp4",  # a crowd walking towards the camera
        "videos/liveportrait_d12.mp4",  # head moving fast close to the camera
    ],
)
def test_no_cuts_in_continuous_real_videos(shared_data: Path, name: str) -> None:
    path = shared_data / name
    fps, n_frames, _, _ = video_info(path)
    seg = segment(sample_frames(path, 1.0), n_frames / fps, ColourHistogramRegions())
    assert seg.cuts_s == [], seg.distances
    assert len(seg.shots) == 1


def test_real_cuts_of_the_hamilton_clip(shared_data: Path) -> None:
    """fr_short_hamilton_clip.mp4 (looked at frame by frame) has hard cuts at 0.67 s (wide
    stage to a close-up), 2.74 s (to the singer at the microphone) and 7.04 s (to the audience),
    and a fast pan from 1.5 to 2.5 s, all in dim stage light. The 0.67 s cut falls inside the
    first 1.5 s and cannot survive the minimum shot length."""
    path = shared_data / "videos/fr_short_hamilton_clip.mp4"
    fps, n_frames, _, _ = video_info(path)
    seg = segment(sample_frames(path, 1.0), n_frames / fps, ColourHistogramRegions())
    recall, precision = _match(seg.cuts_s, [2.74, 7.04], tolerance=1.0)
    assert recall == 1.0 and precision == 1.0, seg.cuts_s
    assert len(seg.shots) == 3

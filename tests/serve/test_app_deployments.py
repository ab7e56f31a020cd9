"""The plain model servers behind the deployments (no Ray): several callers' requests at once
give each caller what it would get alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import ModelError
from pipeline.faces import FaceDetector, FaceSettings, crop
from pipeline.media import load_image
from pipeline.model_access import LocalModels
from pipeline.models import Ensemble, InferenceSettings
from pipeline.segment import SegmentSettings, build_extractor
from serve.deployments import DetectorServer, EmbedderServer, FeaturesServer, split_answers
from serve.replicas import MemberServer, batch_items, joined_answers, request_pieces


def test_split_answers() -> None:
    assert split_answers([1, 2, 3, 4], [1, 0, 3]) == [[1], [], [2, 3, 4]]
    assert split_answers([], []) == []
    with pytest.raises(ValueError, match="cannot be split"):
        split_answers([1, 2], [3])


@pytest.fixture(scope="module")
def frames(shared_data: Path) -> list[np.ndarray]:
    names = ["fr_two_people.jpg", "fr_obama.jpg", "facenet_multiface.jpg"]
    return [load_image(shared_data / "faces" / n) for n in names]


def test_detector_server_batches_requests_like_single_calls(frames: list[np.ndarray]) -> None:
    server = DetectorServer(FaceSettings())
    alone = [FaceDetector(FaceSettings()).detect([f])[0] for f in frames]
    together = server.detect_many([[frames[0]], [], [frames[1], frames[2]]])
    assert [len(r) for r in together] == [1, 0, 2]
    flat = [dets for request in together for dets in request]
    for got, want in zip(flat, alone, strict=True):
        assert [d.box for d in got] == [d.box for d in want]
        assert [d.confidence for d in got] == pytest.approx([d.confidence for d in want])
    assert server.describe()["name"].startswith("mtcnn")


def test_member_server_equals_the_ensemble_member(
    frames: list[np.ndarray], model_dir: Path, local_models: LocalModels
) -> None:
    settings = InferenceSettings(model_dir=model_dir, backend="torch", device="cpu")
    crops = [crop(f, d) for f in frames for d in local_models.detect_faces([f])[0]]
    assert len(crops) >= 4
    ensemble: Ensemble = local_models.ensemble
    want = ensemble.predict(crops).member_probabilities
    for j, member in enumerate(ensemble.members):
        server = MemberServer(member.name, settings)
        assert server.info == member.info
        got = server.predict_many([crops[:1], [], crops[1:]])
        assert [len(g) for g in got] == [1, 0, len(crops) - 1]
        np.testing.assert_allclose(np.concatenate(got), want[:, j], atol=1e-5)


def test_features_server_and_missing_embedder(frames: list[np.ndarray], tmp_path: Path) -> None:
    server = FeaturesServer(SegmentSettings(), None)
    extractor = build_extractor("auto", None)
    got = server.features_many([frames[:2], frames[2:]])
    want = extractor(frames)
    for g, w in zip([x for r in got for x in r], want, strict=True):
        np.testing.assert_allclose(g, w)
    assert server.describe() == {"method": extractor.name, "cut_threshold": extractor.cut_threshold}
    embedder = EmbedderServer(tmp_path / "absent.pt")
    assert embedder.describe()["available"] is False
    with pytest.raises(ModelError, match="no face-embedding weights"):
        embedder.embed_many([[frames[0]]])


def test_a_request_larger_than_a_batch_goes_in_pieces_and_comes_back_whole(
    frames: list[np.ndarray], model_dir: Path, local_models: LocalModels
) -> None:
    """Batches count crops (frames for the detector): a request larger than a batch goes in
    pieces of at most ``max_batch_size`` items, and the pieces' answers join into the answer
    the whole request gets (the service's end-to-end tests check the same through Serve)."""
    settings = InferenceSettings(model_dir=model_dir, backend="torch", device="cpu")
    crops = [crop(f, d) for f in frames for d in local_models.detect_faces([f])[0]]
    assert len(crops) > 3
    assert batch_items([crops, crops[:1], []]) == len(crops) + 1
    server = MemberServer(local_models.ensemble.members[0].name, settings)
    pieces = request_pieces(crops, 3)
    assert [len(p) for p in pieces[:-1]] == [3] * (len(pieces) - 1) and len(pieces[-1]) <= 3
    whole = server.predict_many([crops])[0]
    np.testing.assert_allclose(joined_answers(server.predict_many(pieces)), whole, atol=1e-5)
    detector = DetectorServer(FaceSettings())
    answers = joined_answers(detector.detect_many(request_pieces(frames, 2)))
    assert [len(a) for a in answers] == [len(a) for a in detector.detect_many([frames])[0]]

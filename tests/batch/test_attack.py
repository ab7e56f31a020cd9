"""Attack runs: ART's PGD (and the extra attacks) on a detector trained here, and whole runs on
real media of ../shared/data with tiny models, in process and on Ray Data."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import ValidationError
from torch import nn

from batch.attack import AttackRunSettings, AttackSettings, FaceAttacker, run_attack
from batch.attack_model import TwoClassLogits, crafting_module
from batch.attack_video import video_score
from batch.config import StageSettings
from batch.datasets import VideoRow, read_dataset
from batch.stream import gpu_share
from evaluation.attack_runs import AttackFolder, read_config, read_scores
from evaluation.metrics import balanced_accuracy
from pipeline.analyze import AnalysisSettings
from pipeline.errors import ConfigError
from pipeline.faces import FaceDetector, FaceSettings, crop
from pipeline.media import load_image
from pipeline.models import Ensemble, InferenceSettings
from pipeline.models.preprocess import crops_to_unit_batch
from tests.support.datasets import face_frames
from tests.support.models import make_model_dir

#: The detector trained here works on 48x48 crops (small enough to train in seconds on 2 cores).
SIZE = 48
FACE_IMAGES = (
    "fr_two_people.jpg",
    "facenet_multiface.jpg",
    "dlib_bald_guys.jpg",
    "fr_obama.jpg",
    "insightface_t1.jpg",
    "dlib_2008_002470.jpg",
    "dlib_Tom_Cruise_avp_2014_4.jpg",
    "imageio_astronaut.png",
    "facenet_angelina_jolie.jpg",
    "facenet_paul_rudd.jpg",
)
FAST_FACES = FaceSettings(max_frames_per_shot=4, max_side_px=640)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """As the actors run (``torch_threads=1``); also keeps this file polite on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ----------------------------------------------------------------------------------------------
# A detector trained during the test: real faces with and without a synthetic blending artefact


def blend_artefact(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """What a face swap leaves behind: the inner face (an ellipse) blurred and colour-shifted
    against the rest, with a hard seam. ``(N, 3, S, S)`` in [0, 1] -> same."""
    n, _, h, w = x.shape
    yy, xx = torch.meshgrid(
        torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"
    )
    mask = (((xx + 0.5 - w / 2) / (0.30 * w)) ** 2 + ((yy + 0.5 - 0.55 * h) / (0.36 * h)) ** 2) <= 1
    inner = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    sign = torch.where(torch.rand((n, 1, 1, 1), generator=gen) < 0.5, -1.0, 1.0)
    size = 0.08 + 0.04 * torch.rand((n, 1, 1, 1), generator=gen)
    shift = sign * size * torch.tensor([1.0, -0.5, -0.5]).view(1, 3, 1, 1)
    return torch.where(mask, (inner + shift).clamp(0, 1), x)


@pytest.fixture(scope="module")
def face_bank(shared_data: Path) -> torch.Tensor:
    """Every face MTCNN finds in ten real photos, ``(N, 3, S + S/8, S + S/8)`` in [0, 1]."""
    detector = FaceDetector(FaceSettings(max_side_px=640))
    crops = []
    for name in FACE_IMAGES:
        image = load_image(shared_data / "faces" / name)
        crops += [crop(image, d) for d in detector.detect([image])[0]]
    assert len(crops) >= 40, len(crops)
    return crops_to_unit_batch(crops, SIZE + SIZE // 8, torch.device("cpu"))


class Detector(nn.Module):
    """A small CNN: ``(N, 3, S, S)`` in [0, 1] -> ``(N, 1)`` logit (one "member")."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1, stride=2),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1, stride=2),
            nn.ReLU(),
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),
            nn.Linear(32, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def scorer_of(net: nn.Module) -> Any:
    def score(x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return torch.sigmoid(net(x.float())).double().numpy()

    return score


@pytest.fixture(scope="module")
def trained(face_bank: torch.Tensor) -> tuple[nn.Module, torch.Tensor, np.ndarray]:
    """The detector trained on 36 faces; the held-out faces with and without the artefact and
    their labels (1 = artefact = fake)."""
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    order = torch.randperm(len(face_bank), generator=gen)
    train, test = face_bank[order[:36]], face_bank[order[36:]]
    net = Detector()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    margin = SIZE // 8
    with one_thread():
        for _ in range(400):
            pick = train[torch.randint(len(train), (16,), generator=gen)]
            dy, dx = torch.randint(0, margin + 1, (2,), generator=gen).tolist()
            x = pick[:, :, dy : dy + SIZE, dx : dx + SIZE]
            if torch.rand(1, generator=gen) < 0.5:
                x = x.flip(-1)
            batch = torch.cat([x, blend_artefact(x, gen)])
            target = torch.cat([torch.zeros(16), torch.ones(16)])
            loss = F.binary_cross_entropy_with_logits(net(batch)[:, 0], target)
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    o = margin // 2
    held = test[:, :, o : o + SIZE, o : o + SIZE]
    x = torch.cat([held, blend_artefact(held, torch.Generator().manual_seed(1))])
    labels = np.r_[np.zeros(len(held)), np.ones(len(held))].astype(int)
    return net, x, labels


def attacker_for(net: nn.Module, **settings: Any) -> FaceAttacker:
    return FaceAttacker(net, scorer_of(net), AttackSettings(**settings), SIZE)


def test_the_detector_learned_the_artefact(trained: tuple[nn.Module, torch.Tensor, Any]) -> None:
    net, x, labels = trained
    clean = scorer_of(net)(x)[:, 0]
    assert balanced_accuracy(labels, clean) >= 0.8


def test_targeted_attack_lowers_the_fake_probability(
    trained: tuple[nn.Module, torch.Tensor, np.ndarray],
) -> None:
    net, x, labels = trained
    with one_thread():
        for norm in ("2", "inf"):
            out = attacker_for(net, norm=norm, eps=0.2).attack(x)
            fakes = labels == 1
            assert (
                out.attacked_probability[fakes].mean() < out.clean_probability[fakes].mean() - 0.1
            )
            # Towards "real" for every face, whatever its label.
            assert out.attacked_probability.mean() < out.clean_probability.mean()


def test_norm_inf_reaches_chance_while_norm_1_barely_moves(
    trained: tuple[nn.Module, torch.Tensor, np.ndarray],
) -> None:
    """Paper Table 3's shape: norm-inf eps 0.2 -> chance; norm-1 eps 0.2 -> no noticeable effect."""
    net, x, labels = trained
    with one_thread():
        inf = attacker_for(net, norm="inf", eps=0.2, max_iter=5).attack(x)
        one = attacker_for(net, norm="1", eps=0.2, max_iter=5).attack(x)
    clean_ba = balanced_accuracy(labels, inf.clean_probability)
    assert balanced_accuracy(labels, inf.attacked_probability) <= 0.6
    assert abs(balanced_accuracy(labels, one.attacked_probability) - clean_ba) <= 0.1
    # How visible: norm-inf changes the picture, norm-1 hardly at all.
    assert inf.psnr.mean() < 25.0 and inf.ssim.mean() < one.ssim.mean()
    assert one.psnr.min() > 50.0 and one.ssim.min() > 0.99


@pytest.mark.parametrize(
    ("norm", "eps"), [("inf", 0.2), ("inf", 0.03), ("2", 0.2), ("2", 2.0), ("1", 0.2), ("1", 5.0)]
)
def test_perturbations_never_exceed_eps_and_clip_values_hold(
    trained: tuple[nn.Module, torch.Tensor, np.ndarray], norm: str, eps: float
) -> None:
    net, x, _ = trained
    # Saturated pixels: the clip at 0 and 1 must hold where the step pushes outwards.
    x = x[:6].clone()
    x[0] = 0.0
    x[1] = 1.0
    x[2, :, :8] = 1.0
    with one_thread():
        out = attacker_for(net, norm=norm, eps=eps, eps_step=eps / 2, max_iter=4).attack(x)
    delta = (out.x_adv - out.x_clean).reshape(len(x), -1).astype(np.float64)
    size = {
        "inf": np.abs(delta).max(1),
        "2": np.linalg.norm(delta, axis=1),
        "1": np.abs(delta).sum(1),
    }
    assert (size[norm] <= eps * (1 + 1e-5) + 1e-6).all(), size[norm].max()
    assert out.x_adv.min() >= 0.0 and out.x_adv.max() <= 1.0
    assert np.allclose(out.x_clean, x.numpy())
    assert np.allclose({"inf": out.linf, "2": out.l2, "1": out.l1}[norm], size[norm], rtol=1e-5)
    assert (size[norm] > 0).any()  # the attack did something


def test_two_class_view_is_the_ensemble_probability_with_gradients_at_saturation() -> None:
    z = torch.tensor([[0.0, 2.0, -1.0], [40.0, 35.0, 50.0], [-60.0, -45.0, -50.0]])
    z.requires_grad_(True)
    logits = TwoClassLogits(nn.Identity())(z)
    p = torch.sigmoid(z).mean(dim=1)
    assert torch.allclose(torch.softmax(logits, dim=1)[:, 1], p, atol=1e-12)
    # Cross-entropy towards "real" still has a gradient where every member is saturated.
    loss = F.cross_entropy(logits, torch.zeros(3, dtype=torch.long), reduction="sum")
    loss.backward()
    assert z.grad is not None and (z.grad[1].abs() > 0).all() and torch.isfinite(z.grad).all()


def test_black_box_attacks_count_queries_within_budget_and_eps(
    trained: tuple[nn.Module, torch.Tensor, np.ndarray],
) -> None:
    net, x, labels = trained
    fakes = x[labels == 1][:2]
    with one_thread():
        square = attacker_for(net, black_box="square", norm="inf", eps=0.2, max_queries=30)
        out = square.attack(fakes)
        assert (out.queries > 0).all() and (out.queries <= 30).all()
        assert out.linf.max() <= 0.2 * (1 + 1e-6)
        assert out.attacked_probability.mean() < out.clean_probability.mean()
        hsj = attacker_for(net, black_box="hopskipjump", norm="2", eps=2.0, max_queries=100)
        out = hsj.attack(fakes)
        assert (out.queries > 0).all()
        assert out.l2.max() <= 2.0 * (1 + 1e-5)
    with pytest.raises(ValidationError, match="HopSkipJump"):
        AttackSettings(black_box="hopskipjump", norm="1")


def test_defence_scores_clean_and_attacked_through_the_purifier(
    trained: tuple[nn.Module, torch.Tensor, np.ndarray],
) -> None:
    net, x, _ = trained
    with one_thread():
        for defence in ("jpeg", "smoothing", "squeeze"):
            out = attacker_for(net, norm="inf", eps=0.05, max_iter=2, defence=defence).attack(x[:4])
            assert out.defended_clean is not None and out.defended_attacked is not None
            assert out.defended_clean.shape == out.clean.shape
            assert not np.allclose(out.defended_clean, out.clean)  # the input really changed


# ----------------------------------------------------------------------------------------------
# Whole runs with the tiny five-member ensemble


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("models")).root


def run_settings(model_dir: Path, **attack: Any) -> AttackRunSettings:
    return AttackRunSettings(
        analysis=AnalysisSettings(
            inference=InferenceSettings(model_dir=model_dir, backend="torch", device="cpu"),
            faces=FAST_FACES,
            galleries=False,
        ),
        attack=AttackSettings(**{"max_iter": 1, **attack}),
        examples=2,
        flush_rows=2,
    )


def test_transfer_crafts_on_one_member(model_dir: Path) -> None:
    ensemble = Ensemble.load(InferenceSettings(model_dir=model_dir, backend="torch", device="cpu"))
    module = crafting_module(ensemble, AttackSettings(transfer_from="m3_effb4_detr_learned"))
    x = torch.rand(2, 3, 64, 64)
    assert module(x).shape == (2, 1)
    with pytest.raises(ConfigError, match="m1_effb4"):
        crafting_module(ensemble, AttackSettings(transfer_from="m9"))


@pytest.fixture(scope="module")
def rows(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> list[VideoRow]:
    """A video (shots, tracks), an image with two faces, a face sequence, a corrupt file."""
    sequence = tmp_path_factory.mktemp("sequence")
    for i, frame in enumerate(
        face_frames(shared_data, "deepfake/dfdc_crop_aapnvogymq-004-01.png", 3)
    ):
        Image.fromarray(frame).save(sequence / f"{i}.png")
    corrupt = tmp_path_factory.mktemp("corrupt") / "broken.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    return [
        VideoRow(
            "t/a_video", str(shared_data / "videos/liveportrait_d0.mp4"), 1, "x", "test", "video"
        ),
        VideoRow(
            "t/b_two", str(shared_data / "faces/fr_two_people.jpg"), 0, "original", "test", "video"
        ),
        VideoRow("t/c_seq", str(sequence), 1, "wild", "test", "face_sequence", ""),
        VideoRow("t/d_bad", str(corrupt), 0, "original", "test", "video"),
    ]


def evaluation_scores(model_dir: Path, rows: list[VideoRow]) -> dict[str, float | None]:
    """What an evaluation run computes for these rows (batch/evaluate.py's row scorer)."""
    from batch.config import EvaluationConfig
    from batch.evaluate import score_sequentially

    config = EvaluationConfig(
        dataset="csv",
        root=Path("unused.csv"),
        out=Path("unused"),
        analysis=run_settings(model_dir).analysis,
    )
    with one_thread():
        scored = score_sequentially(config, rows)
    return {s.prediction["video_id"]: s.prediction["score"] for s in scored}


def check_rows(frame: pd.DataFrame, expected_clean: dict[str, float | None]) -> None:
    by_id = {r["video_id"]: r for r in frame.to_dict("records")}
    assert set(by_id) == set(expected_clean) | {"t/d_bad"}
    bad = by_id["t/d_bad"]
    assert bad["error_kind"] == "corrupt-media" and bad["error"]
    assert pd.isna(bad["clean_score"]) and pd.isna(bad["attacked_score"])
    for vid, clean in expected_clean.items():
        row = by_id[vid]
        assert pd.isna(row["error"])
        assert row["clean_score"] == clean  # the very same computation as the evaluation run
        assert 0.0 <= row["attacked_score"] <= 1.0
        assert row["linf_mean"] <= 0.2 * (1 + 1e-6) and row["psnr_mean"] > 0
        members = [c for c in frame.columns if c.startswith("attacked_member__")]
        assert len(members) == 5
    assert by_id["t/a_video"]["n_faces"] == 4 and by_id["t/a_video"]["n_shots"] == 1
    assert by_id["t/b_two"]["n_faces"] == 2 and by_id["t/b_two"]["n_tracks"] == 2
    assert by_id["t/c_seq"]["n_faces"] == 3 and by_id["t/c_seq"]["n_tracks"] == 1


def test_run_in_process_matches_evaluation_and_resumes(
    model_dir: Path, rows: list[VideoRow], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    settings = run_settings(model_dir)
    with one_thread():
        first = run_attack(rows[:2], out, settings, dataset="t", use_ray=False)
    assert (first.processed, first.skipped) == (2, 0)
    parts_before = sorted((out / "parts").glob("*.parquet"))
    with one_thread():
        second = run_attack(rows, out, settings, dataset="t", use_ray=False)
    assert (second.total, second.skipped, second.processed, second.errors) == (4, 2, 2, 1)
    assert set(parts_before) <= set((out / "parts").glob("*.parquet"))  # nothing redone
    frame = pd.read_parquet(second.scores)
    assert list(frame["video_id"]) == sorted(r.video_id for r in rows)
    check_rows(frame, evaluation_scores(model_dir, rows[:3]))
    # Examples: one fake and one real row keep their most suspicious face.
    examples = frame[frame["example"].notna()]
    assert set(examples["video_id"]) == {"t/a_video", "t/b_two"}
    for prefix in examples["example"]:
        for kind in ("clean", "perturbation", "attacked"):
            assert (out / f"{prefix}-{kind}.png").is_file()
    assert read_config(out)["attack"]["eps"] == 0.2

    # Resuming finished work does nothing; retrying errors redoes only the failed row.
    with one_thread():
        third = run_attack(rows, out, settings, dataset="t", use_ray=False)
        assert (third.skipped, third.processed) == (4, 0)
        retry = settings.model_copy(update={"retry_errors": True})
        fourth = run_attack(rows, out, retry, dataset="t", use_ray=False)
    assert (fourth.skipped, fourth.processed, fourth.errors) == (3, 1, 1)
    assert len(read_scores(out)) == 4

    # Another attack cannot be resumed into this folder.
    with pytest.raises(ConfigError, match="attack"):
        run_attack(rows, out, run_settings(model_dir, eps=0.1), dataset="t", use_ray=False)


def test_attack_folder_reads_the_newest_part_per_video_and_cleans_up(tmp_path: Path) -> None:
    """The run folder without any attack: parts, retries, error rows, nullable columns, PNGs."""
    folder = AttackFolder(tmp_path / "run")
    assert folder.rows() is None and folder.finished_ids() == set()
    assert read_scores(folder.root).empty
    # A first part whose error row has every score column all None (the null type) ...
    folder.write_part(
        [
            {"video_id": "b", "clean_score": None, "n_faces": None, "error": "corrupt"},
            {"video_id": "c", "clean_score": None, "n_faces": None, "error": "lost"},
        ]
    )
    # ... and a later one with typed values (ints and floats in one column) and a column the
    # first part lacks; the retry of "b" wins over its error row.
    png = b"\x89PNG fake"
    example = folder.write_example(
        {
            "video_id": "b",
            "clean_score": 0.25,
            "n_faces": 2,
            "error": None,
            "example_clean_png": png,
            "example_perturbation_png": png,
            "example_attacked_png": png,
        }
    )
    assert example["example"] is not None and "example_clean_png" not in example
    plain = folder.write_example({"video_id": "a", "clean_score": 1, "n_faces": 1, "error": None})
    assert plain["example"] is None
    folder.write_part([example, plain])
    assert folder.finished_ids() == {"a", "b", "c"}
    assert folder.finished_ids(retry_errors=True) == {"a", "b"}
    table = folder.rows()
    assert table is not None
    assert table.column("video_id").to_pylist() == ["a", "b", "c"]
    assert table.column("clean_score").to_pylist() == [1.0, 0.25, None]
    assert table.column("n_faces").to_pylist() == [1, 2, None]
    assert table.column("example").to_pylist() == [None, example["example"], None]
    for kind in ("clean", "perturbation", "attacked"):
        assert (folder.root / f"{example['example']}-{kind}.png").read_bytes() == png
    frame = read_scores(folder.root)
    assert list(frame["video_id"]) == ["a", "b", "c"] and pd.isna(frame["clean_score"][2])
    # scores.parquet: the same rows; temporaries of a stopped session are removed.
    scores = folder.consolidate()
    assert pd.read_parquet(scores).equals(frame)
    leftovers = [
        folder.parts_dir / "part-x.parquet.tmp",
        folder.examples_dir / "y.png.1.tmp",
        folder.root / "scores.parquet.tmp",
    ]
    for path in leftovers:
        path.write_bytes(b"half")
    folder.clean()
    assert not any(p.exists() for p in leftovers)
    assert len(list(folder.parts_dir.glob("part-*.parquet"))) == 2


def test_attack_settings_use_the_ray_run_names() -> None:
    settings = AttackRunSettings()
    attackers = StageSettings(actors=1, num_cpus=0.5, num_gpus=0.0, batch_size=4)
    assert settings.attackers == attackers
    assert (settings.flush_rows, settings.flush_s, settings.torch_threads) == (8, 60.0, 1)
    assert (settings.max_task_retries, settings.retry_errors) == (1, False)
    # The first stages are the evaluation run's, under the same names.
    assert (settings.decode.actors, settings.detect.batch_size) == (1, 2)
    assert settings.reserved_cpus() == pytest.approx(0.5 + 0.5 + 0.5 + 0.25)
    with pytest.raises(ValidationError):
        AttackRunSettings.model_validate({"num_cpus_per_actor": 1.0})
    with pytest.raises(ValidationError, match="gradients"):
        AttackRunSettings(serve_app="dfd")
    # num_gpus None: an even share of the cluster's GPUs among the model actors, at most one.
    shared = settings.model_copy(
        update={"attackers": StageSettings(actors=3, num_gpus=None), "detect": StageSettings()}
    )
    assert (gpu_share(shared, shared.attackers, 2.0), gpu_share(shared, shared.attackers, 0)) == (
        0.5,
        0.0,
    )
    assert gpu_share(shared, shared.attackers, 8.0) == 1.0
    assert gpu_share(settings, settings.attackers, 8.0) == 0.0


def test_attacked_scores_are_aggregated_like_the_clean_run() -> None:
    structure = [[[0, 1], [2]], [[3, 4, 5]]]
    scores = np.array([0.2, 0.4, 0.1, 0.9, 0.6, 0.3])
    # shot 0: max(mean(.2, .4), .1) = .3; shot 1: mean = .6; video = .6
    assert video_score(structure, scores) == pytest.approx(0.6)
    assert video_score([], scores) is None


@pytest.mark.ray
def test_ray_run_matches_the_evaluation_run(
    ray_local: None, model_dir: Path, shared_data: Path, tmp_path: Path
) -> None:
    """Same rows, same settings: the attack run's clean scores are the evaluation run's."""
    from batch.config import EvaluationConfig
    from batch.evaluate import run_evaluation
    from evaluation.runs import RunFolder

    manifest = tmp_path / "media.csv"
    manifest.write_text(
        "path,label,video_id\n"
        f"{shared_data / 'faces/fr_obama_small.jpg'},1,csv/obama\n"
        f"{shared_data / 'faces/fr_two_people.jpg'},0,csv/two\n"
        f"{shared_data / 'MANIFEST.csv'},0,csv/not_media\n"
    )
    rows = read_dataset("csv", manifest)
    settings = run_settings(model_dir).model_copy(
        update={"attackers": StageSettings(actors=2, num_cpus=0.5, num_gpus=0.0)}
    )
    outcome = run_attack(rows, tmp_path / "attack", settings, dataset="csv", root=manifest)
    assert (outcome.processed, outcome.errors) == (3, 1)
    evaluation = run_evaluation(
        EvaluationConfig(
            dataset="csv", root=manifest, out=tmp_path / "eval", analysis=settings.analysis,
            per_face=False,
            # One shot per ensemble call, as the attack (and the in-process analysis) scores
            # them: batching shots of several videos changes the float rounding.
            score=StageSettings(batch_size=1),
        )
    )  # fmt: skip
    assert evaluation.processed == 3
    predictions = RunFolder(tmp_path / "eval").predictions()
    assert predictions is not None
    expected = {r["video_id"]: r["score"] for r in predictions.to_pylist()}
    frame = read_scores(tmp_path / "attack")
    got = dict(zip(frame["video_id"], frame["clean_score"], strict=True))
    assert set(got) == set(expected)
    for vid, score in expected.items():
        if score is None:
            assert math.isnan(got[vid]) and vid == "csv/not_media"
        else:
            assert got[vid] == pytest.approx(score, abs=1e-9)
    # Resume on Ray: nothing left to do, no new part.
    parts = sorted((tmp_path / "attack" / "parts").glob("*.parquet"))
    again = run_attack(rows, tmp_path / "attack", settings, dataset="csv", root=manifest)
    assert (again.skipped, again.processed) == (3, 0)
    assert sorted((tmp_path / "attack" / "parts").glob("*.parquet")) == parts


#: What the staged run must reproduce of the in-process run (times and messages aside).
COMPARED = (
    "clean_score", "attacked_score", "n_faces", "n_shots", "n_tracks", "face_clean_mean",
    "face_attacked_mean", "n_faces_fake_clean", "n_faces_flipped", "l1_mean", "l2_mean",
    "linf_mean", "psnr_mean", "ssim_mean", "n_unchanged", "queries_total",
    "example_clean_score", "example_attacked_score", "example_amplification", "example",
    "error_kind",
)  # fmt: skip


def assert_same_rows(expected: pd.DataFrame, got: pd.DataFrame, tolerance: float) -> None:
    assert list(got["video_id"]) == list(expected["video_id"])
    members = [c for c in expected.columns if "_member__" in c]
    assert len(members) == 10 and set(members) <= set(got.columns)
    for column in (*COMPARED, *members):
        for vid, want, have in zip(
            expected["video_id"], expected[column], got[column], strict=True
        ):
            if pd.isna(want) or isinstance(want, str):
                assert (pd.isna(have) and pd.isna(want)) or have == want, (vid, column, have)
            else:
                assert have == pytest.approx(want, abs=tolerance), (vid, column, have - want)
    assert list(got["error"].notna()) == list(expected["error"].notna())


@pytest.mark.ray
def test_staged_attack_equals_the_in_process_attack(
    ray_local: None, model_dir: Path, rows: list[VideoRow], tmp_path: Path
) -> None:
    """Through the stages (decoding, face detection, tracks, the attack actor pool), every
    column of every row is the in-process attack's: a video with tracks, an image with two
    faces, a face sequence, a corrupt file and an image without a face."""
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((96, 96, 3), 127, np.uint8)).save(blank)
    cases = [*rows, VideoRow("t/e_blank", str(blank), 0, "original", "test", "video")]
    settings = run_settings(model_dir)
    with one_thread():
        run_attack(cases, tmp_path / "local", settings, dataset="t", use_ray=False)
    expected = read_scores(tmp_path / "local")
    blank_row = expected[expected["video_id"] == "t/e_blank"].iloc[0]
    assert blank_row["n_faces"] == 0 and pd.isna(blank_row["clean_score"])
    assert pd.isna(blank_row["error"])

    # One shot per attack call: the very same computation, shot by shot.
    one_shot = settings.model_copy(update={"attackers": StageSettings(batch_size=1)})
    outcome = run_attack(cases, tmp_path / "staged", one_shot, dataset="t")
    assert (outcome.processed, outcome.errors) == (5, 1)
    got = read_scores(tmp_path / "staged")
    assert_same_rows(expected, got, 1e-6)
    bad = got[got["video_id"] == "t/d_bad"].iloc[0]
    assert bad["error"].startswith("decoding: ")  # the stage that failed is named
    for prefix in got["example"].dropna():
        for kind in ("clean", "perturbation", "attacked"):
            assert (tmp_path / "staged" / f"{prefix}-{kind}.png").is_file()

    # The faces of every shot in one call (several videos per PGD batch): each face's attack
    # is its own, so only float rounding differs: the kernels' rounding depends on the batch
    # size, untrained networks amplify it (clean member probabilities moved by up to 9e-3 on
    # the face sequence, its attacked ones by 1.1e-2), while the rows' scores lie 3e-2 or more
    # apart, so a face scored for the wrong video would still be caught.
    batched = settings.model_copy(update={"attackers": StageSettings(batch_size=8)})
    run_attack(cases, tmp_path / "batched", batched, dataset="t")
    assert_same_rows(expected, read_scores(tmp_path / "batched"), 2e-2)

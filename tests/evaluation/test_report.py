"""Reports from run folders: numbers equal scikit-learn's, the paper's table layouts, side by
side runs, ROC pictures. Runs are written here with known scores (no Ray, no models)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from evaluation.metrics import choose_threshold, roc_curve_points
from evaluation.plots import RocLine, plot_roc
from evaluation.report import load_report, write_report
from evaluation.report_tables import PAPER_TABLE1
from evaluation.run_metrics import compute_run_metrics
from evaluation.runs import RunFolder, face_schema, member_column, prediction_schema
from pipeline.errors import ConfigError

MEMBERS = ["a", "b"]
#: Mean fake score per manipulation: identity swaps easier than expression swaps, as in Table 2.
SHIFTS = {"Deepfakes": 0.35, "FaceSwap": 0.3, "NeuralTextures": 0.08, "Face2Face": 0.1}


def write_run(
    root: Path,
    dataset: str,
    *,
    seed: int = 0,
    n_real: int = 40,
    manipulations: dict[str, float] | None = None,
    val_fraction: float = 0.3,
    faces_per_video: int = 3,
    broken: int = 0,
    no_face: int = 0,
    models: list[dict[str, Any]] | None = None,
    digest: str = "0123456789abcdef",
) -> Path:
    """A run folder as ``batch.evaluate`` writes it, with scores drawn from known
    distributions: reals around 0.4, each manipulation's fakes shifted up by its value."""
    rng = np.random.default_rng(seed)
    manipulations = manipulations if manipulations is not None else {"unspecified": 0.3}
    groups = [("original", 0, n_real, 0.0)] + [
        (m, 1, n_real, shift) for m, shift in manipulations.items()
    ]
    predictions: list[dict[str, Any]] = []
    faces: list[dict[str, Any]] = []
    now = datetime.now(UTC)
    for manipulation, label, n, shift in groups:
        for i in range(n):
            vid = f"{dataset}/{manipulation}/{i:03d}"
            split = "val" if rng.random() < val_fraction else "test"
            face_scores = np.clip(rng.normal(0.4 + shift, 0.15, faces_per_video), 0.001, 0.999)
            base = {
                "video_id": vid,
                "dataset": dataset,
                "label": label,
                "manipulation": manipulation,
                "split": split,
            }
            for k, s in enumerate(face_scores):
                faces.append(
                    {
                        **base,
                        "shot": 0,
                        "track": 0,
                        "frame_index": k,
                        "score": float(s),
                        **{member_column(m): float(s) for m in MEMBERS},
                    }
                )
            score = float(face_scores.mean())
            predictions.append(
                {
                    **base,
                    "path": f"/data/{vid}.mp4",
                    "kind": "video",
                    "score": score,
                    "label_pred": int(score >= 0.5),
                    "n_faces": faces_per_video,
                    "n_shots": 1,
                    "service_version": "0.1.0",
                    "models_digest": digest,
                    "finished_at": now,
                    **{member_column(m): score for m in MEMBERS},
                }
            )
    for i in range(broken):
        predictions.append(
            {
                "video_id": f"{dataset}/broken/{i}",
                "dataset": dataset,
                "label": 1,
                "manipulation": next(iter(manipulations)),
                "split": "test",
                "error_kind": "corrupt-media",
                "error": "truncated",
                "models_digest": digest,
                "finished_at": now,
            }
        )
    for i in range(no_face):
        predictions.append(
            {
                "video_id": f"{dataset}/noface/{i}",
                "dataset": dataset,
                "label": 0,
                "manipulation": "original",
                "split": "test",
                "n_faces": 0,
                "models_digest": digest,
                "finished_at": now,
            }
        )
    folder = RunFolder(root)
    folder.write_info(
        {
            "fingerprint": {
                "dataset": dataset,
                "models_digest": digest,
                "models": models
                or [{"name": m, "version": "1.0.0", "weights": "trained"} for m in MEMBERS],
            },
            "sessions": [],
        }
    )
    folder.write_part(
        pa.Table.from_pylist(predictions, schema=prediction_schema(MEMBERS)),
        pa.Table.from_pylist(faces, schema=face_schema(MEMBERS)),
    )
    return root


@pytest.fixture
def ffpp_run(tmp_path: Path) -> Path:
    return write_run(tmp_path / "ffpp-run", "ffpp", manipulations=SHIFTS, broken=2, no_face=1)


@pytest.fixture
def cdf_run(tmp_path: Path) -> Path:
    return write_run(
        tmp_path / "cdf-run",
        "celebdf",
        seed=1,
        val_fraction=0.0,
        manipulations={"Celeb-synthesis": 0.25},
        models=[
            {"name": "a", "version": "1.0.0", "weights": "trained"},
            {"name": "b", "version": "0.0.0", "weights": "random-init"},
        ],
    )


def _frames(run: Path) -> tuple[Any, Any]:
    folder = RunFolder(run)
    predictions, faces = folder.predictions(), folder.faces()
    assert predictions is not None and faces is not None
    return predictions.to_pandas(), faces.to_pandas()


def test_numbers_equal_sklearn(ffpp_run: Path) -> None:
    metrics = compute_run_metrics(ffpp_run, n_boot=200)
    df, faces = _frames(ffpp_run)
    scored = df[df["score"].notna()]
    test, val = scored[scored["split"] == "test"], scored[scored["split"] == "val"]
    assert metrics.evaluated_on == "split test"
    assert metrics.n_evaluated == int((df["split"] == "test").sum())
    assert (metrics.n_rows, metrics.n_errors, metrics.n_no_face) == (len(df), 2, 1)

    t_star = choose_threshold(val["label"], val["score"])
    assert metrics.threshold == pytest.approx(t_star)
    assert metrics.threshold_source is not None and "split val" in metrics.threshold_source
    assert metrics.threshold != 0.5  # the validation split moves it

    overall = metrics.video.get(dataset="ffpp")
    y, s = test["label"].to_numpy(), test["score"].to_numpy()
    assert overall.balanced_accuracy == pytest.approx(balanced_accuracy_score(y, s >= 0.5))
    assert overall.auc == pytest.approx(roc_auc_score(y, s))
    assert overall.n_excluded == 3  # the two broken videos and the face-less one
    assert overall.balanced_accuracy_ci is not None and overall.auc_ci is not None
    assert overall.auc_ci[0] <= overall.auc <= overall.auc_ci[1]
    assert metrics.video_at_threshold is not None
    at_t = metrics.video_at_threshold.get(dataset="ffpp")
    assert at_t.balanced_accuracy == pytest.approx(balanced_accuracy_score(y, s >= t_star))
    assert at_t.auc == overall.auc

    for manipulation in SHIFTS:
        subset = test[(test["manipulation"] == manipulation) | (test["label"] == 0)]
        row = metrics.video.get(dataset="ffpp", manipulation=manipulation)
        assert row.auc == pytest.approx(roc_auc_score(subset["label"], subset["score"]))
        assert row.balanced_accuracy == pytest.approx(
            balanced_accuracy_score(subset["label"], subset["score"] >= 0.5)
        )
    # Identity swaps score higher than expression swaps, as the data were drawn.
    dfk = metrics.video.get(dataset="ffpp", manipulation="Deepfakes").auc
    ntx = metrics.video.get(dataset="ffpp", manipulation="NeuralTextures").auc
    assert dfk is not None and ntx is not None and dfk > ntx

    test_faces = faces[faces["video_id"].isin(set(test["video_id"]))]
    assert metrics.frame is not None
    frame = metrics.frame.get(dataset="ffpp")
    assert frame.auc == pytest.approx(roc_auc_score(test_faces["label"], test_faces["score"]))
    assert frame.n_real + frame.n_fake == len(test_faces)
    assert frame.balanced_accuracy_ci is None  # faces are not independent: no per-face CI
    val_faces = faces[faces["video_id"].isin(set(val["video_id"]))]
    assert metrics.frame_threshold == pytest.approx(
        choose_threshold(val_faces["label"], val_faces["score"])
    )


def test_threshold_from_another_run(tmp_path: Path, ffpp_run: Path, cdf_run: Path) -> None:
    own = compute_run_metrics(cdf_run, n_boot=0)
    assert own.threshold is None and "no validation rows" in own.threshold_note
    assert own.video_at_threshold is None
    borrowed = compute_run_metrics(cdf_run, n_boot=0, val_run=ffpp_run)
    df, _ = _frames(ffpp_run)
    val = df[(df["split"] == "val") & df["score"].notna()]
    assert borrowed.threshold == pytest.approx(choose_threshold(val["label"], val["score"]))
    assert borrowed.threshold_source is not None and "ffpp-run" in borrowed.threshold_source


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.images: list[str] = []
        self.open: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs)["src"] or "")
        elif tag not in ("meta", "br"):
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.open and self.open[-1] == tag, (self.open[-3:], tag)
        self.open.pop()


def test_report_side_by_side(tmp_path: Path, ffpp_run: Path, cdf_run: Path) -> None:
    out = tmp_path / "report"
    files = write_report([ffpp_run, cdf_run], out, n_boot=50)
    md = files.markdown.read_text()
    ffpp, cdf = files.runs
    # Table 1: one row per run, the paper's rows for reference.
    table1 = md.split("**Table 1: BA (at threshold 0.5)")[1].split("\n\n")[1]
    lines = table1.splitlines()
    assert lines[0].startswith("| run | FaceForensics++ BA | FaceForensics++ AUC | CelebDF BA")
    ba = ffpp.video.get(dataset="ffpp").balanced_accuracy
    auc = ffpp.video.get(dataset="ffpp").auc
    assert ba is not None and auc is not None
    assert lines[2].startswith(f"| ffpp-run | {100 * ba:.2f}% | {auc:.4f} | — | — |")
    cdf_auc = cdf.video.get(dataset="celebdf").auc
    assert cdf_auc is not None
    assert lines[3].startswith("| cdf-run | — | — |") and f"{cdf_auc:.4f}" in lines[3]
    assert lines[4].startswith("| paper: MeVer (Table 1) | 70.31% | 0.7705 | 82.75% | 0.9259")
    assert lines[5].startswith("| paper: DeepWare (Table 1) | 68.77% | 0.7681")
    # Table 2: FF++ runs only, the paper's order and figures.
    table2 = md.split("**Table 2: BA (at threshold 0.5)")[1].split("\n\n")[1].splitlines()
    assert table2[0].startswith("| run | FaceSwap BA | FaceSwap AUC | DeepFakes BA")
    assert [line.split(" | ")[0] for line in table2[2:]] == [
        "| ffpp-run",
        "| paper: MeVer (Table 2)",
    ]
    assert "| 78.40% | 0.8674 | 86.20% | 0.9468 | 57.65% | 0.6276 | 59.02% | 0.6402 |" in table2[3]
    # At the validation-chosen threshold too; the untrained run is flagged.
    assert "**Table 1: BA (at the validation-chosen threshold)" in md
    assert "WARNING**: cdf-run: 1 of 2 models ran with random, untrained weights (b)" in md
    assert "corrupt-media: 2" in md
    assert "Frame level" in md and "BA @ t* =" in md

    page = _Collect()
    page.feed(files.html.read_text())
    assert not page.open and page.tags.count("table") >= 6
    assert sorted(page.images) == sorted(p.relative_to(out).as_posix() for p in files.images)
    names = {p.name for p in files.images}
    assert {"roc_ffpp.png", "roc_celebdf.png", "roc_ffpp-run_ffpp_manipulations.png"} <= names
    for image in files.images:
        with Image.open(image) as im:
            assert im.format == "PNG" and im.size == (560, 560)

    runs, payload = load_report(out)
    assert [r.name for r in runs] == ["ffpp-run", "cdf-run"]
    assert runs[0] == ffpp
    assert payload["paper"]["table1"]["paper: MeVer (Table 1)"]["ffpp"] == list(
        PAPER_TABLE1["paper: MeVer (Table 1)"]["ffpp"]
    )
    assert json.loads(files.json.read_text())["runs"][1]["untrained"] == ["b"]


def test_report_refuses_what_is_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not an evaluation run folder"):
        write_report([tmp_path], tmp_path / "out")
    RunFolder(tmp_path / "empty").write_info({"sessions": []})
    with pytest.raises(ConfigError, match="no predictions yet"):
        compute_run_metrics(tmp_path / "empty")
    with pytest.raises(ConfigError, match=r"no metrics\.json"):
        load_report(tmp_path)


def test_roc_plot_draws_the_curve(tmp_path: Path) -> None:
    """A perfect detector's curve runs up the left edge then along the top."""
    perfect = roc_curve_points([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])
    worse = roc_curve_points([1, 0, 1, 0], [0.1, 0.2, 0.3, 0.4])
    path = plot_roc(
        [
            RocLine("perfect", perfect.fpr, perfect.tpr, 1.0),
            RocLine("worse", worse.fpr, worse.tpr, 0.25, dashed=True),
        ],
        tmp_path / "roc.png",
        "test",
    )
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB")).astype(int)
    blue = np.array([31, 119, 180])
    # Plot area: x from 64 to 544, y from 40 to 508 (size 560, margins 64/16/40/52).
    left_edge = rgb[100:450, 62:67]
    assert (np.abs(left_edge - blue).sum(axis=-1) < 60).any(axis=1).mean() > 0.9
    top_edge = rgb[38:43, 100:500]
    assert (np.abs(top_edge - blue).sum(axis=-1) < 60).any(axis=0).mean() > 0.9
    # Nothing blue in the lower right, where the perfect curve never goes.
    assert not (np.abs(rgb[300:450, 350:450] - blue).sum(axis=-1) < 60).any()

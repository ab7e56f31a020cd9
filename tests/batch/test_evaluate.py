"""Evaluation runs on Ray Data, on fixture datasets in the official layouts (real media of
../shared/data), with tiny models; plus the run folder's bookkeeping without Ray."""

from __future__ import annotations

import contextlib
import shutil
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from batch.config import EvaluationConfig, StageSettings
from batch.datasets import VideoRow, read_dataset
from batch.evaluate import analysis_digest, run_evaluation, score_sequentially
from batch.execution import check_lost
from batch.stages import ShotTask, each_or_all
from batch.stream import gpu_share
from evaluation.metrics import aggregate_to_video
from evaluation.run_metrics import compute_run_metrics
from evaluation.runs import RunFolder, face_schema, member_column, prediction_schema
from pipeline.analyze import AnalysisSettings
from pipeline.errors import ConfigError, RunFailedError
from pipeline.faces import FaceSettings
from pipeline.models import Ensemble, InferenceSettings
from pipeline.models.member import expected_infos, models_digest
from tests.support.datasets import build_ffpp, build_wdf, face_frames
from tests.support.models import make_model_dir

FAST_FACES = FaceSettings(max_frames_per_shot=4, max_side_px=640)
MEMBERS = [
    "m1_effb4",
    "m2_effb4_detr_sine",
    "m3_effb4_detr_learned",
    "m4_effb4_detr_multiscale",
    "m5_effv2m",
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("models")).root


def settings_for(model_dir: Path) -> AnalysisSettings:
    return AnalysisSettings(
        inference=InferenceSettings(model_dir=model_dir, backend="torch", device="cpu"),
        faces=FAST_FACES,
        galleries=False,
    )


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Compute references as the actors do (``torch_threads=1``): with these test models, whose
    heads are made large on purpose, 1 and 2 threads differ by up to 1e-2 in a probability."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def config_for(model_dir: Path, dataset: str, root: Path, out: Path, **kw: Any) -> EvaluationConfig:
    return EvaluationConfig(
        dataset=dataset,  # type: ignore[arg-type]
        root=root,
        out=out,
        analysis=settings_for(model_dir),
        **kw,
    )


# ----------------------------------------------------------------------------------------------
# Without Ray: the run folder and the fingerprints


def _prediction(video_id: str, *, score: float | None, error: str | None = None) -> dict[str, Any]:
    return {
        "video_id": video_id,
        "dataset": "csv",
        "path": f"/x/{video_id}.mp4",
        "label": 1,
        "manipulation": "unspecified",
        "split": "test",
        "kind": "video",
        "score": score,
        "error_kind": None if error is None else "corrupt-media",
        "error": error,
        "finished_at": datetime.now(UTC),
        **{member_column(m): score for m in MEMBERS},
    }


def _face(video_id: str, score: float) -> dict[str, Any]:
    return {
        "video_id": video_id,
        "dataset": "csv",
        "label": 1,
        "manipulation": "unspecified",
        "split": "test",
        "shot": 0,
        "track": 0,
        "frame_index": 0,
        "score": score,
    }


def test_a_batch_failing_midway_is_retried_from_where_each_shot_started() -> None:
    """A stage call that fails after finishing some shots of its batch: each shot is retried
    alone from the fields it had before the call (a finished shot has consumed its frames), so
    only the failing shot's video fails."""
    frame = (0, 0.0, np.zeros((4, 4, 3), np.uint8))
    tasks = [
        ShotTask(item={"video_id": v}, part=0, last=True, kind="video", frames=[frame, frame])
        for v in "abc"
    ]

    def detect(batch: Sequence[ShotTask]) -> None:
        for task in batch:
            if task.video_id == "b":
                raise RuntimeError("no detector for b")
            task.n_frames, task.frames = len(task.frames), []

    each_or_all(tasks, "detect", detect)
    a, b, c = tasks
    assert (a.kind, a.n_frames, c.kind, c.n_frames) == ("video", 2, "video", 2)
    assert b.kind == "error" and b.error is not None
    assert b.error["error"] == "face detection: RuntimeError: no detector for b"


def test_run_folder_newest_part_wins_and_faces_follow(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path / "run")
    schema, fschema = prediction_schema(MEMBERS), face_schema(MEMBERS)
    first = pa.Table.from_pylist(
        [_prediction("a", score=None, error="truncated"), _prediction("b", score=0.2)],
        schema=schema,
    )
    folder.write_part(first, pa.Table.from_pylist([_face("b", 0.2)], schema=fschema))
    assert folder.finished_ids() == {"a", "b"}
    assert folder.finished_ids(retry_errors=True) == {"b"}

    # A retry of "a" succeeds: its newer row replaces the error row, and its faces appear.
    second = pa.Table.from_pylist([_prediction("a", score=0.9)], schema=schema)
    folder.write_part(second, pa.Table.from_pylist([_face("a", 0.9)], schema=fschema))
    table = folder.predictions()
    assert table is not None
    assert table.column("video_id").to_pylist() == ["a", "b"]
    assert table.column("score").to_pylist() == [0.9, 0.2]
    assert table.column("error").to_pylist() == [None, None]
    faces = folder.faces()
    assert faces is not None
    assert sorted(zip(faces["video_id"].to_pylist(), faces["score"].to_pylist(), strict=True)) == [
        ("a", 0.9),
        ("b", 0.2),
    ]
    assert folder.finished_ids(retry_errors=True) == {"a", "b"}


def test_run_folder_clean_drops_orphans_and_temporaries(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path / "run")
    schema, fschema = prediction_schema(MEMBERS), face_schema(MEMBERS)
    name = folder.write_part(
        pa.Table.from_pylist([_prediction("a", score=0.4)], schema=schema),
        pa.Table.from_pylist([_face("a", 0.4)], schema=fschema),
    )
    # A session that died between writing its faces and its predictions, and mid-write.
    orphan = folder.faces_dir / "part-20990101T000000000000-1-00000.parquet"
    shutil.copyfile(folder.faces_dir / f"{name}.parquet", orphan)
    tmp = folder.predictions_dir / "part-x.parquet.tmp"
    tmp.write_bytes(b"partial")
    folder.clean()
    assert not orphan.exists() and not tmp.exists()
    assert (folder.faces_dir / f"{name}.parquet").exists()


def test_digests(model_dir: Path) -> None:
    settings = settings_for(model_dir)
    ensemble = Ensemble.load(settings.inference)
    # The driver's manifest-only reading gives the digest the actors' loaded models give.
    assert models_digest(expected_infos(settings.inference)) == models_digest(ensemble.infos)
    faster = settings.model_copy(
        update={"inference": settings.inference.model_copy(update={"backend": "onnx"})}
    )
    assert analysis_digest(faster) == analysis_digest(settings)
    fewer = settings.model_copy(
        update={"faces": settings.faces.model_copy(update={"max_frames_per_shot": 5})}
    )
    assert analysis_digest(fewer) != analysis_digest(settings)


def test_resume_with_other_models_is_refused(
    model_dir: Path, tmp_path: Path, shared_data: Path
) -> None:
    root = build_ffpp(tmp_path / "ffpp", shared_data)
    out = tmp_path / "run"
    folder = RunFolder(out)
    folder.write_info(
        {"fingerprint": {"models_digest": "0123456789abcdef", "dataset": "ffpp"}, "sessions": []}
    )
    with pytest.raises(ConfigError, match="another models digest"):
        run_evaluation(config_for(model_dir, "ffpp", root, out))


# ----------------------------------------------------------------------------------------------
# On a local Ray instance


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _records(folder: RunFolder) -> dict[str, dict[str, Any]]:
    table = folder.predictions()
    assert table is not None
    return {r["video_id"]: r for r in table.to_pylist()}


def _check_aggregation(folder: RunFolder) -> None:
    """Video (and per-member) scores are the paper's aggregation of the written face rows."""
    predictions, faces = folder.predictions(), folder.faces()
    assert predictions is not None and faces is not None
    ids = faces["video_id"].to_pylist()
    shots = faces["shot"].to_pylist()
    tracks = faces["track"].to_pylist()
    for column in ["score", *(member_column(m) for m in MEMBERS)]:
        expected = aggregate_to_video(
            ids, faces[column].to_numpy(), shot_ids=shots, cluster_ids=tracks
        )
        for row in predictions.to_pylist():
            if row["score"] is not None:
                assert row[column] == pytest.approx(expected[row["video_id"]], abs=1e-12)


@pytest.mark.ray
def test_ffpp_run_is_resumable(
    ray_local: None, model_dir: Path, tmp_path: Path, shared_data: Path
) -> None:
    root = build_ffpp(tmp_path / "ffpp", shared_data)
    out = tmp_path / "run"
    config = config_for(model_dir, "ffpp", root, out, flush_rows=2)
    rows = read_dataset("ffpp", root)
    assert len(rows) == 6

    first = run_evaluation(config, rows=rows[:2])
    assert (first.total, first.skipped, first.processed, first.errors) == (2, 0, 2, 0)
    folder = RunFolder(out)
    before = _records(folder)
    parts_before = sorted(folder.predictions_dir.glob("part-*.parquet"))

    seen: list[tuple[int, int]] = []
    second = run_evaluation(config, progress=lambda done, total, _: seen.append((done, total)))
    assert (second.total, second.skipped, second.processed, second.errors) == (6, 2, 4, 0)
    assert seen[-1] == (4, 4) and [d for d, _ in seen] == [1, 2, 3, 4]
    after = _records(folder)
    assert set(after) == {r.video_id for r in rows}
    # The first session's rows were not redone: same rows, same timestamps, same files.
    for vid, row in before.items():
        assert after[vid]["finished_at"] == row["finished_at"]
        assert after[vid]["worker"] == row["worker"]
    assert set(parts_before) <= set(folder.predictions_dir.glob("part-*.parquet"))
    sessions = folder.info()["sessions"]
    assert [(s["skipped"], s["processed"]) for s in sessions] == [(0, 2), (2, 4)]

    third = run_evaluation(config)
    assert (third.skipped, third.processed) == (6, 0)

    table = folder.predictions()
    assert table is not None
    assert table.schema.equals(prediction_schema(MEMBERS))
    by_id = {r.video_id: r for r in rows}
    for vid, row in after.items():
        assert (row["label"], row["manipulation"], row["split"]) == (
            by_id[vid].label,
            by_id[vid].manipulation,
            by_id[vid].split,
        )
        assert row["error"] is None and row["score"] is not None
        assert 0.0 <= row["score"] <= 1.0
        assert row["label_pred"] == int(row["score"] >= 0.5)
        assert row["n_shots"] >= 1 and row["n_faces"] >= 1 and row["n_tracks"] >= 1
        assert row["n_faces"] <= row["n_faces_detected"]
        assert row["frames_sampled"] > 0 and row["duration_s"] > 10
    faces = folder.faces()
    assert faces is not None
    counts: dict[str, int] = {}
    for vid in faces["video_id"].to_pylist():
        counts[vid] = counts.get(vid, 0) + 1
    assert counts == {vid: row["n_faces"] for vid, row in after.items()}
    _check_aggregation(folder)


@pytest.mark.ray
def test_stages_that_cannot_all_start_are_refused(
    ray_local: None, model_dir: Path, tmp_path: Path, shared_data: Path
) -> None:
    """Every actor of a pool must start: reserving more CPUs than the cluster has (4 here) is a
    clear error, not a run that waits forever."""
    root = build_ffpp(tmp_path / "ffpp", shared_data)
    config = config_for(model_dir, "ffpp", root, tmp_path / "run", score=StageSettings(actors=8))
    with pytest.raises(ConfigError, match=r"reserve 5\.25 CPUs"):
        run_evaluation(config)
    # The same for memory: two ensemble actors asking a petabyte each.
    greedy = StageSettings(actors=2, memory_mb=2**30)
    config = config_for(model_dir, "ffpp", root, tmp_path / "run2", score=greedy)
    with pytest.raises(ConfigError, match=r"reserve 2,147,483,648 MiB of memory"):
        run_evaluation(config)


def test_model_stages_reserve_no_gpu_when_serve_holds_the_models() -> None:
    config = EvaluationConfig(
        dataset="csv", root=Path("m.csv"), out=Path("run"),
        detect=StageSettings(actors=2), score=StageSettings(actors=2, num_gpus=0.5),
    )  # fmt: skip
    assert (gpu_share(config, config.detect, 2.0), gpu_share(config, config.score, 2.0)) == (
        0.5,
        0.5,
    )
    served = config.model_copy(update={"serve_app": "dfd"})
    assert gpu_share(served, served.detect, 2.0) == gpu_share(served, served.score, 2.0) == 0.0


def test_a_run_that_loses_too_many_rows_fails_after_writing_them() -> None:
    assert EvaluationConfig.model_fields["max_lost_fraction"].default == 0.05
    check_lost(1, 20, 0.05, "analysing")  # 5%: allowed
    check_lost(0, 0, 0.0, "analysing")
    with pytest.raises(RunFailedError, match=r"2 of 20 videos \(10%\) lost .* --retry-errors"):
        check_lost(2, 20, 0.05, "analysing")


@pytest.mark.ray
def test_wdf_sequences_skip_detection(
    ray_local: None, model_dir: Path, tmp_path: Path, shared_data: Path
) -> None:
    fixture = build_wdf(tmp_path / "wdf", shared_data)
    out = tmp_path / "run"
    # One sequence chunk per ensemble call, as the reference below scores them.
    config = config_for(model_dir, "wdf", fixture.root, out, score=StageSettings(batch_size=1))
    summary = run_evaluation(config)
    assert (summary.processed, summary.errors, summary.no_face) == (6, 0, 0)
    folder = RunFolder(out)
    records = _records(folder)
    assert set(records) == set(fixture.video_ids)
    ensemble = Ensemble.load(settings_for(model_dir).inference)
    for vid, key in fixture.video_ids.items():
        row = records[vid]
        assert (row["kind"], row["n_shots"], row["n_tracks"], row["n_faces"]) == (
            "face_sequence", 1, 1, 3,
        )  # fmt: skip
        assert row["label"] == fixture.labels[vid]
        # Faces scored as given: one track, its mean is the video score.
        with one_thread():
            pred = ensemble.predict(fixture.sequences[key])
        assert row["score"] == pytest.approx(float(pred.probability.mean()), abs=1e-6)
        for j, m in enumerate(MEMBERS):
            expected = float(pred.member_probabilities[:, j].mean())
            assert row[member_column(m)] == pytest.approx(expected, abs=1e-6)
    faces = folder.faces()
    assert faces is not None
    assert faces["time_s"].null_count == faces.num_rows  # no times in a face sequence
    _check_aggregation(folder)


@pytest.fixture(scope="module")
def csv_run(
    ray_local: None, model_dir: Path, tmp_path_factory: pytest.TempPathFactory, shared_data: Path
) -> tuple[EvaluationConfig, list[VideoRow]]:
    """A CSV manifest mixing videos, images, a face folder, a face-less image and a corrupt
    video; scored once by the actor pool and shared by the tests below."""
    base = tmp_path_factory.mktemp("csv")
    corrupt = base / "truncated.mp4"
    corrupt.write_bytes((shared_data / "deepfake/ffpp_c23_004.mp4").read_bytes()[:30_000])
    faces = base / "seq"
    faces.mkdir()
    from PIL import Image

    for i, frame in enumerate(
        face_frames(shared_data, "deepfake/dfdc_crop_aapnvogymq-004-01.png", 3)
    ):
        Image.fromarray(frame).save(faces / f"{i}.png")
    d = shared_data
    lines = [
        "path,label,manipulation,split",
        f"{d}/videos/liveportrait_d0.mp4,real,,test",
        f"{d}/deepfake/ffpp_c23_004.mp4,real,,test",
        f"{d}/faces/fr_obama_small.jpg,real,,test",
        f"{d}/nonface/imageio_coffee.png,real,,test",
        f"{d}/deepfake/ffpp_c23_004_982.mp4,fake,NeuralTextures,test",
        f"{d}/deepfake/dfdc_mqzvfufzoq_fr0.jpg,fake,dfdc,test",
        f"{faces},fake,wild,test",
        f"{corrupt},fake,NeuralTextures,test",
    ]
    manifest = base / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    # One shot per ensemble call, as the in-process analysis scores them: the staged run must
    # then give its numbers exactly (test_killed_score_actor... batches across videos).
    config = config_for(model_dir, "csv", manifest, base / "run", score=StageSettings(batch_size=1))
    summary = run_evaluation(config)
    assert (summary.total, summary.processed) == (8, 8)
    assert (summary.errors, summary.no_face) == (1, 1)
    return config, read_dataset("csv", manifest)


@pytest.mark.ray
def test_corrupt_video_is_an_error_row(csv_run: tuple[EvaluationConfig, list[VideoRow]]) -> None:
    config, _ = csv_run
    records = _records(RunFolder(config.out))
    assert len(records) == 8
    broken = next(r for v, r in records.items() if v.endswith("truncated.mp4"))
    assert broken["error_kind"] == "corrupt-media"
    assert "truncated" in broken["error"]
    assert broken["score"] is None and broken["label_pred"] is None  # never a neutral score
    assert all(broken[member_column(m)] is None for m in MEMBERS)
    no_face = next(r for v, r in records.items() if v.endswith("imageio_coffee.png"))
    assert no_face["error"] is None and no_face["score"] is None and no_face["n_faces"] == 0
    others = [r for r in records.values() if r is not broken and r is not no_face]
    assert all(r["error"] is None and r["score"] is not None for r in others)
    image = next(r for v, r in records.items() if v.endswith("fr_obama_small.jpg"))
    assert image["kind"] == "video" and image["n_shots"] == 1 and image["duration_s"] is None


@pytest.mark.ray
def test_staged_run_equals_the_in_process_analysis(
    csv_run: tuple[EvaluationConfig, list[VideoRow]],
) -> None:
    """The stages give what ``dfd analyze``'s code gives in one process (:class:`RowScorer`):
    an FF++ clip, a talking-head video, a DFDC frame and a face sequence, every video and face
    score and count."""
    config, rows = csv_run
    records = _records(RunFolder(config.out))
    faces = RunFolder(config.out).faces()
    assert faces is not None
    chosen = [
        r
        for r in rows
        if r.path.endswith(("liveportrait_d0.mp4", "ffpp_c23_004_982.mp4", "fr0.jpg", "seq"))
    ]
    assert len(chosen) == 4
    with one_thread():
        plain = score_sequentially(config, chosen)
    for scored in plain:
        vid = scored.prediction["video_id"]
        row = records[vid]
        for column in ("n_faces", "n_faces_detected", "n_tracks", "n_shots", "frames_sampled"):
            assert row[column] == scored.prediction[column], (vid, column)
        assert row["score"] == pytest.approx(scored.prediction["score"], abs=1e-6)
        for m in MEMBERS:
            expected = scored.prediction[member_column(m)]
            assert row[member_column(m)] == pytest.approx(expected, abs=1e-6)
        staged = sorted(
            (f["shot"], f["track"], f["frame_index"], f["score"])
            for f in faces.to_pylist()
            if f["video_id"] == vid
        )
        reference = sorted(
            (f["shot"], f["track"], f["frame_index"], f["score"]) for f in scored.faces
        )
        assert [f[:3] for f in staged] == [f[:3] for f in reference]
        assert [f[3] for f in staged] == pytest.approx([f[3] for f in reference], abs=1e-6)


@pytest.mark.ray
def test_killed_score_actor_loses_no_video(
    csv_run: tuple[EvaluationConfig, list[VideoRow]], tmp_path: Path
) -> None:
    """Kill an ensemble actor's process mid-run: Ray restarts it and retries its batch; every
    video gets exactly one row. The run batches shots of several videos per call, so scores may
    differ from one-shot-per-call scoring by float rounding (amplified by the test members'
    large heads)."""
    import psutil

    config, rows = csv_run
    chosen = [r for r in rows if not r.path.endswith(("coffee.png", "truncated.mp4"))]
    staged = config.model_copy(
        update={
            "out": tmp_path / "killed",
            "detect": StageSettings(batch_size=4),
            "score": StageSettings(batch_size=16),
        }
    )
    outcome: dict[str, Any] = {}
    runner = threading.Thread(
        target=lambda: outcome.update(summary=run_evaluation(staged, rows=chosen))
    )
    runner.start()
    killed = False
    deadline = time.monotonic() + 240
    while runner.is_alive() and not killed and time.monotonic() < deadline:
        time.sleep(2)
        for proc in psutil.process_iter(["cmdline"]):
            if "ScoreStage" in " ".join(proc.info["cmdline"] or []):  # "ray::...(ScoreStage)"
                proc.kill()  # the actor's worker process dies, as on a crash
                killed = True
                break
    runner.join(timeout=600)
    assert killed, "no ScoreStage actor was seen alive"
    summary = outcome["summary"]
    assert (summary.processed, summary.errors) == (len(chosen), 0)
    table = RunFolder(staged.out).predictions()
    assert table is not None
    ids = table.column("video_id").to_pylist()
    assert sorted(ids) == sorted(r.video_id for r in chosen)  # none lost, none twice
    reference = _records(RunFolder(config.out))
    for row in table.to_pylist():
        expected = reference[row["video_id"]]
        assert (row["n_faces"], row["n_shots"]) == (expected["n_faces"], expected["n_shots"])
        assert row["score"] == pytest.approx(expected["score"], abs=1e-2)


@pytest.mark.ray
def test_a_video_failing_in_face_detection_is_one_error_row(
    csv_run: tuple[EvaluationConfig, list[VideoRow]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The face detector fails on one video (on the whole call when shots of several videos share
    it): that video is one error row naming the stage, and every other video is scored as in the
    reference run, none lost and none twice."""
    from tests.support.faults import DetectStageFailingOnWidth

    config, rows = csv_run
    ends = ("liveportrait_d0.mp4", "ffpp_c23_004.mp4", "ffpp_c23_004_982.mp4", "obama_small.jpg")
    chosen = [r for r in rows if r.path.endswith(ends)]
    assert len(chosen) == 4
    monkeypatch.setattr("batch.stream.DetectStage", DetectStageFailingOnWidth)
    staged = config.model_copy(
        update={"out": tmp_path / "failing", "detect": StageSettings(batch_size=8)}
    )
    summary = run_evaluation(staged, rows=chosen)
    assert (summary.processed, summary.errors) == (4, 1)
    records = _records(RunFolder(staged.out))
    assert sorted(records) == sorted(r.video_id for r in chosen)
    failed = next(r for v, r in records.items() if v.endswith("liveportrait_d0.mp4"))
    assert failed["error"].startswith("face detection: RuntimeError: detector failed on purpose")
    assert failed["score"] is None and all(failed[member_column(m)] is None for m in MEMBERS)
    reference = _records(RunFolder(config.out))
    for vid, row in records.items():
        if row is failed:
            continue
        expected = reference[vid]
        assert row["error"] is None
        for column in ("n_faces", "n_faces_detected", "n_tracks", "n_shots", "frames_sampled"):
            assert row[column] == expected[column], (vid, column)
        assert row["score"] == pytest.approx(expected["score"], abs=1e-6)


@pytest.mark.ray
def test_report_numbers_equal_sklearn(csv_run: tuple[EvaluationConfig, list[VideoRow]]) -> None:
    config, _ = csv_run
    metrics = compute_run_metrics(config.out, n_boot=20)
    table = RunFolder(config.out).predictions()
    assert table is not None
    df = table.to_pandas()
    scored = df[df["score"].notna() & df["error"].isna()]
    y, s = scored["label"].to_numpy(), scored["score"].to_numpy()
    overall = metrics.video.get(dataset="csv")
    assert (overall.n_real, overall.n_fake, overall.n_excluded) == (3, 3, 2)
    assert overall.balanced_accuracy == pytest.approx(balanced_accuracy_score(y, s >= 0.5))
    assert overall.auc == pytest.approx(roc_auc_score(y, s))
    # Table 2 row: NeuralTextures fakes against every real video.
    nt = metrics.video.get(dataset="csv", manipulation="NeuralTextures")
    subset = scored[(scored["manipulation"] == "NeuralTextures") | (scored["label"] == 0)]
    assert nt.auc == pytest.approx(roc_auc_score(subset["label"], subset["score"]))
    # Frame level: every face a sample.
    faces = RunFolder(config.out).faces()
    assert faces is not None and metrics.frame is not None
    fdf = faces.to_pandas()
    frame = metrics.frame.get(dataset="csv")
    assert frame.auc == pytest.approx(roc_auc_score(fdf["label"], fdf["score"]))
    assert frame.balanced_accuracy == pytest.approx(
        balanced_accuracy_score(fdf["label"], fdf["score"].to_numpy() >= 0.5)
    )
    assert metrics.n_errors == 1 and metrics.error_kinds == {"corrupt-media": 1}
    assert metrics.threshold is None and "no validation rows" in metrics.threshold_note


@pytest.mark.ray
@pytest.mark.slow  # starts the whole Serve application (11 replicas): 1-2 min on 2 cores
def test_serve_reuse_gives_the_actor_pool_predictions(
    csv_run: tuple[EvaluationConfig, list[VideoRow]], tmp_path: Path
) -> None:
    """``serve_app``: the same rows scored through the deployments of a running Serve
    application give the actor pool's predictions (up to float rounding of batching)."""
    from ray import serve

    from serve.app import APP_NAME, build_app
    from serve.config import (
        DeploymentsConfig,
        ModelDeploymentSettings,
        ReplicaSettings,
        ServiceConfig,
    )

    config, rows = csv_run
    small = ModelDeploymentSettings(num_cpus=0.2)
    service = ServiceConfig(
        home=tmp_path / "home",
        gpus="off",
        device="cpu",
        analysis=config.analysis,
        deployments=DeploymentsConfig(
            ingress=ReplicaSettings(num_cpus=0.05),
            runner=ReplicaSettings(num_cpus=0.05),
            detector=small,
            embedder=small,
            features=small,
            members=small,
        ),
    ).resolved()
    serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
    serve.run(build_app(service), name=APP_NAME, route_prefix="/")
    try:
        chosen = [r for r in rows if not r.path.endswith(("coffee.png", "truncated.mp4"))][:4]
        remote = config.model_copy(update={"out": tmp_path / "served", "serve_app": APP_NAME})
        summary = run_evaluation(remote, rows=chosen)
        assert (summary.processed, summary.errors) == (len(chosen), 0)
    finally:
        serve.delete(APP_NAME)
    # The served run's fingerprint comes from the deployments and names the same models.
    fingerprints = [RunFolder(c.out).info()["fingerprint"] for c in (config, remote)]
    assert fingerprints[1]["serve_app"] == APP_NAME
    assert fingerprints[0]["models_digest"] == fingerprints[1]["models_digest"]
    assert fingerprints[0]["models"] == fingerprints[1]["models"]
    pooled = _records(RunFolder(config.out))
    served = _records(RunFolder(remote.out))
    assert set(served) == {r.video_id for r in chosen}
    for vid, row in served.items():
        assert row["models_digest"] == pooled[vid]["models_digest"]
        assert (row["n_faces"], row["n_shots"]) == (pooled[vid]["n_faces"], pooled[vid]["n_shots"])
        assert row["score"] == pytest.approx(pooled[vid]["score"], abs=1e-6)
        for m in MEMBERS:
            assert row[member_column(m)] == pytest.approx(pooled[vid][member_column(m)], abs=1e-6)

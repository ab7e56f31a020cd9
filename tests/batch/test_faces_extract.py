"""Face extraction for training (``batch.faces``) on real media of ../shared/data: FF++ clips, a
DFDC frame, a face-crop folder and a corrupt video, in-process and once through Ray Data."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from batch.config import StageSettings
from batch.datasets import VideoRow, read_dataset
from batch.faces import ExtractionSummary, FaceExtractionConfig, extract_faces
from batch.faces_extractor import assign_split
from batch.faces_folder import (
    FACE_SCHEMA,
    FACES_FILE,
    FacesFolder,
    decode_crop,
    read_errors,
    read_faces,
)
from pipeline.errors import ConfigError
from tests.support.datasets import face_frames

MAX_FRAMES = 4
#: (file under deepfake/, label, manipulation)
MEDIA = [
    ("ffpp_c23_634.mp4", 0, "original"),
    ("ffpp_c23_634_660.mp4", 1, "FaceSwap"),
    ("dfdc_lynaeydofd_fr0.jpg", 0, "original"),
]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    """CSV (no split column: every row gets the hash split) with two FF++ videos, one image,
    a folder of face crops (a face sequence) and a video of random bytes."""
    base = tmp_path_factory.mktemp("faces-data")
    corrupt = base / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 40_000, np.uint8).tobytes())
    seq = base / "seq"
    seq.mkdir()
    for i, frame in enumerate(
        face_frames(shared_data, "deepfake/dfdc_crop_aapnvogymq-004-01.png", 3)
    ):
        Image.fromarray(frame).save(seq / f"{i}.png")
    lines = ["path,label,manipulation,video_id"]
    for name, label, manipulation in MEDIA:
        m = "" if label == 0 else manipulation
        lines.append(f"{shared_data}/deepfake/{name},{label},{m},v/{name}")
    lines += [f"{seq},fake,wild,v/seq", f"{corrupt},fake,,v/corrupt.mp4"]
    path = base / "manifest.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def config_for(manifest: Path, out: Path, **kw: object) -> FaceExtractionConfig:
    return FaceExtractionConfig.model_validate(
        {"dataset": "csv", "root": manifest, "out": out, "max_frames": MAX_FRAMES, **kw}
    )


@pytest.fixture(scope="module")
def local_run(
    manifest: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[FaceExtractionConfig, ExtractionSummary]:
    config = config_for(manifest, tmp_path_factory.mktemp("faces") / "out")
    return config, extract_faces(config, local=True)


def test_summary_and_error_row(local_run: tuple[FaceExtractionConfig, ExtractionSummary]) -> None:
    config, summary = local_run
    assert (summary.total, summary.skipped, summary.processed) == (5, 0, 5)
    assert (summary.errors, summary.no_face) == (1, 0)
    faces = read_faces(config.out)
    assert summary.faces == len(faces)
    assert set(faces["video_id"]) == {f"v/{n}" for n, _, _ in MEDIA} | {"v/seq"}
    errors = read_errors(config.out)
    assert errors["video_id"].tolist() == ["v/corrupt.mp4"]
    bad = errors.iloc[0]
    assert bad["error_kind"] == "unsupported-media" and bad["stage"] == "probe"
    assert "corrupt.mp4" in bad["error"] and bad["crop_png"] is None
    assert "1 errors" in summary.line() and f"{summary.faces} faces written" in summary.line()


def test_face_rows_match_the_manifest(
    local_run: tuple[FaceExtractionConfig, ExtractionSummary], manifest: Path
) -> None:
    config, _ = local_run
    faces = read_faces(config.out)
    assert list(faces.columns) == FACE_SCHEMA.names
    rows = {r.video_id: r for r in read_dataset("csv", manifest)}
    for row in faces.itertuples():
        assert row.label == rows[row.video_id].label
        assert row.manipulation == rows[row.video_id].manipulation
        assert row.dataset == "csv" and row.status == "face"
        crop = decode_crop(row.crop_png)
        assert crop.dtype == np.uint8 and crop.shape == (row.height, row.width, 3)
    detected = faces[faces["kind"] == "video"]
    for row in detected.itertuples():
        x1, y1, x2, y2 = row.box
        assert row.width == row.height == x2 - x1 == y2 - y1  # square, at most 600 px here
        assert row.detection_confidence >= 0.9
        points = np.asarray(row.landmarks).reshape(5, 2)
        assert ((points > 0) & (points < row.width)).all()  # eyes, nose, mouth inside the crop
        rx1, ry1, rx2, ry2 = row.raw_box
        assert x1 <= (rx1 + rx2) / 2 <= x2 and y1 <= (ry1 + ry2) / 2 <= y2
    per_video = detected.groupby("video_id")["frame_index"]
    for name in ("ffpp_c23_634.mp4", "ffpp_c23_634_660.mp4"):
        frames = per_video.get_group(f"v/{name}").tolist()
        # 4 frames spread over 13.5 s at 25 fps (select_frame_times), one face kept per frame.
        assert frames == [0, 112, 225, 337]
    image = detected[detected["video_id"] == "v/dfdc_lynaeydofd_fr0.jpg"]
    assert image["frame_index"].tolist() == [0] and image["time_s"].tolist() == [0.0]
    seq = faces[faces["video_id"] == "v/seq"]
    assert seq["frame_index"].tolist() == [0, 1, 2]
    assert seq["box"].isna().all() and seq["detection_confidence"].isna().all()
    assert (seq["width"] == 64).all() and seq["time_s"].isna().all()


def test_split_is_per_video_and_stated(
    local_run: tuple[FaceExtractionConfig, ExtractionSummary],
) -> None:
    config, _ = local_run
    rows = FacesFolder(config.out).rows()
    assert rows is not None
    table = rows.to_pandas()
    assert (table.groupby("video_id")["split"].nunique() == 1).all()
    for row in table.itertuples():
        assert (row.split, row.split_source) == assign_split(row.video_id, "unspecified", 0.2)


def test_assign_split() -> None:
    assert assign_split("ffpp/x", "test", 0.2) == ("test", "dataset")
    ids = [f"video/{i}" for i in range(2000)]
    splits = [assign_split(v, "unspecified", 0.2) for v in ids]
    assert splits == [assign_split(v, "unspecified", 0.2) for v in ids]  # deterministic
    assert {s for _, s in splits} == {"hash"}
    share = sum(s == "val" for s, _ in splits) / len(ids)
    assert 0.17 < share < 0.23
    assert all(assign_split(v, "unspecified", 0.0)[0] == "train" for v in ids[:50])
    assert all(assign_split(v, "unspecified", 1.0)[0] == "val" for v in ids[:50])


def test_dataset_split_is_kept(tmp_path: Path, shared_data: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        f"path,label,split\n{shared_data}/deepfake/dfdc_lynaeydofd_fr0.jpg,0,test\n"
    )
    config = config_for(manifest, tmp_path / "out")
    extract_faces(config, local=True)
    faces = read_faces(config.out)
    assert set(zip(faces["split"], faces["split_source"], strict=True)) == {("test", "dataset")}


def test_resume_skips_done_videos_and_retries_errors(
    local_run: tuple[FaceExtractionConfig, ExtractionSummary], tmp_path: Path
) -> None:
    config, first = local_run
    out = tmp_path / "copy"
    shutil.copytree(config.out, out)
    config = config.model_copy(update={"out": out})
    parts = sorted((out / "parts").glob("part-*.parquet"))
    (out / "parts" / "part-leftover.parquet.tmp").write_bytes(b"half a part")
    again = extract_faces(config, local=True)
    assert (again.skipped, again.processed, again.faces) == (5, 0, 0)
    assert sorted((out / "parts").glob("part-*")) == parts  # nothing new, temporary removed
    retry = extract_faces(config.model_copy(update={"retry_errors": True}), local=True)
    assert (retry.skipped, retry.processed, retry.errors) == (4, 1, 1)
    assert len(list((out / "parts").glob("part-*.parquet"))) == len(parts) + 1
    assert len(read_errors(out)) == 1  # the newest part wins
    pd.testing.assert_frame_equal(
        read_faces(out).drop(columns=["finished_at"]),
        read_faces(local_run[0].out).drop(columns=["finished_at"]),
    )
    info = FacesFolder(out).info()
    assert [s["processed"] for s in info["sessions"]] == [first.processed, 0, 1]


@pytest.mark.parametrize(
    "change", [{"dataset": "ffpp"}, {"max_frames": 8}, {"keep": "all"}, {"val_fraction": 0.5}]
)
def test_other_settings_into_the_same_folder_are_refused(
    local_run: tuple[FaceExtractionConfig, ExtractionSummary], change: dict[str, object]
) -> None:
    config, _ = local_run
    before = (config.out / FACES_FILE).read_text()
    other = FaceExtractionConfig.model_validate({**config.model_dump(), **change})
    row = VideoRow("x", str(config.root), 0, "original", "unspecified", "video")
    with pytest.raises(ConfigError, match="other settings"):
        extract_faces(other, rows=[row], local=True)
    assert (config.out / FACES_FILE).read_text() == before


def test_execution_settings_may_change(
    local_run: tuple[FaceExtractionConfig, ExtractionSummary],
) -> None:
    config, _ = local_run
    other = config.model_copy(
        update={"extractors": StageSettings(actors=3), "limit": 2, "flush_rows": 1}
    )
    summary = extract_faces(other, rows=read_dataset("csv", config.root)[:2], local=True)
    assert (summary.skipped, summary.processed) == (2, 0)


def test_empty_folder_reads_empty(tmp_path: Path) -> None:
    faces = read_faces(tmp_path / "nothing")
    assert faces.empty and list(faces.columns) == FACE_SCHEMA.names


@pytest.mark.ray
def test_ray_actor_pool_equals_local(
    ray_local: None,
    local_run: tuple[FaceExtractionConfig, ExtractionSummary],
    tmp_path: Path,
) -> None:
    local, _ = local_run
    rows = [r for r in read_dataset("csv", local.root) if r.video_id != "v/ffpp_c23_634.mp4"]
    config = local.model_copy(
        update={"out": tmp_path / "ray", "extractors": StageSettings(actors=2), "flush_rows": 2}
    )
    summary = extract_faces(config, rows=rows)
    assert (summary.processed, summary.errors) == (4, 1)
    assert len(list((config.out / "parts").glob("part-*.parquet"))) >= 2
    assert read_errors(config.out)["video_id"].tolist() == ["v/corrupt.mp4"]
    ray_faces = read_faces(config.out)
    expected = read_faces(local.out)
    expected = expected[expected["video_id"] != "v/ffpp_c23_634.mp4"].reset_index(drop=True)
    columns = ["video_id", "label", "split", "frame_index", "width", "crop_png"]
    pd.testing.assert_frame_equal(ray_faces[columns], expected[columns])
    np.testing.assert_allclose(
        ray_faces["detection_confidence"].fillna(-1), expected["detection_confidence"].fillna(-1)
    )

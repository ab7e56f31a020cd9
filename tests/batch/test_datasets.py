"""Dataset readers on small copies of each official layout built from ../shared/data."""

from __future__ import annotations

import gzip
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest

from batch.datasets import (
    FFPP_MANIPULATIONS,
    VideoRow,
    iter_face_sequence,
    parse_celebdf_test_list,
    parse_ffpp_splits,
    read_dataset,
    read_wdf,
    summarize,
)
from pipeline.errors import (
    BadInputError,
    ConfigError,
    CorruptMediaError,
    DatasetLayoutError,
    EmptyMediaError,
    MissingFileError,
)
from tests.support.datasets import (
    DFD_FAKE,
    DFD_REAL,
    FFPP_FILES,
    build_celebdf,
    build_dfdc,
    build_ffpp,
    build_wdf,
    face_frames,
    png_bytes,
    shared_dfdc_videos,
    write_tar,
)


def by_id(rows: list[VideoRow]) -> dict[str, VideoRow]:
    return {row.video_id: row for row in rows}


# ----------------------------------------------------------------------------------------------
# FaceForensics++


def test_ffpp_rows_labels_and_official_splits(tmp_path: Path, shared_data: Path) -> None:
    root = build_ffpp(tmp_path / "ffpp", shared_data)
    rows = read_dataset("ffpp", root)
    got = {r.video_id: (r.label, r.manipulation, r.split, r.kind) for r in rows}
    assert got == {
        "ffpp/original/c23/004": (0, "original", "train", "video"),
        "ffpp/original/c23/519": (0, "original", "val", "video"),
        "ffpp/original/c23/634": (0, "original", "test", "video"),
        "ffpp/NeuralTextures/c23/004_982": (1, "NeuralTextures", "train", "video"),
        "ffpp/Deepfakes/c23/519_515": (1, "Deepfakes", "val", "video"),
        # test.json lists the pair as ["660", "634"]: the fake 634_660 still belongs to it.
        "ffpp/FaceSwap/c23/634_660": (1, "FaceSwap", "test", "video"),
    }
    assert [r.video_id for r in rows] == sorted(got)
    # Each path is the official-layout file, resolving to the shared media it was built from.
    for relative, source in FFPP_FILES.items():
        row = next(r for r in rows if r.path == str(root.resolve() / relative))
        assert Path(row.path).resolve() == (shared_data / source).resolve()
    assert read_dataset("ffpp", root) == rows  # stable across runs


def test_ffpp_split_filter_and_split_file_locations(tmp_path: Path, shared_data: Path) -> None:
    root = build_ffpp(tmp_path / "a", shared_data, splits_at="")
    test = read_dataset("ffpp", root, split="test")
    assert {r.video_id for r in test} == {"ffpp/original/c23/634", "ffpp/FaceSwap/c23/634_660"}

    other = build_ffpp(tmp_path / "b", shared_data, splits=None)
    assert {r.split for r in read_dataset("ffpp", other)} == {"unspecified"}
    with pytest.raises(DatasetLayoutError, match=r"no 'test' rows.*unspecified"):
        read_dataset("ffpp", other, split="test")
    explicit = read_dataset("ffpp", other, split="val", splits_dir=root)
    assert {r.video_id for r in explicit} == {"ffpp/original/c23/519", "ffpp/Deepfakes/c23/519_515"}
    with pytest.raises(DatasetLayoutError, match="no FF\\+\\+ split file"):
        read_dataset("ffpp", other, splits_dir=tmp_path)


def test_ffpp_manipulation_selection(tmp_path: Path, shared_data: Path) -> None:
    root = build_ffpp(tmp_path / "ffpp", shared_data)
    rows = read_dataset("ffpp", root, manipulations=["Deepfakes"])
    assert summarize(rows) == {
        ("train", "original", 0): 1,
        ("val", "original", 0): 1,
        ("test", "original", 0): 1,
        ("val", "Deepfakes", 1): 1,
    }
    with pytest.raises(DatasetLayoutError, match=r"\['Face2Face'\] not found.*Face2Face|Face2Face"):
        read_dataset("ffpp", root, manipulations=["Deepfakes", "Face2Face"])
    with pytest.raises(ConfigError, match="unknown FF\\+\\+ manipulation"):
        read_dataset("ffpp", root, manipulations=["Deepfake"])


def test_ffpp_deepfakedetection_names_do_not_crash(tmp_path: Path, shared_data: Path) -> None:
    root = build_ffpp(tmp_path / "ffpp", shared_data, with_dfd=True)
    # The default (the paper's four methods) leaves DFD and its actor originals out.
    assert not any("DeepFakeDetection" in r.video_id for r in read_dataset("ffpp", root))
    rows = by_id(read_dataset("ffpp", root, manipulations=["Deepfakes", "DeepFakeDetection"]))
    fake = rows["ffpp/DeepFakeDetection/c23/" + Path(DFD_FAKE).stem]
    real = rows["ffpp/actors/c23/" + Path(DFD_REAL).stem]
    assert (fake.label, fake.manipulation, fake.split) == (1, "DeepFakeDetection", "unspecified")
    assert (real.label, real.manipulation, real.split) == (0, "original", "unspecified")
    with pytest.raises(DatasetLayoutError, match="Face2Face"):
        read_dataset("ffpp", root, manipulations=FFPP_MANIPULATIONS)


def test_ffpp_wrong_compression_says_what_is_there(tmp_path: Path, shared_data: Path) -> None:
    root = build_ffpp(tmp_path / "ffpp", shared_data)
    with pytest.raises(DatasetLayoutError, match=r"no FF\+\+ c40 videos.*present: \['c23'\]"):
        read_dataset("ffpp", root, compression="c40")
    with pytest.raises(ConfigError, match="compression"):
        read_dataset("ffpp", root, compression="c10")


def test_ffpp_split_files_are_validated(tmp_path: Path) -> None:
    (tmp_path / "train.json").write_text(json.dumps([["001", "002"]]))
    (tmp_path / "test.json").write_text(json.dumps([["002", "003"]]))
    with pytest.raises(DatasetLayoutError, match="002 is in both train and test"):
        parse_ffpp_splits(tmp_path)
    (tmp_path / "test.json").write_text(json.dumps({"002": "003"}))
    with pytest.raises(DatasetLayoutError, match="list of id pairs"):
        parse_ffpp_splits(tmp_path)
    (tmp_path / "test.json").write_text("[[")
    with pytest.raises(DatasetLayoutError, match="not valid JSON"):
        parse_ffpp_splits(tmp_path)
    assert parse_ffpp_splits(tmp_path / "nowhere") == {}


def test_reader_pointed_at_another_layout_names_it(tmp_path: Path, shared_data: Path) -> None:
    celebdf = build_celebdf(tmp_path / "celebdf", shared_data)
    ffpp = build_ffpp(tmp_path / "ffpp", shared_data)
    with pytest.raises(DatasetLayoutError) as caught:
        read_dataset("ffpp", celebdf)
    message = str(caught.value)
    assert "original_sequences/youtube/c23/videos/*.mp4" in message
    assert str(celebdf.resolve()) in message
    assert "read_dataset('celebdf'" in message
    assert caught.value.kind == "dataset-layout"
    assert isinstance(caught.value, BadInputError)
    with pytest.raises(DatasetLayoutError, match=r"read_dataset\('ffpp'"):
        read_dataset("celebdf", ffpp)
    with pytest.raises(DatasetLayoutError, match=r"read_dataset\('ffpp'"):
        read_dataset("wdf", ffpp)
    with pytest.raises(DatasetLayoutError, match=r"read_dataset\('ffpp'"):
        read_dataset("dfdc", ffpp)
    with pytest.raises(MissingFileError, match="does not exist"):
        read_dataset("ffpp", tmp_path / "nope")


# ----------------------------------------------------------------------------------------------
# Celeb-DF-v2


def test_celebdf_test_list_label_is_inverted(tmp_path: Path) -> None:
    listing = tmp_path / "List_of_testing_videos.txt"
    listing.write_text("1 YouTube-real/00170.mp4\n0 Celeb-synthesis/id0_id1_0000.mp4\n\n")
    assert parse_celebdf_test_list(listing) == {
        "YouTube-real/00170.mp4": 0,  # the list's 1 is REAL: our label 0
        "Celeb-synthesis/id0_id1_0000.mp4": 1,
    }
    listing.write_text("1 YouTube-real/00170.mp4\nYouTube-real/00171.mp4\n")
    with pytest.raises(DatasetLayoutError, match=r"List_of_testing_videos.txt:2"):
        parse_celebdf_test_list(listing)


def test_celebdf_rows_and_splits(tmp_path: Path, shared_data: Path) -> None:
    root = build_celebdf(tmp_path / "Celeb-DF-v2", shared_data)
    got = {r.video_id: (r.label, r.manipulation, r.split) for r in read_dataset("celebdf", root)}
    assert got == {
        "celebdf/Celeb-real/id0_0000": (0, "original", "test"),
        "celebdf/Celeb-real/id1_0001": (0, "original", "train"),
        "celebdf/YouTube-real/00170": (0, "original", "test"),
        "celebdf/Celeb-synthesis/id0_id1_0000": (1, "Celeb-synthesis", "test"),
        "celebdf/Celeb-synthesis/id1_id0_0001": (1, "Celeb-synthesis", "train"),
    }
    assert len(read_dataset("celebdf", root, split="test")) == 3

    unlisted = build_celebdf(tmp_path / "no-list", shared_data, test_lines=None)
    assert {r.split for r in read_dataset("celebdf", unlisted)} == {"unspecified"}


def test_celebdf_list_read_with_the_wrong_convention_is_refused(
    tmp_path: Path, shared_data: Path
) -> None:
    # A list written as if 1 meant fake contradicts the folders: refuse rather than mislabel.
    root = build_celebdf(tmp_path / "c", shared_data, test_lines=["0 YouTube-real/00170.mp4"])
    with pytest.raises(DatasetLayoutError, match="1 = real, 0 = fake"):
        read_dataset("celebdf", root)


def test_celebdf_listed_video_missing(
    tmp_path: Path, shared_data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lines = ["1 YouTube-real/00170.mp4", "0 Celeb-synthesis/id9_id8_0042.mp4"]
    root = build_celebdf(tmp_path / "c", shared_data, test_lines=lines)
    with pytest.raises(DatasetLayoutError, match=r"1 file.*id9_id8_0042\.mp4.*on_missing='skip'"):
        read_dataset("celebdf", root)
    with caplog.at_level(logging.WARNING, logger="batch.datasets"):
        rows = read_dataset("celebdf", root, on_missing="skip")
    assert len(rows) == 5
    assert "id9_id8_0042.mp4" in caplog.text


# ----------------------------------------------------------------------------------------------
# WildDeepfake


def test_wdf_rows_per_face_sequence(tmp_path: Path, shared_data: Path) -> None:
    fixture = build_wdf(tmp_path / "deepfake_in_the_wild", shared_data)
    rows = read_dataset("wdf", fixture.root)
    assert {r.video_id for r in rows} == set(fixture.video_ids)
    for row in rows:
        path, sequence = fixture.video_ids[row.video_id]
        assert (row.path, row.sequence, row.kind) == (path, sequence, "face_sequence")
        assert row.label == fixture.labels[row.video_id]
        assert row.manipulation == ("original" if row.label == 0 else "wild")
        assert row.split == row.video_id.split("/")[1].split("_")[1]
    assert {r.video_id for r in read_dataset("wdf", fixture.root, split="train")} == {
        "wdf/fake_train/5",
        "wdf/real_train/7/a",
    }


def test_wdf_rows_per_archive(tmp_path: Path, shared_data: Path) -> None:
    fixture = build_wdf(tmp_path / "wdf", shared_data)
    rows = read_dataset("wdf", fixture.root, unit="archive")
    assert [(r.video_id, r.sequence) for r in rows] == [
        ("wdf/fake_test/3", None),
        ("wdf/fake_train/5", None),
        ("wdf/real_test/0", None),
        ("wdf/real_train/7", None),
    ]
    # A whole archive streams every image, sorted by folder then frame number.
    archive = next(r for r in rows if r.video_id == "wdf/fake_test/3")
    expected = fixture.sequences[(archive.path, "0")] + fixture.sequences[(archive.path, "1")]
    frames = list(iter_face_sequence(archive))
    assert len(frames) == len(expected)
    for got, want in zip(frames, expected, strict=True):
        np.testing.assert_array_equal(got, want)


def test_iter_face_sequence_streams_exact_frames_in_frame_order(
    tmp_path: Path, shared_data: Path
) -> None:
    fixture = build_wdf(tmp_path / "wdf", shared_data)
    rows = read_dataset("wdf", fixture.root)
    assert len(rows) == 6
    for row in rows:
        expected = fixture.sequences[(row.path, row.sequence or "")]
        stream = iter_face_sequence(row)
        first = next(stream)
        assert first.dtype == np.uint8 and first.ndim == 3 and first.shape[2] == 3
        frames = [first, *stream]
        # Members were archived as frames 10, 2, 1; they come out 1, 2, 10 (PNG is lossless).
        assert len(frames) == len(expected) == 3
        for got, want in zip(frames, expected, strict=True):
            np.testing.assert_array_equal(got, want)
    # Paths work as well as rows; a folder path, with a sequence chosen explicitly.
    folder_frames = list(iter_face_sequence(fixture.root / "real_train" / "7", sequence="a"))
    expected = fixture.sequences[(str(fixture.root / "real_train" / "7"), "a")]
    np.testing.assert_array_equal(np.stack(folder_frames), np.stack(expected))


def test_iter_face_sequence_errors(tmp_path: Path, shared_data: Path) -> None:
    fixture = build_wdf(tmp_path / "wdf", shared_data)
    with pytest.raises(MissingFileError):
        iter_face_sequence(tmp_path / "missing.tar.gz")
    with pytest.raises(EmptyMediaError, match="sequence '9'"):
        iter_face_sequence(fixture.root / "fake_test" / "3.tar.gz", sequence="9")
    frame = face_frames(shared_data, "deepfake/dfdc_crop_abarnvbtwb-000-00.png", 1)[0]
    broken = write_tar(
        tmp_path / "broken.tar.gz", [("s/1.png", png_bytes(frame)), ("s/2.png", b"not a png")]
    )
    stream = iter_face_sequence(broken)
    np.testing.assert_array_equal(next(stream), frame)
    with pytest.raises(CorruptMediaError, match=r"s/2\.png"):
        next(stream)


def test_wdf_truncated_archive_is_kept_as_one_row_and_fails_when_read(
    tmp_path: Path, shared_data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fixture = build_wdf(tmp_path / "wdf", shared_data)
    archive = fixture.root / "real_test" / "0.tar.gz"
    data = archive.read_bytes()
    bad = fixture.root / "real_test" / "1.tar.gz"
    bad.write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING, logger="batch.datasets"):
        rows = by_id(read_wdf(fixture.root))
    assert rows["wdf/real_test/1"].sequence is None
    assert "1.tar.gz" in caplog.text
    with pytest.raises(CorruptMediaError, match=r"1\.tar\.gz"):
        iter_face_sequence(rows["wdf/real_test/1"])
    # gzip header intact but not a tar inside
    junk = fixture.root / "real_test" / "2.tar.gz"
    junk.write_bytes(gzip.compress(b"plain text, no tar headers" * 40))
    assert by_id(read_wdf(fixture.root))["wdf/real_test/2"].sequence is None


# ----------------------------------------------------------------------------------------------
# DFDC


def test_dfdc_metadata_and_test_labels(tmp_path: Path, shared_data: Path) -> None:
    root = tmp_path / "dfdc"
    expected = build_dfdc(root, shared_data)
    assert set(shared_dfdc_videos(shared_data).values()) == {"REAL", "FAKE"}
    rows = read_dataset("dfdc", root)
    assert {r.video_id: r.label for r in rows} == {
        vid: int(label == "FAKE") for vid, label in expected.items()
    }
    for row in rows:
        assert row.split == ("test" if row.video_id.startswith("dfdc/test/") else "train")
        assert row.manipulation == ("original" if row.label == 0 else "unspecified")
        assert Path(row.path).is_file()
    assert {r.video_id for r in read_dataset("dfdc", root / "dfdc_train_part_10")} == {
        vid.replace("dfdc/dfdc_train_part_10/", "dfdc/") for vid in expected if "part" in vid
    }


def test_dfdc_bad_metadata(tmp_path: Path, shared_data: Path) -> None:
    root = tmp_path / "dfdc"
    build_dfdc(root, shared_data, with_test=False)
    metadata = root / "dfdc_train_part_10" / "metadata.json"
    entries = json.loads(metadata.read_text())
    entries["absent.mp4"] = {"label": "FAKE", "split": "train"}
    metadata.write_text(json.dumps(entries))
    with pytest.raises(DatasetLayoutError, match=r"absent\.mp4"):
        read_dataset("dfdc", root)
    assert len(read_dataset("dfdc", root, on_missing="skip")) == len(entries) - 1
    entries["absent.mp4"] = {"label": "1"}
    metadata.write_text(json.dumps(entries))
    with pytest.raises(DatasetLayoutError, match="not REAL/FAKE"):
        read_dataset("dfdc", root)


# ----------------------------------------------------------------------------------------------
# CSV manifest and the entry point


def test_csv_manifest(tmp_path: Path, shared_data: Path) -> None:
    fixture = build_wdf(tmp_path / "wdf", shared_data)
    media = tmp_path / "media"
    media.mkdir()
    (media / "a.mp4").symlink_to(shared_data / "deepfake/ffpp_c23_004.mp4")
    (media / "b.jpg").symlink_to(shared_data / "deepfake/dfdc_mqzvfufzoq_fr0.jpg")
    manifest = tmp_path / "lists" / "m.csv"
    manifest.parent.mkdir()
    absolute = shared_data / "deepfake/ffpp_c23_519_515.mp4"
    manifest.write_text(
        "path,label,manipulation,split\n"
        "../media/a.mp4,REAL,,test\n"
        "../media/b.jpg,fake,,\n"
        f"{absolute},1,Deepfakes,validation\n"
        f"{os.path.relpath(fixture.root / 'fake_test/3.tar.gz', manifest.parent)},0,,train\n"
    )
    rows = read_dataset("csv", manifest)
    got = {r.video_id: (r.label, r.manipulation, r.split, r.kind) for r in rows}
    assert got == {
        "csv/../media/a.mp4": (0, "original", "test", "video"),
        "csv/../media/b.jpg": (1, "unspecified", "unspecified", "video"),
        f"csv/{absolute}": (1, "Deepfakes", "val", "video"),
        "csv/../wdf/fake_test/3.tar.gz": (0, "original", "train", "face_sequence"),
    }
    assert by_id(rows)["csv/../media/a.mp4"].path == str(
        tmp_path.resolve() / "lists/../media/a.mp4"
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("file,label\na.mp4,0\n", "header containing 'path,label'"),
        ("path,label,labl\na.mp4,0,x\n", r"unknown column\(s\) \['labl'\]"),
        ("path,label\na.mp4,2\n", r"m.csv:2: label '2'"),
        ("path,label\nnope.mp4,0\n", "nope.mp4"),
        ("path,label\n", "lists no media"),
        ("path,label,video_id\na.mp4,0,x\na.mp4,1,x\n", "not unique"),
    ],
)
def test_csv_manifest_errors(tmp_path: Path, shared_data: Path, content: str, message: str) -> None:
    (tmp_path / "a.mp4").symlink_to(shared_data / "deepfake/ffpp_c23_004.mp4")
    (tmp_path / "m.csv").write_text(content)
    with pytest.raises(DatasetLayoutError, match=message):
        read_dataset("csv", tmp_path / "m.csv")


def test_read_dataset_rejects_bad_names_and_options(tmp_path: Path, shared_data: Path) -> None:
    root = build_ffpp(tmp_path / "ffpp", shared_data)
    with pytest.raises(ConfigError, match="unknown dataset 'ff'"):
        read_dataset("ff", root)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown split 'validation'"):
        read_dataset("ffpp", root, split="validation")
    with pytest.raises(ConfigError, match=r"no option\(s\) \['unit'\]"):
        read_dataset("ffpp", root, unit="archive")


def test_video_row_validates() -> None:
    with pytest.raises(ValueError, match="label"):
        VideoRow("x", "/x", 2, "original", "test", "video")
    with pytest.raises(ValueError, match="split"):
        VideoRow("x", "/x", 0, "original", "validation", "video")
    with pytest.raises(ValueError, match="kind"):
        VideoRow("x", "/x", 0, "original", "test", "image")

"""pipeline.media on the real media of shared/data and on bad files built at test time."""

from __future__ import annotations

import csv
import hashlib
import itertools
import shutil
import struct
import tracemalloc
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from pipeline.errors import (
    BadInputError,
    CorruptMediaError,
    EmptyMediaError,
    MissingFileError,
    TooLargeError,
    UnsupportedMediaError,
)
from pipeline.media import (
    Frame,
    iter_frames,
    load_image,
    probe,
    sample_times,
    sha256_file,
    sniff_format,
)
from tests.conftest import SHARED_DATA


def _manifest_rows() -> list[dict[str, str]]:
    # Read at collection time to name the parameters; tests open the files via shared_data,
    # which fails loudly when the media are missing.
    manifest = SHARED_DATA / "MANIFEST.csv"
    if not manifest.is_file():
        return []
    with manifest.open(newline="") as fh:
        return list(csv.DictReader(fh))


ROWS = _manifest_rows()
IMAGES = [r for r in ROWS if r["kind"] == "image"]
VIDEOS = [r for r in ROWS if r["kind"] in ("video", "animated-gif")]


# --- helpers that build test inputs ----------------------------------------------------------


def _write_video(
    path: Path, fourcc: str, n_frames: int, size: tuple[int, int] = (64, 48), fps: float = 10.0
) -> Path:
    """A small real video: left half red, a white 8x8 marker top-left, a frame counter bar."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*fourcc), fps, size)
    assert writer.isOpened(), f"OpenCV cannot write {fourcc} to {path.suffix}"
    width, height = size
    for i in range(n_frames):
        bgr = np.zeros((height, width, 3), np.uint8)
        bgr[:, : width // 2] = (0, 0, 255)
        bgr[:8, :8] = 255
        bgr[-6:, : min(width, 4 * (i + 1))] = (0, 255, 0)
        writer.write(bgr)
    writer.release()
    return path


def _set_display_matrix(path: Path, degrees: int) -> None:
    """Write a rotation into every track header (tkhd) of an MP4, as phones do.

    The matrices are those FFmpeg writes for ``-metadata:s:v rotate=<degrees>`` (clockwise).
    """
    one, w = 0x10000, 0x40000000
    matrix = {
        90: (0, one, 0, -one, 0, 0, 0, 0, w),
        180: (-one, 0, 0, 0, -one, 0, 0, 0, w),
        270: (0, -one, 0, one, 0, 0, 0, 0, w),
    }[degrees]
    buf = bytearray(path.read_bytes())
    patched = 0

    def walk(start: int, end: int) -> None:
        nonlocal patched
        i = start
        while i + 8 <= end:
            size, kind = struct.unpack_from(">I4s", buf, i)
            if kind in (b"moov", b"trak"):
                walk(i + 8, i + size)
            elif kind == b"tkhd":
                version = buf[i + 8]
                # version/flags, times, track id, reserved, duration, reserved, layer... volume
                offset = i + 8 + 4 + (28 if version == 1 else 20) + 8 + 8
                struct.pack_into(">9i", buf, offset, *matrix)
                patched += 1
            i += size

    walk(0, len(buf))
    assert patched == 1
    path.write_bytes(bytes(buf))


def _png(width: int, height: int, raw_rows: bytes = b"") -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw_rows))
        + chunk(b"IEND", b"")
    )


def _decode_all(path: Path) -> list[tuple[float, np.ndarray]]:
    """Reference decoder: every frame with its timestamp, RGB (small videos only)."""
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    frames = []
    while True:
        ok, bgr = capture.read()
        if not ok:
            break
        frames.append(
            (capture.get(cv2.CAP_PROP_POS_MSEC) / 1000, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        )
    capture.release()
    return frames


# --- real media ----------------------------------------------------------------------------


@pytest.mark.parametrize("row", IMAGES, ids=[r["file"] for r in IMAGES])
def test_probe_real_images(shared_data: Path, row: dict[str, str]) -> None:
    info = probe(shared_data / row["file"])
    assert info.kind == "image"
    assert info.format == Path(row["file"]).suffix.lstrip(".").replace("jpg", "jpeg")
    assert (info.width, info.height) == (int(row["width"]), int(row["height"]))
    assert info.size_bytes == int(row["bytes"])
    assert info.sha256 == row["sha256"]
    assert info.fps is None and info.frame_count is None and info.duration_s is None


@pytest.mark.parametrize("row", IMAGES[:3], ids=[r["file"] for r in IMAGES[:3]])
def test_load_image_is_rgb_and_matches_opencv(shared_data: Path, row: dict[str, str]) -> None:
    path = shared_data / row["file"]
    rgb = load_image(path)
    assert rgb.dtype == np.uint8 and rgb.shape == (int(row["height"]), int(row["width"]), 3)
    assert rgb.flags.c_contiguous
    # An independent decoder (OpenCV's libjpeg) gives the same picture in BGR order; decoders
    # may differ by rounding, not by channel order or orientation.
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert bgr is not None
    reference = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    assert np.abs(rgb.astype(int) - reference.astype(int)).mean() < 2.0


@pytest.mark.parametrize("row", VIDEOS, ids=[r["file"] for r in VIDEOS])
def test_probe_and_sample_real_videos(shared_data: Path, row: dict[str, str]) -> None:
    path = shared_data / row["file"]
    info = probe(path)
    assert info.kind == "video"
    assert (info.width, info.height) == (int(row["width"]), int(row["height"]))
    assert info.fps == pytest.approx(float(row["fps"]), rel=2e-3)
    assert info.frame_count is not None and abs(info.frame_count - int(row["frames"])) <= 1
    assert info.duration_s == pytest.approx(float(row["duration_s"]), abs=0.05)
    assert info.rotation == 0
    assert info.sha256 == row["sha256"] and info.size_bytes == int(row["bytes"])

    assert info.duration_s is not None
    wanted = sample_times(info.duration_s)
    frames = list(iter_frames(path, wanted))
    assert len(frames) == len(wanted)
    half_frame = 0.5 / float(row["fps"])
    for frame, t in zip(frames, wanted, strict=True):
        assert abs(frame.time_s - t) <= half_frame + 0.011  # GIF delays are in 10 ms steps
        assert frame.image.shape == (info.height, info.width, 3)
        assert frame.image.dtype == np.uint8
    indices = [f.index for f in frames]
    assert indices == sorted(set(indices)) and indices[0] == 0


@pytest.mark.parametrize(
    "name",
    [
        "videos/fr_short_hamilton_clip.mp4",  # 29.97 fps: sample times fall between frames
        "videos/intel_head-pose-face-detection-female.gif",  # 80/90 ms delays: variable rate
        "nonface/intel_car-detection.mp4",  # 12.5 fps: 1 s is exactly between two frames
    ],
)
def test_iter_frames_returns_the_nearest_frame(shared_data: Path, name: str) -> None:
    path = shared_data / name
    reference = _decode_all(path)
    times = [t for t, _ in reference]
    last = times[-1]
    wanted = [0.0, 0.013, 0.5, 0.51, 0.52, 1.0, 1.7777, last / 2, last - 0.001, last + 0.001]
    wanted = sorted(set(wanted))
    expected: list[int] = []
    for t in wanted:
        # Nearest frame, ties to the earlier one; a frame wanted twice is given once.
        best = min(range(len(times)), key=lambda i: (abs(times[i] - t), i))
        if not expected or expected[-1] != best:
            expected.append(best)
    got = list(iter_frames(path, wanted))
    assert [f.index for f in got] == expected
    for frame in got:
        assert frame.time_s == pytest.approx(times[frame.index], abs=1e-6)
        assert np.array_equal(frame.image, reference[frame.index][1])


@pytest.mark.parametrize(
    ("name", "times"),
    [
        ("nonface/intel_bottle-detection.mp4", [0.0, 12.3, 25.0, 39.8]),  # keyframes every 8.4 s
        ("deepfake/ffpp_c23_519.mp4", [3.0, 17.5, 29.9]),  # keyframes every 10 s
        ("videos/fr_short_hamilton_clip.mp4", [0.2, 4.0, 4.1, 9.1]),  # 29.97 fps
        ("videos/intel_head-pose-face-detection-female.gif", [0.1, 1.5]),  # variable delays
    ],
)
def test_seeking_gives_the_same_frames_as_decoding_through(
    shared_data: Path, name: str, times: list[float]
) -> None:
    path = shared_data / name
    through = list(iter_frames(path, times, seek_gap_s=None))
    seeking = list(iter_frames(path, times, seek_gap_s=1.0))
    assert len(through) == len(times)
    assert [(f.index, f.time_s) for f in seeking] == [(f.index, f.time_s) for f in through]
    for a, b in zip(seeking, through, strict=True):
        assert np.array_equal(a.image, b.image)


def test_iter_frames_runs_to_the_real_end_with_unbounded_times(shared_data: Path) -> None:
    path = shared_data / "videos/liveportrait_d0.mp4"  # 78 frames at 25 fps = 3.12 s
    frames = list(iter_frames(path, (k * 0.4 for k in itertools.count())))
    # 3.2 s is past the last frame (3.08 s, shown until 3.12 s): the iterator ends there.
    assert [round(f.time_s, 2) for f in frames] == [0.0, 0.4, 0.8, 1.2, 1.6, 2.0, 2.4, 2.8]


def test_iter_frames_gives_each_frame_once_when_sampled_faster_than_fps(
    shared_data: Path,
) -> None:
    path = shared_data / "videos/intel_head-pose-face-detection-female.gif"  # 23 frames
    frames = list(iter_frames(path, [k * 0.01 for k in range(300)]))
    assert [f.index for f in frames] == list(range(23))


def test_iter_frames_memory_does_not_grow_with_video_length(shared_data: Path) -> None:
    path = shared_data / "videos/facenet_video.mp4"  # 105 frames of 1920x1080
    frame_bytes = 1920 * 1080 * 3
    tracemalloc.start()
    try:
        count = 0
        for frame in iter_frames(path, [k / 25 for k in range(105)]):
            assert isinstance(frame, Frame)
            count += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 105
    # The consumer keeps nothing; the iterator holds at most the current and the held frame
    # (plus conversion temporaries), never the 105 frames (650 MB).
    assert peak < 5 * frame_bytes


def test_sha256_file_streams(tmp_path: Path) -> None:
    data = bytes(range(256)) * 20_000  # 5 MB: several chunks
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


# --- containers and images made here ---------------------------------------------------------


@pytest.mark.parametrize(
    ("fourcc", "suffix", "fmt"),
    [
        ("mp4v", ".mp4", "mp4"),
        ("MJPG", ".avi", "avi"),
        ("FFV1", ".mkv", "matroska"),
        ("VP80", ".webm", "webm"),
        ("MJPG", ".mov", "mov"),
    ],
)
def test_probe_video_containers(tmp_path: Path, fourcc: str, suffix: str, fmt: str) -> None:
    path = _write_video(tmp_path / f"clip{suffix}", fourcc, n_frames=12, fps=12.0)
    renamed = path.rename(tmp_path / "no_extension")  # the type comes from the bytes
    info = probe(renamed)
    assert (info.kind, info.format) == ("video", fmt)
    assert (info.width, info.height, info.frame_count) == (64, 48, 12)
    assert info.fps == pytest.approx(12.0)
    assert info.duration_s == pytest.approx(1.0)
    assert info.duration_s is not None
    assert len(list(iter_frames(renamed, sample_times(info.duration_s, 4.0)))) == 4


def test_one_frame_video(tmp_path: Path) -> None:
    path = _write_video(tmp_path / "one.mp4", "mp4v", n_frames=1, fps=25.0)
    info = probe(path)
    assert info.kind == "video" and info.frame_count == 1
    assert info.duration_s == pytest.approx(1 / 25)
    assert info.duration_s is not None
    frames = list(iter_frames(path, sample_times(info.duration_s)))
    assert [(f.index, f.time_s) for f in frames] == [(0, 0.0)]
    assert frames[0].image.shape == (48, 64, 3)


def test_container_that_lies_about_its_length(tmp_path: Path) -> None:
    path = _write_video(tmp_path / "lie.avi", "MJPG", n_frames=10, fps=10.0)
    data = bytearray(path.read_bytes())
    # AVI keeps the frame count in the main header (avih) and in the stream header (strh).
    struct.pack_into("<I", data, data.find(b"avih") + 8 + 16, 100)
    struct.pack_into("<I", data, data.find(b"strh") + 8 + 32, 100)
    path.write_bytes(bytes(data))
    info = probe(path)
    assert info.frame_count == 100 and info.duration_s == pytest.approx(10.0)  # the header's word
    assert info.duration_s is not None
    frames = list(iter_frames(path, sample_times(info.duration_s, 10.0)))
    assert [f.index for f in frames] == list(range(10))  # the real frames, then a clean stop
    # A seek aimed past the real end stops too (and does not rewind and loop).
    frames = list(iter_frames(path, [0.0, 0.35, 5.0, 9.0], seek_gap_s=1.0))
    assert [f.index for f in frames] == [0, 3]


@pytest.mark.parametrize("degrees", [90, 180, 270])
def test_rotation_metadata_is_applied_once(tmp_path: Path, degrees: int) -> None:
    upright = _write_video(tmp_path / "upright.mp4", "mp4v", n_frames=3)
    rotated = tmp_path / f"rot{degrees}.mp4"
    shutil.copy(upright, rotated)
    _set_display_matrix(rotated, degrees)

    info = probe(rotated)
    assert info.rotation == degrees
    assert (info.width, info.height) == ((48, 64) if degrees in (90, 270) else (64, 48))
    stored = next(iter_frames(upright, [0.0])).image
    shown = next(iter_frames(rotated, [0.0])).image
    # np.rot90 turns counter-clockwise for positive k; display rotation is clockwise.
    assert np.array_equal(shown, np.rot90(stored, k=-degrees // 90))
    if degrees == 90:  # the white marker of the top-left corner is now top-right
        assert shown[:8, -8:].min() > 200


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20] = (255, 0, 0)
    stored[:6, :6] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "phone.jpg"
    Image.fromarray(stored).save(path, quality=95, exif=exif)

    info = probe(path)
    assert (info.kind, info.format, info.rotation) == ("image", "jpeg", 90)
    assert (info.width, info.height) == (20, 40)
    shown = load_image(path)
    with Image.open(path) as pil:
        decoded = np.asarray(pil.convert("RGB"))  # same decoder, orientation not applied
    assert np.array_equal(shown, np.rot90(decoded, k=-1))


@pytest.mark.parametrize(
    ("suffix", "fmt", "mode"),
    [
        (".bmp", "bmp", "RGB"),
        (".webp", "webp", "RGB"),
        (".gif", "gif", "P"),
        (".png", "png", "I;16"),
    ],
)
def test_image_formats(tmp_path: Path, suffix: str, fmt: str, mode: str) -> None:
    rgb = np.zeros((30, 50, 3), np.uint8)
    rgb[:, 25:] = (0, 0, 255)
    pil = Image.fromarray(rgb)
    if mode == "P":
        pil = pil.convert("P")
    elif mode == "I;16":
        pil = Image.fromarray(np.full((30, 50), 65535, np.uint16))
    path = tmp_path / f"img{suffix}"
    pil.save(path, lossless=True) if fmt == "webp" else pil.save(path)

    info = probe(path)
    assert (info.kind, info.format, info.width, info.height) == ("image", fmt, 50, 30)
    image = load_image(path)
    assert image.shape == (30, 50, 3) and image.dtype == np.uint8
    if mode == "I;16":
        assert image.min() == 255  # 16-bit white stays white, not clipped to garbage
    else:
        assert tuple(image[0, 40]) == (0, 0, 255)


def test_one_pixel_image_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "dot.png"
    path.write_bytes(_png(1, 1, b"\x00\x10\x20\x30"))
    info = probe(path)
    assert (info.kind, info.width, info.height) == ("image", 1, 1)
    assert load_image(path).tolist() == [[[16, 32, 48]]]


def test_sniff_format_magic_numbers() -> None:
    ts = bytes([0x47] + [0] * 187) * 3
    assert sniff_format(ts) == "mpegts"
    assert sniff_format(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00") == "heif"
    assert sniff_format(b"\x00\x00\x00\x18ftyp3gp4\x00\x00\x00\x00") == "3gp"
    assert sniff_format(b"\x00\x00\x00\x18ftypqt  \x00\x00\x00\x00") == "mov"
    assert sniff_format(b"\x00\x00\x00\x18ftypisom\x00\x00\x00\x00") == "mp4"
    assert sniff_format(b"FLV\x01\x05") == "flv"
    assert sniff_format(b"BM this is not a bitmap header") is None
    assert sniff_format(b"<html><body>hi</body></html>") is None
    assert sniff_format(b"") is None


# --- bad input -------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MissingFileError, match="not found"):
        probe(tmp_path / "nope.mp4")
    with pytest.raises(MissingFileError, match="not a regular file"):
        probe(tmp_path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.mp4"
    path.touch()
    with pytest.raises(EmptyMediaError, match="0 bytes"):
        probe(path)


@pytest.mark.parametrize(
    "content",
    [b"this is just text, renamed to .mp4\n" * 20, bytes(range(256)) * 4, b"\x00" * 1000],
    ids=["text", "noise", "zeros"],
)
def test_unknown_bytes_are_unsupported(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "video.mp4"
    path.write_bytes(content)
    with pytest.raises(UnsupportedMediaError, match="not a supported image"):
        probe(path)
    with pytest.raises(UnsupportedMediaError):
        next(iter_frames(path, [0.0]))


def test_heic_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "photo.jpg"
    path.write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 100)
    with pytest.raises(UnsupportedMediaError, match="HEIF"):
        probe(path)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "name",
    [
        "videos/facenet_video.mp4",  # index (moov) at the end: cut off, nothing to open
        "nonface/intel_car-detection.mp4",  # index first: would open and decode a few frames
    ],
)
def test_truncated_mp4_is_corrupt(shared_data: Path, tmp_path: Path, name: str) -> None:
    data = (shared_data / name).read_bytes()
    path = tmp_path / "cut.mp4"
    path.write_bytes(data[: int(len(data) * 0.3)])
    with pytest.raises(CorruptMediaError):
        probe(path)
    with pytest.raises(CorruptMediaError):
        next(iter_frames(path, [0.0]))


_MAGIC_HEADS = {
    "mp4": b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2",
    "mov": b"\x00\x00\x00\x08wide",
    "matroska": b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01",
    "webm": b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01webm",
    "avi": b"RIFF\x00\x10\x00\x00AVI LIST",
    "mpegts": bytes([0x47, 0x40, 0x00, 0x10] + [0xFF] * 184) * 4,
    "mpegps": b"\x00\x00\x01\xba",
    "flv": b"FLV\x01\x05\x00\x00\x00\x09",
    "asf": bytes.fromhex("3026b2758e66cf11a6d900aa0062ce6c"),
    "ogg": b"OggS",
    "jpeg": b"\xff\xd8\xff\xe0",
    "png": b"\x89PNG\r\n\x1a\n",
    "gif": b"GIF89a\x10\x00\x10\x00",
    "webp": b"RIFF\x00\x10\x00\x00WEBPVP8 ",
    "bmp": b"BM\x00\x10\x00\x00\x00\x00\x00\x00\x36\x00\x00\x00\x28\x00\x00\x00",
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fmt", sorted(_MAGIC_HEADS))
def test_right_magic_then_garbage_is_a_typed_error(tmp_path: Path, fmt: str) -> None:
    head = _MAGIC_HEADS[fmt]
    assert sniff_format(head) == fmt
    for seed in range(3):
        noise = np.random.default_rng(seed).integers(0, 256, 65_536, dtype=np.uint8).tobytes()
        path = tmp_path / f"noise{seed}"
        path.write_bytes(head + noise)
        with pytest.raises(BadInputError):  # never a crash, a hang or an untyped exception
            probe(path)


def test_truncated_jpeg_is_corrupt(shared_data: Path, tmp_path: Path) -> None:
    data = (shared_data / "faces/fr_obama.jpg").read_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptMediaError, match=r"truncated|corrupt"):
        probe(path)


def test_image_over_pixel_limit(shared_data: Path) -> None:
    path = shared_data / "faces/fr_obama.jpg"  # 910x1137
    with pytest.raises(TooLargeError, match="910x1137"):
        probe(path, max_pixels=1_000_000)
    with pytest.raises(TooLargeError):
        load_image(path, max_pixels=1_000_000)
    assert load_image(path, max_pixels=910 * 1137).shape == (1137, 910, 3)


def test_decompression_bomb_is_refused_from_the_header(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(_png(30_000, 30_000))  # claims 900 Mpx, carries no pixel data at all
    with pytest.raises(TooLargeError, match="30000x30000"):
        probe(path)


def test_video_over_pixel_limit(shared_data: Path) -> None:
    path = shared_data / "videos/facenet_video.mp4"
    with pytest.raises(TooLargeError, match="1920x1080"):
        probe(path, max_pixels=1920 * 1080 - 1)


def test_zero_pixel_image(tmp_path: Path) -> None:
    path = tmp_path / "nothing.png"
    path.write_bytes(_png(0, 0))
    with pytest.raises(EmptyMediaError, match="0x0") as caught:
        probe(path)
    assert isinstance(caught.value, BadInputError)


def test_load_image_refuses_a_video_and_iter_frames_a_still_image(shared_data: Path) -> None:
    with pytest.raises(UnsupportedMediaError, match="video"):
        load_image(shared_data / "videos/liveportrait_d0.mp4")
    with pytest.raises(UnsupportedMediaError, match="still"):
        next(iter_frames(shared_data / "faces/fr_obama.jpg", [0.0]))


def test_still_gif_is_an_image(tmp_path: Path) -> None:
    path = tmp_path / "still.gif"
    Image.new("RGB", (10, 7), (200, 10, 10)).save(path)
    info = probe(path)
    assert (info.kind, info.format, info.width, info.height) == ("image", "gif", 10, 7)


def test_bad_frame_times(shared_data: Path) -> None:
    path = shared_data / "videos/liveportrait_d0.mp4"
    with pytest.raises(ValueError, match="ascending"):
        list(iter_frames(path, [1.0, 0.5]))
    with pytest.raises(ValueError, match=">= 0"):
        list(iter_frames(path, [-1.0]))


def test_sample_times() -> None:
    assert sample_times(4.2) == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert sample_times(4.0) == [0.0, 1.0, 2.0, 3.0]
    assert sample_times(1 / 25) == [0.0]
    assert sample_times(0.0) == [0.0]
    assert sample_times(1.0, rate_hz=4.0) == [0.0, 0.25, 0.5, 0.75]
    assert len(sample_times(3600.0, rate_hz=30.0)) == 108_000
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            sample_times(bad)
    with pytest.raises(ValueError):
        sample_times(1.0, rate_hz=0.0)

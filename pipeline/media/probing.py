"""Probing: what a file is (kind, format, size, frame rate, duration, rotation) and that it
decodes, before an analysis starts.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2

from pipeline.errors import CorruptMediaError
from pipeline.media.formats import DEFAULT_MAX_PIXELS, IMAGE_FORMATS, gif_frame_count, identify
from pipeline.media.images import decode_image
from pipeline.media.videos import header_fps, open_capture

log = logging.getLogger(__name__)

MediaKind = Literal["image", "video"]

_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class MediaInfo:
    """What a media file is. Sizes are display sizes (after EXIF / container rotation).

    ``frame_count`` is *estimated* from the container header (the stored sample count where the
    container has one, else FFmpeg's duration x fps); it is not measured by decoding every frame,
    which would cost as much as analysing the video. ``duration_s`` is ``frame_count / fps``.
    Both are ``None`` for images and for videos whose header gives no usable value. Code that
    must not trust them (sampling) relies on decoded timestamps instead: see
    :func:`~pipeline.media.videos.iter_frames`.
    """

    path: Path
    kind: MediaKind
    format: str  # e.g. "jpeg", "png", "gif", "mp4", "mov", "webm", "matroska", "avi"
    width: int  # pixels, display orientation
    height: int  # pixels, display orientation
    fps: float | None  # frames per second from the container header
    frame_count: int | None  # estimated from the header, see class docstring
    duration_s: float | None  # seconds
    rotation: int  # clockwise degrees applied to stored pixels for display: 0, 90, 180 or 270
    size_bytes: int
    sha256: str  # hex digest of the whole file


def probe(path: Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> MediaInfo:
    """Identify ``path`` from its bytes and check that it decodes.

    Images are decoded whole (cheap next to face detection) so a corrupt image fails here, not
    halfway through an analysis. Videos are checked by decoding their first frame only.

    Raises:
        MissingFileError: no such file.
        EmptyMediaError: the file has 0 bytes, or the image has no pixels.
        UnsupportedMediaError: the bytes are not a supported image or video container.
        CorruptMediaError: the container is recognised but truncated or undecodable.
        TooLargeError: more than ``max_pixels`` pixels per image or frame (checked from the
            header, before decoding).
    """
    path = Path(path)
    size_bytes, fmt = identify(path)
    if fmt == "gif" and gif_frame_count(path) > 1:
        try:
            info = _probe_video(path, fmt, size_bytes, max_pixels)
        except CorruptMediaError as exc:
            # Pillow can still show the first frame of a GIF FFmpeg rejects; that is useful.
            log.warning("animated GIF %s is not decodable as video (%s); using frame 1", path, exc)
        else:
            return info
    if fmt in IMAGE_FORMATS:
        return _probe_image(path, fmt, size_bytes, max_pixels)
    return _probe_video(path, fmt, size_bytes, max_pixels)


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks (never whole into memory)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _probe_image(path: Path, fmt: str, size_bytes: int, max_pixels: int) -> MediaInfo:
    image, rotation = decode_image(path, fmt, max_pixels)
    return MediaInfo(
        path=path,
        kind="image",
        format=fmt,
        width=int(image.shape[1]),
        height=int(image.shape[0]),
        fps=None,
        frame_count=None,
        duration_s=None,
        rotation=rotation,
        size_bytes=size_bytes,
        sha256=sha256_file(path),
    )


def _probe_video(path: Path, fmt: str, size_bytes: int, max_pixels: int) -> MediaInfo:
    capture = open_capture(path, fmt, max_pixels)
    try:
        if not capture.grab():
            raise CorruptMediaError(f"{path.name}: no video frame could be decoded")
        ok, bgr = capture.retrieve()
        if not ok or bgr is None or bgr.size == 0:
            raise CorruptMediaError(f"{path.name}: the first video frame could not be decoded")
        height, width = (int(v) for v in bgr.shape[:2])
        fps = header_fps(capture)
        raw_count = capture.get(cv2.CAP_PROP_FRAME_COUNT)
        frame_count = round(raw_count) if math.isfinite(raw_count) and raw_count > 0 else None
        rotation = _normalise_rotation(capture.get(cv2.CAP_PROP_ORIENTATION_META))
    finally:
        capture.release()
    duration_s = frame_count / fps if frame_count is not None and fps is not None else None
    return MediaInfo(
        path=path,
        kind="video",
        format=fmt,
        width=width,
        height=height,
        fps=fps,
        frame_count=frame_count,
        duration_s=duration_s,
        rotation=rotation,
        size_bytes=size_bytes,
        sha256=sha256_file(path),
    )


def _normalise_rotation(degrees: float) -> int:
    """Container rotation to one of 0, 90, 180, 270 (clockwise)."""
    if not math.isfinite(degrees):
        return 0
    return (round(degrees / 90.0) * 90) % 360

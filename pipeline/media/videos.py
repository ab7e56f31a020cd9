"""Videos: frames sampled lazily at requested times, decoded by OpenCV's FFmpeg backend.

The decoding choices (decode front to back, seek only across long gaps, decoder timestamps,
container rotation) and their measurements are in :mod:`pipeline.media`.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from pipeline.errors import CorruptMediaError, UnsupportedMediaError
from pipeline.media.formats import (
    DEFAULT_MAX_PIXELS,
    IMAGE_FORMATS,
    check_pixels,
    gif_frame_count,
    identify,
)

_ISOBMFF = frozenset({"mp4", "mov", "3gp"})
# A decoder fps outside this range is garbage from a broken header, not a frame rate.
_MAX_PLAUSIBLE_FPS = 1000.0
#: Seek rather than decode through gaps longer than this (seconds). Typical keyframe intervals
#: are 2-10 s (x264's default is 250 frames), so a seek here never decodes more than the gap.
#: At 1 frame per second no gap qualifies and every frame is decoded once, which measured faster
#: than seeking (see :mod:`pipeline.media`); for sparse samples seeking measured 4-6x faster
#: (e.g. 2 frames 25 s apart in a 30 s 640x480 clip: 0.13 s instead of 0.60 s).
DEFAULT_SEEK_GAP_S = 10.0
# Land this far before a requested time, so that the frame nearest to it is still ahead.
_SEEK_MARGIN_S = 0.5
# Frame interval assumed before two frames have been seen when the header has no usable fps.
_FALLBACK_FRAME_INTERVAL_S = 1 / 25


@dataclass(frozen=True, eq=False)
class Frame:
    """One decoded video frame.

    ``index`` counts decoded frames from 0 in presentation order; ``time_s`` is the frame's own
    presentation time in seconds from the start of the stream (from the decoder, not index / fps);
    ``image`` is ``(H, W, 3) uint8`` RGB in display orientation.
    """

    index: int
    time_s: float
    image: np.ndarray = field(repr=False)


def sample_times(duration_s: float, rate_hz: float = 1.0) -> list[float]:
    """Times ``0, 1/rate, 2/rate, ...`` (seconds) strictly before ``duration_s``.

    A duration of 0 (or shorter than one sampling period) gives ``[0.0]``: every video has a first
    frame. At the paper's 1 Hz a 4.2 s video gives ``[0, 1, 2, 3, 4]``.
    """
    if not math.isfinite(duration_s) or duration_s < 0:
        raise ValueError(f"duration_s must be a finite number >= 0, got {duration_s!r}")
    if not math.isfinite(rate_hz) or rate_hz <= 0:
        raise ValueError(f"rate_hz must be a finite number > 0, got {rate_hz!r}")
    count = max(1, math.ceil(duration_s * rate_hz - 1e-9))
    # k / rate, not accumulated sums, so that long videos do not drift by float error.
    return [round(k / rate_hz, 9) for k in range(count)]


def iter_frames(
    path: Path,
    times_s: Iterable[float],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    seek_gap_s: float | None = DEFAULT_SEEK_GAP_S,
) -> Iterator[Frame]:
    """Yield, for each requested time, the decoded frame nearest to it, in ascending order.

    ``times_s`` are seconds from the start, ascending, >= 0; any iterable works, including an
    unbounded one (``k / rate for k in itertools.count()``) that simply runs to the real end of
    the stream, whatever the header claims. A frame nearest to several requested times is
    yielded once, so asking for more times than there are frames yields every frame. Times past
    the last frame's display interval yield nothing: iteration stops cleanly at the real end.

    Frames are decoded front to back; when the next requested time is more than ``seek_gap_s``
    seconds ahead, the decoder seeks instead (to a keyframe shortly before it), which skips the
    decoding of everything in between. ``None`` never seeks. ``Frame.index`` counts decoded
    frames exactly while decoding front to back; after a seek it is OpenCV's frame number for
    the landing point, exact at a constant frame rate.

    Only one or two decoded frames are held at a time, whatever the video's length. The file is
    opened at the first ``next()``, so errors (see :func:`probe`) are raised from there.
    """
    if seek_gap_s is not None and not seek_gap_s > 0:
        raise ValueError(f"seek_gap_s must be > 0 or None, got {seek_gap_s!r}")
    path = Path(path)
    _, fmt = identify(path)
    if fmt in IMAGE_FORMATS and not (fmt == "gif" and gif_frame_count(path) > 1):
        raise UnsupportedMediaError(f"{path.name} is a still {fmt} image, not a video")
    capture = open_capture(path, fmt, max_pixels)
    try:
        yield from _nearest_frames(capture, _ascending(times_s), seek_gap_s)
    finally:
        capture.release()


def open_capture(path: Path, fmt: str, max_pixels: int) -> cv2.VideoCapture:
    """An opened FFmpeg capture with auto-rotation on; checks truncation and frame size first."""
    if fmt in _ISOBMFF:
        _check_isobmff_complete(path, path.stat().st_size)
    # An absolute path: FFmpeg reads "name:rest" as a protocol, and a path starting with "/" is
    # always a plain file.
    capture = cv2.VideoCapture(str(path.resolve()), cv2.CAP_FFMPEG)
    if not capture.isOpened():
        capture.release()
        raise CorruptMediaError(
            f"{path.name} looks like {fmt.upper()} but cannot be opened (corrupt, truncated, "
            "audio only or an unsupported codec)"
        )
    try:
        # Explicit, because OpenCV's default has changed between releases: frames come out in
        # display orientation and CAP_PROP_FRAME_WIDTH/HEIGHT report display size.
        capture.set(cv2.CAP_PROP_ORIENTATION_AUTO, 1)
        width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        check_pixels(path, width, height, max_pixels)
    except BaseException:
        capture.release()
        raise
    return capture


def _check_isobmff_complete(path: Path, size_bytes: int) -> None:
    """Refuse an MP4/MOV whose top-level boxes run past the end of the file.

    A file cut short (an interrupted download) whose index (``moov``) comes first still opens and
    decodes its first frames; without this check it would be analysed as a shorter video.
    """
    offset = 0
    with path.open("rb") as fh:
        for _ in range(100_000):  # bound the walk; real files have a handful of top-level boxes
            if offset >= size_bytes:
                return
            fh.seek(offset)
            header = fh.read(16)
            if len(header) < 8:
                break
            box_size, box_type = struct.unpack(">I4s", header[:8])
            if box_size == 1:
                if len(header) < 16:
                    break
                box_size = struct.unpack(">Q", header[8:16])[0]
            elif box_size == 0:  # "extends to end of file"
                return
            if box_size < 8 or offset + box_size > size_bytes:
                printable = box_type.isascii() and box_type.decode("ascii").isprintable()
                name = box_type.decode("ascii") if printable else box_type.hex()
                raise CorruptMediaError(
                    f"{path.name} is truncated: its '{name}' box needs {offset + box_size} bytes "
                    f"but the file has {size_bytes}; download it again"
                )
            offset += box_size
    raise CorruptMediaError(f"{path.name} has a malformed MP4/MOV box structure")


def header_fps(capture: cv2.VideoCapture) -> float | None:
    fps = float(capture.get(cv2.CAP_PROP_FPS))
    return fps if math.isfinite(fps) and 0 < fps <= _MAX_PLAUSIBLE_FPS else None


def _ascending(times_s: Iterable[float]) -> Iterator[float]:
    previous = 0.0
    for t in times_s:
        value = float(t)
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"requested frame times must be finite and >= 0, got {t!r}")
        if value < previous:
            raise ValueError(
                f"requested frame times must be ascending, got {value} after {previous}"
            )
        previous = value
        yield value


def _nearest_frames(
    capture: cv2.VideoCapture, targets: Iterator[float], seek_gap_s: float | None
) -> Iterator[Frame]:
    """Decode front to back; retrieve only frames that may be nearest to the next target.

    A frame is the nearest to a target exactly when the target lies between the midpoints to its
    neighbours, and the next neighbour's time is known only after grabbing it, when the frame
    itself can no longer be retrieved. So a frame is retrieved ("held") when the target lies
    before the *estimated* next frame (this time + last interval), and the choice between held
    and current frame is made with both real timestamps. Exact for constant frame rates and for
    variable ones whose interval changes by less than half from one frame to the next.
    """
    target = next(targets, None)
    fps = header_fps(capture)
    interval = 1.0 / fps if fps is not None else _FALLBACK_FRAME_INTERVAL_S
    held: Frame | None = None
    previous_time: float | None = None
    index = -1
    while target is not None:
        position = previous_time if previous_time is not None else 0.0
        if held is None and seek_gap_s is not None and target - position > seek_gap_s:
            try:
                landed = _seek_before(capture, target, interval)
            except _NotSeekable:
                seek_gap_s = None  # decode front to back from here on
                continue
            if landed is None:
                break  # the stream ends before the next requested time
            index, time_s, first_try = landed
            previous_time = None  # no interval across the jump
            if not first_try:
                # This file's timestamps and OpenCV's fps arithmetic disagree: seeking again
                # could land behind the current position forever. Decode front to back.
                seek_gap_s = None
        else:
            if not capture.grab():
                break  # the real end of the stream, whatever the header promised
            index += 1
            time_s = float(capture.get(cv2.CAP_PROP_POS_MSEC)) / 1000.0
        if previous_time is not None:
            if not math.isfinite(time_s) or time_s <= previous_time:
                # Missing or repeated timestamps (broken muxers): fall back to the last interval.
                time_s = previous_time + interval
            else:
                interval = time_s - previous_time
        previous_time = time_s
        if held is not None:
            matched = False
            while target is not None and target - held.time_s <= time_s - target:
                matched = True  # ties go to the earlier frame
                target = next(targets, None)
            if matched:
                yield held
            held = None
            if target is None:
                break
        if target < time_s + interval - 1e-6:
            held = Frame(index=index, time_s=time_s, image=_retrieve_rgb(capture, index))
    if held is not None and target is not None:
        # The stream ended; the last frame is shown until time + interval, so it is the nearest.
        yield held


def _seek_before(
    capture: cv2.VideoCapture, target: float, interval: float
) -> tuple[int, float, bool] | None:
    """Seek so that the next frame is at or before ``target``, and grab it.

    Returns (index, time, first try) of the grabbed frame, or None if the stream ends before
    ``target`` (less the seek margin, which is at least two frame intervals, so no remaining
    frame can be the nearest to it). OpenCV converts the time to a frame number with the
    header's fps and decodes forward from the keyframe before it; if it lands *after* the
    target (a lying fps, a variable rate), this tries again from further back, down to the start.

    Raises:
        _NotSeekable: the backend refused to seek.
    """
    margin = max(_SEEK_MARGIN_S, 2 * interval)
    first_try = True
    while True:
        start = max(0.0, target - margin)
        if not capture.set(cv2.CAP_PROP_POS_MSEC, start * 1000.0):
            raise _NotSeekable
        if not capture.grab():
            return None
        time_s = float(capture.get(cv2.CAP_PROP_POS_MSEC)) / 1000.0
        # At the very start the first frame is the nearest whatever its time.
        if math.isfinite(time_s) and (time_s <= target or start == 0.0):
            return round(capture.get(cv2.CAP_PROP_POS_FRAMES)) - 1, time_s, first_try
        margin *= 4
        first_try = False


class _NotSeekable(Exception):
    pass


def _retrieve_rgb(capture: cv2.VideoCapture, index: int) -> np.ndarray:
    ok, bgr = capture.retrieve()
    if not ok or bgr is None or bgr.size == 0:
        raise CorruptMediaError(f"video frame {index} was read but could not be decoded")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

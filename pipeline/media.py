"""What a downloaded file is, and its pixels: probing, image loading, lazy video sampling.

Paper section 3.1, "Media Type": an image goes straight to face detection and inference, a video
goes through every stage. The type is decided from the file's *bytes* (magic numbers), never from
its name, because names of downloaded files come from URLs and lie.

Only containers recognised here are ever handed to a decoder. That is a safety rule as much as a
convenience: FFmpeg (under OpenCV) also opens text playlists (HLS, concat lists) that make it fetch
other URLs, so "let FFmpeg guess" would reopen the SSRF hole that ``pipeline.download`` closes.

Decoding choices, measured on ``shared/data`` (2-core laptop CPU, OpenCV 5.0 with its FFmpeg):

* Videos are decoded front to back, with ``grab()`` for every frame and ``retrieve()`` (the
  YUV -> BGR conversion, ~2.4 ms at 1080p) only for frames that may be wanted. Seeking does not pay
  at the paper's 1 frame per second: the keyframe interval of every sample video is 2-10 s, so any
  seek still decodes from the previous keyframe, and OpenCV's seek re-decodes even more (10 seeks
  in a 10 s 1080p clip took 4.9 s against 1.5 s for decoding it all). Across gaps longer than a
  typical keyframe interval (``DEFAULT_SEEK_GAP_S``) it does pay, 3-6x on sparse samples of the
  sample videos, with identical frames. PyAV was no faster at full decoding (1.26 s vs 0.91 s on
  the same clip), so it is not a dependency.
* Frame times come from the decoder (``CAP_PROP_POS_MSEC``, the frame's presentation time), not
  from ``index / fps``, because containers lie about fps and frame counts and GIFs have per-frame
  delays.
* Rotation: OpenCV's FFmpeg backend reads the container's display matrix
  (``CAP_PROP_ORIENTATION_META``) and, with ``CAP_PROP_ORIENTATION_AUTO`` on, returns frames already
  rotated and reports the rotated width and height. We switch it on explicitly (defaults have
  changed between OpenCV releases) and never rotate again ourselves.
* Animated GIFs (more than one frame) are videos, decoded by FFmpeg with their real frame delays;
  a still GIF is an image. Animated WebP and APNG are images (their first frame): FFmpeg cannot
  decode animated WebP, and both are rare for the footage this service checks.
"""

from __future__ import annotations

import hashlib
import logging
import math
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.errors import (
    CorruptMediaError,
    EmptyMediaError,
    MissingFileError,
    TooLargeError,
    UnsupportedMediaError,
)

log = logging.getLogger(__name__)

MediaKind = Literal["image", "video"]

#: Default decompression-bomb guard: 100 megapixels (e.g. 12,000 x 8,333).
DEFAULT_MAX_PIXELS = 100_000_000

#: Formats decoded by Pillow, with Pillow's name for each (so Pillow may use no other decoder).
IMAGE_FORMATS: dict[str, str] = {
    "jpeg": "JPEG",
    "png": "PNG",
    "webp": "WEBP",
    "bmp": "BMP",
    "gif": "GIF",
}
#: Containers decoded by OpenCV's FFmpeg backend. The codec inside is checked by decoding a frame.
VIDEO_FORMATS: frozenset[str] = frozenset(
    {"mp4", "mov", "3gp", "matroska", "webm", "avi", "mpegts", "mpegps", "flv", "asf", "ogg"}
)

_HEAD_BYTES = 512
_HASH_CHUNK = 1 << 20
# ISO BMFF brands that are still images or audio, not video: refused with a specific message.
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"})
_AVIF_BRANDS = frozenset({b"avif", b"avis"})
_AUDIO_BRANDS = frozenset({b"M4A ", b"M4B ", b"M4P "})
# QuickTime files from old cameras may start without an ftyp box.
_MOV_FIRST_BOXES = frozenset({b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"})
_BMP_DIB_SIZES = frozenset({12, 40, 52, 56, 64, 108, 124})
_ASF_GUID = bytes.fromhex("3026b2758e66cf11a6d900aa0062ce6c")
_ISOBMFF = frozenset({"mp4", "mov", "3gp"})
# EXIF orientation tag -> clockwise degrees to display (mirroring, tags 2/4/5/7, is not counted).
_EXIF_ROTATION = {1: 0, 2: 0, 3: 180, 4: 180, 5: 90, 6: 90, 7: 270, 8: 270}
_EXIF_ORIENTATION_TAG = 0x0112
# A decoder fps outside this range is garbage from a broken header, not a frame rate.
_MAX_PLAUSIBLE_FPS = 1000.0
#: Seek rather than decode through gaps longer than this (seconds). Typical keyframe intervals
#: are 2-10 s (x264's default is 250 frames), so a seek here never decodes more than the gap.
#: At 1 frame per second no gap qualifies and every frame is decoded once, which measured faster
#: than seeking (see the module docstring); for sparse samples seeking measured 4-6x faster
#: (e.g. 2 frames 25 s apart in a 30 s 640x480 clip: 0.13 s instead of 0.60 s).
DEFAULT_SEEK_GAP_S = 10.0
# Land this far before a requested time, so that the frame nearest to it is still ahead.
_SEEK_MARGIN_S = 0.5
# Frame interval assumed before two frames have been seen when the header has no usable fps.
_FALLBACK_FRAME_INTERVAL_S = 1 / 25


@dataclass(frozen=True)
class MediaInfo:
    """What a media file is. Sizes are display sizes (after EXIF / container rotation).

    ``frame_count`` is *estimated* from the container header (the stored sample count where the
    container has one, else FFmpeg's duration x fps); it is not measured by decoding every frame,
    which would cost as much as analysing the video. ``duration_s`` is ``frame_count / fps``.
    Both are ``None`` for images and for videos whose header gives no usable value. Code that
    must not trust them (sampling) relies on decoded timestamps instead: see :func:`iter_frames`.
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


def sniff_format(head: bytes) -> str | None:
    """The media format named by a file's first bytes (>= 512 of them for MPEG-TS), or ``None``.

    Returns a key of :data:`IMAGE_FORMATS` or a member of :data:`VIDEO_FORMATS`, or ``"heif"``,
    ``"avif"`` or ``"m4a"`` for ISO files that are recognised but not supported here.
    """
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    if head[:2] == b"BM" and len(head) >= 18 and _u32le(head, 14) in _BMP_DIB_SIZES:
        return "bmp"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _HEIF_BRANDS:
            return "heif"
        if brand in _AVIF_BRANDS:
            return "avif"
        if brand in _AUDIO_BRANDS:
            return "m4a"
        if brand == b"qt  ":
            return "mov"
        if brand[:3] in (b"3gp", b"3g2"):
            return "3gp"
        return "mp4"
    if len(head) >= 8 and head[4:8] in _MOV_FIRST_BOXES and struct.unpack(">I", head[:4])[0] >= 8:
        return "mov"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        # The EBML header's DocType says which Matroska flavour; it sits in the first few bytes.
        return "webm" if b"webm" in head[:64] else "matroska"
    if _is_mpegts(head):
        return "mpegts"
    if head.startswith(b"\x00\x00\x01\xba"):
        return "mpegps"
    if head.startswith(b"FLV\x01"):
        return "flv"
    if head.startswith(_ASF_GUID):
        return "asf"
    if head.startswith(b"OggS"):
        return "ogg"
    return None


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
    size_bytes, fmt = _identify(path)
    if fmt == "gif" and _gif_frame_count(path) > 1:
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


def load_image(path: Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an image file to ``(H, W, 3) uint8`` RGB, EXIF orientation applied.

    The pixel count is checked from the header before any pixel is decoded (decompression-bomb
    guard). Alpha is dropped; 16-bit images are scaled to 8 bits; an animated GIF, WebP or PNG
    gives its first frame. A 1x1 image is valid (it just cannot contain a face).

    Raises:
        MissingFileError, EmptyMediaError, UnsupportedMediaError (not an image format),
        CorruptMediaError, TooLargeError: as for :func:`probe`.
    """
    path = Path(path)
    _, fmt = _identify(path)
    if fmt not in IMAGE_FORMATS:
        raise UnsupportedMediaError(
            f"{path.name} is a {fmt} video, not an image; analyse it as a video"
        )
    image, _ = _decode_image(path, fmt, max_pixels)
    return image


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
    _, fmt = _identify(path)
    if fmt in IMAGE_FORMATS and not (fmt == "gif" and _gif_frame_count(path) > 1):
        raise UnsupportedMediaError(f"{path.name} is a still {fmt} image, not a video")
    capture = _open_capture(path, fmt, max_pixels)
    try:
        yield from _nearest_frames(capture, _ascending(times_s), seek_gap_s)
    finally:
        capture.release()


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks (never whole into memory)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# --- identification ------------------------------------------------------------------------


def _identify(path: Path) -> tuple[int, str]:
    """(size in bytes, supported format) of ``path``, or the typed error saying why not."""
    if not path.exists():
        raise MissingFileError(f"input file not found: {path}")
    if not path.is_file():
        raise MissingFileError(f"input is not a regular file: {path}")
    size_bytes = path.stat().st_size
    if size_bytes == 0:
        raise EmptyMediaError(f"{path.name} is empty (0 bytes); upload the file again")
    with path.open("rb") as fh:
        head = fh.read(_HEAD_BYTES)
    fmt = sniff_format(head)
    if fmt is None:
        raise UnsupportedMediaError(
            f"{path.name} is not a supported image (JPEG, PNG, WebP, BMP, GIF) or video "
            f"(MP4, MOV, MKV, WebM, AVI, MPEG-TS...); its first bytes are {head[:8].hex()}"
        )
    if fmt in ("heif", "avif"):
        raise UnsupportedMediaError(
            f"{path.name} is a {fmt.upper()} image, which is not supported; "
            "convert it to JPEG or PNG"
        )
    if fmt == "m4a":
        raise UnsupportedMediaError(f"{path.name} is audio only; a video or image is needed")
    return size_bytes, fmt


def _is_mpegts(head: bytes) -> bool:
    # Transport streams repeat a 0x47 sync byte every 188 bytes (every 192 in Blu-ray M2TS).
    for offset, stride in ((0, 188), (4, 192)):
        marks = range(offset, len(head), stride)
        if len(marks) >= 3 and all(head[i] == 0x47 for i in marks):
            return True
    return False


def _u32le(buf: bytes, offset: int) -> int:
    return int(struct.unpack_from("<I", buf, offset)[0])


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


# --- images --------------------------------------------------------------------------------


def _probe_image(path: Path, fmt: str, size_bytes: int, max_pixels: int) -> MediaInfo:
    image, rotation = _decode_image(path, fmt, max_pixels)
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


def _decode_image(path: Path, fmt: str, max_pixels: int) -> tuple[np.ndarray, int]:
    """((H, W, 3) uint8 RGB display-oriented pixels, clockwise EXIF rotation in degrees)."""
    with path.open("rb") as fh:
        header_size = _header_size(fh.read(32), fmt)
        if header_size is not None:
            # Checked on the raw header, before Pillow (which refuses a 0x0 PNG with a vaguer
            # message, and has its own global bomb limit).
            _check_image_size(path, *header_size, max_pixels)
        fh.seek(0)
        pil = _open_pil(fh, path, fmt)
        with pil:
            _check_image_size(path, *pil.size, max_pixels)
            try:
                orientation = int(pil.getexif().get(_EXIF_ORIENTATION_TAG, 1))
                # exif_transpose decodes the pixels; truncated data fails here with OSError.
                upright = ImageOps.exif_transpose(pil)
                array = _to_rgb_array(upright)
            except (OSError, SyntaxError, ValueError, struct.error) as exc:
                raise CorruptMediaError(
                    f"{path.name} is a corrupt or truncated {fmt.upper()} image ({exc})"
                ) from exc
    return array, _EXIF_ROTATION.get(orientation, 0)


def _open_pil(fh: BinaryIO, path: Path, fmt: str) -> Image.Image:
    try:
        # formats=[...]: only the decoder the bytes named may run, never Pillow's other guesses.
        return Image.open(fh, formats=[IMAGE_FORMATS[fmt]])
    except Image.DecompressionBombError as exc:
        # Pillow's own hard limit (2 x Image.MAX_IMAGE_PIXELS) can trip before ours does.
        raise TooLargeError(f"{path.name} has too many pixels to decode safely ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise CorruptMediaError(
            f"{path.name} is not a readable {fmt.upper()} image (corrupt header)"
        ) from exc
    except (OSError, SyntaxError, ValueError, struct.error) as exc:
        raise CorruptMediaError(
            f"{path.name} is not a readable {fmt.upper()} image ({exc})"
        ) from exc


def _header_size(head: bytes, fmt: str) -> tuple[int, int] | None:
    """(width, height) stored at a fixed place in PNG, GIF and BMP headers; None elsewhere."""
    if fmt == "png" and len(head) >= 24 and head[12:16] == b"IHDR":
        width, height = struct.unpack_from(">II", head, 16)
        return int(width), int(height)
    if fmt == "gif" and len(head) >= 10:
        width, height = struct.unpack_from("<HH", head, 6)
        return int(width), int(height)
    if fmt == "bmp" and len(head) >= 26:
        if _u32le(head, 14) == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
            width, height = struct.unpack_from("<HH", head, 18)
        else:  # height is negative for top-down bitmaps
            width, height = struct.unpack_from("<ii", head, 18)
        return abs(int(width)), abs(int(height))
    return None


def _check_image_size(path: Path, width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise EmptyMediaError(
            f"{path.name} is a {width}x{height} image: it has no pixels to analyse"
        )
    _check_pixels(path, width, height, max_pixels)


def _check_pixels(path: Path, width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise TooLargeError(
            f"{path.name} is {width}x{height} = {width * height / 1e6:.1f} megapixels, over the "
            f"limit of {max_pixels / 1e6:.1f}; downscale it first"
        )


def _to_rgb_array(pil: Image.Image) -> np.ndarray:
    if pil.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: Pillow's convert("RGB") clips instead of scaling.
        grey = np.asarray(pil, dtype=np.float64)
        peak = 65535.0 if pil.mode.startswith("I;16") else max(float(grey.max()), 1.0)
        grey8 = np.clip(grey * (255.0 / peak), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey8[:, :, None], 3, axis=2))
    rgb = pil if pil.mode == "RGB" else pil.convert("RGB")
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))


def _gif_frame_count(path: Path) -> int:
    """Frames in a GIF (Pillow scans block headers; no pixels are decoded). 0 if unreadable."""
    try:
        with Image.open(path, formats=["GIF"]) as gif:
            return int(getattr(gif, "n_frames", 1))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, struct.error):
        return 0
    except Image.DecompressionBombError:
        return 0  # the image path reports it as TooLargeError


# --- videos --------------------------------------------------------------------------------


def _probe_video(path: Path, fmt: str, size_bytes: int, max_pixels: int) -> MediaInfo:
    capture = _open_capture(path, fmt, max_pixels)
    try:
        if not capture.grab():
            raise CorruptMediaError(f"{path.name}: no video frame could be decoded")
        ok, bgr = capture.retrieve()
        if not ok or bgr is None or bgr.size == 0:
            raise CorruptMediaError(f"{path.name}: the first video frame could not be decoded")
        height, width = (int(v) for v in bgr.shape[:2])
        fps = _header_fps(capture)
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


def _open_capture(path: Path, fmt: str, max_pixels: int) -> cv2.VideoCapture:
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
        _check_pixels(path, width, height, max_pixels)
    except BaseException:
        capture.release()
        raise
    return capture


def _header_fps(capture: cv2.VideoCapture) -> float | None:
    fps = float(capture.get(cv2.CAP_PROP_FPS))
    return fps if math.isfinite(fps) and 0 < fps <= _MAX_PLAUSIBLE_FPS else None


def _normalise_rotation(degrees: float) -> int:
    """Container rotation to one of 0, 90, 180, 270 (clockwise)."""
    if not math.isfinite(degrees):
        return 0
    return (round(degrees / 90.0) * 90) % 360


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
    fps = _header_fps(capture)
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

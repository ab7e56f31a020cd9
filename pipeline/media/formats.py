"""What a media file is, told from its bytes (magic numbers), never from its name.

Only the formats named here are ever handed to a decoder (see :mod:`pipeline.media` for why),
and the pixel count is checked before any pixel is decoded (:func:`check_pixels`, the
decompression-bomb guard).
"""

from __future__ import annotations

import struct
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from pipeline.errors import EmptyMediaError, MissingFileError, TooLargeError, UnsupportedMediaError

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
# ISO BMFF brands that are still images or audio, not video: refused with a specific message.
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"})
_AVIF_BRANDS = frozenset({b"avif", b"avis"})
_AUDIO_BRANDS = frozenset({b"M4A ", b"M4B ", b"M4P "})
# QuickTime files from old cameras may start without an ftyp box.
_MOV_FIRST_BOXES = frozenset({b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"})
_BMP_DIB_SIZES = frozenset({12, 40, 52, 56, 64, 108, 124})
_ASF_GUID = bytes.fromhex("3026b2758e66cf11a6d900aa0062ce6c")


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
    if head[:2] == b"BM" and len(head) >= 18 and u32le(head, 14) in _BMP_DIB_SIZES:
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


def identify(path: Path) -> tuple[int, str]:
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


def gif_frame_count(path: Path) -> int:
    """Frames in a GIF (Pillow scans block headers; no pixels are decoded). 0 if unreadable."""
    try:
        with Image.open(path, formats=["GIF"]) as gif:
            return int(getattr(gif, "n_frames", 1))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, struct.error):
        return 0
    except Image.DecompressionBombError:
        return 0  # the image path reports it as TooLargeError


def check_pixels(path: Path, width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise TooLargeError(
            f"{path.name} is {width}x{height} = {width * height / 1e6:.1f} megapixels, over the "
            f"limit of {max_pixels / 1e6:.1f}; downscale it first"
        )


def _is_mpegts(head: bytes) -> bool:
    # Transport streams repeat a 0x47 sync byte every 188 bytes (every 192 in Blu-ray M2TS).
    for offset, stride in ((0, 188), (4, 192)):
        marks = range(offset, len(head), stride)
        if len(marks) >= 3 and all(head[i] == 0x47 for i in marks):
            return True
    return False


def u32le(buf: bytes, offset: int) -> int:
    return int(struct.unpack_from("<I", buf, offset)[0])

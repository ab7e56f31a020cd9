"""Still images: decoded by Pillow (only the decoder the bytes named), EXIF orientation applied."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.errors import CorruptMediaError, EmptyMediaError, TooLargeError, UnsupportedMediaError
from pipeline.media.formats import DEFAULT_MAX_PIXELS, IMAGE_FORMATS, check_pixels, identify, u32le

# EXIF orientation tag -> clockwise degrees to display (mirroring, tags 2/4/5/7, is not counted).
_EXIF_ROTATION = {1: 0, 2: 0, 3: 180, 4: 180, 5: 90, 6: 90, 7: 270, 8: 270}
_EXIF_ORIENTATION_TAG = 0x0112


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
    _, fmt = identify(path)
    if fmt not in IMAGE_FORMATS:
        raise UnsupportedMediaError(
            f"{path.name} is a {fmt} video, not an image; analyse it as a video"
        )
    image, _ = decode_image(path, fmt, max_pixels)
    return image


def decode_image(path: Path, fmt: str, max_pixels: int) -> tuple[np.ndarray, int]:
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
        if u32le(head, 14) == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
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
    check_pixels(path, width, height, max_pixels)


def _to_rgb_array(pil: Image.Image) -> np.ndarray:
    if pil.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: Pillow's convert("RGB") clips instead of scaling.
        grey = np.asarray(pil, dtype=np.float64)
        peak = 65535.0 if pil.mode.startswith("I;16") else max(float(grey.max()), 1.0)
        grey8 = np.clip(grey * (255.0 / peak), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey8[:, :, None], 3, axis=2))
    rgb = pil if pil.mode == "RGB" else pil.convert("RGB")
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))

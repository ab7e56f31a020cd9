"""Face sequences: folders of pre-cut face images (WildDeepfake), packed or not in an archive.

WildDeepfake ships face sequences, not videos: :func:`iter_face_sequence` streams the RGB face crops
of one row out of its ``.tar.gz`` archive (or extracted folder) without extracting to disk, and
:func:`archive_sequences` / :func:`folder_sequences` list the sequences one archive holds.
"""

from __future__ import annotations

import io
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from batch.datasets.rows import VideoRow
from pipeline.errors import CorruptMediaError, EmptyMediaError, MissingFileError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp"})
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


def natural_key(text: str) -> tuple[Any, ...]:
    """Sort key where ``"frame_9" < "frame_10"``: WDF images are named by frame number."""
    # re.split with a capture group alternates str, int, str, ... so positions compare like types.
    return tuple(int(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+)", text)))


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def archive_stem(path: Path) -> str:
    name = path.name
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def is_image_name(name: str) -> bool:
    base = PurePosixPath(name).name
    # macOS tar adds "._name" resource forks next to every file; they are not images.
    return not base.startswith(".") and PurePosixPath(base).suffix.lower() in IMAGE_SUFFIXES


def member_folder(name: str) -> str:
    """The folder of an archive member, POSIX-style (``""`` = the top level)."""
    parent = str(PurePosixPath(name.removeprefix("./")).parent)
    return "" if parent == "." else parent


def archive_sequences(path: Path) -> list[str]:
    """Folders inside a face archive that directly contain images (one face sequence each)."""
    with tarfile.open(path, mode="r|*") as archive:
        folders = {
            member_folder(member.name)
            for member in archive
            if member.isfile() and is_image_name(member.name)
        }
    return sorted(folders, key=natural_key)


def folder_sequences(path: Path) -> list[str]:
    """Folders below ``path`` that directly contain images (one face sequence each)."""
    folders = {
        p.parent.relative_to(path).as_posix() if p.parent != path else ""
        for p in path.rglob("*")
        if p.is_file() and is_image_name(p.name)
    }
    return sorted(folders, key=natural_key)


def _decode_image(data: bytes, where: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise CorruptMediaError(f"cannot decode face image {where}: {exc}") from exc


def iter_face_sequence(
    source: VideoRow | Path | str, *, sequence: str | None = None
) -> Iterator[np.ndarray]:
    """Stream the face crops of one face sequence, in natural name (= frame number) order.

    Args:
        source: a ``face_sequence`` row (its ``path`` and ``sequence`` are used), or the path of a
            ``.tar.gz``/``.tgz``/``.tar`` archive or of a folder of images.
        sequence: folder inside the archive/below the folder to read (``""`` = top level only);
            ``None`` = every image, sorted by folder then name. Overrides the row's ``sequence``.

    Yields:
        ``(H, W, 3)`` uint8 RGB arrays, one per image, decoded one at a time.

    Memory: a folder is read image by image. An archive is read in one streaming pass when this is
    called (gzip cannot seek backwards cheaply, and archive order need not be name order), keeping
    only the *encoded* bytes of the selected sequence (face crops, a few MB), never the whole
    archive; frames are decoded one at a time as the iterator advances, and their bytes dropped.

    Raises:
        MissingFileError: the path does not exist (when called).
        CorruptMediaError: the archive (when called) or an image (when reached) cannot be read.
        EmptyMediaError: no image matches (when called).
    """
    if isinstance(source, VideoRow):
        path = Path(source.path)
        if sequence is None:
            sequence = source.sequence
    else:
        path = Path(source)
    if not path.exists():
        raise MissingFileError(f"face sequence {path} not found")
    wanted = None if sequence is None else sequence.strip("/")
    if path.is_dir():
        return _iter_folder(path, wanted)
    return _iter_archive(path, wanted)


def _iter_folder(path: Path, wanted: str | None) -> Iterator[np.ndarray]:
    base = path / wanted if wanted else path
    files = base.rglob("*") if wanted is None else base.glob("*")
    images = sorted(
        (p for p in files if p.is_file() and is_image_name(p.name)),
        key=lambda p: natural_key(p.relative_to(path).as_posix()),
    )
    if not images:
        raise EmptyMediaError(f"no face images in {base}")

    def generate() -> Iterator[np.ndarray]:
        for image in images:
            yield _decode_image(image.read_bytes(), str(image))

    return generate()


def _iter_archive(path: Path, wanted: str | None) -> Iterator[np.ndarray]:
    encoded: list[tuple[str, bytes]] = []
    try:
        with tarfile.open(path, mode="r|*") as archive:
            for member in archive:
                if not (member.isfile() and is_image_name(member.name)):
                    continue
                if wanted is not None and member_folder(member.name) != wanted:
                    continue
                handle = archive.extractfile(member)
                assert handle is not None  # regular file members always have data
                encoded.append((member.name.removeprefix("./"), handle.read()))
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise CorruptMediaError(f"cannot read face archive {path}: {exc}") from exc
    if not encoded:
        where = f"{path}" if wanted is None else f"{path} (sequence {wanted!r})"
        raise EmptyMediaError(f"no face images in {where}")
    # Reverse order so pop() hands out the next image and frees its bytes as the caller advances.
    encoded.sort(key=lambda item: natural_key(item[0]), reverse=True)

    def generate() -> Iterator[np.ndarray]:
        while encoded:
            name, data = encoded.pop()
            yield _decode_image(data, f"{path}:{name}")

    return generate()

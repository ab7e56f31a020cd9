"""``dfd models fetch NAME``: download a known member's published weights into a model directory.

Files come from a *mirror* laid out like the project's ``shared/weights`` folder
(``<mirror>/<mirror_path>``, e.g. ``<mirror>/mesonet/Meso4_DF.h5``): a local folder, a
``file://`` URL or an http(s) base URL, chosen by the ``mirror`` argument, else
``$DFD_WEIGHTS_MIRROR``, else each file's pinned upstream URL. Every file is checked against the
sha256 the catalogue pins and converted before anything is recorded, so a fetch either adds all
the members it names or leaves the model directory exactly as it was.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

import httpx

from pipeline.errors import CheckpointError, ConfigError, DownloadError, DownloadTimeoutError
from pipeline.models.catalog import BUNDLED, BundledMember, KnownFile, known_files
from pipeline.models.importers.base import ImportedMember, import_format
from pipeline.models.manifest import OPEN, ModelDirectory
from pipeline.models.spec import MemberSpec

log = logging.getLogger(__name__)

#: Environment variable naming the default mirror (folder, ``file://`` or http(s) base URL).
MIRROR_ENV = "DFD_WEIGHTS_MIRROR"
#: Largest file a fetch accepts (the MesoNet files are 150-200 KiB; the paper's members ~80 MiB).
MAX_FILE_BYTES = 512 * 1024 * 1024
_CHUNK = 1 << 20
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_HINT = (
    f"set {MIRROR_ENV} (or pass a mirror) to a folder or http(s) URL laid out like "
    "shared/weights, e.g. <mirror>/mesonet/Meso4_DF.h5"
)


@dataclass(frozen=True)
class _Staged:
    """A downloaded, verified and converted file, ready to be recorded."""

    known: KnownFile
    imported: ImportedMember
    origin: str  # the URL or path it came from


def fetch_members(
    directory: ModelDirectory, name: str, *, mirror: str | None = None, timeout_s: float = 60.0
) -> list[MemberSpec]:
    """Fetch the weights of known member or ensemble ``name`` into ``directory``.

    ``mirror``: a folder, ``file://`` URL or http(s) base URL (None: ``$DFD_WEIGHTS_MIRROR``,
    else upstream). ``timeout_s``: seconds allowed for connecting and for each read. A directory
    without a manifest first gets the ``paper`` preset's (which lists these members untrained).
    Returns the recorded specs. Raises :class:`DownloadError` (unreachable, 404, truncated,
    missing from the mirror) or :class:`CheckpointError` (wrong sha256, unreadable file) with
    the directory unchanged.
    """
    if name in BUNDLED:
        return [install_bundled(directory, BUNDLED[name])]
    files = known_files(name)
    base = mirror or os.environ.get(MIRROR_ENV) or None
    with _created_dirs(directory.root):
        staged = _stage_all(directory.root, files, base, timeout_s)
        with _rollback(directory, [s.known.member for s in staged]):
            if not directory.exists():
                directory.init("paper")
            return [
                directory.add_member(
                    s.imported,
                    version=s.known.version,
                    trained_on=s.known.trained_on,
                    licence=s.known.licence,
                    source=f"{s.known.source} via {s.origin}",
                    ensembles=(s.known.ensemble, OPEN),
                )
                for s in staged
            ]


def install_bundled(directory: ModelDirectory, bundled: BundledMember) -> MemberSpec:
    """Record a member whose weights ship in the package: sha256 checked, loaded strictly
    (``add_member``), its manifest entry (training record included) kept as trained."""
    from pipeline.models.checkpoint import file_sha256, read_state_dict

    if not bundled.weights.is_file():
        raise CheckpointError(f"the package lacks {bundled.weights}: reinstall dfd")
    digest = file_sha256(bundled.weights)
    if digest != bundled.sha256:
        raise CheckpointError(
            f"{bundled.weights} has sha256 {digest}, the catalogue expects {bundled.sha256}"
        )
    spec = bundled.spec()
    with _created_dirs(directory.root), _rollback(directory, [spec.name]):
        if not directory.exists():
            directory.init("paper")
        return directory.add_member(
            ImportedMember(spec, read_state_dict(bundled.weights)),
            version=spec.version,
            trained_on=spec.trained_on,
            licence=spec.licence,
            source=f"{spec.source}; bundled with dfd ({bundled.weights.name})",
            ensembles=bundled.ensembles,
        )


def _stage_all(
    root: Path, files: list[KnownFile], base: str | None, timeout_s: float
) -> list[_Staged]:
    """Download, verify and convert every file; temporary files never outlive this call."""
    staged = []
    timeout = httpx.Timeout(timeout_s)
    with httpx.Client(follow_redirects=True, timeout=timeout) as client:
        for known in files:
            fd, name = tempfile.mkstemp(prefix=".fetch-", suffix=".tmp", dir=root)
            tmp = Path(name)
            try:
                with os.fdopen(fd, "wb") as out:
                    origin, digest = _download(client, known, base, out)
                if digest != known.sha256:
                    raise CheckpointError(
                        f"{origin} has sha256 {digest}, but the catalogue expects "
                        f"{known.sha256} for {known.member}: the mirror holds a different or "
                        f"corrupt file; replace it with upstream's {known.url}, or {_HINT}"
                    )
                imported = import_format(known.fmt, tmp, known.member, known.variant)
            finally:
                tmp.unlink(missing_ok=True)
            log.info("fetched %s from %s", known.member, origin)
            staged.append(_Staged(known, imported, origin))
    return staged


def _download(
    client: httpx.Client, known: KnownFile, base: str | None, out: BinaryIO
) -> tuple[str, str]:
    """Write ``known``'s bytes to ``out``; returns ``(where it came from, sha256)``."""
    if base is None:
        return known.url, _http_copy(client, known.url, out)
    if _SCHEME.match(base):
        scheme = urlsplit(base).scheme.lower()
        if scheme in ("http", "https"):
            url = f"{base.rstrip('/')}/{known.mirror_path}"
            return url, _http_copy(client, url, out)
        if scheme != "file":
            raise ConfigError(
                f"mirror {base!r}: unsupported scheme {scheme!r}; use a folder, file:// or "
                "http(s) URL"
            )
        folder = Path(url2pathname(unquote(urlsplit(base).path)))
    else:
        folder = Path(base).expanduser()
    path = folder / known.mirror_path
    return str(path), _file_copy(folder, path, out)


def _http_copy(client: httpx.Client, url: str, out: BinaryIO) -> str:
    """Stream ``url`` into ``out`` within :data:`MAX_FILE_BYTES`; the body's sha256."""
    digest = hashlib.sha256()
    try:
        with client.stream("GET", url) as response:
            if response.status_code != 200:
                raise DownloadError(
                    f"GET {url} answered {response.status_code} {response.reason_phrase}; {_HINT}"
                )
            announced = _content_length(response)
            if announced is not None and announced > MAX_FILE_BYTES:
                raise DownloadError(
                    f"{url} announces {announced} bytes, over the {MAX_FILE_BYTES}-byte limit"
                )
            for chunk in response.iter_bytes(_CHUNK):
                if response.num_bytes_downloaded > MAX_FILE_BYTES:
                    raise DownloadError(f"{url} sends over {MAX_FILE_BYTES} bytes; refused")
                digest.update(chunk)
                out.write(chunk)
            # httpx refuses a body shorter than its Content-Length itself; this also covers a
            # transport that does not (raw bytes counted, before any Content-Encoding).
            if announced is not None and response.num_bytes_downloaded != announced:
                raise DownloadError(
                    f"{url} was cut short: {response.num_bytes_downloaded} of {announced} "
                    f"bytes; retry, or {_HINT}"
                )
    except httpx.TimeoutException as exc:
        raise DownloadTimeoutError(
            f"{url} did not answer within the timeout ({type(exc).__name__}); {_HINT}"
        ) from exc
    except httpx.RemoteProtocolError as exc:
        raise DownloadError(
            f"{url} was cut short ({' '.join(str(exc).split())}); retry, or {_HINT}"
        ) from exc
    except httpx.HTTPError as exc:
        raise DownloadError(
            f"downloading {url} failed ({type(exc).__name__}: {' '.join(str(exc).split())}); "
            f"{_HINT}"
        ) from exc
    return digest.hexdigest()


def _content_length(response: httpx.Response) -> int | None:
    try:
        return int(response.headers["Content-Length"])
    except (KeyError, ValueError):
        return None


def _file_copy(folder: Path, path: Path, out: BinaryIO) -> str:
    """Copy ``path`` (in mirror ``folder``) into ``out``; its sha256."""
    if not folder.is_dir():
        raise DownloadError(f"mirror folder {folder} does not exist; {_HINT}")
    if not path.is_file():
        raise DownloadError(f"{path} is missing from the mirror folder {folder}; {_HINT}")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise DownloadError(f"{path} is over the {MAX_FILE_BYTES}-byte limit")
    digest = hashlib.sha256()
    try:
        with path.open("rb") as src:
            while chunk := src.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
    except OSError as exc:
        raise DownloadError(f"cannot read {path} from the mirror: {exc}") from exc
    return digest.hexdigest()


@contextmanager
def _created_dirs(root: Path) -> Iterator[None]:
    """Create ``root`` (and missing parents) for the temporary files; on failure remove what
    was created, so a failed fetch into a new directory leaves no directory behind."""
    missing = [p for p in (root, *root.parents) if not p.exists()]
    root.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        for path in missing:  # deepest first
            try:
                path.rmdir()
            except OSError:
                break  # not empty: someone else wrote there meanwhile; leave it
        raise


@contextmanager
def _rollback(directory: ModelDirectory, members: list[str]) -> Iterator[None]:
    """Restore the manifest and the members' checkpoint files if recording fails midway.

    Each ``add_member`` is atomic, but the fetch of an ensemble is several of them; a failure
    between two (a full disk) must not leave half an ensemble recorded.
    """
    manifest = directory.manifest_path
    saved = manifest.read_bytes() if manifest.is_file() else None
    targets = [directory.root / f"{m}.safetensors" for m in members]
    backups: dict[Path, Path] = {}
    try:
        for target in targets:
            if target.is_file():
                backup = target.with_name(f".{target.name}.bak")
                shutil.copy2(target, backup)
                backups[target] = backup
        yield
    except BaseException:
        for target in targets:
            if target in backups:
                backups[target].replace(target)
            else:
                target.unlink(missing_ok=True)
        if saved is None:
            manifest.unlink(missing_ok=True)
        else:
            manifest.write_bytes(saved)
        raise
    finally:
        for backup in backups.values():
            backup.unlink(missing_ok=True)

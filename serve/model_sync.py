"""A model directory kept in object storage, so that every node of a cluster pulls the same
files from the bucket instead of having them synced through the head.

``dfd models push DIR s3://bucket/prefix`` uploads the manifest, the members' checkpoints and
the optional ``aux/`` weights, plus ``index.json``: every file's size and SHA-256.
``dfd models pull s3://bucket/prefix DIR`` downloads what the index lists into ``DIR``: each
file is hashed as it arrives and renamed into place only when its hash matches; files already
there with the right hash are kept (a restarted node downloads nothing), and the manifest comes
last, so a directory never names a checkpoint it does not hold. A failed pull changes no file
that was there before it.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pipeline.errors import CheckpointError, ConfigError
from pipeline.models.checkpoint import file_sha256
from pipeline.models.manifest import MANIFEST_NAME, Manifest, ModelDirectory
from serve.storage import ArtefactNotFoundError, ArtefactStorage, LocalStorage, S3Storage

__all__ = ["INDEX_NAME", "SyncReport", "model_store", "pull_models", "push_models"]

#: The file listing every pushed file's size and SHA-256.
INDEX_NAME = "index.json"
_CHUNK = 1 << 20


@dataclass
class SyncReport:
    """The files a push or pull copied, and those a pull found in place already."""

    copied: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)


def model_store(url: str, endpoint_url: str | None = None) -> tuple[ArtefactStorage, str]:
    """The storage and key prefix of ``s3://bucket/prefix`` (credentials from the usual AWS
    variables or an instance profile; ``endpoint_url`` for MinIO) or of a local folder."""
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ConfigError(f"{url!r} names no bucket: use s3://BUCKET/PREFIX")
        return S3Storage(parsed.netloc, endpoint_url=endpoint_url), parsed.path.strip("/")
    if parsed.scheme in ("", "file"):
        return LocalStorage(Path(parsed.path or url)), ""
    raise ConfigError(f"unsupported model store {url!r}: use s3://BUCKET/PREFIX or a folder")


def _key(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if prefix else name


def _files(directory: ModelDirectory, manifest: Manifest) -> list[str]:
    """The files a push copies: the members' checkpoints and ``aux/`` (paths relative to the
    directory), each once."""
    names: list[str] = []
    for spec in manifest.members:
        path = directory.checkpoint_path(spec)
        if path is None:
            continue
        if not path.is_file():
            raise CheckpointError(f"member {spec.name}: checkpoint {path} is missing")
        names.append(spec.checkpoint or "")
    aux = directory.root / "aux"
    if aux.is_dir():
        names += sorted(p.relative_to(directory.root).as_posix() for p in aux.rglob("*")
                        if p.is_file())  # fmt: skip
    return sorted(set(names))


def push_models(directory: ModelDirectory, storage: ArtefactStorage, prefix: str) -> SyncReport:
    """Upload ``directory`` (manifest, checkpoints, ``aux/``) and its index under ``prefix``;
    the index and the manifest go last, so a reader never sees an index naming absent files."""
    manifest = directory.load()
    report = SyncReport()
    index: dict[str, dict[str, Any]] = {}
    for name in [*_files(directory, manifest), MANIFEST_NAME]:
        path = directory.root / name
        index[name] = {"size": path.stat().st_size, "sha256": file_sha256(path)}
        if name != MANIFEST_NAME:
            storage.put_file(_key(prefix, name), path)
            report.copied.append(name)
    for spec in manifest.members:
        if spec.checkpoint and spec.sha256 and index[spec.checkpoint]["sha256"] != spec.sha256:
            raise CheckpointError(
                f"member {spec.name}: {spec.checkpoint} does not match the manifest's sha256; "
                "run `dfd models verify`"
            )
    storage.put_file(_key(prefix, MANIFEST_NAME), directory.manifest_path, "application/json")
    report.copied.append(MANIFEST_NAME)
    body = json.dumps({"files": index}, indent=2).encode()
    storage.put_bytes(_key(prefix, INDEX_NAME), body, "application/json")
    return report


def pull_models(storage: ArtefactStorage, prefix: str, directory: ModelDirectory) -> SyncReport:
    """Download the pushed model directory under ``prefix`` into ``directory`` (see the module
    docstring); :class:`~pipeline.errors.CheckpointError` when a file is missing or its hash is
    not the index's."""
    where = _key(prefix, INDEX_NAME)
    try:
        index: dict[str, dict[str, Any]] = json.loads(storage.get_bytes(where))["files"]
    except ArtefactNotFoundError as exc:
        raise ConfigError(f"no {INDEX_NAME} at {where}: push a model directory there first "
                          "(`dfd models push`)") from exc  # fmt: skip
    if MANIFEST_NAME not in index:
        raise CheckpointError(f"{where} lists no {MANIFEST_NAME}")
    directory.root.mkdir(parents=True, exist_ok=True)
    report = SyncReport()
    staged: list[tuple[Path, Path]] = []
    try:
        for name in sorted(index, key=lambda n: n == MANIFEST_NAME):  # the manifest last
            entry = index[name]
            target = directory.root / name
            if not target.resolve().is_relative_to(directory.root.resolve()):
                raise CheckpointError(f"{where} names a file outside the directory: {name!r}")
            if target.is_file() and file_sha256(target) == entry["sha256"]:
                report.kept.append(name)
                continue
            staged.append((_download(storage, _key(prefix, name), target, entry), target))
            report.copied.append(name)
        for tmp, target in staged:  # every file checked: now into place, the manifest last
            os.replace(tmp, target)
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
    directory.load()  # a manifest this version can read
    return report


def _download(storage: ArtefactStorage, key: str, target: Path, entry: dict[str, Any]) -> Path:
    """``key`` into a hidden file beside ``target``, checked against the index entry."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".pull-{secrets.token_hex(6)}-{target.name}"
    digest = hashlib.sha256()
    try:
        with open(tmp, "wb") as out:
            for chunk in storage.iter_bytes(key, chunk_size=_CHUNK):
                digest.update(chunk)
                out.write(chunk)
    except ArtefactNotFoundError as exc:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"{key} is listed in the index but absent from the store") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if digest.hexdigest() != entry["sha256"] or tmp.stat().st_size != entry["size"]:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(
            f"{key}: sha256 {digest.hexdigest()[:16]}... is not the index's "
            f"{str(entry['sha256'])[:16]}...; the store holds another file than was pushed"
        )
    return tmp

"""Artefact storage (galleries, face crops, uploads) behind one interface with two backends.

:class:`LocalStorage` keeps files under a folder (the embedded default); :class:`S3Storage` talks
to any S3-compatible server (MinIO in a cluster, as the paper's gallery plots, section 3.3).
The HTTP layer serves an artefact either from :meth:`ArtefactStorage.local_path` (local) or from
:meth:`ArtefactStorage.presigned_url` (S3), or streams :meth:`ArtefactStorage.iter_bytes` with
a byte range from either, for ``Range`` requests.

Keys are relative, ``/``-separated paths of segments made of ``[A-Za-z0-9._-]`` that do not start
with a dot (so no ``..``, no hidden files, no absolute paths): the same key is safe as a file
path and as an object name.
"""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from pipeline.errors import BadInputError, DfdError

__all__ = [
    "MAX_KEY_LENGTH",
    "ArtefactInfo",
    "ArtefactNotFoundError",
    "ArtefactStorage",
    "InvalidArtefactKeyError",
    "LocalStorage",
    "RangeNotSatisfiableError",
    "S3Storage",
    "private_dir",
    "validate_key",
    "validate_prefix",
]

MAX_KEY_LENGTH = 512
_SEGMENT = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
_DEFAULT_CHUNK = 256 * 1024
_OCTET_STREAM = "application/octet-stream"


class ArtefactNotFoundError(DfdError):
    kind = "not-found"
    title = "Artefact not found"


class InvalidArtefactKeyError(BadInputError):
    kind = "invalid-input"
    title = "Invalid artefact key"


class RangeNotSatisfiableError(DfdError):
    kind = "range-not-satisfiable"
    title = "Range not satisfiable"


class ArtefactInfo(NamedTuple):
    """What the HTTP layer needs for headers: ``size`` in bytes and the stored content type."""

    key: str
    size: int
    content_type: str


def validate_key(key: str) -> str:
    """``key`` if it is a valid artefact key, else :class:`InvalidArtefactKeyError`."""
    if not key or len(key) > MAX_KEY_LENGTH:
        raise InvalidArtefactKeyError(f"artefact keys are 1..{MAX_KEY_LENGTH} characters long")
    for segment in key.split("/"):
        if not _SEGMENT.fullmatch(segment):
            raise InvalidArtefactKeyError(
                f"invalid artefact key {key[:100]!r}: use '/'-separated names of letters, digits, "
                "'.', '_' and '-' that do not start with '.'"
            )
    return key


def validate_prefix(prefix: str) -> str:
    """A non-empty key prefix: a valid key, optionally ending with ``/``."""
    validate_key(prefix.removesuffix("/"))
    return prefix


def _check_range(start: int | None, end: int | None) -> tuple[int, int | None]:
    first = 0 if start is None else start
    if first < 0 or (end is not None and end < first):
        raise ValueError(f"invalid byte range start={start} end={end}: need 0 <= start <= end")
    return first, end


class ArtefactStorage(ABC):
    """Where artefacts live. Every method validates ``key`` first (see :func:`validate_key`)."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes, content_type: str = _OCTET_STREAM) -> None:
        """Store ``data`` under ``key``, replacing any previous artefact."""

    @abstractmethod
    def put_file(self, key: str, path: str | Path, content_type: str = _OCTET_STREAM) -> None:
        """Store the file at ``path`` under ``key`` (streamed, not read into memory at once)."""

    @abstractmethod
    def stat(self, key: str) -> ArtefactInfo:
        """Size and content type; :class:`ArtefactNotFoundError` if absent."""

    def exists(self, key: str) -> bool:
        try:
            self.stat(key)
        except ArtefactNotFoundError:
            return False
        return True

    def get_bytes(self, key: str) -> bytes:
        """The whole artefact; :class:`ArtefactNotFoundError` if absent."""
        return b"".join(self.iter_bytes(key))

    @abstractmethod
    def open(self, key: str) -> BinaryIO:
        """A readable binary stream of the artefact (close it); raises if absent."""

    @abstractmethod
    def iter_bytes(
        self,
        key: str,
        start: int | None = None,
        end: int | None = None,
        chunk_size: int = _DEFAULT_CHUNK,
    ) -> Iterator[bytes]:
        """Bytes ``start..end`` *inclusive* (as in an HTTP ``Range`` header), in chunks of at
        most ``chunk_size``; ``end`` past the last byte is clamped to it.

        Errors are raised by this call, not by the first ``next()``: absent key ->
        :class:`ArtefactNotFoundError`; ``start`` at or past the size ->
        :class:`RangeNotSatisfiableError`; ``start < 0`` or ``end < start`` -> ``ValueError``.
        """

    @abstractmethod
    def list_keys(self, prefix: str) -> list[str]:
        """Sorted keys that start with ``prefix`` (a plain string prefix)."""

    def delete_prefix(self, prefix: str) -> int:
        """Delete every artefact whose key starts with ``prefix``; returns how many."""
        keys = self.list_keys(validate_prefix(prefix))
        self._delete_keys(keys)
        return len(keys)

    @abstractmethod
    def _delete_keys(self, keys: list[str]) -> None: ...

    def local_path(self, key: str) -> Path | None:
        """The file holding the artefact where the backend is a local folder, else ``None``."""
        return None

    def presigned_url(self, key: str, expires_s: int = 3600) -> str | None:
        """A time-limited URL a client can fetch directly, where the backend offers one."""
        return None

    def download_url(self, key: str) -> str | None:
        """Where a client should download ``key`` from instead of through the service (large
        bodies off the Serve proxy), or None to stream it here."""
        return None

    def upload_url(self, key: str) -> str | None:
        """A time-limited URL a client can ``PUT`` the bytes of ``key`` to directly (large
        uploads off the Serve proxy), or None where uploads come through the service."""
        return None

    def move(self, src: str, dst: str, content_type: str = _OCTET_STREAM) -> None:
        """Store the artefact ``src`` under ``dst`` with ``content_type``, then delete ``src``
        (streamed through a temporary file; backends that can do better override this)."""
        validate_key(dst)
        with tempfile.TemporaryDirectory(prefix="dfd-move-") as tmp:
            local = Path(tmp) / "artefact"
            with self.open(src) as source, open(local, "wb") as f:
                shutil.copyfileobj(source, f, _DEFAULT_CHUNK)
            self.put_file(dst, local, content_type)
        self._delete_keys([src])


# ---------------------------------------------------------------------------------------------
# Local folder


class LocalStorage(ArtefactStorage):
    """Artefacts as files under ``root`` (created on construction). Content types are kept in
    ``root/.meta`` (keys cannot start with a dot, so it never collides). Writes go to a hidden
    temporary file first and are renamed into place: readers never see half a file.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        private_dir(self.root)
        self._meta_root = self.root / ".meta"

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def _meta(self, key: str) -> Path:
        return self._meta_root / (key + ".json")

    def _write(self, key: str, fill: Any, content_type: str) -> None:
        target = self._path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            meta = self._meta(key)
            meta.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.parent / f".tmp-{secrets.token_hex(8)}"
            try:
                with open(tmp, "wb") as f:
                    fill(f)
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
        except (NotADirectoryError, IsADirectoryError, FileExistsError) as exc:
            raise InvalidArtefactKeyError(
                f"artefact key {key!r} clashes with an existing key that is its folder or file"
            ) from exc
        meta_tmp = meta.parent / f".tmp-{secrets.token_hex(8)}"
        meta_tmp.write_text(json.dumps({"content_type": content_type}))
        os.replace(meta_tmp, meta)

    def put_bytes(self, key: str, data: bytes, content_type: str = _OCTET_STREAM) -> None:
        self._write(key, lambda f: f.write(data), content_type)

    def put_file(self, key: str, path: str | Path, content_type: str = _OCTET_STREAM) -> None:
        with open(path, "rb") as src:
            self._write(key, lambda f: shutil.copyfileobj(src, f, _DEFAULT_CHUNK), content_type)

    def stat(self, key: str) -> ArtefactInfo:
        path = self._path(key)
        try:
            size = path.stat().st_size
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise ArtefactNotFoundError(f"no artefact {key}") from exc
        if not path.is_file():
            raise ArtefactNotFoundError(f"no artefact {key}")
        try:
            content_type = json.loads(self._meta(key).read_text())["content_type"]
        except (FileNotFoundError, NotADirectoryError, ValueError, KeyError):
            content_type = _OCTET_STREAM
        return ArtefactInfo(key, size, str(content_type))

    def open(self, key: str) -> BinaryIO:
        path = self._path(key)
        try:
            if path.is_file():
                return open(path, "rb")
        except (FileNotFoundError, NotADirectoryError):
            pass
        raise ArtefactNotFoundError(f"no artefact {key}")

    def iter_bytes(
        self,
        key: str,
        start: int | None = None,
        end: int | None = None,
        chunk_size: int = _DEFAULT_CHUNK,
    ) -> Iterator[bytes]:
        first, last = _check_range(start, end)
        f = self.open(key)
        try:
            size = os.fstat(f.fileno()).st_size
            if (start is not None or end is not None) and first >= size:
                raise RangeNotSatisfiableError(f"byte {first} is past the end of {key} ({size} B)")
            last = size - 1 if last is None else min(last, size - 1)
            f.seek(first)
        except BaseException:
            f.close()
            raise
        return _file_chunks(f, last - first + 1, chunk_size)

    def list_keys(self, prefix: str) -> list[str]:
        validate_prefix(prefix)
        # Walk only the deepest folder the prefix fully names, then filter by string prefix.
        folder = self.root / prefix.rpartition("/")[0]
        if not folder.is_dir():
            return []
        keys = []
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                if name.startswith("."):
                    continue
                key = name if rel == "." else f"{rel}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def _delete_keys(self, keys: list[str]) -> None:
        for key in keys:
            self._path(key).unlink(missing_ok=True)
            self._meta(key).unlink(missing_ok=True)
            for base in (self.root, self._meta_root):
                _prune_empty_dirs((base / key).parent, stop=base)

    def local_path(self, key: str) -> Path:
        """The artefact's file; :class:`ArtefactNotFoundError` if absent."""
        path = self._path(key)
        if not path.is_file():
            raise ArtefactNotFoundError(f"no artefact {key}")
        return path


def private_dir(path: Path) -> None:
    """Create the folder ``path`` for its owner only (0700), unless it exists (it keeps its
    mode); parents are created as usual."""
    try:
        path.mkdir(parents=True, mode=0o700)
    except FileExistsError:
        return
    os.chmod(path, 0o700)  # mkdir's mode is masked by the umask


def _file_chunks(f: BinaryIO, remaining: int, chunk_size: int) -> Iterator[bytes]:
    with f:
        while remaining > 0:
            chunk = f.read(min(chunk_size, remaining))
            if not chunk:
                return
            remaining -= len(chunk)
            yield chunk


def _prune_empty_dirs(folder: Path, stop: Path) -> None:
    while folder != stop and stop in folder.parents:
        try:
            folder.rmdir()
        except OSError:  # not empty (or already gone): stop here
            return
        folder = folder.parent


# ---------------------------------------------------------------------------------------------
# S3-compatible object storage


class _BodyReader(io.RawIOBase):
    """A botocore ``StreamingBody`` as a raw stream, so :meth:`S3Storage.open` returns a real
    buffered file object."""

    def __init__(self, body: Any) -> None:
        self._body = body

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._body.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


class S3Storage(ArtefactStorage):
    """Artefacts as objects ``prefix + key`` in ``bucket`` of an S3-compatible server.

    ``endpoint_url`` is the server (e.g. ``http://minio:9000``; ``None`` for AWS). Path-style
    addressing is used with a custom endpoint, as MinIO expects. The boto3 client is created on
    construction (no network until the first call) and is safe to share between threads.
    """

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        region: str = "us-east-1",
        prefix: str = "",
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 60.0,
        public_endpoint_url: str | None = None,
        download_expires_s: int = 900,
        upload_expires_s: int = 3600,
    ) -> None:
        import boto3
        from botocore.config import Config

        if prefix:
            validate_prefix(prefix)
            prefix = prefix.rstrip("/") + "/"
        self.bucket = bucket
        self.prefix = prefix
        self.region = region
        self._client: Any = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            region_name=region,
            config=Config(
                s3={"addressing_style": "path" if endpoint_url else "auto"},
                signature_version="s3v4",
                connect_timeout=connect_timeout_s,
                read_timeout=read_timeout_s,
                retries={"max_attempts": 3, "mode": "standard"},
            ),
        )
        self.download_expires_s = download_expires_s
        self.upload_expires_s = upload_expires_s
        #: Presigns URLs with the address clients reach the bucket at (signing makes no call).
        self._public: Any = None
        if public_endpoint_url is not None:
            self._public = boto3.client(
                "s3",
                endpoint_url=public_endpoint_url,
                aws_access_key_id=access_key,
                aws_secret_access_key=secret_key,
                region_name=region,
                config=Config(s3={"addressing_style": "path"}, signature_version="s3v4"),
            )

    def _object(self, key: str) -> str:
        return self.prefix + validate_key(key)

    @staticmethod
    def _code(exc: Exception) -> str:
        return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (handy for a fresh MinIO)."""
        from botocore.exceptions import ClientError

        try:
            self._client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            if self._code(exc) not in {"404", "NoSuchBucket", "NotFound"}:
                raise
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        if self.region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        self._client.create_bucket(**kwargs)

    def put_bytes(self, key: str, data: bytes, content_type: str = _OCTET_STREAM) -> None:
        self._client.put_object(
            Bucket=self.bucket, Key=self._object(key), Body=data, ContentType=content_type
        )

    def put_file(self, key: str, path: str | Path, content_type: str = _OCTET_STREAM) -> None:
        # upload_file switches to multipart for large files.
        self._client.upload_file(
            str(path), self.bucket, self._object(key), ExtraArgs={"ContentType": content_type}
        )

    def stat(self, key: str) -> ArtefactInfo:
        from botocore.exceptions import ClientError

        try:
            head = self._client.head_object(Bucket=self.bucket, Key=self._object(key))
        except ClientError as exc:
            if self._code(exc) in {"404", "NoSuchKey", "NotFound"}:
                raise ArtefactNotFoundError(f"no artefact {key}") from exc
            raise
        return ArtefactInfo(
            key, int(head["ContentLength"]), str(head.get("ContentType") or _OCTET_STREAM)
        )

    def _get(self, key: str, byte_range: str | None = None) -> Any:
        from botocore.exceptions import ClientError

        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self._object(key)}
        if byte_range is not None:
            kwargs["Range"] = byte_range
        try:
            return self._client.get_object(**kwargs)
        except ClientError as exc:
            code = self._code(exc)
            if code in {"NoSuchKey", "404", "NotFound"}:
                raise ArtefactNotFoundError(f"no artefact {key}") from exc
            if code in {"InvalidRange", "416"}:
                raise RangeNotSatisfiableError(
                    f"range {byte_range} is past the end of {key}"
                ) from exc
            raise

    def open(self, key: str) -> BinaryIO:
        body = self._get(key)["Body"]
        return io.BufferedReader(_BodyReader(body), buffer_size=_DEFAULT_CHUNK)

    def iter_bytes(
        self,
        key: str,
        start: int | None = None,
        end: int | None = None,
        chunk_size: int = _DEFAULT_CHUNK,
    ) -> Iterator[bytes]:
        first, last = _check_range(start, end)
        byte_range = None
        if start is not None or end is not None:
            byte_range = f"bytes={first}-" + ("" if last is None else str(last))
        body = self._get(key, byte_range)["Body"]
        return _body_chunks(body, chunk_size)

    def list_keys(self, prefix: str) -> list[str]:
        validate_prefix(prefix)
        keys: list[str] = []
        paginator = self._client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
            keys.extend(obj["Key"][len(self.prefix) :] for obj in page.get("Contents", []))
        return sorted(keys)

    def _delete_keys(self, keys: list[str]) -> None:
        for i in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            batch = [{"Key": self.prefix + k} for k in keys[i : i + 1000]]
            response = self._client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
            )
            if response.get("Errors"):
                first = response["Errors"][0]
                raise OSError(f"S3 refused to delete {first.get('Key')}: {first.get('Message')}")

    def presigned_url(self, key: str, expires_s: int = 3600) -> str:
        """A GET URL valid for ``expires_s`` seconds (no request to the server is made)."""
        return self._presign(self._client, key, expires_s)

    def download_url(self, key: str) -> str | None:
        """A presigned GET URL at the public endpoint, when one is configured."""
        if self._public is None:
            return None
        return self._presign(self._public, key, self.download_expires_s)

    def upload_url(self, key: str) -> str | None:
        """A presigned PUT URL at the public endpoint, when one is configured."""
        if self._public is None:
            return None
        return self._presign(self._public, key, self.upload_expires_s, "put_object")

    def move(self, src: str, dst: str, content_type: str = _OCTET_STREAM) -> None:
        """A copy inside the bucket (no bytes through this process; objects up to 5 GB), then
        the delete of ``src``."""
        from botocore.exceptions import ClientError

        try:
            self._client.copy_object(
                Bucket=self.bucket,
                Key=self._object(dst),
                CopySource={"Bucket": self.bucket, "Key": self._object(src)},
                ContentType=content_type,
                MetadataDirective="REPLACE",
            )
        except ClientError as exc:
            if self._code(exc) in {"404", "NoSuchKey", "NotFound"}:
                raise ArtefactNotFoundError(f"no artefact {src}") from exc
            raise
        self._delete_keys([validate_key(src)])

    def _presign(self, client: Any, key: str, expires_s: int, operation: str = "get_object") -> str:
        return str(
            client.generate_presigned_url(
                operation,
                Params={"Bucket": self.bucket, "Key": self._object(key)},
                ExpiresIn=int(expires_s),
            )
        )


def _body_chunks(body: Any, chunk_size: int) -> Iterator[bytes]:
    try:
        yield from body.iter_chunks(chunk_size)
    finally:
        body.close()

"""Receiving a multipart upload: the body counted as it arrives, the file spooled to disk,
hashed (the cache's source key) and its format sniffed before a job is created."""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from pipeline.media import IMAGE_FORMATS, VIDEO_FORMATS, sniff_format
from serve.problems import ProblemError, make_problem, problem_from_exception, problem_response

__all__ = [
    "JSON_BODY_LIMIT",
    "Admission",
    "BodyLimit",
    "Upload",
    "clean_filename",
    "media_format_of",
    "receive_upload",
    "spool_upload",
    "too_large",
]

#: Multipart framing around an upload may add this much to ``max_upload_bytes``.
_MULTIPART_SLACK = 1 << 20
#: Any body that is not a multipart upload (JSON, forms): far above any valid request (a URL is
#: at most 8 KiB), far below what would cost memory.
JSON_BODY_LIMIT = 64 * 1024
_CHUNK = 1 << 20


@dataclass
class Upload:
    """A received upload: the spooled file, its cleaned name, sniffed format, SHA-256 (hex),
    size in bytes, and the multipart body's other (text) fields."""

    path: Path
    filename: str
    media_format: str
    sha256: str
    size: int
    fields: dict[str, str] = field(default_factory=dict)


def clean_filename(name: str | None) -> str:
    """The client's file name without folders or unprintable characters (at most 200)."""
    base = (name or "upload").replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(c for c in base if c.isprintable())[:200].strip()
    return base or "upload"


async def receive_upload(request: Request, *, limit: int, only_field: bool) -> Upload:
    """The multipart body's ``file`` spooled to a temporary file (the caller deletes it), with
    the body's other fields; ``limit`` in bytes. ``only_field``: refuse any other field."""
    refused = too_large(limit)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + _MULTIPART_SLACK:
        raise refused
    received = 0

    async def receive() -> Any:
        # Count the body as it arrives: a client without Content-Length cannot fill the disk.
        nonlocal received
        message = await request.receive()
        if message.get("type") == "http.request":
            received += len(message.get("body", b""))
            if received > limit + _MULTIPART_SLACK:
                raise refused
        return message

    form = await Request(request.scope, receive=receive).form(max_files=1, max_fields=8)
    try:
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        part = form.get("file")
        if not isinstance(part, UploadFile):
            raise ProblemError.of(
                "invalid-input", "the multipart body needs a file in the field 'file'"
            )
        if only_field and (set(form.keys()) - {"file"}):
            raise ProblemError.of("invalid-input", "the multipart body may only hold 'file'")
        return await run_in_threadpool(spool_upload, part, fields, limit)
    finally:
        await form.close()


def media_format_of(head: bytes, size: int) -> str:
    """The format an upload's first bytes ``head`` name (:func:`~pipeline.media.sniff_format`);
    refuses an empty upload (``size`` 0) and anything but a supported image or video."""
    if size == 0:
        raise ProblemError.of("empty-media", "the uploaded file is empty")
    media_format = sniff_format(head)
    if media_format not in IMAGE_FORMATS and media_format not in VIDEO_FORMATS:
        what = f"'{media_format}'" if media_format else "an unknown format"
        raise ProblemError.of(
            "unsupported-media",
            f"the upload is {what}; send an image (JPEG, PNG, WebP, BMP, GIF) or a video "
            "(MP4, MOV, WebM, MKV, AVI, ...)",
        )
    return media_format


def too_large(limit: int) -> ProblemError:
    """The problem of an upload over ``limit`` bytes."""
    return ProblemError.of("too-large", f"uploads are limited to {limit / 1024**2:.0f} MiB")


def spool_upload(part: UploadFile, fields: dict[str, str], limit: int) -> Upload:
    """``part`` copied to a temporary file while hashing it and sniffing its format; refuses
    empty, oversized (``limit`` bytes) and unsupported media."""
    digest = hashlib.sha256()
    size = 0
    head = b""
    tmp = tempfile.NamedTemporaryFile(prefix="dfd-upload-", delete=False)  # noqa: SIM115
    try:
        with tmp:
            part.file.seek(0)
            while chunk := part.file.read(_CHUNK):
                size += len(chunk)
                if size > limit:
                    raise too_large(limit)
                if len(head) < 512:
                    head += chunk[: 512 - len(head)]
                digest.update(chunk)
                tmp.write(chunk)
        media_format = media_format_of(head, size)
    except BaseException:
        Path(tmp.name).unlink(missing_ok=True)
        raise
    return Upload(
        Path(tmp.name),
        clean_filename(part.filename),
        media_format,
        digest.hexdigest(),
        size,
        fields,
    )


class BodyLimit:
    """ASGI middleware: every request body is bounded before a route reads it.

    A multipart upload may be ``upload_limit`` bytes (plus its framing), any other body
    :data:`JSON_BODY_LIMIT`. A declared ``Content-Length`` over the limit is answered ``413
    too-large`` at once, without reading the body; a body that grows past it while it streams
    (chunked, or a dishonest length) fails the read with the same problem, so no route ever
    holds more than the limit in memory.
    """

    def __init__(self, app: Any, upload_limit: int) -> None:
        self.app = app
        self.upload_limit = upload_limit

    def _limit(self, headers: dict[bytes, bytes]) -> int:
        ctype = headers.get(b"content-type", b"").lower()
        if ctype.startswith(b"multipart/form-data"):
            return self.upload_limit + _MULTIPART_SLACK
        return JSON_BODY_LIMIT

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        limit = self._limit(headers)
        refused = ProblemError.of(
            "too-large",
            f"this request's body is limited to {limit:,} bytes"
            if limit == JSON_BODY_LIMIT
            else f"uploads are limited to {self.upload_limit / 1024**2:.0f} MiB",
        )
        problem = problem_from_exception(refused, instance=scope.get("path"))
        too_large = problem_response(problem, {"Connection": "close"})
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await too_large(scope, receive, send)
            return
        received, started = 0, False

        async def bounded() -> Any:
            nonlocal received
            message = await receive()
            if message.get("type") == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise refused
            return message

        async def tracked(message: Any) -> None:
            nonlocal started
            started = started or message.get("type") == "http.response.start"
            await send(message)

        try:
            await self.app(scope, bounded, tracked)
        except Exception:
            # The refusal reaches here from wherever the body was read, possibly wrapped (an
            # ExceptionGroup from a middleware's task group): answer it unless a response began.
            if received <= limit or started:
                raise
            await too_large(scope, receive, send)


class Admission:
    """ASGI middleware: at most ``limit`` requests at once in this process; the next ones are
    answered ``503 overloaded`` with ``Retry-After`` at once (liveness, ``/healthz``, always
    passes), so that a crowd meets the service's own problem, not a proxy's queue."""

    EXEMPT = frozenset({"/healthz"})

    def __init__(self, app: Any, limit: int, retry_after_s: int = 5) -> None:
        self.app = app
        self.limit = limit
        self.retry_after_s = retry_after_s
        self.in_flight = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") in self.EXEMPT:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            problem = make_problem(
                "overloaded",
                f"the service is handling {self.limit} requests; retry in {self.retry_after_s} s",
                instance=scope.get("path"),
            )
            response = problem_response(problem, {"Retry-After": str(self.retry_after_s)})
            await response(scope, receive, send)
            return
        self.in_flight += 1  # one event loop: no lock needed between awaits
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1

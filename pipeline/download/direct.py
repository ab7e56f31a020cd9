"""The direct downloader: one HTTP(S) GET, streamed to disk, with retries and resumption.

Redirects are followed by hand (at most ``max_redirects``, each hop through the address guard);
transient failures are retried with exponential backoff, resuming the bytes already on disk
where the server allows (``Range`` with ``If-Range``). Every limit holds while streaming, and a
body that turns out to be a web page, or a redirect to a platform, raises
:class:`NeedsExtractor` for yt-dlp to take over.
"""

from __future__ import annotations

import logging
import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import httpx

from pipeline.download.guard import GuardedTransport, preflight
from pipeline.download.settings import Downloaded, DownloadSettings, mib, total_timeout_error
from pipeline.download.sniff import SNIFF_BYTES, looks_like_html
from pipeline.download.urls import is_platform_url, normalise_url, short_url
from pipeline.errors import DfdError, DownloadError, DownloadTimeoutError, TooLargeError
from pipeline.media import sha256_file

log = logging.getLogger(__name__)

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# Worth another try: the server or the path to it may recover. 4xx other than these will not.
_TRANSIENT_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


class NeedsExtractor(Exception):
    """The direct fetch found a web page (or a platform redirect) at ``url``."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.url = url


class _Transient(Exception):
    """A failure worth retrying; ``error`` is what the user sees if retries run out."""

    def __init__(self, error: DfdError) -> None:
        super().__init__(error.detail)
        self.error = error


@dataclass
class _Partial:
    """Bytes already on disk from an interrupted attempt, and what is needed to resume."""

    path: Path
    size: int = 0
    validator: str | None = None  # ETag or Last-Modified of the response being resumed
    url: str | None = None  # the URL that served it (after redirects)


def fetch_direct(
    source: str, url: str, dest_dir: Path, settings: DownloadSettings, deadline: float
) -> Downloaded:
    partial = _Partial(path=dest_dir / f".part-{uuid.uuid4().hex}")
    timeout = httpx.Timeout(
        connect=settings.connect_timeout_s,
        read=settings.read_timeout_s,
        write=settings.read_timeout_s,
        pool=settings.connect_timeout_s,
    )
    headers = {"User-Agent": settings.user_agent, "Accept-Encoding": "identity"}
    try:
        with httpx.Client(
            transport=GuardedTransport(settings),
            timeout=timeout,
            headers=headers,
            follow_redirects=False,
            trust_env=False,
        ) as client:
            for attempt in range(settings.retries + 1):
                try:
                    final_url, content_type = _attempt(client, url, partial, settings, deadline)
                    break
                except _Transient as failure:
                    if attempt == settings.retries:
                        raise failure.error from failure
                    delay = min(settings.backoff_max_s, settings.backoff_s * 2**attempt)
                    if time.monotonic() + delay >= deadline:
                        raise total_timeout_error(settings) from failure
                    log.warning(
                        "download attempt %d of %s failed (%s); retrying in %.1f s",
                        attempt + 1,
                        url,
                        failure.error.detail,
                        delay,
                    )
                    time.sleep(delay)
        sha256 = sha256_file(partial.path)
        final_path = dest_dir / f"{sha256}.bin"
        os.replace(partial.path, final_path)
    finally:
        partial.path.unlink(missing_ok=True)
    return Downloaded(
        path=final_path,
        url=source,
        final_url=final_url,
        size_bytes=final_path.stat().st_size,
        sha256=sha256,
        method="http",
        content_type=content_type,
        title=None,
    )


def _attempt(
    client: httpx.Client,
    url: str,
    partial: _Partial,
    settings: DownloadSettings,
    deadline: float,
) -> tuple[str, str | None]:
    """One GET with redirects followed by hand; resumes ``partial`` where it can.

    Returns (final URL, Content-Type). Raises ``_Transient`` for retryable failures.
    """
    current = partial.url if partial.size and partial.url else url
    for _ in range(settings.max_redirects + 1):
        if settings.proxy is not None:
            preflight(current, settings)
        request_headers = {}
        if partial.size and partial.validator:
            request_headers = {"Range": f"bytes={partial.size}-", "If-Range": partial.validator}
        try:
            with client.stream("GET", current, headers=request_headers) as response:
                status = response.status_code
                if status in _REDIRECT_STATUSES and "location" in response.headers:
                    target = normalise_url(str(response.url.join(response.headers["location"])))
                    if is_platform_url(target):
                        raise NeedsExtractor(target)
                    current = target
                    continue
                if status >= 400:
                    error = DownloadError(
                        f"HTTP {status} {response.reason_phrase} from {short_url(current)}"
                    )
                    if status in _TRANSIENT_STATUSES:
                        raise _Transient(error)
                    raise error
                _receive(response, current, partial, settings, deadline)
                return current, response.headers.get("content-type")
        except httpx.TimeoutException as exc:
            raise _Transient(
                DownloadTimeoutError(
                    f"no data from {short_url(current)} within the "
                    f"{_timeout_kind(exc)} timeout; the server is too slow or unreachable"
                )
            ) from exc
        except (httpx.NetworkError, httpx.RemoteProtocolError, httpx.ProxyError) as exc:
            raise _Transient(
                DownloadError(f"connection to {short_url(current)} failed: {exc or type(exc)}")
            ) from exc
    raise DownloadError(f"more than {settings.max_redirects} redirects from {short_url(url)}")


def _receive(
    response: httpx.Response,
    url: str,
    partial: _Partial,
    settings: DownloadSettings,
    deadline: float,
) -> None:
    """Stream the body of a 2xx response into ``partial.path``, enforcing every limit."""
    resuming = response.status_code == 206 and _resumes_at(response) == partial.size > 0
    if response.status_code == 206 and not resuming:
        partial.size, partial.validator = 0, None  # start over on the next attempt
        raise _Transient(DownloadError(f"{short_url(url)} answered a resume with the wrong range"))
    if not resuming:
        partial.size = 0  # the server sent the whole file (again), or we had nothing
    announced = _int_header(response, "content-length")
    if announced is not None and partial.size + announced > settings.max_bytes:
        raise TooLargeError(
            f"the file at {short_url(url)} is {mib(partial.size + announced)}, over the "
            f"{mib(settings.max_bytes)} limit"
        )
    partial.url = url
    partial.validator = response.headers.get("etag") or response.headers.get("last-modified")
    if response.headers.get("accept-ranges", "").lower() != "bytes" and not resuming:
        partial.validator = None  # the server cannot resume: a retry starts over
    with partial.path.open("ab" if resuming else "wb") as out:
        # Chunks are written as they arrive (no re-chunking buffer), so that what an interrupted
        # attempt received is on disk and can be resumed. The first bytes are held back until
        # there are enough to tell an HTML page from a media file.
        head = b"" if not resuming else None
        for chunk in response.iter_bytes():
            if time.monotonic() > deadline:
                raise total_timeout_error(settings)
            if head is not None:
                head += chunk
                if len(head) < SNIFF_BYTES:
                    continue
                chunk, head = head, None
                if looks_like_html(chunk[:SNIFF_BYTES]):
                    raise NeedsExtractor(url)
            _append(out, chunk, partial, url, settings, deadline)
        if head:  # a body shorter than the sniffing window
            if looks_like_html(head):
                raise NeedsExtractor(url)
            _append(out, head, partial, url, settings, deadline)
    if partial.size == 0:
        raise DownloadError(f"{short_url(url)} answered with an empty body")


def _append(
    out: BinaryIO,
    chunk: bytes,
    partial: _Partial,
    url: str,
    settings: DownloadSettings,
    deadline: float,
) -> None:
    out.write(chunk)
    partial.size += len(chunk)
    if partial.size > settings.max_bytes:
        raise TooLargeError(
            f"the file at {short_url(url)} is larger than the {mib(settings.max_bytes)} "
            "limit (stopped while downloading)"
        )


def _resumes_at(response: httpx.Response) -> int | None:
    match = re.match(r"bytes (\d+)-\d+/(\d+|\*)", response.headers.get("content-range", ""))
    return int(match.group(1)) if match else None


def _int_header(response: httpx.Response, name: str) -> int | None:
    value = response.headers.get(name)
    return int(value) if value is not None and value.strip().isdigit() else None


def _timeout_kind(exc: httpx.TimeoutException) -> str:
    if isinstance(exc, httpx.ConnectTimeout):
        return "connect"
    return "read" if isinstance(exc, httpx.ReadTimeout) else "network"

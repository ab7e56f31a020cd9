"""URL -> local file: direct HTTP(S), Dropbox and Google Drive links, yt-dlp for platforms.

Paper section 3.1 ("Download Media") and 5.1: links to files on file-sharing services and to
posts on social platforms (YouTube, Twitter/X, Facebook...) must all work; yt-dlp is the fast
back end for platforms, and the downloader may need to run behind a proxy such as Tor.

A public service that fetches URLs it is given is an SSRF risk, so:

* only ``http``/``https`` URLs are accepted (:func:`normalise_url`);
* every TCP connection the direct downloader makes goes through :class:`_GuardedBackend`, which
  resolves the host, refuses it if *any* address is loopback, private, link-local, multicast,
  reserved or unspecified, and then connects to the checked address itself. Checking at connect
  time covers every redirect hop (redirects are followed by hand, at most ``max_redirects``) and
  closes the DNS-rebinding gap between "check" and "connect";
* yt-dlp makes its own connections, so for it the page URL and every media URL it extracted are
  checked the same way before it downloads anything. Redirects *inside* yt-dlp's download are not
  re-checked: the residual risk of the yt-dlp path, stated here so nobody assumes otherwise.

Size, duration and time limits hold on both paths; the file is streamed to disk, never held in
memory, and a file that breaks a limit is deleted.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import logging
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal
from urllib.parse import parse_qsl, urlencode

import httpcore
import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipeline.errors import (
    DfdError,
    DownloadError,
    DownloadTimeoutError,
    ForbiddenAddressError,
    InvalidUrlError,
    TooLargeError,
)

log = logging.getLogger(__name__)

DownloadMethod = Literal["http", "yt-dlp"]

#: Sites whose pages are handled by a yt-dlp extractor (a host matches itself and subdomains).
PLATFORM_DOMAINS: frozenset[str] = frozenset(
    {
        "youtube.com",
        "youtu.be",
        "youtube-nocookie.com",
        "x.com",
        "twitter.com",
        "facebook.com",
        "fb.watch",
        "fb.com",
        "instagram.com",
        "threads.net",
        "tiktok.com",
        "vimeo.com",
        "dailymotion.com",
        "dai.ly",
        "twitch.tv",
        "reddit.com",
        "redd.it",
        "streamable.com",
        "rumble.com",
        "bilibili.com",
        "vk.com",
        "ok.ru",
        "linkedin.com",
        "bsky.app",
        "t.me",
        "telegram.org",
        "bitchute.com",
        "odysee.com",
    }
)

_DEFAULT_PORTS = {"http": 80, "https": 443}
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# Worth another try: the server or the path to it may recover. 4xx other than these will not.
_TRANSIENT_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
_CHUNK = 1 << 20
_SNIFF_BYTES = 512
_GDRIVE_FILE_PATH = re.compile(r"^/file/d/([A-Za-z0-9_-]+)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# WHATWG MIME sniffing: a body starting with one of these tags (then space or '>') is HTML.
_HTML_TAGS = (
    b"<!doctype html",
    b"<html",
    b"<head",
    b"<script",
    b"<iframe",
    b"<h1",
    b"<div",
    b"<font",
    b"<table",
    b"<a",
    b"<style",
    b"<title",
    b"<b",
    b"<body",
    b"<br",
    b"<p",
    b"<!--",
    b"<?xml",
    b"<meta",
    b"<link",
)


class DownloadSettings(BaseModel):
    """Limits and network options of :func:`fetch`. Defaults suit a laptop on a home network."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_bytes: int = Field(default=2 * 1024**3, gt=0, description="largest file accepted, bytes")
    max_duration_s: float = Field(
        default=3600.0,
        gt=0,
        description="longest video accepted, seconds; checked before download on the yt-dlp "
        "path, and by the caller (from media.probe) for direct links",
    )
    connect_timeout_s: float = Field(default=10.0, gt=0, description="TCP/TLS connect timeout")
    read_timeout_s: float = Field(default=30.0, gt=0, description="longest silence while reading")
    total_timeout_s: float = Field(
        default=1800.0, gt=0, description="wall-clock bound on one fetch, retries included"
    )
    retries: int = Field(
        default=3, ge=0, le=10, description="extra attempts after transient failures"
    )
    backoff_s: float = Field(default=0.5, ge=0, description="wait before the first retry; doubles")
    backoff_max_s: float = Field(default=8.0, ge=0, description="longest wait between retries")
    max_redirects: int = Field(default=10, ge=0, le=30)
    proxy: str | None = Field(
        default=None, description="http://, https://, socks5:// or socks5h:// proxy, e.g. Tor's"
    )
    allow_private_addresses: bool = Field(
        default=False,
        description="allow loopback/private targets (tests, trusted internal use only)",
    )
    allowed_private_hosts: frozenset[str] = Field(
        default=frozenset(),
        description="host names exempt from the private-address check, e.g. an internal "
        "object store; exact, case-insensitive match on the URL's host",
    )
    user_agent: str = "Mozilla/5.0 (compatible; dfd-service; DeepFake detection)"
    # Video-only streams are fine (faces need no audio) and give 1080p where the platform offers
    # it only as DASH; H.264 first because every OpenCV FFmpeg build decodes it.
    ytdlp_format: str = Field(
        default="bv*[height<=1080][vcodec^=avc1]/bv*[height<=1080][ext=mp4]/b[height<=1080]/bv*/b",
        description="yt-dlp format selector; must pick a single file (no '+': no ffmpeg merge)",
    )

    @field_validator("proxy")
    @classmethod
    def _proxy_scheme(cls, value: str | None) -> str | None:
        if value is None:
            return None
        scheme = value.split("://", 1)[0].lower() if "://" in value else ""
        if scheme not in ("http", "https", "socks5", "socks5h"):
            raise ValueError("proxy must be an http://, https://, socks5:// or socks5h:// URL")
        return value

    @field_validator("allowed_private_hosts")
    @classmethod
    def _lower_hosts(cls, value: frozenset[str]) -> frozenset[str]:
        return frozenset(h.strip().lower().rstrip(".") for h in value)

    @field_validator("ytdlp_format")
    @classmethod
    def _single_file_format(cls, value: str) -> str:
        if "+" in value:
            raise ValueError("ytdlp_format must select single files: merging needs ffmpeg")
        return value


@dataclass(frozen=True)
class Downloaded:
    """A downloaded file. Its media type is for ``media.probe`` to find out from the bytes."""

    path: Path  # <dest_dir>/<sha256>.bin
    url: str  # as given by the user
    final_url: str  # after share-link rewriting and redirects (the media URL for yt-dlp)
    size_bytes: int
    sha256: str
    method: DownloadMethod
    content_type: str | None  # as announced by the server, unverified
    title: str | None  # the platform's title (yt-dlp), else None


# --- URLs ----------------------------------------------------------------------------------


def normalise_url(url: str) -> str:
    """The canonical form of an http(s) URL, used as the cache key and for every request.

    Lower-cases scheme and host (IDNA-encoding international names), drops the default port,
    the fragment and an empty path's absence (``http://a`` -> ``http://a/``); path and query are
    kept as they are (only characters that are invalid in a URL get percent-encoded).

    Raises:
        InvalidUrlError: not an absolute http(s) URL with a host, or one carrying credentials.
    """
    text = url.strip() if isinstance(url, str) else ""
    if not text:
        raise InvalidUrlError("the URL is empty; give an http:// or https:// link")
    if len(text) > 8192 or any(c in text for c in "\r\n\t\x00"):
        raise InvalidUrlError("the URL is too long or contains control characters")
    try:
        parsed = httpx.URL(text)
        raw_host = parsed.raw_host.decode("ascii")
    except (httpx.InvalidURL, ValueError, TypeError, UnicodeError) as exc:
        raise InvalidUrlError(f"not a valid URL: {_short(text)} ({exc})") from exc
    scheme = parsed.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        shown = f"'{scheme}'" if scheme else "no scheme"
        raise InvalidUrlError(
            f"only http:// and https:// links can be downloaded, this one has {shown}: "
            f"{_short(text)}"
        )
    host = raw_host.lower().rstrip(".")
    if not host:
        raise InvalidUrlError(f"the URL has no host name: {_short(text)}")
    if parsed.userinfo:
        raise InvalidUrlError("URLs with a user name or password are not accepted")
    port = parsed.port
    if port == _DEFAULT_PORTS[scheme]:
        port = None
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    target = parsed.raw_path.decode("ascii") or "/"
    return f"{scheme}://{netloc}{target}"


def rewrite_share_link(url: str) -> str:
    """The direct-download form of a Dropbox or Google Drive share link; other URLs unchanged.

    * ``dropbox.com/s/...`` and ``dropbox.com/scl/fi/...?rlkey=..&dl=0`` -> same URL with
      ``dl=1`` (other parameters, such as ``rlkey``, are kept);
    * ``drive.google.com/file/d/<id>/view``, ``drive.google.com/open?id=<id>`` and
      ``drive.google.com/uc?id=<id>`` -> ``https://drive.google.com/uc?export=download&id=<id>``.

    ``url`` should be normalised (:func:`normalise_url`) first.
    """
    parsed = httpx.URL(url)
    host = parsed.host.lower()
    if host in ("dropbox.com", "www.dropbox.com"):
        if parsed.path.startswith(("/s/", "/scl/fi/", "/sh/")):
            query = [(k, v) for k, v in parse_qsl(parsed.query.decode(), keep_blank_values=True)]
            query = [(k, v) for k, v in query if k not in ("dl", "raw")] + [("dl", "1")]
            return str(parsed.copy_with(host="www.dropbox.com", query=urlencode(query).encode()))
        return url
    if host in ("drive.google.com", "docs.google.com"):
        file_id = None
        match = _GDRIVE_FILE_PATH.match(parsed.path)
        if match:
            file_id = match.group(1)
        elif parsed.path in ("/open", "/uc"):
            file_id = parsed.params.get("id")
        if file_id:
            return f"https://drive.google.com/uc?export=download&id={file_id}"
    return url


def is_platform_url(url: str) -> bool:
    """True if the URL's host is (a subdomain of) one in :data:`PLATFORM_DOMAINS`."""
    host = httpx.URL(url).host.lower().rstrip(".")
    return any(host == d or host.endswith("." + d) for d in PLATFORM_DOMAINS)


# --- the address guard ---------------------------------------------------------------------


def check_host(host: str, port: int, settings: DownloadSettings) -> list[str]:
    """Resolve ``host`` and return its addresses, all of them checked as public.

    Raises:
        ForbiddenAddressError: any address is not public (and the host is not exempt).
        DownloadError: the name does not resolve.
    """
    name = host.strip("[]").lower().rstrip(".")
    try:
        infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise DownloadError(f"cannot resolve host {name}: {exc}") from exc
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if settings.allow_private_addresses or name in settings.allowed_private_hosts:
        return addresses
    for address in addresses:
        reason = _non_public_reason(address)
        if reason is not None:
            shown = name if name == address else f"{name} ({address})"
            raise ForbiddenAddressError(
                f"refusing to download from {shown}: it is a {reason} address, and only public "
                "addresses are allowed"
            )
    return addresses


def _non_public_reason(address: str) -> str | None:
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is not None:
            return _non_public_reason(str(embedded))
    for reason, flag in (
        ("loopback", ip.is_loopback),
        ("unspecified", ip.is_unspecified),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("reserved", ip.is_reserved),
        ("private", ip.is_private),
        # Shared address space (100.64/10, carrier NAT) and the like are not private but are
        # not reachable from the internet either.
        ("non-global", not ip.is_global),
    ):
        if flag:
            return reason
    return None


class _GuardedBackend(httpcore.NetworkBackend):
    """httpcore's synchronous backend, but every TCP connection goes to checked addresses only.

    The configured proxy itself is exempt (the operator chose it); the target host behind a proxy
    is checked before each request instead (see :func:`_preflight`).
    """

    def __init__(self, settings: DownloadSettings) -> None:
        self._settings = settings
        self._inner = httpcore.SyncBackend()
        self._proxy_origin: tuple[str, int] | None = None
        if settings.proxy is not None:
            proxy = httpx.URL(settings.proxy)
            default = 1080 if proxy.scheme.startswith("socks") else _DEFAULT_PORTS[proxy.scheme]
            self._proxy_origin = (proxy.host.lower(), proxy.port or default)

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        if (host.lower(), port) == self._proxy_origin:
            return self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        error: Exception | None = None
        for address in check_host(host, port, self._settings):
            try:
                return self._inner.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        assert error is not None  # getaddrinfo never returns an empty list
        raise error

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        raise ForbiddenAddressError("unix sockets are never used for downloads")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _GuardedTransport(httpx.BaseTransport):
    """An httpx transport over an httpcore pool that uses :class:`_GuardedBackend`.

    httpx's own HTTPTransport offers no way to choose the network backend, hence this small
    adapter (request/response conversion and the httpcore -> httpx exception mapping).
    """

    def __init__(self, settings: DownloadSettings) -> None:
        backend = _GuardedBackend(settings)
        context = httpx.create_ssl_context()
        pool: httpcore.ConnectionPool | httpcore.HTTPProxy | httpcore.SOCKSProxy
        if settings.proxy is None:
            pool = httpcore.ConnectionPool(ssl_context=context, network_backend=backend)
        elif settings.proxy.lower().startswith("socks"):
            # socks5h: the proxy resolves names (Tor); httpcore always sends the host name.
            proxy_url = re.sub(r"^socks5h://", "socks5://", settings.proxy, flags=re.I)
            pool = httpcore.SOCKSProxy(
                proxy_url=proxy_url, ssl_context=context, network_backend=backend
            )
        else:
            pool = httpcore.HTTPProxy(
                proxy_url=settings.proxy, ssl_context=context, network_backend=backend
            )
        self._pool = pool

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _httpcore_errors_as_httpx():
            response = self._pool.handle_request(core_request)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_CoreStream(response.stream),  # type: ignore[arg-type]
            extensions=response.extensions,
        )

    def close(self) -> None:
        self._pool.close()


class _CoreStream(httpx.SyncByteStream):
    def __init__(self, stream: Iterable[bytes]) -> None:
        self._stream = stream

    def __iter__(self) -> Iterator[bytes]:
        with _httpcore_errors_as_httpx():
            yield from self._stream

    def close(self) -> None:
        close = getattr(self._stream, "close", None)
        if close is not None:
            close()


_HTTPCORE_TO_HTTPX: dict[type[Exception], type[httpx.HTTPError]] = {
    httpcore.ConnectTimeout: httpx.ConnectTimeout,
    httpcore.ReadTimeout: httpx.ReadTimeout,
    httpcore.WriteTimeout: httpx.WriteTimeout,
    httpcore.PoolTimeout: httpx.PoolTimeout,
    httpcore.TimeoutException: httpx.TimeoutException,
    httpcore.ConnectError: httpx.ConnectError,
    httpcore.ReadError: httpx.ReadError,
    httpcore.WriteError: httpx.WriteError,
    httpcore.NetworkError: httpx.NetworkError,
    httpcore.ProxyError: httpx.ProxyError,
    httpcore.UnsupportedProtocol: httpx.UnsupportedProtocol,
    httpcore.RemoteProtocolError: httpx.RemoteProtocolError,
    httpcore.LocalProtocolError: httpx.LocalProtocolError,
    httpcore.ProtocolError: httpx.ProtocolError,
}


@contextlib.contextmanager
def _httpcore_errors_as_httpx() -> Iterator[None]:
    try:
        yield
    except httpcore.TimeoutException as exc:
        raise _HTTPCORE_TO_HTTPX.get(type(exc), httpx.TimeoutException)(str(exc)) from exc
    except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.ProxyError) as exc:
        for cls in type(exc).__mro__:  # most specific mapping first
            if cls in _HTTPCORE_TO_HTTPX:
                raise _HTTPCORE_TO_HTTPX[cls](str(exc)) from exc
        raise
    except httpcore.UnsupportedProtocol as exc:
        raise httpx.UnsupportedProtocol(str(exc)) from exc


# --- fetch ---------------------------------------------------------------------------------


def fetch(source: str, dest_dir: Path, settings: DownloadSettings | None = None) -> Downloaded:
    """Download the image or video at ``source`` into ``dest_dir``.

    Platform pages (:data:`PLATFORM_DOMAINS`) go to yt-dlp. Anything else is fetched directly;
    if the answer turns out to be an HTML page (sniffed from its first bytes) or a redirect to a
    platform, yt-dlp's extractors get the page URL instead. The file is written as
    ``<dest_dir>/<sha256>.bin``: its type is for ``media.probe`` to decide from its bytes.

    Raises:
        InvalidUrlError: not an http(s) URL.
        ForbiddenAddressError: the host, a redirect or an extracted media URL is not public.
        TooLargeError: over ``max_bytes`` (announced or streamed) or ``max_duration_s`` (yt-dlp).
        DownloadTimeoutError: a connect/read timeout after the last retry, or over
            ``total_timeout_s``.
        DownloadError: an HTTP error status (named in the message), too many redirects, DNS
            failure, or yt-dlp finding nothing to download.
    """
    settings = settings or DownloadSettings()
    url = rewrite_share_link(normalise_url(source))
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + settings.total_timeout_s
    if is_platform_url(url):
        return _fetch_with_ytdlp(source, url, dest_dir, settings, deadline)
    try:
        return _fetch_direct(source, url, dest_dir, settings, deadline)
    except _NeedsExtractor as handoff:
        log.info("%s is a web page, not a media file; trying yt-dlp", handoff.url)
        return _fetch_with_ytdlp(source, handoff.url, dest_dir, settings, deadline)


class _NeedsExtractor(Exception):
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


def _fetch_direct(
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
            transport=_GuardedTransport(settings),
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
                        raise _total_timeout(settings) from failure
                    log.warning(
                        "download attempt %d of %s failed (%s); retrying in %.1f s",
                        attempt + 1,
                        url,
                        failure.error.detail,
                        delay,
                    )
                    time.sleep(delay)
        sha256 = _sha256_file(partial.path)
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
            _preflight(current, settings)
        request_headers = {}
        if partial.size and partial.validator:
            request_headers = {"Range": f"bytes={partial.size}-", "If-Range": partial.validator}
        try:
            with client.stream("GET", current, headers=request_headers) as response:
                status = response.status_code
                if status in _REDIRECT_STATUSES and "location" in response.headers:
                    target = normalise_url(str(response.url.join(response.headers["location"])))
                    if is_platform_url(target):
                        raise _NeedsExtractor(target)
                    current = target
                    continue
                if status >= 400:
                    error = DownloadError(
                        f"HTTP {status} {response.reason_phrase} from {_short(current)}"
                    )
                    if status in _TRANSIENT_STATUSES:
                        raise _Transient(error)
                    raise error
                _receive(response, current, partial, settings, deadline)
                return current, response.headers.get("content-type")
        except httpx.TimeoutException as exc:
            raise _Transient(
                DownloadTimeoutError(
                    f"no data from {_short(current)} within the "
                    f"{_timeout_kind(exc)} timeout; the server is too slow or unreachable"
                )
            ) from exc
        except (httpx.NetworkError, httpx.RemoteProtocolError, httpx.ProxyError) as exc:
            raise _Transient(
                DownloadError(f"connection to {_short(current)} failed: {exc or type(exc)}")
            ) from exc
    raise DownloadError(f"more than {settings.max_redirects} redirects from {_short(url)}")


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
        raise _Transient(DownloadError(f"{_short(url)} answered a resume with the wrong range"))
    if not resuming:
        partial.size = 0  # the server sent the whole file (again), or we had nothing
    announced = _int_header(response, "content-length")
    if announced is not None and partial.size + announced > settings.max_bytes:
        raise TooLargeError(
            f"the file at {_short(url)} is {_mib(partial.size + announced)}, over the "
            f"{_mib(settings.max_bytes)} limit"
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
                raise _total_timeout(settings)
            if head is not None:
                head += chunk
                if len(head) < _SNIFF_BYTES:
                    continue
                chunk, head = head, None
                if _looks_like_html(chunk[:_SNIFF_BYTES]):
                    raise _NeedsExtractor(url)
            _append(out, chunk, partial, url, settings, deadline)
        if head:  # a body shorter than the sniffing window
            if _looks_like_html(head):
                raise _NeedsExtractor(url)
            _append(out, head, partial, url, settings, deadline)
    if partial.size == 0:
        raise DownloadError(f"{_short(url)} answered with an empty body")


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
            f"the file at {_short(url)} is larger than the {_mib(settings.max_bytes)} "
            "limit (stopped while downloading)"
        )


def _preflight(url: str, settings: DownloadSettings) -> None:
    """Behind a proxy the proxy connects, so the target is checked here, before each request.

    Names that do not resolve locally are left to the proxy (Tor resolves names itself).
    """
    parsed = httpx.URL(url)
    port = parsed.port or _DEFAULT_PORTS[parsed.scheme]
    try:
        check_host(parsed.host, port, settings)
    except ForbiddenAddressError:
        raise
    except DownloadError:
        log.debug("%s does not resolve locally; leaving it to the proxy", parsed.host)


# --- yt-dlp --------------------------------------------------------------------------------


class _YtdlpLogger:
    """Routes yt-dlp's console output to logging (it prints to stdout otherwise)."""

    def debug(self, message: str) -> None:
        log.debug("yt-dlp: %s", message)

    def info(self, message: str) -> None:
        log.debug("yt-dlp: %s", message)

    def warning(self, message: str) -> None:
        log.info("yt-dlp: %s", message)

    def error(self, message: str) -> None:
        log.info("yt-dlp: %s", message)


def ytdlp_options(
    settings: DownloadSettings,
    out_dir: Path,
    progress_hook: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Options for ``yt_dlp.YoutubeDL``: format, limits, proxy, no playlists, no side effects."""
    options: dict[str, Any] = {
        "format": settings.ytdlp_format,
        "outtmpl": {"default": str(out_dir / "media.%(ext)s")},
        "noplaylist": True,
        # A playlist URL is refused, not expanded: list its entries without resolving them.
        "extract_flat": "in_playlist",
        "max_filesize": settings.max_bytes,
        "match_filter": _duration_filter(settings.max_duration_s),
        "socket_timeout": settings.read_timeout_s,
        "retries": settings.retries,
        "fragment_retries": settings.retries,
        "extractor_retries": settings.retries,
        "logger": _YtdlpLogger(),
        "quiet": True,
        "no_warnings": False,
        "noprogress": True,
        "cachedir": False,  # never write to the user's ~/.cache
        "updatetime": False,
        "overwrites": True,
        "restrictfilenames": True,
        "check_formats": False,
        "fixup": "never",  # fixups need ffmpeg, which is not a dependency
        "progress_hooks": [progress_hook] if progress_hook else [],
    }
    if settings.proxy is not None:
        options["proxy"] = settings.proxy
    return options


def _duration_filter(max_duration_s: float) -> Callable[..., str | None]:
    def reject_long(info: dict[str, Any], *, incomplete: bool = False) -> str | None:
        duration = info.get("duration")
        if duration is not None and duration > max_duration_s:
            return f"duration {duration:.0f} s is over the {max_duration_s:.0f} s limit"
        return None

    return reject_long


def _fetch_with_ytdlp(
    source: str, url: str, dest_dir: Path, settings: DownloadSettings, deadline: float
) -> Downloaded:
    import yt_dlp  # heavy (~0.5 s): only when a platform URL actually needs it

    parsed = httpx.URL(url)
    check_host(parsed.host, parsed.port or _DEFAULT_PORTS[parsed.scheme], settings)
    work_dir = dest_dir / f".yt-dlp-{uuid.uuid4().hex}"
    work_dir.mkdir()
    limit_error: list[DfdError] = []

    def enforce_limits(status: dict[str, Any]) -> None:
        # yt-dlp's max_filesize trusts announced sizes; this also stops a stream that grows.
        done = int(status.get("downloaded_bytes") or 0)
        if done > settings.max_bytes:
            limit_error.append(
                TooLargeError(
                    f"the video at {_short(url)} is larger than the "
                    f"{_mib(settings.max_bytes)} limit (stopped while downloading)"
                )
            )
        elif time.monotonic() > deadline:
            limit_error.append(_total_timeout(settings))
        if limit_error:
            raise limit_error[0]

    try:
        with yt_dlp.YoutubeDL(ytdlp_options(settings, work_dir, enforce_limits)) as ydl:
            try:
                info = ydl.extract_info(url, download=False)
                _check_extracted(info, url, settings)
                info = ydl.process_ie_result(info, download=True)
            except yt_dlp.utils.DownloadError as exc:
                if limit_error:
                    raise limit_error[0] from exc
                raise _map_ytdlp_error(exc, url) from exc
        files = [p for p in work_dir.iterdir() if p.is_file() and not p.name.endswith(".part")]
        if not files:
            # yt-dlp skips, rather than fails, a format over max_filesize.
            raise TooLargeError(
                f"the video at {_short(url)} is over the {_mib(settings.max_bytes)} limit "
                "or no downloadable format was found"
            )
        media = max(files, key=lambda p: p.stat().st_size)
        with media.open("rb") as fh:
            if _looks_like_html(fh.read(_SNIFF_BYTES)):
                # The generic extractor trusts a video/* Content-Type and saves whatever came.
                raise DownloadError(f"no image or video found at {_short(url)} (a web page)")
        size_bytes = media.stat().st_size
        if size_bytes > settings.max_bytes:
            raise TooLargeError(
                f"the video at {_short(url)} is {_mib(size_bytes)}, over the "
                f"{_mib(settings.max_bytes)} limit"
            )
        sha256 = _sha256_file(media)
        final_path = dest_dir / f"{sha256}.bin"
        os.replace(media, final_path)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    ext = info.get("ext")
    return Downloaded(
        path=final_path,
        url=source,
        final_url=str(info.get("url") or info.get("webpage_url") or url),
        size_bytes=size_bytes,
        sha256=sha256,
        method="yt-dlp",
        content_type=f"video/{ext}" if isinstance(ext, str) and ext.isalnum() else None,
        title=info.get("title"),
    )


def _check_extracted(info: dict[str, Any] | None, url: str, settings: DownloadSettings) -> None:
    """Refuse before downloading: nothing found, playlists, live streams, too long, bad URLs."""
    if not info:
        raise DownloadError(f"yt-dlp found no video at {_short(url)}")
    if info.get("_type") in ("playlist", "multi_video"):
        raise DownloadError(
            f"{_short(url)} is a playlist or a post with several videos; link one video"
        )
    if info.get("is_live"):
        raise DownloadError(f"{_short(url)} is a live stream; only recorded videos can be analysed")
    duration = info.get("duration")
    if isinstance(duration, int | float) and duration > settings.max_duration_s:
        raise TooLargeError(
            f"the video at {_short(url)} lasts {duration:.0f} s, over the "
            f"{settings.max_duration_s:.0f} s limit"
        )
    for media_url in _media_urls(info):
        parsed = httpx.URL(media_url)
        if parsed.scheme not in _DEFAULT_PORTS:
            raise ForbiddenAddressError(
                f"the page at {_short(url)} points to a non-http media URL ({parsed.scheme}:)"
            )
        check_host(parsed.host, parsed.port or _DEFAULT_PORTS[parsed.scheme], settings)


def _media_urls(info: dict[str, Any]) -> list[str]:
    formats = info.get("requested_formats") or [info]
    urls: list[str] = []
    for fmt in formats:
        for key in ("url", "manifest_url", "fragment_base_url"):
            value = fmt.get(key)
            if isinstance(value, str) and value:
                urls.append(value)
    return urls


def _map_ytdlp_error(exc: Exception, url: str) -> DfdError:
    original = getattr(exc, "exc_info", None)
    cause = original[1] if original and len(original) > 1 else None
    if isinstance(cause, DfdError):
        return cause
    message = _ANSI.sub("", str(exc)).removeprefix("ERROR: ").strip().splitlines()[0]
    lowered = message.lower()
    if "timed out" in lowered or isinstance(cause, TimeoutError):
        return DownloadTimeoutError(f"yt-dlp timed out on {_short(url)}: {message}")
    if "unsupported url" in lowered:
        return DownloadError(f"no image or video found at {_short(url)}")
    return DownloadError(f"yt-dlp could not download {_short(url)}: {message}")


# --- small helpers -------------------------------------------------------------------------


def _looks_like_html(head: bytes) -> bool:
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n\x0c").lower()
    for tag in _HTML_TAGS:
        if text.startswith(tag):
            rest = text[len(tag) : len(tag) + 1]
            if tag in (b"<!--", b"<?xml") or rest in (b" ", b">", b"\t", b"\n", b"\r", b"/"):
                return True
    return False


def _resumes_at(response: httpx.Response) -> int | None:
    match = re.match(r"bytes (\d+)-\d+/(\d+|\*)", response.headers.get("content-range", ""))
    return int(match.group(1)) if match else None


def _int_header(response: httpx.Response, name: str) -> int | None:
    value = response.headers.get(name)
    return int(value) if value is not None and value.strip().isdigit() else None


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _timeout_kind(exc: httpx.TimeoutException) -> str:
    if isinstance(exc, httpx.ConnectTimeout):
        return "connect"
    return "read" if isinstance(exc, httpx.ReadTimeout) else "network"


def _total_timeout(settings: DownloadSettings) -> DownloadTimeoutError:
    return DownloadTimeoutError(
        f"the download took longer than {settings.total_timeout_s:.0f} s; "
        "try a smaller file or a faster link"
    )


def _mib(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:.1f} MiB" if n_bytes >= 2**20 else f"{n_bytes} bytes"


def _short(url: str, limit: int = 200) -> str:
    return url if len(url) <= limit else url[: limit - 3] + "..."

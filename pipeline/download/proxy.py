"""An HTTP(S) forward proxy on loopback that applies the address guard to yt-dlp.

yt-dlp opens its own connections (the page, the media, every redirect hop, every fragment),
which the direct downloader's :class:`~pipeline.download.guard.GuardedTransport` never sees.
Pointed at this proxy, yt-dlp cannot reach any address :func:`~pipeline.download.guard.check_host`
refuses: each ``CONNECT host:port`` (HTTPS) and each absolute-form request (plain HTTP) is checked
and then connected to the checked address itself (no second lookup, so no DNS rebinding).
Refusals are kept (:attr:`GuardProxy.refused`) so that the caller can name the real cause when
yt-dlp reports only a failed request.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import socketserver
import threading
from typing import Any

import httpx

from pipeline.download.guard import check_host
from pipeline.download.settings import DownloadSettings
from pipeline.download.urls import DEFAULT_PORTS
from pipeline.errors import DownloadError, ForbiddenAddressError

__all__ = ["GuardProxy"]

log = logging.getLogger(__name__)

_MAX_HEADER_BYTES = 64 * 1024
_CHUNK = 64 * 1024
#: Hop-by-hop headers a proxy must not forward (RFC 9110 7.6.1), plus the proxy's own.
_HOP_BY_HOP = {"connection", "proxy-connection", "keep-alive", "proxy-authorization", "te",
               "trailer", "upgrade"}  # fmt: skip


class GuardProxy:
    """``with GuardProxy(settings) as proxy:`` serves on ``proxy.url`` until the block ends."""

    def __init__(self, settings: DownloadSettings) -> None:
        self.settings = settings
        self.refused: list[ForbiddenAddressError] = []
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.guard = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="dfd-guard-proxy", daemon=True
        )

    @property
    def url(self) -> str:
        port = self._server.server_address[1]
        return f"http://127.0.0.1:{port}"

    def __enter__(self) -> GuardProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    guard: GuardProxy


class _Handler(socketserver.StreamRequestHandler):
    server: _Server
    #: Unbuffered: what follows the request head stays in the socket for :func:`_pipe`.
    rbufsize = 0

    def handle(self) -> None:
        guard = self.server.guard
        self.connection.settimeout(guard.settings.read_timeout_s)
        try:
            request_line, headers = self._read_head()
            method, target, version = request_line.split(" ", 2)
        except (ValueError, OSError):
            return
        try:
            host, port, path = _target(method, target)
            addresses = check_host(host, port, guard.settings)
        except ForbiddenAddressError as exc:
            guard.refused.append(exc)
            log.warning("guard proxy refused %s %s: %s", method, target[:200], exc)
            self._answer(403, str(exc))
            return
        except (DownloadError, ValueError) as exc:
            self._answer(502, str(exc))
            return
        try:
            upstream = socket.create_connection(
                (addresses[0], port), timeout=guard.settings.connect_timeout_s
            )
        except OSError as exc:
            self._answer(502, f"cannot connect to {host}:{port}: {exc}")
            return
        with upstream, contextlib.suppress(OSError):  # either side gone: nothing to answer
            upstream.settimeout(guard.settings.read_timeout_s)
            if method.upper() == "CONNECT":
                self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:  # one request per connection: the next may go to another host
                kept = [(k, v) for k, v in headers if k.lower() not in _HOP_BY_HOP]
                head = [f"{method} {path} {version}", *(f"{k}: {v}" for k, v in kept)]
                head.append("Connection: close")
                upstream.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
                # The client must not send its next request on this connection: say so.
                self.wfile.write(_closing_head(upstream))
            self.wfile.flush()
            _pipe(self.connection, upstream, guard.settings.read_timeout_s)

    def _read_head(self) -> tuple[str, list[tuple[str, str]]]:
        first = self.rfile.readline(_MAX_HEADER_BYTES).decode("latin-1").rstrip("\r\n")
        headers: list[tuple[str, str]] = []
        total = len(first)
        while True:
            line = self.rfile.readline(_MAX_HEADER_BYTES).decode("latin-1")
            total += len(line)
            if total > _MAX_HEADER_BYTES:
                raise ValueError("request head too large")
            line = line.rstrip("\r\n")
            if not line:
                return first, headers
            name, _, value = line.partition(":")
            headers.append((name.strip(), value.strip()))

    def _answer(self, status: int, reason: str) -> None:
        body = (reason + "\n").encode("utf-8", "replace")
        phrase = {403: "Forbidden", 502: "Bad Gateway"}[status]
        head = (
            f"HTTP/1.1 {status} {phrase}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        with contextlib.suppress(OSError):
            self.wfile.write(head.encode("latin-1") + body)


def _closing_head(upstream: socket.socket) -> bytes:
    """The response head from ``upstream`` with ``Connection: close`` in place of its own
    hop-by-hop headers (the body that follows it is piped as it comes)."""
    raw = upstream.makefile("rb", buffering=0)
    lines = [raw.readline(_MAX_HEADER_BYTES)]
    while lines[-1] not in (b"\r\n", b"\n", b""):
        lines.append(raw.readline(_MAX_HEADER_BYTES))
        if sum(map(len, lines)) > _MAX_HEADER_BYTES:
            raise OSError("response head too large")
    kept = [
        line for line in lines[1:-1]
        if line.split(b":", 1)[0].strip().lower().decode("latin-1") not in _HOP_BY_HOP
    ]  # fmt: skip
    return b"".join([lines[0], *kept, b"Connection: close\r\n\r\n"])


def _target(method: str, target: str) -> tuple[str, int, str]:
    """Host, port and origin-form path of a proxy request (``CONNECT host:port`` or an
    absolute ``http://`` URL)."""
    if method.upper() == "CONNECT":
        host, _, port = target.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"bad CONNECT target {target[:100]!r}")
        return host.strip("[]"), int(port), ""
    url = httpx.URL(target)
    if url.scheme != "http" or not url.host:
        raise ValueError(f"a forward proxy takes absolute http:// URLs, not {target[:100]!r}")
    path = url.raw_path.decode("ascii") or "/"
    return url.host, url.port or DEFAULT_PORTS["http"], path


def _pipe(client: socket.socket, upstream: socket.socket, idle_s: float) -> None:
    """Copy bytes both ways until either side closes or both are silent for ``idle_s``."""
    with selectors.DefaultSelector() as selector:
        selector.register(client, selectors.EVENT_READ, upstream)
        selector.register(upstream, selectors.EVENT_READ, client)
        while True:
            ready: list[Any] = selector.select(timeout=idle_s)
            if not ready:
                return
            for key, _ in ready:
                try:
                    data = key.fileobj.recv(_CHUNK)
                    if not data:
                        return
                    key.data.sendall(data)
                except OSError:
                    return

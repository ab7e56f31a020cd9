"""A real HTTP server on 127.0.0.1 for tests: files with Range support, statuses, redirects, stalls.

Usage::

    from tests.support.httpserver import LoopbackServer, file_response, status_response

    with LoopbackServer() as server:
        url = server.route("/video.mp4", file_response(path, "video/mp4"))
        ...  # real HTTP against url
        assert server.hits("/video.mp4") == 1

or as a fixture in a test module::

    @pytest.fixture
    def server() -> Iterator[LoopbackServer]:
        with LoopbackServer() as srv:
            yield srv

A route is a path (query strings are ignored for matching) and a *responder*: a function that
writes one response to the :class:`http.server.BaseHTTPRequestHandler` it is given. The factories
below cover the usual cases; :func:`sequence` plays a list of responders one request at a time
(e.g. two 503s, then the file). Unknown paths answer 404. Every request is recorded.

The server speaks HTTP/1.1 with keep-alive, runs each connection on its own thread, and
:meth:`LoopbackServer.stop` ends everything, including handlers that are stalling on purpose,
within a bounded time.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

Responder = Callable[["_Handler"], None]

#: Longest any stalling handler waits before giving up on its own (stop() wakes it sooner).
MAX_STALL_S = 60.0
_CHUNK = 64 * 1024
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server saw it. Header names are lower-case."""

    method: str
    path: str  # without the query string
    target: str  # as sent, with the query string
    headers: Mapping[str, str]


class LoopbackServer:
    """Threaded HTTP/1.1 server on 127.0.0.1 and a free port; a context manager."""

    def __init__(self) -> None:
        self._routes: dict[str, Responder] = {}
        self._requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``, no trailing slash."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def stopping(self) -> threading.Event:
        """Set when the server stops: custom responders that wait should wait on this."""
        return self._stopping

    def url(self, path: str) -> str:
        """Absolute URL of ``path`` (which starts with ``/``) on this server."""
        return self.base_url + path

    def route(self, path: str, responder: Responder) -> str:
        """Answer requests for ``path`` with ``responder``; returns the route's URL."""
        with self._lock:
            self._routes[urlsplit(path).path] = responder
        return self.url(path)

    def requests(self, path: str | None = None) -> list[RecordedRequest]:
        """Requests received so far, oldest first, optionally only those for ``path``."""
        with self._lock:
            return [r for r in self._requests if path is None or r.path == path]

    def hits(self, path: str) -> int:
        """How many requests ``path`` has received."""
        return len(self.requests(path))

    def start(self) -> LoopbackServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake stalled handlers, close the socket and join the threads."""
        self._stopping.set()
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        # ThreadingHTTPServer joins handler threads here; they all end within their socket
        # timeout, and stalling ones return as soon as _stopping is set.
        self._httpd.server_close()

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # used by _Handler
    def _dispatch(self, handler: _Handler) -> None:
        path = urlsplit(handler.path).path
        record = RecordedRequest(
            method=handler.command,
            path=path,
            target=handler.path,
            headers={k.lower(): v for k, v in handler.headers.items()},
        )
        with self._lock:
            self._requests.append(record)
            responder = self._routes.get(path)
        (responder or status_response(404, b"not found"))(handler)


# --- responders ----------------------------------------------------------------------------


def file_response(
    file: Path, content_type: str = "application/octet-stream", *, ranges: bool = True
) -> Responder:
    """Serve ``file`` with its Content-Length, streamed in chunks, with single-range support.

    With ``ranges`` a ``Range: bytes=a-b`` request gets 206 and ``Content-Range`` (416 when
    unsatisfiable; the whole file when an ``If-Range`` names another version), and responses
    carry ``Accept-Ranges: bytes`` and ``ETag: file_etag(file)``.
    """
    size = file.stat().st_size
    etag = file_etag(file)

    def respond(h: _Handler) -> None:
        start, end = 0, size - 1
        status = 200
        requested = h.headers.get("Range") if ranges else None
        if requested and h.headers.get("If-Range", etag) != etag:
            requested = None  # the client's copy is of another version: send it all
        if requested:
            match = _RANGE.match(requested.strip())
            if match is None or match.group(1) == match.group(2) == "":
                h.send_plain(416, b"bad range", {"Content-Range": f"bytes */{size}"})
                return
            first, last = match.groups()
            if first == "":  # suffix range: the last N bytes
                start, end = max(0, size - int(last)), size - 1
            else:
                start, end = int(first), min(int(last), size - 1) if last else size - 1
            if start >= size or start > end:
                h.send_plain(416, b"range not satisfiable", {"Content-Range": f"bytes */{size}"})
                return
            status = 206
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(end - start + 1))
        if ranges:
            h.send_header("Accept-Ranges", "bytes")
            h.send_header("ETag", etag)
        if status == 206:
            h.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        h.end_headers()
        if h.command == "HEAD":
            return
        with file.open("rb") as fh:
            fh.seek(start)
            remaining = end - start + 1
            while remaining > 0:
                chunk = fh.read(min(_CHUNK, remaining))
                if not chunk:
                    break
                h.wfile.write(chunk)
                remaining -= len(chunk)

    return respond


def chunked_response(
    file: Path, content_type: str = "application/octet-stream", *, chunk_size: int = _CHUNK
) -> Responder:
    """Serve ``file`` with ``Transfer-Encoding: chunked``: no Content-Length announces its size."""

    def respond(h: _Handler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", content_type)
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        if h.command == "HEAD":
            return
        with file.open("rb") as fh:
            while chunk := fh.read(chunk_size):
                h.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        h.wfile.write(b"0\r\n\r\n")

    return respond


def bytes_response(
    body: bytes,
    content_type: str = "application/octet-stream",
    *,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
) -> Responder:
    """A fixed body with the given status and extra headers."""

    def respond(h: _Handler) -> None:
        h.send_plain(status, body, {"Content-Type": content_type, **(headers or {})})

    return respond


def status_response(status: int, body: bytes = b"") -> Responder:
    """An error (or any) status with a short text body, e.g. 404 or 503."""
    return bytes_response(body, "text/plain; charset=utf-8", status=status)


def redirect_response(location: str, status: int = 302) -> Responder:
    """A redirect to ``location`` (absolute or relative), with an empty body."""
    return bytes_response(b"", "text/plain", status=status, headers={"Location": location})


def stall_response(*, send_headers: bool = True, content_length: int = 1_000_000) -> Responder:
    """Never send the body (and, without ``send_headers``, not even the status line).

    The handler waits until the server stops (at most :data:`MAX_STALL_S`), then closes.
    """

    def respond(h: _Handler) -> None:
        if send_headers:
            h.send_response(200)
            h.send_header("Content-Type", "application/octet-stream")
            h.send_header("Content-Length", str(content_length))
            h.end_headers()
            h.wfile.flush()
        h.close_connection = True
        h.owner.stopping.wait(MAX_STALL_S)

    return respond


def file_etag(file: Path) -> str:
    """The ETag :func:`file_response` and :func:`truncated_response` give ``file``."""
    stat = file.stat()
    return f'"{stat.st_size:x}-{stat.st_mtime_ns:x}"'


def truncated_response(file: Path, send_bytes: int, content_type: str = "video/mp4") -> Responder:
    """Announce the whole ``file`` (200, full Content-Length) but close after ``send_bytes``.

    It advertises ``Accept-Ranges`` and the file's ETag, so a client may resume the download.
    """
    size = file.stat().st_size

    def respond(h: _Handler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(size))
        h.send_header("Accept-Ranges", "bytes")
        h.send_header("ETag", file_etag(file))
        h.end_headers()
        with file.open("rb") as fh:
            h.wfile.write(fh.read(send_bytes))
        h.wfile.flush()
        h.close_connection = True

    return respond


def sequence(responders: Sequence[Responder]) -> Responder:
    """The n-th request gets ``responders[n]``; requests past the end get the last one."""
    if not responders:
        raise ValueError("sequence() needs at least one responder")
    count = 0
    lock = threading.Lock()

    def respond(h: _Handler) -> None:
        nonlocal count
        with lock:
            chosen = responders[min(count, len(responders) - 1)]
            count += 1
        chosen(h)

    return respond


# --- plumbing ------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: LoopbackServer

    def handle_error(self, request: object, client_address: object) -> None:
        # A client that hangs up mid-body (a size limit, a timeout) is what these tests are
        # about, not an error worth a traceback on stderr.
        return


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    # Socket timeout: no handler thread can outlive a silent client by more than this.
    timeout = 10

    @property
    def owner(self) -> LoopbackServer:
        return self.server.owner

    def do_GET(self) -> None:
        self.owner._dispatch(self)

    def do_HEAD(self) -> None:
        self.owner._dispatch(self)

    def send_plain(self, status: int, body: bytes, headers: Mapping[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return

"""pipeline.download against a real HTTP server on 127.0.0.1 (and real yt-dlp on it)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yt_dlp

from pipeline.download import (
    DownloadSettings,
    check_host,
    fetch,
    is_platform_url,
    normalise_url,
    rewrite_share_link,
    ytdlp_options,
)
from pipeline.download.guard import _non_public_reason
from pipeline.download.ytdlp import _check_extracted, _map_ytdlp_error
from pipeline.errors import (
    DownloadError,
    DownloadTimeoutError,
    ForbiddenAddressError,
    InvalidUrlError,
    TooLargeError,
)
from tests.support.httpserver import (
    LoopbackServer,
    bytes_response,
    chunked_response,
    file_response,
    redirect_response,
    sequence,
    stall_response,
    status_response,
    truncated_response,
)

VIDEO = "videos/liveportrait_d12.mp4"  # 596,446 bytes
VIDEO_SHA256 = "2895169e5aa2a882d39dfc80a17a3eab1cf6ec23b9b6f6be76bae48deda15219"

# Loopback is what the tests serve from, so the guard is off unless a test is about the guard.
LOCAL = DownloadSettings(
    allow_private_addresses=True,
    connect_timeout_s=2.0,
    read_timeout_s=2.0,
    backoff_s=0.01,
    backoff_max_s=0.05,
)


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    with LoopbackServer() as srv:
        yield srv


@pytest.fixture
def video(shared_data: Path) -> Path:
    return shared_data / VIDEO


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*"))


def _localhost(url: str) -> str:
    """The same URL under the name ``localhost``: a different host name for the same server."""
    return url.replace("127.0.0.1", "localhost", 1)


# --- direct HTTP -----------------------------------------------------------------------------


def test_downloads_a_real_video_over_http(
    server: LoopbackServer, video: Path, tmp_path: Path
) -> None:
    url = server.route("/media/clip.mp4", file_response(video, "video/mp4"))
    result = fetch(url, tmp_path, LOCAL)
    assert result.sha256 == VIDEO_SHA256
    assert result.path == tmp_path / f"{VIDEO_SHA256}.bin"  # the URL's extension is not trusted
    assert result.path.read_bytes() == video.read_bytes()
    assert (result.url, result.final_url, result.method) == (url, url, "http")
    assert result.size_bytes == video.stat().st_size
    assert result.content_type == "video/mp4"
    assert _files(tmp_path) == [result.path]  # no partial files left behind
    request = server.requests("/media/clip.mp4")[0]
    assert request.headers["user-agent"] == LOCAL.user_agent


def test_loopback_is_refused_by_default(
    server: LoopbackServer, video: Path, tmp_path: Path
) -> None:
    url = server.route("/clip.mp4", file_response(video))
    with pytest.raises(ForbiddenAddressError, match="loopback"):
        fetch(url, tmp_path, DownloadSettings())
    with pytest.raises(ForbiddenAddressError, match="loopback"):
        fetch(_localhost(url), tmp_path, DownloadSettings())
    assert server.hits("/clip.mp4") == 0  # refused before connecting
    assert _files(tmp_path) == []


def test_redirect_to_a_forbidden_address_is_refused(
    server: LoopbackServer, video: Path, tmp_path: Path
) -> None:
    # "localhost" is exempt (as an internal mirror would be), 127.0.0.1 is not: the first hop is
    # allowed, the redirect's target must be refused, over real HTTP.
    target = server.route("/clip.mp4", file_response(video))
    start = _localhost(server.route("/go", redirect_response(target)))
    settings = DownloadSettings(allowed_private_hosts=frozenset({"LocalHost"}))
    with pytest.raises(ForbiddenAddressError, match=r"127\.0\.0\.1"):
        fetch(start, tmp_path, settings)
    assert (server.hits("/go"), server.hits("/clip.mp4")) == (1, 0)
    # Allowed throughout, the same chain is followed to the file.
    result = fetch(start, tmp_path, LOCAL)
    assert result.final_url == target and result.sha256 == VIDEO_SHA256


def test_relative_redirects_are_followed(
    server: LoopbackServer, video: Path, tmp_path: Path
) -> None:
    server.route("/a/clip.mp4", file_response(video))
    server.route("/b", redirect_response("/c", 301))
    start = server.route("/c", redirect_response("a/clip.mp4", 307))
    result = fetch(server.url("/b"), tmp_path, LOCAL)
    assert result.final_url == server.url("/a/clip.mp4") and result.sha256 == VIDEO_SHA256
    assert start == server.url("/c")


def test_redirect_loop_ends(server: LoopbackServer, tmp_path: Path) -> None:
    url = server.route("/loop", redirect_response("/loop"))
    settings = LOCAL.model_copy(update={"max_redirects": 3})
    with pytest.raises(DownloadError, match="more than 3 redirects"):
        fetch(url, tmp_path, settings)
    assert server.hits("/loop") == 4


def test_http_404_names_the_status_and_is_not_retried(
    server: LoopbackServer, tmp_path: Path
) -> None:
    url = server.url("/missing.mp4")
    with pytest.raises(DownloadError, match="404") as caught:
        fetch(url, tmp_path, LOCAL)
    assert type(caught.value) is DownloadError
    assert server.hits("/missing.mp4") == 1
    assert _files(tmp_path) == []


def test_retries_503_then_succeeds(server: LoopbackServer, video: Path, tmp_path: Path) -> None:
    flaky = [status_response(503), status_response(503), file_response(video)]
    url = server.route("/flaky.mp4", sequence(flaky))
    result = fetch(url, tmp_path, LOCAL)
    assert result.sha256 == VIDEO_SHA256
    assert server.hits("/flaky.mp4") == 3


def test_gives_up_after_the_configured_retries(server: LoopbackServer, tmp_path: Path) -> None:
    url = server.route("/down", status_response(503))
    with pytest.raises(DownloadError, match="503"):
        fetch(url, tmp_path, LOCAL.model_copy(update={"retries": 2}))
    assert server.hits("/down") == 3


def test_connection_refused_is_a_download_error(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago and has no listener now
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DownloadError, match="failed"):
        fetch(f"http://127.0.0.1:{port}/x", tmp_path, LOCAL.model_copy(update={"retries": 1}))


@pytest.mark.parametrize("send_headers", [True, False], ids=["mid-body", "before-headers"])
def test_stalled_server_times_out(
    server: LoopbackServer, tmp_path: Path, send_headers: bool
) -> None:
    url = server.route("/stall", stall_response(send_headers=send_headers))
    settings = LOCAL.model_copy(update={"read_timeout_s": 1.0, "retries": 0})
    started = time.monotonic()
    with pytest.raises(DownloadTimeoutError, match="read timeout"):
        fetch(url, tmp_path, settings)
    assert 0.9 <= time.monotonic() - started < 3.0
    assert _files(tmp_path) == []


def test_total_time_limit_stops_a_slow_drip(server: LoopbackServer, tmp_path: Path) -> None:
    def drip(handler) -> None:  # one byte every 50 ms: never silent long enough to time out
        handler.send_response(200)
        handler.send_header("Content-Length", "100000")
        handler.end_headers()
        for _ in range(100_000):
            handler.wfile.write(b"\0")
            handler.wfile.flush()
            if handler.owner.stopping.wait(0.05):
                return

    url = server.route("/drip", drip)
    settings = LOCAL.model_copy(update={"total_timeout_s": 1.0, "retries": 0})
    started = time.monotonic()
    with pytest.raises(DownloadTimeoutError, match="longer than 1 s"):
        fetch(url, tmp_path, settings)
    assert time.monotonic() - started < 3.0
    assert _files(tmp_path) == []


def test_announced_size_over_limit(server: LoopbackServer, video: Path, tmp_path: Path) -> None:
    url = server.route("/clip.mp4", file_response(video))
    with pytest.raises(TooLargeError, match="over the 100000 bytes limit"):
        fetch(url, tmp_path, LOCAL.model_copy(update={"max_bytes": 100_000}))
    assert _files(tmp_path) == []


def test_streamed_size_over_limit_removes_the_partial_file(
    server: LoopbackServer, video: Path, tmp_path: Path
) -> None:
    url = server.route("/chunked.mp4", chunked_response(video, "video/mp4", chunk_size=16_384))
    with pytest.raises(TooLargeError, match="stopped while downloading"):
        fetch(url, tmp_path, LOCAL.model_copy(update={"max_bytes": 100_000}))
    assert _files(tmp_path) == []
    # Without the limit the same chunked response downloads whole.
    assert fetch(url, tmp_path, LOCAL).sha256 == VIDEO_SHA256


def test_interrupted_download_resumes_with_a_range_request(
    server: LoopbackServer, video: Path, tmp_path: Path
) -> None:
    responses = [truncated_response(video, 200_000), file_response(video, "video/mp4")]
    url = server.route("/cut.mp4", sequence(responses))
    result = fetch(url, tmp_path, LOCAL)
    assert result.sha256 == VIDEO_SHA256
    ranges = [r.headers.get("range") for r in server.requests("/cut.mp4")]
    assert ranges == [None, "bytes=200000-"]


def test_downloads_through_an_http_proxy(
    server: LoopbackServer, video: Path, tmp_path: Path
) -> None:
    # The loopback server serves routes by path, so it can play an HTTP proxy: the request line
    # carries the absolute URL of a host that does not even resolve here.
    server.route("/clip.mp4", file_response(video))
    settings = DownloadSettings(proxy=server.base_url)
    result = fetch("http://media.example.invalid/clip.mp4", tmp_path, settings)
    assert result.sha256 == VIDEO_SHA256
    assert server.requests("/clip.mp4")[0].target == "http://media.example.invalid/clip.mp4"
    # The guard still applies to the target behind the proxy (the proxy itself is exempt).
    with pytest.raises(ForbiddenAddressError):
        fetch("http://10.1.2.3/clip.mp4", tmp_path, settings)
    assert server.hits("/clip.mp4") == 1


@pytest.mark.parametrize(
    "url",
    ["ftp://127.0.0.1/clip.mp4", "file:///etc/passwd", "not a url", "", "javascript:alert(1)"],
)
def test_invalid_urls(tmp_path: Path, url: str) -> None:
    with pytest.raises(InvalidUrlError):
        fetch(url, tmp_path, LOCAL)


# --- yt-dlp, for real, on loopback -------------------------------------------------------------


def test_html_page_falls_back_to_ytdlp(server: LoopbackServer, video: Path, tmp_path: Path) -> None:
    server.route("/media/clip.mp4", file_response(video, "video/mp4"))
    page = b'<!DOCTYPE html><html><body><video src="/media/clip.mp4"></video></body></html>'
    url = server.route("/post/42", bytes_response(page, "text/html; charset=utf-8"))
    result = fetch(url, tmp_path, LOCAL)
    assert result.method == "yt-dlp"
    assert result.sha256 == VIDEO_SHA256
    assert result.final_url == server.url("/media/clip.mp4")
    assert result.path == tmp_path / f"{VIDEO_SHA256}.bin"
    assert _files(tmp_path) == [result.path]  # yt-dlp's work folder is gone


def test_the_body_decides_not_the_content_type(
    server: LoopbackServer, video: Path, tmp_path: Path
) -> None:
    # A video labelled text/html is downloaded directly...
    url = server.route("/mislabelled", file_response(video, "text/html"))
    result = fetch(url, tmp_path, LOCAL)
    assert (result.method, result.sha256) == ("http", VIDEO_SHA256)
    # ...and a web page labelled video/mp4 is not taken for a video. (yt-dlp's generic
    # extractor believes the label and saves the page; the page is then refused.)
    page = b"  <html><body><video src='/media/clip.mp4'></video></body></html>"
    url = server.route("/page.mp4", bytes_response(page, "video/mp4"))
    with pytest.raises(DownloadError, match="no image or video found"):
        fetch(url, tmp_path, LOCAL)
    assert _files(tmp_path) == [result.path]


def test_ytdlp_media_url_is_checked_by_the_guard(
    server: LoopbackServer, video: Path, tmp_path: Path
) -> None:
    media = server.route("/media/clip.mp4", file_response(video, "video/mp4"))
    page = f'<html><body><video src="{media}"></video></body></html>'.encode()
    url = _localhost(server.route("/post", bytes_response(page, "text/html")))
    settings = DownloadSettings(allowed_private_hosts=frozenset({"localhost"}))
    with pytest.raises(ForbiddenAddressError, match=r"127\.0\.0\.1"):
        fetch(url, tmp_path, settings)
    assert server.hits("/media/clip.mp4") == 0
    assert _files(tmp_path) == []


def test_a_redirect_inside_ytdlp_is_checked_by_the_guard(
    server: LoopbackServer, video: Path, tmp_path: Path
) -> None:
    """The page and its media URL pass the guard (an exempt host name), but the media answers
    with a redirect to a private address: yt-dlp follows redirects by itself, and it goes
    through the guard proxy, which refuses the hop before any byte is fetched from there."""
    private = server.route("/media/clip.mp4", file_response(video, "video/mp4"))
    server.route("/media/hop.mp4", redirect_response(private))
    page = b'<html><body><video src="/media/hop.mp4"></video></body></html>'
    url = _localhost(server.route("/post", bytes_response(page, "text/html")))
    settings = DownloadSettings(allowed_private_hosts=frozenset({"localhost"}), retries=0)
    with pytest.raises(ForbiddenAddressError, match=r"127\.0\.0\.1"):
        fetch(url, tmp_path, settings)
    assert server.hits("/media/hop.mp4") >= 1 and server.hits("/media/clip.mp4") == 0
    assert _files(tmp_path) == []


def test_the_guard_proxy_tunnels_only_to_allowed_addresses(server: LoopbackServer) -> None:
    """``CONNECT`` (how HTTPS goes through a proxy) to a refused address is answered 403 and
    kept as the refusal; to an allowed one it tunnels the bytes both ways."""
    import socket

    from pipeline.download.proxy import GuardProxy

    target = server.route("/hello", bytes_response(b"tunnelled", "text/plain"))
    port = int(target.split(":")[2].split("/")[0])

    def connect(settings: DownloadSettings) -> bytes:
        with (
            GuardProxy(settings) as proxy,
            socket.create_connection(
                ("127.0.0.1", int(proxy.url.rsplit(":", 1)[1])), timeout=5
            ) as s,
        ):
            s.sendall(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            answer = s.recv(4096)
            if answer.startswith(b"HTTP/1.1 200"):
                s.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                while chunk := s.recv(4096):
                    answer += chunk
            refused.extend(proxy.refused)
            return answer

    refused: list[ForbiddenAddressError] = []
    denied = connect(DownloadSettings())
    assert denied.startswith(b"HTTP/1.1 403") and len(refused) == 1
    assert "loopback" in str(refused[0])
    allowed = connect(LOCAL)
    assert allowed.startswith(b"HTTP/1.1 200 Connection established") and b"tunnelled" in allowed


def test_ytdlp_size_limit_on_a_stream_without_length(
    server: LoopbackServer, video: Path, tmp_path: Path
) -> None:
    server.route("/media/stream", chunked_response(video, "video/mp4", chunk_size=16_384))
    page = b'<html><body><video src="/media/stream"></video></body></html>'
    url = server.route("/post", bytes_response(page, "text/html"))
    with pytest.raises(TooLargeError):
        fetch(url, tmp_path, LOCAL.model_copy(update={"max_bytes": 100_000}))
    assert _files(tmp_path) == []


def test_ytdlp_errors_are_mapped(server: LoopbackServer, tmp_path: Path) -> None:
    empty = server.route(
        "/empty", bytes_response(b"<html><body>no video</body></html>", "text/html")
    )
    with pytest.raises(DownloadError, match="no image or video found"):
        fetch(empty, tmp_path, LOCAL)
    page = b'<html><body><video src="/gone.mp4"></video></body></html>'
    broken = server.route("/broken", bytes_response(page, "text/html"))
    with pytest.raises(DownloadError, match="404"):
        fetch(broken, tmp_path, LOCAL.model_copy(update={"retries": 0}))
    assert (
        _map_ytdlp_error(
            yt_dlp.utils.DownloadError("ERROR: Read timed out."), "https://x.example/v"
        ).kind
        == DownloadTimeoutError.kind
    )


def test_ytdlp_options() -> None:
    settings = DownloadSettings(proxy="socks5://127.0.0.1:9050", max_bytes=10_000_000)
    options = ytdlp_options(settings, Path("/tmp/out"))
    assert options["format"] == settings.ytdlp_format
    assert "+" not in options["format"]  # single files: no ffmpeg merge
    assert options["proxy"] == "socks5://127.0.0.1:9050"
    # The user's proxy wins over the guard proxy; without one, the guard proxy is used.
    guarded = "http://127.0.0.1:1"
    assert ytdlp_options(settings, Path("/tmp/out"), guard_proxy=guarded)["proxy"] == settings.proxy
    assert (
        ytdlp_options(DownloadSettings(), Path("/tmp/o"), guard_proxy=guarded)["proxy"] == guarded
    )
    assert options["max_filesize"] == 10_000_000
    assert options["noplaylist"] is True
    assert options["socket_timeout"] == settings.read_timeout_s
    assert options["cachedir"] is False
    assert options["outtmpl"]["default"].startswith("/tmp/out/")
    reject = options["match_filter"]
    assert reject({"duration": 3601.0}) is not None
    assert reject({"duration": 60.0}) is None and reject({}) is None
    # The options are accepted by the real YoutubeDL.
    with yt_dlp.YoutubeDL(options) as ydl:
        assert ydl.params["format"] == settings.ytdlp_format
    assert "proxy" not in ytdlp_options(DownloadSettings(), Path("/tmp/out"))


def test_extracted_info_is_checked_before_downloading() -> None:
    settings = DownloadSettings(max_duration_s=600)
    page = "https://media.example/post"
    public = {"url": "https://93.184.215.14/v.mp4", "duration": 30}  # an IP literal: no DNS
    _check_extracted(public, page, settings)
    with pytest.raises(TooLargeError, match="601 s"):
        _check_extracted({**public, "duration": 601}, page, settings)
    with pytest.raises(DownloadError, match="playlist"):
        _check_extracted({"_type": "playlist", "entries": []}, page, settings)
    with pytest.raises(DownloadError, match="live"):
        _check_extracted({**public, "is_live": True}, page, settings)
    with pytest.raises(ForbiddenAddressError):
        _check_extracted({"url": "file:///etc/passwd"}, page, settings)
    with pytest.raises(ForbiddenAddressError, match="link-local"):
        _check_extracted(
            {"requested_formats": [public, {"url": "http://169.254.169.254/latest"}]},
            page,
            settings,
        )


# --- pure functions ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("HTTP://Example.COM:80/a/B?x=1&a=2#frag", "http://example.com/a/B?x=1&a=2"),
        ("https://Example.com:443", "https://example.com/"),
        ("https://example.com:8443/p", "https://example.com:8443/p"),
        ("  https://example.com/a b  ", "https://example.com/a%20b"),
        ("https://bücher.example/x", "https://xn--bcher-kva.example/x"),
        ("http://[::1]:80/x", "http://[::1]/x"),
        ("http://EXAMPLE.com./x?Q=A", "http://example.com/x?Q=A"),
    ],
)
def test_normalise_url(url: str, expected: str) -> None:
    assert normalise_url(url) == expected
    assert normalise_url(expected) == expected  # idempotent


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/a",
        "file:///etc/passwd",
        "garbage",
        "",
        "http:///nohost",
        "https://user:secret@example.com/",
        "https://example.com/\r\nX-Injected: 1",
        "data:text/html,hi",
    ],
)
def test_normalise_url_rejects(url: str) -> None:
    with pytest.raises(InvalidUrlError):
        normalise_url(url)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "https://www.dropbox.com/s/abc123/clip.mp4?dl=0",
            "https://www.dropbox.com/s/abc123/clip.mp4?dl=1",
        ),
        (
            "https://dropbox.com/scl/fi/xyz/clip.mp4?rlkey=k3y&st=s7&dl=0",
            "https://www.dropbox.com/scl/fi/xyz/clip.mp4?rlkey=k3y&st=s7&dl=1",
        ),
        (
            "https://drive.google.com/file/d/1AbC-d_E/view?usp=sharing",
            "https://drive.google.com/uc?export=download&id=1AbC-d_E",
        ),
        (
            "https://drive.google.com/open?id=1AbC-d_E",
            "https://drive.google.com/uc?export=download&id=1AbC-d_E",
        ),
        (
            "https://drive.google.com/uc?id=1AbC-d_E&export=view",
            "https://drive.google.com/uc?export=download&id=1AbC-d_E",
        ),
        ("https://www.dropbox.com/home/folder", "https://www.dropbox.com/home/folder"),
        ("https://example.com/file/d/123/view", "https://example.com/file/d/123/view"),
    ],
)
def test_rewrite_share_link(url: str, expected: str) -> None:
    assert rewrite_share_link(url) == expected


@pytest.mark.parametrize(
    ("url", "platform"),
    [
        ("https://www.youtube.com/watch?v=abc", True),
        ("https://m.youtube.com/watch?v=abc", True),
        ("https://youtu.be/abc", True),
        ("https://x.com/user/status/1", True),
        ("https://twitter.com/user/status/1", True),
        ("https://www.facebook.com/watch/?v=1", True),
        ("https://fb.watch/abc", True),
        ("https://vimeo.com/123", True),
        ("https://www.tiktok.com/@u/video/1", True),
        ("https://notyoutube.com/watch", False),
        ("https://example.com/video.mp4", False),
        ("https://youtube.com.evil.example/watch", False),
    ],
)
def test_is_platform_url(url: str, platform: bool) -> None:
    assert is_platform_url(url) is platform


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.0.0.1", "private"),
        ("192.168.1.1", "private"),
        ("172.16.0.1", "private"),
        ("fc00::1", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::ffff:127.0.0.1", "loopback"),
        ("2002:7f00:1::", "loopback"),  # 6to4 wrapping 127.0.0.1
        ("100.64.0.1", "non-global"),
        ("240.0.0.1", "reserved"),
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
    ],
)
def test_address_classes(address: str, reason: str | None) -> None:
    assert _non_public_reason(address) == reason


def test_check_host_resolves_and_checks_every_address() -> None:
    assert check_host("8.8.8.8", 443, DownloadSettings()) == ["8.8.8.8"]
    with pytest.raises(ForbiddenAddressError, match="localhost"):
        check_host("localhost", 80, DownloadSettings())
    assert "127.0.0.1" in check_host("localhost", 80, LOCAL)
    with pytest.raises(DownloadError, match="cannot resolve"):
        check_host("no-such-host.invalid", 80, DownloadSettings())


def test_settings_validation() -> None:
    defaults = DownloadSettings()
    assert defaults.max_bytes == 2 * 1024**3 and defaults.max_duration_s == 3600
    assert defaults.allow_private_addresses is False and defaults.proxy is None
    with pytest.raises(ValueError, match="proxy"):
        DownloadSettings(proxy="ftp://127.0.0.1:21")
    with pytest.raises(ValueError, match="ffmpeg"):
        DownloadSettings(ytdlp_format="bv+ba")
    with pytest.raises(ValueError):
        DownloadSettings(max_bytes=0)
    with pytest.raises(ValueError):
        DownloadSettings(unknown_option=True)  # type: ignore[call-arg]

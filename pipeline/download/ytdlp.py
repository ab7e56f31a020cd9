"""Platform pages (YouTube, X, Facebook...) and other web pages: downloads through yt-dlp.

yt-dlp makes its own connections, so the page URL and every media URL it extracted are checked
by the address guard before anything is downloaded. Redirects *inside* yt-dlp's download are
not re-checked: the residual risk of this path, stated here so nobody assumes otherwise.
Playlists and live streams are refused; size, duration and time limits hold as on the direct
path (:func:`ytdlp_options`, and a progress hook for streams that grow past their announced size).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from pipeline.download.guard import check_host
from pipeline.download.proxy import GuardProxy
from pipeline.download.settings import Downloaded, DownloadSettings, mib, total_timeout_error
from pipeline.download.sniff import SNIFF_BYTES, looks_like_html
from pipeline.download.urls import DEFAULT_PORTS, short_url
from pipeline.errors import (
    DfdError,
    DownloadError,
    DownloadTimeoutError,
    ForbiddenAddressError,
    TooLargeError,
)
from pipeline.media import sha256_file

log = logging.getLogger(__name__)

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


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
    guard_proxy: str | None = None,
) -> dict[str, Any]:
    """Options for ``yt_dlp.YoutubeDL``: format, limits, proxy, no playlists, no side effects.

    ``guard_proxy``: the :class:`~pipeline.download.proxy.GuardProxy` every connection goes
    through when no proxy of the user's is configured."""
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
    elif guard_proxy is not None:
        options["proxy"] = guard_proxy
    return options


def _duration_filter(max_duration_s: float) -> Callable[..., str | None]:
    def reject_long(info: dict[str, Any], *, incomplete: bool = False) -> str | None:
        duration = info.get("duration")
        if duration is not None and duration > max_duration_s:
            return f"duration {duration:.0f} s is over the {max_duration_s:.0f} s limit"
        return None

    return reject_long


def fetch_with_ytdlp(
    source: str, url: str, dest_dir: Path, settings: DownloadSettings, deadline: float
) -> Downloaded:
    import yt_dlp  # heavy (~0.5 s): only when a platform URL actually needs it

    parsed = httpx.URL(url)
    check_host(parsed.host, parsed.port or DEFAULT_PORTS[parsed.scheme], settings)
    work_dir = dest_dir / f".yt-dlp-{uuid.uuid4().hex}"
    work_dir.mkdir()
    limit_error: list[DfdError] = []

    def enforce_limits(status: dict[str, Any]) -> None:
        # yt-dlp's max_filesize trusts announced sizes; this also stops a stream that grows.
        done = int(status.get("downloaded_bytes") or 0)
        if done > settings.max_bytes:
            limit_error.append(
                TooLargeError(
                    f"the video at {short_url(url)} is larger than the "
                    f"{mib(settings.max_bytes)} limit (stopped while downloading)"
                )
            )
        elif time.monotonic() > deadline:
            limit_error.append(total_timeout_error(settings))
        if limit_error:
            raise limit_error[0]

    try:
        # Without a proxy of the user's, every connection yt-dlp opens (redirect hops and
        # fragments included) goes through the address guard; behind the user's proxy, the
        # page and the extracted media URLs are checked here (a proxy connects by itself).
        with (
            GuardProxy(settings) as guard,
            yt_dlp.YoutubeDL(ytdlp_options(settings, work_dir, enforce_limits, guard.url)) as ydl,
        ):
            try:
                info = ydl.extract_info(url, download=False)
                _check_extracted(info, url, settings)
                info = ydl.process_ie_result(info, download=True)
            except yt_dlp.utils.DownloadError as exc:
                if limit_error:
                    raise limit_error[0] from exc
                if guard.refused:
                    raise guard.refused[0] from exc
                raise _map_ytdlp_error(exc, url) from exc
        files = [p for p in work_dir.iterdir() if p.is_file() and not p.name.endswith(".part")]
        if not files:
            # yt-dlp skips, rather than fails, a format over max_filesize.
            raise TooLargeError(
                f"the video at {short_url(url)} is over the {mib(settings.max_bytes)} limit "
                "or no downloadable format was found"
            )
        media = max(files, key=lambda p: p.stat().st_size)
        with media.open("rb") as fh:
            if looks_like_html(fh.read(SNIFF_BYTES)):
                # The generic extractor trusts a video/* Content-Type and saves whatever came.
                raise DownloadError(f"no image or video found at {short_url(url)} (a web page)")
        size_bytes = media.stat().st_size
        if size_bytes > settings.max_bytes:
            raise TooLargeError(
                f"the video at {short_url(url)} is {mib(size_bytes)}, over the "
                f"{mib(settings.max_bytes)} limit"
            )
        sha256 = sha256_file(media)
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
        raise DownloadError(f"yt-dlp found no video at {short_url(url)}")
    if info.get("_type") in ("playlist", "multi_video"):
        raise DownloadError(
            f"{short_url(url)} is a playlist or a post with several videos; link one video"
        )
    if info.get("is_live"):
        raise DownloadError(
            f"{short_url(url)} is a live stream; only recorded videos can be analysed"
        )
    duration = info.get("duration")
    if isinstance(duration, int | float) and duration > settings.max_duration_s:
        raise TooLargeError(
            f"the video at {short_url(url)} lasts {duration:.0f} s, over the "
            f"{settings.max_duration_s:.0f} s limit"
        )
    for media_url in _media_urls(info):
        parsed = httpx.URL(media_url)
        if parsed.scheme not in DEFAULT_PORTS:
            raise ForbiddenAddressError(
                f"the page at {short_url(url)} points to a non-http media URL ({parsed.scheme}:)"
            )
        check_host(parsed.host, parsed.port or DEFAULT_PORTS[parsed.scheme], settings)


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
        return DownloadTimeoutError(f"yt-dlp timed out on {short_url(url)}: {message}")
    if "unsupported url" in lowered:
        return DownloadError(f"no image or video found at {short_url(url)}")
    return DownloadError(f"yt-dlp could not download {short_url(url)}: {message}")

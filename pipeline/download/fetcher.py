"""The download entry point: which back end fetches a URL."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from pipeline.download.direct import NeedsExtractor, fetch_direct
from pipeline.download.settings import Downloaded, DownloadSettings
from pipeline.download.urls import is_platform_url, normalise_url, rewrite_share_link
from pipeline.download.ytdlp import fetch_with_ytdlp

log = logging.getLogger(__name__)


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
        return fetch_with_ytdlp(source, url, dest_dir, settings, deadline)
    try:
        return fetch_direct(source, url, dest_dir, settings, deadline)
    except NeedsExtractor as handoff:
        log.info("%s is a web page, not a media file; trying yt-dlp", handoff.url)
        return fetch_with_ytdlp(source, handoff.url, dest_dir, settings, deadline)

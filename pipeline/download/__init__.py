"""URL -> local file: direct HTTP(S), Dropbox and Google Drive links, yt-dlp for platforms.

Paper section 3.1 ("Download Media") and 5.1: links to files on file-sharing services and to
posts on social platforms (YouTube, Twitter/X, Facebook...) must all work; yt-dlp is the fast
back end for platforms, and the downloader may need to run behind a proxy such as Tor.

A public service that fetches URLs it is given is an SSRF risk, so:

* only ``http``/``https`` URLs are accepted (:func:`~pipeline.download.urls.normalise_url`);
* every TCP connection the direct downloader makes goes through the address guard
  (:mod:`pipeline.download.guard`), which resolves the host, refuses it if *any* address is
  loopback, private, link-local, multicast, reserved or unspecified, and then connects to the
  checked address itself. Checking at connect time covers every redirect hop (redirects are
  followed by hand, at most ``max_redirects``) and closes the DNS-rebinding gap between "check"
  and "connect";
* yt-dlp makes its own connections, so for it the page URL and every media URL it extracted are
  checked the same way before it downloads anything. Redirects *inside* yt-dlp's download are not
  re-checked: the residual risk of the yt-dlp path, stated here so nobody assumes otherwise.

Size, duration and time limits hold on both paths; the file is streamed to disk, never held in
memory, and a file that breaks a limit is deleted.

Modules: :mod:`~pipeline.download.settings` (limits, the result), :mod:`~pipeline.download.urls`
(canonical URLs, share links, platforms), :mod:`~pipeline.download.guard` (the address guard),
:mod:`~pipeline.download.sniff` (web page or media file), :mod:`~pipeline.download.direct`
(HTTP with retries and resumption), :mod:`~pipeline.download.ytdlp` (platforms) and
:mod:`~pipeline.download.fetcher` (:func:`fetch`, which picks the back end).
"""

from pipeline.download.fetcher import fetch
from pipeline.download.guard import check_host
from pipeline.download.settings import Downloaded, DownloadMethod, DownloadSettings
from pipeline.download.urls import (
    PLATFORM_DOMAINS,
    is_platform_url,
    normalise_url,
    rewrite_share_link,
)
from pipeline.download.ytdlp import ytdlp_options

__all__ = [
    "PLATFORM_DOMAINS",
    "DownloadMethod",
    "DownloadSettings",
    "Downloaded",
    "check_host",
    "fetch",
    "is_platform_url",
    "normalise_url",
    "rewrite_share_link",
    "ytdlp_options",
]

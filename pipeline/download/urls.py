"""Download URLs: the canonical form, share links made direct, platform pages recognised.

Only ``http``/``https`` URLs are accepted (:func:`normalise_url`), the first of the download's
SSRF rules (see :mod:`pipeline.download`).
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode

import httpx

from pipeline.errors import InvalidUrlError

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


DEFAULT_PORTS = {"http": 80, "https": 443}
_GDRIVE_FILE_PATH = re.compile(r"^/file/d/([A-Za-z0-9_-]+)")


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
        raise InvalidUrlError(f"not a valid URL: {short_url(text)} ({exc})") from exc
    scheme = parsed.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        shown = f"'{scheme}'" if scheme else "no scheme"
        raise InvalidUrlError(
            f"only http:// and https:// links can be downloaded, this one has {shown}: "
            f"{short_url(text)}"
        )
    host = raw_host.lower().rstrip(".")
    if not host:
        raise InvalidUrlError(f"the URL has no host name: {short_url(text)}")
    if parsed.userinfo:
        raise InvalidUrlError("URLs with a user name or password are not accepted")
    port = parsed.port
    if port == DEFAULT_PORTS[scheme]:
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


def short_url(url: str, limit: int = 200) -> str:
    return url if len(url) <= limit else url[: limit - 3] + "..."

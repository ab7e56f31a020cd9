"""What a download may do, and what it yields.

:class:`DownloadSettings` holds the limits (size, duration, time) and network options (proxy,
retries, the private-address exemptions) of :func:`pipeline.download.fetch`; :class:`Downloaded`
is the file it wrote. The messages for a broken limit are here so that both download paths
word them alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipeline.errors import DownloadTimeoutError

DownloadMethod = Literal["http", "yt-dlp"]


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


def total_timeout_error(settings: DownloadSettings) -> DownloadTimeoutError:
    return DownloadTimeoutError(
        f"the download took longer than {settings.total_timeout_s:.0f} s; "
        "try a smaller file or a faster link"
    )


def mib(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:.1f} MiB" if n_bytes >= 2**20 else f"{n_bytes} bytes"

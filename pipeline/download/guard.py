"""The address guard: downloads connect to public addresses only (the SSRF defence).

:func:`check_host` resolves a host and refuses it if *any* address is loopback, private,
link-local, multicast, reserved or unspecified. :class:`GuardedTransport` makes every TCP
connection of the direct downloader go through that check and then to the checked address
itself, which covers every redirect hop and closes the DNS-rebinding gap between "check" and
"connect". Behind a proxy the proxy connects, so :func:`preflight` checks the target before
each request instead.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import re
import socket
from collections.abc import Iterable, Iterator
from typing import Any

import httpcore
import httpx

from pipeline.download.settings import DownloadSettings
from pipeline.download.urls import DEFAULT_PORTS
from pipeline.errors import DownloadError, ForbiddenAddressError

log = logging.getLogger(__name__)


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


def preflight(url: str, settings: DownloadSettings) -> None:
    """Behind a proxy the proxy connects, so the target is checked here, before each request.

    Names that do not resolve locally are left to the proxy (Tor resolves names itself).
    """
    parsed = httpx.URL(url)
    port = parsed.port or DEFAULT_PORTS[parsed.scheme]
    try:
        check_host(parsed.host, port, settings)
    except ForbiddenAddressError:
        raise
    except DownloadError:
        log.debug("%s does not resolve locally; leaving it to the proxy", parsed.host)


class _GuardedBackend(httpcore.NetworkBackend):
    """httpcore's synchronous backend, but every TCP connection goes to checked addresses only.

    The configured proxy itself is exempt (the operator chose it); the target host behind a proxy
    is checked before each request instead (see :func:`preflight`).
    """

    def __init__(self, settings: DownloadSettings) -> None:
        self._settings = settings
        self._inner = httpcore.SyncBackend()
        self._proxy_origin: tuple[str, int] | None = None
        if settings.proxy is not None:
            proxy = httpx.URL(settings.proxy)
            default = 1080 if proxy.scheme.startswith("socks") else DEFAULT_PORTS[proxy.scheme]
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


class GuardedTransport(httpx.BaseTransport):
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

"""What the HTTP API talks to: the job runner, the stores, and who is calling.

:class:`ApiContext` holds everything the routes use (:mod:`serve.api`, :mod:`serve.routes`,
:mod:`serve.mever`); :class:`RunnerClient` is the job runner as the ingress sees it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from fastapi import Request

from serve.auth import KeyStore, RateLimiter
from serve.config import ServiceConfig
from serve.jobstore import JobStore
from serve.storage import ArtefactStorage

__all__ = ["ApiContext", "Client", "HandleRunnerClient", "RunnerClient"]


class RunnerClient(Protocol):
    """The job runner as the ingress sees it (a deployment handle, or in-process)."""

    async def wake(self) -> None: ...

    async def describe(self) -> dict[str, Any]:
        """``cache_namespace``, ``models`` (member infos as dicts), ``warnings``, ..."""
        ...

    async def stats(self) -> dict[str, Any]: ...


class HandleRunnerClient:
    """:class:`RunnerClient` over the ``JobRunner`` deployment's handle."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    async def wake(self) -> None:
        await self.handle.wake.remote()

    async def describe(self) -> dict[str, Any]:
        return await self.handle.describe.remote()

    async def stats(self) -> dict[str, Any]:
        return await self.handle.stats.remote()


@dataclass
class ApiContext:
    """Everything the routes use; :meth:`open` builds it from the configuration."""

    config: ServiceConfig
    store: JobStore
    storage: ArtefactStorage
    keys: KeyStore | None
    limiter: RateLimiter
    runner: RunnerClient

    @classmethod
    def open(cls, config: ServiceConfig, runner: RunnerClient) -> ApiContext:
        return cls(
            config=config,
            store=config.open_job_store(),
            storage=config.open_storage(),
            keys=config.open_key_store() if config.auth.mode == "keys" else None,
            limiter=config.open_rate_limiter(),
            runner=runner,
        )

    def base_url(self, request: Request) -> str:
        """The service's public base URL without a trailing slash (``public_base_url``, else
        the one the request came in on)."""
        return (self.config.public_base_url or str(request.base_url)).rstrip("/")


@dataclass(frozen=True)
class Client:
    """Who is calling: ``owner`` is the API key id (``None`` when auth is off)."""

    owner: str | None
    address: str

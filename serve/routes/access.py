"""Who is calling: the API key (or, with auth off, the address) and its rate limit.

Routes take a :data:`Caller` parameter; it answers 401 without a valid key when keys are
required and 429 over the caller's rate.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from serve.auth import RateDecision
from serve.context import ApiContext, Client
from serve.problems import ProblemError

__all__ = ["Caller", "authenticate", "current_client"]


def _presented_key(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip() or None
    return request.headers.get("x-api-key") or None


def authenticate(ctx: ApiContext, request: Request) -> Client:
    """The caller, or 401 (no valid key when keys are required) / 429 (over its rate)."""
    address = request.client.host if request.client else "unknown"
    auth = ctx.config.auth
    if auth.mode == "keys":
        assert ctx.keys is not None
        failures = f"authfail:{address}"
        gate = ctx.limiter.hit(failures, auth.failed_auth_per_min, cost=0)
        if not gate.allowed:
            raise _refused(gate, "too many failed authentications from this address")
        presented = _presented_key(request)
        record = ctx.keys.verify(presented) if presented else None
        if record is None:
            ctx.limiter.hit(failures, auth.failed_auth_per_min)
            raise ProblemError.of(
                "unauthorized",
                "a valid API key is required: send 'Authorization: Bearer <key>'",
                headers={"WWW-Authenticate": 'Bearer realm="dfd"'},
            )
        decision = ctx.limiter.hit(f"key:{record.key_id}", record.rate_per_min, burst=auth.burst)
        owner: str | None = record.key_id
    else:
        decision = ctx.limiter.hit(f"ip:{address}", auth.anonymous_rate_per_min, burst=auth.burst)
        owner = None
    if not decision.allowed:
        raise _refused(decision, f"over {decision.limit} requests per minute")
    return Client(owner, address)


def _refused(decision: RateDecision, why: str) -> ProblemError:
    """The 429 of a refused limiter ``decision``, with its ``Retry-After``."""
    headers = decision.headers()
    return ProblemError.of(
        "rate-limited", f"{why}; retry in {headers['Retry-After']} s", headers=headers
    )


def current_client(request: Request) -> Client:
    """FastAPI dependency: :func:`authenticate` against the app's context."""
    return authenticate(request.app.state.ctx, request)


Caller = Annotated[Client, Depends(current_client)]

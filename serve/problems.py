"""RFC 7807 ``application/problem+json`` errors with stable ``type`` URIs.

Every error the service returns over HTTP, and every error stored in a failed job, is a
:class:`Problem`. Its ``type`` is ``PROBLEM_BASE_URI + kind`` where ``kind`` is one of
:data:`PROBLEM_KINDS`; the same kinds name the :class:`pipeline.errors.DfdError` subclasses, so a
pipeline failure maps to its problem by ``kind`` alone. Clients branch on ``type``, never on
``title`` or ``detail`` (which are for people and may be reworded).

Unknown exceptions become ``internal`` with a fixed, generic ``detail``: their text can hold
paths, URLs or model internals, and paper section 5.4 keeps the internals private.

FastAPI is imported only inside :func:`install_problem_handlers` and :func:`problem_response`,
so the pipeline, batch jobs and the job store can build problems without a web stack.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from pipeline.errors import DfdError

if TYPE_CHECKING:
    from fastapi import FastAPI
    from starlette.responses import JSONResponse

__all__ = [
    "GENERIC_INTERNAL_DETAIL",
    "PROBLEM_BASE_URI",
    "PROBLEM_KINDS",
    "PROBLEM_MEDIA_TYPE",
    "Problem",
    "ProblemError",
    "ProblemKind",
    "document_problems",
    "install_problem_handlers",
    "make_problem",
    "problem_from_exception",
    "problem_response",
    "problem_type",
]

_log = logging.getLogger(__name__)

#: ``type`` URIs are this base plus the kind; the base never changes within a major version.
PROBLEM_BASE_URI = "https://dfd.dev/problems/"
PROBLEM_MEDIA_TYPE = "application/problem+json"
GENERIC_INTERNAL_DETAIL = "The service failed unexpectedly; the incident was logged."


@dataclass(frozen=True)
class ProblemKind:
    """One registered kind: the suffix of its ``type`` URI, its HTTP status and a short title."""

    kind: str
    status: int
    title: str


def _registry(*kinds: ProblemKind) -> dict[str, ProblemKind]:
    return {k.kind: k for k in kinds}


#: Every ``type`` the service emits, by kind. Statuses: 4xx when the client can fix the request,
#: 502/504 when the remote source failed, 503 when the service cannot serve it as deployed now.
PROBLEM_KINDS: Mapping[str, ProblemKind] = _registry(
    ProblemKind("invalid-url", 400, "Invalid URL"),
    # A request HTTP itself finds malformed (a multipart body without a boundary, two files).
    ProblemKind("bad-request", 400, "Bad request"),
    ProblemKind("method-not-allowed", 405, "Method not allowed"),
    ProblemKind("invalid-input", 422, "Invalid input"),
    ProblemKind("unsupported-media", 422, "Unsupported media"),
    ProblemKind("corrupt-media", 422, "Corrupt media"),
    ProblemKind("empty-media", 422, "Empty media"),
    ProblemKind("not-found-input", 422, "Input file not found"),
    ProblemKind("download-failed", 502, "Download failed"),
    ProblemKind("download-timeout", 504, "Download timed out"),
    # The URL is well formed but points at a private or otherwise refused address (SSRF guard).
    ProblemKind("forbidden-address", 400, "Address not allowed"),
    ProblemKind("too-large", 413, "Media too large"),
    ProblemKind("not-found", 404, "Not found"),
    ProblemKind("range-not-satisfiable", 416, "Range not satisfiable"),
    ProblemKind("unauthorized", 401, "Unauthorized"),
    ProblemKind("forbidden", 403, "Forbidden"),
    ProblemKind("rate-limited", 429, "Too many requests"),
    ProblemKind("overloaded", 503, "Service overloaded"),
    ProblemKind("conflict", 409, "Conflict"),
    ProblemKind("model-error", 500, "Model error"),
    ProblemKind("checkpoint-error", 500, "Checkpoint error"),
    # The request asked for trained weights and this deployment has none: a state of the service.
    ProblemKind("untrained-weights", 503, "Trained weights required"),
    ProblemKind("config-error", 500, "Configuration error"),
    # Batch runs only (never raised by a request); registered so that every kind has a type.
    ProblemKind("run-failed", 500, "Run failed"),
    ProblemKind("internal", 500, "Internal error"),
)


def problem_type(kind: str) -> str:
    """The stable ``type`` URI of a registered kind; ``KeyError`` for an unknown one."""
    if kind not in PROBLEM_KINDS:
        raise KeyError(f"unknown problem kind {kind!r}; register it in PROBLEM_KINDS")
    return PROBLEM_BASE_URI + kind


class Problem(BaseModel):
    """An RFC 7807 problem detail object. Extension members are kept as extra fields.

    ``status`` is the HTTP status code (100..599). ``detail`` is one line for a person;
    ``instance`` a URI reference of this occurrence (e.g. ``/v1/jobs/<id>``).
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    type: str = "about:blank"
    title: str
    status: int = Field(ge=100, le=599)
    detail: str | None = None
    instance: str | None = None

    @property
    def kind(self) -> str | None:
        """The kind in ``type`` (its suffix after :data:`PROBLEM_BASE_URI`), or ``None`` for
        ``about:blank`` and foreign URIs."""
        if self.type.startswith(PROBLEM_BASE_URI):
            return self.type[len(PROBLEM_BASE_URI) :] or None
        return None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready members, absent ones omitted (RFC 7807 members are all optional)."""
        return self.model_dump(mode="json", exclude_none=True)


def make_problem(
    kind: str, detail: str | None = None, *, instance: str | None = None, **extensions: Any
) -> Problem:
    """A problem of a registered ``kind`` with its status and title; ``KeyError`` if unknown."""
    spec = PROBLEM_KINDS.get(kind)
    if spec is None:
        raise KeyError(f"unknown problem kind {kind!r}; register it in PROBLEM_KINDS")
    return Problem(
        type=PROBLEM_BASE_URI + kind,
        title=spec.title,
        status=spec.status,
        detail=detail,
        instance=instance,
        **extensions,
    )


class ProblemError(Exception):
    """Raise inside a handler to answer with ``problem`` (and optional extra response headers,
    e.g. ``Retry-After`` for 429 or ``WWW-Authenticate`` for 401)."""

    def __init__(self, problem: Problem, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(problem.detail or problem.title)
        self.problem = problem
        self.headers: dict[str, str] = dict(headers or {})

    @classmethod
    def of(
        cls,
        kind: str,
        detail: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        instance: str | None = None,
        **extensions: Any,
    ) -> ProblemError:
        """Shorthand for ``ProblemError(make_problem(kind, detail, ...), headers)``."""
        return cls(make_problem(kind, detail, instance=instance, **extensions), headers)


def _registered_ancestor(exc: DfdError) -> ProblemKind:
    # errors.py promises that a DfdError's kind is its problem type suffix. A subclass added there
    # later with a kind not registered here keeps its own type and title, and takes the HTTP status
    # of its nearest registered ancestor (ultimately DfdError's "internal").
    for cls in type(exc).__mro__:
        kind = getattr(cls, "kind", None)
        if isinstance(kind, str) and kind in PROBLEM_KINDS:
            return PROBLEM_KINDS[kind]
    return PROBLEM_KINDS["internal"]


def problem_from_exception(exc: BaseException, *, instance: str | None = None) -> Problem:
    """Map any exception to a problem.

    ``ProblemError`` -> its problem; ``DfdError`` -> type ``PROBLEM_BASE_URI + exc.kind`` with the
    error's one-line message as ``detail`` (status from :data:`PROBLEM_KINDS`, or from the nearest
    registered ancestor class for a kind not registered here); anything else, and a ``DfdError``
    of kind ``internal``, -> ``internal`` with :data:`GENERIC_INTERNAL_DETAIL`, never the
    exception's text.
    """
    if isinstance(exc, ProblemError):
        if instance is not None and exc.problem.instance is None:
            return exc.problem.model_copy(update={"instance": instance})
        return exc.problem
    if isinstance(exc, DfdError) and exc.kind != "internal":
        if exc.kind in PROBLEM_KINDS:
            return make_problem(exc.kind, exc.detail, instance=instance)
        ancestor = _registered_ancestor(exc)
        if ancestor.kind != "internal":
            return Problem(
                type=PROBLEM_BASE_URI + exc.kind,
                title=exc.title,
                status=ancestor.status,
                detail=exc.detail,
                instance=instance,
            )
    return make_problem("internal", GENERIC_INTERNAL_DETAIL, instance=instance)


def problem_response(problem: Problem, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """A Starlette/FastAPI response carrying ``problem`` as ``application/problem+json``."""
    from starlette.responses import JSONResponse

    return JSONResponse(
        problem.to_dict(),
        status_code=problem.status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=dict(headers or {}),
    )


#: Plain HTTP errors raised by the framework (unknown route, wrong method...) that have a kind.
#: The kind of an HTTP error the framework raises, by status.
_STATUS_KINDS = {
    400: "bad-request",
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    409: "conflict",
    413: "too-large",
    416: "range-not-satisfiable",
    422: "invalid-input",
    429: "rate-limited",
    503: "overloaded",
}


def _single(exc: BaseException | None) -> BaseException | None:
    """``exc``, or the one exception inside (nested) exception groups: a middleware's task
    group wraps what the body reader raised."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0] if len(exc.exceptions) == 1 else None
    return exc


def _problem_cause(exc: BaseException | None) -> ProblemError | None:
    """The :class:`ProblemError` behind ``exc``, itself or in an exception group."""
    single = _single(exc)
    return single if isinstance(single, ProblemError) else None


#: The methods a 405's ``Allow`` may name.
_METHODS = ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT")


def _allowed_methods(request: Any) -> list[str]:
    """Every method some route of the app answers on this path (Starlette's own ``Allow``
    names only the methods of the first route that matched the path)."""
    from starlette.routing import Match

    def answers(method: str) -> bool:
        # The full path (the request's own scope may be a mount's, its path made relative).
        scope = {"type": "http", "path": request.url.path, "root_path": "", "method": method}
        return any(route.matches(scope)[0] == Match.FULL for route in request.app.router.routes)

    return [m for m in _METHODS if answers(m)]


def install_problem_handlers(app: FastAPI) -> None:
    """Make every error ``app`` returns a problem+json response.

    Handles :class:`ProblemError`, :class:`DfdError`, request validation (422 ``invalid-input``
    with an ``errors`` list of ``{loc, msg, type}``, never echoing the input), Starlette HTTP
    errors (registered kind where one fits, else ``about:blank`` with the status phrase) and
    any other exception (500 ``internal`` with an ``error_id`` that is also in the log).
    """
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.requests import ClientDisconnect
    from starlette.responses import Response

    async def on_problem(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ProblemError)
        return problem_response(problem_from_exception(exc, instance=request.url.path), exc.headers)

    async def on_dfd_error(request: Request, exc: Exception) -> Response:
        problem = problem_from_exception(exc, instance=request.url.path)
        if problem.kind == "internal":
            return await on_unexpected(request, exc)
        return problem_response(problem)

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type")}
            for e in exc.errors()
        ]
        problem = make_problem(
            "invalid-input",
            "The request does not match the API schema; see 'errors'.",
            instance=request.url.path,
            errors=errors,
        )
        return problem_response(problem)

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        cause = _problem_cause(exc.__cause__)
        if cause is not None:  # e.g. a bounded body FastAPI was parsing
            return await on_problem(request, cause)
        detail = exc.detail if isinstance(exc.detail, str) else None
        kind = _STATUS_KINDS.get(exc.status_code)
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            allowed = _allowed_methods(request)
            headers["Allow"] = ", ".join(allowed)
            detail = f"{request.method} is not allowed here; use {', '.join(allowed)}"
        if kind is not None:
            problem = make_problem(kind, detail, instance=request.url.path)
        else:
            try:
                title = HTTPStatus(exc.status_code).phrase
            except ValueError:
                title = "HTTP error"
            problem = Problem(
                title=title, status=exc.status_code, detail=detail, instance=request.url.path
            )
        return problem_response(problem, headers)

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        cause = _problem_cause(exc)
        if cause is not None:
            return await on_problem(request, cause)
        if isinstance(_single(exc), ClientDisconnect):
            # A client that went away while sending its body: normal, nobody reads the answer.
            _log.debug("client disconnected during %s %s", request.method, request.url.path)
            return problem_response(
                make_problem("invalid-input", "the client closed the connection mid-request")
            )
        error_id = secrets.token_hex(8)
        _log.error(
            "unhandled error %s on %s %s",
            error_id,
            request.method,
            request.url.path,
            exc_info=(type(exc), exc, exc.__traceback__),
        )
        return problem_response(
            make_problem(
                "internal", GENERIC_INTERNAL_DETAIL, instance=request.url.path, error_id=error_id
            )
        )

    app.add_exception_handler(ProblemError, on_problem)
    app.add_exception_handler(DfdError, on_dfd_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)


#: Statuses every operation may answer with a problem (auth, rate limits, body limits, schema,
#: overload, unexpected errors, and route-specific ones); 502/504 only ever describe a job.
_DOCUMENTED_STATUSES = sorted({k.status for k in PROBLEM_KINDS.values()} - {405, 502, 504})


def document_problems(app: FastAPI) -> None:
    """Make ``app``'s OpenAPI document say what the service answers: every operation lists the
    problem statuses (:data:`_DOCUMENTED_STATUSES`) as ``application/problem+json`` with the
    ``Problem`` schema, in place of FastAPI's default 422 body."""
    from fastapi.openapi.utils import get_openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        schemas["Problem"] = Problem.model_json_schema()
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
        problem = {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                responses = operation.setdefault("responses", {})
                for status in _DOCUMENTED_STATUSES:
                    title = HTTPStatus(status).phrase
                    responses[str(status)] = {"description": title, "content": problem}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]

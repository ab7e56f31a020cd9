"""problem+json: the registry, exception mapping, and the FastAPI handlers over real ASGI calls."""

from __future__ import annotations

import inspect
import logging

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel, ValidationError

from pipeline import errors
from serve.problems import (
    GENERIC_INTERNAL_DETAIL,
    PROBLEM_BASE_URI,
    PROBLEM_KINDS,
    PROBLEM_MEDIA_TYPE,
    Problem,
    ProblemError,
    install_problem_handlers,
    make_problem,
    problem_from_exception,
    problem_type,
)

REQUIRED_KINDS = {
    "invalid-url",
    "invalid-input",
    "unsupported-media",
    "corrupt-media",
    "empty-media",
    "not-found-input",
    "download-failed",
    "download-timeout",
    "forbidden-address",
    "too-large",
    "not-found",
    "unauthorized",
    "forbidden",
    "rate-limited",
    "overloaded",
    "conflict",
    "model-error",
    "checkpoint-error",
    "untrained-weights",
    "config-error",
    "run-failed",
    "internal",
}


def _dfd_error_classes() -> list[type[errors.DfdError]]:
    return [
        obj
        for _, obj in inspect.getmembers(errors, inspect.isclass)
        if issubclass(obj, errors.DfdError)
    ]


def test_registry_covers_every_kind_with_a_fitting_status() -> None:
    assert set(PROBLEM_KINDS) >= REQUIRED_KINDS
    for kind, spec in PROBLEM_KINDS.items():
        assert spec.kind == kind
        assert problem_type(kind) == f"{PROBLEM_BASE_URI}{kind}"
        assert 400 <= spec.status <= 599
        assert spec.title
    expected = {
        "too-large": 413,
        "not-found": 404,
        "unauthorized": 401,
        "forbidden": 403,
        "rate-limited": 429,
        "overloaded": 503,
        "conflict": 409,
        "internal": 500,
        "download-timeout": 504,
        "download-failed": 502,
    }
    assert {k: PROBLEM_KINDS[k].status for k in expected} == expected
    assert PROBLEM_BASE_URI == "https://dfd.dev/problems/"


def test_core_pipeline_error_kinds_are_registered() -> None:
    for cls in (
        errors.BadInputError,
        errors.InvalidUrlError,
        errors.MissingFileError,
        errors.EmptyMediaError,
        errors.UnsupportedMediaError,
        errors.CorruptMediaError,
        errors.TooLargeError,
        errors.DownloadError,
        errors.ForbiddenAddressError,
        errors.DownloadTimeoutError,
        errors.ModelError,
        errors.CheckpointError,
        errors.UntrainedWeightsError,
        errors.ConfigError,
    ):
        assert cls.kind in PROBLEM_KINDS, cls


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(KeyError):
        make_problem("no-such-kind")
    with pytest.raises(KeyError):
        problem_type("no-such-kind")


def test_problem_model_keeps_extensions_and_omits_absent_members() -> None:
    p = make_problem("rate-limited", "slow down", instance="/v1/jobs", retry_after_s=12)
    d = p.to_dict()
    assert d == {
        "type": "https://dfd.dev/problems/rate-limited",
        "title": "Too many requests",
        "status": 429,
        "detail": "slow down",
        "instance": "/v1/jobs",
        "retry_after_s": 12,
    }
    assert p.kind == "rate-limited"
    assert Problem.model_validate(d) == p
    bare = Problem(title="Teapot", status=418)
    assert bare.to_dict() == {"type": "about:blank", "title": "Teapot", "status": 418}
    assert bare.kind is None
    with pytest.raises(ValidationError):
        Problem(title="x", status=99)


def _registered_status(cls: type[errors.DfdError]) -> int:
    for c in cls.__mro__:
        if getattr(c, "kind", None) in PROBLEM_KINDS:
            return PROBLEM_KINDS[c.kind].status  # type: ignore[attr-defined]
    raise AssertionError(cls)


# Every DfdError in pipeline/errors.py, including ones other modules add later.
@pytest.mark.parametrize("cls", _dfd_error_classes(), ids=lambda c: c.__name__)
def test_pipeline_errors_map_by_kind(cls: type[errors.DfdError]) -> None:
    p = problem_from_exception(cls("the one-line message"), instance="/v1/jobs/abc")
    if cls.kind == "internal":
        assert p.type == problem_type("internal")
        assert p.detail == GENERIC_INTERNAL_DETAIL
    else:
        assert p.type == PROBLEM_BASE_URI + cls.kind
        assert p.kind == cls.kind
        assert p.title == cls.title
        assert p.status == _registered_status(cls)
        assert p.detail == "the one-line message"
    assert p.instance == "/v1/jobs/abc"


def test_specific_pipeline_mappings() -> None:
    assert problem_from_exception(errors.TooLargeError("big")).status == 413
    assert problem_from_exception(errors.DownloadTimeoutError("slow")).status == 504
    assert problem_from_exception(errors.CorruptMediaError("bad")).kind == "corrupt-media"


def test_unregistered_subclass_keeps_its_kind_with_its_ancestors_status() -> None:
    class WeirdDownload(errors.DownloadError):
        kind = "weird-download"
        title = "Weird download"

    p = problem_from_exception(WeirdDownload("remote said no"))
    assert p.type == PROBLEM_BASE_URI + "weird-download"
    assert p.title == "Weird download"
    assert p.status == 502
    assert p.detail == "remote said no"

    class Oddity(errors.DfdError):
        kind = "oddity"

    # No registered ancestor but "internal": treated as internal, text withheld.
    assert problem_from_exception(Oddity("secret /path")).detail == GENERIC_INTERNAL_DETAIL


def test_unknown_exceptions_never_leak_their_text() -> None:
    secret = "/home/alice/models/secret.pt: Traceback (most recent call last)"
    for exc in (RuntimeError(secret), KeyError(secret), ValueError(secret)):
        p = problem_from_exception(exc)
        assert p.kind == "internal"
        assert p.status == 500
        assert p.detail == GENERIC_INTERNAL_DETAIL
        assert "alice" not in p.model_dump_json()


def test_problem_error_carries_problem_and_headers() -> None:
    err = ProblemError.of("rate-limited", "wait", headers={"Retry-After": "3"})
    assert problem_from_exception(err) is err.problem
    assert err.headers == {"Retry-After": "3"}
    assert problem_from_exception(err, instance="/x").instance == "/x"


class _Body(BaseModel):
    url: str
    n: int


def _app() -> FastAPI:
    app = FastAPI()
    install_problem_handlers(app)

    @app.get("/limited")
    def limited() -> dict[str, str]:
        raise ProblemError.of("rate-limited", "key over its limit", headers={"Retry-After": "7"})

    @app.get("/corrupt")
    def corrupt() -> dict[str, str]:
        raise errors.CorruptMediaError("the video stream could not be decoded; re-encode it")

    @app.get("/boom")
    def boom() -> dict[str, str]:
        raise RuntimeError("db password is hunter2")

    @app.post("/body")
    def body(b: _Body) -> dict[str, str]:
        return {"ok": b.url}

    return app


@pytest.fixture(scope="module")
def client() -> TestClient:
    # raise_server_exceptions=False: Starlette re-raises after the 500 handler ran; a real server
    # sends the handler's response, which is what this asserts on.
    return TestClient(_app(), raise_server_exceptions=False)


def test_handler_problem_error_with_headers(client: TestClient) -> None:
    r = client.get("/limited")
    assert r.status_code == 429
    assert r.headers["content-type"] == PROBLEM_MEDIA_TYPE
    assert r.headers["retry-after"] == "7"
    assert r.json()["type"] == "https://dfd.dev/problems/rate-limited"
    assert r.json()["instance"] == "/limited"


def test_handler_pipeline_error(client: TestClient) -> None:
    r = client.get("/corrupt")
    assert r.status_code == 422
    assert r.headers["content-type"] == PROBLEM_MEDIA_TYPE
    body = r.json()
    assert body["type"] == problem_type("corrupt-media")
    assert body["detail"].startswith("the video stream could not be decoded")


def test_handler_unexpected_error_is_generic_and_logged(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="serve.problems"):
        r = client.get("/boom")
    assert r.status_code == 500
    assert r.headers["content-type"] == PROBLEM_MEDIA_TYPE
    body = r.json()
    assert body["type"] == problem_type("internal")
    assert body["detail"] == GENERIC_INTERNAL_DETAIL
    assert "hunter2" not in r.text and "Traceback" not in r.text
    # The error id ties the generic answer to the logged traceback.
    assert any(body["error_id"] in rec.getMessage() for rec in caplog.records)


def test_handler_validation_error_does_not_echo_input(client: TestClient) -> None:
    r = client.post("/body", json={"url": "sensitive-value", "n": "not-a-number"})
    assert r.status_code == 422
    body = r.json()
    assert body["type"] == problem_type("invalid-input")
    assert [e["loc"] for e in body["errors"]] == [["body", "n"]]
    assert "not-a-number" not in r.text


def test_handler_framework_http_errors(client: TestClient) -> None:
    r = client.get("/no-such-route")
    assert r.status_code == 404
    assert r.headers["content-type"] == PROBLEM_MEDIA_TYPE
    assert r.json()["type"] == problem_type("not-found")
    r = client.delete("/limited")
    assert r.status_code == 405
    assert r.json()["type"] == problem_type("method-not-allowed")
    assert r.json()["title"] == "Method not allowed"
    assert "allow" in r.headers

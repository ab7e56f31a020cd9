"""The API fuzzed against its own OpenAPI document (schemathesis): the live service on real
HTTP on loopback answers every generated request with no server error, only statuses and
content types its document lists, and bodies that match the documented schemas.

Generated URLs are rewritten to a name that can never resolve (``.invalid``, RFC 2606) and the
job worker is not started, so nothing is fetched and nothing is analysed: submissions stay
queued.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from pipeline.model_access import LocalModels
from serve.config import AuthSettings, JobSettings, ServiceConfig
from tests.serve.conftest import LocalService, analysis_settings, local_service

#: Examples per operation: enough to reach every branch of a small API, few enough for the
#: fast suite.
EXAMPLES = 20
UNREACHABLE = "https://media.example.invalid/clip.mp4"


@pytest.fixture(scope="module")
def fuzzed(
    tmp_path_factory: pytest.TempPathFactory, model_dir: Path, local_models: LocalModels
) -> Iterator[LocalService]:
    config = ServiceConfig(
        home=tmp_path_factory.mktemp("fuzz-home"),
        analysis=analysis_settings(model_dir),
        auth=AuthSettings(anonymous_rate_per_min=1_000_000),
        jobs=JobSettings(max_queued_jobs=100_000),
    )
    with local_service(config, local_models, start_worker=False) as service:
        yield service


@pytest.fixture(scope="module")
def api_schema(fuzzed: LocalService) -> Any:
    return schemathesis.openapi.from_url(f"{fuzzed.base_url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


def _unreachable(value: Any) -> Any:
    """``value`` with every ``url`` member pointing nowhere."""
    if isinstance(value, dict):
        return {k: UNREACHABLE if k == "url" else _unreachable(v) for k, v in value.items()}
    return value


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_the_api_answers_as_its_document_says(case: Any) -> None:
    case.body = _unreachable(case.body)
    case.call_and_validate(
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ],
        timeout=30,
    )

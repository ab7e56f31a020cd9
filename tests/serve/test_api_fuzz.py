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
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    positive_data_acceptance,
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


def _unreachable(value: Any) -> Any:
    """``value`` with every ``url`` member pointing nowhere."""
    if isinstance(value, dict):
        return {k: UNREACHABLE if k == "url" else _unreachable(v) for k, v in value.items()}
    return value


CHECKS = [
    positive_data_acceptance,
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def test_the_api_answers_as_its_document_says(fuzzed: LocalService, shared_data: Path) -> None:
    """Every operation of ``/openapi.json``, :data:`EXAMPLES` generated requests each; a
    schema-valid request is never refused (uploads carry a real photo)."""
    image = (shared_data / "faces" / "fr_obama.jpg").read_bytes()
    schema = schemathesis.openapi.from_url(f"{fuzzed.base_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: Any) -> None:
            case.body = _unreachable(case.body)
            if isinstance(case.body, dict) and "file" in case.body:
                case.body["file"] = image  # a medium: random bytes are no image or video
            case.call_and_validate(checks=CHECKS, timeout=30)

        check()

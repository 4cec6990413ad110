"""Schemathesis over the gateway's own /openapi.json: every operation, positive and negative
examples (bounded), against a real gateway process in front of a scripted Ollama (fast and
deterministic). No 5xx, and every response is one the schema documents (status, content type, body).

Driven through hypothesis directly (schemathesis' pytest plugin does not load under pytest 9).
"""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (content_type_conformance, not_a_server_error, response_schema_conformance,
                                 status_code_conformance)

from tests.relay_support import fake_ollama, gateway

EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "30"))  # per operation and mode; ~30 operations
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def gw(out_dir, tmp_path_factory):
    with fake_ollama(out_dir, "fake:latest,other:latest", "--max-chunks", "50") as up, \
            gateway(out_dir, tmp_path_factory.mktemp("schemathesis"), up, OLLABRIDGE_DEFAULT_MODEL="fake:latest",
                    OLLABRIDGE_LOG_LEVEL="warning") as url:
        yield url


def test_every_operation_conforms_to_the_schema(gw):
    schema = schemathesis.openapi.from_url(f"{gw}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 25
    failures: list[str] = []
    calls = 0
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))
            def run(case) -> None:
                nonlocal calls
                calls += 1
                case.call_and_validate(checks=CHECKS, timeout=30)

            try:
                run()
            except Unsatisfiable:
                pass  # no invalid input exists for an operation without parameters
            except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - collect all, then report
                failures.append(f"{operation.label} ({mode.value}): {str(exc)[:1500]}")
    print(f"\nschemathesis: {len(operations)} operations, {calls} calls")
    assert not failures, "\n\n".join(failures)

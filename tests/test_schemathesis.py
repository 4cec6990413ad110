"""Schemathesis over the gateway's own /openapi.json: every operation, positive and negative
examples (bounded), against a real gateway process in front of a scripted Ollama (fast and
deterministic). No 5xx, and every response is one the schema documents (status, content type, body).
Every operation gets positive examples; negative ones may be impossible only where the test sees
nothing to violate (no body, each parameter any string in the path or optional).

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


def nothing_to_negate(operation) -> bool:
    """No request body, and no parameter an invalid value exists for: each is a string of any text
    (no format, length or pattern) that is in the path (so it cannot be left out) or optional."""
    if len(operation.body):
        return False
    for param in operation.iter_parameters():
        schema = {k: v for k, v in (param.definition.get("schema") or {}).items() if k not in ("title", "description")}
        if schema != {"type": "string"} or (param.is_required and param.location.value != "path"):
            return False
    return True


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
    unsatisfiable: list[str] = []
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            made = 0

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))
            def run(case) -> None:
                nonlocal calls, made
                calls += 1
                made += 1
                case.call_and_validate(checks=CHECKS, timeout=30)

            try:
                run()
            except Unsatisfiable:
                if mode is GenerationMode.POSITIVE or not nothing_to_negate(operation):
                    failures.append(f"{operation.label} ({mode.value}): no example could be generated")
                unsatisfiable.append(operation.label)
            except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - collect all, then report
                failures.append(f"{operation.label} ({mode.value}): {str(exc)[:1500]}")
            else:
                if made == 0:
                    failures.append(f"{operation.label} ({mode.value}): not one request was sent")
    print(f"\nschemathesis: {len(operations)} operations, {calls} calls; no negative examples exist for "
          f"{len(unsatisfiable)}: {', '.join(unsatisfiable)}")
    assert not failures, "\n\n".join(failures)

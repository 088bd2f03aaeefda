"""Fuzz the whole OpenAPI schema of a real API process with schemathesis.

Every check schemathesis has but one (see ``EXCLUDED``), on requests that fit the schema
and on requests that do not: no 5xx, every status code documented, responses that match
their schemas, content types and headers, schema-invalid requests refused (unknown query
parameters included), no route that declares the bearer scheme answering without valid
credentials, and the stateful checks (``use_after_free``, ``ensure_resource_availability``).
Examples per operation are bounded (and derandomized) so the suite stays fast and
repeatable.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.conftest import ADMIN_KEY
from tests.e2e.conftest import free_port, wait_http_ok

pytestmark = pytest.mark.e2e

EXAMPLES = 35  # per operation and mode (valid, invalid): about a minute on 2 cores
# Every check schemathesis has, but `positive_data_acceptance`: a request valid for the
# OpenAPI schema may still be refused with 422 by rules the schema cannot state (the task
# type must be registered, its payload must match that task's own parameter schema,
# dependencies must exist, a cron must name a real time). See docs/api.md.
EXCLUDED = [positive_data_acceptance]


def sendable(case: schemathesis.Case) -> bool:
    """False for a case whose query holds a null: the HTTP client leaves such a parameter
    out, so what is sent is not the (invalid) case the checks would judge."""
    return not any(value is None for value in (case.query or {}).values())


@pytest.fixture
def fuzzed_api_url(start_service: object) -> str:
    """A real API process; the limit on requests without a valid key is off, because the
    fuzzer sends hundreds of them on purpose (``ignored_auth``) and must see their 401,
    not the 429 an honest attacker would get (tests/integration cover the limits)."""
    port = free_port()
    proc = start_service(  # type: ignore[operator]
        "api",
        env={
            "SWITCHYARD_API_PORT": str(port),
            "SWITCHYARD_RATE_LIMIT_UNAUTHENTICATED_PER_SECOND": "0",
        },
    )
    url = f"http://127.0.0.1:{port}"
    wait_http_ok(f"{url}/healthz", proc)
    return url


def test_api_conforms_to_its_schema(fuzzed_api_url: str) -> None:
    schema = schemathesis.openapi.from_url(f"{fuzzed_api_url}/openapi.json")
    checked, failures = [], []
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(mode).filter(sendable))
            @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))  # fmt: skip
            def fuzz(case: schemathesis.Case) -> None:
                case.call_and_validate(
                    headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                    excluded_checks=EXCLUDED,
                )

            try:
                fuzz()
            except Unsatisfiable:
                # No parameter, header or body to make invalid (GET /healthz): nothing
                # to send in the negative mode.
                assert mode is GenerationMode.NEGATIVE, operation.label
            except (Exception, BaseExceptionGroup) as exc:  # report every operation's
                failures.append(f"{operation.label} ({mode.value}): {exc!r}")
        checked.append(operation.label)
    assert len(checked) >= 12, checked
    assert not failures, "\n\n".join(failures)

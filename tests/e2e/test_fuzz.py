"""Fuzz the whole OpenAPI schema of a real API process with schemathesis.

Checks: no 5xx, every status code is documented, responses match their schemas and
content types, schema-invalid requests are refused, and no route that declares the
bearer scheme answers without valid credentials (``ignored_auth``). Examples per operation
are bounded (and derandomized) so the suite stays fast and repeatable.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import ADMIN_KEY

pytestmark = pytest.mark.e2e

EXAMPLES = 30
# Not `positive_data_acceptance`: a request valid for the OpenAPI schema may still be
# refused with 422 by rules the schema cannot state (the task type must be registered,
# its payload must match that task's own parameter schema, dependencies must exist).
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
    ignored_auth,
]


def test_api_conforms_to_its_schema(api_url: str) -> None:
    schema = schemathesis.openapi.from_url(f"{api_url}/openapi.json")
    checked, failures = [], []
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        def fuzz(case: schemathesis.Case) -> None:
            case.call_and_validate(
                headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                checks=CHECKS,
            )

        try:
            fuzz()
        except Exception as exc:  # collect every operation's failure, then report all
            failures.append(f"{operation.label}: {exc}")
        checked.append(operation.label)
    assert len(checked) >= 12, checked
    assert not failures, "\n\n".join(failures)

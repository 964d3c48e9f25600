"""Property-based fuzzing of the REST API from its own OpenAPI document (schemathesis).

Runs on the real app with PostgreSQL and Redis, signed in as a customer (and once more as
nobody), and asserts no 5xx, only documented status codes, and responses that match
their schemas.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from core.app import create_app
from tests.test_api import sign_in


@pytest.fixture
def customer_headers(client):
    return sign_in(client, "+919812399999")


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


# Built at import (the test environment is configured by conftest before this runs);
# the app connects lazily, and each test below asks for a clean database.
schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", create_app())


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck),
          derandomize=True)
def test_api_never_fails_and_keeps_its_contract(case, customer_headers):
    case.call_and_validate(headers=customer_headers, checks=CHECKS)


@schema.parametrize()
@settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck),
          derandomize=True)
def test_api_without_a_token_never_fails(case, clean_db):
    case.call_and_validate(checks=CHECKS)

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


@pytest.fixture
def partner_and_ops_headers(client):
    """Demo data, a signed-in partner with an open offer and a signed-in operator."""
    from core.adapters.queue import enqueue
    from core.services.seed import DEMO_PARTNERS, seed_demo
    from tests.conftest import run_jobs
    from tests.test_api import book

    seed_demo()
    customer = sign_in(client, "+919812399998")
    ref = book(client, customer).get_json()["reference"]
    from core.adapters.db import transaction
    from core.domain.booking import Actor, BookingStatus
    from core.services.booking import get_booking, move_booking

    with transaction() as s:  # paid, as if through the gateway: dispatch has work to do
        b = get_booking(s, ref)
        move_booking(s, b, BookingStatus.PAID, Actor.system(), "fuzz set-up")
        booking_id = b.id
    enqueue("workers.dispatch.start_dispatch", booking_id, job_id=f"dispatch-{booking_id}")
    run_jobs()
    return sign_in(client, DEMO_PARTNERS[0][1]), sign_in(client, "+919000000099")


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


@schema.parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck),
          derandomize=True)
def test_api_as_partner_and_as_operator_never_fails(case, partner_and_ops_headers):
    for headers in partner_and_ops_headers:
        case.call_and_validate(headers=headers, checks=CHECKS)

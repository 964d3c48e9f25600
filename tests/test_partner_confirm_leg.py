"""The partner app's pickup and drop confirm the leg the URL names, and no other.

POST /legs/<id>/pickup and /drop went through the SMS reading of "DROP <code> <job>"
(dispatch.split_otp_and_job): a number that is one of the rider's active job numbers is
taken for the job. With the leg in the URL no longer active (the app retrying a drop
after it was delivered) and the code typed equal to the number of another job the rider
holds, the request was applied to that other job: its code checked against the URL's
number, a wrong try counted against a parcel the rider never named."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from core import i18n
from core.adapters.db import transaction
from tests.test_dispatch import CUSTOMER, RECIPIENT, frozen, last_code, legs_of  # noqa: F401
from tests.test_partner_app_more import _taken
from tests.test_partner_app_review import PICK_MARK, _app_partner

pytestmark = pytest.mark.db

API = "/api/v1"


def _confirm(client, headers, leg_id: int, kind: str, otp: str):
    return client.post(f"{API}/legs/{leg_id}/{kind}", headers=headers, json={"otp": otp})


@pytest.mark.parametrize("kind", ["pickup", "drop"])
def test_a_code_equal_to_another_jobs_number_is_never_that_other_job(client, live,
                                                                    frozen, kind):  # noqa: F811
    """Ramesh delivered job 4821 and holds job 4822 (taken; picked up for a drop). The app
    sends POST /legs/4821/<kind> with the code 4822: it was read as "job 4822, code 4821"
    and answered 422 otp_wrong for job 4822, one of its tries gone (a pickup too). Should:
    the answer for job 4821 as for any code (409, delivered already), job 4822 untouched."""
    with transaction() as s:  # job numbers of four digits, like a code
        s.execute(text("SELECT setval(pg_get_serial_sequence('legs', 'id'), 4820)"))
    _, _, headers = _app_partner(client)
    _, done = _taken(client, headers)
    assert _confirm(client, headers, done, "pickup",
                    last_code(CUSTOMER, PICK_MARK)).status_code == 200
    delivered = _confirm(client, headers, done, "drop", last_code(RECIPIENT))
    assert delivered.get_json()["leg_status"] == "delivered", delivered.get_json()
    second, held = _taken(client, headers)
    if kind == "drop":
        assert _confirm(client, headers, held, "pickup",
                        last_code(CUSTOMER, PICK_MARK)).status_code == 200
    status = legs_of(second)[0].status
    assert (done, held) == (4821, 4822)

    r = _confirm(client, headers, done, kind, str(held))

    (other,) = legs_of(second)
    assert (other.status, other.otp_failures) == (status, 0), "a try counted on job 4822"
    assert r.status_code == 409, r.get_json()
    assert r.get_json()["error"] == {
        "code": "invalid_transition",
        "message": i18n.t("dispatch.already_delivered", "en", job=str(done))}

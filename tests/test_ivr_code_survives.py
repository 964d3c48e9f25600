"""A pickup code read on a call survives the late failure report of the lost SMS (b857637).

1. The code read on the call is no outbox message, so dispatch.pickup_code_lost does not
   see it as the leg's latest pickup code. Twilio's failure report about the SMS that
   never arrived comes late (carriers retry for hours): it then makes yet another code,
   voiding the one the customer has just heard on the phone ("the old code no longer
   works"), and she hands the rider a code that fails.
"""

from __future__ import annotations

import re

import pytest

from core.adapters.queue import QUEUES
from core.dialog import spoken
from tests.test_code_delivery import by_phone, taken
from tests.test_dispatch import (
    CUSTOMER,
    frozen,  # noqa: F401  (fixture)
    paid_booking,
    sms,
)
from tests.test_ivr import Caller, prompts  # noqa: F401  (fixture)
from tests.test_ivr_more import jobs
from tests.test_notice_review import cannot_deliver, customer_speaks, ref_of

pytestmark = pytest.mark.db

CODE_SAID = re.compile(r"\b\d \d \d \d\b")


def test_a_code_heard_on_a_call_survives_the_late_failure_report_of_the_lost_sms(
        client, live, frozen, prompts):  # noqa: F811
    """Meena's pickup-code SMS never arrives. Before Twilio reports it undelivered she
    calls, tracks her booking and hears a new code. The late report must not void the
    code she heard: Ramesh's PICK with it must work."""
    cannot_deliver(CUSTOMER, "undelivered", "30003")
    booking_id = paid_booking()
    customer_speaks("en")
    by_phone(booking_id)
    rider = taken(client, booking_id, queues=QUEUES)  # Twilio's reports not in yet
    ref = ref_of(booking_id)
    caller = Caller(client, CUSTOMER)
    caller.call()
    caller.press("2")
    caller.press("1")  # the first booking: its status, and the code offered
    heard = caller.press("1")
    found = CODE_SAID.findall(heard.text.replace(spoken.spell_digits(ref), ""))
    assert len(found) == 2 and len(set(found)) == 1, heard.text
    code = found[0].replace(" ", "")
    caller.hang_up()
    jobs()  # Twilio's late report: the first pickup-code SMS undelivered
    reply = sms(client, rider, f"PICK {code}")[0]
    assert "picked up" in reply, (
        "the code read out on the call was voided by the late failure report of the "
        f"SMS it replaced: {reply}")


def test_ivr_and_dispatch_name_the_code_read_alike():
    """dispatch spares a code read on a call by the audit action ivr writes."""
    from core.services import dispatch, ivr

    assert dispatch.IVR_CODE_READ == ivr.CODE_READ

"""What goes past the inbound rate limit (review r8 of this session's counters): only
what opts out. By SMS that is Twilio's own opt-out words; "band" there is a partner going
off duty, answered by a paid SMS each time. On WhatsApp a bare "band" ("closed") may be an
answer to an operator, a turn and a hand-off message each. Both count on the contact's
ordinary counter; STOP itself still goes through whatever came before it."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from core.adapters.db import transaction
from core.adapters.models import InboundEvent, Person
from core.config import get_settings
from tests.conftest import post_twilio, run_jobs
from tests.test_dispatch import LAXMIPUR, make_partner, sms

pytestmark = pytest.mark.db

WA_CUSTOMER = "+919876500044"


def limit() -> int:
    return get_settings().inbound_rate_limit


def test_a_flood_of_band_by_sms_is_answered_up_to_the_limit_only(client):
    _, rider = make_partner("Ramesh", LAXMIPUR, lang="hi")
    answered = sum(bool(sms(client, rider, "band", sid=f"SMs35band{i:04d}"))
                   for i in range(limit() + 10))
    # Each answer up to the limit, and the too-many notice once: no more paid SMS.
    assert answered <= limit() + 1
    # Twilio's own opt-out word still gets through after the flood (it stops our SMS).
    sms(client, rider, "STOP", sid="SMs35bandstop")
    with transaction() as s:
        assert s.scalar(select(Person.sms_opted_out).where(Person.phone == rider)) is True


def test_a_flood_of_a_bare_closed_on_whatsapp_is_handled_up_to_the_limit_only(client):
    for i in range(limit() + 10):
        post_twilio(client, "/webhooks/whatsapp", {
            "MessageSid": f"SMw35band{i:04d}", "From": f"whatsapp:{WA_CUSTOMER}",
            "WaId": WA_CUSTOMER.lstrip("+"), "To": "whatsapp:+14155238886", "Body": "band",
            "NumMedia": "0"})
    run_jobs(("inbound",))
    with transaction() as s:
        turns = s.scalar(select(func.count()).select_from(InboundEvent).where(
            InboundEvent.external_id.like("SMw35band%")))
        assert s.scalar(select(Person.opted_out).where(Person.phone == WA_CUSTOMER)) is True
    assert turns is not None and turns <= limit()

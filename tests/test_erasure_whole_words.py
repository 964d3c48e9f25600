"""An erasure finds a name in texts as a word of its own: a rider called Ram is named by
"Ram is coming" and "राम जी", not by "Rampur", whose messages keep their words."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from core.adapters.db import transaction
from core.adapters.models import Booking, OutboxMessage, PartnerProfile
from core.domain.text import names_word
from core.services.retention import REDACTED
from core.services.seed import OPS_PERSON, seed_demo
from tests.test_api import API, sign_in
from tests.test_retention import CUSTOMER, RAMESH, delivered_booking, erase_partner, person_id

pytestmark = pytest.mark.db

NAMING = ("Ram is on his way with your parcel.", "राम जी पार्सल ले कर आ रहे हैं।",
          "Your rider: RAM, bicycle.")
NOT_NAMING = ("Your parcel passed Rampur.", "पार्सल रामपुर पहुँच गया।", "Call Ramesh at the Point.")
# As our messages name him: by the first name he gave, in any language's text.
SAYS_RAM = ("Ram is on his way with your parcel.", "Your rider: RAM, bicycle.",
            "बुकिंग 24981254: Ram साइकिल से आपका पार्सल लेने आ रहे हैं।")
SAYS_RAMPUR = ("Your parcel passed Rampur.", "Call Ramesh at the Point.",
               "पार्सल Rampur पहुँच गया।")


@pytest.mark.parametrize("text", NAMING)
def test_a_name_said_as_a_word_is_found(text):
    assert names_word(text, "Ram") or names_word(text, "राम")


@pytest.mark.parametrize("text", NOT_NAMING)
def test_a_name_inside_another_word_is_not(text):
    assert not names_word(text, "Ram") and not names_word(text, "राम")


def test_erasing_a_partner_leaves_the_texts_that_only_contain_his_name_in_a_word(client, live):
    seed_demo()
    ops = sign_in(client, OPS_PERSON[1])
    customer = sign_in(client, CUSTOMER)
    ref, _ = delivered_booking(client, customer)
    pid = person_id(RAMESH)
    with transaction() as s:
        partner = s.scalar(select(PartnerProfile).where(PartnerProfile.person_id == pid))
        partner.first_name = "Ram"
        partner_id = partner.id
        booking_id = s.scalar(select(Booking.id).where(Booking.reference == ref))
        for body in SAYS_RAM + SAYS_RAMPUR:
            s.add(OutboxMessage(channel="whatsapp", to_addr=f"whatsapp:{CUSTOMER}",
                                from_addr="whatsapp:+14155238886", body=body,
                                booking_id=booking_id, status="sent"))
    assert client.put(f"{API}/ops/partners/{partner_id}/kyc", headers=ops,
                      json={"status": "suspended", "note": "asked to leave"}).status_code == 200
    r = erase_partner(client, ops, partner_id)
    assert r.status_code == 200, r.get_json()
    with transaction() as s:
        bodies = set(s.scalars(select(OutboxMessage.body).where(
            OutboxMessage.booking_id == booking_id)))
    assert REDACTED in bodies
    for kept in SAYS_RAMPUR:
        assert kept in bodies, kept
    for gone in SAYS_RAM:
        assert gone not in bodies, gone

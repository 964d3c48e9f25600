"""Two partners answer YES for the same leg at the same moment: exactly one wins.

Real threads, each posting a signed webhook to the live server (its own request, its own
PostgreSQL transaction); a barrier lines them up. Repeated to give the race a chance.
"""

from __future__ import annotations

import threading
import xml.etree.ElementTree as ET
from urllib.parse import urlencode

import pytest
import requests

from core.services import dispatch
from tests.conftest import twilio_signature
from tests.test_dispatch import (
    LAXMIPUR,
    frozen,  # noqa: F401  (fixture)
    legs_of,
    make_partner,
    offers,
    paid_booking,
    start,
)

pytestmark = pytest.mark.db


@pytest.fixture
def batches_of_two(monkeypatch):
    monkeypatch.setenv("DISPATCH_BATCH_SIZES", "2")
    dispatch.reset_config()
    yield
    monkeypatch.delenv("DISPATCH_BATCH_SIZES")
    dispatch.reset_config()


def _post(base_url: str, phone: str, body: str, sid: str) -> str:
    params = {"MessageSid": sid, "From": phone, "To": "+15005550006", "Body": body}
    r = requests.post(f"{base_url}/webhooks/sms", data=urlencode(params), timeout=30,
                      headers={"X-Twilio-Signature": twilio_signature("/webhooks/sms", params),
                               "Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200, r.text
    return "".join(m.text or "" for m in ET.fromstring(r.text).iter("Message"))


@pytest.mark.parametrize("attempt", range(4))
def test_simultaneous_yes_exactly_one_wins(live, frozen, batches_of_two, attempt):  # noqa: F811
    a, a_phone = make_partner("Asha", LAXMIPUR)
    b, b_phone = make_partner("Bala", (26.893, 84.489))
    booking_id = paid_booking()
    start(booking_id)
    leg = legs_of(booking_id)[0]
    assert {o.partner_id for o in offers(leg.id)} == {a, b}

    barrier = threading.Barrier(2)
    replies: dict[str, str] = {}

    def answer(phone: str) -> None:
        barrier.wait()
        replies[phone] = _post(live.base_url, phone, f"YES {leg.id}", f"SMrace{attempt}{phone}")

    threads = [threading.Thread(target=answer, args=(p,)) for p in (a_phone, b_phone)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert set(replies) == {a_phone, b_phone}

    winners = [p for p, text in replies.items() if "आपका है" in text]
    losers = [p for p, text in replies.items() if "किसी और" in text]
    assert len(winners) == 1 and len(losers) == 1, replies
    statuses = sorted(o.status for o in offers(leg.id))
    assert statuses == ["accepted", "withdrawn"]
    winner_id = a if winners[0] == a_phone else b
    assert legs_of(booking_id)[0].partner_id == winner_id
    assert legs_of(booking_id)[0].status == "assigned"

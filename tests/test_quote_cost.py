"""What a quote costs: the "no rider free near you" check (booking_service.rider_free_near:
a Redis look-up, maybe a database read) runs only where its answer is shown, the speed
and confirm prompts, not on every price check ("yes" re-checks the price only)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from core.adapters.db import transaction
from core.adapters.models import Booking
from core.services import booking as booking_service
from tests.conftest import read_first
from tests.test_ivr import Caller, phone, prompts  # noqa: F401 (fixtures)
from tests.test_tier_promise import chat_to_the_speed_question

pytestmark = pytest.mark.db


@pytest.fixture
def lookups(monkeypatch) -> list[int]:  # noqa: ANN001
    """One entry per rider look-up made from now on."""
    calls: list[int] = []
    real = booking_service.rider_free_near

    def counting(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(booking_service, "rider_free_near", counting)
    return calls


def test_a_chat_booking_looks_for_riders_only_when_it_says_so(client, lookups,
                                                              monkeypatch) -> None:
    from core.services.seed import seed_demo

    seed_demo()
    chat, _ = chat_to_the_speed_question(client, "+919812377601")
    assert len(lookups) == 1  # the speed question
    chat.send("?")  # help repeats the speed question: shown again, looked up again
    assert len(lookups) == 2
    chat.send("2")  # the confirmation says it too
    assert len(lookups) == 3
    read_first(monkeypatch)
    assert "Booked!" in chat.send("1")  # "yes" only checks the price is still the one shown
    assert len(lookups) == 3


def test_a_phone_booking_looks_for_riders_only_when_it_says_so(phone: Caller,  # noqa: F811
                                                                lookups) -> None:
    phone.call()
    for keys in ("1", "1", "845438#", "2", "1", "845450#", "7", "1", "9876543210#", "1", "1"):
        phone.press(keys)
    assert lookups == []
    phone.press("1")  # up to 5 kg: the speed question
    assert len(lookups) == 1
    phone.press("1")  # express: the confirmation
    assert len(lookups) == 2
    phone.press("1")  # yes
    assert len(lookups) == 2
    with transaction() as s:
        assert s.scalar(select(Booking.status)) == "awaiting_payment"

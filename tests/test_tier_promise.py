"""What a customer is promised before paying: each speed tier says the hours it is
configured to deliver in (not "today", false at 22:00), and when no rider who could take
the parcel is on duty near the pickup (at night, say), the chat and the call say so, and
what paying would lead to, before the payment link goes out."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from core import clock, i18n
from core.adapters.db import transaction
from core.adapters.models import (
    Booking,
    OutboxMessage,
    PartnerProfile,
    Person,
    Point,
    Vehicle,
)
from core.domain.pricing import (
    VEHICLE_CAPACITY,
    ParcelCategory,
    SizeBucket,
    VehicleType,
    WeightBucket,
)
from core.services import booking as booking_service
from core.services import dispatch
from tests.test_api import API, BETTIAH, LAXMIPUR, PARCEL, sign_in
from tests.test_dialog_gaps import Chat
from tests.test_ivr import Caller, phone, prompts  # noqa: F401 (fixtures)
from tests.test_ivr import t as said

NIGHT = datetime(2026, 12, 1, 16, 30, tzinfo=UTC)  # 22:00 in India
# Shirasgaon (413739) to Subhashwadi (413720): a bag of up to 5 kg, worth up to ₹500.
TO_THE_SPEED_QUESTION = ("hi", "2", "1", "413739", "2", "Near the Hanuman temple", "413720",
                         "1", "skip", "Sunita Patil", "98220 12345", "4", "1", "1", "no", "1")


@pytest.fixture
def hours(monkeypatch):
    """Tiers configured away from the defaults: the labels must follow the setting."""
    monkeypatch.setenv("DISPATCH_DELIVERY_HOURS", "express=2,standard=6,economy=30")
    monkeypatch.setenv("DISPATCH_SEARCH_DEADLINE_MIN", "express=15,standard=45,economy=120")
    dispatch.reset_config()
    yield
    monkeypatch.delenv("DISPATCH_DELIVERY_HOURS")
    monkeypatch.delenv("DISPATCH_SEARCH_DEADLINE_MIN")
    dispatch.reset_config()


def everyone_off_duty() -> None:
    """Every partner has texted OFF for the night."""
    with transaction() as s:
        for partner in s.scalars(select(PartnerProfile)):
            dispatch.set_duty(s, partner, False)


def chat_to_the_speed_question(client, number: str) -> tuple[Chat, str]:  # noqa: ANN001
    chat = Chat(client, number)
    for body in TO_THE_SPEED_QUESTION:
        asked = chat.send(body)
    assert chat.step() == "speed", asked
    return chat, asked


@pytest.mark.parametrize("lang", i18n.LANGUAGES)
def test_every_tier_label_names_its_hours(lang: str) -> None:
    for tier in ("express", "standard", "economy"):
        assert "17" in i18n.t(f"tier.{tier}", lang, hours=17), (lang, tier)
    assert "today" not in " ".join(i18n.t(f"tier.{tier}", "en", hours=3)
                                   for tier in ("express", "standard", "economy"))


def test_the_chat_says_the_configured_hours_and_nothing_else_by_day(client, hours) -> None:
    from core.services.seed import seed_demo

    seed_demo()  # the demo partners are on duty near Shirasgaon
    chat, asked = chat_to_the_speed_question(client, "+919812377501")
    for n, (tier, h) in enumerate((("express", 2), ("standard", 6), ("economy", 30)), 1):
        assert f"{n}. {i18n.t(f'tier.{tier}', 'en', hours=h)}: ₹" in asked, asked
    assert i18n.t("bot.speed.no_rider", "en") not in asked
    shown = chat.send("1")
    assert "Speed: Fast (within 2 hr)" in shown, shown
    assert "No rider is free" not in shown


def test_at_night_the_chat_says_no_rider_is_free_before_the_payment_link(client,
                                                                         hours) -> None:
    from core.services.seed import seed_demo

    seed_demo()
    clock.freeze(NIGHT)
    everyone_off_duty()
    chat, asked = chat_to_the_speed_question(client, "+919812377502")
    assert asked.startswith(i18n.t("bot.speed.no_rider", "en")), asked
    shown = chat.send("2")  # normal: looked for during 45 minutes once paid
    notice = i18n.t("bot.confirm.no_rider", "en", minutes=45)
    assert f"{notice}\n1. Yes, book it" in shown, shown
    assert shown.index("Total: ₹") < shown.index(notice)
    with transaction() as s:
        assert s.scalar(select(Booking)) is None
    # Told plainly, they may still book: a rider may come on duty within the search.
    done = chat.send("1")
    assert "Booked!" in done
    with transaction() as s:
        assert s.scalar(select(Booking.status)) == "awaiting_payment"


def test_a_rider_who_cannot_carry_it_does_not_count(client) -> None:
    from core.services.seed import seed_demo

    seed_demo()
    with transaction() as s:
        point = s.scalar(select(Point).where(Point.pincode == "413739"))
        shirasgaon = booking_service.Place(point.lat, point.lng, "413739")

        def parcel(size: SizeBucket, weight: WeightBucket) -> booking_service.ParcelSpec:
            return booking_service.ParcelSpec(ParcelCategory.OTHER, size, weight)

        assert booking_service.rider_free_near(s, shirasgaon,
                                               parcel(SizeBucket.BAG, WeightBucket.W5))
        # A cart load: none of the riders on duty around there carries 750 kg.
        assert not booking_service.rider_free_near(
            s, shirasgaon, parcel(SizeBucket.VEHICLE, WeightBucket.W750))


def test_not_knowing_who_is_near_says_nothing(client, monkeypatch) -> None:
    from redis.exceptions import ConnectionError as RedisDown

    def redis_away(*_a, **_k):  # noqa: ANN002, ANN003
        raise RedisDown("Redis is away")

    monkeypatch.setattr(dispatch, "find_candidates", redis_away)
    with transaction() as s:
        assert booking_service.rider_free_near(
            s, booking_service.Place(26.8, 84.5),
            booking_service.ParcelSpec(ParcelCategory.OTHER, SizeBucket.BAG, WeightBucket.W5))


def test_at_night_the_caller_hears_it_before_booking(phone: Caller, hours) -> None:  # noqa: F811
    clock.freeze(NIGHT)
    everyone_off_duty()
    phone.call()
    for keys in ("1", "1", "845438#", "2", "1", "845450#", "7", "1", "9876543210#", "1", "1"):
        phone.press(keys)
    heard = phone.press("1")  # up to 5 kg: the speed question
    assert said("ivr.speed.no_rider") in heard.text
    assert said("tier.express", hours=2) in heard.text
    heard = phone.press("1")  # express: looked for during 15 minutes once paid
    assert said("ivr.confirm.no_rider", minutes=15) in heard.text
    assert said("tier.express", hours=2) in heard.text
    assert said("ivr.confirm.yes") in heard.text
    phone.press("1")  # they book anyway
    with transaction() as s:
        details = s.scalar(select(OutboxMessage.body).where(
            OutboxMessage.to_addr == phone.phone, OutboxMessage.channel == "sms",
            OutboxMessage.body.contains("Bettiah")))
    assert details is not None and i18n.t("tier.express", "hi", hours=2) in details


def test_by_day_the_caller_hears_no_warning(phone: Caller) -> None:  # noqa: F811
    phone.call()
    for keys in ("1", "1", "845438#", "2", "1", "845450#", "7", "1", "9876543210#", "1", "1"):
        phone.press(keys)
    heard = phone.press("1")
    assert said("tier.express", hours=3) in heard.text
    assert said("ivr.speed.no_rider") not in heard.text
    heard = phone.press("2")
    assert said("tier.standard", hours=8) in heard.text
    assert said("ivr.confirm.no_rider", minutes=60) not in heard.text


def test_the_api_quote_says_the_promise_and_whether_a_rider_is_free(client, hours) -> None:
    headers = sign_in(client)
    body = {"pickup": LAXMIPUR, "drop": BETTIAH, "parcel": PARCEL}
    with transaction() as s:
        assert s.scalar(select(Point)) is None  # only the Point below: nobody works there
        point = Point(name="Bettiah", lat=26.80228, lng=84.51522, pincode="845438",
                      active=True)
        s.add(point)
    r = client.post(f"{API}/quotes", json=body, headers=headers)
    assert r.status_code == 200, r.get_json()
    quote = r.get_json()
    assert quote["rider_free_now"] is False
    fares = {f["tier"]: (f["delivery_hours"], f["search_minutes"]) for f in quote["fares"]}
    assert fares == {"express": (2, 15), "standard": (6, 45), "economy": (30, 120)}

    with transaction() as s:  # a rider on a bicycle comes on duty at Bettiah
        rider = Person(phone="+918000099001", name="Ravi", role="partner")
        s.add(rider)
        s.flush()
        partner = PartnerProfile(person_id=rider.id, first_name="Ravi", home_point_id=point.id,
                                 on_duty=False, kyc_status="verified",  # one who can be paid
                                 payout_account_id="acc_Ravi99001")
        s.add(partner)
        s.flush()
        bicycle = VehicleType.BICYCLE
        s.add(Vehicle(partner_id=partner.id, type=bicycle.value, payload_kg=20,
                      max_size=VEHICLE_CAPACITY[bicycle].max_size.value))
        dispatch.set_duty(s, partner, True)
    r = client.post(f"{API}/quotes", json=body, headers=headers)
    assert r.get_json()["rider_free_now"] is True

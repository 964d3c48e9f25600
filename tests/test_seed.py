"""Demo data: what seed_demo() adds, that it adds it once, and that partner phones stay safe."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import func, select

from core.adapters.db import transaction
from core.adapters.models import PartnerPoint, PartnerProfile, Person, Point, RateCardRow, Vehicle
from core.domain.phone import normalize_phone
from core.domain.pricing import DEFAULT_RATE_CARD, VEHICLE_CAPACITY, RateCard, SizeBucket
from core.logs import JsonFormatter
from core.services.seed import seed_demo

pytestmark = pytest.mark.db

MODELS = (RateCardRow, Point, Person, PartnerProfile, Vehicle, PartnerPoint)


def counts() -> dict[str, int]:
    with transaction() as s:
        return {m.__tablename__: s.scalar(select(func.count()).select_from(m)) for m in MODELS}


def test_seed_adds_rate_card_points_partners_and_ops(clean_db):
    added = seed_demo()
    assert added == {"rate_cards": 1, "points": 8, "partners": 8}
    assert counts() == {
        "rate_cards": 1,
        "points": 8,
        "people": 9,
        "partner_profiles": 8,
        "vehicles": 8,
        "partner_points": 8,
    }

    with transaction() as s:
        (card_row,) = s.scalars(select(RateCardRow)).all()
        assert card_row.active is True
        assert RateCard.from_dict(card_row.card) == DEFAULT_RATE_CARD

        points = list(s.scalars(select(Point)))
        states = [(p.state or "").upper() for p in points]
        assert states.count("BIHAR") == 4
        assert states.count("MAHARASHTRA") == 4
        for p in points:
            assert len(p.pincode) == 6 and p.pincode.isdigit()
            assert p.active
            # Bettiah is ~26.8 N 84.5 E; Shrirampur ~19.6 N 74.6 E.
            if p.state.upper() == "BIHAR":
                assert p.pincode.startswith("845")
                assert 26.0 < p.lat < 27.5 and 83.8 < p.lng < 85.2
            else:
                assert p.pincode.startswith("413")
                assert 18.8 < p.lat < 20.4 and 73.8 < p.lng < 75.4

        partners = list(s.scalars(select(PartnerProfile)))
        for profile in partners:
            assert profile.person.role == "partner"
            assert profile.home_point_id is not None
            assert [pt.id for pt in profile.points] == [profile.home_point_id]
            (vehicle,) = profile.vehicles
            cap = VEHICLE_CAPACITY[vehicle.type]
            # The vehicle's type can take the size it advertises, and its payload fits too.
            assert SizeBucket(vehicle.max_size).rank <= cap.max_size.rank
            assert vehicle.payload_kg * 1000 <= cap.max_weight.max_grams
            assert vehicle.active

        ops = list(s.scalars(select(Person).where(Person.role == "ops")))
        assert len(ops) == 1
        assert (
            s.scalar(select(func.count()).select_from(Person).where(Person.role == "customer")) == 0
        )


def test_second_seed_adds_nothing(clean_db):
    seed_demo()
    before = counts()
    assert seed_demo() == {"rate_cards": 0, "points": 0, "partners": 0}
    assert counts() == before


def test_partner_phones_are_e164_and_masked_in_logs(clean_db):
    seed_demo()
    with transaction() as s:
        phones = list(s.scalars(select(Person.phone).where(Person.role == "partner")))
    assert len(phones) == 8 and len(set(phones)) == 8
    formatter = JsonFormatter()
    for phone in phones:
        assert phone is not None and normalize_phone(phone) == phone
        assert phone.startswith("+91") and len(phone) == 13
        record = logging.LogRecord(
            "seed", logging.INFO, __file__, 1, "partner %s on duty", (phone,), None
        )
        record.partner_phone = phone
        out = formatter.format(record)
        assert phone not in out
        assert phone[3:] not in out  # nor the bare national number
        assert f"+91******{phone[-4:]}" in out

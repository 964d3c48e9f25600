"""Booking lists cost the same few SQL statements for 3 bookings as for 12 (they used to
cost three per booking: its legs, its partners' names, its payment link), and show each
booking exactly as its own GET does."""

from __future__ import annotations

from sqlalchemy import event, select

from core.adapters import db
from core.adapters.db import transaction
from core.adapters.models import Booking, Leg, Person
from core.adapters.payment_models import PaymentLink
from core.domain.booking import Actor, BookingStatus, LegStatus
from core.domain.pricing import ParcelCategory, SizeBucket, SpeedTier, WeightBucket
from core.services.booking import ParcelSpec, Place, create_booking, move_booking, move_leg
from tests.test_api import API, sign_in
from tests.test_dispatch import BETTIAH, LAXMIPUR, make_partner

CUSTOMER = "+919812300021"


def add_bookings(customer_id: int, n: int, partners: list[int]) -> None:
    """n bookings of the kinds a list shows, in turn: waiting for payment with a link; paid
    (its link used) and carried over two legs by two partners; quoted, with one bare leg."""
    actor = Actor("customer", str(customer_id))
    with transaction() as s:
        for i in range(n):
            b = create_booking(
                s, customer_id=customer_id, channel="app",
                pickup=Place(*LAXMIPUR, pincode="845450", post_office="Laxmipur BO"),
                drop=Place(*BETTIAH, pincode="845438", post_office="Bettiah HO"),
                parcel=ParcelSpec(ParcelCategory.DOCUMENTS, SizeBucket.BAG, WeightBucket.W5),
                tier=SpeedTier.STANDARD, recipient_name="Sita", recipient_phone="+919876543210",
                actor=actor)
            if i % 3 == 2:
                continue
            move_booking(s, b, BookingStatus.AWAITING_PAYMENT, actor, "confirmed")
            s.add(PaymentLink(booking_id=b.id, gateway_id=f"plink_{b.id}",
                              reference_id=b.reference, short_url=f"https://rzp.io/i/{b.id}",
                              amount_paise=b.total_paise, status="created"))
            if i % 3 == 1:
                move_booking(s, b, BookingStatus.PAID, Actor.system(), "paid")
                s.add(Leg(booking_id=b.id, sequence=2, status=LegStatus.PENDING.value,
                          from_lat=BETTIAH[0], from_lng=BETTIAH[1], to_lat=BETTIAH[0],
                          to_lng=BETTIAH[1], distance_m=1000, payout_paise=0))
                s.flush()
                s.refresh(b)
                for leg, partner_id in zip(b.legs, partners, strict=True):
                    leg.partner_id = partner_id
                    for to in (LegStatus.OFFERING, LegStatus.ASSIGNED):
                        move_leg(s, leg, to, Actor.system(), "as dispatch does")


def listed(client, path: str, headers: dict[str, str]) -> tuple[int, list[dict]]:
    """The list's items, and how many SQL statements the request sent."""
    seen: list[str] = []

    def note(conn, cursor, statement, *args) -> None:  # noqa: ANN001 (SQLAlchemy's event)
        seen.append(statement)

    event.listen(db.engine(), "before_cursor_execute", note)
    try:
        r = client.get(f"{API}{path}?limit=50", headers=headers)
    finally:
        event.remove(db.engine(), "before_cursor_execute", note)
    assert r.status_code == 200, r.get_json()
    return len(seen), r.get_json()["items"]


def test_booking_lists_cost_the_same_statements_for_3_or_12_bookings(client, monkeypatch):
    monkeypatch.setenv("UNPAID_BOOKINGS_MAX", "50")  # several wait for payment at once
    customer = sign_in(client, CUSTOMER)
    ops = sign_in(client, "+919812300024", role="ops")
    partners = [make_partner("Ramesh", LAXMIPUR)[0], make_partner("Sunita", BETTIAH)[0]]
    with transaction() as s:
        customer_id = s.scalar(select(Person.id).where(Person.phone == CUSTOMER))
    assert customer_id is not None

    add_bookings(customer_id, 3, partners)
    few = {path: listed(client, path, h)
           for path, h in (("/bookings", customer), ("/ops/bookings", ops))}
    add_bookings(customer_id, 9, partners)
    many = {path: listed(client, path, h)
            for path, h in (("/bookings", customer), ("/ops/bookings", ops))}

    for path in few:
        assert len(few[path][1]) == 3 and len(many[path][1]) == 12
        assert many[path][0] == few[path][0], (path, few[path][0], many[path][0])
        for item in many[path][1]:
            alone = client.get(f"{API}/bookings/{item['reference']}", headers=customer)
            if path == "/ops/bookings":  # an operator's row also says whose booking it is
                assert item.pop("customer_id") == customer_id
                assert item.pop("customer_phone_masked") == "+91******0021"
            assert item == alone.get_json()
    # Every kind is there: a link only while it waits for payment, both partners' names.
    with transaction() as s:
        ids = dict(s.execute(select(Booking.reference, Booking.id)).tuples().all())
    by_status = {b["status"]: b for b in many["/bookings"][1]}
    waiting, paid, quoted = (by_status[x] for x in ("awaiting_payment", "paid", "quoted"))
    assert waiting["payment_url"] == f"https://rzp.io/i/{ids[waiting['reference']]}"
    assert paid["payment_url"] is None and quoted["payment_url"] is None
    assert [leg["partner_first_name"] for leg in paid["legs"]] == ["Ramesh", "Sunita"]
    assert [leg["partner_first_name"] for leg in quoted["legs"]] == [None]

"""Demo data for sandbox mode: a rate card, Points and partners in two rural districts.

Places are real post offices from the India Post directory: around Bettiah (West
Champaran, Bihar, 845438) and Shrirampur (Ahmednagar, Maharashtra, 413709). Phone numbers
are in the +91 90000 000xx block, which the sandbox never delivers to a real phone.
Runs once: a second call finds the demo rate card and changes nothing. What an operator
set up before at a demo office or with a demo number is used, not added again.
"""

from __future__ import annotations

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from core.adapters.db import transaction
from core.adapters.models import PartnerProfile, Person, Point, RateCardRow, Vehicle
from core.adapters.pincode import post_offices
from core.domain.pricing import DEFAULT_RATE_CARD, VEHICLE_CAPACITY, VehicleType
from core.services.admin import POINT_NAME_LOCK_KEY

RATE_CARD_NAME = "rural-default-v1"

# (pincode, office name as the directory spells it)
DEMO_POINTS = (
    ("845438", "Bettiah HO"),
    ("845450", "Laxmipur BO"),
    ("845450", "Jado Chhapar BO"),
    ("845453", "Baswariya BO"),
    ("413709", "Shrirampur H.O"),
    ("413739", "Shirasgaon B.O"),
    ("413720", "Subhashwadi B.O"),
    ("413718", "Undirgaon B.O"),
)

# (first name, phone, language, vehicle, payload kg, home point index, has app)
DEMO_PARTNERS = (
    ("Ramesh", "+919000000001", "hi", VehicleType.BICYCLE, 20, 1, False),
    ("Sunita", "+919000000002", "hi", VehicleType.E_RICKSHAW, 150, 0, True),
    ("Mukesh", "+919000000003", "hi", VehicleType.MOTORCYCLE, 20, 2, False),
    ("Rafiq", "+919000000004", "hi", VehicleType.PICKUP, 700, 3, True),
    ("Sachin", "+919000000011", "mr", VehicleType.MOTORCYCLE, 20, 4, True),
    ("Lata", "+919000000012", "mr", VehicleType.BICYCLE, 15, 5, False),
    ("Ganesh", "+919000000013", "mr", VehicleType.CART, 300, 6, False),
    ("Anil", "+919000000014", "mr", VehicleType.AUTO, 180, 7, False),
)

OPS_PERSON = ("RideChain ops", "+919000000099")

# The PostgreSQL advisory lock a seed holds for its transaction: "RCsd" in ASCII,
# 1380152164. Releases run at once (two deploys, one per dyno) would otherwise all find
# no demo data and all insert it, and all but one fail on the rate card's unique name.
SEED_LOCK_KEY = int.from_bytes(b"RCsd", "big")


def seed_demo() -> dict[str, int]:
    """Insert the demo data unless it is already there; return what was added.

    What an operator set up before (add-point at a demo office, add-operator or
    add-partner with a demo number) is used as it is, never added a second time: the
    demo partners' home is the Point found at their office."""
    with transaction() as session:
        # Held until the commit. The look below is a statement of its own, after the wait:
        # under READ COMMITTED it sees what the seed we waited for committed.
        session.execute(select(func.pg_advisory_xact_lock(SEED_LOCK_KEY)))
        if session.scalar(select(RateCardRow.id).where(RateCardRow.name == RATE_CARD_NAME)):
            return {"rate_cards": 0, "points": 0, "partners": 0}
        session.add(RateCardRow(name=RATE_CARD_NAME, card=DEFAULT_RATE_CARD.to_dict(),
                                active=True))
        points: list[Point] = []
        added_points = 0
        for pin, office_name in DEMO_POINTS:
            office = next(o for o in post_offices(pin) if o.office_name == office_name)
            if office.lat is None or office.lng is None:
                raise RuntimeError(f"demo point {office_name} has no coordinates")
            point = _point_there(session, pin, office.office_name, office.name)
            if point is None:
                point = Point(name=office.name, lat=office.lat, lng=office.lng, pincode=pin,
                              post_office=office.office_name, district=office.district,
                              state=office.state, active=True)
                session.add(point)
                session.flush()
                added_points += 1
            points.append(point)
        taken = set(session.scalars(select(Person.phone).where(Person.phone.in_(
            [partner[1] for partner in DEMO_PARTNERS] + [OPS_PERSON[1]]))))
        added_partners = 0
        for first, phone, lang, vtype, payload, home, has_app in DEMO_PARTNERS:
            if phone in taken:
                continue
            person = Person(phone=phone, name=first, preferred_language=lang, role="partner")
            session.add(person)
            session.flush()
            # Sandbox Route linked account (the Razorpay emulator accepts any acc_ id), KYC
            # checked: only a partner who can be paid works (dispatch.payable).
            profile = PartnerProfile(person_id=person.id, first_name=first,
                                     home_point_id=points[home].id, has_app=has_app,
                                     on_duty=True, payout_account_id=f"acc_demo{person.id:06d}",
                                     kyc_status="verified")
            profile.points = [points[home]]
            session.add(profile)
            session.flush()
            session.add(Vehicle(partner_id=profile.id, type=vtype.value, payload_kg=payload,
                                max_size=VEHICLE_CAPACITY[vtype].max_size.value))
            added_partners += 1
        if OPS_PERSON[1] not in taken:
            session.add(Person(name=OPS_PERSON[0], phone=OPS_PERSON[1], role="ops",
                               preferred_language="hi"))
        return {"rate_cards": 1, "points": added_points, "partners": added_partners}


def _point_there(session: Session, pincode: str, office: str, name: str) -> Point | None:
    """An active Point of ``pincode`` at ``office``, or going by the name the demo's would
    take (add-point refuses a second one: people could not tell the two apart), looked for
    under the pincode's name lock, which add-point holds while it adds one."""
    session.execute(select(func.pg_advisory_xact_lock(POINT_NAME_LOCK_KEY,
                                                      func.hashtext(pincode))))
    called = [office.lower(), name.lower()]  # as PostgreSQL's lower() has them
    return session.scalar(select(Point).where(
        Point.pincode == pincode, Point.active.is_(True),
        or_(func.lower(Point.post_office).in_(called), func.lower(Point.name).in_(called)))
        .order_by(Point.id).limit(1))


__all__ = ["seed_demo"]

"""Setting a service up: operators, Points, the rate card and partners.

What the sandbox's demo data (core.services.seed) makes up, production gets one at a time
from an operator (``python -m core.cli add-operator|add-point|rate-card|add-partner``, or
``POST /api/v1/ops/partners``); a Point is closed, moved or renamed later
(``close-point``, ``move-point``, ``rename-point``, or
``/api/v1/ops/points/<id>/close|position|name``). Each call runs in the
caller's transaction and writes an audit_log entry beside its change; run again, it finds
what is there, says so and changes nothing (nor audits anything). Phone numbers appear
masked in every message.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from dataclasses import dataclass

from sqlalchemy import ColumnElement, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core import clock
from core.adapters import geo_index
from core.adapters.api_models import ApiSession, AuditEntry
from core.adapters.dialog_models import Handoff
from core.adapters.models import (
    Booking,
    Conversation,
    Leg,
    PartnerPoint,
    PartnerProfile,
    Person,
    Point,
    RateCardRow,
    Vehicle,
)
from core.adapters.payment_models import LegTransfer
from core.adapters.pincode import post_offices
from core.adapters.queue import after_commit
from core.config import get_settings
from core.domain.booking import BookingStatus, LegStatus
from core.domain.errors import Conflict, NotFound, ValidationError
from core.domain.geo import haversine_m, validate_lat_lng
from core.domain.phone import mask_phone, normalize_phone
from core.domain.pricing import DEFAULT_RATE_CARD, VEHICLE_CAPACITY, VehicleType, WeightBucket
from core.domain.text import visible
from core.i18n import LANGUAGES
from core.logs import mask_note, mask_phones
from core.services import dispatch, payments

MAX_ID = 2**31 - 1  # PostgreSQL integer ids: a bigger number names nothing
NAME_MAX = 60  # partner_profiles.first_name
PERSON_NAME_MAX = 120  # people.name
PAYOUT_ACCOUNT = re.compile(r"acc_[A-Za-z0-9]{4,36}")  # a Razorpay Route linked account
# The least payload a vehicle is signed up with: the lightest weight band's most (5 kg).
# Dispatch fits a parcel by its band's most (core.domain.dispatch._fits), so a vehicle
# that carries less is offered no parcel at all, ever.
MIN_PAYLOAD_KG = -(-min(w.max_grams for w in WeightBucket) // 1000)


@dataclass(frozen=True)
class Outcome:
    """What a set-up call did: ``changed`` is False when it found the thing already there."""

    changed: bool
    id: int
    message: str  # one line for the operator, phones masked


@dataclass(frozen=True)
class NewPartner:
    """A partner as an operator describes them (the CLI's flags, the API's body)."""

    phone: str
    name: str
    language: str
    vehicle: str
    payload_kg: int
    point: str | int  # a Point's id, or its name or post office
    payout_account: str | None = None
    has_app: bool = False


def record(session: Session, actor: str, action: str, target: str, **details: object) -> None:
    """Append who set what up to the audit log (same transaction as the change)."""
    session.add(AuditEntry(actor=actor, action=action, target=target, details=details))


def _noted(note: str | None) -> dict[str, str]:
    """An operator's note for the audit log, which keeps it for good: phone numbers, bank
    account and Aadhaar numbers in it masked (logs.mask_note)."""
    return {"note": mask_note(note)} if note else {}


def _person(session: Session, phone: str) -> Person | None:
    return session.scalar(select(Person).where(Person.phone == phone).with_for_update())


def add_operator(session: Session, phone: str, name: str | None = None, *,
                 actor: str) -> Outcome:
    """Make ``phone`` an operator (role ops), who can then sign in to the ops API.

    A customer becomes an operator; a partner is refused (Conflict): one phone signs in
    with one role, and a partner's offers and duty would be lost on it.
    """
    phone = normalize_phone(phone)
    masked = mask_phone(phone)
    name = " ".join((name or "").split()) or None
    if name is not None and len(name) > PERSON_NAME_MAX:  # people.name would refuse it
        raise ValidationError(f"give a name of at most {PERSON_NAME_MAX} characters (or "
                              "none)", code="bad_name", field="name")
    if name is not None:
        _without_phone(name)
    person = _person(session, phone)
    if person is not None and person.role == "ops":
        return Outcome(False, person.id, f"{masked} is already an operator (person "
                       f"{person.id}); nothing changed")
    if person is not None and person.role == "partner":
        raise Conflict(f"{masked} is a partner (person {person.id}); a partner cannot also "
                       "be an operator: use another phone", code="conflict", field="phone")
    if person is None:
        person = Person(phone=phone, name=name, role="ops")
        session.add(person)
        session.flush()
        before = None
    else:
        before = person.role
        person.role = "ops"
        person.name = person.name or name
        _end_sessions(session, person.id)
    record(session, actor, "operator.add", f"person:{person.id}", phone=masked,
           before=before)
    was = " (was a customer)" if before else ""
    return Outcome(True, person.id, f"operator {masked} added (person {person.id}){was}")


def _end_sessions(session: Session, person_id: int) -> int:
    """A customer given a new role signs in again: a token made for a customer (on a
    phone they may have lent, or one stolen) must not gain an operator's or a partner's
    powers by itself (the role is read on every request). An operator removed, a partner
    suspended or rejected (PUT /ops/partners/<id>/kyc) or moved to a new number, or
    anyone ops sign out (sign_out_person) is signed out everywhere at once. How many
    sessions it ended."""
    return len(session.scalars(update(ApiSession).where(
        ApiSession.person_id == person_id, ApiSession.revoked_at.is_(None))
        .values(revoked_at=clock.now()).returning(ApiSession.id)).all())


@dataclass(frozen=True)
class SignedOut(Outcome):
    """sign_out_person's outcome: whose sessions, and how many it ended."""

    role: str
    ended: int


def _named(session: Session, phone: str | None, person_id: int | None,
           what: str) -> Person:
    """The person named by ``phone`` or ``person_id`` (exactly one), row-locked by id;
    ValidationError when both or neither are given, NotFound for nobody."""
    if (phone is None) == (person_id is None):
        raise ValidationError(f"name {what} by their phone or their person id",
                              code="bad_request", field="phone")
    if phone is not None:
        number = normalize_phone(phone)
        person = _person(session, number)
        if person is None:
            raise NotFound(f"nobody has {mask_phone(number)}; nothing changed",
                           code="not_found", field="phone")
        return person
    person = session.get(Person, person_id, with_for_update=True) \
        if person_id is not None and 1 <= person_id <= MAX_ID else None
    if person is None:
        raise NotFound(f"no person has id {person_id}; nothing changed",
                       code="not_found", field="person")
    return person


def sign_out_person(session: Session, phone: str | None = None, *,
                    person_id: int | None = None, actor: str,
                    note: str | None = None) -> SignedOut:
    """End every API session of a person (customer, partner or operator), named by
    ``phone`` or ``person_id``: a stolen or lost phone's token stops working at once (the
    session is read on every request), audited (``person.sign_out``, ``sessions_ended``).
    Their role and everything else stay; they sign in again with a new code. None to end:
    nothing changed, nothing audited (run again, it says so). NotFound for nobody."""
    person = _named(session, phone, person_id, "the person")
    masked = mask_phone(person.phone) if person.phone else "-"
    who = f"{masked} (person {person.id}, {person.role})"
    ended = _end_sessions(session, person.id)
    if not ended:
        return SignedOut(False, person.id, f"{who} has no session to end; nothing changed",
                         person.role, 0)
    record(session, actor, "person.sign_out", f"person:{person.id}", phone=masked,
           role=person.role, sessions_ended=ended,
           **_noted(note))
    return SignedOut(True, person.id, f"{who} signed out of {ended} session(s): they sign "
                     "in again with a new code", person.role, ended)


def remove_operator(session: Session, phone: str | None = None, *,
                    person_id: int | None = None, actor: str,
                    note: str | None = None) -> Outcome:
    """Take an operator's access away (they left the team; their sign-in leaked), named
    by ``phone`` or ``person_id``: they become a customer and every API session of theirs
    ends at once (both are read on every request), audited (``operator.remove``).

    Refused (Conflict ``last_operator``) for the last operator: nobody could sign in to
    the ops API any more (add-operator another first). Someone who is not an operator:
    nothing changed, nothing audited (run again, it says so). The people they were
    answering (their waiting handoffs) go back to the queue, in the same transaction
    (the audit entry names them, ``handoffs_released``): nobody's, so the unanswered
    alert counts them and any operator answers them without taking over."""
    if (phone is None) == (person_id is None):
        raise ValidationError("name the operator by their phone or their person id",
                              code="bad_request", field="phone")
    # Every operator's row locked, by id: two removals at once take turns here, and the
    # second counts the operators without the first's (a row it waited for and that is no
    # longer an operator's is not returned), so one operator always stays.
    operators = list(session.scalars(select(Person.id).where(Person.role == "ops")
                                     .order_by(Person.id).with_for_update()))
    person = _named(session, phone, person_id, "the operator")
    masked = mask_phone(person.phone) if person.phone else "-"
    who = f"{masked} (person {person.id})"
    if person.role != "ops":
        return Outcome(False, person.id, f"{who} is not an operator (role {person.role}); "
                       "nothing changed")
    if operators == [person.id]:
        raise Conflict(f"{who} is the last operator: nobody could sign in to the ops API; "
                       "add another first (add-operator); nothing changed",
                       code="last_operator", field="phone" if phone else "person")
    person.role = "customer"
    ended = _end_sessions(session, person.id)
    released = _release_handoffs(session, f"ops:{person.id}")
    record(session, actor, "operator.remove", f"person:{person.id}", phone=masked,
           sessions_ended=ended, handoffs_released=released,
           **_noted(note))
    waiting = (f"; {len(released)} open handoff(s) they were answering are back in the "
               "queue for any operator" if released else "")
    return Outcome(True, person.id, f"operator {who} removed: a customer now, signed out "
                   f"of {ended} session(s){waiting}")


def _release_handoffs(session: Session, operator: str) -> list[int]:
    """The waiting handoffs ``operator`` was answering become nobody's (their ids, in
    order). Their conversations are locked first, by id: the order a chat turn, a reply
    or a close takes them (conversation, then handoff)."""
    conv_ids = list(session.scalars(select(Handoff.conversation_id).where(
        Handoff.status == "waiting", Handoff.operator == operator)))
    if not conv_ids:
        return []
    list(session.scalars(select(Conversation.id).where(Conversation.id.in_(conv_ids))
                         .order_by(Conversation.id).with_for_update()))
    return sorted(session.scalars(update(Handoff).where(
        Handoff.status == "waiting", Handoff.operator == operator)
        .values(operator=None).returning(Handoff.id)))


def _office_list(offices: list) -> str:
    return ", ".join(o.office_name for o in offices)


def add_point(session: Session, pincode: str, office: str, *, actor: str,
              name: str | None = None) -> Outcome:
    """An active Point at a post office of the India Post directory.

    ``office`` is the office's name as the directory spells it ("Laxmipur BO") or as we
    show it ("Laxmipur"). An office the pincode lacks, or one without coordinates (a Point
    is a place partners meet at), is refused with the pincode's offices in the message.
    The Point is called ``name`` (_point_name), else as we show its office; a closed one
    opens again under its own name, or ``name``. Refused (Conflict ``name_taken``) when
    another active Point of the pincode goes by that name, or is called as its office: a
    rename may have given it ("Laxmipur" renamed "Gurwalia", then add-point Gurwalia BO),
    and two offices of a pincode may show as one ("Arjunganj BO", "Arjunganj SO").
    """
    chosen = _point_name(name) if name is not None else None
    offices = post_offices(pincode)  # ValidationError bad_pincode, NotFound unknown_pincode
    pin = offices[0].pincode
    wanted = office.strip().casefold()
    found = [o for o in offices if o.office_name.casefold() == wanted] or \
        [o for o in offices if o.name.casefold() == wanted]
    if len(found) != 1:
        why = "names more than one office" if found else "is not an office"
        raise ValidationError(f"{office.strip()!r} {why} of pincode {pin}; its offices: "
                              f"{_office_list(offices)}", code="unknown_office", field="office")
    (post,) = found
    if post.lat is None or post.lng is None:
        placed = [o for o in offices if o.lat is not None and o.lng is not None]
        listed = _office_list(placed) if placed else "none"
        raise ValidationError(f"{post.office_name} ({pin}) has no coordinates in the India "
                              f"Post directory; offices of {pin} with coordinates: {listed}",
                              code="office_without_position", field="office")
    point = _office_point(session, pin, post.office_name)
    if point is None:
        # Another add-point of this office may have added its Point and not committed yet
        # (seen by nobody): it holds the pincode's name lock until it commits. Looked for
        # again under that lock, the second of two at once finds the first's Point, and
        # does not add another at the same office.
        _lock_names(session, pin)
        point = _office_point(session, pin, post.office_name)
    if point is not None and point.active:
        other = " (rename-point renames it)" if chosen not in (None, point.name) else ""
        return Outcome(False, point.id, f"Point {point.name} ({pin}) already exists "
                       f"(id {point.id}); nothing changed{other}")
    if point is not None:
        return _reopen(session, point, post.office_name, chosen, actor=actor)
    called = chosen or post.name
    _refuse_taken(session, pin, called, post.office_name, chosen=chosen is not None)
    point = Point(name=called, lat=post.lat, lng=post.lng, pincode=pin,
                  post_office=post.office_name, district=post.district, state=post.state,
                  active=True)
    session.add(point)
    session.flush()
    record(session, actor, "point.add", f"point:{point.id}", pincode=pin,
           office=post.office_name, name=called)
    return Outcome(True, point.id, f"Point {point.name} ({pin}, {post.district or '-'}, "
                   f"{post.state or '-'}) added (id {point.id})")


def _office_point(session: Session, pincode: str, office: str) -> Point | None:
    """The Point (open or closed) at a post office of ``pincode``, under its row lock."""
    return session.scalar(select(Point).where(Point.pincode == pincode,
                                              Point.post_office == office)
                          .order_by(Point.id).limit(1).with_for_update())


def _reopen(session: Session, point: Point, office: str, chosen: str | None, *,
            actor: str) -> Outcome:
    """Open a closed Point again (add-point at its office), under ``chosen`` if given (a
    rename, audited as one), else its own name: one a rename gave another active Point of
    its pincode while it was closed is refused (Conflict ``name_taken``)."""
    called = chosen or point.name
    _refuse_taken(session, point.pincode, called, office, chosen=chosen is not None,
                  reopening=point)
    before = point.name
    point.active = True
    point.name = called
    after_commit(session, geo_index.invalidate_homes)  # its partners placed there again
    record(session, actor, "point.activate", f"point:{point.id}", pincode=point.pincode,
           office=office)
    if called != before:
        record(session, actor, "point.rename", f"point:{point.id}", before=before,
               after=called, note=None)
    renamed = f" as {called} (was {before})" if called != before else ""
    return Outcome(True, point.id, f"Point {called} ({point.pincode}, id {point.id}) is "
                   f"active again{renamed}")


def _refuse_taken(session: Session, pincode: str, name: str, office: str, *, chosen: bool,
                  reopening: Point | None = None) -> None:
    """Conflict ``name_taken`` when another active Point of the pincode goes by ``name``
    (as _name_holder reads it) or is called as ``office``, a Point's office that opens
    (find_point takes either): the message says what ops can do about it."""
    holder = _name_holder(session, pincode, name, office=office,
                          other_than=reopening.id if reopening is not None else None)
    if holder is None:
        return
    at = f", {holder.post_office}" if holder.post_office else ""
    said = f"Point {holder.name} (id {holder.id}{at}) of pincode {pincode}"
    if name.lower() not in (holder.name.lower(), (holder.post_office or "").lower()):
        raise Conflict(f"{said} is called {office!r}, the office of this one: people could "
                       f"not tell the two apart; rename it first (rename-point --point "
                       f"{holder.id})", code="name_taken", field="office")
    this = f"this Point (id {reopening.id})" if reopening is not None else "this Point"
    how = ("choose another name" if chosen else
           f"give {this} a name of its own (add-point --name, e.g. {office!r})")
    raise Conflict(f"{said} goes by {name!r} already: people could not tell the two apart; "
                   f"{how}", code="name_taken", field="name")


# A Point moves to a spot nearby (the hub moved across the road, to another shop): its
# name, pincode and post office stay. Farther is another place: add a Point there
# (add-point) and close this one.
POINT_MOVE_MAX_M = 5_000

# Where a parcel is on its way to a Point, or waits at it, for the legs through it: a leg
# to it until delivered (then the parcel waits for the next leg), a leg from it until
# picked up. A locked leg counts (ops unlock it first). Legs of closed bookings do not.
_TO_POINT = (LegStatus.PENDING.value, LegStatus.OFFERING.value, LegStatus.ASSIGNED.value,
             LegStatus.PICKED_UP.value, LegStatus.LOCKED.value)
_FROM_POINT = (LegStatus.PENDING.value, LegStatus.OFFERING.value, LegStatus.ASSIGNED.value,
               LegStatus.LOCKED.value)
SHOWN_BOOKINGS = 10  # the bookings a refusal names, at most


def _point_to_change(session: Session, point: str | int) -> Point:
    """The Point ``point`` names, under its row lock: by id any Point (closed ones too),
    by name or post office the one active Point (find_point), else the one closed Point
    so called (closed already, moved or renamed while closed: a second close-point by
    name finds it, as by id). NotFound for an id that names none; ValidationError
    ``unknown_point`` for a name that names none, or more than one Point (give its id)."""
    raw = str(point).strip()
    if raw.isascii() and raw.isdigit():
        digits = raw.lstrip("0") or "0"
        ref = int(digits) if len(digits) <= len(str(MAX_ID)) else None
        found = session.get(Point, ref, with_for_update=True, populate_existing=True) \
            if ref is not None and 1 <= ref <= MAX_ID else None
        if found is None:
            shown = raw if ref is not None else f"{raw[:12]}... ({len(raw)} digits)"
            raise NotFound(f"no Point has id {shown}", code="not_found")
        return found
    found = _closed_point(session, raw) if _no_active_point_called(session, raw) \
        else find_point(session, raw)
    locked = session.get(Point, found.id, with_for_update=True, populate_existing=True)
    assert locked is not None
    return locked


def _called(raw: str) -> ColumnElement[bool]:
    """Points called ``raw``: by name or post office, as find_point reads them."""
    wanted = raw.lower()  # as PostgreSQL's lower() has it
    return or_(func.lower(Point.name) == wanted, func.lower(Point.post_office) == wanted)


def _no_active_point_called(session: Session, raw: str) -> bool:
    return session.scalar(select(Point.id).where(Point.active.is_(True), _called(raw))
                          .limit(1)) is None


def _closed_point(session: Session, raw: str) -> Point:
    """The one closed Point called ``raw`` (no active one is): ValidationError
    ``unknown_point`` if none, or more than one (listed, to be named by id)."""
    rows = list(session.scalars(select(Point).where(Point.active.is_(False), _called(raw))
                                .order_by(Point.id).limit(SHOWN_BOOKINGS + 1)))
    if len(rows) == 1:
        return rows[0]
    if rows:
        listed = ", ".join(f"{p.name} ({p.pincode}, id {p.id})" for p in rows[:SHOWN_BOOKINGS])
        more = " and more" if len(rows) > SHOWN_BOOKINGS else ""
        raise ValidationError(f"{raw!r} names no active Point but more than one closed "
                              f"Point: {listed}{more}; give its id", code="unknown_point",
                              field="point")
    raise ValidationError(f"no Point is called {raw!r}, active or closed (add-point adds "
                          "one)", code="unknown_point", field="point")


# A booking whose parcel went nowhere more, or reached its recipient (a leg of it left
# locked at a Point, from before the next rider's PICK closed one, holds nothing there).
_DONE_BOOKING = (*sorted(dispatch.CLOSED_BOOKING), BookingStatus.DELIVERED.value)


def relays_through(session: Session, point_id: int) -> list[str]:
    """References of the open bookings (not delivered) with a parcel on its way to the
    Point or waiting at it (at most SHOWN_BOOKINGS + 1, by reference)."""
    return list(session.scalars(
        select(Booking.reference).join(Leg, Leg.booking_id == Booking.id)
        .where(Booking.status.not_in(_DONE_BOOKING),
               or_((Leg.to_point_id == point_id) & Leg.status.in_(_TO_POINT),
                   (Leg.from_point_id == point_id) & Leg.status.in_(_FROM_POINT)))
        .group_by(Booking.reference).order_by(Booking.reference)
        .limit(SHOWN_BOOKINGS + 1)))


def _refuse_in_use(session: Session, point: Point, doing: str) -> None:
    """Conflict ``point_in_use`` naming the bookings whose parcels are on their way to the
    Point or wait at it; nothing if none. The caller holds the Point's lock, which a relay
    being planned through it takes too (dispatch.plan_legs): one planned before is seen
    here, one planned after sees what this changes."""
    refs = relays_through(session, point.id)
    if not refs:
        return
    shown = ", ".join(refs[:SHOWN_BOOKINGS]) + (" and more" if len(refs) > SHOWN_BOOKINGS
                                                else "")
    raise Conflict(f"Point {point.name} (id {point.id}) cannot be {doing}: parcels are on "
                   f"their way to it or wait at it (booking(s) {shown}); try again once "
                   "they have left it", code="point_in_use", field="point")


# An erased partner keeps no name (erase_person); ops can move no one erased
# (set_home_point refuses them), so they are not named as a Point's home partners.
_NOT_ERASED = func.coalesce(PartnerProfile.first_name, "") != ""


def home_partners(session: Session, point_id: int) -> list[int]:
    """Ids of the partners whose home Point it is (not erased ones), by id."""
    return list(session.scalars(select(PartnerProfile.id).where(
        PartnerProfile.home_point_id == point_id, _NOT_ERASED).order_by(PartnerProfile.id)))


def home_partners_of(session: Session, point_ids: list[int]) -> dict[int, list[int]]:
    """home_partners for many Points in one query: Point id -> partner ids, by id."""
    out: dict[int, list[int]] = {}
    for point_id, partner_id in session.execute(select(
            PartnerProfile.home_point_id, PartnerProfile.id).where(
            PartnerProfile.home_point_id.in_(point_ids), _NOT_ERASED)
            .order_by(PartnerProfile.id)):
        if point_id is not None:  # always, by the IN: for the type checker
            out.setdefault(point_id, []).append(partner_id)
    return out


def close_point(session: Session, point: str | int, *, actor: str,
                note: str | None = None) -> Outcome:
    """Close a Point (``active`` false): new relays are planned through other Points
    (core.adapters.points reads active ones only), and a partner whose home it is keeps
    it as home but is placed at another active Point they serve, else at none (found by
    a fresh app position only) until ops give them a new home (set_home_point); the
    message names them, and those of them on duty placed nowhere now hear so by SMS
    (_tell_placed_nowhere). Refused (Conflict ``point_in_use``) while a parcel is on its way
    to it or waits at it. add-point at its office opens it again. Already closed:
    nothing changed, nothing audited."""
    p = _point_to_change(session, point)
    homed = home_partners(session, p.id)
    if not p.active:
        return Outcome(False, p.id, f"Point {p.name} (id {p.id}) is closed already; "
                       "nothing changed")
    _refuse_in_use(session, p, "closed")
    p.active = False
    session.flush()
    # The home set is rebuilt at the next search, from _home_positions: its partners off it.
    after_commit(session, geo_index.invalidate_homes)
    record(session, actor, "point.close", f"point:{p.id}", name=p.name,
           home_partner_ids=homed, note=mask_note(note) if note else None)
    told = _tell_placed_nowhere(session, p)
    if homed:
        shown = ", ".join(map(str, homed[:20])) + (" ..." if len(homed) > 20 else "")
        home = (f"; {len(homed)} partner(s) have it as home ({shown}): placed at another "
                "Point they serve, else at none, until given a new home (set-home-point)")
    else:
        home = "; no partner has it as home"
    if told:
        shown = ", ".join(map(str, told[:20])) + (" ..." if len(told) > 20 else "")
        home += f"; told by SMS (on duty, placed at no Point now): {shown}"
    return Outcome(True, p.id, f"Point {p.name} ({p.pincode}, id {p.id}) closed: no new "
                   f"relay goes through it{home}")


# What an on-duty rider whose only Point closed hears (close_point).
POINT_CLOSED = "dispatch.point_closed"


def _tell_placed_nowhere(session: Session, point: Point) -> list[int]:
    """Tell once, by SMS in their language, each partner on duty whom the close of
    ``point`` (flushed) leaves placed at no Point (dispatch.placed_nowhere: no app, home
    and every Point they serve closed): no search can find them, so no offer can come
    until ops give them a new Point. They stay on duty, as the app, STATUS and
    set_home_point have it (placed at the new Point at once, offers coming again); jobs
    in hand and offers already made stay theirs. Their ids, by id."""
    serving = select(PartnerPoint.partner_id).where(PartnerPoint.point_id == point.id)
    riders = session.scalars(select(PartnerProfile).where(
        PartnerProfile.on_duty.is_(True),
        or_(PartnerProfile.home_point_id == point.id, PartnerProfile.id.in_(serving)))
        .order_by(PartnerProfile.id)).all()
    told = []
    stamp = f"{clock.now().timestamp():.0f}"  # a Point closed again later is told again
    for rider in riders:
        if dispatch.placed_nowhere(session, rider):
            dispatch._sms_partner(session, rider, POINT_CLOSED,
                                  dedupe_key=f"partner-{rider.id}-point-{point.id}-closed-{stamp}",
                                  ops_phone=get_settings().ops_phone)
            told.append(rider.id)
    return told


def move_point(session: Session, point: str | int, lat: float, lng: float, *, actor: str,
               note: str | None = None) -> Outcome:
    """Move a Point to a spot nearby (at most POINT_MOVE_MAX_M away; ValidationError
    ``too_far``, ``bad_location``): new relays go to it there, and the partners placed at
    it are placed there at once. Its name, pincode and post office stay. Refused
    (Conflict ``point_in_use``) while a parcel is on its way to it or waits at it: their
    legs were planned to the old spot. The same spot again: nothing changed."""
    lat, lng = validate_lat_lng(lat, lng)
    p = _point_to_change(session, point)
    before = (p.lat, p.lng)
    if before == (lat, lng):
        return Outcome(False, p.id, f"Point {p.name} (id {p.id}) is at {lat}, {lng} "
                       "already; nothing changed")
    far = haversine_m(p.lat, p.lng, lat, lng)
    if far > POINT_MOVE_MAX_M:
        raise ValidationError(f"{lat}, {lng} is {far / 1000:.1f} km from Point {p.name}: "
                              f"a Point moves at most {POINT_MOVE_MAX_M // 1000} km; for "
                              "another place add a Point there (add-point) and close this "
                              "one", code="too_far", field="lat")
    _refuse_in_use(session, p, "moved")
    p.lat, p.lng = lat, lng
    session.flush()
    after_commit(session, geo_index.invalidate_homes)
    record(session, actor, "point.move", f"point:{p.id}", before=list(before),
           after=[lat, lng], distance_m=far, note=mask_note(note) if note else None)
    closed = "" if p.active else " (closed: add-point opens it again)"
    return Outcome(True, p.id, f"Point {p.name} (id {p.id}) moved {far} m to {lat}, {lng}"
                   f"{closed}")


# A Point's name is what customers read in a message and hear in a call, and what riders
# are told to go to: as long as place() keeps a place's name (India Post's longest office
# name, which add-point gives, is 50).
POINT_NAME_MAX = 60
# The PostgreSQL advisory lock (with the pincode's hashtext) a rename or add-point holds
# for its transaction: "RCpn" in ASCII. Two of them in one pincode giving one name take
# turns, so the second sees the first's name; each holds only its own Point's row
# otherwise.
POINT_NAME_LOCK_KEY = int.from_bytes(b"RCpn", "big")
# Invisible, yet part of how some words are spelt (Marathi's eyelash ra, a Bengali
# conjunct shown in its half form): the zero-width non-joiner and joiner (U+200C,
# U+200D), which str.isprintable() refuses.
_JOINERS = {0x200C: None, 0x200D: None}


def _point_name(raw: str) -> str:
    """A Point's new name as people will read it: its words, one space apart; 1 to
    POINT_NAME_MAX printable characters (the zero-width joiner and non-joiner too, which
    some Bengali and Marathi spellings need), with a letter (digits alone are an id to
    find_point, and no place's name), and no phone number (the audit log keeps every name
    for good, and messages read it out). ValidationError ``bad_name`` else. Every name
    add-point takes from the India Post directory passes."""
    name = " ".join(str(raw).split())
    if not name or len(name) > POINT_NAME_MAX or not name.translate(
            _JOINERS).isprintable() or not any(ch.isalpha() for ch in name):
        raise ValidationError(f"give a name of 1 to {POINT_NAME_MAX} characters, with a "
                              "letter (a name people say, not a number)", code="bad_name",
                              field="name")
    return _without_phone(name)


def _without_phone(name: str) -> str:
    """``name``, unless a phone number is in it ("Raju 9812345678"): ValidationError
    ``bad_name`` then, its number masked. A Point's name, a partner's or an operator's is
    kept for good (the audit log, people.name) and read out in messages."""
    if mask_phones(name) != name:
        raise ValidationError(f"{mask_phones(name)!r} has a phone number in it: give the "
                              "name without it (the audit log keeps every name for good, "
                              "and messages read it out)", code="bad_name", field="name")
    return name


def _lock_names(session: Session, pincode: str) -> None:
    """The pincode's name lock, for this transaction: one name given at a time."""
    session.execute(select(func.pg_advisory_xact_lock(POINT_NAME_LOCK_KEY,
                                                      func.hashtext(pincode))))


def _name_holder(session: Session, pincode: str, name: str, *, office: str | None = None,
                 other_than: int | None = None) -> Point | None:
    """Another active Point of the pincode (than ``other_than``) called ``name`` (its name
    or its post office, as find_point reads them), or called as ``office`` (a Point's that
    opens), under the pincode's name lock."""
    _lock_names(session, pincode)
    wanted = name.lower()  # as PostgreSQL's lower() has it
    clash = or_(func.lower(Point.name) == wanted, func.lower(Point.post_office) == wanted)
    if office is not None:
        clash = or_(clash, func.lower(Point.name) == office.lower())
    query = select(Point).where(Point.pincode == pincode, Point.active.is_(True), clash)
    if other_than is not None:
        query = query.where(Point.id != other_than)
    return session.scalar(query.order_by(Point.id).limit(1))


def rename_point(session: Session, point: str | int, name: str, *, actor: str,
                 note: str | None = None) -> Outcome:
    """Rename a Point (the name customers and riders read and hear; its office, pincode
    and place stay). No cache holds Point names: every message, list, prompt and app
    answer reads it from the row when it is made (core.adapters.points, dispatch.place),
    so the next one says the new name; messages sent before keep the old one.
    ValidationError ``bad_name`` (_point_name). Refused (Conflict ``name_taken``) when
    another active Point of its pincode is called that: people told the name, and
    find_point, could not tell the two apart. The same name again: nothing changed."""
    name = _point_name(name)
    p = _point_to_change(session, point)
    before = p.name
    if before == name:
        return Outcome(False, p.id, f"Point {p.name} (id {p.id}) is called that already; "
                       "nothing changed")
    holder = _name_holder(session, p.pincode, name, other_than=p.id)
    if holder is not None:
        raise Conflict(f"Point {holder.name} (id {holder.id}) of pincode {p.pincode} is "
                       f"called {name!r} already: people could not tell the two apart; "
                       "choose another name", code="name_taken", field="name")
    p.name = name
    session.flush()
    record(session, actor, "point.rename", f"point:{p.id}", before=before, after=name,
           note=mask_note(note) if note else None)
    closed = "" if p.active else " (closed: add-point opens it again)"
    return Outcome(True, p.id, f"Point {before} (id {p.id}) is now called {name}{closed}")


def default_rate_card_name() -> str:
    """The built-in card's row name, after its content: a changed default is a new row."""
    digest = hashlib.sha256(json.dumps(DEFAULT_RATE_CARD.to_dict(), sort_keys=True)
                            .encode()).hexdigest()
    return f"default-{digest[:10]}"


def activate_default_rate_card(session: Session, *, actor: str) -> Outcome:
    """Load and activate the built-in rate card, unless a card is active already."""
    active = session.scalar(select(RateCardRow).where(RateCardRow.active.is_(True))
                            .order_by(RateCardRow.id.desc()).limit(1))
    if active is not None:
        return Outcome(False, active.id, f"rate card {active.name} (id {active.id}) is "
                       "active already; nothing changed")
    name = default_rate_card_name()
    row = session.scalar(select(RateCardRow).where(RateCardRow.name == name)
                         .with_for_update())
    if row is None:
        row = RateCardRow(name=name, card=DEFAULT_RATE_CARD.to_dict(), active=True)
        session.add(row)
        session.flush()
    else:
        row.active = True
    record(session, actor, "rate_card.activate", f"rate_card:{row.id}", name=name)
    return Outcome(True, row.id, f"rate card {name} (id {row.id}) is active")


def find_point(session: Session, point: str | int) -> Point:
    """The active Point named by id, name or post office (ValidationError ``unknown_point``
    if none or more than one)."""
    raw = str(point).strip()
    # An id is ASCII digits, and no longer than the largest id: str.isdigit() is true of
    # "²" and "①" too (which int() refuses), and int() refuses 4300 digits and more.
    if raw.isascii() and raw.isdigit():
        digits = raw.lstrip("0") or "0"  # 0001 is 1 (and no longer than 1)
        ref = int(digits) if len(digits) <= len(str(MAX_ID)) else None
        found = session.get(Point, ref) if ref is not None and 1 <= ref <= MAX_ID else None
        if found is not None and found.active:
            return found
        shown = raw if ref is not None else f"{raw[:12]}... ({len(raw)} digits)"
        raise ValidationError(f"no active Point has id {shown}", code="unknown_point",
                              field="point")
    wanted = raw.lower()  # as PostgreSQL's lower() has it
    rows = list(session.scalars(select(Point).where(
        Point.active.is_(True),
        or_(func.lower(Point.name) == wanted, func.lower(Point.post_office) == wanted))
        .order_by(Point.id)))
    if len(rows) == 1:
        return rows[0]
    if rows:
        listed = ", ".join(f"{p.name} ({p.pincode}, id {p.id})" for p in rows)
        raise ValidationError(f"{raw!r} names more than one Point: {listed}; give its id",
                              code="unknown_point", field="point")
    raise ValidationError(f"no active Point is called {raw!r} (add-point adds one)",
                          code="unknown_point", field="point")


def _open_point(session: Session, point: str | int) -> Point:
    """The active Point ``point`` names (find_point), its row share-locked and read again:
    close_point holds the row's lock from its check to its commit, so a close running now
    either commits first and is seen here (ValidationError ``unknown_point``, as
    find_point's), or waits for this and sees (and names) the partner whose home it is."""
    found = find_point(session, point)
    locked = session.get(Point, found.id, with_for_update={"read": True},
                         populate_existing=True)
    if locked is None or not locked.active:
        raise ValidationError(f"Point {found.name} (id {found.id}) was closed just now; "
                              "give an active Point", code="unknown_point", field="point")
    return locked


def _checked(spec: NewPartner) -> tuple[str, str, VehicleType]:
    """The partner's phone (E.164), name and vehicle type, or a ValidationError naming the
    field at fault."""
    phone = normalize_phone(spec.phone)
    # As the API's ShownText keeps it: no control characters or invisible marks (a
    # right-to-left override pasted with the name would turn customers' SMS around).
    name = visible(spec.name)
    if not name or len(name) > NAME_MAX:
        raise ValidationError(f"give a name of 1 to {NAME_MAX} characters", code="bad_name",
                              field="name")
    _without_phone(name)
    if spec.language not in LANGUAGES:
        raise ValidationError(f"language must be one of {', '.join(LANGUAGES)}",
                              code="bad_language", field="language")
    try:
        vehicle = VehicleType(spec.vehicle)
    except ValueError:
        raise ValidationError(f"vehicle must be one of {', '.join(VehicleType)}",
                              code="bad_vehicle", field="vehicle") from None
    most = VEHICLE_CAPACITY[vehicle].max_weight.max_grams // 1000
    if isinstance(spec.payload_kg, bool) or not MIN_PAYLOAD_KG <= spec.payload_kg <= most:
        raise ValidationError(f"a {vehicle.value} carries {MIN_PAYLOAD_KG} to {most} kg (no "
                              f"parcel is offered to one that carries less than "
                              f"{MIN_PAYLOAD_KG} kg)", code="bad_payload", field="payload_kg")
    if spec.payout_account is not None and not PAYOUT_ACCOUNT.fullmatch(spec.payout_account):
        raise ValidationError("payout_account is a Razorpay linked account id (acc_...)",
                              code="bad_payout_account", field="payout_account")
    return phone, name, vehicle


def add_partner(session: Session, spec: NewPartner, *, actor: str) -> Outcome:
    """A partner: the person (role partner), their profile (KYC pending, off duty, at
    their home Point) and their vehicle. ``changed`` is False if the phone is a partner
    already (nothing is changed then); a customer becomes a partner, an operator is
    refused (Conflict)."""
    phone, name, vehicle = _checked(spec)
    masked = mask_phone(phone)
    home = _open_point(session, spec.point)
    person = _person(session, phone)
    if person is not None and person.role == "partner" and person.partner is not None:
        p = person.partner
        unpaid = "" if p.payout_account_id else (
            " (no payout account yet: they cannot go ON until one is set, "
            f"set-payout-account --partner {p.id} --account acc_...)")
        return Outcome(False, p.id, f"{masked} is already partner {p.id} ({p.first_name}); "
                       f"nothing changed{unpaid}")
    if person is not None and person.role == "ops":
        raise Conflict(f"{masked} is an operator (person {person.id}); an operator cannot "
                       "also be a partner: use another phone", code="conflict", field="phone")
    if spec.payout_account is not None:
        holder = session.scalar(select(PartnerProfile.id).where(
            PartnerProfile.payout_account_id == spec.payout_account))
        if holder is not None:  # their payouts would go to the other partner's bank
            raise _account_taken(spec.payout_account, f"partner {holder}'s")
    before = person.role if person is not None else None
    if person is None:
        person = Person(phone=phone, name=name, role="partner",
                        preferred_language=spec.language)
        session.add(person)
        session.flush()
    else:  # a customer (or a partner whose profile is missing) signs up to carry
        person.role = "partner"
        person.name = person.name or name
        person.preferred_language = spec.language  # the language their offers come in
        _end_sessions(session, person.id)
    profile = PartnerProfile(
        person_id=person.id, first_name=name.split()[0], home_point_id=home.id,
        has_app=spec.has_app, on_duty=False, payout_account_id=spec.payout_account,
        vehicles=[Vehicle(type=vehicle.value, payload_kg=spec.payload_kg,
                          max_size=VEHICLE_CAPACITY[vehicle].max_size.value)])
    profile.points = [home]
    session.add(profile)
    try:
        session.flush()
    except IntegrityError as exc:  # another operator's add took it since the check above
        if _ACCOUNT_INDEX in str(exc.orig):
            raise _account_taken(spec.payout_account, "another partner's") from None
        raise
    record(session, actor, "partner.add", f"partner:{profile.id}", phone=masked,
           person=person.id, before=before, point=home.id, vehicle=vehicle.value,
           payload_kg=spec.payload_kg, payout_account=spec.payout_account)
    unpaid = "" if spec.payout_account else (
        "; warning: no payout account, so they cannot go ON until one is set "
        f"(set-payout-account --partner {profile.id} --account acc_...)")
    return Outcome(True, profile.id, f"partner {profile.first_name} {masked} added (partner "
                   f"{profile.id}, {vehicle.value} {spec.payload_kg} kg, Point {home.name}, "
                   f"KYC pending, off duty){unpaid}")


# Where a partner's jobs are in hand: a change of payout account waits until none is.
def locked_partner(session: Session, partner_id: int) -> tuple[PartnerProfile, str]:
    """The partner's row, locked and read again, and how messages name them (phone
    masked): for a change of what they signed up with. NotFound, or Conflict ``erased``
    for a partner erased on their request (a return is a new sign-up)."""
    p = session.get(PartnerProfile, partner_id, with_for_update=True,
                    populate_existing=True) if 1 <= partner_id <= MAX_ID else None
    if p is None:
        raise NotFound(f"no partner has id {partner_id}", code="not_found")
    if not p.first_name:
        raise Conflict(f"partner {p.id} was erased; sign them up again (add-partner)",
                       code="erased", field="partner")
    phone = session.scalar(select(Person.phone).where(Person.id == p.person_id))
    return p, f"partner {p.id} ({p.first_name}, {mask_phone(phone) if phone else '-'})"


IN_HAND = ("assigned", "locked", "picked_up")  # a partner's jobs taken, not yet delivered


def set_payout_account(session: Session, partner_id: int, account: str, *, actor: str,
                       note: str | None = None, only_if_missing: bool = False) -> Outcome:
    """Give a partner their Razorpay Route linked account (``acc_...``), or change it.

    A partner signed up without one cannot go on duty (dispatch.payable); this is how they
    get one later. Filling a missing account is always allowed. Changing an account is
    refused (Conflict ``partner_has_jobs``) while the partner holds a job (taken, not yet
    delivered) or a leg's transfer is still on hold to the old account: a hold would be
    reversed and made anew to the new account in the middle of the job. A transfer already
    released stays with the account it was made to (its row keeps it). With
    ``only_if_missing`` (``add-partner`` run again) another account than theirs is refused,
    pointing to ``set-payout-account``. The account is each partner's own (Conflict
    ``payout_account_taken``). Same account again: nothing changed, nothing audited.

    A payout job inside its gateway call to the old account (a delivered leg's hold made
    or released, a direct transfer) holds the partner's row (payments._paying_to): the
    change waits for that call (at most the gateway's timeout); a job that read the old
    account before this commits reads it again before its call, and pays the new one."""
    if not isinstance(account, str) or not PAYOUT_ACCOUNT.fullmatch(account):
        raise ValidationError("account_id is a Razorpay linked account id (acc_...)",
                              code="bad_payout_account", field="account_id")
    p, who = locked_partner(session, partner_id)
    before = p.payout_account_id
    if before == account:
        return Outcome(False, p.id, f"{who} is already paid to {account}; nothing changed")
    if before is not None and only_if_missing:
        raise Conflict(f"{who} is paid to {before}; to change it run set-payout-account "
                       f"--partner {p.id} --account {account}", code="payout_account_set",
                       field="payout_account")
    holder = session.scalar(select(PartnerProfile.id).where(
        PartnerProfile.payout_account_id == account))
    if holder is not None:
        raise _account_taken(account, f"partner {holder}'s")
    if before is not None:
        _refuse_while_paid_to(session, p, who, before, "change", "account_id")
    p.payout_account_id = account
    try:
        session.flush()
    except IntegrityError as exc:  # another partner was given it since the check above
        if _ACCOUNT_INDEX in str(exc.orig):
            raise _account_taken(account, "another partner's") from None
        raise
    record(session, actor, "partner.payout_account", f"partner:{p.id}", before=before,
           after=account, **_noted(note))
    _tell_payout_account(session, p, account)
    # What they are owed (a transfer Razorpay refused to the old account, backing off for
    # up to 6 hours) goes to the new one now.
    payments.pay_owed_now(session, p.id, account)
    if p.kyc_status == "verified":
        then = "they can text ON now"
    else:
        then = f"they can go ON once their KYC is verified (now {p.kyc_status})"
    was = f"was {before}" if before else "had none"
    return Outcome(True, p.id, f"{who} is paid to {account} ({was}); {then}")


def _refuse_while_paid_to(session: Session, p: PartnerProfile, who: str, account: str,
                          doing: str, field: str) -> None:
    """Conflict ``partner_has_jobs`` while the partner (their row locked) holds a job
    (taken, not yet delivered) or a leg's transfer is on hold to ``account``: a hold
    would be reversed and made anew to another account (or to none) mid-job."""
    jobs = list(session.scalars(select(Leg.id).where(
        Leg.partner_id == p.id, Leg.status.in_(IN_HAND)).order_by(Leg.id)))
    held = list(session.scalars(select(LegTransfer.leg_id).where(
        LegTransfer.partner_id == p.id, LegTransfer.status == "on_hold")
        .order_by(LegTransfer.leg_id)))
    if jobs or held:
        what = (f"holds leg(s) {', '.join(map(str, jobs))}" if jobs else
                f"has payouts on hold to {account} (leg(s) {', '.join(map(str, held))})")
        raise Conflict(f"{who} {what}; {doing} the payout account once those are "
                       "delivered and paid", code="partner_has_jobs", field=field)


def clear_payout_account(session: Session, partner_id: int, *, actor: str,
                         note: str | None = None) -> Outcome:
    """Take a partner's payout account away (their bank account closed, Razorpay
    suspended the linked account, it was someone else's), audited
    (``partner.payout_account``, before -> none).

    Refused as a change is (Conflict ``partner_has_jobs``) while they hold a job or a
    payout on hold to it. After it they cannot be paid (dispatch.payable): on duty they
    go OFF, their open offers go to others, and they hear why by SMS
    (dispatch.payout_account_gone); their ON is refused until set_payout_account gives
    them a new account. What they are still owed waits for it (no transfer can be made
    to none; payments.owed_without_account tells ops of legs owed long), and is paid once
    it is set (payments.pay_owed_now). None already: nothing changed, nothing audited.
    Like set_payout_account, it waits for a payout job's gateway call to the account."""
    # The legs of their open offers and the offers before their row, as OFF locks them:
    # a rival's acceptance of one of those jobs holds its leg, then writes this row.
    offers = dispatch.lock_open_offers(session, partner_id) \
        if 1 <= partner_id <= MAX_ID else []
    p, who = locked_partner(session, partner_id)
    before = p.payout_account_id
    if before is None:
        return Outcome(False, p.id, f"{who} has no payout account; nothing changed")
    _refuse_while_paid_to(session, p, who, before, "clear", "partner")
    p.payout_account_id = None
    session.flush()
    record(session, actor, "partner.payout_account", f"partner:{p.id}", before=before,
           after=None, **_noted(note))
    stopped = dispatch.payout_account_gone(session, p, offers)
    if not stopped:  # on duty or offered, they were told already (payout_account_cleared)
        _tell_payout_account(session, p, None)
    then = "taken off duty and told by SMS" if stopped else "off duty"
    return Outcome(True, p.id, f"{who} has no payout account now (was {before}); {then}; "
                   "they cannot go ON, and what they are owed waits, until one is set "
                   f"(set-payout-account --partner {p.id} --account acc_...)")


# Ops gave a partner a payout account or took it away: they hear it by SMS, so a change
# made for someone else (a thief talking ops into "my new account is acc_...") does not
# go unnoticed until their pay stops coming.
PAYOUT_ACCOUNT_CHANGED = "sms.payout_account_changed"
PAYOUT_ACCOUNT_REMOVED = "sms.payout_account_removed"


def _tell_payout_account(session: Session, p: PartnerProfile, account: str | None) -> None:
    """Tell the partner by SMS, in their language, that their payouts go to ``account``
    now (its last 4 characters) or, None, that it was removed, and to call ops if they
    did not ask for it. Written with the change (sent once it commits, not if it rolls
    back); each change its own message, as a phone move's (partner_profile.set_phone): a
    request run again changes nothing, so tells nothing."""
    tag = secrets.token_hex(6)  # each change its own message (changed back and forth)
    key, ops_phone = f"partner-{p.id}-payout-account-{tag}", get_settings().ops_phone
    if account is None:
        dispatch._sms_partner(session, p, PAYOUT_ACCOUNT_REMOVED, dedupe_key=key,
                              ops_phone=ops_phone)
    else:
        dispatch._sms_partner(session, p, PAYOUT_ACCOUNT_CHANGED, dedupe_key=key,
                              ops_phone=ops_phone, last4=account[-4:])


def set_home_point(session: Session, partner_id: int, point: str | int, *, actor: str,
                   note: str | None = None) -> Outcome:
    """Move a partner's home Point (they moved villages) to the active Point ``point``
    names (its id or name: find_point, ValidationError ``unknown_point``; one being
    closed right now is waited for, then refused so: _open_point).

    Under the partner's row lock: ``home_point_id`` becomes the new Point, and in the
    Points they serve (``profile.points``, partner_points) the new one takes the old
    one's place; other Points they serve stay. A partner on duty is placed at the new
    Point in the dispatch home set once this commits (off duty, they stay out of it).
    Jobs they hold stay theirs. An erased partner is refused (Conflict ``erased``), as
    set_payout_account refuses them. Same Point again: nothing changed, nothing audited."""
    p, who = locked_partner(session, partner_id)
    home = _open_point(session, point)
    before = p.home_point_id
    if before == home.id:
        return Outcome(False, p.id, f"{who} already has Point {home.name} (id {home.id}) "
                       "as home; nothing changed")
    served = [home if pt.id == before else pt for pt in p.points]
    if home not in served:
        served.append(home)
    p.points = list(dict.fromkeys(served))  # the new one once, if they served it already
    p.home_point_id = home.id
    session.flush()
    # The home set (Redis) follows once committed: on duty, at the new Point.
    dispatch._home_follows_duty(session, p)
    record(session, actor, "partner.home_point", f"partner:{p.id}", before=before,
           after=home.id, **_noted(note))
    old = session.get(Point, before) if before is not None else None
    was = f"was {old.name} (id {old.id})" if old is not None else "had none"
    duty = "on duty: offered jobs near it now" if p.on_duty else "off duty"
    return Outcome(True, p.id, f"{who} has Point {home.name} (id {home.id}) as home "
                   f"({was}); {duty}; jobs in hand stay theirs")


_ACCOUNT_INDEX = "uq_partner_profiles_payout_account_id"


def _account_taken(account: str | None, whose: str) -> Conflict:
    return Conflict(f"payout account {account} is {whose}; each partner is paid to their "
                    "own", code="payout_account_taken", field="payout_account")


__all__ = ["POINT_MOVE_MAX_M", "POINT_NAME_MAX", "NewPartner", "Outcome",
           "activate_default_rate_card", "add_operator", "add_partner", "add_point",
           "clear_payout_account", "close_point", "find_point", "home_partners",
           "move_point", "relays_through", "remove_operator", "rename_point",
           "set_home_point", "set_payout_account"]

"""Changing what a partner signed up with: their vehicle, their language, whether they
have the app, their phone number.

A rider sells the bicycle and buys a motorcycle, a family phone changes hands and the
offers should come in Marathi, a rider gets a smartphone: the operator changes it here
(``PUT /api/v1/ops/partners/<id>/vehicle|language|app|phone``). As the rest of core.services.admin:
each call runs in the caller's transaction under the partner's row lock, writes an
audit_log entry beside its change, and run again it finds what is there, says so and
changes nothing (nor audits anything). An erased partner is refused (``erased``).

What follows a change:

* the vehicle: the next search sees it (a committed change to a partner's vehicles drops
  their cached dispatch facts, core.adapters.facts_watch); an offer they hold for a
  parcel the new vehicle cannot carry is refused at their yes (dispatch.accept checks the
  fit again); jobs in hand stay theirs, as with a move of home Point;
* the language: every later offer, SMS and call to them is in it;
* the app: on duty, they are placed again in the dispatch home set (without the app they
  are found at their home Point; with it, only by a fresh position from the app);
* the phone (a new SIM): every later offer and SMS goes to the new number, and the old
  one is nobody's: an SMS from it is a stranger's, its app sessions are ended, its calls
  and chats start afresh as a new contact's (set_phone).
"""

from __future__ import annotations

import logging
import secrets

from sqlalchemy import exists, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core import clock, i18n
from core.adapters.api_models import ApiSession
from core.adapters.dialog_models import Handoff
from core.adapters.models import (
    Booking,
    Conversation,
    Leg,
    OutboxMessage,
    PartnerProfile,
    Person,
    Vehicle,
)
from core.domain.errors import Conflict, ValidationError
from core.domain.phone import mask_phone, normalize_phone
from core.domain.pricing import VEHICLE_CAPACITY, VehicleType
from core.i18n import LANGUAGES
from core.logs import mask_phones
from core.services import admin, dispatch, notify, outbox
from core.services.admin import MIN_PAYLOAD_KG, Outcome, locked_partner, record

log = logging.getLogger(__name__)


def _noted(note: str | None) -> dict[str, str]:
    return {"note": mask_phones(note)} if note else {}


def vehicle_of(p: PartnerProfile) -> Vehicle | None:
    """The partner's vehicle in use (the newest active one)."""
    active = [v for v in p.vehicles if v.active]
    return max(active, key=lambda v: v.id) if active else None


def set_vehicle(session: Session, partner_id: int, vehicle: str, payload_kg: int, *,
                actor: str, note: str | None = None) -> Outcome:
    """The partner rides ``vehicle`` carrying up to ``payload_kg`` now: their other
    vehicles are retired (kept, inactive: past legs name them) and this one is the one
    dispatch fits parcels to. The payload is checked as at sign-up (ValidationError
    ``bad_vehicle`` / ``bad_payload``). Same vehicle and payload again: nothing changed."""
    try:
        kind = VehicleType(vehicle)
    except ValueError:
        raise ValidationError(f"vehicle must be one of {', '.join(VehicleType)}",
                              code="bad_vehicle", field="vehicle") from None
    most = VEHICLE_CAPACITY[kind].max_weight.max_grams // 1000
    if isinstance(payload_kg, bool) or not isinstance(payload_kg, int) \
            or not MIN_PAYLOAD_KG <= payload_kg <= most:
        raise ValidationError(f"a {kind.value} carries {MIN_PAYLOAD_KG} to {most} kg (no "
                              f"parcel is offered to one that carries less than "
                              f"{MIN_PAYLOAD_KG} kg)", code="bad_payload", field="payload_kg")
    p, who = locked_partner(session, partner_id)
    now = vehicle_of(p)
    active = [v for v in p.vehicles if v.active]
    if now is not None and len(active) == 1 and now.type == kind.value \
            and now.payload_kg == payload_kg:
        return Outcome(False, p.id, f"{who} already rides a {kind.value} carrying "
                       f"{payload_kg} kg; nothing changed")
    for v in active:
        v.active = False
    p.vehicles.append(Vehicle(type=kind.value, payload_kg=payload_kg,
                              max_size=VEHICLE_CAPACITY[kind].max_size.value))
    session.flush()
    before = f"{now.type} {now.payload_kg} kg" if now is not None else None
    record(session, actor, "partner.vehicle", f"partner:{p.id}", before=before,
           after=f"{kind.value} {payload_kg} kg", **_noted(note))
    return Outcome(True, p.id, f"{who} rides a {kind.value} carrying {payload_kg} kg now "
                   f"(was {before or 'none'}); jobs in hand stay theirs")


def set_language(session: Session, partner_id: int, language: str, *, actor: str,
                 note: str | None = None) -> Outcome:
    """Offers, SMS and calls to the partner go in ``language`` from now on
    (ValidationError ``bad_language``). Same language again: nothing changed."""
    if language not in LANGUAGES:
        raise ValidationError(f"language must be one of {', '.join(LANGUAGES)}",
                              code="bad_language", field="language")
    p, who = locked_partner(session, partner_id)
    person = session.get(Person, p.person_id, with_for_update=True)
    assert person is not None, "a profile's person is never deleted (erasure blanks it)"
    before = person.preferred_language
    if before == language:
        return Outcome(False, p.id, f"{who} is written to in {language} already; "
                       "nothing changed")
    person.preferred_language = language
    record(session, actor, "partner.language", f"partner:{p.id}", before=before,
           after=language, **_noted(note))
    return Outcome(True, p.id, f"{who} is written to in {language} now (was "
                   f"{before or 'not chosen'})")


def set_has_app(session: Session, partner_id: int, has_app: bool, *, actor: str,
                note: str | None = None) -> Outcome:
    """Whether the partner works from the app (found by its fresh position) or by SMS
    alone (found at their home Point while on duty). Same again: nothing changed."""
    p, who = locked_partner(session, partner_id)
    if p.has_app is has_app:
        return Outcome(False, p.id, f"{who} {'has' if has_app else 'has no'} app already; "
                       "nothing changed")
    p.has_app = has_app
    session.flush()
    # The home set (Redis) follows once committed, as a move of home Point does.
    dispatch._home_follows_duty(session, p)
    record(session, actor, "partner.app", f"partner:{p.id}", before=not has_app,
           after=has_app, **_noted(note))
    how = ("found by the app's position" if has_app
           else "found at their home Point, offered jobs by SMS")
    return Outcome(True, p.id, f"{who} {'has the app' if has_app else 'has no app'} now: "
                   f"{how} while on duty")


_PHONE_INDEX = "uq_people_phone"


def _holder(session: Session, person: Person, phone: str) -> Person | None:
    """Another person the number ``phone`` is already someone's: their phone, or their
    WhatsApp id (a WhatsApp contact we keep no phone for)."""
    return session.scalar(select(Person).where(
        Person.id != person.id,
        or_(Person.phone == phone, Person.wa_id.in_([phone, phone[1:]])))
        .order_by(Person.id).limit(1))  # read only: uq_people_phone settles a race


def _taken(session: Session, holder: Person, phone: str) -> Conflict:
    """Why ``phone`` cannot be the partner's: it names another person. A contact only (a
    customer who wrote or called from it, never booked nor signed in) is refused too: the
    row holds that number's own history (its chats, calls, opt-outs, requests for a
    person), and nothing says it is the partner's; if it is (he called from the new SIM
    first), erase that contact (POST /ops/people/<id>/erase), then move him."""
    masked = mask_phone(phone)
    if holder.role == "customer" and not session.scalar(select(
            exists().where(Booking.customer_id == holder.id)
            | exists().where(ApiSession.person_id == holder.id))):
        return Conflict(f"{masked} is the number of a contact (person {holder.id}: someone "
                        "who wrote or called from it, never booked nor signed in); if it is "
                        "the partner himself, erase that contact first (POST "
                        f"/ops/people/{holder.id}/erase); nothing changed",
                        code="phone_taken", field="phone")
    what = {"partner": "a partner's", "ops": "an operator's"}.get(holder.role,
                                                                  "a customer's")
    return Conflict(f"{masked} is {what} account (person {holder.id}): one number is one "
                    "person's; nothing changed", code="phone_taken", field="phone")


def set_phone(session: Session, partner_id: int, phone: str, *, actor: str,
              note: str | None = None) -> Outcome:
    """The partner has a new SIM: ``phone`` (E.164 of what normalize_phone reads,
    ValidationError ``bad_phone``) is their number from now on. Refused (Conflict
    ``phone_taken``) when it is another person's, a contact's included (_taken).

    Under the partner's and their person's row locks: the number changes; every API
    session of theirs ends (the partner app on the old phone must sign in again, with the
    new number); the old number's chats and calls (conversations) are let go, so the old
    SIM is a new contact to us; its SMS opt-out stays with it (kept hashed, as an
    erasure keeps one); SMS still waiting to go to it go to the new number, its sign-in
    codes not at all. Offers and replies follow at once: dispatch reads the number from
    the person when it writes, and a partner SMS is known by its number. The new number
    is told it is their RideChain number now, the old one that it was moved (with the new
    one's last 4 digits), both in their language. Audited (``partner.phone``, both
    numbers masked). Same number again: nothing changed, nothing audited."""
    new = normalize_phone(phone)
    p, who = locked_partner(session, partner_id)
    person = session.get(Person, p.person_id, with_for_update=True, populate_existing=True)
    assert person is not None, "a profile's person is never deleted (erasure blanks it)"
    old = person.phone
    if old == new:
        return Outcome(False, p.id, f"{who} has {mask_phone(new)} already; nothing changed")
    holder = _holder(session, person, new)
    if holder is not None:
        raise _taken(session, holder, new)
    jobs = list(session.scalars(select(Leg.id).where(
        Leg.partner_id == p.id, Leg.status.in_(admin.IN_HAND)).order_by(Leg.id)))
    if jobs:
        # Codes for them (a Point handover's) went to the old SIM, which may be lost or
        # another's now, and the new one has none: ops take the jobs back first.
        raise Conflict(f"{who} holds leg(s) {', '.join(map(str, jobs))}, whose codes went "
                       "to the old number; take them back (or wait until delivered), then "
                       "move the number; nothing changed", code="partner_has_jobs",
                       field="phone")
    lang = person.preferred_language or i18n.DEFAULT_LANGUAGE
    contacts = [c for c in (old, old[1:] if old else None) if c]
    # WhatsApp was the old number's too (their WhatsApp id, or none: the phone's).
    wa_old = person.wa_id is None or person.wa_id in contacts
    if old is not None and (person.sms_opted_out or (wa_old and person.opted_out)):
        # A STOP was the old number's (Twilio keeps one per number): it stays with it.
        outbox.keep_opt_out(session, [old], whatsapp=wa_old and bool(person.opted_out),
                            sms=bool(person.sms_opted_out),
                            wa_blocked=wa_old and bool(person.wa_blocked))
    person.sms_opted_out = False
    if wa_old:
        person.wa_id = None  # the old number's WhatsApp is not theirs either
        person.opted_out = person.wa_blocked = False
    person.phone = new
    # A STOP kept for the new number (its erased last holder's) is theirs now.
    outbox.carry_kept_opt_out(session, person)
    try:
        session.flush()
    except IntegrityError as exc:  # someone took the number since the check above
        if _PHONE_INDEX in str(exc.orig):
            raise Conflict(f"{mask_phone(new)} became another person's just now; nothing "
                           "changed", code="phone_taken", field="phone") from None
        raise
    ended = admin._end_sessions(session, person.id)
    if contacts:
        # A request for a person waiting on the old number's chat or call ends with it:
        # its conversation is a stranger's from now on (an operator's close would put
        # that stranger back at the menu).
        for waiting in session.scalars(select(Handoff).join(
                Conversation, Conversation.id == Handoff.conversation_id).where(
                Conversation.person_id == person.id, Conversation.contact.in_(contacts),
                Handoff.status == "waiting").with_for_update(of=Handoff)):
            waiting.status, waiting.closed_at = "closed", clock.now()
            waiting.operator = waiting.operator or actor
        # The old SIM calling or writing is a new contact now, not this partner.
        session.execute(update(Conversation).where(
            Conversation.person_id == person.id, Conversation.contact.in_(contacts))
            .values(person_id=None, step="start", state={}, misses=0, handoff=False))
    moved = 0
    if old is not None:
        outbox.withdraw_sign_in_codes(session, old)
        m = OutboxMessage
        moved = len(session.scalars(update(m).where(
            m.channel == "sms", m.to_addr == outbox.address("sms", old),
            m.status == "pending").values(to_addr=outbox.address("sms", new))
            .returning(m.id)).all())
    record(session, actor, "partner.phone", f"partner:{p.id}",
           before=mask_phone(old) if old else None, after=mask_phone(new),
           sessions_ended=ended, **_noted(note))
    tag = secrets.token_hex(6)  # each move its own messages (moved back and forth)
    notify.notify_phone(session, new, "sms.phone_moved_new", lang=lang, sms_only=True,
                        dedupe_key=f"phone-moved-{p.id}-{tag}-new")
    if old is not None:
        notify.notify_phone(session, old, "sms.phone_moved_old", lang=lang, sms_only=True,
                            dedupe_key=f"phone-moved-{p.id}-{tag}-old", last4=new[-4:])
    log.info("partner phone moved", extra={"partner": p.id, "sessions_ended": ended,
                                           "messages_moved": moved})
    was = mask_phone(old) if old else "none"
    return Outcome(True, p.id, f"{who} is reached at {mask_phone(new)} now (was {was}); "
                   f"signed out of {ended} session(s); offers and SMS go to the new number")

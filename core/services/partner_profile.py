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
  are found at their home Point; with it, only by a fresh position from the app); made
  SMS-only, one whose number stopped our SMS goes OFF, and one whose home Point is closed
  hears by SMS that no offer can reach him (the answer says either: set_has_app);
* the phone (a new SIM): every later offer and SMS goes to the new number, and the old
  one is nobody's: an SMS from it is a stranger's, its app sessions are ended, its calls
  and chats start afresh as a new contact's; parcels under way to the old number follow
  him to the new one, with a new drop code; the old number is kept as a former one, for
  his erasure (set_phone).
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass

from sqlalchemy import exists, func, or_, select, update
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
from core.domain.booking import BOOKING, Actor
from core.domain.errors import Conflict, DomainError, ValidationError
from core.domain.phone import mask_phone, normalize_phone
from core.domain.pricing import VEHICLE_CAPACITY, VehicleType
from core.i18n import LANGUAGES
from core.logs import mask_note
from core.services import admin, dispatch, notify, outbox, partner_app, partner_sms
from core.services.admin import MIN_PAYLOAD_KG, Outcome, locked_partner, record
from core.services.retention import PHONE_MOVED

log = logging.getLogger(__name__)


def _noted(note: str | None) -> dict[str, str]:
    """An operator's note as the audit log keeps it for good: phones, bank account and
    Aadhaar numbers in it masked (logs.mask_note, as admin's notes)."""
    return {"note": mask_note(note)} if note else {}


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


@dataclass(frozen=True)
class AppOutcome(Outcome):
    """What set_has_app did, and what it means for the partner's duty: ``went_off_duty``,
    the change put him OFF; ``placed_nowhere``, without the app no search can find him
    (his home Point closed, none other he serves open: dispatch.placed_nowhere)."""

    went_off_duty: bool = False
    placed_nowhere: bool = False


def set_has_app(session: Session, partner_id: int, has_app: bool, *, actor: str,
                note: str | None = None) -> AppOutcome:
    """Whether the partner works from the app (found by its fresh position) or by SMS
    alone (found at their home Point while on duty). Same again: nothing changed.

    Without the app, a partner on duty whose number stopped our SMS (dispatch.sms_stopped:
    an app rider may keep working after STOP, the app brings his offers) could be reached
    by no offer: he goes OFF as the STOP itself takes an SMS-only rider off
    (dispatch.set_duty: a duty_off event, his open offers closed, jobs in hand his), and
    the answer says so; his ON is refused until he sends START.

    Without the app, a partner on duty whose home Point is closed, with no other Point he
    serves open (dispatch.placed_nowhere), is found by no search: as when his Point closes
    under him (admin.close_point), he stays on duty and hears by SMS that no offer can
    reach him and whom to call; the answer says so, and that ops give him a new home
    (set_home_point places him there at once). Off duty, his ON is refused until then."""
    # OFF locks the legs of his open offers, then the offers, before his row (a rival's
    # acceptance holds such a leg, then writes his row): taken here before his row, as
    # admin.clear_payout_account takes them.
    if not has_app and 1 <= partner_id <= admin.MAX_ID:
        dispatch.lock_open_offers(session, partner_id)
    p, who = locked_partner(session, partner_id)
    if p.has_app is has_app:
        return AppOutcome(False, p.id, f"{who} {'has' if has_app else 'has no'} app "
                          "already; nothing changed", placed_nowhere=(
                              not has_app and dispatch.placed_nowhere(session, p)))
    p.has_app = has_app
    session.flush()
    stopped = p.on_duty and dispatch.sms_stopped(session, p)
    if stopped:
        dispatch.set_duty(session, p, False)  # also places him in the home set (out)
    else:
        # The home set (Redis) follows once committed, as a move of home Point does.
        dispatch._home_follows_duty(session, p)
    if not has_app and p.on_duty:
        # His Points locked after his row, as his ON locks them (dispatch.set_duty): a
        # close of one meanwhile either committed first (seen closed here: he is told
        # below) or waits for this commit and finds him SMS-only on duty (it tells him).
        dispatch.lock_points_of(session, p)
    nowhere = not has_app and dispatch.placed_nowhere(session, p)
    if nowhere and p.on_duty:
        stamp = f"{clock.now().timestamp():.0f}"
        dispatch.tell_placed_nowhere(session, p,
                                     dedupe_key=f"partner-{p.id}-no-app-no-point-{stamp}")
    duty = {}
    if stopped:
        duty = {"duty": "off: SMS stopped"}
    elif nowhere and p.on_duty:
        duty = {"duty": "on, placed at no Point (home closed): told by SMS"}
    record(session, actor, "partner.app", f"partner:{p.id}", before=not has_app,
           after=has_app, **_noted(note), **duty)
    if stopped:
        return AppOutcome(True, p.id, f"{who} has no app now, and his number stopped our "
                          "SMS (STOP): no offer could reach him, so he is OFF duty; jobs in "
                          "hand stay his; he can go ON once he sends START",
                          went_off_duty=True)
    if nowhere:
        new_home = (f"give him a new home Point (PUT /ops/partners/{p.id}/home-point): "
                    "he is offered jobs there at once")
        if p.on_duty:
            return AppOutcome(True, p.id, f"{who} has no app now, and his home Point is "
                              "closed with no other Point he serves open: on duty, but no "
                              "offer can reach him; he was told so by SMS; " + new_home,
                              placed_nowhere=True)
        return AppOutcome(True, p.id, f"{who} has no app now, and his home Point is closed "
                          "with no other Point he serves open: his ON is refused until "
                          "he has a new one; " + new_home, placed_nowhere=True)
    how = ("found by the app's position" if has_app
           else "found at their home Point, offered jobs by SMS")
    return AppOutcome(True, p.id, f"{who} {'has the app' if has_app else 'has no app'} "
                      f"now: {how} while on duty")


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
    codes not at all; WhatsApp messages still waiting for it go to him as notify would
    send them now (outbox.follow_moved_whatsapp; one being sent now, its outcome lost,
    follows him when it is given back). Offers and replies follow at once: dispatch
    reads the number from the person when it writes, and a partner SMS is known by its
    number. Parcels under
    way to the old number (he was their recipient) follow him (_parcels_follow). The old
    number is kept among the person's former ones (people.former_phones), with when it
    stopped being theirs, so that an erasure of them finds what was theirs at it. The new
    number is told it is their RideChain number now, the old one that it was moved (with
    the new one's last 4 digits), both in their language. Audited (``partner.phone``, both
    numbers masked, the parcels moved by reference). Same number again: nothing changed,
    nothing audited."""
    new = normalize_phone(phone)
    p, who = locked_partner(session, partner_id)
    # FOR UPDATE, whatever the UPDATE below would take: an SMS to him reads the row FOR
    # KEY SHARE (dispatch._sms_partner), which only this lock makes wait for the move.
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
    if old is not None:
        person.former_phones = _former_with(session, person.former_phones, old, new)
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
    tag = secrets.token_hex(6)  # each move its own messages (moved back and forth)
    notify.notify_phone(session, new, "sms.phone_moved_new", lang=lang, sms_only=True,
                        dedupe_key=f"phone-moved-{p.id}-{tag}-new")
    if old is not None:
        notify.notify_phone(session, old, "sms.phone_moved_old", lang=lang, sms_only=True,
                            dedupe_key=f"phone-moved-{p.id}-{tag}-old", last4=new[-4:])
    # After the SMS above moved: a drop code still waiting to go by SMS went with them.
    # After the move's own SMS too: the new SIM hears it is his number before any code.
    parcels, new_codes = _parcels_follow(session, old, new, tag) if old else ([], [])
    if old is not None:
        # His WhatsApp messages still waiting for the old number (its WhatsApp is not his
        # either now) go to him as notify sends to him now: by SMS to the new number,
        # mostly (its WhatsApp has not written to us). After the parcels: a drop code
        # waiting there was made void above and is not sent at all.
        moved += outbox.follow_moved_whatsapp(session, person, old)
    record(session, actor, PHONE_MOVED, f"partner:{p.id}",
           before=mask_phone(old) if old else None, after=mask_phone(new),
           sessions_ended=ended, parcels_moved=parcels, drop_codes_renewed=new_codes,
           **_noted(note))
    log.info("partner phone moved", extra={"partner": p.id, "sessions_ended": ended,
                                           "messages_moved": moved,
                                           "parcels_moved": len(parcels)})
    was = mask_phone(old) if old else "none"
    coming = (f"; {len(parcels)} parcel(s) coming to him follow him "
              f"({len(new_codes)} with a new drop code)" if parcels else "")
    return Outcome(True, p.id, f"{who} is reached at {mask_phone(new)} now (was {was}); "
                   f"signed out of {ended} session(s); offers and SMS go to the new "
                   f"number{coming}")


def _former_with(session: Session, former: dict[str, str] | None, old: str,
                 new: str) -> dict[str, str]:
    """The person's former numbers (people.former_phones) with ``old`` added, stamped
    with the database's time of the move (as the rows' created_at: the erasure compares
    them), and without ``new`` (theirs again: their current number covers it)."""
    until = session.scalar(select(func.now()))
    assert until is not None
    kept = {number: at for number, at in (former or {}).items() if number != new}
    return {**kept, old: until.isoformat()}


# A parcel under way: what a booking to the old number is until it is delivered or ends.
_UNDER_WAY = tuple(s.value for s in BOOKING.states if s not in BOOKING.closed)


def _parcels_follow(session: Session, old: str, new: str, tag: str
                    ) -> tuple[list[str], list[str]]:
    """The bookings to the old number not finished yet (the partner was their
    recipient) are to the new one now: a stranger at the old number finds none of them
    (partner_sms._parcel_coming, conversation._coming_to_me), their drop code and news go
    to him, their rider calls him there. A drop code that went to the old number (sent,
    or waiting on WhatsApp: one waiting by SMS went with the other SMS) is made void and a
    new one goes to the new number (_new_drop_code); a rider who holds such a parcel
    (told the old number at his PICK) hears the new one. The old number is told nothing
    of them: it may be someone else's now. Finished bookings keep the number they were
    sent to (an erasure finds them by people.former_phones). Each booking under its
    legs' locks, then its own, as dispatch takes them. Returns the references moved, and
    those given a new drop code."""
    ids = list(session.scalars(select(Booking.id).where(
        Booking.recipient_phone == old, Booking.status.in_(_UNDER_WAY)).order_by(Booking.id)))
    moved: list[str] = []
    renewed: list[str] = []
    for booking_id in ids:
        legs = dispatch.lock_legs(session, booking_id)
        booking = session.get(Booking, booking_id, with_for_update=True,
                              populate_existing=True)
        assert booking is not None
        if booking.recipient_phone != old or booking.status not in _UNDER_WAY:
            continue  # changed since it was looked up
        code_was_his = partner_sms.code_holder(session, booking) == partner_sms.HER
        booking.recipient_phone = new
        session.flush()
        moved.append(booking.reference)
        last = legs[-1] if legs else None
        if last is None:
            continue
        if code_was_his and _new_drop_code(session, booking, last, tag):
            renewed.append(booking.reference)
        _tell_rider(session, booking, last, tag)
    return moved, renewed


def _new_drop_code(session: Session, booking: Booking, leg: Leg, tag: str) -> bool:
    """The drop code the old number holds is made void, a new one sent to the new number
    (dispatch.new_leg_code: audited, one of the few the service may make a leg for a new
    SIM, SERVICE_CODES_PER_LEG, apart from ops' own; it goes to the
    sender to pass on if the new number stopped our SMS). None can be made (the leg is
    locked: its unlock sends new codes, to the new number now; too many codes already):
    the working code stays with the old number, which may be a stranger's now, so ops
    hear of it, once for the move (``tag``). Made but sent to nobody: ops hear nobody
    holds a code. Whether a new code was made."""
    savepoint = session.begin_nested()
    try:
        made = dispatch.new_leg_code(session, leg.id, "drop", Actor.system(), send=True,
                                     reason="the recipient's number moved to a new SIM",
                                     cause=dispatch.NEW_SIM_CODE)
    except DomainError as exc:
        savepoint.rollback()
        log.info("no new drop code for a moved recipient",
                 extra={"booking_id": booking.id, "code": exc.code})
        dispatch.alert_ops(session, "dispatch.ops_drop_code_old_number",
                           dedupe_key=f"leg-{leg.id}-dropold-{tag}-ops",
                           booking_id=booking.id, ref=booking.reference,
                           job=dispatch.job_code(leg))
        return False
    savepoint.commit()
    if not made.sent:
        dispatch.alert_ops(session, "dispatch.ops_drop_code_unsent",
                           dedupe_key=f"leg-{leg.id}-dropunsent-ops{made.issued}",
                           booking_id=booking.id, ref=booking.reference,
                           job=dispatch.job_code(leg))
    return True


def _tell_rider(session: Session, booking: Booking, leg: Leg, tag: str) -> None:
    """The rider holding the parcel on its last leg was told whom it is for and the old
    number (the SMS after his PICK): he hears the new one, as that SMS says it."""
    to = partner_app.drop_contact(session, booking, leg)
    rider = session.get(PartnerProfile, leg.partner_id) if leg.partner_id else None
    if to is None or to.phone is None or to.sender or rider is None:
        return  # to.sender: he was sent to the sender, whose number did not change
    params = {"name": to.name} if to.name else {}
    dispatch._sms_partner(session, rider,
                          "dispatch.drop_contact" if to.name else "dispatch.drop_contact_phone",
                          booking_id=booking.id, dedupe_key=f"leg-{leg.id}-dropphone-{tag}",
                          job=dispatch.job_code(leg), phone=to.phone, **params)

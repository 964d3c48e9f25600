"""Operator (Dispatch console) endpoints: lists, people waiting for a person, a booking's
numbers to call, unlocks, KYC, new partners, Points closed, moved or renamed, refunds to
try again, a person's data erased on their request.

Every money, KYC, sign-up or erasure action an operator takes is written to the append-only
audit log in the same transaction as the action.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import requests
from flask import Response, jsonify
from pydantic import BaseModel, Field
from sqlalchemy import any_, func, or_, select
from sqlalchemy.orm import Session, selectinload

from core.adapters import razorpay_gateway as gw
from core.adapters.api_models import AuditEntry
from core.adapters.db import transaction
from core.adapters.dialog_models import HandoffMessage
from core.adapters.dispatch_models import DispatchOffer
from core.adapters.models import (
    Booking,
    Conversation,
    Leg,
    OutboxMessage,
    PartnerProfile,
    Person,
    Point,
)
from core.api import bp
from core.api.auth_guard import principal
from core.api.customer import bookings_out, visible_booking
from core.api.idempotency import KEY_HEADER, idempotent
from core.api.schemas import (
    CursorPage,
    CursorQuery,
    Keyset,
    OpsBookingOut,
    PhoneText,
    ShownText,
)
from core.api.spec import MAX_ID, ApiError, Strict, endpoint
from core.domain.booking import Actor, BookingStatus, LegStatus
from core.domain.dispatch import OfferStatus
from core.domain.errors import Conflict, NotFound, Unavailable, ValidationError
from core.domain.phone import is_e164, mask_phone, normalize_phone
from core.domain.pricing import VehicleType
from core.domain.reference import normalize_reference
from core.i18n import LANGUAGES
from core.logs import mask_note, mask_phones
from core.services import admin, dispatch, handoff, partner_profile, payments, retention

log = logging.getLogger(__name__)

OPS = ("ops",)


# Details an operator types in their own words (an erasure's reason: where the request
# came from; a cancellation's reason; a KYC note). The audit log is kept for good, past any
# erasure: phone numbers in them are kept masked (+91******3210), bank account and Aadhaar
# numbers (9 digits or more) to their last 4 (logs.mask_note), and an erasure's reason
# loses the names that erasure takes (retention.without_names).
FREE_TEXT = frozenset({"reason", "note"})


def audit(session: Session, action: str, target: str, **details: object) -> None:
    """Append who did what to which thing (same transaction as the action itself)."""
    who = principal()
    kept = {k: mask_note(v) if k in FREE_TEXT and isinstance(v, str) else v
            for k, v in details.items()}
    session.add(AuditEntry(actor=f"ops:{who.person_id}", action=action, target=target,
                           details=kept))


def ops_actor() -> Actor:
    return Actor("ops", str(principal().person_id))


class BookingFilter(CursorQuery):
    status: BookingStatus | None = None
    phone: PhoneText | None = Field(default=None, min_length=8, max_length=20,
                                    description="the customer's or the recipient's number, "
                                                "as typed (98123 45678, +91 98123 45678; a "
                                                "WhatsApp customer's landline, 0522 2345678)")
    reference: str | None = Field(default=None, max_length=20,
                                  description="the booking's 8 digits, as typed")


class LegFilter(CursorQuery):
    status: LegStatus | None = None


# What partner_profiles.kyc_status holds: KycIn's statuses (ops set them; a new partner
# starts pending).
KYC_STATUSES = ("pending", "verified", "rejected", "suspended")


class PartnerFilter(CursorQuery):
    on_duty: bool | None = None
    kyc: str | None = Field(default=None, max_length=20,
                            description="only partners whose KYC is this: "
                                        + " ".join(KYC_STATUSES)
                                        + " (another is 422 bad_kyc)",
                            json_schema_extra={"enum": list(KYC_STATUSES)})


class LegRow(BaseModel):
    id: int
    booking_reference: str
    sequence: int
    status: LegStatus
    partner_id: int | None
    payout_paise: int
    otp_failures: int
    updated_at: datetime


class PartnerRow(BaseModel):
    id: int = Field(description="the partner's id (partner routes take it; it is not their "
                                "person id)")
    person_id: int = Field(description="their person id (a partner is erased by "
                                       "/ops/partners/{partner_id}/erase, not by this)")
    first_name: str
    phone_masked: str | None
    on_duty: bool
    has_app: bool
    rating_x100: int
    offers_received: int
    offers_accepted: int
    trust_tier: int
    kyc_status: str
    payout_account: str | None = Field(
        description="their Razorpay Route linked account (acc_...), null if none yet: "
                    "without one they cannot go on duty, whatever their KYC (PUT "
                    "/ops/partners/{partner_id}/payout-account sets it, DELETE clears it)")
    vehicles: list[str]
    payload_kg: int | None = Field(default=None, description="what their vehicle in use "
                                   "carries (PUT /ops/partners/{partner_id}/vehicle changes "
                                   "it)")
    language: str | None = Field(default=None, description="the language their offers and "
                                 "SMS come in (PUT /ops/partners/{partner_id}/language)")
    home_point_id: int | None = Field(
        default=None, description="their home Point: on duty, they are offered jobs near "
                                  "it (an app's fresh position wins); PUT "
                                  "/ops/partners/{partner_id}/home-point moves it")


class HandoffMessageOut(BaseModel):
    id: int = Field(description="the message's number, rising: send the newest you read as "
                                "?seen= when you close")
    direction: str = Field(description="in: from the person; out: an "
                                                        "operator's")
    body: str
    at: datetime = Field(description="when it came, or was written")
    operator: int | None = Field(default=None, description="the person id of the operator "
                                                           "who wrote it (out)")
    channel: str | None = Field(default=None, description="where a reply went: whatsapp or "
                                                          "sms (out)")
    delivery: str | None = Field(
        default=None, description="a reply's delivery, as Twilio reports it: pending, "
                                  "sending, queued, sent, delivered, read, or undelivered / "
                                  "failed (it did not reach them: call them, or write "
                                  "again); null for a message of theirs or a call")
    error_code: str | None = Field(default=None, description="Twilio's error code of a reply "
                                                             "not delivered (30003: the "
                                                             "phone is off or out of reach)")


class HandoffRow(BaseModel):
    id: int
    channel: str
    reason: str
    waiting_since: datetime
    person_id: int | None
    person_name: str | None
    phone_masked: str | None
    language: str | None = Field(description="the language the person is spoken to in (hi en "
                                             "bn mr ta te gu kn): the one they chose, else "
                                             "the one the bot guessed from their messages, "
                                             "else the default; answer them in it")
    taken_by: int | None = Field(
        default=None, description="the person id of the operator answering them (the "
                                  "first to reply or call, here or on another request "
                                  "of theirs: a chat and a call of one person are one "
                                  "operator's); null while nobody is. Another "
                                  "operator's reply is refused (409 taken_by_other) unless "
                                  "it says take_over")
    messages: list[HandoffMessageOut]


class ReplyIn(Strict):
    body: str = Field(min_length=1, max_length=1000)
    take_over: bool = Field(default=False, description="answer a person another operator "
                                                       "is answering, and take them over "
                                                       "(audited handoff.take_over)")


class Done(BaseModel):
    ok: bool = True


class KycIn(Strict):
    status: str = Field(pattern=f"^({'|'.join(KYC_STATUSES)})$")
    note: str = Field(min_length=3, max_length=300)


class PayoutAccountIn(Strict):
    account_id: str = Field(min_length=5, max_length=40,
                            description="the partner's Razorpay Route linked account "
                                        "(acc_...), each partner's own")
    note: str | None = Field(default=None, min_length=3, max_length=300,
                             description="why, for the audit log (numbers kept masked)")


class HomePointIn(Strict):
    point: int | str = Field(description="the partner's new home Point: an active Point's "
                                         "id, or its name")
    note: str | None = Field(default=None, min_length=3, max_length=300,
                             description="why, for the audit log (numbers kept masked)")


class VehicleIn(Strict):
    vehicle: VehicleType = Field(description="what the partner rides now")
    payload_kg: int = Field(ge=1, le=1000, description="from 5 kg (the lightest parcel band) "
                            "to what the vehicle type takes")
    note: str | None = Field(default=None, min_length=3, max_length=300,
                             description="why, for the audit log (numbers kept masked)")


class LanguageIn(Strict):
    language: str = Field(min_length=2, max_length=5, description="hi en bn mr ta te gu kn",
                          json_schema_extra={"enum": list(LANGUAGES)})
    note: str | None = Field(default=None, min_length=3, max_length=300,
                             description="why, for the audit log (numbers kept masked)")


class AppIn(Strict):
    app: bool = Field(description="true: the partner works from the partner app; false: by "
                                  "SMS alone")
    note: str | None = Field(default=None, min_length=3, max_length=300,
                             description="why, for the audit log (numbers kept masked)")


class PartnerAppOut(PartnerRow):
    changed: bool = Field(description="false: they were so already; nothing changed (nor "
                                      "audited)")
    went_off_duty: bool = Field(
        description="true: this change put them OFF duty (on_duty is false): made SMS-only "
                    "while their number stops our SMS (they sent STOP), no offer could "
                    "reach them. Their open offers went to others, jobs in hand stay "
                    "theirs; their ON is refused until they send START")
    placed_nowhere: bool = Field(
        description="true: without the app, their home Point is closed and no other "
                    "Point they serve is open, so no search can find them. On duty, they "
                    "stay on duty and were told by SMS that no offer can reach them and "
                    "to call ops; off duty, their ON is refused. Give them a new home: PUT "
                    "/ops/partners/{partner_id}/home-point")
    message: str = Field(description="what was done, in one line for the operator (numbers "
                                     "masked)")


class PhoneIn(Strict):
    phone: PhoneText = Field(max_length=64,
                             description="the partner's new number (a new SIM), as typed: "
                                         "98123 45678, +91 98123 45678; kept in E.164")
    note: str | None = Field(default=None, min_length=3, max_length=300,
                             description="why, for the audit log (numbers kept masked)")


class PartnerIn(Strict):
    """A new partner, as `python -m core.cli add-partner` takes them."""

    phone: PhoneText = Field(min_length=8, max_length=20)
    name: ShownText = Field(min_length=1, max_length=admin.NAME_MAX)
    language: str = Field(min_length=2, max_length=5, description="hi en bn mr ta te gu kn")
    vehicle: VehicleType
    payload_kg: int = Field(ge=1, le=1000, description="from 5 kg (the lightest parcel band) "
                            "to what the vehicle type takes")
    point: int | str = Field(description="the home Point: its id, or its name")
    payout_account: str | None = Field(default=None, max_length=40,
                                       description="Razorpay Route linked account (acc_...)")
    app: bool = Field(default=False, description="the partner uses the partner app")


def partner_row(p: PartnerProfile, phone: str | None) -> PartnerRow:
    return PartnerRow(
        id=p.id, person_id=p.person_id, first_name=p.first_name,
        phone_masked=mask_phone(phone) if phone else None,
        on_duty=p.on_duty, has_app=p.has_app, rating_x100=p.rating_x100,
        offers_received=p.offers_received, offers_accepted=p.offers_accepted,
        trust_tier=p.trust_tier, kyc_status=p.kyc_status,
        payout_account=p.payout_account_id,
        vehicles=[v.type for v in p.vehicles if v.active],
        payload_kg=(v.payload_kg if (v := partner_profile.vehicle_of(p)) else None),
        language=p.person.preferred_language, home_point_id=p.home_point_id)


# Each list's order is total (the id last), so a cursor names one place in it. The key
# conditions are index range scans on the primary keys; handoffs and mismatches need an
# index on their sort key for that, (created_at, id) and (first_seen_at, id). A sort key
# must never change while a row is in its list, or a row moved above the cursor is lost.
BOOKINGS = Keyset("ops.bookings", (int,))
LEGS = Keyset("ops.legs", (int,))
PARTNERS = Keyset("ops.partners", (int,))
POINTS = Keyset("ops.points", (int,))
HANDOFFS = Keyset("ops.handoffs", (datetime, int))
MISMATCHES = Keyset("ops.mismatches", (datetime, int))
BY_CURSOR = "; page with after=next_after (offset is deprecated for deep pages)"


def page_after(query: CursorQuery, keyset: Keyset) -> tuple[Any, ...] | None:
    """The key to page after (None: page by offset); 400 for a cursor we did not make, or
    for a cursor and an offset together (we cannot tell which one the client meant)."""
    if query.after is None:
        return None
    if "offset" in query.model_fields_set:
        raise ApiError(400, "offset_and_after", "give offset or after, not both",
                       field="after")
    return keyset.decode(query.after)


@dataclass(frozen=True)
class Next:
    offset: int | None  # null when paging by cursor: we do not know where we are by count
    after: str | None


def keyset_page(rows: list, query: CursorQuery, keyset: Keyset,
                key: Callable[[Any], tuple[Any, ...]]) -> tuple[list, Next]:
    """The page of ``rows`` (read with one more than the limit: is there a next page?) and
    where the next page starts. No next_offset past the deepest offset the query takes:
    it would only be refused (422); next_after goes on."""
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    deeper = query.offset + query.limit
    by_offset = deeper if more and query.after is None and deeper <= _max_offset(query) \
        else None
    return rows, Next(by_offset, keyset.encode(key(rows[-1])) if more else None)


def _max_offset(query: CursorQuery) -> int:
    """The largest offset the query model takes (its ``offset`` field's ``le``)."""
    meta = type(query).model_fields["offset"].metadata
    return min(m.le for m in meta if isinstance(getattr(m, "le", None), int))


_TYPED_NOISE = re.compile(r"[\s\-().\u2010-\u2015]+")
_INDIAN_NATIONAL = re.compile(r"[1-9][0-9]{9}")  # a mobile or a landline with its STD code


def searched_number(raw: str) -> str:
    """The E.164 number ops typed to search by: what ``normalize_phone`` reads (an Indian
    mobile, a foreign number), else any E.164-shaped number, as a WhatsApp address may be:
    an Indian landline a WhatsApp Business account writes from ("0522 2345678",
    "+91 522 234 5678", "915222345678"). ValidationError ``bad_phone`` otherwise.

    Only to find bookings by: nothing is sent to it, and a number of no one finds none."""
    try:
        return normalize_phone(raw)
    except ValidationError:
        s = _TYPED_NOISE.sub("", raw.strip())
        if s.startswith(("+", "00")):
            digits = s.removeprefix("+") if s.startswith("+") else s[2:]
            if digits.startswith("91"):
                national = digits[2:]
                if len(national) == 11 and national.startswith("0"):  # "+91 0522 ..."
                    national = national[1:]
                digits = "91" + national
        elif len(s) == 11 and s.startswith("0"):  # trunk 0 and the STD code: 0522 2345678
            digits = "91" + s[1:]
        elif len(s) == 12 and s.startswith("91"):  # a WhatsApp id, as Twilio shows one
            digits = s
        elif len(s) == 10:
            digits = "91" + s
        else:
            raise
        if not (digits.isascii() and digits.isdigit() and is_e164("+" + digits)) or (
                digits.startswith("91") and not _INDIAN_NATIONAL.fullmatch(digits[2:])):
            raise
        return "+" + digits


def masked_contact(phone: str | None, wa_id: str | None) -> str | None:
    """A customer's number, masked: their phone, else (a WhatsApp Business account on a
    landline, kept by its WhatsApp id) their WhatsApp number; "***" for a WhatsApp id
    that is no number; None once they are erased (neither is kept)."""
    if phone:
        return mask_phone(phone)
    if not wa_id:
        return None
    number = "+" + wa_id.removeprefix("+")
    if not is_e164(number):
        return "***"
    masked = mask_phone(number)  # "***" for a number it does not take (a landline)
    return masked if masked != "***" else mask_phones(number)


@endpoint(bp, "GET", "/ops/bookings",
          summary="All bookings, newest first (filter by status, by the customer's or the "
                  "recipient's phone, by reference)" + BY_CURSOR,
          roles=OPS, query=BookingFilter, response=CursorPage[OpsBookingOut], tags=("ops",))
def ops_bookings(query: BookingFilter) -> CursorPage[OpsBookingOut]:
    after = page_after(query, BOOKINGS)
    with transaction() as session:
        stmt = (select(Booking, Person.phone, Person.wa_id)
                .join(Person, Person.id == Booking.customer_id)
                .options(selectinload(Booking.legs)).order_by(Booking.id.desc()))
        if query.status is not None:
            stmt = stmt.where(Booking.status == query.status.value)
        if query.phone is not None:
            phone = searched_number(query.phone)  # bad_phone (422) names the field "phone"
            # The customers' ids as one array value (not correlated with the join above),
            # so the two sides are two index lookups (ix_bookings_customer_id, ix_bookings_
            # recipient_phone), not a scan of every booking. A person we keep no phone for
            # (a WhatsApp Business account on a landline) holds the number as their
            # WhatsApp id (its digits, as Twilio gives it), as outbox._person_at finds them.
            customers = func.array(select(Person.id).where(or_(
                Person.phone == phone, Person.wa_id.in_([phone[1:], phone])))
                .correlate(None).scalar_subquery())
            stmt = stmt.where(or_(Booking.customer_id == any_(customers),
                                  Booking.recipient_phone == phone))
        if query.reference is not None:
            ref = normalize_reference(query.reference)
            if ref is None:
                raise ValidationError("not a booking reference: 8 digits",
                                      code="bad_reference", field="reference")
            stmt = stmt.where(Booking.reference == ref)
        stmt = stmt.offset(query.offset) if after is None else stmt.where(Booking.id < after[0])
        rows, nxt = keyset_page(list(session.execute(stmt.limit(query.limit + 1)).tuples()),
                                query, BOOKINGS, lambda row: (row[0].id,))
        shown = bookings_out(session, [b for b, _, _ in rows])
        return CursorPage[OpsBookingOut](items=[OpsBookingOut(
            **dict(out), customer_id=b.customer_id,
            customer_phone_masked=masked_contact(number, wa_id))
            for out, (b, number, wa_id) in zip(shown, rows, strict=True)],
            next_offset=nxt.offset, next_after=nxt.after)


@endpoint(bp, "GET", "/ops/legs", summary="Legs, newest first (filter by status, e.g. locked)"
          + BY_CURSOR, roles=OPS, query=LegFilter, response=CursorPage[LegRow], tags=("ops",))
def ops_legs(query: LegFilter) -> CursorPage[LegRow]:
    after = page_after(query, LEGS)
    with transaction() as session:
        stmt = select(Leg, Booking.reference).join(Booking, Booking.id == Leg.booking_id) \
            .order_by(Leg.id.desc())
        if query.status is not None:
            stmt = stmt.where(Leg.status == query.status.value)
        stmt = stmt.offset(query.offset) if after is None else stmt.where(Leg.id < after[0])
        rows, nxt = keyset_page(list(session.execute(stmt.limit(query.limit + 1)).all()),
                                query, LEGS, lambda row: (row[0].id,))
        return CursorPage[LegRow](items=[LegRow(
            id=leg.id, booking_reference=ref, sequence=leg.sequence, status=leg.status,
            partner_id=leg.partner_id, payout_paise=leg.payout_paise,
            otp_failures=leg.otp_failures, updated_at=leg.updated_at) for leg, ref in rows],
            next_offset=nxt.offset, next_after=nxt.after)


@endpoint(bp, "GET", "/ops/partners", summary="Partners, oldest first (filter by duty, by "
          "KYC status)"
          + BY_CURSOR, roles=OPS, query=PartnerFilter, response=CursorPage[PartnerRow],
          tags=("ops",))
def ops_partners(query: PartnerFilter) -> CursorPage[PartnerRow]:
    if query.kyc is not None and query.kyc not in KYC_STATUSES:
        raise ApiError(422, "bad_kyc", f"kyc is one of {', '.join(KYC_STATUSES)}",
                       field="kyc")
    after = page_after(query, PARTNERS)
    with transaction() as session:
        stmt = select(PartnerProfile, Person.phone).join(
            Person, Person.id == PartnerProfile.person_id).order_by(PartnerProfile.id) \
            .options(selectinload(PartnerProfile.person), selectinload(PartnerProfile.vehicles))
        if query.on_duty is not None:
            stmt = stmt.where(PartnerProfile.on_duty.is_(query.on_duty))
        if query.kyc is not None:
            stmt = stmt.where(PartnerProfile.kyc_status == query.kyc)
        stmt = stmt.offset(query.offset) if after is None \
            else stmt.where(PartnerProfile.id > after[0])
        rows, nxt = keyset_page(list(session.execute(stmt.limit(query.limit + 1)).all()),
                                query, PARTNERS, lambda row: (row[0].id,))
        return CursorPage[PartnerRow](items=[partner_row(p, phone) for p, phone in rows],
                                      next_offset=nxt.offset, next_after=nxt.after)


@endpoint(bp, "GET", "/ops/handoffs", summary="Conversations waiting for a person, oldest first"
          + BY_CURSOR, roles=OPS, query=CursorQuery, response=CursorPage[HandoffRow],
          tags=("ops",))
def ops_handoffs(query: CursorQuery) -> CursorPage[HandoffRow]:
    after = page_after(query, HANDOFFS)
    with transaction() as session:
        out = []
        rows, nxt = keyset_page(handoff.waiting_list(session, query.offset, query.limit + 1,
                                                     after=after), query,
                                HANDOFFS, lambda h: (h.created_at, h.id))
        # A person is answered by one operator across their requests (a chat and a call).
        answering = handoff.answering(session, rows)
        for h in rows:
            person = session.get(Person, h.person_id) if h.person_id else None
            conv = session.get(Conversation, h.conversation_id)
            msgs = session.execute(
                select(HandoffMessage, OutboxMessage.channel, OutboxMessage.status,
                       OutboxMessage.error_code)
                .outerjoin(OutboxMessage, OutboxMessage.id == HandoffMessage.outbox_id)
                .where(HandoffMessage.handoff_id == h.id).order_by(HandoffMessage.id)).all()
            out.append(HandoffRow(
                id=h.id, channel=h.channel, reason=h.reason, waiting_since=h.created_at,
                person_id=h.person_id, person_name=person.name if person else None,
                phone_masked=masked_contact(person.phone, person.wa_id) if person else None,
                language=handoff.language(session, person, conv) if person else None,
                taken_by=handoff.operator_id(h) or (
                    answering.get(h.person_id) if h.person_id is not None else None),
                messages=[HandoffMessageOut(
                    id=m.id, direction=m.direction, body=m.body, at=m.created_at,
                    operator=handoff.ops_person_id(m.operator), channel=channel, delivery=status,
                    error_code=error_code) for m, channel, status, error_code in msgs]))
        return CursorPage[HandoffRow](items=out, next_offset=nxt.offset, next_after=nxt.after)


class PhoneOut(BaseModel):
    phone: str


class PhoneQuery(Strict):
    take_over: bool = Field(default=False, description="call a person another operator is "
                                                       "answering, and take them over "
                                                       "(audited handoff.take_over)")


@endpoint(bp, "GET", "/ops/handoffs/<int:handoff_id>/phone",
          summary="The full number of a person waiting, to call them back (audited); the "
                  "caller has them. 409 taken_by_other while another operator answers them "
                  "(?take_over=true takes them over)",
          roles=OPS, query=PhoneQuery, response=PhoneOut, tags=("ops",), errors=(404, 409))
def ops_handoff_phone(handoff_id: int, query: PhoneQuery) -> PhoneOut:
    with transaction() as session:
        phone, took_from = handoff.phone_to_call(session, handoff_id,
                                                 f"ops:{principal().person_id}",
                                                 take_over=query.take_over)
        if took_from is not None:
            audit(session, "handoff.take_over", f"handoff:{handoff_id}",
                  from_operator=took_from)
        audit(session, "handoff.phone", f"handoff:{handoff_id}")
        return PhoneOut(phone=phone)


@endpoint(bp, "POST", "/ops/handoffs/<int:handoff_id>/reply",
          summary="Answer the person (send Idempotency-Key to retry safely: a retry "
                  "sends nothing again). 409 taken_by_other while another operator answers "
                  "them (take_over: true takes them over)",
          roles=OPS, body=ReplyIn, response=Done, tags=("ops",), errors=(404, 409, 422),
          headers=(KEY_HEADER,))
def ops_handoff_reply(handoff_id: int, body: ReplyIn) -> Done | Response:
    who = principal()
    # The operator's keys are theirs for every request: the route is in the fingerprint,
    # so a key reused for another handoff, another text (or another endpoint) is refused.
    once = idempotent(who.person_id, {"route": "ops.handoff_reply", "handoff_id": handoff_id,
                                      "body": body.body, "take_over": body.take_over})
    with transaction() as session:
        if (saved := once.claim(session)) is not None:
            return saved  # sent the first time: nothing is sent again
        took_from = handoff.reply(session, handoff_id, f"ops:{who.person_id}", body.body,
                                  take_over=body.take_over)
        if took_from is not None:
            audit(session, "handoff.take_over", f"handoff:{handoff_id}",
                  from_operator=took_from)
        done = Done()
        once.save(session, 200, done)
    return done


class CloseQuery(Strict):
    take_over: bool = Field(default=False, description="close a person another operator is "
                                                       "answering (audited "
                                                       "handoff.take_over)")
    seen: int | None = Field(default=None, ge=0, le=2**63 - 1,
                             description="the id of the newest message you read: if the "
                                         "person wrote after it, nothing closes (409 "
                                         "new_message; read it first)")


@endpoint(bp, "POST", "/ops/handoffs/<int:handoff_id>/close",
          summary="Give the conversation back to the bot (audited; send Idempotency-Key "
                  "to retry safely: a retry answers the first answer, not 409 "
                  "handoff_closed). 409 taken_by_other while another operator answers the "
                  "person (?take_over=true closes it all the same); 409 new_message when "
                  "the person wrote after the message ?seen= names",
          roles=OPS, query=CloseQuery, response=Done, tags=("ops",), errors=(404, 409, 422),
          headers=(KEY_HEADER,))
def ops_handoff_close(handoff_id: int, query: CloseQuery) -> Done | Response:
    who = principal()
    # As ops_handoff_reply: the route in the fingerprint, so a key reused for another
    # handoff or close (or another endpoint) is refused, never answered.
    once = idempotent(who.person_id, {"route": "ops.handoff_close", "handoff_id": handoff_id,
                                      "take_over": query.take_over, "seen": query.seen})
    with transaction() as session:
        if (saved := once.claim(session)) is not None:
            return saved  # closed the first time: nothing changes, nothing is sent
        took_from = handoff.close(session, handoff_id, f"ops:{who.person_id}",
                                  take_over=query.take_over, seen=query.seen)
        if took_from is not None:
            audit(session, "handoff.take_over", f"handoff:{handoff_id}",
                  from_operator=took_from)
        audit(session, "handoff.close", f"handoff:{handoff_id}")
        done = Done()
        once.save(session, 200, done)
    return done


class UnlockIn(Strict):
    """Why a leg is unlocked; the body is optional (apps send none)."""

    note: str | None = Field(default=None, min_length=3, max_length=300,
                             description="why, for the audit log (numbers kept masked)")


@endpoint(bp, "POST", "/ops/legs/<int:leg_id>/unlock",
          summary="Unlock a leg locked by wrong OTPs (new codes are sent); the body, "
                  "{\"note\": ...} saying why (audited leg.unlock, numbers masked), may be "
                  "left out. 409 not_locked. Send Idempotency-Key to retry safely: a retry "
                  "answers the first answer and sends no codes again (not 409 not_locked; "
                  "422 idempotency_key_reused for the key of another request)", roles=OPS,
          body=UnlockIn, body_optional=True, response=LegRow, tags=("ops",),
          errors=(404, 409, 422), headers=(KEY_HEADER,))
def ops_unlock_leg(leg_id: int, body: UnlockIn) -> LegRow | Response:
    who = principal()
    # As ops_handoff_reply: the route in the fingerprint, so a key reused for another leg
    # or another note (or another endpoint) is refused, never answered. No body and {}
    # are the same request (note None).
    once = idempotent(who.person_id, {"route": "ops.unlock_leg", "leg_id": leg_id,
                                      "note": body.note})
    with transaction() as session:
        if (saved := once.claim(session)) is not None:
            return saved  # unlocked the first time: no new codes, nothing audited again
        try:
            leg = dispatch.unlock_leg(session, leg_id, ops_actor())
        except NotFound as exc:
            if exc.code != "unknown_job":
                raise
            # Dispatch's word for a partner's job; here, as for any id that names no row
            # (a partner, a handoff, an id past the largest), not_found.
            raise NotFound("no such leg", code="not_found") from None
        booking = session.get(Booking, leg.booking_id)
        assert booking is not None
        audit(session, "leg.unlock", f"leg:{leg.id}", booking=booking.reference,
              **({"note": body.note} if body.note else {}))
        out = LegRow(id=leg.id, booking_reference=booking.reference, sequence=leg.sequence,
                     status=LegStatus(leg.status), partner_id=leg.partner_id,
                     payout_paise=leg.payout_paise, otp_failures=leg.otp_failures,
                     updated_at=leg.updated_at)
        once.save(session, 200, out)
    return out


# How long a new code stays in the saved answer of a request with an Idempotency-Key.
CODE_REPLAY_MIN = int(retention.CODE_REPLAY.total_seconds() // 60)


class NewCodeIn(Strict):
    kind: Literal["pickup", "drop"] = Field(
        description="pickup: the code the sender (or the rider handing over at a Point) "
                    "gives the rider; drop: the code the recipient (or the next rider) "
                    "gives at the drop")
    reason: str = Field(min_length=3, max_length=300,
                        description="why, for the audit log (numbers kept masked)")
    send: bool = Field(default=False,
                       description="also send it the usual way (SMS/WhatsApp), as a "
                                   "replacement of the old one")


class NewCodeOut(BaseModel):
    leg_id: int
    booking_reference: str
    kind: str
    code: str = Field(description="to read out on the phone: kept nowhere, not even in "
                                  "the audit log, but in the saved answer of a request sent "
                                  "with an Idempotency-Key, for a retry with that key within "
                                  f"{CODE_REPLAY_MIN} minutes while the code works; then "
                                  "removed from it (a retry answers 409 "
                                  "code_shown_already)")
    sent: bool = Field(description="also queued to whoever reads it out")
    codes_left: int = Field(description="how many more new codes this leg may get")


@endpoint(bp, "POST", "/ops/legs/<int:leg_id>/new-code",
          summary="Make a new pickup or drop code for a leg whose code reached nobody, to "
                  "read out on the phone (the old one stops working; audited, at most "
                  f"{dispatch.OPS_CODES_PER_LEG} per leg). 409 no_rider, already_picked_up, "
                  "already_delivered, leg_locked, booking_closed, "
                  "too_many_codes. Send Idempotency-Key to retry safely: a retry answers "
                  "the first answer, makes no new code and sends nothing (422 "
                  "idempotency_key_reused for the key of another request). The code is "
                  f"kept for a retry {CODE_REPLAY_MIN} minutes, and only while it works "
                  "(no newer code made): after that a retry answers 409 code_shown_already, "
                  "still making nothing; make a new code (a new key) if it was lost",
          roles=OPS, body=NewCodeIn, response=NewCodeOut,
          tags=("ops",), errors=(404, 409, 422), headers=(KEY_HEADER,))
def ops_new_leg_code(leg_id: int, body: NewCodeIn) -> NewCodeOut | Response:
    who = principal()
    # As ops_handoff_reply: the route in the fingerprint, so a key reused for another
    # leg, kind, reason or send (or another endpoint) is refused, never answered.
    once = idempotent(who.person_id, {"route": "ops.new_leg_code", "leg_id": leg_id,
                                      **body.model_dump(mode="json")})
    with transaction() as session:
        saved = once.claim(session)
        if saved is not None:
            # Made (and sent) the first time: no new code, nothing sent. Its code is shown
            # again only while a retry may need it (a redaction is committed here).
            assert once.replayed is not None
            shown = retention.saved_code_kept(session, once.replayed)
        else:
            done = dispatch.new_leg_code(session, leg_id, body.kind, ops_actor(),
                                         reason=body.reason, send=body.send)
            retention.forget_void_codes(session, done.leg)
            booking = session.get(Booking, done.leg.booking_id)
            assert booking is not None
            out = NewCodeOut(leg_id=done.leg.id, booking_reference=booking.reference,
                             kind=done.kind, code=done.code, sent=done.sent,
                             codes_left=dispatch.OPS_CODES_PER_LEG - done.issued)
            once.save(session, 200, out)
    if saved is None:
        return out
    if not shown:
        raise Conflict(f"the code this request made is no longer kept (kept {CODE_REPLAY_MIN} "
                       "minutes for a retry, while it works): if it was lost, make a new one "
                       "with a new Idempotency-Key", code="code_shown_already")
    return saved


def _holds_work(session: Session, partner_id: int) -> bool:
    """Whether a blocked partner still has what ``dispatch.block_partner`` takes back: on
    duty, an open offer, a job taken and its parcel not in their hands (assigned, or locked
    before pickup)."""
    p = session.get(PartnerProfile, partner_id)
    if p is None:
        return False
    if p.on_duty or session.scalar(select(DispatchOffer.id).where(
            DispatchOffer.partner_id == partner_id,
            DispatchOffer.status == OfferStatus.OPEN.value).limit(1)) is not None:
        return True
    # As block_partner judges them: a leg locked by wrong codes is taken back only if its
    # parcel was never in their hands (no right pickup code, not handed over to them); a
    # parcel they hold stays theirs, so taking back again would find nothing to take.
    return any(not dispatch.parcel_in_hand(session, leg)
               if leg.status == LegStatus.ASSIGNED.value
               else not (dispatch._picked_before(session, leg)
                         or dispatch._handed_over(session, leg))
               for leg in session.scalars(select(Leg).where(
                   Leg.partner_id == partner_id,
                   Leg.status.in_((LegStatus.ASSIGNED.value, LegStatus.LOCKED.value)))))


@endpoint(bp, "PUT", "/ops/partners/<int:partner_id>/kyc",
          summary="Set a partner's KYC status (audited; the same status again changes "
                  "nothing). Suspended or rejected: every sign-in of theirs ends (a token "
                  "on a stolen phone too). 409 erased",
          roles=OPS, body=KycIn, response=PartnerRow, tags=("ops",), errors=(404, 409))
def ops_partner_kyc(partner_id: int, body: KycIn) -> PartnerRow:
    # First the status alone, under the partner's row lock, committed: an acceptance holds
    # that lock while it checks their KYC (dispatch.accept), and ON takes it too
    # (set_duty), so either they finished before (and the job or duty is theirs, seen
    # below) or they see the suspension. Then, in a second transaction, the jobs and
    # offers they hold are taken back (block_partner locks legs before the partner's row,
    # as acceptance does: the two in one transaction would deadlock with it). The change
    # is audited with it, so a take-back that fails (ops retry) leaves no unaudited change;
    # what the take-back did is its own entry (partner.block). Another operator may verify
    # them between the two (or while block_partner waits for the legs): it reads the KYC
    # again under the partner's lock, and verified (the last word) its take-back is undone
    # (a savepoint; what it would send or schedule goes with it). Locking the row here
    # first would deadlock with an acceptance, as above.
    with transaction() as session:
        p = session.get(PartnerProfile, partner_id, with_for_update=True)
        if p is None:
            raise NotFound("no such partner", code="not_found")
        if not p.first_name:  # erased on their request: a return is a new sign-up
            raise Conflict(f"partner {p.id} was erased; sign them up again (add-partner)",
                           code="erased", field="partner")
        before = p.kyc_status
        p.kyc_status = body.status
        # Suspended, rejected, or pending again: they cannot be paid, so they stop.
        stops = body.status != dispatch.VERIFIED_KYC
        if before != body.status:
            # Suspended or rejected (a stolen phone, fraud): every session of theirs ends
            # now, so a token on that phone is not a partner's again when they are
            # verified again; they sign in again with a new code.
            ended = {"sessions_ended": admin._end_sessions(session, p.person_id)} \
                if body.status in dispatch.BLOCKED_KYC else {}
            audit(session, "partner.kyc", f"partner:{p.id}", before=before,
                  after=body.status, note=body.note, **ended)
    with transaction() as session:
        # The same status again changes nothing and is not audited (as every other ops
        # change): its take-back runs only if one before failed and left them something.
        if stops and (before != body.status or _holds_work(session, partner_id)):
            # Run again by ops if it fails: block_partner changes nothing twice.
            taking_back = session.begin_nested()
            in_hand = dispatch.block_partner(session, partner_id, ops_actor())
            p = session.get(PartnerProfile, partner_id)  # as block_partner read it, locked
            assert p is not None
            if p.kyc_status == dispatch.VERIFIED_KYC:
                taking_back.rollback()
            else:
                taking_back.commit()
                audit(session, "partner.block", f"partner:{partner_id}",
                      status=p.kyc_status, parcels_in_hand=in_hand)
        p = session.get(PartnerProfile, partner_id)
        assert p is not None
        phone = session.get(Person, p.person_id).phone  # type: ignore[union-attr]
        return partner_row(p, phone)


def _partner_changed(partner_id: int, change: Callable[[Session, str], object]) -> PartnerRow:
    """Run a change of what a partner signed up with (admin, partner_profile)
    as the signed-in operator; the partner's row after it."""
    with transaction() as session:
        change(session, f"ops:{principal().person_id}")
        p = session.get(PartnerProfile, partner_id)
        assert p is not None
        return partner_row(p, p.person.phone)


@endpoint(bp, "PUT", "/ops/partners/<int:partner_id>/payout-account",
          summary="Give a partner their payout account, or change it (not while they hold "
                  "a job or a payout on hold: 409 partner_has_jobs). They are told by SMS "
                  "(the new account's last 4, and to call ops if they did not ask for it)",
          roles=OPS, body=PayoutAccountIn, response=PartnerRow, tags=("ops",),
          errors=(404, 409))
def ops_partner_payout_account(partner_id: int, body: PayoutAccountIn) -> PartnerRow:
    # A transfer already made stays with the account it was made to (its row keeps it);
    # the next leg's goes to this one. Committed changes drop the cached dispatch facts.
    return _partner_changed(partner_id, lambda session, actor: admin.set_payout_account(
        session, partner_id, body.account_id, actor=actor, note=body.note))


class ClearPayoutAccountQuery(Strict):
    # In the query string: a DELETE's body has no defined meaning (RFC 9110 9.3.5), and
    # some clients and proxies drop it.
    note: str | None = Field(default=None, min_length=3, max_length=300,
                             description="why (the bank account closed, the linked "
                                         "account suspended), for the audit log (numbers "
                                         "kept masked)")


@endpoint(bp, "DELETE", "/ops/partners/<int:partner_id>/payout-account",
          summary="Take a partner's payout account away (the bank account closed, the "
                  "linked account suspended, it was someone else's; audited, "
                  "partner.payout_account before -> null). They cannot be paid: on duty "
                  "they go OFF (their open offers go to others) and hear why by SMS "
                  "(off duty, they are told by SMS it was removed); "
                  "their ON is refused, and what they are owed waits, until PUT gives "
                  "them a new one. 409 partner_has_jobs while they hold a job or a "
                  "payout on hold; erased. None already: nothing changes",
          roles=OPS, query=ClearPayoutAccountQuery, response=PartnerRow, tags=("ops",),
          errors=(404, 409))
def ops_partner_clear_payout_account(partner_id: int,
                                     query: ClearPayoutAccountQuery) -> PartnerRow:
    return _partner_changed(partner_id, lambda session, actor: admin.clear_payout_account(
        session, partner_id, actor=actor, note=query.note))


@endpoint(bp, "PUT", "/ops/partners/<int:partner_id>/home-point",
          summary="Move a partner's home Point (they moved villages; audited): an active "
                  "Point by id or name (422 unknown_point). On duty, they are offered jobs "
                  "near the new Point at once; jobs in hand stay theirs. The same Point "
                  "again changes nothing. 409 erased", roles=OPS, body=HomePointIn,
          response=PartnerRow, tags=("ops",), errors=(404, 409, 422))
def ops_partner_home_point(partner_id: int, body: HomePointIn) -> PartnerRow:
    return _partner_changed(partner_id, lambda session, actor: admin.set_home_point(
        session, partner_id, body.point, actor=actor, note=body.note))


@endpoint(bp, "PUT", "/ops/partners/<int:partner_id>/vehicle",
          summary="Change what a partner rides (audited): their next offers fit it; an offer "
                  "they hold that it cannot carry is refused at their yes; jobs in hand stay "
                  "theirs. The same vehicle and payload again changes nothing. 409 erased",
          roles=OPS, body=VehicleIn, response=PartnerRow, tags=("ops",),
          errors=(404, 409, 422))
def ops_partner_vehicle(partner_id: int, body: VehicleIn) -> PartnerRow:
    return _partner_changed(partner_id, lambda session, actor: partner_profile.set_vehicle(
        session, partner_id, body.vehicle.value, body.payload_kg, actor=actor, note=body.note))


@endpoint(bp, "PUT", "/ops/partners/<int:partner_id>/language",
          summary="The language a partner's offers, SMS and calls come in (audited; the "
                  "same again changes nothing). 409 erased",
          roles=OPS, body=LanguageIn, response=PartnerRow, tags=("ops",),
          errors=(404, 409, 422))
def ops_partner_language(partner_id: int, body: LanguageIn) -> PartnerRow:
    return _partner_changed(partner_id, lambda session, actor: partner_profile.set_language(
        session, partner_id, body.language, actor=actor, note=body.note))


@endpoint(bp, "PUT", "/ops/partners/<int:partner_id>/app",
          summary="Whether a partner works from the app (found by its position) or by SMS "
                  "alone (found at their home Point while on duty); audited, the same again "
                  "changes nothing. Made SMS-only while their number stops our SMS (STOP), "
                  "they go OFF duty (went_off_duty); with their home Point closed and no "
                  "other open, no offer can reach them (placed_nowhere): they are told by "
                  "SMS, and need a new home Point. The partner's row after it, and what "
                  "was done (message). 409 erased",
          roles=OPS, body=AppIn, response=PartnerAppOut, tags=("ops",), errors=(404, 409))
def ops_partner_app(partner_id: int, body: AppIn) -> PartnerAppOut:
    with transaction() as session:
        done = partner_profile.set_has_app(session, partner_id, body.app,
                                           actor=f"ops:{principal().person_id}",
                                           note=body.note)
        p = session.get(PartnerProfile, partner_id)
        assert p is not None
        return PartnerAppOut(**partner_row(p, p.person.phone).model_dump(),
                             changed=done.changed, went_off_duty=done.went_off_duty,
                             placed_nowhere=done.placed_nowhere, message=done.message)


@endpoint(bp, "PUT", "/ops/partners/<int:partner_id>/phone",
          summary="Move a partner to a new number (a new SIM; audited, both numbers "
                  "masked): offers and SMS go to it at once, an SMS from the old number is "
                  "a stranger's, the partner's app sessions end; both numbers are told by "
                  "SMS. 422 bad_phone; 409 phone_taken (another person's number, a "
                  "contact's too), partner_has_jobs (jobs in hand: their codes went to "
                  "the old SIM; take them back first), erased. The same number again "
                  "changes nothing",
          roles=OPS, body=PhoneIn, response=PartnerRow, tags=("ops",),
          errors=(404, 409, 422))
def ops_partner_phone(partner_id: int, body: PhoneIn) -> PartnerRow:
    try:
        phone = normalize_phone(body.phone)
    except ValidationError:
        raise ApiError(422, "bad_phone", "phone: not a number we can send SMS to: an Indian "
                       "mobile (10 digits, the first 6 to 9; +91 or not) or a full "
                       "number with its country code (+...)", field="phone") from None
    return _partner_changed(partner_id, lambda session, actor: partner_profile.set_phone(
        session, partner_id, phone, actor=actor, note=body.note))


class PointRow(BaseModel):
    id: int
    name: str
    pincode: str
    post_office: str | None
    lat: float
    lng: float
    active: bool = Field(description="false: closed; no new relay goes through it (add-point "
                                     "at its office opens it again)")
    home_partner_ids: list[int] = Field(
        description="the partners whose home Point it is. While it is closed they are "
                    "placed at another active Point they serve, else at none (only a fresh "
                    "app position finds them): move them with PUT "
                    "/ops/partners/{partner_id}/home-point")


class PointFilter(CursorQuery):
    active: bool | None = Field(default=None, description="true: open Points only; false: "
                                                          "closed ones only")
    pincode: str | None = Field(default=None, pattern=r"^[1-9][0-9]{5}$",
                                description="the Points of one pincode")


@endpoint(bp, "GET", "/ops/points", summary="Points (village hubs), oldest first (filter by "
          "open or closed, by pincode)" + BY_CURSOR, roles=OPS, query=PointFilter,
          response=CursorPage[PointRow], tags=("ops",))
def ops_points(query: PointFilter) -> CursorPage[PointRow]:
    after = page_after(query, POINTS)
    with transaction() as session:
        stmt = select(Point).order_by(Point.id)
        if query.active is not None:
            stmt = stmt.where(Point.active.is_(query.active))
        if query.pincode is not None:
            stmt = stmt.where(Point.pincode == query.pincode)
        stmt = stmt.offset(query.offset) if after is None else stmt.where(Point.id > after[0])
        rows, nxt = keyset_page(list(session.scalars(stmt.limit(query.limit + 1))), query,
                                POINTS, lambda p: (p.id,))
        homes = admin.home_partners_of(session, [p.id for p in rows])
        return CursorPage[PointRow](items=[PointRow(
            id=p.id, name=p.name, pincode=p.pincode, post_office=p.post_office, lat=p.lat,
            lng=p.lng, active=p.active, home_partner_ids=homes.get(p.id, []))
            for p in rows], next_offset=nxt.offset, next_after=nxt.after)


class ClosePointIn(Strict):
    note: str | None = Field(default=None, min_length=3, max_length=300,
                             description="why, for the audit log (numbers kept masked)")


class MovePointIn(Strict):
    lat: float = Field(ge=-90, le=90)
    lng: float = Field(ge=-180, le=180)
    note: str | None = Field(default=None, min_length=3, max_length=300,
                             description="why, for the audit log (numbers kept masked)")


def point_row(session: Session, point_id: int) -> PointRow:
    p = session.get(Point, point_id)
    assert p is not None
    return PointRow(id=p.id, name=p.name, pincode=p.pincode, post_office=p.post_office,
                    lat=p.lat, lng=p.lng, active=p.active,
                    home_partner_ids=admin.home_partners(session, p.id))


@endpoint(bp, "POST", "/ops/points/<int:point_id>/close",
          summary="Close a Point (audited): no new relay goes through it; partners whose "
                  "home it is keep it as home but are placed at another active Point they "
                  "serve, else at none (home_partner_ids lists them: move them). 409 "
                  "point_in_use (naming the bookings) while a parcel is on its way to it or "
                  "waits at it. Closed already: nothing changes", roles=OPS,
          body=ClosePointIn, response=PointRow, tags=("ops",), errors=(404, 409))
def ops_close_point(point_id: int, body: ClosePointIn) -> PointRow:
    with transaction() as session:
        admin.close_point(session, point_id, actor=f"ops:{principal().person_id}",
                          note=body.note)
        return point_row(session, point_id)


@endpoint(bp, "PUT", "/ops/points/<int:point_id>/position",
          summary="Move a Point to a spot nearby (audited; at most "
                  f"{admin.POINT_MOVE_MAX_M // 1000} km, else 422 too_far: add a Point "
                  "there and close this one); its name and office stay, partners placed at "
                  "it are placed at the new spot at once. 409 point_in_use (naming the "
                  "bookings) while a parcel is on its way to it or waits at it. The same "
                  "spot again changes nothing", roles=OPS, body=MovePointIn,
          response=PointRow, tags=("ops",), errors=(404, 409, 422))
def ops_move_point(point_id: int, body: MovePointIn) -> PointRow:
    with transaction() as session:
        admin.move_point(session, point_id, body.lat, body.lng,
                         actor=f"ops:{principal().person_id}", note=body.note)
        return point_row(session, point_id)


class RenamePointIn(Strict):
    name: str = Field(min_length=1, max_length=admin.POINT_NAME_MAX,
                      description="what customers read and hear, and riders are told to go "
                                  "to: its words, with a letter (not digits alone), no "
                                  "phone number (the audit log keeps it for good)")
    note: str | None = Field(default=None, min_length=3, max_length=300,
                             description="why, for the audit log (numbers kept masked)")


@endpoint(bp, "PUT", "/ops/points/<int:point_id>/name",
          summary="Rename a Point (audited): the next message, call or list says the new "
                  "name; its office, pincode and place stay. 422 bad_name; 409 name_taken "
                  "when another active Point of its pincode is called that. The same name "
                  "again changes nothing", roles=OPS, body=RenamePointIn,
          response=PointRow, tags=("ops",), errors=(404, 409, 422))
def ops_rename_point(point_id: int, body: RenamePointIn) -> PointRow:
    with transaction() as session:
        admin.rename_point(session, point_id, body.name,
                           actor=f"ops:{principal().person_id}", note=body.note)
        return point_row(session, point_id)


@endpoint(bp, "POST", "/ops/partners",
          summary="Sign a partner up: person, vehicle, home Point (KYC pending, off duty). "
                  "409 partner_exists (the phone is a partner already), conflict (the "
                  "phone is an operator's); 422 bad_name (a phone number in the name too)",
          roles=OPS, body=PartnerIn, response=PartnerRow, status=201, tags=("ops",),
          errors=(409, 422))
def ops_add_partner(body: PartnerIn) -> PartnerRow:
    with transaction() as session:
        done = admin.add_partner(session, admin.NewPartner(
            phone=body.phone, name=body.name, language=body.language,
            vehicle=body.vehicle.value, payload_kg=body.payload_kg, point=body.point,
            payout_account=body.payout_account, has_app=body.app),
            actor=f"ops:{principal().person_id}")
        if not done.changed:
            raise Conflict("this phone is a partner already", code="partner_exists",
                           field="phone")
        p = session.get(PartnerProfile, done.id)
        assert p is not None
        return partner_row(p, p.person.phone)


class LedgerOut(BaseModel):
    reference: str
    captured_paise: int
    released_paise: int
    commission_paise: int
    fee_paise: int
    refunded_paise: int
    escrow_paise: int
    refunds_pending_paise: int
    reversed_payouts_paise: int = Field(
        description="partner payouts reversed at the gateway after they were made, held "
                    "for ops: pay the partner again or refund the customer (POST "
                    "/ops/bookings/{ref}/reversed-payouts/{leg_id}/resolve)")
    platform_paid_paise: int = Field(
        description="what the platform paid into the booking's escrow out of its own "
                    "commission: the part of a refund made outside the service (the "
                    "Razorpay dashboard) that escrow did not hold, and what escrow then "
                    "lacked of a delivered leg's payout or of a rider's cancellation fee "
                    "(a stuck relay's holder's too). With it the numbers add up: "
                    "captured + platform_paid = released + fee + refunded + escrow + "
                    "refunds_pending + remainder_kept (when no payout was reversed)")
    written_off_paise: int = Field(
        description="reversed payouts ops wrote off to platform revenue (under Rs 1, or "
                    "once the customer's payment was refunded in full: the platform paid "
                    "that refund, platform_paid_paise, and takes this back)")
    remainder_kept_paise: int = Field(
        description="what was left of the customer's payment under the gateway's least "
                    "refund (Rs 1) once the booking was cancelled or failed, taken by "
                    "platform revenue: no refund can give it back (support's refund of "
                    "an amount not in whole rupees leaves it); it leaves escrow")


class ResolveQuery(Strict):
    dry_run: bool = Field(default=False, description="only show the numbers: change nothing")


class ResolveIn(Strict):
    action: Literal["pay_again", "refund", "write_off"] = Field(
        description="pay_again: the leg's partner is paid it again by a direct transfer; "
                    "refund: the customer's payment gives it back (at most what is left "
                    "on the payment: the rest stays held); write_off: under Rs 1, which "
                    "the gateway neither transfers nor refunds, or any amount once the "
                    "customer's payment is refunded in full (support's refund, the "
                    "platform's cost), it becomes platform revenue (a ledger entry to "
                    "the commission account says so)")
    reason: str = Field(min_length=3, max_length=300,
                        description="why, for the audit log (numbers kept masked)")


class ResolvedOut(BaseModel):
    reference: str
    leg_id: int
    action: str
    dry_run: bool
    held_paise: int = Field(description="held for ops for the leg before")
    amount_paise: int = Field(description="paid to the partner again, refunded, or "
                                          "written off")
    still_held_paise: int = Field(description="held for ops for the leg after")
    partner_id: int | None = Field(description="pay_again: the partner paid")
    refundable_paise: int | None = Field(description="refund, write_off: what the payment "
                                                     "could still give back")
    refund_attempt: int | None = Field(description="refund: the refund attempt made (see "
                                                   "the booking's refund status)")


class HeldRow(BaseModel):
    reference: str
    booking_id: int
    status: BookingStatus
    reversed_payouts_paise: int


class HeldQuery(Strict):
    limit: int = Field(default=20, ge=1, le=100)
    after: int | None = Field(default=None, ge=1, le=MAX_ID,
                              description="the next_after of the page before: a booking id")


class HeldPage(BaseModel):
    items: list[HeldRow]
    next_after: int | None


class MismatchQuery(CursorQuery):
    include_resolved: bool = False


class MismatchOut(BaseModel):
    id: int
    kind: str
    entity: str
    gateway_id: str | None
    booking_id: int | None
    ledger_amount_paise: int | None
    gateway_amount_paise: int | None
    detail: str | None
    first_seen_at: datetime
    last_seen_at: datetime
    resolved_at: datetime | None


@endpoint(bp, "GET", "/ops/bookings/<ref>/ledger", summary="Ledger balances of a booking",
          roles=OPS, response=LedgerOut, tags=("ops",), errors=(404,))
def ops_booking_ledger(ref: str) -> LedgerOut:
    from core.services import ledger

    with transaction() as session:
        b = visible_booking(session, ref)  # 404 not_found, as every booking route answers
        return LedgerOut(reference=b.reference, **ledger.booking_summary(session, b.id),
                         platform_paid_paise=payments.platform_paid(session, b.id),
                         written_off_paise=payments.written_off(session, b.id),
                         remainder_kept_paise=payments.remainder_kept(session, b.id))


class BookingPhoneQuery(Strict):
    whom: Literal["customer", "recipient"] = Field(
        description="customer: who booked (the sender, who gives the pickup code); "
                    "recipient: whom the parcel goes to (who gives the drop code)")


def booking_phone(session: Session, b: Booking, whom: str) -> str | None:
    """The full number of a booking's customer or recipient, for ops to call (the lists
    show it masked): a customer kept by WhatsApp id alone (a business account on a
    landline) by that number; None if it is no number, or erased."""
    if whom == "recipient":
        return b.recipient_phone
    customer = session.get(Person, b.customer_id)
    if customer is not None and customer.phone:
        return customer.phone
    wa_id = customer.wa_id if customer is not None else None
    number = "+" + wa_id.removeprefix("+") if wa_id else ""
    return number if is_e164(number) else None


@endpoint(bp, "GET", "/ops/bookings/<ref>/phone",
          summary="The full number of a booking's customer or recipient, to call them (a "
                  "code reached nobody; audited booking.phone, without the number). 404 "
                  "not_found, no_phone (none kept, or erased)",
          roles=OPS, query=BookingPhoneQuery, response=PhoneOut, tags=("ops",),
          errors=(404, 422))
def ops_booking_phone(ref: str, query: BookingPhoneQuery) -> PhoneOut:
    with transaction() as session:
        b = visible_booking(session, ref)  # 404 not_found, as every booking route answers
        phone = booking_phone(session, b, query.whom)
        if phone is None:
            raise NotFound(f"this booking's {query.whom} has no phone number",
                           code="no_phone", field="whom")
        audit(session, "booking.phone", f"booking:{b.reference}", whom=query.whom)
        return PhoneOut(phone=phone)


def _refundable_left(payment_id: str, action: str) -> int | None:
    """What the gateway can still refund of the payment. The gateway down (or refusing
    the look-up: a rate limit): a refund is 503 gateway_unavailable (ops retry; nothing
    changed); a write-off goes on without it (None: one under Rs 1 needs no answer, a
    bigger one is the same 503)."""
    try:
        return payments.refundable_left(payment_id)
    except (requests.RequestException, gw.BadRequestError, gw.GatewayError,
            gw.ServerError) as exc:
        log.warning("gateway did not answer a payment look-up",
                    extra={"error": type(exc).__name__})
        if action == payments.WRITE_OFF:
            return None
        raise Unavailable("the payment gateway did not answer: try again in a minute",
                          code="gateway_unavailable") from exc


@endpoint(bp, "POST", "/ops/bookings/<ref>/reversed-payouts/<int:leg_id>/resolve",
          summary="Pay a leg's reversed payout to its partner again, refund it to the "
                  "customer, or write it off (under Rs 1, or once the customer's payment "
                  "is refunded in full; audited; ?dry_run=1 shows the numbers). 409 "
                  "nothing_to_resolve, already_resolved, partner_blocked, "
                  "partner_no_account, refund_open, payment_refunded (pay again or "
                  "write off), refund_too_small / "
                  "payout_too_small (under Rs 1, which the gateway neither refunds nor "
                  "transfers: write it off), write_off_too_large (Rs 1 or more while the "
                  "payment can still refund: pay the partner again or refund); 503 "
                  "gateway_unavailable (a refund, a write-off of Rs 1 or more: the gateway "
                  "did not say what the payment can still give back)", roles=OPS,
          query=ResolveQuery, body=ResolveIn, response=ResolvedOut, tags=("ops",),
          errors=(404, 409, 422, 503))
def ops_resolve_reversed_payout(ref: str, leg_id: int, query: ResolveQuery,
                                body: ResolveIn) -> ResolvedOut:
    refundable, gateway_down = None, False
    if body.action in (payments.REFUND, payments.WRITE_OFF):
        # What the gateway can still give back of the payment (a refund is at most that; a
        # write-off of Rs 1 or more needs it to be nothing), asked before (never within)
        # the transaction; a refund made meanwhile is refused by the gateway, and retried.
        with transaction() as session:
            b = visible_booking(session, ref)
            payment_id = payments.refund_payment_id(session, b.id)
        if payment_id:
            refundable = _refundable_left(payment_id, body.action)
            gateway_down = refundable is None
    with transaction() as session:
        b = visible_booking(session, ref)  # 404 not_found, as every booking route answers
        done = payments.resolve_reversed_payout(session, b, leg_id, body.action, ops_actor(),
                                                dry_run=query.dry_run, refundable=refundable,
                                                gateway_down=gateway_down)
        if not query.dry_run:
            audit(session, "reversed_payout.resolve", f"booking:{b.reference}", leg=leg_id,
                  decision=done.action, amount_paise=done.amount_paise,
                  still_held_paise=done.still_held_paise, partner=done.partner_id,
                  refund_attempt=done.refund_attempt, refundable_paise=done.refundable_paise,
                  reason=body.reason)
        return ResolvedOut(reference=b.reference, leg_id=leg_id, action=done.action,
                           dry_run=query.dry_run, held_paise=done.held_paise,
                           amount_paise=done.amount_paise,
                           still_held_paise=done.still_held_paise,
                           partner_id=done.partner_id, refundable_paise=done.refundable_paise,
                           refund_attempt=done.refund_attempt)


class SettleLegIn(Strict):
    reason: str = Field(min_length=payments.SETTLE_REASON_MIN,
                        max_length=payments.SETTLE_REASON_MAX,
                        description="why, for the audit log (numbers kept masked)")


class LegSettledOut(BaseModel):
    reference: str
    leg_id: int
    outcome: Literal["released", "reversed", "already_settled", "transfer_pending"] = Field(
        description="released: the rider's hold is released (he is paid); reversed: the "
                    "hold went back (no rider has the leg); already_settled: nothing was "
                    "left to settle; transfer_pending: a transfer of the leg is on its way "
                    "at the gateway, its outcome decides")
    changed: bool = Field(description="false: nothing was done (nor audited)")
    message: str


@endpoint(bp, "POST", "/ops/bookings/<ref>/legs/<int:leg_id>/settle",
          summary="Settle one leg now, after an incident: its rider's hold released if the "
                  "leg earned it (delivered, a cancellation fee), else given back; through "
                  "the leg's own settle job, so a repeat changes nothing (audited "
                  "leg.settle when something was done). 409 leg_in_progress (a rider has "
                  "the leg: his hold stays), no_payment, partner_no_account, "
                  "reversal_waits (the gateway has not processed the hold yet: it goes "
                  "back by itself), leg_busy (a job of the leg is running: try again), "
                  "transfer_refused; 503 gateway_unavailable", roles=OPS,
          body=SettleLegIn, response=LegSettledOut, tags=("ops",),
          errors=(404, 409, 422, 503))
def ops_settle_leg(ref: str, leg_id: int, body: SettleLegIn) -> LegSettledOut:
    with transaction() as session:
        b = visible_booking(session, ref)  # 404 not_found, as every booking route answers
        booking_id = b.id
    done = payments.settle_leg_by_hand(leg_id, ops_actor(), body.reason, booking_id=booking_id)
    return LegSettledOut(reference=done.reference, leg_id=leg_id,
                         outcome=done.outcome,  # type: ignore[arg-type]
                         changed=done.changed, message=done.message)


class ParcelReturnedIn(Strict):
    note: str = Field(min_length=3, max_length=300,
                      description="how it came back (who brought it, when), for the audit log")


class ParcelReturnedOut(BaseModel):
    reference: str
    leg_id: int | None = Field(description="the leg whose rider held the parcel")
    recorded: bool = Field(description="false: recorded before; nothing was done")


@endpoint(bp, "POST", "/ops/bookings/<ref>/parcel-returned",
          summary="Record that the parcel of a relay ops ended with it in a rider's hands "
                  "is back with its sender (audited booking.parcel_returned): from then "
                  "the sender and that rider may be erased (before, 409 in_flight for "
                  "14 days). 409 no_parcel_out: no rider was left holding its parcel",
          roles=OPS, body=ParcelReturnedIn, response=ParcelReturnedOut, tags=("ops",),
          errors=(404, 409))
def ops_parcel_returned(ref: str, body: ParcelReturnedIn) -> ParcelReturnedOut:
    with transaction() as session:
        b = visible_booking(session, ref, for_update=True)  # two clicks record it once
        if retention.returned(session, b):
            return ParcelReturnedOut(reference=b.reference, leg_id=None, recorded=False)
        leg = retention.parcel_out(session, b)
        if leg is None:
            raise Conflict(f"no rider was left holding the parcel of booking {b.reference}",
                           code="no_parcel_out")
        audit(session, retention.PARCEL_RETURNED, f"booking:{b.reference}", leg=leg.id,
              partner=leg.partner_id, note=body.note)
        return ParcelReturnedOut(reference=b.reference, leg_id=leg.id, recorded=True)


@endpoint(bp, "GET", "/ops/reversed-payouts",
          summary="Bookings holding partner payouts reversed at the gateway, waiting for ops "
                  "to pay the partner again or refund the customer (newest booking first; "
                  "page with after=next_after)", roles=OPS, query=HeldQuery,
          response=HeldPage, tags=("ops",))
def ops_reversed_payouts(query: HeldQuery) -> HeldPage:
    from core.services import ledger

    with transaction() as session:
        held = ledger.holding_reversed_payouts(session, query.limit + 1, query.after)
        more = len(held) > query.limit
        held = held[: query.limit]
        refs = dict(session.execute(select(Booking.id, Booking.reference).where(
            Booking.id.in_([b for b, _ in held]))).tuples().all())
        states = dict(session.execute(select(Booking.id, Booking.status).where(
            Booking.id.in_([b for b, _ in held]))).tuples().all())
        return HeldPage(items=[HeldRow(reference=refs[b], booking_id=b,
                                       status=BookingStatus(states[b]),
                                       reversed_payouts_paise=v) for b, v in held],
                        next_after=held[-1][0] if more else None)


class RefundOut(BaseModel):
    reference: str
    attempt: int
    amount_paise: int
    status: str
    reason: str  # cancelled, no_partner, late_payment (an extra payment given back)
    payment_id: str


class RetryRefundQuery(Strict):
    """Which failed refund to try again, when a booking has more than one (in the query
    string: a client that sends no body, as before, keeps working)."""

    leg: int | None = Field(default=None, ge=1, le=MAX_ID,
                            description="the leg (its sequence: 1, 2, ...) whose reversed "
                                        "payout's refund to try again")
    attempt: int | None = Field(default=None, ge=1, le=MAX_ID,
                                description="the failed refund's attempt (which_refund "
                                            "lists them)")


@bp.errorhandler(payments.WhichRefund)
def _which_refund(exc: payments.WhichRefund) -> tuple[Response, int]:
    """The usual error body, plus the failed refunds to choose from."""
    return jsonify({"error": {"code": exc.code, "message": exc.message,
                              "refunds": exc.refunds}}), 409


@endpoint(bp, "POST", "/ops/bookings/<ref>/refund/retry",
          summary="Try a booking's failed refund again now (a new attempt; a reversed "
                  "payout's, for its own leg). With several failed, ?leg= (a leg's "
                  "sequence: its reversed payout's refund) or ?attempt= names one; named "
                  "none, one that gave up is taken before ones that retry by themselves, "
                  "else 409 which_refund with the refunds to choose from (attempt, leg, "
                  "leg_id, amount_paise, reason, retry_at). 409 no_failed_refund, "
                  "refund_open, nothing_to_refund, decided_since (ops decided about that "
                  "reversed payout again since: resolve it anew)", roles=OPS,
          query=RetryRefundQuery, response=RefundOut, tags=("ops",), errors=(404, 409))
def ops_retry_refund(ref: str, query: RetryRefundQuery) -> RefundOut:
    with transaction() as session:
        b = visible_booking(session, ref)  # 404 not_found, as every booking route answers
        refund = payments.retry_refund_now(session, b, ops_actor(), leg=query.leg,
                                           attempt=query.attempt)
        audit(session, "refund.retry", f"booking:{b.reference}", attempt=refund.attempt,
              amount_paise=refund.amount_paise, reason=refund.reason,
              named_leg=query.leg, named_attempt=query.attempt)
        return RefundOut(reference=b.reference, attempt=refund.attempt,
                         amount_paise=refund.amount_paise, status=refund.status,
                         reason=refund.reason, payment_id=refund.payment_id)


@endpoint(bp, "GET", "/ops/reconciliation/mismatches",
          summary="Where the ledger and the gateway disagree, newest found first" + BY_CURSOR,
          roles=OPS, query=MismatchQuery, response=CursorPage[MismatchOut], tags=("ops",))
def ops_mismatches(query: MismatchQuery) -> CursorPage[MismatchOut]:
    from core.services import reconciliation

    after = page_after(query, MISMATCHES)
    with transaction() as session:
        rows, nxt = keyset_page(reconciliation.list_mismatches(
            session, include_resolved=query.include_resolved, offset=query.offset,
            limit=query.limit + 1, after=after), query,
            MISMATCHES, lambda m: (datetime.fromisoformat(m["first_seen_at"]), m["id"]))
        return CursorPage[MismatchOut](items=[MismatchOut(**m) for m in rows],
                                       next_offset=nxt.offset, next_after=nxt.after)


class EraseIn(Strict):
    reason: str = Field(min_length=3, max_length=300,
                        description="where the request came from and when (\"her call on "
                                    "3 Dec\", \"letter to the Bettiah office\"), not what "
                                    "it says: the audit log keeps this for good (numbers "
                                    "masked, the names this erasure takes removed)")


class ErasedOut(BaseModel):
    """Whom an erasure was for, so an operator sees at once if it was not who they meant."""

    person_id: int
    role: str = Field(description="customer or partner")
    partner_id: int | None = Field(description="their partner id, if they are a partner")
    phone_masked: str | None = Field(description="their number as it was, masked; null if "
                                                 "they had none (or were erased before)")
    erased: bool = Field(description="false: erased before; nothing more was done")
    counts: dict[str, int]


def _erase(session: Session, person_id: int, reason: str) -> ErasedOut:
    from core.services import retention

    # Read before the erasure takes the number, as plain values: erase_person locks and
    # loads the person itself (after their conversations, the order a chat turn takes).
    who = session.execute(select(Person.role, Person.phone).where(Person.id == person_id)
                          ).tuples().first()
    if who is None:
        raise NotFound("no such person", code="not_found")
    role, phone = who
    done = retention.erase_person(session, person_id)
    if done.changed:
        audit(session, "person.erase", f"person:{person_id}",
              reason=retention.without_names(reason, done.names), **done.counts)
    partner_id = session.scalar(select(PartnerProfile.id).where(
        PartnerProfile.person_id == person_id))
    return ErasedOut(person_id=person_id, role=role, partner_id=partner_id,
                     phone_masked=mask_phone(phone) if phone else None,
                     erased=done.changed, counts=done.counts)


@endpoint(bp, "POST", "/ops/people/<int:person_id>/erase",
          summary="Erase a customer's personal data on their request (audited); their "
                  "payments, ledger and history stay. A person id, as booking rows show "
                  "customer_id; a partner is refused (409 is_partner): erase them by "
                  "/ops/partners/{partner_id}/erase; 503 queue_unavailable while the chat "
                  "queue (Redis) is away: nothing was erased, try again", roles=OPS,
          body=EraseIn, response=ErasedOut, tags=("ops",), errors=(404, 409, 503))
def ops_erase_person(person_id: int, body: EraseIn) -> ErasedOut:
    with transaction() as session:
        # The person route is for customers. A partner goes by the partner route, whose
        # summary ops read for partners (block their KYC first): refused here, unchanged.
        partner_id = session.scalar(select(PartnerProfile.id).where(
            PartnerProfile.person_id == person_id))
        if partner_id is not None:
            raise Conflict(f"person {person_id} is partner {partner_id}: erase them with "
                           f"POST {bp.url_prefix}/ops/partners/{partner_id}/erase; "
                           "nothing was changed", code="is_partner")
        return _erase(session, person_id, body.reason)


class SignOutIn(Strict):
    note: str | None = Field(default=None, min_length=3, max_length=300,
                             description="why (\"phone stolen, his call on 3 Dec\"), for "
                                         "the audit log (numbers kept masked)")


class SignedOutOut(BaseModel):
    person_id: int
    role: str
    sessions_ended: int = Field(description="how many sign-ins ended; 0: none was open, "
                                            "nothing was changed (nor audited)")


@endpoint(bp, "POST", "/ops/people/<int:person_id>/sign-out",
          summary="Sign a person out everywhere (a customer, a partner or an operator; a "
                  "lost or stolen phone): every token of theirs stops working at once; "
                  "their role and data stay, they sign in again with a new code. Audited "
                  "(person.sign_out) when one ended. A person id, as booking rows show "
                  "customer_id and partner rows person_id",
          roles=OPS, body=SignOutIn, response=SignedOutOut, tags=("ops",),
          errors=(404, 422))
def ops_sign_out_person(person_id: int, body: SignOutIn) -> SignedOutOut:
    with transaction() as session:
        try:
            done = admin.sign_out_person(session, person_id=person_id,
                                         actor=f"ops:{principal().person_id}",
                                         note=body.note)
        except NotFound:
            raise NotFound("no such person", code="not_found") from None
        return SignedOutOut(person_id=done.id, role=done.role, sessions_ended=done.ended)


class RecipientEraseIn(EraseIn):
    phone: PhoneText = Field(min_length=8, max_length=20,
                             description="her number, as typed (98765 43210, +91 98765 "
                                         "43210): in the body, so it stays out of access logs")


class RecipientErasedOut(BaseModel):
    phone_masked: str
    erased: bool = Field(description="false: nothing of hers was kept (erased before, or "
                                     "never a recipient); nothing was done")
    booking_ids: list[int] = Field(description="the bookings sent to her that lost her data")
    counts: dict[str, int]


@endpoint(bp, "POST", "/ops/recipients/erase",
          summary="Erase a parcel recipient who has no account, by her number, on her "
                  "request (audited recipient.erase, ids only): the bookings sent to her "
                  "lose her name, number and drop details, the messages to her and the "
                  "texts naming her lose them; money and history stay. 409 in_flight while "
                  "a parcel to her is on its way; 409 has_account when the number is an "
                  "account's (an operator, a partner, someone who booked or signed in: "
                  "erase them by /ops/people/{person_id}/erase; a row her STOP, chat or "
                  "call made is erased with her, her STOP kept); 503 "
                  "queue_unavailable while the chat queue (Redis) is away: nothing was "
                  "erased, try again", roles=OPS,
          body=RecipientEraseIn, response=RecipientErasedOut, tags=("ops",),
          errors=(409, 422, 503))
def ops_erase_recipient(body: RecipientEraseIn) -> RecipientErasedOut:
    from core.services import retention

    with transaction() as session:
        done = retention.erase_recipient(session, body.phone,
                                         actor=f"ops:{principal().person_id}",
                                         reason=body.reason)
        return RecipientErasedOut(phone_masked=mask_phone(normalize_phone(body.phone)),
                                  erased=done.changed, booking_ids=done.booking_ids,
                                  counts=done.counts)


@endpoint(bp, "POST", "/ops/partners/<int:partner_id>/erase",
          summary="Erase a partner's personal data on their request, by the partner id "
                  "(audited); block their KYC first. The whole person: a partner who also "
                  "sent parcels loses those bookings' details too, and is refused while one "
                  "is under way. 503 queue_unavailable while the chat queue (Redis) is "
                  "away: nothing was erased, try again", roles=OPS, body=EraseIn,
          response=ErasedOut, tags=("ops",), errors=(404, 409, 503))
def ops_erase_partner(partner_id: int, body: EraseIn) -> ErasedOut:
    with transaction() as session:
        person_id = session.scalar(select(PartnerProfile.person_id).where(
            PartnerProfile.id == partner_id))
        if person_id is None:
            raise NotFound("no such partner", code="not_found")
        return _erase(session, person_id, body.reason)

"""Customer endpoints: quotes, bookings (idempotent create), tracking, cancel, rating,
and the customer's own profile (their language)."""

from __future__ import annotations

from flask import Response, jsonify
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from core import i18n
from core.adapters.db import transaction
from core.adapters.models import Booking, Leg, PartnerProfile
from core.adapters.pincode import nearest, normalize_pincode, pincode_centroid, post_offices
from core.api import bp
from core.api.auth_guard import principal
from core.api.idempotency import KEY_HEADER, idempotent
from core.api.schemas import (
    BookingOut,
    CursorPage,
    CursorQuery,
    FareLineOut,
    FareOut,
    Keyset,
    LegOut,
    PaiseIn,
    ParcelIn,
    PlaceIn,
    PlaceOut,
    RecipientIn,
    RemarkText,
    SaidText,
    StarsIn,
)
from core.api.spec import Strict, endpoint
from core.domain.booking import Actor, ActorKind, BookingStatus, LegStatus
from core.domain.errors import Conflict, DomainError, NotFound, ValidationError
from core.domain.money import format_inr
from core.domain.office_names import distinct, offered_names
from core.domain.phone import mask_phone
from core.domain.pricing import SpeedTier
from core.domain.reference import normalize_reference
from core.domain.text import visible
from core.logs import mask_note
from core.services import auth, ledger, payments, rating
from core.services import booking as booking_service

CUSTOMER = ("customer",)
# Whoever sends parcels: a customer, or a partner who sends too (a customer signed up to
# carry keeps her bookings; dispatch never offers a partner her own parcel). Each sees
# only her own bookings (visible_booking, list_bookings).
SENDER = ("customer", "partner")
SENDER_OR_OPS = ("customer", "partner", "ops")

# A customer's bookings page by cursor too (booking ids, newest first): one booked while
# they page (in the app, or by WhatsApp on the same number) repeats no booking.
MY_BOOKINGS = Keyset("customer.bookings", (int,))


class QuoteRequest(Strict):
    pickup: PlaceIn
    drop: PlaceIn
    parcel: ParcelIn


class QuoteOut(BaseModel):
    distance_m: int
    vehicle: str
    # Only the tiers whose delivery_hours the vehicle can keep over this distance: a long
    # trip has no "express" (and one nothing can carry is refused, 422 too_far).
    fares: list[FareOut]
    # False: no rider who could take this parcel is on duty near the pickup right now (at
    # night, say); a booking paid now may be refunded after its tier's search_minutes.
    rider_free_now: bool


class BookingRequest(Strict):
    pickup: PlaceIn
    drop: PlaceIn
    parcel: ParcelIn
    tier: SpeedTier = SpeedTier.STANDARD
    recipient: RecipientIn
    quoted_total_paise: PaiseIn | None = Field(
        default=None,
        description="the total the app showed for this tier (POST /quotes): if the fare "
                    "is another now, nothing is booked and the answer is 409 "
                    "price_changed with the fare's total_paise")


class CancelQuery(Strict):
    dry_run: bool = False
    expected_fee_paise: int | None = Field(
        default=None, ge=0,
        description="the fee the app showed (from ?dry_run=1): if the fee is another now (a "
                    "rider took the job meanwhile), nothing is cancelled and the answer is "
                    "409 fee_changed with the fee_paise and refund_paise of now")
    # 180: "cancelled by ops: " and the reason fit the history's 200 characters; after
    # "cancelled in the app: ", history_reason cuts a customer's longest to them
    # Counted as read (SaidText): invisible marks alone ("\u200b\u200b\u200b") say no why.
    reason: SaidText | None = Field(default=None, min_length=3, max_length=180,
                                    description="why you cancel, kept with the booking's "
                                                "history (numbers in it masked); ops: the "
                                                "customer's request by phone, ..., also kept in "
                                                "the audit log, and needed to end a stuck relay")


# transitions.reason
HISTORY_REASON_MAX = 200


def history_reason(said: str, reason: str | None) -> str:
    """What a booking's history keeps of a cancel: who (``said``: "cancelled in the app")
    and, when they gave one, why in their own words, as read (core.domain.text.visible: no
    control characters or direction marks for an operator's screen), within the history's
    column. Kept for good, as the audit log keeps an operator's reason (logs.mask_note): a
    phone number in it masked (+91******3210), a bank account or Aadhaar number (9 digits
    or more) cut to its last 4."""
    words = mask_note(visible(reason or ""))
    return (f"{said}: {words}" if words else said)[:HISTORY_REASON_MAX]


class CancellationOut(BaseModel):
    allowed: bool
    refund_paise: int
    fee_paise: int
    reason_code: str
    status: BookingStatus
    cancelled: bool


class RatingIn(Strict):
    stars: StarsIn
    # Counted as read (RemarkText): invisible marks alone are no comment (None).
    comment: RemarkText = Field(default=None, max_length=500)


class RatingOut(BaseModel):
    reference: str
    stars: int


class TrackOut(BaseModel):
    reference: str
    status: BookingStatus
    legs: list[LegOut]
    partner_first_name: str | None
    last_position: dict[str, float] | None
    eta_minutes: int | None


class AmbiguousPincode(ValidationError):
    """A pincode of several post offices, none named: the offices lie kilometres apart, so
    the app asks which one (as the chat does) instead of us guessing."""

    code = "ambiguous_pincode"

    def __init__(self, pin: str, offices: list[str]):
        super().__init__(f"pincode {pin} has {len(offices)} post offices; send post_office "
                         f"as one of: {', '.join(offices)}", field="post_office")
        self.offices = offices


@bp.errorhandler(booking_service.PriceChanged)
def _price_changed(exc: booking_service.PriceChanged) -> tuple[Response, int]:
    """The usual error body, plus the fare's total now (to show, and send if agreed)."""
    return jsonify({"error": {"code": exc.code, "message": exc.message, "field": exc.field,
                              "total_paise": exc.total_paise}}), 409


class FeeChanged(Conflict):
    """The cancellation fee is no longer the one the app showed (a rider took the job
    since, or the booking moved on): nothing is cancelled."""

    code = "fee_changed"

    def __init__(self, fee_paise: int, refund_paise: int, expected_fee_paise: int) -> None:
        super().__init__(f"the cancellation fee is now {format_inr(fee_paise)}, not "
                         f"{format_inr(expected_fee_paise)}: nothing was cancelled",
                         field="expected_fee_paise")
        self.fee_paise, self.refund_paise = fee_paise, refund_paise


@bp.errorhandler(FeeChanged)
def _fee_changed(exc: FeeChanged) -> tuple[Response, int]:
    """The usual error body, plus the fee and refund of now (to show, and agree again)."""
    return jsonify({"error": {"code": exc.code, "message": exc.message, "field": exc.field,
                              "fee_paise": exc.fee_paise,
                              "refund_paise": exc.refund_paise}}), 409


@bp.errorhandler(AmbiguousPincode)
def _ambiguous_pincode(exc: AmbiguousPincode) -> tuple[Response, int]:
    """The usual error body, plus the offices to choose from."""
    return jsonify({"error": {"code": exc.code, "message": exc.message, "field": exc.field,
                              "offices": exc.offices}}), 422


# A place's errors name their part of it; a position's name its lat, as the request
# checks name a bad position (the directory says "location").
_PART_NAMES = {"location": "lat"}


def resolve_place(p: PlaceIn, fld: str) -> booking_service.Place:
    """Turn what the app sent into a concrete place (position + pincode + post office); an
    error names the field at fault within ``fld`` ("drop.pincode")."""
    try:
        return _place(p)
    except DomainError as exc:
        part = _PART_NAMES.get(exc.field or "", exc.field)
        exc.field = f"{fld}.{part}" if part else fld
        raise


def _place(p: PlaceIn) -> booking_service.Place:
    if p.lat is not None and p.lng is not None:
        office = nearest(p.lat, p.lng)
        return booking_service.Place(p.lat, p.lng, office.pincode, office.office_name,
                                     p.landmark, pinned=True)
    assert p.pincode is not None
    pin = normalize_pincode(p.pincode)
    # One name twice at one spot ("UMRI BO", "Umri BO") is one office: offered once.
    offices = distinct(post_offices(pin))
    names = offered_names(offices)
    if p.post_office:
        wanted = p.post_office.casefold()
        # A name offered picks one office; so does the directory's office_name ("Arjunganj
        # SO") unless two offices have it; a display name may be two ("Arjunganj" BO and
        # SO, kilometres apart): then the app asks which, by the names offered.
        match = ([i for i, name in enumerate(names) if name.casefold() == wanted]
                 or [i for i, o in enumerate(offices) if o.office_name.casefold() == wanted]
                 or [i for i, o in enumerate(offices) if o.name.casefold() == wanted])
        if not match:
            raise NotFound(f"no post office called {p.post_office!r} in {pin}",
                           code="unknown_post_office", field="post_office")
        if len(match) > 1:
            raise AmbiguousPincode(pin, [names[i] for i in match])
        office = offices[match[0]]
    elif len(offices) > 1:
        raise AmbiguousPincode(pin, names)
    else:
        office = offices[0]
    if office.lat is None or office.lng is None:
        lat, lng = pincode_centroid(pin)
    else:
        lat, lng = office.lat, office.lng
    return booking_service.Place(lat, lng, pin, office.office_name, p.landmark)


def _spec(parcel: ParcelIn) -> booking_service.ParcelSpec:
    return booking_service.ParcelSpec(
        category=parcel.category, size=parcel.size, weight=parcel.weight,
        declared_value_paise=parcel.declared_value_paise, fragile=parcel.fragile,
        description=parcel.description)


def _fare_out(tier: SpeedTier, q: booking_service.Quote) -> FareOut:
    fare = q.fares[tier]
    return FareOut(tier=tier, total_paise=fare.total_paise,
                   lines=[FareLineOut(code=line.code, amount_paise=line.amount_paise)
                          for line in fare.lines],
                   delivery_hours=q.hours[tier], search_minutes=q.search_minutes[tier])


def booking_out(session: Session, b: Booking) -> BookingOut:
    """One booking as the API shows it."""
    return bookings_out(session, [b])[0]


def bookings_out(session: Session, bookings: list[Booking]) -> list[BookingOut]:
    """Bookings as the API shows them, in the same few queries however many there are:
    a list loads their legs with ``selectinload(Booking.legs)``, so a page of 100 does not
    cost 300 queries."""
    partner_ids = {leg.partner_id for b in bookings for leg in b.legs if leg.partner_id}
    names: dict[int | None, str] = {}  # a leg with no partner: no name
    if partner_ids:
        names.update(session.execute(select(PartnerProfile.id, PartnerProfile.first_name)
                                     .where(PartnerProfile.id.in_(partner_ids))).tuples().all())
    urls = payments.payment_urls(session, bookings)
    return [_booking_out(b, names, urls.get(b.id)) for b in bookings]


def _booking_out(b: Booking, names: dict[int | None, str], payment_url: str | None
                 ) -> BookingOut:
    return BookingOut(
        reference=b.reference, status=BookingStatus(b.status), channel=b.channel,
        speed_tier=SpeedTier(b.speed_tier), vehicle_type=b.vehicle_type,
        distance_m=b.distance_m, total_paise=b.total_paise,
        fare_lines=[FareLineOut(code=x["code"], amount_paise=x["amount_paise"])
                    for x in b.fare.get("lines", [])],
        pickup=PlaceOut(lat=b.pickup_lat, lng=b.pickup_lng, pincode=b.pickup_pincode,
                        post_office=b.pickup_post_office, landmark=b.pickup_landmark),
        drop=PlaceOut(lat=b.drop_lat, lng=b.drop_lng, pincode=b.drop_pincode,
                      post_office=b.drop_post_office, landmark=b.drop_landmark),
        recipient_name=b.recipient_name,
        recipient_phone_masked=mask_phone(b.recipient_phone) if b.recipient_phone else None,
        payment_url=payment_url, created_at=b.created_at,
        legs=[LegOut(id=leg.id, sequence=leg.sequence, status=LegStatus(leg.status),
                     partner_first_name=names.get(leg.partner_id), distance_m=leg.distance_m)
              for leg in b.legs],
    )


def visible_booking(session: Session, ref: str, *, for_update: bool = False) -> Booking:
    """A booking the caller may see; other people's bookings are simply not found."""
    who = principal()
    try:
        b = booking_service.get_booking(session, ref, for_update=for_update)
    except NotFound:
        raise NotFound("no such booking", code="not_found") from None
    if who.role != "ops" and b.customer_id != who.person_id:
        raise NotFound("no such booking", code="not_found")
    return b


@endpoint(bp, "POST", "/quotes",
          summary="Fares for each speed tier whose time can be kept (422 too_far: nothing "
                  "we have can carry the parcel that far)", roles=CUSTOMER,
          body=QuoteRequest, response=QuoteOut, tags=("customer",), errors=(404,))
def create_quote(body: QuoteRequest) -> QuoteOut:
    pickup = resolve_place(body.pickup, "pickup")
    drop = resolve_place(body.drop, "drop")
    with transaction() as session:
        booking_service.check_service_area(session, pickup, drop)
        q = booking_service.quote_trip(session, pickup, drop, _spec(body.parcel))
        free = booking_service.rider_free_near(session, pickup, _spec(body.parcel),
                                               customer_id=principal().person_id,
                                               ride_m=q.ride_m)
    return QuoteOut(distance_m=q.distance_m, vehicle=q.vehicle,
                    fares=[_fare_out(t, q) for t in q.fares], rider_free_now=free)


@endpoint(bp, "POST", "/bookings", summary="Book (send Idempotency-Key to retry safely)",
          roles=CUSTOMER, body=BookingRequest, response=BookingOut, status=201,
          tags=("customer",), errors=(404, 409, 429), headers=(KEY_HEADER,))
def create_booking(body: BookingRequest) -> BookingOut | Response:
    who = principal()
    # The fingerprint is the body alone, as before the ops reply had keys too: answers
    # saved before stay replayable (so a body without quoted_total_paise is fingerprinted
    # as before it existed). No other endpoint's fingerprint has these fields.
    canonical = body.model_dump(mode="json")
    if canonical["quoted_total_paise"] is None:
        del canonical["quoted_total_paise"]
    once = idempotent(who.person_id, canonical)
    pickup = resolve_place(body.pickup, "pickup")
    drop = resolve_place(body.drop, "drop")
    with transaction() as session:
        # Claim the key first: a concurrent retry waits here, then replays our answer.
        if (saved := once.claim(session)) is not None:
            return saved
        booking_service.check_service_area(session, pickup, drop)
        actor = Actor("customer", str(who.person_id))
        b = booking_service.create_booking(
            session, customer_id=who.person_id, channel="app", pickup=pickup, drop=drop,
            parcel=_spec(body.parcel), tier=body.tier, recipient_name=body.recipient.name,
            recipient_phone=body.recipient.phone, actor=actor,
            agreed_total_paise=body.quoted_total_paise)
        payments.request_payment_link(session, b, actor)
        session.flush()
        session.refresh(b)
        out = booking_out(session, b)
        once.save(session, 201, out)
    return out


@endpoint(bp, "GET", "/bookings",
          summary="My bookings, newest first; page with after=next_after (a booking made "
                  "while you page repeats none; offset is deprecated for deep pages)",
          roles=SENDER, query=CursorQuery, response=CursorPage[BookingOut],
          tags=("customer",))
def list_bookings(query: CursorQuery) -> CursorPage[BookingOut]:
    from core.api.ops import keyset_page, page_after  # ops imports this module

    who = principal()
    after = page_after(query, MY_BOOKINGS)
    with transaction() as session:
        stmt = select(Booking).where(Booking.customer_id == who.person_id) \
            .options(selectinload(Booking.legs)).order_by(Booking.id.desc())
        stmt = stmt.offset(query.offset) if after is None else stmt.where(Booking.id < after[0])
        rows, nxt = keyset_page(list(session.scalars(stmt.limit(query.limit + 1))), query,
                                MY_BOOKINGS, lambda b: (b.id,))
        items = bookings_out(session, rows)
    return CursorPage[BookingOut](items=items, next_offset=nxt.offset, next_after=nxt.after)


@endpoint(bp, "GET", "/bookings/<ref>", summary="One booking", roles=SENDER_OR_OPS,
          response=BookingOut, tags=("customer",), errors=(404,))
def get_booking(ref: str) -> BookingOut:
    with transaction() as session:
        return booking_out(session, visible_booking(session, ref))


@endpoint(bp, "GET", "/bookings/<ref>/track", summary="Where is my parcel",
          roles=SENDER_OR_OPS, response=TrackOut, tags=("customer",), errors=(404,))
def track_booking(ref: str) -> TrackOut:
    from core.services import tracking

    with transaction() as session:
        b = visible_booking(session, ref)
        out = booking_out(session, b)
        where = tracking.position_and_eta(session, b)
        holder = tracking.holding_leg(session, b)
    # The rider of the leg that holds the parcel (a relay carrier locked with it in hand,
    # not the next rider waiting at the Point), whose position is shown.
    active = next((leg for leg in out.legs if holder is not None and leg.id == holder.id),
                  None)
    return TrackOut(reference=out.reference, status=out.status, legs=out.legs,
                    partner_first_name=active.partner_first_name if active else None,
                    last_position=where.position, eta_minutes=where.eta_minutes)


@endpoint(bp, "POST", "/bookings/<ref>/cancel",
          summary="Cancel (with ?dry_run=1: only show what would be refunded; ?reason=... "
                  "says why, kept with the booking's history; ops may end a relay stuck "
                  "for want of a rider, saying why: reason_code stuck_relay). Send "
                  "Idempotency-Key to retry safely: a retry answers the first answer and "
                  "does nothing again (a dry run is not kept)",
          roles=SENDER_OR_OPS, query=CancelQuery, response=CancellationOut,
          tags=("customer",), errors=(404, 409), headers=(KEY_HEADER,))
def cancel_booking(ref: str, query: CancelQuery) -> CancellationOut | Response:
    who = principal()
    # As POST /bookings: a retry with the key (the first answer lost) answers the first
    # answer, not 409 already_closed for the booking it cancelled. The route is in the
    # fingerprint, so the key of another request (a booking, another cancel) is refused.
    # The reference as read ("1234 5678" is 12345678): a retry may write it otherwise.
    once = idempotent(who.person_id, {"route": "customer.cancel_booking",
                                      "reference": normalize_reference(ref) or ref,
                                      "expected_fee_paise": query.expected_fee_paise,
                                      "reason": query.reason})
    with transaction() as session:
        if query.dry_run:  # changes nothing: a retry may simply look again
            b = visible_booking(session, ref)
            return _cancellation_out(
                payments.cancellation_preview(session, b, by_ops=who.role == "ops"), b,
                cancelled=False)
        # Claim the key first: a concurrent retry waits here, then replays our answer.
        if (saved := once.claim(session)) is not None:
            return saved
        # No lock here: cancel_booking takes the legs' locks, then the booking's.
        b = visible_booking(session, ref)
        if query.expected_fee_paise is not None:
            _same_fee_or_refuse(session, b, query.expected_fee_paise,
                                by_ops=who.role == "ops")
        # SENDER_OR_OPS: a partner cancels her own booking as its customer.
        kind: ActorKind = "ops" if who.role == "ops" else "customer"
        # The booking's history says who ended it, and why in their own words (kept
        # for good: a number in them is masked).
        why = history_reason("cancelled by ops" if kind == "ops"
                             else "cancelled in the app", query.reason)
        q = payments.cancel_booking(session, b, Actor(kind, str(who.person_id)), why,
                                    reasoned=bool(query.reason))
        if who.role == "ops":  # money moves on an operator's word: keep the record
            from core.api.ops import audit

            # A stuck relay ended: the record names who holds the parcel now.
            held = _parcel_holder(session, b) if q.reason_code == payments.STUCK_RELAY \
                else {}
            audit(session, "booking.cancel", f"booking:{b.reference}",
                  refund_paise=q.refund_paise, fee_paise=q.fee_paise, reason=query.reason,
                  **held)
        out = _cancellation_out(q, b, cancelled=True)
        once.save(session, 200, out)
    return out


def _cancellation_out(q: payments.CancellationQuote, b: Booking, *, cancelled: bool
                      ) -> CancellationOut:
    return CancellationOut(allowed=q.allowed, refund_paise=q.refund_paise,
                           fee_paise=q.fee_paise, reason_code=q.reason_code,
                           status=BookingStatus(b.status), cancelled=cancelled)


def _parcel_holder(session: Session, booking: Booking) -> dict[str, object]:
    """Who holds the parcel of a stuck relay just ended (its leg in hand failed then, the
    only failed leg with a rider): for the audit record, by ids only (the audit log is
    never changed, so a name kept there would outlive the rider's erasure)."""
    leg = session.scalar(select(Leg).where(
        Leg.booking_id == booking.id, Leg.status == LegStatus.FAILED.value,
        Leg.partner_id.is_not(None)).order_by(Leg.sequence.desc()).limit(1))
    if leg is None:
        return {}
    return {"parcel_with_partner_id": leg.partner_id, "parcel_leg_id": leg.id}


def _same_fee_or_refuse(session: Session, booking: Booking, expected_fee_paise: int, *,
                        by_ops: bool = False) -> None:
    """Raise FeeChanged unless cancelling now costs the fee the app showed. Locked in
    cancel_booking's order (legs, then the booking), so no rider can take the job between
    this look and the cancel, which happen in this transaction."""
    from core.services import dispatch

    dispatch.lock_legs(session, booking.id)
    locked = ledger.lock_booking(session, booking.id)
    q = payments.cancellation_preview(session, locked, by_ops=by_ops)
    if q.allowed and q.fee_paise != expected_fee_paise:
        raise FeeChanged(q.fee_paise, q.refund_paise, expected_fee_paise)


class CustomerProfileOut(BaseModel):
    person_id: int
    phone: str | None
    name: str | None
    language: str = Field(description="what our messages and calls to you are in")
    language_chosen: bool = Field(description="false: the default, never chosen")
    languages: list[str] = Field(description="the languages you may choose")


class CustomerProfileChange(Strict):
    language: str = Field(max_length=16, description="one of languages (GET /me)",
                          json_schema_extra={"enum": list(i18n.LANGUAGES)})


def _profile_out(p: auth.Profile) -> CustomerProfileOut:
    return CustomerProfileOut(person_id=p.person_id, phone=p.phone, name=p.name,
                      language=p.language, language_chosen=p.language_chosen,
                      languages=list(i18n.LANGUAGES))


@endpoint(bp, "GET", "/me", summary="My profile (and the language we write to me in)",
          roles=CUSTOMER, response=CustomerProfileOut, tags=("customer",))
def get_my_profile() -> CustomerProfileOut:
    return _profile_out(auth.profile(principal()))


@endpoint(bp, "PATCH", "/me",
          summary="Choose my language: every later SMS, WhatsApp message and call to me "
                  "is in it (422 unsupported_language lists the ones we speak)",
          roles=CUSTOMER, body=CustomerProfileChange, response=CustomerProfileOut,
          tags=("customer",))
def change_my_profile(body: CustomerProfileChange) -> CustomerProfileOut:
    return _profile_out(auth.set_language(principal(), body.language))


@endpoint(bp, "POST", "/bookings/<ref>/rating",
          summary="Rate a delivered booking (201). Send Idempotency-Key to retry safely: a "
                  "retry answers the first answer. Without it, the same stars and comment "
                  "sent again within 10 minutes are answered as the first too; another "
                  "rating of a rated booking is 409 already_rated",
          roles=SENDER, body=RatingIn, response=RatingOut, status=201, tags=("customer",),
          errors=(404, 409), headers=(KEY_HEADER,))
def rate_booking(ref: str, body: RatingIn) -> RatingOut | Response:
    who = principal()
    # A retry after the answer was lost (a timeout) is answered as the first, not 409
    # already_rated for the rating it saved. The route is in the fingerprint, so the key
    # of another request (a booking, a cancel) is refused.
    # The reference as read, as a cancel's (a retry may write it "1234 5678").
    once = idempotent(who.person_id, {"route": "customer.rate_booking",
                                      "reference": normalize_reference(ref) or ref,
                                      "stars": body.stars, "comment": body.comment})
    with transaction() as session:
        if (saved := once.claim(session)) is not None:
            return saved
        b = visible_booking(session, ref, for_update=True)
        if rating.repeated_rating(session, b, body.stars, body.comment) is None:
            rating.rate_booking(session, b, body.stars, body.comment)
        # else sent again without a key, the same rating just saved: answered as the first
        # (201, the same body: the document's one answer), and nothing done again.
        out = RatingOut(reference=b.reference, stars=body.stars)
        once.save(session, 201, out)
    return out

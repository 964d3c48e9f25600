"""Phone calls (IVR): one conversation per caller, one dialog turn per keypad answer.

A caller's conversation lives on channel "voice", keyed by their E.164 number, so a draft
booking survives a dropped call: calling back within a day offers "continue your booking"
first. The state of the call in progress (its CallSid, how many turns it has taken, how
many prompts in a row got no answer) is kept in the conversation's state under ``call``;
Twilio's call status callback (or the next call) closes it.

Every webhook of a call carries its turn number (the Gather's action URL says which turn
it answers). A turn runs under the conversation's row lock; the call's state records the
last turn answered, so a retried request (or one that waited on the lock behind its
twin) is answered from record and acts once. The answer is recorded as ``CallSid:turn``
in ``inbound_events`` (provider "twilio-voice") in the same transaction as the turn's
effects, in one INSERT whose unique key is the last word on a duplicate (an answer that
reads out a pickup code is stored under CODE_CHANNEL and blanked once the call ends: see
forget_code_answers). Channel rules
live here, not in the dialog: silence repeats the prompt at most twice and then offers a
person (or ends the call; so do MAX_MISSES wrong keys at that offer), ``*`` repeats (keys
after it in a Gather of several digits are the answer), at the language list silence and
keys it has not get the list again, a call has at most ``MAX_TURNS`` turns (a 9 to a page
of a village list not heard yet is none) for each thing done in it (a booking made,
cancelled or tracked: _finished). A booking made in a turn whose answer the caller may
not have heard (the line dropped as they pressed "book") is said at the start of their
next call (UNHEARD), and the number's Fallback URL answers a turn that was done with its
stored answer, waiting a few seconds for one still running (answer_on_record).
Nothing here calls the network.
"""

from __future__ import annotations

import functools
import html
import logging
import math
import re
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from core import clock, i18n
from core.adapters import pincode
from core.adapters.api_models import AuditEntry
from core.adapters.db import transaction
from core.adapters.models import (
    Booking,
    Conversation,
    InboundEvent,
    Leg,
    OutboxMessage,
    Person,
)
from core.adapters.payment_models import PaymentLink
from core.adapters.queue import after_commit, queue
from core.config import get_settings
from core.dialog import engine
from core.dialog.booking import BOOKING, MENU, end_cancel, not_allowed_kind, person_said
from core.dialog.engine import Ctx, DialogState, Out, Say, Step, UserInput
from core.dialog.voice import (
    DONE_ON_SILENCE,
    END_ON_SILENCE,
    ENTRY_DIGITS,
    FINISHED,
    HEARD_CODE,
    NOT_CANCELLED,
    OTHER_PAYERS,
    OTHER_PAYERS_A_DAY,
    PAGE_TURNED,
    TOLD_TO_WAIT,
    VOICE_DIALOG,
    booked_before,
    clear_draft,
    full_slots,
    has_draft,
    listed_language,
)
from core.domain.booking import BookingStatus, LegStatus
from core.domain.errors import DomainError
from core.domain.office_names import told_apart
from core.domain.text import fits_two_sms_parts
from core.services import booking as booking_service
from core.services import handoff, inbound, notify, outbox, payments
from core.services.conversation import (
    SessionPorts,
    contact_for,
    load_state,
    save_state,
    with_state_saved,
)
from core.services.inbound import InboundMessage

log = logging.getLogger(__name__)

PROVIDER = "twilio-voice"
CHANNEL = "voice"
# Answers per call, counted again from 0 after each thing done (_finished); a new page of a
# list is none (_page_turn). A booking takes ~15.
MAX_TURNS = 40
MAX_SILENT_REPEATS = 2  # a prompt met with silence is repeated this often, then a person
DRAFT_KEPT = timedelta(hours=24)  # a dropped call's draft is offered again this long
ENDED = frozenset({"completed", "busy", "failed", "no-answer", "canceled"})
PUT_THROUGH = frozenset({"completed", "answered"})  # DialCallStatus: an operator answered
ANSWERED_BY_PHONE = handoff.ANSWERED_BY_PHONE  # the operator took the caller's call


@dataclass(frozen=True)
class CallRequest:
    """One Twilio Voice webhook, reduced to what the core needs."""

    sid: str
    turn: int  # 0: the call just arrived; n: the answer to the prompt of turn n - 1
    phone: str  # the caller, E.164
    to_addr: str = ""
    digits: str = ""  # keys pressed ("" = nothing before the timeout)


@dataclass
class VoiceTurn:
    """What to do with the caller now: speak ``outs`` in ``lang``, then gather the next
    answer (``keypad``: 1 = one key, more = digits ended with '#'), dial a person, or
    hang up."""

    lang: str
    outs: list[Out] = field(default_factory=list)
    action: str = "gather"  # "gather" | "dial" | "hangup"
    keypad: int = 1
    next_turn: int = 1
    dial: str | None = None
    # With ``dial``: the caller's conversation and call, which the operator's phone is
    # asked to take first (a voicemail that picks up takes nothing: operator_took).
    screen: tuple[int, str] | None = None


class AlreadyAnswered(Exception):  # noqa: N818 (an outcome, not a programming error)
    """This webhook's turn was answered before: answer it from record."""


def process(call: CallRequest, handler: Callable[[Session, CallRequest], str]) -> tuple[str, bool]:
    """Run ``handler`` (one turn rendered as TwiML) once per CallSid and turn, in one
    transaction; (TwiML, duplicate). A retry gets the TwiML stored the first time."""
    for attempt in (1, 2):
        try:
            return _process_once(call, handler)
        except IntegrityError:
            # A new caller's first webhook raced its own retry to create the contact.
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _process_once(call: CallRequest, handler: Callable[[Session, CallRequest], str]
                  ) -> tuple[str, bool]:
    external_id = f"{call.sid}:{call.turn}"
    try:
        with transaction() as session:
            twiml = handler(session, call)
            # An answer that reads a code out is marked as such when it is stored.
            channel = (CODE_CHANNEL if external_id in session.info.get(_CODE_READ_IN, ())
                       else CHANNEL)
            saving = session.info.pop(_STATE_TO_SAVE, None)
            if inbound.record_answer(session, PROVIDER, external_id, channel, twiml,
                                     saving=saving) is None:
                # Recorded already, though the call's state did not say so (the call was
                # closed since, or a twin committed first): this turn's effects roll back.
                raise AlreadyAnswered
    except AlreadyAnswered:
        return _duplicate(external_id)
    except inbound.TurnFailed as failed:
        # The turn rolled back whole; the webhook is still answered once, with the apology.
        with transaction() as session:
            twiml = failed.answer
            if inbound.record_answer(session, PROVIDER, external_id, CHANNEL, twiml) is None:
                return _duplicate(external_id)
    return twiml, False


# session.info's key for the dialog state a turn leaves to be saved with its answer.
_STATE_TO_SAVE = "ridechain.ivr.state_to_save"


def _duplicate(external_id: str) -> tuple[str, bool]:
    log.info("duplicate voice webhook answered from record")
    with transaction() as session:
        return inbound.stored_answer(session, PROVIDER, external_id) or "", True


# How long the Fallback URL waits for a turn still running to finish: Twilio gave up on
# it after its 15 seconds and waits as long for the Fallback's answer, in silence. Well
# under that, so that the apology still comes in time when the turn does not finish.
FALLBACK_WAITS_FOR_TURN = timedelta(seconds=8)


def answer_on_record(sid: str, turn: int, phone: str) -> str | None:
    """The answer stored for turn ``turn`` of call ``sid`` from ``phone``, for the number's
    Fallback URL (Twilio gave up waiting for it): the turn was done, and its effects are
    kept. A turn still running (a slow one: Twilio gave up, the turn goes on and may book)
    is waited for, at most FALLBACK_WAITS_FOR_TURN, on the caller's conversation row that
    every turn holds locked to its commit (conversation.py: FOR UPDATE); a turn costs no
    statement more for it. None if it was not done (not started, rolled back, or still
    running after that wait), or its answer was blanked (it read a code, and the call is
    over)."""
    external_id = f"{sid}:{turn}"
    wait_ms = int(FALLBACK_WAITS_FOR_TURN.total_seconds() * 1000)
    try:
        with transaction() as session:
            session.execute(text(f"SET LOCAL lock_timeout = {wait_ms}"))
            session.execute(select(Conversation.id).where(
                Conversation.channel == CHANNEL, Conversation.contact == phone)
                .with_for_update(read=True))
            answer = inbound.stored_answer(session, PROVIDER, external_id)
    except OperationalError as exc:
        if getattr(exc.orig, "sqlstate", None) != "55P03":  # lock_not_available
            raise
        log.warning("voice fallback: the turn it replaces is still running; apologised",
                    extra={"waited_ms": wait_ms})
        return None
    return answer if answer and answer != BLANKED_ANSWER else None


# --- ports: the chat's, plus the booking details by SMS ---------------------------------

# The booking's details after a call, by how they reach the caller (reach()): each says
# where the payment link comes, which goes the same way (notify.send_to_person).
DETAILS = {"sms": "ivr.sms.details", "whatsapp": "ivr.sms.details_whatsapp"}
CANCELLED = "ivr.sms.cancelled"  # a booking cancelled in its own call, once news of it went
# A "1 = cancel" that came after its call was closed and cancelled nothing: the amounts
# changed since the caller heard them (_not_cancelled_unheard).
NOT_CANCELLED_SMS = "ivr.sms.not_cancelled"
# ... or it could not be cancelled at all any more (booking.not_allowed_kind: the rider
# picked the parcel up, or it is over), and what it did cancel (_cancel_unheard).
NOT_CANCELLABLE_SMS = {"picked_up": "ivr.sms.not_cancelled_picked_up",
                       "not_allowed": "ivr.sms.not_cancelled_closed"}
# ... but not of one that was cancelled or expired meanwhile: its own SMS told him.
TOLD_CLOSED = frozenset({BookingStatus.CANCELLED.value, BookingStatus.EXPIRED.value})


# A place in the details is cut (dispatch.short_place_name) to PLACE_NAME_MAX, as a
# partner's SMS names it, and shorter where the language's words and the tier's leave
# less room in 2 parts; never below this (an SMS of 3 parts reads better than "Ja...").
DETAILS_PLACE_MIN = 12


def details_key(booking_id: int) -> str:
    return f"ivr-details-{booking_id}"


def details_params(key: str, lang: str, *, pickup: str, drop: str, **params: Any
                   ) -> dict[str, Any]:
    """The fields of the booking's details (``key``, one of DETAILS) in ``lang``, both
    places cut alike as little as lets the text fit 2 SMS parts: the offices' own names
    run to 50 characters ("Jagdishpur SO West Champaran" is 28), and two of them with
    the tier's words took the text to 3 parts."""
    from core.services import dispatch

    fields: dict[str, Any] = {}
    for limit in range(dispatch.PLACE_NAME_MAX, DETAILS_PLACE_MIN - 1, -1):
        fields = {**params, "pickup": dispatch.short_place_name(pickup, limit),
                  "drop": dispatch.short_place_name(drop, limit)}
        if fits_two_sms_parts(i18n.t(key, lang, **fields)):
            break
    return fields


def link_again_in(now: datetime, again_at: datetime) -> int:
    """Minutes from ``now`` until a payment link asked for again can go again, at
    ``again_at`` (payments.link_again_at: LINK_AGAIN_EVERY after the last one went). At
    least 2 (true all the same: it can go by then), so that no caller hears "after 1
    minutes" or "after 0 minutes"."""
    return max(2, math.ceil((again_at - now).total_seconds() / 60))


def booked_place(post_office: str | None, pin: str | None) -> dict[str, Any]:
    """A booking's place named as the phone names places (voice.said_name): {"name"},
    with "called" and "apart" for an office sharing its name with another of its pincode
    (office_names.told_apart: "Arjunganj branch post office"). A booking made in the app,
    by SMS or by ops keeps the directory's name ("Bettiah HO"); one made in the chat or
    on the phone the name offered there ("Bettiah", "Arjunganj Sub Office"). India Post's
    HO/SO/BO, which nobody says, is never read out."""
    name = (post_office or "").strip()
    if not name:
        return {"name": pin or ""}
    try:
        offices = pincode.post_offices(pin or "")
    except DomainError:  # not in the directory (any more): its name without the suffix
        offices = []
    listed = told_apart([{"name": o.name, "post_office": o.office_name, "district": o.district,
                          "lat": o.lat, "lng": o.lng} for o in offices])
    wanted = name.casefold()
    for key in ("post_office", "name"):  # the directory's name, else the one offered
        for place in listed:
            if (place.get(key) or "").casefold() == wanted:
                return {k: v for k, v in place.items()
                        if k in ("name", "called", "apart") and v is not None}
    return {"name": pincode.display_name(name)}


class VoicePorts(SessionPorts):
    """The dialog's ports for a caller: a confirmed booking also sends its details by SMS
    (the payment link follows from the payments job, by SMS to a caller), or on WhatsApp
    to a caller who stopped our SMS and chats with us there. ``state``: the caller's
    dialog state, whose ``call`` remembers the bookings made in the call in progress."""

    def __init__(self, session: Session, person: Person, conv: Conversation,
                 state: DialogState | None = None) -> None:
        super().__init__(session, person, conv)
        self.state = state
        # The booking a "1 = cancel" of this turn was for, and what cancel answered
        # (cancelled or not, and why): _cancel_unheard tells a caller who hung up.
        self.cancel_answered: tuple[Booking, dict[str, Any]] | None = None

    def _call(self) -> dict[str, Any]:
        """The state of the call in progress ({} if none is known)."""
        return (self.state.data.get("call") or {}) if self.state is not None else {}

    def confirm(self, slots: dict[str, Any]) -> dict[str, Any]:
        """The chat's confirm, with ``pay_minutes``: how long the caller has to pay (until
        the booking's expires_at), which the phone says after the booking's number."""
        done = super().confirm(full_slots(slots))
        if done.get("refused"):
            return done
        booking = self.made  # the booking super().confirm made, not read again
        if booking is not None and booking.expires_at is not None:
            done["pay_minutes"] = payments.minutes_to_pay(booking)  # as its SMS says them
        if booking is not None and self._call():
            self._call().setdefault("booked", []).append(booking.id)
            # Not heard until the caller answers the next prompt (_answer): should the
            # line drop now, the next call says it was made (_booked_unheard).
            self._call().setdefault(UNHEARD, []).append(booking.id)
        key = DETAILS.get(self.reach())  # none where nothing can reach them
        if booking is not None and self.person.phone and key is not None:
            lang = self.person.preferred_language or i18n.DEFAULT_LANGUAGE
            notify.notify_known_phone(
                self.session, self.person, key, lang=lang,
                dedupe_key=details_key(booking.id), booking_id=booking.id,
                **details_params(
                    key, lang, ref=booking.reference, pickup=slots["pickup"]["name"],
                    drop=slots["drop"]["name"],
                    tier=i18n.t(f"tier.{slots['tier']}", lang,
                                hours=booking_service.tier_hours(slots["tier"])),
                    total_paise=booking.total_paise))
        return done

    def _cancel_quote(self, booking: Booking) -> dict[str, Any]:
        """The chat's quote, its ``drop`` the place as the phone names it (booked_place)."""
        return {**super()._cancel_quote(booking),
                "drop": booked_place(booking.drop_post_office, booking.drop_pincode)}

    def drop_place(self, reference: str) -> dict[str, Any] | None:
        booking = self._mine(reference)
        return (booked_place(booking.drop_post_office, booking.drop_pincode)
                if booking is not None else None)

    def cancel(self, reference: str, shown: dict[str, Any]) -> dict[str, Any]:
        """The chat's cancel; a booking made in this same call has its details taken back
        (take_back_details)."""
        result = super().cancel(reference, shown)
        booking = self._mine(reference)
        if booking is not None:
            self.cancel_answered = (booking, result)
        if result.get("done") and booking is not None and (
                booking.id in self._call().get("booked", [])):
            take_back_details(self.session, self.person, booking)
        return result

    def payment_link(self, reference: str, *, by_sms: bool = False) -> dict[str, Any] | None:
        """The chat's payment_link; asked to send the link again when one went to them
        less than LINK_AGAIN_EVERY ago (nothing goes now), it says so: ``again_in_minutes``,
        when it can go again (link_again_in)."""
        booking = self._mine(reference) if by_sms else None
        before = self._messages_about(booking.id) if booking is not None else 0
        link = super().payment_link(reference, by_sms=by_sms)
        if (link is not None and booking is not None and link["url"] and self.person.phone
                and self.reach() in DETAILS  # else nothing could go: the dialog says why
                and self._messages_about(booking.id) == before):
            now = clock.now()
            again_at = payments.link_again_at(self.session, booking, self.person.phone, now)
            link["again_in_minutes"] = link_again_in(
                now, again_at or now + payments.LINK_AGAIN_EVERY)
        return link

    def send_link_to(self, reference: str, phone: str) -> str:
        """Send their unpaid booking's payment link by SMS to another mobile (a relative's:
        the caller's phone may open no link): "sent", "not_ready" (the link is still being
        made), "not_payable" (paid, closed, out of time, or not theirs), "limit" (the
        booking's OTHER_PAYERS such SMS went already), "day_limit" (the caller's
        OTHER_PAYERS_A_DAY over all their bookings did) or "stopped" (that number stopped
        our SMS). The same number again within payments.LINK_AGAIN_EVERY is told sent (it
        was, just now) and sends nothing. The caller's own number sends nothing here:
        "own", and the dialog sends the link again as tracking does (payment_link with
        by_sms: the way messages reach them now, at most once per LINK_AGAIN_EVERY), and
        says what that did."""
        booking = self._mine(reference)
        if booking is None or booking.status != BookingStatus.AWAITING_PAYMENT.value or (
                booking.expires_at is not None and booking.expires_at <= clock.now()):
            return "not_payable"
        url = payments.payment_url(self.session, booking)
        if url is None:
            return "not_ready"
        if phone == self.person.phone:
            return "own"
        now = clock.now()
        prefix = notify.link_other_prefix(booking.id)
        to_number = f"{prefix}{outbox.number_hash(phone)[:16]}-"
        sent_before = [key or "" for key in self.session.scalars(
            select(OutboxMessage.dedupe_key).where(
                OutboxMessage.booking_id == booking.id,
                OutboxMessage.dedupe_key.like(f"{prefix}%")))]
        # The same number within LINK_AGAIN_EVERY of when it went (not in the same slot of
        # the clock: 20 seconds apart across a slot's edge was two SMS, and one of the
        # booking's OTHER_PAYERS spent).
        if any(key.startswith(to_number)
               and _other_link_sent_at(key) > now - payments.LINK_AGAIN_EVERY
               for key in sent_before):
            return "sent"
        if len(sent_before) >= OTHER_PAYERS:
            return "limit"
        if self._links_to_others_since(now - timedelta(days=1)) >= OTHER_PAYERS_A_DAY:
            return "day_limit"
        key = f"{to_number}{_SENT_AT}{int(now.timestamp())}"
        lang = self.person.preferred_language or i18n.DEFAULT_LANGUAGE
        sent = notify.notify_phone(
            self.session, phone, "pay.link_other", booking_id=booking.id,
            lang=None if _has_language(self.session, phone) else lang, dedupe_key=key,
            ref=booking.reference, total_paise=booking.total_paise, url=url,
            minutes=payments.minutes_to_pay(booking), asker=(self.person.phone or "")[-4:])
        return "sent" if sent else "stopped"

    def _links_to_others_since(self, since: datetime) -> int:
        """The payment-link SMS the caller had sent to other numbers, over all their
        bookings, after ``since`` (by when their keys say they went: _other_link_sent_at)."""
        keys = self.session.scalars(select(OutboxMessage.dedupe_key).join(
            Booking, Booking.id == OutboxMessage.booking_id).where(
            Booking.customer_id == self.person.id,
            OutboxMessage.dedupe_key.like(f"{notify.link_other_prefix('%')}%")))
        return sum(1 for key in keys if _other_link_sent_at(key or "") > since)

    def _messages_about(self, booking_id: int) -> int:
        return _messages_to(self.session, self.person, booking_id)

    def reach(self) -> str:
        """How a message about the caller's booking (its link, details, codes) reaches
        them now, as notify.send_to_person sends it: "sms"; "whatsapp" (they stopped our
        SMS and chat with us there, inside the 24-hour window or with a template); "chat"
        (they stopped our SMS and chat with us, but nothing can go there until they
        write: also when they blocked our WhatsApp, which their next message there
        reopens); "none" (they stopped our SMS and have no WhatsApp with us, or stopped
        it too: START is needed)."""
        person = self.person
        if person.phone and not person.sms_opted_out:
            return "sms"
        if person.opted_out and not person.wa_blocked:  # WhatsApp stopped too
            return "none"
        conv = self.session.scalar(
            select(Conversation).where(Conversation.person_id == person.id,
                                       Conversation.channel == "whatsapp")
            .order_by(Conversation.last_inbound_at.desc().nulls_last()).limit(1))
        if conv is None:
            return "none"
        if person.opted_out:  # her block (63014): nothing goes there until she writes
            return "chat"
        # Her SMS stopped: WhatsApp is the only way, so notify takes the default
        # language's template when hers has none (its few words in that language).
        if notify.in_whatsapp_window(conv) or notify.whatsapp_template(person, only_way=True):
            return "whatsapp"
        return "chat"

    def payment_over(self, reference: str) -> bool:
        """Whether the caller's booking can no longer be paid, so it may be booked again:
        closed because its time to pay ran out (expired, on the link they were sent) or its
        link was stopped in the gateway's dashboard (said as such: booking_status
        ``link_stopped``), or waiting for payment past its time (the sweep closes it in a
        minute). Not one closed because its link could not be made (payments.
        _close_unlinked: refused by the gateway, or not made in its time; no link row):
        they never had a link whose time could run out, and hear why it closed
        (booking_status: ``no_link``), as the chat tells it."""
        booking = self._mine(reference)
        if booking is None:
            return False
        if booking.status == BookingStatus.EXPIRED.value:
            return self.session.scalar(select(PaymentLink.id).where(
                PaymentLink.booking_id == booking.id).limit(1)) is not None
        return (booking.status == BookingStatus.AWAITING_PAYMENT.value
                and booking.expires_at is not None and booking.expires_at <= clock.now())

    def overdue_closed(self, reference: str) -> bool | None:
        """Whether the caller's booking whose time to pay ran out is closed, so the same
        parcel may be booked again: True once expired. None while it still waits for
        payment past its time: the expiry sweep closes it a minute on, after asking the
        gateway (a payment made in time whose webhook is late is recorded, not refunded),
        and a webhook must not wait on the gateway, so the caller is asked to call again.
        False if it was paid meanwhile, or is not theirs."""
        booking = self._mine(reference)
        if booking is None:
            return False
        if booking.status == BookingStatus.EXPIRED.value:
            return True
        if self.payment_over(reference):
            return None
        return False

    def booking_slots(self, reference: str) -> dict[str, Any] | None:
        """The caller's booking as the dialog's slots, to book the same parcel again (the
        places, the receiver, the parcel, the speed); None if not theirs."""
        booking = self._mine(reference)
        if booking is None or not booking.parcels:
            return None
        parcel = booking.parcels[0]

        def place(end: str) -> dict[str, Any]:
            office = getattr(booking, f"{end}_post_office")
            pin = getattr(booking, f"{end}_pincode")
            # Named as the phone names places: "Bettiah", never the app's "Bettiah HO".
            return {"lat": getattr(booking, f"{end}_lat"), "lng": getattr(booking, f"{end}_lng"),
                    "pincode": pin, "post_office": office, **booked_place(office, pin),
                    "district": None, "landmark": getattr(booking, f"{end}_landmark")}

        return {"pickup": place("pickup"), "drop": place("drop"),
                "recipient_name": booking.recipient_name,
                "recipient_phone": booking.recipient_phone,
                "category": parcel.category, "size": parcel.size_bucket,
                "weight": parcel.weight_bucket, "value_paise": parcel.declared_value_paise,
                "fragile": parcel.fragile, "tier": booking.speed_tier}

    def pickup_code_left(self, reference: str) -> bool:
        """Whether the caller may hear a new pickup code for the booking now (see
        read_pickup_code): theirs, its first leg taken and not picked up, reads left."""
        booking = self._mine(reference)
        return booking is not None and _waiting_first_leg(self.session, booking) is not None and (
            codes_read(self.session, booking.id) < MAX_CODES_READ)

    def pickup_code(self, reference: str) -> dict[str, Any]:
        """{"code": a new pickup code}, or {"refused": "limit" | "not_now"}."""
        booking = self._mine(reference)
        if booking is None:
            return {"refused": "not_now"}
        return read_pickup_code(self.session, self.person, booking)


# The dedupe key of a payment link sent to another number ends in when it went, by the
# service's clock: "paylink-<booking>-other-<number's hash>-s<Unix seconds>".
_SENT_AT = "s"


def _other_link_sent_at(key: str) -> datetime:
    """When the link whose dedupe key is ``key`` went to another number. A key written
    before they said the second ends in its payments.LINK_AGAIN_EVERY slot of the clock:
    the slot's start. A key of no known form counts as just sent."""
    tail = key.rsplit("-", 1)[-1]
    if tail.startswith(_SENT_AT) and tail[len(_SENT_AT):].isdigit():
        return datetime.fromtimestamp(int(tail[len(_SENT_AT):]), UTC)
    if tail.isdigit():
        return datetime.fromtimestamp(
            int(tail) * payments.LINK_AGAIN_EVERY.total_seconds(), UTC)
    return clock.now()


def _has_language(session: Session, phone: str) -> bool:
    """Whether the number is someone's whose language we know (their messages go in it;
    else in the caller's, a relative's likely one)."""
    return session.scalar(select(Person.preferred_language).where(
        Person.phone == phone)) is not None


def _messages_to(session: Session, person: Person, booking_id: int) -> int:
    """How many messages about the booking were written to the person (SMS or WhatsApp)."""
    if not person.phone:
        return 0
    to = [outbox.address("sms", person.phone), outbox.address("whatsapp", person.phone)]
    return int(session.scalar(select(func.count()).select_from(OutboxMessage).where(
        OutboxMessage.booking_id == booking_id, OutboxMessage.to_addr.in_(to))) or 0)


def take_back_details(session: Session, person: Person, booking: Booking) -> None:
    """The caller cancelled, in the call it was made in, a booking whose details SMS was
    queued when it was made. Not tried yet (the worker is behind), it is withdrawn
    (outbox.withdraw: under its row lock, so no sender can be claiming it). Once the details
    or the payment link went (a worker sends within seconds), the caller is sent one more
    message saying the booking is cancelled, so what they read matches what they heard."""
    row_id = session.scalar(select(OutboxMessage.id).where(
        OutboxMessage.dedupe_key == details_key(booking.id)))
    if row_id is not None and outbox.withdraw(session, row_id):
        log.info("details of a booking cancelled in its call withdrawn",
                 extra={"booking_id": booking.id})
    if person.phone and _messages_to(session, person, booking.id):
        notify.notify_phone(session, person.phone, CANCELLED,
                            lang=person.preferred_language or i18n.DEFAULT_LANGUAGE,
                            dedupe_key=f"ivr-cancelled-{booking.id}", booking_id=booking.id,
                            ref=booking.reference)


# --- a pickup code, read out on the phone ------------------------------------------------

# A customer whose pickup-code SMS never came (dispatch.pickup_code_lost makes a new one,
# which may be lost too) hears a code on the phone. Codes are kept only as hashes, so a
# new one is made and the old one is void. Caller ID can be spoofed: someone calling with
# the customer's number would hear a working code and void the customer's. So at most
# this many codes are read out per booking (audit_log rows, which cannot be deleted), each
# read is logged, and ops hear by SMS the first time, to check that pickup.
MAX_CODES_READ = 3
CODE_READ = "ivr_pickup_code_read"  # dispatch.IVR_CODE_READ: a late failure report spares it


def codes_read(session: Session, booking_id: int) -> int:
    return int(session.scalar(select(func.count()).select_from(AuditEntry).where(
        AuditEntry.action == CODE_READ, AuditEntry.target == f"booking:{booking_id}")) or 0)


def _waiting_first_leg(session: Session, booking: Booking) -> Leg | None:
    from core.services import dispatch

    if booking.status in dispatch.CLOSED_BOOKING:
        return None
    leg = session.scalar(select(Leg).where(Leg.booking_id == booking.id, Leg.sequence == 1))
    return leg if leg is not None and leg.status == LegStatus.ASSIGNED.value else None


def read_pickup_code(session: Session, person: Person, booking: Booking) -> dict[str, Any]:
    """A new pickup code for the customer's booking, to be read out on their call: its
    first leg taken by a rider and not picked up; at most MAX_CODES_READ per booking. The
    drop code stays; the tries start fresh but bounded, as for a lost code
    (dispatch.tries_after_lost_code). {"code"}, or {"refused": "limit" | "not_now"}."""
    from core.services import dispatch

    dispatch.lock_legs(session, booking.id)  # leg before booking, as dispatch locks them
    leg = _waiting_first_leg(session, booking)
    if leg is None:
        return {"refused": "not_now"}
    read = codes_read(session, booking.id)
    if read >= MAX_CODES_READ:
        log.warning("pickup code asked on a call past the limit",
                    extra={"booking_id": booking.id, "leg_id": leg.id})
        return {"refused": "limit"}
    drop_hash, failures = leg.drop_otp_hash, dispatch.tries_after_lost_code(session, leg, "pickup")
    # The code it replaces may still wait in the outbox (Twilio away): never sent now.
    outbox.withdraw_leg_codes(session, leg.id, kinds=("pickup",))
    code, _ = booking_service.issue_leg_otps(leg)
    leg.drop_otp_hash, leg.otp_failures = drop_hash, failures
    session.add(AuditEntry(actor=f"customer:{person.id}", action=CODE_READ,
                           target=f"booking:{booking.id}",
                           details={"leg_id": leg.id, "channel": CHANNEL, "read": read + 1}))
    log.warning("a new pickup code was read out on a call",
                extra={"booking_id": booking.id, "leg_id": leg.id, "read": read + 1})
    if read == 0:
        dispatch.alert_ops(session, "ivr.sms.ops_code_read",
                           dedupe_key=f"leg-{leg.id}-ivrcode-ops", booking_id=booking.id,
                           ref=booking.reference, job=dispatch.job_code(leg))
    return {"code": code}


# --- a code read out is not kept in the call's stored answers -------------------------

# The answer of the turn that read a pickup code holds it in plain text (ivr.code.said),
# stored so that Twilio's retry of that webhook, which comes within seconds, hears the
# same. It is blanked once the call is over (its status callback, the caller's next call,
# or our hang-up), and in any case this long after it was read (a status callback lost).
# Both lost (Redis lost the job, and no callback came), the daily retention run blanks the
# answers that say a code once CODE_KEPT_FOR_CALL has passed: those stored under
# CODE_CHANNEL (the turn that read it marks its answer so when it is stored, so a later
# release that rewords the code texts still finds it), and those stored before answers
# were marked, by today's texts (says_a_code).
CODE_SAID = "ivr.code.said"
CODE_SAID_AGAIN = "ivr.code.again"  # the same code, said again in the call on 1
CODE_KEYS = frozenset({CODE_SAID, CODE_SAID_AGAIN})
CODE_ANSWER_KEPT = timedelta(minutes=2)
# inbound_events.channel of a stored answer that reads a code out (CHANNEL otherwise).
CODE_CHANNEL = "voice-code"
# session.info: the "CallSid:turn" of the answers of this transaction that read a code.
_CODE_READ_IN = "ivr_code_read_in"
FORGET_CODES_JOB = "core.services.ivr.forget_code_answers"
# The code kept in the call's state to say again (voice.HEARD_CODE) goes when the call
# ends; should its end never be reported, this long after it was read (longer than a
# call of MAX_TURNS answers lasts).
CODE_KEPT_FOR_CALL = timedelta(minutes=30)
FORGET_HEARD_JOB = "core.services.ivr.forget_heard_code"
# What a blanked answer says to a (very late) retry of its webhook: the call is over.
BLANKED_ANSWER = '<?xml version="1.0" encoding="UTF-8"?><Response><Hangup/></Response>'


@functools.lru_cache(maxsize=4)
def _code_said_patterns(directory: str) -> tuple[re.Pattern[str], ...]:
    """The texts that read a code out (CODE_KEYS, every language) as patterns: their words
    as written, any run of spaces as any other, the code as digits said one by one, any
    other field (the booking's number) as anything."""
    found = []
    for lang in i18n.LANGUAGES:
        for key in sorted(CODE_KEYS):
            parts = []
            for literal, name, _spec, _conv in string.Formatter().parse(i18n.raw(key, lang)):
                parts += [r"\s+" if word.isspace() else re.escape(word)
                          for word in re.split(r"(\s+)", literal) if word]
                if name is not None:
                    parts.append(_SPELLED if name == "digits" else ".+?")
            found.append(re.compile("".join(parts), re.DOTALL))
    return tuple(found)


_SPELLED = r"[0-9](?:[\s,]*[0-9])*"  # spoken.spell_digits: "4 8 2 9", "8 4 5, 4 3 8"


def says_a_code(answer: str) -> bool:
    """Whether a stored call answer (TwiML) reads a pickup code out, in any language."""
    text = html.unescape(answer)
    return any(p.search(text) for p in _code_said_patterns(str(i18n.catalog_dir())))


def _blank_answers(session: Session, sid: str, turns: list[int]) -> int:
    """Blank the stored answers of these turns of call ``sid``; how many were changed."""
    if not turns:
        return 0
    e = InboundEvent
    changed = session.scalars(
        update(e).where(e.provider == PROVIDER,
                        e.external_id.in_([f"{sid}:{n}" for n in turns]),
                        e.response_body.is_not(None), e.response_body != BLANKED_ANSWER)
        .values(response_body=BLANKED_ANSWER).returning(e.id)).all()
    return len(changed)


def forget_code_answers(sid: str, turns: list[int]) -> int:
    """Job: blank the stored answers of call ``sid`` that read a pickup code, once no
    retry of them can come (CODE_ANSWER_KEPT after the read)."""
    with transaction() as session:
        return _blank_answers(session, sid, turns)


def forget_heard_code(conv_id: int, sid: str) -> bool:
    """Job: drop the code kept to say again in call ``sid`` (voice.HEARD_CODE), its end
    never reported; a later call keeps its own. True if one was dropped."""
    with transaction() as session:
        conv = session.scalar(select(Conversation).where(Conversation.id == conv_id)
                              .with_for_update())
        if conv is None:
            return False
        state = load_state(conv)
        if (state.data.get("call") or {}).get("sid") not in (sid, None):
            return False
        if state.data.pop(HEARD_CODE, None) is None:
            return False
        save_state(conv, state)
        return True


def _code_read(session: Session, conv_id: int, state: DialogState, sid: str, turn: int,
               outs: list[Out]) -> None:
    """Remember a turn that reads a pickup code, to blank its answer when the call is
    over, and schedule that for CODE_ANSWER_KEPT from now all the same (and, for a new
    code, dropping the copy kept to say it again, CODE_KEPT_FOR_CALL from now)."""
    said = {out.key for out in outs if isinstance(out, Say)} & CODE_KEYS
    if not said:
        return
    state.data["call"].setdefault("coded", []).append(turn)
    session.info.setdefault(_CODE_READ_IN, set()).add(f"{sid}:{turn}")
    job_id = f"ivr-code-{sid}-{turn}"

    def schedule() -> None:
        q = queue("default")
        if q.fetch_job(job_id) is None:
            q.enqueue_in(CODE_ANSWER_KEPT, FORGET_CODES_JOB, sid, [turn], job_id=job_id,
                         result_ttl=3600, failure_ttl=7 * 86400)

    after_commit(session, schedule)
    if CODE_SAID not in said:
        return
    kept_id = f"ivr-heard-{sid}-{turn}"

    def schedule_forget_kept() -> None:
        q = queue("default")
        if q.fetch_job(kept_id) is None:
            q.enqueue_in(CODE_KEPT_FOR_CALL, FORGET_HEARD_JOB, conv_id, sid, job_id=kept_id,
                         result_ttl=3600, failure_ttl=7 * 86400)

    after_commit(session, schedule_forget_kept)


def _end_of_call(session: Session, state: DialogState) -> None:
    """The call in ``state`` is over: blank the answers that read a code, then close it."""
    current = state.data.get("call") or {}
    if current.get("sid"):
        _blank_answers(session, current["sid"], list(current.get("coded") or []))
    _close_call(state)


# --- one turn --------------------------------------------------------------------------

# A booking the caller may not have heard made: the line dropped as they pressed "book",
# or its answer came too late and Twilio played the Fallback URL's. Without a word of it
# they would book the same parcel again on calling back (the draft went with the booking).
# Kept in the call's state (``call[UNHEARD]``: the bookings made, or said, in the turn
# last answered; the caller's next answer shows they heard it), then, when the call
# closes, in the conversation's (``data[UNHEARD]``), where the next call takes it: said
# at its start while the booking still waits for payment in its time (_booked_unheard).
UNHEARD = "booked_unheard"


def _close_call(state: DialogState) -> None:
    """The call is over: forget it (and a code kept to say again), keep a half-finished
    booking as a draft, and the bookings the caller may not have heard made (UNHEARD)."""
    unheard = (state.data.pop("call", None) or {}).get(UNHEARD)
    if unheard:
        state.data[UNHEARD] = unheard
    state.data.pop("call_action", None)
    state.data.pop(HEARD_CODE, None)
    step = VOICE_DIALOG.steps.get(state.step)
    if step is not None and step.group == BOOKING and state.slots:
        state.data["draft_step"] = state.step


def _language(person: Person) -> str:
    return person.preferred_language or i18n.DEFAULT_LANGUAGE


def chosen_language(phone: str, *, timeout_ms: int | None = None) -> str | None:
    """The language the person with this number chose with us, if any. Read only; with
    ``timeout_ms``, a read that takes longer fails (raises)."""
    with transaction() as session:
        if timeout_ms is not None:
            session.execute(text(f"SET LOCAL statement_timeout = {int(timeout_ms)}"))
        chosen = session.scalar(select(Person.preferred_language).where(Person.phone == phone))
    return chosen if chosen in i18n.LANGUAGES else None


def languages_of_caller(phone: str) -> tuple[str, ...]:
    """The languages to tell a caller we cannot serve (a foreign number) why: the one they
    chose with us (a WhatsApp customer abroad), else Hindi and then English. Read only."""
    chosen = chosen_language(phone)
    if chosen:
        return (chosen,)
    return tuple(dict.fromkeys((i18n.DEFAULT_LANGUAGE, "en")))


def voice_turn(session: Session, call: CallRequest) -> VoiceTurn:
    """Answer one webhook of a call: start it, or apply the caller's keys to the dialog."""
    msg = InboundMessage(channel=CHANNEL, sid=call.sid, from_addr=call.phone,
                         to_addr=call.to_addr, body="", contact=call.phone, phone=call.phone)
    person, conv = contact_for(session, msg)
    previous = conv.last_inbound_at
    state = load_state(conv)
    ports = VoicePorts(session, person, conv, state)
    current = state.data.get("call") or {}
    if current.get("sid") == call.sid and current.get("answered", -1) >= call.turn:
        raise AlreadyAnswered  # a retry, or a twin that waited for this row's lock
    if call.turn > 0 and current.get("sid") != call.sid:
        # Keys of a call that is not this number's live one: its status callback came
        # first (the caller hung up), or the number called again and that call took
        # over (a dropped line Twilio still holds). Starting it again would close the
        # live call and restart each on the other's keys: it ends, nothing changes. A
        # caller still on it (another call is live) hears why: the keys they just pressed
        # did nothing. (A retry of a turn of it that did something is answered from
        # record: _process_once finds its answer stored.)
        # The keys of a call whose status callback was handled just before them, at "book
        # it?" or "cancel it?", are its answer all the same (LATE_KEYS).
        if current or not _takes_late_keys(state, call):
            said: list[Out] = [Say("ivr.taken_over")] if current.get("sid") else []
            return VoiceTurn(_language(person), said, action="hangup")
    before, step = _language(person), conv.step  # a failed turn may leave them unreadable
    try:
        late = call.turn > 0 and current.get("sid") != call.sid
        if late:
            _reopened_for_late_keys(state)
            _answer(state, ports, person, call)  # said to nobody: the caller hung up
            state.data.pop("call_action", None)
            _not_cancelled_unheard(session, state, person, call.sid)
            _cancel_unheard(session, ports, person, call.sid)
            outs: list[Out] = []
        elif call.turn == 0 or current.get("sid") != call.sid:
            outs = _start(session, state, ports, person, previous, call.sid)
        else:
            outs = _answer(state, ports, person, call)
        state.data.pop(NOT_CANCELLED, None)  # heard on the line, or told by SMS: done with
        action = "hangup" if late else state.data.pop("call_action", None) or "gather"
        _code_read(session, conv.id, state, call.sid, call.turn, outs)
        state.data["call"]["answered"] = call.turn
        if action == "dial":  # for operator_took and dial_ended, after the call's close
            state.data["dial"] = {"sid": call.sid}
        if action != "gather":
            _end_of_call(session, state)
        # Saved by the statement that records the turn's answer (_process_once), the
        # turn's last; nothing after this reads the conversation's row.
        at = clock.now()
        session.info[_STATE_TO_SAVE] = functools.partial(with_state_saved, conv=conv,
                                                         state=state, at=at)
    except Exception as exc:
        # Nothing of this turn is kept (its transaction rolls back); the draft stays.
        log.exception("voice turn failed", extra={"step": step})
        raise inbound.TurnFailed(VoiceTurn(before, [Say("common.error_try_later")],
                                           action="hangup")) from exc
    turn = VoiceTurn(_language(person), outs, action=action,
                     keypad=ENTRY_DIGITS.get(state.step, 1), next_turn=call.turn + 1)
    if action == "dial":
        turn.dial = get_settings().ops_phone
        turn.screen = (conv.id, call.sid)
    return turn


def _start(session: Session, state: DialogState, ports: VoicePorts, person: Person,
           previous: Any, sid: str) -> list[Out]:
    """A new call: close the last one, greet, then the language list, a draft, or the menu."""
    if state.data.get("call"):
        _end_of_call(session, state)
    state.data.pop(LATE_KEYS, None)  # the last call's keys come too late now
    state.data["call"] = {"sid": sid, "turns": 0, "silences": 0}
    ctx = Ctx(state, ports, _language(person))
    idle = clock.now() - previous if previous is not None else None
    if has_draft(state.data) and (idle is None or idle > DRAFT_KEPT):
        clear_draft(ctx)
    if person.preferred_language is None:
        return [Say("ivr.welcome", lang=i18n.DEFAULT_LANGUAGE)] + engine.enter(
            VOICE_DIALOG, ctx, VOICE_DIALOG.language)
    first = "resume" if has_draft(state.data) else MENU
    outs = ([Say("ivr.welcome"), *_booked_unheard(session, state, ctx, person), Say("ivr.hint")]
            + engine.enter(VOICE_DIALOG, ctx, first))
    if state.step in (MENU, "resume"):
        # A phone is often a family's: whoever calls from it after one of them chose a
        # language hears, in each other one, the key to the language list ("for Telugu,
        # press 4"). Said once, at the call's first question (the menu, or "finish your
        # booking?", which takes the menu's 4 too), to keep calls short.
        outs += [Say("ivr.other_language", lang=lang) for lang in i18n.LANGUAGES
                 if lang != ctx.lang]
    return outs


def _booked_unheard(session: Session, state: DialogState, ctx: Ctx, person: Person
                    ) -> list[Out]:
    """At a call's start, each booking the caller's last call made and they may not have
    heard made (UNHEARD) that still waits for payment in its time: its number, and how its
    link comes. Said again at each call's start until an answer shows it was heard; one
    paid, closed or out of time is forgotten."""
    said: list[Out] = []
    kept: list[int] = []
    for booking_id in state.data.pop(UNHEARD, None) or []:
        booking = session.get(Booking, booking_id)
        if booking is None or booking.customer_id != person.id or (
                booking.status != BookingStatus.AWAITING_PAYMENT.value) or (
                booking.expires_at is not None and booking.expires_at <= clock.now()):
            continue
        kept.append(booking_id)
        said += booked_before(ctx, booking.reference, payments.minutes_to_pay(booking))
    if kept:
        state.data["call"][UNHEARD] = kept
    return said


def _answer(state: DialogState, ports: VoicePorts, person: Person,
            call: CallRequest) -> list[Out]:
    call_state = state.data["call"]
    call_state["turns"] = call_state.get("turns", 0) + 1
    # An answer (keys, or a Gather's silence) comes once the last prompt was played: a
    # booking it said was made was heard.
    call_state.pop(UNHEARD, None)
    ctx = Ctx(state, ports, _language(person))
    step = VOICE_DIALOG.step(state.step)
    if call_state["turns"] > MAX_TURNS:
        state.data["call_action"] = "hangup"
        return _too_long(state, ctx, person)
    keys = "".join(ch for ch in call.digits if ch in "0123456789*#")
    # "*" repeats the question (ivr.hint); a Gather of several digits does not end on it,
    # so keys pressed after it come in the same answer: the caller started again, and the
    # keys after the last "*" are the answer. A "*" last (or alone) asks for the repeat.
    _, star, after = keys.rpartition("*")
    repeat = bool(star) and not after.strip("#")
    if star and not repeat:
        keys = after
    if step.name == VOICE_DIALOG.language and not repeat and not _list_takes(keys, person):
        return _list_again(state, ctx, step, person)
    if not keys:
        call_state["silences"] = call_state.get("silences", 0) + 1
        if call_state.get(WAITING) == step.name:
            return _waited(state, ctx, step)
        if step.name in END_ON_SILENCE or call_state["silences"] > MAX_SILENT_REPEATS + 1:
            state.data["call_action"] = "hangup"
            # After a booking or the pickup code the caller has all they called for:
            # thanks and goodbye (the hang-up says them), not "we did not get an answer,
            # call again later".
            return [] if step.name in DONE_ON_SILENCE else [Say("ivr.no_answer")]
        if call_state["silences"] > MAX_SILENT_REPEATS:
            state.data["after_offer"] = step.name
            if step.group is not None:
                state.data["draft_step"] = step.name
            return engine.enter(VOICE_DIALOG, ctx, VOICE_DIALOG.offer_person)
        return [Say("ivr.silence")] + engine.ask_again(VOICE_DIALOG, ctx, step)
    call_state["silences"] = 0
    call_state.pop(LIST_TRIES, None)
    if repeat:
        # A repeat: not a miss, nothing changes. Through the engine, which turns a prompt's
        # Redirect (a fare no vehicle on the active card carries) into the step it names.
        return engine.ask_again(VOICE_DIALOG, ctx, step)
    outs = engine.turn(VOICE_DIALOG, state, UserInput(text=keys.rstrip("#")), ports,
                       ctx.lang)
    if (step.name == VOICE_DIALOG.offer_person == state.step
            and state.misses >= engine.MAX_MISSES):
        # The engine offers a person after MAX_MISSES misses, and so never gives up at
        # the offer itself: wrong keys there would loop to MAX_TURNS. They end the call
        # as silence there does.
        state.data["call_action"] = "hangup"
        return [Say(VOICE_DIALOG.not_understood), Say("ivr.no_answer")]
    _told_to_wait(call_state, state, state.data.pop(TOLD_TO_WAIT, None))
    _page_turn(call_state, state.data.pop(PAGE_TURNED, None))
    _finished(call_state, state.data.pop(FINISHED, None))
    return outs


# call[WAITING]: the step at which the caller was told to wait and press a key again in a
# minute (voice.TOLD_TO_WAIT), while they are still at it.
WAITING = "waiting"


def _told_to_wait(call_state: dict[str, Any], state: DialogState, told: str | None) -> None:
    """Remember where the caller was told to wait (``told``: voice.TOLD_TO_WAIT), until an
    answer takes them from that step."""
    if told is not None:
        call_state[WAITING] = told
    elif call_state.get(WAITING) != state.step:
        call_state.pop(WAITING, None)


def _waited(state: DialogState, ctx: Ctx, step: Step) -> list[Out]:
    """Silence at a step where the caller was told to wait and press a key again ("the
    link is still being made: press 2 again in a minute"): they did as told. The prompt
    again, with no "we did not hear a key", MAX_SILENT_REPEATS times (some 20 seconds
    each: its words and the Gather's wait); then the call ends as silence at that step
    ends it (a done step: thanks and goodbye), never with an offer of a person."""
    if state.data["call"]["silences"] > MAX_SILENT_REPEATS:
        state.data["call_action"] = "hangup"
        return [] if step.name in DONE_ON_SILENCE else [Say("ivr.no_answer")]
    return engine.ask_again(VOICE_DIALOG, ctx, step)


def _finished(call_state: dict[str, Any], done: str | None) -> None:
    """The answer finished something (voice.FINISHED: a booking made, a cancel, a track):
    the call's count of answers starts again, so a shopkeeper booking several parcels in
    one call is not cut in the third. Once per thing in a call: a caller tracking the same
    booking round and round (or pressing * for ever) is still ended at MAX_TURNS."""
    if not done or done in call_state.get("finished", []):
        return
    call_state.setdefault("finished", []).append(done)
    call_state["turns"] = 0


def _too_long(state: DialogState, ctx: Ctx, person: Person) -> list[Out]:
    """The goodbye of a call at MAX_TURNS. A caller who never chose a language (still at
    the list, pressing * or keys it has not) hears it in every language, their own (the
    default, which the goodbye is in) last, as the list's own goodbye (_list_again). One
    with a booking half made, kept as a draft when the call closes (_close_call), is told
    it is kept and to call again to finish it, not to call again as if all was lost."""
    if person.preferred_language is None:
        return [Say("ivr.too_long", lang=lang)
                for lang in sorted(i18n.LANGUAGES, key=lambda lang: lang == ctx.lang)]
    return [Say("ivr.too_long_kept" if _draft_kept(state) else "ivr.too_long")]


def _draft_kept(state: DialogState) -> bool:
    """Whether closing the call now keeps a draft that the next call offers (has_draft)."""
    step = VOICE_DIALOG.steps.get(state.step)
    in_booking = step is not None and step.group == BOOKING and bool(state.slots)
    draft_step = state.data.get("draft_step") or (state.step if in_booking else None)
    return has_draft({**state.data, "draft_step": draft_step})


# call["list_tries"]: answers in a row at the language list that chose nothing from it.
LIST_TRIES = "list_tries"


def _list_takes(keys: str, person: Person) -> bool:
    """Whether keys pressed at the language list are an answer it takes: a language's key,
    or 0 (the menu) from a caller who has a language and came from the menu's 4."""
    keys = keys.rstrip("#")
    if listed_language(keys) is not None:
        return True
    return keys == "0" and person.preferred_language is not None


def _list_again(state: DialogState, ctx: Ctx, step: Step, person: Person) -> list[Out]:
    """Silence or a key the list has not, at the language list: the list again, in every
    language, with no "wrong key" nor "no key pressed" and no offer of a person, which
    could only be said in one language (Hindi, for a caller who never chose one) and
    lead to a person whose connecting, busy or call-back words are all in it. After
    MAX_SILENT_REPEATS + 1 repeats, as silence elsewhere ends a call, the call ends with
    ivr.no_answer: in every language, the caller's own (which the goodbye is in) last, to
    a caller who never chose one; in his own to one who did and came from the menu's 4
    (as _too_long says it), not in eight languages he did not ask for."""
    call_state = state.data["call"]
    call_state[LIST_TRIES] = call_state.get(LIST_TRIES, 0) + 1
    if call_state[LIST_TRIES] > MAX_SILENT_REPEATS + 1:
        state.data["call_action"] = "hangup"
        if person.preferred_language is not None:
            return [Say("ivr.no_answer")]
        return [Say("ivr.no_answer", lang=lang)
                for lang in sorted(i18n.LANGUAGES, key=lambda lang: lang == ctx.lang)]
    return engine.ask_again(VOICE_DIALOG, ctx, step)


def _page_turn(call_state: dict[str, Any], turned: dict[str, Any] | None) -> None:
    """A 9 that turned a village list to a page not heard yet in this call is not one of
    its MAX_TURNS: a caller whose village is on page 18 of a big pincode's list, for the
    pickup and again for the drop, would otherwise be hung up on before booking. Pages
    heard before (the list gone round, or the same pincode keyed again) count: a caller
    going round and round is still ended."""
    if not turned:
        return
    heard = call_state.setdefault("pages", {})
    if turned["page"] > heard.get(turned["list"], 0):
        heard[turned["list"]] = turned["page"]
        call_state["turns"] -= 1


def call_status(phone: str, sid: str, status: str) -> bool:
    """Twilio's call status callback, in its own transaction; True if a call was closed."""
    if status not in ENDED:
        return False
    with transaction() as session:
        return end_call(session, phone, sid, status)


def end_call(session: Session, phone: str, sid: str, status: str) -> bool:
    """A finished call closes its session (the draft is kept for a call back)."""
    if status not in ENDED:
        return False
    conv = session.scalar(select(Conversation).where(
        Conversation.channel == CHANNEL, Conversation.contact == phone).with_for_update())
    if conv is None:
        return False
    state = load_state(conv)
    dial = state.data.get("dial") or {}
    if dial.get("sid") == sid and (not dial.get("taken") or DIAL_DONE in dial):
        # The caller hung up while the operators' phone rang (or heard who calls): a key
        # pressed there now takes nobody. A taken one stays for dial_ended, which Twilio
        # may call after this callback, until it has answered (DIAL_DONE): the call is
        # over, and a retry of that answer would play to nobody.
        state.data.pop("dial")
        if (state.data.get("call") or {}).get("sid") != sid:
            save_state(conv, state)
            return False
    if (state.data.get("call") or {}).get("sid") != sid:
        return False
    late = _late_keys_kept(state)
    _end_of_call(session, state)
    if late is not None:
        state.data[LATE_KEYS] = late
    save_state(conv, state)
    return True


# A caller who presses "1 = book" and hangs up at once: Twilio sends the Gather's request
# with his key and then the call's status callback, and the callback may be handled first
# (it took the conversation's lock first). His key then found the call closed and did
# nothing: no booking, no SMS, no word, though he pressed "book". So the call closed by
# its status callback at one of these steps keeps (``data[LATE_KEYS]``) what its answer
# needs, and the answer to its last question, if it comes within LATE_KEYS_TAKEN of the
# close and before any other call, is taken as it is when the two requests come the other
# way round: the booking is made, its details SMS goes, and the next call says it was
# made (UNHEARD); nothing is said (nobody is on the line). So too at "cancel it?" (the
# caller pressed "1 = cancel" and hung up): the booking is cancelled at the refund and fee
# he heard (its refund, the recipient's notice, a same-call booking's details taken back,
# as on the line), and at those only: changed since (a rider took the job), nothing is
# cancelled, as on the line, and since no "the amount changed, listen again" reaches him,
# an SMS says nothing was cancelled and how to hear the new amount (_not_cancelled_unheard).
# Nor does any word of the line reach him otherwise: one it could not be cancelled at all
# (picked up, or over since) and one cancelled are each told by an SMS (_cancel_unheard).
# Only at these two: elsewhere a late key would move a dead call on for nothing.
LATE_KEY_STEPS = frozenset({"confirm", "cancel_confirm"})
LATE_KEYS = "late_keys"
LATE_KEYS_TAKEN = timedelta(minutes=2)


def _late_keys_kept(state: DialogState) -> dict[str, Any] | None:
    """What the call in ``state``, about to be closed by its status callback, keeps for
    the answer to its last question (LATE_KEYS), if it was asked one that counts."""
    current = state.data.get("call") or {}
    if state.step not in LATE_KEY_STEPS or not current.get("sid"):
        return None
    return {"sid": current["sid"], "turn": int(current.get("answered", 0)) + 1,
            "until": (clock.now() + LATE_KEYS_TAKEN).isoformat(),
            "step": state.step, "call": engine.copy_data(current),
            "draft_step": state.data.get("draft_step")}


def _takes_late_keys(state: DialogState, call: CallRequest) -> bool:
    """Whether ``call``'s keys answer the last question of its call, closed by its status
    callback just before they came (LATE_KEYS), with no call since."""
    late = state.data.get(LATE_KEYS) or {}
    return (bool(call.digits) and late.get("sid") == call.sid and late.get("turn") == call.turn
            and late.get("step") == state.step
            and clock.now() <= datetime.fromisoformat(late.get("until") or "1970-01-01T00:00Z"))


def _reopened_for_late_keys(state: DialogState) -> None:
    """Put the call closed by its status callback back as it was (LATE_KEYS), for the one
    answer that came after: the draft and the bookings not yet heard made, kept by its
    close, go back to the call (its close after the answer keeps them again)."""
    late = state.data.pop(LATE_KEYS)
    state.data["call"] = late["call"]
    if late.get("draft_step") is None:
        state.data.pop("draft_step", None)
    else:
        state.data["draft_step"] = late["draft_step"]
    state.data.pop(UNHEARD, None)  # the call's own (late["call"]) are the same


def _not_cancelled_unheard(session: Session, state: DialogState, person: Person,
                           sid: str) -> None:
    """After a late answer (LATE_KEYS) to "cancel it?" that cancelled nothing because the
    refund or fee changed since the caller heard them (voice.NOT_CANCELLED): he hung up
    thinking it cancelled, and the "listen again" with the new amounts went to nobody. He
    is told by SMS that it was not cancelled (once: a retry of the request is answered
    from record), and the question he never heard is forgotten, so that nothing is kept
    that a later key could cancel at."""
    ref = state.data.get(NOT_CANCELLED)
    if ref is None:
        return
    lang = _language(person)
    end_cancel(Ctx(state, None, lang))
    booking = session.scalar(select(Booking).where(Booking.reference == ref,
                                                   Booking.customer_id == person.id))
    if booking is None or not person.phone:
        return
    log.info("a late cancel key cancelled nothing: the amounts changed; told by SMS",
             extra={"booking_id": booking.id})
    notify.notify_known_phone(session, person, NOT_CANCELLED_SMS, lang=lang,
                              dedupe_key=f"ivr-not-cancelled-{booking.id}-{sid}",
                              booking_id=booking.id, ref=booking.reference)


def _cancel_unheard(session: Session, ports: VoicePorts, person: Person, sid: str) -> None:
    """After a late answer (LATE_KEYS) "1 = cancel" (ports.cancel_answered), what the line
    said to nobody goes by SMS, in the caller's language, once per booking and call (a
    retry of the request is answered from record). Cancelled: "cancelled, X goes back",
    as a cancel by ops tells the customer (payments._tell_cancelled; a customer's own
    cancel sends nothing, he heard it), unless take_back_details just said it (a booking
    of that call). Not cancellable any more (voice's "closed": the rider picked the parcel
    up, or it is over): he hung up thinking it cancelled, so he is told it was not, why,
    and how to hear where it is; unless it was cancelled (by ops) or expired meanwhile
    (TOLD_CLOSED), which its own SMS told him. Amounts changed: _not_cancelled_unheard."""
    if ports.cancel_answered is None or not person.phone:
        return
    booking, result = ports.cancel_answered
    lang = _language(person)
    if result.get("done"):
        if session.scalar(select(OutboxMessage.id).where(  # take_back_details' own
                OutboxMessage.dedupe_key == f"ivr-cancelled-{booking.id}")) is not None:
            return
        refund, fee = int(result.get("refund_paise") or 0), int(result.get("fee_paise") or 0)
        key = ("bot.cancel.done_fee" if fee and refund else
               "bot.cancel.done_refund" if refund else "bot.cancel.done")
        log.info("a late cancel key cancelled the booking; told by SMS",
                 extra={"booking_id": booking.id})
        notify.notify_known_phone(session, person, key, lang=lang,
                                  dedupe_key=f"ivr-late-cancelled-{booking.id}-{sid}",
                                  booking_id=booking.id, ref=booking.reference,
                                  refund_paise=refund, fee_paise=fee)
    elif not result.get("allowed"):
        if result.get("status") in TOLD_CLOSED:
            # Cancelled by ops or out of its time meanwhile: that was told him by its own
            # SMS ("cancelled, X goes back"; "the time to pay is over"), and "not
            # cancelled on your call" after it would read as if it still stood.
            log.info("a late cancel key found the booking closed, already told",
                     extra={"booking_id": booking.id, "status": result.get("status")})
            return
        kind = not_allowed_kind(result)
        log.info("a late cancel key cancelled nothing: not cancellable; told by SMS",
                 extra={"booking_id": booking.id, "why": kind})
        notify.notify_known_phone(session, person, NOT_CANCELLABLE_SMS[kind], lang=lang,
                                  dedupe_key=f"ivr-not-cancelled-{booking.id}-{sid}",
                                  booking_id=booking.id, ref=booking.reference)


def ops_language() -> str:
    """The language the operators' phone is spoken to in: the one its owner (a person with
    OPS_PHONE's number) chose, else the default."""
    with transaction() as session:
        chosen = session.scalar(select(Person.preferred_language).where(
            Person.phone == get_settings().ops_phone))
    return chosen if chosen in i18n.LANGUAGES else i18n.DEFAULT_LANGUAGE


# state.data["dial"][DIAL_DONE]: how the <Dial> ended ("taken" or "not_taken"), as
# dial_ended first told it; a retry of that request hears the same and changes nothing.
DIAL_DONE = "done"


def operator_took(conv_id: int, sid: str) -> bool:
    """Someone at the operators' phone pressed the key that takes the caller of
    conversation ``conv_id``'s call ``sid``: noted on the call, for dial_ended. False when
    that call is no longer the conversation's live one (the caller hung up meanwhile)."""
    with transaction() as session:
        conv = session.get(Conversation, conv_id, with_for_update=True)
        if conv is None or conv.channel != CHANNEL:
            return False
        state = load_state(conv)
        dial = state.data.get("dial") or {}
        if dial.get("sid") != sid or DIAL_DONE in dial:  # over: dial_ended told the caller
            return False
        dial["taken"] = True
        save_state(conv, state)
        return True


def dial_ended(phone: str | None, status: str, lang: str, sid: str | None = None
               ) -> VoiceTurn:
    """The caller's <Dial> to ops ended (Twilio's DialCallStatus). Nobody answered: say
    so and when we call back (the handoff opened before dialling is ops' call-back list;
    if the team's day ended meanwhile, after their next opening). An operator took the
    call (answered, and pressed the key the operators' phone is asked for): goodbye; the
    handoff stays open for ops to close (a call back may have been promised), marked
    answered so that the idle sweep, if ops forget it, closes it with
    the usual words and not "nobody could reply in time"."""
    taken = False
    if status in PUT_THROUGH and phone is not None:
        with transaction() as session:
            conv = session.scalar(select(Conversation).where(
                Conversation.channel == CHANNEL, Conversation.contact == phone)
                .with_for_update())
            state = load_state(conv) if conv is not None else None
            dial = (state.data.get("dial") or {}) if state is not None else {}
            if dial.get("sid") == sid and DIAL_DONE in dial:
                # Twilio's retry of this request (our first answer was late or lost): the
                # same answer, and nothing done again.
                taken = dial[DIAL_DONE] == "taken"
            else:
                # Answered is not enough: a voicemail or a switched-off phone's network
                # message answers too. Only a key pressed at the operators' phone
                # (operator_took) says a person took the caller.
                taken = bool(dial.get("taken")) and (sid is None or dial.get("sid") == sid)
                if conv is not None and state is not None and dial.get("sid") == sid:
                    dial[DIAL_DONE] = "taken" if taken else "not_taken"
                    save_state(conv, state)
                waiting = handoff.open_handoff(session, conv) if taken and conv else None
                if waiting is not None and waiting.operator is None:
                    waiting.operator = ANSWERED_BY_PHONE
    if not taken:
        info = {"minutes": handoff.reply_minutes(), **handoff.team_hours()}
        return VoiceTurn(lang, [person_said(info, "ivr.person.busy", "ivr.person.after_hours")],
                         action="hangup")
    return VoiceTurn(lang, action="hangup")

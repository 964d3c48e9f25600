"""Ratings of delivered bookings, 1 to 5 stars: from the app (POST .../rating) and from the
WhatsApp chat, which asks for one after a delivery.

A booking is rated once, only once delivered; the stars fold into a running average of
each partner who carried it (dispatch ranks partners by it).

Asking in the chat: ``ask_after_delivery`` sends "how was it? send 1 to 5" and moves the
customer's conversation to the dialog's rating step, where "1".."5" are stars. Only there:
at the main menu "1" still starts a booking. The step is entered only when the chat is
free (at the menu, or idle for a day) and quiet (no message for QUIET), so a customer in
the middle of another booking is not asked, and their digits keep answering that
booking's questions; one who wrote a moment ago (reading the menu, typing "5" for Help)
is asked once they have been quiet a while. A busy customer is tried again and again,
further apart each time (``ask_wait``), until RATING_WINDOW after the delivery: one who
chats about another booking for hours is asked once they stop. The question counts until
the customer leaves it (a greeting, the menu, a second answer that is no rating), or for
RATING_WINDOW (core.services.conversation).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from redis.client import Pipeline
from rq import Queue
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core import clock, i18n
from core.adapters.api_models import BookingRating
from core.adapters.db import transaction
from core.adapters.models import Booking, Conversation, PartnerProfile, Person
from core.adapters.queue import after_commit, queue
from core.dialog import engine
from core.dialog.booking import BOOKING, BOOKING_DIALOG, MENU, RATE
from core.domain.booking import BookingStatus
from core.domain.errors import Conflict, ValidationError
from core.services import notify

RATING_WINDOW = timedelta(days=2)  # a bare digit answers the question this long at most
IDLE = timedelta(hours=24)  # as conversation.IDLE_RESUME: a chat this quiet is free
# A customer who wrote less than this ago may still be reading the menu (or typing a
# choice): a question arriving now would take their "5" (Help) as 5 stars. It is asked
# once the chat has been this quiet; one still busy then is tried again after twice as
# long each time (10, 20, 40 minutes...), ASK_WAIT_MAX apart at most, until
# RATING_WINDOW after the delivery (about 17 tries). ASK_TRIES only bounds the chain
# should the delivery time be unknown.
QUIET = timedelta(minutes=10)
ASK_WAIT_MAX = timedelta(hours=4)
ASK_TRIES = 24
ASK_LAST = timedelta(minutes=1)  # the last try runs this long before the window ends
ASK_LATER_JOB = "core.services.rating.ask_later"
_WAITING = ("queued", "scheduled", "deferred", "started")


def is_rated(session: Session, booking_id: int) -> bool:
    return bool(session.scalar(select(func.count()).select_from(BookingRating)
                               .where(BookingRating.booking_id == booking_id)))


def rate_booking(session: Session, booking: Booking, stars: int,
                 comment: str | None = None) -> None:
    """Store the customer's rating of ``booking`` (locked by the caller, which checked
    it is theirs); Conflict if it is not delivered or already rated."""
    if not 1 <= stars <= 5:
        raise ValidationError("stars must be 1 to 5", field="stars")
    if booking.status != BookingStatus.DELIVERED:
        raise Conflict("only a delivered booking can be rated", code="not_delivered")
    if is_rated(session, booking.id):
        raise Conflict("this booking is already rated", code="already_rated")
    session.add(BookingRating(booking_id=booking.id, stars=stars, comment=comment))
    _update_partner_ratings(session, booking, stars)


def _update_partner_ratings(session: Session, b: Booking, stars: int) -> None:
    """Fold the new rating into the running average (x100, kept in 0..500) of each partner
    who carried a leg, once each: it is one customer's word on one trip.

    The partners are locked in one statement in id order, the order dispatch locks them
    in: a relay's legs list them in any order, and two transactions taking the same two
    rows in opposite orders deadlock (PostgreSQL then aborts one of them)."""
    ids = sorted({leg.partner_id for leg in b.legs if leg.partner_id is not None})
    if not ids:
        return
    for p in session.scalars(select(PartnerProfile).where(PartnerProfile.id.in_(ids))
                             .order_by(PartnerProfile.id).with_for_update()
                             .execution_options(populate_existing=True)):
        # An exponential average: recent trips count more, one bad day does not ruin anyone.
        p.rating_x100 = max(0, min(500, round(p.rating_x100 * 0.9 + stars * 100 * 0.1)))


def ask_after_delivery(session: Session, booking: Booking, tries: int = 1) -> bool:
    """Ask the customer of a delivered WhatsApp booking how it was, in the caller's
    transaction, and put their chat on the rating step; True if asked (once per booking).

    Not asked: bookings made elsewhere (the app rates in the app; a caller reads SMS and
    cannot answer one), after STOP, while a person handles the chat, while the customer
    is in the middle of something else, or when the question could only go by SMS. A
    customer who wrote in the last QUIET, or is in the middle of something else, is
    tried later (``ask_later``, ``tries``-th), up to RATING_WINDOW after the delivery."""
    if booking.channel != "whatsapp" or booking.status != BookingStatus.DELIVERED:
        return False
    ends = asking_ends(booking)
    if ends is not None and clock.now() >= ends:
        return False  # too late to ask about it
    person = session.get(Person, booking.customer_id)
    if person is None or person.opted_out or is_rated(session, booking.id):
        return False
    conv_id = session.scalar(
        select(Conversation.id).where(Conversation.person_id == person.id,
                                      Conversation.channel == "whatsapp")
        .order_by(Conversation.last_inbound_at.desc().nulls_last()).limit(1))
    if conv_id is None:
        return False
    # SKIP LOCKED: a turn of this chat holds the row now, so the customer is busy writing;
    # and waiting here (booking locked) for a turn that may lock this booking (a cancel)
    # could deadlock.
    conv = session.scalar(select(Conversation).where(Conversation.id == conv_id)
                          .with_for_update(skip_locked=True)
                          .execution_options(populate_existing=True))
    if conv is None:  # a turn holds it: they are writing now
        _ask_later(session, booking, tries, QUIET)
        return False
    if conv.handoff:
        return False
    now = clock.now()
    since = now - conv.last_inbound_at if conv.last_inbound_at is not None else None
    if since is not None and since < QUIET:
        # Busy writing: asked when they have been quiet a while (ask_later), not now.
        _ask_later(session, booking, tries, QUIET - since)
        return False
    idle = since is None or since > IDLE
    if conv.step not in (MENU, RATE) and not idle:
        _ask_later(session, booking, tries, QUIET)  # once back at the menu
        return False
    lang = notify.language_of(person)
    # The answer must come back on WhatsApp: an SMS reply reaches the riders' number.
    if not notify.in_whatsapp_window(conv) and lang not in notify.whatsapp_templates():
        return False
    body = i18n.t("bot.rate.ask", lang, ref=booking.reference)
    if notify.send_to_person(session, person, body, dedupe_key=f"rate-ask-{booking.id}",
                             booking_id=booking.id) is None:
        return False  # asked already
    state = engine.copy_data(conv.state or {})
    step = BOOKING_DIALOG.steps.get(conv.step)
    if step is not None and step.group == BOOKING and state.get("slots"):
        state["draft_step"] = conv.step  # an idle draft: offered again from the menu
    for key in ("scratch", "return_to", "after_offer"):
        state.pop(key, None)
    state.update(rate_ref=booking.reference, rate_asked_at=now.isoformat())
    conv.step, conv.state, conv.misses = RATE, state, 0
    return True


def asking_ends(booking: Booking) -> datetime | None:
    """When asking about ``booking`` stops: RATING_WINDOW after its (last) drop; None if
    no drop time is recorded."""
    drops = [leg.delivered_at for leg in booking.legs if leg.delivered_at is not None]
    return max(drops) + RATING_WINDOW if drops else None


def ask_wait(tries: int) -> timedelta:
    """How long a customer busy at the ``tries``-th try is left before the next one:
    QUIET, then twice as long each time, ASK_WAIT_MAX at most."""
    return min(QUIET * 2 ** min(tries - 1, 16), ASK_WAIT_MAX)


def ask_job_id(booking_id: int, tries: int) -> str:
    return f"rate-ask-{booking_id}-{tries}"


def _ask_later(session: Session, booking: Booking, tries: int, quiet_in: timedelta) -> None:
    """After the commit, schedule try ``tries + 1``: once the chat has been quiet
    (``quiet_in`` from now) and ``ask_wait(tries)`` has passed, the window allowing."""
    if tries >= ASK_TRIES:
        return
    wait = max(quiet_in, ask_wait(tries))
    ends = asking_ends(booking)
    if ends is not None:
        wait = min(wait, ends - ASK_LAST - clock.now())
        if wait <= timedelta(0):
            return  # the window ends before another try
    booking_id = booking.id
    job_id, caller = ask_job_id(booking_id, tries + 1), ask_job_id(booking_id, tries)
    key = f"rate-ask-next:{booking_id}"
    # The job ids differ per try (an id RQ keeps for a finished job cannot be used again),
    # so one waiting ask per booking is kept by this key naming it: a try replaces
    # itself; any other caller (a repeated or stray call) schedules nothing while it waits.
    ttl = int((wait + RATING_WINDOW).total_seconds())

    def schedule() -> None:
        q = queue("default")
        claimed: list[bool] = []

        def claim(pipe: Pipeline) -> None:  # WATCHing key: two callers, one wins
            claimed.clear()
            raw = pipe.get(key)
            waiting = raw.decode() if isinstance(raw, bytes) else raw
            if waiting == job_id or (waiting not in (None, caller) and _waits(q, waiting)):
                return
            pipe.multi()
            pipe.set(key, job_id, ex=ttl)
            claimed.append(True)

        q.connection.transaction(claim, key)
        if not claimed:
            return
        if q.fetch_job(job_id) is not None:
            return  # natural job id: scheduled (or ran) already
        q.enqueue_in(wait + timedelta(seconds=1), ASK_LATER_JOB, booking_id, tries + 1,
                     job_id=job_id, result_ttl=3600, failure_ttl=7 * 86400)

    after_commit(session, schedule)


def _waits(q: Queue, job_id: str) -> bool:
    """True if the job is still to run (or running: it schedules its own next try)."""
    job = q.fetch_job(job_id)
    return job is not None and job.get_status(refresh=False) in _WAITING


def ask_later(booking_id: int, tries: int) -> str:
    """RQ job: ask about a delivery now if the customer's chat has been quiet since."""
    with transaction() as session:
        booking = session.get(Booking, booking_id)
        if booking is None:
            return "missing"
        return "asked" if ask_after_delivery(session, booking, tries) else "not-asked"

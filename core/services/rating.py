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
RATING_WINDOW (core.services.conversation). One question at a time: a second delivery's
waits while the first's stands, and is tried once the chat has been quiet after its
answer (``ask_next_soon``); one left unanswered for RATING_WINDOW gives way.

The database says which bookings are still to be asked: a ``rating_asks`` row, with the
try due next and when, from the first busy try until the customer is asked, the booking is
rated or not to be asked, or the window ends. Redis holds only the job of that try (RQ's
scheduled jobs live there alone), so a flush or a failover, or a try that failed on the
database, would end the chain silently; ``sweep`` (run by the dispatch sweep, every
minute) schedules a try anew for a due row whose job is gone. The question itself is
sent once per booking whatever runs twice (the outbox's ``rate-ask-<id>`` key).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from redis.client import Pipeline
from rq import Queue
from rq.utils import as_text
from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from core import clock, i18n
from core.adapters.api_models import BookingRating, RatingAsk
from core.adapters.db import transaction
from core.adapters.models import (
    Booking,
    Conversation,
    OutboxMessage,
    PartnerProfile,
    Person,
)
from core.adapters.queue import after_commit, job_alive, queue
from core.dialog import engine
from core.dialog.booking import BOOKING, BOOKING_DIALOG, MENU, RATE
from core.domain.booking import BookingStatus
from core.domain.errors import Conflict, ValidationError
from core.services import handoff, notify

log = logging.getLogger(__name__)

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
# The sweep looks at a try this long past its time: by then its job has run, unless Redis
# lost it or it failed (one still waiting for a busy worker is left alone).
SWEEP_GRACE = timedelta(seconds=30)
SWEEP_BATCH = 200  # due tries looked at per sweep; the rest wait a minute


def is_rated(session: Session, booking_id: int) -> bool:
    return bool(session.scalar(select(func.count()).select_from(BookingRating)
                               .where(BookingRating.booking_id == booking_id)))


# A rating sent again this soon with the same stars and comment (its answer lost: a
# timeout, a double tap) is the same rating: answered with the saved one, not 409.
REPEAT_WINDOW = timedelta(minutes=10)


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
    # The service clock's time (as REPEAT_WINDOW is measured), not the database's.
    session.add(BookingRating(booking_id=booking.id, stars=stars, comment=comment,
                              created_at=clock.now()))
    _update_partner_ratings(session, booking, stars)
    _settle(session, booking.id)  # rated (in the app, say): the chat need not ask
    session.flush()
    ask_next_soon(session, booking.customer_id)  # in the chat or the app: the next may come


def repeated_rating(session: Session, booking: Booking, stars: int,
                    comment: str | None = None) -> BookingRating | None:
    """The booking's saved rating if this one repeats it: the same stars and comment
    (blank as none, spaces around ignored), saved less than REPEAT_WINDOW ago; else None
    (a different rating of a rated booking stays a conflict)."""
    saved = session.scalar(select(BookingRating).where(BookingRating.booking_id == booking.id))
    if saved is None or saved.stars != stars:
        return None
    if (saved.comment or "").strip() != (comment or "").strip():
        return None
    return saved if clock.now() - saved.created_at < REPEAT_WINDOW else None


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
        p.rating_x100 = folded_rating(p.rating_x100, stars)


def folded_rating(rating_x100: int, stars: int) -> int:
    """An exponential average (x100): recent trips count more, one bad day does not ruin
    anyone. Rounded towards the stars given, so that it keeps moving to them: rounded to
    the nearest, a rider within 5 hundredths of them never moved (five stars on every trip
    left 4.96 at 4.96 for good)."""
    target = stars * 100
    tenths = rating_x100 * 9 + target  # ten times the exact average: integers, no float
    moved = -(-tenths // 10) if target > rating_x100 else tenths // 10
    return max(0, min(500, moved))


def ask_after_delivery(session: Session, booking: Booking, tries: int = 1) -> bool:
    """Ask the customer of a delivered WhatsApp booking how it was, in the caller's
    transaction, and put their chat on the rating step; True if asked (once per booking).

    Not asked: bookings made elsewhere (the app rates in the app; a caller reads SMS and
    cannot answer one), after STOP, or when the question could only go by SMS. A
    customer who wrote in the last QUIET, is in the middle of something else, or waits
    for a person (in this chat, or on another channel: her chat messages are kept for
    them; the handoff's close tries it again soon), is tried later (``ask_later``,
    ``tries``-th), up to RATING_WINDOW after the delivery; meanwhile its ``rating_asks``
    row says it is still to be asked."""
    if booking.channel != "whatsapp":
        return False  # never owed a question: no row to settle
    outcome = _ask(session, booking, tries)
    if isinstance(outcome, timedelta):
        _ask_later(session, booking, tries, outcome)
        return False
    _settle(session, booking.id)
    return outcome


def _ask(session: Session, booking: Booking, tries: int) -> bool | timedelta:
    """Ask now if the chat allows: True if asked; False if not to be asked (now or ever);
    if the customer is busy, how long from now their chat should be quiet before a try."""
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
        return QUIET
    if conv.handoff or handoff.waiting_for(session, person.id,
                                           besides=conv.id) is not None:
        # A person of our team has her chat, or she waits for one on another channel (she
        # called us): what she writes in the chat is kept for that operator
        # (conversation._whatsapp_turn), so her "5" would not rate. Kept, and asked once
        # nobody is waiting for her (the handoff's close tries it soon: handoff._finish).
        return QUIET
    now = clock.now()
    since = now - conv.last_inbound_at if conv.last_inbound_at is not None else None
    if since is not None and since < QUIET:
        return QUIET - since  # busy writing: asked when they have been quiet a while
    idle = since is None or since > IDLE
    if conv.step not in (MENU, RATE) and not idle:
        return QUIET  # once back at the menu
    if conv.step == RATE and _asks_another(session, conv, booking, now):
        return QUIET  # after its answer (ask_next_soon), or once that question lapses
    lang = notify.language_of(person)
    # The answer must come back on WhatsApp: an SMS reply reaches the riders' number.
    if not notify.in_whatsapp_window(conv) and lang not in notify.whatsapp_templates():
        return False
    body = i18n.t("bot.rate.ask", lang, ref=booking.reference)
    if notify.send_to_person(session, person, body, dedupe_key=_ask_key(session, booking.id),
                             booking_id=booking.id) is None:
        return False  # asked already
    state = engine.copy_data(conv.state or {})
    step = BOOKING_DIALOG.steps.get(conv.step)
    kept = step is not None and step.group == BOOKING and bool(state.get("slots"))
    if kept:
        state["draft_step"] = conv.step  # an idle draft: offered again from the menu
    for key in ("scratch", "after_offer") if kept else ("scratch", "return_to", "after_offer"):
        state.pop(key, None)
    state.update(rate_ref=booking.reference, rate_asked_at=now.isoformat())
    conv.step, conv.state, conv.misses = RATE, state, 0
    return True


def _ask_key(session: Session, booking_id: int) -> str:
    """The outbox key of the booking's question: ``rate-ask-<id>``, one question per
    booking whatever runs twice; after WhatsApp refused it n times (``question_refused``),
    ``rate-ask-<id>-again-<n>``, so the question asked again is one more message."""
    key = f"rate-ask-{booking_id}"
    refused = session.scalar(select(func.count()).select_from(OutboxMessage).where(
        OutboxMessage.booking_id == booking_id,
        (OutboxMessage.dedupe_key == key) | OutboxMessage.dedupe_key.like(f"{key}-again-%"),
        OutboxMessage.status.in_(("failed", "undelivered"))))
    return f"{key}-again-{refused}" if refused else key


def question_refused(session: Session, booking_id: int, outbox_id: int) -> None:
    """WhatsApp refused the booking's question (our sender's messaging limit, the window
    had closed and no template could carry it, its content, or her STOP or block: a
    block ends with her next message, which must not be taken for stars), in the
    caller's transaction. It never reached the customer, and it does not go by SMS (an
    answer there reaches the riders' number): their chat leaves the rating step (a "1"
    is the menu's again, not a star), and the question is owed anew, tried as a busy
    customer's is (``ask_later``, each try further apart, until RATING_WINDOW after the
    delivery; the sweep schedules a try whose job is lost). A try that finds the window
    closed and no template does not ask. A late report about an earlier question (one
    asked again since) is nothing to act on."""
    asked = OutboxMessage.dedupe_key.like(f"rate-ask-{booking_id}%")
    if session.scalar(select(select(OutboxMessage.id).where(
            OutboxMessage.booking_id == booking_id, asked,
            OutboxMessage.id > outbox_id).exists())):
        return
    booking = session.get(Booking, booking_id)
    if (booking is None or booking.channel != "whatsapp"
            or booking.status != BookingStatus.DELIVERED or is_rated(session, booking_id)):
        return
    conv_id = session.scalar(
        select(Conversation.id).where(Conversation.person_id == booking.customer_id,
                                      Conversation.channel == "whatsapp")
        .order_by(Conversation.last_inbound_at.desc().nulls_last()).limit(1))
    conv = None if conv_id is None else session.scalar(
        select(Conversation).where(Conversation.id == conv_id).with_for_update()
        .execution_options(populate_existing=True))
    if conv is not None and conv.step == RATE and (
            (conv.state or {}).get("rate_ref") == booking.reference):
        state = engine.copy_data(conv.state or {})
        for key in ("rate_ref", "rate_asked_at", "scratch"):
            state.pop(key, None)
        conv.step, conv.state, conv.misses = MENU, state, 0
    refused = session.scalar(select(func.count()).select_from(OutboxMessage).where(
        OutboxMessage.booking_id == booking_id, asked,
        OutboxMessage.status.in_(("failed", "undelivered"))))
    log.info("rating question refused by whatsapp: asked again later",
             extra={"booking_id": booking_id})
    _ask_later(session, booking, max(1, refused or 0), QUIET)


def _asks_another(session: Session, conv: Conversation, booking: Booking,
                  now: datetime) -> bool:
    """True if the chat's open question is about another booking and still stands: a
    second question now would take the answer meant for the first ("4" for the question
    the customer was reading), so it waits its turn. One rated meanwhile (in the app)
    stands no more."""
    state = conv.state or {}
    ref, asked = state.get("rate_ref"), state.get("rate_asked_at")
    if ref in (None, booking.reference) or not asked:
        return False
    if now - datetime.fromisoformat(asked) > RATING_WINDOW:
        return False
    other = session.scalar(select(Booking.id).where(Booking.reference == ref))
    return other is not None and not is_rated(session, other)


def ask_next_soon(session: Session, customer_id: int) -> None:
    """The customer has just answered a rating question (in the caller's transaction):
    their next question still owed, if any (the one due first), is tried once the chat
    has been QUIET, not at its backed-off time hours away.

    The try is a new one (its own job id) in place of the waiting one: that one finds
    the question asked, or the chat busy and the new try waiting, when its time comes
    (an earlier one comes less than QUIET after this answer). A row a try is updating
    now is left to it (SKIP LOCKED)."""
    now = clock.now()
    wait = QUIET + timedelta(seconds=1)  # RQ's scheduler runs a job at its second or after
    row = session.execute(
        select(RatingAsk.booking_id, RatingAsk.tries)
        .join(Booking, Booking.id == RatingAsk.booking_id)
        .where(Booking.customer_id == customer_id)
        .order_by(RatingAsk.due_at, RatingAsk.booking_id).limit(1)
        .with_for_update(of=RatingAsk, skip_locked=True)).first()
    if row is None:
        return
    booking_id, tries = row
    session.execute(update(RatingAsk).where(RatingAsk.booking_id == booking_id)
                    .values(tries=tries + 1, due_at=now + wait)
                    .execution_options(synchronize_session=False))
    after_commit(session, lambda: _schedule(booking_id, tries + 1, wait))


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
    """Owe try ``tries + 1`` (the booking's row) and schedule it after the commit: once
    the chat has been quiet (``quiet_in`` from now) and ``ask_wait(tries)`` has passed,
    the window allowing; with no try left, the booking is not asked."""
    if tries >= ASK_TRIES:
        _settle(session, booking.id)
        return
    wait = max(quiet_in, ask_wait(tries))
    ends = asking_ends(booking)
    if ends is not None:
        wait = min(wait, ends - ASK_LAST - clock.now())
        if wait <= timedelta(0):
            _settle(session, booking.id)
            return  # the window ends before another try
    wait += timedelta(seconds=1)  # RQ's scheduler runs a job at its second or after
    _owe(session, booking.id, tries + 1, clock.now() + wait, ends)
    booking_id = booking.id
    after_commit(session, lambda: _schedule(booking_id, tries + 1, wait))


def _owe(session: Session, booking_id: int, tries: int, due_at: datetime,
         ends_at: datetime | None) -> None:
    """Record that try ``tries`` is due at ``due_at``. The row only moves forward: a stray
    call with an older try number leaves the chain's own try as it is."""
    stmt = insert(RatingAsk).values(booking_id=booking_id, tries=tries, due_at=due_at,
                                    ends_at=ends_at)
    session.execute(stmt.on_conflict_do_update(
        index_elements=[RatingAsk.booking_id],
        set_={"tries": stmt.excluded.tries, "due_at": stmt.excluded.due_at,
              "ends_at": stmt.excluded.ends_at},
        where=RatingAsk.tries <= stmt.excluded.tries))


def _settle(session: Session, booking_id: int) -> None:
    """Nothing more to ask about the booking: asked, rated, or not to be asked."""
    session.execute(delete(RatingAsk).where(RatingAsk.booking_id == booking_id))


def _next_key(booking_id: int) -> str:
    return f"rate-ask-next:{booking_id}"


def _schedule(booking_id: int, tries: int, wait: timedelta) -> None:
    """Schedule try ``tries`` of the booking in ``wait`` (now if none), unless another try
    waits already (one waiting try per booking)."""
    q = queue("default")
    job_id, caller = ask_job_id(booking_id, tries), ask_job_id(booking_id, tries - 1)
    key = _next_key(booking_id)
    # The job ids differ per try (an id RQ keeps for a finished job cannot be used again),
    # so one waiting ask per booking is kept by this key naming it: a try replaces
    # itself; any other caller (a repeated or stray call) schedules nothing while it waits.
    ttl = int((wait + RATING_WINDOW).total_seconds())
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
    if wait > timedelta(0):
        q.enqueue_in(wait, ASK_LATER_JOB, booking_id, tries, job_id=job_id,
                     result_ttl=3600, failure_ttl=7 * 86400)
    else:
        q.enqueue(ASK_LATER_JOB, booking_id, tries, job_id=job_id, result_ttl=3600,
                  failure_ttl=7 * 86400)


def _waits(q: Queue, job_id: str) -> bool:
    """True if the job is still to run (or running: it schedules its own next try). One
    a killed worker left "started" does not count (core.adapters.queue.job_alive fails
    it, as RQ would minutes later), so the sweep schedules the try anew."""
    return job_alive(job_id, q.name)


def _try_waits(q: Queue, booking_id: int) -> bool:
    """True if a try of the booking is still to run (the one its key names)."""
    raw = q.connection.get(_next_key(booking_id))
    return raw is not None and _waits(q, as_text(raw))


def sweep() -> int:
    """Periodic: schedule anew each due try whose job is gone (Redis lost it, or it failed
    on the database), so a customer still to be asked is not forgotten; forget bookings
    whose window has ended. The number of tries scheduled.

    Reads only the due rows (ix_rating_asks_due_at), a few statements whatever their
    number; rows a try is updating now are skipped (SKIP LOCKED) and one whose job still
    waits is left to it, so a booking never has two tries waiting."""
    now = clock.now()
    q = queue("default")
    with transaction() as session:
        due = session.execute(
            select(RatingAsk.booking_id, RatingAsk.tries, RatingAsk.ends_at)
            .where(RatingAsk.due_at <= now - SWEEP_GRACE).order_by(RatingAsk.due_at)
            .limit(SWEEP_BATCH).with_for_update(skip_locked=True)).all()
        over: list[int] = []
        lost: list[tuple[int, int]] = []
        for booking_id, tries, ends_at in due:
            if ends_at is not None and ends_at <= now:
                over.append(booking_id)  # too late to ask
            elif _try_waits(q, booking_id):
                continue
            elif tries >= ASK_TRIES:
                over.append(booking_id)
            else:  # a new number: RQ keeps a failed try's job (and id) for days
                lost.append((booking_id, tries + 1))
        if over:
            session.execute(delete(RatingAsk).where(RatingAsk.booking_id.in_(over)))
        if not lost:
            return 0
        session.execute(update(RatingAsk)
                        .where(RatingAsk.booking_id.in_([b for b, _ in lost]))
                        .values(tries=RatingAsk.tries + 1, due_at=now)
                        .execution_options(synchronize_session=False))
        log.warning("rating questions whose try was lost: tried again",
                    extra={"count": len(lost)})
        after_commit(session, lambda: _schedule_now(lost))
    return len(lost)


def _schedule_now(tries: list[tuple[int, int]]) -> None:
    """Schedule each (booking, try) to run now."""
    for booking_id, number in tries:
        _schedule(booking_id, number, timedelta(0))


def ask_later(booking_id: int, tries: int) -> str:
    """RQ job: ask about a delivery now if the customer's chat has been quiet since."""
    with transaction() as session:
        booking = session.get(Booking, booking_id)
        if booking is None:
            return "missing"
        return "asked" if ask_after_delivery(session, booking, tries) else "not-asked"

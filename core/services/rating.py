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
is asked once they have been quiet a while. The question counts until the customer
leaves it (a greeting, the menu, a second answer that is no rating), or for
RATING_WINDOW (core.services.conversation).
"""

from __future__ import annotations

from datetime import timedelta

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
# once the chat has been this quiet, up to ASK_TRIES times, then not at all.
QUIET = timedelta(minutes=10)
ASK_TRIES = 6
ASK_LATER_JOB = "core.services.rating.ask_later"


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
    """Fold the new rating into each partner's running average (x100, kept in 0..500)."""
    for leg in b.legs:
        if leg.partner_id is None:
            continue
        p = session.get(PartnerProfile, leg.partner_id, with_for_update=True)
        if p is None:
            continue
        # An exponential average: recent trips count more, one bad day does not ruin anyone.
        p.rating_x100 = max(0, min(500, round(p.rating_x100 * 0.9 + stars * 100 * 0.1)))


def ask_after_delivery(session: Session, booking: Booking, tries: int = 1) -> bool:
    """Ask the customer of a delivered WhatsApp booking how it was, in the caller's
    transaction, and put their chat on the rating step; True if asked (once per booking).

    Not asked: bookings made elsewhere (the app rates in the app; a caller reads SMS and
    cannot answer one), after STOP, while a person handles the chat, while the customer
    is in the middle of something else, or when the question could only go by SMS. A
    customer who wrote in the last QUIET is asked later (``ask_later``, ``tries``-th)."""
    if booking.channel != "whatsapp" or booking.status != BookingStatus.DELIVERED:
        return False
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
        if tries < ASK_TRIES:
            _ask_later(session, booking.id, QUIET, tries + 1)
        return False
    if conv.handoff:
        return False
    now = clock.now()
    since = now - conv.last_inbound_at if conv.last_inbound_at is not None else None
    if since is not None and since < QUIET:
        # Busy writing: asked when they have been quiet a while (ask_later), not now.
        if tries < ASK_TRIES:
            _ask_later(session, booking.id, QUIET - since, tries + 1)
        return False
    idle = since is None or since > IDLE
    if conv.step not in (MENU, RATE) and not idle:
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


def _ask_later(session: Session, booking_id: int, wait: timedelta, tries: int) -> None:
    job_id = f"rate-ask-{booking_id}-{tries}"

    def schedule() -> None:
        q = queue("default")
        if q.fetch_job(job_id) is not None:
            return  # natural job id: scheduled (or ran) already
        q.enqueue_in(wait + timedelta(seconds=1), ASK_LATER_JOB, booking_id, tries,
                     job_id=job_id, result_ttl=3600, failure_ttl=7 * 86400)

    after_commit(session, schedule)


def ask_later(booking_id: int, tries: int) -> str:
    """RQ job: ask about a delivery now if the customer's chat has been quiet since."""
    with transaction() as session:
        booking = session.get(Booking, booking_id)
        if booking is None:
            return "missing"
        return "asked" if ask_after_delivery(session, booking, tries) else "not-asked"

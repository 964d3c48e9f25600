"""Talk to a person: a conversation handed to an operator, the waiting list, replies, close.

While a handoff is open the bot stays quiet on that conversation (the user's messages are
kept for the operator); the operator's replies go out through the outbox; closing gives
the conversation back to the bot at its main menu. The ops REST endpoint over these
functions comes with the REST API issue.

Operators work set hours (OPS_HOURS, India time, the same every day). Outside them a
request still joins the waiting list, so it is the first thing ops see, but the user is
told when the team starts instead of a reply in minutes (and a caller is not put through
to an operator's mobile at night); the idle close counts from the opening, so a night
request is not closed before anyone could read it.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from redis.exceptions import RedisError
from sqlalchemy import (
    ColumnElement,
    func,
    select,
    tuple_,
    update,
)
from sqlalchemy.orm import Session, aliased

from core import clock, i18n
from core.adapters.db import transaction
from core.adapters.dialog_models import Handoff, HandoffMessage
from core.adapters.models import Conversation, OutboxMessage, Person
from core.adapters.queue import after_commit
from core.adapters.redis_conn import redis_client
from core.config import get_settings, int_setting
from core.domain.errors import Conflict, NotFound, ValidationError
from core.domain.phone import is_e164
from core.services import notify, outbox

log = logging.getLogger(__name__)

DEFAULT_REPLY_MINUTES = 15
DEFAULT_IDLE_HOURS = 12
INDIA = ZoneInfo("Asia/Kolkata")  # the operators' clock (OPS_HOURS is India time)


def reply_minutes() -> int:
    """How soon we promise an operator's answer (HANDOFF_REPLY_MINUTES, default 15)."""
    return int_setting("HANDOFF_REPLY_MINUTES", DEFAULT_REPLY_MINUTES)


def idle_hours() -> int:
    """How long a handoff may sit with no message either way before it closes by itself
    (HANDOFF_IDLE_HOURS, default 12)."""
    return int_setting("HANDOFF_IDLE_HOURS", DEFAULT_IDLE_HOURS)


def is_open(hours: tuple[int, int] | None, at: datetime) -> bool:
    """Whether operators are at work at ``at`` (hours as OPS_HOURS gives them)."""
    if hours is None:
        return True
    opens, closes = hours
    local = at.astimezone(INDIA)
    minute = local.hour * 60 + local.minute
    if opens < closes:
        return opens <= minute < closes
    return minute >= opens or minute < closes  # hours that run past midnight


def team_time(hours: tuple[int, int] | None, start: datetime, end: datetime) -> timedelta:
    """How much of [start, end) the team was at work (all of it without set hours)."""
    if end <= start:
        return timedelta(0)
    if hours is None:
        return end - start
    opens, closes = hours
    length = timedelta(minutes=(closes - opens) % (24 * 60) or 24 * 60)
    total = timedelta(0)
    day = start.astimezone(INDIA).replace(hour=0, minute=0, second=0, microsecond=0) \
        - timedelta(days=1)  # a shift past midnight may have begun the day before
    while day < end:
        shift = day + timedelta(minutes=opens)
        overlap = min(end, shift + length) - max(start, shift)
        if overlap > timedelta(0):
            total += overlap
        day += timedelta(days=1)  # India keeps no summer time: a day is 24 hours
    return total


def team_hours(at: datetime | None = None) -> dict[str, object]:
    """Whether the team is at work now (``open``: a caller may be put through) and still
    will be when the reply we promise is due (``in_time``: else a request at 20:55 would
    be promised an answer at 21:10); when not in time, their hours to tell the user:
    ``opens`` and ``closes`` in minutes after midnight, India time."""
    hours = get_settings().ops_hours
    now = at or clock.now()
    if hours is None:
        return {"open": True, "in_time": True}
    open_now = is_open(hours, now)
    if open_now and is_open(hours, now + timedelta(minutes=reply_minutes())):
        return {"open": True, "in_time": True}
    return {"open": open_now, "in_time": False, "opens": hours[0], "closes": hours[1]}


ANSWERED_BY_PHONE = "phone"  # the handoff's operator when one took the caller's call (ivr)
ASKED_AGAIN = "[asked again]"  # a waiting request asked for once more (a caller)
LEFT = "[left for the menu]"  # the customer left a handoff an operator had answered
# The PostgreSQL advisory lock (with the person's id) an operator's answer or close holds
# for its transaction (_take): "RCho" in ASCII.
TAKE_LOCK_KEY = int.from_bytes(b"RCho", "big")


def open_handoff(session: Session, conv: Conversation) -> Handoff | None:
    return session.scalar(select(Handoff).where(Handoff.conversation_id == conv.id,
                                                Handoff.status == "waiting"))


def request(session: Session, conv: Conversation, reason: str) -> dict[str, object]:
    """Put the conversation on the waiting list (once); what to tell the user: the reply
    time we promise, or, outside the team's hours, when they start (``team_hours``).

    Asked again while on the list (a caller: the IVR answers during a handoff, a chat does
    not), the request is as new: ops see it asked again, the idle close counts from now,
    and a call an operator took earlier no longer marks it answered."""
    if conv.id is None:
        session.flush()
    waiting = open_handoff(session, conv)
    if waiting is None:
        session.add(Handoff(conversation_id=conv.id, person_id=conv.person_id,
                            channel=conv.channel, reason=reason, status="waiting",
                            step=conv.step, created_at=clock.now()))
    else:
        session.add(HandoffMessage(handoff_id=waiting.id, direction="in",
                                   body=f"{ASKED_AGAIN} ({reason})", created_at=clock.now()))
        if waiting.operator == ANSWERED_BY_PHONE:
            waiting.operator = None
    conv.handoff = True
    return {"minutes": reply_minutes(), "ops_phone": get_settings().ops_phone,
            **team_hours()}


def withdraw(session: Session, conv: Conversation, *, engaged_too: bool = False) -> bool:
    """The user leaves the waiting list (they sent MENU or 0, STOP, or START after STOP):
    the open handoff closes and the bot takes the conversation back at the main menu. One
    an operator has already answered stays theirs unless ``engaged_too`` (then its
    history says the customer left). True if the bot has the conversation now."""
    handoff = open_handoff(session, conv)
    if handoff is not None:
        if handoff.operator is not None and not engaged_too:
            return False
        if handoff.operator is not None:  # kept in its history: the customer left it
            session.add(HandoffMessage(handoff_id=handoff.id, direction="in", body=LEFT,
                                       created_at=clock.now()))
        handoff.status = "closed"
        handoff.operator = handoff.operator or "customer"
        handoff.closed_at = clock.now()
        _rating_owed(session, handoff.person_id)
    conv.handoff = False
    conv.step = "menu"
    conv.misses = 0
    return True


def withdraw_elsewhere(session: Session, waiting: Handoff) -> None:
    """The person leaves, from another chat, a handoff that waits on its own conversation
    ("0" on WhatsApp, where the operator's reply to their call reached them): closed as
    ``withdraw`` closes it (engaged too). A call's place is its own (as ``_finish``)."""
    conv = session.get(Conversation, waiting.conversation_id, with_for_update=True)
    if conv is None:
        return
    step, misses = conv.step, conv.misses
    withdraw(session, conv, engaged_too=True)
    if conv.channel == "voice":
        conv.step, conv.misses = step, misses


def record_inbound(session: Session, conv: Conversation, body: str,
                   media: Sequence[tuple[str, str]] = (),
                   location: tuple[float, float] | None = None,
                   place: str | None = None) -> None:
    """Keep what the user sent while waiting, for the operator: the text, each media as
    its kind and Twilio URL (fetching it needs our Twilio credentials), a shared pin
    with its name and address when WhatsApp gave them."""
    handoff = open_handoff(session, conv)
    if handoff is None:
        return
    keep_inbound(session, handoff, body, media, location, place)


def waiting_for(session: Session, person_id: int | None, *,
                besides: int | None = None) -> Handoff | None:
    """The person's waiting handoff a message of theirs on another channel answers: an
    operator's reply goes where notify reaches them (a caller's by SMS, or on WhatsApp
    while they chat with us), and they answer where it came. One from a call or an SMS
    first, the newest; ``besides``: not the one of that conversation (the chat's own)."""
    if person_id is None:
        return None
    mine = Handoff.person_id == person_id
    if besides is not None:
        mine = mine & (Handoff.conversation_id != besides)
    return session.scalar(select(Handoff).where(mine, Handoff.status == "waiting")
        .order_by(Handoff.channel == "whatsapp", Handoff.created_at.desc(), Handoff.id.desc())
        .limit(1))


def answered_on_whatsapp(session: Session, handoff: Handoff) -> bool:
    """Whether an operator wrote to the person on WhatsApp in ``handoff`` (their reply
    went there): what the person writes there next answers the operator."""
    return session.scalar(
        select(HandoffMessage.id)
        .join(OutboxMessage, OutboxMessage.id == HandoffMessage.outbox_id)
        .where(HandoffMessage.handoff_id == handoff.id, HandoffMessage.direction == "out",
               OutboxMessage.channel == "whatsapp")
        .limit(1)) is not None


def team_wrote(session: Session, handoff: Handoff) -> bool:
    """Whether someone of the team wrote to (or called) the person in ``handoff``: what
    she sends now, a bare "0" too, may answer their question."""
    return session.scalar(
        select(HandoffMessage.id).where(HandoffMessage.handoff_id == handoff.id,
                                        HandoffMessage.direction == "out").limit(1)) is not None


def keep_inbound(session: Session, handoff: Handoff, body: str,
                 media: Sequence[tuple[str, str]] = (),
                 location: tuple[float, float] | None = None,
                 place: str | None = None) -> None:
    """Keep a message of the user's on ``handoff`` (as ``record_inbound`` says)."""
    lines = [body.strip()[:1600]] if body.strip() else []
    lines += [f"[{_media_label(kind)}] {url}".rstrip() for kind, url in media]
    if location is not None:
        pin = f"[location] {location[0]:.5f},{location[1]:.5f}"
        lines.append(f"{pin} {place}" if place else pin)
    if lines:
        session.add(HandoffMessage(handoff_id=handoff.id, direction="in",
                                   body="\n".join(lines), created_at=clock.now()))


_MEDIA_LABELS = {"audio": "voice note", "image": "photo", "video": "video"}


def _media_label(content_type: str) -> str:
    """"voice note" for audio/ogg, "photo" for image/jpeg...; "file" for anything else."""
    return _MEDIA_LABELS.get(content_type.split("/", 1)[0], "file")


def waiting_list(session: Session, offset: int = 0, limit: int | None = None, *,
                 after: tuple[datetime, int] | None = None) -> list[Handoff]:
    """Open handoffs, oldest first (the operators' queue), a page of it if asked: from
    ``offset``, or after the (created_at, id) of the last row an operator saw (a keyset,
    so handoffs closed meanwhile make them skip nobody)."""
    stmt = select(Handoff).where(Handoff.status == "waiting") \
        .order_by(Handoff.created_at, Handoff.id)
    if after is not None:
        stmt = stmt.where(tuple_(Handoff.created_at, Handoff.id) > tuple_(*after))
    return list(session.scalars(stmt.offset(offset).limit(limit)))


def phone_to_call(session: Session, handoff_id: int, operator: str, *,
                  take_over: bool = False) -> tuple[str, str | None]:
    """The full number of the person waiting, for an operator who must call them back
    (the lists show it masked). The operator takes the handoff, and the call is noted on
    it: activity, so the idle close neither apologises that nobody answered nor cuts in
    while they talk. A call is an answer: a person another operator is answering is
    refused (Conflict ``taken_by_other``) unless ``take_over``. The number, and the
    operator taken over from, if any (for the audit log). A WhatsApp customer kept by
    their WhatsApp id alone (a business account on a landline) is called at that number,
    as ops call a booking's customer; none that is a number: NotFound ``no_phone``."""
    handoff, _conv, person = _get_open(session, handoff_id)
    number = person.phone or _whatsapp_number(person.wa_id)
    if not number:
        raise NotFound("this person has no phone number", code="no_phone")
    taken_from = _take(session, handoff, operator, take_over)
    session.add(HandoffMessage(handoff_id=handoff.id, direction="out", body="[phone call]",
                               operator=operator, created_at=clock.now()))
    return number, taken_from


def _whatsapp_number(wa_id: str | None) -> str | None:
    """The E.164 number of a WhatsApp id (its digits), None if it is none."""
    number = "+" + wa_id.removeprefix("+") if wa_id else ""
    return number if is_e164(number) else None


def _get_open(session: Session, handoff_id: int) -> tuple[Handoff, Conversation, Person]:
    found = session.get(Handoff, handoff_id)
    if found is None:
        raise NotFound("no such handoff", code="not_found")
    # The conversation first, then the handoff: a turn locks them in that order.
    conv = session.get(Conversation, found.conversation_id, with_for_update=True)
    handoff = session.get(Handoff, handoff_id, with_for_update=True, populate_existing=True)
    assert handoff is not None
    if handoff.status != "waiting":
        raise Conflict("this handoff is closed", code="handoff_closed")
    person = session.get(Person, handoff.person_id) if handoff.person_id else None
    if conv is None or person is None:
        raise NotFound("the conversation is gone", code="not_found")
    return handoff, conv, person


def operator_id(handoff: Handoff) -> int | None:
    """The person id of the operator answering the handoff (``ops:<id>``), if any."""
    return ops_person_id(handoff.operator)


def ops_person_id(operator: str | None) -> int | None:
    """The person id in an operator's ``ops:<id>`` (a handoff's, a message's), if it is one."""
    who = operator or ""
    return int(who[4:]) if who.startswith("ops:") and who[4:].isdigit() else None


def _take(session: Session, handoff: Handoff, operator: str, take_over: bool) -> str | None:
    """``operator`` answers the handoff (a reply, a call, a close): it becomes theirs if
    nobody's. A person is answered by one operator, however many of their requests wait
    (a chat, and a call where they asked again): while another operator has any of them,
    it is refused (Conflict ``taken_by_other``) unless ``take_over``, which takes every
    one of them the other had. The operator taken over from, if any."""
    if handoff.operator == ANSWERED_BY_PHONE:
        # Someone took the caller's call from the IVR; whoever writes to them now has them.
        handoff.operator = operator
    others: list[Handoff] = []
    if handoff.person_id is not None:
        # Two operators answering two requests of one person take turns here: the second
        # sees the first's (committed) answer below. (The lock's second key is an int4:
        # two persons sharing one past 2**31 only wait for each other.)
        session.execute(select(func.pg_advisory_xact_lock(TAKE_LOCK_KEY,
                                                          handoff.person_id % 2**31)))
        others = list(session.scalars(
            select(Handoff).where(Handoff.person_id == handoff.person_id,
                                  Handoff.status == "waiting", Handoff.id != handoff.id)
            .order_by(Handoff.id).execution_options(populate_existing=True)))
    held = [h for h in [handoff, *others]
            if h.operator not in (None, operator) and operator_id(h) is not None]
    taken_from = None
    if held:
        if not take_over:
            raise Conflict(f"another operator ({held[0].operator}) is answering this person; "
                           "send take_over to answer them yourself", code="taken_by_other")
        taken_from = held[0].operator
        for h in held:
            if h is not handoff:  # locked before it changes hands (a turn may hold it)
                session.refresh(h, with_for_update=True)
                if h.status != "waiting":
                    continue
            h.operator = operator
    handoff.operator = handoff.operator or operator
    return taken_from


def answering(session: Session, handoffs: Sequence[Handoff]) -> dict[int, int]:
    """For the persons of ``handoffs``: the person id of the operator answering them on
    any of their open handoffs (``_take``: one operator a person), by person id."""
    person_ids = {h.person_id for h in handoffs if h.person_id is not None}
    if not person_ids:
        return {}
    found: dict[int, int] = {}
    for h in session.scalars(select(Handoff).where(
            Handoff.person_id.in_(person_ids), Handoff.status == "waiting",
            Handoff.operator.like("ops:%")).order_by(Handoff.id)):
        who = operator_id(h)
        if who is not None and h.person_id is not None:
            found.setdefault(h.person_id, who)
    return found


def reply(session: Session, handoff_id: int, operator: str, body: str, *,
          take_over: bool = False) -> str | None:
    """An operator's answer to the user, sent through the outbox. Two operators must not
    answer one person at once (two answers to one question): the first to answer or call
    has them, and another's reply is refused (Conflict ``taken_by_other``) unless it takes
    them over. The operator taken over from, if any (for the audit log)."""
    if not body.strip():
        raise ValidationError("write the reply: it is empty", code="empty_message",
                              field="body")
    handoff, conv, person = _get_open(session, handoff_id)
    taken_from = _take(session, handoff, operator, take_over)
    lang = language(session, person, conv)
    row_id = _send(session, person, body.strip(), lang=lang)
    if row_id is None:
        raise _unreachable(session, person, body.strip(), lang)
    session.add(HandoffMessage(handoff_id=handoff.id, direction="out", body=body.strip(),
                               operator=operator, outbox_id=row_id, created_at=clock.now()))
    return taken_from


def _unreachable(session: Session, person: Person, body: str, lang: str) -> Conflict:
    """Why a reply found no way to the person (``_send`` queued nothing, in ``lang``: the
    language they are spoken to in, whose template would carry it), for the operator:
    ``whatsapp_window_closed`` when WhatsApp would take it once they write again (over 24
    hours since they last did, no approved template for it, and no SMS to send instead),
    else ``recipient_unreachable``, saying whether they stopped our messages or we have
    no way to them."""
    sms_open = person.phone is not None and not person.sms_opted_out
    if person.opted_out:
        return Conflict("this person sent STOP on WhatsApp" + (
            ", and STOP by SMS too" if person.phone else ", and we have no number for an SMS")
            + ": no message can reach them", code="recipient_unreachable")
    chat = session.scalar(select(Conversation).where(
        Conversation.person_id == person.id, Conversation.channel == "whatsapp")
        .order_by(Conversation.last_inbound_at.desc().nulls_last()).limit(1))
    no_sms = "they turned off our SMS" if person.phone else "we have no number for an SMS"
    if chat is not None and not notify.in_whatsapp_window(chat):
        template = lang in notify.whatsapp_templates()
        if template and not outbox.fits_template(body):
            return Conflict(
                "this person last wrote on WhatsApp over 24 hours ago, so a reply goes in "
                f"the approved template, which takes at most {outbox.TEMPLATE_TEXT_MAX} "
                f"characters on one line; and {no_sms}. Shorten the reply, or send it once "
                "they write to us again", code="whatsapp_window_closed")
        if not template:
            return Conflict(
                "this person last wrote on WhatsApp over 24 hours ago: WhatsApp lets us "
                f"write first only with an approved template, and none is set up for {lang}; "
                f"and {no_sms}. Your reply can go once they write to us again",
                code="whatsapp_window_closed")
    if chat is None and not sms_open:
        return Conflict(f"this person does not chat with us on WhatsApp and {no_sms}: no "
                        "message can reach them", code="recipient_unreachable")
    return Conflict("this person cannot be messaged now (they stopped our messages, or "
                    "we have no way to reach them)", code="recipient_unreachable")


def close(session: Session, handoff_id: int, operator: str, *,
          take_over: bool = False, seen: int | None = None) -> str | None:
    """Give the conversation back to the bot (main menu) and tell the user. Closing is an
    answer too: a person another operator is answering is refused (Conflict
    ``taken_by_other``) unless ``take_over``; the handoff names who closed it. With
    ``seen`` (the id of the newest message the operator read), a message of the person's
    after it refuses the close (Conflict ``new_message``): "one more thing" written while
    the operator typed would otherwise be shut in a closed handoff nobody reads. The
    operator taken over from, if any (for the audit log)."""
    handoff, conv, person = _get_open(session, handoff_id)
    if seen is not None and session.scalar(select(HandoffMessage.id).where(
            HandoffMessage.handoff_id == handoff.id, HandoffMessage.direction == "in",
            HandoffMessage.id > seen).limit(1)) is not None:
        raise Conflict("the person wrote again after the message you read: read it, then "
                       "answer or close; nothing changed", code="new_message", field="seen")
    taken_from = _take(session, handoff, operator, take_over)
    _finish(session, handoff, conv, person, operator, "bot.handoff.closed")
    return taken_from


def _finish(session: Session, handoff: Handoff, conv: Conversation, person: Person,
            operator: str, message: str, **values: object) -> None:
    handoff.status = "closed"
    handoff.operator = handoff.operator or operator
    handoff.closed_at = clock.now()
    conv.handoff = False
    if conv.channel != "voice":
        # A call's place is its own: a call under way keeps its step (its next key is for
        # the question it heard), and the next call starts at the menu anyway.
        conv.step = "menu"
        conv.misses = 0
    if session.scalar(select(Handoff.id).where(
            Handoff.person_id == person.id, Handoff.status == "waiting",
            Handoff.id != handoff.id).limit(1)) is not None:
        # They still wait on another channel (a chat and a call): "the menu is back"
        # would be untrue there, where the bot stays quiet; that one's close tells them.
        return
    lang = language(session, person, conv)
    _send(session, person, i18n.t(message, lang, **values),
          dedupe_key=f"handoff-{handoff.id}-closed", lang=lang)
    _rating_owed(session, person.id)


def _rating_owed(session: Session, person_id: int | None) -> None:
    """The person's handoff closed: a rating question that fell due while it was open
    (rating.ask_after_delivery waits while a person has the chat) is tried once the chat
    has been quiet a while, not at its backed-off time hours away."""
    from core.services import rating  # rating asks whether a person has the chat

    if person_id is not None:
        rating.ask_next_soon(session, person_id)


def language(session: Session, person: Person, conv: Conversation | None) -> str:
    """The language the person is spoken to in: the one they chose, else the one the bot
    guessed and speaks with them while they have not chosen (the state's ``lang_guess``,
    of this conversation, else of their newest one with a guess), else the default."""
    if person.preferred_language:
        return person.preferred_language
    guess = (conv.state or {}).get("lang_guess") if conv is not None else None
    if not guess:
        guess = session.scalar(select(Conversation.state["lang_guess"].astext).where(
            Conversation.person_id == person.id,
            Conversation.state["lang_guess"].astext.is_not(None))
            .order_by(Conversation.last_inbound_at.desc().nulls_last(), Conversation.id.desc())
            .limit(1))
    return guess if guess in i18n.LANGUAGES else i18n.DEFAULT_LANGUAGE


def _send(session: Session, person: Person, body: str,
          dedupe_key: str | None = None, *, lang: str) -> int | None:
    """An answer to the person's own call for help, on the channel notify picks. After a
    STOP on WhatsApp it goes by SMS all the same (they asked for it, as for a sign-in
    code); after an SMS opt-out (or with neither channel open), not at all. ``lang``: the
    language they are spoken to in (``language``: the one guessed, while they chose
    none), whose approved template carries it outside WhatsApp's 24 hours."""
    if person.opted_out and person.phone and not person.sms_opted_out:
        return outbox.queue_message(session, channel="sms", to=person.phone, body=body,
                                    dedupe_key=dedupe_key, asked=True)
    return notify.send_to_person(session, person, body, dedupe_key=dedupe_key, lang=lang)


def _last_activity() -> ColumnElement[datetime]:
    """SQL: when a handoff last saw a message either way (or was asked for)."""
    last = (select(func.max(HandoffMessage.created_at))
            .where(HandoffMessage.handoff_id == Handoff.id).scalar_subquery())
    return func.greatest(Handoff.created_at, func.coalesce(last, Handoff.created_at))


def expire_idle(now: datetime | None = None) -> int:
    """Close the handoffs with no message either way for ``idle_hours()`` of the team's
    hours (run by the sweep): nothing else would give the conversation back to the bot,
    which stays quiet meanwhile. Only time the team was at work counts, so a request made
    near closing or at night waits for them (it was told when they start), and nothing
    is closed while they are away. Nobody answered: the user hears we are sorry and gets
    the ops phone; an operator who answered and forgot to close: the usual closing words.
    Returns how many."""
    now = now or clock.now()
    idle = timedelta(hours=idle_hours())
    hours = get_settings().ops_hours
    if not is_open(hours, now):
        return 0
    # The team's time since the last activity is at most the time since then: SQL finds
    # the handoffs idle that long, and the team's share of it is counted here.
    with transaction() as session:
        rows = session.execute(select(Handoff.id, _last_activity()).where(
            Handoff.status == "waiting", _last_activity() < now - idle).order_by(Handoff.id))
        ids = [hid for hid, last in rows if team_time(hours, last, now) >= idle]
    closed = 0
    for handoff_id in ids:
        with transaction() as session:
            # Locked and checked again: an operator or a message may have come since, or
            # another sweep closed it.
            # The conversation first, as a turn locks them; one a turn holds now is busy:
            # the next sweep looks again.
            conv = session.scalar(select(Conversation).join(
                Handoff, Handoff.conversation_id == Conversation.id)
                .where(Handoff.id == handoff_id).with_for_update(skip_locked=True,
                                                                 of=Conversation))
            if conv is None:
                continue
            found = session.execute(select(Handoff, _last_activity()).where(
                Handoff.id == handoff_id, Handoff.status == "waiting")
                .with_for_update(skip_locked=True, of=Handoff)).first()
            if found is None or team_time(hours, found[1], now) < idle:
                continue
            handoff = found[0]
            person = session.get(Person, handoff.person_id) if handoff.person_id else None
            if person is None:
                handoff.status, handoff.closed_at = "closed", clock.now()
                continue
            if handoff.operator is None:
                _finish(session, handoff, conv, person, "system:idle", "bot.handoff.expired",
                        ops_phone=get_settings().ops_phone)
            else:
                _finish(session, handoff, conv, person, "system:idle", "bot.handoff.closed")
            closed += 1
    if closed:
        log.warning("handoffs closed after waiting too long", extra={"count": closed})
    return closed


# Ops heard that nobody answered this handoff in time (alert_unanswered): once per wait, by
# the wait's first message (none: the handoff's own, never answered, first wait).
OPS_TOLD_KEY = "handoff:ops-told:{handoff}"
OPS_TOLD_AGAIN_KEY = "handoff:ops-told:{handoff}:{message}"
OPS_TOLD_S = 7 * 86400  # longer than a handoff stays open (expire_idle)


def alert_unanswered(now: datetime | None = None) -> int:
    """Ops hear of a person still waiting for an answer when the reply we promised is due
    (run by the dispatch sweep, every minute): once per wait, when it has lasted
    ``reply_minutes()`` of the team's hours. A wait is what an operator team counts as
    "she is waiting for us" (``_wait_start``):

    - a handoff nobody took (no reply, no call, no close): from when it was asked for;
    - one an operator answered, or took (by phone too): from the person's first message
      with no message of the team's after it, until someone of the team writes, calls or
      closes; what more she writes meanwhile is the same wait (no SMS per message);
    - the person asking again (ASKED_AGAIN: a caller back on the line) once the wait she
      was in was due: a new wait, from then, alerted as a new message would be.

    An operator's handoff whose wait is due goes back to the queue (``_give_back``): she
    may have gone home, and the idle close never comes while the person keeps writing;
    any operator may answer now, the first to do so has her (``_take``), and the operator
    who had her is told by SMS. Only the team's time counts, as for the idle close: a
    request at night was told when the team starts, not promised minutes, and nothing goes
    while the team is away. The SMS names the handoff's id (as the ops list shows it) and
    how long the person has waited, never their number. Returns how many alerts went."""
    from core.services.dispatch import alert_ops  # dispatch imports handoff's callers

    now = now or clock.now()
    hours = get_settings().ops_hours
    if not is_open(hours, now):
        return 0
    wait = timedelta(minutes=reply_minutes())
    out = aliased(HandoffMessage)
    last_out = (select(func.max(out.id)).where(out.handoff_id == Handoff.id,
                                               out.direction == "out")
                .correlate(Handoff).scalar_subquery())
    with transaction() as session:
        # A wait begins no sooner than the handoff (by ix_handoffs_waiting_created_at).
        handoffs = session.execute(select(
            Handoff.id, Handoff.operator, Handoff.created_at, last_out.label("last_out"))
            .where(Handoff.status == "waiting", Handoff.created_at <= now - wait)
            .order_by(Handoff.created_at, Handoff.id)).all()
        # The person's messages since the team's last one, of each.
        ins: dict[int, list[tuple[int, datetime, bool]]] = {hid: [] for hid, *_ in handoffs}
        team_last = (select(func.max(out.id)).where(
            out.handoff_id == HandoffMessage.handoff_id, out.direction == "out")
            .correlate(HandoffMessage).scalar_subquery())
        if handoffs:
            for of, message_id, sent_at, asked in session.execute(
                    select(HandoffMessage.handoff_id, HandoffMessage.id,
                           HandoffMessage.created_at,
                           HandoffMessage.body.startswith(ASKED_AGAIN, autoescape=True))
                    .where(HandoffMessage.handoff_id.in_(list(ins)),
                           HandoffMessage.direction == "in",
                           HandoffMessage.id > func.coalesce(team_last, 0))
                    .order_by(HandoffMessage.handoff_id, HandoffMessage.id)):
                ins[of].append((message_id, sent_at, bool(asked)))
    due: list[tuple[int, int | None, datetime]] = []
    for hid, operator, created_at, last in handoffs:
        start = _wait_start(hours, wait, created_at, ins[hid],
                            taken=last is not None or operator is not None)
        if start is not None and team_time(hours, start[1], now) >= wait:
            due.append((hid, *start))
    due.sort(key=lambda row: (row[2], row[0]))
    if not due:
        return 0
    r = redis_client()
    try:
        with r.pipeline(transaction=False) as pipe:
            for hid, mid, _at in due:
                pipe.exists(_told_key(hid, mid))
            told = pipe.execute()
    except RedisError:
        log.warning("unanswered handoffs not checked: Redis away")
        return 0
    alerted = 0
    for (hid, mid, at), done in zip(due, told, strict=True):
        if done:
            continue
        minutes = int((now - at).total_seconds() // 60)
        with transaction() as session:
            if mid is None:
                # Read again: an operator may have answered since (no lock: a turn holds
                # the conversation, then the handoff; at worst one alert comes as they
                # answer).
                if session.scalar(select(Handoff.id).where(
                        Handoff.id == hid, Handoff.status == "waiting",
                        Handoff.operator.is_(None))) is None:
                    continue
                dedupe = f"handoff-{hid}-ops-waiting"
            elif not _give_back(session, hid, mid, minutes):
                continue
            else:
                dedupe = f"handoff-{hid}-ops-waiting-{mid}"
            alert_ops(session, "handoff.ops_waiting", dedupe_key=dedupe, ref=str(hid),
                      minutes=minutes)
            after_commit(session, functools.partial(_mark_told, hid, mid))
        alerted += 1
    if alerted:
        log.warning("handoffs unanswered past the promised reply", extra={"count": alerted})
    return alerted


def _wait_start(hours: tuple[int, int] | None, wait: timedelta, created_at: datetime,
                ins: Sequence[tuple[int, datetime, bool]], *, taken: bool
                ) -> tuple[int | None, datetime] | None:
    """Where the person's current wait in a handoff began: (the message it began with,
    None for the handoff's own asking; when). ``ins``: her messages since the team's last
    one (id, time, whether it is ASKED_AGAIN), oldest first; ``taken``: an operator wrote,
    called or took it (by phone too). None: she waits for nobody (taken, and nothing of
    hers since). Asking again once the wait was due (``wait`` of team time) begins a new
    one; anything else she writes is part of the wait she is in."""
    start: tuple[int | None, datetime]
    rest = list(ins)
    if taken:
        if not rest:
            return None
        start = (rest[0][0], rest[0][1])
        rest = rest[1:]
    else:
        start = (None, created_at)
    for mid, at, asked in rest:
        if asked and team_time(hours, start[1], at) >= wait:
            start = (mid, at)
    return start


def _told_key(handoff_id: int, message_id: int | None) -> str:
    if message_id is None:
        return OPS_TOLD_KEY.format(handoff=handoff_id)
    return OPS_TOLD_AGAIN_KEY.format(handoff=handoff_id, message=message_id)


def _give_back(session: Session, handoff_id: int, message_id: int, minutes: int) -> bool:
    """The wait that began with message ``message_id`` of the person's is still unanswered
    in ``handoff_id`` (locked and read again: no message of the team's since, and still
    open): the handoff is nobody's again, with the person's other waiting ones the same
    operator had (one operator a person), as when an operator is removed, and that operator
    hears by SMS that it went back to the queue (``minutes``: how long the person has
    waited). One taken by phone stays so (anyone may answer it). True if ops are to hear
    of it. The conversations of the person's waiting handoffs are locked first, by id,
    then the handoff: a turn, a reply or a close takes a conversation before its handoff,
    and a reply another handoff of the person's after its own (``_take``)."""
    found = session.get(Handoff, handoff_id)
    if found is None:
        return False
    mine = Handoff.id == handoff_id
    if found.person_id is not None:
        mine = mine | (Handoff.person_id == found.person_id)
    conv_ids = sorted(set(session.scalars(select(Handoff.conversation_id).where(
        mine, Handoff.status == "waiting"))) | {found.conversation_id})
    list(session.scalars(select(Conversation.id).where(Conversation.id.in_(conv_ids))
                         .order_by(Conversation.id).with_for_update()))
    handoff = session.get(Handoff, handoff_id, with_for_update=True, populate_existing=True)
    if handoff is None or handoff.status != "waiting" or session.scalar(
            select(HandoffMessage.id).where(
                HandoffMessage.handoff_id == handoff_id, HandoffMessage.direction == "out",
                HandoffMessage.id > message_id).limit(1)) is not None:
        return False  # answered since, or closed
    who, had_id = handoff.operator, operator_id(handoff)
    if had_id is None:
        return True
    released = [handoff_id]
    handoff.operator = None
    if handoff.person_id is not None:
        released += session.scalars(update(Handoff).where(
            Handoff.person_id == handoff.person_id, Handoff.status == "waiting",
            Handoff.operator == who, Handoff.id != handoff_id)
            .values(operator=None).returning(Handoff.id)
            .execution_options(synchronize_session=False)).all()
    log.warning("handoff back in the queue: a message waited for its operator too long",
                extra={"handoff_ids": sorted(released)})
    had = session.get(Person, had_id)
    if had is not None and had.phone:
        # She may be away from the ops screen: told where ops alerts reach her, that the
        # person is not hers now (another operator may answer before she is back).
        notify.notify_known_phone(session, had, "handoff.ops_given_back", sms_only=True,
                                  dedupe_key=f"handoff-{handoff_id}-given-back-{message_id}",
                                  ref=str(handoff_id), minutes=minutes)
    return True


def _mark_told(handoff_id: int, message_id: int | None = None) -> None:
    """Remember that ops heard of ``handoff_id`` (of its message ``message_id``) (Redis
    away: its outbox rows' dedupe key keeps a second alert from going; the next sweep only
    asks again)."""
    try:
        redis_client().set(_told_key(handoff_id, message_id), 1, ex=OPS_TOLD_S)
    except RedisError:
        log.warning("handoff alert not remembered: Redis away",
                    extra={"handoff_id": handoff_id})

"""Partners by SMS: one inbound message -> one command -> one short answer.

Runs inside core.services.inbound.process (one transaction, deduplicated by MessageSid),
so a retried webhook never accepts an offer twice. Commands are parsed by
core.domain.dispatch.parse_command (English, Hindi in Devanagari and in Latin letters, and
the other catalog languages' words for the commands, in their scripts).
A stranger gets one line on how to book, once a day (a customer with a booking under way:
how to track or cancel it; the recipient of a parcel under way: where it is); anything we
cannot act on gets a clear answer in the partner's language, never an error page. A
number we do not text (a foreign or premium one, unless ops set up its partner) is
answered nothing: every answer is an SMS we pay for (SMS pumping). A
customer waiting for a person (a caller the operator answers by SMS) is not answered by
the bot: their SMS is kept for the operator; so is a partner's that is no command.
"""

from __future__ import annotations

import hashlib
import logging
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core import clock, i18n
from core.adapters.db import database_away
from core.adapters.models import Booking, OutboxMessage, Person
from core.adapters.queue import after_commit
from core.adapters.redis_conn import redis_client, redis_down
from core.config import get_settings
from core.domain.booking import BOOKING, BookingStatus
from core.domain.dispatch import Kind, parse_command
from core.domain.errors import DomainError
from core.domain.phone import is_indian_mobile
from core.services import dispatch, handoff, outbox, partner_app
from core.services.inbound import InboundMessage, lost_a_race

log = logging.getLogger(__name__)


def handle(session: Session, msg: InboundMessage) -> list[str]:
    """Answer one partner SMS (the handler given to inbound.process)."""
    person, partner = dispatch.find_partner(session, msg.phone)
    if msg.phone and msg.body.strip().casefold() in OPT_IN_WORDS:
        # Twilio lets our SMS to the number through again from now on, whoever sent it.
        outbox.note_sms_opt_in(msg.phone)
    lang = (person.preferred_language if person else None) or i18n.DEFAULT_LANGUAGE
    if partner is None:
        if person is None and msg.phone and msg.body.strip().casefold() in OPT_OUT_WORDS:
            # A recipient we never met (most have no row): the opt-out is kept, so their
            # drop code goes another way or not at all, never to a number Twilio refuses.
            person = Person(phone=msg.phone, role="customer", sms_opted_out=True)
            session.add(person)
            return []
        if person is None and msg.phone and msg.body.strip().casefold() in OPT_IN_WORDS \
                and outbox.number_opted_in(session, msg.phone, "sms"):
            return []  # the opt-out kept for a number nobody holds ends; Twilio confirms it
        if _opt_out_or_in(session, person, None, msg.body, lang) is not None:
            return []  # a customer's or a recipient's opt-out word: recorded, Twilio answers
        waiting = handoff.waiting_for(session, person.id) if person is not None else None
        if waiting is not None:
            # They wait for a person (a caller, whom the operator answers by SMS): kept
            # for the operator, and no bot answer, as in a chat while it waits.
            handoff.keep_inbound(session, waiting, msg.body)
            return []
        if not texted_by_us(msg.phone, person):
            # Our answer is an SMS we pay for: to a foreign number (or a premium one) it is
            # what SMS-pumping fraud runs up, one a day for every number it sends from.
            log.info("an SMS from a number we do not text; not answered")
            return []
        return _tell_stranger(session, msg.contact, lang, person)
    cmd = parse_command(msg.body)
    savepoint = session.begin_nested()
    try:
        replies = _opt_out_or_in(session, person, partner, msg.body, lang)
        if replies is None and _for_the_operator(session, partner, cmd):
            waiting = handoff.waiting_for(session, person.id if person else None)
            if waiting is not None:
                # A partner waiting for a person (he called; the operator answers by SMS):
                # what is no command is his answer, kept for the operator, no bot answer.
                handoff.keep_inbound(session, waiting, msg.body)
                replies = []
        if replies is None:
            replies = _run(session, partner, cmd, lang)
        savepoint.commit()
        return replies
    except DomainError as exc:
        savepoint.rollback()
        log.info("partner command refused", extra={"code": exc.code, "command": cmd.kind})
        return [i18n.t("dispatch.cannot_now", lang, ops_phone=get_settings().ops_phone)]
    except Exception as exc:
        if lost_a_race(exc) or database_away(exc) or redis_down(exc):
            # A deadlock or serialization failure: the turn's whole transaction is aborted
            # and runs again (inbound._claimed_turn); "try later" would lose the command.
            # PostgreSQL or Redis away: Twilio gets an error and sends the SMS again.
            raise
        # Never a 500 to Twilio (it would retry into the same bug): undo this command's
        # changes, keep the MessageSid claimed, tell the partner to try again.
        savepoint.rollback()
        log.exception("partner command failed", extra={"command": cmd.kind})
        return [i18n.t("common.error_try_later", lang)]


def texted_by_us(phone: str | None, person: Person | None) -> bool:
    """Whether we answer an SMS from ``phone`` by SMS: an Indian mobile's (as sign-in
    codes and phone bookings go only to those), or one of the operators and partners ops
    set up, whatever their number."""
    return (phone is not None and is_indian_mobile(phone)) or (
        person is not None and person.role in STAFF_ROLES)


STAFF_ROLES = frozenset({"ops", "partner"})


# Twilio's own opt-out and opt-in keywords (a message that is the word alone, any case):
# Twilio answers them itself, and after an opt-out refuses every SMS to the number (error
# 21610) until an opt-in. A partner who cannot be texted can take no job by text, so an
# opt-out takes them off duty. CANCEL is Twilio's too, and our partners' command ("CANCEL
# 57"): a bare one is left to the command, and should Twilio take it as an opt-out, the
# outbox takes the partner off duty at the first refused SMS.
OPT_OUT_WORDS = frozenset({"stop", "stopall", "unsubscribe", "end", "quit", "revoke", "optout"})
OPT_IN_WORDS = frozenset({"start", "unstop", "yes"})


def _opt_out_or_in(session: Session, person: Person | None, partner, body: str,
                   lang: str) -> list[str] | None:
    """The answer to an SMS opt-out or opt-in keyword (None: any other message), for
    anyone we know (a partner, or a customer or recipient: ``partner`` None). The opt-out
    is SMS's alone: WhatsApp stays open. After an opt-out a partner without the app is
    off duty (as OFF: their open offers answered no, a job taken stays theirs), and
    nothing is answered (Twilio does, and lets nothing of ours through). An opt-in ends
    the opt-out; a partner's START and YES then do what they always do (ON, accept)."""
    word = body.strip().casefold()
    if person is None:
        return None
    if word in OPT_OUT_WORDS:
        person.sms_opted_out = True
        if partner is not None and not partner.has_app:  # the app still brings offers
            dispatch.set_duty(session, partner, False)
            log.info("partner opted out of SMS: off duty")
        return []
    if word in OPT_IN_WORDS and person.sms_opted_out:
        person.sms_opted_out = False
        if partner is None:
            return []  # Twilio confirms it
        if word == "unstop":
            return dispatch.status_lines(session, partner, lang)
    return None


_INDIA = ZoneInfo("Asia/Kolkata")


def _open_booking(session: Session, person: Person | None) -> str | None:
    """The reference of the newest booking of this customer that is not over, if any."""
    if person is None:
        return None
    return session.scalar(
        select(Booking.reference).where(Booking.customer_id == person.id,
                                        Booking.status.not_in([s.value for s in BOOKING.closed]))
        .order_by(Booking.created_at.desc(), Booking.id.desc()).limit(1))


# A parcel paid for and not yet delivered is really coming: its recipient has been told
# (the drop code) or soon will be. Before payment nothing is promised to them.
_COMING = (BookingStatus.PAID, BookingStatus.DISPATCHING, BookingStatus.ASSIGNED,
           BookingStatus.PICKED_UP, BookingStatus.IN_TRANSIT)
_ON_THE_WAY = (BookingStatus.PICKED_UP, BookingStatus.IN_TRANSIT)


def _to_her(phone: str) -> list[str]:
    """The outbox addresses of a number: by SMS, and on WhatsApp (she stopped our SMS)."""
    return [phone, f"whatsapp:{phone}"]


def _parcel_coming(session: Session, phone: str | None,
                   person: Person | None = None) -> Booking | None:
    """The parcel under way to this number (its booking's recipient) she most likely asks
    about: the one we last sent her news of (its drop code, say), else the newest. Never a
    booking of her own (``person``): for that one she is the customer."""
    if phone is None:
        return None
    last_told = (select(func.max(OutboxMessage.id))
                 .where(OutboxMessage.booking_id == Booking.id,
                        OutboxMessage.to_addr.in_(_to_her(phone)))
                 .correlate(Booking).scalar_subquery())
    query = select(Booking).where(Booking.recipient_phone == phone,
                                  Booking.status.in_([s.value for s in _COMING]))
    if person is not None:
        query = query.where(Booking.customer_id != person.id)
    return session.scalar(query.order_by(last_told.desc().nulls_last(),
                                         Booking.created_at.desc(), Booking.id.desc()).limit(1))


def _drop_code_sent(session: Session, parcel: Booking) -> bool:
    """Whether a drop code of the parcel went to its recipient (it goes when the last leg
    is taken: dispatch.send_leg_codes), by SMS or on WhatsApp."""
    assert parcel.recipient_phone is not None
    return session.scalar(
        select(OutboxMessage.id).where(OutboxMessage.booking_id == parcel.id,
                                       OutboxMessage.dedupe_key.like("leg-%-dropotp-%"),
                                       OutboxMessage.to_addr.in_(_to_her(parcel.recipient_phone)))
        .limit(1)) is not None


def _answers_parcel(session: Session, contact: str, own_ref: str, parcel: Booking) -> bool:
    """For a customer with a booking under way who is also awaiting someone's parcel: True
    if the SMS they answer is most likely about the parcel, i.e. the last SMS we sent this
    number was about it (its drop code, say). A customer's own news mostly goes on
    WhatsApp, so an SMS from them is often an answer to the recipient's code; with nothing
    to tell, their own booking comes first (they can act on it: track, cancel)."""
    last = session.scalar(
        select(Booking.reference).join(OutboxMessage, OutboxMessage.booking_id == Booking.id)
        .where(OutboxMessage.channel == "sms", OutboxMessage.to_addr == contact,
               Booking.reference.in_([own_ref, parcel.reference]))
        .order_by(OutboxMessage.created_at.desc(), OutboxMessage.id.desc()).limit(1))
    return last == parcel.reference


def _tell_stranger(session: Session, contact: str, lang: str,
                   person: Person | None = None) -> list[str]:
    """How to book, once per India day per number (the contact); after that, silence. A
    customer with a booking under way (they answer our SMS about it: "CANCEL") is told
    instead how to track or cancel it, and the recipient of a parcel under way (they
    answer its drop code: "when does it come?") where it is: the same once a day.

    Each answer is an SMS we pay for, and an auto-responder (a bank's, another service's)
    answering ours would keep the two numbers texting each other all day. The mark is set
    only once the turn commits, so a turn run again after a lock conflict still answers.
    """
    day = clock.now().astimezone(_INDIA).date().isoformat()
    digest = hashlib.sha256(contact.encode()).hexdigest()[:20]  # no phone number in Redis
    key = f"sms:stranger-told:{day}:{digest}"
    if redis_client().exists(key):
        return []
    after_commit(session, lambda: redis_client().set(key, 1, ex=2 * 24 * 3600))
    open_ref = _open_booking(session, person)
    parcel = _parcel_coming(session, contact, person)
    if parcel is not None and (open_ref is None
                               or _answers_parcel(session, contact, open_ref, parcel)):
        if parcel.status not in _ON_THE_WAY:
            # A direct booking's recipient has her code once a rider took it: no "we send".
            answer = "sms.recipient_coming_code_sent" if _drop_code_sent(session, parcel) \
                else "sms.recipient_coming"
        elif _drop_code_sent(session, parcel):
            answer = "sms.recipient_on_the_way"  # "give the rider the code we sent you"
        else:
            # On a relay her code goes only when the last leg is taken: it will come.
            answer = "sms.recipient_on_the_way_no_code"
        dispatch.mark_recipient_told(session, parcel)  # she hears if it will not come
        # In the language her drop code came in: her own, else the sender's (not Hindi
        # for a recipient we know nothing of).
        return [i18n.t(answer, dispatch.recipient_language(session, parcel),
                       ref=parcel.reference)]
    if open_ref is not None:
        return [i18n.t("sms.customer_help", lang, ref=open_ref)]
    return [i18n.t("sms.not_partner", lang, ops_phone=get_settings().ops_phone)]


def _for_the_operator(session: Session, partner, cmd) -> bool:
    """Whether a partner's SMS is no command the bot can act on, so that, should he wait
    for a person, it is his answer to the operator: words we cannot read, or a bare yes
    or no ("1", "haan") while no offer is open (the operator may ask "reply 1 for yes")."""
    if cmd.kind is Kind.UNKNOWN:
        return True
    return (cmd.kind in (Kind.ACCEPT, Kind.DECLINE) and not cmd.numbers
            and not dispatch.open_offers_of(session, partner))


def _run(session: Session, partner, cmd, lang: str) -> list[str]:
    if cmd.kind is Kind.ON:
        reply = dispatch.set_duty(session, partner, True)
        if reply.key == dispatch.DUTY_SMS_STOPPED:
            # ON is no opt-in: Twilio refuses every SMS to the number (ours in TwiML too)
            # until START, so nothing is answered, as after the opt-out itself.
            return []
    elif cmd.kind is Kind.OFF:
        reply = dispatch.set_duty(session, partner, False)
    elif cmd.kind is Kind.ACCEPT:
        code = cmd.numbers[0] if cmd.numbers else None
        if code is not None and dispatch.stray_number(session, partner, code):
            code = None  # "haan ji 5 minute": yes to his one offer; 5 names no job of his
        reply = dispatch.accept(session, partner, code)
    elif cmd.kind is Kind.DECLINE:
        reply = dispatch.decline(session, partner, cmd.numbers[0] if cmd.numbers else None)
    elif cmd.kind is Kind.PICK:
        reply = dispatch.confirm(session, partner, "pickup", cmd.numbers)
    elif cmd.kind is Kind.DROP:
        reply = dispatch.confirm(session, partner, "drop", cmd.numbers)
    elif cmd.kind is Kind.CANCEL:
        reply = dispatch.cancel_by_partner(session, partner, cmd.numbers)
    elif cmd.kind is Kind.STATUS:
        return dispatch.status_lines(session, partner, lang)
    elif cmd.kind is Kind.HELP:
        return [i18n.t("sms.help", lang)]
    elif cmd.kind is Kind.EARN:
        # What the app's earnings show (partner_app.earnings), for a rider without it.
        earned = partner_app.earnings(session, partner.id)
        return [i18n.t("sms.earnings", lang, today_paise=earned.today_paise,
                       week_paise=earned.week_paise, total_paise=earned.total_paise,
                       legs=earned.delivered_legs)]
    else:  # not understood: with one offer open, most likely an answer to it
        reply = dispatch.not_understood(session, partner)
    return [reply.render(lang)]


__all__ = ["handle"]

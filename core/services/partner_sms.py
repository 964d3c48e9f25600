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
A recipient who says the parcel is not hers ("wrong number") is told sorry and the
sender and ops hear of it; one who asks for her code ("code nahi mila") gets a new one,
a partner too (a parcel sent to him), when it cannot be about his work. A partner who
asks for a code while a job is offered to him is no NO to it: he hears its two choices;
nor is a "Done" (India's "ok") a delivery: without the code DROP asks for it, and with
an offer open and no parcel in his hands he hears the offer's two choices.
A rider who picks up a parcel for its last stretch is told whom it is for.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import BindParameter, bindparam, func, select
from sqlalchemy.orm import Session

from core import clock, i18n
from core.adapters.db import database_away
from core.adapters.models import Booking, Leg, OutboxMessage, Person
from core.adapters.queue import after_commit
from core.adapters.redis_conn import redis_client, redis_down
from core.config import get_settings
from core.dialog import words
from core.dialog.booking import said_time
from core.domain.booking import BOOKING, Actor, BookingStatus, LegStatus
from core.domain.dispatch import (
    CODE_WORDS,
    NEGATORS,
    RECEIVED_WORDS,
    Command,
    Kind,
    parse_command,
    tokens,
)
from core.domain.dispatch import WORDS as COMMAND_WORDS
from core.domain.errors import DomainError
from core.domain.phone import is_indian_mobile
from core.domain.reference import is_valid_reference, normalize_reference
from core.services import dispatch, handoff, notify, outbox, partner_app
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
        return _tell_stranger(session, msg, lang, person)
    cmd = parse_command(msg.body, clock.now().astimezone(_INDIA).time())
    # Held OFF because our offers never reached his phone (no SMS told him), he is heard
    # from now: after his command (its locks first: legs, then his row), he is back ON
    # and his answer says so first, so it never says OFF while the job would say ON.
    held_off = dispatch.held_off_unreached(session, partner)
    word = msg.body.strip().casefold()
    if held_off is not None and (
            _stop_not_alone(msg.body) or word in OPT_OUT_WORDS or word == "cancel"
            or (person is not None and handoff.waiting_for(session, person.id) is not None)):
        # Not when he asks us to stop ("Stop.", "STOP!", a bare CANCEL: Twilio may have
        # opted him out), nor while he waits for a person (no bot answer then): OFF stays.
        held_off = None
    replies = _command(session, person, partner, cmd, msg.body, lang)
    if held_off is None or not dispatch.back_on_heard(session, partner, held_off):
        return replies
    if cmd.kind is Kind.STATUS or msg.body.strip().casefold() == "unstop":
        # Its lines were read while he was OFF: read again, "no job, ON" said by ours.
        replies = dispatch.status_lines(session, partner, lang)
        if replies == [i18n.t("dispatch.status_none_on", lang)]:
            replies = []
    return [i18n.t("dispatch.back_on_reached", lang), *replies]


def _command(session: Session, person: Person | None, partner, cmd: Command, body: str,
             lang: str) -> list[str]:
    """The answer to one partner SMS's command (``cmd``, parsed from ``body``)."""
    savepoint = session.begin_nested()
    try:
        replies = _opt_out_or_in(session, person, partner, body, lang)
        if replies is None and _for_the_operator(session, partner, cmd):
            waiting = handoff.waiting_for(session, person.id if person else None)
            if waiting is not None:
                # A partner waiting for a person (he called; the operator answers by SMS):
                # what is no command is his answer, kept for the operator, no bot answer.
                handoff.keep_inbound(session, waiting, body)
                replies = []
        if replies is None and _stop_not_alone(body):
            replies = [i18n.t("sms.stop_alone", lang)]
        if replies is None:
            replies = _partner_asks_for_code(session, person, partner, cmd, body,
                                             lang)
        if replies is None:
            replies = _code_while_offered(session, person, partner, cmd, body, lang)
        if replies is None:
            replies = _code_step_help(session, partner, cmd, body, lang)
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
    the opt-out; a partner's START and YES then do what they always do (ON, accept), and
    his UNSTOP (opted out or not) answers his status."""
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
    if word == "unstop" and partner is not None:
        # No command of ours: Twilio confirms it with its own opt-in reply (opted out or
        # not: any message that is the word alone), and he hears his status after it,
        # never "not understood".
        return dispatch.status_lines(session, partner, lang)
    return None


# Twilio takes a message as its keyword only when the whole message is the keyword, in
# any case ("sToP"; not "Stop please": its OptOutType article). "Stop." and "STOP!" are
# then no opt-out for Twilio, nor for us; a partner who sends one, or the word with a
# "please", is told how to stop (STOP alone) or to go off duty (OFF).
_BESIDE_STOP = frozenset({"please", "pls", "plz", "sir", "ji"})


def _stop_not_alone(body: str) -> bool:
    """Whether a message is an opt-out word said with a sign or a courtesy beside it
    ("Stop.", "STOP!", "stop please"), which Twilio takes as no opt-out."""
    if body.strip().casefold() in OPT_OUT_WORDS:
        return False
    said = re.findall(r"\w+", body.casefold())  # "STOP 57" is none: a number in it
    return (sum(w in OPT_OUT_WORDS for w in said) == 1
            and all(w in OPT_OUT_WORDS or w in _BESIDE_STOP for w in said))


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


_DISOWNED = dispatch.WRONG_NUMBER_KEY.split("{booking}")  # around the booking's id


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
    # The statuses written into the SQL: the partial index of open bookings by number
    # serves the prepared statement's generic plan too (migration 0047).
    coming: BindParameter[list[str]] = bindparam(
        "coming", [s.value for s in _COMING], expanding=True, literal_execute=True)
    # One her number disowned ("galat number": dispatch.recipient_said_wrong_number) is
    # no parcel of hers: were it the last we texted her of, it would hide her real one.
    disowned = (select(OutboxMessage.id)
                .where(OutboxMessage.booking_id == Booking.id,
                       OutboxMessage.dedupe_key.like(func.concat(
                           _DISOWNED[0], Booking.id, f"{_DISOWNED[1]}%")))
                .correlate(Booking).exists())
    query = select(Booking).where(Booking.recipient_phone == phone,
                                  Booking.status.in_(coming), ~disowned)
    if person is not None:
        query = query.where(Booking.customer_id != person.id)
    return session.scalar(query.order_by(last_told.desc().nulls_last(),
                                         Booking.created_at.desc(), Booking.id.desc()).limit(1))


# Who holds the parcel's drop code now, by the latest message that carried one: she does
# (it, or its copy sent another way, went to her, by SMS or on WhatsApp, and was not
# reported failed: dispatch.recipient_holds_code), the sender does
# (hers was lost and a new one went to them to pass on: dispatch.drop_code_lost), or
# nobody yet (none was sent, or the latest failed too).
HER, SENDER = "her", "sender"
_FAILED = ("failed", "undelivered")


def code_holder(session: Session, parcel: Booking) -> str | None:
    """Who holds the working drop code of the parcel (HER, SENDER or None): a new code
    voids the old ones, so only the latest drop-code message counts, and only while the
    last leg has a code at all. A rider who gives the job back (or ops who take it back:
    dispatch._give_back) voids it at once, and the next rider's accept sends a new one;
    one kept from the night (dispatch._hold_drop_code) is not made yet: nobody holds one
    then, whatever an earlier message carried."""
    assert parcel.recipient_phone is not None
    last = session.scalar(select(Leg).where(Leg.booking_id == parcel.id)
                          .order_by(Leg.sequence.desc()).limit(1))
    if last is None or last.drop_otp_hash is None:
        return None
    if dispatch.recipient_holds_code(session, parcel):  # a copy that reached her counts
        return HER
    latest = session.execute(
        select(OutboxMessage.to_addr, OutboxMessage.status)
        .where(OutboxMessage.booking_id == parcel.id,
               OutboxMessage.dedupe_key.like("leg-%-dropotp-%"))
        .order_by(OutboxMessage.id.desc()).limit(1)).first()
    if latest is None or latest.status in _FAILED:
        return None
    return HER if latest.to_addr in _to_her(parcel.recipient_phone) else SENDER


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


def _tell_stranger(session: Session, msg: InboundMessage, lang: str,
                   person: Person | None = None) -> list[str]:
    """How to book, once per India day per number (the contact); after that, silence. A
    customer with a booking under way (they answer our SMS about it: "CANCEL") is told
    instead how to track or cancel it, and the recipient of a parcel under way (they
    answer its drop code: "when does it come?") where it is: the same once a day. A
    recipient saying the parcel is not hers, or asking for her code, is answered as
    _recipient_asks says, outside that once a day (each is bounded on its own).

    Each answer is an SMS we pay for, and an auto-responder (a bank's, another service's)
    answering ours would keep the two numbers texting each other all day. The mark is set
    only once the turn commits, so a turn run again after a lock conflict still answers.
    """
    contact = msg.contact
    written_in = words.guess_language(msg.body)
    if person is not None and not person.preferred_language and written_in:
        person.preferred_language = written_in  # our later notices to her, in it too
    lang = (person.preferred_language if person else None) or written_in or lang
    open_ref = _open_booking(session, person)
    # The parcel she names by its reference ("code nahi mila 4821 7730"), else the one
    # she most likely means.
    named = _parcel_named(session, contact, parse_command(msg.body).numbers, person)
    parcel = named or _parcel_coming(session, contact, person)
    if parcel is not None and (_said_wrong_number(session, parcel) or (
            named is None and open_ref is not None
            and not _answers_parcel(session, contact, open_ref, parcel))):
        parcel = None  # not hers (she told us so), or her own booking comes first
    # Hers as she writes it: her saved language, the script she writes in, else the one
    # her drop code came in (the sender's).
    her_lang = ((person.preferred_language if person else None) or written_in
                or dispatch.recipient_language(session, parcel)) if parcel else lang
    asked = _recipient_asks(session, msg.body, parcel, person, her_lang) if parcel else None
    if asked is not None:
        return asked.answer if not asked.once_a_day or _first_today(session, contact) else []
    if not _first_today(session, contact):
        return []
    if parcel is not None:
        holder = code_holder(session, parcel)
        if holder == SENDER:
            # Hers did not reach her: a new one went to the sender to pass on.
            answer = "sms.recipient_code_with_sender"
        elif parcel.status not in _ON_THE_WAY:
            # A direct booking's recipient has her code once a rider took it: no "we send".
            answer = "sms.recipient_coming_code_sent" if holder == HER \
                else "sms.recipient_coming"
        elif holder == HER:
            answer = "sms.recipient_on_the_way"  # "give the rider the code we sent you"
        else:
            # On a relay her code goes only when the last leg is taken: it will come.
            answer = "sms.recipient_on_the_way_no_code"
        dispatch.mark_recipient_told(session, parcel)  # she hears if it will not come
        return [i18n.t(answer, her_lang, ref=parcel.reference)]
    if open_ref is not None:
        return [i18n.t("sms.customer_help", lang, ref=open_ref)]
    return [i18n.t("sms.not_partner", lang, ops_phone=get_settings().ops_phone)]


def _first_today(session: Session, contact: str) -> bool:
    """Whether this is the first answer to the contact this India day; the mark is set
    once the turn commits."""
    day = clock.now().astimezone(_INDIA).date().isoformat()
    # No phone number in Redis, nor a plain hash of one: the few billion Indian mobiles
    # are soon all hashed, so an unkeyed digest names the number. A keyed one does not.
    key = f"sms:stranger-told:{day}:{outbox.number_hash(contact)[:32]}"
    if redis_client().exists(key):
        return False
    after_commit(session, lambda: redis_client().set(key, 1, ex=2 * 24 * 3600))
    return True


def _first_for(session: Session, key: str, ttl: timedelta) -> bool:
    """Whether ``key`` is not marked yet (then marked for ``ttl`` once the turn commits)."""
    if redis_client().exists(key):
        return False
    seconds = int(ttl.total_seconds())
    after_commit(session, lambda: redis_client().set(key, 1, ex=seconds))
    return True


# --- what a recipient may ask ------------------------------------------------------------

# "This is not my parcel": our drop code reached someone the sender did not mean (a
# mistyped number). In each catalog language, in its script and as typed in Latin letters;
# matched as whole words in a row. Only phrases that say it outright: "mera nahi" alone
# is also "mine (has) not (come)".
WRONG_NUMBER = frozenset({
    "wrong number", "wrong no", "wrong num", "wrong person", "not my number", "not mine",
    "not for me", "not my parcel",  # en
    "galat number", "galat no", "galat nambar", "galat numbar", "glt number", "rong number",
    "mera nahi hai", "mera nahin hai", "meri nahi hai", "hamara nahi hai",
    "गलत नंबर", "ग़लत नंबर", "गलत नम्बर", "ग़लत नम्बर", "रॉंग नंबर", "रॉन्ग नंबर",
    "रोंग नंबर", "मेरा नहीं है", "मेरी नहीं है", "हमारा नहीं है",  # hi
    "चुकीचा नंबर", "chukicha number", "माझं नाही", "माझा नाही",  # mr
    "ভুল নম্বর", "ভুল নাম্বার", "রং নম্বর", "রং নাম্বার", "bhul number", "আমার নয়",  # bn
    "தவறான எண்", "தவறான நம்பர்", "தப்பான நம்பர்", "ராங் நம்பர்", "thappana number",
    "என்னுடையது இல்லை",  # ta
    "తప్పు నంబర్", "తప్పు నెంబర్", "రాంగ్ నంబర్", "రాంగ్ నెంబర్", "tappu number",
    "నాది కాదు",  # te
    "ખોટો નંબર", "રોંગ નંબર", "khoto number", "મારું નથી",  # gu
    "ತಪ್ಪು ನಂಬರ್", "ತಪ್ಪು ಸಂಖ್ಯೆ", "ರಾಂಗ್ ನಂಬರ್", "ನನ್ನದಲ್ಲ", "ನನ್ನದು ಅಲ್ಲ",  # kn
})
# "Code nahi mila", "send the code again": a code word (CODE_WORDS) and a word that asks
# for it (a no, again, send, lost, which, a question mark), in any order.
_ASKING = NEGATORS | {
    "?", "again", "resend", "send", "lost", "forgot", "deleted", "missing", "didn", "didnt",
    "don", "haven", "what", "which", "where", "need", "please", "pls", "plz", "dobara",
    "dubara", "phir", "fir", "firse", "phirse", "bhejo", "bhej", "bhejiye", "bhejdo", "kho",
    "khoya", "bhool", "bhul", "delete", "kya", "kaun", "kaunsa",
    "दोबारा", "दुबारा", "फिर", "फिरसे", "भेजो", "भेज", "भेजिए", "भेजें", "खो", "खोया", "भूल",
    "chahiye", "kahan", "kaha", "डिलीट", "क्या", "कौन", "कौनसा", "चाहिए", "कहाँ", "कहां",  # hi
    "पुन्हा", "पाठवा", "हरवला", "कोणता",  # mr
    "নেই", "নাই", "পাইনি", "আসেনি", "আবার", "পাঠান", "পাঠাও", "হারিয়ে", "কী", "কোন",  # bn
    "வரவில்லை", "கிடைக்கவில்லை", "வரலை", "கிடைக்கல", "மீண்டும்", "திரும்ப", "அனுப்பு",
    "அனுப்புங்கள்", "என்ன",  # ta
    "రాలేదు", "అందలేదు", "మళ్ళీ", "మళ్లీ", "పంపండి", "పంపు", "ఏమిటి", "ఏ",  # te
    "નથી", "નહીં", "મળ્યો", "ફરી", "ફરીથી", "મોકલો", "શું", "કયો",  # gu
    "ಬಂದಿಲ್ಲ", "ಸಿಕ್ಕಿಲ್ಲ", "ಬರಲಿಲ್ಲ", "ಮತ್ತೆ", "ಕಳುಹಿಸಿ", "ಕಳಿಸಿ", "ಏನು", "ಯಾವ",  # kn
}
_WRONG_NUMBER = frozenset(" ".join(tokens(p)) for p in WRONG_NUMBER)
_CODE_WORDS = frozenset(" ".join(tokens(w)) for w in CODE_WORDS)
_ASKING_WORDS = frozenset(" ".join(tokens(w)) for w in _ASKING)


def says_wrong_number(body: str) -> bool:
    """Whether an SMS says our message reached the wrong person ("galat number hai")."""
    said = f" {' '.join(tokens(body))} "
    return any(f" {phrase} " in said for phrase in _WRONG_NUMBER)


def asks_for_code(body: str) -> bool:
    """Whether an SMS asks for a code ("code nahi mila", "mera code dobara bhejo")."""
    toks = tokens(body)
    return bool(_CODE_WORDS.intersection(toks)) and bool(_ASKING_WORDS.intersection(toks))


@dataclass(frozen=True)
class Asked:
    """The answer to what a recipient asked; ``once_a_day``: only if she was not answered
    today (it does nothing but talk), else it goes whenever she asks (bounded otherwise)."""

    answer: list[str]
    once_a_day: bool = False


def _recipient_asks(session: Session, body: str, parcel: Booking, person: Person | None,
                    lang: str) -> Asked | None:
    """The answer to a recipient who says the parcel is not hers, or asks for her code;
    None for anything else (where the parcel is, once a day)."""
    if says_wrong_number(body):
        return _wrong_number(session, parcel, lang)
    if asks_for_code(body):
        return _code_again(session, parcel, person, lang)
    return None


def _said_wrong_number(session: Session, parcel: Booking) -> bool:
    """Whether the parcel's recipient number told us it is not hers (_wrong_number)."""
    return dispatch.recipient_said_wrong_number(session, parcel)


def _wrong_number(session: Session, parcel: Booking, lang: str) -> Asked:
    """The parcel's recipient number says it is not hers: she is told sorry, the sender
    (who typed the number) and ops hear it, once for the booking. A drop code she was
    sent is made void: a new one goes to the sender to give the real recipient (as when
    her code is lost: dispatch.drop_code_lost); should the sender be out of reach, the
    old code stays (nobody else would hold one). From then on she hears nothing more of
    the parcel, and any new code goes to the sender (dispatch.recipient_said_wrong_number)."""
    told = dispatch.WRONG_NUMBER_KEY.format(booking=parcel.id)
    ops_phone = get_settings().ops_phone
    notify.notify_customer(session, parcel, "dispatch.customer_recipient_wrong_number",
                           dedupe_key=told, ops_phone=ops_phone)
    leg = _drop_leg(session, parcel)
    passed_on = False
    if leg is not None and code_holder(session, parcel) == HER:
        savepoint = session.begin_nested()
        try:
            made = dispatch.new_leg_code(session, leg.id, "drop", Actor.system(),
                                         reason="the recipient's number says it is wrong",
                                         cause=dispatch.WRONG_NUMBER_CODE)
        except DomainError as exc:  # no more codes for the leg, locked: ops are told
            savepoint.rollback()
            log.info("no new drop code for a wrong number", extra={"code": exc.code})
        else:
            passed_on = notify.notify_customer(
                session, parcel, "dispatch.drop_otp_pass_on", otp=made.code,
                dedupe_key=f"leg-{leg.id}-dropotp-ops{made.issued}-sender") is not None
            if passed_on:
                savepoint.commit()
            else:
                savepoint.rollback()
    dispatch.alert_ops(session, "dispatch.ops_recipient_wrong_number", dedupe_key=f"{told}-ops",
                       booking_id=parcel.id, ref=parcel.reference)
    log.info("a recipient's number says the parcel is not theirs",
             extra={"booking_id": parcel.id, "code_passed_on": passed_on})
    return Asked([i18n.t("sms.recipient_wrong_number", lang)])


def _drop_leg(session: Session, parcel: Booking) -> Leg | None:
    """The parcel's last leg while a rider has it and its drop code works (taken, not yet
    delivered); None before that (the code goes when a rider takes it) or after."""
    leg = session.scalar(select(Leg).where(Leg.booking_id == parcel.id)
                         .order_by(Leg.sequence.desc()).limit(1))
    if leg is None or leg.status not in (LegStatus.ASSIGNED.value, LegStatus.PICKED_UP.value):
        return None
    return leg


def _code_again(session: Session, parcel: Booking, person: Person | None,
                lang: str) -> Asked | None:
    """The parcel's recipient number asks for her drop code (lost, deleted, never seen): a
    new one is made, as ops make one (dispatch.new_leg_code: the old one stops working,
    audited), from a budget of her own (RECIPIENT_CODES_PER_LEG: ops' codes stay for the
    phone), and sent to this number only; the SMS with it is the answer. One she asked
    for minutes ago still on its way (dispatch.recipient_code_pending) is not voided by
    another: she hears when it was sent (once for it; then nothing till it is late).
    Before a rider took the leg there is no code yet (None: she hears where the parcel
    is, and that the code will come). When none can be made or reach her here (the leg
    locked, too many codes, our SMS stopped), she is told to call us."""
    leg = _drop_leg(session, parcel)
    if leg is None:
        return None
    cannot = Asked([i18n.t("dispatch.cannot_now", lang, ops_phone=get_settings().ops_phone)],
                   once_a_day=True)
    if person is not None and person.sms_opted_out:
        return cannot
    pending = dispatch.recipient_code_pending(session, leg)
    if pending is not None:
        if not _first_for(session, f"sms:code-sent-told:{leg.id}:{int(pending.timestamp())}",
                          dispatch.RECIPIENT_CODE_SPACING):
            return Asked([])
        local = pending.astimezone(_INDIA)  # her time, as people say it ("शाम 7:05")
        said = said_time(local.hour * 60 + local.minute)
        return Asked([i18n.t("sms.recipient_code_sent_at", lang, ref=parcel.reference,
                             time=i18n.t(said.key, lang, **said.params))])
    savepoint = session.begin_nested()
    try:
        dispatch.new_leg_code(session, leg.id, "drop", Actor.system(), send=True,
                              by_recipient=True,
                              reason="the recipient asked for her code again by SMS")
    except DomainError as exc:
        savepoint.rollback()
        log.info("no new drop code for the recipient", extra={"code": exc.code})
        return cannot
    if code_holder(session, parcel) != HER:
        # It could only go to the sender (our SMS to her is refused): not what she asked.
        savepoint.rollback()
        return cannot
    savepoint.commit()
    log.info("a recipient asked for her drop code: a new one sent",
             extra={"booking_id": parcel.id, "leg_id": leg.id})
    return Asked([])


# What a partner's request for his code parses as: nothing ("code dobara bhejo"), a no
# ("code nahi mila"), a question ("otp?"); with no job number (PICK 57 ... is his job's).
_CODE_ASKED_AS = (Kind.UNKNOWN, Kind.DECLINE, Kind.HELP)


def _partner_asks_for_code(session: Session, person: Person | None, partner, cmd,
                           body: str, lang: str) -> list[str] | None:
    """A partner is a recipient too (a parcel sent to his number, one that followed him
    to a new SIM: partner_profile.set_phone): asking for his drop code ("code nahi
    mila"), he gets a new one as any recipient does (_code_again), not a NO to an offer;
    before a rider took its last leg, that the code will come. None when it is no such
    request, no parcel is coming to him, or it may be about his work (_names_a_command,
    _free_of_work): with an offer open, _code_while_offered answers it; else his
    command, as before."""
    if (person is None or cmd.kind not in _CODE_ASKED_AS or not asks_for_code(body)
            or _names_a_command(cmd)):
        return None
    parcel = (_parcel_named(session, person.phone, cmd.numbers, person) if cmd.numbers
              else _parcel_coming(session, person.phone, person))
    if parcel is None or _said_wrong_number(session, parcel) \
            or not (cmd.numbers or _free_of_work(session, partner)):
        return None
    asked = _code_again(session, parcel, person, lang)
    if asked is not None:
        return asked.answer
    # No code yet (no rider on its last leg): as _tell_stranger says it to a recipient.
    answer = ("sms.recipient_on_the_way_no_code" if parcel.status in _ON_THE_WAY
              else "sms.recipient_coming")
    return [i18n.t(answer, lang, ref=parcel.reference)]


def _names_a_command(cmd) -> bool:
    """Whether a message asking for a code names a command too ("PICK code nahi mila",
    "delivered, code nahi mila", "nahi jaunga, otp wala kaam"): then it is about a job.
    The words that ask for a code (a no, a question mark, "dobara") do not count."""
    rest = [w for w in cmd.words if w not in _CODE_WORDS and w not in _ASKING_WORDS]
    # Two words in a row may be one command ("पहुँच गया") that neither is alone.
    said = rest + [f"{a} {b}" for a, b in zip(rest, rest[1:], strict=False)]
    return any(parse_command(words).kind is not Kind.UNKNOWN for words in said)


def _parcel_named(session: Session, phone: str | None, numbers: tuple[str, ...],
                  person: Person | None = None) -> Booking | None:
    """The parcel coming to this number (as _parcel_coming, never a booking of her own:
    ``person``) whose booking reference the message's numbers are ("code nahi mila 4821
    7730", "galat number 48217730"), if one of them, or two in a row, is; None if none
    is. One her number disowned is found too: she may say so again."""
    typed = set(numbers) | {a + b for a, b in zip(numbers, numbers[1:], strict=False)}
    refs = [r for r in (normalize_reference(t) for t in typed)
            if r is not None and is_valid_reference(r)]
    if phone is None or not refs:
        return None
    query = select(Booking).where(
        Booking.reference.in_(refs), Booking.recipient_phone == phone,
        Booking.status.in_([s.value for s in _COMING]))
    if person is not None:
        query = query.where(Booking.customer_id != person.id)
    return session.scalar(query.order_by(Booking.id.desc()).limit(1))


def _free_of_work(session: Session, partner) -> bool:
    """Whether a partner's request for a code ("code nahi mila"), naming no parcel, can
    only be for the drop code of one coming to him: he has no job in hand (taken, not
    delivered: admin.IN_HAND) and no offer open. With work it may be about that work's
    code ("sender OTP nahi de raha", "OTP?") or a NO to the offer ("NO code"), and each
    renewal of his own code voids the one he holds and uses one of the leg's few codes."""
    return not dispatch.active_legs_of(session, partner) \
        and not dispatch.open_offers_of(session, partner)


# A code "not come" ("code nahi mila", "no code received"): with one of RECEIVED_WORDS
# the message's no says the code did not come, not no to an offer.
_RECEIVED = frozenset(" ".join(tokens(w)) for w in RECEIVED_WORDS)
_NO_WORDS = frozenset(" ".join(tokens(w)) for w in COMMAND_WORDS[Kind.DECLINE])
# What a partner with an offer open hears when he asks for a code (_code_while_offered).
OFFER_OPEN_NO_CODE = "dispatch.offer_open_no_code"  # no job in hand: no code is his
OFFER_OPEN_CODE = "dispatch.offer_open_code"  # a job in hand (or a parcel coming to him)


def _code_while_offered(session: Session, person: Person | None, partner, cmd, body: str,
                        lang: str) -> list[str] | None:
    """A partner with one offer open who asks for a code ("code nahi mila", "OTP?",
    "code bhejo") and says no clear yes or no to it: the offer stays open (read as a no,
    "code nahi mila" skipped the job he may have wanted), and he hears what he can send
    for it, numbered as the offer's SMS is (1 to take it, 2 to skip it), and, with no job
    in hand and no parcel coming to him, that there is no code for him now (an offer
    carries none). His parcel's code is not renewed here: he may name its reference
    (_partner_asks_for_code), or ask once the offer is answered. A clear no stays a no
    (_no_to_the_offer: "NO code"), as does a message naming a command or another
    number (his job's, or his parcel's reference: _partner_asks_for_code); None then, and
    when no offer or several are open (a bare no then names no job: dispatch.decline asks
    which). The open offer's own job number ("code nahi mila 57", "code nahi mila job
    57") names the job he asks about: as without it, the offer stays open."""
    if (cmd.kind not in _CODE_ASKED_AS or not asks_for_code(body)
            or _no_to_the_offer(cmd)):
        return None
    offers = dispatch.open_offers_of(session, partner)
    if len(offers) != 1:
        return None
    job = offers[0].leg_id
    if cmd.numbers and not _names_the_offer(cmd.numbers, job):
        return None
    if _names_a_command(cmd if not cmd.numbers else Command(
            cmd.kind, cmd.numbers, tuple(w for w in cmd.words if w not in _JOB_WORDS))):
        return None
    mine = person is not None and _parcel_coming(session, person.phone, person) is not None
    key = OFFER_OPEN_CODE if mine or dispatch.active_legs_of(session, partner) \
        else OFFER_OPEN_NO_CODE
    log.info("a code asked for with an offer open: the offer stays open",
             extra={"partner_id": partner.id, "offer_id": offers[0].id})
    return [i18n.t(key, lang, job=job)]


def _code_step_help(session: Session, partner, cmd, body: str, lang: str) -> list[str] | None:
    """A rider with a job in hand and no offer open who says he has no code ("no code",
    "code nahi mila", "OTP nahi aaya"): who has his step's code, and to call ops if they
    have none (dispatch.code_help), never a no that CANCEL's hint answers, and no try
    counted. None for anything else: a message naming a command ("PICK code nahi mila"),
    no job in hand, or an offer open (_code_while_offered, or a no to it: "NO code")."""
    if cmd.kind not in _CODE_ASKED_AS or not asks_for_code(body) or _names_a_command(cmd):
        return None
    return [reply.render(lang) for reply in dispatch.code_help(session, partner, cmd.numbers)] \
        or None


# "Job 57": with the offer's number, these name it (no STATUS command).
_JOB_WORDS = frozenset({"job", "jobs", "जॉब"})


def _names_the_offer(numbers: tuple[str, ...], job: int) -> bool:
    """Whether every number of a message is the open offer's job number ("057" too)."""
    return all(n.isascii() and n.isdigit() and len(n) <= JOB_CODE_MAX_DIGITS
               and int(n) == job for n in numbers)


def _no_to_the_offer(cmd) -> bool:
    """Whether a message asking for a code is still a clear no to an offer: it begins with
    a no ("NO code", "nahi, otp wala kaam") and no word in it says the code did not come
    (RECEIVED_WORDS: "nahi mila code"). A no after the code word ("code nahi", "கோடு
    இல்லை": there is no code) or with such a word ("code nahi mila") is not."""
    if cmd.kind is not Kind.DECLINE or _RECEIVED.intersection(cmd.words):
        return False
    return bool(cmd.words) and (cmd.words[0] in _NO_WORDS
                                or " ".join(cmd.words[:2]) in _NO_WORDS)


def _for_the_operator(session: Session, partner, cmd) -> bool:
    """Whether a partner's SMS is no command the bot can act on, so that, should he wait
    for a person, it is his answer to the operator: words we cannot read, or a bare yes
    or no ("1", "haan") while no offer is open (the operator may ask "reply 1 for yes")."""
    if cmd.kind is Kind.UNKNOWN:
        return True
    return (cmd.kind in (Kind.ACCEPT, Kind.DECLINE) and not cmd.numbers
            and not dispatch.open_offers_of(session, partner))


def _drop_contact(session: Session, partner, reply: dispatch.Reply, lang: str) -> list[str]:
    """After a PICK, whom the parcel is for and her number, once it is on its last leg (a
    message of its own: with the pickup's answer it would not fit two SMS parts). The
    rider must find her at a village's or a post-office area's drop, and call her."""
    leg = next((leg for leg in dispatch.active_legs_of(session, partner)
                if dispatch.job_code(leg) == reply.params.get("job")), None)
    booking = session.get(Booking, leg.booking_id) if leg is not None else None
    to = partner_app.drop_contact(session, booking, leg) if leg and booking else None
    if to is None or to.phone is None:
        return []
    if to.sender:  # her number was wrong: the sender has the code and knows the place
        return [i18n.t("dispatch.drop_contact_sender", lang, job=reply.params["job"],
                       phone=to.phone)]
    if to.name:
        return [i18n.t("dispatch.drop_contact", lang, job=reply.params["job"], name=to.name,
                       phone=to.phone)]
    return [i18n.t("dispatch.drop_contact_phone", lang, job=reply.params["job"],
                   phone=to.phone)]


JOB_CODE_MAX_DIGITS = 9  # a leg id as dispatch reads a typed job code (_job_number)


# The digit that says the command again ("ok 1", "nahi 2", "cancel 2": his no, as "2").
_SAID_AGAIN = {Kind.ACCEPT: "1", Kind.DECLINE: "2", Kind.CANCEL: "2"}


def _names_a_job(cmd) -> bool:
    """Whether the number sent with a yes (a no, a CANCEL) stands alone as a job's code
    ("ok 2", "1 2", "yes job 58", "nahi 58", "cancel 58"): nothing but the command's
    words and job words are with it, so it can only name the job he means, or be the
    other answer after his. Taking his one open offer for it would answer for a job he
    did not name: he is asked. The command's own digit after it says it again ("ok 1",
    "no 2"); a number with other words ("haan ji 5 minute", "nahi 20 km door hai") is
    about something else."""
    if len(cmd.numbers) != 1 or cmd.numbers[0] == _SAID_AGAIN.get(cmd.kind):
        return False
    return all(word == "?" or parse_command(word).kind in (cmd.kind, Kind.STATUS)
               for word in cmd.words)


def _names_pick_or_drop(cmd) -> bool:
    """Whether a message's words (or two in a row: "पहुँच गया") name PICK or DROP."""
    said = [*cmd.words, *(f"{a} {b}" for a, b in zip(cmd.words, cmd.words[1:], strict=False))]
    return any(parse_command(words).kind in (Kind.PICK, Kind.DROP) for words in said)


# "Done": DROP's word, and India's "ok" ("done, I will come"). Without a code it delivers
# nothing either way: DROP asks for the code (dispatch.confirm); with an offer open and
# no parcel in hand the offer is named again (_run).
_DONE = frozenset({"done"})


def _done_alone(cmd) -> bool:
    """Whether a DROP is "done" without a number and no other word for a delivery ("Done",
    "done sir"; not "delivered, done")."""
    if cmd.numbers or not _DONE.intersection(cmd.words):
        return False
    return not _names_pick_or_drop(Command(cmd.kind, (), tuple(
        w for w in cmd.words if w not in _DONE)))


def _offer_not_that(session: Session, partner, typed: str, lang: str) -> str:
    """The answer to a yes naming a job he was never offered while one offer is open: no
    such offer, and how to answer the one he has (dispatch.stray_number). A number too
    long for a job's code (a phone number, a key held down) is not said back: that offer's
    two choices only."""
    if len(typed) > JOB_CODE_MAX_DIGITS:
        return dispatch.not_understood(session, partner).render(lang)
    offer = dispatch.open_offers_of(session, partner)[0]
    return i18n.t("sms.offer_not_that", lang, typed=typed, job=offer.leg_id)


def _help_key(numbers: tuple[str, ...]) -> str:
    """HELP's page: the commands used most (HELP), the rest ("HELP 2"). A rider on a
    feature phone pays for and pieces together every SMS part: each page fits two."""
    return "sms.help_more" if numbers[:1] == ("2",) else "sms.help"


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
            if _names_a_job(cmd):
                return [_offer_not_that(session, partner, code, lang)]
            code = None  # "haan ji 5 minute": yes to his one offer; 5 names no job of his
        reply = dispatch.accept(session, partner, code)
    elif cmd.kind is Kind.DECLINE:
        code = cmd.numbers[0] if cmd.numbers else None
        if code is not None and dispatch.stray_number(session, partner, code):
            if _names_a_job(cmd):
                return [_offer_not_that(session, partner, code, lang)]
            code = None  # "nahi 20 km door hai": no to his one offer; 20 names no job
        reply = dispatch.decline(session, partner, code)
        if reply.key == "dispatch.cancel_hint" and _names_pick_or_drop(cmd):
            # "No.57 PICK 4821 nahi", "nahi pick 57": a no beside PICK/DROP is about his
            # pickup or drop, never a wish to give his job back (CANCEL's hint).
            reply = dispatch.not_understood(session, partner)
    elif cmd.kind is Kind.PICK:
        reply = dispatch.confirm(session, partner, "pickup", cmd.numbers)
        if reply.key == "dispatch.picked":
            return [reply.render(lang), *_drop_contact(session, partner, reply, lang)]
    elif cmd.kind is Kind.DROP:
        if _done_alone(cmd) and dispatch.open_offers_of(session, partner) and not any(
                dispatch.parcel_in_hand(session, leg)
                for leg in dispatch.active_legs_of(session, partner)):
            # "Done" (India's "ok") with an offer open and no parcel in his hands to
            # deliver: no delivery, and no yes for sure either; the offer named again.
            reply = dispatch.not_understood(session, partner)
        else:
            reply = dispatch.confirm(session, partner, "drop", cmd.numbers)
    elif cmd.kind is Kind.CANCEL:
        numbers = cmd.numbers
        if numbers and not _names_a_job(cmd) and not dispatch.active_legs_of(session, partner) \
                and dispatch.stray_number(session, partner, numbers[0]):
            # "cancel 10 min" with one offer open and no job in hand: a no to that offer
            # (a bare CANCEL is); 10 names no job of his. "cancel 58" still names job 58.
            numbers = ()
        reply = dispatch.cancel_by_partner(session, partner, numbers)
    elif cmd.kind is Kind.STATUS:
        return dispatch.status_lines(session, partner, lang)
    elif cmd.kind is Kind.HELP:
        return [i18n.t(_help_key(cmd.numbers), lang)]
    elif cmd.kind is Kind.EARN:
        # What the app's earnings show (partner_app.earnings), for a rider without it.
        earned = partner_app.earnings(session, partner.id)
        return [i18n.t("sms.earnings", lang, today_paise=earned.today_paise,
                       week_paise=earned.week_paise, total_paise=earned.total_paise,
                       legs=earned.delivered_legs)]
    else:  # not understood: with one offer open, most likely an answer to it
        reply = dispatch.not_understood(session, partner)
    return [reply.render(lang)]


__all__ = ["HER", "SENDER", "code_holder", "handle"]

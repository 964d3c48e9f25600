"""Review r10 (webhooks): Twilio and Razorpay webhooks as an attacker and as the providers
really behave. Each test shows one defect and fails on the code it was written against."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from sqlalchemy import func, select

from core.adapters.db import transaction
from core.adapters.models import OutboxMessage
from core.adapters.redis_conn import redis_client
from tests.conftest import post_twilio, send_whatsapp


def _sms_replies(client, phone: str, body: str, sid: str) -> list[str]:
    params = {"MessageSid": sid, "AccountSid": "ACr10", "From": phone, "To": "+15005550006",
              "Body": body, "NumMedia": "0"}
    r = post_twilio(client, "/webhooks/sms", params)
    assert r.status_code == 200, r.get_data(as_text=True)
    return [m.text or "" for m in ET.fromstring(r.get_data(as_text=True)).iter("Message")]


def test_an_sms_from_foreign_numbers_is_not_answered_by_sms(client):
    """SMS pumping through the auto-reply. We text only Indian mobiles (sign-in codes and
    phone bookings from foreign numbers are refused: "the shape of SMS-pumping fraud"),
    but any number that texts our SMS number is answered with an SMS of ours (the TwiML
    <Message>, billed to us at the international rate): one a day for every number a
    fraudster sends from, however many. A stranger with a foreign number should get no
    SMS back (nothing of ours can be done by SMS from there anyway)."""
    foreign = ["+447700900123", "+2348031234567", "+8801712345678", "+14155550100"]
    answered = {phone: _sms_replies(client, phone, "hi", f"SMr10f{i}")
                for i, phone in enumerate(foreign)}
    assert answered == {phone: [] for phone in foreign}
    with transaction() as s:  # nor by the outbox instead
        assert s.scalar(select(func.count()).select_from(OutboxMessage)) == 0


def test_a_whatsapp_business_landline_gets_an_answer(client):
    """WhatsApp Business runs on landlines too (verified by a call): a shop in Mumbai
    writes from whatsapp:+912223456789 (WaId 912223456789). Twilio delivers it like any
    message, and the bot must answer at the address Twilio gave. Our phone parsing takes
    only Indian *mobiles*, so the reply's address is refused (outbox.address raises), the
    turn breaks after the dialog ran and the message goes to the dead-letter list: the
    shop never hears anything, whatever it writes."""
    params = {"MessageSid": "SMr10land1", "AccountSid": "ACr10",
              "From": "whatsapp:+912223456789", "To": "whatsapp:+14155238886",
              "WaId": "912223456789", "ProfileName": "Shree Traders", "Body": "hi",
              "NumMedia": "0"}
    reply = send_whatsapp(client, params)
    assert redis_client().llen("inbox-dead") == 0
    assert "English" in reply  # the language list, as for anyone writing first
    with transaction() as s:
        to = s.scalar(select(OutboxMessage.to_addr).where(
            OutboxMessage.dedupe_key == "reply:SMr10land1:0"))
    assert to == "whatsapp:+912223456789"


# --- fixer f11: the same holes next to these two, each shown failing before the fix ------

LANDLINE = "+912223456789"  # a WhatsApp Business account on a Mumbai landline


def _landline_writes(client, body: str, sid: str) -> str:
    return send_whatsapp(client, {"MessageSid": sid, "AccountSid": "ACr10",
                                  "From": f"whatsapp:{LANDLINE}",
                                  "To": "whatsapp:+14155238886", "WaId": LANDLINE[1:],
                                  "ProfileName": "Shree Traders", "Body": body,
                                  "NumMedia": "0"})


def _sent_to(to_addr: str, channel: str, sid: str, **kinds) -> int:
    """A message of ours to ``to_addr`` that Twilio took as ``sid`` (sent now)."""
    from sqlalchemy import update

    from core import clock
    from core.services import outbox

    with transaction() as s:
        row_id = outbox.queue_message(s, channel=channel, to=to_addr, body="Booking news",
                                      **kinds)
        assert row_id is not None
        s.execute(update(OutboxMessage).where(OutboxMessage.id == row_id).values(
            status="sent", provider_sid=sid, sent_at=clock.now()))
    return row_id


def _limit() -> int:
    from core.config import get_settings

    return get_settings().inbound_rate_limit


def test_the_too_many_messages_notice_goes_by_sms_only_to_numbers_we_text(client):
    """The inline "you are sending too many messages" SMS had the same hole: a foreign
    number sending past the limit got it (each window), though it is told nothing else.
    A partner ops set up on a foreign number still hears it."""
    from core.i18n import t
    from tests.test_dispatch import LAXMIPUR, make_partner

    stranger = "+447700900124"
    for i in range(_limit()):
        assert _sms_replies(client, stranger, "hi", f"SMr10s{i}") == []
    assert _sms_replies(client, stranger, "hi", "SMr10s-over") == []

    _, partner = make_partner("Imran", LAXMIPUR, phone="+447700900125", lang="en")
    for i in range(_limit()):
        assert _sms_replies(client, partner, "STATUS", f"SMr10p{i}")
    assert _sms_replies(client, partner, "STATUS", "SMr10p-over") == [
        t("common.too_many_messages", "en")]


def test_a_landline_whatsapp_stop_and_block_are_kept_on_her(client):
    """Her STOP is kept on her person (known by her WhatsApp id: we keep no phone for a
    landline): a message we start to her WhatsApp address is not sent; and Twilio's report
    that she blocked us (63014) closes her WhatsApp on her person, not on a stray hash
    that her next message would not clear."""
    from core.adapters.models import Person
    from core.services import outbox

    _landline_writes(client, "hi", "SMr10ls1")
    row_id = _sent_to(f"whatsapp:{LANDLINE}", "whatsapp", "SMr10ls-out")
    assert outbox.record_status(outbox_id=row_id, message_sid="SMr10ls-out",
                                status="undelivered", error_code="63014")
    with transaction() as s:
        assert s.execute(select(Person.opted_out, Person.wa_blocked).where(
            Person.wa_id == LANDLINE[1:])).one() == (True, True)
    _landline_writes(client, "hi again", "SMr10ls2")  # her message ends the block
    _landline_writes(client, "STOP", "SMr10ls3")
    with transaction() as s:
        assert outbox.queue_message(s, channel="whatsapp", to=f"whatsapp:{LANDLINE}",
                                    body="A new offer for you") is None


def test_a_landline_whatsapp_refused_for_our_limit_is_not_sent_by_sms(client):
    """WhatsApp refuses a message to her for our sender's daily limit (63018): what it
    carried goes by SMS instead, to the number of the WhatsApp address. A landline takes
    no SMS of ours: the report is applied (not one that breaks the whole batch) and no SMS
    is queued."""
    _landline_writes(client, "hi", "SMr10lr1")
    row_id = _sent_to(f"whatsapp:{LANDLINE}", "whatsapp", "SMr10lr-out")
    from core.services import outbox

    assert outbox.record_status(outbox_id=row_id, message_sid="SMr10lr-out",
                                status="undelivered", error_code="63018")
    with transaction() as s:
        assert s.scalar(select(func.count()).select_from(OutboxMessage).where(
            OutboxMessage.channel == "sms")) == 0


def test_a_twilio_retry_of_an_sms_is_not_counted_again(client):
    """Twilio posts an SMS webhook again when our answer was slow or lost: the retry is
    the same message (answered from record), and counting it again put a partner whose
    answers were slow over the limit: his next real command was met with "too many"."""
    from core.i18n import t
    from tests.test_dispatch import LAXMIPUR, make_partner

    _, partner = make_partner("Ramesh", LAXMIPUR, lang="en")
    first = _sms_replies(client, partner, "STATUS", "SMr10retry")
    assert first
    for _ in range(_limit()):
        assert _sms_replies(client, partner, "STATUS", "SMr10retry") == first
    assert _sms_replies(client, partner, "STATUS", "SMr10next") != [
        t("common.too_many_messages", "en")]


def test_every_sms_opt_out_word_gets_through_the_rate_limit(client):
    """Twilio stops our SMS to a number for END, QUIT, REVOKE, OPTOUT as for STOP; past
    the limit such a word was dropped unread: the partner stayed on duty and was offered
    jobs by SMS that Twilio refused."""
    from core.adapters.models import PartnerProfile, Person
    from tests.test_dispatch import LAXMIPUR, make_partner

    partner_id, partner = make_partner("Ramesh", LAXMIPUR, lang="en")
    for i in range(_limit() + 2):
        _sms_replies(client, partner, "STATUS", f"SMr10flood{i}")
    assert _sms_replies(client, partner, "END", "SMr10end") == []
    with transaction() as s:
        assert s.scalar(select(Person.sms_opted_out).where(Person.phone == partner))
        assert s.get(PartnerProfile, partner_id).on_duty is False


def test_a_late_stop_refusal_does_not_undo_a_start_sent_since(client):
    """A code she asked for went while she had opted out of SMS; Twilio refused it (21610).
    She sent START. The report of that refusal, applied late (a callback posted again, a
    lost outcome the reconcile finds), opted her out again: no SMS of ours reached her
    though Twilio would let them through. On WhatsApp her START since does the same."""
    from datetime import UTC, datetime, timedelta

    from core import clock
    from core.adapters.models import Person
    from core.services import outbox

    phone = "+919812300471"
    t0 = datetime(2026, 11, 24, 6, 0, tzinfo=UTC)
    clock.freeze(t0)
    try:
        with transaction() as s:
            s.add(Person(phone=phone, role="customer", preferred_language="en",
                         sms_opted_out=True))
        row_id = _sent_to(phone, "sms", "SMr10code", needed=True)
        clock.freeze(t0 + timedelta(minutes=1))
        assert _sms_replies(client, phone, "START", "SMr10start") == []
        with transaction() as s:
            assert s.scalar(select(Person.sms_opted_out).where(Person.phone == phone)) is False
        clock.freeze(t0 + timedelta(minutes=2))
        assert outbox.record_status(outbox_id=row_id, message_sid="SMr10code",
                                    status="undelivered", error_code="21610")
        with transaction() as s:
            assert s.scalar(select(Person.sms_opted_out).where(Person.phone == phone)) is False

        wa_phone = "+919812300472"
        wa = {"AccountSid": "ACr10", "From": f"whatsapp:{wa_phone}",
              "To": "whatsapp:+14155238886", "WaId": wa_phone[1:], "NumMedia": "0"}
        send_whatsapp(client, {**wa, "MessageSid": "SMr10wa1", "Body": "hi"})
        send_whatsapp(client, {**wa, "MessageSid": "SMr10wa2", "Body": "STOP"})
        wa_row = _sent_to(f"whatsapp:{wa_phone}", "whatsapp", "SMr10wa-out", reply=True)
        clock.freeze(t0 + timedelta(minutes=3))
        send_whatsapp(client, {**wa, "MessageSid": "SMr10wa3", "Body": "START"})
        clock.freeze(t0 + timedelta(minutes=4))
        assert outbox.record_status(outbox_id=wa_row, message_sid="SMr10wa-out",
                                    status="undelivered", error_code="21610")
        with transaction() as s:
            assert s.scalar(select(Person.opted_out).where(Person.phone == wa_phone)) is False
    finally:
        clock.freeze(None)


# --- after f11: the emulator and the erasure for a landline's WhatsApp ------------------

def test_the_emulator_takes_a_whatsapp_message_to_a_landline(client, live):
    """Twilio sends WhatsApp to any E.164 number; our emulator refused a landline with
    21211, so in the sandbox her replies were stored as failed."""
    from tests.conftest import run_jobs

    _landline_writes(client, "hi", "SMr10emu1")
    run_jobs()
    with transaction() as s:
        row = s.scalar(select(OutboxMessage).where(
            OutboxMessage.dedupe_key == "reply:SMr10emu1:0"))
        assert row.to_addr == f"whatsapp:{LANDLINE}"
        assert row.status != "failed" and row.error_code is None, (row.status, row.error_code)


def test_erasing_a_landline_whatsapp_user_removes_the_replies_to_her(client, live):
    """Her replies are kept at whatsapp:+912223456789 while her person row has only her
    WhatsApp id (912223456789): the erasure looked for whatsapp:912223456789 alone and
    left our answers to her, text and address."""
    from core.adapters.models import Person
    from core.services import retention

    _landline_writes(client, "hi", "SMr10era1")
    with transaction() as s:
        person = s.scalar(select(Person).where(Person.wa_id == LANDLINE[1:]))
        retention.erase_person(s, person.id)
    with transaction() as s:
        left = s.scalars(select(OutboxMessage.body).where(
            OutboxMessage.to_addr == f"whatsapp:{LANDLINE}")).all()
        bodies = s.scalars(select(OutboxMessage.body).where(
            OutboxMessage.dedupe_key == "reply:SMr10era1:0")).all()
    assert left == []
    assert bodies and all(b == retention.REDACTED for b in bodies), bodies

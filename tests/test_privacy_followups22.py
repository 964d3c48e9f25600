"""Privacy follow-ups 22.

1. Twilio refusing an SMS with 21610 (the recipient sent STOP to our number), or WhatsApp
   blocking a message for the recipient's action (63014: she blocked us or withdrew her
   consent), to a number no person holds (a parcel's recipient without an account) was
   recorded nowhere: every later message to her was written and refused in turn. The
   opt-out is kept as a NumberOptOut (a keyed hash, that channel's flag) and honoured;
   START from the number clears it.
2. A pickup code read out on a call stays in the call's stored answer until the call ends
   or a job blanks it minutes later; when both the status callback and the job were lost
   (Redis), it stayed for RETENTION_MESSAGE_DAYS: the daily run blanks it.
3. outbox.withdraw: the IVR takes back a details SMS through the outbox, not by deleting
   its row itself.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import func, select

from core.adapters import twilio_gateway
from core.adapters.db import transaction
from core.adapters.dialog_models import WhatsappTemplateSend
from core.adapters.models import InboundEvent, NumberOptOut, OutboxMessage, Person
from core.adapters.queue import queue
from core.services import ivr, outbox, retention
from tests.conftest import post_twilio, run_jobs, send_whatsapp
from tests.test_dispatch import frozen  # noqa: F401 (fixture)
from tests.test_dispatch import sms as sms_in
from tests.test_ivr import book_in_hindi, phone, prompts  # noqa: F401 (fixtures)
from tests.test_ivr_more import assigned, heard_code, jobs, track_first  # noqa: F401
from tests.test_ivr_review22 import cancel_the_one_just_booked
from tests.test_ivr_texts import details_to
from tests.test_notice_review import ref_of

pytestmark = pytest.mark.db

NUMBER = "+919876500321"  # a parcel's recipient: no account, no person row


def ten(number: str) -> str:
    return number[-10:]


def queued(channel: str, to: str = NUMBER, **kw: object) -> int | None:
    with transaction() as s:
        return outbox.queue_message(s, channel=channel, to=to, body="Your parcel is coming",
                                    **kw)


def kept() -> list[tuple[str, bool, bool]]:
    with transaction() as s:
        return [(k.number_hash, k.whatsapp, k.sms) for k in s.scalars(select(NumberOptOut))]


def refused_by_callback(client, channel: str, code: str, to: str = NUMBER) -> int:
    """A message to ``to`` that Twilio takes, then reports failed with ``code``."""
    oid = queued(channel, to)
    assert oid is not None
    run_jobs()
    with transaction() as s:
        sid = s.get(OutboxMessage, oid).provider_sid
    assert sid
    r = post_twilio(client, "/webhooks/twilio/status",
                    {"MessageSid": sid, "MessageStatus": "undelivered", "ErrorCode": code})
    assert r.status_code == 204
    run_jobs()
    return oid


def refused_at_send(monkeypatch, channel: str, code: str, to: str = NUMBER) -> None:
    """A message to ``to`` that Twilio refuses when it is sent (HTTP 400, ``code``)."""
    def refuse(**_kw: object) -> None:
        raise twilio_gateway.SendRejected(400, code, "refused")

    monkeypatch.setattr(twilio_gateway, "send_message", refuse)
    assert queued(channel, to) is not None
    run_jobs(("outbox",))
    monkeypatch.undo()


# --- 1. an opt-out Twilio reports for a number nobody holds --------------------------------


def test_an_sms_refused_for_stop_to_a_number_nobody_holds_is_kept_and_honoured(client, live):
    refused_by_callback(client, "sms", outbox.STOP_ERROR_CODE)
    assert kept() == [(outbox.number_hash(NUMBER), False, True)], "the STOP was not kept"
    assert not any(ten(NUMBER) in h for h, _, _ in kept())  # a hash, not the number
    with transaction() as s:
        assert s.scalar(select(func.count()).select_from(Person)) == 0  # no person made
    assert queued("sms") is None, "an SMS is written again to a number that sent STOP"
    assert queued("sms", booking_id=None, needed=True) is not None  # a sign-in code: tried
    assert queued("whatsapp") is not None  # WhatsApp is another channel: still open


def test_an_sms_refused_for_stop_when_it_is_sent_is_kept_too(live, monkeypatch):
    refused_at_send(monkeypatch, "sms", outbox.STOP_ERROR_CODE)
    assert kept() == [(outbox.number_hash(NUMBER), False, True)]
    assert queued("sms") is None


def test_whatsapp_blocked_by_a_number_nobody_holds_is_kept_and_honoured(client, live):
    refused_by_callback(client, "whatsapp", outbox.WHATSAPP_BLOCKED_CODE)
    assert kept() == [(outbox.number_hash(NUMBER), True, False)]
    assert queued("whatsapp") is None
    assert queued("sms") is None  # not about a booking of hers: WhatsApp's STOP holds
    with transaction() as s:  # her parcel's news still go by SMS (as after a STOP)
        assert outbox.queue_message(s, channel="sms", to=NUMBER, body="Parcel news",
                                    work=True) is not None


def test_a_second_channel_s_opt_out_keeps_the_first(client, live, monkeypatch):
    refused_at_send(monkeypatch, "sms", outbox.STOP_ERROR_CODE)
    refused_at_send(monkeypatch, "whatsapp", outbox.WHATSAPP_BLOCKED_CODE)
    assert kept() == [(outbox.number_hash(NUMBER), True, True)]


def test_whatsapp_blocked_by_a_person_marks_her_as_her_stop_does(client, live):
    with transaction() as s:
        s.add(Person(phone=NUMBER, role="customer"))
    refused_by_callback(client, "whatsapp", outbox.WHATSAPP_BLOCKED_CODE)
    with transaction() as s:
        person = s.scalar(select(Person).where(Person.phone == NUMBER))
        assert (person.opted_out, person.sms_opted_out) == (True, False)
    assert kept() == []  # the person holds it
    assert queued("whatsapp") is None


def test_a_refusal_for_a_message_to_an_erased_address_keeps_nothing(clean_db):
    outbox._mark_opted_out(retention.ERASED_ADDR)  # a late report of an erased row
    assert kept() == []


def test_start_on_whatsapp_from_the_number_clears_it(client, live):
    refused_by_callback(client, "whatsapp", outbox.STOP_ERROR_CODE)
    params = {"From": f"whatsapp:{NUMBER}", "WaId": NUMBER[1:],
              "To": "whatsapp:+14155238886"}
    send_whatsapp(client, {**params, "MessageSid": "SMfu1", "Body": "hi"})
    # She is asked for START: she stopped us (a block is not: test_whatsapp_block_reopen).
    assert queued("whatsapp") is None
    send_whatsapp(client, {**params, "MessageSid": "SMfu2", "Body": "START"})
    assert kept() == []
    assert queued("whatsapp") is not None


def test_start_by_sms_from_the_number_clears_it(client, live):
    refused_by_callback(client, "sms", outbox.STOP_ERROR_CODE)
    sms_in(client, NUMBER, "START")
    assert kept() == []
    assert queued("sms") is not None


def test_number_opted_in_clears_that_channel_only(client, live, monkeypatch):
    refused_at_send(monkeypatch, "sms", outbox.STOP_ERROR_CODE)
    refused_at_send(monkeypatch, "whatsapp", outbox.WHATSAPP_BLOCKED_CODE)
    with transaction() as s:
        assert outbox.number_opted_in(s, NUMBER, "sms") is True
    assert kept() == [(outbox.number_hash(NUMBER), True, False)]
    with transaction() as s:
        assert outbox.number_opted_in(s, NUMBER, "whatsapp") is True
        assert outbox.number_opted_in(s, NUMBER, "whatsapp") is False
    assert kept() == []
    assert queued("sms") is not None and queued("whatsapp") is not None


# --- 2. a code read on a call, its end and its blanking job both lost ----------------------


def stored_answers() -> list[str]:
    with transaction() as s:
        return [b for b in s.scalars(select(InboundEvent.response_body).where(
            InboundEvent.provider == ivr.PROVIDER)) if b]


def answered_at() -> datetime:
    """When the last call answer was stored (the database's clock, not the frozen one)."""
    with transaction() as s:
        return s.scalar(select(func.max(InboundEvent.received_at)).where(
            InboundEvent.provider == ivr.PROVIDER))


def hear_a_code(caller):
    track_first(caller)
    return caller.press("1")


def lose_the_blanking_jobs() -> None:
    """Redis lost the scheduled job that blanks the answer (a flush, a failover)."""
    q = queue("default")
    for job_id in q.scheduled_job_registry.get_job_ids():
        if job_id.startswith("ivr-code-"):
            q.fetch_job(job_id).delete()


def test_a_code_whose_call_end_and_blanking_job_were_lost_goes_with_the_daily_run(
        client, assigned):  # noqa: F811
    booking_id, _, caller = assigned
    heard = hear_a_code(caller)
    said = " ".join(heard_code(heard, ref_of(booking_id)))
    lose_the_blanking_jobs()  # and no status callback ever comes
    read_at = answered_at()
    retention.run(read_at + timedelta(minutes=1))  # within the call: a retry hears it
    assert caller.repeat().xml == heard.xml
    retention.run(read_at + timedelta(days=1))
    assert not [a for a in stored_answers() if said in a], "the code kept for 90 days"
    assert stored_answers(), "only the answer with the code went"
    late = caller.repeat()
    assert said not in late.xml and late.hangup


def test_the_daily_run_blanks_a_code_said_in_another_language(client, assigned):  # noqa: F811
    booking_id, _, caller = assigned
    with transaction() as s:
        s.scalar(select(Person).where(Person.phone == caller.phone)).preferred_language = "ta"
    heard = hear_a_code(caller)
    said = " ".join(heard_code(heard, ref_of(booking_id)))
    lose_the_blanking_jobs()
    assert retention.run(answered_at() + timedelta(days=1))["code_answers"] == 1
    assert not [a for a in stored_answers() if said in a]


def test_ivr_recognises_the_answers_that_say_a_code():
    from core import i18n

    for lang in i18n.LANGUAGES:
        for key in ivr.CODE_KEYS:
            text = i18n.t(key, lang, ref="1 2 3, 4 5 6", digits="4 8 2 9")
            assert ivr.says_a_code(f"<Response><Say>{text}</Say></Response>"), (lang, key)
        other = i18n.t("ivr.code.offer", lang)
        assert not ivr.says_a_code(f"<Response><Say>{other}</Say></Response>")
    assert not ivr.says_a_code(ivr.BLANKED_ANSWER)


# --- 3. outbox.withdraw -----------------------------------------------------------------


def test_withdraw_takes_back_only_a_message_never_tried(live):
    with transaction() as s:
        untried = outbox.queue_message(s, channel="whatsapp", to=NUMBER, body="Details")
        s.add(WhatsappTemplateSend(outbox_id=untried, content_sid="HXabc",
                                   content_variables={"1": "Details"}))
        tried = outbox.queue_message(s, channel="sms", to=NUMBER, body="Other details")
        s.flush()
        s.get(OutboxMessage, tried).attempts = 1  # a try failed: it waits for its retry
    with transaction() as s:
        assert outbox.withdraw(s, untried) is True
        assert outbox.withdraw(s, untried) is False  # gone already
        assert outbox.withdraw(s, tried) is False
        assert outbox.withdraw(s, 10**9) is False
    with transaction() as s:
        assert s.get(OutboxMessage, untried) is None
        assert s.get(WhatsappTemplateSend, untried) is None
        assert s.get(OutboxMessage, tried) is not None
    run_jobs()  # the withdrawn row's delivery job finds nothing to send
    with transaction() as s:
        assert s.get(OutboxMessage, tried).status == "delivered"


def test_withdraw_leaves_a_message_already_sent(live):
    oid = queued("sms")
    run_jobs()
    with transaction() as s:
        assert outbox.withdraw(s, oid) is False
        assert s.get(OutboxMessage, oid).status == "delivered"


def test_the_ivr_takes_back_its_details_through_the_outbox(live, phone, monkeypatch):  # noqa: F811
    calls: list[bool] = []
    real = outbox.withdraw

    def spy(session, row_id):
        calls.append(real(session, row_id))
        return calls[-1]

    monkeypatch.setattr(outbox, "withdraw", spy)
    book_in_hindi(phone)
    cancel_the_one_just_booked(phone)
    phone.hang_up()
    jobs()
    assert calls == [True]
    assert details_to(phone.phone) == []

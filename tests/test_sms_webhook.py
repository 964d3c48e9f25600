"""Partner SMS webhook: strangers, bad input, failures, signature (the dispatch work)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from core import clock, i18n
from core.adapters.db import transaction
from core.adapters.models import InboundEvent, OutboxMessage, Person
from core.config import get_settings
from tests.conftest import post_twilio
from tests.test_dispatch import LAXMIPUR, make_partner, sms


def test_sms_from_stranger_gets_one_line_on_joining(client):
    params = {"MessageSid": "SMs1", "From": "+919811111111", "To": "+15005550006",
              "Body": "ON"}
    r = post_twilio(client, "/webhooks/sms", params)
    assert r.status_code == 200
    assert r.get_data(as_text=True).count("<Message>") == 1
    assert "RideChain" in r.get_data(as_text=True)
    with transaction() as s:
        # nothing else: no contact created, nothing queued
        assert s.scalar(select(func.count()).select_from(Person)) == 0
        assert s.scalar(select(func.count()).select_from(OutboxMessage)) == 0


def test_a_stranger_is_told_once_a_day_then_left_in_peace(client):
    """An auto-responder answering our SMS must not start a day-long SMS ping-pong."""
    stranger, other = "+919811111113", "+919811111114"
    told = [i18n.t("sms.not_partner", i18n.DEFAULT_LANGUAGE, ops_phone=get_settings().ops_phone)]
    day_one = datetime(2026, 12, 3, 4, 0, tzinfo=UTC)  # 09:30 in India
    clock.freeze(day_one)
    try:
        assert sms(client, stranger, "Your OTP is 1234") == told
        assert sms(client, stranger, "Reply STOP to stop") == []
        assert sms(client, stranger, "ON") == []
        assert sms(client, other, "hello") == told  # another number is told
        clock.freeze(day_one + timedelta(hours=15))  # 00:30 the next day in India
        assert sms(client, stranger, "hello again") == told
    finally:
        clock.freeze(None)


def test_customer_number_is_not_a_partner_either(client):
    with transaction() as s:
        s.add(Person(phone="+919811111112", role="customer", preferred_language="en"))
    assert sms(client, "+919811111112", "1") == [
        i18n.t("sms.not_partner", "en", ops_phone=get_settings().ops_phone)]


def test_bad_input_gets_a_clear_answer_in_the_partners_language(client):
    _, phone = make_partner("Ramesh", LAXMIPUR, lang="hi")
    for body in ("", "???", "YES 99999999999999999999", "PICK 1234 99999999999999999999",
                 "DROP", "CANCEL", "2", "x" * 1500):
        replies = sms(client, phone, body)
        assert len(replies) == 1 and replies[0].strip(), body
        assert not replies[0].isascii() or "HELP" in replies[0], body  # Hindi, not English


def test_an_unexpected_failure_answers_politely_and_is_not_retried(client, monkeypatch):
    from core.services import dispatch

    _, phone = make_partner("Ramesh", LAXMIPUR, lang="en")

    def boom(*_a, **_kw):
        raise RuntimeError("bug")

    monkeypatch.setattr(dispatch, "accept", boom)
    assert sms(client, phone, "1", sid="SMboom") == [i18n.t("common.error_try_later", "en")]
    with transaction() as s:
        assert s.scalar(select(func.count()).select_from(InboundEvent)) == 1


def test_unsigned_sms_is_refused(client):
    _, phone = make_partner("Ramesh", LAXMIPUR)
    r = post_twilio(client, "/webhooks/sms", {"MessageSid": "SMx", "From": phone, "Body": "1"},
                    signature="bad")
    assert r.status_code == 403

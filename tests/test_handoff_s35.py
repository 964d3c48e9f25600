"""Hand-off fixes after review 6: a follow-up the operator left unanswered, a rider's
delivery photo in his own handoff, "बंद" as an answer, the guessed language's template."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from core import clock, i18n
from core.adapters.db import transaction
from core.adapters.dialog_models import Handoff, HandoffMessage, WhatsappTemplateSend
from core.adapters.models import Conversation, OutboxMessage, Person
from core.adapters.redis_conn import redis_client
from core.config import reset_settings
from core.dialog import words
from core.domain.errors import Conflict
from core.services import handoff, notify
from tests.test_api import API, sign_in
from tests.test_handoff_review26 import DAYTIME, daytime, say_wa  # noqa: F401

pytestmark = pytest.mark.db

TA, HI = "HX" + "a" * 32, "HX" + "b" * 32
PHONE = "+919812306601"
CUST = "+919812306602"
OPS_A = "+919000006601"
OPS_B = "+919000006602"


@pytest.fixture
def templates(monkeypatch):  # noqa: ANN001, ANN201
    monkeypatch.setenv("WHATSAPP_TEMPLATE_TA", TA)
    monkeypatch.setenv(f"WHATSAPP_TEMPLATE_{i18n.DEFAULT_LANGUAGE.upper()}", HI)
    notify.reset_templates()
    yield
    notify.reset_templates()


@pytest.fixture
def tamil_template_only(monkeypatch):  # noqa: ANN001, ANN201
    monkeypatch.setenv("WHATSAPP_TEMPLATE_TA", TA)
    monkeypatch.delenv(f"WHATSAPP_TEMPLATE_{i18n.DEFAULT_LANGUAGE.upper()}", raising=False)
    notify.reset_templates()
    yield
    notify.reset_templates()


def english_chat_waiting(client, phone: str = CUST) -> int:  # noqa: ANN001
    for body in ("hi", "2", "4"):  # hello, English, talk to a person
        say_wa(client, body, phone)
    with transaction() as s:
        hid = s.scalar(select(Handoff.id).join(Person, Person.id == Handoff.person_id)
                       .where(Handoff.status == "waiting", Person.phone == phone))
    assert hid
    return hid


def reply(client, ops: dict[str, str], hid: int, body: str):  # noqa: ANN001, ANN201
    return client.post(f"{API}/ops/handoffs/{hid}/reply", headers=ops, json={"body": body})


def ops_alerts(hid: int) -> list[str]:
    """The dedupe keys of the ops alerts queued about handoff ``hid``."""
    with transaction() as s:
        return list(s.scalars(select(OutboxMessage.dedupe_key).where(
            OutboxMessage.dedupe_key.like(f"handoff-{hid}-ops-waiting%"))
            .order_by(OutboxMessage.id)))


def operator_of(hid: int) -> str | None:
    with transaction() as s:
        return s.get(Handoff, hid).operator


# --- 1. the operator who took her went home ------------------------------------------------


def test_a_follow_up_the_operator_left_unanswered_alerts_ops_and_frees_her(
        client, live, daytime):  # noqa: F811
    hid = english_chat_waiting(client)
    a, b = sign_in(client, OPS_A, role="ops"), sign_in(client, OPS_B, role="ops")
    assert reply(client, a, hid, "Which booking?").status_code == 200
    assert handoff.alert_unanswered() == 0
    say_wa(client, "RC-1234, it never came", CUST)  # and A went home
    clock.freeze(DAYTIME + timedelta(minutes=handoff.reply_minutes() - 1))
    assert handoff.alert_unanswered() == 0  # not due yet
    assert operator_of(hid) is not None
    clock.freeze(DAYTIME + timedelta(minutes=handoff.reply_minutes()))
    assert handoff.alert_unanswered() == 1
    assert operator_of(hid) is None  # back in the queue
    assert len(ops_alerts(hid)) >= 1
    told = len(ops_alerts(hid))
    clock.freeze(DAYTIME + timedelta(minutes=handoff.reply_minutes() + 5))
    assert handoff.alert_unanswered() == 0  # once per message
    assert len(ops_alerts(hid)) == told
    items = client.get(f"{API}/ops/handoffs", headers=b).get_json()["items"]
    assert [(h["id"], h["taken_by"]) for h in items] == [(hid, None)]
    # B answers her; A, back, may not answer her at the same time.
    r = reply(client, b, hid, "Ravi here: it is on its way")
    assert r.status_code == 200, r.get_json()
    r = reply(client, a, hid, "Sorry, I was away")
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "taken_by_other", \
        r.get_json()
    # Her next message B answers in time: nothing.
    say_wa(client, "ok when?", CUST)
    clock.freeze(clock.now() + timedelta(minutes=3))
    assert reply(client, b, hid, "By 5 pm").status_code == 200
    clock.freeze(clock.now() + timedelta(hours=1))
    assert handoff.alert_unanswered() == 0
    assert operator_of(hid) is not None
    # One more B leaves unanswered: a new alert of its own, and she is free again.
    say_wa(client, "and the money?", CUST)
    clock.freeze(clock.now() + timedelta(minutes=handoff.reply_minutes()))
    assert handoff.alert_unanswered() == 1
    assert operator_of(hid) is None
    assert len(ops_alerts(hid)) > told


@pytest.fixture
def team_hours(monkeypatch):  # noqa: ANN001, ANN201
    monkeypatch.setenv("OPS_HOURS", "09:00-21:00")
    reset_settings()
    yield
    clock.freeze(None)
    monkeypatch.undo()
    reset_settings()


def test_the_follow_up_alert_counts_team_time_only(client, live, team_hours):  # noqa: ANN001
    evening = DAYTIME.replace(hour=15, minute=20)  # 20:50 India time
    clock.freeze(evening)
    hid = english_chat_waiting(client)
    a = sign_in(client, OPS_A, role="ops")
    assert reply(client, a, hid, "Which booking?").status_code == 200
    say_wa(client, "RC-1234", CUST)
    clock.freeze(evening + timedelta(hours=2))  # the team went home at 21:00
    assert handoff.alert_unanswered() == 0
    clock.freeze(evening + timedelta(hours=12, minutes=14))  # 09:04: 14 team minutes
    assert handoff.alert_unanswered() == 0
    clock.freeze(evening + timedelta(hours=12, minutes=16))  # 09:06: 16 team minutes
    assert handoff.alert_unanswered() == 1
    assert operator_of(hid) is None


def test_a_person_is_freed_on_each_of_her_requests_the_operator_had(client, live, daytime):  # noqa: F811
    """She waits on her chat and on a call; operator A has both. Her chat message waits:
    both go back, so B's answer to the call is not refused for A's hold on the chat."""
    hid = english_chat_waiting(client)
    with transaction() as s:
        person_id = s.get(Handoff, hid).person_id
        conv = Conversation(channel="voice", contact=CUST, person_id=person_id,
                            step="menu", state={}, misses=0, handoff=False)
        s.add(conv)
        s.flush()
        handoff.request(s, conv, "asked")
        s.flush()
        call = s.scalar(select(Handoff.id).where(Handoff.conversation_id == conv.id))
    a, b = sign_in(client, OPS_A, role="ops"), sign_in(client, OPS_B, role="ops")
    assert reply(client, a, hid, "Which booking?").status_code == 200
    assert reply(client, a, call, "Calling you soon").status_code == 200
    say_wa(client, "RC-1234", CUST)
    clock.freeze(DAYTIME + timedelta(minutes=handoff.reply_minutes()))
    assert handoff.alert_unanswered() == 1
    assert operator_of(hid) is None and operator_of(call) is None
    r = reply(client, b, call, "Ravi here")
    assert r.status_code == 200, r.get_json()


def test_a_redis_outage_sends_one_follow_up_alert_all_the_same(client, live, daytime):  # noqa: F811
    hid = english_chat_waiting(client)
    a = sign_in(client, OPS_A, role="ops")
    assert reply(client, a, hid, "Which booking?").status_code == 200
    say_wa(client, "RC-1234", CUST)
    clock.freeze(DAYTIME + timedelta(minutes=handoff.reply_minutes()))
    assert handoff.alert_unanswered() == 1
    told = len(ops_alerts(hid))
    for key in redis_client().scan_iter("handoff:ops-told:*"):
        redis_client().delete(key)  # forgotten: the outbox's dedupe key holds
    handoff.alert_unanswered()
    assert len(ops_alerts(hid)) == told


# --- 2. a rider's delivery photo in his own hand-off -----------------------------------------


def test_partner_pod_photo_during_his_own_handoff_is_filed(client, live):  # noqa: ANN001
    from sandbox.twilio import store_media
    from tests.conftest import run_jobs, send_whatsapp
    from tests.test_dispatch import (
        CUSTOMER,
        LAXMIPUR,
        RECIPIENT,
        last_code,
        legs_of,
        make_partner,
        paid_booking,
        sms,
        start,
    )
    _, phone = make_partner("Ramesh", LAXMIPUR)
    booking_id = paid_booking()
    start(booking_id)
    sms(client, phone, "1")
    sms(client, phone, f"PICK {last_code(CUSTOMER, 'पार्सल उठाने')}")
    n = iter(range(100))

    def wa(body: str, **extra: str) -> str:
        return send_whatsapp(client, {"MessageSid": f"SMs35p{next(n):028d}",
                                      "From": f"whatsapp:{phone}", "To": "whatsapp:+1",
                                      "Body": body, "WaId": phone[1:], **extra})
    for body in ("hi", "4"):  # he has Hindi already; talk to a person
        wa(body)
    with transaction() as s:
        assert [(h.channel, h.status) for h in s.scalars(select(Handoff))] == [
            ("whatsapp", "waiting")]
    sms(client, phone, f"DROP {last_code(RECIPIENT)}")
    said = wa("", NumMedia="1", MediaUrl0=store_media(b"\xff\xd8\xff\xe0" + b"p" * 200,
                                                      "image/jpeg"),
              MediaContentType0="image/jpeg")
    assert said, "he is told his photo was filed"
    run_jobs()
    assert legs_of(booking_id)[0].pod_photo_url, "his delivery photo was not filed"
    with transaction() as s:
        assert s.scalar(select(Handoff.status)) == "waiting"  # still waits for a person


# --- 3. "बंद" answering an operator -------------------------------------------------------


@pytest.mark.parametrize("word", ["बंद", "band", "Band.", "বন্ধ", "બંધ"])
def test_closed_answering_an_operator_goes_to_them(client, live, daytime, word):  # noqa: F811
    hid = english_chat_waiting(client)
    a = sign_in(client, OPS_A, role="ops")
    assert reply(client, a, hid, "Was the shop open or closed?").status_code == 200
    said = say_wa(client, word, CUST)
    assert said == ""  # the bot stays quiet
    with transaction() as s:
        h = s.get(Handoff, hid)
        p = s.scalar(select(Person).where(Person.phone == CUST))
        assert h.status == "waiting" and not p.opted_out
        kept = list(s.scalars(select(HandoffMessage.body).where(
            HandoffMessage.handoff_id == hid, HandoffMessage.direction == "in")))
        assert kept[-1] == word


@pytest.mark.parametrize("word", ["STOP", "बंद करो", "message band karo", "বন্ধ করুন"])
def test_an_unambiguous_stop_in_a_handoff_still_stops(client, live, daytime, word):  # noqa: F811
    hid = english_chat_waiting(client)
    a = sign_in(client, OPS_A, role="ops")
    assert reply(client, a, hid, "Was the shop open or closed?").status_code == 200
    say_wa(client, word, CUST)
    with transaction() as s:
        assert s.get(Handoff, hid).status == "closed"
        assert s.scalar(select(Person.opted_out).where(Person.phone == CUST))


def test_band_outside_a_handoff_still_stops(client, live, daytime):  # noqa: F811
    say_wa(client, "hi", CUST)
    say_wa(client, "band", CUST)
    with transaction() as s:
        assert s.scalar(select(Person.opted_out).where(Person.phone == CUST))


def test_closed_words_are_stop_words():
    assert words.CLOSED_WORDS <= words.STOP_WORDS
    assert all(words.command(w) == "stop" for w in words.CLOSED_WORDS)


# --- 4. the guessed language's template ------------------------------------------------------


def tamil_chat_waiting(hours_ago: float, **person: object) -> int:
    with transaction() as s:
        p = Person(phone=PHONE, role="customer", wa_id=PHONE, **person)
        s.add(p)
        s.flush()
        conv = Conversation(channel="whatsapp", contact=PHONE, person_id=p.id,
                            step="language_guess", state={"lang_guess": "ta"}, misses=0,
                            handoff=False,
                            last_inbound_at=clock.now() - timedelta(hours=hours_ago))
        s.add(conv)
        s.flush()
        handoff.request(s, conv, "not_understood")
        s.flush()
        return s.scalar(select(Handoff.id).where(Handoff.conversation_id == conv.id))


def template_of(body: str) -> str | None:
    with transaction() as s:
        out = s.scalar(select(OutboxMessage).where(OutboxMessage.body == body))
        assert out is not None and out.channel == "whatsapp", out and out.channel
        tpl = s.get(WhatsappTemplateSend, out.id)
        return tpl.content_sid if tpl else None


def test_close_outside_window_uses_the_guessed_languages_template(
        client, live, daytime, templates):  # noqa: F811
    hid = tamil_chat_waiting(25)
    a = sign_in(client, OPS_A, role="ops")
    r = client.post(f"{API}/ops/handoffs/{hid}/close", headers=a)
    assert r.status_code == 200, r.get_json()
    assert template_of(i18n.t("bot.handoff.closed", "ta")) == TA


def test_reply_outside_window_uses_the_guessed_languages_template(
        client, live, daytime, templates):  # noqa: F811
    hid = tamil_chat_waiting(25)
    a = sign_in(client, OPS_A, role="ops")
    r = reply(client, a, hid, "வணக்கம், உதவ")
    assert r.status_code == 200, r.get_json()
    assert template_of("வணக்கம், உதவ") == TA


def test_unreachable_speaks_of_the_guessed_languages_template(
        live, daytime, tamil_template_only):  # noqa: F811
    hid = tamil_chat_waiting(25, sms_opted_out=True)
    with transaction() as s, pytest.raises(Conflict) as err:
        handoff.reply(s, hid, "ops:1", "x" * 1200)
    assert err.value.code == "whatsapp_window_closed"
    assert "Shorten the reply" in str(err.value), str(err.value)

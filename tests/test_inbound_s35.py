"""A partner SMS that comes while Redis is away is parked, not lost (session 35).

1. The SMS webhook (partner_sms, answered inside the request) answered 503 while Redis
   was away (its rate limit counts there first): Twilio does not retry a messaging
   webhook answered 5xx, so a rider's "1" to an offer, or his "DONE 57 1234", was lost.
   It is now parked in PostgreSQL like a WhatsApp message (session 34) and answered 200
   with an empty TwiML; once Redis is back the sweep queues it and the drain handles it,
   its reply sent by SMS through the outbox, once. A later SMS of his waits behind it.
   It is handled as of then: a yes whose offer ran out meanwhile gets the late answer.
2. An erasure did not look at inbound_parked: a parked message of the erased person was
   handled after the erasure (a new person, a chat). It now deletes them, in its
   transaction.

Real PostgreSQL and Redis ("away": REDIS_URL pointed at a port nobody listens on);
time frozen through core.clock.
"""

from __future__ import annotations

import socket
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from core import clock, i18n
from core.adapters.db import transaction
from core.adapters.models import InboundEvent, InboundParked, Leg, OutboxMessage, Person
from core.adapters.redis_conn import redis_client, reset_clients
from core.config import reset_settings
from core.services import dispatch, inbound, retention
from tests.conftest import post_twilio, replies_to, run_jobs
from tests.test_admin import _keep_root_handlers  # noqa: F401  (autouse fixture)
from tests.test_dispatch import (
    LAXMIPUR,
    frozen,  # noqa: F401  (fixture)
    legs_of,
    make_partner,
    offers,
    paid_booking,
    start,
)
from workers import outbox as outbox_jobs

pytestmark = pytest.mark.db


@contextmanager
def redis_away(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Redis is away for everything in the service (a restart): REDIS_URL names a port
    nobody listens on, so every client gets "connection refused"."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with monkeypatch.context() as m:
        m.setenv("REDIS_URL", f"redis://127.0.0.1:{port}/0")
        reset_settings()
        try:
            yield
        finally:
            m.undo()
            reset_settings()
            reset_clients()


def sms_params(phone: str, body: str, sid: str) -> dict[str, str]:
    return {"MessageSid": sid, "From": phone, "To": "+15005550006", "Body": body}


def post_sms(client, params: dict[str, str]) -> tuple[int, list[str]]:  # noqa: ANN001
    r = post_twilio(client, "/webhooks/sms", params)
    if r.status_code != 200:
        return r.status_code, []
    root = ET.fromstring(r.get_data(as_text=True))
    return 200, [m.text or "" for m in root.iter("Message")]


def wa(phone: str, body: str, sid: str) -> dict[str, str]:
    return {"MessageSid": sid, "AccountSid": "ACsandbox", "From": f"whatsapp:{phone}",
            "To": "whatsapp:+14155238886", "Body": body, "NumMedia": "0",
            "WaId": phone.lstrip("+"), "ProfileName": "Asha"}


def _parked() -> list[str]:
    with transaction() as s:
        return list(s.scalars(select(InboundParked.sid).order_by(InboundParked.id)))


def _claims() -> list[str]:
    with transaction() as s:
        return list(s.scalars(select(InboundEvent.external_id).order_by(InboundEvent.id)))


def _replies(sid: str) -> list[tuple[str, str]]:
    """(channel, address) of each reply to ``sid``."""
    with transaction() as s:
        return [(m.channel, m.to_addr) for m in s.scalars(
            select(OutboxMessage).where(OutboxMessage.dedupe_key.like(f"reply:{sid}:%"))
            .order_by(OutboxMessage.id))]


def _redis_back() -> None:
    """Redis is back: the workers run their jobs and the minute sweep."""
    run_jobs()
    outbox_jobs.sweep()
    run_jobs()


def _booking_of(leg_id: int) -> int:
    with transaction() as s:
        leg = s.get(Leg, leg_id)
        assert leg is not None
        return leg.booking_id


def _offered() -> tuple[int, str, int]:
    """A Hindi-speaking partner with one offer open: (partner id, phone, leg id)."""
    me_id, me = make_partner("Ramesh", LAXMIPUR, lang="hi")
    job = paid_booking()
    start(job)
    leg = legs_of(job)[0]
    assert [(o.partner_id, o.status) for o in offers(leg.id)] == [(me_id, "open")]
    return me_id, me, leg.id


# --- 1. a partner SMS while Redis is away -------------------------------------------------


def test_a_riders_yes_while_redis_is_away_is_parked_and_answered_once_by_sms(
        client, live, frozen, monkeypatch):  # noqa: F811
    """Was: 503 (cache_unavailable), and Twilio does not send it again: his yes lost."""
    me_id, me, leg_id = _offered()
    with redis_away(monkeypatch):
        status, replies = post_sms(client, sms_params(me, "1", "SMs35yes01"))
    assert status == 200, "the rider's yes was refused (Twilio does not retry it)"
    assert replies == []  # nothing to say yet: the answer comes by SMS
    assert _parked() == ["SMs35yes01"]
    assert [o.status for o in offers(leg_id)] == ["open"]
    _redis_back()
    assert [o.status for o in offers(leg_id)] == ["accepted"]
    assert legs_of(_booking_of(leg_id))[0].partner_id == me_id
    assert _replies("SMs35yes01") == [("sms", me)], "his answer went nowhere, or twice"
    assert _parked() == []
    sent = replies_to("SMs35yes01")
    _redis_back()  # the next minute: nothing handled again
    assert replies_to("SMs35yes01") == sent
    assert _claims() == ["SMs35yes01"]


def test_a_parked_sms_sent_again_is_handled_once(
        client, live, frozen, monkeypatch):  # noqa: F811
    """The same sid twice while Redis is away (one row), and again once it is back,
    before the sweep (queued behind the parked copy: a duplicate there), and after it
    (answered from record: nothing): one turn, one reply."""
    _, me, leg_id = _offered()
    params = sms_params(me, "1", "SMs35dup01")
    with redis_away(monkeypatch):
        assert post_sms(client, params) == (200, [])
        assert post_sms(client, params) == (200, [])
    assert _parked() == ["SMs35dup01"]
    assert post_sms(client, params) == (200, [])  # Redis back, the sweep not run yet
    _redis_back()
    assert post_sms(client, params) == (200, [])  # handled: nothing said twice
    _redis_back()
    assert _parked() == []
    assert _claims() == ["SMs35dup01"]
    assert len(_replies("SMs35dup01")) == 1
    assert [o.status for o in offers(leg_id)] == ["accepted"]


def test_his_next_sms_waits_behind_the_parked_one(
        client, live, frozen, monkeypatch):  # noqa: F811
    """"1" parked while Redis is away, then "OFF" once it is back (before the sweep ran):
    the OFF must not be handled first (it would close the offer as he goes off duty, and
    the yes after it find no offer). Both are handled in the order he sent them."""
    me_id, me, leg_id = _offered()
    with redis_away(monkeypatch):
        assert post_sms(client, sms_params(me, "1", "SMs35ord01"))[0] == 200
    clock.freeze(clock.now() + timedelta(seconds=5))
    status, replies = post_sms(client, sms_params(me, "OFF", "SMs35ord02"))
    _redis_back()
    assert _claims() == ["SMs35ord01", "SMs35ord02"], "the later SMS overtook"
    assert status == 200 and replies == []  # queued behind the parked yes: no TwiML
    assert [o.status for o in offers(leg_id)] == ["accepted"]
    assert legs_of(_booking_of(leg_id))[0].partner_id == me_id
    assert len(_replies("SMs35ord01")) == 1 and len(_replies("SMs35ord02")) == 1
    # The queue empty again, his next SMS is answered in the webhook, as before.
    status, replies = post_sms(client, sms_params(me, "ON", "SMs35ord03"))
    assert status == 200 and len(replies) == 1
    assert _replies("SMs35ord03") == []


def test_a_yes_whose_offer_ran_out_meanwhile_gets_the_late_answer(
        client, live, frozen, monkeypatch):  # noqa: F811
    """Handled once Redis is back, as of then: an offer whose time and grace ran out
    while it waited is not taken; he hears "time is up for job N" (the answer to any late
    yes), and the search goes on without him."""
    _, me, leg_id = _offered()
    with redis_away(monkeypatch):
        assert post_sms(client, sms_params(me, "1", "SMs35late1"))[0] == 200
    offer = offers(leg_id)[0]
    cfg = dispatch.config()
    clock.freeze(offer.expires_at + timedelta(seconds=cfg.offer_grace_s + 1))
    inbound.unpark()
    run_jobs(("inbound", "outbox"))
    assert replies_to("SMs35late1") == [i18n.t("dispatch.offer_expired", "hi", job=leg_id)]
    assert offers(leg_id)[0].status == "expired"


def test_redis_and_the_database_both_away_is_a_503(
        client, live, frozen, monkeypatch):  # noqa: F811
    _, me, _ = _offered()

    def database_away(msg):  # noqa: ANN001, ANN202
        raise OperationalError("INSERT", {}, Exception("connection refused"))

    monkeypatch.setattr(inbound, "park", database_away)
    with redis_away(monkeypatch):
        assert post_sms(client, sms_params(me, "1", "SMs35both1"))[0] == 503


def test_the_too_many_notice_of_a_queued_sms_goes_only_where_we_text(
        client, live, frozen, monkeypatch):  # noqa: F811
    """SMS parked from a foreign number (one we never answer: SMS pumping) and queued
    over the rate limit: its "too many messages" notice is an SMS we pay for, and is not
    sent, as the webhook sends none to it."""
    foreign = "+447700900123"
    limit = inbound.get_settings().inbound_rate_limit
    with redis_away(monkeypatch):
        for i in range(limit + 1):
            assert post_sms(client, sms_params(foreign, f"hi {i}", f"SMs35pump{i:03d}"))[0] \
                == 200
    _redis_back()
    with transaction() as s:
        assert list(s.scalars(select(OutboxMessage.body).where(
            OutboxMessage.to_addr == foreign))) == []
    assert _parked() == []


# --- 2. an erasure takes the person's parked messages -------------------------------------


def test_an_erasure_deletes_the_persons_parked_messages(
        client, live, frozen, monkeypatch):  # noqa: F811
    """Her WhatsApp message and her SMS parked while Redis was away go with her erasure
    (another person's stays); nothing of hers is handled after it."""
    her, other = "+919817175001", "+919817175002"
    with transaction() as s:
        person = Person(phone=her, wa_id=her.lstrip("+"), name="Asha", role="customer",
                        preferred_language="hi")
        s.add(person)
        s.flush()
        person_id = person.id
    with redis_away(monkeypatch):
        assert post_twilio(client, "/webhooks/whatsapp",
                           wa(her, "hi, I am Asha", "SMs35era01")).status_code == 200
        assert post_sms(client, sms_params(her, "my number is 9817175001",
                                           "SMs35era02"))[0] == 200
        assert post_twilio(client, "/webhooks/whatsapp",
                           wa(other, "hi", "SMs35era03")).status_code == 200
    assert _parked() == ["SMs35era01", "SMs35era02", "SMs35era03"]
    with transaction() as s:
        done = retention.erase_person(s, person_id)
    assert done.counts.get("parked_messages") == 2
    assert _parked() == ["SMs35era03"]
    _redis_back()
    assert _claims() == ["SMs35era03"], "her parked message was handled after her erasure"
    with transaction() as s:
        assert s.scalar(select(Person.id).where(Person.phone == her)) is None


def test_a_recipients_erasure_deletes_her_parked_sms(
        client, live, frozen, monkeypatch):  # noqa: F811
    """A recipient with no account (no person row) whose SMS was parked: erasing her by
    her number deletes it."""
    her = "+919817175011"
    with redis_away(monkeypatch):
        assert post_sms(client, sms_params(her, "where is my parcel", "SMs35era11"))[0] \
            == 200
    with transaction() as s:
        done = retention.erase_recipient(s, her, actor="ops:test", reason="her request")
    assert done.counts.get("parked_messages") == 1
    assert _parked() == []


# --- review (r1): the parked one first, whoever drains ------------------------------------


def test_a_drainer_already_running_takes_the_parked_one_first(
        client, live, frozen, monkeypatch):  # noqa: F811
    """"1" parked; "OFF" once Redis is back while every drainer is busy (no new drain job,
    none of which would unpark first): the running drainer took "OFF" before the parked
    "1" (his offer lost as he went off duty). The webhook now moves the parked ones into
    Redis before it queues his new one."""
    from workers import inbound as inbound_jobs

    me_id, me, leg_id = _offered()
    with redis_away(monkeypatch):
        assert post_sms(client, sms_params(me, "1", "SMs35run01"))[0] == 200
    redis_client().set(inbound.DRAINER_COUNT, inbound.DRAINERS, ex=60)  # all busy
    clock.freeze(clock.now() + timedelta(seconds=5))
    assert post_sms(client, sms_params(me, "OFF", "SMs35run02")) == (200, [])
    inbound.drain_ready(inbound_jobs.HANDLERS.__getitem__, threads=1)  # the running one
    _redis_back()
    assert _claims() == ["SMs35run01", "SMs35run02"], "the later SMS overtook"
    assert [o.status for o in offers(leg_id)] == ["accepted"]
    assert legs_of(_booking_of(leg_id))[0].partner_id == me_id


def test_a_row_unparked_between_the_two_looks_is_not_overtaken(
        client, live, frozen, monkeypatch):  # noqa: F811
    """The webhook's look for waiting messages read Redis, then PostgreSQL: an unpark (the
    sweep's) committing between the two found an empty inbox and then no row, and "OFF"
    was answered in the webhook before the parked "1". PostgreSQL is read first now."""
    import contextlib

    me_id, me, leg_id = _offered()
    with redis_away(monkeypatch):
        assert post_sms(client, sms_params(me, "1", "SMs35rac01"))[0] == 200
    real = inbound.autocommit
    fired: list[int] = []

    @contextlib.contextmanager
    def unpark_first():  # noqa: ANN202
        # The first connection the webhook asks for: the sweep's unpark commits just then.
        if not fired:
            fired.append(1)
            inbound.unpark()
        with real() as conn:
            yield conn

    monkeypatch.setattr(inbound, "autocommit", unpark_first)
    clock.freeze(clock.now() + timedelta(seconds=5))
    post_sms(client, sms_params(me, "OFF", "SMs35rac02"))
    monkeypatch.setattr(inbound, "autocommit", real)
    _redis_back()
    assert _claims() == ["SMs35rac01", "SMs35rac02"], "the later SMS overtook"
    assert legs_of(_booking_of(leg_id))[0].partner_id == me_id

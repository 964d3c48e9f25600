"""An operator's reply to a person waiting (POST /ops/handoffs/{id}/reply) with an
Idempotency-Key: a retry (a timeout, a double tap) answers as the first request did and
sends the person nothing more; the key used for another request is refused; two copies at
the same moment send once. Without a key, every request sends, as before."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import func, select, text

from core.adapters.api_models import IdempotencyRecord
from core.adapters.db import transaction
from core.adapters.dialog_models import Handoff, HandoffMessage
from core.adapters.models import OutboxMessage, Person
from core.services import handoff
from tests.conftest import send_whatsapp
from tests.test_api import API, sign_in

pytestmark = pytest.mark.db

OPS_PHONE = "+919000000077"
CUSTOMER = "+919812300041"
OTHER_CUSTOMER = "+919812300042"
_sid = iter(range(1, 10_000))


def waiting_handoff(client, phone: str) -> int:  # noqa: ANN001
    """``phone`` asks on WhatsApp for a person; the id of their waiting handoff."""
    for body in ("hi", "2", "4"):  # hello, English, talk to a person
        send_whatsapp(client, {"From": f"whatsapp:{phone}", "To": "whatsapp:+14155238886",
                               "Body": body, "MessageSid": f"SMidem{next(_sid):028d}",
                               "ProfileName": "Sita"})
    with transaction() as s:
        person_id = s.scalar(select(Person.id).where(Person.phone == phone))
        found = s.scalar(select(Handoff.id).where(Handoff.person_id == person_id,
                                                  Handoff.status == "waiting"))
    assert found is not None, "no handoff is waiting"
    return found


def reply(client, ops: dict[str, str], handoff_id: int, body: str,  # noqa: ANN001
          key: str | None = None):
    headers = dict(ops)
    if key is not None:
        headers["Idempotency-Key"] = key
    return client.post(f"{API}/ops/handoffs/{handoff_id}/reply", json={"body": body},
                       headers=headers)


def sent(body: str, phone: str = CUSTOMER) -> int:
    """How many messages with this text are in the outbox for ``phone``."""
    with transaction() as s:
        return s.scalar(select(func.count()).select_from(OutboxMessage).where(
            OutboxMessage.body == body, OutboxMessage.to_addr == f"whatsapp:{phone}"))


def replies_recorded(handoff_id: int) -> int:
    with transaction() as s:
        return s.scalar(select(func.count()).select_from(HandoffMessage).where(
            HandoffMessage.handoff_id == handoff_id, HandoffMessage.direction == "out"))


@pytest.fixture
def ops(client) -> dict[str, str]:  # noqa: ANN001
    return sign_in(client, OPS_PHONE, role="ops")


def test_a_retry_with_the_same_key_answers_again_and_sends_nothing_more(client, ops):
    hid = waiting_handoff(client, CUSTOMER)
    first = reply(client, ops, hid, "We are looking at it.", key="reply-1")
    assert first.status_code == 200, first.get_json()
    again = reply(client, ops, hid, "We are looking at it.", key="reply-1")
    assert again.status_code == 200 and again.get_json() == first.get_json()
    assert sent("We are looking at it.") == 1
    assert replies_recorded(hid) == 1
    # A retry that arrives after the operator closed the conversation still gets the
    # first answer (the reply did go), not "this handoff is closed".
    assert client.post(f"{API}/ops/handoffs/{hid}/close", headers=ops).status_code == 200
    late = reply(client, ops, hid, "We are looking at it.", key="reply-1")
    assert late.status_code == 200 and late.get_json() == first.get_json()
    assert sent("We are looking at it.") == 1
    # A new key is a new request: refused now that the handoff is closed.
    fresh = reply(client, ops, hid, "We are looking at it.", key="reply-2")
    assert fresh.status_code == 409 and fresh.get_json()["error"]["code"] == "handoff_closed"


def test_the_same_key_with_another_text_is_refused_and_sends_nothing(client, ops):
    hid = waiting_handoff(client, CUSTOMER)
    assert reply(client, ops, hid, "Hello, Ravi here.", key="k-text").status_code == 200
    other = reply(client, ops, hid, "Your parcel left today.", key="k-text")
    assert other.status_code == 422
    assert other.get_json()["error"]["code"] == "idempotency_key_reused"
    assert other.get_json()["error"]["field"] == "Idempotency-Key"
    assert sent("Your parcel left today.") == 0
    assert replies_recorded(hid) == 1


def test_the_same_key_for_another_handoff_is_refused_and_sends_nothing(client, ops):
    first = waiting_handoff(client, CUSTOMER)
    second = waiting_handoff(client, OTHER_CUSTOMER)
    assert reply(client, ops, first, "Hello, Ravi here.", key="k-handoff").status_code == 200
    other = reply(client, ops, second, "Hello, Ravi here.", key="k-handoff")
    assert other.status_code == 422
    assert other.get_json()["error"]["code"] == "idempotency_key_reused"
    assert sent("Hello, Ravi here.", OTHER_CUSTOMER) == 0
    assert replies_recorded(second) == 0
    # Another operator's key is theirs alone: the same key string is a new request.
    colleague = sign_in(client, "+919000000078", role="ops")
    ok = reply(client, colleague, second, "Hello, Ravi here.", key="k-handoff")
    assert ok.status_code == 200, ok.get_json()
    assert sent("Hello, Ravi here.", OTHER_CUSTOMER) == 1


@pytest.mark.parametrize("key", ["k" * 101, "bad\tkey", "bad\x7fkey"])
def test_a_key_we_cannot_keep_is_refused_before_anything_is_sent(client, ops, key):
    hid = waiting_handoff(client, CUSTOMER)
    r = reply(client, ops, hid, "Hello, Ravi here.", key=key)
    assert r.status_code == 422
    assert r.get_json()["error"]["code"] == "validation_error"
    assert r.get_json()["error"]["field"] == "Idempotency-Key"
    assert sent("Hello, Ravi here.") == 0
    # The longest key taken: 100 characters.
    assert reply(client, ops, hid, "Hello, Ravi here.", key="k" * 100).status_code == 200


def test_without_a_key_every_request_sends_as_before(client, ops):
    hid = waiting_handoff(client, CUSTOMER)
    for _ in range(2):
        assert reply(client, ops, hid, "Are you there?").status_code == 200
    assert sent("Are you there?") == 2
    assert replies_recorded(hid) == 2
    with transaction() as s:
        assert s.scalar(select(func.count()).select_from(IdempotencyRecord)) == 0


def test_a_refused_reply_keeps_no_answer_so_the_key_can_be_used_again(client, ops):
    closed = waiting_handoff(client, CUSTOMER)
    assert client.post(f"{API}/ops/handoffs/{closed}/close", headers=ops).status_code == 200
    refused = reply(client, ops, closed, "Hello, Ravi here.", key="k-again")
    assert refused.status_code == 409
    assert refused.get_json()["error"]["code"] == "handoff_closed"
    missing = reply(client, ops, closed + 1000, "Hello, Ravi here.", key="k-again")
    assert missing.status_code == 404
    with transaction() as s:  # the claims went with their rolled-back transactions
        assert s.scalar(select(func.count()).select_from(IdempotencyRecord)) == 0
    hid = waiting_handoff(client, OTHER_CUSTOMER)
    ok = reply(client, ops, hid, "Hello, Ravi here.", key="k-again")
    assert ok.status_code == 200, ok.get_json()
    assert sent("Hello, Ravi here.", OTHER_CUSTOMER) == 1


def test_the_saved_answer_holds_no_reply_text(client, ops):
    """What retention and erasure rely on: the operator's record keeps the answer
    ({"ok": true}) and a digest, never the words sent to the person."""
    hid = waiting_handoff(client, CUSTOMER)
    assert reply(client, ops, hid, "Meena, your parcel is safe.", key="k-private"
                 ).status_code == 200
    with transaction() as s:
        (record,) = s.scalars(select(IdempotencyRecord)).all()
        ops_id = s.scalar(select(Person.id).where(Person.phone == OPS_PHONE))
        assert record.person_id == ops_id
        assert record.response == {"ok": True} and record.status == 200
        assert "Meena" not in record.key + record.request_hash


def _lock_waiters() -> int:
    with transaction() as s:
        return s.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE datname = "
                             "current_database() AND wait_event_type = 'Lock'"))


def test_two_copies_at_the_same_moment_send_once(app, client, ops, monkeypatch):
    """The first copy holds its transaction open after sending (not committed yet) until
    the second one waits for a lock; then the first commits. The second must answer as
    the first did, not send again."""
    hid = waiting_handoff(client, CUSTOMER)
    real_reply = handoff.reply
    first_sent = threading.Event()
    second_done = threading.Event()
    calls: list[int] = []

    def held_reply(session, handoff_id, operator, body, **kw):  # noqa: ANN001, ANN003
        calls.append(handoff_id)
        row = real_reply(session, handoff_id, operator, body, **kw)
        if len(calls) == 1:  # the first copy: wait for the second to reach a lock
            first_sent.set()
            until = time.monotonic() + 20
            while not second_done.is_set() and not _lock_waiters():
                assert time.monotonic() < until, "the second copy neither waited nor ended"
                second_done.wait(0.01)
        return row

    monkeypatch.setattr(handoff, "reply", held_reply)
    answers: dict[str, tuple[int, object]] = {}
    errors: list[BaseException] = []

    def send(name: str) -> None:
        try:
            r = reply(app.test_client(), ops, hid, "One moment please.", key="k-race")
            answers[name] = (r.status_code, r.get_json())
        except BaseException as exc:  # noqa: BLE001 (reported by the assertion below)
            errors.append(exc)
        finally:
            if name == "second":
                second_done.set()

    first = threading.Thread(target=send, args=("first",))
    first.start()
    assert first_sent.wait(20), "the first copy did not send"
    second = threading.Thread(target=send, args=("second",))
    second.start()
    first.join(timeout=30)
    second.join(timeout=30)
    assert not first.is_alive() and not second.is_alive()
    assert not errors, errors
    assert answers["first"] == (200, {"ok": True})
    assert answers["second"] == answers["first"]
    assert sent("One moment please.") == 1
    assert replies_recorded(hid) == 1

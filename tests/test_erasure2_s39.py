"""Session 39, after review rnew3 of 196e143 and 2e9dedf: what an erasure may change in
the record kept for good, and a message a drainer had taken when the erasure ran.

- Migration 0055 let any reason through the append-only triggers of transitions and
  audit_log if the new text merely carried "[name]" or "[place]": a whole new reason
  ("refund approved by [name] in cash"), a fixed text made another, ops' cancel reason
  replaced, a reason given to an audit entry that had none. Now only the old reason with
  parts of it replaced by markers (history_reason_scrubbed), and in the audit log only an
  ops cancel's (booking.cancel) that had one. The erasure's cut of a reason grown past the
  column's 200 characters no longer leaves half a marker ("[na"), which is no scrub.
- A message a drainer had read from the inbox (not in the inbox the erasure deletes) was
  handled after the erasure committed (its turn waited for the erasure's locks) and made
  the erased person again. The erasure now marks her numbers in Redis (a keyed hash, the
  time); the turn drops a message received at or before a committed erasure. The inboxes
  go after the commit: an erasure that fails keeps her queued messages.
"""

from __future__ import annotations

import os

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from core import cli
from core.adapters import roles
from core.adapters.api_models import AuditEntry
from core.adapters.db import transaction
from core.adapters.models import Conversation, InboundEvent, Person, TransitionLog
from core.adapters.redis_conn import redis_client
from core.services import inbound, retention
from core.services.seed import OPS_PERSON, seed_demo
from tests.conftest import post_twilio, run_jobs
from tests.test_api import API, sign_in
from tests.test_app_role_s32 import _owner_sql, owner_url  # noqa: F401
from tests.test_retention import CUSTOMER, RECIPIENT, book, erase, person_id, wa

pytestmark = pytest.mark.db

OWNER_ROLE = f"rc_own_e2_{os.getpid()}"


def _cancelled_by_ops(client) -> None:
    seed_demo()
    ops = sign_in(client, OPS_PERSON[1])
    customer = sign_in(client, CUSTOMER)
    ref = book(client, customer, "e2-1")
    assert client.post(f"{API}/bookings/{ref}/cancel", headers=ops,
                       query_string={"reason": "asked by phone"}).status_code == 200


def _update(statement: str) -> int:
    with transaction() as s:
        return int(s.execute(text(statement)).rowcount)


# --- the record kept for good -------------------------------------------------------------

@pytest.mark.parametrize(("old", "new", "scrub"), [
    ("cancelled by ops: asked by phone", "cancelled by ops: [name] by phone", True),
    ("Gita moved from near the HO, Gita", "[name] moved from [place], [name]", True),
    ("asked by phone", "[name]", True),
    ("abc Gita def ghi", "abc [name] de", True),  # cut after a marker (retention._fit)
    ("asked [name] twice", "asked [name] [place]", True),  # a second erasure's
    ("cancelled by ops: asked by phone", "refund approved by [name] in cash", False),
    ("fare quoted", "fare waived by [name]", False),
    ("asked by phone", "asked by phone", False),  # no change
    ("asked by Gita", "asked by", False),  # no marker: words taken with nothing said
    ("asked by phone", "phone [name]", False),  # words moved
    ("asked by phone", "asked by phone [name] x", False),  # words added
    ("abc Gita def ghi", "abc [name] def [na", False),  # half a marker
    (None, "[name]", False),
])
def test_a_reason_may_only_become_the_old_one_with_parts_replaced(clean_db, old, new, scrub):
    with transaction() as s:
        assert s.scalar(text("SELECT history_reason_scrubbed(:o, :n)"),
                        {"o": old, "n": new}) is scrub


@pytest.mark.parametrize("statement", [
    # rnew3's four: a whole new history reason; a fixed text made another; ops' cancel
    # reason replaced whole; a reason added to an entry of another action, which had none
    "UPDATE transitions SET reason = 'refund approved by [name] in cash' "
    "WHERE reason = 'cancelled by ops: asked by phone'",
    "UPDATE transitions SET reason = 'fare waived by [name]' WHERE reason = 'fare quoted'",
    "UPDATE audit_log SET details = jsonb_set(details, '{reason}', "
    "'\"fraud confirmed by [name]\"') WHERE action = 'booking.cancel'",
    "UPDATE audit_log SET details = details || '{\"reason\": \"approved by [name]\"}' "
    "WHERE NOT (details ? 'reason')",
    # another action's reason, scrubbed as an erasure would: not a booking's
    "UPDATE audit_log SET details = jsonb_set(details, '{reason}', '\"[name] by phone\"') "
    "WHERE action = 'payout.repay'",
])
def test_the_record_takes_a_scrub_of_the_reason_and_refuses_any_other(client, statement):
    _cancelled_by_ops(client)
    with transaction() as s:
        s.execute(text("INSERT INTO audit_log (actor, action, target, details) VALUES "
                       "('ops:1', 'payout.repay', 'leg:1', '{\"amount_paise\": 100}'), "
                       "('ops:1', 'payout.repay', 'leg:1', '{\"reason\": \"asked by phone\"}')"))
    # What an erasure writes goes through: parts of the old reason replaced by markers.
    assert _update("UPDATE transitions SET reason = 'cancelled by ops: [name] by phone' "
                   "WHERE reason = 'cancelled by ops: asked by phone'") == 1
    assert _update("UPDATE audit_log SET details = jsonb_set(details, '{reason}', "
                   "'\"asked by [place]\"') WHERE action = 'booking.cancel'") == 1
    with transaction() as s:
        kept = s.execute(text("SELECT id, reason FROM transitions UNION ALL "
                              "SELECT id, details::text FROM audit_log ORDER BY 1, 2")).all()
    # A reason scrubbed once is scrubbed again only as the same way: rewritten, refused.
    statement = statement.replace("'cancelled by ops: asked by phone'",
                                  "'cancelled by ops: [name] by phone'")
    with pytest.raises(DBAPIError, match="append-only"):
        with transaction() as s:
            assert s.execute(text(statement)).rowcount > 0, "no row: test set-up wrong"
    with transaction() as s:
        assert s.execute(text("SELECT id, reason FROM transitions UNION ALL "
                              "SELECT id, details::text FROM audit_log ORDER BY 1, 2")
                         ).all() == kept


def test_a_reason_grown_past_the_column_is_cut_before_a_marker(client):
    """A customer's longest reason (the history's 200 characters) naming the recipient
    twice grows by the markers: cut at 200 it ended in half a marker ("[n"), no part of
    the old reason. It is cut before that marker. Ops' cancel reason of another booking
    to her is scrubbed through the stricter check too."""
    seed_demo()
    ops = sign_in(client, OPS_PERSON[1])
    customer = sign_in(client, CUSTOMER)
    ref = book(client, customer, "e2-cut")  # to Gita
    r = client.post(f"{API}/bookings/{book(client, customer, 'e2-ops')}/cancel", headers=ops,
                    query_string={"reason": "Gita called from near the HO, Gita"})
    assert r.status_code == 200, r.get_json()
    said = "Gita " + "a" * 168 + " Gita"
    r = client.post(f"{API}/bookings/{ref}/cancel", headers=customer,
                    query_string={"reason": said})
    assert r.status_code == 200, r.get_json()
    old = "cancelled in the app: " + said
    assert len(old) == 200
    with transaction() as s:
        assert s.scalar(select(TransitionLog.id).where(TransitionLog.reason == old))
    with transaction() as s:
        retention.erase_recipient(s, RECIPIENT, actor="ops:1", reason="she asked")
    scrubbed = "cancelled in the app: [name] " + "a" * 168 + " "
    with transaction() as s:
        assert sorted(s.scalars(select(TransitionLog.reason).where(
            TransitionLog.reason.contains("[name]")))) == [
            "cancelled by ops: [name] called from [place], [name]", scrubbed]
        (said,) = s.scalars(select(AuditEntry.details["reason"].astext).where(
            AuditEntry.action == "booking.cancel"))
    assert said == "[name] called from [place], [name]"
    assert retention._fit(scrubbed + "[name]", 200) == scrubbed  # noqa: SLF001
    # One marker only, split by the cut: the text before it, shortened, and the marker.
    assert retention._fit("x" * 196 + "[place]", 200) == "x" * 193 + "[place]"  # noqa: SLF001


def test_a_recipient_called_name_leaves_the_markers_whole():
    assert retention.without_names("asked [name] twice, Name said", {"Name"}) == \
        "asked [name] twice, [name] said"
    assert retention.without_places("at [place] and the place", ["place"]) == \
        "at [place] and the [place]"


def test_the_history_functions_are_the_owners_alone(owner_url):  # noqa: F811
    """The functions 0055 made decide what the record lets through: like the ledger's, a
    role that owns one could replace it, and is refused as the service's role."""
    made = {"history_reason_scrubbed", "transitions_reason_scrub", "audit_log_reason_scrub"}
    assert made <= set(roles.LEDGER_FUNCTIONS)
    _owner_sql(owner_url, f"CREATE ROLE {OWNER_ROLE} LOGIN",
               f"ALTER FUNCTION history_reason_scrubbed(text, text) OWNER TO {OWNER_ROLE}")
    try:
        with pytest.raises(roles.RoleRefused, match=r"owns history_reason_scrubbed\(\)"):
            cli.grant_service_role(OWNER_ROLE)
    finally:
        _owner_sql(owner_url, "ALTER FUNCTION history_reason_scrubbed(text, text) "
                              "OWNER TO CURRENT_USER",
                   f"DROP OWNED BY {OWNER_ROLE}", f"DROP ROLE {OWNER_ROLE}")


# --- a message taken before the erasure ---------------------------------------------------

def _queued(client, body: str, sid: str) -> None:
    params = {"MessageSid": sid, "From": f"whatsapp:{CUSTOMER}",
              "To": "whatsapp:+14155238886", "Body": body, "WaId": CUSTOMER[1:],
              "ProfileName": "Meena"}
    assert post_twilio(client, "/webhooks/whatsapp", params).status_code == 200


def _queued_texts() -> list[str]:
    r = redis_client()
    return [v.decode() for k in r.scan_iter("inbox:*") if CUSTOMER[3:] in k.decode()
            and r.type(k) == b"list" for v in r.lrange(k, 0, -1)]


def test_a_message_a_drainer_took_before_the_erasure_is_dropped(client, monkeypatch):
    """The drainer has read the inbox's head when the erasure runs: the erasure deletes
    the inbox, the turn of the message taken waits for its locks and, after its commit,
    made her a person again. It is dropped: no person, no answer, no claim kept."""
    seed_demo()
    ops = sign_in(client, OPS_PERSON[1])
    wa(client, CUSTOMER, "hi")
    wa(client, CUSTOMER, "2")
    pid = person_id(CUSTOMER)
    _queued(client, "my house is the blue one behind the temple", "SMe2q000000000000000001")
    real, erased = inbound._claimed_turn, []  # noqa: SLF001

    def drainer_turn(msg, handler, **kw):
        if not erased:  # the drainer took the message (drain: LINDEX) before the erasure
            r = erase(client, ops, pid)
            assert r.status_code == 200 and r.get_json()["erased"], r.get_json()
            erased.append(r.get_json())
        return real(msg, handler, **kw)
    monkeypatch.setattr(inbound, "_claimed_turn", drainer_turn)
    run_jobs(("inbound",))
    assert erased
    assert erased[0]["counts"].get("queued_messages") == 1
    with transaction() as s:
        assert s.scalars(select(Person).where(Person.phone == CUSTOMER)).all() == []
        assert s.scalars(select(Conversation).where(
            Conversation.contact == CUSTOMER[1:])).all() == []
        assert s.scalar(select(InboundEvent).where(
            InboundEvent.external_id == "SMe2q000000000000000001")) is None
    assert _queued_texts() == []
    # The mark names no number, and lives as long as an inbox may.
    r = redis_client()
    marks = list(r.scan_iter(f"{inbound.ERASED_PREFIX}*"))
    assert marks and all(CUSTOMER[3:] not in m.decode() for m in marks)
    assert all(0 < r.ttl(m) <= inbound.INBOX_TTL_S for m in marks)
    # Her number writing after the erasure is somebody new, handled as usual.
    monkeypatch.undo()
    wa(client, CUSTOMER, "hi")
    with transaction() as s:
        fresh = s.scalar(select(Person).where(Person.phone == CUSTOMER))
        assert fresh is not None and fresh.id != pid


def test_an_erasure_that_fails_keeps_her_queued_messages(client):
    """The inboxes went before the commit: an erasure that then failed lost the messages
    she had sent. They go after the commit now, and the mark of an erasure that did not
    commit drops none of them."""
    seed_demo()
    wa(client, CUSTOMER, "hi")
    wa(client, CUSTOMER, "2")
    pid = person_id(CUSTOMER)
    _queued(client, "4", "SMe2q000000000000000002")
    with pytest.raises(RuntimeError), transaction() as s:
        retention.erase_person(s, pid)
        raise RuntimeError("the commit failed")
    assert _queued_texts() and any("SMe2q000000000000000002" in t for t in _queued_texts())
    run_jobs(("inbound",))
    with transaction() as s:
        assert s.get(Person, pid).phone == CUSTOMER
        handled = s.scalar(select(InboundEvent).where(
            InboundEvent.external_id == "SMe2q000000000000000002"))
        assert handled is not None  # its turn ran and committed
    assert _queued_texts() == []


def test_with_redis_away_the_mark_is_not_written_and_nothing_is_erased(client, monkeypatch):
    seed_demo()
    ops = sign_in(client, OPS_PERSON[1])
    wa(client, CUSTOMER, "hi")
    pid = person_id(CUSTOMER)
    _queued(client, "behind the temple", "SMe2q000000000000000003")

    def away(*_args):
        raise RedisConnectionError("Redis blinked")
    monkeypatch.setattr(inbound, "mark_erased", away)
    r = erase(client, ops, pid)
    assert (r.status_code, r.get_json()["error"]["code"]) == (503, "queue_unavailable")
    with transaction() as s:
        assert s.get(Person, pid).phone == CUSTOMER  # nothing committed
    assert any("behind the temple" in t for t in _queued_texts())
    monkeypatch.undo()
    assert erase(client, ops, pid).get_json()["erased"] is True
    assert _queued_texts() == []


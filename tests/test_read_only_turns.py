"""A database that takes no writes (a failover's demoted primary: SQLSTATE 25006, which
SQLAlchemy raises as InternalError, not OperationalError) is the database away for the
turns too: a WhatsApp message met by it was set aside in the dead-letter list (never
answered), and a partner's SMS command was answered "try later" instead of Twilio
being asked to send it again. Session 26's runtime review made it a 503 for requests."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import InternalError

from core.adapters.redis_conn import redis_client
from core.services import inbound
from tests.conftest import post_twilio
from tests.test_inbound_drain import handled_sids, wa

pytestmark = pytest.mark.db


class _ReadOnly(Exception):
    sqlstate = "25006"

    def __str__(self) -> str:
        return "cannot execute INSERT in a read-only transaction"


def _read_only_error() -> InternalError:
    return InternalError("INSERT INTO ...", {}, _ReadOnly())


def test_a_whatsapp_message_met_by_a_read_only_database_is_kept_for_the_retry(client):
    from bots import whatsapp

    down = {"SMro0"}

    def read_only(session, msg):
        if msg.sid in down:
            raise _read_only_error()
        return whatsapp.handle(session, msg)

    post_twilio(client, "/webhooks/whatsapp", wa("+919812340410", "hi", "SMro0"))
    handlers = {"whatsapp": read_only}
    with pytest.raises(InternalError):  # the job fails: RQ retries it
        inbound.drain_ready(handlers.__getitem__, threads=1)
    r = redis_client()
    assert r.llen(inbound.DEAD_LETTER) == 0
    assert r.llen("inbox:whatsapp:919812340410") == 1  # the message is still there
    down.clear()  # the new primary takes writes: RQ's retry answers it
    inbound.drain_ready(handlers.__getitem__, threads=1)
    assert handled_sids() == ["SMro0"]


def test_a_partner_command_met_by_a_read_only_database_is_not_answered_try_later(
        client, monkeypatch):
    from core.services import partner_sms
    from tests.test_dispatch import LAXMIPUR, make_partner, sms

    _, phone = make_partner("Ramesh", LAXMIPUR, on_duty=False)

    def read_only(*args, **kwargs):
        raise _read_only_error()

    monkeypatch.setattr(partner_sms, "_run", read_only)
    with pytest.raises(AssertionError, match="503"):  # Twilio is asked to send it again
        sms(client, phone, "ON")

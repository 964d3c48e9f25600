"""Outbox follow-ups 22 (review 22: code masking, opt-outs kept for numbers nobody holds).

1. An erased person's STOP was kept under two hashes, her phone's (+91...) and her
   WhatsApp id's (91...); an SMS START cleared one, and the person made when she wrote on
   WhatsApp took the stale other. outbox.number_hash now hashes the number in one form
   (E.164, a WhatsApp id of digits being its number): one number, one key.
2. A code was masked only where its text matched today's catalog, so a release that
   reworded a code text left the codes of messages sent before it. The outbox records
   where the code is when it writes the row (OutboxMessage.code_spans, migration 0033; a
   copy takes its original's record) and masks by it; rows without a record are matched
   against the catalog, as before.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from core import clock, i18n
from core.adapters.db import transaction
from core.adapters.dialog_models import WhatsappTemplateSend
from core.adapters.models import NumberOptOut, OutboxMessage, Person
from core.adapters.queue import QUEUES, SANDBOX_QUEUE
from core.adapters.redis_conn import redis_client
from core.services import notify, outbox, retention
from sandbox.jobs import UNDELIVERED_TO_KEY
from tests.conftest import run_jobs, send_whatsapp
from tests.test_code_delivery import pickup_rows, taken
from tests.test_dispatch import CUSTOMER as MEENA
from tests.test_dispatch import (
    frozen,  # noqa: F401 (fixture)
    paid_booking,
)
from tests.test_dispatch import sms as sms_in
from tests.test_notice_review import cannot_deliver, codes_in, customer_speaks
from tests.test_outbox_review21 import _by_key, _chats_on_whatsapp

pytestmark = pytest.mark.db

NUMBER = "+919812300093"


def whatsapp(client, body: str, sid: str) -> str:
    return send_whatsapp(client, {"MessageSid": sid, "From": f"whatsapp:{NUMBER}",
                                  "WaId": NUMBER[1:], "To": "whatsapp:+14155238886",
                                  "Body": body})


def queued(channel: str, **kw: object) -> int | None:
    with transaction() as s:
        return outbox.queue_message(s, channel=channel, to=NUMBER, body="News from us", **kw)


def test_an_sms_start_after_an_erasure_is_not_undone_when_the_number_writes_on_whatsapp(
        client, live):
    """Priya chatted on WhatsApp and stopped our SMS; she was erased, and her SMS STOP kept
    (a hash of her number, and one of her WhatsApp id). She texts START: our SMS may go to
    her again. She then writes on WhatsApp: the person made for her must not have her
    SMS stopped again by the stale copy kept under her WhatsApp id."""
    whatsapp(client, "hi", "SMr22b1")
    with transaction() as s:
        pid = s.scalar(select(Person.id).where(Person.phone == NUMBER))
    sms_in(client, NUMBER, "STOP")
    with transaction() as s:
        assert s.get(Person, pid).sms_opted_out
        retention.erase_person(s, pid)
    assert queued("sms") is None
    sms_in(client, NUMBER, "START")
    assert queued("sms") is not None  # her START is honoured ...
    whatsapp(client, "hi", "SMr22b2")
    with transaction() as s:
        fresh = s.scalar(select(Person).where(Person.phone == NUMBER))
        assert fresh.id != pid
        assert not fresh.sms_opted_out, "her SMS START was undone by the WhatsApp id's copy"
    assert queued("sms") is not None  # ... and stays honoured


# Past the minutes a delivered code is kept.
GRACE = timedelta(minutes=10, seconds=1)


def test_a_code_sent_before_its_text_was_reworded_is_still_masked(
        client, live, frozen, tmp_path: Path):  # noqa: F811
    """Meena's pickup code was delivered; minutes later a release rewords the pickup code's
    text (catalog commits do so often: grammar, one word per thing). Her stored message
    must still lose its code when the sweep comes, and by the daily run at the latest;
    today it matches no catalog text any more and keeps the code until the texts are
    redacted months later."""
    booking_id = paid_booking()
    customer_speaks("en")
    taken(client, booking_id)
    (row,) = pickup_rows(booking_id)
    assert row.status == "delivered" and codes_in([row.body])
    for catalog in Path(i18n.catalog_dir()).glob("*.toml"):
        shutil.copy(catalog, tmp_path / catalog.name)
    en = tmp_path / "en.toml"
    old = "give code {otp} to the rider at pickup."
    assert old in en.read_text()
    en.write_text(en.read_text().replace(old, "give the code {otp} to the rider at pickup."))
    i18n.set_catalog_dir(tmp_path)  # the release
    try:
        clock.freeze(clock.now() + GRACE)
        outbox.sweep()
        clock.freeze(clock.now() + outbox.CODE_KEPT_UNSETTLED + timedelta(minutes=1))
        retention.run()
        (row,) = pickup_rows(booking_id)
        assert codes_in([row.body]) == [], "the code stays in the stored text"
    finally:
        i18n.set_catalog_dir(None)


def test_a_number_and_its_whatsapp_id_keep_one_opt_out(client, live):
    """Her phone and her WhatsApp id are one number: her STOPs are kept once, under one
    key, and the outbox finds them by either address."""
    whatsapp(client, "hi", "SMr22b3")
    whatsapp(client, "STOP", "SMr22b4")
    with transaction() as s:
        pid = s.scalar(select(Person.id).where(Person.phone == NUMBER))
        person = s.get(Person, pid)
        assert person.wa_id == NUMBER[1:] and person.opted_out
        person.sms_opted_out = True
        retention.erase_person(s, pid)
    with transaction() as s:
        kept = s.execute(select(NumberOptOut.whatsapp, NumberOptOut.sms)).all()
    assert kept == [(True, True)]
    assert outbox.number_hash(NUMBER) == outbox.number_hash(NUMBER[1:]) \
        == outbox.number_hash(f"whatsapp:{NUMBER}")
    assert queued("whatsapp") is None and queued("sms") is None


# The pickup code's English text, and a release's rewording of it.
PICKUP_TEXT = "give code {otp} to the rider at pickup."
REWORDED = "give the code {otp} to the rider at pickup."


@contextmanager
def released(tmp_path: Path) -> Iterator[None]:
    """The catalogs of a release that reworded the English pickup code text."""
    for catalog in Path(i18n.catalog_dir()).glob("*.toml"):
        shutil.copy(catalog, tmp_path / catalog.name)
    en = tmp_path / "en.toml"
    assert PICKUP_TEXT in en.read_text()
    en.write_text(en.read_text().replace(PICKUP_TEXT, REWORDED))
    i18n.set_catalog_dir(tmp_path)
    try:
        yield
    finally:
        i18n.set_catalog_dir(None)


def texts_of(*rows: OutboxMessage) -> list[str]:
    """The rows' stored texts now, with their template sends' variables."""
    with transaction() as s:
        found = [s.get(OutboxMessage, r.id) for r in rows]
        templates = [s.get(WhatsappTemplateSend, r.id) for r in rows]
        return [r.body for r in found if r is not None] + [
            str(v) for t in templates if t is not None for v in t.content_variables.values()]


def test_the_sms_copy_of_a_code_refused_after_a_release_is_masked(
        client, live, frozen, tmp_path: Path):  # noqa: F811
    """Meena's pickup code went on WhatsApp before a release reworded its text; WhatsApp
    refuses it after the release (63016: past the window), and the SMS copy carries the
    code. The copy's own record says where: it is masked once done, as the original is."""
    booking_id = paid_booking()
    customer_speaks("en")
    _chats_on_whatsapp(MEENA)
    cannot_deliver(f"whatsapp:{MEENA}", "undelivered", "63016")
    taken(client, booking_id, queues=QUEUES)  # Twilio's reports come after the release
    (refused,) = pickup_rows(booking_id)
    assert refused.channel == "whatsapp" and refused.code_spans
    with released(tmp_path):
        run_jobs()
        copy = _by_key(f"sms-for-{refused.id}")
        assert copy is not None and copy.status == "delivered" and codes_in([copy.body])
        assert copy.code_spans == refused.code_spans
        clock.freeze(clock.now() + GRACE)
        outbox.sweep()
        assert codes_in(texts_of(refused, copy)) == []


def test_the_template_copy_of_a_code_refused_after_a_release_is_masked(
        client, live, frozen, tmp_path: Path, monkeypatch):  # noqa: F811
    """As above, with the approved template configured: the copy goes as the template,
    the code in its variable; both the copy's text and its variable lose the code."""
    monkeypatch.setenv("WHATSAPP_TEMPLATE_EN", "HX0123456789abcdef0123456789abcdef")
    notify.reset_templates()
    try:
        booking_id = paid_booking()
        customer_speaks("en")
        _chats_on_whatsapp(MEENA)
        cannot_deliver(f"whatsapp:{MEENA}", "undelivered", "63016")
        taken(client, booking_id, queues=QUEUES)
        (refused,) = pickup_rows(booking_id)
        with released(tmp_path):
            run_jobs((SANDBOX_QUEUE,))  # its refusal is reported; the template goes
            redis_client().hdel(UNDELIVERED_TO_KEY, f"whatsapp:{MEENA}")
            run_jobs()
            copy = _by_key(f"tpl-for-{refused.id}")
            assert copy is not None and copy.code_spans == refused.code_spans
            assert codes_in(texts_of(copy)) and copy.status == "delivered"
            clock.freeze(clock.now() + GRACE)
            outbox.sweep()
            assert codes_in(texts_of(refused, copy)) == []
    finally:
        monkeypatch.delenv("WHATSAPP_TEMPLATE_EN")
        notify.reset_templates()


def test_a_code_written_before_records_were_kept_is_masked_by_the_catalog(
        client, live, frozen):  # noqa: F811
    """A row written by the previous release has no record of its code (NULL): the
    catalog finds the code, as before, and the mask is recorded."""
    booking_id = paid_booking()
    customer_speaks("en")
    taken(client, booking_id)
    (row,) = pickup_rows(booking_id)
    assert row.status == "delivered" and row.code_spans
    with transaction() as s:
        s.get(OutboxMessage, row.id).code_spans = None
    clock.freeze(clock.now() + GRACE)
    outbox.sweep()
    (row,) = pickup_rows(booking_id)
    assert codes_in([row.body]) == [] and outbox.CODE_MASK in row.body
    assert row.code_spans and outbox.code_masked(row.body, row.code_spans)

"""IVR codes 22.

1. A call answer that read a pickup code out was found by the daily retention run only by
   matching today's catalog texts (ivr.says_a_code): a release that reworded them left the
   code of older answers for RETENTION_MESSAGE_DAYS. The answer is now marked when it is
   stored (its inbound_events row's channel is ivr.CODE_CHANNEL), and the run blanks the
   marked ones whatever the texts say; unmarked ones are matched against the catalog.
2. A direct booking's recipient who already has her drop code, texting us before pickup,
   read "give the rider the code we send you" (sms.recipient_coming): a code still to come.
   The catalogs have sms.recipient_coming_code_sent ("... give the rider the code we sent
   you"), which partner_sms._tell_stranger picks.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from core import i18n
from core.adapters.db import transaction
from core.adapters.models import InboundEvent
from core.services import ivr, retention
from tests.test_dispatch import (
    LAXMIPUR,
    RECIPIENT,
    bodies_to,
    booking_status,
    frozen,  # noqa: F401 (fixture)
    make_partner,
    paid_booking,
    sms,
    start,
)
from tests.test_ivr import phone, prompts  # noqa: F401 (fixtures)
from tests.test_ivr_more import assigned, heard_code  # noqa: F401 (fixture)
from tests.test_notice_review import ref_of
from tests.test_privacy_followups22 import (
    answered_at,
    hear_a_code,
    lose_the_blanking_jobs,
    stored_answers,
)

pytestmark = pytest.mark.db

# The English code texts, and a release's rewording of them.
REWORDS = {"your new pickup code is {digits}": "your new code for the pickup is {digits}",
           "your pickup code is {digits}": "the code for the pickup is {digits}"}


@contextmanager
def reworded(tmp_path: Path) -> Iterator[None]:
    """The catalogs of a release that reworded the English texts that read a code out."""
    for catalog in Path(i18n.catalog_dir()).glob("*.toml"):
        shutil.copy(catalog, tmp_path / catalog.name)
    en = tmp_path / "en.toml"
    text = en.read_text()
    for old, new in REWORDS.items():
        assert old in text
        text = text.replace(old, new)
    en.write_text(text)
    i18n.set_catalog_dir(tmp_path)
    try:
        yield
    finally:
        i18n.set_catalog_dir(None)


# --- 1. a code answer stored before its text was reworded ---------------------------------


def test_a_code_read_before_its_text_was_reworded_goes_with_the_daily_run(
        client, assigned, tmp_path: Path):  # noqa: F811
    """Meena heard a new pickup code on a call; the call's end and the job that blanks the
    answer were both lost. A release then rewords the code text: the daily run must still
    blank her stored answer."""
    booking_id, _, caller = assigned
    heard = hear_a_code(caller)
    said = " ".join(heard_code(heard, ref_of(booking_id)))
    lose_the_blanking_jobs()
    with reworded(tmp_path):
        assert not ivr.says_a_code(heard.xml), "the release changed nothing"
        done = retention.run(answered_at() + timedelta(days=1))
    assert not [a for a in stored_answers() if said in a], "the code kept for 90 days"
    assert done["code_answers"] == 1
    assert stored_answers(), "only the answer with the code went"


def test_only_the_answer_that_read_a_code_is_marked(client, assigned):  # noqa: F811
    _, _, caller = assigned
    hear_a_code(caller)
    with transaction() as s:
        rows = s.execute(select(InboundEvent.channel, InboundEvent.response_body).where(
            InboundEvent.provider == ivr.PROVIDER).order_by(InboundEvent.id)).all()
    marked = [body for channel, body in rows if channel == ivr.CODE_CHANNEL]
    assert len(marked) == 1 and ivr.says_a_code(marked[0] or "")
    assert all(channel == ivr.CHANNEL for channel, _ in rows[:-1])


def test_an_unmarked_code_answer_is_still_found_by_the_catalog(client, assigned):  # noqa: F811
    """An answer stored before answers were marked: matched against the catalog, as before."""
    booking_id, _, caller = assigned
    heard = hear_a_code(caller)
    said = " ".join(heard_code(heard, ref_of(booking_id)))
    lose_the_blanking_jobs()
    with transaction() as s:
        for event in s.scalars(select(InboundEvent).where(
                InboundEvent.channel == ivr.CODE_CHANNEL)):
            event.channel = ivr.CHANNEL
    assert retention.run(answered_at() + timedelta(days=1))["code_answers"] == 1
    assert not [a for a in stored_answers() if said in a]


# --- 2. a direct booking's recipient who has her code, before pickup -----------------------


def test_a_recipient_holding_her_code_before_pickup_is_not_promised_one(
        client, live, frozen):  # noqa: F811
    """Ramesh took Sita's direct parcel: her drop code went to her. Before he picks it up
    she texts "kab aayega?": she must not read "give the rider the code we send you"."""
    _, rider = make_partner("Ramesh", LAXMIPUR)
    booking_id = paid_booking()
    start(booking_id)
    assert sms(client, rider, "1")
    assert booking_status(booking_id) == "assigned"
    ref = ref_of(booking_id)
    assert any(ref in body for body in bodies_to(RECIPIENT)), "her drop code went"
    (reply,) = sms(client, RECIPIENT, "parcel kab aayega?")
    assert reply != i18n.t("sms.recipient_coming", "hi", ref=ref), reply
    assert reply == i18n.t("sms.recipient_coming_code_sent", "hi", ref=ref), reply


def _sentences(text: str) -> list[str]:
    return [x.strip() for x in text.replace("।", ".").split(".") if x.strip()]


@pytest.mark.parametrize("lang", i18n.LANGUAGES)
def test_the_coming_answer_with_a_code_does_not_promise_one(lang):
    """The same news as sms.recipient_coming, without its last sentence ("give the rider
    the code we will send you")."""
    coming = _sentences(i18n.t("sms.recipient_coming", lang, ref="48217730"))
    sent = _sentences(i18n.t("sms.recipient_coming_code_sent", lang, ref="48217730"))
    assert sent[:-1] == coming[:-1], (lang, sent)
    assert sent[-1] != coming[-1] and coming[-1] not in sent[-1], (lang, sent)

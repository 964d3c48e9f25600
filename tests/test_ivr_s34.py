"""IVR leftovers (session 34).

1. A payment link asked for again ("where is my booking", or the caller's own number keyed
   for the link) went once per 10-minute slot of the clock: asked at 10:09:59 and again at
   10:10:01, two SMS. Now at most one per payments.LINK_AGAIN_EVERY to the phone, counted
   from when the last one was queued (as the link to another number since session 33),
   and the caller told in how many minutes it can go again. A send that failed (and went
   no other way) holds nothing back: asked again, a new one goes.
2. Twilio's Fallback for a slow turn that was still running (its answer not stored yet)
   was the apology ("try again"), though the turn then finished and booked. Now the
   Fallback waits a few seconds on the lock the running turn holds, and replays its
   answer; still running after that wait, the apology, as before.

Real PostgreSQL, Redis and RQ; the clock frozen.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

import pytest
from sqlalchemy import create_engine, select, text, update
from sqlalchemy.engine import make_url

from core import clock
from core.adapters import db
from core.adapters.db import transaction
from core.adapters.models import Booking, OutboxMessage
from core.dialog import spoken
from core.services import ivr, payments
from tests.conftest import post_twilio
from tests.test_ivr import START, Caller, Heard, book_in_hindi, phone, prompts, t  # noqa: F401
from tests.test_ivr_more import jobs, pay_links_to, track_first
from tests.test_ivr_s33 import _fallback, _references, _to_the_confirm

pytestmark = pytest.mark.db


def at(minutes: int, seconds: int = 0) -> None:
    """The clock at START (a 10-minute slot of the clock begins there) plus this much."""
    clock.freeze(START + timedelta(minutes=minutes, seconds=seconds))


def booked_and_linked(caller: Caller) -> None:
    """A Hindi booking whose payment link was made and sent, the call over."""
    book_in_hindi(caller)
    caller.hang_up()
    jobs()


def again_rows() -> list[OutboxMessage]:
    return [row for row in pay_links_to(TRACKER) if "-again-" in (row.dedupe_key or "")]


TRACKER = "+919812300100"  # Caller's default number


# --- 1. the link asked for again: once per LINK_AGAIN_EVERY from when it went ------------

def test_the_link_asked_again_across_a_slot_edge_goes_once(live, phone: Caller  # noqa: F811
                                                           ) -> None:
    """The probe: 9 min 59 s and 10 min 1 s after START (a slot of the clock ends between):
    one SMS, and the caller is told when it can go again, counted from when it went."""
    assert phone.phone == TRACKER
    booked_and_linked(phone)
    at(9, 59)
    heard = track_first(phone)
    assert t("ivr.track.link_sent") in heard.text, heard.text
    assert len(again_rows()) == 1
    phone.hang_up()

    at(10, 1)  # 2 s later, in the next slot of the clock
    heard = track_first(phone)
    assert t("ivr.track.link_sent") not in heard.text, heard.text
    assert t("ivr.track.link_recent", minutes=10) in heard.text, heard.text  # 9 min 58 s
    assert len(again_rows()) == 1
    phone.hang_up()

    at(19, 29)  # half a minute left: "after 2 minutes", never 1 nor 0
    heard = track_first(phone)
    assert t("ivr.track.link_recent", minutes=2) in heard.text, heard.text
    assert len(again_rows()) == 1
    phone.hang_up()

    at(19, 59)  # 10 minutes after it went: it goes again
    heard = track_first(phone)
    assert t("ivr.track.link_sent") in heard.text, heard.text
    assert len(again_rows()) == 2


def test_a_link_again_that_failed_does_not_hold_the_next_back(live, phone: Caller  # noqa: F811
                                                              ) -> None:
    booked_and_linked(phone)
    at(1)
    assert t("ivr.track.link_sent") in track_first(phone).text
    phone.hang_up()
    (sent,) = again_rows()
    with transaction() as s:  # Twilio's status callback: it never reached the phone
        s.execute(update(OutboxMessage).where(OutboxMessage.id == sent.id)
                  .values(status="undelivered", error_code="30003"))
    at(2)
    heard = track_first(phone)
    assert t("ivr.track.link_sent") in heard.text, heard.text  # true: a new one went
    assert len(again_rows()) == 2


def test_link_again_at_counts_per_phone_from_the_last_one_queued(live, phone: Caller  # noqa: F811
                                                                 ) -> None:
    booked_and_linked(phone)
    other = "+919812300222"
    at(3)
    with transaction() as s:
        booking = s.scalars(select(Booking)).one()
        assert payments.link_again_at(s, booking, phone.phone) is None
        assert payments.send_link_again(s, booking, phone.phone)
    with transaction() as s:
        booking = s.scalars(select(Booking)).one()
        assert payments.link_again_at(s, booking, phone.phone) == \
            START + timedelta(minutes=13)
        assert payments.link_again_at(s, booking, other) is None  # another phone's own
        assert payments.send_link_again(s, booking, phone.phone)  # nothing goes: True
        row = s.scalars(select(OutboxMessage).where(
            OutboxMessage.dedupe_key.like(f"paylink-{booking.id}-again-%"))).one()
        assert phone.phone[-10:] not in (row.dedupe_key or "")  # the number is hashed
        # Failed, but a copy went by SMS instead (outbox._by_sms_instead): it counts.
        row.status = "failed"
        s.add(OutboxMessage(channel="sms", to_addr=phone.phone, from_addr="+15005550006",
                            body=row.body, dedupe_key=f"sms-for-{row.id}",
                            booking_id=booking.id, status="sent", attempts=1))
    with transaction() as s:
        booking = s.scalars(select(Booking)).one()
        assert payments.link_again_at(s, booking, phone.phone) == \
            START + timedelta(minutes=13)


def test_a_key_written_before_counts_from_its_slot() -> None:
    every = payments.LINK_AGAIN_EVERY
    slot = int(START.timestamp() // every.total_seconds())
    assert payments._link_again_sent_at(f"paylink-7-again-{slot}", "0123456789abcdef") == START
    at_ = START + timedelta(minutes=3, seconds=7)
    key = f"paylink-7-again-0123456789abcdef-s{int(at_.timestamp())}"
    assert payments._link_again_sent_at(key, "0123456789abcdef") == at_
    assert payments._link_again_sent_at(key, "fedcba9876543210") is None


# --- 2. the Fallback while the turn it replaces is still running -------------------------

def test_a_fallback_waits_on_the_running_turn_and_apologises_if_it_does_not_end(
        phone: Caller, monkeypatch, caplog) -> None:  # noqa: F811
    """Two connections in one thread: the turn (booking) holds its conversation row in one while the
    Fallback, in the other, waits for it (lock_timeout) and gives up: the apology. Once
    the turn is done, the Fallback replays its answer."""
    confirm_url = _to_the_confirm(phone)
    monkeypatch.setattr(ivr, "FALLBACK_WAITS_FOR_TURN", timedelta(milliseconds=200))
    real = ivr.VoicePorts.confirm
    during: list[Heard] = []

    def confirm_then_fallback(self, slots):
        done = real(self, slots)  # booked; the answer is not stored yet
        during.append(_fallback(phone, confirm_url))
        return done

    monkeypatch.setattr(ivr.VoicePorts, "confirm", confirm_then_fallback)
    with caplog.at_level(logging.WARNING, logger="core.services.ivr"):
        done = phone.press("1")
    (heard,) = during
    assert t("common.error_try_later") in heard.text and heard.hangup, heard.xml
    assert any("still running" in r.getMessage() for r in caplog.records)  # it waited
    (ref,) = _references()
    assert t("ivr.confirm.done", digits=spoken.spell_digits(ref)) in done.text
    assert _fallback(phone, confirm_url).xml == done.xml  # done now: replayed


def test_a_fallback_for_a_turn_still_running_replays_its_answer_once_it_ends(
        phone: Caller, app, monkeypatch) -> None:  # noqa: F811
    """Real threads: the turn books, then holds on until the database shows the Fallback
    waiting on its lock; it ends, and the Fallback answers what it answered (the booking's
    number), not "try again"."""
    confirm_url = _to_the_confirm(phone)
    url = make_url(db.engine().url.render_as_string(hide_password=False))
    watcher = create_engine(url, isolation_level="AUTOCOMMIT")
    real = ivr.VoicePorts.confirm
    answers: list[str] = []
    waiters: list[int] = []
    form = phone.form(ErrorCode="11205", ErrorUrl=confirm_url)

    def fallback() -> None:
        r = post_twilio(app.test_client(), "/webhooks/voice/fallback", form)
        answers.append(r.get_data(as_text=True))

    thread = threading.Thread(target=fallback)

    def confirm_then_wait_for_the_fallback(self, slots):
        done = real(self, slots)  # booked; the answer is not stored yet
        thread.start()  # Twilio gave up on this turn and calls the Fallback URL
        with watcher.connect() as conn:  # bounded: a Fallback that never waits fails below
            conn.execute(text(
                "DO $$ DECLARE deadline timestamptz := clock_timestamp() + "
                "interval '10 s'; BEGIN WHILE NOT EXISTS (SELECT 1 FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock') "
                "AND clock_timestamp() < deadline LOOP PERFORM pg_sleep(0.01); "
                "PERFORM pg_stat_clear_snapshot(); END LOOP; END $$"))
            waiters.append(conn.execute(text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock'")).scalar_one())
        return done

    monkeypatch.setattr(ivr.VoicePorts, "confirm", confirm_then_wait_for_the_fallback)
    done = phone.press("1")
    thread.join(20)
    watcher.dispose()
    assert waiters == [1]  # the Fallback really waited on the running turn
    (answer,) = answers
    heard = Heard.parse(answer)
    (ref,) = _references()
    assert t("ivr.confirm.done", digits=spoken.spell_digits(ref)) in heard.text, heard.text
    assert heard.xml == done.xml and heard.gather is not None  # the call goes on
    assert t("common.error_try_later") not in heard.text

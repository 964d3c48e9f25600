"""A send whose outcome was lost: the sweep asks Twilio's Messages list before sending again.

Through the real twilio client and the sandbox emulator over HTTP. Twilio's answer to the
create is lost (a read timeout after Twilio took the message), and so are its status
callbacks (our web was down; Twilio does not retry them): only the list can tell.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest
import redis as redis_lib
import requests
from rq.registry import FailedJobRegistry
from sqlalchemy import func, select, update

from core import clock
from core.adapters import twilio_gateway
from core.adapters.db import transaction
from core.adapters.dialog_models import WhatsappTemplateSend
from core.adapters.models import MessageStatusEvent, OutboxMessage, SandboxMessage
from core.adapters.queue import queue
from core.adapters.redis_conn import redis_client
from core.config import get_settings
from core.services import outbox
from sandbox import jobs as sandbox_jobs
from sandbox import twilio as sandbox_twilio
from sandbox.twilio import FAIL_LIST_KEY, FAIL_LIST_TO_KEY
from tests.conftest import run_jobs

TO = "+919876500011"
WA = f"whatsapp:{TO}"
# Now, not a fixed day: rows are dated by the database's clock, and the sweep resends a
# row given back only once it is older than a minute by the test's clock.
T0 = datetime.now(UTC).replace(microsecond=0)
STALE = outbox.STALE_SENDING + timedelta(minutes=1)


class Line:
    """Our requests to Twilio and its answers, with what the test makes go wrong."""

    def __init__(self) -> None:
        self.real = twilio_gateway.send_message
        self.request_lost = False  # Twilio never got it, but we timed out all the same
        self.answer_lost = False  # Twilio took it; its answer never came back
        self.twilio_behind = timedelta(0)  # Twilio's clock behind ours
        self.meanwhile = None  # run once after Twilio took a message, before its answer

    def send(self, **kw):  # noqa: ANN003 (send_message's keywords)
        if self.request_lost:
            raise requests.exceptions.ReadTimeout("read timed out")
        ours = clock.now()
        clock.freeze(ours - self.twilio_behind)  # the emulator dates it by its clock
        try:
            result = self.real(**kw)
        finally:
            clock.freeze(ours)
        if self.meanwhile is not None:
            meanwhile, self.meanwhile = self.meanwhile, None
            meanwhile()
        if self.answer_lost:
            raise requests.exceptions.ReadTimeout("read timed out")
        return result


@pytest.fixture
def line(live, monkeypatch) -> Line:
    """The line to Twilio, and our web unreachable for Twilio's status callbacks (the
    emulator still moves its messages on to "delivered")."""
    wire = Line()
    monkeypatch.setattr(twilio_gateway, "send_message", wire.send)

    def web_down(self, url, params, headers):  # noqa: ANN001
        raise ConnectionRefusedError("our web is down")

    monkeypatch.setattr(sandbox_jobs._Callbacks, "post", web_down)
    return wire


def queue_one(body: str, *, to: str = TO, template: dict[str, str] | None = None) -> int:
    with transaction() as s:
        oid = outbox.queue_message(s, channel="whatsapp", to=to, body=body)
        assert oid is not None
        if template is not None:
            s.add(WhatsappTemplateSend(outbox_id=oid, content_sid="HXabc123",
                                       content_variables=template))
    return oid


def row(oid: int) -> OutboxMessage:
    with transaction() as s:
        r = s.get(OutboxMessage, oid)
        assert r is not None
        return r


def at_twilio(*, body: str | None = None, to: str = WA) -> list[SandboxMessage]:
    """What the emulator accepted for ``to`` (with ``body``), oldest first."""
    with transaction() as s:
        stmt = select(SandboxMessage).where(SandboxMessage.to_addr == to)
        if body is not None:
            stmt = stmt.where(SandboxMessage.body == body)
        return list(s.scalars(stmt.order_by(SandboxMessage.id)))


def sweep_at(when: datetime) -> None:
    """The periodic sweep at ``when``, and every job it starts."""
    clock.freeze(when)
    outbox.sweep()
    run_jobs()


def lost_outcome(line: Line, body: str, **kw) -> int:  # noqa: ANN003
    """A row sent at the current time whose answer is lost: it stays "sending"."""
    line.answer_lost = True
    oid = queue_one(body, **kw)
    run_jobs()  # the delivery job, then the emulator's (failing) status callbacks
    line.answer_lost = False
    r = row(oid)
    assert (r.status, r.provider_sid) == ("sending", None)
    return oid


@pytest.mark.parametrize("claimed_at, behind", [
    (T0, timedelta(0)),
    # Just after midnight UTC, Twilio's clock 30 s behind ours: it dates the message the
    # day before, which a look-up of the claim's day alone would not find.
    ((T0 + timedelta(days=1)).replace(hour=0, minute=0, second=20), timedelta(seconds=30)),
])
def test_a_message_twilio_took_is_adopted_not_sent_again(line, claimed_at, behind):
    clock.freeze(claimed_at)
    line.twilio_behind = behind
    oid = lost_outcome(line, "Your pickup code is 4821")
    (taken,) = at_twilio()
    assert taken.status == "delivered"  # delivered; we were never told
    sweep_at(claimed_at + outbox.STALE_SENDING - timedelta(minutes=1))  # not stale yet
    assert row(oid).status == "sending"
    sweep_at(claimed_at + STALE)
    r = row(oid)
    assert (r.provider_sid, r.status) == (taken.sid, "delivered")
    assert [m.sid for m in at_twilio()] == [taken.sid], "sent twice"
    with transaction() as s:  # as the lost callback would have been recorded
        assert s.scalar(select(MessageStatusEvent.status)
                        .where(MessageStatusEvent.outbox_id == oid)) == "delivered"
    sweep_at(claimed_at + 2 * STALE)
    assert len(at_twilio()) == 1


def test_a_message_twilio_never_got_is_sent_once_and_only_it(line):
    # The same text went to them an hour before (not from an outbox row): not this one.
    clock.freeze(T0 - timedelta(hours=1))
    twilio_gateway.client().messages.create(
        to=WA, from_=get_settings().twilio_whatsapp_from, body="Your pickup code is 4821")
    clock.freeze(T0)
    line.request_lost = True
    never = queue_one("Your pickup code is 4821")
    run_jobs()
    line.request_lost = False
    took = lost_outcome(line, "Booking 12345678 is confirmed")
    assert row(never).status == "sending"
    sweep_at(T0 + STALE)
    # Twilio had not got the code: sent now, once. It had got the confirmation: adopted.
    codes = at_twilio(body="Your pickup code is 4821")
    assert len(codes) == 2 and row(never).provider_sid == codes[1].sid
    assert row(never).status in ("queued", "sent", "delivered")
    (confirmation,) = at_twilio(body="Booking 12345678 is confirmed")
    assert row(took).provider_sid == confirmation.sid
    sweep_at(T0 + 2 * STALE)
    assert len(at_twilio()) == 3


def test_when_twilio_cannot_be_asked_the_row_waits_then_goes_after_a_day(line, caplog):
    clock.freeze(T0)
    oid = lost_outcome(line, "Pay with this link: https://rzp.io/l/abc")
    redis_client().set(FAIL_LIST_KEY, 1000)  # every list call answers 503
    caplog.set_level(logging.WARNING, logger="core.services.outbox")
    first = T0 + STALE + timedelta(minutes=1)  # its first look-up, failed
    for later in (timedelta(0), timedelta(hours=6), outbox.GIVE_UP_UNKNOWN - timedelta(
            minutes=1)):
        sweep_at(first + later)
        r = row(oid)
        assert (r.status, r.provider_sid) == ("sending", None), later
        assert len(at_twilio()) == 1, "sent again while Twilio's answer was unknown"
    sweep_at(first + outbox.GIVE_UP_UNKNOWN + timedelta(minutes=1))  # a day of failures
    sent = at_twilio()
    assert len(sent) == 2  # given back as before this look-up existed
    assert row(oid).provider_sid == sent[1].sid
    given_up = [rec for rec in caplog.records if "unknown for a day" in rec.getMessage()]
    assert len(given_up) == 1 and given_up[0].levelno == logging.WARNING
    assert given_up[0].outbox_id == oid  # type: ignore[attr-defined]
    for rec in caplog.records:
        assert "9876500011" not in f"{rec.getMessage()} {vars(rec)}"


def test_the_message_is_found_on_a_later_page(line, live, monkeypatch):
    monkeypatch.setattr(twilio_gateway, "LIST_PAGE_SIZE", 2)
    clock.freeze(T0)
    oid = lost_outcome(line, "Booking 12345678: pay with this link")
    (taken,) = at_twilio()
    for minute in (1, 2, 3):  # later messages to them, sent and answered as usual
        clock.freeze(T0 + timedelta(minutes=minute))
        queue_one(f"Update {minute}")
        run_jobs()
    # Newest first, two a page: the lost one is on the second page.
    s = get_settings()
    url = f"{live.base_url}/sandbox/twilio/2010-04-01/Accounts/{s.twilio_account_sid}/Messages.json"
    first = requests.get(url, params={"To": WA, "PageSize": 2}, timeout=5,
                         auth=(s.twilio_account_sid, s.twilio_auth_token)).json()
    assert [m["body"] for m in first["messages"]] == ["Update 3", "Update 2"]
    assert first["next_page_uri"]
    sweep_at(T0 + STALE)
    assert row(oid).provider_sid == taken.sid
    assert len(at_twilio(body="Booking 12345678: pay with this link")) == 1


def test_a_template_send_is_known_by_its_values(line):
    clock.freeze(T0)
    value = 'Booking 12345678: your code is "4821"\nShow it to the rider'
    oid = lost_outcome(line, "Booking 12345678 ...", template={"1": value})
    (taken,) = at_twilio()
    assert taken.body.startswith("[template HXabc123]")
    sweep_at(T0 + STALE)
    assert row(oid).provider_sid == taken.sid
    assert len(at_twilio()) == 1


def test_the_emulator_lists_like_twilio(live):
    s = get_settings()
    sms_from = s.twilio_sms_from
    sent = {}
    for day, to, body in ((9, TO, "a"), (10, TO, "b"), (10, "+919876500012", "c"),
                          (11, TO, "d")):
        clock.freeze(datetime(2026, 3, day, 23, 59, 59, tzinfo=UTC))
        sent[body] = twilio_gateway.client().messages.create(to=to, from_=sms_from,
                                                             body=body).sid
    with transaction() as session:  # sent by Twilio (no status callback asked for)
        session.execute(update(SandboxMessage).values(status="delivered"))
    clock.freeze(datetime(2026, 3, 12, tzinfo=UTC))
    # Another of our senders (an SMS one: Twilio refuses a WhatsApp From to an SMS To).
    sent["e"] = twilio_gateway.client().messages.create(to=TO, from_="+15005550007",
                                                        body="e").sid
    messages = twilio_gateway.client().messages

    def bodies(**filters) -> list[str]:  # noqa: ANN003
        return [m.body for m in messages.stream(from_=sms_from, page_size=1, **filters)]

    assert bodies(to=TO) == ["d", "b", "a"]  # newest first, one page each
    assert bodies(to=TO, date_sent="2026-03-10") == ["b"]
    assert bodies(to=TO, date_sent_after="2026-03-10") == ["d", "b"]  # on or after
    assert bodies(to=TO, date_sent_before="2026-03-10") == ["b", "a"]  # on or before
    assert bodies(date_sent="2026-03-10") == ["c", "b"]
    assert [m.body for m in messages.list(to=TO)] == ["e", "d", "b", "a"]
    page = messages.page(to=TO, page_size=3)
    assert [m.sid for m in page] == [sent["e"], sent["d"], sent["b"]]
    assert page.next_page_url and "PageToken=" in page.next_page_url
    assert [m.body for m in page.next_page()] == ["a"]
    assert page.next_page().next_page_url is None
    listed = twilio_gateway.messages_since(
        to=TO, from_=sms_from, since=datetime(2026, 3, 10, 23, 59, 59, tzinfo=UTC), limit=10)
    assert [(m.body, m.date_created) for m in listed] == [
        ("d", datetime(2026, 3, 11, 23, 59, 59, tzinfo=UTC)),
        ("b", datetime(2026, 3, 10, 23, 59, 59, tzinfo=UTC))]
    url = f"{live.base_url}/sandbox/twilio/2010-04-01/Accounts/{s.twilio_account_sid}/Messages.json"
    assert requests.get(url, auth=(s.twilio_account_sid, "wrong"), timeout=5).status_code == 401
    assert requests.get(url, params={"DateSent": "10 March"}, timeout=5,
                        auth=(s.twilio_account_sid, s.twilio_auth_token)).status_code == 400
    redis_client().set(FAIL_LIST_KEY, 1)
    with pytest.raises(twilio_gateway.LookupFailed):
        twilio_gateway.messages_since(to=TO, from_=sms_from,
                                      since=datetime(2026, 3, 10, tzinfo=UTC), limit=10)
    with transaction() as session:
        assert session.scalar(select(func.count()).select_from(SandboxMessage)) == 5


# --- found by review: what real Twilio lists, and what an outage costs -------------------

def test_the_emulator_leaves_a_queued_message_out_of_date_sent_filters(live):
    """Twilio's DateSent filters go by the sent date, which a message still queued at
    Twilio has not got (its date_sent is null)."""
    s = get_settings()
    clock.freeze(T0)
    sid = twilio_gateway.client().messages.create(to=WA, from_=s.twilio_whatsapp_from,
                                                  body="q").sid
    messages = twilio_gateway.client().messages
    # No sandbox job has run: the message is still queued.
    assert [(m.sid, m.status, m.date_sent) for m in messages.stream(to=WA)] == [
        (sid, "queued", None)]
    for when in ({"date_sent_after": T0.date().isoformat()},
                 {"date_sent": T0.date().isoformat()},
                 {"date_sent_before": T0.date().isoformat()}):
        assert list(messages.stream(to=WA, **when)) == [], when
    with transaction() as session:  # Twilio sends it: now it has a sent date
        session.execute(update(SandboxMessage).values(status="sent"))
    (listed,) = messages.stream(to=WA, date_sent=T0.date().isoformat())
    assert listed.sid == sid and listed.date_sent is not None


def hold_at_twilio(monkeypatch) -> None:
    """Twilio keeps what it takes queued (our sender's rate, within the message's validity
    period): it reports no progress."""
    monkeypatch.setattr(sandbox_twilio, "queue_status_report", lambda sid: None)


def test_a_message_still_queued_at_twilio_is_adopted_not_sent_again(line, monkeypatch):
    hold_at_twilio(monkeypatch)
    clock.freeze(T0)
    oid = lost_outcome(line, "Pay with this link: https://rzp.io/l/abc")
    sweep_at(T0 + STALE)
    (taken,) = at_twilio()
    assert taken.status == "queued"
    r = row(oid)
    assert (r.provider_sid, r.status) == (taken.sid, "queued")
    sweep_at(T0 + 2 * STALE)
    assert len(at_twilio()) == 1, "sent twice"


def test_a_look_up_reads_back_to_the_claim_not_the_whole_history(line, monkeypatch):
    monkeypatch.setattr(twilio_gateway, "LIST_PAGE_SIZE", 2)
    claimed_at = (T0 + timedelta(days=1)).replace(hour=12, minute=0, second=0)
    for minutes in range(180, 0, -20):  # earlier that day, sent and answered as usual
        clock.freeze(claimed_at - timedelta(minutes=minutes))
        queue_one(f"Earlier {minutes}")
        run_jobs()
    clock.freeze(claimed_at)
    oid = lost_outcome(line, "Booking 12345678: pay with this link")
    http = twilio_gateway.client().http_client
    pages: list[str] = []
    real_request = http.request

    def request(method, url, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        if method == "GET" and "/Messages.json" in url:  # the next pages carry a query
            pages.append(url)
        return real_request(method, url, *args, **kwargs)

    monkeypatch.setattr(http, "request", request)
    sweep_at(claimed_at + STALE)
    assert row(oid).provider_sid is not None
    # It and a page's worth from well before the claim (Twilio's order is not exactly by
    # creation, so one older message does not end it): two pages of five.
    assert len(pages) == 2, f"{len(pages)} pages read for one look-up"


def list_calls_failed(start: int = 100_000) -> int:
    return start - int(redis_client().get(FAIL_LIST_KEY) or 0)


class Unreachable:
    """A Redis that cannot be reached: every command fails as redis-py's would."""

    def __getattr__(self, name: str):  # noqa: ANN204
        raise redis_lib.exceptions.ConnectionError("Error 111 connecting: refused")


def pauses(caplog) -> list[int]:  # noqa: ANN001
    """The look-up pauses warned about (seconds); no other warning from the outbox."""
    warned = [rec for rec in caplog.records
              if rec.name == "core.services.outbox" and rec.levelno >= logging.WARNING
              and "send outcome unknown (timeout)" not in rec.getMessage()]
    assert all("look-ups paused" in rec.getMessage() for rec in warned), warned
    return [rec.pause_s for rec in warned]  # type: ignore[attr-defined]


def test_while_twilio_cannot_be_asked_look_ups_pause_longer_each_time(line, caplog,
                                                                      monkeypatch):
    clock.freeze(T0)
    rows = [lost_outcome(line, f"Your code is {n}") for n in range(3)]
    redis_client().set(FAIL_LIST_KEY, 100_000)  # Twilio's list answers 503 all along
    caplog.set_level(logging.INFO, logger="core.services.outbox")
    first = T0 + STALE
    for minute in range(10):
        sweep_at(first + timedelta(minutes=minute))
    # One look-up at each pause's end (1, 2, 4, ... minutes), not one per row a minute.
    assert list_calls_failed() == 4
    assert pauses(caplog) == [60, 120, 240, 480]
    clock.freeze(first + timedelta(minutes=8))
    assert outbox.sweep() == 0, "reconcile jobs started while paused"
    assert all(row(oid).status == "sending" for oid in rows)
    assert len(at_twilio()) == 3

    # Twilio answers again at the pause's end: every row is settled, the pause is over.
    redis_client().delete(FAIL_LIST_KEY)
    sweep_at(first + timedelta(minutes=15))
    assert {row(oid).status for oid in rows} == {"delivered"}
    assert len(at_twilio()) == 3
    assert not outbox._lookups_paused()
    # The next failure, a longest pause after the last one ended, pauses for a minute again.
    caplog.clear()
    late_at = first + timedelta(minutes=15) + outbox.LOOKUP_PAUSE_MAX - outbox.STALE_SENDING
    clock.freeze(late_at)
    late = lost_outcome(line, "Your code is 9")
    redis_client().set(FAIL_LIST_KEY, 100_000)
    sweep_at(late_at + STALE)
    assert pauses(caplog) == [60]

    # Redis unavailable for the pause: look-ups go on as before it existed; the sweep works.
    monkeypatch.setattr(outbox, "redis_client", Unreachable)
    sweep_at(late_at + STALE + timedelta(seconds=10))
    assert list_calls_failed() == 2
    redis_client().delete(FAIL_LIST_KEY)
    sweep_at(late_at + STALE + timedelta(seconds=20))
    assert row(late).status == "delivered" and len(at_twilio()) == 4


def test_a_day_old_row_is_given_back_unasked_while_look_ups_pause(line, caplog):
    clock.freeze(T0)
    day_old = lost_outcome(line, "Pay with this link: https://rzp.io/l/abc")
    clock.freeze(T0 + timedelta(hours=1))
    younger = lost_outcome(line, "Your pickup code is 4821")
    redis_client().set(FAIL_LIST_KEY, 100_000)
    caplog.set_level(logging.WARNING, logger="core.services.outbox")
    first = T0 + STALE + timedelta(minutes=1)
    sweep_at(first)  # the day-old row's first look-up fails (the younger is not stale yet)
    assert list_calls_failed() == 1
    # A day later the younger row, never asked, goes first: it fails, a minute's pause.
    sweep_at(first + outbox.GIVE_UP_UNKNOWN - timedelta(seconds=30))
    assert list_calls_failed() == 2
    clock.freeze(first + outbox.GIVE_UP_UNKNOWN + timedelta(seconds=10))
    assert outbox.sweep() == 1  # the row whose own look-ups failed for a day, only
    run_jobs()
    assert list_calls_failed() == 2, "asked twilio while paused"
    sent = at_twilio()
    assert len(sent) == 3 and row(day_old).provider_sid == sent[2].sid
    assert (row(younger).status, row(younger).provider_sid) == ("sending", None)
    given_up = [rec for rec in caplog.records if "unknown for a day" in rec.getMessage()]
    assert [rec.outbox_id for rec in given_up] == [day_old]  # type: ignore[attr-defined]


def test_a_longer_text_that_contains_a_template_value_is_not_taken_for_it(line):
    clock.freeze(T0)
    short = "Booking 12345678 is cancelled"
    line.request_lost = True  # Twilio never got the first
    never = queue_one(short, template={"1": short})
    run_jobs()
    line.request_lost = False
    longer = f"{short}. Your refund of ₹1,250 is on its way"
    took = lost_outcome(line, longer, template={"1": longer})
    sweep_at(T0 + STALE)
    (refund,) = at_twilio(body=f'[template HXabc123] {{"1": "{longer}"}}')
    assert row(took).provider_sid == refund.sid
    (cancelled,) = at_twilio(body=f'[template HXabc123] {{"1": "{short}"}}')
    assert row(never).provider_sid == cancelled.sid, "the cancellation was never sent"
    assert len(at_twilio()) == 2


def test_twins_reconciled_at_once_take_one_message_each(line, monkeypatch):
    clock.freeze(T0)
    first = lost_outcome(line, "Your pickup code is 4821")
    twin = lost_outcome(line, "Your pickup code is 4821")
    real_ours = outbox._ours
    raced = []

    def ours_then_the_twin(*args, **kwargs):  # noqa: ANN002, ANN003
        found = real_ours(*args, **kwargs)
        if not raced:  # another worker reconciles the twin meanwhile
            raced.append("racing")
            raced[0] = outbox.reconcile(twin)
        return found

    monkeypatch.setattr(outbox, "_ours", ours_then_the_twin)
    sweep_at(T0 + STALE)
    assert raced == ["adopted"]
    q = queue("outbox")
    assert FailedJobRegistry(queue=q).count == 0, "the reconcile job crashed"
    assert row(first).status == "sending"  # asked again at the next sweep
    sweep_at(T0 + STALE + timedelta(minutes=1))
    sids = {row(first).provider_sid, row(twin).provider_sid}
    assert sids == {m.sid for m in at_twilio()} and len(at_twilio()) == 2


# --- found by review (rev67): one row's failing look-ups, Twilio's list order, twins ----

OTHER = "+919876500077"
THIRD = "+919876500078"


def lists_time_out(monkeypatch, to: str) -> list[str]:  # noqa: ANN001
    """Twilio's list times out for ``to`` alone (a long history, say); return the
    recipients asked about, in order."""
    http = twilio_gateway.client().http_client
    real_request = http.request
    asked: list[str] = []

    def request(method, url, params=None, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        if method == "GET" and "/Messages.json" in url:
            asked.append(str((params or {}).get("To", "")))
            if asked[-1] == to:
                raise requests.exceptions.ReadTimeout("read timed out")
        return real_request(method, url, params, *args, **kwargs)

    monkeypatch.setattr(http, "request", request)
    return asked


@pytest.mark.parametrize("failure, outage", [
    ("503", True), ("429", True), ("500", True), ("timeout", True), ("refused", True),
    ("401", True), ("403", True), ("400", False), ("404", False),
])
def test_a_failed_look_up_says_whether_twilio_is_out(live, monkeypatch, failure, outage):
    if failure.isdigit():
        redis_client().hset(FAIL_LIST_TO_KEY, WA, failure)
    else:
        http = twilio_gateway.client().http_client
        error = (requests.exceptions.ReadTimeout if failure == "timeout"
                 else requests.exceptions.ConnectionError)

        def request(*args, **kwargs):  # noqa: ANN002, ANN003
            raise error("sandbox")

        monkeypatch.setattr(http, "request", request)
    with pytest.raises(twilio_gateway.LookupFailed) as failed:
        twilio_gateway.messages_since(to=WA, from_=get_settings().twilio_whatsapp_from,
                                      since=T0, limit=10)
    assert failed.value.outage is outage


def test_a_recipient_whose_look_up_times_out_holds_back_no_other_row(line, monkeypatch):
    """Review rev67: its row went first after every pause and started the next one; the
    other rows were never asked."""
    clock.freeze(T0)
    stuck = lost_outcome(line, "Your pickup code is 1111")
    clock.freeze(T0 + timedelta(minutes=1))
    good = lost_outcome(line, "Your pickup code is 2222", to=OTHER)
    asked = lists_time_out(monkeypatch, WA)
    first = T0 + STALE + timedelta(minutes=1)
    sweep_at(first)  # the older claim is asked first: it times out, look-ups pause
    assert asked == [WA] and row(good).provider_sid is None
    sweep_at(first + timedelta(minutes=1))  # the pause's end: the row not yet asked first
    assert asked[1] == f"whatsapp:{OTHER}"
    (taken,) = at_twilio(to=f"whatsapp:{OTHER}")
    assert row(good).provider_sid == taken.sid
    assert (row(stuck).status, row(stuck).provider_sid) == ("sending", None)


def test_a_row_twilio_holds_is_not_sent_twice_after_a_day_of_another_rows_failures(
        line, monkeypatch):
    """Review rev67: held back by the pauses another row's failures started, the row was
    given back unasked after a day, though Twilio had it all along."""
    clock.freeze(T0)
    stuck = lost_outcome(line, "Your pickup code is 1111")
    clock.freeze(T0 + timedelta(minutes=1))
    good = lost_outcome(line, "Your pickup code is 2222", to=OTHER)
    lists_time_out(monkeypatch, WA)
    at = T0 + STALE + timedelta(minutes=1)  # the stuck row's first failure
    end = at + outbox.GIVE_UP_UNKNOWN + timedelta(minutes=3)
    while at < end + timedelta(minutes=2):  # at each pause's end
        sweep_at(at)
        at += timedelta(minutes=31)
    sweep_at(end)
    assert len(at_twilio(to=f"whatsapp:{OTHER}")) == 1, "Twilio had it all along: sent twice"
    assert row(good).provider_sid is not None
    # The row whose own look-ups failed all day goes again unasked, as before.
    assert row(stuck).status != "sending" and len(at_twilio()) == 2


def test_a_look_up_refused_for_one_recipient_holds_back_that_row_alone(line, caplog):
    clock.freeze(T0)
    refused = lost_outcome(line, "Your pickup code is 1111")
    clock.freeze(T0 + timedelta(minutes=1))
    good = lost_outcome(line, "Your pickup code is 2222", to=OTHER)
    clock.freeze(T0 + timedelta(minutes=2))
    later = lost_outcome(line, "Your pickup code is 3333", to=THIRD)
    redis_client().hset(FAIL_LIST_TO_KEY, WA, 400)  # its list is refused, every time
    caplog.set_level(logging.WARNING, logger="core.services.outbox")
    first = T0 + STALE + timedelta(minutes=2)
    sweep_at(first)
    # No pause: the others are asked in the same sweep, and found.
    assert row(good).provider_sid is not None and row(later).provider_sid is not None
    assert not outbox._lookups_paused()
    assert not [rec for rec in caplog.records if "look-ups paused" in rec.getMessage()]
    # The refused row waits out its own back-off (a minute, then two, ...).
    assert outbox.sweep() == 0
    clock.freeze(first + timedelta(minutes=1))
    assert outbox.sweep() == 1
    assert row(refused).status == "sending" and len(at_twilio()) == 1


def test_a_row_held_back_only_by_pauses_waits_past_the_day(line, caplog):
    """Its own look-ups never failed (others' did, and kept look-ups paused): Twilio may
    still have it, so it is not given back unasked after a day; after three it is."""
    three_days = timedelta(hours=72)  # outbox.GIVE_UP_PAUSED
    clock.freeze(T0)
    oid = lost_outcome(line, "Pay with this link: https://rzp.io/l/abc")
    until = T0 + three_days + timedelta(hours=1)
    redis_client().set(outbox.LOOKUP_PAUSE_KEY, f"{int(until.timestamp())} 6")
    caplog.set_level(logging.WARNING, logger="core.services.outbox")
    for later in (STALE, outbox.GIVE_UP_UNKNOWN + timedelta(minutes=1),
                  three_days - timedelta(minutes=1)):
        sweep_at(T0 + later)
        assert (row(oid).status, row(oid).provider_sid) == ("sending", None), later
        assert len(at_twilio()) == 1, f"given back unasked at {later}"
    sweep_at(T0 + three_days + timedelta(minutes=1))
    sent = at_twilio()
    assert len(sent) == 2 and row(oid).provider_sid == sent[1].sid
    (given_up,) = [rec for rec in caplog.records if "sent again" in rec.getMessage()]
    assert "three days" in given_up.getMessage() and given_up.levelno == logging.WARNING


def test_an_answer_between_failures_does_not_reset_the_pause(line, caplog):
    """Failures that come and go: one answer in between used to clear the count, and the
    pause never grew past a minute."""
    rows = []
    for n, to in enumerate((TO, OTHER, THIRD)):
        clock.freeze(T0 + timedelta(seconds=n))
        rows.append(lost_outcome(line, f"Your code is {n}", to=to))
    redis_client().hset(FAIL_LIST_TO_KEY, WA, 503)
    caplog.set_level(logging.INFO, logger="core.services.outbox")
    first = T0 + STALE + timedelta(seconds=2)
    sweep_at(first)  # the first row's look-up fails: a minute's pause
    redis_client().hdel(FAIL_LIST_TO_KEY, WA)
    redis_client().hset(FAIL_LIST_TO_KEY, f"whatsapp:{THIRD}", 503)
    sweep_at(first + timedelta(minutes=1))  # the second is answered, the third fails
    assert row(rows[1]).provider_sid is not None
    assert pauses(caplog) == [60, 120]


def test_a_message_listed_after_an_older_one_is_still_found(line):
    """Twilio lists by its own order, not exactly by creation: a message created earlier
    but sent later (held in Twilio's queue) can come ahead of ours."""
    clock.freeze(T0)
    oid = lost_outcome(line, "Your pickup code is 4821")
    (taken,) = at_twilio()
    clock.freeze(T0 - timedelta(minutes=20))  # created well before the claim, listed after
    twilio_gateway.client().messages.create(
        to=WA, from_=get_settings().twilio_whatsapp_from, body="Your ride is on its way")
    sweep_at(T0 + STALE)
    assert row(oid).provider_sid == taken.sid
    assert len(at_twilio(body="Your pickup code is 4821")) == 1, "sent twice"


def test_a_twin_whose_message_a_reconcile_adopted_meanwhile_ends_cleanly(line):
    clock.freeze(T0)
    line.request_lost = True  # Twilio never got the first
    first = queue_one("Your pickup code is 4821")
    run_jobs()
    line.request_lost = False
    clock.freeze(T0 + STALE)
    adopted = []
    # While the twin's answer is on its way, another worker reconciles the first row and
    # takes the twin's message for it (same text, same recipient, since its claim).
    line.meanwhile = lambda: adopted.append(outbox.reconcile(first))
    twin = queue_one("Your pickup code is 4821")
    run_jobs()
    assert adopted == ["adopted"]
    (message,) = at_twilio()
    assert row(first).provider_sid == message.sid
    job = queue("outbox").fetch_job(f"outbox-{twin}")
    assert job is not None and job.get_status() == "finished", "the delivery job crashed"
    assert job.return_value() == "unknown"
    assert (row(twin).status, row(twin).provider_sid) == ("sending", None)
    # The twin's own status callback (its id in the URL) names the adopted sid: no crash.
    assert outbox.record_status(outbox_id=twin, message_sid=message.sid, status="delivered",
                                error_code=None)
    assert row(first).status == "delivered" and row(twin).provider_sid is None
    # The twin's reconcile finds no message of its own: sent again, one each.
    sweep_at(T0 + 2 * STALE)
    sent = at_twilio()
    assert len(sent) == 2 and row(twin).provider_sid == sent[1].sid


def test_one_failed_look_up_after_a_long_pause_is_no_day_of_failures(line):
    """The day of failures before a row goes again unasked counts from its own first
    failure: a row held back 30 h by an outage whose first look-up then fails once waits
    to be asked again (and is adopted), instead of going at once."""
    clock.freeze(T0)
    oid = lost_outcome(line, "Pay with this link: https://rzp.io/l/abc")  # Twilio has it
    until = T0 + timedelta(hours=30)  # an outage: look-ups paused for 30 h
    redis_client().set(outbox.LOOKUP_PAUSE_KEY, f"{int(until.timestamp())} 6")
    sweep_at(T0 + timedelta(hours=25))
    assert len(at_twilio()) == 1
    redis_client().set(FAIL_LIST_KEY, 1)  # the first look-up after the outage: one 503
    sweep_at(until + timedelta(minutes=1))
    assert len(at_twilio()) == 1, "sent twice after a single failed look-up"
    sweep_at(until + timedelta(hours=1))
    assert row(oid).provider_sid == at_twilio()[0].sid
    assert len(at_twilio()) == 1

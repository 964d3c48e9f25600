"""Session 34: two outbox defects a reviewer found (R3).

1. A free-form WhatsApp message refused for the closed 24-hour window (63016), or an SMS
   refused for STOP (21610) whose text goes on WhatsApp, is carried by the approved
   template of the language its text is in (the booking's for its customer, the
   recipient's for her), not of the language the phone's person chose since; where only
   that language has a template and no SMS can reach her, the notice still goes.
2. A chat reply claimed at insert ("sending", attempts 0) whose drainer died after the
   turn's commit, before its send, goes when the drain runs the message again (the
   message is a duplicate then), or at the sweep a minute on, not 15 minutes later; a
   drainer merely slow finds its claim gone and sends nothing twice.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from core import clock, i18n
from core.adapters.db import transaction
from core.adapters.dialog_models import WhatsappTemplateSend
from core.adapters.models import (
    Booking,
    Conversation,
    OutboxMessage,
    Person,
    SandboxMessage,
)
from core.domain.pricing import SpeedTier
from core.services import dispatch, notify, outbox
from core.services.booking import create_booking
from tests.conftest import post_twilio, run_jobs
from tests.test_booking_language_s30 import (  # noqa: F401 (ledger_balanced: autouse)
    BAG,
    BETTIAH,
    CUSTOMER,
    LAXMIPUR,
    NOW,
    PHONE,
    customer,
    ledger_balanced,
    scripts,
    switch_language,
)
from tests.test_outbox_s31 import RAMESH, _at_twilio, _row

pytestmark = pytest.mark.db
TA, TE = "HX" + "a" * 32, "HX" + "e" * 32
RECIPIENT = "+919812346034"


@pytest.fixture
def templates(monkeypatch):
    """Configure WhatsApp "update" templates: set(lang=sid, ...)."""
    def configure(**sids: str) -> None:
        for lang, sid in sids.items():
            monkeypatch.setenv(f"WHATSAPP_TEMPLATE_{lang.upper()}", sid)
        notify.reset_templates()

    yield configure
    notify.reset_templates()


def _chats(person_id: int, contact: str, last_inbound_at: datetime) -> None:
    with transaction() as s:
        s.add(Conversation(channel="whatsapp", contact=contact, person_id=person_id,
                           step="menu", state={}, misses=0, handoff=False,
                           last_inbound_at=last_inbound_at))


def _booking(customer_id: int, recipient_phone: str | None = None) -> int:
    with transaction() as s:
        b = create_booking(s, customer_id=customer_id, channel="whatsapp", pickup=LAXMIPUR,
                           drop=BETTIAH, parcel=BAG, tier=SpeedTier.STANDARD,
                           recipient_name="Kavya" if recipient_phone else None,
                           recipient_phone=recipient_phone, actor=CUSTOMER)
        return b.id


def _copy(key: str) -> tuple[OutboxMessage | None, str | None]:
    """The row with dedupe key ``key`` and its template's ContentSid."""
    with transaction() as s:
        row = s.scalar(select(OutboxMessage).where(OutboxMessage.dedupe_key == key))
        if row is None:
            return None, None
        tpl = s.get(WhatsappTemplateSend, row.id)
        s.expunge(row)
        return row, tpl.content_sid if tpl else None


# --- 1. the template copy in the language of the text it carries ------------------------


def test_window_missed_copy_uses_the_bookings_language_template(clean_db, templates):
    """(R3) A free-form booking notice (in the booking's language, Tamil) refused with
    63016 goes again as the template: the Tamil one, as notify_customer picks it, not the
    template of the language the phone's person chose since (Telugu)."""
    templates(ta=TA, te=TE)
    clock.freeze(NOW)
    cid = customer("ta")
    _chats(cid, PHONE[1:], NOW - timedelta(hours=23, minutes=59))
    bid = _booking(cid)
    switch_language(cid, "te")
    with transaction() as s:
        row_id = notify.notify_customer(s, s.get(Booking, bid), "booking.status.delivered")
    with transaction() as s:
        row = s.get(OutboxMessage, row_id)
        assert row.channel == "whatsapp" and scripts(row.body) == {"ta"}
        assert s.get(WhatsappTemplateSend, row_id) is None  # free-form, in the window
    clock.freeze(NOW + timedelta(minutes=5))
    outbox.record_status(outbox_id=row_id, message_sid="SM" + "1" * 32,
                         status="undelivered", error_code="63016")
    copy, sid = _copy(f"tpl-for-{row_id}")
    assert copy is not None and scripts(copy.body) == {"ta"}
    assert sid == TA, sid


def test_window_missed_notice_is_not_lost_when_only_the_bookings_template_exists(
        clean_db, templates):
    """(R3) Her SMS is stopped, so WhatsApp is the only way. Only the booking's language
    (Tamil) has an approved template; the phone's person chose Telugu since. notify sends
    the notice in the Tamil template; after a 63016 the copy looked for a Telugu one,
    found none, and the notice reached her no way at all."""
    templates(ta=TA)
    clock.freeze(NOW)
    cid = customer("ta")
    _chats(cid, PHONE[1:], NOW - timedelta(hours=23, minutes=59))
    bid = _booking(cid)
    switch_language(cid, "te")
    with transaction() as s:
        s.get(Person, cid).sms_opted_out = True
    with transaction() as s:
        row_id = notify.notify_customer(s, s.get(Booking, bid), "booking.status.delivered")
    assert row_id is not None
    clock.freeze(NOW + timedelta(minutes=5))
    outbox.record_status(outbox_id=row_id, message_sid="SM" + "2" * 32,
                         status="undelivered", error_code="63016")
    with transaction() as s:
        copies = list(s.scalars(select(OutboxMessage.dedupe_key).where(
            OutboxMessage.dedupe_key.like(f"%-for-{row_id}"))))
    assert copies == [f"tpl-for-{row_id}"], copies
    assert _copy(f"tpl-for-{row_id}")[1] == TA


def test_a_recipients_sms_refused_for_stop_goes_on_whatsapp_in_her_texts_template(
        clean_db, templates):
    """The recipient (no language of her own chosen: her texts go in the booking's,
    Tamil) stopped our SMS and chats with us on WhatsApp, her window closed. Her SMS about
    the parcel is refused (21610) and goes on WhatsApp as the template: the Tamil one, of
    the text it carries. The copy looked for the template of her person's language (none:
    the default's, not configured) and the notice went no way at all."""
    templates(ta=TA)
    clock.freeze(NOW)
    cid = customer("ta")
    with transaction() as s:
        kavya = Person(phone=RECIPIENT, name="Kavya", preferred_language=None,
                       role="customer")
        s.add(kavya)
        s.flush()
        rid = kavya.id
    _chats(rid, RECIPIENT[1:], NOW - timedelta(hours=30))
    bid = _booking(cid, RECIPIENT)
    with transaction() as s:
        b = s.get(Booking, bid)
        lang = dispatch.recipient_language(s, b)
        assert lang == "ta"
        row_id = notify.notify_phone(s, RECIPIENT, "dispatch.recipient_delivery_late",
                                     lang=lang, booking_id=bid, ref=b.reference,
                                     dedupe_key=f"booking-{bid}-late-delivery-recipient")
    with transaction() as s:
        row = s.get(OutboxMessage, row_id)
        assert row.channel == "sms" and scripts(row.body) == {"ta"}
    clock.freeze(NOW + timedelta(minutes=5))
    outbox.record_status(outbox_id=row_id, message_sid="SM" + "3" * 32,
                         status="undelivered", error_code="21610")
    copy, sid = _copy(f"wa-for-{row_id}")
    assert copy is not None, "the recipient's notice went no way at all"
    assert copy.channel == "whatsapp" and scripts(copy.body) == {"ta"}
    assert sid == TA, sid


def test_a_customers_own_drop_code_copy_keeps_the_recipients_language(
        clean_db, templates):
    """She sends a parcel to herself: her drop code was written as the recipient's, in
    her own language (Telugu, chosen since she booked in Tamil); the template copy after a
    63016 is the Telugu one, while her booking's news (Tamil) gets the Tamil one."""
    templates(ta=TA, te=TE)
    clock.freeze(NOW)
    cid = customer("ta")
    _chats(cid, PHONE[1:], NOW - timedelta(hours=23, minutes=59))
    bid = _booking(cid, PHONE)
    switch_language(cid, "te")
    with transaction() as s:
        b = s.get(Booking, bid)
        code_id = notify.notify_phone(s, PHONE, "dispatch.drop_otp",
                                      lang=dispatch.recipient_language(s, b),
                                      booking_id=bid, ref=b.reference, otp="4821",
                                      dedupe_key="leg-999-dropotp-t1")
        news_id = notify.notify_customer(s, b, "booking.status.delivered")
    with transaction() as s:
        s.get(Person, cid).sms_opted_out = True
        code_row = s.get(OutboxMessage, code_id)
        assert code_row.channel == "sms" and scripts(code_row.body) == {"te"}
        assert scripts(s.get(OutboxMessage, news_id).body) == {"ta"}
    clock.freeze(NOW + timedelta(minutes=5))
    outbox.record_status(outbox_id=news_id, message_sid="SM" + "4" * 32,
                         status="undelivered", error_code="63016")
    assert _copy(f"tpl-for-{news_id}")[1] == TA
    with transaction() as s:
        me = s.get(Person, cid)
        text = outbox._text_language(s, s.get(OutboxMessage, code_id), me)
        # A rating question is the chat's, in her own language, though about the booking.
        ask = notify.send_to_person(s, me, i18n.t("bot.rate.ask", "te", ref="RC-1"),
                                    dedupe_key=f"rate-ask-{bid}", booking_id=bid)
        asked = outbox._text_language(s, s.get(OutboxMessage, ask), me)
    assert (text, asked) == ("te", "te")
    assert i18n.DEFAULT_LANGUAGE not in ("ta", "te")  # the default would hide a mix-up


# --- 2. a reply left untried by a drainer that died --------------------------------------


def _wa_sent(phone: str) -> list[str]:
    with transaction() as s:
        return list(s.scalars(select(SandboxMessage.body).where(
            SandboxMessage.to_addr == f"whatsapp:{phone}").order_by(SandboxMessage.id)))


def _reply_rows(sid: str) -> list[OutboxMessage]:
    with transaction() as s:
        rows = list(s.scalars(select(OutboxMessage).where(
            OutboxMessage.dedupe_key.like(f"reply:{sid}:%")).order_by(OutboxMessage.id)))
        for r in rows:
            s.expunge(r)
        return rows


class Killed(BaseException):
    """The worker killed: nothing after it runs."""


def _die(claimed: object) -> str:
    raise Killed()


def test_a_reply_left_untried_by_a_killed_drainer_goes_when_the_message_is_drained_again(
        client, live, monkeypatch):
    """(R3) The drainer's turn committed (the reply row claimed "sending", attempts 0) and
    the worker died before send_now ran. RQ runs the drain again at once: the message was
    found handled (its claim) and nothing sent the reply; it waited for the sweep's
    reconcile of a stale claim, 15 minutes on. Now the drain run again sends it."""
    from bots.whatsapp import handle
    from core.services import inbound
    from tests.test_inbound_drain import wa

    phone, sid = "+919812340155", "SMkilled1"
    monkeypatch.setattr(outbox, "send_now", _die)
    post_twilio(client, "/webhooks/whatsapp", wa(phone, "hi", sid))
    with pytest.raises(Killed):
        inbound.drain("whatsapp", phone.lstrip("+"), handle)
    monkeypatch.undo()
    rows = _reply_rows(sid)
    assert rows and all((r.status, r.attempts) == ("sending", 0) for r in rows)
    run_jobs()  # the drain job runs again (RQ's retry, or the one queued), and the rest
    sent = _wa_sent(phone)
    assert sent == [r.body for r in rows], \
        f"reply not sent by the drain run again; rows {[r.status for r in _reply_rows(sid)]}"
    assert all(r.attempts == 1 for r in _reply_rows(sid))


def test_a_slow_drainer_sends_nothing_twice_after_the_drain_ran_again(
        client, live, monkeypatch):
    """The first drainer is merely slow (its contact's lock lapsed while it waited): the
    drain run again gives its untried reply to a delivery job, which sends it; the slow
    drainer then comes to its send, finds its claim gone (_claim_kept) and sends nothing."""
    from bots.whatsapp import handle
    from core.services import inbound
    from tests.test_inbound_drain import wa

    phone, sid = "+919812340156", "SMslow1"
    real_send_now = outbox.send_now
    paused: list[object] = []
    monkeypatch.setattr(outbox, "send_now", paused.append)
    post_twilio(client, "/webhooks/whatsapp", wa(phone, "hi", sid))
    r = inbound.redis_client()
    lock = inbound._keys("whatsapp", phone.lstrip("+"))[2]
    real_run = inbound._run

    def lapse(client_, source, keys, args):  # noqa: ANN001
        if source is inbound._POP_HANDLED_LUA:
            r.delete(lock)  # its lock lapsed while it was slow; another took it over
            return -1
        return real_run(client_, source, keys, args)

    with monkeypatch.context() as mp:
        mp.setattr(inbound, "_run", lapse)
        inbound.drain("whatsapp", phone.lstrip("+"), handle)  # the turn, no send yet
    monkeypatch.undo()
    assert paused and _wa_sent(phone) == []
    run_jobs()  # another drainer takes the message again: a duplicate; the job sends
    bodies = [row.body for row in _reply_rows(sid)]
    assert _wa_sent(phone) == bodies
    for claimed in paused:  # the slow drainer gets to its send at last
        assert real_send_now(claimed) == "taken-over"  # type: ignore[arg-type]
    run_jobs()
    assert _wa_sent(phone) == bodies, "a reply went twice"


def _reply_to_ramesh(body: str) -> int:
    with transaction() as s:
        row_id = outbox.queue_message(s, channel="sms", to=RAMESH, body=body, reply=True,
                                      send_after_commit=True)
    assert row_id is not None
    return row_id


def test_the_sweep_sends_an_untried_reply_after_a_minute_and_a_late_drainer_leaves_it(
        live, monkeypatch):
    """A reply claimed at insert whose drainer never came to its send (no drain runs its
    message again: set aside as a dead letter, say) goes at the sweep after
    STALE_UNTRIED, not STALE_SENDING; a drainer that was only slow then finds its claim
    gone and sends nothing twice."""
    real_send_now = outbox.send_now
    paused: list[object] = []
    with monkeypatch.context() as mp:
        mp.setattr(outbox, "send_now", paused.append)
        reply = _reply_to_ramesh("1. Your booking RC-1 is confirmed.")
    monkeypatch.setattr(outbox.twilio_gateway, "messages_since",
                        lambda **kw: pytest.fail("twilio was asked about a row never tried"))
    start = datetime.now(UTC)
    clock.freeze(start + timedelta(seconds=20))
    outbox.sweep()
    run_jobs(("outbox",))
    assert (_row(reply).status, _row(reply).attempts) == ("sending", 0)  # too soon
    clock.freeze(start + timedelta(seconds=90))  # STALE_UNTRIED (60 s) on, not 15 min
    outbox.sweep()
    run_jobs(("outbox",))
    assert _at_twilio() == ["1. Your booking RC-1 is confirmed."]
    assert real_send_now(paused[0]) == "taken-over"  # type: ignore[arg-type]
    run_jobs(("outbox",))
    assert _at_twilio() == ["1. Your booking RC-1 is confirmed."], "the reply went twice"


def test_a_drainer_that_took_its_claim_first_is_not_sent_again_by_the_sweep(
        live, monkeypatch):
    """The slow drainer's try came first (its claim kept, attempts 1): the sweep a minute
    on finds no untried claim and sends nothing again."""
    real_send_now = outbox.send_now
    paused: list[object] = []
    with monkeypatch.context() as mp:
        mp.setattr(outbox, "send_now", paused.append)
        reply = _reply_to_ramesh("1. Your booking RC-1 is confirmed.")
    assert real_send_now(paused[0]) == "sent"  # type: ignore[arg-type]
    with transaction() as s:  # its callback has not come yet: no sid, as if lost
        s.get(OutboxMessage, reply).provider_sid = None
        s.get(OutboxMessage, reply).status = "sending"
    clock.freeze(datetime.now(UTC) + timedelta(seconds=90))
    assert outbox.reconcile(reply) == "in-flight"
    outbox.sweep()
    run_jobs(("outbox",))
    assert _at_twilio() == ["1. Your booking RC-1 is confirmed."], "the reply went twice"
    assert (_row(reply).status, _row(reply).attempts) == ("sending", 1)

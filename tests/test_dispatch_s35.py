"""Dispatch and the parcel's recipient (task HC).

1. A rider who gave the last leg back (dispatch._give_back) voided the drop code the
   recipient holds, and nobody told her: she read the old code out to the next rider and
   it failed. She now hears at once, in her language and the way that code reached her,
   that it no longer works and that a new one comes when a rider takes the parcel; only
   when she holds a code the give-back made void.
2. A drop code the service made itself (the recipient's number said "wrong number", her
   number moved to a new SIM) used one of the 5 new codes a leg ops may give
   (OPS_CODES_PER_LEG). Each such cause has a budget of its own now.
3. (HK) Whether she holds the code was read from the latest drop-code message alone: an
   SMS refused for her STOP whose WhatsApp copy reached her counted as no code. The
   messages carrying the leg's current code, copies too, are read now.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from core import clock, i18n
from core.adapters.api_models import AuditEntry
from core.adapters.db import transaction
from core.adapters.models import Conversation, Leg, OutboxMessage, Person
from core.domain.booking import Actor
from core.domain.errors import Conflict
from core.services import dispatch
from tests.conftest import run_jobs
from tests.test_api import sign_in
from tests.test_dispatch import (
    CUSTOMER,
    LAXMIPUR,
    OPS,
    RECIPIENT,
    bodies_to,
    booking_status,
    frozen,  # noqa: F401  (fixture)
    last_code,
    make_partner,
    paid_booking,
    sms,
    start,
)
from tests.test_notice_review import (
    assigned_booking,
    cannot_deliver,
    customer_speaks,
    leg_of,
    passed_on,
    ref_of,
)
from tests.test_ops_codes import new_code
from tests.test_ops_s30 import drop_code_night  # noqa: F401  (fixture)

pytestmark = pytest.mark.db

FARTHER = (26.90, 84.49)  # Suresh: offered the job after Ramesh, who is nearer


def void_notices(booking_id: int) -> list[tuple[str, str]]:
    """(to, body) of the "your code no longer works" messages of the booking."""
    with transaction() as s:
        return [(r.to_addr, r.body) for r in s.scalars(
            select(OutboxMessage).where(OutboxMessage.booking_id == booking_id,
                                        OutboxMessage.dedupe_key.like("leg-%-dropvoid-%"))
            .order_by(OutboxMessage.id))]


def void_text(booking_id: int, lang: str) -> str:
    return i18n.t("dispatch.drop_otp_void", lang, ref=ref_of(booking_id))


# --- 1. her code is void after a give-back: she is told ----------------------------------


def test_a_recipient_is_told_her_code_is_void_when_the_rider_gives_the_job_back(
        client, live, frozen):  # noqa: F811
    """Sita was sent code N; Ramesh gives the job back (CANCEL). N no longer works: she
    hears it at once, then Suresh takes the job and she gets the new code, which works."""
    _, suresh = make_partner("Suresh", FARTHER, lang="en")
    booking_id, ramesh = assigned_booking(client)
    old = last_code(RECIPIENT)
    assert sms(client, ramesh, "CANCEL")
    run_jobs()
    assert void_notices(booking_id) == [(RECIPIENT, void_text(booking_id, "en"))], (
        f"her code was made void and nobody told her: {bodies_to(RECIPIENT)}")
    assert booking_status(booking_id) == "dispatching"
    assert sms(client, suresh, "1")
    run_jobs()
    new = last_code(RECIPIENT)
    assert bodies_to(RECIPIENT)[-1] == i18n.t("dispatch.drop_otp_new", "en",
                                              ref=ref_of(booking_id), otp=new)
    assert len(void_notices(booking_id)) == 1  # the new code says nothing more of it
    assert "picked up" in sms(client, suresh, f"PICK {last_code(CUSTOMER, 'at pickup')}")[0]
    if new != old:
        assert "delivered" not in sms(client, suresh, f"DROP {old}")[0]
    assert "delivered" in sms(client, suresh, f"DROP {new}")[0]


def test_each_give_back_of_a_code_she_holds_is_told_once(client, live, frozen):  # noqa: F811
    _, suresh = make_partner("Suresh", FARTHER, lang="en")
    booking_id, ramesh = assigned_booking(client)
    assert sms(client, ramesh, "CANCEL")
    assert sms(client, ramesh, "CANCEL")  # nothing more to give back
    assert sms(client, suresh, "1")
    run_jobs()
    assert len(void_notices(booking_id)) == 1
    assert sms(client, suresh, "CANCEL")  # her second code is void too
    run_jobs()
    assert [to for to, _ in void_notices(booking_id)] == [RECIPIENT, RECIPIENT]


def test_ops_taking_the_job_back_tells_her_too_in_her_language(client, live,
                                                               frozen):  # noqa: F811
    """A suspension takes Ramesh's job back (block_partner: _give_back, by ops): the
    recipient, who reads Hindi, hears it in Hindi."""
    with transaction() as s:
        s.add(Person(phone=RECIPIENT, role="customer", preferred_language="hi"))
    booking_id, _ = assigned_booking(client)
    with transaction() as s:
        partner_id = s.get(Leg, leg_of(booking_id)).partner_id
        assert partner_id is not None
        dispatch.block_partner(s, partner_id, Actor.system())
    run_jobs()
    assert void_notices(booking_id) == [(RECIPIENT, void_text(booking_id, "hi"))]


def test_her_code_came_on_whatsapp_so_does_the_notice(client, live, frozen):  # noqa: F811
    """Her drop-code SMS never arrived and a new code went to her on WhatsApp, where she
    chats with us: that is the code she holds, and the notice goes there too (an SMS to
    her does not arrive)."""
    with transaction() as s:
        sita = Person(phone=RECIPIENT, role="customer", preferred_language="en")
        s.add(sita)
        s.flush()
        s.add(Conversation(channel="whatsapp", contact=RECIPIENT.lstrip("+"),
                           person_id=sita.id, last_inbound_at=clock.now()))
    cannot_deliver(RECIPIENT, "undelivered", "30003")  # her SMS, not her WhatsApp
    booking_id, ramesh = assigned_booking(client)
    assert bodies_to(RECIPIENT)  # setup: the code went again, on WhatsApp
    assert sms(client, ramesh, "CANCEL")
    run_jobs()
    assert void_notices(booking_id) == [(f"whatsapp:{RECIPIENT}",
                                         void_text(booking_id, "en"))]


def test_no_notice_when_she_holds_no_code_the_give_back_voided(client, live,
                                                              frozen):  # noqa: F811
    """She said "wrong number" (her code went void then, a new one to the sender): a
    give-back after that tells her nothing (the sender holds the code now)."""
    booking_id, ramesh = assigned_booking(client)
    assert sms(client, RECIPIENT, "galat number")
    run_jobs()
    assert passed_on(booking_id)
    assert sms(client, ramesh, "CANCEL")
    run_jobs()
    assert void_notices(booking_id) == []


def test_no_notice_when_the_code_was_kept_from_the_night(client, live, frozen,  # noqa: F811
                                                         drop_code_night):  # noqa: F811
    """A job taken at 23:00 keeps her code for the morning: she holds none, so its
    give-back tells her nothing."""
    _, rider = make_partner("Ramesh", LAXMIPUR, lang="en")
    clock.freeze(datetime(2026, 11, 24, 17, 30, tzinfo=UTC))  # 23:00 India time
    booking_id = paid_booking()
    customer_speaks("en")
    start(booking_id)
    assert sms(client, rider, "1")
    run_jobs()
    assert not [b for b in bodies_to(RECIPIENT) if ref_of(booking_id) in b]
    assert sms(client, rider, "CANCEL")
    run_jobs()
    assert void_notices(booking_id) == []


# --- 2. codes the service makes are not ops' ---------------------------------------------


def ops_codes_left(client, leg_id: int, most: int = dispatch.OPS_CODES_PER_LEG + 1
                   ) -> list[int | str]:
    """Ops give drop codes for the leg until refused (at most ``most``): what each answer
    says is left, and the refusal's code."""
    ops = sign_in(client, OPS)
    said: list[int | str] = []
    for _ in range(most):
        r = new_code(client, ops, leg_id, "drop")
        if r.status_code != 200:
            said.append(r.get_json()["error"]["code"])
            break
        said.append(r.get_json()["codes_left"])
    return said


def test_a_code_made_for_a_wrong_number_leaves_ops_their_five(client, live,
                                                             frozen):  # noqa: F811
    booking_id, _ = assigned_booking(client)
    assert sms(client, RECIPIENT, "galat number")
    run_jobs()
    assert passed_on(booking_id), "setup: a new code went to the sender"
    assert ops_codes_left(client, leg_of(booking_id)) == [4, 3, 2, 1, 0, "too_many_codes"]


def test_a_code_made_for_a_new_sim_leaves_ops_their_five(client, live, frozen):  # noqa: F811
    from tests.test_partner_phone_s31 import NEW, _move

    pid, old = make_partner("Ramesh", LAXMIPUR, lang="en", on_duty=False)
    _, rider = make_partner("Suresh", LAXMIPUR, lang="en")
    booking_id = paid_booking(recipient=old)
    customer_speaks("en")
    start(booking_id)
    assert sms(client, rider, "1")
    run_jobs()
    r = _move(client, sign_in(client, OPS), pid, NEW)
    assert r.status_code == 200, r.get_json()
    run_jobs()
    assert last_code(NEW), "setup: a new code went to the new SIM"
    assert ops_codes_left(client, leg_of(booking_id)) == [4, 3, 2, 1, 0, "too_many_codes"]


def service_codes(leg_id: int, cause: str | None = None) -> int:
    """How many codes the service makes for the leg (new_leg_code by the system) before
    it is refused."""
    made = 0
    for _ in range(10):
        with transaction() as s:
            try:
                dispatch.new_leg_code(s, leg_id, "drop", Actor.system(), cause=cause,
                                      reason="test")
            except Conflict as exc:
                assert exc.code == "too_many_codes"
                return made
        made += 1
    raise AssertionError("the service's codes are not bounded")


def test_each_cause_of_the_services_codes_is_bounded_on_its_own(client, live,
                                                                frozen):  # noqa: F811
    booking_id, _ = assigned_booking(client)
    leg_id = leg_of(booking_id)
    limits = dispatch.SERVICE_CODES_PER_LEG
    assert service_codes(leg_id) == limits[dispatch.NEW_SIM_CODE]  # told by the booking
    assert service_codes(leg_id, dispatch.WRONG_NUMBER_CODE) == limits[
        dispatch.WRONG_NUMBER_CODE]
    assert ops_codes_left(client, leg_id, 1) == [dispatch.OPS_CODES_PER_LEG - 1]
    with transaction() as s:
        causes = sorted(a.details["cause"] for a in s.scalars(select(AuditEntry).where(
            AuditEntry.action == dispatch.OPS_NEW_CODE, AuditEntry.target == f"leg:{leg_id}")))
    assert causes == sorted([dispatch.NEW_SIM_CODE] * limits[dispatch.NEW_SIM_CODE]
                            + [dispatch.WRONG_NUMBER_CODE] * limits[dispatch.WRONG_NUMBER_CODE]
                            + ["ops"])


def test_a_code_for_a_number_that_said_wrong_number_counts_as_such(client, live,
                                                                    frozen):  # noqa: F811
    """Made by the system for a booking whose number said "wrong number", a code is of
    that cause: its budget, not the new SIM's."""
    booking_id, _ = assigned_booking(client)
    assert sms(client, RECIPIENT, "galat number")
    run_jobs()
    left = dispatch.SERVICE_CODES_PER_LEG[dispatch.WRONG_NUMBER_CODE] - 1  # one made
    assert service_codes(leg_of(booking_id)) == left


# --- 3. the code she holds, after review (task HK) ----------------------------------------
#
# Whether she holds the leg's code was read from the latest drop-code message alone. It is
# read now from the messages that carry the leg's current code: that message and its
# copies sent another way (wa-for-, sms-for-, tpl-for-), any of them that reached her.


def sita_on_whatsapp() -> None:
    """Sita, who reads English, chats with us on WhatsApp (its window is open)."""
    with transaction() as s:
        sita = Person(phone=RECIPIENT, role="customer", preferred_language="en")
        s.add(sita)
        s.flush()
        s.add(Conversation(channel="whatsapp", contact=RECIPIENT.lstrip("+"),
                           person_id=sita.id, last_inbound_at=clock.now()))


def drop_code_rows(booking_id: int) -> list[tuple[str, str, str]]:
    """(dedupe key, to, status) of the booking's drop-code messages and their copies."""
    with transaction() as s:
        return [(r.dedupe_key, r.to_addr, r.status) for r in s.scalars(
            select(OutboxMessage).where(
                OutboxMessage.booking_id == booking_id,
                OutboxMessage.dedupe_key.like("leg-%-dropotp-%")
                | OutboxMessage.dedupe_key.like("%-for-%"))
            .order_by(OutboxMessage.id))]


def test_her_code_sms_refused_for_stop_came_on_whatsapp_she_is_told(client, live,
                                                                    frozen):  # noqa: F811
    """Her drop-code SMS was refused (21610: she stopped our SMS) and the same code
    reached her as its WhatsApp copy (wa-for-<id>). The latest drop-code message is the
    refused SMS, but she holds the code: a give-back tells her, on WhatsApp."""
    sita_on_whatsapp()
    cannot_deliver(RECIPIENT, "undelivered", "21610")
    booking_id, ramesh = assigned_booking(client)
    rows = drop_code_rows(booking_id)
    assert [(to, status) for key, to, status in rows if key.startswith("leg-")] == [
        (RECIPIENT, "undelivered")], f"setup: {rows}"
    assert [to for key, to, status in rows if key.startswith("wa-for-")
            and status not in ("failed", "undelivered")] == [f"whatsapp:{RECIPIENT}"], (
        f"setup: the code reached her as the SMS's WhatsApp copy: {rows}")
    assert sms(client, ramesh, "CANCEL")
    run_jobs()
    assert void_notices(booking_id) == [(f"whatsapp:{RECIPIENT}",
                                         void_text(booking_id, "en"))], (
        f"she holds the code (on WhatsApp) and was not told it is void: {rows}")


def test_an_ops_code_withdrawn_unsent_leaves_her_nothing_to_be_told(client, live,
                                                                    frozen):  # noqa: F811
    """She holds o1 (delivered). Ops make a new code (ops1), to be sent; the rider gives
    the job back before it goes: ops1 is withdrawn unsent, and o1 was void the moment ops1
    was made. She holds no working code: nothing is said of one (and nothing of o1)."""
    booking_id, ramesh = assigned_booking(client)
    assert [s for k, _, s in drop_code_rows(booking_id)] == ["delivered"], "setup: o1"
    r = new_code(client, sign_in(client, OPS), leg_of(booking_id), "drop", send=True)
    assert r.status_code == 200, r.get_json()
    assert sms(client, ramesh, "CANCEL")
    run_jobs()
    assert [(k.rsplit("-", 1)[-1], s) for k, _, s in drop_code_rows(booking_id)][-1] == (
        "ops1", "failed"), "setup: ops1 was withdrawn unsent"
    assert void_notices(booking_id) == []


def test_an_ops_code_that_reached_her_is_the_one_made_void(client, live,
                                                           frozen):  # noqa: F811
    """Ops1 went and reached her (by SMS): the give-back voids it and she is told, once."""
    booking_id, ramesh = assigned_booking(client)
    r = new_code(client, sign_in(client, OPS), leg_of(booking_id), "drop", send=True)
    assert r.status_code == 200, r.get_json()
    run_jobs()
    assert drop_code_rows(booking_id)[-1][2] == "delivered", "setup: ops1 reached her"
    assert sms(client, ramesh, "CANCEL")
    run_jobs()
    assert void_notices(booking_id) == [(RECIPIENT, void_text(booking_id, "en"))]


def test_an_ops_code_refused_for_stop_that_came_on_whatsapp_is_told_there(
        client, live, frozen):  # noqa: F811
    """O1 reached her by SMS; she stopped our SMS since, and ops1's SMS was refused
    (21610), its WhatsApp copy reaching her: ops1 is the code she holds, told there."""
    sita_on_whatsapp()
    booking_id, ramesh = assigned_booking(client)
    cannot_deliver(RECIPIENT, "undelivered", "21610")
    r = new_code(client, sign_in(client, OPS), leg_of(booking_id), "drop", send=True)
    assert r.status_code == 200, r.get_json()
    run_jobs()
    rows = drop_code_rows(booking_id)
    assert rows[-1][0].startswith("wa-for-") and rows[-1][2] not in ("failed",
                                                                     "undelivered"), rows
    assert sms(client, ramesh, "CANCEL")
    run_jobs()
    assert void_notices(booking_id) == [(f"whatsapp:{RECIPIENT}",
                                         void_text(booking_id, "en"))]

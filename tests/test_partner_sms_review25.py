"""Review (rev1) of the partners' SMS side: replies read as the wrong command.

core.domain.dispatch.parse_command takes the command from the first known word of the
message ("ok", "haan", "job" win over "delivered", "off" after them), and
core.services.dispatch answers a bare give-back word or a yes with a stray number as if no
offer were open. Each test drives the signed /webhooks/sms path as tests/test_dispatch.py
does; each fails on the code as reviewed.
"""

from __future__ import annotations

import re

import pytest

from core import i18n
from core.adapters.db import transaction
from core.adapters.models import Leg
from tests.test_dispatch import (
    CUSTOMER,
    LAXMIPUR,
    RECIPIENT,
    frozen,  # noqa: F401  (fixture)
    last_code,
    legs_of,
    make_partner,
    offers,
    paid_booking,
    sms,
    start,
)

pytestmark = pytest.mark.db
PICK_MARK = "पार्सल उठाने"  # the sender's pickup-code SMS (Hindi customer)


def _carrying_with_an_offer_open(client, phone: str) -> tuple[int, str, int]:
    """The partner took job 1 and picked it up; job 2 is offered to them, not answered.
    Returns (job 1, the recipient's drop code for job 1, job 2)."""
    first = paid_booking()
    start(first)
    sms(client, phone, "1")
    sms(client, phone, f"PICK {last_code(CUSTOMER, PICK_MARK)}")
    job1 = legs_of(first)[0].id
    assert legs_of(first)[0].status == "picked_up"
    drop = last_code(RECIPIENT)
    second = paid_booking()
    start(second)
    job2 = legs_of(second)[0].id
    assert [o.status for o in offers(job2)] == ["open"]
    return job1, drop, job2


def _leg(leg_id: int) -> Leg:
    with transaction() as s:
        leg = s.get(Leg, leg_id)
        assert leg is not None
        return leg


@pytest.mark.parametrize(("body", "lang"), [
    ("ok done", "en"), ("ok off", "en"), ("हाँ, पहुँचा दिया", "hi")])
def test_ok_before_another_command_does_not_take_the_open_offer(
        client, live, frozen, body, lang):  # noqa: F811
    """Wrong: Ramesh carries job 1 and has an offer for job 2 open. He texts "ok done"
    (delivered), "ok off" (stop work) or "हाँ, पहुँचा दिया" (yes, delivered): the message
    is read as YES because its first word is a yes, and he is given job 2, which he never
    agreed to (giving it back counts against his record; "ok off" even asked for no more
    work). Should: a message that names another command (DROP, OFF) is no yes to the
    offer; job 2 stays open (answered as that command, or asked again)."""
    _, phone = make_partner("Ramesh", LAXMIPUR, lang=lang)
    _, _, job2 = _carrying_with_an_offer_open(client, phone)
    reply = sms(client, phone, body)
    # "ok off" answered as OFF closes the offers in hand as OFF always does (expired, not a
    # no: dispatch.set_duty), so the next partner need not wait; the others leave it open.
    left = ["expired"] if body == "ok off" else ["open"]
    assert [o.status for o in offers(job2)] == left, (
        f"{body!r} took job {job2} he never said yes to: {reply}")
    assert _leg(job2).partner_id is None


@pytest.mark.parametrize("body", [
    "OK delivered {code}", "Job {job} delivered {code}", "haan pahuncha diya {code}"])
def test_a_drop_with_its_code_after_ok_or_job_is_recorded(client, live, frozen,  # noqa: F811
                                                          body):
    """Wrong: "OK delivered 4821" is read as YES to an offer with code 4821 ("No open
    offer with code 4821."), and "Job 57 delivered 4821" as STATUS (the job list): the
    right drop code of the parcel he carries is never checked, the job stays "picked up"
    and his payout is not released, though he handed the parcel over and believes it
    done. Should: the message carries DROP's word and the code, and is a DROP: job 1 is
    delivered (the open offer for job 2 untouched)."""
    _, phone = make_partner("Ramesh", LAXMIPUR, lang="en")
    job1, drop, job2 = _carrying_with_an_offer_open(client, phone)
    reply = sms(client, phone, body.format(job=job1, code=drop))
    assert _leg(job1).status == "delivered", (
        f"{body!r} did not deliver job {job1}; answered {reply}")
    assert [o.status for o in offers(job2)] == ["open"]


@pytest.mark.parametrize(("body", "lang"), [("chhod do", "en"), ("रद्द करो", "hi")])
def test_a_bare_give_back_word_to_an_open_offer_refuses_it(client, live, frozen,  # noqa: F811
                                                           body, lang):
    """Wrong: Ramesh has no job, only an open offer, and answers it "chhod do" / "रद्द
    करो" (leave it / cancel). He is told "You have no job for this now. Send STATUS."
    and the offer stays open, so the next partner waits out its timeout and grace;
    "CANCEL <job>" on the same offer already says no to it (test_dispatch_edges). Should:
    with no job to give back and one offer open, the word says no to that offer."""
    _, phone = make_partner("Ramesh", LAXMIPUR, lang=lang)
    booking_id = paid_booking()
    start(booking_id)
    job = legs_of(booking_id)[0].id
    reply = sms(client, phone, body)
    assert [o.status for o in offers(job)] == ["declined"], reply
    assert reply == [i18n.t("dispatch.declined", lang, job=str(job))]


@pytest.mark.parametrize("body", ["Yes 10 min me aata hu", "haan ji 5 minute"])
def test_a_yes_with_a_number_that_is_no_job_is_not_told_there_is_no_offer(
        client, live, frozen, body):  # noqa: F811
    """Wrong: with one offer open, "Yes 10 min me aata hu" (yes, I come in 10 min) is
    answered "No open offer with code 10." The number is read as a job code, no job 10 was
    ever his, and the answer says no offer is open while his is: he believes the job gone
    and it expires unanswered. Should: a yes whose number names no job of his either takes
    the one open offer or is answered about it (its job named), never "no open offer"."""
    _, phone = make_partner("Ramesh", LAXMIPUR, lang="en")
    booking_id = paid_booking()
    start(booking_id)
    job = legs_of(booking_id)[0].id
    reply = sms(client, phone, body)
    taken = [o.status for o in offers(job)] == ["accepted"]
    named = bool(re.search(rf"(?<!\d){job}(?!\d)", reply[0]))
    assert taken or named, f"offer {job} is open, yet {body!r} was answered {reply}"

"""A partner's new SIM, the leftovers (session 32).

Parcels sent to the partner's old number (he was their recipient) stayed with it: a
stranger now at that number was told of them, and asking for "her" code got a new one.
They follow him to the new number now, a drop code the old number holds is made void and
a new one sent to him, and the rider holding the parcel hears the new number. A partner
asking for his code ("code nahi mila") with no work in hand nor offered gets one (with work,
tests/test_review_s32.py: it may be about that work's code). And his old number
is kept (people.former_phones, migration 0048) so that his erasure takes what was his at
it: its messages and chats until the move, the parcels sent to it.

Real PostgreSQL and Redis; time frozen.
"""

from __future__ import annotations

import pytest
from sqlalchemy import select

from core import i18n
from core.adapters.db import transaction
from core.adapters.models import Booking, Conversation, OutboxMessage, PartnerProfile, Person
from core.services import dispatch, outbox, partner_profile, retention
from core.services.conversation import SessionPorts
from tests.test_admin import _keep_root_handlers, run  # noqa: F401  (autouse fixture)
from tests.test_api import sign_in
from tests.test_dispatch import (
    CUSTOMER,
    LAXMIPUR,
    OPS,
    bodies_to,
    booking_status,
    frozen,  # noqa: F401  (fixture)
    last_code,
    legs_of,
    make_partner,
    paid_booking,
    run_jobs,
    sms,
    start,
)
from tests.test_partner_phone_s31 import NEW, _audits, _move

pytestmark = pytest.mark.db


def _reference(booking_id: int) -> str:
    with transaction() as s:
        booking = s.get(Booking, booking_id)
        assert booking is not None
        return booking.reference


def _recipient(booking_id: int) -> str | None:
    with transaction() as s:
        return s.scalar(select(Booking.recipient_phone).where(Booking.id == booking_id))


def _delivered(booking_id: int) -> None:
    with transaction() as s:
        booking = s.get(Booking, booking_id)
        assert booking is not None
        booking.status = "delivered"


def _under_way_to(phone: str) -> int:
    """A paid parcel to ``phone``, offered to the riders on duty."""
    booking_id = paid_booking(recipient=phone)
    start(booking_id)
    return booking_id


def test_parcels_coming_to_his_old_number_follow_him_with_a_new_code(
        client, live, frozen):  # noqa: F811
    pid, old = make_partner("Ramesh", LAXMIPUR, lang="en", on_duty=False)
    _, rider = make_partner("Suresh", LAXMIPUR, lang="en")
    on_way = _under_way_to(old)
    sms(client, rider, "1")
    run_jobs()  # his drop code went to the old SIM
    leg = legs_of(on_way)[0]
    old_code = last_code(old)
    assert bodies_to(old)[-1] == i18n.t("dispatch.drop_otp", "en", ref=_reference(on_way),
                                        otp=old_code)
    picked = sms(client, rider, f"PICK {last_code(CUSTOMER)}")
    assert old in picked[-1]  # the rider was told whom to call: the old number
    paid = paid_booking(recipient=old)  # no rider yet, no code
    done = paid_booking(recipient=old)
    _delivered(done)

    r = _move(client, sign_in(client, OPS), pid, NEW)
    assert r.status_code == 200, r.get_json()
    assert (_recipient(on_way), _recipient(paid), _recipient(done)) == (NEW, NEW, old)
    # A new code, to the new SIM, in his language; the old one is void.
    new_code = last_code(NEW)
    assert bodies_to(NEW)[-1] == i18n.t("dispatch.drop_otp_new", "en",
                                        ref=_reference(on_way), otp=new_code)
    assert legs_of(on_way)[0].drop_otp_hash != leg.drop_otp_hash
    # The rider hears the number to call now.
    assert bodies_to(rider)[-1] == i18n.t("dispatch.drop_contact", "en",
                                          job=dispatch.job_code(leg), name="Sita", phone=NEW)
    # The old SIM hears of the move only, nothing of his parcels.
    assert bodies_to(old)[-1] == i18n.t("sms.phone_moved_old", "en", last4=NEW[-4:])
    (entry,) = _audits("partner.phone")
    assert entry["parcels_moved"] == [_reference(on_way), _reference(paid)]
    assert entry["drop_codes_renewed"] == [_reference(on_way)]

    # A stranger at the old number asking for "her" code gets none, nor news of them.
    told_old = len(bodies_to(old))
    replies = sms(client, old, "code nahi mila")
    assert not any(_reference(on_way) in r or _reference(paid) in r for r in replies)
    assert len(bodies_to(old)) == told_old
    with transaction() as s:  # nor in a chat or a call from it
        stranger = Person(phone=old, role="customer")
        s.add(stranger)
        s.flush()
        conv = Conversation(channel="sms", contact=old, person_id=stranger.id,
                            step="start", state={}, misses=0, handoff=False)
        assert SessionPorts(s, stranger, conv)._coming_to_me() == []
        assert SessionPorts(s, stranger, conv).booking_status(_reference(on_way)) is None
        s.rollback()

    if old_code != new_code:  # one in 10,000 they are alike
        sms(client, rider, f"DROP {old_code}")
        assert booking_status(on_way) == "picked_up"
    sms(client, rider, f"DROP {new_code}")
    assert booking_status(on_way) == "delivered"


def test_a_drop_code_still_waiting_by_sms_goes_with_the_number(
        client, live, frozen):  # noqa: F811
    pid, old = make_partner("Ramesh", LAXMIPUR, lang="en", on_duty=False)
    _, rider = make_partner("Suresh", LAXMIPUR, lang="en")
    on_way = _under_way_to(old)
    sms(client, rider, "1")  # its drop code waits in the outbox (Twilio not reached yet)
    with transaction() as s:
        waiting = s.scalar(select(OutboxMessage).where(
            OutboxMessage.booking_id == on_way, OutboxMessage.dedupe_key.like("%dropotp%")))
        assert waiting is not None and waiting.status == "pending"
        code_id = waiting.id
    with transaction() as s:
        said = partner_profile.set_phone(s, pid, NEW, actor="ops:test")
    assert "1 parcel(s) coming to him follow him (0 with a new drop code)" in said.message
    with transaction() as s:
        row = s.get(OutboxMessage, code_id)
        assert row is not None and (row.to_addr, row.status) == (NEW, "pending")
    assert _recipient(on_way) == NEW
    (entry,) = _audits("partner.phone")
    assert entry["parcels_moved"] == [_reference(on_way)]
    assert entry["drop_codes_renewed"] == []  # nobody else could hold it


def test_a_partner_asking_for_his_drop_code_gets_a_new_one(client, live, frozen):  # noqa: F811
    """He is a recipient too: "code nahi mila" read as a NO to an offer, and no code came."""
    _, phone = make_partner("Ramesh", LAXMIPUR, lang="en", on_duty=False)
    _, rider = make_partner("Suresh", LAXMIPUR, lang="en")
    on_way = _under_way_to(phone)
    # No rider yet: the code will come.
    assert sms(client, phone, "code nahi mila") == [
        i18n.t("sms.recipient_coming", "en", ref=_reference(on_way))]
    sms(client, rider, "1")
    run_jobs()
    first = last_code(phone)
    assert sms(client, phone, "code nahi mila") == []  # the SMS with the code is the answer
    again = last_code(phone)
    assert bodies_to(phone)[-1] == i18n.t("dispatch.drop_otp_new", "en",
                                          ref=_reference(on_way), otp=again)
    if first != again:  # one in 10,000 they are alike
        sms(client, rider, f"PICK {last_code(CUSTOMER)}")
        sms(client, rider, f"DROP {first}")
        assert booking_status(on_way) == "picked_up"
        sms(client, rider, f"DROP {again}")
        assert booking_status(on_way) == "delivered"


def test_his_erasure_takes_what_was_his_at_the_old_number(client, live, frozen):  # noqa: F811
    pid, old = make_partner("Ramesh", LAXMIPUR, lang="en", on_duty=False)
    received = paid_booking(recipient=old)
    _delivered(received)
    with transaction() as s:
        person = s.scalar(select(Person).where(Person.phone == old))
        assert person is not None
        person_id = person.id
        offer = outbox.queue_message(s, channel="sms", to=old, body="Job 7: Bettiah, blue gate",
                                     dedupe_key="test-offer")
        assert offer is not None
        s.get(OutboxMessage, offer).status = "delivered"  # type: ignore[union-attr]
        chat = Conversation(channel="whatsapp", contact=old[1:], person_id=person.id,
                            step="start", state={}, misses=0, handoff=False)
        call = Conversation(channel="voice", contact=old, person_id=person.id,
                            step="menu", state={"lang": "en"}, misses=0, handoff=False)
        s.add_all([chat, call])
        s.flush()
        left = [chat.id, call.id]  # let go at the move
    with transaction() as s:
        partner_profile.set_phone(s, pid, NEW, actor="ops:test")
    with transaction() as s:
        former = s.scalar(select(Person.former_phones).where(Person.id == person_id))
        assert former is not None and list(former) == [old]
    # Someone else at the old number since: what is theirs stays theirs.
    later = paid_booking(recipient=old)
    _delivered(later)
    with transaction() as s:
        theirs = outbox.queue_message(s, channel="sms", to=old, body="Booking 42 is on its way",
                                      dedupe_key="test-theirs")
        stranger = Person(phone=old, role="customer")  # who wrote from it since
        s.add(stranger)
        s.flush()
        s.add(Conversation(channel="sms", contact=old, person_id=stranger.id, step="start",
                           state={}, misses=0, handoff=False))
    with transaction() as s:
        p = s.get(PartnerProfile, pid)
        assert p is not None
        p.kyc_status = "suspended"
    with transaction() as s:
        done = retention.erase_person(s, person_id)
    assert done.changed
    with transaction() as s:
        row = s.get(OutboxMessage, offer)
        assert row is not None and (row.to_addr, row.body) == (retention.ERASED_ADDR,
                                                               retention.REDACTED)
        moved_told = s.scalar(select(OutboxMessage).where(
            OutboxMessage.dedupe_key.like(f"phone-moved-{pid}-%-old")))
        assert moved_told is not None and moved_told.to_addr == retention.ERASED_ADDR
        row = s.get(OutboxMessage, theirs)
        assert row is not None and (row.to_addr, row.body) == (old, "Booking 42 is on its way")
        assert [s.get(Conversation, c).contact for c in left] == [  # type: ignore[union-attr]
            f"erased:{c}" for c in left]
        assert s.scalar(select(Conversation.channel).where(
            Conversation.contact == old)) == "sms"  # the new holder's stays
        assert (s.get(Booking, received).recipient_phone,  # type: ignore[union-attr]
                s.get(Booking, later).recipient_phone) == (None, old)  # type: ignore[union-attr]
        person = s.get(Person, person_id)
        assert person is not None and person.former_phones is None and person.phone is None
    with transaction() as s:  # run again: nothing left
        assert not retention.erase_person(s, person_id).changed

"""Ops move a partner to a new SIM (session 31): nothing could change a partner's phone.

``PUT /api/v1/ops/partners/<id>/phone`` moves them under the partner's row lock: the next
offer goes to the new number, an SMS from the old one is a stranger's, the partner's app
sessions end, both numbers are told by SMS, audited with both numbers masked. A number
that is another person's (a contact's too) is refused. And the partner list filters by
KYC status.

Real PostgreSQL and Redis; time frozen.
"""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import event, select, text

from core import i18n
from core.adapters import db
from core.adapters.api_models import AuditEntry
from core.adapters.db import transaction
from core.adapters.dialog_models import Handoff
from core.adapters.models import Conversation, OutboxMessage, PartnerProfile, Person
from core.domain.errors import Conflict
from core.services import outbox, partner_profile
from tests.test_admin import _keep_root_handlers, run  # noqa: F401  (autouse fixture)
from tests.test_api import API, sign_in
from tests.test_dispatch import (
    CUSTOMER,
    LAXMIPUR,
    OPS,
    bodies_to,
    booking_status,
    frozen,  # noqa: F401  (fixture)
    legs_of,
    make_partner,
    offers,
    paid_booking,
    sms,
    start,
)

pytestmark = pytest.mark.db

NEW = "+919812345601"


def _audits(action: str) -> list[dict]:
    with transaction() as s:
        return [dict(a.details, actor=a.actor, target=a.target) for a in s.scalars(
            select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.id))]


def _move(client, ops, pid: int, phone: str, **extra):
    return client.put(f"{API}/ops/partners/{pid}/phone", headers=ops,
                      json={"phone": phone, **extra})


def test_the_next_offer_goes_to_the_new_sim_and_the_old_number_is_a_stranger(
        client, live, frozen):  # noqa: F811
    pid, old = make_partner("Ramesh", LAXMIPUR, lang="en")
    app = sign_in(client, old)  # the partner app on the old phone
    assert client.get(f"{API}/partners/me", headers=app).status_code == 200
    with transaction() as s:  # he once called the IVR from the old phone, and asked for
        person_id = s.scalar(select(Person.id).where(Person.phone == old))  # a person
        conv = Conversation(channel="voice", contact=old, person_id=person_id, step="menu",
                            state={"lang": "en"}, misses=0, handoff=True)
        s.add(conv)
        s.flush()
        s.add(Handoff(conversation_id=conv.id, person_id=person_id, channel="voice",
                      reason="asked", status="waiting"))
    ops = sign_in(client, OPS)
    r = _move(client, ops, pid, "98123 45601", note="new SIM, old one +919812388802 lost")
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["phone_masked"] == "+91******5601"
    # The old phone's app cannot act for him any more.
    assert client.get(f"{API}/partners/me", headers=app).status_code == 401
    # Both numbers told, in his language; the old one with the new one's last 4 digits.
    assert bodies_to(NEW) == [i18n.t("sms.phone_moved_new", "en")]
    assert bodies_to(old)[-1] == i18n.t("sms.phone_moved_old", "en", last4="5601")
    (entry,) = _audits("partner.phone")
    assert (entry["before"], entry["after"]) == (f"+91******{old[-4:]}", "+91******5601")
    assert entry["target"] == f"partner:{pid}" and entry["sessions_ended"] == 1
    assert old not in str(entry) and NEW not in str(entry) and "9812388802" not in str(entry)
    with transaction() as s:  # the old phone calling is a new contact, not him
        conv = s.scalar(select(Conversation).where(Conversation.contact == old))
        assert conv is not None and conv.person_id is None and conv.state == {}
        # Review: his request for a person there ends with it (an operator's close would
        # have put the stranger now at that number back at the menu).
        assert s.scalar(select(Handoff.status).where(
            Handoff.conversation_id == conv.id)) == "closed"

    booking_id = paid_booking()
    start(booking_id)
    leg = legs_of(booking_id)[0]
    (offer,) = offers(leg.id)
    assert offer.partner_id == pid
    assert bodies_to(NEW)[-1].startswith(f"Job {leg.id}:"), bodies_to(NEW)
    assert not any(b.startswith("Job ") for b in bodies_to(old))
    # A yes from the old SIM is a stranger's: the job is not taken.
    sms(client, old, "1")
    assert legs_of(booking_id)[0].partner_id is None
    assert booking_status(booking_id) == "dispatching"
    # From the new SIM it is his.
    replies = sms(client, NEW, "1")
    assert legs_of(booking_id)[0].partner_id == pid, replies
    # The same number again changes nothing, audits nothing, sends nothing.
    sent = len(bodies_to(NEW))
    r = _move(client, ops, pid, NEW)
    assert r.status_code == 200 and len(_audits("partner.phone")) == 1
    assert len(bodies_to(NEW)) == sent


def test_a_number_that_is_someone_elses_or_no_number_is_refused(
        client, live, frozen):  # noqa: F811
    pid, old = make_partner("Ramesh", LAXMIPUR, lang="en", on_duty=False)
    _, other = make_partner("Suresh", LAXMIPUR, lang="en", on_duty=False)
    paid_booking()  # CUSTOMER has a booking: an account
    with transaction() as s:  # someone who only called once from this number
        s.add(Person(phone="+919812345602", role="customer"))
        s.add(Person(phone=None, wa_id="919812345603", role="customer"))  # WhatsApp only
    ops = sign_in(client, OPS)
    for number, said in ((other, "a partner's account"), (CUSTOMER, "a customer's account"),
                         (OPS, "an operator's account"), ("+919812345602", "erase that"),
                         ("98123 45603", "a contact")):
        r = _move(client, ops, pid, number)
        assert r.status_code == 409, (number, r.get_json())
        error = r.get_json()["error"]
        assert error["code"] == "phone_taken" and said in error["message"], error
        assert number[-6:] not in error["message"]  # masked
    for bad in ("12345", "+91 5812345678", "98123 456789", "call me", " "):
        r = _move(client, ops, pid, bad)
        assert r.status_code == 422, (bad, r.get_json())  # as the ops search says it
        assert r.get_json()["error"]["code"] == "bad_phone"
    assert _move(client, ops, 999999, NEW).status_code == 404
    with transaction() as s:
        assert s.scalar(select(Person.phone).join(PartnerProfile)
                        .where(PartnerProfile.id == pid)) == old
    assert _audits("partner.phone") == [] and bodies_to(NEW) == []
    with transaction() as s:
        p = s.get(PartnerProfile, pid)
        assert p is not None
        p.first_name = ""  # as an erasure leaves the profile
    r = _move(client, ops, pid, NEW)
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "erased", r.get_json()


def test_what_waits_for_the_old_number_goes_to_the_new_one_and_its_stop_stays(
        client, live, frozen):  # noqa: F811
    pid, old = make_partner("Ramesh", LAXMIPUR, lang="hi", on_duty=False)
    with transaction() as s:
        waiting = outbox.queue_message(s, channel="sms", to=old, body="Job 7: ...",
                                       dedupe_key="test-waiting", work=True)
        assert waiting is not None
        person = s.scalar(select(Person).where(Person.phone == old))
        assert person is not None
        person.sms_opted_out = True  # the old SIM sent STOP since
        person.wa_id = old[1:]  # and chatted on WhatsApp
        s.add(Conversation(channel="whatsapp", contact=old[1:], person_id=person.id,
                           step="start", state={}, misses=0, handoff=False))
    with transaction() as s:
        partner_profile.set_phone(s, pid, NEW, actor="ops:test")
    with transaction() as s:
        row = s.get(OutboxMessage, waiting)
        assert row is not None and (row.to_addr, row.status) == (NEW, "pending")
        person = s.scalar(select(Person).where(Person.phone == NEW))
        assert person is not None and not person.sms_opted_out  # the new SIM said no STOP
        assert person.wa_id is None  # the old number's WhatsApp is not his either
        assert s.scalar(select(Conversation.person_id).where(
            Conversation.contact == old[1:])) is None
        # The old number's STOP is kept for it; the move's SMS to it is not sent.
        assert outbox._opted_out(s, "sms", old, True)
        told = s.scalar(select(OutboxMessage).where(
            OutboxMessage.to_addr == NEW, OutboxMessage.dedupe_key.like("phone-moved-%")))
        assert told is not None and told.body == i18n.t("sms.phone_moved_new", "hi")


def test_stops_stay_with_their_numbers_both_ways(client, live, frozen):  # noqa: F811
    """Review: a STOP kept for the new number (its erased last holder sent it) was not
    carried onto the partner, so the move's SMS and his offers went to a number that had
    stopped us (Twilio refuses them, 21610); and the old number's WhatsApp STOP was not
    kept for it, while the partner carried it to the new SIM."""
    pid, old = make_partner("Ramesh", LAXMIPUR, lang="hi", on_duty=False)
    with transaction() as s:
        outbox.keep_opt_out(s, [NEW], whatsapp=False, sms=True)  # an erased holder's STOP
        person = s.scalar(select(Person).where(Person.phone == old))
        assert person is not None
        person.opted_out = True  # the old number stopped us on WhatsApp
    with transaction() as s:
        partner_profile.set_phone(s, pid, NEW, actor="ops:test")
    with transaction() as s:
        person = s.scalar(select(Person).where(Person.phone == NEW))
        assert person is not None
        assert person.sms_opted_out and not person.opted_out
        assert outbox._opted_out(s, "whatsapp", "whatsapp:" + old, False)
        assert not s.scalar(select(OutboxMessage.id).where(
            OutboxMessage.to_addr == NEW, OutboxMessage.status == "pending"))


def test_a_partner_with_a_job_in_hand_is_not_moved(client, live, frozen):  # noqa: F811
    """Review: his job's codes (a Point handover's) went to the old SIM, lost or someone
    else's now, and the new one has none: refused until ops take the job back."""
    pid, old = make_partner("Ramesh", LAXMIPUR, lang="en")
    booking_id = paid_booking()
    start(booking_id)
    sms(client, old, "1")
    leg = legs_of(booking_id)[0]
    assert leg.partner_id == pid
    r = _move(client, sign_in(client, OPS), pid, NEW)
    assert r.status_code == 409, r.get_json()
    error = r.get_json()["error"]
    assert error["code"] == "partner_has_jobs" and str(leg.id) in error["message"], error
    with transaction() as s:
        assert s.scalar(select(Person.id).where(Person.phone == old)) is not None
    assert _audits("partner.phone") == []


def test_two_partners_moved_to_one_number_at_once_one_is_refused(
        client, live, frozen):  # noqa: F811
    first, _ = make_partner("Ramesh", LAXMIPUR, lang="en", on_duty=False)
    second, _ = make_partner("Suresh", LAXMIPUR, lang="en", on_duty=False)
    outcome: list[BaseException | None] = []
    with transaction() as s:
        partner_profile.set_phone(s, first, NEW, actor="ops:a")
        s.flush()

        def other() -> None:  # waits at the number's unique index for the first commit
            try:
                with transaction() as s2:
                    partner_profile.set_phone(s2, second, NEW, actor="ops:b")
                outcome.append(None)
            except BaseException as exc:  # noqa: BLE001 (looked at below)
                outcome.append(exc)

        t = threading.Thread(target=other)
        t.start()
        t.join(0.5)  # a bound for the check below, not a wait the test relies on
        assert t.is_alive(), "the second move did not wait for the first"
    t.join(30)
    (error,) = outcome
    assert isinstance(error, Conflict) and error.code == "phone_taken", error
    assert len(_audits("partner.phone")) == 1


def test_the_partner_list_filters_by_kyc(client, live, frozen):  # noqa: F811
    verified, _ = make_partner("Ramesh", LAXMIPUR, on_duty=False)
    pending, _ = make_partner("Suresh", LAXMIPUR, on_duty=False, kyc_status="pending")
    suspended, _ = make_partner("Mahesh", LAXMIPUR, on_duty=False, kyc_status="suspended")
    ops = sign_in(client, OPS)
    for status, ids in (("verified", [verified]), ("pending", [pending]),
                        ("suspended", [suspended]), ("rejected", [])):
        r = client.get(f"{API}/ops/partners?kyc={status}", headers=ops)
        assert r.status_code == 200, r.get_json()
        assert [row["id"] for row in r.get_json()["items"]] == ids, status
        assert {row["kyc_status"] for row in r.get_json()["items"]} <= {status}
    r = client.get(f"{API}/ops/partners", headers=ops)
    assert [row["id"] for row in r.get_json()["items"]] == [verified, pending, suspended]
    for bad in ("approved", "VERIFIED", ""):
        r = client.get(f"{API}/ops/partners?kyc={bad}", headers=ops)
        assert r.status_code == 422, (bad, r.get_json())  # as other invalid filters
        assert r.get_json()["error"]["code"] == "bad_kyc"


# --- the open bookings to a number, by their own index (migration 0047) ------------------

OPEN = ("paid", "dispatching", "assigned", "picked_up", "in_transit")
# A shop that takes parcels every day: 300 delivered to its number, two under way.
SHOP = "+919812345699"
FILL = f"""
INSERT INTO people (phone, role, opted_out) VALUES ('+919812345698', 'customer', false);
INSERT INTO bookings (reference, customer_id, channel, status, pickup_lat, pickup_lng,
    drop_lat, drop_lng, speed_tier, vehicle_type, distance_m, fare, total_paise,
    commission_paise, partner_share_paise, version, recipient_phone)
SELECT lpad(g::text, 8, '0'), (SELECT id FROM people WHERE phone = '+919812345698'),
    'sms', CASE WHEN g <= 2 THEN 'in_transit' ELSE 'delivered' END, 26.8, 84.5, 26.9,
    84.6, 'standard', 'bicycle', 5000, '{{}}', 10000, 2000, 8000, 1,
    CASE WHEN g <= 302 THEN '{SHOP}' ELSE '+9198' || lpad(g::text, 8, '0') END
FROM generate_series(1, 2000) g;
ANALYZE bookings;
"""
# As conversation._coming_to_me asks (partner_sms._parcel_coming filters alike).
LOOKUP = ("SELECT b.id FROM bookings b WHERE b.recipient_phone = $1 AND b.status IN ({}) "
          "AND b.customer_id <> $2 ORDER BY b.created_at DESC, b.id DESC LIMIT 3")


def _index_of(conn, mode: str, statuses: str, types: str, args: str) -> set[str]:
    conn.execute(text(f"SET LOCAL plan_cache_mode = {mode}"))
    conn.execute(text(f"PREPARE lookup({types}) AS {LOOKUP.format(statuses)}"))
    plan = conn.execute(text(f"EXPLAIN (FORMAT JSON) EXECUTE lookup({args})")).scalar()
    conn.execute(text("DEALLOCATE lookup"))

    def walk(node: dict) -> set[str]:
        found = {node["Index Name"]} if "Index Name" in node else set()
        return found.union(*(walk(n) for n in node.get("Plans", [])))

    return walk(plan[0]["Plan"])


def test_the_open_bookings_to_a_number_have_their_own_index(database):
    with db.engine().connect() as conn:
        definition = conn.scalar(text(
            "SELECT pg_get_indexdef(indexrelid) FROM pg_index "
            "WHERE indexrelid = to_regclass('ix_bookings_open_recipient_phone') "
            "AND indisvalid"))
        assert definition is not None, "migration 0047 not applied"
        assert "(recipient_phone) WHERE" in definition
        assert all(f"'{s}'" in definition for s in OPEN), definition
        conn.execute(text(FILL))
        conn.execute(text("SET LOCAL enable_seqscan = off"))  # a small table here
        literal = ", ".join(f"'{s}'" for s in OPEN)
        bound = ", ".join(f"${n}" for n in range(3, 3 + len(OPEN)))
        values = ", ".join(f"'{s}'" for s in OPEN)
        # Statuses written in the query: used in a prepared statement's generic plan too.
        assert _index_of(conn, "force_generic_plan", literal, "text, int",
                         f"'{SHOP}', 1") == {"ix_bookings_open_recipient_phone"}
        # Bound, as SQLAlchemy sends an IN list: used while the plan sees the values ...
        types = "text, int" + ", text" * len(OPEN)
        assert _index_of(conn, "force_custom_plan", bound, types,
                         f"'{SHOP}', 1, {values}") == {"ix_bookings_open_recipient_phone"}
        # ... and not in a generic plan, which cannot prove the index's predicate from
        # them: psycopg prepares a statement on its 5th run, PostgreSQL goes generic after.
        assert _index_of(conn, "force_generic_plan", bound, types,
                         f"'{SHOP}', 1, {values}") != {"ix_bookings_open_recipient_phone"}
        conn.rollback()


def test_the_lookups_of_parcels_coming_to_a_number_write_their_statuses_into_the_sql(
        database):
    # A generic plan uses the partial index only if it sees them (the test above).
    from core.services import partner_sms
    from core.services.conversation import SessionPorts

    statements: list[str] = []

    def seen(conn, cursor, statement, *args) -> None:
        if "recipient_phone" in statement and "FROM bookings" in statement:
            statements.append(statement)

    with transaction() as s:
        person = Person(phone=SHOP, role="customer")
        s.add(person)
        s.flush()
        conv = Conversation(channel="sms", contact=SHOP, person_id=person.id, step="start",
                            state={}, misses=0, handoff=False)
        event.listen(s.connection(), "before_cursor_execute", seen)
        partner_sms._parcel_coming(s, SHOP, person)
        SessionPorts(s, person, conv)._coming_to_me()
        s.rollback()
    assert len(statements) == 2
    for statement in statements:
        assert "status IN ('paid', 'dispatching', 'assigned', 'picked_up', 'in_transit')" \
            in statement, statement

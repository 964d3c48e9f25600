"""Operators page every ops list by cursor (?after=<next_after>): each row comes exactly once
and in the list's order, even while rows are added or removed between two page reads
(paging by offset then skips or repeats rows: shown here too, as the reason for cursors);
a cursor we did not make, one of another list, or a cursor with an offset is a precise 400
that echoes nothing the client wrote in it."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from itertools import count
from urllib.parse import urlencode

import pytest
from sqlalchemy import select, update

from core import clock
from core.adapters.db import transaction
from core.adapters.dialog_models import Handoff
from core.adapters.models import Conversation, PartnerProfile, Person
from core.adapters.payment_models import ReconciliationMismatch
from core.domain.booking import Actor
from core.domain.pricing import ParcelCategory, SizeBucket, SpeedTier, WeightBucket
from core.services.booking import ParcelSpec, Place, create_booking
from tests.test_api import API, sign_in
from tests.test_dispatch import BETTIAH, LAXMIPUR, make_partner, make_point

pytestmark = pytest.mark.db

CUSTOMER = "+919812355501"
OPERATOR = "+919812355509"
T0 = datetime(2025, 3, 1, 9, 30, 0, 123456, tzinfo=UTC)
_serial = count(1)


# --- rows of each list ---------------------------------------------------------------------


def add_bookings(n: int) -> None:
    """n quoted bookings, one leg each (so the legs list grows with them)."""
    with transaction() as s:
        customer = s.scalar(select(Person).where(Person.phone == CUSTOMER))
        if customer is None:
            customer = Person(phone=CUSTOMER, name="Meena", role="customer")
            s.add(customer)
            s.flush()
        for _ in range(n):
            create_booking(
                s, customer_id=customer.id, channel="app",
                pickup=Place(*LAXMIPUR, pincode="845450", post_office="Laxmipur BO"),
                drop=Place(*BETTIAH, pincode="845438", post_office="Bettiah HO"),
                parcel=ParcelSpec(ParcelCategory.DOCUMENTS, SizeBucket.BAG, WeightBucket.W5),
                tier=SpeedTier.STANDARD, recipient_name="Sita",
                recipient_phone="+919876543210", actor=Actor("customer", str(customer.id)))


def add_partners(n: int) -> None:
    home = make_point(f"Keyset Point {next(_serial)}", *LAXMIPUR)
    for _ in range(n):
        make_partner(f"Rider{next(_serial)}", LAXMIPUR, point_id=home)


def add_handoffs(n: int) -> None:
    """n people waiting; two by two at the same minute, and the later ids the older ones,
    so the list's order (oldest first, then by id) is not the order of the ids."""
    with transaction() as s:
        for i in range(n):
            conv = Conversation(channel="whatsapp",
                                contact=f"whatsapp:+91981236{next(_serial):04d}")
            s.add(conv)
            s.flush()
            s.add(Handoff(conversation_id=conv.id, channel="whatsapp", reason="asked",
                          status="waiting", created_at=T0 + timedelta(minutes=(n - i) // 2)))


def add_mismatches(n: int, at: datetime = T0) -> None:
    """n open mismatches, two by two first found at the same time (the id breaks the tie),
    and last seen in the other order: the list goes by when they were found."""
    with transaction() as s:
        for i in range(n):
            found = at + timedelta(minutes=i // 2)
            s.add(ReconciliationMismatch(
                kind="missing_in_ledger", entity="payment",
                gateway_id=f"pay_keyset{next(_serial)}", detail="not in the ledger",
                first_seen_at=found, last_seen_at=at + timedelta(hours=1, minutes=-i)))


def close_handoff(row: dict) -> None:
    with transaction() as s:
        s.execute(update(Handoff).where(Handoff.id == row["id"]).values(status="closed"))


def off_duty(row: dict) -> None:
    with transaction() as s:
        s.execute(update(PartnerProfile).where(PartnerProfile.id == row["id"])
                  .values(on_duty=False))


@dataclass(frozen=True)
class OpsList:
    path: str
    filters: dict[str, str]
    add: Callable[[int], None]
    row_key: str  # what names a row in the answer
    # Between two page reads: True adds newer rows (a newest-first list), otherwise the
    # given change takes the first row of page 1 out of the list.
    churn: Callable[[dict], None] | None = None


LISTS = {
    "bookings": OpsList("/ops/bookings", {}, add_bookings, "reference"),
    "legs": OpsList("/ops/legs", {}, add_bookings, "id"),
    "partners": OpsList("/ops/partners", {"on_duty": "true"}, add_partners, "id", off_duty),
    "handoffs": OpsList("/ops/handoffs", {}, add_handoffs, "id", close_handoff),
    "mismatches": OpsList("/ops/reconciliation/mismatches", {}, add_mismatches, "id"),
}


@pytest.fixture
def ops(client) -> dict[str, str]:
    clock.freeze(T0 + timedelta(days=1))  # bookings and tokens made "now", after the rows
    return sign_in(client, OPERATOR, role="ops")


def get(client, ops: dict[str, str], lst: OpsList, **params: object):
    return client.get(f"{API}{lst.path}?{urlencode({**lst.filters, **params})}", headers=ops)


def page(client, ops: dict[str, str], lst: OpsList, **params: object) -> dict:
    r = get(client, ops, lst, **params)
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def keys(items: list[dict], lst: OpsList) -> list[object]:
    return [item[lst.row_key] for item in items]


def read_on(client, ops, lst: OpsList, *, after: str | None = None, offset: int | None = None,
            limit: int = 2) -> list[object]:
    """Every row from a cursor (or an offset) to the end of the list, page by page."""
    seen: list[object] = []
    while True:
        params: dict[str, object] = {"limit": limit}
        if after is not None:
            params["after"] = after
        if offset is not None:
            params["offset"] = offset
        got = page(client, ops, lst, **params)
        seen += keys(got["items"], lst)
        if after is not None:
            assert got["next_offset"] is None  # by cursor, nobody counts rows
        if got["next_after"] is None:
            assert got["next_offset"] is None
            return seen
        if after is not None or offset is None:
            after, offset = got["next_after"], None
        else:
            offset = got["next_offset"]


# --- every row once, in order --------------------------------------------------------------


@pytest.mark.parametrize("name", LISTS)
def test_every_list_reads_to_its_end_by_cursor_each_row_once_in_its_order(client, ops, name):
    lst = LISTS[name]
    lst.add(7)
    whole = keys(page(client, ops, lst, limit=100)["items"], lst)  # the list's own order
    assert len(whole) == len(set(whole)) == 7
    first = page(client, ops, lst, limit=2)
    assert keys(first["items"], lst) == whole[:2] and first["next_offset"] == 2
    by_cursor = whole[:2] + read_on(client, ops, lst, after=first["next_after"])
    assert by_cursor == whole
    assert read_on(client, ops, lst, limit=3) == whole  # the first page has no cursor
    assert read_on(client, ops, lst, offset=0, limit=3) == whole  # offsets work as they did
    last = page(client, ops, lst, limit=7)
    assert last["next_after"] is None and last["next_offset"] is None


# --- rows added or removed between two page reads ------------------------------------------


@pytest.mark.parametrize("name", LISTS)
def test_rows_added_or_removed_while_paging_skip_or_repeat_nothing_by_cursor(client, ops, name):
    lst = LISTS[name]
    lst.add(8)
    whole = keys(page(client, ops, lst, limit=100)["items"], lst)
    first = page(client, ops, lst, limit=3)
    assert keys(first["items"], lst) == whole[:3]
    if lst.churn is None:  # newest first: two newer rows come in at the top
        clock.freeze(clock.now() + timedelta(minutes=1))
        if name == "mismatches":
            add_mismatches(2, at=T0 + timedelta(hours=1))
        else:
            lst.add(2)
        shift = 2
    else:  # a row of page 1 leaves the list (closed, off duty)
        lst.churn(first["items"][0])
        shift = -1
    by_cursor = read_on(client, ops, lst, after=first["next_after"], limit=3)
    by_offset = read_on(client, ops, lst, offset=first["next_offset"], limit=3)

    assert by_cursor == whole[3:]  # every row not shown yet, once, in order
    if shift > 0:  # by offset, the last rows of page 1 come again
        assert by_offset == whole[3 - shift:]
    else:  # by offset, the first row not shown yet is never shown
        assert by_offset == whole[4:]


# --- mismatches: in the order they were found, whatever each run sees again ----------------


def test_mismatches_come_newest_found_first_by_cursor_and_by_offset_alike(client, ops):
    add_mismatches(6)  # last seen in the other order
    with transaction() as s:
        rows = s.execute(select(ReconciliationMismatch.first_seen_at,
                                ReconciliationMismatch.id)).all()
    newest_found_first = [i for _, i in sorted(rows, reverse=True)]
    lst = LISTS["mismatches"]
    assert read_on(client, ops, lst, limit=4) == newest_found_first  # on by cursor
    assert read_on(client, ops, lst, offset=0, limit=4) == newest_found_first


@pytest.mark.parametrize("include_resolved", [False, True])
def test_a_reconciliation_run_between_two_page_reads_loses_no_mismatch(client, ops, live,
                                                                       include_resolved):
    """Each hourly run marks every open mismatch it finds again as seen now: an operator
    paging across a run still gets each row not read yet, once, in the first page's order
    (paging on last_seen_at, the next page came empty)."""
    from core.services import reconciliation
    from sandbox import razorpay as emu

    for amount in (100, 200, 300, 400, 500):
        emu.create_payment(amount)  # paid at the gateway, unknown to the ledger
    assert reconciliation.run()["mismatches"] == 5
    lst = replace(LISTS["mismatches"], filters={"include_resolved": str(include_resolved).lower()})
    whole = keys(page(client, ops, lst, limit=100)["items"], lst)
    first = page(client, ops, lst, limit=2)
    clock.freeze(clock.now() + timedelta(hours=1))
    emu.create_payment(600)  # found by this run: newer than page 1, so not on the next pages
    assert reconciliation.run()["mismatches"] == 6
    with transaction() as s:  # the run did see them again
        assert set(s.scalars(select(ReconciliationMismatch.last_seen_at))) == {clock.now()}

    assert read_on(client, ops, lst, after=first["next_after"]) == whole[2:]
    assert keys(page(client, ops, lst, limit=100)["items"], lst)[1:] == whole  # one order


# --- cursors we did not make ---------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def cursor(body: object) -> str:
    return b64(json.dumps(body).encode())


GOOD_KEY = {"v": 1, "l": "ops.bookings", "k": [5]}


@pytest.mark.parametrize("after,why", [
    ("not a cursor!", "garbled"),  # outside the alphabet
    ("abcde", "garbled"),  # not a whole number of bytes
    ("पेज", "garbled"),  # not even ASCII
    (b64(b"\xff\xfe\x00"), "garbled"),  # not UTF-8
    (b64(b"{not json"), "garbled"),
    (cursor([1, "ops.bookings", [5]]), "not a cursor of ours"),
    (cursor({**GOOD_KEY, "x": 1}), "not a cursor of ours"),
    (cursor({**GOOD_KEY, "v": 2}), "another version"),
    (cursor({**GOOD_KEY, "k": [5, 6]}), "does not fit"),
    (cursor({**GOOD_KEY, "k": ["5"]}), "no row id"),
    (cursor({**GOOD_KEY, "k": [True]}), "no row id"),
    (cursor({**GOOD_KEY, "k": [0]}), "no row id"),
    (cursor({**GOOD_KEY, "k": [2**31]}), "no row id"),  # beyond a PostgreSQL integer
    (cursor({**GOOD_KEY, "k": [10**100]}), "no row id"),
    ("A" * 600, "too long"),
])
def test_a_garbled_or_edited_cursor_is_a_precise_400(client, ops, after, why):
    add_bookings(1)
    r = client.get(f"{API}/ops/bookings?{urlencode({'after': after})}", headers=ops)
    assert r.status_code == 400, r.get_json()
    error = r.get_json()["error"]
    assert error["code"] == "bad_cursor" and error["field"] == "after"
    assert why in error["message"] and "first page" in error["message"]


# What a client can put in a cursor that must never come back in an answer or a log line:
# an answer is UTF-8 JSON written with ensure_ascii off, where a lone surrogate is a 500.
ODD_TEXTS = {
    "lone surrogates": ["\ud800", "x\udfffx", "\ud83d"],
    "control characters": ["\x00", "\x1b[2J\r\n\x7f\x85\u2028", "ops.legs\x00"],
    "very long values": ["ops.legs" * 30,  # its cursor still fits in 512 characters
                         "ops.legs" * 60],
}
FIELDS: dict[str, Callable[[dict, str], None]] = {
    "the version": lambda c, odd: c.update(v=odd),
    "the list": lambda c, odd: c.update(l=odd),
    "the list, after its name": lambda c, odd: c.update(l=c["l"] + odd),
    "the key's first value": lambda c, odd: c["k"].__setitem__(0, odd),
    "the key's last value": lambda c, odd: c["k"].__setitem__(-1, odd),
    "an extra value in the key": lambda c, odd: c["k"].append(odd),
    "a field of its own": lambda c, odd: c.update({odd: 1}),
}


@pytest.mark.parametrize("kind", ODD_TEXTS)
def test_odd_text_in_any_field_of_a_cursor_is_a_plain_400_echoing_none_of_it(
        client, ops, caplog, kind):
    caplog.set_level(logging.DEBUG)
    for odd in ODD_TEXTS[kind]:
        for field, put in FIELDS.items():
            for lst, key in ((LISTS["bookings"], [5]),
                             (LISTS["mismatches"], [T0.isoformat(), 5])):
                body = {"v": 1, "l": "ops." + lst.path.rsplit("/", 1)[1], "k": key}
                put(body, odd)
                after = cursor(body)  # escaped by the JSON: \ud800 is JSON, not UTF-8
                r = get(client, ops, lst, after=after)
                assert r.status_code == 400, (odd, field, r.status_code, r.data[:300])
                error = r.get_json()["error"]
                assert error["code"] == "bad_cursor" and error["field"] == "after"
                message = error["message"]
                assert all(" " <= ch <= "~" for ch in message), (odd, field, message)
                assert odd[:16] not in message and len(message) < 120, (odd, field, message)
    assert not [rec for rec in caplog.records
                if rec.levelno >= logging.WARNING or any(
                    odd[:16] in rec.getMessage() for odd in ODD_TEXTS[kind])]


@pytest.mark.parametrize("key", [["2025-03-01T09:30:00", 1], ["yesterday", 1], [1, 1],
                                 ["2025-03-01T09:30:00+00:00", -1]])
def test_a_cursor_without_a_zoned_time_or_an_id_is_a_precise_400(client, ops, key):
    after = cursor({"v": 1, "l": "ops.handoffs", "k": key})
    r = client.get(f"{API}/ops/handoffs?after={after}", headers=ops)
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "bad_cursor"


def test_a_cursor_of_another_list_or_with_an_offset_is_a_precise_400(client, ops):
    add_bookings(3)
    add_mismatches(3)
    legs_cursor = page(client, ops, LISTS["legs"], limit=1)["next_after"]
    assert page(client, ops, LISTS["legs"], after=legs_cursor)["items"]  # a good one
    for other in ("bookings", "handoffs", "partners", "mismatches"):
        r = get(client, ops, LISTS[other], after=legs_cursor)
        assert r.status_code == 400, (other, r.get_json())
        error = r.get_json()["error"]
        assert error["code"] == "bad_cursor" and error["field"] == "after"
        assert "another list (ops.legs)" in error["message"]
    mismatch_cursor = page(client, ops, LISTS["mismatches"], limit=1)["next_after"]
    r = get(client, ops, LISTS["handoffs"], after=mismatch_cursor)  # same key types
    assert r.status_code == 400 and "another list" in r.get_json()["error"]["message"]

    for offset in (0, 1):  # even the first page's offset: which one was meant?
        r = get(client, ops, LISTS["legs"], after=legs_cursor, offset=offset)
        assert r.status_code == 400, r.get_json()
        assert r.get_json()["error"] == {
            "code": "offset_and_after", "field": "after",
            "message": "give offset or after, not both"}


def test_the_api_document_offers_cursors_and_marks_deep_offsets_deprecated(client):
    doc = client.get(f"{API}/openapi.json").get_json()
    for lst in LISTS.values():
        op = doc["paths"][f"{API}{lst.path}"]["get"]
        params = {p["name"]: p for p in op["parameters"]}
        assert "after" in params and "deprecated for deep pages" in op["summary"]
        assert "deprecated for deep pages" in params["offset"]["schema"]["description"]
        page_schema = op["responses"]["200"]["content"]["application/json"]["schema"]
        if "$ref" in page_schema:
            page_schema = doc["components"]["schemas"][page_schema["$ref"].rsplit("/", 1)[1]]
        assert {"items", "next_offset", "next_after"} <= set(page_schema["properties"])

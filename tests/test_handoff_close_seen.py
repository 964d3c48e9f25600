"""An operator closes a chat while the person writes "one more thing": with ?seen= (the
newest message the operator read), the close is refused and the message waits for them.
Without it, the close went through and the message was shut in a closed handoff that no
operator's list shows again."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from core.adapters.db import transaction
from core.adapters.dialog_models import Handoff
from tests.test_api import API, sign_in
from tests.test_handoff_review26 import OPS_A, chat_asks_for_a_person, daytime, say_wa  # noqa: F401

pytestmark = pytest.mark.db


def messages(client, ops: dict[str, str], hid: int) -> list[dict]:  # noqa: ANN001
    rows = client.get(f"{API}/ops/handoffs", headers=ops).get_json()["items"]
    return next(row["messages"] for row in rows if row["id"] == hid)


def status_of(hid: int) -> str:
    with transaction() as s:
        return s.scalar(select(Handoff.status).where(Handoff.id == hid))


def test_a_message_after_the_one_read_stops_the_close(client, live, daytime):  # noqa: F811
    hid = chat_asks_for_a_person(client)
    ops = sign_in(client, OPS_A, role="ops")
    say_wa(client, "my parcel did not come")
    read = messages(client, ops, hid)
    assert [m["body"] for m in read if m["direction"] == "in"][-1] == "my parcel did not come"
    newest = max(m["id"] for m in read)
    say_wa(client, "one more thing: the address changed")  # while the operator types
    r = client.post(f"{API}/ops/handoffs/{hid}/close?seen={newest}", headers=ops)
    assert r.status_code == 409, r.get_json()
    assert r.get_json()["error"]["code"] == "new_message"
    assert status_of(hid) == "waiting"
    # Having read it, the operator closes.
    newest = max(m["id"] for m in messages(client, ops, hid))
    r = client.post(f"{API}/ops/handoffs/{hid}/close?seen={newest}", headers=ops)
    assert r.status_code == 200, r.get_json()
    assert status_of(hid) == "closed"


def test_without_seen_the_close_is_as_before(client, live, daytime):  # noqa: F811
    hid = chat_asks_for_a_person(client)
    ops = sign_in(client, OPS_A, role="ops")
    say_wa(client, "thanks, that is all")
    r = client.post(f"{API}/ops/handoffs/{hid}/close", headers=ops)
    assert r.status_code == 200, r.get_json()
    assert status_of(hid) == "closed"

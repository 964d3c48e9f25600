"""A rating retried after its answer was lost (s34): with its Idempotency-Key it gets the
first answer; without one, the same rating sent again soon is answered as the first, while
another rating of a rated booking stays 409 already_rated."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from core import clock
from core.adapters.db import transaction
from core.adapters.models import Booking
from core.config import get_settings
from core.services import auth, rating
from tests.test_api import API, last_otp, sign_in
from tests.test_whatsapp_rating import (
    CUSTOMER,
    START,
    chat,  # noqa: F401  (fixture)
    delivered_booking,
    partner_rating,
    stars_of,
    t,
    wa,
)

pytestmark = pytest.mark.db
README = Path(__file__).resolve().parents[1] / "README.md"


def _rate(client, ref: str, headers: dict[str, str], stars: int, comment: str | None = None,
          key: str | None = None):
    body: dict[str, object] = {"stars": stars}
    if comment is not None:
        body["comment"] = comment
    h = dict(headers, **({"Idempotency-Key": key} if key else {}))
    return client.post(f"{API}/bookings/{ref}/rating", json=body, headers=h)


def test_a_rating_retried_with_its_key_answers_the_first_answer(chat):  # noqa: F811
    booking, ref, partner = delivered_booking(channel="app")
    headers = sign_in(chat, CUSTOMER)
    before = partner_rating(partner)
    first = _rate(chat, ref, headers, 4, "on time", key="rate-1")
    assert first.status_code == 201, first.get_json()
    after = partner_rating(partner)
    assert after != before
    # Its answer lost, the app sends it again, a while later (a slow line, a resend).
    clock.freeze(START + timedelta(hours=1))
    again = _rate(chat, ref, headers, 4, "on time", key="rate-1")
    assert again.status_code == 201, again.get_json()
    assert again.get_json() == first.get_json() == {"reference": ref, "stars": 4}
    assert stars_of(booking) == [4] and partner_rating(partner) == after  # counted once
    # The key of another rating is refused; another rating without a key is a conflict.
    other = _rate(chat, ref, headers, 2, key="rate-1")
    assert other.status_code == 422
    assert other.get_json()["error"]["code"] == "idempotency_key_reused"
    late = _rate(chat, ref, headers, 4, "on time", key="rate-2")
    assert late.status_code == 409 and late.get_json()["error"]["code"] == "already_rated"


def test_the_same_rating_sent_again_soon_without_a_key_is_answered_as_the_first(
        chat):  # noqa: F811
    booking, ref, partner = delivered_booking(channel="app")
    headers = sign_in(chat, CUSTOMER)
    first = _rate(chat, ref, headers, 5, "Very polite rider")
    assert first.status_code == 201, first.get_json()
    after = partner_rating(partner)
    clock.freeze(START + rating.REPEAT_WINDOW - timedelta(seconds=5))
    again = _rate(chat, ref, headers, 5, " Very polite rider ")
    assert again.status_code == 201, again.get_json()
    assert again.get_json() == {"reference": ref, "stars": 5}
    assert stars_of(booking) == [5] and partner_rating(partner) == after
    # A different rating (stars or comment) of the rated booking keeps its 409.
    for stars, comment in ((4, "Very polite rider"), (5, None), (5, "late")):
        r = _rate(chat, ref, headers, stars, comment)
        assert r.status_code == 409, (stars, comment)
        assert r.get_json()["error"]["code"] == "already_rated"
    # ... and so does the same one long after: that is no retry.
    clock.freeze(START + rating.REPEAT_WINDOW + timedelta(seconds=1))
    r = _rate(chat, ref, headers, 5, "Very polite rider")
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "already_rated"
    assert stars_of(booking) == [5] and partner_rating(partner) == after


def test_a_rating_without_a_comment_sent_again_is_answered_as_the_first(chat):  # noqa: F811
    booking, ref, _ = delivered_booking(channel="app")
    headers = sign_in(chat, CUSTOMER)
    assert _rate(chat, ref, headers, 3).status_code == 201
    assert _rate(chat, ref, headers, 3).status_code == 201  # a double tap
    assert _rate(chat, ref, headers, 3, "").status_code == 201  # a blank comment is none
    assert stars_of(booking) == [3]


def test_another_customers_retry_is_not_answered_with_the_rating(chat):  # noqa: F811
    _, ref, _ = delivered_booking(channel="app")
    assert _rate(chat, ref, sign_in(chat, CUSTOMER), 5).status_code == 201
    stranger = sign_in(chat, "+919812377002")
    assert _rate(chat, ref, stranger, 5).status_code == 404


def test_a_rating_in_the_app_then_the_same_in_the_chat_is_thanked(chat):  # noqa: F811
    """The chat's question answered after the app rated (the same stars or not): the
    customer is told it is rated, nothing is saved twice."""
    booking, ref, _ = delivered_booking()
    with transaction() as s:
        assert rating.ask_after_delivery(s, s.get(Booking, booking))
    assert _rate(chat, ref, sign_in(chat, CUSTOMER), 5).status_code == 201
    assert t("bot.rate.already", ref=ref) in wa(chat, "5")
    assert stars_of(booking) == [5]


def test_the_rating_route_declares_its_key(client):
    doc = client.get(f"{API}/openapi.json").get_json()
    params = doc["paths"][f"{API}/bookings/{{ref}}/rating"]["post"].get("parameters", [])
    assert any(p["in"] == "header" and p["name"] == "Idempotency-Key" for p in params)


def test_readme_names_the_key_of_verify_and_of_a_rating():
    text = " ".join(README.read_text().split())
    api = text[text.index("`POST /bookings/<ref>/cancel` takes an `Idempotency-Key` too"):]
    api = api[:api.index("Message status callbacks")]
    assert "`POST /auth/verify`" in api and "401 `otp_used`" in api
    assert "`POST /bookings/<ref>/rating` takes an `Idempotency-Key`" in api


# --- a stranger's wrong codes do not lock the owner out of sign-in ---------------------

OWNER = "+919812344401"
OWNER_IP = "198.51.100.7"


def _ask(client, ip: str):
    return client.post(f"{API}/auth/otp", json={"phone": OWNER},
                       environ_base={"REMOTE_ADDR": ip})


def _verify(client, code: str, ip: str):
    return client.post(f"{API}/auth/verify", json={"phone": OWNER, "otp": code},
                       environ_base={"REMOTE_ADDR": ip})


def _wrong(code: str) -> str:
    return "000000" if code != "000000" else "111111"


def _guess_until_refused(client, ips: list[str]) -> int:
    """Wrong codes sent from ``ips`` in turn (a new code asked when one is used up) until
    the phone refuses them: how many were counted (answered 401)."""
    wrong_ones = 0
    for i in range(60):
        ip = ips[i % len(ips)]
        if i % 4 == 0:
            asked = _ask(client, ip)
            if asked.status_code == 429:
                return wrong_ones
        r = _verify(client, _wrong(last_otp(OWNER)), ip)
        if r.status_code == 429:
            assert r.get_json()["error"]["code"] == "rate_limited"
            return wrong_ones
        assert r.status_code == 401, r.get_json()
        wrong_ones += 1
        if i % 4 == 3:
            clock.freeze(clock.now() + timedelta(minutes=11))  # the phone's 10 minutes
    raise AssertionError("never refused")


@pytest.fixture
def owner(client):
    """OWNER signed in from OWNER_IP: her client, known to the phone."""
    clock.freeze(START)
    try:
        assert _ask(client, OWNER_IP).status_code == 202
        assert _verify(client, last_otp(OWNER), OWNER_IP).status_code == 200
        yield client
    finally:
        clock.freeze(None)


def test_a_strangers_wrong_codes_leave_the_owner_able_to_sign_in(owner):
    budget = get_settings().otp_failures_per_day
    kept = auth.known_reserve(budget)
    assert kept > 0
    strangers = [f"203.0.113.{i}" for i in range(1, 30)]  # many addresses: no matter
    assert _guess_until_refused(owner, strangers) == budget - kept
    assert _ask(owner, "203.0.113.99").status_code == 429  # no code for a stranger now
    # The owner, from where she signed in before, still gets a code and signs in.
    assert _ask(owner, OWNER_IP).status_code == 202
    assert _verify(owner, last_otp(OWNER), OWNER_IP).status_code == 200


def test_the_days_wrong_codes_stay_bounded_whoever_sends_them(owner):
    budget = get_settings().otp_failures_per_day
    # Strangers, then the known client too: never more wrong codes than the day's budget.
    counted = _guess_until_refused(owner, [f"203.0.113.{i}" for i in range(1, 30)])
    counted += _guess_until_refused(owner, [OWNER_IP])
    assert counted == budget
    r = _verify(owner, "123456", OWNER_IP)
    assert r.status_code == 429 and 0 < int(r.headers["Retry-After"]) <= 86400


def test_a_phone_never_signed_in_keeps_its_whole_budget_for_anyone(client):
    clock.freeze(START)
    try:
        counted = _guess_until_refused(client, [f"203.0.113.{i}" for i in range(1, 30)])
        # As before: nobody to keep any for.
        assert counted == get_settings().otp_failures_per_day
    finally:
        clock.freeze(None)


def test_a_strangers_asks_for_codes_leave_the_owner_hers(owner):
    refused = [_ask(owner, f"203.0.113.{i}").status_code for i in range(1, 6)]
    assert refused[-1] == 429  # the phone's codes for strangers are spent
    assert _ask(owner, OWNER_IP).status_code == 202
    assert _verify(owner, last_otp(OWNER), OWNER_IP).status_code == 200


def test_an_ipv6_owner_is_known_by_her_64(client):
    """A phone's IPv6 address changes within its /64: still the client that signed in."""
    clock.freeze(START)
    try:
        assert _ask(client, "2001:db8:1:2::10").status_code == 202
        assert _verify(client, last_otp(OWNER), "2001:db8:1:2::10").status_code == 200
        _guess_until_refused(client, [f"203.0.113.{i}" for i in range(1, 30)])
        assert _ask(client, "2001:db8:1:2:aaaa::1").status_code == 202
        assert _ask(client, "2001:db8:1:3::10").status_code == 429  # another /64: a stranger
    finally:
        clock.freeze(None)

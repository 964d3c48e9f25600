"""Session 38 (hsec2 after review rsec): the sign-in limits' Redis keys named client
addresses in clear for an hour (``ratelimit:otp-send-ip:203.0.113.7``): they name an
address, and an IPv6 /56 or /48, by a keyed hash (OTP_KEY), as the phone keys do; code
checks were limited per address (an IPv6 /64) only: per /56 and /48 too, as asks are."""

from __future__ import annotations

import pytest

from core.adapters.redis_conn import redis_client
from core.services import auth
from tests.test_api import API

pytestmark = pytest.mark.db

CUSTOMER = "+919812338002"


def _keys_naming(text: str) -> list[bytes]:
    return [k for k in redis_client().scan_iter("*") if text.encode() in k]


def test_the_sign_in_limits_name_no_address(client):
    for ip in ("203.0.113.7", "2001:db8:7:1ff::5"):
        r = client.post(f"{API}/auth/otp", json={"phone": CUSTOMER},
                        environ_base={"REMOTE_ADDR": ip})
        assert r.status_code == 202
        r = client.post(f"{API}/auth/verify", json={"phone": CUSTOMER, "otp": "000000"},
                        environ_base={"REMOTE_ADDR": ip})
        assert r.status_code in (401, 200)
    assert _keys_naming("203.0.113") == []
    assert _keys_naming("2001:db8") == []
    for kind in ("send", "verify"):
        for net in ("203.0.113.7", "2001:db8:7:1ff::/64", "2001:db8:7:100::/56",
                    "2001:db8:7::/48"):
            assert redis_client().exists(f"ratelimit:otp-{kind}-ip:{auth._ip_tag(net)}")
    # A keyed hash: another OTP_KEY names the same address otherwise.
    assert len(auth._ip_tag("203.0.113.7")) == 32


def test_verifies_are_limited_per_ipv6_56_and_48_as_asks_are(client, monkeypatch):
    monkeypatch.setattr(auth, "VERIFY_PER_IP", (2, 3600))
    monkeypatch.setattr(auth, "VERIFY_PER_IPV6_56", (3, 3600), raising=False)
    monkeypatch.setattr(auth, "VERIFY_PER_IPV6_48", (5, 3600), raising=False)

    def check(ip: str) -> int:
        return client.post(f"{API}/auth/verify", json={"phone": CUSTOMER, "otp": "000000"},
                           environ_base={"REMOTE_ADDR": ip}).status_code

    home = [check(f"2001:db8:7:100::{i + 1}") for i in range(3)]
    assert home == [401, 401, 429]  # the /64's 2
    beside = [check(f"2001:db8:7:101::{i + 1}") for i in range(2)]
    assert beside == [401, 429]  # the /56's 3
    site = [check(f"2001:db8:7:{0x200 + i:x}::1") for i in range(3)]
    assert site == [401, 401, 429]  # the /48's 5
    assert check("2001:db8:8::1") == 401  # another /48

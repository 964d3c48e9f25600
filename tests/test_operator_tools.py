"""The sandbox's own tools: `./run chat` / `./run call` and the emulated payment page."""

from __future__ import annotations

from urllib.parse import urljoin

import pytest
import requests

from core.adapters.db import transaction
from core.adapters.models import SandboxMessage
from core.config import get_settings
from ops.call import Phone
from ops.chat import Chat

pytestmark = pytest.mark.db


def old_messages(to: str, n: int) -> None:
    with transaction() as s:
        for i in range(n):
            s.add(SandboxMessage(sid=f"SMold{i:029d}", account_sid="AC", channel="sms",
                                 to_addr=to, from_addr="+15005550006",
                                 body=f"old message {i}", status="delivered"))


def test_chat_skips_a_long_history(live):
    phone = "+919812399999"  # ./run chat's default number
    old_messages(f"whatsapp:{phone}", 250)  # more than a page of the outbox
    chat = Chat(live.base_url, phone, get_settings().twilio_auth_token, "Chat User")
    chat.skip_old_messages()
    assert chat.follow_ups() == []


def test_call_skips_a_long_history(live):
    phone = "+919812399998"  # ./run call's default number
    old_messages(phone, 250)
    caller = Phone(live.base_url, phone, get_settings().twilio_auth_token)
    caller.skip_old_messages()
    assert caller.sms() == []


def test_the_pay_button_posts_under_the_links_own_address(live):
    """PUBLIC_BASE_URL may carry a path (https://host/rc): the form must post under it,
    which a form action relative to the page does."""
    s = get_settings()
    r = requests.post(f"{s.razorpay_api_base}/v1/payment_links", json={"amount": 5000},
                      auth=(s.razorpay_key_id, s.razorpay_key_secret), timeout=10)
    link = r.json()
    page = requests.get(link["short_url"], timeout=10).text
    action = page.split('action="', 1)[1].split('"', 1)[0]
    assert not action.startswith("/")
    assert urljoin(link["short_url"], action) == link["short_url"] + "/pay"
    assert requests.post(urljoin(link["short_url"], action), timeout=10).status_code == 200


def test_call_sends_keys_as_twilio_takes_them(live):
    """A one-key question takes one key; keys typed ahead go to the next question, and
    '#' ends a question of many keys without being sent (Twilio's Gather). Was: every
    typed key went to the question at hand, so "12" answered a one-key question with
    "12", which a real call never sends."""
    caller = Phone(live.base_url, "+919812399997", get_settings().twilio_auth_token)
    sent: list[str] = []
    post = caller._post

    def recording(path: str, form: dict[str, str]) -> str:
        if "Digits" in form:
            sent.append(form["Digits"])
        return post(path, form)

    caller._post = recording  # type: ignore[method-assign]
    caller.call()
    assert caller.num_digits == 1  # the language question takes one key
    caller.press("11845438#")  # Hindi, book, then the pickup pincode typed ahead
    assert sent == ["1", "1", "845438"], sent
    assert caller.action  # the call goes on, at the village question

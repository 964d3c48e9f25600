"""Partner SMS webhook basics (the dispatch work owns this file)."""

from __future__ import annotations

from tests.conftest import post_twilio


def test_sms_from_stranger_gets_one_line_on_joining(client):
    params = {"MessageSid": "SMs1", "From": "+919811111111", "To": "+15005550006",
              "Body": "ON"}
    r = post_twilio(client, "/webhooks/sms", params)
    assert r.status_code == 200
    assert r.get_data(as_text=True).count("<Message>") == 1

"""Session 38: what Redis keeps of a sender's number once his message is handled.

The inbound rate counters were named by the number itself (``ratelimit:whatsapp:9198...``),
though an erasure must leave no key naming a phone (auth's keys are named by a keyed hash).
They are now named by a keyed hash of the channel and contact, as auth's are.
"""

from __future__ import annotations

from core.adapters.redis_conn import redis_client
from core.services import inbound
from tests.conftest import post_twilio, run_jobs, send_whatsapp

WA_DIGITS = "9812345678"
SMS_DIGITS = "9812345679"


def _keys_naming(*numbers: str) -> list[str]:
    return [key.decode() for key in redis_client().scan_iter(count=1000)
            if any(n in key.decode() for n in numbers)]


def test_no_redis_key_names_a_sender_after_his_messages(client, live):
    send_whatsapp(client, {"MessageSid": "SM" + "a" * 32, "From": f"whatsapp:+91{WA_DIGITS}",
                           "To": "whatsapp:+14155238886", "Body": "hi",
                           "WaId": "91" + WA_DIGITS, "ProfileName": "Asha"})
    answer = post_twilio(client, "/webhooks/sms", {
        "MessageSid": "SM" + "b" * 32, "From": f"+91{SMS_DIGITS}", "To": "+15005550006",
        "Body": "hello"})
    assert answer.status_code == 200
    run_jobs()
    assert _keys_naming(WA_DIGITS, SMS_DIGITS) == []
    # The counters are still kept, under their hashed names (the limit still counts).
    for channel, contact in (("whatsapp", "91" + WA_DIGITS), ("sms", "+91" + SMS_DIGITS)):
        key = inbound.rate_counter(channel, contact)
        assert key.startswith(f"ratelimit:{channel}:")
        assert redis_client().exists(key), (channel, key)


def test_rate_counters_differ_by_channel_and_contact():
    names = {inbound.rate_counter(channel, contact)
             for channel in ("whatsapp", "sms")
             for contact in ("919812345678", "+919812345678", "+919812345670")}
    assert len(names) == 6
    assert inbound.rate_counter("sms", "+919812345678") == inbound.rate_counter(
        "sms", "+919812345678")

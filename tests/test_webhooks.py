"""Inbound Twilio webhooks end to end through Flask: signature, dedupe, bad input, TwiML."""

from __future__ import annotations

from sqlalchemy import func, select

from core import i18n
from core.adapters.db import transaction
from core.adapters.models import Conversation, InboundEvent, Person
from tests.conftest import post_twilio

PHONE = "+919812345678"


def wa(body: str, sid: str, **extra: str) -> dict[str, str]:
    params = {
        "MessageSid": sid, "AccountSid": "ACsandbox", "From": f"whatsapp:{PHONE}",
        "To": "whatsapp:+14155238886", "Body": body, "NumMedia": "0",
        "WaId": PHONE.lstrip("+"), "ProfileName": "Asha",
    }
    params.update(extra)
    return params


def counts() -> tuple[int, int, int]:
    with transaction() as s:
        return (
            s.scalar(select(func.count()).select_from(InboundEvent)),
            s.scalar(select(func.count()).select_from(Person)),
            s.scalar(select(func.count()).select_from(Conversation)),
        )


def test_first_contact_gets_language_menu_then_hindi_main_menu(client):
    r = post_twilio(client, "/webhooks/whatsapp", wa("hi", "SM1"))
    assert r.status_code == 200
    assert r.mimetype == "application/xml"
    body = r.get_data(as_text=True)
    assert "<Message>" in body and "हिंदी" in body and "ಕನ್ನಡ" in body

    r = post_twilio(client, "/webhooks/whatsapp", wa("1", "SM2"))
    body = r.get_data(as_text=True)
    assert i18n.t("menu.main", "hi").splitlines()[1] in body
    with transaction() as s:
        person = s.scalar(select(Person).where(Person.phone == PHONE))
        assert person is not None and person.preferred_language == "hi"
        assert person.wa_id == PHONE.lstrip("+")


def test_bad_signature_is_refused_and_changes_nothing(client):
    r = post_twilio(client, "/webhooks/whatsapp", wa("hi", "SM3"), signature="bm90LXJpZ2h0")
    assert r.status_code == 403
    assert r.get_json()["error"]["code"] == "forbidden"
    r = post_twilio(client, "/webhooks/whatsapp", wa("hi", "SM3"), signature="")
    assert r.status_code == 403
    assert counts() == (0, 0, 0)


def test_signature_over_other_params_is_refused(client):
    params = wa("hi", "SM4")
    from tests.conftest import twilio_signature

    sig = twilio_signature("/webhooks/whatsapp", params)
    params["Body"] = "tampered"
    assert post_twilio(client, "/webhooks/whatsapp", params, signature=sig).status_code == 403


def test_retried_webhook_gets_same_reply_and_changes_nothing_twice(client):
    first = post_twilio(client, "/webhooks/whatsapp", wa("hi", "SMdup"))
    with transaction() as s:
        step_before = s.scalar(select(Conversation.step))
    again = post_twilio(client, "/webhooks/whatsapp", wa("hi", "SMdup"))
    assert again.status_code == 200
    assert again.get_data() == first.get_data()
    assert counts() == (1, 1, 1)
    with transaction() as s:
        assert s.scalar(select(Conversation.step)) == step_before


def test_language_choice_is_not_applied_twice_by_a_retry(client):
    post_twilio(client, "/webhooks/whatsapp", wa("hi", "SMa"))
    post_twilio(client, "/webhooks/whatsapp", wa("2", "SMb"))  # English
    post_twilio(client, "/webhooks/whatsapp", wa("language", "SMc"))
    post_twilio(client, "/webhooks/whatsapp", wa("4", "SMd"))  # Marathi
    retried = post_twilio(client, "/webhooks/whatsapp", wa("2", "SMb"))
    assert "English" in retried.get_data(as_text=True)
    with transaction() as s:
        assert s.scalar(select(Person.preferred_language)) == "mr"


def test_missing_from_is_a_clean_400(client):
    params = wa("hi", "SM5")
    del params["From"]
    r = post_twilio(client, "/webhooks/whatsapp", params)
    assert r.status_code == 400
    assert "From" in r.get_json()["error"]["message"]
    assert counts() == (0, 0, 0)


def test_invalid_utf8_is_a_clean_400(client):
    raw = b"MessageSid=SM6&From=whatsapp%3A%2B919812345678&Body=\xff\xfe"
    r = client.post("/webhooks/whatsapp", data=raw, headers={
        "X-Twilio-Signature": "x", "Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 400
    assert counts() == (0, 0, 0)


def test_oversized_body_is_413(client):
    params = wa("x" * 70_000, "SM7")
    r = post_twilio(client, "/webhooks/whatsapp", params)
    assert r.status_code == 413
    assert r.is_json
    assert counts() == (0, 0, 0)


def test_unknown_route_and_method_answer_json(client):
    r = client.get("/no/such/thing")
    assert r.status_code == 404 and r.get_json()["error"]["code"] == "not_found"
    r = client.get("/webhooks/whatsapp")
    assert r.status_code == 405 and r.get_json()["error"]["code"] == "method_not_allowed"


def test_photo_without_text_gets_a_clear_answer(client):
    post_twilio(client, "/webhooks/whatsapp", wa("hi", "SMp1"))
    post_twilio(client, "/webhooks/whatsapp", wa("2", "SMp2"))
    r = post_twilio(client, "/webhooks/whatsapp", wa("", "SMp3", NumMedia="1",
                                                     MediaContentType0="image/jpeg",
                                                     MediaUrl0="https://example.invalid/m"))
    body = r.get_data(as_text=True)
    assert i18n.t("bot.media.photo", "en") in body
    assert i18n.t("menu.main", "en").splitlines()[1] in body  # and the same question again


def test_per_phone_rate_limit(client, monkeypatch):
    from core.config import get_settings

    limit = get_settings().inbound_rate_limit
    for i in range(limit):
        assert post_twilio(client, "/webhooks/whatsapp", wa("0", f"SMr{i}")).status_code == 200
    over = post_twilio(client, "/webhooks/whatsapp", wa("0", "SMr-over"))
    assert i18n.t("common.too_many_messages", "hi") in over.get_data(as_text=True)
    silent = post_twilio(client, "/webhooks/whatsapp", wa("0", "SMr-over2"))
    assert "<Message>" not in silent.get_data(as_text=True)
    assert counts()[0] == limit  # the flood beyond the limit was not processed


def test_voice_greets_with_every_language_and_never_loops(client):
    params = {"CallSid": "CA1", "From": "+919811111111", "To": "+15005550006"}
    r = post_twilio(client, "/webhooks/voice", params)
    body = r.get_data(as_text=True)
    assert r.status_code == 200 and "<Gather" in body and 'language="ta-IN"' in body
    assert "<Hangup" in body and "<Redirect" not in body


def test_conversation_survives_a_restart_of_every_process(client):
    from core.adapters.db import dispose_all
    from core.adapters.redis_conn import reset_clients
    from core.app import create_app

    post_twilio(client, "/webhooks/whatsapp", wa("hi", "SMx1"))
    post_twilio(client, "/webhooks/whatsapp", wa("3", "SMx2"))  # Bengali
    dispose_all()  # every pooled connection gone, as after a restart
    reset_clients()
    fresh = create_app().test_client()
    r = post_twilio(fresh, "/webhooks/whatsapp", wa("menu", "SMx3"))
    assert i18n.t("menu.main", "bn").splitlines()[1] in r.get_data(as_text=True)


def test_concurrent_retries_of_one_message_are_processed_once(app):
    from concurrent.futures import ThreadPoolExecutor

    def send(_: int) -> bytes:
        return post_twilio(app.test_client(), "/webhooks/whatsapp", wa("hi", "SMrace")).data

    with ThreadPoolExecutor(max_workers=4) as pool:
        replies = list(pool.map(send, range(4)))
    assert len(set(replies)) == 1
    assert counts() == (1, 1, 1)


def test_first_messages_racing_from_a_new_contact_all_get_answers(app):
    from concurrent.futures import ThreadPoolExecutor

    def send(i: int) -> int:
        return post_twilio(app.test_client(), "/webhooks/whatsapp", wa("hi", f"SMnew{i}")
                           ).status_code

    with ThreadPoolExecutor(max_workers=4) as pool:
        codes = list(pool.map(send, range(4)))
    assert codes == [200] * 4
    assert counts() == (4, 1, 1)

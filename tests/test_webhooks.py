"""Inbound Twilio webhooks end to end through Flask: signature, dedupe, bad input, and the
courier path (accept in the webhook, answer from the contact's drain job via the outbox)."""

from __future__ import annotations

from sqlalchemy import func, select

from core import i18n
from core.adapters.db import transaction
from core.adapters.models import Conversation, InboundEvent, OutboxMessage, Person
from tests.conftest import post_twilio, replies_to, run_jobs, send_whatsapp

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
    assert "<Message" not in r.get_data(as_text=True)  # accepted; the answer comes after
    assert counts() == (0, 0, 0) and replies_to("SM1") == []
    assert run_jobs(("inbound",)) == 1
    body = "\n".join(replies_to("SM1"))
    assert "हिंदी" in body and "ಕನ್ನಡ" in body
    with transaction() as s:
        row = s.scalar(select(OutboxMessage).where(OutboxMessage.dedupe_key == "reply:SM1:0"))
        assert row.to_addr == f"whatsapp:{PHONE}" and row.channel == "whatsapp"

    body = send_whatsapp(client, wa("1", "SM2"))
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


def test_a_signature_over_the_url_without_its_port_is_accepted(client):
    # Twilio is not consistent about ports when it signs: the URL as configured is checked
    # first, then with and without the port.
    from urllib.parse import urlsplit

    from twilio.request_validator import RequestValidator

    from core.config import get_settings

    settings = get_settings()
    base = urlsplit(settings.public_base_url)
    assert base.port, "the test server's public URL carries a port"
    params = wa("hi", "SMport")
    sig = RequestValidator(settings.twilio_auth_token).compute_signature(
        f"{base.scheme}://{base.hostname}/webhooks/whatsapp", params)
    assert post_twilio(client, "/webhooks/whatsapp", params, signature=sig).status_code == 200
    params["Body"] = "tampered"
    assert post_twilio(client, "/webhooks/whatsapp", params, signature=sig).status_code == 403


def test_retried_webhook_is_answered_once_and_changes_nothing_twice(client):
    first = send_whatsapp(client, wa("hi", "SMdup"))
    with transaction() as s:
        step_before = s.scalar(select(Conversation.step))
    again = post_twilio(client, "/webhooks/whatsapp", wa("hi", "SMdup"))
    assert again.status_code == 200 and "<Message" not in again.get_data(as_text=True)
    assert run_jobs(("inbound",)) == 0  # nothing queued for a retry
    assert "\n".join(replies_to("SMdup")) == first and len(replies_to("SMdup")) == 1
    assert counts() == (1, 1, 1)
    with transaction() as s:
        assert s.scalar(select(Conversation.step)) == step_before


def test_retry_after_the_quick_check_expired_is_still_handled_once(client):
    from core.adapters.redis_conn import redis_client

    send_whatsapp(client, wa("hi", "SMold"))
    redis_client().delete("inbound:seen:whatsapp:SMold")  # an hour later, say
    assert send_whatsapp(client, wa("hi", "SMold")) != ""
    assert len(replies_to("SMold")) == 1  # the database claim held
    assert counts() == (1, 1, 1)


def test_language_choice_is_not_applied_twice_by_a_retry(client):
    send_whatsapp(client, wa("hi", "SMa"))
    send_whatsapp(client, wa("2", "SMb"))  # English
    send_whatsapp(client, wa("language", "SMc"))
    send_whatsapp(client, wa("4", "SMd"))  # Marathi
    retried = send_whatsapp(client, wa("2", "SMb"))
    assert "English" in retried and len(replies_to("SMb")) == 1
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
    send_whatsapp(client, wa("hi", "SMp1"))
    send_whatsapp(client, wa("2", "SMp2"))
    body = send_whatsapp(client, wa("", "SMp3", NumMedia="1", MediaContentType0="image/jpeg",
                                    MediaUrl0="https://example.invalid/m"))
    assert i18n.t("bot.media.photo", "en") in body
    assert i18n.t("menu.main", "en").splitlines()[1] in body  # and the same question again


def test_per_phone_rate_limit(client, monkeypatch):
    from core.config import get_settings

    limit = get_settings().inbound_rate_limit
    for i in range(limit):
        assert post_twilio(client, "/webhooks/whatsapp", wa("0", f"SMr{i}")).status_code == 200
    assert post_twilio(client, "/webhooks/whatsapp", wa("0", "SMr-over")).status_code == 200
    assert post_twilio(client, "/webhooks/whatsapp", wa("0", "SMr-over2")).status_code == 200
    assert run_jobs(("inbound",)) == 1  # one drain for the contact, in arrival order
    assert replies_to("SMr-over") == [i18n.t("common.too_many_messages", "hi")]
    assert replies_to("SMr-over2") == []
    assert counts()[0] == limit  # the flood beyond the limit was not processed


def test_stop_gets_through_the_rate_limit(client):
    # An annoyed user floods the bot, then sends STOP: that one must still count.
    from sqlalchemy import select

    from core.adapters.db import transaction
    from core.adapters.models import Person
    from core.config import get_settings

    limit = get_settings().inbound_rate_limit
    for i in range(limit + 3):
        post_twilio(client, "/webhooks/whatsapp", wa("0", f"SMs{i}"))
    assert post_twilio(client, "/webhooks/whatsapp", wa("STOP", "SMs-stop")).status_code == 200
    run_jobs(("inbound",))
    assert replies_to("SMs-stop") == [i18n.t("bot.optout.stopped", "hi")]
    with transaction() as s:
        assert s.scalar(select(Person.opted_out).where(Person.wa_id == wa("", "x")["WaId"]))


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

    send_whatsapp(client, wa("hi", "SMx1"))
    send_whatsapp(client, wa("3", "SMx2"))  # Bengali
    dispose_all()  # every pooled connection gone, as after a restart
    reset_clients()
    fresh = create_app().test_client()
    assert i18n.t("menu.main", "bn").splitlines()[1] in send_whatsapp(fresh, wa("menu", "SMx3"))


def test_concurrent_retries_of_one_message_are_processed_once(app):
    from concurrent.futures import ThreadPoolExecutor

    def send(_: int) -> int:
        return post_twilio(app.test_client(), "/webhooks/whatsapp", wa("hi", "SMrace")
                           ).status_code

    with ThreadPoolExecutor(max_workers=4) as pool:
        codes = list(pool.map(send, range(4)))
    assert codes == [200] * 4
    assert run_jobs(("inbound",)) == 1
    assert len(replies_to("SMrace")) == 1
    assert counts() == (1, 1, 1)


def test_first_messages_racing_from_a_new_contact_all_get_answers(app):
    from concurrent.futures import ThreadPoolExecutor

    def send(i: int) -> int:
        return post_twilio(app.test_client(), "/webhooks/whatsapp", wa("hi", f"SMnew{i}")
                           ).status_code

    with ThreadPoolExecutor(max_workers=4) as pool:
        codes = list(pool.map(send, range(4)))
    assert codes == [200] * 4
    run_jobs(("inbound",))
    assert counts() == (4, 1, 1)
    assert all(replies_to(f"SMnew{i}") for i in range(4))


def test_a_first_whatsapp_message_joins_the_person_known_by_phone_before_by_wa_id(client):
    with transaction() as s:
        by_wa = Person(role="customer", wa_id=PHONE.lstrip("+"))
        by_phone = Person(role="customer", phone=PHONE)
        s.add_all([by_wa, by_phone])
        s.flush()
        wanted = by_phone.id
    send_whatsapp(client, wa("hi", "SMjoin"))
    with transaction() as s:
        conv = s.scalar(select(Conversation).where(Conversation.channel == "whatsapp"))
        assert conv.person_id == wanted
        assert s.scalar(select(func.count()).select_from(Person)) == 2  # nobody new


def test_a_repeated_parameter_is_signed_with_all_its_values(client):
    """Twilio signs every distinct value of a repeated parameter (name and value, values
    in order); a value added to a genuine request breaks the signature."""
    import base64
    import hashlib
    import hmac
    from urllib.parse import urlencode

    from core.config import get_settings

    settings = get_settings()
    params = wa("hi", "SMrepeat")
    pairs = [*params.items(), ("Extra", "b"), ("Extra", "a")]
    text = settings.public_base_url + "/webhooks/whatsapp" + "".join(
        name + value for name, value in sorted(pairs))
    signature = base64.b64encode(hmac.new(settings.twilio_auth_token.encode(), text.encode(),
                                          hashlib.sha1).digest()).decode()
    r = client.post("/webhooks/whatsapp", data=urlencode(pairs), headers={
        "X-Twilio-Signature": signature, "Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200
    smuggled = [*pairs, ("Body", "pay now")]
    r = client.post("/webhooks/whatsapp", data=urlencode(smuggled), headers={
        "X-Twilio-Signature": signature, "Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 403


def test_nul_characters_in_a_message_do_not_stop_the_contact(client):
    """PostgreSQL cannot store NUL: a profile name or body carrying one must not make every
    turn of that contact fail (the drain would dead-letter each message)."""
    params = {"MessageSid": "SMnul1", "From": "whatsapp:+919812300077",
              "To": "whatsapp:+14155238886", "WaId": "919812300077", "Body": "hi\x00",
              "ProfileName": "Sita\x00", "Latitude": "nan"}
    assert send_whatsapp(client, params)  # answered: the language menu
    with transaction() as s:
        assert s.scalar(select(Person.name).where(Person.phone == "+919812300077")) == "Sita"


def test_a_message_drained_late_counts_from_when_it_was_written(client):
    """WhatsApp's 24-hour window runs from the user's message: a backlog that delays its
    turn by minutes must not stretch the window by as much."""
    from datetime import UTC, datetime, timedelta

    from core import clock

    written = datetime(2026, 12, 1, 6, 0, tzinfo=UTC)
    clock.freeze(written)
    try:
        r = post_twilio(client, "/webhooks/whatsapp", {
            "MessageSid": "SMlate1", "From": "whatsapp:+919812300078",
            "To": "whatsapp:+14155238886", "WaId": "919812300078", "Body": "hi"})
        assert r.status_code == 200
        clock.freeze(written + timedelta(minutes=20))  # the drainers were behind
        run_jobs(("inbound",))
    finally:
        clock.freeze(None)
    with transaction() as s:
        assert s.scalar(select(Conversation.last_inbound_at).where(
            Conversation.contact == "919812300078")) == written

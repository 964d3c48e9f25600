"""IVR gaps found in review: withheld caller IDs, answers when something outside the dialog
fails (and the Fallback URL), an operator who does not answer, action URLs under a
PUBLIC_BASE_URL with a path, and landline callers. Calls go through the real, signed
voice webhooks."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from urllib.parse import urljoin

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError, OperationalError

from core import clock
from core.adapters.db import transaction
from core.adapters.dialog_models import Handoff
from core.adapters.models import Conversation, Person
from core.config import get_settings, reset_settings
from core.domain.phone import HIDDEN_CALLER_IDS, is_hidden_number
from core.services import ivr
from core.services.handoff import reply_minutes
from tests.conftest import post_twilio
from tests.test_ivr import START, Caller, Heard, operator_takes, prompts, t  # noqa: F401

PLACEHOLDERS = ("+266696687", "+7378742833", "+86282452253")  # ANONYMOUS, RESTRICTED, UNAVAILABLE


def public_base() -> str:
    return get_settings().public_base_url


def path_of(url: str) -> str:
    """The path (and query) of one of our absolute URLs, as post_twilio takes it."""
    assert url.startswith(public_base() + "/"), url
    return url.removeprefix(public_base())


class AbsoluteCaller(Caller):
    """tests.test_ivr's Caller, following the absolute action URLs Twilio is given."""

    def _post(self, path: str, form: dict[str, str]) -> Heard:
        return super()._post(path_of(path) if "://" in path else path, form)


def count_voice_conversations() -> int:
    with transaction() as s:
        return s.scalar(select(func.count()).select_from(Conversation)
                        .where(Conversation.channel == "voice"))


@pytest.fixture
def caller(client, prompts) -> Caller:  # noqa: F811
    """The demo data, a frozen clock, and a caller with an Indian mobile."""
    from core.services.seed import seed_demo

    seed_demo()
    clock.freeze(START)
    return AbsoluteCaller(client)


# --- 1. withheld caller IDs -------------------------------------------------------------

@pytest.mark.parametrize("raw", [*PLACEHOLDERS, "anonymous", "Anonymous", "RESTRICTED",
                                 "unknown", "Private", "UNAVAILABLE", " +266 696 687 "])
def test_withheld_caller_ids_are_hidden_numbers(raw: str) -> None:
    assert is_hidden_number(raw)


@pytest.mark.parametrize("raw", ["+919812300100", "+266696688", "+12025550123", "", "9876543210"])
def test_real_numbers_are_not_hidden(raw: str) -> None:
    assert not is_hidden_number(raw)


def test_every_twilio_placeholder_is_in_the_one_list() -> None:
    assert set(PLACEHOLDERS) <= HIDDEN_CALLER_IDS


@pytest.mark.parametrize("hidden", [*PLACEHOLDERS, "RESTRICTED", "Private"])
def test_a_hidden_caller_is_told_so_and_never_becomes_a_contact(caller: Caller, client,
                                                                hidden: str) -> None:
    first, second = AbsoluteCaller(client, hidden), AbsoluteCaller(client, hidden)
    for stranger in (first, second):  # two strangers, both with their number withheld
        heard = stranger.call()
        assert heard.hangup and heard.gather is None
        assert t("ivr.hidden_number") in heard.text, heard.text
    with transaction() as s:
        assert s.scalar(select(func.count()).select_from(Person)
                        .where(Person.phone == hidden)) == 0
    assert count_voice_conversations() == 0


@pytest.mark.parametrize("hidden", PLACEHOLDERS)
def test_a_hidden_callers_status_callback_touches_no_session(caller: Caller, client,
                                                             monkeypatch, hidden: str) -> None:
    seen: list[str] = []
    monkeypatch.setattr(ivr, "call_status", lambda number, *_: seen.append(number))
    hidden_caller = AbsoluteCaller(client, hidden)
    hidden_caller.call()
    hidden_caller.hang_up()
    assert seen == []


# --- 2. a failure outside the dialog still answers TwiML --------------------------------

def database_down(*_: object) -> None:
    raise OperationalError("SELECT ...", {}, Exception("server closed the connection"))


def apology(heard: Heard, lang: str) -> bool:
    return heard.hangup and heard.gather is None and t("common.error_try_later", lang) in heard.text


def post(client, path: str, form: dict[str, str]) -> Heard:
    r = post_twilio(client, path, form)
    assert r.status_code == 200 and r.mimetype == "application/xml", r.get_data(as_text=True)
    return Heard.parse(r.get_data(as_text=True))


def test_the_database_away_mid_call_gets_an_apology_in_the_callers_language(
        caller: Caller, monkeypatch) -> None:
    caller.call()
    caller.press("2")  # English
    monkeypatch.setattr(ivr, "contact_for", database_down)
    heard = post(caller.client, path_of(caller.action), caller.form(Digits="1"))
    assert apology(heard, "en"), heard.xml


def test_a_clash_creating_a_new_callers_contact_gets_a_hindi_apology(caller: Caller,
                                                                      monkeypatch) -> None:
    def clash(*_: object) -> None:
        raise IntegrityError("INSERT INTO people ...", {}, Exception("duplicate key"))

    monkeypatch.setattr(ivr, "contact_for", clash)
    heard = post(caller.client, "/webhooks/voice", caller.form(CallSid="CAclash1"))
    assert apology(heard, "hi"), heard.xml


def test_a_failing_status_callback_still_answers_twiml(caller: Caller, monkeypatch) -> None:
    caller.call()
    monkeypatch.setattr(ivr, "call_status", database_down)
    heard = post(caller.client, "/webhooks/voice/status", caller.form(CallStatus="completed"))
    assert heard.hangup


def test_the_fallback_url_apologises_in_the_failed_prompts_language_and_ends(
        caller: Caller, monkeypatch) -> None:
    caller.call()
    caller.press("2")  # English
    failed = caller.action
    monkeypatch.setattr(ivr, "process", lambda *_: pytest.fail("the fallback re-entered the flow"))
    form = caller.form(Digits="1", ErrorCode="11200", ErrorUrl=failed)
    heard = post(caller.client, "/webhooks/voice/fallback", form)
    assert apology(heard, "en"), heard.xml
    heard = post(caller.client, "/webhooks/voice/fallback", caller.form(ErrorCode="11200"))
    assert apology(heard, "hi"), heard.xml
    assert post_twilio(caller.client, "/webhooks/voice/fallback", form,
                       signature="bad").status_code == 403


# --- 3. an operator who does not answer -------------------------------------------------

def dial_element(heard: Heard) -> ET.Element:
    dial = ET.fromstring(heard.xml).find("Dial")
    assert dial is not None, heard.xml
    return dial


def handoffs() -> list[tuple[str, str, str, str | None]]:
    with transaction() as s:
        return [(h.channel, h.reason, h.status, h.operator)
                for h in s.scalars(select(Handoff).order_by(Handoff.id))]


def put_through(caller: Caller, language_key: str = "1") -> ET.Element:
    caller.call()
    caller.press(language_key)
    heard = caller.press("3")  # talk to a person
    assert heard.dial == get_settings().ops_phone
    return dial_element(heard)


@pytest.mark.parametrize("status", ["busy", "no-answer", "failed", "canceled"])
def test_nobody_answering_puts_the_caller_on_the_call_back_list_and_says_when(
        caller: Caller, monkeypatch, status: str) -> None:
    monkeypatch.setenv("HANDOFF_REPLY_MINUTES", "20")
    dial = put_through(caller)
    assert handoffs() == [("voice", "asked", "waiting", None)]  # opened before dialling
    assert dial.get("method") == "POST"
    action = path_of(dial.get("action", ""))
    heard = post(caller.client, action, caller.form(DialCallStatus=status, DialCallDuration="0"))
    assert t("ivr.person.busy", minutes=20) in heard.text, heard.text
    assert heard.hangup and heard.gather is None
    assert handoffs() == [("voice", "asked", "waiting", None)]


def test_the_call_back_promise_is_in_the_callers_language(caller: Caller) -> None:
    action = path_of(put_through(caller, "2").get("action", ""))  # English
    heard = post(caller.client, action, caller.form(DialCallStatus="no-answer"))
    assert t("ivr.person.busy", "en", minutes=reply_minutes()) in heard.text, heard.text


def test_an_answered_operator_says_goodbye_and_leaves_the_handoff_for_ops(
        caller: Caller) -> None:
    dial = put_through(caller)
    answer = ET.fromstring(operator_takes(caller.client, as_response(dial)))
    assert answer.tag == "Response" and len(answer) == 0  # empty: Twilio bridges the calls
    action = path_of(dial.get("action", ""))
    heard = post(caller.client, action, caller.form(DialCallStatus="completed",
                                                    DialCallDuration="95"))
    assert heard.text == t("voice.goodbye") and heard.hangup
    assert handoffs() == [("voice", "asked", "waiting", ivr.ANSWERED_BY_PHONE)]


def as_response(dial: ET.Element) -> str:
    return f"<Response>{ET.tostring(dial).decode()}</Response>"


@pytest.mark.parametrize("key", [None, "2"])
def test_a_voicemail_that_answers_the_operators_phone_takes_nobody(
        caller: Caller, key: str | None) -> None:
    """OPS_PHONE switched off or busy, its voicemail answers: Twilio reports the <Dial>
    "completed". The caller used to hear goodbye, with the request marked answered by
    phone, and nobody ever called back. The operators' phone now hears who is calling
    and must press 1; a voicemail (nothing pressed) or another key takes nobody."""
    dial = put_through(caller)
    assert dial.get("answerOnBridge") == "true"  # the caller hears ringing meanwhile
    number = dial.find("Number")
    assert number is not None and number.text == get_settings().ops_phone
    if key is not None:
        answer = operator_takes(caller.client, as_response(dial), key)
        assert "<Hangup" in answer, answer
    heard = post(caller.client, path_of(dial.get("action", "")),
                 caller.form(DialCallStatus="completed", DialCallDuration="20"))
    assert t("ivr.person.busy", minutes=reply_minutes()) in heard.text, heard.text
    assert handoffs() == [("voice", "asked", "waiting", None)]  # still to call back


def test_the_operators_phone_hears_who_calls_in_its_language(caller: Caller) -> None:
    dial = put_through(caller, "2")  # the caller speaks English; the team's phone, Hindi
    number = dial.find("Number")
    assert number is not None
    form = {"CallSid": "CAopsleg0002", "AccountSid": "ACtest", "From": "+15005550006",
            "To": get_settings().ops_phone}
    heard = post(caller.client, path_of(number.get("url", "")), form)
    assert heard.gather is not None and heard.gather.get("numDigits") == "1"
    assert t("ivr.ops.screen", "hi") in heard.text, heard.text
    assert heard.hangup  # nothing pressed: that phone hangs up


def test_a_take_for_a_call_that_ended_puts_nobody_through(caller: Caller) -> None:
    dial = put_through(caller)
    caller.hang_up()  # the caller gave up while the team's phone rang
    answer = operator_takes(caller.client, as_response(dial))
    assert "<Hangup" in answer, answer


def test_a_person_offered_after_misses_is_on_the_list_too(caller: Caller) -> None:
    caller.call()
    caller.press("1")
    for key in ("7", "8", "9"):  # three wrong keys: a person is offered
        heard = caller.press(key)
    assert t("ivr.offer.ask") in heard.text
    dial_element(caller.press("1"))
    assert handoffs() == [("voice", "not_understood", "waiting", None)]


# --- 4. every URL handed to Twilio is absolute on PUBLIC_BASE_URL -----------------------

@pytest.fixture
def mounted_under_a_path(monkeypatch) -> Iterator[str]:
    """The app behind a proxy at https://ridechain.example/rc (Twilio signs that URL)."""
    monkeypatch.setenv("PUBLIC_BASE_URL", "https://ridechain.example/rc")
    reset_settings()
    yield get_settings().public_base_url
    monkeypatch.undo()
    reset_settings()


def test_action_urls_stay_under_a_public_base_url_with_a_path(mounted_under_a_path: str,
                                                              caller: Caller) -> None:
    called = f"{mounted_under_a_path}/webhooks/voice"  # what Twilio called and signed
    heard = caller.call()
    assert heard.gather is not None
    # Twilio resolves the action against the URL it called, as a browser would.
    assert urljoin(called, heard.gather["action"]) == (
        f"{mounted_under_a_path}/webhooks/voice/gather?turn=1&lang=hi")
    heard = caller.press("1")  # the next turn reaches the app through that URL
    assert t("ivr.menu") in heard.text
    dial = dial_element(caller.press("3"))
    assert urljoin(called, dial.get("action", "")) == (
        f"{mounted_under_a_path}/webhooks/voice/dial?lang=hi")


# --- 5. a landline caller is not told their number is hidden ----------------------------

@pytest.mark.parametrize("shown", ["+911123456789", "01123456789", "+912222345678",
                                   # foreign numbers: SMS goes only to Indian mobiles
                                   "+447700900123", "+12025550123", "+9715012345678"])
def test_a_landline_caller_is_asked_to_call_from_a_mobile(caller: Caller, client,
                                                         shown: str) -> None:
    heard = AbsoluteCaller(client, shown).call()
    assert t("ivr.not_mobile") in heard.text, heard.text
    assert t("ivr.hidden_number") not in heard.text
    assert heard.hangup and heard.gather is None
    assert count_voice_conversations() == 0


def test_a_hidden_caller_still_hears_that_the_number_is_hidden(caller: Caller,
                                                               client) -> None:
    heard = AbsoluteCaller(client, "+266696687").call()
    assert t("ivr.hidden_number") in heard.text and t("ivr.not_mobile") not in heard.text


# --- "book it" books at the fare the caller heard -------------------------------------------


def test_a_fare_that_changed_after_it_was_read_out_is_read_again(caller: Caller) -> None:
    from core.adapters import surge
    from core.adapters.models import Booking
    from core.i18n import t as text

    caller.call()
    for keys in ("1", "1", "845438#", "2", "1", "845450#", "9", "9", "7", "1",
                 "9876543210#", "1", "1", "1"):
        caller.press(keys)
    heard = caller.press("2")  # Normal: the summary and its fare
    assert text("ivr.confirm.yes", "hi") in heard.text
    surge.set_surge_bp("845438", 15_000)  # demand rises while the caller listens
    again = caller.press("1")
    assert text("ivr.confirm.new_price", "hi") in again.text
    assert text("ivr.confirm.yes", "hi") in again.text
    with transaction() as s:
        assert s.scalar(select(Booking)) is None
    caller.press("1")  # book it, at the fare just heard
    with transaction() as s:
        assert s.scalar(select(func.count()).select_from(Booking)) == 1

"""Review r8: a whole phone (IVR) journey by feature-phone callers in Tamil, Telugu and
Bengali, through the real, signed voice webhooks (tests.test_ivr's Caller).

1. A new caller who has not chosen a language yet (the list is said in all eight) and
   presses nothing, or a key the list does not have, is asked "shall we put you through to
   a person?" in Hindi only: a Tamil, Telugu or Bengali caller cannot understand the one
   question that could help them, and the call ends on it.
2. In a step that takes several digits (a pincode, the recipient's number), "*" does not
   repeat the question at once (the Gather waits for '#' or the timeout): a caller who
   pressed it, as the hint told her, then keys the six digits of her pincode is told "a
   pincode has 6 digits" (or "this mobile number is not right"), which is false.
3. A phone shared by a family: once one person chose Tamil, everyone calling from it hears
   only Tamil, including the only way to change the language ("press 4 to change the
   language", said in Tamil). A Telugu speaker calling from it hears no word he understands.
4. A caller who books by phone is told the payment link comes by SMS, and the SMS says
   "pay here"; nothing she hears or reads says she has PAYMENT_LINK_TTL_MIN (30) minutes
   to pay before the booking is closed. A feature-phone user, who must find someone with
   a smartphone to open the link, learns of the limit only from "the time to pay is over".
"""

from __future__ import annotations

import re

import pytest

from core.adapters.db import transaction
from core.adapters.models import Person
from core.services import payments
from tests.test_ivr import Caller, Heard, phone, prompts, t  # noqa: F401
from tests.test_ivr_more import jobs, pay_links_to
from tests.test_ivr_texts import details_to

pytestmark = pytest.mark.db

OTHERS = ("ta-IN", "te-IN", "bn-IN")


def locales(heard: Heard) -> set[str]:
    """The locales of what the caller heard (no audio is cached here: all is <Say>)."""
    assert not heard.plays
    return {lang for lang, _ in heard.says}


def to_pickup_in(caller: Caller, key: str) -> Heard:
    """A new caller picks a language by its key and starts a booking: the pincode question."""
    caller.call()
    caller.press(key)
    return caller.press("1")


# --- 1. the language list: a Hindi-only offer of a person ------------------------------

@pytest.mark.parametrize("how", ["silence", "wrong keys"])
def test_a_caller_lost_at_the_language_list_is_not_asked_in_hindi_only(phone, how):  # noqa: F811
    """A Tamil woman calls for the first time; the list says "தமிழுக்கு 5 அழுத்துங்கள்"
    among the others, but she does not manage to press 5 (she waits, or presses 9). After
    the third try she hears only "लगता है कुछ दिक्कत हो रही है। क्या हमारे आदमी से बात
    करनी है? ... 1 दबाइए ... 2 दबाइए" in Hindi, which she does not speak, and silence then
    ends the call. Nobody has told us her language: what she hears there should still be
    in the languages of the list (at least Tamil, Telugu, Bengali), or the list again."""
    heard = phone.call()
    assert OTHERS[0] in locales(heard)  # the list names Tamil in Tamil
    for _ in range(3):
        heard = phone.silence() if how == "silence" else phone.press("9")
        if t("ivr.offer.ask") in heard.text:
            break
    assert heard.gather is not None, heard.xml
    missing = [loc for loc in OTHERS if loc not in locales(heard)]
    assert not missing, (f"after the third try the caller hears only {sorted(locales(heard))}, "
                         f"nothing in {missing}:\n{heard.text}")


@pytest.mark.parametrize("how", ["silence", "wrong keys"])
def test_a_caller_still_lost_at_the_language_list_is_told_goodbye_in_every_language(
        phone, how):  # noqa: F811
    """The list is said again three times; the fourth miss ends the call, its "we did not
    get an answer" said in every language of the list (Hindi, whose goodbye follows,
    last), with no offer of a person and no "wrong key" in Hindi alone."""
    phone.call()
    heard = [phone.silence() if how == "silence" else phone.press(key)
             for key in ("9", "0", "9", "0")]
    for again in heard[:3]:
        assert again.gather is not None and set(OTHERS) <= locales(again), again.text
        assert t("ivr.wrong_key") not in again.text and t("ivr.silence") not in again.text
    end = heard[-1]
    assert end.hangup and end.gather is None, end.xml
    assert t("ivr.offer.ask") not in end.text
    for lang in ("ta", "te", "bn", "hi"):
        assert t("ivr.no_answer", lang) in end.text, end.text
    assert end.says[-1] == ("hi-IN", t("voice.goodbye"))


# --- 2. '*' pressed in a step of several digits -----------------------------------------

def test_a_star_before_the_pincode_is_not_called_a_pincode_without_6_digits(phone):  # noqa: F811
    """A Bengali caller at "key the pickup pincode, then #" presses * while it plays (the
    hint says * repeats the question). The Gather takes digits until '#', so nothing is
    repeated: she hears silence, keys 8 4 5 4 3 8 and # as asked. Twilio posts
    Digits="*845438", and she is told "পিনকোডে 6টি সংখ্যা থাকে" (a pincode has 6 digits),
    though she keyed 6. She should get the villages of 845438 (or the question again),
    never a false reason."""
    heard = to_pickup_in(phone, "3")  # Bengali
    assert t("ivr.pickup.ask", "bn") in heard.text
    heard = phone.press("*845438#")
    assert t("ivr.place.bad_pincode", "bn") not in heard.text, heard.text
    assert (t("ivr.place.pincode", "bn", digits="8 4 5, 4 3 8") in heard.text
            or t("ivr.pickup.ask", "bn") in heard.text), heard.text


def test_a_star_before_the_recipients_number_is_not_called_a_wrong_number(phone):  # noqa: F811
    """The same for the receiver's mobile, in Telugu: * then 9876543210 and # is answered
    "ఈ మొబైల్ నంబర్ సరిగ్గా లేదు" (this mobile number is not right) though the ten digits
    are right. She should hear the number read back (or the question again)."""
    to_pickup_in(phone, "6")  # Telugu
    phone.press("845438#")
    phone.press("2")  # Bettiah
    phone.press("1")
    phone.press("845450#")
    phone.press("7")  # Laxmipur
    heard = phone.press("1")
    assert t("ivr.phone.ask", "te") in heard.text
    heard = phone.press("*9876543210#")
    assert t("ivr.phone.bad", "te") not in heard.text, heard.text
    assert (t("ivr.phone.confirm", "te", digits="9 8 7 6 5, 4 3 2 1 0") in heard.text
            or t("ivr.phone.ask", "te") in heard.text), heard.text


# --- 3. a second caller on the same phone, in another language --------------------------

def test_a_telugu_speaker_on_a_phone_that_chose_tamil_hears_how_to_get_telugu(phone):  # noqa: F811
    """Lakshmi chose Tamil on the family phone. Her husband, who speaks Telugu, calls from
    it: he hears "வணக்கம்! ... மொழியை மாற்ற 4 அழுத்துங்கள் ..." and nothing else; the
    way to Telugu is itself said only in Tamil, so he cannot find it and gives up. The
    opening of a call from a number with a chosen language should still say, in each
    other language (here Telugu), how to get it."""
    with transaction() as s:
        s.add(Person(phone=phone.phone, role="customer", preferred_language="ta"))
    heard = phone.call()
    assert t("ivr.menu", "ta") in heard.text
    assert "te-IN" in locales(heard), (
        f"nothing in Telugu; the call opens only in {sorted(locales(heard))}:\n{heard.text}")


# --- 4. the time to pay -------------------------------------------------------------------

def test_a_phone_booking_says_how_long_there_is_to_pay(live, phone):  # noqa: F811
    """Selvi books a parcel in Tamil from her feature phone. She hears "உங்கள் புக்கிங்
    முடிந்தது ... பணம் செலுத்தும் லிங்க்கும் புக்கிங் விவரமும் SMS-ல் வருகின்றன" and gets
    two SMS: the details ("லிங்க் அடுத்த SMS-ல்") and "₹92 இங்கே கட்டுங்கள்: <link>". Her
    phone cannot open the link; she walks to her nephew's house. Nothing told her she has
    30 minutes: the booking is closed before she gets there. What she hears at the end of
    the booking, or the SMS with the link, should say how many minutes she has."""
    minutes = int(payments.payment_link_ttl().total_seconds() // 60)
    phone.call()
    phone.press("5")  # Tamil
    phone.press("1")
    phone.press("845438#")
    phone.press("2")  # Bettiah
    phone.press("1")
    phone.press("845450#")
    phone.press("7")  # Laxmipur
    phone.press("1")
    phone.press("9876543210#")
    phone.press("1")
    phone.press("1")  # a bag
    phone.press("1")  # up to 5 kg
    phone.press("2")  # standard
    heard = phone.press("1")  # book it
    assert t("ivr.done.prompt", "ta") in heard.text, heard.text
    phone.hang_up()
    jobs()  # the details and the payment link go by SMS
    sms = [m.body for m in details_to(phone.phone) + pay_links_to(phone.phone)]
    assert len(sms) == 2, sms
    told = "\n".join([heard.text, *sms])
    # Not a number inside the link, the booking number or the fare.
    plain = re.sub(r"https?://\S+|\d{8}", " ", told)
    assert re.search(rf"(?<!\d){minutes}(?!\d)", plain), (
        f"nothing says she has {minutes} minutes to pay:\n{told}")

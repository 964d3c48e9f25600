"""The booking dialog as data: every question, its choices, where each answer leads.

Steps are built from a few reusable kinds (a numbered choice, a place by pin or pincode,
free text) so the IVR walks the very same steps with keypad digits. Slots collected:

    pickup, drop          places (lat, lng, pincode, post_office, name, landmark)
    recipient_name, recipient_phone
    category, size, weight, fragile, value_paise
    tier

Groups (for "change one detail" before confirming): pickup, drop, recipient, parcel,
speed. After changing a group the dialog goes straight back to the confirmation.
"""

from __future__ import annotations

import functools
import itertools
import re
import unicodedata
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from core import i18n
from core.dialog import words
from core.dialog.engine import (
    BACK_AFTER_LANGUAGE,
    Choices,
    Ctx,
    Dialog,
    Goto,
    Out,
    Redirect,
    Result,
    Retry,
    Say,
    Stay,
    Step,
    UserInput,
)
from core.domain.errors import DomainError, ValidationError
from core.domain.geo import same_place
from core.domain.office_names import told_apart
from core.domain.phone import is_indian_mobile, normalize_phone
from core.domain.pricing import MAX_DECLARED_VALUE_PAISE, WeightBucket
from core.domain.reference import is_valid_reference, normalize_reference
from core.i18n import LANGUAGE_NAMES, LANGUAGES

MENU = "menu"
RATE = "rate"  # how was the delivery? (asked after one; see stars_given)
BOOKING = "booking"  # group of the steps that fill a draft
PAGE_SIZE = 8  # offices per page; 9 = more
MORE = 9
MAX_VALUE_RUPEES = MAX_DECLARED_VALUE_PAISE // 100  # one cap in every channel
ECHO_CHARS = 12  # of an answer said back ("The booking number 123456789012… is not right")
CATEGORIES = ("documents", "food", "clothes", "medicine", "grain_produce", "electronics",
              "household", "other")
SIZES = ("bag", "box", "sack", "vehicle")
WEIGHTS = ("w5", "w20", "w50", "w200", "w750")
TIERS = ("express", "standard", "economy")
VALUE_BUCKETS = (("up_to_500", 500), ("up_to_2000", 2000), ("up_to_10000", 10000),
                 ("up_to_50000", 50000))
# The hello of each language, in its script and as typed in Latin letters (the catalogs'
# own "lang.menu" greets with it): nobody's name, no answer to a menu. Each line: one
# language. None is a name (a test checks them against the other word lists).
GREETINGS = frozenset({
    "hi", "hello", "helo", "hii", "hey", "start",  # en
    "namaste", "namastey", "namasthe", "namaskar", "namaskaar", "नमस्ते", "नमस्कार",
    "राम राम", "ram ram",  # hi, mr
    "নমস্কার", "নমস্তে", "nomoshkar", "nomoskar", "nomoskaar", "namoskar",  # bn
    "வணக்கம்", "vanakkam", "vanakam", "vannakkam", "vannakam",  # ta
    "నమస్కారం", "నమస్తే", "namaskaram", "namaskaaram",  # te
    "ನಮಸ್ಕಾರ", "ನಮಸ್ತೆ", "ನಮಸ್ಕಾರಗಳು", "namaskara", "namaskaara",
    "namaskaragalu",  # kn
    "નમસ્તે", "નમસ્કાર", "કેમ છો", "kem cho", "kem chho",  # gu
})


# --- helpers ---------------------------------------------------------------------------

def choice(inp: UserInput, n: int, aliases: Sequence[frozenset[str]] = ()) -> int | None:
    """1-based option picked by a digit/number word, or by an alias word of an option. A
    "no problem" beside the answer is left out ("koi baat nahi, haan": yes); alone it
    picks nothing (asked again). A no in a few words ("no thanks", "nahi ji", "ji nahi")
    picks the option whose aliases are every no (words.refuses)."""
    if inp.has_location:
        return None
    num = words.number(inp.text)
    if num is not None:
        return num if 1 <= num <= n else None
    text = words.clean(inp.text)
    for i, names in enumerate(aliases, start=1):
        if text in names:
            return i
    rest = words.without_no_problem(inp.text)
    if rest is not None:
        return choice(UserInput(text=rest), n, aliases) if rest else None
    if aliases and words.refuses(inp.text):
        return next((i for i, names in enumerate(aliases, start=1)
                     if words.NO_WORDS <= names), None)
    return None


YES_NO = (words.YES_WORDS, words.NO_WORDS)


def place_label(place: dict[str, Any]) -> str:
    """"Laxmipur, West Champaran (845450)" — how a place is read back to the user."""
    name = place.get("name") or place.get("post_office") or ""
    district = place.get("district")
    pin = place.get("pincode")
    text = name
    # "Dariyapur (Hathras)": a name told apart by its district says it already.
    if district and district != name and not name.endswith(f"({district})"):
        text = f"{name}, {district}"
    return f"{text} ({pin})" if pin else text


def said_name(place: dict[str, Any]) -> Say | str:
    """A place's name as a list offers it or it is said back: one sharing its name with
    another office of the list has a word after it in the user's language ("Arjunganj
    branch post office"; core.domain.office_names.told_apart), the others their name."""
    apart = place.get("apart")
    if not apart:
        return place.get("name") or ""
    how, what = apart
    called = place.get("called") or place.get("name") or ""
    if how == "kind":
        return Say(f"office.{what}", {"name": called})
    return Say(f"office.{how}", {"name": called, how: what})


def is_the_other_end(ctx: Ctx, kind: str, place: dict[str, Any]) -> bool:
    """``place`` as the ``kind`` ("pickup"/"drop") is where the other end of the trip is
    (while changing the pickup, the drop is already known)."""
    other = ctx.slots.get("drop" if kind == "pickup" else "pickup")
    if not other:
        return False
    return same_place((place["lat"], place["lng"]), (other["lat"], other["lng"]))


def _clear_draft(ctx: Ctx) -> None:
    for key in ("slots", "return_to", "draft_step", "offices", "page", "cancel_ref",
                "cancel_shown", "shown_total"):
        ctx.state.data.pop(key, None)


def echo(typed: str) -> str:
    """What the user typed, said back: its start only, so a long paste cannot make the
    reply too long to send."""
    return typed if len(typed) <= ECHO_CHARS else typed[:ECHO_CHARS] + "…"


def next_hint() -> Say:
    return Say("bot.next_hint")


# --- language --------------------------------------------------------------------------

# The step a language list was asked from that is asked again once a language is chosen
# (the rating question: asked once per booking, it must not be lost to the menu; a
# booking's question, whose answer would else be a miss at the menu). Put in state.data
# by that step (the engine, at a booking step), kept in the list's scratch, so it lasts
# only while the list stands: left for anything else, the list forgets it.
_BACK_AFTER_LANGUAGE = BACK_AFTER_LANGUAGE
# state.data key: a first message (sent before any language is chosen) was Hindi in
# Latin letters (note_request). The language list entered for it offers Hindi instead
# ("shall we talk in Hindi?"), as a first message in Devanagari is offered it.
_LATIN_HINDI = "hindi_in_latin"


def _language_prompt(ctx: Ctx) -> list[Out]:
    if (ctx.state.data.pop(_LATIN_HINDI, None)
            and _BACK_AFTER_LANGUAGE not in ctx.state.data):
        ctx.state.data["lang_guess"] = "hi"
        raise Redirect("language_guess")
    back = ctx.state.data.pop(_BACK_AFTER_LANGUAGE, None)
    if back is not None:
        ctx.scratch[_BACK_AFTER_LANGUAGE] = back
    return [Say("lang.menu")]


def _language_handle(ctx: Ctx, inp: UserInput) -> Result:
    num = words.number(inp.text)
    if num is not None and 1 <= num <= len(LANGUAGES):
        return _language_chosen(ctx, LANGUAGES[num - 1])
    # "Tamil please", "मराठी में": as a first message is read (language_mentioned).
    lang = words.language_mentioned(inp.text)
    if lang:
        return _language_chosen(ctx, lang)
    if not inp.has_location and words.hinglish(inp.text) and (
            _BACK_AFTER_LANGUAGE not in ctx.scratch and ctx.state.data.get("lang_guess") != "hi"):
        # "haan", "parcel bhejna hai": Hindi in Latin letters, no number. Asked as a
        # Devanagari message is ("shall we talk in Hindi?"), not "not understood". Not
        # when a question waits for the language (it would be lost with the list), nor
        # when Hindi was offered already and she asked for the list.
        ctx.state.data["lang_guess"] = "hi"
        return Goto("language_guess")
    return Retry()


def _language_chosen(ctx: Ctx, lang: str) -> Result:
    ctx.ports.set_language(lang)
    ctx.lang = lang
    ctx.state.data.pop("lang_guess", None)
    saved = Say("lang.saved", {"language": LANGUAGE_NAMES[lang]})
    back = ctx.scratch.get(_BACK_AFTER_LANGUAGE)
    if back == RATE and ctx.state.data.get("rate_ref"):
        return Goto(RATE, [saved])  # the question again, in the language chosen
    at = BOOKING_DIALOG.steps.get(back) if isinstance(back, str) else None
    if at is not None and at.group == BOOKING:  # a booking's question: asked again
        ctx.state.data.pop("draft_step", None)  # not left: no draft to offer again
        return Goto(at.name, [saved])
    if at is not None and at.after_language:
        # "Cancel booking ...?" (or the list it came from): asked again, not the menu,
        # where her next "1" would start a booking.
        return Goto(at.name, [saved])
    asked = ctx.state.data.pop(ASKED_FIRST, None)
    if asked is not None:  # what the first message asked for, now it can be answered
        return _with_say(_menu_option(ctx, asked), [saved])
    return Goto(MENU, [saved])


def _language_named(ctx: Ctx, lang: str) -> Result:
    """A language's name sent at any step: on the language questions it is the answer;
    elsewhere ("English" at "Who will receive the parcel?") the language changes and
    the same question is asked in it."""
    if ctx.state.step in ("language", "language_guess"):
        return _language_chosen(ctx, lang)
    ctx.ports.set_language(lang)
    ctx.lang = lang
    return Stay([Say("lang.saved", {"language": LANGUAGE_NAMES[lang]})])


def _guess_prompt(ctx: Ctx) -> list[Out]:
    ctx.state.data.pop(_LATIN_HINDI, None)
    guess = ctx.state.data.get("lang_guess", "hi")
    return [Say("bot.lang_guess", {"language": LANGUAGE_NAMES.get(guess, guess)}),
            Choices((Say("bot.yes"), Say("bot.lang_other")))]


def _guess_handle(ctx: Ctx, inp: UserInput) -> Result:
    picked = choice(inp, 2, YES_NO)
    if picked == 1:
        return _language_chosen(ctx, ctx.state.data.get("lang_guess", "hi"))
    if picked == 2:
        return Goto("language")
    # "Tamil please", "मराठी में" as at the language list; with a no in it ("Tamil nahi",
    # "no, Tamil") which one is meant is not sure: the list is shown.
    named = None if inp.has_location else words.language_mentioned(inp.text)
    if named is not None:
        if words.negated(inp.text):  # "Tamil nahi", "not Tamil", "Tamil வேணாம்"
            return Goto("language")
        return _language_chosen(ctx, named)
    return Retry()


# --- main menu -------------------------------------------------------------------------

def _menu_prompt(ctx: Ctx) -> list[Out]:
    return [Say("menu.main")]


# The main menu's options as people also type them (the numbers are what the menu shows).
MENU_WORDS: tuple[frozenset[str], ...] = (
    frozenset({"book", "booking", "send", "send parcel", "send a parcel", "parcel bhejna hai",
               "बुक", "बुकिंग", "पार्सल भेजना है"}),
    frozenset({"track", "track parcel", "where is my parcel", "parcel kahan hai",
               "ट्रैक", "पार्सल कहाँ है"}),
    frozenset({"cancel", "cancel booking", "cancel karna hai", "कैंसिल", "कैंसिल करना है"}),
    frozenset({"agent", "human", "person", "operator", "customer care", "call me",
               "talk to a person", "baat karni hai", "call karo", "कॉल करो", "बात करनी है",
               "मुझे कॉल करें"}),
    frozenset(),  # help: the global "help" word
)


# A word in a sentence that says which option the menu is asked for ("mera parcel kahan
# hai", "where is my parcel?", "আমার পার্সেল কোথায়", "booking cancel karni hai"), one line
# per option; romanised and in each script (hi, bn, mr, ta, te, gu, kn). The words of
# each option as the menu (menu.main) shows it are among them: its label typed back is
# that option (a test checks every catalog).
MENU_INTENTS: tuple[frozenset[str], ...] = (
    frozenset({"book", "send", "bhejna", "bhejni", "bhejana", "भेजना", "भेजनी", "भेजें",
               "পাঠাতে", "পাঠাব", "পাঠানো", "पाठवायचे", "पाठवायचा", "पाठवायचं", "அனுப்ப",
               "அனுப்பணும்", "పంపాలి", "పంపడం", "મોકલવું", "મોકલવો", "ಕಳುಹಿಸಬೇಕು",
               "ಕಳುಹಿಸಲು", "ಕಳಿಸುವುದು", "ಕಳಿಸಬೇಕು"}),
    frozenset({"track", "status", "where", "kahan", "kaha", "kahaan", "कहाँ", "कहां", "ट्रैक",
               "स्टेटस", "কোথায়", "কই", "कुठे", "कुठं", "எங்கே", "எங்க", "ఎక్కడ", "ఎక్కడుంది",
               "ఎక్కడుందో", "ક્યાં", "ಎಲ್ಲಿ", "ಎಲ್ಲಿದೆ"}),
    frozenset({"cancel", "कैंसिल", "कैंसल", "रद्द", "বাতিল", "ரத்து", "రద్దు", "રદ", "ರದ್ದು"}),
    frozenset({"agent", "human", "person", "operator", "call", "baat", "बात", "कॉल", "কথা",
               "बोलायचं", "बोलायचे", "பேச", "பேசணும்", "మాట్లాడాలి", "మాట్లాడడం", "વાત",
               "ಮಾತನಾಡಬೇಕು", "ಮಾತಾಡುವುದು", "ಮಾತಾಡಬೇಕು"}),
)


# "When will it come?", "has it arrived?": tracking too, though no "where" is said. A
# word for when ("kab", "কখন", "எப்போ") with one for come, arrive or get ("aayega",
# "আসবে", "வரும்", "milega"); alone either is too common a word ("kab" in "cancel kab tak
# kar sakte hain", "aaya" in "samajh aaya"), and a "kab" with no come ("parcel kab
# bhejna hai") is no tracking. One line per language, romanised then its script.
_WHEN = frozenset({
    "kab", "kitne", "कब", "कितने",  # hi ("kitne baje aayega")
    "when",  # en
    "kokhon", "kakhon", "কখন", "কবে",  # bn
    "kevha", "kadhi", "केव्हा", "कधी",  # mr
    "eppo", "eppa", "eppodhu", "eppothu", "எப்போ", "எப்போது", "எப்ப",  # ta
    "eppudu", "epudu", "ఎప్పుడు", "ఎప్పుడో",  # te
    "kyare", "kyaare", "ક્યારે",  # gu
    "yavaga", "yaavaga", "ಯಾವಾಗ",  # kn
})
_COMES = frozenset({
    "aayega", "ayega", "aaega", "aega", "aayegi", "ayegi", "aaegi", "aegi", "aaya", "aya",
    "aayi", "aai", "ayi", "milega", "milegi", "mila", "pahunchega", "pahuchega",
    "pahunchegi", "pahuchegi", "pohchega", "pahuncha", "pahucha", "pahunchi", "pahuchi",
    "pohcha", "आएगा", "आयेगा", "आएगी", "आयेगी", "आया", "आई", "आयी", "मिलेगा", "मिलेगी",
    "मिला", "पहुंचेगा", "पहुँचेगा", "पहुंचेगी", "पहुँचेगी", "पहुंचा", "पहुँचा", "पहुंची",
    "पहुँची",  # hi
    "come", "comes", "coming", "came", "arrive", "arrives", "arriving", "arrived", "reach",
    "reaches", "reached", "delivered", "get",  # en
    "asbe", "ashbe", "ascche", "asche", "eseche", "pouchabe", "pouchbe", "আসবে", "আসছে",
    "এসেছে", "এলো", "এল", "পৌঁছাবে", "পৌঁছবে", "পৌঁছেছে", "পৌঁছালো", "পাব", "পাবো",  # bn
    "yeil", "yeel", "yenar", "pohochel", "pochel", "milel", "येईल", "येणार", "आला", "आले",
    "पोहोचेल", "पोचेल", "पोहोचला", "पोहोचले", "मिळेल",  # mr
    "varum", "varuma", "vandhucha", "vanthucha", "vanducha", "serum", "kidaikkum",
    "வரும்", "வருமா", "வந்துச்சா", "வந்ததா", "வந்தது", "சேரும்", "சேருமா", "கிடைக்கும்",  # ta
    "vastundi", "vasthundi", "vastunda", "vachindi", "vachinda", "వస్తుంది", "వస్తుందా",
    "వచ్చింది", "వచ్చిందా", "చేరుతుంది", "చేరింది", "చేరిందా", "అందుతుంది",  # te
    "aavshe", "avshe", "aavse", "avse", "malshe", "આવશે", "આવ્યું", "આવ્યો", "પહોંચશે",
    "પહોંચ્યું", "મળશે",  # gu
    "barutte", "baruthe", "bartade", "banta", "bantha", "ಬರುತ್ತೆ", "ಬರುತ್ತದೆ", "ಬರುತ್ತಾ",
    "ಬಂತಾ", "ಬಂತು", "ತಲುಪುತ್ತೆ", "ತಲುಪುತ್ತದೆ", "ತಲುಪಿದೆ", "ತಲುಪಿತಾ", "ಸಿಗುತ್ತೆ",  # kn
})
# "Parcel pahucha kya", "has it arrived yet", "পার্সেল এসেছে কি": come asked as a
# question, without a when (Tamil, Telugu and Kannada ask it in the word: "வந்ததா").
# Not "will" or "did" ("delivered on time, will use again"); "kya" only right after the
# come (_ASKED_AFTER): elsewhere it is "what" ("kya fast aaya", "toot ke aaya kya karu").
_ASKED = frozenset({"yet", "কি", "শું"})
_ASKED_AFTER = frozenset({"kya", "क्या"})
# A yes/no question's first word: "kya parcel pahuncha", "क्या मेरा पार्सल आया", "did my
# parcel delivered" (Indian English). First only: "kya fast aaya yaar" is "how fast".
_ASKED_FIRST = frozenset({"kya", "क्या", "did", "has"})
# "What to do" after a "kya": a complaint ("damaged mila kya karein"), not "did it come?".
_DO = ("kar", "कर")
# Another subject beside a come: "refund kab milega", "OTP kab milega", "reply kab
# aayega", "samajh nahi aaya" (not understood). Not where the parcel is, unless the
# parcel is named as what comes ("refund ke saath parcel kab aayega": _of_the_parcel).
_OTHER_SUBJECT = frozenset({
    "refund", "otp", "code", "bill", "invoice", "receipt", "paisa", "paise", "money",
    "reply", "jawab", "samajh", "samajhme", "samjh", "samaj", "रिफंड", "ओटीपी", "कोड", "बिल",
    "पैसा", "पैसे", "जवाब", "समझ",
    # What else may not have come: the payment link, an SMS, a photo of the parcel.
    "link", "sms", "message", "msg", "photo", "photu", "pic", "लिंक", "मैसेज", "फोटो"})
# A complaint beside a come: "toot ke aaya", "damaged mila", "itna late kyu aaya?" (a
# why of what came). A why of what did not come is no complaint (_NOT_COME_ASKED).
_COMPLAINT = frozenset({
    "damaged", "damage", "broken", "toot", "tut", "tuta", "toota", "tuti", "tooti",
    "kharab", "टूट", "टूटा", "टूटी", "खराब", "ख़राब",
    # A complaint or a return named beside a not-come: "parcel nahi aaya complaint karni
    # hai", "rider kyu nahi aaya, bekar service", "parcel wapas nahi aaya" (a return).
    "complaint", "shikayat", "शिकायत", "bekar", "bekaar", "बेकार", "worst", "ghatiya",
    "घटिया"})
# Money asked for after the parcel's not-come: "parcel nahi aaya, paisa wapas chahiye",
# "the parcel did not come, I want my money back" (a nudge after it is still tracking:
# "kab aayega? please reply", "tracking link bhejo", "koi message bhi nahi aaya").
_MONEY = frozenset({"refund", "paisa", "paise", "money", "payment", "amount", "rupees",
                    "rupaye", "rs", "रिफंड", "पैसा", "पैसे", "पेमेंट", "रुपये", "रुपया"})
_WHY = frozenset({
    "why", "kyu", "kyun", "kyon", "kyo", "क्यों", "क्यूं", "क्यो",  # en, hi
    "keno", "কেন",  # bn
    "yen", "ஏன்",  # ta
    "enduku", "ఎందుకు",  # te
    "kem", "કેમ",  # gu
    "yaake", "yake", "ಯಾಕೆ",  # kn
})
_OTHER_THAN_PARCEL = _OTHER_SUBJECT | _COMPLAINT | _WHY
# The parcel named as what comes ("refund ke saath parcel kab aayega"), or asked about
# with a come that did not happen ("mera parcel nahi aaya").
_PARCEL = frozenset({
    "parcel", "parsal", "parcal", "parsel", "saman", "samaan", "package", "courier",
    "पार्सल", "सामान", "पारसल",  # hi, mr
    "পার্সেল", "পার্সেলটা",  # bn
    "பார்சல்", "పార్సెల్", "પાર્સલ", "ಪಾರ್ಸೆಲ್",  # ta, te, gu, kn
})
# Not yet, still: "abhi tak nahi aaya", "not come yet", "এখনো আসেনি", "இன்னும் வரல".
_YET = frozenset({
    "yet", "still", "abhi", "abhee", "abi", "tak", "अभी", "तक",  # en, hi
    "ekhono", "ekhon", "এখনো", "এখনও",  # bn
    "ajun", "ajoon", "अजून",  # mr
    "innum", "இன்னும்",  # ta
    "inka", "inkaa", "ఇంకా",  # te
    "haju", "હજુ", "હજી",  # gu
    "innu", "innoo", "ಇನ್ನೂ",  # kn
})
# A come and its not in one word, as Bengali, Tamil, Telugu and Kannada say it: "আসেনি"
# (has not come), "வரவில்லை", "రాలేదు", "ಬಂದಿಲ್ಲ" (Hindi, Marathi, Gujarati and English say
# the not beside the come: _NOT_BESIDE).
_NOT_COME = frozenset({
    "aseni", "ashe ni", "আসেনি", "পৌঁছায়নি", "পৌঁছেনি", "পাইনি", "paini",  # bn
    "varala", "varalai", "varavillai", "வரல", "வரலை", "வரவில்லை", "சேரவில்லை",
    "கிடைக்கவில்லை", "kidaikkala",  # ta
    "raledu", "raaledu", "andaledu", "రాలేదు", "అందలేదు", "చేరలేదు",  # te
    "bandilla", "baralilla", "ಬಂದಿಲ್ಲ", "ಬರಲಿಲ್ಲ", "ತಲುಪಿಲ್ಲ", "ಸಿಕ್ಕಿಲ್ಲ", "sikkilla",  # kn
})
# English "come" and "get" asked without a when are as often about a pickup ("can the
# rider come to my house?", "how do I get a parcel sent?"): a when must go with them.
_COMES_WITH_WHEN = frozenset({"come", "comes", "coming", "get", "reach", "reaches", "arrive",
                              "arrives"})
_COME_ASKED = frozenset({
    "varuma", "vandhucha", "vanthucha", "vanducha", "வருமா", "வந்துச்சா", "வந்ததா",
    "சேருமா", "vastunda", "vachinda", "వస్తుందా", "వచ్చిందా", "చేరిందా", "ಬರುತ್ತಾ",
    "ಬಂತಾ", "ತಲುಪಿತಾ", "banta", "bantha"})
_TRACK = 2  # the menu's option for where a parcel is


def asks_when_it_comes(said: list[str], text: str) -> bool:
    """Whether words ``said`` (of ``text``, in order) ask when a parcel comes or if it
    came: "kab aayega", "when will it come", "parcel pahucha kya", "এসেছে কি?", "வந்ததா";
    not when another subject is named ("refund kab milega", "toot ke aaya")."""
    words_said = set(said)
    comes = words_said & _COMES
    if not comes or words_said & _WHY or not _of_the_parcel(said):
        return False
    if words_said & _WHEN or comes & _COME_ASKED:
        return True
    if not comes - _COMES_WITH_WHEN:
        return False
    if said[0] in _ASKED_FIRST:  # "kya mera parcel aaya", "did my parcel delivered"
        return True
    kya_after = any(
        w in _COMES and said[i + 1] in _ASKED_AFTER
        and not (i + 2 < len(said) and said[i + 2].startswith(_DO))
        for i, w in enumerate(said[:-1]))
    return kya_after or bool(words_said & _ASKED) or text.rstrip().endswith("?")


def _of_the_parcel(said: list[str]) -> bool:
    """Whether a come in ``said`` is the parcel's: no complaint ("toot ke aaya"), and no
    other subject, or the parcel the last one named before a come ("refund ke saath
    parcel kab aayega"; not "parcel ka refund kab milega", "refund kab milega")."""
    if set(said) & _COMPLAINT:
        return False
    if not set(said) & (_OTHER_SUBJECT | _MONEY):
        return True
    for i, w in enumerate(said):
        if w in _COMES or w in _NOT_COME:
            named = next((x for x in reversed(said[:i]) if x in _PARCEL or x in _OTHER_SUBJECT),
                         None)
            # ... and no money asked for after it (_MONEY).
            if named in _PARCEL and not set(said[i + 1:]) & _MONEY:
                return True
    return False


def _not_beside(said: list[str], i: int) -> bool:
    """Whether the come ``said[i]`` is said with a not beside it: "nahi aaya", "not
    come", "not yet arrived", "आला नाही", "આવ્યું નથી", "aaya ya nahi"."""
    before = said[max(0, i - 2):i]
    after = said[i + 1:i + 3]
    return (any(w in words.NEGATORS for w in before) or bool(after and after[0] in words.NEGATORS)
            or after in (["ya", "nahi"], ["ya", "nahin"], ["or", "not"], ["ki", "nahi"]))


def not_come_yet(said: list[str]) -> bool:
    """Whether words ``said`` ask about a parcel that has not come: "parcel kyu nahi aaya
    abhi tak?", "why has my parcel not come yet", "पार्सल अभी तक नहीं आया", "mera parcel
    nahi aaya", "পার্সেল এখনো আসেনি কেন", "இன்னும் வரல". A come with a not beside it
    (or a word saying both) and a why, a yet, a when or the parcel named; not another
    subject's ("OTP nahi aaya", "samajh nahi aaya") nor a complaint."""
    if not _of_the_parcel(said):
        return False
    words_said = set(said)
    if not words_said & (_WHY | _YET | _WHEN | _PARCEL):
        return False
    return bool(words_said & _NOT_COME) or any(
        w in _COMES and _not_beside(said, i) for i, w in enumerate(said))


def _names_when(text: str) -> int | None:
    """Tracking (_TRACK) when ``text`` asks when a parcel comes with a when word ("mera
    doosra parcel kab aayega"), else None: at the rating question, where a come without
    one is praise."""
    said = words.said_words(text)
    return _TRACK if set(said) & _WHEN and asks_when_it_comes(said, text) else None


def menu_intent(text: str, when: bool = True) -> int | None:
    """The menu option a sentence asks for by one of MENU_INTENTS' words (1-4), or None:
    none of them, words of two options ("where do I send it"), or a no or a "not" in it
    ("cancel nahi karna", "cancel mat karo", "don't cancel", "বাতিল করবনা"): the menu is
    asked again rather than guessed. A "no problem" negates nothing (words.negated).
    With ``when``, asked when it comes ("kab aayega", asks_when_it_comes) is tracking;
    not at the rating question, where "delivered on time, mila" is praise."""
    said_in_order = words.said_words(text)
    others = set().union(*(keys for i, keys in enumerate(MENU_INTENTS, start=1)
                           if i != _TRACK))
    if when and not_come_yet(said_in_order):
        # "parcel kyu nahi aaya abhi tak?": where it is, as "kab aayega" is; with another
        # option's word ("nahi aaya, cancel karna hai") asked again.
        return None if words.tokens(text) & others else _TRACK
    if words.negated(text):  # "did not like it", "cancel nahi karna": asked again; but
        # "abhi tak nahi aaya, kab aayega" (not come yet: when?) names when: tracking
        if when and set(said_in_order) & _WHEN and asks_when_it_comes(said_in_order, text) \
                and not words.tokens(text) & others:
            return _TRACK
        return None
    rest = words.without_no_problem(text)  # "koi baat nahi": no "baat" (talk) asked for
    said = words.tokens(text) if rest is None else set(rest.split())
    found = {i for i, keys in enumerate(MENU_INTENTS, start=1) if said & keys}
    if when and asks_when_it_comes(words.said_words(text), text):
        found.add(_TRACK)
    return found.pop() if len(found) == 1 else None


def menu_request(text: str, when: bool = True) -> int | None:
    """The menu option words ask for, without its number: the option's own words
    (MENU_WORDS: "parcel bhejna hai") or a sentence naming it (menu_intent, ``when`` as
    there)."""
    said = words.clean(text)
    found = next((i for i, names in enumerate(MENU_WORDS, start=1) if said in names), None)
    return found or menu_intent(text, when)


# state.data key: the menu option a new customer's first message asked for ("पार्सल
# भेजना है"), answered once their language is chosen (_language_chosen).
ASKED_FIRST = "asked_first"


def note_request(data: dict[str, Any], text: str) -> None:
    """Keep in ``data`` (a dialog state's) what a message sent before any language is
    chosen asks of the menu, if it asks for something: once a language is chosen it is
    answered, not asked again."""
    asked = menu_request(text)
    if asked is not None:
        data[ASKED_FIRST] = asked
    # Hindi in Latin letters ("parcel bhejna hai", "mujhe kya karna hai"), no language
    # named: the language list this message is shown offers Hindi, as a Devanagari one
    # is offered. Not a greeting other languages type alike ("Hai sir", "namaste"), nor
    # Marathi ("mala parcel pathvaycha aahe"): words.hinglish_first.
    if words.hinglish_first(text) and words.language_mentioned(text) is None:
        data[_LATIN_HINDI] = True
    else:
        data.pop(_LATIN_HINDI, None)


def _with_say(result: Result, say: Sequence[Out]) -> Result:
    """A menu answer (_menu_option) given away from the menu: ``say`` first, and the
    menu where the menu would have stayed."""
    if isinstance(result, Goto):
        return Goto(result.step, [*say, *result.say], result.prompt)
    return Goto(MENU, [*say, *result.say])


def _menu_handle(ctx: Ctx, inp: UserInput) -> Result:
    if inp.has_location:
        return _pinned_at_menu(ctx, inp)
    picked = choice(inp, 5, MENU_WORDS)
    if picked is None and not inp.has_location:
        picked = menu_intent(inp.text)
    if picked is not None:
        return _menu_option(ctx, picked)
    ref = _typed_reference(inp)
    if ref is not None:  # a booking number alone (the one our SMS gave): where it is
        return _tracked(ctx, ref)
    if is_greeting(inp.text):  # "hi", "Namaste ji", "good morning": the menu again
        return Stay()
    if not inp.has_location and words.acknowledged(inp.text):
        # "ok", "👍", "dhanyavad" after a booking or a status: understood, nothing asked.
        return Goto(MENU, [Say("bot.welcome")], prompt=False)
    return Retry()


def _pinned_at_menu(ctx: Ctx, inp: UserInput) -> Result:
    """A location shared at the menu: a parcel to send from there, as option 1 with the
    pin as the answer to its pickup question. A draft offered is asked about first
    (continue it, or a new one): it is not dropped unasked for a pin."""
    if ctx.slots and ctx.state.data.get("draft_step"):
        return Goto("resume")
    _clear_draft(ctx)
    result = BOOKING_DIALOG.step("pickup").handle(ctx, inp)
    if isinstance(result, Goto):
        return result
    # Not served there, or not found: said, then the pickup question.
    return Goto("pickup", list(result.say))


def _menu_option(ctx: Ctx, picked: int) -> Result:
    """The answer to the menu's option ``picked`` (1-5)."""
    if picked == 1:
        if ctx.slots and ctx.state.data.get("draft_step"):
            return Goto("resume")
        _clear_draft(ctx)
        return Goto("pickup")
    if picked == 2:
        if not ctx.ports.my_bookings():
            return Stay([Say("bot.track.none")])
        return Goto("track")
    if picked == 3:
        if not ctx.ports.my_bookings(open_only=True):
            return Stay([Say("bot.cancel.none")])
        return Goto("cancel_pick")
    if picked == 4:
        info = ctx.ports.talk_to_person("asked")
        # The bot is quiet while they wait: how to have it back ("0") is said now.
        return Goto(MENU, [person_said(info, "bot.handoff.waiting", "bot.handoff.after_hours"),
                           next_hint()], prompt=False)
    return Stay([Say("menu.help")])


def _resume_prompt(ctx: Ctx) -> list[Out]:
    trip = draft_summary(ctx.slots) or "…"
    return [Say("bot.resume.ask", {"trip": trip}),
            Choices((Say("bot.resume.continue"), Say("bot.resume.fresh")))]


def _resume_handle(ctx: Ctx, inp: UserInput) -> Result:
    picked = choice(inp, 2, YES_NO)
    if picked == 1:
        target = ctx.state.data.pop("draft_step", None) or "pickup"
        return Goto(target)
    if picked == 2:
        _clear_draft(ctx)
        return Goto("pickup")
    return Retry()


# --- places: pin or pincode, then the village post office, then a landmark -------------

OFFICE_STEPS = ("pickup_office", "drop_office")  # the village lists
# state.data key: the name a shared location came with (WhatsApp's Label and Address of a
# named place: a shop, a school), put by the chat before the turn; kept as the landmark
# of the place the pin gives (its landmark question is not asked), else forgotten.
PIN_PLACE = "pin_place"
LANDMARK_MAX = 120  # characters of a landmark kept


def listed_offices(data: dict[str, Any], text: str) -> list[dict[str, Any]]:
    """The villages on the page of the village list shown (``data``'s offices and page)
    whose name is ``text`` as typed (case, spaces and surrounding punctuation aside)."""
    typed = words.clean(text)
    if not typed:
        return []
    page = data.get("page", 0)
    shown = (data.get("offices") or [])[page * PAGE_SIZE:(page + 1) * PAGE_SIZE]
    return [o for o in shown if words.clean(o.get("name") or "") == typed]


_SEPARATORS = ",;:-–— "  # between a village and its pincode ("Laxmipur - 845450")


def named_beside(offices: list[dict[str, Any]], text: str, pincode: str) -> list[dict[str, Any]]:
    """The offices whose name is all ``text`` says besides ``pincode`` ("Laxmipur 845450",
    "845450, Laxmipur": Laxmipur), as typed (case, spaces and punctuation aside)."""
    rest = words.ascii_digits(words.without_format_marks(text or "")).replace(pincode, " ")
    typed = words.clean(words.clean(rest).strip(_SEPARATORS))
    return [o for o in offices if typed and words.clean(o.get("name") or "") == typed]


def names_a_listed_village(step: str, data: dict[str, Any], text: str) -> bool:
    """Whether ``text`` at ``step`` is the name of a village on the list shown there: real
    India Post villages are called "Char", "Don", "Bangla", "Pachal", "Lang", "Band", and
    the list's own name for one is that village, not a number word, a command, a
    language's name or STOP."""
    return step in OFFICE_STEPS and bool(listed_offices(data, text))


def _place_steps(kind: str, default_next: str) -> list[Step]:
    """Three steps for ``kind`` ("pickup"/"drop"): where, which office, landmark."""
    where, office, landmark = kind, f"{kind}_office", f"{kind}_landmark"

    def where_prompt(ctx: Ctx) -> list[Out]:
        return [Say(f"bot.{kind}.ask")]

    def accept(ctx: Ctx, place: dict[str, Any], found: bool, pinned: bool = False) -> Result:
        if is_the_other_end(ctx, kind, place):
            ctx.state.data.pop("offices", None)
            other = ctx.slots["drop" if kind == "pickup" else "pickup"]
            if not pinned and not same_office(place, other):
                # Two villages India Post puts at one spot (often both at their pincode's
                # centre, having no position of their own): not one place, but no
                # distance to price the trip by either. A location pin gives one.
                return Goto(where, [Say(f"bot.{kind}.pin_needed", {
                    "place": place_label(place), "other": place_label(other)})], prompt=False)
            return Goto(where, [Say("address.same_place")])
        ctx.slots[kind] = place
        say: list[Out] = [Say("bot.place.found", {"place": place_label(place)})] if found else []
        named = ctx.state.data.pop(PIN_PLACE, None) if pinned else None
        if named:
            # A named place shared ("Saraswati Vidya Mandir, Main Road"): its name is the
            # landmark, said back; she is not asked for one.
            place["landmark"] = named[:LANDMARK_MAX]
            ctx.state.data.pop("offices", None)
            return Goto(ctx.after(default_next),
                        [*say, Say("bot.place.landmark_kept", {"landmark": place["landmark"]})])
        return Goto(landmark, say)

    def _village_named(ctx: Ctx, inp: UserInput) -> Result:
        """A village typed by its name, no pincode nor pin: the post offices of the
        service area called so (the ports' offices_named). One: taken (said back with
        its pincode; "dusra gaon" at the landmark undoes it); several of one pincode:
        that pincode's list; of several pincodes: which pincode is asked. Not found:
        what to send instead, and where a pincode is written."""
        name = words.village_typed(inp.text)
        find = getattr(ctx.ports, "offices_named", None)  # the chat's; the phone has none
        if name is None or find is None or is_greeting(inp.text):
            return Retry([Say("bot.place.bad")])
        res = find(name)
        if res.kind != "list" or not res.offices:
            return Retry([Say("bot.place.name_unknown", {"name": echo(words.visible(
                inp.text).strip())})])
        pins = sorted({o["pincode"] for o in res.offices})
        if len(pins) > 1:
            return Retry([Say("bot.place.name_pincodes", {"name": res.offices[0]["name"],
                                                          "pincodes": ", ".join(pins)})])
        offices = told_apart(res.offices)
        if len(offices) == 1:
            return accept(ctx, offices[0], True)
        ctx.state.data["offices"] = offices
        ctx.state.data["page"] = 0
        return Goto(office)

    def outside(res: Any) -> Result:
        label = place_label(res.place) if res.place else ""
        if res.point:
            return Stay([Say("bot.area.outside", {"place": label, "point": res.point,
                                                   "km": res.km})])
        return Stay([Say("bot.area.none", {"place": label})])

    def where_handle(ctx: Ctx, inp: UserInput) -> Result:
        # "845-438" and "845438." are 845438; so are "Pin 845438" and "845438 Bettiah".
        digits = (words.only_digits(inp.text) or words.pincode_in(inp.text)
                  if not inp.has_location else None)
        if inp.has_location:
            res = ctx.ports.locate(inp.latitude, inp.longitude)
        elif digits:
            res = ctx.ports.offices(digits)
        else:
            return _village_named(ctx, inp)
        if res.kind == "error":
            return Retry([Say(_PLACE_ERRORS.get(res.code, "bot.place.bad"),
                              {"pincode": echo(digits or "")})])
        if res.kind == "outside":
            return outside(res)
        if res.kind == "ok":
            return accept(ctx, res.place, True, pinned=inp.has_location)
        offices = told_apart(res.offices)  # two Arjunganj: which is which
        ctx.state.data["offices"] = offices
        ctx.state.data["page"] = 0
        if len(res.offices) == 1:
            return accept(ctx, res.offices[0], True)
        named = named_beside(offices, inp.text, digits) if digits else []
        if len(named) == 1:  # "Laxmipur 845450", as on a letter: that village
            area = ctx.ports.check_area(named[0])
            if area.kind == "outside":
                ctx.state.data.pop("offices", None)
                return Stay([_outside_say(area)])
            return accept(ctx, named[0], True)
        return Goto(office)

    def office_prompt(ctx: Ctx) -> list[Out]:
        offices = ctx.state.data.get("offices") or []
        if not offices:  # gone with the place chosen ("back" after its landmark)
            raise Redirect(where)
        page = ctx.state.data.get("page", 0)
        shown = offices[page * PAGE_SIZE:(page + 1) * PAGE_SIZE]
        pin = offices[0]["pincode"] if offices else ""
        paged = len(offices) > PAGE_SIZE
        # On the last page 9 starts the list again (office_handle): not "9. More" but
        # "9. Names from the start", on the line after the names (as the IVR says it).
        last = paged and (page + 1) * PAGE_SIZE >= len(offices)
        return [Say("bot.place.office", {"pincode": pin}),
                Choices(tuple(said_name(o) for o in shown), more=paged and not last),
                *([Say("bot.more_again", joined=True)] if last else [])]

    def office_help(ctx: Ctx) -> str:
        offices = ctx.state.data.get("offices") or []
        return "bot.help.office" if len(offices) > PAGE_SIZE else "bot.help.office_one_page"

    def office_handle(ctx: Ctx, inp: UserInput) -> Result:
        offices = ctx.state.data.get("offices") or []
        page = ctx.state.data.get("page", 0)
        shown = offices[page * PAGE_SIZE:(page + 1) * PAGE_SIZE]
        if not offices:
            return Goto(where)
        named = listed_offices(ctx.state.data, inp.text) if not inp.has_location else []
        if len(named) > 1:
            return Retry()  # two villages of one name on the page: its number says which
        num = words.number(inp.text) if not (inp.has_location or named) else None
        if num == MORE and len(offices) > PAGE_SIZE:
            pages = (len(offices) + PAGE_SIZE - 1) // PAGE_SIZE
            ctx.state.data["page"] = (page + 1) % pages
            return Stay()
        picked: dict[str, Any] | None = None
        digits = words.only_digits(inp.text) if not inp.has_location else None
        if inp.has_location or len(digits or "") == words.PINCODE_DIGITS or (
                num is None and words.pincode_in(inp.text)):
            return where_handle(ctx, inp)  # another pincode (the first was wrong), a pin
        if named:
            picked = named[0]  # "Char" listed is Char, not option 4
        elif num is not None and 1 <= num <= len(shown):
            picked = shown[num - 1]
        elif num is None:
            typed = words.clean(inp.text)
            exact = [o for o in offices if typed and o["name"].lower() == typed]
            hits = exact or [o for o in offices if typed and o["name"].lower().startswith(typed)]
            picked = hits[0] if len(hits) == 1 else None
        if picked is None:
            return Retry()
        res = ctx.ports.check_area(picked)
        if res.kind == "outside":
            ctx.state.data.pop("offices", None)
            return Goto(where, [_outside_say(res)])
        return accept(ctx, picked, False)

    def landmark_prompt(ctx: Ctx) -> list[Out]:
        return [Say(f"bot.{kind}.landmark")]

    def landmark_handle(ctx: Ctx, inp: UserInput) -> Result:
        if inp.has_location:
            return Retry([Say("bot.place.landmark_bad")])
        text = words.visible(inp.text)
        place = ctx.slots.get(kind)
        if place is None:
            return Goto(where)
        said = words.clean(text)
        if words.names_another_place(text):
            # "nahi, dusra gaon", "galat gaon hai": the village chosen is the wrong one,
            # no landmark; the village list (or the place question) again.
            return Goto(_previous(ctx) or where)
        if words.number(text) == 1 or said in words.SKIP_WORDS or words.refuses(text):
            # "1", "skip", "nahi", "नहीं है", "নেই", "nahi ji", "no no": none
            place["landmark"] = None
        elif said in words.YES_WORDS:
            return Retry([Say("bot.place.landmark_bad")])  # "haan": there is one; which?
        elif len(text) >= 2 and not words.only_digits(text):
            # Digits alone are no landmark: a phone number (hers, or the receiver's
            # typed a step early) or the pincode again would be kept and shown to riders.
            place["landmark"] = text[:LANDMARK_MAX]
        else:
            return Retry([Say("bot.place.landmark_bad")])
        ctx.state.data.pop("offices", None)
        return Goto(ctx.after(default_next))

    return [
        Step(where, where_prompt, where_handle, "bot.help.place", BOOKING, location=True),
        Step(office, office_prompt, office_handle, office_help, BOOKING, location=True,
             own_answer=lambda ctx, inp: names_a_listed_village(
                 ctx.state.step, ctx.state.data, inp.text)),
        Step(landmark, landmark_prompt, landmark_handle, "bot.help.landmark", BOOKING,
             any_text=True),
    ]


def same_office(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two places are the same post office (village) of the same pincode."""
    return all(a.get(k) == b.get(k) for k in ("pincode", "post_office", "name"))


def _outside_say(res: Any) -> Say:
    label = place_label(res.place) if res.place else ""
    if res.point:
        return Say("bot.area.outside", {"place": label, "point": res.point, "km": res.km})
    return Say("bot.area.none", {"place": label})


_PLACE_ERRORS = {
    "bad_pincode": "address.bad_pincode",
    "unknown_pincode": "address.unknown_pincode",
    "bad_location": "bot.place.bad_location",
    "outside_india": "bot.place.outside_india",
    "no_post_office_near": "bot.place.none_near",
    "pincode_not_located": "address.unknown_pincode",
}


# --- recipient -------------------------------------------------------------------------

def _name_handle(ctx: Ctx, inp: UserInput) -> Result:
    text = words.visible(inp.text)
    both = words.name_and_number(text)
    name = both[0] if both else text
    letters = sum(ch.isalpha() for ch in name)
    if (inp.has_location or letters < 2 or is_greeting(name)
            or any(ch.isdigit() for ch in name)):
        # "hi" is nobody's name; nor is "Ramesh 12": a name holds no number.
        return Retry([Say("bot.recipient.bad_name")])
    ctx.slots["recipient_name"] = name[:80]
    if both is None:
        return Goto("recipient_phone")
    # "Ramesh 9876543210": the name, and the number the next question asks for.
    phone = mobile(both[1])
    if phone is None:
        return Goto("recipient_phone", [Say("bot.recipient.bad_phone")])
    ctx.slots["recipient_phone"] = phone
    return Goto(ctx.after("category"), [Say("bot.recipient.saved",
                                            {"name": ctx.slots["recipient_name"],
                                             "phone": phone})])


def _names_the_language_in_use(ctx: Ctx, inp: UserInput) -> bool:
    """The bare name of the language already spoken ("தமிழ்", "Tamizh" in a Tamil chat) at
    the receiver's name: a given name, since switching to it would change nothing (and
    ask the same question again, as often as it is sent). Another language's name, or
    "in Tamil" (தமிழில்), still switches (_language_named). So is a word for "language"
    in an Indian tongue ("Bhasha", "भाषा": a woman's name; the list is a "0" away, at the
    menu), unlike the English "language", nobody's name, which opens the list."""
    said = words.clean(inp.text)
    return (words.LANGUAGE_BY_NAME.get(said) == ctx.lang
            or (not inp.has_location and said in _NAMES_FOR_LANGUAGE))


_NAMES_FOR_LANGUAGE = words.LANGUAGE_WORDS - {"language", "lang"}


def mobile(typed: str) -> str | None:
    """The Indian mobile number typed ("98765 43210", "+91 98765-43210", "०९८७६५४३२१०")
    in E.164, or None."""
    digits = words.only_digits(typed)
    if not digits:
        return None
    try:
        plus = "+" if words.without_format_marks(typed).strip().startswith("+") else ""
        phone = normalize_phone(plus + digits)
    except ValidationError:
        return None
    return phone if is_indian_mobile(phone) else None


def _phone_prompt(ctx: Ctx) -> list[Out]:
    return [Say("bot.recipient.phone", {"name": ctx.slots.get("recipient_name", "")})]


def _phone_handle(ctx: Ctx, inp: UserInput) -> Result:
    phone = mobile(inp.text) if not inp.has_location else None
    if phone is None:
        return Retry([Say("bot.recipient.bad_phone")])
    ctx.slots["recipient_phone"] = phone
    return Goto(ctx.after("category"))


# --- parcel: numbered choices ----------------------------------------------------------

def _choice_step(name: str, question: str, labels: Sequence[str], slot: str,
                 values: Sequence[Any], next_step: str | Callable[[Ctx], str],
                 aliases: Sequence[frozenset[str]] = (), help_key: str = "bot.help.choice",
                 group: str | None = BOOKING,
                 typed: Callable[[UserInput], int | Retry | None] | None = None) -> Step:
    """A question answered by picking one of ``labels`` (catalog keys); stores the value.
    ``typed`` reads an answer given in the question's own terms (a weight in kg) first: the
    option it falls in, a Retry saying why none, or None to read it as a pick."""

    def prompt(ctx: Ctx) -> list[Out]:
        return [Say(question), Choices(tuple(Say(k) for k in labels))]

    def handle(ctx: Ctx, inp: UserInput) -> Result:
        own = typed(inp) if typed is not None else None
        if isinstance(own, Retry):
            return own
        picked = own or choice(inp, len(labels), aliases) or label_typed(tuple(labels), inp)
        if picked is None:
            return Retry()
        ctx.slots[slot] = values[picked - 1]
        nxt = next_step(ctx) if callable(next_step) else next_step
        return Goto(nxt)

    return Step(name, prompt, handle, help_key, group)


def weight_typed(inp: UserInput) -> int | Retry | None:
    """The weight option (1-based, WEIGHTS) a weight written in kg falls in: "5 kg", "2
    quintal", "500 gm", or a bare number above the options' own (a "20" is 20 kg); a bare
    1 to 5 is the option of that number. Above the heaviest band: a Retry saying we carry
    up to it."""
    if inp.has_location:
        return None
    kg = words.kilograms(inp.text)
    if kg is None:
        bare = words.number(inp.text)
        kg = bare if bare is not None and bare > len(WEIGHTS) else None
    if kg is None or kg <= 0:
        return None
    grams = kg * 1000
    fits = [i for i, w in enumerate(WEIGHTS, start=1) if WeightBucket(w).max_grams >= grams]
    if not fits:
        heaviest = WeightBucket(WEIGHTS[-1]).max_grams // 1000
        return Retry([Say("bot.parcel.weight_too_heavy", {"kg": heaviest})])
    return fits[0]


def label_typed(labels: tuple[str, ...], inp: UserInput) -> int | None:
    """The 1-based option whose label (``labels``: catalog keys) was typed back instead of
    its number: "Documents", "बड़ी बोरी", "chhota" (label_words)."""
    if inp.has_location:
        return None
    typed = words.label_form(inp.text)
    return next((i for i, forms in enumerate(label_words(labels), start=1)
                 if typed in forms), None)


@functools.cache
def label_words(labels: tuple[str, ...]) -> tuple[frozenset[str], ...]:
    """How each option of a question may be typed back: its label in every catalog
    language, whole or one of its parts (words.label_parts), and the words people use for
    it (words.CHOICE_WORDS). A form two options share names neither: a number is asked."""
    forms = [set().union(*(words.label_parts(shown) for shown in _each_catalog(key)),
                         (words.label_form(w) for w in words.CHOICE_WORDS.get(key, ())))
             for key in labels]
    shared = {f for i, mine in enumerate(forms) for f in mine
              if any(f in other for j, other in enumerate(forms) if j != i)}
    return tuple(frozenset(mine - shared) for mine in forms)


def _value_prompt(ctx: Ctx) -> list[Out]:
    return [Say("bot.parcel.value"),
            Choices(tuple(Say(f"bot.value.{k}") for k, _ in VALUE_BUCKETS))]


def _value_handle(ctx: Ctx, inp: UserInput) -> Result:
    picked = choice(inp, len(VALUE_BUCKETS))
    rupees: int | None
    if picked is not None:
        rupees = VALUE_BUCKETS[picked - 1][1]
    else:
        rupees = words.amount_rupees(inp.text) if not inp.has_location else None
        if rupees is None or rupees < 10 or rupees > MAX_VALUE_RUPEES:
            return Retry([Say("bot.parcel.value_bad")])
    ctx.slots["value_paise"] = rupees * 100
    return Goto(ctx.after("speed"))


# --- speed, quote, confirm, change -----------------------------------------------------

def _quote(ctx: Ctx) -> dict[str, Any]:
    return quote_or_resize(ctx, ctx.slots)


def quote_or_resize(ctx: Ctx, slots: dict[str, Any], *, far: str = "drop",
                    far_say: Sequence[Out] = (Say("bot.trip.too_far"),)) -> dict[str, Any]:
    """The quote for ``slots``; when no vehicle on the rate card carries a parcel this big
    or heavy (a region's card may leave vans out), the size question again, saying so.
    When nothing we have can carry it that far (``too_far``), step ``far`` (the drop
    place again, saying ``far_say``): the rest of the booking is kept, and a new drop
    goes on to the confirmation."""
    try:
        return ctx.ports.quote(slots)
    except DomainError as exc:
        if exc.code not in ("too_far", "too_big_for_vehicle"):
            raise
        _cannot_carry(ctx, exc.code, far, far_say)


def _cannot_carry(ctx: Ctx, code: str, far: str, far_say: Sequence[Out]) -> NoReturn:
    """Redirect for a trip the rate card and our Points cannot carry (quote_or_resize):
    ``too_far`` to step ``far`` (saying ``far_say``, then back to the confirmation),
    ``too_big_for_vehicle`` to the size question."""
    if code == "too_far":
        ctx.state.data["return_to"] = "confirm"
        raise Redirect(far, far_say)
    raise Redirect("size", [Say("bot.parcel.no_vehicle")])


def offered_tiers(ctx: Ctx, quote: dict[str, Any]) -> list[str]:
    """The tiers the quote offers (those whose hours can be kept over the trip), in
    TIERS order: the speed question's numbered options, kept for its answer."""
    tiers = [t for t in TIERS if t in quote["tiers"]]
    ctx.scratch["tiers"] = tiers
    return tiers


def tier_gone(ctx: Ctx, quote: dict[str, Any], say: Callable[[str], Out]) -> None:
    """Before confirming: the speed question again (Redirect) when no tier is picked yet,
    or the picked one is not offered for this trip any more (a farther place since),
    saying so with ``say(tier)``."""
    tier = ctx.slots.get("tier")
    if tier in quote["tiers"]:
        return
    raise Redirect("speed", [say(tier)] if tier is not None else [])


def tier_label(tier: str, quote: dict[str, Any]) -> Say:
    """A speed tier as the customer reads or hears it: with the hours it promises (the
    configured ones, not a fixed "today" that is false at night)."""
    return Say(f"tier.{tier}", {"hours": quote["hours"][tier]})


def _speed_prompt(ctx: Ctx) -> list[Out]:
    q = _quote(ctx)
    options = tuple(
        Say("bot.speed.option", {"tier": tier_label(t, q),
                                 "total_paise": q["tiers"][t]["total_paise"]})
        for t in offered_tiers(ctx, q)
    )
    # Nobody on duty near the pickup (at night, say): said before a tier is picked.
    out: list[Out] = [] if ctx.ports.rider_free(ctx.slots) else [Say("bot.speed.no_rider")]
    return [*out, Say("bot.speed.ask", {"km": q["km"]}), Choices(options)]


def _speed_handle(ctx: Ctx, inp: UserInput) -> Result:
    # The options as shown (offered_tiers): option 1 is "Normal" where "Fast" is not sold.
    tiers = ctx.scratch.get("tiers") or TIERS
    # Or a tier shown typed back ("normal", "sasta", "जल्दी"): only those shown are read.
    picked = choice(inp, len(tiers)) or label_typed(tuple(f"tier.{t}" for t in tiers), inp)
    if picked is None:
        return Retry()
    ctx.slots["tier"] = tiers[picked - 1]
    return Goto("confirm")


# The speed question's help for the options it shows (offered_tiers): a long trip has no
# "Fast", a short one at the minimum fare no "Cheap" (it would be no cheaper); a very long
# one may have Cheap alone (bot.help.speed_one).
_SPEED_HELP = {
    TIERS: "bot.help.speed",
    ("standard", "economy"): "bot.help.speed_normal_cheap",
    ("express", "standard"): "bot.help.speed_fast_normal",
}


def _speed_help(ctx: Ctx) -> str:
    """The speed question's help, naming only the options shown (and their numbers)."""
    shown = tuple(ctx.scratch.get("tiers") or TIERS)
    if len(shown) == 1:
        return "bot.help.speed_one"
    return _SPEED_HELP.get(shown, "bot.help.choice")


def _confirm_prompt(ctx: Ctx) -> list[Out]:
    ctx.state.data.pop("return_to", None)
    s = ctx.slots
    q = _quote(ctx)
    tier_gone(ctx, q, lambda t: Say("bot.speed.gone", {"tier": tier_label(t, q)}))
    fare = q["tiers"][s["tier"]]
    ctx.state.data["shown_total"] = fare["total_paise"]
    out: list[Out] = [Say("bot.confirm.summary", {
        "pickup": _place_told(s["pickup"]), "drop": _place_told(s["drop"]),
        "name": s["recipient_name"], "phone": s["recipient_phone"],
        "size": Say(f"size.{s['size']}"), "weight": Say(f"bot.weight.{s['weight']}"),
        "tier": tier_label(s["tier"], q), "km": q["km"],
        "vehicle": Say(f"vehicle.{q['vehicle']}"),
    })]
    for code, amount in rupee_lines(fare):
        out.append(Say("bot.confirm.line", {"label": Say(f"fare.{code}"),
                                            "amount_paise": amount}, joined=len(out) > 1))
    out.append(Say("bot.confirm.total", {"total_paise": fare["total_paise"]}, joined=True))
    if not ctx.ports.rider_free(s):
        # The last word before the payment link: paid now, the booking would wait out
        # its search with nobody to take it, then be refunded days later.
        out.append(Say("bot.confirm.no_rider", {"minutes": q["search_minutes"][s["tier"]]}))
    out.append(Choices((Say("bot.confirm.yes"), Say("bot.confirm.change"),
                        Say("bot.confirm.cancel"))))
    return out


# A landmark as the confirmation shows it: the rider is told it (with the village), so the
# customer sees it too, cut short at a word.
LANDMARK_SHOWN_MAX = 40


def _place_told(place: dict[str, Any]) -> Say | str:
    """A place as the confirmation says it: its label, and the landmark given for it."""
    landmark = " ".join((place.get("landmark") or "").split())
    if not landmark:
        return place_label(place)
    if len(landmark) > LANDMARK_SHOWN_MAX:
        cut = landmark[:LANDMARK_SHOWN_MAX - 1]
        if " " in cut[LANDMARK_SHOWN_MAX // 2:]:
            cut = cut[:cut.rfind(" ")]
        landmark = cut.rstrip(" ,;:-/(") + "…"
    return Say("bot.confirm.with_landmark", {"place": place_label(place), "landmark": landmark})


# The key, in the slots handed to Ports.confirm, of the total the customer said yes to.
AGREED_TOTAL = "agreed_total_paise"


def confirm_as_shown(ctx: Ctx, slots: dict[str, Any], *, far: str = "drop",
                     far_say: Sequence[Out] = (Say("bot.trip.too_far"),)) -> dict[str, Any]:
    """Book ``slots`` at the total the confirmation showed, or not at all: "yes" agreed to
    that price, not another. The port's booking works the fare out once and refuses
    (``price_changed``) when its total is another (the rate card or surge moved since),
    so no price the customer never saw is booked, and a "yes" costs one quote. When no
    vehicle on the active rate card carries the parcel any more, or nothing we have
    carries it that far any more (a relay's Point closed since the quote), the size
    question or a nearer drop, as quote_or_resize asks (``far``, ``far_say``); when the
    speed picked cannot be kept any more, the confirmation again, whose fresh quote asks
    the speed again saying so (tier_gone); after too many cancels within the hour, the
    menu, saying so, the draft kept. Any other refusal is the caller's to say."""
    shown = ctx.state.data.pop("shown_total", None)
    done = ctx.ports.confirm(slots if shown is None else {**slots, AGREED_TOTAL: shown})
    refused = done.get("refused")
    if refused in ("too_far", "too_big_for_vehicle"):
        _cannot_carry(ctx, refused, far, far_say)
    if refused == "tier_not_offered":
        raise Redirect("confirm")
    if refused == "too_many_cancelled":
        # The draft stays, as for too many unpaid: "continue that booking" once the hour
        # moved on.
        ctx.state.data["draft_step"] = "confirm"
        raise Redirect(MENU, [Say("common.too_many_cancelled")])
    return done


_FARE_LINES = ("base", "distance", "size", "weight", "fragile", "tier", "surge", "minimum")


def rupee_lines(fare: dict) -> list[tuple[str, int]]:
    """The fare's lines as a customer reads them: whole rupees that add up to the total.

    Each line is rounded to the nearest rupee and the few paise left over (with the
    fare's own rounding line) go to the largest line, so "₹272.83" never shows."""
    lines = [(x["code"], x["amount_paise"]) for x in fare["lines"]
             if x["code"] in _FARE_LINES and x["amount_paise"]]
    if not lines:
        return []
    shown = [(code, (abs(a) + 50) // 100 * 100 * (1 if a > 0 else -1)) for code, a in lines]
    rest = fare["total_paise"] - sum(a for _, a in shown)
    biggest = max(range(len(shown)), key=lambda i: shown[i][1])
    code, amount = shown[biggest]
    shown[biggest] = (code, amount + rest)
    return [(c, a) for c, a in shown if a]


# The confirmation's options as people type them, besides each catalog's own label
# (confirm_words): option 3 is "Cancel" in English, "रहने दीजिए" in Hindi, "থাক" in Bengali.
_CONFIRM_WORDS = (
    words.YES_WORDS | {"book", "book it", "book karo", "बुक करो", "बुक कीजिए"},
    frozenset({"change", "badlo", "बदलो", "badalna hai", "बदलना है", "বদলাও", "बदला",
               "மாற்று", "మార్చు", "બદલો", "ಬದಲಾಯಿಸಿ"}),
    words.NO_WORDS | {
        "cancel", "cancel it", "cancel karo", "cancel kar do", "कैंसिल", "कैंसल", "कैंसिल करो",
        "कैंसल करो", "radd", "radd karo", "रद्द", "रद्द करो", "rehne do", "rahne do",
        "रहने दो", "रहने दीजिए", "mat karo", "मत करो",  # hi
        "batil", "বাতিল", "বাতিল করুন", "thak", "থাক", "ক্যান্সেল",  # bn
        "radd kara", "रद्द करा", "rahu dya", "राहू द्या", "राहू दे",  # mr
        "rathu", "ரத்து", "ரத்து செய்", "கேன்சல்",  # ta
        "raddu", "రద్దు", "రద్దు చేయండి", "క్యాన్సిల్",  # te
        "rad", "rad karo", "રદ", "રદ કરો", "raheva do", "રહેવા દો", "કેન્સલ",  # gu
        "raddu maadi", "ರದ್ದು", "ರದ್ದು ಮಾಡಿ", "ಕ್ಯಾನ್ಸಲ್",  # kn
    },
)


# A bare cancel typed at any question of a booking ("cancel", "rehne do", "कैंसिल करना
# है"): the draft is dropped as the confirmation's "Cancel" drops it (_abandon). Not a
# bare no, which answers "Can it break?" and "Is there a landmark?", nor a word that is
# also somebody's or some place's name (Rad, Thak, Rathu, Raddu, Batil).
DROP_WORDS = (_CONFIRM_WORDS[2] - words.NO_WORDS
              - {"rad", "thak", "rathu", "raddu", "batil"}) | MENU_WORDS[2]


def _abandon(ctx: Ctx, inp: UserInput) -> Result | None:
    """A bare cancel at a booking's question: no booking, nothing kept of it (not even as
    a draft to continue: she said she does not want it)."""
    if inp.has_location or words.clean(inp.text) not in DROP_WORDS:
        return None
    _clear_draft(ctx)
    return Goto(MENU, [Say("bot.confirm.dropped"), next_hint()], prompt=False)


@functools.cache
def confirm_words() -> tuple[frozenset[str], ...]:
    """Words for the confirmation's three options: _CONFIRM_WORDS and every catalog's own
    label of each ("Yes, book it", "कुछ बदलना है", "থাক" typed back as shown)."""
    labels = ("bot.confirm.yes", "bot.confirm.change", "bot.confirm.cancel")
    return tuple(extra | {words.clean(shown) for shown in _each_catalog(key)}
                 for extra, key in zip(_CONFIRM_WORDS, labels, strict=True))


def _each_catalog(key: str) -> list[str]:
    found = []
    for lang in LANGUAGES:
        try:
            found.append(i18n.raw(key, lang))
        except KeyError:
            continue
    return found


def _confirm_handle(ctx: Ctx, inp: UserInput) -> Result:
    picked = choice(inp, 3, confirm_words())
    if picked == 1:
        done = confirm_as_shown(ctx, ctx.slots)
        if done.get("refused") == "price_changed":  # shown again, at the price it is now
            return Goto("confirm", [Say("bot.confirm.new_price")])
        if done.get("refused") == "outside_service_area":
            # A place no longer served (its Point closed since): asked again, the rest kept.
            kind = "drop" if done.get("field") == "drop" else "pickup"
            ctx.state.data["return_to"] = "confirm"
            return Goto(kind, [Say("bot.area.none",
                                   {"place": place_label(ctx.slots.get(kind) or {})})])
        if done.get("refused") == "too_many_unpaid":
            # The draft stays: once they pay or cancel one, "continue that booking".
            ctx.state.data["draft_step"] = "confirm"
            return Goto(MENU, [Say("bot.confirm.too_many_unpaid", {"count": done["count"]}),
                               next_hint()], prompt=False)
        _clear_draft(ctx)
        return Goto(MENU, [Say("bot.confirm.done", done), next_hint()], prompt=False)
    if picked == 2:
        return Goto("change")
    if picked == 3:
        _clear_draft(ctx)
        return Goto(MENU, [Say("bot.confirm.dropped"), next_hint()], prompt=False)
    return Retry()


_CHANGE = (("pickup", "pickup"), ("drop", "drop"), ("recipient", "recipient_name"),
           ("parcel", "category"), ("speed", "speed"))


def change_step(prefix: str, options: tuple[tuple[str, str], ...]):
    """The "what do you want to change?" step of a channel: numbered ``options`` (catalog
    key suffix, step to go to), each returning to the confirmation afterwards."""

    def prompt(ctx: Ctx) -> list[Out]:
        return [Say(f"{prefix}.change.ask"),
                Choices(tuple(Say(f"{prefix}.change.{k}") for k, _ in options))]

    def handle(ctx: Ctx, inp: UserInput) -> Result:
        picked = choice(inp, len(options))
        if picked is None:
            return Retry()
        ctx.state.data["return_to"] = "confirm"
        return Goto(options[picked - 1][1])

    return prompt, handle


_change_prompt, _change_handle = change_step("bot", _CHANGE)


# --- track and cancel ------------------------------------------------------------------

def _status_say(ref: str, status: str) -> Say:
    return Say(f"booking.status.{status}", {"ref": ref})


def _track_prompt(ctx: Ctx) -> list[Out]:
    bookings = ctx.ports.my_bookings()[:8]
    ctx.scratch["refs"] = [ref for ref, _ in bookings]
    return [Say("bot.track.ask"),
            Choices(tuple(_status_say(ref, status) for ref, status in bookings))]


def _picked_reference(ctx: Ctx, inp: UserInput) -> tuple[str | None, Result | None]:
    """A reference chosen from the shown list or typed in full; or the Result to return."""
    refs = ctx.scratch.get("refs") or []
    num = words.number(inp.text) if not inp.has_location else None
    if num is not None and 1 <= num <= len(refs):
        return refs[num - 1], None
    digits = words.only_digits(inp.text) if not inp.has_location else None
    if digits and len(digits) >= 6:
        ref = normalize_reference(digits)
        if ref is None or not is_valid_reference(ref):
            return None, Retry([Say("bot.track.bad_ref", {"ref": echo(digits)})])
        return ref, None
    return None, Retry()


def _typed_reference(inp: UserInput) -> str | None:
    """A valid booking number that is the whole answer ("4821 7730"), else None."""
    digits = words.only_digits(inp.text) if not inp.has_location else None
    ref = normalize_reference(digits) if digits else None
    return ref if ref is not None and is_valid_reference(ref) else None


def _track_handle(ctx: Ctx, inp: UserInput) -> Result:
    ref, problem = _picked_reference(ctx, inp)
    if problem is not None:
        return problem
    assert ref is not None
    return _tracked(ctx, ref)


def _tracked(ctx: Ctx, ref: str) -> Result:
    """Where booking ``ref`` is (one of theirs, or a parcel coming to them), then the
    menu; not found (asked again) for any other."""
    status = ctx.ports.booking_status(ref)
    if status is None:
        return Retry([Say("bot.track.not_found", {"ref": ref})])
    return Goto(MENU, [_status_say(ref, status), *_pay_link(ctx, ref, status), next_hint()],
                prompt=False)


def _pay_link(ctx: Ctx, ref: str, status: str) -> list[Out]:
    """A booking waiting for payment is tracked with its link: whoever asks may have lost
    the message that brought it (or says it is on its way, while it is being made)."""
    link = ctx.ports.payment_link(ref) if status == "awaiting_payment" else None
    if link is None:
        return []
    if link["url"] is None:
        return [Say("bot.track.link_coming")]
    return [Say("bot.track.pay", {"url": link["url"], "total_paise": link["total_paise"]})]


_ON_THE_WAY = frozenset({"picked_up", "in_transit"})


def not_allowed_kind(quote: dict[str, Any]) -> str:
    """Why a booking cannot be cancelled: "picked_up" (its parcel is with a rider) or
    "not_allowed" (it is over: delivered, cancelled, expired, refunded, failed)."""
    on_the_way = (quote.get("reason_code") == "already_picked_up"
                  and quote.get("status") in _ON_THE_WAY)
    return "picked_up" if on_the_way else "not_allowed"


def _not_allowed(ref: str, quote: dict[str, Any]) -> Say:
    return Say(f"bot.cancel.{not_allowed_kind(quote)}", {"ref": ref})


def cancel_kind(preview: dict[str, Any]) -> str:
    """What cancelling costs, as the confirmation says it: "fee" (a rider is coming: his
    fee, the rest comes back), "fee_only" (his fee, nothing left to come back), "refund"
    (paid: the money comes back), "paid_back" (paid, nothing left to come back) or "free"
    (nothing paid). Support's refund from the dashboard leaves a paid booking nothing to
    give back: she is told neither of a sum of nothing nor that she paid nothing. Nor of
    a rider's fee then: the platform pays what her payment lacks of it (payments'
    cancellation_preview), so "our team gave your money back" is what she needs to hear."""
    if not preview["refund_paise"] and preview.get("refunded_outside_paise"):
        return "paid_back"
    if preview["fee_paise"]:
        return "fee" if preview["refund_paise"] else "fee_only"
    if preview["refund_paise"]:
        return "refund"
    # Only a booking not paid yet is quoted "not_paid"; a paid one with nothing to give
    # back had all its money given back already (its riders earn none before pickup).
    return "free" if preview.get("reason_code", "not_paid") == "not_paid" else "paid_back"


def keep_shown(ctx: Ctx, preview: dict[str, Any]) -> None:
    """Remember the refund and fee the customer is told: a "yes" cancels only at these."""
    ctx.state.data["cancel_shown"] = {"refund_paise": preview["refund_paise"],
                                      "fee_paise": preview["fee_paise"]}


def cancel_as_shown(ctx: Ctx, ref: str) -> tuple[str, dict[str, Any]]:
    """The customer said yes to cancelling ``ref``: ("done", result), or ("again", {}) when
    nothing was cancelled because the refund or fee is not what was shown (a rider took
    the job meanwhile; ask again with the new amounts), or ("closed", quote) when it
    cannot be cancelled now (picked up, expired, cancelled since; an empty quote: it is
    not this customer's booking any more, and nothing was written)."""
    shown = ctx.state.data.get("cancel_shown")
    if shown is None:
        return "again", {}  # asked before the shown amounts were kept
    try:
        result = ctx.ports.cancel(ref, shown)
    except DomainError:
        return "closed", {}
    if result["done"]:
        return "done", result
    return ("again", {}) if result["allowed"] else ("closed", result)


def end_cancel(ctx: Ctx) -> None:
    ctx.state.data.pop("cancel_ref", None)
    ctx.state.data.pop("cancel_shown", None)


def _cancel_pick_prompt(ctx: Ctx) -> list[Out]:
    bookings = ctx.ports.my_bookings(open_only=True)[:8]
    ctx.scratch["refs"] = [ref for ref, _ in bookings]
    return [Say("bot.cancel.ask"),
            Choices(tuple(_status_say(ref, status) for ref, status in bookings))]


def _cancel_pick_handle(ctx: Ctx, inp: UserInput) -> Result:
    ref, problem = _picked_reference(ctx, inp)
    if problem is not None:
        return problem
    assert ref is not None
    preview = ctx.ports.cancel_preview(ref)
    if preview is None:
        return Retry([Say("bot.track.not_found", {"ref": ref})])
    if not preview["allowed"]:
        return Goto(MENU, [_not_allowed(ref, preview), next_hint()], prompt=False)
    ctx.state.data["cancel_ref"] = ref
    return Goto("cancel_confirm")


def _cancel_confirm_prompt(ctx: Ctx) -> list[Out]:
    ref = ctx.state.data.get("cancel_ref", "")
    preview = ctx.ports.cancel_preview(ref) if ref else None
    if preview is None or not preview["allowed"]:
        # Asked again (help, a word it does not take, a language) once it cannot be
        # cancelled any more (picked up, closed, no longer hers): say so, not a question
        # whose amounts are those of no cancel.
        end_cancel(ctx)
        raise Redirect(MENU, [_not_allowed(ref, preview or {})] if ref else [])
    # What the customer is told is what a "yes" may do: the cancel checks it again.
    keep_shown(ctx, preview)
    return [Say(f"bot.cancel.{cancel_kind(preview)}",
                {"ref": ref, "refund_paise": preview["refund_paise"],
                 "fee_paise": preview["fee_paise"]}),
            Choices((Say("bot.cancel.yes"), Say("bot.cancel.no")))]


# Cancelling may cost a fee: a thumbs-up, on WhatsApp often only "seen", is no yes here.
CANCEL_YES_NO = (words.YES_WORDS - {"👍"}, words.NO_WORDS)


def _cancel_confirm_handle(ctx: Ctx, inp: UserInput) -> Result:
    picked = choice(inp, 2, CANCEL_YES_NO)
    ref = ctx.state.data.get("cancel_ref")
    if ref is None:
        return Goto(MENU)
    if picked == 1:
        outcome, result = cancel_as_shown(ctx, ref)
        if outcome == "again":  # nothing cancelled: asked again with the new amounts
            return Goto("cancel_confirm", [Say("bot.cancel.changed")])
        if outcome == "closed":  # picked up or closed since the question: say so
            return _cancel_finished(ctx, [_not_allowed(ref, result)])
        key = "bot.cancel.done_refund" if result.get("refund_paise") else "bot.cancel.done"
        return _cancel_finished(ctx, [Say(key, {"ref": ref,
                                                "refund_paise": result.get("refund_paise", 0)})])
    if picked == 2:
        return _cancel_finished(ctx, [Say("bot.cancel.kept", {"ref": ref})])
    return Retry()


def _cancel_finished(ctx: Ctx, say: list[Out]) -> Result:
    end_cancel(ctx)
    return Goto(MENU, [*say, next_hint()], prompt=False)


# --- rate a delivery -------------------------------------------------------------------

# The rating question is asked after a delivery (core.services.rating.ask_after_delivery),
# which moves an idle chat to this step: "1".."5" are stars here only, so a customer
# at the menu who sends "1" starts a booking. Anything but a rating leaves the step.
STAR_CHARS = frozenset("⭐★🌟")
_OUT_OF_5 = re.compile(r"\s*(?:/|out of|of)\s*5\b")
_DIGITS = re.compile(r"\d+")
_STARS_LINE = re.compile(r"^\s*([1-5])\s*=\s*([^⭐(]+?)\s*⭐", re.MULTILINE)
# "I give it 5 stars", "service bahut acchi thi": a short reply; a longer one is not read.
MAX_RATING_WORDS = 5
RATING_WORDS_KEY = "bot.rate.words.{}"  # the words for 1..5 stars, in every catalog
_REPEATS = re.compile(r"(.)\1+")
# The only words a rating may carry besides its number or phrase ("bahut accha tha ji",
# "nice service", "I give it 4"; emoji and punctuation are no words). Any other word
# makes the reply no rating: "accha, parcel bhejna hai" is "OK, I want to send a
# parcel", "baad mein" is "later", "theek nahi" is no 3. Asked again for a number, the
# customer loses a moment; a wrong rating would stay on the rider.
FILLERS = frozenset({
    "ji", "sir", "madam", "mam", "maam", "bhai", "bhaiya", "bro", "dada", "anna", "garu",
    "hai", "h", "he", "tha", "thi", "the", "laga", "lagi", "aahe", "chilo",
    "i", "it", "is", "was", "my", "give", "rating", "star", "stars",
    "service", "delivery", "experience",
    "thanks", "thank", "you", "thx", "ty", "thanku", "dhanyavad", "dhanyawad", "shukriya",
    "जी", "सर", "है", "था", "थी", "लगा", "सेवा", "धन्यवाद", "शुक्रिया",
    # "star" as typed in each script ("5 स्टार"): hi and mr, bn, ta, te, gu, kn
    "स्टार", "स्टार्स", "স্টার", "ஸ்டார்", "స్టార్", "સ્ટાર", "ಸ್ಟಾರ್",
    # and in each language's own word ("5 तारे", "৫ তারা", "5 நட்சத்திரம்")
    "tare", "taare", "tara", "sitare", "sitara", "तारे", "तारा", "सितारे", "सितारा",
    "তারা", "তারকা", "நட்சத்திரம்", "நட்சத்திரங்கள்", "నక్షత్రాలు", "నక్షత్రం",
    "તારા", "તારો", "ನಕ್ಷತ್ರ", "ನಕ್ಷತ್ರಗಳು"})
# Greetings by the time of day, besides GREETINGS: "good morning" is no 4 stars.
DAY_GREETINGS = frozenset({
    "good morning", "good afternoon", "good evening", "good night", "gud morning",
    "gud night", "good nite", "gm", "gn", "suprabhat", "शुभ रात्रि", "सुप्रभात"})


def _squeezed(word: str) -> str:
    """A letter typed twice or more as one: "achhaa", "accha" and "acha" read alike."""
    return _REPEATS.sub(r"\1", word)


_FILLERS_READ = frozenset(_squeezed(w) for w in FILLERS)  # "jii", "sirrr"


def _words_of(text: str) -> list[str]:
    """The words of a reply, lower-cased; punctuation, symbols and emoji part words
    ("accha👍"), format marks (a zero-width joiner) are dropped."""
    kept = []
    for ch in words.clean(text):
        kind = unicodedata.category(ch)
        kept.append(" " if kind[0] in "PSZ" else "" if kind[0] == "C" else ch)
    return "".join(kept).split()


def is_greeting(text: str) -> bool:
    """A hello, alone or with a "ji" or "sir": "Namaste ji", "Good morning sir", "gm"."""
    said = [w for w in _words_of(text) if _squeezed(w) not in _FILLERS_READ]
    return " ".join(said) in GREETINGS | DAY_GREETINGS


def rating_phrases() -> list[tuple[str, int, tuple[str, ...]]]:
    """(language, stars, words) for every phrase a catalog lists for a star value: its
    RATING_WORDS_KEY lines (comma-separated phrases; "a/b" is either spelling at that
    place, "bahut/bohot accha/acha"), and the question's own "very good" and "very bad"."""
    found = []
    for lang in LANGUAGES:
        try:
            text = i18n.raw("bot.rate.ask", lang)
        except KeyError:
            text = ""
        found += [(lang, int(n), tuple(_words_of(w))) for n, w in _STARS_LINE.findall(text)]
        for n in range(1, 6):
            try:
                listed = i18n.raw(RATING_WORDS_KEY.format(n), lang)
            except KeyError:
                continue
            for phrase in listed.split(","):
                spellings = [["".join(_words_of(s)) for s in w.split("/")] for w in phrase.split()]
                found += [(lang, n, tuple(w for w in ws if w))
                          for ws in itertools.product(*spellings) if any(ws)]
    return found


def phrases_read(lang: str) -> list[tuple[tuple[str, ...], int, bool]]:
    """(words, stars, squeezed) for the phrases read from a customer of ``lang``: their
    own language's, English's, and any catalog's in its own script. Romanized words of
    an Indian language are read squeezed ("achhaa" is "acha"), English's as spelt
    ("baad", Hindi for "later", is no "bad"; "god" no "good"). Another language's
    romanized words are not read ("nala", Tamil "nalla", is a place in "Nala Sopara");
    a script's words are, as no romanized word can be taken for them."""
    found = []
    for where, n, phrase in rating_phrases():
        romanized = all(w.isascii() for w in phrase)
        if where in (lang, "en") or not romanized:
            squeeze = romanized and where != "en"
            found.append((tuple(map(_squeezed, phrase)) if squeeze else phrase, n, squeeze))
    return found


def _phrases_in(said: list[str], lang: str) -> tuple[set[int], list[str]]:
    """The star values the phrases found in ``said`` name (the longest where one holds
    another: "accha" in "bahut accha" is part of it), and the words outside them."""
    squeezed = [_squeezed(w) for w in said]
    found = []
    for phrase, n, squeeze in phrases_read(lang):
        seen, k = (squeezed if squeeze else said), len(phrase)
        found += [(i, i + k, n) for i in range(len(said) - k + 1) if tuple(seen[i:i + k]) == phrase]
    kept = [(a, b, n) for a, b, n in found
            if not any(c <= a and b <= d and d - c > b - a for c, d, _ in found)]
    covered = {i for a, b, _n in kept for i in range(a, b)}
    return {n for _a, _b, n in kept}, [w for i, w in enumerate(said) if i not in covered]


def _mood(stars: int) -> int:
    """Which way a rating goes: 1-2 down, 3 neither, 4-5 up."""
    return (stars > 3) - (stars < 3)


def _number_word(word: str, lang: str) -> int | None:
    """The number a word of a reply names: in the customer's language or English when
    romanized ("paanch", "five"; another language's romanized "be" is no 2), in any
    script's own letters ("पांच")."""
    if word.isascii():
        return (words.NUMBERS_BY_LANGUAGE.get(lang, {}).get(word)
                or words.NUMBERS_BY_LANGUAGE["en"].get(word))
    return words.NUMBER_WORDS.get(word)


def stars_given(text: str, lang: str) -> int | None:
    """1..5 from "4", "४", "char", "⭐⭐⭐⭐", "4 ⭐", "5 stars", "five stars", "paanch ji",
    "4/5", "4 out of 5", or the words a customer of ``lang`` is read by (``phrases_read``:
    "bahut accha", "very good").
    A number (digits or stars) beside words must go their way and wins ("⭐⭐⭐⭐⭐ nice"
    5, "5, accha nahi" none). None for a greeting, and for any word beyond the rating and
    FILLERS: better asked again for a number than a wrong rating."""
    t = words.clean(text)
    if is_greeting(t):
        return None  # "good morning": a hello, not "good"
    shown = sum(ch in STAR_CHARS for ch in t)  # "⭐⭐⭐⭐" a count; in "4 ⭐" the unit
    bare = "".join(" " if ch in STAR_CHARS else ch for ch in t)
    number = words.number(bare)  # the whole reply: "4", "४", "char"
    said: list[str] = []
    if number is None:
        plain = _OUT_OF_5.sub(" ", words.ascii_digits(bare))
        digits = _DIGITS.findall(plain)
        if len(digits) > 1:
            return None  # "5 and 4", "10/10"
        number = int(digits[0]) if digits else None
        said = _words_of(_DIGITS.sub(" ", plain))
    said = [w for i, w in enumerate(said) if i == 0 or w != said[i - 1]]  # "very very good"
    if len(said) + (number is not None) > MAX_RATING_WORDS:
        return None
    values, rest = _phrases_in(said, lang)
    if number is None:  # a number as a word among fillers: "five stars", "paanch ji"
        named = [_number_word(w, lang) for w in rest]
        if sum(n is not None for n in named) > 1:
            return None  # "char paanch": which?
        number = next((n for n in named if n is not None), None)
        rest = [w for w, n in zip(rest, named, strict=True) if n is None]
    if len(values) > 1 or any(_squeezed(w) not in _FILLERS_READ for w in rest):
        return None  # "accha bura"; "baad mein", "good but late"
    worded = next(iter(values), None)
    if number is not None and shown not in (0, 1, number):
        return None  # "3 ⭐⭐⭐⭐⭐": which?
    stars = number if number is not None else shown or worded
    if stars is None or not 1 <= stars <= 5:
        return None
    return stars if worded is None or _mood(worded) == _mood(stars) else None


# state.data key: the rating just given ({"ref", "said"}; the chat's turn adds when), so
# the same answer sent again soon after is told it is saved (conversation.dialog_turn).
RATED = "rated"


def _rate_prompt(ctx: Ctx) -> list[Out]:
    return [Say("bot.rate.ask", {"ref": ctx.state.data.get("rate_ref", "")})]


def _language_word(ctx: Ctx, inp: UserInput) -> bool:
    """"language" at the rating question: its own answer (_rate_handle), so that the
    question is asked again once a language is chosen."""
    return not inp.has_location and words.command(inp.text) == "language"


def _rate_handle(ctx: Ctx, inp: UserInput) -> Result:
    ref = ctx.state.data.get("rate_ref")
    if _language_word(ctx, inp):
        if ref is not None:  # the list, then this question again in the language chosen
            ctx.state.data[_BACK_AFTER_LANGUAGE] = RATE
        return Goto("language")
    stars = stars_given(inp.text, ctx.lang) if not inp.has_location else None
    if ref is None:
        return Goto(MENU)
    asked = ((menu_request(inp.text, when=False) or _names_when(inp.text))
             if stars is None and not inp.has_location else None)
    if asked is not None:
        # "ek aur parcel bhejna hai", "mera parcel kahan hai": no rating, a request the
        # menu takes; the question is left, and the request answered. A come is read as
        # "when will it come" only with a when ("dusra parcel kab aayega"): here
        # "delivered on time, will use again", "kya fast aaya" is praise.
        _end_rating(ctx)
        return _with_say(_menu_option(ctx, asked), [])
    if stars is None:
        # A greeting or a place moves on; anything else ("good", "6", "10/10") was most
        # likely meant as the answer: say how to answer, once, then leave the question.
        if inp.has_location or is_greeting(inp.text) or ctx.scratch.get("helped"):
            _end_rating(ctx)
            return Goto(MENU)
        ctx.scratch["helped"] = True
        return Retry([Say("bot.rate.help")])
    done = ctx.ports.rate(ref, stars)
    _end_rating(ctx)
    ctx.state.data[RATED] = {"ref": ref, "said": words.clean(inp.text)}
    if done.get("refused"):  # rated already (in the app)
        return Goto(MENU, [Say("bot.rate.already", {"ref": ref}), next_hint()], prompt=False)
    return Goto(MENU, [Say("bot.rate.thanks", {"ref": ref, "stars": "⭐" * stars}),
                       next_hint()], prompt=False)


def _end_rating(ctx: Ctx) -> None:
    ctx.state.data.pop("rate_ref", None)
    ctx.state.data.pop("rate_asked_at", None)


# --- a person, voice notes -------------------------------------------------------------

# Parts of the day, each up to (not including) an hour; each catalog names them with its
# own words, as a time is said: "रात 2", "सुबह 8", "शाम 7", "রাত 9" (bn), "5 pm".
_DAY_PARTS = (("late_night", 4), ("morning", 12), ("noon", 15), ("afternoon", 18),
              ("evening", 20), ("night", 24))


def said_time(minutes: int) -> Say:
    """A time of day (minutes after midnight) as people say it: "9 pm", "रात 9" (the
    sentence adds "बजे"/"ಗಂಟೆ" in the form its grammar needs)."""
    hour, minute = divmod(minutes, 60)
    part = next(name for name, until in _DAY_PARTS if hour < until)
    shown = str(hour % 12 or 12) + (f":{minute:02d}" if minute else "")
    return Say(f"time_of_day.{part}", {"time": shown})


def person_said(info: dict[str, Any], key: str, away_key: str) -> Say:
    """What someone put on the waiting list hears: ``key`` (an answer in minutes) while
    the team is at work and still will be then, else ``away_key``: their hours, and that
    we answer after the opening (talk_to_person's ``in_time``, ``opens``, ``closes``)."""
    if info.get("in_time", info.get("open", True)):
        return Say(key, info)
    return Say(away_key, {"open": said_time(info["opens"]), "close": said_time(info["closes"])})


def _offer_prompt(ctx: Ctx) -> list[Out]:
    return [Say("bot.handoff.offer"), Choices((Say("bot.handoff.yes"), Say("bot.handoff.retry")))]


def _offer_handle(ctx: Ctx, inp: UserInput) -> Result:
    picked = choice(inp, 2, YES_NO)
    back = ctx.state.data.pop("after_offer", None) or MENU
    if picked == 1:
        info = ctx.ports.talk_to_person("not_understood")
        return Goto(MENU, [person_said(info, "bot.handoff.waiting", "bot.handoff.after_hours"),
                           next_hint()], prompt=False)
    if picked == 2:
        return Goto(back)
    ctx.state.data["after_offer"] = back
    return Retry()


def _can_call_back(ctx: Ctx) -> bool:
    """Whether we have a number to call the person back on. A chat with no phone number
    (WhatsApp gives some users only as an id) is offered a person who replies in the chat
    instead. Ports without the question (a caller's, tests') have one."""
    can = getattr(ctx.ports, "can_call_back", None)
    return bool(can()) if can is not None else True


def _voice_prompt(ctx: Ctx) -> list[Out]:
    if not _can_call_back(ctx):
        return [Say("bot.media.voice_chat"),
                Choices((Say("bot.handoff.yes"), Say("bot.media.no_call")))]
    return [Say("bot.media.voice"), Choices((Say("bot.media.call_me"), Say("bot.media.no_call")))]


def _voice_handle(ctx: Ctx, inp: UserInput) -> Result:
    picked = choice(inp, 2, YES_NO)
    back = ctx.state.data.pop("after_offer", None) or MENU
    if picked == 1 and not _can_call_back(ctx):
        # No number to call: a person answers in writing, here (as "talk to a person").
        info = ctx.ports.talk_to_person("asked")
        return Goto(MENU, [person_said(info, "bot.handoff.waiting", "bot.handoff.after_hours"),
                           next_hint()], prompt=False)
    if picked == 1:
        info = ctx.ports.talk_to_person("callback")
        return Goto(MENU, [person_said(info, "bot.media.callback",
                                       "bot.media.callback_after_hours"), next_hint()],
                    prompt=False)
    if picked == 2:
        return Goto(back)
    ctx.state.data["after_offer"] = back
    return Retry()


# --- back: the question before ---------------------------------------------------------

# A booking's questions in their order, each with the one before it (the office list
# only when one was shown; see _previous).
_BEFORE = {
    "pickup_office": "pickup", "drop": "pickup_landmark", "drop_office": "drop",
    "recipient_name": "drop_landmark", "recipient_phone": "recipient_name",
    "category": "recipient_phone", "size": "category", "weight": "size", "fragile": "weight",
    "value": "fragile", "speed": "value", "confirm": "speed", "change": "confirm",
}
# Where a change before the confirmation starts (_CHANGE): its "back" is the change list.
_CHANGE_STARTS = frozenset(step for _, step in _CHANGE)


def _previous(ctx: Ctx) -> str | None:
    """The question before the current one, for "back"; None at a booking's first
    question and outside a booking (the menu then)."""
    step = ctx.state.step
    if step in ("offer_person", "voice_callback"):
        return ctx.state.data.pop("after_offer", None)
    if ctx.state.data.get("return_to") and step in _CHANGE_STARTS:
        return "change"
    for kind in ("pickup", "drop"):
        if step == f"{kind}_landmark":
            # The village list again when there was one to choose from, else the place.
            many = len(ctx.state.data.get("offices") or []) > 1
            return f"{kind}_office" if many else kind
    return _BEFORE.get(step)


# --- the dialog ------------------------------------------------------------------------

def _steps() -> list[Step]:
    steps = [
        Step("language", _language_prompt, _language_handle, "bot.help.language"),
        Step("language_guess", _guess_prompt, _guess_handle, "bot.help.choice"),
        Step(MENU, _menu_prompt, _menu_handle, "menu.help"),
        Step("resume", _resume_prompt, _resume_handle, "bot.help.choice"),
        *_place_steps("pickup", "drop"),
        *_place_steps("drop", "recipient_name"),
        Step("recipient_name", lambda ctx: [Say("bot.recipient.name")], _name_handle,
             "bot.help.name", BOOKING, own_answer=_names_the_language_in_use),
        Step("recipient_phone", _phone_prompt, _phone_handle, "bot.help.phone", BOOKING),
        _choice_step("category", "bot.parcel.category",
                     [f"bot.category.{c}" for c in CATEGORIES], "category", CATEGORIES,
                     "size"),
        _choice_step("size", "bot.parcel.size", [f"size.{s}" for s in SIZES], "size", SIZES,
                     "weight"),
        _choice_step("weight", "bot.parcel.weight", [f"bot.weight.{w}" for w in WEIGHTS],
                     "weight", WEIGHTS, "fragile", typed=weight_typed),
        _choice_step("fragile", "bot.parcel.fragile", ["bot.yes", "bot.no"], "fragile",
                     (True, False), "value", aliases=YES_NO),
        Step("value", _value_prompt, _value_handle, "bot.help.value", BOOKING),
        Step("speed", _speed_prompt, _speed_handle, _speed_help, BOOKING),
        Step("confirm", _confirm_prompt, _confirm_handle, "bot.help.confirm", BOOKING),
        Step("change", _change_prompt, _change_handle, "bot.help.choice", BOOKING),
        Step("track", _track_prompt, _track_handle, "bot.help.track", after_language=True),
        Step("cancel_pick", _cancel_pick_prompt, _cancel_pick_handle, "bot.help.track",
             after_language=True),
        Step("cancel_confirm", _cancel_confirm_prompt, _cancel_confirm_handle,
             "bot.help.choice", after_language=True),
        Step(RATE, _rate_prompt, _rate_handle, "bot.rate.help", own_answer=_language_word),
        Step("offer_person", _offer_prompt, _offer_handle, "bot.help.choice"),
        Step("voice_callback", _voice_prompt, _voice_handle, "bot.help.choice"),
    ]
    return steps


BOOKING_DIALOG = Dialog(
    steps={s.name: s for s in _steps()},
    menu=MENU,
    language="language",
    offer_person="offer_person",
    voice_callback="voice_callback",
    not_understood="bot.retry",
    previous=_previous,
    switch_language=_language_named,
    abandon=_abandon,
)

# Keys every step uses, listed for the catalog tests.
REQUIRED_SLOTS = ("pickup", "drop", "recipient_name", "recipient_phone", "category", "size",
                  "weight", "fragile", "value_paise", "tier")


def draft_summary(slots: dict[str, Any]) -> str | None:
    """"from -> to" of a half-finished booking, for the resume question (None if empty)."""
    if not slots.get("pickup"):
        return None
    frm = place_label(slots["pickup"])
    to = place_label(slots["drop"]) if slots.get("drop") else "?"
    return f"{frm} → {to}"

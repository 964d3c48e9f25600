"""Partner SMS commands in English, Hindi (Devanagari) and Hinglish (Latin letters)."""

from __future__ import annotations

import pytest

from core.domain.dispatch import Kind, parse_command, split_otp_and_job, tokens

CASES = [
    # English, any case, extra spaces and punctuation
    ("ON", Kind.ON, ()), ("  on ", Kind.ON, ()), ("Off", Kind.OFF, ()),
    ("1", Kind.ACCEPT, ()), ("YES 57", Kind.ACCEPT, ("57",)), ("yes57", Kind.ACCEPT, ("57",)),
    ("Yes, 57.", Kind.ACCEPT, ("57",)), ("2", Kind.DECLINE, ()), ("NO 57", Kind.DECLINE, ("57",)),
    ("PICK 4821", Kind.PICK, ("4821",)), ("pick  4821   57", Kind.PICK, ("4821", "57")),
    ("Drop-4821", Kind.DROP, ("4821",)), ("STATUS", Kind.STATUS, ()), ("help", Kind.HELP, ()),
    ("cancel 57", Kind.CANCEL, ("57",)), ("duty on", Kind.ON, ()),
    # Hindi in Devanagari, with Devanagari digits
    ("चालू", Kind.ON, ()), ("बंद", Kind.OFF, ()), ("हाँ", Kind.ACCEPT, ()),
    ("हां ५७", Kind.ACCEPT, ("57",)), ("नहीं", Kind.DECLINE, ()), ("नही 57", Kind.DECLINE, ("57",)),
    ("पिक ४८२१", Kind.PICK, ("4821",)), ("उठाया 4821", Kind.PICK, ("4821",)),
    ("पहुँचाया ४८२१", Kind.DROP, ("4821",)), ("पहुंचा 4821", Kind.DROP, ("4821",)),
    ("स्थिति", Kind.STATUS, ()), ("मदद", Kind.HELP, ()), ("रद्द ५७", Kind.CANCEL, ("57",)),
    ("काम बंद", Kind.OFF, ()), ("१", Kind.ACCEPT, ()), ("२", Kind.DECLINE, ()),
    # Hinglish
    ("chalu", Kind.ON, ()), ("kaam band", Kind.OFF, ()), ("haan", Kind.ACCEPT, ()),
    ("Haan 57", Kind.ACCEPT, ("57",)), ("nahi", Kind.DECLINE, ()), ("nahin", Kind.DECLINE, ()),
    ("madad", Kind.HELP, ()), ("radd 57", Kind.CANCEL, ("57",)),
    # A refusal is never read as yes; a negated command is asked again
    ("जी नहीं", Kind.DECLINE, ()), ("ji nahi", Kind.DECLINE, ()),
    ("Ji nahin 57", Kind.DECLINE, ("57",)),
    ("ठीक नहीं 57", Kind.UNKNOWN, ("57",)), ("ok nahi 57", Kind.UNKNOWN, ("57",)),
    ("accept nahi 57", Kind.UNKNOWN, ("57",)), ("not ok 57", Kind.UNKNOWN, ("57",)),
    ("cannot accept 57", Kind.UNKNOWN, ("57",)), ("can't accept 57", Kind.UNKNOWN, ("57",)),
    ("cancel mat karo 57", Kind.UNKNOWN, ("57",)), ("cancel nahi karna", Kind.UNKNOWN, ()),
    ("haan ji", Kind.ACCEPT, ()), ("जी", Kind.ACCEPT, ()),
    # nonsense
    ("", Kind.UNKNOWN, ()), ("hello there", Kind.UNKNOWN, ()), ("4821", Kind.UNKNOWN, ("4821",)),
    ("🙂", Kind.UNKNOWN, ()),
]


@pytest.mark.parametrize(("text", "kind", "numbers"), CASES)
def test_parse(text, kind, numbers):
    cmd = parse_command(text)
    assert (cmd.kind, cmd.numbers) == (kind, numbers)


def test_hindi_words_are_not_split_at_vowel_signs():
    assert tokens("नहीं पहुँचाया") == ["नहीं", "पहुँचाया"]


def test_otp_and_job_code_order():
    assert split_otp_and_job(("4821",), ["57"]) == ("4821", None)
    assert split_otp_and_job(("4821", "57"), ["57", "58"]) == ("4821", "57")
    assert split_otp_and_job(("57", "4821"), ["57", "58"]) == ("4821", "57")  # job first
    assert split_otp_and_job((), ["57"]) == (None, None)
    # A job code alone names the job (the OTP is asked for); it is no wrong OTP.
    assert split_otp_and_job(("57",), ["57", "58"]) == (None, "57")
    assert split_otp_and_job(("1057", "1057"), ["1057"]) == ("1057", "1057")


@pytest.mark.parametrize(("text", "kind"), [
    ("हो", Kind.ACCEPT), ("नाही", Kind.DECLINE), ("नको", Kind.DECLINE),  # mr
    ("হ্যাঁ", Kind.ACCEPT), ("না", Kind.DECLINE),  # bn
    ("ஆம்", Kind.ACCEPT), ("இல்லை", Kind.DECLINE), ("வேண்டாம்", Kind.DECLINE),  # ta
    ("అవును", Kind.ACCEPT), ("వద్దు", Kind.DECLINE), ("avunu", Kind.ACCEPT),  # te
    ("હા", Kind.ACCEPT), ("ના", Kind.DECLINE),  # gu
    ("ಹೌದು", Kind.ACCEPT), ("ಬೇಡ", Kind.DECLINE), ("houdu 57", Kind.ACCEPT),  # kn
    ("ok illa", Kind.UNKNOWN), ("ஆம் வேண்டாம்", Kind.UNKNOWN),  # yes with a no: asked again
])
def test_yes_and_no_in_every_offer_language(text, kind):
    """Partners are offered jobs in their own language and answer in it."""
    assert parse_command(text).kind is kind


def test_no_reply_word_means_two_things():
    from core.domain.dispatch import WORDS

    seen: dict[str, object] = {}
    for kind, words in WORDS.items():
        for word in words:
            assert seen.setdefault(word, kind) is kind, (word, seen[word], kind)

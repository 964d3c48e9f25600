"""What a user's few words mean: digits in any script, number words, yes/no, commands.

Pure functions over text, shared by every channel (WhatsApp text, IVR keypad digits).
"""

from __future__ import annotations

import re
import unicodedata

# Script ranges used to guess a first-time user's language from what they typed.
_SCRIPTS: tuple[tuple[int, int, str], ...] = (
    (0x0900, 0x097F, "hi"),  # Devanagari (Hindi; Marathi users confirm or pick theirs)
    (0x0980, 0x09FF, "bn"),
    (0x0A80, 0x0AFF, "gu"),
    (0x0B80, 0x0BFF, "ta"),
    (0x0C00, 0x0C7F, "te"),
    (0x0C80, 0x0CFF, "kn"),
)

NUMBER_WORDS: dict[str, int] = {
    # romanized Hindi, as typed on phones
    "ek": 1, "do": 2, "doo": 2, "teen": 3, "tin": 3, "char": 4, "chaar": 4, "panch": 5,
    "paanch": 5, "pach": 5, "chhe": 6, "che": 6, "chah": 6, "saat": 7, "sat": 7, "aath": 8,
    "ath": 8, "nau": 9,
    # Devanagari
    "एक": 1, "दो": 2, "तीन": 3, "चार": 4, "पांच": 5, "पाँच": 5, "छह": 6, "छः": 6, "सात": 7,
    "आठ": 8, "नौ": 9, "शून्य": 0,
    # English
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9,
}

YES_WORDS = frozenset({
    "yes", "y", "yeah", "yep", "ok", "okay", "haan", "haa", "han", "ha", "hn", "haanji", "ji",
    "theek", "thik", "sahi", "हाँ", "हां", "हा", "जी", "हाँ जी", "ठीक", "ठीक है", "ओके",
    "হ্যাঁ", "হা", "होय", "हो", "ஆம்", "ஆமா", "சரி", "అవును", "సరే", "હા", "ಹೌದು", "ಸರಿ",
})
NO_WORDS = frozenset({
    "no", "n", "nope", "nahi", "nahin", "nai", "na", "naa", "नहीं", "नही", "ना", "না", "नाही",
    "இல்லை", "వద్దు", "కాదు", "ના", "ಇಲ್ಲ", "ಬೇಡ",
})
MENU_WORDS = frozenset({"0", "menu", "main menu", "menyu", "मेनू", "मेन्यू", "मेन्यु", "मेनु"})
HELP_WORDS = frozenset({"help", "madad", "sahayata", "?", "मदद", "सहायता", "help me"})
LANGUAGE_WORDS = frozenset({"language", "lang", "bhasha", "bhasa", "भाषा", "ভাষা", "மொழி",
                            "భాష", "ભાષા", "ಭಾಷೆ"})
STOP_WORDS = frozenset({"stop", "stopall", "unsubscribe", "cancel messages", "बंद", "band",
                        "bandh", "बन्द"})
START_WORDS = frozenset({"start", "unstop", "शुरू", "shuru", "chalu", "चालू"})
SKIP_WORDS = frozenset({"skip", "no", "nahi", "nahin", "na", "नहीं", "नही", "कुछ नहीं",
                        "kuch nahi", "-"})

_SPACES = re.compile(r"\s+")
_TRIM = ".,!?।॥;:'\"()[]"


def clean(text: str) -> str:
    """Lower-cased, NFC, single-spaced, without surrounding punctuation."""
    t = unicodedata.normalize("NFC", text or "").strip().lower()
    t = _SPACES.sub(" ", t)
    return t.strip(_TRIM + " ")


def ascii_digits(text: str) -> str:
    """Map decimal digits of any script (८४५४३८, ৮৪৫) to ASCII; keep everything else."""
    out = []
    for ch in text:
        value = unicodedata.decimal(ch, None)
        out.append(str(value) if value is not None else ch)
    return "".join(out)


def number(text: str) -> int | None:
    """The whole answer as one small number: "2", "२", "do", "two" -> 2; else None."""
    t = ascii_digits(clean(text)).replace(" ", "")
    if t.isascii() and t.isdigit() and len(t) <= 3:
        return int(t)
    return NUMBER_WORDS.get(clean(text))


def only_digits(text: str) -> str | None:
    """All the digits of an answer that is only digits and separators ("98765 43210")."""
    t = ascii_digits(text or "").strip()
    stripped = re.sub(r"[\s\-().+]", "", t)
    return stripped if stripped.isascii() and stripped.isdigit() else None


def amount_rupees(text: str) -> int | None:
    """Rupees in "1500", "₹1,500", "1500 rs", "रु 1500"; None if not an amount."""
    t = ascii_digits(clean(text))
    t = re.sub(r"(₹|rs\.?|rupees?|rupaye|rupay|रुपये|रुपए|रु\.?|/-)", "", t)
    t = t.replace(",", "").replace(" ", "")
    return int(t) if t.isascii() and t.isdigit() and len(t) <= 9 else None


def is_yes(text: str) -> bool:
    return clean(text) in YES_WORDS


def is_no(text: str) -> bool:
    return clean(text) in NO_WORDS


def guess_language(text: str) -> str | None:
    """A language from the script of the text (None for Latin letters, digits, emoji)."""
    counts: dict[str, int] = {}
    for ch in text or "":
        code = ord(ch)
        for lo, hi, lang in _SCRIPTS:
            if lo <= code <= hi:
                counts[lang] = counts.get(lang, 0) + 1
    if not counts:
        return None
    return max(counts, key=lambda k: counts[k])


def command(text: str) -> str | None:
    """A global command word: "menu", "help", "language", "stop" or "start" (else None)."""
    t = clean(text)
    if not t:
        return None
    if t in MENU_WORDS or text.strip() in {"0", "०"} or ascii_digits(text.strip()) == "0":
        return "menu"
    if t in HELP_WORDS:
        return "help"
    if t in LANGUAGE_WORDS:
        return "language"
    if t in STOP_WORDS:
        return "stop"
    if t in START_WORDS:
        return "start"
    return None

"""How numbers are said on the phone: digits one by one, and rupee amounts in words.

A pincode, a mobile number or a booking reference is read digit by digit in small groups
("8 4 5, 4 3 8"), so a caller can check it. Amounts are said as people say them: in Hindi
₹1,250 is "बारह सौ पचास", in English "one thousand two hundred and fifty"; for the other
languages the digits are left to the voice, which reads a plain number well. An amount
with paise is said with them (rupees_and_paise), never rounded.
"""

from __future__ import annotations

_HI_0_99 = (
    "शून्य एक दो तीन चार पाँच छह सात आठ नौ "
    "दस ग्यारह बारह तेरह चौदह पंद्रह सोलह सत्रह अठारह उन्नीस "
    "बीस इक्कीस बाईस तेईस चौबीस पच्चीस छब्बीस सत्ताईस अट्ठाईस उनतीस "
    "तीस इकतीस बत्तीस तैंतीस चौंतीस पैंतीस छत्तीस सैंतीस अड़तीस उनतालीस "
    "चालीस इकतालीस बयालीस तैंतालीस चवालीस पैंतालीस छियालीस सैंतालीस अड़तालीस उनचास "
    "पचास इक्यावन बावन तिरपन चौवन पचपन छप्पन सत्तावन अट्ठावन उनसठ "
    "साठ इकसठ बासठ तिरसठ चौंसठ पैंसठ छियासठ सड़सठ अड़सठ उनहत्तर "
    "सत्तर इकहत्तर बहत्तर तिहत्तर चौहत्तर पचहत्तर छिहत्तर सतहत्तर अठहत्तर उनासी "
    "अस्सी इक्यासी बयासी तिरासी चौरासी पचासी छियासी सत्तासी अट्ठासी नवासी "
    "नब्बे इक्यानवे बानवे तिरानवे चौरानवे पचानवे छियानवे सत्तानवे अट्ठानवे निन्यानवे"
).split()
assert len(_HI_0_99) == 100

_EN_0_19 = ("zero one two three four five six seven eight nine ten eleven twelve thirteen "
            "fourteen fifteen sixteen seventeen eighteen nineteen").split()
_EN_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def spell_digits(digits: str, group: int = 0) -> str:
    """"845438" -> "8 4 5, 4 3 8": one digit at a time, a pause (comma) between groups.

    ``group`` is the group size (0: a pincode in 3s, a phone 5+5, anything else in 4s)."""
    digits = "".join(ch for ch in digits if ch.isdigit())
    if not group:
        group = 3 if len(digits) == 6 else 5 if len(digits) == 10 else 4
    parts = [" ".join(digits[i:i + group]) for i in range(0, len(digits), group)]
    return ", ".join(parts)


def _hindi(n: int) -> str:
    if n < 100:
        return _HI_0_99[n]
    # 1,100-9,999 that are not whole thousands: "बारह सौ पचास", as people say prices.
    if n < 10_000 and n >= 1_100 and (n // 100) % 10:
        rest = n % 100
        return f"{_HI_0_99[n // 100]} सौ" + (f" {_HI_0_99[rest]}" if rest else "")
    parts = []
    for size, name in ((10_000_000, "करोड़"), (100_000, "लाख"), (1_000, "हज़ार"),
                       (100, "सौ")):
        if n >= size:
            parts.append(f"{_hindi(n // size)} {name}")
            n %= size
    if n:
        parts.append(_HI_0_99[n])
    return " ".join(parts)


def _english(n: int) -> str:
    if n < 20:
        return _EN_0_19[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _EN_TENS[tens] + (f"-{_EN_0_19[ones]}" if ones else "")
    parts = []
    for size, name in ((10_000_000, "crore"), (100_000, "lakh"), (1_000, "thousand"),
                       (100, "hundred")):
        if n >= size:
            parts.append(f"{_english(n // size)} {name}")
            n %= size
    if n:
        parts.append(f"and {_english(n)}" if parts else _english(n))
    return " ".join(parts)


def number_words(n: int, lang: str) -> str:
    """A whole number as it is said in ``lang`` (digits where we have no words)."""
    if n < 0:
        raise ValueError("negative numbers are not spoken here")
    if lang == "hi":
        return _hindi(n)
    if lang == "en":
        return _english(n)
    return str(n)


def rupees(paise: int) -> int:
    """Whole rupees of an amount, rounded half up (fares are whole rupees anyway)."""
    return (paise + 50) // 100


def rupees_and_paise(paise: int) -> tuple[int, int]:
    """An amount as its rupees and its paise, both said, nothing rounded: 2550 -> (25, 50).
    A fee and a refund said so add up to what was paid."""
    if paise < 0:
        raise ValueError("negative amounts are not spoken here")
    return divmod(paise, 100)

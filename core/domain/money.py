"""Money display: amounts are integer paise everywhere; this turns them into Indian-style text."""

from __future__ import annotations

RUPEE_SIGN = "₹"


def _group_indian(digits: str) -> str:
    """Group a string of digits the Indian way (12,34,56,789): last three, then pairs."""
    if len(digits) <= 3:
        return digits
    head, tail = digits[:-3], digits[-3:]
    pairs: list[str] = []
    while len(head) > 2:
        pairs.insert(0, head[-2:])
        head = head[:-2]
    pairs.insert(0, head)
    return ",".join(pairs) + "," + tail


def format_inr(paise: int, *, paise_digits: bool = False) -> str:
    """Format integer paise as rupees with Indian grouping, e.g. 125050 -> "₹1,250.50".

    Whole-rupee amounts drop the decimals ("₹1,250") unless ``paise_digits`` is true, because
    that is how people write prices; a non-zero paise part always shows two digits.
    """
    # bool is an int subclass; a True/False here is always a caller bug, not one paisa.
    if isinstance(paise, bool) or not isinstance(paise, int):
        raise TypeError(f"format_inr() needs int paise, got {type(paise).__name__}")
    sign = "-" if paise < 0 else ""
    rupees, rest = divmod(abs(paise), 100)
    text = sign + RUPEE_SIGN + _group_indian(str(rupees))
    if rest or paise_digits:
        text += f".{rest:02d}"
    return text

"""WhatsApp rendering of the dialog engine's output: plain text with numbered choices.

Each ``Say`` becomes a paragraph; a ``Choices`` list follows its question as "1. ..."
lines (and "9. More" for a paged list). One turn is one WhatsApp message, split only if it
would exceed WhatsApp's 1,600 characters (between paragraphs, else inside one).
"""

from __future__ import annotations

from typing import Any

from core import i18n
from core.dialog.engine import Choices, Out, Say

MAX_CHARS = 1500


def text_of(say: Say, lang: str) -> str:
    """Catalog text of ``say``; parameters that are themselves messages are rendered first."""
    params: dict[str, Any] = {
        k: (text_of(v, lang) if isinstance(v, Say) else v) for k, v in say.params.items()
    }
    return i18n.t(say.key, lang, **params)


def choices_text(choices: Choices, lang: str) -> str:
    lines = [
        f"{n}. {text_of(o, lang) if isinstance(o, Say) else o}"
        for n, o in enumerate(choices.options, start=1)
    ]
    if choices.more:
        lines.append(f"9. {i18n.t('bot.more', lang)}")
    return "\n".join(lines)


def render(outs: list[Out], lang: str) -> list[str]:
    """The messages to send for one turn (empty list: stay silent)."""
    paragraphs: list[str] = []
    for out in outs:
        if isinstance(out, Choices):
            block = choices_text(out, lang)
            if paragraphs:
                paragraphs[-1] = f"{paragraphs[-1]}\n{block}"
            else:
                paragraphs.append(block)
        elif out.joined and paragraphs:
            paragraphs[-1] = f"{paragraphs[-1]}\n{text_of(out, lang).strip()}"
        else:
            paragraphs.append(text_of(out, lang).strip("\n"))
    messages: list[str] = []
    current = ""
    for p in (piece for paragraph in paragraphs for piece in _pieces(paragraph)):
        candidate = f"{current}\n\n{p}" if current else p
        if current and len(candidate) > MAX_CHARS:
            messages.append(current)
            current = p
        else:
            current = candidate
    if current:
        messages.append(current)
    return messages


def _pieces(paragraph: str) -> list[str]:
    """``paragraph`` in pieces of at most MAX_CHARS, cut at a line break or a space where
    there is one: a longer message is refused by WhatsApp (Twilio error 21617)."""
    pieces = []
    while len(paragraph) > MAX_CHARS:
        cut = paragraph.rfind("\n", 0, MAX_CHARS + 1)
        if cut <= 0:
            cut = paragraph.rfind(" ", 0, MAX_CHARS + 1)
        if cut <= 0:
            cut = MAX_CHARS
        pieces.append(paragraph[:cut].rstrip())
        paragraph = paragraph[cut:].lstrip()
    return [*pieces, paragraph]

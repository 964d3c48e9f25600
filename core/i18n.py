"""Message catalogs: every text a user sees or hears, in eight languages, from TOML files.

Catalogs live in ``templates_i18n/<lang>.toml`` (override with ``I18N_DIR`` or
``set_catalog_dir``); nested TOML tables become dotted keys such as ``menu.main``.
"""

from __future__ import annotations

import functools
import logging
import os
import string
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from core.domain.money import format_inr

logger = logging.getLogger(__name__)

LANGUAGES: tuple[str, ...] = ("hi", "en", "bn", "mr", "ta", "te", "gu", "kn")
DEFAULT_LANGUAGE = "hi"
FALLBACK_LANGUAGE = "en"

# Each language named in its own script, so a user can find theirs without reading ours.
LANGUAGE_NAMES: dict[str, str] = {
    "hi": "हिंदी",
    "en": "English",
    "bn": "বাংলা",
    "mr": "मराठी",
    "ta": "தமிழ்",
    "te": "తెలుగు",
    "gu": "ગુજરાતી",
    "kn": "ಕನ್ನಡ",
}

# Values for Twilio's <Say language="...">.
SAY_LOCALES: dict[str, str] = {
    "hi": "hi-IN",
    "en": "en-IN",
    "bn": "bn-IN",
    "mr": "mr-IN",
    "ta": "ta-IN",
    "te": "te-IN",
    "gu": "gu-IN",
    "kn": "kn-IN",
}

_DEFAULT_DIR = Path(__file__).resolve().parent.parent / "templates_i18n"
_PAISE_SUFFIX = "_paise"
_override_dir: Path | None = None


def catalog_dir() -> Path:
    """Return the directory catalogs are read from: set_catalog_dir(), else I18N_DIR, else repo."""
    if _override_dir is not None:
        return _override_dir
    env = os.environ.get("I18N_DIR")
    return Path(env) if env else _DEFAULT_DIR


def set_catalog_dir(path: str | os.PathLike[str] | None) -> None:
    """Read catalogs from ``path`` (None restores the default) and drop cached catalogs."""
    global _override_dir
    _override_dir = Path(path) if path is not None else None
    reload()


def reload() -> None:
    """Forget cached catalogs so the next lookup re-reads the TOML files (for tests)."""
    _load.cache_clear()


def _flatten(table: Mapping[str, Any], prefix: str, out: dict[str, str], source: Path) -> None:
    """Turn nested TOML tables into dotted keys; anything but text is a catalog mistake."""
    for name, value in table.items():
        key = f"{prefix}{name}"
        if isinstance(value, Mapping):
            _flatten(value, f"{key}.", out, source)
        elif isinstance(value, str):
            out[key] = value
        else:
            raise ValueError(f"{source}: {key} must be text, not {type(value).__name__}")


@functools.cache  # lru_cache(maxsize=None); one dict per (dir, lang)
def _load(directory: Path, lang: str) -> dict[str, str]:
    """Parse one catalog file into a flat {dotted key: text} dict; cached per directory."""
    path = directory / f"{lang}.toml"
    with path.open("rb") as fh:
        data = tomllib.load(fh)
    out: dict[str, str] = {}
    _flatten(data, "", out, path)
    return out


def unreadable_catalogs(directory: Path) -> list[str]:
    """Why the catalogs in ``directory`` cannot be read, a line per problem (none: every
    language's catalog is there and parses). Those read are kept, as a lookup keeps them."""
    if not directory.is_dir():
        return ["not a folder that can be read"]
    problems = []
    for lang in LANGUAGES:
        name = f"{lang}.toml"
        try:
            _load(directory, lang)
        except FileNotFoundError:
            problems.append(f"{name} is missing (every language needs its catalog)")
        except OSError as err:
            problems.append(f"{name} cannot be read ({err.strerror or type(err).__name__})")
        except ValueError as err:  # not UTF-8, not TOML, or a value that is not text
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            problems.append(f"{name} is not a catalog ({reason})")
    return problems


def _catalog(lang: str) -> dict[str, str]:
    """Return the catalog for a supported language code."""
    if lang not in LANGUAGES:
        raise KeyError(f"unsupported language {lang!r}")
    return _load(catalog_dir(), lang)


def keys(lang: str) -> set[str]:
    """Return every key defined in ``lang``'s catalog (used by tests to compare catalogs)."""
    return set(_catalog(lang))


def raw(key: str, lang: str) -> str:
    """Return the unformatted text for ``key`` in ``lang``; KeyError if that catalog lacks it."""
    return _catalog(lang)[key]


def placeholders(text: str) -> set[str]:
    """Return the names of the ``{name}`` fields in a catalog text (``{a.b}`` counts as ``a``)."""
    names: set[str] = set()
    for _literal, field, _spec, _conv in string.Formatter().parse(text):
        if field is not None:
            names.add(field.split(".", 1)[0].split("[", 1)[0])
    return names


class _Params(dict[str, Any]):
    """format_map mapping whose missing-key error names the key and the catalog entry."""

    def __init__(self, values: Mapping[str, Any], key: str, lang: str) -> None:
        super().__init__(values)
        self._where = f"{lang}:{key}"

    def __missing__(self, name: str) -> Any:
        if name in _SERVICE_NUMBERS:
            # Our own numbers need not be passed by every caller: e.g. "call {ivr_phone}"
            # in a message that may reach someone with only a feature phone.
            from core.config import get_settings

            return getattr(get_settings(), _SERVICE_NUMBERS[name])
        raise KeyError(f"missing parameter {name!r} for message {self._where}")


# Catalog fields filled from the settings when the caller gives none.
_SERVICE_NUMBERS = {"ivr_phone": "twilio_voice_number", "ops_phone": "ops_phone"}


def _with_money(params: Mapping[str, Any]) -> dict[str, Any]:
    """Add ``total`` = format_inr(total_paise) etc., so catalogs can show amounts the local way."""
    values = dict(params)
    for name, value in params.items():
        if name.endswith(_PAISE_SUFFIX) and isinstance(value, int) and not isinstance(value, bool):
            values.setdefault(name.removesuffix(_PAISE_SUFFIX), format_inr(value))
    return values


def t(key: str, lang: str, **params: Any) -> str:
    """Return the text for ``key`` in ``lang`` with ``{name}`` fields filled from ``params``.

    A key or language we lack falls back to English with a warning, so a user still gets an
    answer; a key missing from English too, or a missing parameter, raises KeyError.
    """
    lang_used = lang
    text: str | None = None
    if lang in LANGUAGES:
        text = _catalog(lang).get(key)
    if text is None:
        # Never log params: they can hold phone numbers and OTPs.
        logger.warning(
            "i18n: no %r in language %r, falling back to %r", key, lang, FALLBACK_LANGUAGE
        )
        lang_used = FALLBACK_LANGUAGE
        text = _catalog(FALLBACK_LANGUAGE).get(key)
        if text is None:
            raise KeyError(f"message {key!r} is missing from the {FALLBACK_LANGUAGE} catalog")
    return text.format_map(_Params(_with_money(params), key, lang_used))

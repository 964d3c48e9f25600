"""Prompt audio for the IVR: gTTS renders ahead of time into a cache served at stable URLs.

A call never waits on gTTS: ``audio_url`` answers from the cache or returns None (the
flow then speaks the text with Twilio's <Say> in that language) and queues the render in
RQ. Files are named by a hash of language + text, so a changed catalog text gets new
audio, and dynamic texts (village names, amounts) are cached the same way.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import tempfile
import threading
import weakref
from pathlib import Path
from typing import Any

from flask import Blueprint, abort, send_file
from rq import Retry

from core import clock, i18n
from core.adapters.queue import RENDER_QUEUE, enqueue, pending_ids
from core.config import get_settings

log = logging.getLogger(__name__)

bp = Blueprint("ivr_audio", __name__)

# gTTS language and Google domain per catalog language (co.in gives Indian English).
GTTS_VOICES: dict[str, tuple[str, str]] = {
    "hi": ("hi", "co.in"), "en": ("en", "co.in"), "bn": ("bn", "co.in"),
    "mr": ("mr", "co.in"), "ta": ("ta", "co.in"), "te": ("te", "co.in"),
    "gu": ("gu", "co.in"), "kn": ("kn", "co.in"),
}
_NAME = re.compile(r"^[0-9a-f]{20}$")
RENDER_JOB = "ivr_flows.audio.render_job"
# gTTS's requests: (connect, read) seconds. Google answers a connection within a second;
# one it does not answer in 3 (a firewall that drops the packets, no route) is not coming,
# and a render that waits longer only holds a worker. A part of the text (gTTS sends at
# most 100 characters a request) is read in well under 10.
GTTS_TIMEOUT_S = (3.05, 10.0)


def cache_dir() -> Path:
    return get_settings().data_dir / "prompts"


@functools.lru_cache(maxsize=8192)
def audio_name(lang: str, text: str) -> str:
    """The cache file's name (without .mp3) for a text in a language (remembered: every
    turn names the same prompts twice, to look for the file and to queue its render)."""
    return hashlib.sha256(f"{lang}\n{text}".encode()).hexdigest()[:20]


def audio_path(lang: str, text: str) -> Path:
    return cache_dir() / lang / f"{audio_name(lang, text)}.mp3"


# A prompt with this many digits or more reads back something of the caller's own (a phone
# number keyed in, a booking reference, a code): Twilio's <Say> speaks it. It is never sent
# to gTTS, queued as a job, or kept as a file under a public URL.
PERSONAL_DIGITS = 7


def personal(text: str) -> bool:
    # map, not a generator: this runs for every prompt of every turn.
    return sum(map(str.isdigit, text)) >= PERSONAL_DIGITS


def audio_url(lang: str, text: str, *, queue_missing: bool = True,
              missing: list[tuple[str, str]] | None = None,
              root: str | None = None) -> str | None:
    """The public URL of the text's audio if rendered; else None (and queue the render,
    or, given ``missing``, add it there for one ``queue_renders`` call per turn).
    ``root``: cache_dir(), from a caller that looks it up once for all of a turn's
    prompts."""
    if lang not in GTTS_VOICES or not text.strip() or personal(text):
        return None
    name = audio_name(lang, text)
    # os.path, not pathlib: this runs for every prompt of every turn.
    if os.path.isfile(os.path.join(root or cache_dir(), lang, f"{name}.mp3")):
        return f"{get_settings().public_base_url}/ivr/audio/{lang}/{name}.mp3"
    if missing is not None:
        missing.append((lang, text))
    elif queue_missing:
        queue_renders([(lang, text)])
    return None


PENDING_TTL_S = 900  # while gTTS is unreachable, each prompt is tried at most this often
MARKS_MAX = 20_000  # pending marks remembered per process (dynamic texts are many)

# What this process knows to be marked pending in Redis, per Redis client (so a new client,
# a new server, starts afresh): key -> when the mark expires (clock seconds). While gTTS is
# unreachable every turn of every call misses the same prompts; without this each turn
# asked Redis again about all of them, a round trip and a tenth of an IVR turn's CPU.
_marks: weakref.WeakKeyDictionary[Any, dict[str, float]] = weakref.WeakKeyDictionary()
_marks_lock = threading.Lock()


def queue_renders(pairs: list[tuple[str, str]]) -> None:
    """Queue the rendering of prompts not yet cached, on RENDER_QUEUE (workers take it
    last): one Redis round trip marks them pending, and only prompts not already pending
    get a job (a turn must not pay for a job look-up per prompt, nor a gTTS outage for a
    job per prompt per call); a newly marked one whose job still waits (a mark expires
    before a retry is due) is not queued twice (one more round trip, for all of them).
    Prompts this process saw marked, until their mark expires, cost nothing at all."""
    if not pairs:
        return
    try:
        from core.adapters.redis_conn import redis_client

        r = redis_client()
        with _marks_lock:
            marks = _marks.setdefault(r, {})
        now = clock.now().timestamp()
        todo = []
        for lang, text in pairs:
            name = audio_name(lang, text)
            key = f"tts:pending:{lang}:{name}"
            if marks.get(key, 0.0) <= now:
                todo.append((lang, text, name, key))
        if not todo:
            return
        pipe = r.pipeline(transaction=False)
        for *_, key in todo:
            pipe.set(key, "1", nx=True, ex=PENDING_TTL_S)
            pipe.pttl(key)  # how long the mark (ours or another process's) has left
        replies = pipe.execute()
        with _marks_lock:
            if len(marks) + len(todo) > MARKS_MAX:
                for key in [k for k, until in marks.items() if until <= now]:
                    del marks[key]
                if len(marks) + len(todo) > MARKS_MAX:
                    marks.clear()
            for (*_, key), left_ms in zip(todo, replies[1::2], strict=True):
                if left_ms > 0:
                    marks[key] = now + left_ms / 1000
        jobs = {f"tts-{lang}-{name}": (lang, text)
                for (lang, text, name, _), new in zip(todo, replies[0::2], strict=True)
                if new}
        # A mark lasts PENDING_TTL_S; the job may outlive it (waiting behind others, or
        # scheduled for a retry an hour on while Google cannot be reached): not again.
        waiting = pending_ids(list(jobs))
        for job_id, (lang, text) in jobs.items():
            if job_id not in waiting:
                enqueue(RENDER_JOB, lang, text, queue_name=RENDER_QUEUE, job_id=job_id,
                        retry=Retry(max=2, interval=[300, 3600]), known_new=True)
    except Exception:  # the call goes on with <Say>; a later call queues it again
        log.warning("could not queue prompt rendering")


def render(lang: str, text: str) -> bool:
    """Render one text with gTTS into the cache; False (logged) if it cannot right now."""
    from gtts import gTTS
    from gtts.tts import gTTSError

    path = audio_path(lang, text)
    if path.is_file():
        return True
    voice, tld = GTTS_VOICES[lang]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            gTTS(text, lang=voice, tld=tld, timeout=GTTS_TIMEOUT_S).write_to_fp(out)
        if os.path.getsize(tmp) == 0:
            raise gTTSError("empty audio")
        os.replace(tmp, path)  # atomic: a half-written file is never served
        return True
    except (gTTSError, OSError, AssertionError) as exc:
        log.warning("prompt rendering failed", extra={"lang": lang, "reason": type(exc).__name__})
        return False
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def render_job(lang: str, text: str) -> bool:
    """RQ job: render one prompt; raising lets RQ retry later (e.g. internet is back)."""
    if not render(lang, text):
        raise RuntimeError("prompt rendering failed; will retry")
    return True


def catalog_prompts(prefixes: tuple[str, ...] = ("ivr.", "voice.")) -> list[tuple[str, str]]:
    """Every distinct (language, text) of the catalog keys the IVR speaks."""
    pairs: dict[tuple[str, str], None] = {}
    for lang in i18n.LANGUAGES:
        for key in sorted(i18n.keys(lang)):
            if key.startswith(prefixes):
                text = i18n.raw(key, lang)
                if "{" not in text:  # texts with parameters are rendered when used
                    pairs[(lang, text)] = None
    return list(pairs)


def render_missing(prefixes: tuple[str, ...] = ("ivr.", "voice.")) -> tuple[int, int, int]:
    """Render every missing catalog prompt: (already cached, rendered now, failed)."""
    cached = rendered = failed = 0
    for lang, text in catalog_prompts(prefixes):
        if audio_path(lang, text).is_file():
            cached += 1
        elif render(lang, text):
            rendered += 1
        else:
            failed += 1
    return cached, rendered, failed


@bp.get("/ivr/audio/<lang>/<name>.mp3")
def serve_audio(lang: str, name: str):
    """Serve a cached prompt (public: Twilio fetches it without signing)."""
    if lang not in GTTS_VOICES or not _NAME.match(name):
        abort(404)
    path = cache_dir() / lang / f"{name}.mp3"
    if not path.is_file():
        abort(404)
    response = send_file(path, mimetype="audio/mpeg", max_age=7 * 86400)
    return response

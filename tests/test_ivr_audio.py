"""IVR prompt audio: cache, <Say> fallback, queued rendering; gTTS's network replaced at
the HTTP boundary (requests' transport adapter), so gTTS's own code still runs."""

from __future__ import annotations

import base64
import json
import re
from datetime import timedelta
from urllib.parse import unquote

import pytest
import requests
from requests.adapters import HTTPAdapter

from core.adapters.queue import RENDER_QUEUE, queue
from ivr_flows import audio
from tests.conftest import release_scheduled, run_jobs

FAKE_MP3 = b"ID3fake-mp3-"


class FakeGoogle:
    """Answers gTTS's batchexecute POSTs like Google does; records what was asked."""

    def __init__(self) -> None:
        self.online = True
        self.asked: list[tuple[str, str]] = []

    def send(self, adapter, request, **kwargs):
        assert "translate.google." in request.url and "batchexecute" in request.url
        if not self.online:
            raise requests.exceptions.ConnectionError("no route to host")
        body = unquote(request.body if isinstance(request.body, str)
                       else request.body.decode())
        rpc = json.loads(body[len("f.req="):].rstrip("&"))
        text, lang = json.loads(rpc[0][0][1])[:2]
        self.asked.append((lang, text))
        payload = base64.b64encode(FAKE_MP3 + text.encode()).decode()
        line = ')]}\'\n[["wrb.fr","jQ1olc","[\\"' + payload + '\\"]",null]]'
        resp = requests.Response()
        resp.status_code = 200
        resp._content = line.encode()
        resp.url = request.url
        resp.request = request
        return resp


@pytest.fixture
def google(monkeypatch, tmp_path):
    fake = FakeGoogle()
    monkeypatch.setattr(HTTPAdapter, "send", lambda self, request, **kw: fake.send(
        self, request, **kw))
    monkeypatch.setattr(audio, "cache_dir", lambda: tmp_path)
    return fake


def test_missing_audio_falls_back_and_queues_one_render(clean_db, google):
    assert audio.audio_url("hi", "नमस्ते") is None
    assert audio.audio_url("hi", "नमस्ते") is None  # asked twice: still one job
    assert queue(RENDER_QUEUE).count == 1
    run_jobs()
    assert google.asked == [("hi", "नमस्ते")]
    url = audio.audio_url("hi", "नमस्ते")
    assert url is not None and re.search(r"/ivr/audio/hi/[0-9a-f]{20}\.mp3$", url)
    assert audio.audio_path("hi", "नमस्ते").read_bytes() == FAKE_MP3 + "नमस्ते".encode()


def test_a_prompt_seen_pending_costs_no_redis_round_trip_until_its_mark_expires(clean_db,
                                                                              google):
    from datetime import UTC, datetime

    from core import clock
    from core.adapters.redis_conn import redis_client

    start = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)
    clock.freeze(start)
    key = f"tts:pending:hi:{audio.audio_name('hi', 'फिर से')}"
    r = redis_client()
    assert audio.audio_url("hi", "फिर से") is None
    assert 0 < r.ttl(key) <= audio.PENDING_TTL_S
    r.delete(key)  # gone from Redis; this process still knows it was marked
    assert audio.audio_url("hi", "फिर से") is None
    assert not r.exists(key), "Redis was asked about a prompt known to be pending"
    clock.freeze(start + timedelta(seconds=audio.PENDING_TTL_S + 1))
    assert audio.audio_url("hi", "फिर से") is None
    assert r.exists(key), "an expired mark was not asked for again"
    run_jobs()
    assert google.asked == [("hi", "फिर से")]  # rendered once, all the same


def test_cached_audio_is_served_at_its_url(client, google):
    assert audio.render("ta", "வணக்கம்")
    url = audio.audio_url("ta", "வணக்கம்", queue_missing=False)
    path = url.split("127.0.0.1", 1)[1].split("/", 1)[1]
    r = client.get("/" + path)
    assert r.status_code == 200 and r.mimetype == "audio/mpeg"
    assert r.data.startswith(FAKE_MP3)
    assert client.get("/ivr/audio/ta/../../etc.mp3").status_code == 404
    assert client.get("/ivr/audio/xx/" + "0" * 20 + ".mp3").status_code == 404
    assert client.get("/ivr/audio/ta/" + "0" * 20 + ".mp3").status_code == 404


def test_without_internet_rendering_fails_cleanly_and_retries_later(clean_db, google):
    google.online = False
    assert audio.render("mr", "नमस्कार") is False
    assert list(audio.cache_dir().rglob("*")) == [audio.cache_dir() / "mr"]  # no leftovers
    assert audio.audio_url("mr", "नमस्कार") is None
    run_jobs()  # the job fails, RQ schedules a retry
    assert release_scheduled(timedelta(seconds=301)) == 1
    google.online = True
    run_jobs()
    assert audio.audio_url("mr", "नमस्कार", queue_missing=False) is not None


def test_render_missing_renders_each_catalog_prompt_once(clean_db, google):
    prompts = audio.catalog_prompts()
    assert prompts, "the catalogs have no IVR prompts"
    cached, rendered, failed = audio.render_missing()
    assert (cached, rendered, failed) == (0, len(prompts), 0)
    assert all(audio.audio_path(lang, text).is_file() for lang, text in prompts)
    asked = len(google.asked)  # gTTS sends a long text in several requests
    assert asked >= len(prompts)
    assert audio.render_missing() == (len(prompts), 0, 0)
    assert len(google.asked) == asked  # nothing rendered twice


def test_changed_text_gets_new_audio():
    assert audio.audio_name("hi", "एक") != audio.audio_name("hi", "दो")
    assert audio.audio_name("hi", "एक") != audio.audio_name("mr", "एक")


def test_a_prompt_without_audio_is_said_in_its_language_by_a_voice_that_speaks_it(
        clean_db, google, monkeypatch):
    """Twilio's default <Say> voice ("man") speaks none of our Indian locales, and a
    voice that cannot speak the language fails the <Say>: every one names its voice, the
    locale's Google standard voice unless IVR_VOICE_<LANG> says another."""
    import xml.etree.ElementTree as ET

    from twilio.twiml.voice_response import VoiceResponse

    from core import i18n
    from ivr_flows import twiml

    def said() -> dict[str, tuple[str, str]]:
        twiml.say_voices.cache_clear()
        response = VoiceResponse()
        for lang in i18n.LANGUAGES:
            twiml._speak(response, lang, f"prompt {lang}", [])
        return {say.text.split()[-1]: (say.get("language"), say.get("voice"))
                for say in ET.fromstring(str(response)).iter("Say")}

    try:
        # Voices Twilio's Text-to-Speech table lists: for bn, gu, kn and ta only the C and
        # D standard voices (an A there may fail the <Say>).
        assert said() == {
            "hi": ("hi-IN", "Google.hi-IN-Standard-A"),
            "en": ("en-IN", "Google.en-IN-Standard-A"),
            "bn": ("bn-IN", "Google.bn-IN-Standard-C"),
            "mr": ("mr-IN", "Google.mr-IN-Standard-A"),
            "ta": ("ta-IN", "Google.ta-IN-Standard-C"),
            "te": ("te-IN", "Google.te-IN-Standard-A"),
            "gu": ("gu-IN", "Google.gu-IN-Standard-C"),
            "kn": ("kn-IN", "Google.kn-IN-Standard-C"),
        }
        monkeypatch.setenv("IVR_VOICE_TA", "Google.ta-IN-Wavenet-B")
        assert said()["ta"] == ("ta-IN", "Google.ta-IN-Wavenet-B")
    finally:
        monkeypatch.delenv("IVR_VOICE_TA", raising=False)
        twiml.say_voices.cache_clear()

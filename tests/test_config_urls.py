"""DATABASE_URL and REDIS_URL of another kind are refused at start, with the other
problems, not at first use (found by a review, session 21)."""

from __future__ import annotations

import pytest

from core.config import ConfigError, load_settings

DB = "postgresql://postgres@127.0.0.1:5432/ridechain"
REDIS = "redis://127.0.0.1:6379/0"


def production_env(**extra: str) -> dict[str, str]:
    return {
        "APP_ENV": "production",
        "DATABASE_URL": "postgresql://rc@db.internal/ridechain",
        "REDIS_URL": "redis://redis.internal:6379/0",
        "PUBLIC_BASE_URL": "https://ridechain.example.in",
        "SECRET_KEY": "Jm3vQ9x-kT2pW7rB5nY8cF1hL4sD6gA0eZ",
        "OTP_KEY": "otp-7Hq2Lw9Zx4Kc1Vb8Nm5Rt3Yp6Ge0Sd",
        "TWILIO_ACCOUNT_SID": "AC" + "0123456789abcdef" * 2,
        "TWILIO_AUTH_TOKEN": "f0e1d2c3b4a5968778695a4b3c2d1e0f",
        "RAZORPAY_KEY_ID": "rzp_live_AbCdEf123456",
        "RAZORPAY_KEY_SECRET": "Lw8Kc2Vb9Nm4Rt7Yp1Ge5Sd3",
        "RAZORPAY_WEBHOOK_SECRET": "hook-Qz5Xw8Ce2Rv6Tb9Yn3Um7Ik1Ol4Pa0",
        "OPS_PHONE": "+919812300999",
        "TWILIO_WHATSAPP_FROM": "whatsapp:+919812300998",
        "TWILIO_SMS_FROM": "+919812300998",
        "TWILIO_VOICE_NUMBER": "+918012300998",
        "METRICS_TOKEN": "metrics-Hn4Tq8Wz1Lc6Pv3Kx9Bd2Rm7Yf5Gs0",
        **extra,
    }


# Was: core.config.load_settings took any string as REDIS_URL. "redis.internal:6379"
# (the host:port a platform's add-on page shows, without its scheme) passes the release
# (migrate never touches Redis; production seeds nothing), the web starts, and then every
# webhook, /readyz and each worker's start fail at first use with redis-py's
# "ValueError: Redis URL must specify one of the following schemes" (the worker crashes
# in a loop). Now: load_settings refuses it with the other problems, a line naming
# REDIS_URL (redis://, rediss:// or unix://), so the release stops with a clear message.
@pytest.mark.parametrize("value", ["redis.internal:6379", "127.0.0.1:6379/0",
                                   "http://redis.internal:6379"])
def test_a_redis_url_without_a_redis_scheme_is_refused_at_start(value):
    with pytest.raises(ConfigError) as info:
        load_settings(production_env(REDIS_URL=value))
    assert "REDIS_URL" in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_settings({"DATABASE_URL": DB, "REDIS_URL": value})
    assert "REDIS_URL" in str(info.value)


# Was: the same for DATABASE_URL: a URL that is not PostgreSQL's ("mysql://...", or a
# bare "host:5432/db") is taken as is (sqlalchemy_url rewrites only postgres:// and
# postgresql://), and fails at first use: the release's migrate dies with a traceback
# (ModuleNotFoundError: MySQLdb, ArgumentError: could not parse), not the configuration
# message every other bad setting gets (ConfigError.report). Now: load_settings
# refuses a DATABASE_URL that is not postgres:// / postgresql:// (or +psycopg), naming it.
@pytest.mark.parametrize("value", ["mysql://rc@db.internal/ridechain",
                                   "db.internal:5432/ridechain"])
def test_a_database_url_that_is_not_postgresql_is_refused_at_start(value):
    with pytest.raises(ConfigError) as info:
        load_settings(production_env(DATABASE_URL=value))
    assert "DATABASE_URL" in str(info.value)




@pytest.mark.parametrize(("database_url", "redis_url"), [
    (DB, REDIS),
    ("postgres://rc@db.internal/ridechain", "rediss://:pw@redis.internal:6380/0"),
    ("postgresql+psycopg://rc@db.internal/ridechain", "unix:///tmp/redis.sock?db=0"),
])
def test_the_urls_people_use_are_taken(database_url, redis_url):
    settings = load_settings({"DATABASE_URL": database_url, "REDIS_URL": redis_url})
    assert settings.redis_url == redis_url


# Was: PUBLIC_BASE_URL="https://ridechain.example.in/?src=render" was taken: every path is
# appended to it, so Twilio was told to call ".../?src=render/webhooks/twilio/status" and
# each signature we checked was computed on a URL Twilio never called (a query swallows
# the path). A user name and password in it went into every link we sent. Now each is
# refused at start, naming PUBLIC_BASE_URL.
@pytest.mark.parametrize("value", ["https://ridechain.example.in/?src=render",
                                   "https://ridechain.example.in/#top",
                                   "https://ridechain.example.in?",
                                   "https://ops:pw@ridechain.example.in",
                                   "https:///webhooks",
                                   # a port that is no port: every link named it
                                   "https://ridechain.example.in:80a",
                                   "https://ridechain.example.in:99999",
                                   "https://ridechain.example.in:0"])
def test_a_public_base_url_that_paths_cannot_follow_is_refused(value):
    with pytest.raises(ConfigError) as info:
        load_settings(production_env(PUBLIC_BASE_URL=value))
    assert "PUBLIC_BASE_URL" in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_settings({"DATABASE_URL": DB, "REDIS_URL": REDIS, "PUBLIC_BASE_URL": value})
    assert "PUBLIC_BASE_URL" in str(info.value)


def test_a_public_base_url_with_a_path_prefix_is_kept():
    s = load_settings(production_env(PUBLIC_BASE_URL="https://ridechain.example.in/rc/"))
    assert s.public_base_url == "https://ridechain.example.in/rc"


# Was: WHATSAPP_TEMPLATE_<LANG> was read by notify straight from the environment: a
# template's name pasted instead of its ContentSid was refused by Twilio (21655, final) on
# every out-of-window notice, and a typo in the language (WHATSAPP_TEMPLATE_HN) was read
# by nobody. Both now stop the start, naming the setting (found by review r9, session 27).
@pytest.mark.parametrize("name, value", [
    ("WHATSAPP_TEMPLATE_HI", "ridechain_update_hi"),
    ("WHATSAPP_TEMPLATE_HI", "HX123"),
    ("WHATSAPP_TEMPLATE_TA", "hx0123456789abcdef0123456789abcdef0"),
    ("WHATSAPP_TEMPLATE_HN", "HX" + "0123456789abcdef" * 2),
])
def test_a_whatsapp_template_setting_twilio_would_refuse_stops_the_start(name, value):
    with pytest.raises(ConfigError) as info:
        load_settings({"DATABASE_URL": DB, "REDIS_URL": REDIS, name: value})
    assert name in str(info.value) and value not in str(info.value)


def test_a_content_sid_for_each_language_is_taken():
    env = {"DATABASE_URL": DB, "REDIS_URL": REDIS, "WHATSAPP_TEMPLATE_HI": "HX" + "ab" * 16,
           "WHATSAPP_TEMPLATE_EN": "", "WHATSAPP_TEMPLATE_TA": "HX" + "0123456789ABCDEF" * 2}
    assert load_settings(env).public_base_url

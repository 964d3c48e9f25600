"""Configuration from environment variables, parsed and validated once at start.

Sandbox mode (the default) has working defaults for every secret so that `./run serve`
needs nothing; production refuses to start without real secrets and never mounts the
sandbox emulators.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path
from urllib.parse import SplitResult, unquote, urlsplit

from core import clock
from core.i18n import LANGUAGES, unreadable_catalogs

ROOT = Path(__file__).resolve().parent.parent

SANDBOX_TWILIO_ACCOUNT_SID = "AC" + "5a4db0c" + "0" * 25  # 34 chars, like a real SID
SANDBOX_TWILIO_AUTH_TOKEN = "sandbox-twilio-auth-token"
SANDBOX_RAZORPAY_KEY_ID = "rzp_test_sandbox"
SANDBOX_RAZORPAY_KEY_SECRET = "sandbox-razorpay-key-secret"
SANDBOX_RAZORPAY_WEBHOOK_SECRET = "sandbox-razorpay-webhook-secret"
SANDBOX_SECRET_KEY = "sandbox-secret-key-not-for-production"
SANDBOX_OTP_KEY = SANDBOX_SECRET_KEY + "-otp"
# Every secret's sandbox value is in this public file: production refuses each of them in
# any secret setting, not only in its own (OTP_KEY set to the sandbox SECRET_KEY, say).
SANDBOX_SECRETS = frozenset((
    SANDBOX_TWILIO_ACCOUNT_SID, SANDBOX_TWILIO_AUTH_TOKEN, SANDBOX_RAZORPAY_KEY_ID,
    SANDBOX_RAZORPAY_KEY_SECRET, SANDBOX_RAZORPAY_WEBHOOK_SECRET, SANDBOX_SECRET_KEY,
    SANDBOX_OTP_KEY))
# The secrets we make up ourselves (signing keys, the webhook secret we type into
# Razorpay's dashboard) must be long enough not to be guessed: `python -c "import
# secrets; print(secrets.token_urlsafe(32))"` makes a 43-character one. Twilio's and
# Razorpay's own (an auth token, a key secret) are 32 and 24 characters: one shorter than
# ISSUED_SECRET_MIN is a placeholder, not a credential.
OWN_SECRET_MIN = 32
ISSUED_SECRET_MIN = 16
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# When operators answer "talk to a person": India time, every day of the week alike.
DEFAULT_OPS_HOURS = "08:00-21:00"
ALWAYS = "24h"
_HOURS = re.compile(r"(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})")


class ConfigError(RuntimeError):
    """The environment does not describe a runnable service (a line per problem)."""

    def report(self, who: str) -> str:
        """What ``who`` (a command, a process) tells the operator instead of a traceback."""
        lines = "".join(f"\n  {line}" for line in str(self).splitlines())
        return (f"{who}: the environment is not a usable configuration "
                f"(README: Configuration):{lines}")


def _port_ok(parts: SplitResult) -> bool:
    """A URL's port, if it names one, is a number from 1 to 65535."""
    try:
        port = parts.port
    except ValueError:
        return False
    return port is None or port >= 1


def _int(env: dict[str, str], name: str, default: int, *, minimum: int = 0,
         maximum: int | None = None) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name} must be <= {maximum}, got {value}")
    return value


# Integer settings an area reads when it needs them, and their limits (lowest, highest).
# load_settings checks each, so a bad value stops the start with the other problems
# instead of failing the first job or request that reads it; int_setting reads them.
AREA_INTS: dict[str, tuple[int, int | None]] = {
    "DRAIN_THREADS": (1, 16),  # core.services.inbound
    "PAYMENT_LINK_TTL_MIN": (16, None),  # Razorpay refuses a link expiring within 15 min
    "REFUND_RETRY_MIN": (1, None),
    "REFUND_ATTEMPTS": (1, None),
    "HANDOFF_REPLY_MINUTES": (1, None),
    "HANDOFF_IDLE_HOURS": (1, None),
    "SERVICE_RADIUS_KM": (1, None),
    "UNPAID_BOOKINGS_MAX": (1, None),
    "CANCELLED_BOOKINGS_MAX": (1, None),
    "DISPATCH_PICKUP_MINUTES": (1, None),
    "DISPATCH_MISSED_OFFERS_OFF": (0, 100),  # 0: never put OFF for missed offers
    "CHAT_READ_FIRST_MS": (0, 60_000),  # core.services.conversation; 0: the guard off
    "RETENTION_STATUS_DAYS": (1, 3650),
    "RETENTION_MESSAGE_DAYS": (7, 3650),  # a booking and its refunds are over by then
    "RETENTION_RUN_SECONDS": (1, 600),  # the job's RQ timeout is this plus a minute
    # core.services.auth: an operator's sign-in (customers' data, refunds) ends after this
    # many hours unused, and this many days after it was made, whatever its use; never
    # longer than a customer's (30 days).
    "OPS_SESSION_IDLE_HOURS": (1, 72),
    "OPS_SESSION_DAYS": (1, 30),
}

# Integer settings of the processes' commands (the Procfile's gunicorn flags; the workers'
# niceness, core.cli.lower_priority), not read by a setting of ours. load_settings checks
# them too, so a bad one stops the release instead of each process at its start, or worse
# (WEB_CONCURRENCY=0: a gunicorn bound to the port with no worker to answer). At most 32
# threads: a process's PostgreSQL pool keeps at most 32 connections (core.adapters.db).
PROCESS_INTS: dict[str, tuple[int, int]] = {
    "WEB_CONCURRENCY": (1, 64),
    "WEB_THREADS": (1, 32),
    "WORKER_NICE": (0, 19),
}


def int_setting(name: str, default: int) -> int:
    """An integer setting an area reads when it needs it (one of AREA_INTS): ConfigError
    names a bad value instead of the default silently standing in for it."""
    minimum, maximum = AREA_INTS[name]
    return _int(dict(os.environ), name, default, minimum=minimum, maximum=maximum)


def listed_secrets(raw: str) -> tuple[str, ...]:
    """The secrets of a comma-separated setting; spaces next to a comma separate (production
    refuses a value that starts or ends with one, as it does any padded secret)."""
    return tuple(k.strip() for k in raw.split(",") if k.strip())


def parse_ops_hours(raw: str) -> tuple[int, int] | None:
    """OPS_HOURS as (opens, closes) in minutes after midnight, India time; None: "24h",
    always open. "20:00-04:00" runs past midnight; "24:00" may end a day. ValueError
    names what is wrong."""
    text = raw.strip().lower()
    if text == ALWAYS:
        return None
    match = _HOURS.fullmatch(text)
    if match is None:
        raise ValueError(f"OPS_HOURS must be HH:MM-HH:MM (India time, e.g. "
                         f"{DEFAULT_OPS_HOURS}) or {ALWAYS}, got {raw!r}")
    oh, om, ch, cm = (int(g) for g in match.groups())
    if oh > 23 or om > 59 or cm > 59 or ch > 24 or (ch == 24 and cm):
        raise ValueError(f"OPS_HOURS has a time that is not on a clock, got {raw!r}")
    opens, closes = oh * 60 + om, (ch * 60 + cm) % (24 * 60)
    if opens == closes:  # no hours at all, or every hour: say which with 24h
        raise ValueError(f"OPS_HOURS opens and closes at the same time (for always, "
                         f"use {ALWAYS}), got {raw!r}")
    return opens, closes


def is_server_url(url: str) -> bool:
    """An http(s) URL naming a host: one written without its scheme ("osrm.internal:5000")
    is refused by the clients that would call it, at every call."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises for a port that is not a number)
        return parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:  # a port that is not a number, a bracket left open
        return False


def sqlalchemy_url(url: str) -> str:
    """Point plain postgres URLs at the psycopg 3 driver (the one we ship)."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


@dataclass(frozen=True)
class Settings:
    """Everything the service reads from its environment, validated."""

    app_env: str
    database_url: str
    redis_url: str
    port: int
    public_base_url: str
    secret_key: str
    otp_key: bytes
    twilio_account_sid: str
    twilio_auth_token: str
    twilio_api_base: str | None
    twilio_whatsapp_from: str
    twilio_sms_from: str
    twilio_voice_number: str
    razorpay_key_id: str
    razorpay_key_secret: str
    razorpay_webhook_secret: str
    razorpay_api_base: str | None
    ops_phone: str
    osrm_url: str | None
    data_dir: Path
    detour_factor_bp: int
    inbound_rate_limit: int
    inbound_rate_window_s: int
    max_webhook_bytes: int
    outbox_max_retries: int
    status_window_ms: int
    drain_linger_ms: int
    outbox_retry_intervals: tuple[int, ...] = field(default=(10, 30, 120, 600, 1800))
    log_level: str = "INFO"
    # The secret of a Twilio Webhook Setting's SharedKey, for webhooks Twilio signs with
    # it (and names in X-Twilio-Webhooks-Signature-Settings) instead of the auth token.
    twilio_webhook_shared_key: str | None = None
    # Twilio's secondary auth token while the auth token is rotated: webhooks signed with
    # it pass too (the REST API is called with TWILIO_AUTH_TOKEN only), until
    # TWILIO_AUTH_TOKEN_SECONDARY_UNTIL (twilio_auth_token_secondary: those verifying now).
    twilio_auth_token_secondary_keys: tuple[str, ...] = ()
    twilio_auth_token_secondary_until: datetime | None = None
    # How many proxies in front of us set X-Forwarded-For/-Proto/-Host (0: none; the
    # headers are then anybody's and ignored).
    proxy_hops: int = 0
    # Wrong sign-in codes a phone may send in a day, however many new codes it asks for.
    otp_failures_per_day: int = 10
    # Operators' hours (OPS_HOURS): minutes after midnight, India time, every day; None:
    # always. Outside them a request for a person waits for the opening, said plainly.
    ops_hours: tuple[int, int] | None = (8 * 60, 21 * 60)
    # Razorpay signs the retries of events sent before a webhook secret change with the
    # old secret: RAZORPAY_WEBHOOK_SECRET_PREVIOUS (comma-separated) still verifies them,
    # until RAZORPAY_WEBHOOK_SECRET_PREVIOUS_UNTIL (razorpay_webhook_previous: those now).
    razorpay_webhook_previous_keys: tuple[str, ...] = ()
    razorpay_webhook_previous_until: datetime | None = None
    # /metrics (and /readyz's details) ask for `Authorization: Bearer <metrics_token>` when
    # it is set; without one they are open to anyone who reaches the web: production
    # refuses that unless METRICS_PUBLIC=1 says the network in front is private.
    metrics_token: str | None = None
    metrics_public: bool = False
    # Sign-in codes sent per hour, all phones and addresses together (SMS pumping spread
    # over many numbers and addresses passes every per-phone and per-address limit).
    signin_codes_per_hour: int = 600
    # RQ_FORK_PER_JOB: the workers fork a process per job (core.cli.worker).
    rq_fork_per_job: bool = False
    # SANDBOX_PUBLIC: the sandbox's routes (/sandbox/..., its outbox showing every sign-in
    # code) answer other machines too, not only this one (sandbox.access).
    sandbox_public: bool = False
    # MIGRATE_DATABASE_URL: the schema owner's URL, for `release` and `migrate`, which then
    # grant DATABASE_URL's role (the service's, owning nothing) what it uses, so that it
    # cannot turn the ledger's checks off (core.adapters.roles). Unset: one role does all.
    migrate_database_url: str | None = None

    @property
    def owner_database_url(self) -> str:
        """The URL migrations run with: MIGRATE_DATABASE_URL, else DATABASE_URL."""
        return self.migrate_database_url or self.database_url

    @property
    def is_production(self) -> bool:
        return self.app_env == "production"

    @property
    def twilio_auth_token_secondary(self) -> tuple[str, ...]:
        """The secondary auth tokens that verify webhooks now: none once their end
        (TWILIO_AUTH_TOKEN_SECONDARY_UNTIL) has passed on the service clock."""
        return old_secrets_in_force(self.twilio_auth_token_secondary_keys,
                                    self.twilio_auth_token_secondary_until)

    @property
    def razorpay_webhook_previous(self) -> tuple[str, ...]:
        """The previous webhook secrets that verify webhooks now: none once their end
        (RAZORPAY_WEBHOOK_SECRET_PREVIOUS_UNTIL) has passed on the service clock."""
        return old_secrets_in_force(self.razorpay_webhook_previous_keys,
                                    self.razorpay_webhook_previous_until)

    @property
    def is_sandbox(self) -> bool:
        return self.app_env == "sandbox"


def old_secrets_in_force(keys: tuple[str, ...], until: datetime | None) -> tuple[str, ...]:
    """``keys`` while the service clock is before ``until`` (None: no end, sandbox only);
    after it, none."""
    return keys if until is None or clock.now() < until else ()


# An old secret kept beside the current one (RAZORPAY_WEBHOOK_SECRET_PREVIOUS,
# TWILIO_AUTH_TOKEN_SECONDARY) verifies webhooks until its <NAME>_UNTIL, which production
# requires with it: a secret forgotten there would verify a leaked copy's forgeries for
# ever. At most OLD_SECRET_MAX_DAYS ahead at start: Razorpay retries an event for 24 hours,
# so none signed with the old webhook secret comes a day after the change, and a Twilio
# rotation (promote the secondary, deploy the new token) is a day's work; a week covers a
# weekend and a late deploy, and bounds what a leaked old secret is good for.
OLD_SECRET_MAX_DAYS = 7
OLD_SECRETS = {"RAZORPAY_WEBHOOK_SECRET_PREVIOUS": "RAZORPAY_WEBHOOK_SECRET_PREVIOUS_UNTIL",
               "TWILIO_AUTH_TOKEN_SECONDARY": "TWILIO_AUTH_TOKEN_SECONDARY_UNTIL"}
_UNTIL_EXAMPLE = "2026-12-12T18:00+05:30"


def _old_secret_until(env: dict[str, str], name: str, *, required: bool,
                      problems: list[str]) -> datetime | None:
    """The end of an old secret (``name``'s <NAME>_UNTIL): an ISO 8601 time with its UTC
    offset, at most OLD_SECRET_MAX_DAYS after now. One already past is taken (the secret
    then verifies nothing, and the web says so once): a restart must not fail on it."""
    until_name = OLD_SECRETS[name]
    raw = env.get(until_name, "").strip()
    if not raw:
        if required:
            problems.append(f"{until_name} is required in production with {name}: when the "
                            f"old secret stops verifying webhooks, at most "
                            f"{OLD_SECRET_MAX_DAYS} days ahead (e.g. {_UNTIL_EXAMPLE})")
        return None
    try:
        until = datetime.fromisoformat(raw)
    except ValueError:
        problems.append(f"{until_name} must be an ISO 8601 date and time with its UTC offset "
                        f"(e.g. {_UNTIL_EXAMPLE}), got {raw!r}")
        return None
    if until.tzinfo is None or until.utcoffset() is None:
        problems.append(f"{until_name} has no UTC offset: add +05:30 (India time) or Z (UTC), "
                        f"e.g. {_UNTIL_EXAMPLE}; got {raw!r}")
        return None
    if until > clock.now() + timedelta(days=OLD_SECRET_MAX_DAYS):
        problems.append(f"{until_name} is more than {OLD_SECRET_MAX_DAYS} days ahead: an old "
                        f"secret is kept for the rotation only; got {raw!r}")
        return None
    return until


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "0.0.0.0")


def is_inside_host(host: str) -> bool:
    """True for a host Twilio and Razorpay cannot call: this machine, or an address written
    out that is loopback, private, link-local or unspecified (127.0.1.1, 10.0.0.5,
    [::ffff:127.0.0.1]). A name is not looked up: its address may differ where it runs."""
    if host in LOOPBACK_HOSTS:
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return (address.is_loopback or address.is_private or address.is_link_local
            or address.is_unspecified)


# A bound on wrong sign-in codes a phone may send in a day: 50 guesses of a 6-digit code
# succeed once in 20,000 days; 100000 (a typo for 10) would succeed in about 10 days.
OTP_FAILURES_MAX = 50
YES = ("1", "true", "yes", "on")
NO = ("", "0", "false", "no", "off")
E164 = re.compile(r"\+[1-9]\d{7,14}")
DEMO_PHONES = re.compile(r"\+9190000000\d\d")  # core.services.seed's block, never delivered


DATABASE_SCHEMES = ("postgres", "postgresql", "postgresql+psycopg")
REDIS_SCHEMES = ("redis", "rediss", "unix")


# A WhatsApp template is named to Twilio by its ContentSid; anything else (the template's
# name, pasted from the Content Template Builder) is refused by Twilio (21655) on every
# out-of-window notice, finally: no SMS goes instead.
TEMPLATE_PREFIX = "WHATSAPP_TEMPLATE_"
CONTENT_SID = re.compile(r"HX[0-9a-fA-F]{32}")


def _template_problems(env: dict[str, str]) -> list[str]:
    """WHATSAPP_TEMPLATE_<LANG>: each a ContentSid, each for a language we ship (a typo in
    the language would be read by nobody)."""
    problems = []
    for name in sorted(k for k in env if k.startswith(TEMPLATE_PREFIX)):
        value = env[name].strip()
        lang = name[len(TEMPLATE_PREFIX):].lower()
        if lang not in LANGUAGES:
            problems.append(f"{name}: no such language; WHATSAPP_TEMPLATE_<LANG> takes one of "
                            f"{', '.join(code.upper() for code in LANGUAGES)}")
        elif value and not CONTENT_SID.fullmatch(value):
            problems.append(f"{name} must be the template's ContentSid (HX and 32 hex "
                            "characters, from Twilio's Content Template Builder), not its name")
    return problems


# Twilio's <Say> voice per language (ivr_flows.twiml.say_voices): a name for a language
# we do not ship (IVR_VOICE_HN for _HI) would be read by nobody, the default voice kept.
VOICE_PREFIX = "IVR_VOICE_"


def _voice_problems(env: dict[str, str]) -> list[str]:
    return [f"{name}: no such language; IVR_VOICE_<LANG> takes one of "
            f"{', '.join(code.upper() for code in LANGUAGES)}"
            for name in sorted(k for k in env if k.startswith(VOICE_PREFIX))
            if name[len(VOICE_PREFIX):].lower() not in LANGUAGES]


# A Twilio account's SID: "AC" and 32 hex digits. Anything else (an API key's SK..., the
# auth token pasted in its place) fails every call to Twilio with 401/404, SMS and calls
# alike, from the first message on.
TWILIO_ACCOUNT_SID = re.compile(r"AC[0-9a-fA-F]{32}")


def _migrate_url_problems(migrate_url: str, database_url: str) -> list[str]:
    """What is wrong with MIGRATE_DATABASE_URL (optional): it must be a PostgreSQL URL of
    the very database DATABASE_URL names (its host may differ: a pooler in front of the
    service, the server itself for migrations), else the release would migrate another
    database than the one the service uses."""
    if not migrate_url:
        return []
    if migrate_url != migrate_url.strip():
        return ["MIGRATE_DATABASE_URL starts or ends with a space or line break; remove it"]
    if urlsplit(migrate_url).scheme not in DATABASE_SCHEMES:
        return ["MIGRATE_DATABASE_URL must be a PostgreSQL URL (postgresql://owner@host/db)"]
    if database_url and _database_name(migrate_url) != _database_name(database_url):
        return ["MIGRATE_DATABASE_URL must name the database DATABASE_URL names "
                f"({_database_name(database_url) or 'none'}), not "
                f"{_database_name(migrate_url) or 'none'}"]
    return []


def _database_name(url: str) -> str:
    """The database a PostgreSQL URL names (its path, or a dbname= of its query)."""
    parts = urlsplit(url)
    for pair in parts.query.split("&"):
        key, _, value = pair.partition("=")
        if key == "dbname" and value:
            return unquote(value)
    return unquote(parts.path.lstrip("/"))


def _flag(env: dict[str, str], name: str, problems: list[str]) -> bool:
    """An on/off setting: 1/0, true/false, yes/no, on/off (any case; unset is off). Any
    other value is one more line of the refusal, not a silent off."""
    raw = env.get(name, "")
    value = raw.strip().lower()
    if value not in YES + NO:
        problems.append(f"{name} must be on or off (1/0, true/false, yes/no), got {raw!r}")
        return False
    return value in YES


# Secret settings whose value, other than the sandbox's own, only a real deploy has.
_DEPLOY_SECRETS = {
    "SECRET_KEY": SANDBOX_SECRET_KEY, "OTP_KEY": SANDBOX_OTP_KEY,
    "TWILIO_ACCOUNT_SID": SANDBOX_TWILIO_ACCOUNT_SID,
    "TWILIO_AUTH_TOKEN": SANDBOX_TWILIO_AUTH_TOKEN,
    "TWILIO_AUTH_TOKEN_SECONDARY": "", "TWILIO_WEBHOOK_SHARED_KEY": "",
    "RAZORPAY_KEY_ID": SANDBOX_RAZORPAY_KEY_ID,
    "RAZORPAY_KEY_SECRET": SANDBOX_RAZORPAY_KEY_SECRET,
    "RAZORPAY_WEBHOOK_SECRET": SANDBOX_RAZORPAY_WEBHOOK_SECRET,
    "RAZORPAY_WEBHOOK_SECRET_PREVIOUS": "", "METRICS_TOKEN": "",
}


def production_settings_given(env: dict[str, str]) -> list[str]:
    """The settings of ``env`` only a production deploy has: a live Razorpay key, a public
    https PUBLIC_BASE_URL (not this machine or its network), a secret other than its
    sandbox default. Without APP_ENV they mean APP_ENV=production was forgotten: the
    default sandbox would seed a demo operator, show every sign-in code at /sandbox/outbox
    and send messages and payments to the emulators, on the Procfile's 0.0.0.0."""
    given = []
    url = env.get("PUBLIC_BASE_URL", "").strip()
    try:
        parts = urlsplit(url)
        public = (parts.scheme == "https" and bool(parts.hostname)
                  and not is_inside_host(parts.hostname or ""))
    except ValueError:
        public = False
    if public:
        given.append("PUBLIC_BASE_URL")
    for name, sandbox_value in _DEPLOY_SECRETS.items():
        value = env.get(name, "").strip()
        if value and value != sandbox_value:
            given.append(name)
    return given


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    """Read and validate the environment; raise ConfigError with every problem at once."""
    env = dict(os.environ if environ is None else environ)
    if "APP_ENV" not in env:
        deploy_settings = production_settings_given(env)
        if deploy_settings:
            # One line, not a list of sandbox problems: the fix is the one word.
            raise ConfigError(f"APP_ENV is not set but production settings were given "
                              f"({', '.join(deploy_settings)}): set APP_ENV=production, or "
                              "APP_ENV=sandbox for a demo")
    app_env = env.get("APP_ENV", "sandbox").strip().lower()
    if app_env not in ("sandbox", "production"):
        raise ConfigError(f"APP_ENV must be 'sandbox' or 'production', got {app_env!r}")
    production = app_env == "production"
    problems: list[str] = []

    def secret(name: str, sandbox_default: str, minimum: int = ISSUED_SECRET_MIN) -> str:
        """A secret setting; in production, checked without ever naming its value."""
        value = env.get(name, "")
        if value and production:
            if value.strip() == sandbox_default:
                problems.append(f"{name} is the sandbox default; set a real secret")
            elif value.strip() in SANDBOX_SECRETS:
                problems.append(f"{name} is another setting's sandbox default; set a "
                                "real secret")
            elif value != value.strip():
                # Refused, not stripped: a stray space or line break means the value was
                # pasted wrong, and the platform's copy would stay wrong for every other
                # reader of it (and a stripped signing key is not the one used before).
                problems.append(f"{name} starts or ends with a space or line break; "
                                "remove it")
            elif len(value) < minimum:
                problems.append(f"{name} is too short: at least {minimum} characters")
        if value:
            return value
        if production:
            problems.append(f"{name} is required in production")
            return ""
        return sandbox_default

    def own(name: str, sandbox_value: str) -> str:
        """A setting production must give its own value (the sandbox has a demo one)."""
        value = env.get(name, "").strip()
        if production and not value:
            problems.append(f"{name} is required in production")
        elif production and value == sandbox_value:
            problems.append(f"{name} is the sandbox's {sandbox_value}; set the real one")
        return value or sandbox_value

    def num(name: str, default: int, *, minimum: int = 0, maximum: int | None = None) -> int:
        """An integer setting; a bad one is one more line of the refusal, not the only one."""
        try:
            return _int(env, name, default, minimum=minimum, maximum=maximum)
        except ConfigError as err:
            problems.append(str(err))
            return default

    port = num("PORT", 8000, minimum=1, maximum=65535)
    bind_host = env.get("BIND_HOST", "")
    if bind_host:  # the Procfile's gunicorn binds it (./run serve: 127.0.0.1 in sandbox)
        try:  # gunicorn's --bind wants an IPv6 address in brackets: [::]
            bracketed = bind_host.startswith("[") and bind_host.endswith("]")
            addr = ipaddress.ip_address(bind_host[1:-1] if bracketed else bind_host)
            if addr.version != (6 if bracketed else 4):
                raise ValueError(bind_host)
        except ValueError:
            problems.append("BIND_HOST must be an IPv4 address or an IPv6 one in brackets "
                            f"([::]), got {bind_host!r}")
    public_base_url = env.get("PUBLIC_BASE_URL") or f"http://127.0.0.1:{port}"
    public_base_url = public_base_url.rstrip("/")
    parts = urlsplit(public_base_url)
    if any(char.isspace() for char in public_base_url):
        # Refused, not trimmed, as a padded secret is. urlsplit drops a line break (and a
        # leading space) as it reads the URL, but the value kept has it: every Twilio
        # signature would be checked on it, and every link and callback would carry it.
        problems.append("PUBLIC_BASE_URL has a space or line break in it (a paste or a "
                        "file's last line?); remove it")
    elif parts.scheme not in ("http", "https") or not parts.hostname:
        problems.append("PUBLIC_BASE_URL must be an http(s) URL")
    elif not _port_ok(parts):
        # Every link and callback would name a port nothing listens on (":80a", ":99999").
        problems.append("PUBLIC_BASE_URL has a port that is not a number from 1 to 65535")
    elif parts.query or parts.fragment or "?" in public_base_url or "#" in public_base_url:
        # Paths are appended to it: a query or fragment here would swallow them, and every
        # signature Twilio computes on the URL it called would differ from ours.
        problems.append("PUBLIC_BASE_URL must have no query (?) or fragment (#): "
                        "webhook paths are added after it")
    elif parts.username or parts.password:
        # It goes into every callback and link we hand out, and into logs.
        problems.append("PUBLIC_BASE_URL must not carry a user name or password")
    elif production and (not env.get("PUBLIC_BASE_URL") or parts.scheme != "https"
                         or is_inside_host(parts.hostname or "")):
        # Twilio signs the URL it calls, and every link and callback we hand out is built
        # on this: a default, or an address only this machine or its network reaches,
        # fails every signature and sends callbacks nowhere.
        problems.append("PUBLIC_BASE_URL must be the service's public https URL in production")

    problems += _template_problems(env)
    problems += _voice_problems(env)
    rq_fork_per_job = _flag(env, "RQ_FORK_PER_JOB", problems)
    sandbox_public = _flag(env, "SANDBOX_PUBLIC", problems)

    database_url = env.get("DATABASE_URL", "")
    redis_url = env.get("REDIS_URL", "")
    if not database_url:
        problems.append("DATABASE_URL is required (./run serve sets it for the embedded server)")
    if not redis_url:
        problems.append("REDIS_URL is required (./run serve sets it for the embedded server)")
    # Refused, not trimmed: "ridechain\n" would be another database, which migrate would
    # create empty beside the real one; a leading space fails SQLAlchemy's parse.
    padded = [name for name, value in (("DATABASE_URL", database_url),
                                       ("REDIS_URL", redis_url)) if value != value.strip()]
    problems += [f"{name} starts or ends with a space or line break; remove it"
                 for name in padded]
    # A URL of another kind would pass the release and fail every request at first use.
    if (database_url and "DATABASE_URL" not in padded
            and urlsplit(database_url).scheme not in DATABASE_SCHEMES):
        problems.append("DATABASE_URL must be a PostgreSQL URL (postgresql://user@host/db)")
    if (redis_url and "REDIS_URL" not in padded
            and urlsplit(redis_url).scheme not in REDIS_SCHEMES):
        problems.append("REDIS_URL must be a Redis URL (redis://host:6379/0, rediss:// or "
                        "unix://)")
    migrate_url = env.get("MIGRATE_DATABASE_URL", "")
    problems += _migrate_url_problems(migrate_url, database_url)

    secret_key = secret("SECRET_KEY", SANDBOX_SECRET_KEY, OWN_SECRET_MIN)
    otp_key = secret("OTP_KEY", SANDBOX_OTP_KEY, OWN_SECRET_MIN)
    twilio_sid = secret("TWILIO_ACCOUNT_SID", SANDBOX_TWILIO_ACCOUNT_SID)
    twilio_token = secret("TWILIO_AUTH_TOKEN", SANDBOX_TWILIO_AUTH_TOKEN)
    if (production and twilio_sid and twilio_sid not in SANDBOX_SECRETS
            and twilio_sid == twilio_sid.strip() and len(twilio_sid) >= ISSUED_SECRET_MIN
            and not TWILIO_ACCOUNT_SID.fullmatch(twilio_sid)):
        problems.append("TWILIO_ACCOUNT_SID must be the account's SID from Twilio's console: "
                        "AC and 32 hex characters (34 in all)")
    rzp_id = secret("RAZORPAY_KEY_ID", SANDBOX_RAZORPAY_KEY_ID)
    rzp_secret = secret("RAZORPAY_KEY_SECRET", SANDBOX_RAZORPAY_KEY_SECRET)
    rzp_hook = secret("RAZORPAY_WEBHOOK_SECRET", SANDBOX_RAZORPAY_WEBHOOK_SECRET,
                      OWN_SECRET_MIN)
    rzp_hook_previous = listed_secrets(env.get("RAZORPAY_WEBHOOK_SECRET_PREVIOUS", ""))
    twilio_secondary = listed_secrets(env.get("TWILIO_AUTH_TOKEN_SECONDARY", ""))
    refused_lists: set[str] = set()
    metrics_token = env.get("METRICS_TOKEN") or None
    raw_public = env.get("METRICS_PUBLIC", "")
    metrics_public = raw_public.strip().lower() in YES
    if raw_public.strip().lower() not in YES + NO:
        problems.append(f"METRICS_PUBLIC must be 1 or 0 (true/false, yes/no), got "
                        f"{raw_public!r}")
    if production:
        # Counts of bookings, messages and failures are nobody else's business: a token,
        # or an operator's word that only a private network reaches the web.
        if metrics_token is None and not metrics_public:
            problems.append("METRICS_TOKEN is required in production (Prometheus sends it "
                            "as a bearer token), or METRICS_PUBLIC=1 when only a private "
                            "network reaches /metrics")
        elif metrics_token is not None:
            if metrics_token in SANDBOX_SECRETS:
                problems.append("METRICS_TOKEN is a sandbox default; set a real secret")
            elif metrics_token != metrics_token.strip():
                problems.append("METRICS_TOKEN starts or ends with a space or line break; "
                                "remove it")
            elif len(metrics_token) < OWN_SECRET_MIN:
                problems.append(f"METRICS_TOKEN is too short: at least {OWN_SECRET_MIN} "
                                "characters")
        if rzp_id and not rzp_id.startswith("rzp_live_"):
            # A test-mode key takes no real money: every payment link would be a dummy.
            problems.append("RAZORPAY_KEY_ID must be a live-mode key id (rzp_live_...) "
                            "in production")
        # One leaked secret must not give away another: each has its own value.
        named = (("SECRET_KEY", secret_key), ("OTP_KEY", otp_key),
                 ("TWILIO_AUTH_TOKEN", twilio_token), ("RAZORPAY_KEY_SECRET", rzp_secret),
                 ("RAZORPAY_WEBHOOK_SECRET", rzp_hook),
                 ("METRICS_TOKEN", metrics_token or ""))
        for i, (name, given) in enumerate(named):
            for earlier, other in named[:i]:
                if given and given == other:
                    problems.append(f"{name} is the same as {earlier}; give each its own")
        # Lists of secrets (comma-separated), each checked as a secret of its own is. A
        # previous webhook secret has no length to meet: a short one is what a rotation to
        # a long one leaves behind, and it is kept for a day or two.
        for name, minimum in (("RAZORPAY_WEBHOOK_SECRET_PREVIOUS", 1),
                              ("TWILIO_WEBHOOK_SHARED_KEY", ISSUED_SECRET_MIN),
                              ("TWILIO_AUTH_TOKEN_SECONDARY", ISSUED_SECRET_MIN)):
            before = len(problems)
            raw = env.get(name, "")
            if raw != raw.strip():  # refused, not trimmed, as a single secret is
                problems.append(f"{name} starts or ends with a space or line break; "
                                "remove it")
            for key in listed_secrets(raw):
                if key in SANDBOX_SECRETS:
                    problems.append(f"{name} holds a sandbox default; set a real secret")
                elif len(key) < minimum:
                    problems.append(f"{name} is too short: at least {minimum} characters "
                                    "each")
                elif any(key == other for _, other in named):
                    problems.append(f"{name} is the same as another secret; give each its "
                                    "own")
            if len(problems) > before:
                refused_lists.add(name)  # its end is asked for once the secret itself is good

    # Each old secret's end: production asks for one with the secret (sandbox: optional).
    rzp_hook_previous_until = _old_secret_until(
        env, "RAZORPAY_WEBHOOK_SECRET_PREVIOUS", problems=problems,
        required=(production and bool(rzp_hook_previous)
                  and "RAZORPAY_WEBHOOK_SECRET_PREVIOUS" not in refused_lists))
    twilio_secondary_until = _old_secret_until(
        env, "TWILIO_AUTH_TOKEN_SECONDARY", problems=problems,
        required=(production and bool(twilio_secondary)
                  and "TWILIO_AUTH_TOKEN_SECONDARY" not in refused_lists))

    # In sandbox mode the real clients talk to our emulators mounted under /sandbox.
    twilio_api_base = env.get("TWILIO_API_BASE") or None
    razorpay_api_base = env.get("RAZORPAY_API_BASE") or None
    if production:
        for name, value in (("TWILIO_API_BASE", twilio_api_base),
                            ("RAZORPAY_API_BASE", razorpay_api_base)):
            if value and "/sandbox" in value:
                problems.append(f"{name} points at a sandbox emulator in production")
            elif value and urlsplit(value).scheme != "https":
                # The credentials go with every call, in the clear over plain http.
                problems.append(f"{name} must be an https URL in production")
    else:
        twilio_api_base = twilio_api_base or f"{public_base_url}/sandbox/twilio"
        razorpay_api_base = razorpay_api_base or f"{public_base_url}/sandbox/razorpay"

    intervals_raw = env.get("OUTBOX_RETRY_INTERVALS", "10,30,120,600,1800")
    try:
        intervals = tuple(int(x) for x in intervals_raw.split(",") if x.strip())
    except ValueError:
        problems.append("OUTBOX_RETRY_INTERVALS must be comma-separated seconds")
        intervals = (10,)
    if not intervals or any(i < 0 for i in intervals):
        problems.append("OUTBOX_RETRY_INTERVALS needs at least one non-negative value")
        intervals = (10,)

    # Customers are told to call it and ops alerts go to it: never the demo operator's.
    ops_phone = own("OPS_PHONE", "+919000000099")
    if not E164.fullmatch(ops_phone):
        problems.append("OPS_PHONE must be an E.164 number (+91XXXXXXXXXX)")
    elif production and DEMO_PHONES.fullmatch(ops_phone) and ops_phone != "+919000000099":
        problems.append("OPS_PHONE is a demo partner's number (+91 90000 000xx); set "
                        "the operators' real one")

    # Partners answer offers by SMS, so the SMS sender must be a number (not a sender id);
    # a WhatsApp sender without "whatsapp:" would send WhatsApp replies as SMS addresses.
    whatsapp_from = own("TWILIO_WHATSAPP_FROM", "whatsapp:+14155238886")
    sms_from = own("TWILIO_SMS_FROM", "+15005550006")
    voice_number = own("TWILIO_VOICE_NUMBER", "+15005550006")
    if not (whatsapp_from.startswith("whatsapp:")
            and E164.fullmatch(whatsapp_from.removeprefix("whatsapp:"))):
        problems.append("TWILIO_WHATSAPP_FROM must be whatsapp:+<E.164 number>")
    for name, number in (("TWILIO_SMS_FROM", sms_from), ("TWILIO_VOICE_NUMBER", voice_number)):
        if not E164.fullmatch(number):
            problems.append(f"{name} must be an E.164 number (+91XXXXXXXXXX)")
        elif production and number == ops_phone:
            # Alerts would be SMS from our number to itself (Twilio refuses them, 21266),
            # and "talk to a person" would call our own menu instead of an operator.
            problems.append(f"OPS_PHONE is {name}, our own number; set the operators' "
                            "mobile")

    try:
        ops_hours = parse_ops_hours(env.get("OPS_HOURS") or DEFAULT_OPS_HOURS)
    except ValueError as err:
        problems.append(str(err))
        ops_hours = None

    # Read at every route (OSRM_URL): without its scheme, requests has no adapter for it and
    # every quote falls back to the straight-line estimate, silently.
    osrm_url = env.get("OSRM_URL") or None
    if osrm_url is not None and not is_server_url(osrm_url):
        problems.append("OSRM_URL must be the OSRM server's http(s) URL "
                        "(http://osrm.internal:5000)")
    # The catalogs are read at the first message in each language: a folder mistyped, or a
    # copy lacking a language, would fail every turn, call and SMS in it.
    i18n_dir = env.get("I18N_DIR")
    if i18n_dir:
        problems += [f"I18N_DIR ({i18n_dir}): {problem}"
                     for problem in unreadable_catalogs(Path(i18n_dir))]

    for name, (minimum, maximum) in (AREA_INTS | PROCESS_INTS).items():
        num(name, 0, minimum=minimum, maximum=maximum)
    data_dir = Path(env.get("DATA_DIR") or ROOT / "var")
    # Settings of other parts, read when first needed: checked now, with the rest.
    from core.adapters import storage
    from core.domain import dispatch

    try:
        dispatch.from_env(env)
    except dispatch.DispatchConfigError as err:
        problems.append(str(err))
    try:
        storage.load_config(env, data_dir=data_dir)
    except storage.StorageConfigError as err:
        problems.extend(str(err).split("; "))

    raw_level = env.get("LOG_LEVEL", "")
    log_level = raw_level.strip().upper() or "INFO"
    # Python's logging takes these old names too, and settings written for it use them.
    log_level = {"WARN": "WARNING", "FATAL": "CRITICAL"}.get(log_level, log_level)
    if log_level not in LOG_LEVELS:  # logging would refuse it only when configured
        problems.append(f"LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, got {raw_level!r}")
        log_level = "INFO"

    settings = Settings(
        app_env=app_env,
        database_url=sqlalchemy_url(database_url),
        redis_url=redis_url,
        migrate_database_url=sqlalchemy_url(migrate_url) if migrate_url else None,
        port=port,
        public_base_url=public_base_url,
        secret_key=secret_key,
        otp_key=otp_key.encode(),
        twilio_account_sid=twilio_sid,
        twilio_auth_token=twilio_token,
        twilio_api_base=twilio_api_base,
        twilio_whatsapp_from=whatsapp_from,
        twilio_sms_from=sms_from,
        twilio_voice_number=voice_number,
        razorpay_key_id=rzp_id,
        razorpay_key_secret=rzp_secret,
        razorpay_webhook_secret=rzp_hook,
        razorpay_api_base=razorpay_api_base,
        ops_phone=ops_phone,
        osrm_url=osrm_url,
        data_dir=data_dir,
        detour_factor_bp=num("DETOUR_FACTOR_BP", 13500, minimum=10000),
        inbound_rate_limit=num("INBOUND_RATE_LIMIT", 30, minimum=1),
        inbound_rate_window_s=num("INBOUND_RATE_WINDOW_S", 60, minimum=1),
        max_webhook_bytes=num("MAX_WEBHOOK_BYTES", 64 * 1024, minimum=1024),
        outbox_max_retries=num("OUTBOX_MAX_RETRIES", len(intervals), minimum=1),
        outbox_retry_intervals=intervals,
        status_window_ms=num("STATUS_WINDOW_MS", 1000, minimum=0),
        # A blocking pop must return before the Redis client's 5 s socket timeout.
        drain_linger_ms=num("DRAIN_LINGER_MS", 500, minimum=0, maximum=4000),
        log_level=log_level,
        twilio_webhook_shared_key=env.get("TWILIO_WEBHOOK_SHARED_KEY") or None,
        twilio_auth_token_secondary_keys=twilio_secondary,
        twilio_auth_token_secondary_until=twilio_secondary_until,
        proxy_hops=num("PROXY_HOPS", 0, minimum=0, maximum=5),
        otp_failures_per_day=num("OTP_FAILURES_PER_DAY", 10, minimum=1,
                                 maximum=OTP_FAILURES_MAX),
        ops_hours=ops_hours,
        razorpay_webhook_previous_keys=rzp_hook_previous,
        razorpay_webhook_previous_until=rzp_hook_previous_until,
        metrics_token=metrics_token,
        metrics_public=metrics_public,
        signin_codes_per_hour=num("SIGNIN_CODES_PER_HOUR", 600, minimum=1),
        rq_fork_per_job=rq_fork_per_job,
        sandbox_public=sandbox_public,
    )
    if problems:
        raise ConfigError("\n".join(problems))  # a line each
    return settings


# What each process may open beyond its pool (core.adapters.db makes its engines so).
_POOL_OVERFLOW = 5


def connections_wanted(env: dict[str, str]) -> int:
    """The most PostgreSQL connections the service's processes may hold at once: the web's
    (WEB_CONCURRENCY, 2 by default) and the workers' (WORKER_PROCESSES, 2 by default)
    processes, each with its pool (core.adapters.db.pool_size: one a WEB_THREADS thread,
    two a DRAIN_THREADS one) and its overflow."""
    from core.adapters.db import POOL_MAX, POOL_MIN

    def count(name: str, default: int) -> int:
        raw = env.get(name, "").strip()
        return int(raw) if raw.isascii() and raw.isdigit() else default

    pool = min(max(POOL_MIN, count("WEB_THREADS", 4) + 1,
                   count("DRAIN_THREADS", 0) * 2 + 1), POOL_MAX)
    processes = count("WEB_CONCURRENCY", 2) + count("WORKER_PROCESSES", 2)
    return processes * (pool + _POOL_OVERFLOW)


def connection_budget_warning(database_url: str, env: dict[str, str]) -> str | None:
    """A warning when the processes' pools may want more connections than PostgreSQL
    takes (`SHOW max_connections`, less the superusers' reserve): at a busy hour the last
    ones would be refused ("too many clients"), requests and jobs failing with them.
    Warned, not refused: pools rarely fill, and a web refusing to start over a worst case
    would be an outage of its own. None when they fit, or the database does not answer
    (/readyz says that)."""
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    try:
        engine = create_engine(database_url, poolclass=NullPool,
                               connect_args={"connect_timeout": 3})
        try:
            with engine.connect() as conn:
                limit = int(conn.exec_driver_sql("SHOW max_connections").scalar_one())
                reserved = int(conn.exec_driver_sql(
                    "SHOW superuser_reserved_connections").scalar_one())
        finally:
            engine.dispose()  # nothing of it may be inherited by the forked workers
    except Exception:
        return None
    wanted, room = connections_wanted(env), limit - reserved
    if wanted <= room:
        return None
    return (f"the processes' database pools may open {wanted} PostgreSQL connections "
            f"(WEB_CONCURRENCY and WORKER_PROCESSES processes, each a pool of WEB_THREADS "
            f"+ 1 and {_POOL_OVERFLOW} more), more than the server's max_connections "
            f"({limit}, {reserved} kept for superusers) allows: at a busy hour some would be "
            "refused; lower WEB_CONCURRENCY, WEB_THREADS or WORKER_PROCESSES, or raise "
            "max_connections")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read once)."""
    return load_settings()


def reset_settings() -> None:
    """Forget cached settings (tests change the environment)."""
    get_settings.cache_clear()


__all__ = ["ConfigError", "Settings", "get_settings", "load_settings", "reset_settings"]

"""Phone sign-in for the apps: a 6-digit OTP by SMS, then a signed, expiring bearer token.

OTPs are kept hashed in Redis with a short life and an attempt budget; sends and
attempts are rate limited per phone and per IP (sliding windows; an IPv6 client by its
/64, and its /56 and /48 too), all codes sent are capped per hour (SIGNIN_CODES_PER_HOUR,
against SMS pumping; a quarter kept for numbers we know), and a phone's wrong codes are
counted over a day across all its codes (a fresh code must not buy a fresh set of
guesses); a few of them are kept for the clients that signed the phone in before, so a
stranger who asks for codes and guesses wrong cannot lock its owner out (known_reserve).
A customer's or a partner's session lives SESSION_TTL (30 days); an operator's, whose
token sees customers' data and refunds, ends after OPS_SESSION_IDLE_HOURS unused and
OPS_SESSION_DAYS after its sign-in, whatever its use (ops_session_ended).
One ask of a phone runs at a time (the code stored and its SMS queued in one
turn). A verify retried with its Idempotency-Key, from its client, within RETRY_WINDOW
(its answer lost) gets the same token. Redis keys name a phone, and an address, by a keyed
hash, never the number nor the address. A token names a session row, so signing out (or
an operator) revokes it at once.
Neither OTPs nor tokens are ever logged.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import ipaddress
import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt
from redis.exceptions import RedisError
from sqlalchemy import exists, func, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from core import clock, i18n
from core.adapters.api_models import ApiSession
from core.adapters.db import transaction
from core.adapters.models import Booking, Person
from core.adapters.redis_conn import hit_sliding_limits, redis_client, run_script
from core.config import get_settings, int_setting
from core.dialog.words import ascii_digits
from core.domain.errors import DomainError, ValidationError
from core.domain.otp import generate_otp
from core.domain.phone import is_indian_mobile, mask_phone, normalize_phone
from core.services import notify, outbox

log = logging.getLogger(__name__)

OTP_TTL = timedelta(minutes=5)
OTP_MAX_ATTEMPTS = 5  # wrong tries per code; the day's budget is OTP_FAILURES_PER_DAY
OTP_FAILURE_WINDOW = timedelta(days=1)
SESSION_TTL = timedelta(days=30)  # a customer's or a partner's session
# An operator's (role "ops": customers' data, refunds, legs unlocked) ends sooner: after
# OPS_SESSION_IDLE_HOURS without use, and OPS_SESSION_DAYS after its sign-in at most (a
# token left on a shared or lost phone). Its last use is written at most every
# OPS_TOUCH_EVERY (not a write per request): the idle time may count from up to that much
# before the last use, never from after it.
OPS_ROLE = "ops"
OPS_SESSION_IDLE_HOURS = 12
OPS_SESSION_DAYS = 7
OPS_TOUCH_EVERY = timedelta(minutes=5)
SENDS_PER_PHONE = (3, 600)  # 3 codes per 10 minutes
# ... and 10 a day: more help nobody (10 wrong codes a day is the default budget), and
# without it a stranger's phone could be sent 432 codes a day from a few addresses.
SENDS_PER_PHONE_DAY = (10, 86400)
SENDS_PER_IP = (20, 3600)  # per client: an IPv4 address, an IPv6 /64
# A home line is delegated an IPv6 /56 (256 /64s), some a /48 (a tunnel broker gives one
# to anyone): counted by its /64s alone, one home could ask for thousands of codes an
# hour. Its wider prefixes are counted too, with room for a few clients each (a carrier
# gives its phones /64s of one pool: neighbours there are other people).
SENDS_PER_IPV6_56 = (40, 3600)
SENDS_PER_IPV6_48 = (100, 3600)
VERIFY_PER_IP = (60, 3600)
# ... and its verifies, as its asks: a home's 256 /64s (a site's 65,536) would otherwise
# each have an hour's 60 guesses.
VERIFY_PER_IPV6_56 = (120, 3600)
VERIFY_PER_IPV6_48 = (300, 3600)
# A stranger who asks a phone's codes and guesses wrong spends the day's wrong codes, and
# the phone's codes (10 a day): its owner could not sign in for a day. A client (client_of)
# that signed the phone in within KNOWN_CLIENT_TTL is known: a few of the day's wrong
# codes are kept for the known clients (known_reserve), which strangers cannot spend, and
# their asks for a code have windows of their own. The day's wrong codes stay
# OTP_FAILURES_PER_DAY in all, whoever sends them (strangers get the rest while the phone
# has a known client, all of them while it has none).
KNOWN_CLIENT_TTL = SESSION_TTL
SENDS_PER_KNOWN = (3, 600)
SENDS_PER_KNOWN_DAY = (5, 86400)


def ops_session_idle() -> timedelta:
    """How long an operator's session may go unused (OPS_SESSION_IDLE_HOURS)."""
    return timedelta(hours=int_setting("OPS_SESSION_IDLE_HOURS", OPS_SESSION_IDLE_HOURS))


def ops_session_max() -> timedelta:
    """How long an operator's session lives at most from its sign-in, however used
    (OPS_SESSION_DAYS; never longer than SESSION_TTL)."""
    return min(SESSION_TTL, timedelta(days=int_setting("OPS_SESSION_DAYS", OPS_SESSION_DAYS)))


def session_ttl(role: str) -> timedelta:
    """How long a session of ``role`` lives from its sign-in at most."""
    return ops_session_max() if role == OPS_ROLE else SESSION_TTL


def ops_session_ended(s: ApiSession, now: datetime) -> bool:
    """An operator's session is over: unused for ops_session_idle (its last use written,
    else its sign-in: one made before migration 0054), or ops_session_max after its
    sign-in (also one made when OPS_SESSION_DAYS was longer, or for 30 days before)."""
    last = s.last_used_at or s.created_at
    return now >= last + ops_session_idle() or now >= s.created_at + ops_session_max()


def known_reserve(budget: int) -> int:
    """Of a day's ``budget`` wrong codes, how many only known clients may send: 3 of the
    default 10, none of a budget under 3 (nothing to keep back)."""
    return min(3, budget // 3)


class AuthError(DomainError):
    """Sign-in refused; ``status`` is the HTTP answer (401, 429); ``retry_after``: seconds
    until the limit that refused it lets the client try again, if we know (Retry-After)."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None, *,
                 retry_after: int | None = None):
        super().__init__(message, code=code, field=field)
        self.status = status
        self.retry_after = retry_after


@dataclass(frozen=True)
class Principal:
    person_id: int
    role: str
    session_id: str


def _phone_tag(phone: str) -> str:
    """What the Redis keys of a phone are named by: a keyed hash (HMAC-SHA256 with
    OTP_KEY) of the number, not the number, which an erasure must not leave behind (the
    keys live up to a day, and keep counting: a lockout is not undone). Without the key
    nobody can try the Indian mobile numbers against it."""
    key = get_settings().otp_key
    return hmac.new(key, f"auth-keys:{phone}".encode(), hashlib.sha256).hexdigest()[:32]


def _otp_key(phone: str) -> str:
    return f"auth:otp:{_phone_tag(phone)}"


def _failures_key(phone: str) -> str:
    return f"auth:otp-failures:{_phone_tag(phone)}"


def _reserve_key(phone: str) -> str:
    """The day's wrong codes sent by known clients once strangers could send no more."""
    return f"auth:otp-failures-known:{_phone_tag(phone)}"


def _known_key(phone: str, ip: str) -> str:
    """Present while the client of ``ip`` is known to the phone: it signed the phone in
    within KNOWN_CLIENT_TTL. Named by a keyed hash of both (no number, no address)."""
    key = get_settings().otp_key
    client = hmac.new(key, f"known:{phone}:{client_of(ip)}".encode(),
                      hashlib.sha256).hexdigest()[:32]
    return f"auth:known-client:{_phone_tag(phone)}:{client}"


def _has_known_key(phone: str) -> str:
    """Present while the phone has a known client (strangers then get fewer wrong codes)."""
    return f"auth:known-clients:{_phone_tag(phone)}"


def _used_key(phone: str) -> str:
    """The phone's code used last, for RETRY_WINDOW: a verify sent again after its answer
    was lost gets the session the code made (verify_otp)."""
    return f"auth:otp-used:{_phone_tag(phone)}"


# The PostgreSQL advisory lock (with the phone's tag) an ask for a code holds from storing
# the code to queueing its SMS: "RCsi" in ASCII (pg_locks: locktype advisory, classid
# 1380152169).
SIGN_IN_LOCK_KEY = int.from_bytes(b"RCsi", "big")


def _lock_of(tag: str) -> int:
    return int.from_bytes(bytes.fromhex(tag[:8]), "big", signed=True)


# Which count of the day's wrong codes a try is counted in: the phone's (gk), or that of
# those kept for its known clients (rk); nil if none is left to this client. ``budget``: all of
# the day's (both counts together never pass it); ``open``: how many of the phone's count
# strangers may send; ``known``: '1' for a known client.
_POOL = """
local function pool(gk, rk, budget, open, known)
  local g = tonumber(redis.call('GET', gk) or '0')
  local r = tonumber(redis.call('GET', rk) or '0')
  if g + r >= budget then return nil end
  if g < open then return gk end
  if known == '1' then return rk end
  return nil
end
local function count(key, window)
  redis.call('SET', key, 0, 'EX', window, 'NX')
  redis.call('INCR', key)
end
"""

# One step, so that nothing can change between the check and the count: a code that
# expired or was used meanwhile is simply missing (never re-created without its TTL by
# HINCRBY), and concurrent guesses cannot overrun either budget. Every try is counted as
# a failure of the day until the code is found right (_USE_CODE gives it back).
# KEYS: the code's hash {hash, attempts}, the phone's failure count, the known clients'.
# ARGV: tries per code, then _POOL's budget, open and known, the day in seconds.
# Returns {"spent"} | {"missing"} | {"locked"} | {"check", stored hash, count key}.
_CHECK_AND_COUNT = _POOL + """
local counted = pool(KEYS[2], KEYS[3], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4])
if not counted then return {'spent'} end
local stored = redis.call('HGET', KEYS[1], 'hash')
if not stored then
  redis.call('DEL', KEYS[1])
  return {'missing'}
end
if redis.call('HINCRBY', KEYS[1], 'attempts', 1) > tonumber(ARGV[1]) then
  redis.call('DEL', KEYS[1])
  return {'locked'}
end
count(counted, ARGV[5])
return {'check', stored, counted}
"""

# The code was right: use it up ({time left, tries}), unless a concurrent verify did first
# or a new code replaced it meanwhile ({0, 0}), and take back the failure counted for this
# try. With no failure left the day's window closes too, so that it runs from the next
# failure, not from this sign-in. The used code is kept for RETRY_WINDOW (its hash and the
# retry's tag: verify_otp), the session to be added once saved.
# KEYS: the code, the failure count the try was counted in, the used code. ARGV: the hash
# checked, the retry's tag ("" if none), RETRY_WINDOW in ms.
_USE_CODE = """
if redis.call('HGET', KEYS[1], 'hash') ~= ARGV[1] then return {0, 0} end
local ttl = redis.call('PTTL', KEYS[1])
local attempts = redis.call('HGET', KEYS[1], 'attempts') or '0'
redis.call('DEL', KEYS[1])
if redis.call('EXISTS', KEYS[2]) == 1 and redis.call('DECR', KEYS[2]) <= 0 then
  redis.call('DEL', KEYS[2])
end
redis.call('DEL', KEYS[3])
redis.call('HSET', KEYS[3], 'hash', ARGV[1], 'retry', ARGV[2])
redis.call('PEXPIRE', KEYS[3], ARGV[3])
return {math.max(ttl, 1), tonumber(attempts)}
"""

# The used code's session was saved: a retry of its verify gets it. KEYS: the used code.
# ARGV: its hash, the session's id, its token's iat and exp.
_KEEP_SESSION = """
if redis.call('HGET', KEYS[1], 'hash') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'sid', ARGV[2], 'iat', ARGV[3], 'exp', ARGV[4])
return 1
"""

# A code that is not (or no longer) waiting, checked against the phone's code used last.
# A wrong one counts as any wrong code of the day (else guesses within RETRY_WINDOW would
# be free). KEYS: the used code, the phone's failure count, the known clients'. ARGV: the
# hash of the code sent, the retry's tag ("" if none), _POOL's budget, open and known,
# the day in seconds, the count this try was counted in already ("" if none: found
# right, then used by a concurrent verify, it is given back).
# Returns {"missing"} | {"spent"} | {"wrong"} | {"used"} | {"retry", sid, iat, exp}.
_CHECK_USED = _POOL + """
local stored = redis.call('HGET', KEYS[1], 'hash')
if not stored then return {'missing'} end
if stored ~= ARGV[1] then
  if ARGV[7] ~= '' then return {'missing'} end
  local counted = pool(KEYS[2], KEYS[3], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5])
  if not counted then return {'spent'} end
  count(counted, ARGV[6])
  return {'wrong'}
end
if ARGV[7] ~= '' then
  local given = ARGV[7] == KEYS[3] and KEYS[3] or KEYS[2]
  if redis.call('EXISTS', given) == 1 and redis.call('DECR', given) <= 0 then
    redis.call('DEL', given)
  end
end
local sid = redis.call('HGET', KEYS[1], 'sid')
if ARGV[2] == '' or redis.call('HGET', KEYS[1], 'retry') ~= ARGV[2] or not sid then
  return {'used'}
end
return {'retry', sid, redis.call('HGET', KEYS[1], 'iat'), redis.call('HGET', KEYS[1], 'exp')}
"""

# The code was used up but its session could not be saved (the database failed): give it
# back for the retry the 503 asks for, with its tries and its time left, unless a new code
# was asked for meanwhile; it was not used (KEYS[2], the used code, if it is this one).
_GIVE_BACK_CODE = """
if redis.call('HGET', KEYS[2], 'hash') == ARGV[1] then redis.call('DEL', KEYS[2]) end
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'hash', ARGV[1], 'attempts', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""

# An ask for a code failed after its code was stored (the database failed): the code it
# replaced comes back (its SMS, still waiting, was not withdrawn), unless another ask
# stored its own meanwhile. KEYS: the code. ARGV: the new code's hash, the old one's (""
# if none), its tries, its time left in ms.
_PUT_BACK_CODE = """
if redis.call('HGET', KEYS[1], 'hash') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
if ARGV[2] ~= '' and tonumber(ARGV[4]) > 0 then
  redis.call('HSET', KEYS[1], 'hash', ARGV[2], 'attempts', ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
return 1
"""

_INVALID = ("otp_invalid", "the code is wrong or has expired")
_USED = ("otp_used", "this code was used already; ask for a new one if you are not "
         "signed in")
_SPENT = ("rate_limited", "too many wrong codes for this phone; please try again tomorrow")


@dataclass(frozen=True)
class _Pools:
    """The day's wrong codes as one client may send them (_POOL): the counts' keys, and
    the script's budget, open and known."""

    keys: list[str]
    budget: int
    open: int
    known: bool

    @property
    def args(self) -> list[int | str]:
        return [self.budget, self.open, "1" if self.known else "0"]


def _pools(phone: str, ip: str) -> _Pools:
    """The day's wrong codes of ``phone`` as the client of ``ip`` may send them: a
    stranger, those of the phone's count strangers may send (all of the day's budget if
    the phone has no known client, else all but known_reserve); a known client, any left."""
    budget = get_settings().otp_failures_per_day
    pipe = redis_client().pipeline(transaction=False)
    pipe.exists(_known_key(phone, ip))
    pipe.exists(_has_known_key(phone))
    known, any_known = pipe.execute()
    open_ = budget - known_reserve(budget) if any_known else budget
    return _Pools([_failures_key(phone), _reserve_key(phone)], budget, open_, bool(known))


def _failures_spent(phone: str, pools: _Pools) -> int | None:
    """If this client may send no wrong code of the phone's today: the seconds until it
    may (or 1 if unknown); else None."""
    raw = redis_client().mget(pools.keys)
    phones, kept = (int(v) if v is not None else 0 for v in raw)
    if phones + kept < pools.budget and (phones < pools.open or pools.known):
        return None
    # Once the phone's count is a day old, every client may send wrong codes again (the
    # known clients' count is at most known_reserve then, under what strangers may send).
    return _seconds_left(pools.keys[0]) or _seconds_left(pools.keys[1]) or 1


def _seconds_left(key: str) -> int | None:
    """Seconds until a Redis key (the day's wrong codes) expires; None if it has none."""
    ms = redis_client().pttl(key)
    return max(1, -(-ms // 1000)) if ms > 0 else None


def client_of(ip: str) -> str:
    """Whom the per-IP limits count: an IPv4 address, or an IPv6 client's /64 (a home or
    a phone is given a whole /64, and picks any address in it: counted one by one, the
    limit would never bite). An IPv4-mapped IPv6 address is its IPv4 address. A source
    port, as some proxies forward it ("203.0.113.7:40001", "[2001:db8::7]:443"), is not
    part of it: each connection has its own."""
    host = ip.strip()
    if host.startswith("[") and "]" in host:
        host = host[1:host.index("]")]
    elif host.count(":") == 1:  # IPv4 and a port (an IPv6 address has two colons or more)
        host = host.partition(":")[0]
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return ip[:64]  # "unknown", or whatever the proxy forwarded: counted as it is
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(addr) >> 64 << 64, 64)))
    return str(addr)


def _ip_tag(network: str) -> str:
    """What the rate limits' Redis keys name an address by (client_of's, or an IPv6
    /56 or /48): a keyed hash (OTP_KEY), not the address, which is personal data and
    the keys keep for an hour."""
    key = get_settings().otp_key
    return hmac.new(key, f"auth-ip:{network}".encode(), hashlib.sha256).hexdigest()[:32]


def _ip_limits(kind: str, ip: str, per_client: tuple[int, int],
               per_56: tuple[int, int], per_48: tuple[int, int],
               ) -> list[tuple[str, tuple[int, int]]]:
    """The per-address rules ("otp-<kind>-ip:<tag>", _ip_tag) a try counts in: its
    client's (client_of), and for an IPv6 client also its /56 and /48 (one home's or one
    site's prefix)."""
    client = client_of(ip)
    rules = [(f"otp-{kind}-ip:{_ip_tag(client)}", per_client)]
    if client.endswith("/64"):
        first = int(ipaddress.IPv6Network(client).network_address)
        for bits, limit in ((56, per_56), (48, per_48)):
            wide = ipaddress.IPv6Network((first >> (128 - bits) << (128 - bits), bits))
            rules.append((f"otp-{kind}-ip:{_ip_tag(str(wide))}", limit))
    return rules


def _send_limits(ip: str) -> list[tuple[str, tuple[int, int]]]:
    """The per-address rules a code's ask counts in (_ip_limits)."""
    return _ip_limits("send", ip, SENDS_PER_IP, SENDS_PER_IPV6_56, SENDS_PER_IPV6_48)


def _verify_limits(ip: str) -> list[tuple[str, tuple[int, int]]]:
    """The per-address rules a code's check counts in (_ip_limits)."""
    return _ip_limits("verify", ip, VERIFY_PER_IP, VERIFY_PER_IPV6_56, VERIFY_PER_IPV6_48)


def _hash(phone: str, otp: str) -> str:
    key = get_settings().otp_key
    return hmac.new(key, f"login:{phone}:{otp}".encode(), hashlib.sha256).hexdigest()


def _limit(*rules: tuple[str, tuple[int, int]]) -> None:
    """Count one try against each (key, (limit, seconds)) rule, or refuse it (429) if any
    of them had ``limit`` tries within the last ``seconds``, counted in none. Sliding
    windows: a fixed one would let twice the limit through around its end."""
    wait = hit_sliding_limits([(key, n, s) for key, (n, s) in rules])
    if wait:
        raise AuthError(429, "rate_limited", "too many attempts; please wait and try again",
                        retry_after=wait)


# Every sign-in code sent, whoever asked: a window of an hour against SIGNIN_CODES_PER_HOUR.
SENDS_ALL_KEY = "otp-send-all"
SENDS_ALL_WINDOW_S = 3600
# ... of which codes to numbers we do not know (_known) may take all but a quarter: a
# flood of made-up numbers (SMS pumping, from many addresses) cannot lock out the
# customers, partners and operators we know. Their own window, of the same hour.
SENDS_UNKNOWN_KEY = "otp-send-unknown"


def _unknown_share(cap: int) -> int:
    """Of the hour's ``cap`` codes, how many may go to numbers we do not know."""
    return cap - cap // 4
# While the cap refuses codes, the operators are told once an hour (not once a refusal).
_CAP_WARNED_KEY = "auth:signin-cap-warned"


def _cap_reached(limit: int, known: bool) -> bool:
    """Whether the hour's window of all codes sent is full, or for a number we do not
    know, that of the codes to such numbers (what refused an ask, when the address's and
    the phone's windows had room)."""
    now_ms = int(clock.now().timestamp() * 1000)
    windows = [(SENDS_ALL_KEY, limit)]
    if not known:
        windows.append((SENDS_UNKNOWN_KEY, _unknown_share(limit)))
    return any(redis_client().zcount(f"ratelimit:{key}",
                                      now_ms - SENDS_ALL_WINDOW_S * 1000 + 1, "+inf") >= n
               for key, n in windows)


def _refuse_over_cap(limit: int, wait: int) -> None:
    """The hour's sign-in codes are all sent: refuse (429), and warn once an hour, with
    no phone number (many numbers at once: SMS pumping, or a flood of real sign-ins)."""
    if redis_client().set(_CAP_WARNED_KEY, 1, nx=True, ex=SENDS_ALL_WINDOW_S):
        log.warning("sign-in codes refused: SIGNIN_CODES_PER_HOUR reached (SMS pumping?)",
                    extra={"signin_codes_per_hour": limit})
    raise AuthError(429, "rate_limited", "too many sign-in codes are being sent just now; "
                    "please try again later", retry_after=wait)


def _standing(phone: str) -> tuple[bool, bool]:
    """(staff, known) for a number: staff, an operator's or a partner's; known, staff or
    a customer who has booked (what SMS pumping's made-up numbers are not)."""
    with transaction() as session:
        row = session.execute(
            select(Person.role, exists().where(Booking.customer_id == Person.id))
            .where(Person.phone == phone)).first()
    if row is None:
        return False, False
    staff = row[0] in ("ops", "partner")
    return staff, staff or bool(row[1])


def request_otp(raw_phone: str, ip: str) -> str:
    """Send a sign-in code to a phone by SMS; return the E.164 phone."""
    phone = normalize_phone(raw_phone)
    by_ip = _send_limits(ip)
    staff, known = _standing(phone)
    if not is_indian_mobile(phone) and not staff:
        # Codes go by SMS to Indian mobiles (a foreign or premium number is the classic
        # SMS-pumping target); operators and partners we set up may have others. The
        # refusal counts against the address too, or its answer (422 for anyone, a code
        # for staff) would tell who is staff, as often as asked.
        _limit(*by_ip)
        raise AuthError(422, "bad_phone", "sign-in codes go only to Indian mobile numbers",
                        "phone")
    pools = _pools(phone, ip)
    wait = _failures_spent(phone, pools)
    if wait is not None:  # a code it could not use would only cost an SMS
        raise AuthError(429, *_SPENT, retry_after=wait)
    tag = _phone_tag(phone)
    cap = get_settings().signin_codes_per_hour
    # The address's, the phone's and the hour's (all codes) windows in one script, all or
    # none: an ask one of them refuses uses up none of the others (a "resend" the phone's
    # limit refuses does not take from everyone behind the same carrier NAT, nor from the
    # hour's codes), and concurrent asks cannot get past any of them. A known client's
    # asks have the phone's windows of their own: a stranger's cannot spend them.
    by_phone = ([(f"otp-send-known:{tag}", SENDS_PER_KNOWN),
                 (f"otp-send-known-day:{tag}", SENDS_PER_KNOWN_DAY)] if pools.known else
                [(f"otp-send-phone:{tag}", SENDS_PER_PHONE),
                 (f"otp-send-phone-day:{tag}", SENDS_PER_PHONE_DAY)])
    rules = [*by_ip, *by_phone, (SENDS_ALL_KEY, (cap, SENDS_ALL_WINDOW_S))]
    if not known:
        rules.append((SENDS_UNKNOWN_KEY, (_unknown_share(cap), SENDS_ALL_WINDOW_S)))
    try:
        _limit(*rules)
    except AuthError as err:
        if _cap_reached(cap, known):
            _refuse_over_cap(cap, err.retry_after or 1)
        raise
    otp = generate_otp(6)
    new_hash = _hash(phone, otp)
    r = redis_client()
    old: dict[bytes, bytes] = {}
    old_ttl_ms, stored = 0, False
    try:
        with transaction() as session:
            # One ask of a phone at a time, from storing its code to queueing its SMS (a
            # double tap, an app's retry): two at once stored their codes and queued
            # their SMS in opposite orders, the SMS left to go carrying the code Redis no
            # longer held. The later ask waits here, then replaces the earlier's code
            # and withdraws its SMS, if still waiting.
            session.execute(select(func.pg_advisory_xact_lock(SIGN_IN_LOCK_KEY,
                                                              _lock_of(tag))))
            pipe = r.pipeline()
            pipe.hgetall(_otp_key(phone))
            pipe.pttl(_otp_key(phone))
            pipe.delete(_otp_key(phone), _used_key(phone))
            pipe.hset(_otp_key(phone), mapping={"hash": new_hash, "attempts": 0})
            pipe.expire(_otp_key(phone), int(OTP_TTL.total_seconds()))
            old, old_ttl_ms, *_ = pipe.execute()
            stored = True
            # The codes it replaced no longer work: their SMS, if still waiting (for a
            # retry after Twilio refused a try), are not sent.
            outbox.withdraw_sign_in_codes(session, phone)
            notify.notify_phone(session, phone, "auth.otp", dedupe_key=outbox.sign_in_key(),
                                otp=otp)
    except Exception:
        # Nothing was queued nor withdrawn: the code before (whose SMS may still go)
        # works again, not the new one, which no SMS carries.
        # (A commit whose answer was lost may have queued it after all: rare, and the
        # answer the client got, an error, asks it to ask again.)
        if stored:
            with contextlib.suppress(RedisError):
                run_script(r, _PUT_BACK_CODE, [_otp_key(phone)], [
                    new_hash, old.get(b"hash", b""), old.get(b"attempts", b"0"),
                    old_ttl_ms if old.get(b"hash") else 0])
        raise
    return phone


# How long a used code answers a retry of its verify (the answer lost on a slow line).
RETRY_WINDOW = timedelta(minutes=2)


def _retry_tag(phone: str, ip: str, retry_key: str | None) -> str:
    """What a retry of a verify must send again to get its session: the client's
    Idempotency-Key, from the same client (client_of). Without a key, "": no retry gets
    a session (the code alone, which anyone who saw the SMS has, is not enough)."""
    if not retry_key:
        return ""
    key = get_settings().otp_key
    return hmac.new(key, f"retry:{phone}:{client_of(ip)}:{retry_key}".encode(),
                    hashlib.sha256).hexdigest()


def _token(person_id: int, sid: str, iat: int, exp: int) -> str:
    return jwt.encode({"sub": str(person_id), "sid": sid, "iat": iat, "exp": exp},
                      get_settings().secret_key, algorithm="HS256")


def _retried(phone: str, code_hash: str, retry: str, pools: _Pools,
             counted: str = "") -> tuple[str, Principal, datetime]:
    """A code not waiting (expired, replaced, used): if it is the one the phone used
    last, within RETRY_WINDOW, and this is a retry of that verify (its tag), the session
    it made, in the same token; else 401 (otp_used for that code). ``counted``: the
    count this try was counted in already, if any."""
    verdict, *facts = run_script(redis_client(), _CHECK_USED,
                                 [_used_key(phone), *pools.keys],
                                 [code_hash, retry, *pools.args,
                                  int(OTP_FAILURE_WINDOW.total_seconds()), counted])
    if verdict == b"spent":
        raise AuthError(429, *_SPENT, "otp", retry_after=_failures_spent(phone, pools) or 1)
    if verdict == b"used":
        raise AuthError(401, *_USED, "otp")
    if verdict != b"retry":
        raise AuthError(401, *_INVALID, "otp")
    sid, iat, exp = facts[0].decode(), int(facts[1]), int(facts[2])
    with transaction() as session:
        s = session.get(ApiSession, sid)
        if s is None or s.revoked_at is not None or s.expires_at <= clock.now():
            raise AuthError(401, *_USED, "otp")  # signed out (or erased) since
        person = session.get(Person, s.person_id)
        if person is None:
            raise AuthError(401, *_USED, "otp")
        principal = Principal(person.id, person.role, sid)
        expires = s.expires_at
    log.info("sign-in answered again: a retry of its verify",
             extra={"phone": mask_phone(phone)})
    return _token(principal.person_id, sid, iat, exp), principal, expires


def verify_otp(raw_phone: str, otp: str, ip: str,
               retry_key: str | None = None) -> tuple[str, Principal, datetime]:
    """Check a sign-in code; return (token, principal, expiry). One code, one session:
    a verify sent again with the same Idempotency-Key (``retry_key``) from the same
    client within RETRY_WINDOW (its answer lost) gets the same token."""
    phone = normalize_phone(raw_phone)
    _limit(*_verify_limits(ip))
    r = redis_client()
    pools = _pools(phone, ip)
    verdict, *stored = run_script(r, _CHECK_AND_COUNT, [_otp_key(phone), *pools.keys], [
        OTP_MAX_ATTEMPTS, *pools.args, int(OTP_FAILURE_WINDOW.total_seconds())])
    if verdict == b"spent":
        log.warning("sign-in refused: the phone's wrong codes for the day are spent",
                    extra={"phone": mask_phone(phone), "known_client": pools.known})
        raise AuthError(429, *_SPENT, "otp", retry_after=_failures_spent(phone, pools) or 1)
    # The code as typed, in any script's digits ("४८२९१३", as SMS keyboards send them).
    given = _hash(phone, ascii_digits(otp.strip()))
    retry = _retry_tag(phone, ip, retry_key)
    if verdict == b"missing":
        return _retried(phone, given, retry, pools)
    if verdict == b"locked":
        raise AuthError(429, "otp_locked", "too many wrong codes; ask for a new one", "otp")
    if not hmac.compare_digest(stored[0], given.encode()):
        raise AuthError(401, *_INVALID, "otp")
    used_key, counted = _used_key(phone), stored[1].decode()
    ttl_ms, attempts = run_script(r, _USE_CODE, [_otp_key(phone), counted, used_key], [
        stored[0], retry, int(RETRY_WINDOW.total_seconds() * 1000)])
    if not ttl_ms:  # a concurrent verify used this code first (or a new one replaced it)
        return _retried(phone, given, retry, pools, counted=counted)
    now = clock.now()
    try:
        with transaction() as session:
            # Locked, as an erasure locks it: one running now either ends first (the
            # number then makes a new person) or after, and then ends this sign-in too.
            person = session.scalar(select(Person).where(Person.phone == phone)
                                    .with_for_update())
            if person is None:
                person = Person(phone=phone, role="customer")
                session.add(person)
                session.flush()
            sid = secrets.token_hex(16)
            ops = person.role == OPS_ROLE
            expires = now + session_ttl(person.role)
            # Its sign-in on the service clock (an operator's ends counted from it), and,
            # an operator's, its first use.
            session.add(ApiSession(id=sid, person_id=person.id, created_at=now,
                                   expires_at=expires, last_used_at=now if ops else None))
            principal = Principal(person.id, person.role, sid)
    except Exception:
        run_script(r, _GIVE_BACK_CODE, [_otp_key(phone), used_key],
                   [stored[0], attempts, ttl_ms])
        raise
    _know(phone, ip)
    iat, exp = int(now.timestamp()), int(expires.timestamp())
    if retry:
        try:
            run_script(r, _KEEP_SESSION, [used_key], [stored[0], sid, iat, exp])
        except RedisError:  # signed in all the same: only a retry would be refused
            log.warning("sign-in: could not keep its session for a retry",
                        extra={"phone": mask_phone(phone)})
    return _token(principal.person_id, sid, iat, exp), principal, expires


def _know(phone: str, ip: str) -> None:
    """The client of ``ip`` signed ``phone`` in: it is known to the phone for
    KNOWN_CLIENT_TTL (from its last sign-in)."""
    ttl = int(KNOWN_CLIENT_TTL.total_seconds())
    try:
        pipe = redis_client().pipeline()
        pipe.set(_known_key(phone, ip), 1, ex=ttl)
        pipe.set(_has_known_key(phone), 1, ex=ttl)
        pipe.execute()
    except RedisError:  # signed in all the same: only its reserve is not kept
        log.warning("sign-in: could not keep its client as known",
                    extra={"phone": mask_phone(phone)})


def authenticate(token: str) -> Principal:
    """The principal behind a bearer token; AuthError(401) if invalid, expired or revoked."""
    # Times are the service clock's (core.clock), as when the token was made: PyJWT
    # would check them against this host's wall clock.
    try:
        claims = jwt.decode(token, get_settings().secret_key, algorithms=["HS256"],
                            options={"require": ["exp", "sub", "sid"], "verify_exp": False,
                                     "verify_iat": False, "verify_nbf": False})
    except jwt.PyJWTError:
        raise AuthError(401, "invalid_token", "sign in again") from None
    now = clock.now()
    exp = claims["exp"]
    if not isinstance(exp, int | float) or isinstance(exp, bool) or exp <= now.timestamp():
        raise AuthError(401, "invalid_token", "sign in again")
    with transaction() as session:
        s = session.get(ApiSession, str(claims["sid"]))
        if s is None or s.revoked_at is not None or s.expires_at <= now \
                or str(s.person_id) != str(claims["sub"]):
            raise AuthError(401, "invalid_token", "sign in again")
        person = session.get(Person, s.person_id)
        assert person is not None
        if person.role == OPS_ROLE:
            if ops_session_ended(s, now):
                log.info("an operator's session ended: unused too long, or too old",
                         extra={"person_id": person.id})
                raise AuthError(401, "invalid_token", "sign in again")
            if s.last_used_at is None or now - s.last_used_at >= OPS_TOUCH_EVERY:
                _touch(session, s, now)
        return Principal(person.id, person.role, s.id)


def _touch(session: Session, s: ApiSession, now: datetime) -> None:
    """Write an operator's session's last use (an UPDATE every OPS_TOUCH_EVERY at most). A
    write refused (a database left read-only by a failover) does not refuse the request:
    the session counts as idle from its last use written, as it would anyway."""
    try:
        with session.begin_nested():
            s.last_used_at = now
    except DBAPIError:
        log.warning("an operator's session: could not write its last use",
                    extra={"person_id": s.person_id})


def sign_out(principal: Principal) -> None:
    """Revoke the session behind the token that made this request."""
    with transaction() as session:
        s = session.get(ApiSession, principal.session_id, with_for_update=True)
        if s is not None and s.revoked_at is None:
            s.revoked_at = clock.now()


@dataclass(frozen=True)
class Profile:
    person_id: int
    phone: str | None
    name: str | None
    language: str  # what we write and speak to them in (the default until they choose)
    language_chosen: bool


def _profile(person: Person) -> Profile:
    return Profile(person.id, person.phone, person.name,
                   person.preferred_language or i18n.DEFAULT_LANGUAGE,
                   person.preferred_language is not None)


def profile(principal: Principal) -> Profile:
    """The signed-in person's own profile."""
    with transaction() as session:
        person = session.get(Person, principal.person_id)
        if person is None:  # erased since the token was checked
            raise AuthError(401, "invalid_token", "sign in again")
        return _profile(person)


def set_language(principal: Principal, raw: str) -> Profile:
    """Choose the language every later message to this person is in (SMS, WhatsApp,
    calls), as a chat or a call's language menu does. ValidationError (422) lists ours."""
    lang = raw.strip().lower()
    if lang not in i18n.LANGUAGES:
        raise ValidationError(f"language must be one of: {', '.join(i18n.LANGUAGES)}",
                              code="unsupported_language", field="language")
    with transaction() as session:
        person = session.get(Person, principal.person_id, with_for_update=True)
        if person is None:
            raise AuthError(401, "invalid_token", "sign in again")
        person.preferred_language = lang
        return _profile(person)


def as_utc(dt: datetime) -> datetime:
    return dt.astimezone(UTC)

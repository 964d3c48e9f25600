"""Phone sign-in for the apps: a 6-digit OTP by SMS, then a signed, expiring bearer token.

OTPs are kept hashed in Redis with a short life and an attempt budget; sends and
attempts are rate limited per phone and per IP. A token names a session row, so signing
out (or an operator) revokes it at once. Neither OTPs nor tokens are ever logged.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt
from sqlalchemy import select

from core import clock
from core.adapters.api_models import ApiSession
from core.adapters.db import transaction
from core.adapters.models import Person
from core.adapters.redis_conn import hit_rate_limit, redis_client
from core.config import get_settings
from core.domain.errors import DomainError
from core.domain.otp import generate_otp
from core.domain.phone import normalize_phone
from core.services import notify

OTP_TTL = timedelta(minutes=5)
OTP_MAX_ATTEMPTS = 5
SESSION_TTL = timedelta(days=30)
SENDS_PER_PHONE = (3, 600)  # 3 codes per 10 minutes
SENDS_PER_IP = (20, 3600)
VERIFY_PER_IP = (60, 3600)


class AuthError(DomainError):
    """Sign-in refused; ``status`` is the HTTP answer (401, 429)."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None):
        super().__init__(message, code=code, field=field)
        self.status = status


@dataclass(frozen=True)
class Principal:
    person_id: int
    role: str
    session_id: str


def _otp_key(phone: str) -> str:
    return f"auth:otp:{phone}"


def _hash(phone: str, otp: str) -> str:
    key = get_settings().otp_key
    return hmac.new(key, f"login:{phone}:{otp}".encode(), hashlib.sha256).hexdigest()


def _limit(key: str, rule: tuple[int, int]) -> None:
    over, _ = hit_rate_limit(key, rule[0], rule[1])
    if over:
        raise AuthError(429, "rate_limited", "too many attempts; please wait and try again")


def request_otp(raw_phone: str, ip: str) -> str:
    """Send a sign-in code to a phone by SMS; return the E.164 phone."""
    phone = normalize_phone(raw_phone)
    _limit(f"otp-send-ip:{ip}", SENDS_PER_IP)
    _limit(f"otp-send-phone:{phone}", SENDS_PER_PHONE)
    otp = generate_otp(6)
    r = redis_client()
    pipe = r.pipeline()
    pipe.delete(_otp_key(phone))
    pipe.hset(_otp_key(phone), mapping={"hash": _hash(phone, otp), "attempts": 0})
    pipe.expire(_otp_key(phone), int(OTP_TTL.total_seconds()))
    pipe.execute()
    with transaction() as session:
        notify.notify_phone(session, phone, "auth.otp", otp=otp)
    return phone


def verify_otp(raw_phone: str, otp: str, ip: str) -> tuple[str, Principal, datetime]:
    """Check a sign-in code; return (token, principal, expiry). One code, one session."""
    phone = normalize_phone(raw_phone)
    _limit(f"otp-verify-ip:{ip}", VERIFY_PER_IP)
    r = redis_client()
    key = _otp_key(phone)
    stored = r.hgetall(key)
    if not stored:
        raise AuthError(401, "otp_invalid", "the code is wrong or has expired", "otp")
    attempts = r.hincrby(key, "attempts", 1)
    if attempts > OTP_MAX_ATTEMPTS:
        r.delete(key)
        raise AuthError(429, "otp_locked", "too many wrong codes; ask for a new one", "otp")
    if not hmac.compare_digest(stored[b"hash"].decode(), _hash(phone, otp.strip())):
        raise AuthError(401, "otp_invalid", "the code is wrong or has expired", "otp")
    if r.delete(key) != 1:  # a concurrent verify used this code first
        raise AuthError(401, "otp_invalid", "the code is wrong or has expired", "otp")
    now = clock.now()
    with transaction() as session:
        person = session.scalar(select(Person).where(Person.phone == phone))
        if person is None:
            person = Person(phone=phone, role="customer")
            session.add(person)
            session.flush()
        sid = secrets.token_hex(16)
        expires = now + SESSION_TTL
        session.add(ApiSession(id=sid, person_id=person.id, expires_at=expires))
        principal = Principal(person.id, person.role, sid)
    token = jwt.encode({"sub": str(principal.person_id), "sid": sid, "iat": int(now.timestamp()),
                        "exp": int(expires.timestamp())}, get_settings().secret_key,
                       algorithm="HS256")
    return token, principal, expires


def authenticate(token: str) -> Principal:
    """The principal behind a bearer token; AuthError(401) if invalid, expired or revoked."""
    try:
        claims = jwt.decode(token, get_settings().secret_key, algorithms=["HS256"],
                            options={"require": ["exp", "sub", "sid"]},
                            leeway=0)
    except jwt.PyJWTError:
        raise AuthError(401, "invalid_token", "sign in again") from None
    now = clock.now()
    with transaction() as session:
        s = session.get(ApiSession, str(claims["sid"]))
        if s is None or s.revoked_at is not None or s.expires_at <= now \
                or str(s.person_id) != str(claims["sub"]):
            raise AuthError(401, "invalid_token", "sign in again")
        person = session.get(Person, s.person_id)
        assert person is not None
        return Principal(person.id, person.role, s.id)


def sign_out(principal: Principal) -> None:
    """Revoke the session behind the token that made this request."""
    with transaction() as session:
        s = session.get(ApiSession, principal.session_id, with_for_update=True)
        if s is not None and s.revoked_at is None:
            s.revoked_at = clock.now()


def as_utc(dt: datetime) -> datetime:
    return dt.astimezone(UTC)

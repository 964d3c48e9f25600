"""Sign-in: ask for a code by SMS, exchange it for a bearer token, sign out."""

from __future__ import annotations

from datetime import datetime

from flask import request
from pydantic import BaseModel, Field

from core.api import bp
from core.api.auth_guard import principal
from core.api.idempotency import HEADER, MAX_KEY
from core.api.schemas import PhoneText
from core.api.spec import ApiError, Header, Strict, endpoint
from core.services import auth

ROLES_ALL = ("customer", "partner", "ops")


class OtpRequest(Strict):
    phone: PhoneText = Field(min_length=8, max_length=20, examples=["+919812345678"])


class OtpSent(BaseModel):
    phone: str
    expires_in_s: int


class VerifyRequest(Strict):
    phone: PhoneText = Field(min_length=8, max_length=20)
    otp: str = Field(pattern=r"^\s*\d{6}\s*$")


class TokenOut(BaseModel):
    token: str
    token_type: str = "bearer"
    expires_at: datetime = Field(description=(
        "when the token ends at the latest: 30 days after the sign-in; an operator's 7 days "
        "(OPS_SESSION_DAYS), or sooner, after 12 hours unused (OPS_SESSION_IDLE_HOURS). "
        "Then any request answers 401 invalid_token: sign in again"))
    person_id: int
    role: str


def _ip() -> str:
    return request.remote_addr or "unknown"


@endpoint(bp, "POST", "/auth/otp", summary="Send a sign-in code by SMS", roles=None,
          body=OtpRequest, response=OtpSent, status=202, tags=("auth",))
def send_otp(body: OtpRequest) -> OtpSent:
    phone = auth.request_otp(body.phone, _ip())
    return OtpSent(phone=phone, expires_in_s=int(auth.OTP_TTL.total_seconds()))


# A verify's retry after its answer was lost (a slow line): with the key of the first,
# from the same client, within 2 minutes, it gets the same token. The code alone does not
# (whoever saw the SMS has it): without the key, a used code answers 401 otp_used.
VERIFY_KEY_HEADER = Header(HEADER, max_length=MAX_KEY, description=(
    "a unique key (a UUID) of this sign-in: its retry with the same key and code, from "
    "the same network, within 2 minutes of the first answer, gets the same token (the "
    "answer was lost); a used code answers 401 otp_used otherwise"))


def _retry_key() -> str | None:
    sent = request.headers.get(HEADER)
    key = (sent or "").strip()
    if sent is not None and not key:
        raise ApiError(422, "validation_error",
                       f"{HEADER} is empty: send a unique key (a UUID), or no header", HEADER)
    if len(key) > MAX_KEY or not key.isprintable():
        raise ApiError(422, "validation_error",
                       f"{HEADER}: at most {MAX_KEY} printable characters", HEADER)
    return key or None


@endpoint(bp, "POST", "/auth/verify", summary="Exchange the code for a bearer token",
          roles=None, body=VerifyRequest, response=TokenOut, tags=("auth",), errors=(401,),
          headers=(VERIFY_KEY_HEADER,))
def verify(body: VerifyRequest) -> TokenOut:
    token, who, expires = auth.verify_otp(body.phone, body.otp, _ip(), _retry_key())
    return TokenOut(token=token, expires_at=expires, person_id=who.person_id, role=who.role)


@endpoint(bp, "POST", "/auth/logout", summary="Sign out (revoke this token)",
          roles=ROLES_ALL, response=None, status=204, tags=("auth",))
def logout() -> None:
    auth.sign_out(principal())

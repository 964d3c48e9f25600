"""Sign-in: ask for a code by SMS, exchange it for a bearer token, sign out."""

from __future__ import annotations

from datetime import datetime

from flask import request
from pydantic import BaseModel, Field

from core.api import bp
from core.api.auth_guard import principal
from core.api.spec import Strict, endpoint
from core.services import auth

ROLES_ALL = ("customer", "partner", "ops")


class OtpRequest(Strict):
    phone: str = Field(min_length=8, max_length=20, examples=["+919812345678"])


class OtpSent(BaseModel):
    phone: str
    expires_in_s: int


class VerifyRequest(Strict):
    phone: str = Field(min_length=8, max_length=20)
    otp: str = Field(pattern=r"^\s*\d{6}\s*$")


class TokenOut(BaseModel):
    token: str
    token_type: str = "bearer"
    expires_at: datetime
    person_id: int
    role: str


def _ip() -> str:
    return request.remote_addr or "unknown"


@endpoint(bp, "POST", "/auth/otp", summary="Send a sign-in code by SMS", roles=None,
          body=OtpRequest, response=OtpSent, status=202, tags=("auth",))
def send_otp(body: OtpRequest) -> OtpSent:
    phone = auth.request_otp(body.phone, _ip())
    return OtpSent(phone=phone, expires_in_s=int(auth.OTP_TTL.total_seconds()))


@endpoint(bp, "POST", "/auth/verify", summary="Exchange the code for a bearer token",
          roles=None, body=VerifyRequest, response=TokenOut, tags=("auth",), errors=(401,))
def verify(body: VerifyRequest) -> TokenOut:
    token, who, expires = auth.verify_otp(body.phone, body.otp, _ip())
    return TokenOut(token=token, expires_at=expires, person_id=who.person_id, role=who.role)


@endpoint(bp, "POST", "/auth/logout", summary="Sign out (revoke this token)",
          roles=ROLES_ALL, response=None, status=204, tags=("auth",))
def logout() -> None:
    auth.sign_out(principal())

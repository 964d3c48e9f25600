"""The baseline: a bare Flask endpoint that only checks the Twilio signature and answers a
fixed TwiML reply, served by the same gunicorn set-up as the service."""

from __future__ import annotations

import os

from flask import Flask, Response, abort, request
from twilio.request_validator import RequestValidator

TWIML = ('<?xml version="1.0" encoding="UTF-8"?><Response><Message>ok</Message>'
         '</Response>')


def create_app() -> Flask:
    app = Flask(__name__)
    validator = RequestValidator(os.environ.get("TWILIO_AUTH_TOKEN",
                                                "sandbox-twilio-auth-token"))
    base = os.environ["PUBLIC_BASE_URL"].rstrip("/")

    @app.post("/webhooks/<channel>")
    def hook(channel: str):
        url = f"{base}{request.path}"
        if not validator.validate(url, request.form.to_dict(), request.headers.get(
                "X-Twilio-Signature", "")):
            abort(403)
        return Response(TWIML, mimetype="application/xml")

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    return app

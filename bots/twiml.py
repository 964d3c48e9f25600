"""TwiML rendering for message replies."""

from __future__ import annotations

from flask import Response
from twilio.twiml.messaging_response import MessagingResponse

EMPTY = '<?xml version="1.0" encoding="UTF-8"?><Response />'


def messages(replies: list[str]) -> Response:
    """A <Response> with one <Message> per reply (empty <Response/> for none)."""
    if not replies:
        return Response(EMPTY, mimetype="application/xml")
    twiml = MessagingResponse()
    for text in replies:
        twiml.message(text)
    return Response(str(twiml), mimetype="application/xml")

"""Small defects of review s36: a booking reference in Indian (or fullwidth) digits finds
the booking in the API as in the chat; a rating's comment is read as its cancel reason is
(invisible marks alone are no comment); the retention run masks the number Twilio's error
text names in an outbox row's last_error; the parked messages' model says SMS too."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import quote

import pytest
from sqlalchemy import select

from core import clock
from core.adapters.api_models import BookingRating
from core.adapters.db import transaction
from core.adapters.models import Booking, InboundParked, OutboxMessage
from core.domain.reference import (
    digits_spoken,
    is_valid_reference,
    new_reference,
    normalize_reference,
    speakable,
)
from core.services import retention
from tests.test_api import API, sign_in
from tests.test_whatsapp_rating import (
    CUSTOMER,
    chat,  # noqa: F401  (fixture)
    delivered_booking,
    t,
    wa,
)

pytestmark = pytest.mark.db

# The decimal digits 0-9 of the scripts a customer's keyboard types, and fullwidth ones.
ZEROS = {"devanagari": 0x966, "bengali": 0x9E6, "gujarati": 0xAE6, "tamil": 0xBE6,
         "telugu": 0xC66, "kannada": 0xCE6, "fullwidth": 0xFF10}
OPS_PHONE = "+919000000099"


def in_script(ref: str, script: str) -> str:
    return "".join(chr(ZEROS[script] + int(d)) for d in ref)


def devanagari_spaced(ref: str) -> str:
    typed = in_script(ref, "devanagari")
    return f"{typed[:4]} {typed[4:]}"


# --- 1. a reference in Indian digits ---------------------------------------------------------


@pytest.mark.parametrize("script", sorted(ZEROS))
def test_a_reference_in_indian_or_fullwidth_digits_is_read(script):
    ref = new_reference()
    typed = in_script(ref, script)
    # Was: None (only ASCII digits were read), though a phone field reads them.
    assert normalize_reference(typed) == ref
    assert normalize_reference(f"{typed[:4]} {typed[4:]}") == ref
    assert normalize_reference(f"{typed[:4]}-{typed[4:]}") == ref
    assert is_valid_reference(typed)
    assert speakable(typed) == f"{ref[:4]} {ref[4:]}"  # said back in ASCII digits
    assert digits_spoken(typed) == list(ref)


def test_a_reference_copied_with_direction_marks_or_a_minus_sign_is_read():
    ref = new_reference()
    assert normalize_reference(f"\u202a{ref[:4]}\u2212{ref[4:]}\u202c") == ref
    assert normalize_reference(f"\u200e{devanagari_spaced(ref)}\u200f") == ref


@pytest.mark.parametrize("bad", ["०१२३४५६७", "१२३४५६७", "१२३४५६७८९", "१२३४५६७a", "²³⁴⁵⁶⁷⁸⁹"])
def test_what_is_no_reference_in_any_script_stays_none(bad):
    # A leading zero, seven or nine digits, a letter; superscripts are no decimal digits.
    assert normalize_reference(bad) is None
    assert not is_valid_reference(bad)


def test_the_api_finds_a_booking_by_its_reference_in_devanagari_digits(chat):  # noqa: F811
    _, ref, _ = delivered_booking(channel="app")
    typed = quote(devanagari_spaced(ref))
    customer = sign_in(chat, CUSTOMER)
    # Was: 404 not_found, the booking being hers.
    r = chat.get(f"{API}/bookings/{typed}", headers=customer)
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["reference"] == ref
    r = chat.get(f"{API}/bookings/{typed}/track", headers=customer)
    assert r.status_code == 200 and r.get_json()["reference"] == ref, r.get_json()
    # An operator finding it by the reference a caller reads out in Hindi digits.
    ops = sign_in(chat, OPS_PHONE, role="ops")
    r = chat.get(f"{API}/ops/bookings?reference={typed}", headers=ops)
    assert r.status_code == 200, r.get_json()
    assert [b["reference"] for b in r.get_json()["items"]] == [ref]
    r = chat.get(f"{API}/ops/bookings?reference={quote('१२३४')}", headers=ops)
    assert r.status_code == 422 and r.get_json()["error"]["code"] == "bad_reference"


def test_the_chat_tracks_a_reference_typed_in_devanagari_digits(chat):  # noqa: F811
    """The chat read it already (words.only_digits): still so, through the new reading."""
    _, ref, _ = delivered_booking()
    assert t("booking.status.delivered", ref=ref) in wa(chat, devanagari_spaced(ref))


# --- 2. a rating's comment, as read ----------------------------------------------------------


def comment_of(ref: str) -> str | None:
    with transaction() as s:
        return s.scalar(select(BookingRating.comment)
                        .join(Booking, Booking.id == BookingRating.booking_id)
                        .where(Booking.reference == ref))


def rate(client, ref: str, headers: dict[str, str], comment: str):
    return client.post(f"{API}/bookings/{ref}/rating", json={"stars": 4, "comment": comment},
                       headers=headers)


def test_a_comment_of_invisible_marks_only_is_no_comment(chat):  # noqa: F811
    _, ref, _ = delivered_booking(channel="app")
    customer = sign_in(chat, CUSTOMER)
    filler = "\u200f\u200d\u200c\u200b \u2066\u2069"
    r = rate(chat, ref, customer, filler)
    assert r.status_code == 201, r.get_json()
    assert comment_of(ref) is None  # was the marks themselves
    # The same rating sent again (its answer lost) with no comment is the same rating.
    again = chat.post(f"{API}/bookings/{ref}/rating", json={"stars": 4}, headers=customer)
    assert again.status_code == 201, again.get_json()


def test_a_comment_keeps_what_one_reads_without_direction_marks(chat):  # noqa: F811
    _, ref, _ = delivered_booking(channel="app", partner_phone="+919812349002")
    customer = sign_in(chat, CUSTOMER)
    r = rate(chat, ref, customer, "\u202e  बहुत   अच्छा\u200f, on time \u200b")
    assert r.status_code == 201, r.get_json()
    assert comment_of(ref) == "बहुत अच्छा, on time"


def test_a_comment_with_a_joiner_a_spelling_needs_keeps_it(chat):  # noqa: F811
    _, ref, _ = delivered_booking(channel="app", partner_phone="+919812349003")
    customer = sign_in(chat, CUSTOMER)
    said = "র\u200d্যাব ভালো"  # Bengali: the joiner shapes the letter
    assert rate(chat, ref, customer, said).status_code == 201
    assert comment_of(ref) == said


def test_a_comment_over_500_visible_characters_is_still_refused(chat):  # noqa: F811
    _, ref, _ = delivered_booking(channel="app", partner_phone="+919812349004")
    customer = sign_in(chat, CUSTOMER)
    r = rate(chat, ref, customer, "x" * 501)
    assert r.status_code == 422 and r.get_json()["error"]["field"] == "comment"
    # 500 one can see, wrapped in marks, fit.
    assert rate(chat, ref, customer, "\u200e" + "x" * 500 + "\u200f").status_code == 201


# --- 3. retention: the number in Twilio's error text -----------------------------------------


REFUSED = "+919812345678"


def failed_message(error: str, at) -> int:
    with transaction() as s:
        row = OutboxMessage(channel="sms", to_addr=REFUSED, from_addr="+15005550006",
                            body="Your booking 4821 7730 is confirmed", status="failed",
                            attempts=1, error_code="21211", last_error=error, created_at=at)
        s.add(row)
        s.flush()
        return row.id


def test_the_retention_run_masks_the_number_in_a_messages_last_error(clean_db):
    now = clock.now()
    old = now - timedelta(days=retention.message_days() + 1)
    error = (f"twilio 400 21211: The 'To' number {REFUSED} is not a valid phone number. "
             "Unable to create record")
    gone = failed_message(error, old)
    plain = failed_message("connection: ConnectTimeout", old)
    recent = failed_message(error, now - timedelta(days=1))
    retention.run(now)
    with transaction() as s:
        row = s.get(OutboxMessage, gone)
        assert row.body == retention.REDACTED
        assert REFUSED[3:] not in row.last_error, row.last_error  # was kept as Twilio said it
        assert "is not a valid phone number" in row.last_error and row.error_code == "21211"
        assert row.last_error.startswith("twilio 400 21211: The 'To' number +91")
        assert s.get(OutboxMessage, plain).last_error == "connection: ConnectTimeout"
        # Not due yet: its text and error stay, as Twilio said them.
        assert s.get(OutboxMessage, recent).last_error == error


# --- 4. what the parked messages are ---------------------------------------------------------


def test_the_parked_messages_model_says_partner_sms_are_parked_too():
    doc = " ".join((InboundParked.__doc__ or "").split())
    assert "WhatsApp message, or an SMS from a partner" in doc

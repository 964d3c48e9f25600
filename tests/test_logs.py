"""JSON logs: ids bound, phone numbers masked everywhere, other numbers left alone."""

from __future__ import annotations

import json
import logging

import pytest

from core import logs
from core.logs import JsonFormatter, mask_phones

PHONE = "+919876543210"
MASKED = "+91******3210"


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def captured():
    logger = logging.getLogger("tests.logs")
    handler = ListHandler()
    logger.addHandler(handler)
    logger.propagate = False
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    yield logger, handler.lines
    logger.removeHandler(handler)
    logger.propagate = True
    logger.setLevel(old_level)


def only(lines: list[str]) -> dict:
    assert len(lines) == 1
    return json.loads(lines[0])


def test_output_is_one_json_object_with_level_logger_and_time(captured):
    logger, lines = captured
    logger.warning("hello %s", "world")
    assert "\n" not in lines[0]
    out = only(lines)
    assert out["msg"] == "hello world"
    assert out["level"] == "warning"
    assert out["logger"] == "tests.logs"
    assert out["ts"].endswith("+00:00")
    assert "request_id" not in out and "job_id" not in out


def test_request_and_job_ids_are_included_when_bound(captured):
    logger, lines = captured
    rtok = logs.request_id.set("req-abc123")
    jtok = logs.job_id.set("offer-timeout-42")
    try:
        logger.info("inside a request")
    finally:
        logs.request_id.reset(rtok)
        logs.job_id.reset(jtok)
    logger.info("outside")
    first, second = (json.loads(line) for line in lines)
    assert first["request_id"] == "req-abc123"
    assert first["job_id"] == "offer-timeout-42"
    assert "request_id" not in second and "job_id" not in second


@pytest.mark.parametrize("raw", [PHONE, f"whatsapp:{PHONE}", f"tel:{PHONE}"])
def test_phone_in_message_is_masked(captured, raw):
    logger, lines = captured
    logger.info("inbound from %s", raw)
    out = only(lines)
    assert PHONE not in lines[0] and "9876543210" not in lines[0]
    assert MASKED in out["msg"]
    assert out["msg"].startswith("inbound from ")


def test_phone_in_f_string_and_extra_fields_is_masked(captured):
    logger, lines = captured
    logger.info(
        f"sending to {PHONE}", extra={"to": PHONE, "to_addr": f"whatsapp:{PHONE}", "attempt": 2}
    )
    out = only(lines)
    assert PHONE not in lines[0]
    assert out["msg"] == f"sending to {MASKED}"
    assert out["to"] == MASKED
    assert out["to_addr"] == f"whatsapp:{MASKED}"
    assert out["attempt"] == 2


def test_phone_in_exception_text_is_masked(captured):
    logger, lines = captured
    try:
        raise RuntimeError(f"Twilio refused {PHONE}: unreachable")
    except RuntimeError:
        logger.exception("send failed")
    out = only(lines)
    assert PHONE not in lines[0]
    assert "RuntimeError" in out["exc"]
    assert f"Twilio refused {MASKED}: unreachable" in out["exc"]


def test_bare_ten_digit_mobile_is_masked(captured):
    logger, lines = captured
    logger.info("caller typed 9876543210 then 7001234567")
    out = only(lines)
    assert out["msg"] == "caller typed ******3210 then ******4567"


def test_references_pincodes_and_amounts_are_not_masked(captured):
    logger, lines = captured
    logger.info(
        "booking 48217730 from 845450 to 845438 total 920000 paise",
        extra={"reference": "48217730", "pincode": "845450"},
    )
    out = only(lines)
    assert out["msg"] == "booking 48217730 from 845450 to 845438 total 920000 paise"
    assert out["reference"] == "48217730"
    assert out["pincode"] == "845450"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("+919876543210", "+91******3210"),
        ("call +14155238886 now", "call +1******8886 now"),
        ("ref 4821 7730", "ref 4821 7730"),
        ("otp 4821", "otp 4821"),
        ("landline 5123456789", "landline 5123456789"),  # not a mobile: first digit below 6
        ("wa_id=919812345678", "wa_id=91******5678"),  # a WhatsApp id: no "+"
        # a foreign WhatsApp id is no Indian mobile: found by its name
        ("WaId=14155238886 from", "WaId=1******8886 from"),
        ('{"wa_id": "447700900123"}', '{"wa_id": "44******0123"}'),
        ("ts 1733412345678", "ts 1733412345678"),  # a time in ms is no phone
        ("From=whatsapp%3A%2B919812345678", "From=whatsapp%3A+91******5678"),  # URL-encoded
        ("order 12345678901234", "order 12345678901234"),
        # the ways people write a mobile: grouped, with +91 / 0091 / a trunk 0, in
        # Devanagari digits
        ("to 98220 12345.", "to ******2345."),
        ("to +91 98220 12345", "to +91******2345"),
        ("to +91-98220-12345", "to +91******2345"),
        ("to 098220 12345", "to ******2345"),
        ("to 09822012345", "to ******2345"),
        ("to 00919822012345", "to +91******2345"),
        ("को ९८२२० १२३४५ पर", "को ******2345 पर"),
        ("को ००९१९८२२०१२३४५", "को +91******2345"),
        ("on 2026-12-03 18:10, lat 26.89271234", "on 2026-12-03 18:10, lat 26.89271234"),
        ("trunk 1 19822012345", "trunk 1 19822012345"),
        # typed with dots, brackets, two spaces; a foreign number with spaces
        ("to +91.98123.45678", "to +91******5678"),
        ("to +91 (981) 234 5678", "to +91******5678"),
        ("to (981) 234-5678", "to (******5678"),
        ("to 98123  45678", "to ******5678"),
        ("call +1 415 523 8886 now", "call +1******8886 now"),
        ("lat 76.89271234", "lat 76.89271234"),  # a dot without a "+": no phone
    ],
)
def test_mask_phones_by_hand(text, expected):
    assert mask_phones(text) == expected


def test_phone_numbers_nested_in_extra_values_are_masked():
    import json
    import logging

    from core.logs import JsonFormatter

    record = logging.makeLogRecord({"msg": "batch", "levelname": "INFO",
                                    "to": ["+919876543210", {"n": 9876543210}]})
    line = JsonFormatter().format(record)
    assert "9876543210" not in line.replace("******3210", "")
    assert json.loads(line)["to"][0] == "+91******3210"


def test_a_failed_statement_is_logged_without_its_values(clean_db, captured):
    """The engine hides statement parameters: a logged database error would otherwise
    carry phone numbers, names and message bodies with codes in them."""
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    from core.adapters.db import engine

    log, lines = captured
    secret = "OTP 482177 for Sita"
    with pytest.raises(DBAPIError) as caught, engine().begin() as conn:
        conn.execute(text("SELECT CAST(:v AS text), 1 / 0"), {"v": secret})
    log.error("statement failed: %s", caught.value)
    (line,) = lines
    assert "statement failed" in line and "division by zero" in line
    assert "482177" not in line


def test_a_database_errors_detail_is_logged_without_the_rows_values(clean_db, captured):
    """PostgreSQL's DETAIL repeats the failing row ("Failing row contains (...)") or key:
    bound parameters are hidden, that line is not, so the formatter cuts it."""
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    from core.adapters.db import engine

    log, lines = captured
    code, name = str(4000 + 821), "Si" + "ta"  # not in this file's text (the traceback)
    with pytest.raises(DBAPIError) as caught, engine().begin() as conn:
        conn.execute(text("CREATE TEMP TABLE t (body text, status text "
                          "CHECK (status IN ('queued', 'sent')))"))
        conn.execute(text("INSERT INTO t VALUES (:body, :status)"),
                     {"body": f"Your pickup code is {code}.\nCall {name}", "status": "x"})
    try:
        raise RuntimeError("the job failed") from caught.value
    except RuntimeError:
        log.exception("statement failed: %s", caught.value)
    (line,) = lines
    out = json.loads(line)
    assert "check constraint" in out["msg"] and "DETAIL: (values hidden)" in out["exc"]
    assert code not in line and name not in line

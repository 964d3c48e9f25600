"""Alerts to operators (catalog keys with ".ops_") go by SMS only (dispatch.alert_ops), each
in the operator's own language, so they must fit two SMS parts like every other SMS
(test_i18n.test_texts_sent_by_sms_fit_two_parts leaves them out).

Values are as long as the real ones the callers pass (grep "alert_ops(" core): a leg's id
(``job``, ``leg``) has 5 digits, amounts are paise shown as "₹1,412.47" (which alone makes
an English text UCS-2), a gateway error is Razorpay's own sentence. Catalogs only.
"""

from __future__ import annotations

import pytest

from core import i18n
from core.services.payments import alert_error
from tests.test_i18n import SMS_VALUES, sms_parts
from tests.test_i18n_terms import LONG_VILLAGES

# A refusal Razorpay gives (BAD_REQUEST_ERROR), longer than any alert can quote: the
# callers pass it through payments.alert_error, as here.
GATEWAY_ERROR = ("Payment blocked as website does not match registered website(s). Please"
                 " contact support for assistance.")

OPS_VALUES: dict[str, object] = {
    **SMS_VALUES,
    "job": "12345",  # dispatch.job_code(leg): the leg's id
    "leg": 12345,
    "point": LONG_VILLAGES[0][1],  # a Point is named after its village
    "minutes": 120,  # past the 60-minute pickup window when the sweep runs late
    "hours": 24,  # the economy tier's delivery hours
    "command": "PICK",  # dispatch.handover_code_lost: the SMS word the code goes with
    "attempt": 2,
    "attempts": 3,
    "refund_paise": 141_247,
    "payout_paise": 141_247,
    "reversed_paise": 141_247,
    "short_paise": 141_247,
    "unexplained_paise": 141_247,
    "paid_paise": 141_247,  # payment.ops_transfer_overpaid: what the rider got
    "over_paise": 141_247,  # ... and how much of it he did not earn
    "error": alert_error(GATEWAY_ERROR),
    # dispatch.send_alert_summary: held alerts, the first one, SUMMARY_REFS refs shown
    "n": 49,
    "first": "48213907",
    "refs": "48213908, 48213909, 48213910, 48213911, 48213912 ...",
    "count": 12,  # reconciliation: new mismatches found in one run
    "days": 120,  # payments._tell_owed_long: a payout unpaid that long (7 days or more)
}

OPS_KEYS = sorted(k for k in i18n.keys("en") if ".ops_" in k)


def _render(key: str, lang: str) -> str:
    names = i18n.placeholders(i18n.raw(key, lang))
    params = {k: v for k, v in OPS_VALUES.items()
              if k in names or k.removesuffix("_paise") in names}
    # Every field is filled from OPS_VALUES: a new one must get a realistic value here.
    assert names <= {k.removesuffix("_paise") for k in params}, (lang, key, names)
    return i18n.t(key, lang, **params)


def test_the_ops_alerts_are_all_counted() -> None:
    # Guards the selection below: the alerts dispatch and payments send are in it.
    assert {"dispatch.ops_pickup_code_unsent", "payment.ops_transfer_refused",
            "ivr.sms.ops_code_read"} <= set(OPS_KEYS)


def test_amounts_make_an_english_alert_ucs2() -> None:
    # Why an English alert with an amount is held to 134 units, not 306 characters.
    text = _render("payment.ops_refund_stuck", "en")
    assert "₹" in text and not text.isascii()


@pytest.mark.parametrize("lang", i18n.LANGUAGES)
def test_ops_alerts_fit_two_sms_parts(lang: str) -> None:
    over = {}
    for key in OPS_KEYS:
        text = _render(key, lang)
        if sms_parts(text) > 2:
            over[key] = len(text.encode("utf-16-le")) // 2
    assert not over, f"{lang}: ops alerts over two SMS parts (UTF-16 units): {over}"


def test_an_alert_quotes_the_start_of_a_long_error_and_marks_the_cut() -> None:
    quoted = alert_error(GATEWAY_ERROR)
    assert quoted.endswith("…") and len(quoted) < len(GATEWAY_ERROR)
    assert GATEWAY_ERROR.startswith(quoted[:-1])
    assert GATEWAY_ERROR[len(quoted) - 1] == " "  # cut between words
    short = "Transfer amount exceeds payment amount"
    assert alert_error(short) == short

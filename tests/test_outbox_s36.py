"""Session 36: Twilio's refusal text names the number it refused ("The 'To' number
+1500... is not a valid phone number"), and the outbox kept it whole in `last_error` (and
in the RQ job's error in Redis): masked when stored now, as in the logs; the error code
and the rest of the text stay for ops."""

from __future__ import annotations

import pytest

from sandbox.twilio import MAGIC_INVALID
from tests.conftest import run_jobs
from tests.test_outbox import queue_one, row

pytestmark = pytest.mark.db


def test_a_refusal_naming_the_number_is_stored_masked(live):
    oid = queue_one(channel="sms", to=MAGIC_INVALID)
    run_jobs()
    r = row(oid)
    assert (r.status, r.error_code) == ("failed", "21211")
    assert "is not a valid phone number" in r.last_error
    assert MAGIC_INVALID.lstrip("+") not in r.last_error
    assert MAGIC_INVALID[-4:] in r.last_error  # masked, not dropped: its end stays

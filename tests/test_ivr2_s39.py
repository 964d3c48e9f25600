"""Session 39: the SMS answering a customer who texts our SMS number with a booking under
way (sms.customer_help) said "call and press 2 ... to cancel it, press 5". A call with a
booking draft kept opens at "finish your booking?", where 2 starts a new booking (the draft
thrown away) and 5 is a wrong key (hivr6's note, as for ivr.sms.not_cancelled*). It says
"press 0, then 2" and "press 0, then 5": 0 reaches the menu from whichever question the
call opens with, the draft kept."""
from __future__ import annotations

import pytest

from core import i18n
from core.adapters.db import transaction
from core.adapters.models import Booking
from tests.test_ivr import Caller, phone, prompts, step_of  # noqa: F401
from tests.test_ivr2_s38 import _data
from tests.test_ivr_s39 import _draft_kept, _in_language, _keys_to_press
from tests.test_payments_support import paid_booking


@pytest.mark.db
@pytest.mark.parametrize("lang", i18n.LANGUAGES)
@pytest.mark.parametrize("draft", [True, False])
def test_the_help_sms_leads_where_it_says_in_every_language(
        live, phone: Caller, lang: str, draft: bool) -> None:  # noqa: F811
    bid = paid_booking(phone.phone)
    _in_language(phone.phone, lang)
    with transaction() as s:
        ref = s.get(Booking, bid).reference
    if draft:
        _draft_kept(phone)
    keys = _keys_to_press(i18n.t("sms.customer_help", lang, ref=ref))
    assert keys == ["0", "2", "0", "5"], (lang, keys)
    for pair, step in ((keys[:2], "track"), (keys[2:], "cancel_pick")):
        phone.call()
        for key in pair:
            phone.press(key)
        assert step_of(phone.phone) == step, (lang, pair)
        assert bool(_data(phone.phone).get("draft_step")) is draft
        phone.hang_up()

"""A new drop code sent on WhatsApp in place of a lost SMS goes in one language (session 34).

The recipient's drop-code SMS never arrived and she chats with us on WhatsApp, outside the
24-hour window: the new code goes inside the approved template
(core.services.dispatch.drop_code_lost). Its text was written in recipient_language (hers,
or the booking's when she chose none), but the template around it followed her person's
language (the default language when she chose none): a Tamil code inside the Hindi
template. The template is now the one of the text's language.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from core import clock, i18n
from core.adapters.db import transaction
from core.adapters.dialog_models import WhatsappTemplateSend
from core.adapters.models import Conversation, OutboxMessage, Person
from core.services import notify
from tests.conftest import run_jobs
from tests.test_dispatch import (
    LAXMIPUR,
    RECIPIENT,
    frozen,  # noqa: F401  (fixture)
    make_partner,
    paid_booking,
    sms,
    start,
)
from tests.test_notice_review import (
    cannot_deliver,
    codes_in,
    customer_speaks,
    passed_on,
    recipient_code_row,
    ref_of,
)

pytestmark = pytest.mark.db
TA, HI = "HX" + "a" * 32, "HX" + "b" * 32


@pytest.fixture
def templates(monkeypatch):
    """WhatsApp "update" templates for Tamil and the default language (Hindi)."""
    monkeypatch.setenv("WHATSAPP_TEMPLATE_TA", TA)
    monkeypatch.setenv(f"WHATSAPP_TEMPLATE_{i18n.DEFAULT_LANGUAGE.upper()}", HI)
    notify.reset_templates()
    yield
    notify.reset_templates()


def test_a_lost_drop_code_goes_in_the_template_of_its_texts_language(
        client, live, frozen, templates):  # noqa: F811
    """Sita chose no language; she chatted with us on WhatsApp two days ago. Meena booked
    in Tamil. Sita's drop-code SMS never arrived: the new code goes to her on WhatsApp, in
    Tamil (the booking's language), inside the Tamil template, not the Hindi one."""
    assert i18n.DEFAULT_LANGUAGE != "ta"
    with transaction() as s:
        sita = Person(phone=RECIPIENT, role="customer", preferred_language=None)
        s.add(sita)
        s.flush()
        s.add(Conversation(channel="whatsapp", contact=RECIPIENT.lstrip("+"),
                           person_id=sita.id, last_inbound_at=clock.now() - timedelta(days=2)))
    cannot_deliver(RECIPIENT, "undelivered", "30003")  # her SMS, not her WhatsApp
    _, rider = make_partner("Ramesh", LAXMIPUR, lang="en")
    booking_id = paid_booking(recipient=RECIPIENT)
    customer_speaks("ta")  # Meena's booking is made in Tamil
    start(booking_id)
    assert sms(client, rider, "1")
    run_jobs()
    lost = recipient_code_row(booking_id)
    assert lost.channel == "sms" and lost.status == "undelivered"
    with transaction() as s:
        (again,) = s.scalars(select(OutboxMessage).where(
            OutboxMessage.booking_id == booking_id, OutboxMessage.id > lost.id,
            OutboxMessage.to_addr == f"whatsapp:{RECIPIENT}"))
        tpl = s.get(WhatsappTemplateSend, again.id)
        assert again.channel == "whatsapp" and tpl is not None
        body, sid, variables = again.body, tpl.content_sid, tpl.content_variables
    (code,) = codes_in([body])
    assert body == i18n.t("dispatch.drop_otp", "ta", ref=ref_of(booking_id), otp=code)
    assert variables == {"1": body}
    assert sid == TA, "the Tamil code went inside the default language's template"
    assert passed_on(booking_id) == []  # the sender is not bothered

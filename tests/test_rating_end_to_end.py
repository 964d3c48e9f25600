"""WhatsApp rating end to end: a partner's SMS DROP delivers, the customer is asked "how
was it?", and their "5" is stored (core.services.dispatch -> core.services.rating)."""

from itertools import count

from sqlalchemy import select, update

from core import i18n
from core.adapters.api_models import BookingRating
from core.adapters.db import transaction
from core.adapters.models import Booking, Person
from core.services import rating
from tests.conftest import send_whatsapp
from tests.test_dispatch import (  # noqa: F401  (frozen: a fixture)
    CUSTOMER,
    LAXMIPUR,
    RECIPIENT,
    bodies_to,
    freeze_at,
    frozen,
    last_code,
    make_partner,
    paid_booking,
    sms,
    start,
)

_sids = count(1)


def wa(client, body: str):
    return send_whatsapp(client, {"MessageSid": f"SMe2e{next(_sids)}", "AccountSid": "AC",
                                  "From": f"whatsapp:{CUSTOMER}", "To": "whatsapp:+14155238886",
                                  "WaId": CUSTOMER[1:], "NumMedia": "0", "Body": body})


def test_drop_asks_and_the_answer_rates(client, live, frozen):  # noqa: F811
    _, rph = make_partner("Ramesh", LAXMIPUR)
    with transaction() as s:
        s.add(Person(phone=CUSTOMER, name="Meena", role="customer", preferred_language="hi"))
    wa(client, "hi")
    freeze_at(rating.QUIET.total_seconds())  # delivered once the chat is quiet
    bid = paid_booking()
    with transaction() as s:
        s.execute(update(Booking).where(Booking.id == bid).values(channel="whatsapp"))
        ref = s.get(Booking, bid).reference
    start(bid)
    sms(client, rph, "1")
    sms(client, rph, f"PICK {last_code(CUSTOMER, 'पार्सल उठाने')}")
    sms(client, rph, f"DROP {last_code(RECIPIENT)}")
    msgs = bodies_to(CUSTOMER)
    assert msgs[-2] == i18n.t("booking.status.delivered", "hi", ref=ref)
    assert msgs[-1] == i18n.t("bot.rate.ask", "hi", ref=ref)
    wa(client, "5")
    with transaction() as s:
        assert s.scalar(select(BookingRating.stars)) == 5

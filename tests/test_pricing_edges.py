"""Pricing at its edges: a rate card's minimum fare, and a rate card changed between the
confirmation and "yes" (chat and phone)."""

from __future__ import annotations

from typing import Any

import pytest

from core.dialog.engine import DialogState, Say, UserInput, turn
from core.domain.errors import ValidationError
from core.domain.pricing import DEFAULT_RATE_CARD, RateCard
from tests.test_dialog import PLACE, FakePorts
from tests.test_dialog_edges import english_chat_at_size


def _keys(outs: list[Any]) -> list[str]:
    return [o.key for o in outs if isinstance(o, Say)]


@pytest.mark.parametrize("minimum", [2540, 50, 0])
def test_a_minimum_fare_not_in_whole_rupees_or_none_is_refused(minimum: int) -> None:
    """Fares are charged in whole rupees: a Rs 25.40 minimum was topped up to, then
    rounded below itself (Rs 25); none at all (with no base fare) priced a ride at Rs 0,
    a payment link the gateway refuses and a rider paid nothing."""
    d = DEFAULT_RATE_CARD.to_dict()
    d["vehicles"]["bicycle"]["minimum_paise"] = minimum
    with pytest.raises(ValidationError) as refused:
        RateCard.from_dict(d)
    assert refused.value.code == "bad_rate_card" and refused.value.field == "minimum_paise"


# --- a rate card change between the confirmation and "yes" -----------------------------

FULL_VEHICLE = {"pickup": dict(PLACE), "drop": dict(PLACE, lat=26.9, name="Lauriya"),
                "recipient_name": "Sita", "recipient_phone": "+919876543210",
                "category": "other", "size": "vehicle", "weight": "w200", "fragile": False,
                "value_paise": 0, "tier": "standard"}


class VansGone(FakePorts):
    """The confirmation was quoted on a card with vans; by "yes" the active card has none."""

    def quote(self, slots: dict[str, Any]) -> dict[str, Any]:
        raise ValidationError("no vehicle on this rate card can carry the parcel",
                              code="too_big_for_vehicle", field="size")

    def rider_free(self, slots: dict[str, Any]) -> bool:
        return True

    def confirm(self, slots: dict[str, Any]) -> dict[str, Any]:
        return {"refused": "too_big_for_vehicle"}  # as the booking's own fare finds


def test_ivr_yes_after_the_rate_card_lost_the_vehicle_asks_the_size_again() -> None:
    """The IVR's confirmation, after the customer heard the fare, re-quotes with
    ``ctx.ports.quote`` directly, not ``quote_or_resize``: when the active card no longer
    prices a vehicle for the parcel, too_big_for_vehicle escapes the turn; the caller
    hears "something went wrong" on every "1" instead of being asked another size."""
    from core.dialog.voice import VOICE_DIALOG

    state = DialogState("confirm", {"slots": dict(FULL_VEHICLE), "shown_total": 30000})
    outs = turn(VOICE_DIALOG, state, UserInput(text="1"), VansGone(), "en")
    assert state.step == "size", _keys(outs)


def test_chat_yes_after_the_rate_card_lost_the_vehicle_asks_the_size_again() -> None:
    """The chat's confirmation handler calls ``_quote``, which raises ``Redirect`` to the
    size question; but the engine catches a Redirect only around prompts, not around a
    step's ``handle``: the Redirect escapes ``turn`` and the customer's "yes" fails."""
    from core.dialog.booking import BOOKING_DIALOG

    state = DialogState("confirm", {"slots": dict(FULL_VEHICLE), "shown_total": 30000})
    outs = turn(BOOKING_DIALOG, state, UserInput(text="1"), VansGone(), "en")
    assert state.step == "size", _keys(outs)
    assert "bot.parcel.no_vehicle" in _keys(outs)


def test_chat_yes_after_the_rate_card_lost_the_vehicle_end_to_end(client) -> None:
    """The same through WhatsApp: a rate card without carts and vans made active while a
    customer reads the confirmation of a "needs a vehicle" parcel; their "yes" gets the
    apology and the chat stays at the confirmation, where every "yes" fails again."""
    from core import i18n
    from core.adapters.db import transaction
    from core.adapters.models import RateCardRow
    from core.services.seed import seed_demo

    seed_demo()
    chat = english_chat_at_size(client, "+919812317101")
    for text in ("4", "1", "no", "1", "2"):  # vehicle, up to 5 kg, not fragile, ₹500, std
        chat.send(text)
    assert chat.step() == "confirm"
    card = DEFAULT_RATE_CARD.to_dict()
    card["vehicles"] = {k: v for k, v in card["vehicles"].items() if k not in ("cart", "pickup")}
    with transaction() as s:
        s.add(RateCardRow(name="no-vans", card=card, active=True))
    reply = chat.send("1")
    assert i18n.t("common.error_try_later", "en") not in reply, reply
    assert chat.step() == "size", reply

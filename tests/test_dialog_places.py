"""The booking dialog refuses a drop at the pickup place (and a new pickup at the drop),
without a database: fake ports, pure state."""

from __future__ import annotations

from core.dialog.booking import BOOKING_DIALOG
from core.dialog.engine import DialogState, UserInput, turn
from tests.test_dialog import PLACE, FakePorts, keys, play

NEAR = UserInput(latitude=PLACE["lat"] + 0.0005, longitude=PLACE["lng"])  # 56 m north
APART = dict(PLACE, lat=PLACE["lat"] + 0.001, name="Next village")  # 111 m north


class TwoPlaces(FakePorts):
    """A location pin is placed where it was dropped."""

    def locate(self, lat: float, lng: float):
        from core.dialog.ports import PlaceResult

        return PlaceResult("ok", place=dict(PLACE, lat=lat, lng=lng))


def at_drop() -> tuple[DialogState, FakePorts]:
    state, ports = DialogState("pickup"), TwoPlaces()
    play(state, ports, "845438", "1", "1")  # Village 1, no landmark
    assert state.step == "drop"
    return state, ports


def test_a_drop_pin_next_to_the_pickup_is_asked_again():
    state, ports = at_drop()
    outs = turn(BOOKING_DIALOG, state, NEAR, ports, "en")
    assert keys(outs) == ["address.same_place", "bot.drop.ask"]
    assert state.step == "drop" and "drop" not in state.slots and state.misses == 0


def test_the_pickups_own_post_office_as_the_drop_is_asked_again():
    state, ports = at_drop()
    outs = play(state, ports, "845438", "1")  # Village 1 again: the pickup's own office
    assert keys(outs) == ["address.same_place", "bot.drop.ask"]
    assert state.step == "drop" and "drop" not in state.slots and "offices" not in state.data


def test_a_drop_a_little_way_off_is_taken():
    state, ports = at_drop()
    far = UserInput(latitude=APART["lat"], longitude=APART["lng"])
    outs = turn(BOOKING_DIALOG, state, far, ports, "en")
    assert "address.same_place" not in keys(outs)
    assert state.step == "drop_landmark" and state.slots["drop"]["lat"] == APART["lat"]


def test_changing_the_pickup_to_the_drop_place_is_asked_again():
    state = DialogState("pickup", {"return_to": "confirm",
                                   "slots": {"pickup": dict(APART), "drop": dict(PLACE)}})
    outs = turn(BOOKING_DIALOG, state, NEAR, TwoPlaces(), "en")
    assert keys(outs) == ["address.same_place", "bot.pickup.ask"]
    assert state.step == "pickup" and state.slots["pickup"] == APART

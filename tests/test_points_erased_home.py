"""A Point's home partners, as the close answer, its audit entry and the ops Point list
name them for ops to move, leave out partners erased on their request: ops can move no
one erased (set_home_point refuses them), so naming them asked for the impossible."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from core.adapters.db import transaction
from core.adapters.models import PartnerProfile
from core.services import admin, retention
from tests.test_dispatch import LAXMIPUR, make_partner, make_point

pytestmark = pytest.mark.db


def _erase(partner_id: int) -> None:
    with transaction() as s:
        profile = s.get(PartnerProfile, partner_id)
        profile.kyc_status = "suspended"  # a partner is blocked before erasure
        profile.on_duty = False
        person_id = profile.person_id
    with transaction() as s:
        retention.erase_person(s, person_id)


def test_erased_partners_are_not_named_as_home_partners(clean_db):
    point = make_point("Laxmipur", *LAXMIPUR)
    kept, _ = make_partner("Ramesh", LAXMIPUR, point_id=point, on_duty=False)
    gone, _ = make_partner("Suresh", LAXMIPUR, point_id=point, on_duty=False)
    _erase(gone)
    with transaction() as s:
        assert s.scalar(select(PartnerProfile.first_name).where(
            PartnerProfile.id == gone)) in (None, "")  # erased indeed
        assert admin.home_partners(s, point) == [kept]
        assert admin.home_partners_of(s, [point]) == {point: [kept]}
        done = admin.close_point(s, point, actor="ops:1")
    assert f"1 partner(s) have it as home ({kept})" in done.message, done.message

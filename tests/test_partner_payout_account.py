"""A partner's payout account after sign-up, and the README's examples, as a new operator
and a new app developer follow them (review 8).

- README ("Setting up production", 5.): `add-partner ... [--payout-account acc_...]`, or
  `POST /api/v1/ops/partners` with `payout_account` optional; only a partner with one may
  go ON. One signed up without it could never be given one (no API operation,
  `add-partner` run again "changes nothing"), the ops partner rows did not show who lacks
  one, and the refusal said `kyc_pending` (papers) to a partner whose KYC was verified.
- README's examples: the WhatsApp one fixed its `MessageSid`, so a second run (another
  `Body`) was dropped as Twilio's retry; the REST and partner SMS examples below are run
  here as written.
"""

from __future__ import annotations

import re
import sys
import types
import uuid

import pytest
from sqlalchemy import select, update

from core import i18n
from core.adapters.api_models import AuditEntry
from core.adapters.db import transaction
from core.adapters.models import InboundEvent, Leg, PartnerProfile, Person
from core.config import ROOT, get_settings
from core.domain.booking import Actor, LegStatus
from core.services.booking import move_leg
from core.services.seed import OPS_PERSON, seed_demo
from tests.conftest import run_jobs
from tests.test_admin import LAXMIPUR, run
from tests.test_api import API, last_otp, sign_in
from tests.test_dispatch import (
    CUSTOMER,
    RECIPIENT,
    bodies_to,
    frozen,  # noqa: F401  (fixture)
    last_code,
    legs_of,
    make_partner,
    paid_booking,
    sms,
    start,
)
from tests.test_dispatch import LAXMIPUR as AT

pytestmark = pytest.mark.db

OPERATOR = "+919812388801"
RIDER = "+919812388802"
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _told(key: str, lang: str = "en") -> str:
    return i18n.t(key, lang, ops_phone=get_settings().ops_phone)


def _profile(pid: int) -> PartnerProfile:
    with transaction() as s:
        p = s.get(PartnerProfile, pid)
        assert p is not None
        s.expunge(p)
        return p


def _audits(action: str) -> list[dict]:
    with transaction() as s:
        return [dict(a.details, actor=a.actor, target=a.target) for a in s.scalars(
            select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.id))]


@pytest.fixture
def partner_without_account(client, capsys) -> tuple[dict[str, str], int]:
    """The README's steps: a Point, an operator (CLI), signed in; a partner signed up by
    POST /api/v1/ops/partners without the optional payout_account; KYC set verified.
    Returns (operator's headers, partner id)."""
    assert run(capsys, *LAXMIPUR)[0] == 0
    assert run(capsys, "add-operator", "--phone", OPERATOR)[0] == 0
    ops = sign_in(client, OPERATOR)
    r = client.post(f"{API}/ops/partners", headers=ops, json={
        "phone": RIDER, "name": "Raju Kumar", "language": "en", "vehicle": "bicycle",
        "payload_kg": 20, "point": "Laxmipur"})
    assert r.status_code == 201, r.get_json()
    pid = r.get_json()["id"]
    r = client.put(f"{API}/ops/partners/{pid}/kyc", headers=ops,
                   json={"status": "verified", "note": "Aadhaar checked"})
    assert r.status_code == 200 and r.get_json()["kyc_status"] == "verified"
    return ops, pid


# --- 1. a partner signed up without an account can be given one -------------------------


def test_a_partner_signed_up_without_a_payout_account_can_be_given_one(
        client, live, partner_without_account):
    """Their ON is refused for want of a payout account; the operator gives them one
    (PUT .../payout-account, audited), and their next ON starts work."""
    ops, pid = partner_without_account
    sms(client, RIDER, "ON")
    assert _profile(pid).on_duty is False
    spec = client.get(f"{API}/openapi.json").get_json()
    assert "put" in spec["paths"][f"{API}/ops/partners/{{partner_id}}/payout-account"]
    r = client.put(f"{API}/ops/partners/{pid}/payout-account", headers=ops,
                   json={"account_id": "acc_RajuKumar01", "note": "his bank, called +919812388802"})
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["payout_account"] == "acc_RajuKumar01"
    (entry,) = _audits("partner.payout_account")
    assert entry["target"] == f"partner:{pid}" and entry["actor"].startswith("ops:")
    assert (entry["before"], entry["after"]) == (None, "acc_RajuKumar01")
    assert "9812388802" not in entry["note"]  # a number typed in a note is kept masked
    assert sms(client, RIDER, "ON") == [i18n.t("dispatch.duty_on", "en")]
    assert _profile(pid).on_duty is True
    # The same account again changes nothing and audits nothing.
    r = client.put(f"{API}/ops/partners/{pid}/payout-account", headers=ops,
                   json={"account_id": "acc_RajuKumar01"})
    assert r.status_code == 200 and len(_audits("partner.payout_account")) == 1


def test_the_payout_account_route_checks_what_it_is_given(client, partner_without_account):
    """Validated as the sign-up validates it, each partner's own, only for a partner."""
    ops, pid = partner_without_account
    url = f"{API}/ops/partners/{pid}/payout-account"
    r = client.put(url, headers=ops, json={"account_id": "12345"})
    assert r.status_code == 422 and r.get_json()["error"]["code"] == "bad_payout_account"
    other, _ = make_partner("Asha", AT, payout_account="acc_Asha00000001")
    r = client.put(url, headers=ops, json={"account_id": "acc_Asha00000001"})
    assert r.status_code == 409, r.get_json()
    assert r.get_json()["error"]["code"] == "payout_account_taken"
    r = client.put(f"{API}/ops/partners/999999/payout-account", headers=ops,
                   json={"account_id": "acc_Nobody0001"})
    assert r.status_code == 404
    r = client.put(url, headers=sign_in(client, RIDER), json={"account_id": "acc_Raju0001"})
    assert r.status_code == 403  # a partner cannot set their own
    assert _profile(pid).payout_account_id is None and _audits("partner.payout_account") == []


def test_an_account_is_not_changed_while_the_partner_holds_a_job(client, live, frozen):  # noqa: F811
    """A change moves the next payouts; a hold already made for a job in hand would be
    reversed and made anew mid-job: refused (409 partner_has_jobs) until it is delivered.
    With no job in hand, the change goes through."""
    pid, phone = make_partner("Ramesh", AT, lang="en", payout_account="acc_Ramesh0001")
    ops = sign_in(client, OPERATOR, role="ops")
    booking = paid_booking()
    start(booking)
    sms(client, phone, "1")
    assert legs_of(booking)[0].partner_id == pid
    url = f"{API}/ops/partners/{pid}/payout-account"
    r = client.put(url, headers=ops, json={"account_id": "acc_Ramesh0002"})
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "partner_has_jobs"
    assert _profile(pid).payout_account_id == "acc_Ramesh0001"
    with transaction() as s:
        leg = s.scalar(select(Leg).where(Leg.booking_id == booking))
        for to in (LegStatus.PICKED_UP, LegStatus.DELIVERED):
            move_leg(s, leg, to, Actor.system(), "delivered")
    r = client.put(url, headers=ops, json={"account_id": "acc_Ramesh0002"})
    assert r.status_code == 200 and r.get_json()["payout_account"] == "acc_Ramesh0002"


# --- 2. who lacks one, and the refusal that says so ---------------------------------------


def test_the_ops_partner_list_shows_who_cannot_be_paid(client, partner_without_account):
    """KYC verified, no payout account: the operator's row says so."""
    ops, pid = partner_without_account
    rows = client.get(f"{API}/ops/partners", headers=ops).get_json()["items"]
    row = next(p for p in rows if p["id"] == pid)
    assert row["kyc_status"] == "verified" and row["payout_account"] is None, row
    client.put(f"{API}/ops/partners/{pid}/payout-account", headers=ops,
               json={"account_id": "acc_RajuKumar01"})
    rows = client.get(f"{API}/ops/partners", headers=ops).get_json()["items"]
    assert next(p for p in rows if p["id"] == pid)["payout_account"] == "acc_RajuKumar01"


@pytest.mark.parametrize("channel", ["sms", "app"])
def test_a_verified_partner_without_an_account_hears_what_is_missing(
        client, live, frozen, channel):  # noqa: F811
    """Their papers are checked: 'after we check your documents' points them (and ops)
    the wrong way. They hear their bank account is missing; the app says
    no_payout_account. A partner whose KYC is pending still hears kyc_pending."""
    _, phone = make_partner("Ravi", AT, lang="ta", on_duty=False, payout_account=None)
    _, pending = make_partner("Sunita", AT, lang="hi", on_duty=False, kyc_status="pending")
    for who, key, code in ((phone, "dispatch.duty_no_payout_account", "no_payout_account"),
                           (pending, "dispatch.duty_pending_kyc", "kyc_pending")):
        lang = "ta" if who == phone else "hi"
        if channel == "sms":
            assert sms(client, who, "ON") == [_told(key, lang)]
        else:
            r = client.put(f"{API}/partners/me/duty", headers=sign_in(client, who),
                           json={"on_duty": True})
            assert r.status_code == 403, r.get_json()
            assert r.get_json()["error"] == {"code": code, "message": _told(key, lang)}


def test_a_yes_after_the_account_went_says_the_account_is_missing(client, live, frozen):  # noqa: F811
    """Offered a job, then their account was taken off (a wrong one): their yes is refused
    for the account, not for papers already checked."""
    pid, phone = make_partner("Ramesh", AT, lang="en")
    booking = paid_booking()
    start(booking)
    with transaction() as s:
        s.execute(update(PartnerProfile).where(PartnerProfile.id == pid)
                  .values(payout_account_id=None))
    assert sms(client, phone, "1") == [_told("dispatch.duty_no_payout_account")]
    assert legs_of(booking)[0].partner_id is None


# --- the CLI ------------------------------------------------------------------------------


def test_add_partner_warns_and_run_again_fills_in_the_account(clean_db, capsys):
    """Without --payout-account, add-partner says they cannot go ON yet; run again with
    one (the README's way), it is filled in, not 'nothing changed'. Another account than
    theirs is refused there, and set-payout-account changes it."""
    assert run(capsys, *LAXMIPUR)[0] == 0
    flags = ["add-partner", "--phone", RIDER, "--name", "Raju Kumar", "--language", "hi",
             "--vehicle", "bicycle", "--payload-kg", "20", "--point", "Laxmipur"]
    code, out, _ = run(capsys, *flags)
    assert code == 0 and "cannot go ON" in out and "set-payout-account" in out, out
    pid = int(re.search(r"partner (\d+),", out).group(1))  # type: ignore[union-attr]
    code, out, _ = run(capsys, *flags, "--payout-account", "acc_RajuKumar01")
    assert code == 0 and "nothing changed" not in out, out
    assert _profile(pid).payout_account_id == "acc_RajuKumar01"
    code, out, err = run(capsys, *flags, "--payout-account", "acc_RajuKumar02")
    assert code == 2 and "set-payout-account" in err, err
    code, out, err = run(capsys, "set-payout-account", "--phone", "98123 88802",
                         "--account", "acc_RajuKumar02", "--note", "new bank")
    assert code == 0 and "acc_RajuKumar02" in out, (out, err)
    assert _profile(pid).payout_account_id == "acc_RajuKumar02"
    assert [(a["actor"], a["before"], a["after"]) for a in _audits("partner.payout_account")] \
        == [("cli", None, "acc_RajuKumar01"), ("cli", "acc_RajuKumar01", "acc_RajuKumar02")]
    code, _, err = run(capsys, "set-payout-account", "--partner", str(pid), "--account", "x")
    assert code == 2 and "acc_" in err


# --- 3. the README's examples, as written ---------------------------------------------------


def _block(after: str) -> str:
    """The first fenced block after ``after`` in the README."""
    start = README.index(after)
    opened = README.index("```", start)
    return README[README.index("\n", opened) + 1:README.index("```", opened + 3)]


def test_the_readme_whatsapp_example_can_be_run_twice(client, monkeypatch):
    """Run again with another Body, the example must not be dropped as a retry of the
    first: each run's MessageSid is new, and both messages are taken in."""
    code = _block("send a signed WhatsApp webhook")
    code = code.split("<<'EOF'\n", 1)[1].rsplit("EOF", 1)[0]
    code = code.replace("http://127.0.0.1:8000", get_settings().public_base_url)
    sent: list[dict[str, str]] = []

    def post(url: str, data: dict[str, str], headers: dict[str, str]):
        sent.append(dict(data))
        r = client.post(url.removeprefix(get_settings().public_base_url), data=data,
                        headers=headers)
        assert r.status_code == 200, r.get_data(as_text=True)
        return types.SimpleNamespace(text=r.get_data(as_text=True))

    monkeypatch.setitem(sys.modules, "requests", types.SimpleNamespace(post=post))
    for body in ("hi", "menu"):
        exec(code.replace('"Body": "hi"', f'"Body": "{body}"'), {"print": lambda *a: None})
    assert len({form["MessageSid"] for form in sent}) == 2, sent
    run_jobs()
    with transaction() as s:
        taken = set(s.scalars(select(InboundEvent.external_id)))
    assert {form["MessageSid"] for form in sent} <= taken


def _curls(block: str) -> list[tuple[str, str, dict[str, str], str]]:
    """(method, path, extra headers, JSON body) of each curl line of a README block."""
    out = []
    for line in block.splitlines():
        m = re.fullmatch(r"\s*curl -s (?:-X (\w+) )?\$B(\S+) (.*?)-d '(.*)'", line)
        if m:
            headers = dict(h.split(": ", 1) for h in re.findall(r'-H "([^"]+)"', m[3])
                           if ": " in h)
            out.append((m[1] or "POST", API + m[2], headers, m[4]))
    return out


def test_the_readme_api_examples_work_as_written(client):
    """Sign in, quote and book as the README shows (demo data, as ./run serve loads it),
    the code read from the sandbox's SMS and the token sent back; the booking at the
    quoted total the README shows."""
    seed_demo()
    steps = _curls(_block("The apps' REST API is under"))
    assert [(m, p) for m, p, _, _ in steps] == [
        ("POST", f"{API}/auth/otp"), ("POST", f"{API}/auth/verify"),
        ("POST", f"{API}/quotes"), ("POST", f"{API}/bookings")]
    (_, otp_path, _, otp_body), (_, verify_path, _, verify_body) = steps[:2]
    r = client.post(otp_path, data=otp_body, content_type="application/json")
    assert r.status_code == 202, r.get_json()
    phone = r.get_json()["phone"]
    r = client.post(verify_path, data=verify_body.replace('"otp": "123456"',
                                                         f'"otp": "{last_otp(phone)}"'),
                    content_type="application/json")
    assert r.status_code == 200, r.get_json()
    auth = {"Authorization": f"Bearer {r.get_json()['token']}"}
    _, quote_path, _, quote_body = steps[2]
    r = client.post(quote_path, data=quote_body, content_type="application/json",
                    headers=auth)
    assert r.status_code == 200, r.get_json()
    standard = next(f for f in r.get_json()["fares"] if f["tier"] == "standard")
    _, book_path, headers, book_body = steps[3]
    assert "Idempotency-Key" in headers
    shown = int(re.search(r'"quoted_total_paise": (\d+)', book_body)[1])  # type: ignore[index]
    assert shown == standard["total_paise"], "the README's quoted total is not the quote's"
    r = client.post(book_path, data=book_body, content_type="application/json",
                    headers={**auth, "Idempotency-Key": str(uuid.uuid4())})
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["total_paise"] == shown


def test_the_readme_ops_examples_work_as_written(client, capsys):
    """The operator's KYC and payout-account PUTs, as the README shows them, on a partner
    the CLI signed up without an account: they can go ON afterwards."""
    seed_demo()
    assert run(capsys, "add-partner", "--phone", RIDER, "--name", "Raju Kumar", "--language",
               "en", "--vehicle", "bicycle", "--payload-kg", "20", "--point", "Laxmipur")[0] == 0
    with transaction() as s:
        pid = s.scalar(select(PartnerProfile.id).join(Person).where(Person.phone == RIDER))
    ops = sign_in(client, OPS_PERSON[1])
    steps = _curls(_block("As an operator (signed in as above)"))
    assert [(m, p) for m, p, _, _ in steps] == [
        ("PUT", f"{API}/ops/partners/9/kyc"), ("PUT", f"{API}/ops/partners/9/payout-account")]
    for method, path, _, body in steps:
        r = client.open(path.replace("/9/", f"/{pid}/"), method=method, data=body,
                        content_type="application/json", headers=ops)
        assert r.status_code == 200, r.get_json()
    row = r.get_json()
    assert (row["kyc_status"], row["payout_account"]) == ("verified", "acc_RajuKumar01")


def test_the_readme_partner_sms_commands_work_as_written(client, live, frozen):  # noqa: F811
    """ON, 1, PICK <the sender's code>, DROP <the recipient's code>: the job is
    delivered, as the README's quick start tells a new operator to try."""
    said = README[README.index("Partners answer"):README.index("The apps' REST API")]
    for command in ("`ON`", "`1`", "`PICK 1234`", "`DROP\n5678`", "`PICK 1234 57`"):
        assert command in said, command
    _, phone = make_partner("Ramesh", AT, lang="en", on_duty=False)
    assert sms(client, phone, "ON") == [i18n.t("dispatch.duty_on", "en")]
    booking = paid_booking()
    start(booking)
    assert "is yours" in sms(client, phone, "1")[0]
    sms(client, phone, f"PICK {last_code(CUSTOMER, 'पार्सल उठाने')}")
    assert legs_of(booking)[0].status == LegStatus.PICKED_UP.value
    sms(client, phone, f"DROP {last_code(RECIPIENT)}")
    assert legs_of(booking)[0].status == LegStatus.DELIVERED.value
    assert bodies_to(phone)

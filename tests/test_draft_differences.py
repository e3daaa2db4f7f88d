"""The differences from draft-httpauth-payment-02 that spec/core.md ("Draft revision and
differences") lists, pinned where bytes are involved."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import mpp
from mpp.protocol.challenge import compute_challenge_id

ROOT = Path(__file__).resolve().parent.parent
SECRET = b"test-vector-secret-minimum-32-byte-secret"
BASE = dict(realm="api.example.com", method="tempo", intent="charge", request="eyJhbW91bnQiOiIxMDAwMDAwIn0")
ROUTE_OPAQUE = "eyJyb3V0ZSI6Ii9hcGkvcHJlbWl1bSJ9"


def test_header_slot_sits_before_opaque_not_after():
    """CORE-ID-01 (row 1): the header slot comes before opaque, as the cross-SDK vectors say; the
    -02 text's layout (appended after opaque) gives other ids, which we do not produce."""
    assert compute_challenge_id(SECRET, **BASE, header="Payment-Authorization") == "re8MIMJYpIJ0r_aiizscg6ghtipQM8IpOa_NtpwIU8E"
    assert compute_challenge_id(SECRET, **BASE, header="Payment-Authorization") != "vIwiTaU-7OGVC7LGBYFtgQZMo4d0qIvILb62cBlJiyU"
    with_opaque = compute_challenge_id(SECRET, **BASE, header="Payment-Authorization", opaque=ROUTE_OPAQUE)
    assert with_opaque != "dFqwY5awqN-2_6qSCqi5W2wrSmiq2y1VmYP-4W4a24k"  # the -02 text's eighth slot


def test_headerless_ids_are_the_seven_slot_ids_of_every_revision():
    """CORE-ID-01, CORE-CHAL-11 (rows 1, 2): without header, or with header="Authorization", the id is
    the seven-slot id that -00 and -02 agree on."""
    plain = compute_challenge_id(SECRET, **BASE)
    assert plain == "6QDs0BmhrI_v67iWeCMvGqQJEFQ6ErWKlk7zi5xL6t0"
    assert compute_challenge_id(SECRET, **BASE, header="Authorization") == plain


def test_our_sellers_never_emit_header():
    """CORE-CHAL-11 (row 3): an issued challenge has no header parameter on the wire."""
    from datetime import datetime, timezone

    issuer = mpp.ChallengeIssuer(SECRET, "api.example.com")
    challenge = issuer.issue(method="ledger", intent="charge", request={"amount": "1"}, now=datetime.now(timezone.utc))
    assert challenge.header is None
    assert "header=" not in mpp.format_challenge(challenge)


@pytest.mark.parametrize("name", ["with_payment_authorization_header", "authorization_header_is_implicit_default"])
def test_header_vectors_are_carried_from_upstream(name):
    """CORE-ID-01: the two header cases of spec/vectors/challenge-id.json are upstream's."""
    scenarios = {s["name"]: s for s in json.loads((ROOT / "spec" / "vectors" / "challenge-id.json").read_text())["scenarios"]}
    assert scenarios[name]["origin"] == "upstream"

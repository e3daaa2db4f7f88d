"""Pricing models as data (spec/pricing.md): price list, periods, grants, proofs, offer choice."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from fractions import Fraction

import jwt
import pytest

from mpp import Price, SigningKey
from mpp.pricing.prices import Metered
from mpp.protocol.wire import b64url_decode, b64url_encode
from mpp.pricing import (
    SeenGrantProofs,
    GrantAgent,
    GrantAudience,
    GrantExpired,
    GrantInvalid,
    GrantProofInvalid,
    GrantRoute,
    GrantTask,
    ModelNotAllowed,
    PriceListError,
    QuotedOffer,
    SeatAlreadyPaid,
    SeatOffer,
    SeatRecords,
    TaskOffer,
    TransactionOffer,
    UnitOffer,
    UnitPriceTooHigh,
    UsageRecord,
    check_offer_allowed,
    check_reload,
    choose_offer,
    expected_total,
    issue_grant,
    load_price_list,
    parse_grant_proof,
    period_bounds,
    period_index,
    quoted_offer,
    restrictions_from_claims,
    seat_grant_claims,
    sign_grant_proof,
    subscription_id,
    summarize_usage,
    task_grant_claims,
    verify_grant,
    verify_grant_proof,
)

UTC = timezone.utc
T0 = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
REALM = "api.example.com"

PRICE_LIST = """\
# prices for api.example.com
version = "2025-06-01.1"
currency = "usd"

[[routes]]
method = "GET"
path = "/weather"
description = "Current weather"

  [[routes.offers]]
  model = "transaction"
  amount = 25

  [[routes.offers]]
  model = "seat"
  plan = "weather-pro"
  amount = 900
  period_unit = "month"
  covers = ["GET /forecast"]

[[routes]]
method = "GET"
path = "/forecast"

  [[routes.offers]]
  model = "unit"
  unit = "day"
  amount = 10
  max_units = 14

  [[routes.offers]]
  model = "transaction"
  amount = 100

[[routes]]
method = "post"
path = "/jobs"

  [[routes.offers]]
  model = "task"
  amount = 500
  follow_ups = ["GET /jobs/{task}", "GET /jobs/{task}/result", "DELETE /jobs/{task}"]
  grant_ttl = 3600
  refund = "full"

[[routes]]
path = "/items/{id}"

  [[routes.offers]]
  model = "transaction"
  amount = 3
  currency = "eur"

[[routes]]
path = "/items/special"

  [[routes.offers]]
  model = "transaction"
  amount = 7
"""


def price_list():
    return load_price_list(PRICE_LIST, source="prices.toml")


# -- loading ------------------------------------------------------------------------------


def test_valid_price_list_loads():
    """PRICE-LIST-01, PRICE-MODEL-01, PRICE-MODEL-02: a valid list loads; transaction offers become
    today's Price, the unit offer today's Metered with the route's transaction offer as its charge."""
    pl = price_list()
    assert pl.version == "2025-06-01.1"
    assert [r.route for r in pl.routes] == ["GET /weather", "GET /forecast", "POST /jobs", "GET /items/{id}",
                                            "GET /items/special"]
    weather = pl.offers_for("GET", "/weather")
    assert [type(o) for o in weather] == [TransactionOffer, SeatOffer]
    assert weather[0].to_price() == Price(25, "usd")
    assert weather[1].covers == ("GET /weather", "GET /forecast")  # own route first
    unit, charge = pl.offers_for("get", "/forecast")
    assert isinstance(unit, UnitOffer) and unit.currency == "usd"
    metered = pl.route_for("GET", "/forecast").price()
    assert isinstance(metered, Metered)
    assert (metered.unit, metered.price, metered.per, metered.max_units, metered.charge_price().amount) == ("day", 10, 1, 14, 100)
    assert pl.route_for("GET", "/weather").price() == Price(25, "usd")
    assert pl.offers_for("DELETE", "/weather") == ()


def test_offer_ids_default_and_every_offer_names_the_version():
    """PRICE-LIST-01, PRICE-VER-01, PRICE-MODEL-04: ids default to the model (the plan for a seat); the
    pricing member names the list version, the offer and the model, plus the task's terms."""
    pl = price_list()
    task = pl.offers_for("POST", "/jobs")[0]
    assert isinstance(task, TaskOffer)
    assert task.pricing_member() == {"priceList": "2025-06-01.1", "offer": "task", "model": "task",
                                     "followUps": ["GET /jobs/{task}", "GET /jobs/{task}/result", "DELETE /jobs/{task}"],
                                     "grantTtl": "3600", "refund": "full"}
    seat = pl.offer("GET /weather", "weather-pro")
    assert seat.pricing_member(T0)["period"] == seat.period_index(T0)
    assert all(o.price_list == "2025-06-01.1" for r in pl.routes for o in r.offers)


def test_literal_routes_win_over_templates_and_follow_ups_are_found():
    """PRICE-LIST-04, PRICE-TASK-03: /items/special is priced by its own route, /items/42 by the
    template; a follow-up path yields its task offer and the task id."""
    pl = price_list()
    assert pl.offers_for("GET", "/items/special")[0].amount == 7
    assert pl.offers_for("GET", "/items/42")[0].amount == 3
    assert pl.offers_for("GET", "/items/42/x") == ()
    offer, task = pl.follow_up_for("GET", "/jobs/j-1/result")
    assert (offer.route, task) == ("POST /jobs", "j-1")
    assert pl.follow_up_for("DELETE", "/jobs/j-1/result") is None
    assert pl.follow_up_for("POST", "/jobs/j-1") is None


def _mistake(replace: str, by: str, *, text: str = PRICE_LIST) -> PriceListError:
    assert replace in text, replace
    with pytest.raises(PriceListError) as info:
        load_price_list(text.replace(replace, by, 1), source="prices.toml")
    return info.value


def _line_of(needle: str, text: str, occurrence: int = 1) -> int:
    lines = [n for n, line in enumerate(text.splitlines(), start=1) if needle in line]
    return lines[occurrence - 1]


MISTAKES = [
    # (name, replace, by, line-anchor in the edited text, words the problem must contain)
    ("unknown model", 'model = "task"', 'model = "per-task"', 'model = "per-task"', ["unknown model", "per-task"]),
    ("missing amount", '  amount = 500\n', "", ("[[routes.offers]]", 5), ["missing required key 'amount'"]),
    ("negative price", "amount = 25", "amount = -25", "amount = -25", ["'amount'", "> 0", "-25"]),
    ("float price", "amount = 25", "amount = 2.5", "amount = 2.5", ["'amount'", "integer", "float"]),
    ("price as a string", "amount = 25", 'amount = "25"', 'amount = "25"', ["'amount'", "integer", "string"]),
    ("bad period_unit", 'period_unit = "month"', 'period_unit = "fortnight"', "fortnight", ["'period_unit'", "fortnight"]),
    ("unknown key", 'description = "Current weather"', 'descripton = "Current weather"', "descripton", ["unknown key 'descripton'"]),
    ("task without follow-ups", '  follow_ups = ["GET /jobs/{task}", "GET /jobs/{task}/result", "DELETE /jobs/{task}"]\n', "",
     ("[[routes.offers]]", 5), ["missing required key 'follow_ups'"]),
    ("empty follow-ups", 'follow_ups = ["GET /jobs/{task}", "GET /jobs/{task}/result", "DELETE /jobs/{task}"]', "follow_ups = []",
     "follow_ups = []", ["'follow_ups'", "empty"]),
    ("follow-up without {task}", '"DELETE /jobs/{task}"]', '"DELETE /jobs/all"]', "DELETE /jobs/all", ["{task}"]),
    ("bad refund rule", 'refund = "full"', 'refund = "half"', 'refund = "half"', ["'refund'", "half"]),
    ("duplicate route", 'path = "/items/special"', 'path = "/items/{x}"', ("[[routes]]", 5), ["already defined at line"]),
    ("bad method", 'method = "post"', 'method = "FETCH"', 'method = "FETCH"', ["'method'"]),
    ("covers an unknown route", 'covers = ["GET /forecast"]', 'covers = ["GET /forecasts"]', "covers =", ["not a route"]),
    ("two unit offers", '  model = "transaction"\n  amount = 100', '  model = "unit"\n  unit = "x"\n  id = "u2"\n  amount = 100',
     ('model = "unit"', 2), ["only one 'unit' offer"]),
    ("duplicate offer id", '  model = "transaction"\n  amount = 100', '  model = "transaction"\n  id = "unit"\n  amount = 100',
     'id = "unit"', ["already used"]),
    ("follow-up is a priced route", '"DELETE /jobs/{task}"]', '"GET /items/{task}"]', "follow_ups =", ["also a priced route"]),
    ("missing currency", 'currency = "usd"\n', "", ("[[routes.offers]]", 1), ["missing required key 'currency'"]),
    ("bad version", 'version = "2025-06-01.1"', 'version = "2025 June"', "version =", ["'version'"]),
    ("zero per", "max_units = 14", "max_units = 14\n  per = 0", "per = 0", ["'per'", "> 0"]),
    ("bad anchor", 'period_unit = "month"', 'period_unit = "month"\n  anchor = "2025-02-30T00:00:00Z"', "anchor =", ["anchor"]),
]


@pytest.mark.parametrize("name,replace,by,anchor,words", MISTAKES, ids=[m[0] for m in MISTAKES])
def test_invalid_price_list_names_the_line_and_the_problem(name, replace, by, anchor, words):
    """PRICE-LIST-01, PRICE-LIST-02, PRICE-LIST-03: each kind of mistake is refused with
    `prices.toml:LINE: problem`, LINE being the key's line (or its table's header when it is missing)."""
    edited = PRICE_LIST.replace(replace, by, 1)
    err = _mistake(replace, by)
    needle, occurrence = anchor if isinstance(anchor, tuple) else (anchor, 1)
    expected_line = _line_of(needle, edited, occurrence)
    assert f"prices.toml:{expected_line}:" in str(err), (str(err), expected_line)
    first = str(err).split("; ")[0]
    for word in words:
        assert word in str(err), (word, str(err))
    assert first.startswith("prices.toml:")


def test_missing_key_points_at_the_offer_header():
    """PRICE-LIST-03: a missing amount is reported on the line of its [[routes.offers]] header."""
    edited = PRICE_LIST.replace("  amount = 500\n", "")
    err = _mistake("  amount = 500\n", "")
    header = next(n for n, line in enumerate(edited.splitlines(), 1) if "[[routes.offers]]" in line and n > _line_of("/jobs", edited))
    assert err.errors == [(header, "missing required key 'amount'")]
    assert str(err) == f"prices.toml:{header}: missing required key 'amount'"


def test_toml_syntax_error_names_the_line():
    """PRICE-LIST-01, PRICE-LIST-03: malformed TOML is refused at the line tomllib reports."""
    err = _mistake("amount = 25", "amount = = 25")
    assert err.line == _line_of("amount = = 25", PRICE_LIST.replace("amount = 25", "amount = = 25"))
    assert "not valid TOML" in str(err)
    err = _mistake('plan = "weather-pro"', 'plan = "weather-pro"\n  plan = "again"')
    assert "not valid TOML" in str(err) and err.line == _line_of('plan = "again"', PRICE_LIST.replace('plan = "weather-pro"', 'plan = "weather-pro"\n  plan = "again"'))


def test_every_mistake_is_reported_in_line_order():
    """PRICE-LIST-03: two mistakes give two `source:LINE:` entries, in line order."""
    text = PRICE_LIST.replace("amount = 25", "amount = 0").replace("amount = 3\n", "amount = 3.5\n")
    with pytest.raises(PriceListError) as info:
        load_price_list(text, source="p.toml")
    assert [line for line, _ in info.value.errors] == [_line_of("amount = 0", text), _line_of("amount = 3.5", text)]


def test_seat_plans_must_agree_across_routes():
    """PRICE-LIST-02: one plan offered on two routes with other terms is refused at the second."""
    text = PRICE_LIST.replace('  model = "transaction"\n  amount = 100',
                              '  model = "seat"\n  plan = "weather-pro"\n  amount = 901\n  period_unit = "month"\n'
                              '  covers = ["GET /weather"]')
    with pytest.raises(PriceListError) as info:
        load_price_list(text, source="p.toml")
    assert info.value.line == _line_of('plan = "weather-pro"', text, 2) and "other terms" in str(info.value)
    same = PRICE_LIST.replace('  model = "transaction"\n  amount = 100',
                              '  model = "seat"\n  plan = "weather-pro"\n  amount = 900\n  period_unit = "month"\n'
                              '  covers = ["GET /weather"]')
    assert load_price_list(same, source="p.toml").offer("GET /forecast", "weather-pro").covers == ("GET /forecast", "GET /weather")


def test_reload_needs_a_new_version_and_old_quotes_keep_their_terms():
    """PRICE-VER-02, PRICE-VER-03: a changed list under the running version is refused (naming the
    version line); an old offer's terms come from its own pricing member, not from the new list."""
    old = price_list()
    check_reload(old, load_price_list(PRICE_LIST, source="prices.toml"))  # same content: fine
    with pytest.raises(PriceListError) as info:
        check_reload(old, load_price_list(PRICE_LIST.replace("amount = 25", "amount = 30"), source="prices.toml"))
    assert info.value.line == _line_of("version =", PRICE_LIST) and "new version" in str(info.value)
    new = load_price_list(PRICE_LIST.replace("2025-06-01.1", "2025-07-01").replace("grant_ttl = 3600", "grant_ttl = 60"),
                          source="prices.toml")
    check_reload(old, new)
    quoted = old.offers_for("POST", "/jobs")[0].pricing_member()
    assert (quoted["priceList"], quoted["grantTtl"]) == ("2025-06-01.1", "3600")
    assert new.offers_for("POST", "/jobs")[0].pricing_member()["grantTtl"] == "60"


# -- seat periods ---------------------------------------------------------------------------


def test_fixed_periods_from_the_anchor():
    """PRICE-SEAT-02: hour/day/week periods are whole multiples from the anchor; bounds are [start, end)."""
    anchor = datetime(2025, 1, 1, tzinfo=UTC)
    assert period_index(anchor, anchor, "day") == 0
    assert period_index(anchor, anchor + timedelta(days=1) - timedelta(microseconds=1), "day") == 0
    assert period_index(anchor, anchor + timedelta(days=1), "day") == 1
    assert period_index(anchor, anchor - timedelta(seconds=1), "day") == -1
    assert period_index(anchor, anchor + timedelta(days=20), "week", 2) == 1
    assert period_bounds(anchor, 1, "week", 2) == (anchor + timedelta(days=14), anchor + timedelta(days=28))
    assert period_index(anchor, anchor + timedelta(hours=5), "hour", 3) == 1


def test_calendar_months_clamp_to_the_month_end_from_the_anchor():
    """PRICE-SEAT-02: months are cut from the anchor, the 31st clamped to the month's last day,
    never chained from the previous end; every instant lies in exactly one period."""
    anchor = datetime(2024, 1, 31, 9, 0, tzinfo=UTC)
    starts = [period_bounds(anchor, k, "month")[0] for k in range(4)]
    assert starts == [datetime(2024, 1, 31, 9, tzinfo=UTC), datetime(2024, 2, 29, 9, tzinfo=UTC),
                      datetime(2024, 3, 31, 9, tzinfo=UTC), datetime(2024, 4, 30, 9, tzinfo=UTC)]
    assert period_index(anchor, datetime(2024, 2, 29, 8, 59, 59, tzinfo=UTC), "month") == 0
    assert period_index(anchor, datetime(2024, 2, 29, 9, tzinfo=UTC), "month") == 1
    assert period_index(anchor, datetime(2024, 3, 31, 8, tzinfo=UTC), "month") == 1
    assert period_index(anchor, datetime(2023, 12, 31, 9, tzinfo=UTC), "month") == -1
    assert period_bounds(anchor, 0, "year") == (anchor, datetime(2025, 1, 31, 9, tzinfo=UTC))
    assert period_index(anchor, datetime(2027, 6, 1, tzinfo=UTC), "month", 6) == 6
    for k in range(-3, 30):
        start, end = period_bounds(anchor, k, "month", 2)
        assert period_index(anchor, start, "month", 2) == k
        assert period_index(anchor, end - timedelta(microseconds=1), "month", 2) == k


def test_missed_periods_do_not_accumulate_and_one_charge_per_period():
    """PRICE-SEAT-03, PRICE-SEAT-04: a second charge within a period is refused (the period stays
    covered); after idle months the index jumps and only the current period can be charged, once."""
    seat = price_list().offer("GET /weather", "weather-pro")
    agent = SigningKey.generate().did
    sub = subscription_id(REALM, seat.plan, agent)
    records = SeatRecords()
    k = seat.period_index(T0)
    records.reserve(sub, k, "chal-1")
    with pytest.raises(SeatAlreadyPaid) as info:
        records.reserve(sub, seat.period_index(T0 + timedelta(days=5)), "chal-2")
    assert info.value.status == 409 and info.value.extensions == {"subscriptionId": sub, "period": k}
    assert records.paid(sub, k)
    later = T0 + timedelta(days=100)  # three periods unused
    k2 = seat.period_index(later)
    assert k2 == k + 3
    records.reserve(sub, k2, "chal-3")  # one charge, for the current period only
    assert not any(records.paid(sub, j) for j in (k + 1, k + 2))
    records.release(sub, k2, "chal-other")  # only the challenge that reserved it may release it
    assert records.paid(sub, k2)
    records.release(sub, k2, "chal-3")  # settlement failed: the period can be paid again
    records.reserve(sub, k2, "chal-4")


def test_seat_request_members_describe_the_quoted_period():
    """PRICE-SEAT-01: periodUnit, periodCount, periodSeconds (of the quoted period) and
    subscriptionExpires (its end); the subscription id is stable per realm, plan and agent."""
    seat = price_list().offer("GET /weather", "weather-pro")
    doc = seat.subscription_request(datetime(2025, 2, 10, tzinfo=UTC))
    assert (doc["periodUnit"], doc["periodCount"], doc["periodSeconds"], doc["subscriptionExpires"]) == (
        "month", "1", str(28 * 86400), "2025-03-01T00:00:00Z")
    assert doc["pricing"]["periodStart"] == "2025-02-01T00:00:00Z" and doc["pricing"]["covers"] == ["GET /weather", "GET /forecast"]
    a, b = SigningKey.generate().did, SigningKey.generate().did
    assert subscription_id(REALM, "p", a) == subscription_id(REALM, "p", a)
    assert len({subscription_id(REALM, "p", a), subscription_id(REALM, "p", b), subscription_id("other", "p", a),
                subscription_id(REALM, "q", a)}) == 4
    assert subscription_id(REALM, "p", a).startswith("sub_") and len(subscription_id(REALM, "p", a)) == 26


# -- grants -------------------------------------------------------------------------------


@pytest.fixture
def keys():
    return SigningKey.generate(), SigningKey.generate()  # seller receipt key, agent key


def _task_grant(seller, agent, task="job-1", now=T0, realm=REALM):
    offer = price_list().offers_for("POST", "/jobs")[0]
    return issue_grant(seller, task_grant_claims(realm=realm, agent=agent.did, task_id=task, offer=offer,
                                                 challenge_id="chal-1", now=now))


def test_task_grant_is_accepted_for_its_task_agent_seller_and_routes(keys):
    """PRICE-GRANT-01, PRICE-GRANT-02, PRICE-TASK-02: an EdDSA JWS typed mpp-grant+jwt by the receipt
    key, claims as the table says; verified for its task, agent, realm and follow-up routes."""
    seller, agent = keys
    token = _task_grant(seller, agent)
    header = jwt.get_unverified_header(token)
    assert (header["alg"], header["typ"], header["kid"]) == ("EdDSA", "mpp-grant+jwt", seller.kid)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["routes"] == ["GET /jobs/job-1", "GET /jobs/job-1/result", "DELETE /jobs/job-1"]
    assert (claims["iss"], claims["aud"], claims["sub"], claims["kind"], claims["task"], claims["priceList"]) == (
        REALM, REALM, agent.did, "task", "job-1", "2025-06-01.1")
    assert claims["exp"] - claims["iat"] == 3600 and claims["jti"].startswith("grt_")
    for jwks in ([seller], {"keys": [seller.jwk()]}):
        grant = verify_grant(token, jwks, realm=REALM, agent=agent.did, now=T0 + timedelta(minutes=59),
                             task_id="job-1", route=("DELETE", "/jobs/job-1"))
        assert (grant.kind, grant.task, grant.agent, grant.challenge_id) == ("task", "job-1", agent.did, "chal-1")


def test_task_grant_refused_for_another_task_agent_seller_route_and_after_expiry(keys):
    """PRICE-GRANT-02, PRICE-TASK-03, PRICE-ERR-01: each mismatch has its own problem (403, no challenge)."""
    seller, agent = keys
    token = _task_grant(seller, agent)
    ok = dict(realm=REALM, agent=agent.did, now=T0, task_id="job-1", route=("GET", "/jobs/job-1"))
    cases = [
        (GrantTask, dict(ok, task_id="job-2", route=("GET", "/jobs/job-2"))),
        (GrantAgent, dict(ok, agent=SigningKey.generate().did)),
        (GrantAudience, dict(ok, realm="other.example.com")),
        (GrantExpired, dict(ok, now=T0 + timedelta(seconds=3600))),
        (GrantRoute, dict(ok, task_id=None, route=("POST", "/jobs"))),
    ]
    for problem, kwargs in cases:
        with pytest.raises(problem) as info:
            verify_grant(token, [seller], **kwargs)
        assert info.value.status == 403 and info.value.type == "urn:mpp:problem:" + problem.slug
    with pytest.raises(GrantInvalid):  # another seller's key: not ours at all
        verify_grant(_task_grant(SigningKey.generate(), agent), [seller], **ok)
    with pytest.raises(GrantAudience):  # our key, issued under another realm
        verify_grant(_task_grant(seller, agent, realm="other.example.com"), [seller], **ok)


def test_tampered_or_foreign_tokens_are_grant_invalid(keys):
    """PRICE-GRANT-02: a changed claim, another alg or typ, a receipt JWS or garbage is grant-invalid."""
    seller, agent = keys
    token = _task_grant(seller, agent)
    head, body, sig = token.split(".")
    claims = json.loads(b64url_decode(body))
    claims["task"] = "job-2"
    claims["routes"] = ["GET /jobs/job-2"]
    forged = ".".join([head, b64url_encode(json.dumps(claims).encode()), sig])
    ok = dict(realm=REALM, agent=agent.did, now=T0)
    receipt_like = jwt.encode(claims, seller.private_key, algorithm="EdDSA", headers={"kid": seller.kid, "typ": "mpp-receipt+jwt"})
    hs = jwt.encode(claims, "secret-secret-secret-secret-1234", algorithm="HS256", headers={"kid": seller.kid, "typ": "mpp-grant+jwt"})
    for bad in (forged, receipt_like, hs, "not-a-jws", token[:-4] + "AAAA"):
        with pytest.raises(GrantInvalid):
            verify_grant(bad, [seller], **ok)
    with pytest.raises(ValueError):  # the seller never signs malformed claims
        issue_grant(seller, {**claims, "kind": "forever"})


def test_seat_grant_covers_its_routes_until_the_period_ends(keys):
    """PRICE-SEAT-05, PRICE-SEAT-06, PRICE-GRANT-02: a seat grant covers the plan's routes for the
    agent until the period's end, and nothing else."""
    seller, agent = keys
    seat = price_list().offer("GET /weather", "weather-pro")
    k = seat.period_index(T0)
    claims = seat_grant_claims(realm=REALM, agent=agent.did, offer=seat, period=k, challenge_id="chal-9", now=T0)
    token = issue_grant(seller, claims)
    end = seat.period_bounds(k)[1]
    grant = verify_grant(token, [seller], realm=REALM, agent=agent.did, now=end - timedelta(seconds=1), route=("GET", "/forecast"))
    assert (grant.kind, grant.period, grant.subscription_id, grant.expires) == ("seat", k, subscription_id(REALM, "weather-pro", agent.did), end)
    with pytest.raises(GrantExpired):
        verify_grant(token, [seller], realm=REALM, agent=agent.did, now=end, route=("GET", "/forecast"))
    with pytest.raises(GrantRoute):
        verify_grant(token, [seller], realm=REALM, agent=agent.did, now=T0, route=("POST", "/jobs"))
    with pytest.raises(GrantTask):  # a seat grant is no task grant
        verify_grant(token, [seller], realm=REALM, agent=agent.did, now=T0, task_id="job-1")


# -- proofs -------------------------------------------------------------------------------


def test_grant_proof_binds_the_request_and_the_agent(keys):
    """PRICE-GRANT-03, PRICE-GRANT-05: the proof verifies for the very request; another method,
    path, query or body, a stale or future timestamp, another key or a malformed field is refused."""
    seller, agent = keys
    grant = verify_grant(_task_grant(seller, agent), [seller], realm=REALM, agent=agent.did, now=T0)
    value = sign_grant_proof(agent, grant_id=grant.jti, method="GET", path="/jobs/job-1", query="wait=1", now=T0)
    proof = parse_grant_proof(value)
    assert proof.agent == agent.did and value.startswith(f"agent={agent.did}; t=")
    verify_grant_proof(value, grant=grant, method="GET", path="/jobs/job-1", query="wait=1", now=T0 + timedelta(seconds=60))
    refused = [
        dict(method="DELETE", path="/jobs/job-1", query="wait=1", now=T0),
        dict(method="GET", path="/jobs/job-1/result", query="wait=1", now=T0),
        dict(method="GET", path="/jobs/job-1", query="", now=T0),
        dict(method="GET", path="/jobs/job-1", query="wait=1", body=b"x", now=T0),
        dict(method="GET", path="/jobs/job-1", query="wait=1", now=T0 + timedelta(seconds=61)),
        dict(method="GET", path="/jobs/job-1", query="wait=1", now=T0 - timedelta(seconds=61)),
    ]
    for kwargs in refused:
        with pytest.raises(GrantProofInvalid):
            verify_grant_proof(value, grant=grant, **kwargs)
    thief = SigningKey.generate()
    stolen = sign_grant_proof(thief, grant_id=grant.jti, method="GET", path="/jobs/job-1", query="wait=1", now=T0)
    with pytest.raises(GrantProofInvalid):  # names another agent
        verify_grant_proof(stolen, grant=grant, method="GET", path="/jobs/job-1", query="wait=1", now=T0)
    forged = stolen.replace(thief.did, agent.did)  # names the agent, signed by another key
    with pytest.raises(GrantProofInvalid):
        verify_grant_proof(forged, grant=grant, method="GET", path="/jobs/job-1", query="wait=1", now=T0)
    no_nonce = f"agent={proof.agent}; t={proof.t}; sig={proof.sig}"  # the form before nonces
    for bad in ("", "agent=x; t=1; sig=y", value.replace("; ", ","), value + "; extra=1", no_nonce,
                value.replace(f"nonce={proof.nonce}", f"nonce={proof.nonce[:21]}")):
        with pytest.raises(GrantProofInvalid):
            parse_grant_proof(bad)
    tampered = value.replace(f"nonce={proof.nonce}", "nonce=" + ("A" if proof.nonce[0] != "A" else "B") + proof.nonce[1:])
    with pytest.raises(GrantProofInvalid):  # the nonce is signed
        verify_grant_proof(tampered, grant=grant, method="GET", path="/jobs/job-1", query="wait=1", now=T0)


def test_alike_requests_in_one_second_get_different_proofs(keys):
    """PRICE-GRANT-05: the same request signed twice at the same instant gives two proofs (a new
    nonce each), both valid."""
    seller, agent = keys
    grant = verify_grant(_task_grant(seller, agent), [seller], realm=REALM, agent=agent.did, now=T0)
    a, b = (sign_grant_proof(agent, grant_id=grant.jti, method="GET", path="/jobs/job-1", now=T0) for _ in range(2))
    assert a != b and parse_grant_proof(a).nonce != parse_grant_proof(b).nonce
    for value in (a, b):
        verify_grant_proof(value, grant=grant, method="GET", path="/jobs/job-1", now=T0)


def test_seen_proofs_refuse_a_replay_until_the_window_ends(keys):
    """PRICE-GRANT-06: an accepted proof is refused again, until t + window; another proof of the
    same request at the same instant is admitted; expired entries are dropped."""
    seller, agent = keys
    grant = verify_grant(_task_grant(seller, agent), [seller], realm=REALM, agent=agent.did, now=T0)
    seen = SeenGrantProofs()
    first, second = (parse_grant_proof(sign_grant_proof(agent, grant_id=grant.jti, method="GET", path="/jobs/job-1", now=T0))
                     for _ in range(2))
    seen.admit(grant, first, T0)
    seen.admit(grant, second, T0)
    for later in (0, 1, 60):
        with pytest.raises(GrantProofInvalid, match="already been used"):
            seen.admit(grant, first, T0 + timedelta(seconds=later))
    other = verify_grant(_task_grant(seller, agent, task="job-2"), [seller], realm=REALM, agent=agent.did, now=T0)
    seen.admit(other, first, T0)  # the same nonce under another grant is another proof
    later = parse_grant_proof(sign_grant_proof(agent, grant_id=grant.jti, method="GET", path="/jobs/job-1",
                                               now=T0 + timedelta(seconds=61)))
    seen.admit(grant, later, T0 + timedelta(seconds=61))  # past the window of the first three: forgotten
    assert len(seen) == 1


def test_seen_proofs_are_bounded(keys):
    """PRICE-GRANT-06: the record never holds more than its capacity; when full it forgets the
    proof whose window ends first, and still refuses the replay of every proof it holds."""
    seller, agent = keys
    grant = verify_grant(_task_grant(seller, agent), [seller], realm=REALM, agent=agent.did, now=T0)
    seen = SeenGrantProofs(capacity=3)
    proofs = [parse_grant_proof(sign_grant_proof(agent, grant_id=grant.jti, method="GET", path="/jobs/job-1",
                                                 now=T0 + timedelta(seconds=i))) for i in range(5)]
    for p in proofs:
        seen.admit(grant, p, T0 + timedelta(seconds=4))
        assert len(seen) <= 3
    for p in proofs[2:]:
        with pytest.raises(GrantProofInvalid):
            seen.admit(grant, p, T0 + timedelta(seconds=4))
    seen.admit(grant, proofs[0], T0 + timedelta(seconds=4))  # the earliest window went first
    with pytest.raises(ValueError):
        SeenGrantProofs(capacity=0)


# -- mandates and the buyer's choice --------------------------------------------------------------


def test_mandate_restrictions_intersect_along_the_chain():
    """PRICE-MDT-01, PRICE-MDT-03: allowed models intersect, the unit price limit is the lowest;
    malformed claims are refused."""
    r = restrictions_from_claims([{"models": ["transaction", "unit", "seat"], "max_unit_price": {"amount": 3, "per": 1000}},
                                  {"models": ["unit", "transaction"], "max_unit_price": {"amount": 1, "per": 500}},
                                  {}])
    assert r.models == frozenset({"transaction", "unit"}) and r.max_unit_price == Fraction(1, 500)
    assert restrictions_from_claims([{}]).models is None
    for bad in ({"models": []}, {"models": ["rent"]}, {"models": ["unit", "unit"]}, {"models": "unit"},
                {"max_unit_price": {"amount": 1.5}}, {"max_unit_price": {"amount": 1, "per": 0}},
                {"max_unit_price": {"amount": True}}, {"max_unit_price": 3}):
        with pytest.raises(ValueError):
            restrictions_from_claims([bad])


def test_seller_refuses_models_and_unit_prices_the_mandate_excludes():
    """PRICE-MDT-02, PRICE-ERR-01: a seat under "no recurring commitments" is model-not-allowed; a
    unit price above max_unit_price is unit-price-too-high (both 403); exact fractions decide."""
    pl = price_list()
    seat = pl.offer("GET /weather", "weather-pro")
    unit = pl.offers_for("GET", "/forecast")[0]  # 10 per 1 day
    no_commitments = restrictions_from_claims([{"models": ["transaction", "unit", "task"]}])
    with pytest.raises(ModelNotAllowed) as info:
        check_offer_allowed(seat, no_commitments)
    assert info.value.status == 403 and info.value.extensions == {"model": "seat"}
    check_offer_allowed(unit, restrictions_from_claims([{"max_unit_price": {"amount": 10}}]))
    with pytest.raises(UnitPriceTooHigh):
        check_offer_allowed(unit, restrictions_from_claims([{"max_unit_price": {"amount": 19, "per": 2}}]))
    check_offer_allowed(seat, restrictions_from_claims([{"max_unit_price": {"amount": 0}}]))  # limits unit offers only


def test_choose_offer_picks_the_cheapest_expected_total():
    """PRICE-BUY-01: the lowest expected total for the planned work wins, ties to the earlier offer."""
    per_request = QuotedOffer("transaction", 25, "usd")
    seat = QuotedOffer("seat", 900, "usd")
    metered = QuotedOffer("unit", 2, "usd", per=1000, max_units=4000)
    task = QuotedOffer("task", 500, "usd")
    offers = [per_request, seat, metered]
    assert choose_offer(offers, planned_requests=3) is metered  # 3 x 4000 units unknown -> 24 < 75
    assert choose_offer(offers, planned_requests=3, planned_units=100_000) is per_request  # 200 > 75
    assert choose_offer([per_request, seat], planned_requests=100) is seat  # 2500 > 900
    assert choose_offer([per_request, seat], planned_requests=36) is per_request  # 900 == 900: the earlier
    assert choose_offer([seat, per_request], planned_requests=36) is seat
    assert expected_total(task, planned_requests=2) == 1000
    assert expected_total(seat, planned_requests=1000, planned_periods=2) == 1800
    assert expected_total(metered, planned_requests=1, planned_units=1500) == 3
    assert choose_offer([], planned_requests=1) is None


def test_choose_offer_honours_allowed_models_max_unit_price_and_currency():
    """PRICE-BUY-01, PRICE-BUY-02, PRICE-MDT-02: only models the mandate allows, unit offers within
    the limit, offers in the chosen currency; None when nothing is left."""
    per_request = QuotedOffer("transaction", 25, "usd")
    seat = QuotedOffer("seat", 900, "usd")
    metered = QuotedOffer("unit", 2, "usd", per=1000, max_units=4000)
    euro = QuotedOffer("transaction", 1, "eur")
    offers = [per_request, seat, metered, euro]
    assert choose_offer(offers, planned_requests=100, allowed_models=["transaction", "unit"], planned_units=10**7) is per_request
    assert choose_offer(offers, planned_requests=100, allowed_models=["transaction", "unit", "seat"], planned_units=10**7) is seat
    assert choose_offer(offers, planned_requests=3, max_unit_price=(1, 1000)) is per_request  # 2/1000 > 1/1000
    assert choose_offer(offers, planned_requests=3, max_unit_price=Fraction(2, 1000)) is metered
    assert choose_offer(offers, planned_requests=1, allowed_models=["task"]) is None
    assert choose_offer(offers, planned_requests=1, currency="eur") is euro


def test_quoted_offer_reads_challenges_with_and_without_a_pricing_member():
    """PRICE-MODEL-04, PRICE-MDT-02: the model is pricing.model, or the intent's model without one."""
    pl = price_list()
    task = pl.offers_for("POST", "/jobs")[0]
    q = quoted_offer({"amount": "500", "currency": "usd", "recipient": "acct:s", "pricing": task.pricing_member()}, "charge")
    assert (q.model, q.amount, q.offer, q.price_list) == ("task", 500, "task", "2025-06-01.1")
    s = quoted_offer({"amount": "2", "currency": "usd", "unitType": "token",
                      "methodDetails": {"ledger": "l", "per": "1000", "maxUnits": "4000"}}, "session")
    assert (s.model, s.per, s.max_units) == ("unit", 1000, 4000)
    assert quoted_offer({"amount": "9", "currency": "usd"}, "subscription").model == "seat"
    assert quoted_offer({"amount": "9", "currency": "usd"}, "charge").model == "transaction"


# -- usage export -------------------------------------------------------------------------------


def test_usage_rows_group_sums_and_totals():
    """PRICE-USAGE-01, PRICE-USAGE-02, PRICE-USAGE-03: rows in the window only; group rows sum their
    purchases; per-currency totals of net equal what was transferred minus refunds; amounts are strings."""
    def rec(minutes, agent, route, model, amount, refunded=0, units=1, currency="usd"):
        return UsageRecord(T0 + timedelta(minutes=minutes), agent, "did:key:zP", route, model, model, "v1", currency,
                           units, amount, refunded, f"tx-{minutes}")
    records = [rec(0, "a", "GET /weather", "transaction", 25), rec(1, "b", "GET /weather", "transaction", 25),
               rec(2, "a", "POST /jobs", "task", 500, refunded=500), rec(3, "a", "GET /forecast", "unit", 30, units=3000),
               rec(90, "a", "GET /weather", "transaction", 25), rec(4, "b", "GET /items/{id}", "transaction", 3, currency="eur")]
    out = summarize_usage(records, since=T0, until=T0 + timedelta(hours=1))
    assert len(out["rows"]) == 5 and out["rows"][2]["net"] == "0" and out["rows"][0]["amount"] == "25"
    assert out["totals"] == {"eur": {"purchases": 1, "units": 1, "amount": "3", "refunded": "0", "net": "3"},
                             "usd": {"purchases": 4, "units": 3003, "amount": "580", "refunded": "500", "net": "80"}}
    transfers = sum(r.amount for r in records[:4]) - sum(r.refunded for r in records[:4])
    assert int(out["totals"]["usd"]["net"]) == transfers
    by_agent = summarize_usage(records, since=T0, until=T0 + timedelta(hours=1), by="agent")
    assert by_agent["rows"] == [
        {"agent": "a", "currency": "usd", "purchases": 3, "units": 3002, "amount": "555", "refunded": "500", "net": "55"},
        {"agent": "b", "currency": "eur", "purchases": 1, "units": 1, "amount": "3", "refunded": "0", "net": "3"},
        {"agent": "b", "currency": "usd", "purchases": 1, "units": 1, "amount": "25", "refunded": "0", "net": "25"},
    ]
    assert json.loads(json.dumps(by_agent))["by"] == "agent"
    with pytest.raises(ValueError):
        summarize_usage(records, since=T0, until=T0, by="colour")


def test_anchor_as_toml_datetime_and_keys_inside_multiline_strings_are_not_keys():
    """PRICE-LIST-01, PRICE-LIST-03: a TOML date-time anchor is accepted (a local one refused); text
    inside a multi-line string does not shift the reported line of a later mistake."""
    text = PRICE_LIST.replace('period_unit = "month"', 'period_unit = "month"\n  anchor = 2025-01-15T00:00:00Z')
    seat = load_price_list(text, source="p.toml").offer("GET /weather", "weather-pro")
    assert seat.period_bounds(0)[0] == datetime(2025, 1, 15, tzinfo=UTC)
    with pytest.raises(PriceListError, match="local date-time"):
        load_price_list(PRICE_LIST.replace('period_unit = "month"', 'period_unit = "month"\n  anchor = 2025-01-15T00:00:00'),
                        source="p.toml")
    text = PRICE_LIST.replace('description = "Current weather"', 'description = """\namount = 1\n[[routes]]\n"""').replace(
        "amount = 7", "amount = 7.0")
    with pytest.raises(PriceListError) as info:
        load_price_list(text, source="p.toml")
    assert info.value.errors == [(_line_of("amount = 7.0", text), info.value.errors[0][1])]

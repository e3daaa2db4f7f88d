"""Throughput and latency of paid HTTP calls, side by side in one run (issue 6).

    .venv/bin/python benchmarks/bench.py [--quick] [--only NAME[,NAME]] [--rounds N] [--json PATH]

Each scenario gets a seller process of its own on 127.0.0.1, and a load generator in another
process (an aiohttp client with a bounded number of connections). With two CPUs or more, the
seller is pinned to one CPU and the load generator to another. A scenario runs a warm-up, then
a measured window, at saturation (closed loop: every connection sends its next call as soon as
the last one is answered). The whole run stops by itself (about 2 to 3 minutes by default, the
scenario list times N with --rounds N).

Scenarios (a "call" is what a buyer wants done once; the table shows HTTP requests/s and calls/s):

  plain                   a bare aiohttp handler returning a small JSON: the ceiling. 1 call = 1 request.
  charge-sqlite           mpp.aio.Seller, `charge` settled on the embedded SQLite ledger, payment store on
                          SQLite. 1 call = 1 purchase = 2 requests: the unpaid request (402 with a fresh
                          challenge) and the retry carrying the signed credential (200 with a receipt).
  charge-sqlite-identity  the same on a route that requires identity: the credential carries a mandate
                          chain and the agent's proof; the seller trusts the principal, checks chain,
                          revocation and budgets, and the ledger checks the chain and budget again.
  floor-charge-sqlite     the floors of charge-sqlite and charge-sqlite-identity (benchmarks/bench_floor.py):
  floor-charge-sqlite-identity  the same buyers paying over the same wire a minimal seller that does
                          only the unavoidable work. See "The floors" below.
  session-voucher         a metered route (Seller.meter, SqliteSessionStore): each worker opened a session
                          during warm-up (PaymentClient with SessionPolicy); 1 call = 1 request carrying
                          a voucher, no 402 first.
  floor-session-voucher   its floor (bench_floor.py session): the same buyers and sessions.
  trivial-method          our Seller with a trivial test method instead of the ledger (payload
                          {"token": "bench"}, settlement without I/O); the challenge is still consumed
                          exactly once in the SQLite payment store. 1 call = 2 requests.
  pympp-trivial           the PyPI `pympp` seller (in .venv-interop) with the same test method, served
                          through aiohttp, consuming each challenge once in its own SQLite replay store
                          (pympp's SQLiteStore). 1 call = 2 requests.
  charge-pg               (PostgreSQL rows, see below) charge with payment store and ledger on PostgreSQL;
  floor-charge-pg         its floor: bench_floor.py with its ledger behind a PostgreSQL function;
  charge-pg-identity      the same with identity,
  floor-charge-pg-identity  and its floor.

Latency is per call (both round trips of a purchase). "ratio" is calls/s over plain's calls/s;
"CPU ratio" is plain's seller CPU time per call over this scenario's, which does not depend on
whether the load generator kept up. Then, for charge-sqlite-identity and trivial-method: the p99
latency added by payment at half of saturation: the scenario at a fixed rate of half its
measured calls/s (open loop), minus the plain handler's p99 at that same rate.

The floors. bench_floor.py is a small seller on aiohttp that speaks exactly our wire, so the
load generator's buyers (and mpp.aio.PaymentClient, which verifies its receipts against its JWKS:
tests/test_bench_smoke.py) pay it unchanged. Per purchase (charge floors) it does only this:
  - the unpaid request: one HMAC-SHA256 for the challenge id (mpp.protocol.challenge's slots; the
    route's fixed slots hashed once), the challenge text cached for the route but for id, expires and
    the opaque nonce; a 402 with the problem document.
  - the paid retry: the credential decoded with the stdlib (base64, json; no pydantic models); the
    echoed challenge checked (realm, method, intent, the request text equal to the one quoted, HMAC
    recomputed, not expired, opaque bound to this resource, no body); ONE Ed25519 verify of the
    payer's ledger authorization; with identity a SECOND, the agent's proof of possession, the mandate
    chain itself verified once (mpp.identity.verify_chain; scope, currency, ceiling, approval rules
    judged for the route's one price) and then cached by its token text, only its validity window
    checked per use; ONE durable write in one transaction that claims the challenge id (exactly once
    by primary key), checks both accounts and currency, that the signer (with identity: the mandate's
    principal) owns the payer account, revocation and the mandate's budget, then posts both legs (payer
    down, payee up) and counts the budget -- on SQLite (floor-charge-sqlite, -identity) one INSERT
    into floor_purchases whose triggers do the rest (autocommit, WAL, synchronous=NORMAL as our
    ledger); on PostgreSQL (floor-charge-pg, -identity) ONE round trip, `SELECT mpp_floor.purchase(...)`,
    a PL/pgSQL function the floor creates at startup in its own database, on an asyncpg pool whose
    connections are released without the reset query (create_pool(reset=<no-op>)); ONE Ed25519
    signature, the receipt JWS (the claims our seller signs, byte-for-byte the same encoding); a 200
    with Payment-Receipt.
Per request on a session (floor-session-voucher; the open, during warm-up, verifies the cap and voucher
signatures and puts the cap on hold on the floor's SQLite ledger in one INSERT): the credential
decoded with the stdlib; the session's terms cached in process (signer, cap, the voucher message's
fixed bytes); ONE Ed25519 verify of the voucher -- every voucher, as SESSION-VOUCHER-05 requires (a
floor skipping it would be faster, but anyone who learns a session id could spend it); ONE statement
in one transaction, durable before the response leaves: `UPDATE floor_sessions SET spent = spent +
cost, authorized = max(authorized, voucher), ... WHERE id = ? AND status = 'open' AND spent + cost <=
max(authorized, voucher) RETURNING spent, authorized`; ONE Ed25519 signature, the request's receipt
(our claims); a 200 with Payment-Receipt. The close (after the window) captures what was spent.
The floors do not: parse strictly (duplicate members, depth), negotiate Accept-Payment, bind bodies
(digest), replay Idempotency-Key answers or store the receipt, keep an audit log or a payment record
with states, refund a failed handler, take approvals, chains longer than one link, price lists,
other methods or several routes; the session floor no reservation before its handler (whose use is
known), no top-ups, in-band vouchers, streams or idle close. "floor share" = ours calls/s / its
floor's calls/s in the same run (both medians with --rounds): the fraction of the achievable rate that
we reach; "CPU share" = the floor's seller CPU per call / ours, which does not depend on whether the
load generator kept up. Floor shares are reported for charge-sqlite, charge-sqlite-identity,
session-voucher, charge-pg and charge-pg-identity; `--only NAME` brings NAME's floor along.

--rounds N (default 1) runs the whole scenario list N times, interleaved: round 1 runs every
scenario, then round 2 ..., so that drift on a shared machine falls on every row alike. Each row then
shows the median calls/s over the rounds with its min-max; floor shares and ratios come from the
medians; the other columns are those of the median round (every round's figures are in the JSON).
The fixed-rate latency runs are made once, after the rounds, at half the median.

Targets (goals printed next to the figures, not assertions): charge-sqlite-identity >= 0.33 of
plain; session-voucher >= 0.6 of plain; trivial-method >= 1.5 x pympp-trivial; p99 added by
payment at half saturation < 2 ms.

The seller's and load generator's CPU use is measured in each window, and so is everything else
the machine ran: a window where other processes took more than 0.15 of a core is measured once
more (not with --quick), keeping the quieter run; the table notes the disturbed ones that remain.

PostgreSQL rows: charge-pg and charge-pg-identity, whose seller keeps its payment store and its
(embedded) ledger in PostgreSQL, an empty database each, and their floors floor-charge-pg and
floor-charge-pg-identity, a database each too. By default the harness starts a
throwaway PostgreSQL for them (mpp.stores.pg.server, as `make test` does) and stops it at the end;
`--db postgresql://...` uses that server instead (a database is created on it per row), and
`--no-postgres` leaves the rows out, their floors with them.
"""

from __future__ import annotations

import argparse
import contextlib
import asyncio
import json
import multiprocessing
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_INTEROP_PYTHON = REPO / ".venv-interop" / "bin" / "python"
REALM = "bench.local"
PAYER = "acct:buyer"
PATH = "/item"
TARGETS_TEXT = {
    "identity": "charge-sqlite-identity >= 0.33 x plain",
    "session": "session-voucher >= 0.60 x plain",
    "peer": "trivial-method >= 1.5 x pympp-trivial",
    "latency": "p99 added by payment at half saturation < 2 ms",
}
LATENCY_SCENARIOS = ("charge-sqlite-identity", "trivial-method")
# our scenario -> its floor (bench_floor.py), measured in the same run: "floor share" = ours / floor calls/s
FLOORS = {"charge-sqlite": "floor-charge-sqlite", "charge-sqlite-identity": "floor-charge-sqlite-identity",
          "session-voucher": "floor-session-voucher",
          "charge-pg": "floor-charge-pg", "charge-pg-identity": "floor-charge-pg-identity"}
PG_NAMES = ["charge-pg", "floor-charge-pg", "charge-pg-identity", "floor-charge-pg-identity"]  # postgres_scenarios


@dataclass(frozen=True)
class Scenario:
    name: str
    seller: str  # bench_sellers.py KIND, "floor" / "floor-session" (bench_floor.py charge / session) or "pympp"
    buyer: str  # how the load generator pays: plain, ledger, identity, session, token
    summary: str
    stores: dict[str, str] = field(default_factory=dict)  # --store/--ledger/--sessions URL templates; {dir} = work dir
    identity: bool = False
    database_server: bool = False  # a separate server process (PostgreSQL) works for the seller: "other CPU" is partly it


def _sqlite(name: str) -> str:
    return "sqlite:///{dir}/" + name


SCENARIOS: list[Scenario] = [
    Scenario("plain", "plain", "plain", "bare aiohttp handler"),
    # the payment records in the ledger's database: one transaction per purchase (mpp.ledger.book)
    Scenario("charge-sqlite", "charge", "ledger", "charge, embedded SQLite ledger",
             {"store": _sqlite("ledger.db"), "ledger": _sqlite("ledger.db")}),
    # the floor of each (bench_floor.py): the same buyer, the same wire, only the unavoidable work
    Scenario("floor-charge-sqlite", "floor", "ledger", "the floor of charge-sqlite", {"ledger": _sqlite("ledger.db")}),
    Scenario("charge-sqlite-identity", "charge", "identity", "charge + mandate chain, SQLite",
             {"store": _sqlite("ledger.db"), "ledger": _sqlite("ledger.db")}, identity=True),
    Scenario("floor-charge-sqlite-identity", "floor", "identity", "the floor of charge-sqlite-identity",
             {"ledger": _sqlite("ledger.db")}, identity=True),
    Scenario("session-voucher", "session", "session", "session voucher, SQLite",
             {"store": _sqlite("payments.db"), "ledger": _sqlite("ledger.db"), "sessions": _sqlite("sessions.db")}),
    Scenario("floor-session-voucher", "floor-session", "session", "the floor of session-voucher", {"ledger": _sqlite("ledger.db")}),
    Scenario("trivial-method", "trivial", "token", "our seller, trivial method",
             {"store": _sqlite("payments.db")}),
    Scenario("pympp-trivial", "pympp", "token", "pympp seller, trivial method",
             {"replay": "{dir}/pympp-replay.db"}),
]


def postgres_scenarios(server: str) -> list[Scenario]:
    """The PostgreSQL rows: payment store and ledger in a database of their own on ``server``; each
    floor's tables and function in another."""
    from mpp.stores.pg.server import create_database

    plain_db, identity_db, floor_db, floor_identity_db = (create_database(server) for _ in range(4))
    return [
        Scenario("charge-pg", "charge", "ledger", "charge, payment store and ledger on PostgreSQL",
                 {"store": plain_db, "ledger": plain_db}, database_server=True),
        Scenario("floor-charge-pg", "floor", "ledger", "the floor of charge-pg", {"ledger": floor_db}, database_server=True),
        Scenario("charge-pg-identity", "charge", "identity", "charge + mandate chain, PostgreSQL",
                 {"store": identity_db, "ledger": identity_db}, identity=True, database_server=True),
        Scenario("floor-charge-pg-identity", "floor", "identity", "the floor of charge-pg-identity",
                 {"ledger": floor_identity_db}, identity=True, database_server=True),
    ]


# ==============================================================================================
# The seller process
# ==============================================================================================


class SellerProcess:
    """One seller in a subprocess, pinned to ``cpu``; stopped with SIGTERM, which reports its stats."""

    def __init__(self, scenario: Scenario, workdir: Path, *, cpu: int | None, interop_python: Path,
                 profile: Path | None) -> None:
        stores = {k: v.format(dir=workdir) for k, v in scenario.stores.items()}
        if scenario.seller == "pympp":
            cmd = [str(interop_python), str(HERE / "bench_pympp.py"), "--replay-db", stores["replay"]]
        elif scenario.seller in ("floor", "floor-session"):
            kind = "session" if scenario.seller == "floor-session" else "charge"
            cmd = [sys.executable, str(HERE / "bench_floor.py"), kind, "--workdir", str(workdir), "--ledger", stores["ledger"]]
            if scenario.identity:
                cmd.append("--identity")
        else:
            cmd = [sys.executable, str(HERE / "bench_sellers.py"), scenario.seller, "--workdir", str(workdir)]
            for name in ("store", "ledger", "sessions"):
                if name in stores:
                    cmd += [f"--{name}", stores[name]]
            if scenario.identity:
                cmd.append("--identity")
        if profile is not None:
            cmd += ["--profile", str(profile)]
        env = dict(os.environ)
        if cpu is not None:
            env["MPP_BENCH_CPU"] = str(cpu)
        if scenario.seller == "pympp":
            env.pop("PYTHONPATH", None)  # never let this project's `mpp` shadow pympp's
        self.cmd = cmd
        self.stderr_path = workdir / "seller.err"
        with open(self.stderr_path, "w") as err:  # a file, not a pipe: a chatty seller must never block on it
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env, cwd=str(workdir))
        if cpu is not None and hasattr(os, "sched_setaffinity"):
            try:
                os.sched_setaffinity(self.proc.pid, {cpu})
            except OSError:
                pass
        self.port = self._ready(timeout=60.0)
        self.pid = self.proc.pid

    def _ready(self, timeout: float) -> int:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                break
            line = self.proc.stdout.readline()
            if not line:
                break
            if line.startswith("ready "):
                return int(json.loads(line[6:])["port"])
        self.proc.kill()
        self.proc.communicate(timeout=10)
        err = self._stderr()
        last = (err.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"seller did not start ({last[:300]}): {' '.join(self.cmd)}\n{err}")

    def _stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def stop(self) -> dict[str, Any]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate(timeout=10)
        stats: dict[str, Any] = {}
        for line in out.splitlines():
            if line.startswith("stats "):
                stats = json.loads(line[6:])
        if self.proc.returncode not in (0, -signal.SIGTERM):
            stats["exit"] = self.proc.returncode
        if self._stderr().strip():
            stats["stderr"] = self._stderr()
        return stats


# ==============================================================================================
# The load generator (its own process)
# ==============================================================================================


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a whole process (all its threads), from /proc."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _machine_busy() -> float | None:
    """CPU seconds all CPUs of the machine spent busy so far (everything but idle and iowait)."""
    try:
        with open("/proc/stat") as fh:
            ticks = [int(x) for x in fh.readline().split()[1:]]
        return (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _own_cpu() -> float:
    t = os.times()
    return t.user + t.system


def _pct(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def _summary_ms(values: list[float]) -> dict[str, float | None]:
    v = sorted(values)
    return {
        "p50": _ms(_pct(v, 0.50)),
        "p90": _ms(_pct(v, 0.90)),
        "p99": _ms(_pct(v, 0.99)),
        "max": _ms(v[-1] if v else None),
        "mean": _ms(sum(v) / len(v) if v else None),
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


class Caller:
    """Makes one call of a scenario; counts the HTTP requests it sent."""

    def __init__(self, http: Any, url: str, buyer: str, workdir: Path) -> None:
        self.http, self.url, self.buyer = http, url, buyer
        self.requests = 0
        self.retry_latencies: list[float] = []  # the paid retry alone (purchases only), window only
        self.record_retries = False
        if buyer in ("ledger", "identity", "session"):
            import mpp
            from mpp.methods.ledger import LedgerBuyerMethod

            kit = json.loads((workdir / "kit.json").read_text())
            self.key = mpp.SigningKey.load(workdir / "agent.key")
            self.methods = [LedgerBuyerMethod(key=self.key, account=PAYER)]
            self.policy = mpp.BuyerPolicy(max_amount=1000)
            self.mandates = [kit["mandate"]]

    async def call(self) -> tuple[bool, str | None]:
        if self.buyer == "plain":
            self.requests += 1
            async with self.http.get(self.url) as resp:
                await resp.read()
                return resp.status == 200, None if resp.status == 200 else f"HTTP {resp.status}"
        return await self._purchase()

    async def _purchase(self) -> tuple[bool, str | None]:
        import mpp
        from mpp.protocol.models import Credential

        self.requests += 1
        async with self.http.get(self.url) as resp:
            await resp.read()
            if resp.status != 402:
                return False, f"unpaid request answered {resp.status}"
            challenges = mpp.parse_challenges(resp.headers.getall("WWW-Authenticate", ()), skip_invalid=True)
        if self.buyer == "token":
            challenge = next(c for c in challenges if c.method == "test")
            authorization = mpp.format_credential(Credential(challenge=challenge, payload={"token": "bench"}))
        else:
            quote = mpp.select_quote(challenges, self.methods, self.policy, datetime.now(timezone.utc))
            extensions = None
            if self.buyer == "identity":
                from mpp.identity import identity_member

                extensions = {"identity": identity_member(self.mandates, self.key, quote.challenge, quote.request)}
            authorization = mpp.sign_quote(quote, extensions)
        self.requests += 1
        t0 = time.perf_counter()
        async with self.http.get(self.url, headers={"Authorization": authorization}) as resp:
            body = await resp.read()
            ok = resp.status == 200 and bool(resp.headers.get("Payment-Receipt"))
        if self.record_retries:
            self.retry_latencies.append(time.perf_counter() - t0)
        return ok, None if ok else f"paid request answered {resp.status}: {body[:160]!r}"


class SessionCallers:
    """One PaymentClient with a SessionPolicy per worker: each opens its own session on its first call."""

    def __init__(self, http: Any, url: Any, workdir: Path) -> None:
        import mpp
        from mpp.aio import PaymentClient, SessionPolicy
        from mpp.methods.ledger import LedgerBuyerMethod

        self.url = str(url)
        key = mpp.SigningKey.load(workdir / "agent.key")
        self._make = lambda: PaymentClient(http, [LedgerBuyerMethod(key=key, account=PAYER)], mpp.BuyerPolicy(max_amount=1000),
                                           sessions=SessionPolicy(max_cap=10**9))
        self.clients: list[Any] = []

    def caller(self) -> Callable[[], Any]:
        client = self._make()
        self.clients.append(client)

        async def call() -> tuple[bool, str | None]:
            resp = await client.request("GET", self.url)
            ok = resp.status == 200 and resp.session is not None and resp.receipt is not None
            return ok, None if ok else f"HTTP {resp.status}: {resp.body[:160]!r}"

        return call

    async def close(self) -> int:
        """Close every session (after the window); how many closes failed."""
        done = await asyncio.gather(*(c.close_sessions() for c in self.clients), return_exceptions=True)
        return sum(isinstance(d, BaseException) for d in done)


async def _generate(p: dict[str, Any]) -> dict[str, Any]:
    import aiohttp

    from yarl import URL

    url = URL(f"http://127.0.0.1:{p['port']}{PATH}")  # parsed once, not per request
    workdir = Path(p["workdir"])
    concurrency, warmup, duration, rate = p["concurrency"], p["warmup"], p["duration"], p["rate"]
    session_counter = [0]
    trace = None
    if p["buyer"] == "session":
        trace = aiohttp.TraceConfig()

        async def on_start(session: Any, ctx: Any, params: Any) -> None:
            session_counter[0] += 1

        trace.on_request_start.append(on_start)
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    timeout = aiohttp.ClientTimeout(total=15)
    latencies: list[float] = []
    lags: list[float] = []
    errors: list[str] = []
    failed = 0
    ok_total = 0
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, trace_configs=[trace] if trace else None) as http:
        callers: list[Caller] = []
        sessions = SessionCallers(http, url, workdir) if p["buyer"] == "session" else None

        def new_call() -> Callable[[], Any]:
            if sessions is not None:
                return sessions.caller()
            caller = Caller(http, url, p["buyer"], workdir)
            callers.append(caller)
            return caller.call

        def requests_sent() -> int:
            return session_counter[0] if sessions is not None else sum(c.requests for c in callers)

        start = time.perf_counter()
        t_start, t_end = start + warmup, start + warmup + duration
        marks: dict[str, Any] = {}

        async def sample(at: float, label: str) -> None:
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            marks[label] = (time.perf_counter(), _cpu_seconds(p["server_pid"]), _own_cpu(), requests_sent(), _machine_busy())
            if label == "start":
                for c in callers:
                    c.record_retries = True
            else:
                for c in callers:
                    c.record_retries = False

        async def one(call: Callable[[], Any], began: float) -> None:
            nonlocal failed, ok_total
            try:
                ok, why = await call()
            except Exception as exc:  # noqa: BLE001 - every failure is counted and sampled
                ok, why = False, f"{type(exc).__name__}: {exc}"[:200]
            done = time.perf_counter()
            ok_total += ok
            if t_start <= done <= t_end:
                if ok:
                    latencies.append(done - began)
                else:
                    failed += 1
                    if len(errors) < 5:
                        errors.append(why or "?")

        samplers = [asyncio.create_task(sample(t_start, "start")), asyncio.create_task(sample(t_end, "end"))]
        if rate is None:
            async def worker() -> None:
                call = new_call()
                while time.perf_counter() < t_end:
                    await one(call, time.perf_counter())

            await asyncio.gather(*(worker() for _ in range(concurrency)))
        else:
            # Open loop: calls start on a fixed schedule whatever the answers do; one buyer
            # (caller) per connection slot, reused round robin.
            pool = [new_call() for _ in range(concurrency)]
            free = asyncio.Queue()
            for call in pool:
                free.put_nowait(call)
            tasks: set[asyncio.Task] = set()

            async def scheduled(due: float, created: float) -> None:
                if t_start <= created <= t_end:
                    lags.append(created - due)  # the generator's own lateness (timer granularity), shown apart
                call = await free.get()
                try:
                    await one(call, created)  # from the moment it was due to go out: waiting for a slot counts
                finally:
                    free.put_nowait(call)

            n = int((warmup + duration) * rate)
            for i in range(n):
                due = start + i / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                task = asyncio.create_task(scheduled(due, time.perf_counter()))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.wait(tasks, timeout=20)
        await asyncio.gather(*samplers)
        close_failures = await asyncio.wait_for(sessions.close(), timeout=30) if sessions is not None else None
    (w0, s0, g0, r0, m0), (w1, s1, g1, r1, m1) = marks["start"], marks["end"]
    window = w1 - w0
    retry = [x for c in callers for x in c.retry_latencies]
    out: dict[str, Any] = {
        "window_s": round(window, 3),
        "calls": len(latencies),
        "requests": r1 - r0,
        "failed": failed,
        "error_samples": errors,
        "calls_total_ok": ok_total,
        "calls_per_s": round(len(latencies) / window, 1),
        "requests_per_s": round((r1 - r0) / window, 1),
        "latency_ms": _summary_ms(latencies),
        "paid_request_latency_ms": _summary_ms(retry) if retry else None,
        "seller_cpu": round((s1 - s0) / window, 3) if s0 is not None and s1 is not None else None,
        "loadgen_cpu": round((g1 - g0) / window, 3),
        # Everything else the machine ran meanwhile (other processes, interrupts), in cores:
        # above ~0.1 the figures were disturbed.
        "other_cpu": (round(max(0.0, (m1 - m0) - (s1 - s0) - (g1 - g0)) / window, 3)
                      if None not in (m0, m1, s0, s1) else None),
        "seller_cpu_us_per_call": round((s1 - s0) / len(latencies) * 1e6, 1) if latencies and s0 is not None and s1 is not None else None,
    }
    if close_failures is not None:
        out["session_close_failures"] = close_failures
    if rate is not None:
        lag = sorted(lags)
        out["rate"] = round(rate, 1)
        out["start_lag_ms"] = {"p50": _ms(_pct(lag, 0.5)), "p99": _ms(_pct(lag, 0.99)), "max": _ms(lag[-1] if lag else None)}
    return out


def _loadgen_main(params: dict[str, Any], conn: Any) -> None:
    if params.get("cpu") is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {params["cpu"]})
    try:
        conn.send(("ok", asyncio.run(_generate(params))))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        import traceback

        conn.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-2000:]}"))
    finally:
        conn.close()


def run_load(params: dict[str, Any]) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_loadgen_main, args=(params, child), daemon=True)
    proc.start()
    child.close()
    limit = params["warmup"] + params["duration"] + 60
    if not parent.poll(limit):
        proc.kill()
        raise RuntimeError(f"load generator did not finish within {limit:.0f} s")
    status, result = parent.recv()
    proc.join(10)
    if status != "ok":
        raise RuntimeError(f"load generator failed: {result}")
    return result


# ==============================================================================================
# The run
# ==============================================================================================


@dataclass
class Settings:
    warmup: float
    duration: float
    concurrency: int
    rate_concurrency: int
    seller_cpu: int | None
    loadgen_cpu: int | None
    interop_python: Path
    profile_dir: Path | None
    retry: bool = True


def make_kit(workdir: Path) -> None:
    """The buyer's material, shared by seller and load generator: agent key, principal, mandate."""
    import mpp
    from mpp.identity import issue_mandate

    agent, principal = mpp.SigningKey.generate(), mpp.SigningKey.generate()
    agent.save(workdir / "agent.key")
    now = datetime.now(timezone.utc)
    mandate = issue_mandate(principal, subject=agent.did, audience=[REALM], scope=[f"GET {PATH}"], currency="usd",
                            ceiling=1000, budget_amount=10**12, budget_period="total", approval_threshold=None,
                            max_depth=0, not_before=now - timedelta(minutes=5), expires=now + timedelta(days=1))
    (workdir / "kit.json").write_text(json.dumps({"agent": agent.did, "principal": principal.did, "mandate": mandate}))


def check_interop(python: Path) -> str | None:
    """Why the pympp seller cannot run with this interpreter, or None if it can."""
    hint = (f"the pympp seller needs {python} with pympp, aiohttp and aiosqlite: `make interop-env`, then "
            f"`{python.parent / 'pip'} install -r benchmarks/pympp-requirements.txt`")
    if not python.exists():
        return f"no {python}; {hint}"
    probe = subprocess.run([str(python), "-c", "import aiohttp, aiosqlite, mpp.server, mpp.stores.sqlite"],
                           capture_output=True, text=True, timeout=60, cwd=tempfile.gettempdir(),  # never beside our own `mpp`
                           env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    if probe.returncode != 0:
        return f"{(probe.stderr.strip().splitlines() or ['?'])[-1]}; {hint}"
    return None


def run_one(scenario: Scenario, settings: Settings, *, rate: float | None = None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"mpp-bench-{scenario.name}-") as tmp:
        workdir = Path(tmp)
        make_kit(workdir)
        profile = None
        if settings.profile_dir is not None and rate is None:
            profile = settings.profile_dir / f"{scenario.name}.prof"
        seller = SellerProcess(scenario, workdir, cpu=settings.seller_cpu, interop_python=settings.interop_python,
                               profile=profile)
        try:
            result = run_load({
                "port": seller.port, "server_pid": seller.pid, "buyer": scenario.buyer, "workdir": str(workdir),
                "concurrency": settings.rate_concurrency if rate is not None else settings.concurrency,
                "warmup": settings.warmup, "duration": settings.duration, "rate": rate, "cpu": settings.loadgen_cpu,
            })
        finally:
            stats = seller.stop()
    result["seller_stats"] = stats
    served = stats.get("calls")
    result["seller_served"] = served
    # Every call the buyer counted as paid and answered was served by the handler once, and
    # nothing else was: a mismatch means lost or double deliveries (or calls that timed out).
    result["consistent"] = served == result["calls_total_ok"] if served is not None else None
    if profile is not None:
        result["profile"] = str(profile)
    return result


DISTURBED = 0.15  # cores used by other processes during a window above which it is measured again, once
RETRY_BUDGET_S = 120.0  # no second attempts after this long into the run (the whole run stays under ~3 minutes)


def run_steady(scenario: Scenario, settings: Settings, started: float, *, rate: float | None = None) -> dict[str, Any]:
    """run_one; if other processes disturbed the window (a shared machine), once more, keeping the quieter run."""
    result = run_one(scenario, settings, rate=rate)
    if (settings.retry and not scenario.database_server and (result.get("other_cpu") or 0) > DISTURBED
            and time.monotonic() - started < RETRY_BUDGET_S):
        again = run_one(scenario, settings, rate=rate)
        again["attempts"] = 2
        if (again.get("other_cpu") or 0) < (result.get("other_cpu") or 0):
            return again
        result["attempts"] = 2
    return result


def _fmt(value: Any, spec: str, width: int) -> str:
    if value is None:
        return "-".rjust(width)
    return format(value, spec).rjust(width)


def main(argv: list[str] | None = None) -> int:
    names = [s.name for s in SCENARIOS]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short run: 1 s per scenario after a 0.3 s warm-up (smoke test)")
    parser.add_argument("--only", help=f"comma-separated scenarios to run (default: all): {', '.join(names + PG_NAMES)}; "
                                       "a scenario with a floor brings its floor along")
    parser.add_argument("--json", type=Path, default=HERE / "results.json", help="write the figures here (default: %(default)s)")
    parser.add_argument("--duration", type=float, help="measured seconds per scenario (default 5; 1 with --quick)")
    parser.add_argument("--warmup", type=float, help="warm-up seconds before each measurement (default 1; 0.3 with --quick)")
    parser.add_argument("--concurrency", type=int, default=32, help="connections at saturation (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=1, help="run the whole scenario list N times, interleaved (round 1 "
                                                              "every scenario, then round 2 ...); report per scenario the "
                                                              "median calls/s and min-max (default %(default)s)")
    parser.add_argument("--no-latency", action="store_true", help="skip the fixed-rate runs (p99 added at half saturation)")
    parser.add_argument("--db", metavar="URL", help="run charge-pg, charge-pg-identity and their floors on this PostgreSQL server (a database "
                                                      "is created per row) instead of a throwaway one")
    parser.add_argument("--no-postgres", action="store_true", help="leave out the PostgreSQL rows (their floors too)")
    parser.add_argument("--interop-python", type=Path, default=Path(os.environ.get("MPP_INTEROP_PYTHON", DEFAULT_INTEROP_PYTHON)),
                        help="python of the side environment with pympp, aiohttp and aiosqlite (default: %(default)s)")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="run each seller under cProfile (slower!), write DIR/NAME.prof, print where its time goes")
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)

    with contextlib.ExitStack() as stack:
        return _run(parser, args, stack)


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace, stack: contextlib.ExitStack) -> int:
    scenarios = list(SCENARIOS)
    pg_names = PG_NAMES
    wanted = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else None
    unknown = [n for n in (wanted or []) if n not in [s.name for s in SCENARIOS] + pg_names]
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}; known: {', '.join([s.name for s in SCENARIOS] + pg_names)}")
    if args.no_postgres and wanted and set(wanted) & set(pg_names):
        parser.error("--no-postgres leaves out " + ", ".join(pg_names))
    if not args.no_postgres and (wanted is None or set(wanted) & set(pg_names)):
        server = args.db
        if server is None:
            from mpp.stores.pg.server import throwaway_postgres

            print("Starting a throwaway PostgreSQL for the PostgreSQL rows ...", flush=True)
            server = stack.enter_context(throwaway_postgres())
        scenarios += postgres_scenarios(server)
    by_name = {s.name: s for s in scenarios}
    if wanted is not None:
        # a row with a floor brings its floor along: its share is computed against the floor of the same run
        brought = [FLOORS[n] for n in wanted if n in FLOORS and FLOORS[n] not in wanted]
        if brought:
            print(f"--only: adding {', '.join(brought)} (the floor of {', '.join(n for n in wanted if n in FLOORS and FLOORS[n] in brought)}), "
                  "to compute its floor share", flush=True)
        wanted += brought
        scenarios = [s for s in scenarios if s.name in wanted]
    duration = args.duration if args.duration is not None else (1.0 if args.quick else 5.0)
    warmup = args.warmup if args.warmup is not None else (0.3 if args.quick else 1.0)
    if duration <= 0 or warmup < 0 or args.concurrency < 1 or args.rounds < 1:
        parser.error("--duration must be positive, --warmup not negative, --concurrency and --rounds at least 1")

    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    seller_cpu, loadgen_cpu = (cpus[0], cpus[1]) if len(cpus) >= 2 else (None, None)
    if loadgen_cpu is not None:
        os.sched_setaffinity(0, {loadgen_cpu})  # this process only waits; keep it off the seller's CPU
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    settings = Settings(warmup, duration, args.concurrency, max(64, args.concurrency), seller_cpu, loadgen_cpu,
                        args.interop_python, args.profile.resolve() if args.profile else None,
                        retry=not args.quick and not args.profile)

    meta = _meta(cpus, settings)
    print(f"MPP benchmark: {meta['cpu_model']}, {len(cpus)} CPU(s), Python {meta['python']}, aiohttp {meta['aiohttp']}")
    if seller_cpu is not None:
        print(f"Each seller runs in its own process pinned to CPU {seller_cpu}; the load generator (aiohttp client, "
              f"{args.concurrency} connections) runs in another, pinned to CPU {loadgen_cpu}; all on 127.0.0.1.")
    else:
        print("Only one CPU: seller and load generator share it (figures are not comparable with a 2-CPU run).")
    print(f"Per scenario: {warmup:g} s warm-up, then {duration:g} s measured at saturation (closed loop)"
          + (f"; {args.rounds} rounds, interleaved (every scenario once per round), median reported." if args.rounds > 1 else "."))
    if args.profile:
        print("PROFILING: sellers run under cProfile, so every figure below is slower than the real thing.")
    print()

    started = time.monotonic()
    interop_problem = check_interop(settings.interop_python) if any(s.seller == "pympp" for s in scenarios) else None
    runs: dict[str, list[dict[str, Any]]] = {s.name: [] for s in scenarios}  # per scenario, one result per round
    for round_no in range(1, args.rounds + 1):
        if args.rounds > 1:
            print(f" round {round_no}/{args.rounds}:", flush=True)
        for scenario in scenarios:
            print(f"  {scenario.name} ...", end="", flush=True)
            if scenario.seller == "pympp" and interop_problem:
                runs[scenario.name].append({"error": interop_problem})
                print(f" NOT RUN: {interop_problem}", flush=True)
                continue
            try:
                r = run_steady(scenario, settings, started)
                r["database_server"] = scenario.database_server
                runs[scenario.name].append(r)
                print(f" {r['calls_per_s']:.0f} calls/s" + (f" (other processes: {r['other_cpu']:.0%} of a core)"
                                                           if (r.get("other_cpu") or 0) > DISTURBED else "")
                      + (" (measured twice: other processes disturbed a window)" if r.get("attempts") == 2 else ""), flush=True)
            except Exception as exc:  # noqa: BLE001 - one broken row must not lose the others
                r = {"error": str(exc)[:2000]}
                runs[scenario.name].append(r)
                print(f" FAILED: {str(exc).splitlines()[0][:200]}", flush=True)
            if args.profile and "profile" in r:
                _print_profile(Path(r["profile"]))
    results = {name: _over_rounds(rs) for name, rs in runs.items()}

    latency: dict[str, Any] = {}
    if not args.no_latency:
        plain = by_name["plain"]
        for name in LATENCY_SCENARIOS:
            r = results.get(name)
            if not r or "error" in r or not r.get("calls_per_s"):
                continue
            rate = r["calls_per_s"] / 2
            print(f"  {name} at {rate:.0f} calls/s, and plain at the same rate ...", end="", flush=True)
            try:
                paid = run_steady(by_name[name], settings, started, rate=rate)
                base = run_steady(plain, settings, started, rate=rate)
            except Exception as exc:  # noqa: BLE001
                latency[name] = {"error": str(exc)[:2000]}
                print(f" FAILED: {str(exc).splitlines()[0][:200]}", flush=True)
                continue
            p99, p99_plain = paid["latency_ms"]["p99"], base["latency_ms"]["p99"]
            added = round(p99 - p99_plain, 3) if p99 is not None and p99_plain is not None else None
            latency[name] = {"rate": round(rate, 1), "p99_ms": p99, "plain_p99_ms": p99_plain, "p99_added_ms": added,
                             "p50_ms": paid["latency_ms"]["p50"], "plain_p50_ms": base["latency_ms"]["p50"],
                             "paid_request_p99_ms": (paid["paid_request_latency_ms"] or {}).get("p99"),
                             # the paid retry alone (no 402 round trip) against a plain request
                             "paid_request_p99_added_ms": (round((paid["paid_request_latency_ms"] or {})["p99"] - p99_plain, 3)
                                                           if paid.get("paid_request_latency_ms") and p99_plain is not None else None),
                             "run": paid, "plain_run": base}
            print(f" +{added} ms", flush=True)
    elapsed = time.monotonic() - started

    _ratios(results)
    floors = _floor_shares(results)
    targets = _targets(results, latency)
    print()
    _print_table(results, args.rounds)
    print()
    print("call = what a buyer wants done once: plain = 1 HTTP request; charge-*, floor-charge-*, trivial-method, pympp-trivial "
          "= 1 purchase = 2 HTTP requests (unpaid -> 402 with a challenge, retry with the credential -> 200 + receipt); "
          "session-voucher and its floor = "
          "1 HTTP request carrying a voucher (sessions opened during warm-up). Latency is per call, at saturation "
          f"({args.concurrency} connections busy). ratio = calls/s / plain calls/s. CPU ratio = plain seller CPU per call / "
          "this seller CPU per call. seller/loadgen CPU = share of one core during the window. floor share = calls/s / the "
          "calls/s of its floor-* row (bench_floor.py: the same buyer and wire, only the unavoidable work), measured in the "
          "same run."
          + (f" With {args.rounds} rounds: calls/s is the median over the rounds, min-max its range, floor share and ratios "
             "come from the medians, and the other columns are those of the median round." if args.rounds > 1 else ""))
    for name, r in results.items():
        if "error" in r:
            continue
        if r.get("loadgen_cpu") is not None and r["loadgen_cpu"] >= 0.95 and (r.get("seller_cpu") or 0) < 0.9:
            print(f"note: {name}: the load generator was the bottleneck (its CPU {r['loadgen_cpu']:.0%}, seller "
                  f"{r['seller_cpu']:.0%}); calls/s is a lower bound for this seller, see CPU ratio.")
        if r.get("consistent") is False:
            print(f"WARNING: {name}: the buyer counted {r['calls_total_ok']} paid calls, the seller's handler ran "
                  f"{r['seller_served']} times.")
        if r.get("database_server") and r.get("other_cpu") is not None:
            print(f"note: {name}: its database server and any other processes used {r['other_cpu']:.0%} of a core "
                  "(unpinned, so sharing both CPUs); seller CPU excludes it.")
        elif (r.get("other_cpu") or 0) > DISTURBED:
            print(f"note: {name}: other processes used {r['other_cpu']:.0%} of a core during the window: figures disturbed.")
        if r.get("seller_stats", {}).get("stderr"):
            print(f"WARNING: {name}: the seller wrote to stderr: {r['seller_stats']['stderr'].strip().splitlines()[-1][:200]}")
        if r.get("failed"):
            print(f"WARNING: {name}: {r['failed']} failed calls in the window, e.g. {r['error_samples'][:2]}")
        elif r.get("failed_all_rounds"):
            print(f"WARNING: {name}: {r['failed_all_rounds']} failed calls in the windows of other rounds")
        for err in r.get("round_errors", []):
            print(f"WARNING: {name}: a round FAILED: {err.splitlines()[0][:200]}")
    if floors:
        print()
        print("Floor (bench_floor.py, same run" + (f", medians of {args.rounds} rounds" if args.rounds > 1 else "") + "): "
              "ours calls/s / floor calls/s; and the floor's seller CPU per call / ours (independent of the load generator):")
        for name, f in floors.items():
            if f.get("share") is None:
                print(f"  {name:<24} no floor share: {f['why']}")
                continue
            ours, floor = results[name], results[f["floor"]]
            print(f"  {name:<24} {_fmt(ours['calls_per_s'], ',.0f', 7)} calls/s{_range(ours)} vs {f['floor']} "
                  f"{_fmt(floor['calls_per_s'], ',.0f', 7)}{_range(floor)}: share {f['share']:.2f}"
                  + (f"; CPU share {f['cpu_share']:.2f} ({ours['seller_cpu_us_per_call']:,.0f} vs "
                     f"{floor['seller_cpu_us_per_call']:,.0f} us per call)" if f.get("cpu_share") is not None else ""))
            if floor.get("loadgen_cpu") is not None and floor["loadgen_cpu"] >= 0.95 and (floor.get("seller_cpu") or 0) < 0.9:
                print(f"  note: the load generator was the bottleneck of {f['floor']}: its calls/s is a lower bound, so the "
                      "share is overstated; the CPU share is not affected.")
    if latency:
        print()
        print("p99 latency added by payment at half of saturation (open loop at a fixed rate; per call, so a purchase "
              "counts both round trips; minus plain's p99 at the same rate):")
        for name, l in latency.items():
            if "error" in l:
                print(f"  {name}: FAILED")
                continue
            disturbed = max(l["run"].get("other_cpu") or 0, l["plain_run"].get("other_cpu") or 0)
            if disturbed > DISTURBED:
                print(f"  note: other processes used up to {disturbed:.0%} of a core during these runs: figures disturbed.")
            achieved = l["run"]["calls_per_s"]
            if achieved < 0.9 * l["rate"]:
                print(f"  note: {name} served only {achieved:.0f} of the {l['rate']:.0f} calls/s asked: it was overloaded, "
                      "so this p99 measures a queue.")
            print(f"  {name:<24} at {l['rate']:>7.1f} calls/s: p99 {l['p99_ms']:.2f} ms vs plain {l['plain_p99_ms']:.2f} ms"
                  f" -> added {l['p99_added_ms']:+.2f} ms  (p50 {l['p50_ms']:.2f} vs {l['plain_p50_ms']:.2f}; the paid retry "
                  f"alone: p99 {l['paid_request_p99_ms']:.2f} ms, {l['paid_request_p99_added_ms']:+.2f} ms)")
    print()
    print("Targets (goals, not assertions):")
    for t in targets:
        state = "not measured" if t["met"] is None else ("met" if t["met"] else "MISSED")
        value = "-" if t["value"] is None else f"{t['value']:.2f}{t['unit']}"
        print(f"  {t['goal']:<48} {value:>10}  {state}{('  (' + t['detail'] + ')') if t.get('detail') else ''}")
    print(f"\nwhole run: {elapsed:.0f} s")

    doc = {"meta": meta | {"elapsed_s": round(elapsed, 1), "quick": args.quick, "argv": args.argv, "rounds": args.rounds},
           "scenarios": results, "floor_shares": floors, "latency_at_half_saturation": latency, "targets": targets}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 1 if any("error" in r or r.get("round_errors") for r in results.values()) else 0


def _meta(cpus: list[int], s: Settings) -> dict[str, Any]:
    import aiohttp

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu_model": model, "cpus": len(cpus), "python": platform.python_version(), "aiohttp": aiohttp.__version__,
            "seller_cpu": s.seller_cpu, "loadgen_cpu": s.loadgen_cpu, "warmup_s": s.warmup, "duration_s": s.duration,
            "concurrency": s.concurrency, "rate_concurrency": s.rate_concurrency, "host": "127.0.0.1",
            "when": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}


def _ratios(results: dict[str, Any]) -> None:
    plain = results.get("plain")
    base = plain.get("calls_per_s") if plain and "error" not in plain else None
    base_cpu = plain.get("seller_cpu_us_per_call") if plain and "error" not in plain else None
    for r in results.values():
        if "error" in r:
            continue
        r["ratio_to_plain"] = round(r["calls_per_s"] / base, 3) if base else None
        cpu = r.get("seller_cpu_us_per_call")
        r["cpu_ratio_to_plain"] = round(base_cpu / cpu, 3) if base_cpu and cpu else None


def _over_rounds(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One scenario's result over its rounds: the median round's figures, with calls/s the median
    over the rounds (min, max and every round's kept too). Failed rounds are left out and named."""
    ok = [r for r in runs if "error" not in r]
    errors = [r["error"] for r in runs if "error" in r]
    if not ok:
        return runs[-1] | ({"round_errors": errors} if len(runs) > 1 else {})
    values = [r["calls_per_s"] for r in ok]
    middle = sorted(range(len(ok)), key=lambda i: values[i])[(len(ok) - 1) // 2]  # the lower middle for an even count
    out = dict(ok[middle])
    out |= {"rounds": len(runs), "median_round": middle + 1, "calls_per_s": round(statistics.median(values), 1),
            "calls_per_s_min": min(values), "calls_per_s_max": max(values), "calls_per_s_rounds": values}
    if len(ok) > 1:
        out["failed_all_rounds"] = sum(r["failed"] for r in ok)
        if any(r.get("consistent") is False for r in ok):
            out["consistent"] = False
        out["runs"] = [{k: r.get(k) for k in ("calls_per_s", "requests_per_s", "latency_ms", "seller_cpu", "loadgen_cpu",
                                              "other_cpu", "seller_cpu_us_per_call", "failed", "consistent")} for r in ok]
    if errors:
        out["round_errors"] = errors
    return out


def _floor_shares(results: dict[str, Any]) -> dict[str, Any]:
    """For each row with a floor that ran: ours calls/s / floor calls/s (medians), and the floor's
    seller CPU per call / ours."""
    out: dict[str, Any] = {}
    for name, floor_name in FLOORS.items():
        ours, floor = results.get(name), results.get(floor_name)
        if ours is None:
            continue
        entry: dict[str, Any] = {"floor": floor_name, "share": None, "cpu_share": None}
        if "error" in ours:
            entry["why"] = f"{name} failed"
        elif floor is None:
            entry["why"] = f"{floor_name} was not run"
        elif "error" in floor or not floor.get("calls_per_s"):
            entry["why"] = f"{floor_name} failed"
        else:
            entry["share"] = round(ours["calls_per_s"] / floor["calls_per_s"], 3)
            mine, theirs = ours.get("seller_cpu_us_per_call"), floor.get("seller_cpu_us_per_call")
            entry["cpu_share"] = round(theirs / mine, 3) if mine and theirs else None
            entry["ours_calls_per_s"], entry["floor_calls_per_s"] = ours["calls_per_s"], floor["calls_per_s"]
        ours["floor_share"] = entry["share"]
        ours["floor_cpu_share"] = entry["cpu_share"]
        out[name] = entry
    return out


def _range(r: dict[str, Any]) -> str:
    """' (min-max)' of calls/s over the rounds, or nothing for one round."""
    if r.get("rounds", 1) <= 1 or r.get("calls_per_s_min") is None:
        return ""
    return f" ({r['calls_per_s_min']:,.0f}-{r['calls_per_s_max']:,.0f})"


def _targets(results: dict[str, Any], latency: dict[str, Any]) -> list[dict[str, Any]]:
    def ratio(name: str) -> float | None:
        r = results.get(name)
        return r.get("ratio_to_plain") if r and "error" not in r else None

    out = []
    for key, name, goal in (("identity", "charge-sqlite-identity", 0.33), ("session", "session-voucher", 0.6)):
        v = ratio(name)
        out.append({"goal": TARGETS_TEXT[key], "value": v, "unit": " x", "met": None if v is None else v >= goal})
    ours, peer = results.get("trivial-method"), results.get("pympp-trivial")
    v = None
    if ours and peer and "error" not in ours and "error" not in peer and peer.get("calls_per_s"):
        v = round(ours["calls_per_s"] / peer["calls_per_s"], 3)
    out.append({"goal": TARGETS_TEXT["peer"], "value": v, "unit": " x", "met": None if v is None else v >= 1.5})
    measured = [(n, l) for n, l in latency.items() if "error" not in l and l.get("p99_added_ms") is not None]
    if measured:
        # The target is judged on the real payment path when it was measured, else on the trivial one.
        name, l = measured[0]
        out.append({"goal": TARGETS_TEXT["latency"], "value": l["p99_added_ms"], "unit": " ms", "met": l["p99_added_ms"] < 2.0,
                    "detail": f"{name} at {l['rate']:.0f} calls/s"
                              + "".join(f"; {n}: {x['p99_added_ms']:+.2f} ms" for n, x in measured[1:])})
    else:
        out.append({"goal": TARGETS_TEXT["latency"], "value": None, "unit": " ms", "met": None})
    return out


def _print_table(results: dict[str, Any], rounds: int = 1) -> None:
    spread = rounds > 1
    head = (f"{'scenario':<29} {'HTTP req/s':>10} {'calls/s':>8} " + (f"{'min-max':>13} " if spread else "")
            + f"{'p50 ms':>7} {'p99 ms':>7} {'ratio':>6} {'CPU ratio':>9} {'floor share':>11} "
            f"{'seller CPU':>10} {'loadgen CPU':>11} {'seller us/call':>14} {'failed':>6}")
    print(head)
    print("-" * len(head))
    for name, r in results.items():
        if "error" in r:
            print(f"{name:<29} FAILED: {r['error'].splitlines()[0][:100]}")
            continue
        lat = r["latency_ms"]
        span = f"{r['calls_per_s_min']:,.0f}-{r['calls_per_s_max']:,.0f}" if spread and r.get("calls_per_s_min") is not None else "-"
        print(f"{name:<29} {_fmt(r['requests_per_s'], ',.0f', 10)} {_fmt(r['calls_per_s'], ',.0f', 8)} "
              + (f"{span:>13} " if spread else "")
              + f"{_fmt(lat['p50'], '.2f', 7)} {_fmt(lat['p99'], '.2f', 7)} {_fmt(r.get('ratio_to_plain'), '.2f', 6)} "
              f"{_fmt(r.get('cpu_ratio_to_plain'), '.2f', 9)} {_fmt(r.get('floor_share'), '.2f', 11)} "
              f"{_fmt(r.get('seller_cpu'), '.0%', 10)} {_fmt(r.get('loadgen_cpu'), '.0%', 11)} "
              f"{_fmt(r.get('seller_cpu_us_per_call'), ',.0f', 14)} {r['failed']:>6}")


def _print_profile(path: Path, top: int = 25) -> None:
    import io
    import pstats

    if not path.exists():
        print(f"    (no profile at {path})")
        return
    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out)
    stats.sort_stats("tottime").print_stats(top)
    text = out.getvalue()
    body = text[text.find("   ncalls"):] if "   ncalls" in text else text
    print(f"    profile {path.name} (top {top} by own time):")
    for line in body.rstrip().splitlines():
        print("    " + line)


if __name__ == "__main__":
    sys.exit(main())

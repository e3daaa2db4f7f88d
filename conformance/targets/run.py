"""Run the conformance suite against third-party sellers and write conformance/RESULTS.md.

Runs under the project's environment (.venv; ``make conformance-results``). Each target lives in
its own environment, built here on first use from PyPI and npm:

  pympp  conformance/targets/.venv-pympp-seller  (pip install -r pympp-seller-requirements.txt)
  mppx   conformance/targets/mppx/node_modules    (npm ci, from mppx/package.json + lock)

For each target: start it, wait for its ``ready URL`` line, run ``mpp-conformance seller`` five
times (RUN_PLAN: ``--profile draft`` on GET and POST, paying with
``--pay-with static:{"token":"conformance"}``; ``--profile core`` on GET; ``--profile full`` on GET
and POST; JSON reports in conformance/targets/out/), stop it, and render the reports into
conformance/RESULTS.md: per target one table of checks with the draft verdicts beside the
core/full ones, then the departures from the drafts (MUST fails, SHOULD warnings) apart from the
departures from MPP's own profile (extension fails).

Exit status: 0 when the suite ran to completion against every target (the targets' failures are
expected and recorded, not errors); 2 when a target could not be built, started or kept up, or
the suite itself crashed.

  python conformance/targets/run.py [--targets pympp,mppx] [--render-only]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
OUT = HERE / "out"
RESULTS = ROOT / "conformance" / "RESULTS.md"
PAYLOAD = {"token": "conformance"}
PAY_WITH = "static:" + json.dumps(PAYLOAD, separators=(",", ":"))
POST_BODY = '{"query":"conformance"}'
READY_TIMEOUT = 90.0
SUITE_TIMEOUT = 1800.0


class TargetFailure(Exception):
    """A target could not be built, started or kept up: the run is incomplete."""


@dataclass
class Run:
    label: str  # "core GET", "full GET", "full POST"
    profile: str
    http_method: str
    args: list[str]
    report: str  # path relative to ROOT
    seconds: float = 0.0
    exit_code: int | None = None
    completed: bool = False
    problem: str = ""


@dataclass
class TargetState:
    name: str
    title: str
    versions: dict[str, str] = field(default_factory=dict)
    url: str = ""
    started: str = ""
    build_seconds: float = 0.0
    runs: list[Run] = field(default_factory=list)
    failure: str = ""  # why the target could not be run to completion
    logged_errors: dict[str, int] = field(default_factory=dict)  # exception lines in the target's stderr


# ---------------------------------------------------------------------------------------------
# Building the targets' environments


def _digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.read_bytes())
    return h.hexdigest()


def _run_logged(cmd: list[str], log: Path, cwd: Path | None = None, timeout: float = 900) -> None:
    with log.open("a", encoding="utf-8") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        try:
            proc = subprocess.run(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise TargetFailure(f"`{' '.join(cmd)}` failed: {exc}") from exc
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:])
        raise TargetFailure(f"`{' '.join(cmd)}` exited {proc.returncode}; last lines of {log.relative_to(ROOT)}:\n{tail}")


def build_pympp(state: TargetState) -> list[str]:
    venv = HERE / ".venv-pympp-seller"
    reqs = HERE / "pympp-seller-requirements.txt"
    stamp = venv / ".installed"
    python = venv / "bin" / "python"
    log = OUT / "pympp-build.log"
    if not (stamp.exists() and stamp.read_text().strip() == _digest(reqs) and python.exists()):
        log.write_text("", encoding="utf-8")
        print(f"-- pympp: building {venv.relative_to(ROOT)} (pip install -r {reqs.name})", flush=True)
        base = shutil.which("python3") or sys.executable
        if not python.exists():
            # The interpreter must not be this project's venv python: a venv made from it works,
            # but keep the side environment independent of .venv.
            _run_logged([base, "-m", "venv", str(venv)], log)
        _run_logged([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r", str(reqs)], log)
        stamp.write_text(_digest(reqs) + "\n")
    probe = ("import importlib.metadata as m, json, platform; print(json.dumps({'pympp': m.version('pympp'), "
             "'starlette': m.version('starlette'), 'uvicorn': m.version('uvicorn'), "
             "'python': platform.python_version()}))")
    out = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise TargetFailure(f"pympp environment is broken: {out.stderr.strip()}")
    state.versions = json.loads(out.stdout)
    return [str(python), str(HERE / "pympp_seller.py")]


def build_mppx(state: TargetState) -> list[str]:
    pkg_dir = HERE / "mppx"
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        raise TargetFailure("node and npm are needed for the mppx target and were not found on PATH")
    lock = pkg_dir / "package-lock.json"
    inputs = [pkg_dir / "package.json"] + ([lock] if lock.exists() else [])
    stamp = pkg_dir / "node_modules" / ".conformance-installed"
    log = OUT / "mppx-build.log"
    if not (stamp.exists() and stamp.read_text().strip() == _digest(*inputs)):
        log.write_text("", encoding="utf-8")
        how = "ci" if lock.exists() else "install"
        print(f"-- mppx: npm {how} in {pkg_dir.relative_to(ROOT)}", flush=True)
        _run_logged([npm, how, "--no-audit", "--no-fund"], log, cwd=pkg_dir)
        stamp.write_text(_digest(*inputs) + "\n")
    versions: dict[str, str] = {}
    for name in ("mppx", "viem"):
        meta = pkg_dir / "node_modules" / name / "package.json"
        if not meta.exists():
            raise TargetFailure(f"npm did not install {name} ({meta.relative_to(ROOT)} missing)")
        versions[name] = json.loads(meta.read_text())["version"]
    versions["node"] = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout.strip().lstrip("v")
    state.versions = versions
    return [node, str(HERE / "mppx_seller.mjs")]


TARGETS: dict[str, tuple[str, Callable[[TargetState], list[str]]]] = {
    "pympp": ("pympp (PyPI), Starlette + uvicorn", build_pympp),
    "mppx": ("mppx (npm), node:http", build_mppx),
}


# ---------------------------------------------------------------------------------------------
# Running a target and the suite against it


def start_target(state: TargetState, cmd: list[str]) -> subprocess.Popen:
    stdout_log, stderr_log = OUT / f"{state.name}-target.out", OUT / f"{state.name}-target.err"
    with stdout_log.open("w") as out, stderr_log.open("w") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=HERE, start_new_session=True)
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        for line in stdout_log.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("ready "):
                state.url = line.split(" ", 1)[1].strip().rstrip("/")
                return proc
        if proc.poll() is not None:
            err_text = stderr_log.read_text(encoding="utf-8", errors="replace").strip()
            raise TargetFailure(f"the {state.name} target exited {proc.returncode} before it was ready:\n{err_text[-2000:]}")
        time.sleep(0.05)
    stop_target(proc)
    raise TargetFailure(f"the {state.name} target printed no `ready URL` line within {READY_TIMEOUT:.0f}s")


def stop_target(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


# The runs per target: (label, profile, HTTP method). `draft` runs only the checks that cite a
# published draft (MUST fails, SHOULD warns) and pays, so it covers the draft's paying checks too;
# `core` is MPP's profile without payment; `full` is core plus the paying checks.
RUN_PLAN = (("draft GET", "draft", "GET"), ("draft POST", "draft", "POST"), ("core GET", "core", "GET"),
            ("full GET", "full", "GET"), ("full POST", "full", "POST"))
DRAFT_RUNS = tuple(label for label, profile, _ in RUN_PLAN if profile == "draft")
PROFILE_RUNS = tuple(label for label, profile, _ in RUN_PLAN if profile != "draft")
# How long core.expired-challenge may wait for a challenge to expire. Both SDKs' challenges live
# 5 minutes by default (and the targets keep the defaults); waiting that long in each of the five
# runs would take 25 minutes, so the check is skipped and RESULTS.md says so. A target given a
# shorter lifetime would be checked: the wait is the check's own cap, not a fixed sleep.
EXPIRY_WAIT = 15.0


def run_args(url: str, profile: str, method: str, report: str | None = None) -> list[str]:
    """The mpp-conformance arguments of one run (URL is the target's base URL)."""
    args = ["seller", url + "/paid", "--profile", profile]
    if profile in ("draft", "full"):
        args += ["--pay-with", PAY_WITH, "--other-url", url + "/other"]
    if method != "GET":
        args += ["--method", method, "--data", POST_BODY]
    args += ["--expiry-wait", f"{EXPIRY_WAIT:g}"]
    if report is not None:
        args += ["--json", report]
    return args


def plan_runs(state: TargetState) -> list[Run]:
    runs = []
    for label, profile, method in RUN_PLAN:
        report = OUT / f"{state.name}-{profile}-{method.lower()}.json"
        runs.append(Run(label, profile, method, run_args(state.url, profile, method, str(report)),
                        str(report.relative_to(ROOT))))
    return runs


def run_suite(state: TargetState, run: Run, proc: subprocess.Popen) -> None:
    report = ROOT / run.report
    report.unlink(missing_ok=True)
    log = OUT / f"{state.name}-{run.profile}-{run.http_method.lower()}.log"
    cmd = [sys.executable, "-m", "mpp_conformance.cli", *run.args]
    print(f"-- {state.name}: {run.label}: mpp-conformance {' '.join(_quote(a) for a in run.args)}", flush=True)
    start = time.monotonic()
    with log.open("w", encoding="utf-8") as f:
        child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
        assert child.stdout is not None
        try:
            for line in child.stdout:
                f.write(line)
                print(f"   {state.name} | {line}", end="", flush=True)
            child.wait(timeout=SUITE_TIMEOUT)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
            run.problem = f"the suite did not finish within {SUITE_TIMEOUT:.0f}s"
    run.seconds = time.monotonic() - start
    run.exit_code = child.returncode
    if run.problem:
        return
    # 0: every check passed; 1: some failed. Anything else, or no report, is a crash.
    if child.returncode not in (0, 1) or not report.exists():
        tail = "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-20:])
        run.problem = f"mpp-conformance exited {child.returncode} without a complete report; last lines of its output:\n{tail}"
        return
    try:
        json.loads(report.read_text(encoding="utf-8"))["results"]
    except (ValueError, KeyError) as exc:
        run.problem = f"the report {run.report} is unreadable: {exc}"
        return
    if proc.poll() is not None:
        run.problem = f"the target exited ({proc.returncode}) during the run"
        return
    run.completed = True


def _quote(arg: str) -> str:
    return arg if re.fullmatch(r"[\w@%+=:,./-]+", arg) else "'" + arg.replace("'", "'\\''") + "'"


def run_target(name: str) -> TargetState:
    title, build = TARGETS[name]
    state = TargetState(name, title, started=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    t0 = time.monotonic()
    try:
        cmd = build(state)
    except TargetFailure as exc:
        state.failure = f"could not build the environment: {exc}"
        return state
    state.build_seconds = time.monotonic() - t0
    try:
        proc = start_target(state, cmd)
    except TargetFailure as exc:
        state.failure = f"could not start: {exc}"
        return state
    print(f"-- {name}: ready at {state.url} ({', '.join(f'{k} {v}' for k, v in state.versions.items())})", flush=True)
    try:
        for run in plan_runs(state):
            state.runs.append(run)
            run_suite(state, run, proc)
            if not run.completed:
                state.failure = f"{run.label}: {run.problem}"
                break
    finally:
        stop_target(proc)
        state.logged_errors = _logged_errors(OUT / f"{name}-target.err")
    return state


_EXC_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*)?(?:Error|Exception)\b[^\n]{0,200}$")


def _logged_errors(path: Path) -> dict[str, int]:
    """Exception lines (``SomeError: ...``) the target wrote to stderr, counted."""
    if not path.exists():
        return {}
    counts: Counter[str] = Counter()
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip()
        if _EXC_LINE.match(line) and ":" in line and not line.startswith("ERROR:"):
            counts[line[:200]] += 1
    return dict(counts.most_common(5))


# ---------------------------------------------------------------------------------------------
# RESULTS.md


def _load(run: Run) -> dict[str, Any] | None:
    path = ROOT / run.report
    if not run.completed or not path.exists():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def _cell(text: str, limit: int = 220) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    if len(line) > limit:
        line = line[: limit - 1] + "…"
    return line.replace("|", "\\|").replace("<", "&lt;")


_VARYING = [
    (re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)"), "<instant>"),
    (re.compile(r"'[A-Za-z0-9_-]{8,}'(?:\.\.\.)?"), "'<id>'"),
    (re.compile(r"\b(?:GET|POST)\b"), "<method>"),
]


def _same_message(text: str) -> str:
    for pattern, repl in _VARYING:
        text = pattern.sub(repl, text)
    return text


def _header(headers: list[list[str]], name: str) -> str | None:
    for k, v in headers:
        if k.lower() == name.lower():
            return v
    return None


def _evidence_facts(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """What the evidence says, whatever the checks concluded: how refused credentials were
    answered, and whether any response was a 5xx."""
    refused: Counter[tuple[int, str]] = Counter()
    paid_ok = 0
    five_xx: list[str] = []
    for rep in reports:
        for res in rep["results"]:
            for ex in res.get("evidence", []):
                resp = ex.get("response")
                if resp is None:
                    continue
                status = resp["status"]
                if status >= 500:
                    five_xx.append(f"{res['id']}: {ex['request']['method']} → {status}")
                has_cred = _header(ex["request"]["headers"], "Authorization") is not None
                if not has_cred:
                    continue
                if 200 <= status < 300:
                    paid_ok += 1
                    continue
                ptype = "(no problem document)"
                if "problem+json" in (_header(resp["headers"], "Content-Type") or ""):
                    try:
                        ptype = str(json.loads(resp["body"]).get("type", "(no type)"))
                    except (ValueError, AttributeError):
                        ptype = "(unparseable problem document)"
                refused[(status, ptype.rsplit("/", 1)[-1])] += 1
    return {"refused": refused, "paid_ok": paid_ok, "five_xx": five_xx}


_DOC_SHORT = [  # the published documents, by the short names spec/README.md uses
    (re.compile(r"draft-httpauth-payment-\d\d"), "draft"),
    (re.compile(r"draft-payment-intent-charge-\d\d"), "charge"),
    (re.compile(r"draft-payment-discovery-\d\d"), "discovery"),
]
_CITE = re.compile(r"(draft-[a-z-]+-\d\d|RFC \d+) (§\S+) (MUST NOT|MUST|SHOULD NOT|SHOULD|ABNF|prose)")


def _cites(res: dict[str, Any]) -> str:
    """What a check cites, short: the draft sections of a MUST/SHOULD check ("draft §4.2 MUST,
    §5.1.1 MUST; charge §7.1 MUST"), the spec ids of an extension check."""
    if res.get("level") == "extension" or not res.get("cites") or res.get("cites") == "extension":
        return ", ".join(res["requirements"])
    by_doc: dict[str, list[str]] = {}
    for doc, section, keyword in _CITE.findall(res["cites"]):
        for pattern, short in _DOC_SHORT:
            if pattern.fullmatch(doc):
                doc = short
        by_doc.setdefault(doc, []).append(f"{section} {keyword}")
    if not by_doc:
        return res["cites"]
    return "; ".join(f"{doc} {', '.join(parts)}" for doc, parts in by_doc.items())


def _documents(reports: list[dict[str, Any]]) -> list[str]:
    """The published documents the reports cite, with their revisions (for the legend)."""
    seen: dict[str, str] = {}
    for rep in reports:
        for res in rep["results"]:
            for doc, _, _ in _CITE.findall(res.get("cites") or ""):
                for pattern, short in _DOC_SHORT:
                    if pattern.fullmatch(doc):
                        seen.setdefault(short, doc)
    return [f"{short} = {doc}" for short, doc in seen.items()]


def _replay_answers(merged: dict[str, dict[str, Any]]) -> list[str]:
    """Replay, from the evidence: in a replay check every credentialed request carries the one
    credential the check paid with, so more than one 2xx among them is a replay accepted."""
    replay = [(cid, m) for cid, m in merged.items() if "replay" in cid and "idempotency" not in cid]
    if not replay:
        return []
    accepted: list[str] = []
    refusals: Counter[str] = Counter()
    for cid, m in replay:
        for lab, r in m["by"].items():
            answers = [ex["response"] for ex in r.get("evidence", [])
                       if ex.get("response") and _header(ex["request"]["headers"], "Authorization") is not None]
            ok = sum(1 for resp in answers if 200 <= resp["status"] < 300)
            if ok > 1:
                accepted.append(f"`{cid}` ({lab}): {ok} of {len(answers)} submissions of one credential answered 2xx")
            # The first 2xx is the purchase; every other answer is the refusal of a replay.
            for resp in answers:
                if not 200 <= resp["status"] < 300:
                    refusals[f"{resp['status']} `{_problem_type(resp)}`"] += 1
    if accepted:
        return ["- **Replay accepted.** " + "; ".join(accepted) + "."]
    how = ", ".join(f"{n}× {what}" for what, n in refusals.most_common())
    return ["- **Replay refused.** No replayed credential was answered 2xx in "
            + ", ".join(f"`{c}`" for c, _ in replay) + f" (every run); the replays were answered {how or 'with nothing'}."]


def _problem_type(resp: dict[str, Any]) -> str:
    if "problem+json" not in (_header(resp["headers"], "Content-Type") or ""):
        return "(no problem document)"
    try:
        return str(json.loads(resp["body"]).get("type", "(no type)")).rsplit("/", 1)[-1]
    except (ValueError, AttributeError):
        return "(unparseable problem document)"


def _observations(state: TargetState, reports: dict[str, dict[str, Any]],
                  merged: dict[str, dict[str, Any]]) -> list[str]:
    """What the evidence says, whatever the checks concluded."""
    lines = _replay_answers(merged)
    facts = _evidence_facts(list(reports.values()))
    refused: Counter = facts["refused"]
    total = sum(refused.values())
    if total:
        by_type: Counter[str] = Counter()
        for (status, ptype), n in refused.items():
            by_type[ptype] += n
        top, top_n = by_type.most_common(1)[0]
        dist = ", ".join(f"{n}× {status} `{ptype}`" for (status, ptype), n in refused.most_common())
        if top_n == total and len(by_type) == 1:
            lines.append(f"- **Error answers.** Every one of the {total} refused credentials in the evidence was answered "
                         f"with `{top}` ({dist}).")
        else:
            share = round(100 * top_n / total)
            lines.append(f"- **Error answers.** The {total} refused credentials in the evidence were answered: {dist}; "
                         f"`{top}` accounts for {share}% of them.")
    if facts["paid_ok"]:
        lines.append(f"- **Paid requests.** {facts['paid_ok']} requests carrying a credential were answered 2xx.")
    if facts["five_xx"]:
        lines.append(f"- **5xx.** {len(facts['five_xx'])} responses were 5xx, e.g. {facts['five_xx'][0]}.")
    if state.logged_errors:
        lines.append("- **Target log.** The target logged " + "; ".join(
            f"{n}× `{_cell(text, 160)}`" for text, n in state.logged_errors.items()) + ".")
    return lines


def _merge(reports: dict[str, dict[str, Any]], labels: list[str]) -> dict[str, dict[str, Any]]:
    """One entry per check id, in the order the runs met them: its result in each run."""
    merged: dict[str, dict[str, Any]] = {}
    for label in labels:
        for res in reports[label]["results"]:
            merged.setdefault(res["id"], {"res": res, "by": {}})["by"][label] = res
    return merged


def _combined(verdicts: list[str]) -> str:
    """One verdict of a check over several runs: its worst (error, fail, warn), else pass if it
    passed anywhere, else skip."""
    for v in ("error", "fail", "warn", "pass", "skip"):
        if v in verdicts:
            return v
    return "skip"


def _tally(merged: dict[str, dict[str, Any]], labels: tuple[str, ...]) -> Counter[tuple[str, str]]:
    """(combined verdict, level) counted over the checks any of these runs ran."""
    counts: Counter[tuple[str, str]] = Counter()
    for m in merged.values():
        verdicts = [m["by"][lab]["verdict"] for lab in labels if lab in m["by"]]
        if verdicts:
            counts[(_combined(verdicts), m["res"]["level"])] += 1
    return counts


def _headline(name: str, counts: Counter[tuple[str, str]]) -> str:
    def n(verdict: str, level: str | None = None) -> int:
        return sum(c for (v, lv), c in counts.items() if v == verdict and (level is None or lv == level))

    parts = [f"{n('pass')} pass"]
    fails = [f"{n('fail', lv)} {lv}" for lv in ("MUST", "SHOULD", "extension") if n("fail", lv)]
    parts.append(f"{n('fail')} fail" + (f" ({', '.join(fails)})" if fails else ""))
    if n("warn") or name == "draft":
        parts.append(f"{n('warn')} warn (SHOULD)")
    parts.append(f"{n('skip')} skip")
    if n("error"):
        parts.append(f"{n('error')} error")
    return f"{name}: " + ", ".join(parts)


_MARK = {"pass": "pass", "fail": "**FAIL**", "warn": "*warn*", "skip": "skip", "error": "**ERROR**"}


def _departures(merged: dict[str, dict[str, Any]], verdict: str, levels: tuple[str, ...]) -> list[str]:
    """List items: the checks of these levels with this verdict in some run, with the message of
    the first such run and every run that gave it."""
    items = []
    for cid, m in merged.items():
        if m["res"]["level"] not in levels:
            continue
        labs = [lab for lab, r in m["by"].items() if r["verdict"] == verdict]
        if not labs:
            continue
        r = m["by"][labs[0]]
        # Runs whose messages differ only in ids, instants or the HTTP method say one thing.
        others = {_same_message(_cell(m["by"][lab]["message"], 400)) for lab in labs}
        more = "" if len(others) == 1 else f" (the other runs' messages differ in detail: see conformance/targets/{OUT.name}/)"
        items.append(f"- `{cid}` ({_cites(r)}; {', '.join(labs)}): {_cell(r['message'], 300)}{more}")
    return items


def _target_section(state: TargetState, reports: dict[str, dict[str, Any]]) -> list[str]:
    labels = [run.label for run in state.runs if run.label in reports]
    merged = _merge(reports, labels)
    draft_labels = tuple(lab for lab in DRAFT_RUNS if lab in reports)
    profile_labels = tuple(lab for lab in PROFILE_RUNS if lab in reports)
    out = [""]
    if draft_labels:
        out.append(f"**{_headline('draft', _tally(merged, draft_labels))}** "
                   f"({' + '.join(draft_labels)}, a check counted once by its worst verdict)")
    if profile_labels:
        out += ["", f"**{_headline('core/full', _tally(merged, profile_labels))}** ({' + '.join(profile_labels)})"]
    out += [""]
    for run in state.runs:
        if run.label in reports:
            c = reports[run.label]["summary"]
            out.append(f"- {run.label}: {c['pass']} pass, {c['fail']} fail, {c.get('warn', 0)} warn, {c['skip']} skip, "
                       f"{c['error']} error ({run.seconds:.1f} s)")

    must = _departures(merged, "fail", ("MUST", "SHOULD"))  # a SHOULD check never fails; listed if it did
    should = _departures(merged, "warn", ("SHOULD", "MUST"))
    ext = _departures(merged, "fail", ("extension",))
    errors = _departures(merged, "error", ("MUST", "SHOULD", "extension"))
    out += ["", "### Departures from the drafts", ""]
    if must:
        out += ["MUST (fail):", ""] + must + [""]
    if should:
        out += ["SHOULD (warn):", ""] + should + [""]
    if not must and not should:
        out += ["- None: every check that cites a draft passed or did not apply.", ""]
    out += ["### Departures from MPP's profile only", "",
            "Checks of MPP's own, stricter profile (`extension`: they cite `spec/` ids, not a draft); a target",
            "can follow the drafts and still fail these.", ""]
    out += ext or ["- None."]
    if errors:
        out += ["", "### Checks that could not run", ""] + errors
    skips = []
    for cid, m in merged.items():
        if all(r["verdict"] == "skip" for r in m["by"].values()):
            msgs = {_same_message(_cell(r["message"], 200)) for r in m["by"].values()}
            skips.append(f"`{cid}`" + (f" ({_cell(next(iter(m['by'].values()))['message'], 200)})" if len(msgs) == 1 else ""))
    if skips:
        out += ["", "Skipped in every run (not applicable to this target, or not checkable here): " + "; ".join(skips) + "."]
    obs = _observations(state, reports, merged)
    if obs:
        out += ["", "### From the evidence", ""] + obs

    d_cols = [lab for lab in DRAFT_RUNS if lab in reports]
    p_cols = [lab for lab in PROFILE_RUNS if lab in reports]
    out += ["", "### Checks", "",
            "| check | level | cites | " + " | ".join(d_cols + p_cols) + " |",
            "|---|---|---|" + "---|" * (len(d_cols) + len(p_cols))]
    for cid, m in merged.items():
        cells = [_MARK[m["by"][lab]["verdict"]] if lab in m["by"] else "—" for lab in d_cols + p_cols]
        out.append(f"| `{cid}` | {m['res']['level']} | {_cell(_cites(m['res']), 400)} | " + " | ".join(cells) + " |")
    return out


def render(states: list[TargetState], total_seconds: float | None, generated: str | None = None) -> str:
    now = generated or datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    loaded = {s.name: {run.label: rep for run in s.runs if (rep := _load(run)) is not None} for s in states}
    docs = _documents([rep for reps in loaded.values() for rep in reps.values()])
    out = [
        "# Conformance results: third-party sellers",
        "",
        "<!-- Generated by conformance/targets/run.py (`make conformance-results`); do not edit by hand. -->",
        "",
        f"Generated {now}.",
        "",
    ]
    for state in states:
        reps = loaded[state.name]
        if state.failure or not reps:
            out.append(f"- **{state.name}**: not run to completion (see its section).")
            continue
        merged = _merge(reps, [run.label for run in state.runs if run.label in reps])
        heads = []
        if any(lab in reps for lab in DRAFT_RUNS):
            heads.append(_headline("draft", _tally(merged, tuple(lab for lab in DRAFT_RUNS if lab in reps))))
        if any(lab in reps for lab in PROFILE_RUNS):
            heads.append(_headline("core/full", _tally(merged, tuple(lab for lab in PROFILE_RUNS if lab in reps))))
        versions = ", ".join(f"{k} {v}" for k, v in list(state.versions.items())[:1])
        out.append(f"- **{state.name}** ({versions}): " + "; ".join(heads))
    out += [
        "",
        "A check's level says what it tests. `MUST` and `SHOULD` checks cite a published draft; a",
        "departure from a MUST fails, from a SHOULD warns (`--profile draft` runs only these).",
        "`extension` checks test MPP's own stricter profile and cite its requirement ids in `spec/`",
        "(`--profile core` and `full` run them beside the draft's checks). The counts above take each",
        "check once, by its worst verdict over the runs of that profile.",
        "",
        "## How the targets are built",
        "",
        "Each target is a small seller built on a published MPP SDK, installed from its registry at",
        "run time into its own environment, with one custom payment method `test`/`charge` whose",
        f"verification accepts exactly the payload `{json.dumps(PAYLOAD)}` and settles nothing (the SDKs'",
        "own rails need a blockchain or Stripe). Each serves `GET` and `POST` on `/paid` and on",
        "`/other` (priced alike, for the route-binding check). Both run with replay protection",
        "switched on the way the SDK's own documentation advises; everything else is the SDK's",
        "default (challenge lifetime, problem documents).",
        "",
        "- **pympp**: a Starlette app whose routes are decorated with pympp's `mpp.server.pay`",
        "  (its framework integration), served by uvicorn; the POST routes bind the request body",
        "  with pympp's `body` route option. Source: [targets/pympp_seller.py](targets/pympp_seller.py).",
        "  *Replay store:* `Mpp(..., store=MemoryStore())` with `mpp.stores.MemoryStore`. In pympp",
        "  a replay store is used by methods, not by the server core: `Mpp`'s docstring says the",
        "  `store` argument is handed to every configured method that has no store of its own, and",
        "  `ServerMethod`'s docstring names the `use_store` hook through which a method takes it",
        "  (pympp's Tempo and EVM charges are built so, and fall back to an in-process memory store).",
        "  The README asks for one atomic store shared by all workers and replicas; the target is a",
        "  single process, so the in-memory store is that store (`SQLiteStore` and `RedisStore` are",
        "  pympp's persistent ones). A custom method gets no replay protection from pympp unless it",
        "  uses the store, so the test method does what the built-in ones do: it takes the store",
        "  through `use_store`, claims the key `test:charge:<challenge id>` with `put_if_absent`",
        "  before it answers success, and raises pympp's `CredentialReplayedError` when the key is",
        "  already taken (which pympp answers with 403 `verification-failed` and no challenge, as",
        "  that error's docstring explains, so an auto-paying client does not pay twice).",
        "- **mppx**: `Mppx.create` and `mppx.charge(...)(request)` in a fetch handler, served by",
        "  node:http through mppx's `Request.toNodeListener`, as mppx's README shows it (no `scope`",
        "  option). Source: [targets/mppx_seller.mjs](targets/mppx_seller.mjs).",
        "  *Replay store:* `Store.memory()`, used by the test method. `Mppx.create` has no store",
        "  option (its typed config lists methods, realm, secret key, transport and hooks); in mppx",
        "  replay protection is a method's: its Tempo charge takes a `store` (an `AtomicStore`,",
        "  documented as defaulting to memory for paid charges and to be shared across instances)",
        "  and, in its terminal `broadcast` hook, claims the transaction hash, or for a proof",
        "  credential the challenge id, with `Store.tryClaim(store, key, expires)` until the",
        "  challenge expires, refusing a second use with `VerificationFailedError`. The test method",
        "  does the same with mppx's in-memory `Store.memory()`: it claims `test:charge:<challenge",
        "  id>` until the challenge's `expires` (mppx answers the refusal with 402",
        "  `verification-failed` and a fresh challenge).",
        "",
        "## Runs",
        "",
        "Per target (`mpp-conformance seller ...`; URL is where the target listens):",
        "",
        "| run | arguments |",
        "|---|---|",
    ]
    for label, profile, method in RUN_PLAN:
        out.append(f"| {label} | `{' '.join(_quote(a) for a in run_args('URL', profile, method)[1:])}` |")
    out += [
        "",
        "`draft` runs the checks of the core and full groups that cite a draft (it pays, so the",
        "draft's paying checks run too); `full` includes `core`, so the core checks appear in three",
        "of the profile runs. A `—` in the tables means the run does not include the check.",
        f"`--expiry-wait {EXPIRY_WAIT:g}`: both SDKs give challenges a 5-minute lifetime by default",
        "and the targets keep it; waiting 5 minutes in each of five runs would take 25 minutes, so",
        "`core.expired-challenge` skips (its message says so) and challenge expiry is not tested",
        "here beyond `core.expired-echo` (an echoed `expires` in the past).",
        "",
        "Below, per target: the verdicts, the departures from the drafts (MUST fails, then SHOULD",
        "warnings) kept apart from the departures from MPP's profile only (extension fails), what",
        "the recorded exchanges show, and the table of checks. All of it is computed by",
        "[targets/run.py](targets/run.py) from the JSON reports (left with their full evidence in",
        "`conformance/targets/out/`, credentials redacted by the suite) and the targets' logs.",
    ]
    if docs:
        out += ["", "Documents cited: " + "; ".join(docs) + "."]
    if total_seconds is not None:
        out += ["", f"run.py took {total_seconds:.0f} s in all (environments, targets and suite runs)."]
    for state in states:
        out += ["", f"## {state.title}", ""]
        versions = ", ".join(f"{k} {v}" for k, v in state.versions.items()) or "unknown"
        out += [f"- Versions: {versions}", f"- Run: {state.started}" + (f", target at {state.url}" if state.url else "")]
        if state.failure:
            out += ["", f"**The suite could not be run to completion against this target.** {_cell(state.failure, 400)}", ""]
            detail = state.failure.split("\n", 1)
            if len(detail) > 1:
                out += ["```", detail[1].strip()[-3000:], "```"]
        reports = loaded[state.name]
        if reports:
            out += _target_section(state, reports)
    return "\n".join(out) + "\n"



# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--targets", default=",".join(TARGETS), help="comma-separated subset of: " + ", ".join(TARGETS))
    p.add_argument("--render-only", action="store_true", help="re-render RESULTS.md from the last run's out/state.json")
    p.add_argument("--results", default=str(RESULTS), help="where to write the results (default conformance/RESULTS.md)")
    a = p.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    state_file = OUT / "state.json"
    if a.render_only:
        raw = json.loads(state_file.read_text(encoding="utf-8"))
        states = [TargetState(**{**s, "runs": [Run(**r) for r in s["runs"]]}) for s in raw["targets"]]
        Path(a.results).write_text(render(states, raw.get("seconds"), raw.get("generated")), encoding="utf-8")
        print(f"wrote {a.results}")
        return 0
    names = [n.strip() for n in a.targets.split(",") if n.strip()]
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        p.error(f"unknown target(s): {', '.join(unknown)}")
    # mpp_conformance must import from this environment (the project's .venv).
    env_check = subprocess.run([sys.executable, "-c", "import mpp_conformance.cli"], capture_output=True, text=True)
    if env_check.returncode != 0:
        print(f"run.py: mpp_conformance is not importable from {sys.executable}; run it with .venv/bin/python "
              f"(make conformance-results)\n{env_check.stderr}", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    states = [run_target(name) for name in names]
    seconds = time.monotonic() - t0
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    state_file.write_text(json.dumps({"seconds": seconds, "generated": generated, "targets": [asdict(s) for s in states]},
                                     indent=2), encoding="utf-8")
    Path(a.results).write_text(render(states, seconds, generated), encoding="utf-8")
    print(f"wrote {Path(a.results).resolve().relative_to(ROOT) if Path(a.results).resolve().is_relative_to(ROOT) else a.results} "
          f"({seconds:.0f} s)")
    bad = [s for s in states if s.failure]
    for s in bad:
        print(f"run.py: {s.name}: {s.failure}", file=sys.stderr)
    return 2 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

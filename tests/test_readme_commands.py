"""Every command in README.md's ```sh blocks runs, in README order, on a fresh home directory, and
succeeds: a README flow a new user cannot complete fails `make test` (issue 17, "Every command in
the README is run by a test"; findings 3, 4, 5 and 6 are README flows that could not be finished).

How the README is read (the rules are stated at the top of its "Command line" section too):

- A command is a line of a ```sh block (with its ``\\`` continuation lines); whole-line comments are
  prose. Each runs under ``bash -c`` in the work directory ``tmp_path/work``, with ``HOME`` set to a
  fresh ``tmp_path/home``, so nothing of the machine's own state is used.
- Not run, on purpose: ``make ...`` lines (``make test`` is what runs this test, ``make demo``,
  ``make docs`` and ``make bench`` have tests of their own: tests/test_accounts.py, tests/test_docs.py,
  tests/test_bench_smoke.py), the fuzzer's block (it needs atheris
  in a side environment and runs for ten minutes), and any command whose own comment starts
  ``# not run:`` followed by the reason, which the README must give. Nothing else is skipped.
- A command succeeds when it exits 0, or the code its own comment names when that comment starts
  ``# exit N`` (a documented refusal, e.g. ``mpp fetch``'s 7 for approval-required).
- ``.venv/bin/`` is this interpreter's bin directory. The README's seller port 8402 and ledger
  service ports 8403 and 8404 are replaced by free ports; ``PORT`` by the port of the PostgreSQL server the
  README starts (``python -m mpp.stores.pg.server &``, it prints its URL); ``<pid>`` by the process
  id of the seller started last.
- ``$NAME`` placeholders are values an earlier command printed (CAPTURES below: which command, which
  pattern); a placeholder no earlier command printed fails the command that uses it.
- A command that starts a server (ends with ``&``, or is ``mpp seller serve`` / ``mpp ledger serve``)
  runs in the background until it prints its ready line; it is stopped when the README starts
  another server on the same port, and at the end of the run (a reader keeps a seller running in
  another terminal while following the blocks after it, so the blocks share it).

Each failing command is reported with its line in README.md, the command as written and its output.
"""

from __future__ import annotations

import os
import random
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BIN = Path(sys.executable).parent
COMMAND_TIMEOUT = 90
READY_TIMEOUT = 60

DID = r"(did:key:z[1-9A-HJ-NP-Za-km-z]+)"
# name -> (the earlier command that prints it, the pattern of its value in that command's output,
# what it is, for the failure message)
CAPTURES: dict[str, tuple[str, str, str]] = {
    "PRINCIPAL_DID": (r"mpp init\b", r"principal\b[^\n]*?" + DID, "the principal's DID `mpp init` prints"),
    "AGENT_DID": (r"mpp init\b", r"agent\b[^\n]*?" + DID, "the agent's DID `mpp init` prints"),
    "P2_DID": (r"mpp principal init p2\b", DID, "the DID `mpp principal init p2` prints"),
    "AGENT_B_DID": (r"mpp agent init agent-b\b", DID, "the DID `mpp agent init agent-b` prints"),
    "SELLER_LEDGER_DID": (r"mpp ledger key\b", DID, "the DID `mpp ledger key` prints"),
    "RECEIPT": (r"mpp fetch\b", r"(?m)^Payment-Receipt: (\S+)$",
                "the raw Payment-Receipt value, on a line `Payment-Receipt: VALUE` of `mpp fetch`'s output"),
}
SHELL_VARIABLES = {"HOME", "PATH"}
README_PORTS = ("8402", "8403", "8404")  # the seller's, the ledger service's, an open ledger service's
SERVER = re.compile(r"(&\s*$)|\bmpp (seller|ledger) serve\b")
READY = re.compile(r"\bready on http://\S+|(postgresql://\S+)")
NOT_RUN = re.compile(r"^\s*make\s")
NOT_RUN_MARK = "# not run:"
EXPECTED_EXIT = re.compile(r"^#\s*exit (\d+)\b")  # a comment "# exit 7 ...": the command must exit 7


@dataclass
class Command:
    line: int  # of README.md, 1-based
    text: str  # as written, continuation lines joined


@dataclass
class Block:
    line: int
    commands: list[Command] = field(default_factory=list)


def sh_blocks(text: str) -> list[Block]:
    """The ```sh blocks of ``text`` and their commands, in order (comments and blank lines dropped)."""
    blocks: list[Block] = []
    block: Block | None = None
    pending: Command | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if block is None:
            if stripped == "```sh":
                block = Block(number)
            continue
        if stripped.startswith("```"):
            blocks.append(block)
            block = None
            continue
        if pending is not None:
            pending.text += "\n" + line
        elif stripped and not stripped.startswith("#"):
            pending = Command(number, line)
        if pending is not None and not _comment_free(line).rstrip().endswith("\\"):
            block.commands.append(pending)
            pending = None
    return blocks


def _comment_free(line: str) -> str:
    """``line`` without a trailing `` # comment`` (a ``#`` after whitespace, outside quotes)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def free_port() -> int:
    """A loopback port free now, below the kernel's ephemeral range: the README's servers start many
    seconds after their ports are chosen, and a port the kernel handed out for binding to port 0 or
    for an outgoing connection (any test running beside this one) may be taken again meanwhile."""
    low = _ephemeral_low()
    for _ in range(200):
        port = random.randrange(max(1024, low - 12_000), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free loopback port below the ephemeral range")


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


class Runner:
    """Runs the README's commands one by one and keeps what the later ones need."""

    def __init__(self, tmp: Path) -> None:
        self.work = tmp / "work"
        self.work.mkdir()
        (tmp / "home").mkdir()
        self.env = {**os.environ, "HOME": str(tmp / "home"), "PATH": f"{BIN}:{os.environ['PATH']}",
                    "PYTHONUNBUFFERED": "1"}
        self.env.pop("MPP_HOME", None)
        self.ports = {readme_port: str(free_port()) for readme_port in README_PORTS}
        self.values: dict[str, str] = {}
        self.servers: dict[str, subprocess.Popen] = {}  # by the README port they listen on
        self.last_seller: subprocess.Popen | None = None
        self.failures: list[str] = []
        self.ran = 0

    # -- what a command becomes -------------------------------------------------------------

    def substituted(self, text: str) -> str:
        """The command as run: paths, ports and placeholders replaced (see the module docstring)."""
        text = text.replace(".venv/bin/", f"{BIN}/")
        for readme_port, port in self.ports.items():
            text = re.sub(rf"\b{readme_port}\b", port, text)
        if "PORT" in self.values:
            text = re.sub(r"\bPORT\b", self.values["PORT"], text)
        if "<pid>" in text and self.last_seller is not None:
            text = text.replace("<pid>", str(self.last_seller.pid))
        return text

    def missing(self, text: str) -> list[str]:
        """Placeholders the command uses that no earlier command has printed."""
        names = set(re.findall(r"\$\{?([A-Z][A-Z0-9_]*)", _comment_free(text))) - SHELL_VARIABLES
        missing = [f"${n} ({CAPTURES[n][2]})" if n in CAPTURES else f"${n} (not a placeholder CAPTURES knows)"
                   for n in sorted(names) if n not in self.values]
        if re.search(r"\bPORT\b", "\n".join(_comment_free(line) for line in text.splitlines())) and "PORT" not in self.values:
            missing.append("PORT (the PostgreSQL server's, printed by `python -m mpp.stores.pg.server`)")
        if "<pid>" in text and self.last_seller is None:
            missing.append("<pid> (no seller started before)")
        return missing

    def environment(self) -> dict[str, str]:
        """The commands' environment: the fresh HOME, this interpreter's bin first on PATH, and
        the placeholders learnt so far as shell variables."""
        return {**self.env, **self.values}

    def capture(self, command: str, output: str) -> None:
        """Keep the placeholder values CAPTURES finds in the output of ``command`` (comment stripped)."""
        for name, (source, pattern, _) in CAPTURES.items():
            if re.search(source, command):
                match = re.search(pattern, output)
                if match:
                    self.values[name] = match.group(1)

    # -- running -----------------------------------------------------------------------------

    def run(self, command: Command) -> None:
        if NOT_RUN.match(command.text) or NOT_RUN_MARK in command.text:
            return
        missing = self.missing(command.text)
        if missing:
            self.fail(command, "placeholder(s) no earlier command printed: " + ", ".join(missing), "")
            return
        self.ran += 1
        text = self.substituted(command.text)
        if SERVER.search(_comment_free(text.splitlines()[-1])):
            self.start_server(command, text)
            return
        try:
            done = subprocess.run(["bash", "-c", text], cwd=self.work, env=self.environment(), capture_output=True,
                                  text=True, timeout=COMMAND_TIMEOUT, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            self.fail(command, f"did not finish in {COMMAND_TIMEOUT} s", f"{exc.stdout or ''}{exc.stderr or ''}")
            return
        output = done.stdout + done.stderr
        self.capture(_comment_free(command.text), output)
        expected = EXPECTED_EXIT.search(command.text.splitlines()[-1][len(_comment_free(command.text.splitlines()[-1])):])
        wanted = int(expected.group(1)) if expected else 0
        if done.returncode != wanted:
            self.fail(command, f"exit {done.returncode}" + (f", the README says {wanted}" if expected else ""), output)

    def start_server(self, command: Command, text: str) -> None:
        port = next((p for p in self.ports if re.search(rf"\b{p}\b", command.text)), None)
        if port is None and re.search(r"\bmpp seller serve\b", command.text):
            port = "8402"  # the seller's default port
        if port in self.servers:
            replaced = self.servers.pop(port)
            stop(replaced)
            if replaced is self.last_seller:
                self.last_seller = None
        # run in the foreground of its own process group (so stop() reaches it and its children):
        # the README's trailing comment and `&` go
        text = re.sub(r"&\s*$", "", _comment_free(text).rstrip()).rstrip()
        if "--port" not in text and port is not None:
            text += f" --port {self.ports[port]}"
        proc = subprocess.Popen(["bash", "-c", "exec " + text], cwd=self.work, env=self.environment(), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        self.servers[port or f"server-{proc.pid}"] = proc
        ready, output = wait_ready(proc)
        if ready is None:
            self.fail(command, "the server did not print its ready line", output)
            return
        if ready.group(1):  # the PostgreSQL server's URL
            self.values["PORT"] = re.search(r":(\d+)/", ready.group(1)).group(1)
        if re.search(r"\bmpp seller serve\b", command.text):
            self.last_seller = proc

    def fail(self, command: Command, why: str, output: str) -> None:
        tail = "\n".join(output.strip().splitlines()[-15:])
        self.failures.append(f"README.md:{command.line}: {why}\n    $ {command.text.strip()}\n"
                             + "".join(f"    | {line}\n" for line in tail.splitlines()))

    def stop_all(self) -> None:
        for proc in self.servers.values():
            stop(proc)


def wait_ready(proc: subprocess.Popen) -> tuple[re.Match | None, str]:
    """The ready line's match (None if the process exits or stays silent), and what it printed."""
    seen: list[str] = []
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + READY_TIMEOUT
    try:
        while time.monotonic() < deadline:
            if not selector.select(timeout=deadline - time.monotonic()):
                break
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line)
            match = READY.search(line)
            if match:
                return match, "".join(seen)
    finally:
        selector.close()
    return None, "".join(seen)


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (its workers, its PostgreSQL too; even if the leader
    has exited), SIGKILL to what is left after 15 s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and _group_alive(proc.pid):
        time.sleep(0.1)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    if proc.stdout:
        proc.stdout.close()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member runs as another user (PostgreSQL's, as root): still alive
        return True
    return True


def runnable_blocks() -> list[Block]:
    """The README's sh blocks but the fuzzer's (see the module docstring)."""
    return [b for b in sh_blocks(README.read_text(encoding="utf-8"))
            if not any("fuzz" in c.text for c in b.commands)]


def test_every_readme_command_completes(tmp_path: Path) -> None:
    runner = Runner(tmp_path)
    started = time.monotonic()
    try:
        for block in runnable_blocks():
            for command in block.commands:
                runner.run(command)
    finally:
        runner.stop_all()
    elapsed = time.monotonic() - started
    assert runner.ran >= 30, f"only {runner.ran} README commands ran: is the README still read right?"
    assert not runner.failures, (f"{len(runner.failures)} README command(s) of {runner.ran} failed "
                                 f"({elapsed:.0f} s):\n" + "\n".join(runner.failures))


def test_the_reader_finds_commands_comments_and_continuations() -> None:
    text = "\n".join([
        "prose", "```sh",
        "make demo   # top",
        ".venv/bin/mpp init home      # a comment with 'quote",
        "# a whole-line comment",
        ".venv/bin/mpp mandate issue --subject $AGENT_B_DID \\",
        "    --scope 'GET /weather*' --out a.json",
        "                              # continued comment",
        "echo '#not a comment' # not run: an example",
        "```", "```python", "not = 'sh'", "```",
    ])
    [block] = sh_blocks(text)
    assert [(c.line, c.text) for c in block.commands] == [
        (3, "make demo   # top"),
        (4, ".venv/bin/mpp init home      # a comment with 'quote"),
        (6, ".venv/bin/mpp mandate issue --subject $AGENT_B_DID \\\n    --scope 'GET /weather*' --out a.json"),
        (9, "echo '#not a comment' # not run: an example"),
    ]
    assert _comment_free("echo '#x' # y") == "echo '#x' "


def test_a_command_that_fails_or_lacks_a_placeholder_is_reported(tmp_path: Path) -> None:
    runner = Runner(tmp_path)
    runner.run(Command(7, "false"))
    runner.run(Command(8, "echo $AGENT_B_DID"))
    runner.run(Command(9, "make test"))
    runner.run(Command(10, "false   # not run: explained"))
    runner.run(Command(11, "echo 'agent did:key:z6MkabcDEF'   # stands in for mpp agent init agent-b"))
    runner.run(Command(12, "exit 7   # exit 7: a documented refusal"))
    runner.run(Command(13, "true   # exit 7: said, not done"))
    runner.run(Command(14, "echo PORT   # the word in an echo, not in a comment"))
    runner.run(Command(15, "true   # a comment naming PORT is not a placeholder"))
    assert runner.values == {}  # not the command CAPTURES names
    assert [f.splitlines()[0] for f in runner.failures] == [
        "README.md:7: exit 1",
        "README.md:8: placeholder(s) no earlier command printed: $AGENT_B_DID (the DID "
        "`mpp agent init agent-b` prints)",
        "README.md:13: exit 0, the README says 7",
        "README.md:14: placeholder(s) no earlier command printed: PORT (the PostgreSQL server's, printed by "
        "`python -m mpp.stores.pg.server`)",
    ]
    runner.capture("mpp agent init agent-b --account acct:buyer", "agent did:key:z6MkabcDEF\n  wallet: agent-b")
    assert runner.values == {"AGENT_B_DID": "did:key:z6MkabcDEF"}
    assert runner.substituted(".venv/bin/mpp fetch http://127.0.0.1:8402/x") == \
        f"{BIN}/mpp fetch http://127.0.0.1:{runner.ports['8402']}/x"


def test_a_server_runs_in_the_background_until_stopped_and_one_that_dies_is_reported(tmp_path: Path) -> None:
    runner = Runner(tmp_path)
    ready = "import time; print('mpp seller ready on http://127.0.0.1:1', flush=True); time.sleep(120)"
    runner.run(Command(20, f'.venv/bin/python -c "{ready}" &   # a comment after the ampersand'))
    runner.run(Command(21, ".venv/bin/python -c \"print('postgresql://postgres@127.0.0.1:5999/postgres', flush=True); "
                           "import time; time.sleep(120)\" &"))
    runner.run(Command(22, ".venv/bin/python -c \"print('no such thing')\" &"))
    servers = list(runner.servers.values())
    try:
        assert [proc.poll() for proc in servers[:2]] == [None, None]
        assert runner.values == {"PORT": "5999"}
        assert runner.substituted("psql -p PORT") == "psql -p 5999"
        assert [f.splitlines()[0] for f in runner.failures] == ["README.md:22: the server did not print its ready line"]
        assert "no such thing" in runner.failures[0]
    finally:
        runner.stop_all()
    assert all(proc.poll() is not None for proc in servers)
    assert not any(_group_alive(proc.pid) for proc in servers)

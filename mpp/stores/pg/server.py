"""A throwaway PostgreSQL server for tests and benchmarks: a fresh cluster in a temporary
folder, listening on loopback, deleted when done.

    with throwaway_postgres() as url:      # postgresql://postgres@127.0.0.1:PORT/postgres
        ...
    db = create_database(url)              # a fresh, empty database on that server

``python -m mpp.stores.pg.server`` starts one and prints its URL until interrupted.

The server refuses to run as root, so when we are root (as on CI) the cluster belongs to the
``postgres`` system user and every server program runs as that user. Durability is switched
off (fsync, synchronous_commit, full_page_writes): the data dies with the folder anyway.
Nothing here skips: if PostgreSQL is missing or does not start, PostgresUnavailable says why,
with the tail of the server's log.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

__all__ = ["PostgresUnavailable", "throwaway_postgres", "create_database", "find_pg_bin"]

# Settings for a server whose data is thrown away: fast, not durable.
_FAST = ("fsync=off", "synchronous_commit=off", "full_page_writes=off", "max_connections=300")


class PostgresUnavailable(RuntimeError):
    """PostgreSQL could not be found or started; the message says why and what to do."""


def find_pg_bin() -> Path:
    """The folder holding initdb, pg_ctl and postgres: from PATH, else Debian's
    /usr/lib/postgresql/<version>/bin (newest version first)."""
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                        key=lambda p: [int(x) if x.isdigit() else 0 for x in Path(p).parts[-3].split(".")], reverse=True)
    if candidates:
        return Path(candidates[0]).parent
    raise PostgresUnavailable(
        "PostgreSQL is not installed: `initdb` is neither on PATH nor under /usr/lib/postgresql/*/bin "
        "(install it: apt-get install --no-install-recommends postgresql)")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no server log)"
    return "\n".join(text.splitlines()[-lines:]) or "(server log is empty)"


class _Runner:
    """Runs the server programs, as the ``postgres`` user when we are root."""

    def __init__(self) -> None:
        self.as_user: dict[str, Any] = {}
        self.uid = self.gid = None
        if os.geteuid() == 0:
            import pwd

            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresUnavailable(
                    "running as root, and PostgreSQL refuses root: a `postgres` system user is needed to run the "
                    "server (installing Debian's postgresql package creates it)") from None
            self.uid, self.gid = pw.pw_uid, pw.pw_gid
            self.as_user = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": [],
                            "env": {**os.environ, "HOME": pw.pw_dir, "USER": "postgres", "LOGNAME": "postgres"}}

    def chown(self, path: Path) -> None:
        if self.uid is not None:
            os.chown(path, self.uid, self.gid)

    def run(self, cmd: list[str], *, timeout: float) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd="/", **self.as_user)


@contextmanager
def throwaway_postgres(*, port: int | None = None, start_timeout: float = 60.0) -> Iterator[str]:
    """Start a fresh PostgreSQL on 127.0.0.1 and yield its URL; stop it and delete its data after."""
    bin_dir = find_pg_bin()
    runner = _Runner()
    # The folder must be reachable by the postgres user: under /tmp when root, whatever TMPDIR says.
    base = tempfile.mkdtemp(prefix="mpp-pg-", dir="/tmp" if runner.uid is not None else None)
    root = Path(base)
    data, log = root / "data", root / "server.log"
    started = False
    try:
        runner.chown(root)
        os.chmod(root, 0o700)
        init = runner.run([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                           "--locale=C", "--no-sync"], timeout=120)
        if init.returncode != 0:
            raise PostgresUnavailable(f"initdb failed (exit {init.returncode}):\n{init.stdout[-2000:]}\n{init.stderr[-2000:]}")
        attempts = 1 if port is not None else 3  # a free port can be taken between choosing and binding it
        for attempt in range(attempts):
            chosen = port if port is not None else _free_port()
            options = " ".join([f"-p {chosen}", "-c listen_addresses=127.0.0.1", f"-c unix_socket_directories={root}",
                                *(f"-c {o}" for o in _FAST)])
            try:
                start = runner.run([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w",
                                    "-t", str(int(start_timeout)), "-o", options, "start"], timeout=start_timeout + 10)
            except subprocess.TimeoutExpired:
                start = None
            if start is not None and start.returncode == 0:
                started = True
                break
            _kill_postmaster(data)
            if attempt == attempts - 1:
                why = "timed out" if start is None else f"exit {start.returncode}: {start.stderr.strip() or start.stdout.strip()}"
                raise PostgresUnavailable(f"PostgreSQL did not start on 127.0.0.1:{chosen} ({why}); "
                                          f"the server log's last lines:\n{_tail(log)}")
        yield f"postgresql://postgres@127.0.0.1:{chosen}/postgres"
    finally:
        if started:
            try:
                runner.run([str(bin_dir / "pg_ctl"), "-D", str(data), "stop", "-m", "immediate", "-w", "-t", "30"], timeout=40)
            except subprocess.TimeoutExpired:
                pass
            _kill_postmaster(data)
        shutil.rmtree(root, ignore_errors=True)


def _kill_postmaster(data: Path) -> None:
    """Last resort: SIGKILL the postmaster named in postmaster.pid (its children exit with it)."""
    try:
        pid = int((data / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


def create_database(url: str, name: str | None = None) -> str:
    """Create an empty database on the server at ``url`` and return its URL. Callable from sync
    code, also while an event loop runs in this thread (it works in a thread of its own)."""
    import asyncio

    import asyncpg

    name = name or "t_" + uuid.uuid4().hex[:16]
    if not name.replace("_", "").isalnum():
        raise ValueError(f"database name must be letters, digits and underscores: {name!r}")

    async def make() -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        finally:
            await conn.close()

    failure: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(make())
        except BaseException as exc:  # re-raised in the caller's thread
            failure.append(exc)

    worker = threading.Thread(target=run, name="create-database")
    worker.start()
    worker.join()
    if failure:
        raise failure[0]
    return url.rsplit("/", 1)[0] + "/" + name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mpp.stores.pg.server",
        description="Start a throwaway PostgreSQL on 127.0.0.1 (data in a temporary folder, durability off), print "
                    "its URL, and keep it until interrupted (Ctrl-C or SIGTERM); then stop it and delete the data.")
    parser.add_argument("--port", type=int, default=None, help="TCP port (default: a free one)")
    parser.add_argument("--database", action="store_true", help="also create a fresh database and print its URL instead")
    args = parser.parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        with throwaway_postgres(port=args.port) as url:
            print(create_database(url) if args.database else url, flush=True)
            while not stop.wait(0.5):
                pass
    except PostgresUnavailable as exc:
        print(f"mpp.stores.pg.server: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

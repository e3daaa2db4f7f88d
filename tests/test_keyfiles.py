"""IDENT-KEY-07: private keys and secrets are written owner-only, atomically, never through a
symbolic link, and never over an existing file unless the user asks for it (--force)."""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from pathlib import Path

import pytest

from mpp.protocol.keys import SecretFileRefused, SigningKey, write_secret

from test_cli_identity import mpp_cli, ok, one_line_error

pytestmark = pytest.mark.skipif(os.name != "posix", reason="file modes and symbolic links as on POSIX")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def snapshot(directory: Path) -> dict[str, tuple[str, int]]:
    """Every file and link under ``directory``: its content hash (or link target) and mode."""
    out = {}
    for p in sorted(directory.rglob("*")):
        if p.is_symlink():
            out[str(p.relative_to(directory))] = ("-> " + os.readlink(p), 0)
        elif p.is_file():
            out[str(p.relative_to(directory))] = (hashlib.sha256(p.read_bytes()).hexdigest(), mode(p))
    return out


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


# -- the one helper ----------------------------------------------------------------------


@pytest.mark.parametrize("force", [False, True])
@pytest.mark.parametrize("target_exists", [False, True])
def test_a_symbolic_link_is_refused_and_its_target_untouched(tmp_path: Path, force: bool, target_exists: bool):
    """IDENT-KEY-07: a link planted at a key's path is refused, with or without force; the file it
    points to is neither created nor changed."""
    victim = tmp_path / "elsewhere" / "victim"
    victim.parent.mkdir()
    if target_exists:
        victim.write_text("precious\n")
        victim.chmod(0o644)
    link = tmp_path / "hmac.secret"
    link.symlink_to(victim)
    with pytest.raises(SecretFileRefused, match="symbolic link"):
        write_secret(link, b"secret\n", force=force)
    assert link.is_symlink() and os.readlink(link) == str(victim)
    if target_exists:
        assert (victim.read_text(), mode(victim)) == ("precious\n", 0o644)
    else:
        assert not victim.exists()
    assert leftovers(tmp_path) == []


def test_an_existing_file_is_kept_without_force_and_replaced_0600_with_it(tmp_path: Path):
    """IDENT-KEY-07: an existing 0644 secret is refused (message names the file and --force) and
    stays as it was; with force it is replaced, new content, mode 0600."""
    path = tmp_path / "hmac.secret"
    path.write_text("old\n")
    path.chmod(0o644)
    with pytest.raises(SecretFileRefused) as refused:
        write_secret(path, b"new\n")
    assert str(path) in str(refused.value) and "--force" in str(refused.value)
    assert (path.read_text(), mode(path)) == ("old\n", 0o644)
    write_secret(path, b"new\n", force=True)
    assert (path.read_text(), mode(path)) == ("new\n", 0o600)
    assert leftovers(tmp_path) == []


def test_a_new_file_is_0600_whatever_the_umask(tmp_path: Path):
    """IDENT-KEY-07: the mode does not depend on the process's umask."""
    old = os.umask(0o000)
    try:
        write_secret(tmp_path / "a.key", b"x")
    finally:
        os.umask(old)
    assert mode(tmp_path / "a.key") == 0o600


@pytest.mark.parametrize("force", [False, True])
def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path: Path, monkeypatch, force: bool):
    """IDENT-KEY-07: when the write fails (here: fsync), the path holds what it held before (nothing,
    or the old file) and the temporary file is gone."""
    path = tmp_path / "receipt.key"
    if force:
        path.write_text("old\n")

    def broken_fsync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        write_secret(path, b"new\n", force=force)
    assert (path.read_text() if force else path.exists()) == ("old\n" if force else False)
    assert leftovers(tmp_path) == []


def test_concurrent_writers_without_force_one_wins_whole(tmp_path: Path):
    """IDENT-KEY-07: several writers racing to create one key: exactly one succeeds, the others
    are refused (no check-then-write gap), and the file holds one writer's complete bytes."""
    path = tmp_path / "agent.key"
    payloads = [bytes([65 + i]) * 100_000 for i in range(8)]
    start = threading.Barrier(len(payloads))
    results: list[object] = [None] * len(payloads)

    def writer(i: int) -> None:
        start.wait()
        try:
            write_secret(path, payloads[i])
            results[i] = "written"
        except SecretFileRefused:
            results[i] = "refused"

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(len(payloads))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count("written") == 1 and results.count("refused") == len(payloads) - 1
    assert path.read_bytes() == payloads[results.index("written")]
    assert mode(path) == 0o600 and leftovers(tmp_path) == []


def test_signing_key_save_goes_through_the_helper(tmp_path: Path):
    """IDENT-KEY-07: SigningKey.save refuses to overwrite and writes 0600; the key loads back."""
    key = SigningKey.generate()
    key.save(tmp_path / "k.pem")
    with pytest.raises(SecretFileRefused):
        SigningKey.generate().save(tmp_path / "k.pem")
    assert SigningKey.load(tmp_path / "k.pem").did == key.did and mode(tmp_path / "k.pem") == 0o600


# -- the commands that create keys -------------------------------------------------------------


def test_mpp_init_again_changes_nothing_without_force(tmp_path: Path):
    """IDENT-KEY-07: re-running `mpp init` on a home refuses, names --force, and changes no file."""
    home = tmp_path / "home"
    ok("init", home)
    (home / "seller" / "hmac.secret").chmod(0o644)  # as an older version, or a careless copy, left it
    before = snapshot(home)
    line = one_line_error(mpp_cli("init", home), code=2)
    assert "--force" in line and "seller.toml" in line
    assert snapshot(home) == before


def test_mpp_init_refuses_a_home_holding_only_a_key(tmp_path: Path):
    """IDENT-KEY-07: a half-made home (a key, no configuration) is not silently overwritten either."""
    home = tmp_path / "home"
    (home / "seller").mkdir(parents=True)
    (home / "seller" / "receipt.key").write_text("old\n")
    line = one_line_error(mpp_cli("init", home), code=2)
    assert "seller/receipt.key" in line and "--force" in line
    assert snapshot(home) == {"seller/receipt.key": (hashlib.sha256(b"old\n").hexdigest(), mode(home / "seller" / "receipt.key"))}


def test_mpp_init_force_replaces_keys_and_secret_0600(tmp_path: Path):
    """IDENT-KEY-07: `mpp init --force` writes new keys and a new secret, all 0600 (an old 0644
    hmac.secret included), and the re-initialised home works (its agent is the new key)."""
    home = tmp_path / "home"
    ok("init", home)
    secret = home / "seller" / "hmac.secret"
    secret.chmod(0o644)
    old = {name: (home / name).read_bytes() for name in ("principal/principal.key", "agent/agent.key", "seller/receipt.key",
                                                         "seller/hmac.secret")}
    ok("init", home, "--force")
    for name, content in old.items():
        assert (home / name).read_bytes() != content, name
        assert mode(home / name) == 0o600, name
    assert leftovers(home / "seller") == [] and leftovers(home / "agent") == []
    wallet = (home / "agent" / "wallet.json").read_text()
    assert SigningKey.load(home / "agent" / "agent.key").did in wallet


def test_mpp_init_refuses_a_planted_link_before_writing_anything(tmp_path: Path):
    """IDENT-KEY-07: a link planted where `mpp init` would write the HMAC secret: refused, with or
    without --force, before any file is written; the link's target is not created."""
    home = tmp_path / "home"
    (home / "seller").mkdir(parents=True)
    victim = tmp_path / "victim"
    (home / "seller" / "hmac.secret").symlink_to(victim)
    for extra in ((), ("--force",)):
        line = one_line_error(mpp_cli("init", home, *extra), code=2)
        assert "symbolic link" in line and "seller/hmac.secret" in line
        assert not victim.exists()
        assert snapshot(home) == {"seller/hmac.secret": ("-> " + str(victim), 0)}


@pytest.mark.parametrize("who", ["principal", "agent"])
def test_identity_init_keeps_an_existing_key_unless_forced(tmp_path: Path, who: str):
    """IDENT-KEY-07: `mpp principal|agent init` on a directory with a key: refused (names the file and
    --force), nothing changed; with --force a new key, 0600."""
    directory = tmp_path / who
    extra = ("--account", "acct:buyer") if who == "agent" else ()
    ok(who, "init", directory, *extra)
    key_file = directory / f"{who}.key"
    key_file.chmod(0o644)
    before = snapshot(directory)
    line = one_line_error(mpp_cli(who, "init", directory, *extra), code=2)
    assert str(key_file) in line and "--force" in line
    assert snapshot(directory) == before
    old_did = SigningKey.load(key_file).did
    printed = ok(who, "init", directory, *extra, "--force").stdout
    new_did = SigningKey.load(key_file).did
    assert new_did != old_did and new_did in printed and mode(key_file) == 0o600


def test_ledger_key_shows_an_existing_key_and_replaces_it_only_with_force(tmp_path: Path):
    """IDENT-KEY-07: `mpp ledger key PATH` prints the DID of the key at PATH without touching it;
    --force makes a new one (0600); a link at PATH is refused."""
    path = tmp_path / "seller" / "ledger.key"
    first = ok("ledger", "key", path).stdout.strip()
    assert mode(path) == 0o600
    before = path.read_bytes()
    assert ok("ledger", "key", path).stdout.strip() == first and path.read_bytes() == before
    second = ok("ledger", "key", path, "--force").stdout.strip()
    assert second != first and SigningKey.load(path).did == second and mode(path) == 0o600
    link = tmp_path / "seller" / "other.key"
    link.symlink_to(tmp_path / "victim.key")
    assert "symbolic link" in one_line_error(mpp_cli("ledger", "key", link, "--force"), code=2)
    assert not (tmp_path / "victim.key").exists()

"""spec/files.md: the files a third party needs to reuse MPP's wallets, keys and secrets are
read and written exactly as the appendix says."""

from __future__ import annotations

import base64
import json
import os
import re
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mpp.protocol.wire import b64url_decode
from mpp.protocol.challenge import compute_challenge_id
from mpp.cli.config import ConfigError, init_home, load_chain, load_seller_config, load_wallet, read_secret, save_chain
from mpp.protocol.keys import SigningKey

from test_cli_identity import mpp_cli, ok, one_line_error

WALLET_MEMBERS = {"account": str, "key": str, "did": str, "max_amount": int, "currencies": list, "recipients": list,
                  "mandates": str, "budget": str, "audit": str}
VECTOR_SECRET = "test-vector-secret-minimum-32-byte-secret"  # spec/vectors/challenge-id.json, upstream


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("home")
    init_home(directory)
    return directory


def _pem(key, encryption=serialization.NoEncryption()) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def test_a_pkcs8_pem_key_from_cryptography_loads_with_its_did(tmp_path: Path):
    """FILE-KEY-01, FILE-KEY-02: an unencrypted PKCS#8 PEM Ed25519 key written by another tool loads,
    and its DID is derived from the key."""
    foreign = Ed25519PrivateKey.generate()
    (tmp_path / "k.pem").write_bytes(_pem(foreign))
    loaded = SigningKey.load(tmp_path / "k.pem")
    assert loaded.did == SigningKey(foreign).did
    assert loaded.public_key.public_bytes_raw() == foreign.public_key().public_bytes_raw()


def test_our_key_files_are_pkcs8_pem_of_the_ed25519_seed(home: Path):
    """FILE-KEY-01: what our tools write is PEM `PRIVATE KEY` (PKCS#8), OID 1.3.101.112, readable by
    `cryptography` as an Ed25519 key."""
    for name in ("principal/principal.key", "agent/agent.key", "seller/receipt.key"):
        data = (home / name).read_bytes()
        assert data.startswith(b"-----BEGIN PRIVATE KEY-----\n") and data.endswith(b"-----END PRIVATE KEY-----\n"), name
        key = serialization.load_pem_private_key(data, password=None)
        assert isinstance(key, Ed25519PrivateKey)
        der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        assert bytes.fromhex("06032b6570") in der  # OID 1.3.101.112 (id-Ed25519)
        assert der == base64.b64decode(b"".join(data.splitlines()[1:-1]))


@pytest.mark.parametrize("kind", ["encrypted", "p256", "not-pem"])
def test_other_key_files_are_refused(tmp_path: Path, kind: str):
    """FILE-KEY-01: an encrypted key, a key of another type, or anything else is refused (ValueError)."""
    path = tmp_path / "k.pem"
    if kind == "encrypted":
        path.write_bytes(_pem(Ed25519PrivateKey.generate(), serialization.BestAvailableEncryption(b"pass")))
    elif kind == "p256":
        path.write_bytes(_pem(ec.generate_private_key(ec.SECP256R1())))
    else:
        path.write_bytes(b"did:key:z6Mk...\n")
    with pytest.raises(ValueError):
        SigningKey.load(path)


def test_the_hmac_key_is_the_decoded_bytes_of_the_hex_file(tmp_path: Path):
    """FILE-SECRET-01, FILE-SECRET-02: the HMAC is keyed with the bytes the hex text decodes to; a file
    holding the hex of the vectors' secretKey gives the upstream vector's id; keying with the hex
    text itself gives another."""
    path = tmp_path / "hmac.secret"
    path.write_text(VECTOR_SECRET.encode("utf-8").hex() + "\n", encoding="ascii")
    secret = read_secret(path)
    assert secret == VECTOR_SECRET.encode("utf-8")
    fields = dict(realm="api.example.com", method="tempo", intent="charge", request="eyJhbW91bnQiOiIxMDAwMDAwIn0")
    assert compute_challenge_id(secret, **fields) == "6QDs0BmhrI_v67iWeCMvGqQJEFQ6ErWKlk7zi5xL6t0"
    assert compute_challenge_id(path.read_text().strip().encode("utf-8"), **fields) != "6QDs0BmhrI_v67iWeCMvGqQJEFQ6ErWKlk7zi5xL6t0"


@pytest.mark.parametrize("content, ok_", [
    ("ab" * 32, True), ("AB" * 32 + "\n", True), ("  " + "ab " * 32 + "\n", True),
    ("ab" * 31, False), ("a" + "b" * 64, False), ("zz" * 32, False), ("ab" * 32 + "\x00", False), ("é" * 64, False),
])
def test_the_secret_file_is_hex_text_of_at_least_32_bytes(tmp_path: Path, content: str, ok_: bool):
    """FILE-SECRET-01: hex digits with whitespace around or between pairs; anything else, an odd
    count of digits, or under 32 bytes is refused."""
    path = tmp_path / "hmac.secret"
    path.write_bytes(content.encode("utf-8"))
    if ok_:
        assert len(read_secret(path)) == 32
    else:
        with pytest.raises(ConfigError):
            read_secret(path)


def test_mpp_init_writes_a_fresh_32_byte_secret_as_64_hex_digits(home: Path, tmp_path: Path):
    """FILE-SECRET-01, FILE-SECRET-03: `mpp init` writes 64 lowercase hex digits and an LF, a new
    secret each time."""
    text = (home / "seller" / "hmac.secret").read_text(encoding="ascii")
    assert re.fullmatch(r"[0-9a-f]{64}\n", text)
    init_home(tmp_path)
    assert (tmp_path / "seller" / "hmac.secret").read_text(encoding="ascii") != text


def test_mpp_init_writes_a_wallet_with_the_stated_members(home: Path):
    """FILE-WALLET-01: wallet.json holds only the members of the table, with their types, and no key."""
    wallet = json.loads((home / "agent" / "wallet.json").read_text(encoding="utf-8"))
    assert set(wallet) <= set(WALLET_MEMBERS) and "account" in wallet
    for name, value in wallet.items():
        assert isinstance(value, WALLET_MEMBERS[name]), name
    assert wallet["did"] == SigningKey.load(home / "agent" / wallet["key"]).did
    assert "PRIVATE" not in json.dumps(wallet)
    assert load_chain(home / "agent" / wallet["mandates"])


def test_mpp_agent_init_writes_the_same_members(tmp_path: Path):
    """FILE-WALLET-01: `mpp agent init` writes a wallet of the same form."""
    ok("agent", "init", tmp_path / "a", "--account", "acct:team")
    wallet = json.loads((tmp_path / "a" / "wallet.json").read_text(encoding="utf-8"))
    assert set(wallet) <= set(WALLET_MEMBERS) and wallet["account"] == "acct:team"
    for name, value in wallet.items():
        assert isinstance(value, WALLET_MEMBERS[name]), name


def test_a_wallet_reader_takes_the_did_from_the_key_and_ignores_unknown_members(tmp_path: Path):
    """FILE-WALLET-02: the DID comes from the key file; `did` and unknown members change nothing;
    absent members take the table's defaults."""
    key = SigningKey.generate()
    key.save(tmp_path / "agent.key")
    other = SigningKey.generate().did
    (tmp_path / "wallet.json").write_text(json.dumps({"account": "acct:x", "did": other, "futureMember": {"a": 1}}))
    wallet = load_wallet(tmp_path)
    assert wallet.key.did == key.did != other
    assert wallet.account == "acct:x" and wallet.policy.max_amount == 0
    assert wallet.policy.currencies is None and wallet.policy.recipients is None
    assert wallet.mandates is None and wallet.budget_path is None and wallet.audit_path is None


def test_the_chain_file_round_trips_and_is_refused_when_malformed(tmp_path: Path):
    """FILE-CHAIN-01: {"mandates": [JWT, ...]} root first; missing, empty or non-string members refused;
    other members ignored."""
    path = tmp_path / "chain.json"
    save_chain(path, ["root.jwt.sig", "leaf.jwt.sig"])
    assert json.loads(path.read_text(encoding="utf-8")) == {"mandates": ["root.jwt.sig", "leaf.jwt.sig"]}
    assert load_chain(path) == ["root.jwt.sig", "leaf.jwt.sig"]
    path.write_text(json.dumps({"mandates": ["a.b.c"], "note": "ignored"}))
    assert load_chain(path) == ["a.b.c"]
    for bad in ({}, {"mandates": []}, {"mandates": "a.b.c"}, {"mandates": ["a.b.c", 1]}, ["a.b.c"]):
        path.write_text(json.dumps(bad))
        with pytest.raises(ConfigError):
            load_chain(path)


def test_jwks_json_holds_the_public_key_only(home: Path):
    """FILE-JWKS-01: the principal's jwks.json is a JWK Set of OKP/Ed25519 public keys whose `x` is
    the key's 32 public bytes, with kid, alg EdDSA and use sig, and no `d`."""
    doc = json.loads((home / "principal" / "jwks.json").read_text(encoding="utf-8"))
    principal = SigningKey.load(home / "principal" / "principal.key")
    assert list(doc) == ["keys"] and len(doc["keys"]) == 1
    jwk = doc["keys"][0]
    assert jwk == {"kty": "OKP", "crv": "Ed25519", "x": jwk["x"], "kid": principal.kid, "alg": "EdDSA", "use": "sig"}
    assert b64url_decode(jwk["x"]) == principal.public_key.public_bytes_raw()
    assert "=" not in jwk["x"] and "d" not in jwk


def test_seller_toml_is_read_strictly(home: Path, tmp_path: Path):
    """FILE-CONF-01: the file `mpp init` writes loads; an unknown key, a wrong type, or no prices are
    refused with a message naming the file and the key."""
    config = load_seller_config(home / "seller.toml")
    assert config.realm == "mpp.local" and len(read_secret(config.resolve(config.secret_file))) == 32
    text = (home / "seller.toml").read_text(encoding="utf-8")
    for change, key in ((text.replace("challenge_ttl = 300", "challenge_ttl = 300\nchalenge_ttl = 5"), "chalenge_ttl"),
                        (text.replace("challenge_ttl = 300", 'challenge_ttl = "soon"'), "challenge_ttl")):
        (tmp_path / "seller.toml").write_text(change, encoding="utf-8")
        with pytest.raises(ConfigError) as info:
            load_seller_config(tmp_path / "seller.toml")
        assert str(tmp_path / "seller.toml") in str(info.value) and key in str(info.value)
    (tmp_path / "seller.toml").write_text(text.split("[[routes]]")[0], encoding="utf-8")
    with pytest.raises(ConfigError):
        load_seller_config(tmp_path / "seller.toml")


@pytest.mark.skipif(os.name != "posix", reason="file modes as on POSIX")
def test_keys_and_secret_are_0600_and_the_rest_hold_no_secret(home: Path):
    """FILE-MODE-01 (with IDENT-KEY-07): key files and hmac.secret are 0600; wallet.json, the chain
    file, jwks.json and seller.toml hold no private key."""
    for name in ("principal/principal.key", "agent/agent.key", "seller/receipt.key", "seller/hmac.secret"):
        assert stat.S_IMODE((home / name).stat().st_mode) == 0o600, name
    secret_hex = (home / "seller" / "hmac.secret").read_text().strip()
    for name in ("agent/wallet.json", "agent/mandate.json", "principal/jwks.json", "seller.toml"):
        text = (home / name).read_text(encoding="utf-8")
        assert "PRIVATE KEY" not in text and secret_hex not in text, name


def test_the_cli_reports_an_encrypted_key_in_one_line(tmp_path: Path):
    """FILE-KEY-01: a command given an encrypted key refuses it with one `mpp:` line, no traceback."""
    path = tmp_path / "enc.pem"
    path.write_bytes(_pem(Ed25519PrivateKey.generate(), serialization.BestAvailableEncryption(b"pass")))
    line = one_line_error(mpp_cli("mandate", "issue", "--issuer", path, "--subject", SigningKey.generate().did,
                                  "--out", tmp_path / "c.json", "--ceiling", "1", "--budget", "1"))
    assert "encrypted" in line

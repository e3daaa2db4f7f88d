"""Ed25519 keys, their ``did:key`` identifiers and their JWKs.

A ``did:key`` for Ed25519 is ``did:key:z`` + base58btc(0xed 0x01 || 32-byte public key).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import re
import secrets
from pathlib import Path
from typing import Any

import base58
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from mpp.protocol.wire import b64url_decode, b64url_encode
from mpp.protocol.errors import ParseError

__all__ = ["SigningKey", "did_from_public_key", "public_key_from_did", "verify_signature", "public_jwk", "SignatureInvalid",
           "write_secret", "SecretFileRefused"]

_ED25519_MULTICODEC = b"\xed\x01"


class SignatureInvalid(Exception):
    """An Ed25519 signature did not verify (or the key could not be read)."""


def did_from_public_key(public_key: Ed25519PublicKey) -> str:
    """The ``did:key`` naming an Ed25519 public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "did:key:z" + base58.b58encode(_ED25519_MULTICODEC + raw).decode("ascii")


_DID_KEY = re.compile(r"did:key:z[1-9A-HJ-NP-Za-km-z]+")


def public_key_from_did(did: str) -> Ed25519PublicKey:
    # LEDGER-07: exactly the base58btc alphabet after the prefix (the decoder would skip whitespace,
    # so "did:key:z... " would name the same key under another spelling)
    """The Ed25519 public key a ``did:key`` names. Raises ParseError for anything else."""
    if not isinstance(did, str) or len(did) > 128 or _DID_KEY.fullmatch(did) is None:
        raise ParseError("not an Ed25519 did:key")
    return _public_key(did)


@functools.lru_cache(maxsize=4096)
def _public_key(did: str) -> Ed25519PublicKey:
    """Decoding is pure, and the same few agents' keys come back on every request: cached.
    Failures are not cached (an exception leaves the cache untouched)."""
    try:
        decoded = base58.b58decode(did[len("did:key:z"):])
    except ValueError as exc:
        raise ParseError("did:key is not base58btc") from exc
    if len(decoded) != 34 or decoded[:2] != _ED25519_MULTICODEC:
        raise ParseError("did:key is not an Ed25519 key")
    return Ed25519PublicKey.from_public_bytes(decoded[2:])


def verify_signature(did: str, message: bytes, signature_b64: str) -> None:
    """Raise SignatureInvalid unless ``signature_b64`` is the key's signature over ``message``."""
    try:
        key = public_key_from_did(did)
        signature = b64url_decode(signature_b64)
        key.verify(signature, message)
    except (ParseError, InvalidSignature, ValueError) as exc:
        raise SignatureInvalid("signature does not verify") from exc


def public_jwk(public_key: Ed25519PublicKey, kid: str) -> dict[str, Any]:
    """The public JWK (OKP, Ed25519, EdDSA, ``use`` sig) of ``public_key`` under ``kid``."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(raw), "kid": kid, "alg": "EdDSA", "use": "sig"}


class SecretFileRefused(ValueError):
    """A private key or secret was not written: its path is a symbolic link, or a file is there
    and overwriting was not asked for. Nothing was changed."""


def _refuse_existing(path: Path) -> SecretFileRefused:
    return SecretFileRefused(f"{path} exists already; refusing to overwrite a key or secret (pass --force to replace it)")


def write_secret(path: str | os.PathLike[str], data: bytes, *, force: bool = False) -> None:
    """Write a private key or secret file (IDENT-KEY-07): mode 0600, all or nothing, never
    through a symbolic link, and over an existing file only with ``force``.

    The bytes go to a fresh temporary file in the same directory (O_EXCL|O_NOFOLLOW, so nobody
    else's file or link is opened), are fsynced, and only then take the final name: a crash or
    error leaves either the old file or the new one, never a partial file, and no temporary file.
    """
    path = Path(path)
    if path.is_symlink():
        raise SecretFileRefused(f"{path} is a symbolic link; refusing to write a key or secret through it")
    if not force and os.path.lexists(path):
        raise _refuse_existing(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(tmp, flags, 0o600)
    try:
        try:
            if hasattr(os, "fchmod"):
                os.fchmod(fd, 0o600)  # exactly 0600, whatever the umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        if force:
            os.replace(tmp, path)  # replaces a file or link that is there; never writes through a link
        else:
            _link_new(tmp, path)
        _fsync_directory(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _link_new(tmp: Path, path: Path) -> None:
    """Give ``tmp`` the name ``path`` only if nothing has it: link() never replaces, so a file
    made meanwhile by another process (or a link planted meanwhile) wins, and we refuse."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise _refuse_existing(path) from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
            raise
        # A file system without hard links: check, then rename (a narrow race instead of none).
        if os.path.lexists(path):
            raise _refuse_existing(path) from None
        os.replace(tmp, path)


def _fsync_directory(directory: Path) -> None:
    """Make the new name durable; skipped where directories cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class SigningKey:
    """An Ed25519 private key with its DID. ``repr`` never shows key material."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.public_key = private_key.public_key()
        self.did = did_from_public_key(self.public_key)
        # A short, stable key id for JWKS: the DID's multibase tail is unique per key.
        self.kid = self.did[len("did:key:"):][:24]

    def __repr__(self) -> str:
        return f"SigningKey(did={self.did!r})"

    @classmethod
    def generate(cls) -> "SigningKey":
        """A new random Ed25519 key."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "SigningKey":
        """The key in the PKCS#8 PEM file at ``path``, as :meth:`save` writes it. ValueError for an encrypted
        key (FILE-KEY-01), a file that is not a PEM private key or a key that is not Ed25519; OSError when
        the file cannot be read."""
        data = Path(path).read_bytes()
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except TypeError as exc:  # an encrypted key (FILE-KEY-01: key files are not encrypted)
            raise ValueError(f"{path}: an encrypted private key; MPP key files are unencrypted PKCS#8 PEM") from exc
        except ValueError as exc:
            raise ValueError(f"{path}: not a PEM private key") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path}: not an Ed25519 private key")
        return cls(key)

    def save(self, path: str | os.PathLike[str], *, force: bool = False) -> None:
        """Write PKCS#8 PEM through :func:`write_secret` (owner only; an existing file only with ``force``)."""
        pem = self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        write_secret(path, pem, force=force)

    def sign(self, message: bytes) -> str:
        """The Ed25519 signature of ``message``, base64url without padding (86 characters)."""
        return b64url_encode(self._key.sign(message))

    @property
    def private_key(self) -> Ed25519PrivateKey:
        """For JWS signing with pyjwt; do not log."""
        return self._key

    def jwk(self) -> dict[str, Any]:
        """The public JWK of this key under its ``kid`` (OKP, Ed25519, EdDSA, ``use`` sig), as a JWKS
        publishes it."""
        return public_jwk(self.public_key, self.kid)

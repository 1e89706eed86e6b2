"""Password hashing for tunnel credentials: salted scrypt (RFC 7914), compared in constant time.

A stored hash reads ``scrypt$<log2 n>$<r>$<p>$<salt b64>$<hash b64>``; passwords
themselves are never stored or logged. One scrypt costs tens of milliseconds,
which is the point against guessing, so a successful check is remembered as a
keyed digest of (username, password): reconnect storms of legitimate devices
then cost one HMAC each, while every wrong guess still pays full price.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
from dataclasses import dataclass, field
from pathlib import Path

from overlay.certs import replace
from overlay.exceptions import ConfigError

SCRYPT_LOG_N = 14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
HASH_BYTES = 32
_MAX_REMEMBERED = 100_000


# Passwords that vendors ship or people try first (OVOC's default tunnel password is
# "123456"): a server refuses to start with one of them unless told so explicitly.
WELL_KNOWN = (
    "123456",
    "12345678",
    "123456789",
    "1234567890",
    "password",
    "admin",
    "VPN",
    "vpn",
    "changeme",
    "default",
    "qwerty",
    "letmein",
    "secret",
    "overlay",
)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def hash_password(password: str, salt: bytes | None = None, log_n: int = SCRYPT_LOG_N) -> str:
    """Return the storable hash of ``password``."""
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    digest = hashlib.scrypt(
        password.encode(),
        salt=salt,
        n=2**log_n,
        r=SCRYPT_R,
        p=SCRYPT_P,
        maxmem=2**26,
        dklen=HASH_BYTES,
    )
    return f"scrypt${log_n}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


@dataclass(frozen=True)
class PasswordHash:
    """A parsed stored hash."""

    log_n: int
    r: int
    p: int
    salt: bytes
    digest: bytes

    @classmethod
    def parse(cls, text: str) -> PasswordHash:
        parts = text.split("$")
        try:
            if len(parts) != 6 or parts[0] != "scrypt":
                raise ValueError
            log_n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
            if not (10 <= log_n <= 20 and 1 <= r <= 32 and 1 <= p <= 16):
                raise ValueError
            return cls(log_n, r, p, _unb64(parts[4]), _unb64(parts[5]))
        except ValueError:
            raise ConfigError(
                "password hash is not of the form scrypt$N$r$p$salt$hash; "
                "make one with `overlay hash-password`"
            ) from None

    def well_known(self) -> str | None:
        """The well-known password this is a hash of, if any (a dozen scrypt runs)."""
        return next((p for p in WELL_KNOWN if self.matches(p)), None)

    def well_known_unless_checked(self, checked: Path) -> str | None:
        """As :meth:`well_known`, but its half a second of scrypt runs is skipped when
        ``checked`` holds this hash's mark, written once they found nothing: a restart (and
        each worker, after its supervisor) reaches its devices that much sooner. The mark
        names the hash and the list together, so a new hash or a longer list is checked
        again; a weak hash is never marked."""
        mark = hashlib.sha256(repr((self, WELL_KNOWN)).encode()).hexdigest()
        with contextlib.suppress(OSError):
            if checked.read_text() == mark:
                return None
        weak = self.well_known()
        if weak is None:
            with contextlib.suppress(OSError):  # not written: checked again at the next start
                replace(checked, mark.encode(), private=True)
        return weak

    def matches(self, password: str) -> bool:
        digest = hashlib.scrypt(
            password.encode(),
            salt=self.salt,
            n=2**self.log_n,
            r=self.r,
            p=self.p,
            maxmem=2**26,
            dklen=len(self.digest),
        )
        return hmac.compare_digest(digest, self.digest)


@dataclass(frozen=True)
class Credentials:
    """A username and the hash of its password: the shared OVOC-style one, or a device's own."""

    username: str
    password_hash: PasswordHash


@dataclass
class Checker:
    """Checks credentials and remembers the ones that passed, as keyed digests."""

    _key: bytes = field(default_factory=lambda: os.urandom(32), repr=False)
    _good: set[bytes] = field(default_factory=set, repr=False)

    def token(self, expected: Credentials, username: str, password: str) -> bytes:
        """A keyed digest of an attempt against ``expected``: safe in memory, useless elsewhere."""
        message = b"\x00".join(
            (
                expected.username.encode(),
                expected.password_hash.digest,
                username.encode(),
                password.encode(),
            )
        )
        return hmac.digest(self._key, message, "sha256")

    def remembered(self, token: bytes) -> bool:
        """True when this exact attempt passed :meth:`check` before: no scrypt needed."""
        return token in self._good

    def check(self, expected: Credentials, username: str, password: str, token: bytes) -> bool:
        """Full check (slow: run it off the event loop)."""
        user_ok = hmac.compare_digest(username.encode(), expected.username.encode())
        password_ok = expected.password_hash.matches(password)
        if user_ok and password_ok:
            if len(self._good) >= _MAX_REMEMBERED:
                self._good.clear()
            self._good.add(token)
        return user_ok and password_ok

"""Analyst login: token check and signed, expiring session cookies.

Only tokens of role ``analyst`` in the gateway's configuration open the console; a token is
hashed (SHA-256) and compared with every analyst digest in constant time, like the gateway
does. A login gives a session cookie ``nbo_console`` = ``expiry.nonce.signature``: HMAC-SHA256
with a key drawn when the console starts (so a restart logs everybody out, and a cookie
cannot be forged or moved to another console), HttpOnly (scripts cannot read it),
SameSite=Strict (other sites cannot send it), Secure when served over HTTPS. Logging out
revokes the nonce.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable, Iterable

__all__ = ["COOKIE", "SESSION_SECONDS", "Sessions"]

COOKIE = "nbo_console"
SESSION_SECONDS = 8 * 3600
"""How long a login lasts (a working day)."""


class Sessions:
    """Checks analyst tokens and issues / verifies session cookies."""

    def __init__(self, analyst_digests: Iterable[bytes], *, lifetime: float = SESSION_SECONDS,
                 clock: Callable[[], float] = time.time) -> None:
        self._digests = tuple(analyst_digests)
        self._key = secrets.token_bytes(32)
        self._lifetime = lifetime
        self._clock = clock
        self._revoked: dict[str, float] = {}
        self._lock = threading.Lock()

    @property
    def lifetime(self) -> float:
        return self._lifetime

    def check_token(self, token: str) -> bool:
        """Whether ``token`` is a configured analyst token (every digest compared, no early exit)."""
        digest = hashlib.sha256(token.strip().encode("utf-8", "surrogatepass")).digest()
        found = False
        for known in self._digests:
            found |= hmac.compare_digest(digest, known)
        return found and bool(token.strip())

    def issue(self) -> str:
        expires = int(self._clock() + self._lifetime)
        body = f"{expires}.{secrets.token_urlsafe(16)}"
        return f"{body}.{self._sign(body)}"

    def valid(self, cookie: str | None) -> bool:
        if not cookie or cookie.count(".") != 2:
            return False
        expires, nonce, signature = cookie.split(".")
        if not hmac.compare_digest(signature, self._sign(f"{expires}.{nonce}")):
            return False
        if not expires.isdigit() or int(expires) <= self._clock():
            return False
        with self._lock:
            return nonce not in self._revoked

    def revoke(self, cookie: str | None) -> None:
        if not self.valid(cookie):
            return
        assert cookie is not None
        expires, nonce, _ = cookie.split(".")
        now = self._clock()
        with self._lock:
            self._revoked = {n: e for n, e in self._revoked.items() if e > now}  # forget expired ones
            self._revoked[nonce] = float(expires)

    def _sign(self, body: str) -> str:
        return hmac.new(self._key, body.encode(), hashlib.sha256).hexdigest()

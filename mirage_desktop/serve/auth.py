"""Tokens and rate limits. A token is a JWT signed with HS256 by the server's shared secret
(``--secret-file`` or ``MIRAGE_SERVE_SECRET``); every session and endpoint asks for one as
``Authorization: Bearer <token>``."""

from __future__ import annotations

import collections
import os
import threading
import time
import uuid
from pathlib import Path

from ..errors import MirageError

SECRET_VARIABLE = "MIRAGE_SERVE_SECRET"
MIN_SECRET_BYTES = 32  # HS256 wants a key at least as long as its hash
ISSUER = "mirage-serve"


def load_secret(secret_file: str | os.PathLike | None = None, environ=os.environ) -> bytes:
    """The shared secret: the file's contents (stripped) or the environment variable."""
    if secret_file:
        p = Path(secret_file).expanduser()
        try:
            raw = p.read_bytes().strip()
        except OSError as exc:
            raise MirageError(f"cannot read the secret file {p}: {exc.strerror or exc}",
                              "give --secret-file a readable file with 32 or more random bytes") from exc
    else:
        raw = environ.get(SECRET_VARIABLE, "").strip().encode()
        if not raw:
            raise MirageError("no shared secret for `mirage serve`",
                              f"use --secret-file FILE or set {SECRET_VARIABLE} "
                              "(e.g. `head -c 32 /dev/urandom | base64 > secret`)")
    if len(raw) < MIN_SECRET_BYTES:
        raise MirageError(f"the shared secret is {len(raw)} bytes, too short for HS256",
                          f"use {MIN_SECRET_BYTES} bytes or more")
    return raw


def parse_ttl(text: str) -> float:
    """``8h``, ``30m``, ``45s``, ``2d`` or plain seconds -> seconds."""
    t = str(text).strip().lower()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        value = float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise MirageError(f"--ttl {text!r} is not a duration", "e.g. --ttl 8h, 30m or 3600")
    return value


def make_token(secret: bytes, ttl_s: float, subject: str = "client", now: float | None = None) -> str:
    import jwt

    t = int(time.time() if now is None else now)
    claims = {"iss": ISSUER, "sub": subject, "iat": t, "exp": t + int(ttl_s), "jti": uuid.uuid4().hex}
    return jwt.encode(claims, secret, algorithm="HS256")


class AuthError(Exception):
    pass


def verify_token(secret: bytes, token: str) -> dict:
    """The claims of a valid token; AuthError (with why) for a malformed, expired or forged one."""
    import jwt

    try:
        return jwt.decode(token, secret, algorithms=["HS256"], issuer=ISSUER,
                          options={"require": ["exp", "iat", "iss"]})
    except jwt.ExpiredSignatureError:
        raise AuthError("token expired") from None
    except jwt.InvalidSignatureError:
        raise AuthError("token signature does not match") from None
    except jwt.InvalidTokenError as exc:
        raise AuthError(f"invalid token: {exc}") from None


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if not header:
        return None
    kind, _, value = header.strip().partition(" ")
    if kind.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


class RateLimiter:
    """At most ``limit`` events per ``window_s`` seconds per key (a sliding window)."""

    def __init__(self, limit: int, window_s: float, clock=time.monotonic):
        self.limit, self.window_s, self.clock = int(limit), float(window_s), clock
        self._events: dict[str, collections.deque] = {}
        self._lock = threading.Lock()

    def allow(self, key: str) -> bool:
        now = self.clock()
        with self._lock:
            q = self._events.setdefault(key, collections.deque())
            while q and now - q[0] >= self.window_s:
                q.popleft()
            if len(q) >= self.limit:
                return False
            q.append(now)
            if len(self._events) > 10_000:  # forget idle keys: memory stays bounded
                for k in [k for k, v in self._events.items() if not v or now - v[-1] >= self.window_s][:5000]:
                    self._events.pop(k, None)
            return True

"""Bearer-token auth for everything but ``/health``.

The token comes from an environment variable (``NTS_API_TOKEN`` unless told otherwise) and
is compared in constant time (:func:`hmac.compare_digest`). ``Authorization: Bearer <token>``
is the API's way; a browser showing the status page may send it as the password of HTTP
Basic auth (any user name), which it prompts for by itself. Without a token configured, the
read-only routes answer on a loopback address only and the control routes refuse (the
server refuses to bind anything else without one: :func:`check_bind`). The token is never
echoed: refusals say what is missing, not what was sent.
"""
from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import os
from dataclasses import dataclass

from fastapi import HTTPException, Request

from core.errors import ConfigError
from core.redact import register_secret_env

DEFAULT_TOKEN_ENV = "NTS_API_TOKEN"
MIN_TOKEN_LEN = 16


@dataclass(frozen=True)
class Auth:
    """The configured token (None: no auth) and the variable it came from."""

    token: str | None
    env: str = DEFAULT_TOKEN_ENV

    @classmethod
    def from_env(cls, env: str = DEFAULT_TOKEN_ENV) -> "Auth":
        """Read the token from ``env`` (its value is treated as a secret from now on)."""
        register_secret_env(env)
        token = os.environ.get(env) or None
        if token is not None and len(token) < MIN_TOKEN_LEN:
            raise ConfigError(f"{env}: the API token must be at least {MIN_TOKEN_LEN} characters")
        return cls(token=token, env=env)

    def presented(self, request: Request) -> str | None:
        """The token the request carries (Bearer, or Basic's password), or None."""
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer":
            return value.strip()
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError, ValueError):
                return None
            return decoded.partition(":")[2]
        return None

    def ok(self, request: Request) -> bool:
        """True when a token is configured and the request carries it."""
        if self.token is None:
            return False
        given = self.presented(request)
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": 'Bearer realm="nts", Basic realm="nts"'})


def require_read(auth: Auth):
    """Dependency of read routes: the token when one is configured. A coroutine: it only
    compares bytes, and a plain function would cost every request a hop to a worker thread."""

    async def check(request: Request) -> None:
        if auth.token is not None and not auth.ok(request):
            raise _unauthorized("missing or wrong API token (Authorization: Bearer <token>)")

    return check


def require_control(auth: Auth):
    """Dependency of control routes: always the token; none configured -> 403 (a coroutine,
    as :func:`require_read`)."""

    async def check(request: Request) -> None:
        if auth.token is None:
            raise HTTPException(403, f"control routes need an API token: set {auth.env} and restart the server")
        if not auth.ok(request):
            raise _unauthorized("missing or wrong API token (Authorization: Bearer <token>)")

    return check


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, auth: Auth) -> None:
    """Refuse (ConfigError) a non-loopback bind address without an API token."""
    if not is_loopback(host) and auth.token is None:
        raise ConfigError(f"--host {host} is not a loopback address: set {auth.env} (an API token of at least "
                          f"{MIN_TOKEN_LEN} characters) before serving beyond this machine")

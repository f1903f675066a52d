"""Secret redaction: the one place that decides what a credential looks like in text.

Applied to every line nts writes about itself: log records (:class:`RedactingFilter` on the
log handlers), error messages (the CLI's error printer), ``metrics.json``, ``bundle.json``
and reports (through :func:`redact_obj` / :func:`core.config.config_to_dict`).

Three shapes are recognised:

* **values of secret environment variables**: every variable whose NAME looks like a
  credential (``*KEY*``, ``*SECRET*``, ``*TOKEN*``, ``*PASSWORD*``, ``*PASSPHRASE*``,
  ``*SIGNATURE*``, ``*CREDENTIAL*``, ``*AUTH*``) plus the ones the config names
  (``broker.api_key_env`` / ``broker.secret_env``, registered with :func:`register_secret_env`),
  wherever their value appears. Values shorter than :data:`MIN_SECRET_LEN` are left alone:
  a 3-character "secret" would blank out ordinary words and numbers;
* **URL user info**: ``scheme://user:password@host`` -> ``scheme://***@host``;
* **credential parameters**: ``apiKey=...``, ``secret=...``, ``signature=...``, ``token=...``
  (query strings, ``key=value`` text, JSON/YAML ``"key": "value"``) -> ``apiKey=***``.
"""
from __future__ import annotations

import logging
import os
import re
import traceback
from typing import Any

MASK = "***"
MIN_SECRET_LEN = 6

_SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|PASSWD|PASSPHRASE|SIGNATURE|CREDENTIAL|AUTH", re.I)
# Variables whose names match but whose values are paths or settings, not credentials.
_NOT_SECRET_ENV = {"SSH_AUTH_SOCK", "XAUTHORITY", "GPG_AGENT_INFO", "KEYTIMEOUT", "PYTHONHASHSEED"}
_registered_env: set[str] = set()

# scheme://user[:password]@  (user info is everything up to the last @ before the host part)
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/\s@'\"<>]+@")
# Parameter names that carry credentials. ``key`` alone only after ? or & (query strings):
# as a free word it is far too common.
_PARAM_NAMES = (r"api[_\-]?key|apikey|api[_\-]?secret|secret|secret[_\-]?key|signature|sig|token|"
                r"access[_\-]?token|refresh[_\-]?token|auth[_\-]?token|password|passwd|passphrase|"
                r"private[_\-]?key|client[_\-]?secret")
_QUERY_PARAM = re.compile(rf"(?i)([?&;](?:{_PARAM_NAMES}|key)=)[^&\s#'\"<>]*")
_TEXT_PARAM = re.compile(rf"(?i)(\b(?:{_PARAM_NAMES})[\"']?\s*[=:]\s*[\"']?)(?!\*\*\*)[^\s&,;'\"<>}}\]]+")
_SECRET_KEY = re.compile(rf"(?i)^(?:{_PARAM_NAMES})$")


def register_secret_env(*names: str | None) -> None:
    """Also treat the values of these environment variables as secrets (e.g. the variables
    ``broker.api_key_env`` / ``broker.secret_env`` name, whatever they are called)."""
    _registered_env.update(n for n in names if n)


def secret_values() -> list[str]:
    """The secret environment values present now, longest first (so that a secret that
    contains another is masked whole)."""
    values = set()
    for name, value in os.environ.items():
        if name in _NOT_SECRET_ENV:
            continue
        if (name in _registered_env or _SECRET_NAME.search(name)) and len(value) >= MIN_SECRET_LEN:
            values.add(value)
    return sorted(values, key=len, reverse=True)


def redact(text: Any) -> str:
    """``text`` with every recognised credential replaced by ``***`` (see module docstring)."""
    s = str(text)
    for value in secret_values():
        if value in s:
            s = s.replace(value, MASK)
    s = _URL_USERINFO.sub(rf"\1{MASK}@", s)
    s = _QUERY_PARAM.sub(rf"\1{MASK}", s)
    s = _TEXT_PARAM.sub(rf"\1{MASK}", s)
    return s


def redact_obj(obj: Any) -> Any:
    """A copy of a JSON-like structure with every string redacted and the value of every
    credential-named key (``apiKey``, ``secret``, ``password``, ...) masked."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if isinstance(k, str) and _SECRET_KEY.match(k) and v not in (None, ""):
                out[k] = MASK
            else:
                out[k] = redact_obj(v)
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact_obj(v) for v in obj)
    return obj


class RedactingFilter(logging.Filter):
    """A handler filter that redacts the formatted message and any traceback of a record
    before it is written (filters on a handler see records of every child logger)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not kill logging
            message = f"{record.msg!r} {record.args!r}"
        if record.exc_info:
            message += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
            record.exc_info = None
            record.exc_text = None
        if record.stack_info:
            message += "\n" + record.stack_info
            record.stack_info = None
        record.msg = redact(message)
        record.args = None
        return True

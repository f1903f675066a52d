"""A faults file for the replay exchange (``nts exchange replay --faults FILE``), so users can
rehearse the failures the live session is built for: lost answers, rate limits and bans,
orders not yet visible, partial fills, stale candles.

The file is YAML (strict: duplicate keys refused) holding a list; each entry is one
:meth:`venues.replay.ReplayExchange.inject` call::

    - {kind: drop_after, path: /api/v3/order, method: POST}       # accepted, answer lost
    - {kind: hidden, times: 2}                                    # then "does not exist" twice
    - {kind: status, status: 418, retry_after: 60, path: /api/v3/order, method: POST}
    - {kind: status_after, status: 503, path: /api/v3/orderList/oco, method: POST}
    - {kind: slow, delay_s: 12, path: /api/v3/order, method: POST, skip: 3}
    - {kind: partial, pieces: 3, times: 2}
    - {kind: late, times: 5}

Unknown kinds, unknown keys and values of the wrong type are refused with one line naming
the file and the entry.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from core.config import load_yaml_strict
from core.errors import ConfigError

_REQUEST_KEYS = {"path": str, "method": str, "times": int, "skip": int, "param": str}
#: kind -> its keys and their types (``path`` defaults to the klines route, as in the loopback)
KINDS: dict[str, dict[str, type]] = {
    "status": {**_REQUEST_KEYS, "status": int, "retry_after": float, "body": dict},
    "status_after": {**_REQUEST_KEYS, "status": int, "body": dict},
    "slow": {**_REQUEST_KEYS, "delay_s": float},
    "drop": dict(_REQUEST_KEYS),
    "drop_after": dict(_REQUEST_KEYS),
    "repeat": dict(_REQUEST_KEYS),
    "late": dict(_REQUEST_KEYS),
    "hidden": {"times": int, "skip": int, "lists": bool},
    "partial": {"pieces": int, "times": int},
}


def _check_value(where: str, key: str, value: Any, want: type) -> Any:
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, want) or (want is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: {key} must be {want.__name__}, got {value!r}")
    if want is float and not (math.isfinite(value) and value >= 0):
        raise ConfigError(f"{where}: {key} must be a finite number >= 0, got {value!r}")
    if want is int and key in ("times", "pieces", "status") and value < 1:
        raise ConfigError(f"{where}: {key} must be >= 1, got {value!r}")
    if want is int and value < 0:
        raise ConfigError(f"{where}: {key} must be >= 0, got {value!r}")
    return value


def load_faults(path: str | Path) -> list[dict[str, Any]]:
    """The validated entries of a faults file (see the module docstring)."""
    src = Path(path)
    data = load_yaml_strict(src)
    if data is None:
        data = []
    if not isinstance(data, list):
        raise ConfigError(f"{src}: a faults file is a list of faults, got {type(data).__name__}")
    out = []
    for i, entry in enumerate(data, 1):
        where = f"{src}: fault {i}"
        if not isinstance(entry, dict) or "kind" not in entry:
            raise ConfigError(f"{where}: expected a mapping with a kind (one of {', '.join(KINDS)})")
        kind = entry["kind"]
        if kind not in KINDS:
            raise ConfigError(f"{where}: unknown kind {kind!r} (one of {', '.join(KINDS)})")
        spec = KINDS[kind]
        unknown = sorted(set(entry) - set(spec) - {"kind"})
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} for kind {kind} "
                              f"(allowed: {', '.join(sorted(spec))})")
        clean = {k: _check_value(where, k, v, spec[k]) for k, v in entry.items() if k != "kind"}
        if "method" in clean:
            clean["method"] = clean["method"].upper()
            if clean["method"] not in ("GET", "POST", "DELETE", "PUT"):
                raise ConfigError(f"{where}: method must be GET, POST, DELETE or PUT, got {entry['method']!r}")
        if "path" in clean and not clean["path"].startswith("/"):
            raise ConfigError(f"{where}: path must start with /, got {clean['path']!r}")
        out.append({"kind": kind, **clean})
    return out


def apply_faults(exchange: Any, faults: list[dict[str, Any]]) -> None:
    """Queue ``faults`` (from :func:`load_faults`) on a replay exchange, in file order."""
    for f in faults:
        kwargs = {k: v for k, v in f.items() if k != "kind"}
        exchange.inject(f["kind"], **kwargs)


def describe(faults: list[dict[str, Any]]) -> list[str]:
    """One line per fault, for the replay's banner."""
    return [f"fault {i}: " + ", ".join(f"{k}={v}" for k, v in f.items()) for i, f in enumerate(faults, 1)]

"""The capability table and the base of every venue module (see :mod:`brokers.exchanges`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ccxt



@dataclass(frozen=True)
class VenueCapabilities:
    """What one exchange offers a live session, and how it answers (the capability table)."""

    exchange_id: str
    oco_lists: bool                 # one order list holds stop + take profit (one reservation)
    max_client_id: int              # longest client order id accepted
    trades_from_id: bool            # account trades can be paged by trade id
    refused_statuses: frozenset     # HTTP statuses answered BEFORE execution: nothing happened
    ban_status: int | None          # IP ban (stop all traffic for Retry-After)
    clock_error_codes: frozenset    # exchange error codes meaning "timestamp out of window"
    unknown_status_codes: frozenset  # error codes meaning "execution status unknown"
    recv_window_ms: int             # a signed request older than this is refused by the venue


class Venue:
    """Exchange-specific calls on a ccxt client (subclassed per exchange)."""

    caps: VenueCapabilities

    def __init__(self, exchange: ccxt.Exchange) -> None:
        self.ex = exchange

    def order_params(self, client_id: str, params: dict[str, Any]) -> dict[str, Any]:
        """Parameters that send ``client_id`` with a new order (ccxt's unified name)."""
        return {**params, "clientOrderId": client_id}

    def find_order(self, symbol: str, client_id: str) -> dict[str, Any] | None:
        raise NotImplementedError

    def find_order_by_id(self, symbol: str, order_id: str) -> dict[str, Any] | None:
        try:
            return self.ex.fetch_order(order_id, symbol)
        except ccxt.OrderNotFound:
            return None

    def cancel_order(self, symbol: str, order_id: str | None, client_id: str) -> dict[str, Any] | None:
        raise NotImplementedError

    def trades_from(self, symbol: str, from_id: int, limit: int) -> list[dict[str, Any]]:
        raise NotImplementedError

    def recent_trades(self, symbol: str, limit: int) -> list[dict[str, Any]]:
        return self.ex.fetch_my_trades(symbol, None, limit)

    def server_time_ms(self) -> int:
        """The clock signed requests are checked against (for the time offset)."""
        return int(self.ex.fetch_time())

    def set_time_offset(self, offset_ms: int) -> None:
        """Sign requests with ``host time - offset_ms`` from now on."""
        raise NotImplementedError

    def is_clock_error(self, exc: BaseException) -> bool:
        return any(f'"code":{c}' in str(exc).replace(" ", "") for c in self.caps.clock_error_codes)

"""Binance spot: every Binance-specific call and answer of a live session, in one place.

* **Client ids**: ``newClientOrderId`` (ccxt's unified ``clientOrderId``), looked up with
  ``origClientOrderId``; unknown id = ``-2013 Order does not exist``.
* **OCO exits** are one order list (``POST /api/v3/orderList/oco``: a LIMIT_MAKER take profit
  and a STOP_LOSS stop, one reservation), queried with ``GET /api/v3/orderList``
  (``origClientOrderId``), canceled with ``DELETE /api/v3/orderList`` (``listClientOrderId``;
  unknown or finished list = -2011).
* **Account trades** are paged by ``fromId`` (trade id).
* **Answers**: 429 (rate limit) and 418 (IP ban, grows when hit again) refuse a request
  before it executes; 5xx and -1001/-1006/-1007 leave its execution status unknown; -1021
  means the request's timestamp is outside the ``recvWindow`` (clock offset).
* **Clock**: signed requests carry ``timestamp = host ms - options['timeDifference']``;
  the offset is measured against ``GET /api/v3/time``. (The replay exchange serves its
  replayed market clock there and the clock it checks signatures against as
  ``nts_signTime``; the real Binance has one clock for both.)
"""
from __future__ import annotations

from typing import Any

import ccxt

from brokers.exchanges.base import Venue, VenueCapabilities

CAPABILITIES = VenueCapabilities(
    exchange_id="binance",
    oco_lists=True,
    max_client_id=36,
    trades_from_id=True,
    refused_statuses=frozenset({418, 429}),
    ban_status=418,
    clock_error_codes=frozenset({-1021}),
    unknown_status_codes=frozenset({-1001, -1006, -1007}),
    recv_window_ms=10_000,
)


class BinanceVenue(Venue):
    """Binance spot calls on a ccxt ``binance`` client (see the module docstring)."""

    caps = CAPABILITIES

    def __init__(self, exchange: ccxt.Exchange) -> None:
        super().__init__(exchange)
        window = int(exchange.options.get("recvWindow") or CAPABILITIES.recv_window_ms)
        self.recv_window_ms = window

    def find_order(self, symbol: str, client_id: str) -> dict[str, Any] | None:
        try:
            return self.ex.fetch_order(None, symbol, params={"origClientOrderId": client_id})
        except ccxt.OrderNotFound:
            return None

    def cancel_order(self, symbol: str, order_id: str | None, client_id: str) -> dict[str, Any] | None:
        try:
            if order_id:
                return self.ex.cancel_order(order_id, symbol)
            return self.ex.cancel_order(None, symbol, {"origClientOrderId": client_id})
        except ccxt.OrderNotFound:
            return None

    def submit_oco(self, market_id: str, side: str, amount: str, stop_price: str, take_profit: str,
                   list_cid: str, stop_cid: str, tp_cid: str) -> dict[str, Any]:
        """One OCO list: a STOP_LOSS below and a LIMIT_MAKER above for a sell (mirrored for a buy)."""
        stop_leg = {"Type": "STOP_LOSS", "StopPrice": stop_price, "ClientOrderId": stop_cid}
        tp_leg = {"Type": "LIMIT_MAKER", "Price": take_profit, "ClientOrderId": tp_cid}
        above, below = (tp_leg, stop_leg) if side == "sell" else (stop_leg, tp_leg)
        params = {"symbol": market_id, "side": side.upper(), "quantity": amount, "listClientOrderId": list_cid,
                  **{f"above{k}": v for k, v in above.items()}, **{f"below{k}": v for k, v in below.items()}}
        return self.ex.privatePostOrderListOco(params)

    def find_order_list(self, list_cid: str) -> dict[str, Any] | None:
        try:
            return self.ex.privateGetOrderList({"origClientOrderId": list_cid})
        except ccxt.OrderNotFound:
            return None

    def open_order_lists(self) -> list[dict[str, Any]]:
        return list(self.ex.privateGetOpenOrderList({}))

    def cancel_order_list(self, market_id: str, list_cid: str) -> dict[str, Any] | None:
        try:
            return self.ex.privateDeleteOrderList({"symbol": market_id, "listClientOrderId": list_cid})
        except (ccxt.OrderNotFound, ccxt.OperationRejected):
            return None

    def trades_from(self, symbol: str, from_id: int, limit: int) -> list[dict[str, Any]]:
        return self.ex.fetch_my_trades(symbol, None, limit, {"fromId": int(from_id)})

    def server_time_ms(self) -> int:
        body = self.ex.publicGetTime()
        return int(body.get("nts_signTime") or body["serverTime"])

    def set_time_offset(self, offset_ms: int) -> None:
        self.ex.options["timeDifference"] = int(offset_ms)

    def is_clock_error(self, exc: BaseException) -> bool:
        return isinstance(exc, ccxt.InvalidNonce) or super().is_clock_error(exc)

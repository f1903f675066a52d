"""Per-exchange seam: one module per exchange holds its quirks behind a capability table.

freqtrade's ``_ft_has`` habit: :class:`VenueCapabilities` says what an exchange can do and
how it answers (order lists for OCO, client-id parameters, which HTTP statuses mean
"refused, nothing executed", which error codes mean "clock out of sync"); a
:class:`Venue` subclass makes the exchange-specific calls on the ccxt client. The store
(:class:`brokers.ccxt_store.CCXTStore`) is the only caller; feed and broker never see the
raw client. Adding an exchange = one new module here registered in :data:`VENUES`, plus a
test against a simulated venue.
"""
from __future__ import annotations

import ccxt

from brokers.exchanges.base import Venue, VenueCapabilities  # noqa: F401  (re-exported)
from brokers.exchanges.binance import BinanceVenue
from core.errors import ConfigError

#: exchange id -> its venue module's class
VENUES: dict[str, type[Venue]] = {"binance": BinanceVenue}


def venue_for(exchange: ccxt.Exchange, *, need_orders: bool = False) -> Venue | None:
    """The venue module of ``exchange`` (None for candle-only use of an exchange without one;
    ConfigError when ``need_orders`` and nts has no module for it)."""
    cls = VENUES.get(exchange.id)
    if cls is None:
        if need_orders:
            raise ConfigError(f"{exchange.id}: live trading is supported on {', '.join(VENUES)} only (nts has no "
                              f"venue module for {exchange.id} in brokers/exchanges/)")
        return None
    return cls(exchange)

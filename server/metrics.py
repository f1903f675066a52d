"""Prometheus metrics (``/metrics``) through prometheus-fastapi-instrumentator and prometheus-client.

Per app a registry of its own (several apps in one process, as in the tests, never clash):
request counts and a latency histogram per route (the instrumentator; buckets from 1 ms),
``nts_model_info{model_id}``, ``nts_predictions_total`` and, for a served session, gauges read
from its journal at scrape time: ``nts_session_equity``, ``nts_session_position``,
``nts_session_halted``, ``nts_session_paused``, ``nts_session_breaker{state}``.
"""
from __future__ import annotations

from typing import Any, Iterator

from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_fastapi_instrumentator import Instrumentator

from server.setup import ServeSetup

LATENCY_BUCKETS = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class _SessionCollector:
    """Session gauges, read from the journal when Prometheus scrapes."""

    def __init__(self, host: Any) -> None:
        self.host = host

    def collect(self) -> Iterator[GaugeMetricFamily]:
        j = self.host.reader()
        summary = j.summary() if j is not None else None
        paused = GaugeMetricFamily("nts_session_paused", "1 while the operator paused new entries")
        paused.add_metric([], 1.0 if self.host.control.paused else 0.0)
        yield paused
        if summary is None:
            return
        for name, key, doc in (("nts_session_equity", "equity", "equity at the last journaled bar (quote currency)"),
                               ("nts_session_position", "position", "position at the last journaled bar (base units)")):
            value = summary.get(key)
            if value is not None:
                g = GaugeMetricFamily(name, doc)
                g.add_metric([], float(value))
                yield g
        halted = GaugeMetricFamily("nts_session_halted", "1 while the session is halted")
        halted.add_metric([], 1.0 if summary["halted"] else 0.0)
        yield halted
        breaker = GaugeMetricFamily("nts_session_breaker", "breaker state of the last journaled bar", labels=["state"])
        breaker.add_metric([str(summary.get("breaker_state") or "none")], 1.0)
        yield breaker


class Metrics:
    """The app's registry and metrics (see module docstring)."""

    def __init__(self, setup: ServeSetup, host: Any = None) -> None:
        self.registry = CollectorRegistry()
        info = Gauge("nts_model_info", "the model bundle being served", ["model_id"], registry=self.registry)
        info.labels(model_id=setup.model_id).set(1)
        self._predictions = Counter("nts_predictions", "bars scored by /predict and /predict/batch",
                                    ["side"], registry=self.registry)
        if host is not None:
            self.registry.register(_SessionCollector(host))

    def instrument(self, app: FastAPI) -> None:
        """Request counts and latency per route (the instrumentator's middleware)."""
        Instrumentator(registry=self.registry, excluded_handlers=["/metrics"]).instrument(
            app, latency_highr_buckets=LATENCY_BUCKETS, latency_lowr_buckets=(0.005, 0.05, 0.5))

    def predicted(self, prediction: Any) -> None:
        """Count one scored bar."""
        self._predictions.labels(side=prediction.side or "none").inc()

    def response(self) -> Response:
        """The exposition text."""
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

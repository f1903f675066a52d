"""The FastAPI application of ``nts serve``: inference API, operator API, status page, metrics.

Built by :func:`create_app` from a :class:`server.setup.ServeSetup` (what to score with), an
:class:`server.auth.Auth` and, for ``--mode paper|live``, a :class:`server.host.SessionHost`.

Refusals never end as a 500: malformed JSON, unknown fields, wrong types, bars the file
loader refuses, a gap, too few bars and policy overrides the policy refuses are all 422 with
``detail: [{loc, msg, type}]`` naming the field and the row; a body over the size limit is
413 (:mod:`server.limits`); a missing token 401, control without a configured token 403.
"""
from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any, Callable, Literal

from fastapi import Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import ClientDisconnect

from core.errors import NtsError
from core.redact import redact
from core.synthetic import synthetic_ohlcv
from models.streaming import BarScorer
from sessions.journal import JournalError
from server.auth import Auth, require_control, require_read
from server.host import SessionHost
from server.limits import MAX_BODY_BYTES, BodyLimit
from server.metrics import Metrics
from server.predict import (
    Bar,
    BatchRequest,
    BatchResponse,
    BatchResult,
    CandlesBody,
    PolicyOverrides,
    Prediction,
    PredictRequest,
    effective_policy,
    predict_frame,
    request_frame,
)
from server.setup import ServeSetup
from server.streams import IDLE_S, MAX_STREAMS, StreamGone, StreamRegistry, StreamsFull
from server.window_cache import WindowCache
from server.status_page import render_status_page
from server import views

log = logging.getLogger("nts.serve")


class StreamOpen(CandlesBody):
    """Open a bar stream: the warm-up candles (rows or columns), a symbol (echoed) and policy
    overrides that hold for every bar of the stream."""

    symbol: str | None = Field(None, max_length=40)
    policy: PolicyOverrides | None = None


class StreamPrediction(Prediction):
    """The decision on a stream's bar, and which bar the stream takes next."""

    stream_id: str
    symbol: str | None
    next_bar_time_ms: int = Field(description="open time of the bar this stream accepts next (epoch ms)")


class StreamOpened(StreamPrediction):
    """A new stream: the decision on its last warm-up bar, and how long it lives idle."""

    idle_expiry_s: float


class ErrorLine(BaseModel):
    """One refusal: where (``loc``), what (``msg``), the kind (``type``)."""

    loc: list[str | int]
    msg: str
    type: str


class Refusal(BaseModel):
    """A 422 answer."""

    detail: list[ErrorLine]


class Message(BaseModel):
    """Any other refusal (401, 403, 404, 409, 413, 503)."""

    detail: str


class Reason(BaseModel):
    """Why an operator acts (journaled)."""

    model_config = ConfigDict(extra="forbid")
    reason: str = Field("", max_length=500)


class ResumeReason(BaseModel):
    """Why the halt may be cleared (journaled, as with nts resume)."""

    model_config = ConfigDict(extra="forbid")
    reason: str = Field(min_length=1, max_length=500)


_R = {401: {"model": Message, "description": "missing or wrong API token"},
      413: {"model": Message, "description": "request body too large"},
      422: {"model": Refusal, "description": "refused input (field and row named)"}}
_CONTROL = {**_R, 403: {"model": Message, "description": "no API token configured"},
            409: {"model": Message, "description": "the session has no journal yet"}}


def _refusal(loc: list[str | int], msg: str, kind: str = "value_error") -> JSONResponse:
    return JSONResponse({"detail": [{"loc": loc, "msg": redact(msg), "type": kind}]}, status_code=422)


def _body(model: type[BaseModel]) -> dict[str, Any]:
    """The request body's place in the OpenAPI schema (the body is parsed by :func:`_parse`)."""
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}}


async def _read_body(request: Request, model: Any) -> Any:
    """The request body parsed as ``model``, or the response that refuses it (400 when the
    client went away or the body limit cut it off, which already answered 413; 422 when invalid)."""
    try:
        raw = await request.body()
    except ClientDisconnect:
        return Response(status_code=400)
    return _parse(model, raw)


async def _in_threadpool(request: Request, model: type[BaseModel], work: Callable[[Any], Response]) -> Any:
    """The body parsed as ``model`` (or the response that refuses it), then ``work(body)`` run
    in the threadpool: scoring is CPU-bound and must not hold the event loop."""
    body = await _read_body(request, model)
    if isinstance(body, Response):
        return body
    return await run_in_threadpool(work, body)


def _scoring_refusal(loc: list[str | int], where: str, exc: NtsError) -> JSONResponse:
    """422 for candles or policy overrides the scoring path refused: the field named is
    ``policy`` when the message is about the policy, else the candles (``where``)."""
    return _refusal([*loc, "policy" if "policy" in str(exc) else where], str(exc))


def _parse(model: type[BaseModel], raw: bytes) -> Any:
    """The body parsed straight from its bytes by pydantic (one pass, no intermediate dicts:
    several times faster than decoding then validating ~1,400 candles); a refusal is the
    same 422 FastAPI gives, without echoing the input."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        errors = [{"loc": ["body", *e.get("loc", ())], "msg": redact(e.get("msg", "")), "type": str(e.get("type", ""))}
                  for e in exc.errors(include_url=False, include_input=False)]
        return JSONResponse({"detail": errors}, status_code=422)


def _openapi_with_bodies(app: FastAPI, models: tuple[type[BaseModel], ...]) -> None:
    """Add the hand-parsed request bodies' models to the app's OpenAPI components."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in models:
                js = model.model_json_schema(ref_template="#/components/schemas/{model}")
                for name, sub in js.pop("$defs", {}).items():
                    components.setdefault(name, sub)
                components.setdefault(model.__name__, js)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _warm(setup: ServeSetup, ready: threading.Event) -> None:
    """Score one synthetic window through the whole path (first calls compile and allocate)."""
    try:
        if setup.refusal is not None:  # every request is refused (ServeSetup.min_bars): warm the scorer alone
            BarScorer(setup.bundle).prime(synthetic_ohlcv(setup.warmup_bars, seed=1))
        else:
            predict_frame(setup, synthetic_ohlcv(setup.min_bars, seed=1))
    except Exception:  # noqa: BLE001 - warming must not kill the server; /predict reports real errors
        log.warning("warm-up prediction failed", exc_info=True)
    ready.set()


def create_app(setup: ServeSetup, auth: Auth, host: SessionHost | None = None,
               max_body: int = MAX_BODY_BYTES, max_streams: int = MAX_STREAMS, stream_idle_s: float = IDLE_S) -> FastAPI:
    """The application (see module docstring); the session (if any) starts with it. At most
    ``max_streams`` bar streams are open at once; one idle for ``stream_idle_s`` seconds closes."""
    ready = threading.Event()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        threading.Thread(target=_warm, args=(setup, ready), name="nts-warm", daemon=True).start()
        if host is not None:
            host.start()
        try:
            yield
        finally:
            if host is not None:
                host.close()

    app = FastAPI(title="nts serve", version="1", lifespan=lifespan,
                  description="TCN triple-barrier probabilities and the trading decision of nts backtest, "
                              "per bar; operator API of a paper/live session.")
    app.state.ready = ready
    app.state.setup = setup
    app.state.host = host
    metrics = Metrics(setup, host)
    metrics.instrument(app)
    app.add_middleware(BodyLimit, limit=max_body)
    read = [Depends(require_read(auth))]
    control = [Depends(require_control(auth))]

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # the input is not echoed back (it may be large, and is the caller's anyway)
        errors = [{"loc": list(e.get("loc", ())), "msg": redact(e.get("msg", "")), "type": str(e.get("type", ""))}
                  for e in exc.errors()]
        return JSONResponse({"detail": errors}, status_code=422)

    app.state.window_cache = WindowCache(setup.bundle)
    _inference_routes(app, setup, ready, read, metrics)
    app.state.streams = StreamRegistry(setup, max_streams, stream_idle_s)
    _stream_routes(app, app.state.streams, read, metrics)
    _openapi_with_bodies(app, (PredictRequest, BatchRequest, StreamOpen, Bar))
    if host is not None:
        _operator_routes(app, host, read, control)
    return app


def _inference_routes(app: FastAPI, setup: ServeSetup, ready: threading.Event, read: list, metrics: Metrics) -> None:
    @app.get("/health", tags=["inference"], summary="Liveness (no auth)")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", tags=["inference"], dependencies=read, summary="Bundle loaded and warmed (503 before)",
             responses={**_R, 503: {"model": Message, "description": "still warming up"}})
    def ready_route() -> Any:
        if not ready.is_set():
            return JSONResponse({"detail": "warming up"}, status_code=503)
        return {"ready": True, "model_id": setup.model_id}

    @app.get("/model", tags=["inference"], dependencies=read, responses=_R, summary="Bundle metadata")
    def model() -> dict[str, Any]:
        return views.model_info(setup)

    @app.post("/predict", tags=["inference"], dependencies=read, response_model=Prediction, responses=_R,
              summary="The backtest's decision on the last of these bars", openapi_extra=_body(PredictRequest))
    async def predict(request: Request) -> Any:
        return await _in_threadpool(request, PredictRequest, _predict_one)

    def _predict_one(body: PredictRequest) -> Response:
        try:
            frame = request_frame(body, setup)
            out = predict_frame(setup, frame, body.policy, app.state.window_cache)
        except NtsError as exc:
            return _scoring_refusal(["body"], body.where, exc)
        metrics.predicted(out)
        return Response(out.model_dump_json(), media_type="application/json")

    @app.post("/predict/batch", tags=["inference"], dependencies=read, response_model=BatchResponse, responses=_R,
              summary="Several symbols or windows in one call", openapi_extra=_body(BatchRequest))
    async def predict_batch(request: Request) -> Any:
        return await _in_threadpool(request, BatchRequest, _predict_many)

    def _predict_many(body: BatchRequest) -> Response:
        results = []
        for i, item in enumerate(body.items):
            try:
                frame = request_frame(item, setup, where=f"items[{i}].")
                out = predict_frame(setup, frame, item.policy, app.state.window_cache)
            except NtsError as exc:
                return _scoring_refusal(["body", "items", i], item.where, exc)
            metrics.predicted(out)
            results.append(BatchResult(**out.model_dump(), symbol=item.symbol))
        return Response(BatchResponse(results=results).model_dump_json(), media_type="application/json")

    @app.get("/metrics", tags=["inference"], dependencies=read, responses=_R, summary="Prometheus metrics",
             response_class=Response)
    def metrics_route() -> Response:
        return metrics.response()


_STREAM = {**_R, 404: {"model": Message, "description": "no open stream under this id (closed or expired)"}}


def _stream_routes(app: FastAPI, streams: StreamRegistry, read: list, metrics: Metrics) -> None:
    setup = streams.setup

    def answer(pred: Prediction, stream: Any, model: type[StreamPrediction], **extra: Any) -> Response:
        metrics.predicted(pred)
        out = model(**pred.model_dump(), stream_id=stream.id, symbol=stream.symbol,
                    next_bar_time_ms=(stream.last_ns + streams.step_ns) // 1_000_000, **extra)
        return Response(out.model_dump_json(), media_type="application/json",
                        status_code=201 if model is StreamOpened else 200)

    def gone(exc: StreamGone) -> JSONResponse:
        return JSONResponse({"detail": redact(str(exc))}, status_code=404)

    @app.post("/streams", tags=["streams"], dependencies=read, status_code=201, response_model=StreamOpened,
              responses={**_R, 429: {"model": Message, "description": "the bound on open streams is reached"}},
              summary="Open a bar stream: the warm-up once, the decision on its last bar",
              openapi_extra=_body(StreamOpen))
    async def open_stream(request: Request) -> Any:
        return await _in_threadpool(request, StreamOpen, _open)

    def _open(body: StreamOpen) -> Response:
        try:
            policy = effective_policy(setup, body.policy)
            frame = request_frame(body, setup)
            stream, pred = streams.open(frame, policy, body.symbol)
        except StreamsFull as exc:
            return JSONResponse({"detail": str(exc)}, status_code=429)
        except NtsError as exc:
            return _scoring_refusal(["body"], body.where, exc)
        return answer(pred, stream, StreamOpened, idle_expiry_s=streams.idle_s)

    @app.post("/streams/{stream_id}/bars", tags=["streams"], dependencies=read, response_model=StreamPrediction,
              responses=_STREAM, summary="The next closed bar of a stream: its decision",
              openapi_extra=_body(Bar))
    async def push_bar(request: Request, stream_id: str) -> Any:
        # on the event loop, not a worker thread: the work is well under a millisecond, and the
        # hop to a thread would cost as much; the stream's lock still guards its state
        body = await _read_body(request, Bar)
        if isinstance(body, Response):
            return body
        try:
            stream, pred = streams.push(stream_id, body)
        except StreamGone as exc:
            return gone(exc)
        except NtsError as exc:
            return _refusal(["body", "timestamp" if "timestamp" in str(exc) else "bar"], str(exc))
        return answer(pred, stream, StreamPrediction)

    @app.delete("/streams/{stream_id}", tags=["streams"], dependencies=read, responses=_STREAM,
                summary="Close a stream")
    def close_stream(stream_id: str) -> Any:
        try:
            streams.close(stream_id)
        except StreamGone as exc:
            return gone(exc)
        return {"closed": True}


def _who(request: Request) -> str:
    client = request.client.host if request.client else "?"
    return f"api token holder from {client}"


_API = "/api/v1"


def _no_journal() -> JSONResponse:
    """409: the session has not opened its journal yet."""
    return JSONResponse({"detail": "the session has no journal yet (still starting)"}, status_code=409)


def _operator_routes(app: FastAPI, host: SessionHost, read: list, control: list) -> None:
    """The status page and the operator API of the hosted paper/live session."""
    _operator_read_routes(app, host, read)
    _operator_control_routes(app, host, control)


def _operator_read_routes(app: FastAPI, host: SessionHost, read: list) -> None:
    """Status page, status, trades, fills, bars, equity and journal (read token)."""

    @app.get("/", tags=["operator"], dependencies=read, response_class=HTMLResponse, responses=_R,
             summary="Status page (refreshes itself)")
    def status_page() -> HTMLResponse:
        return HTMLResponse(render_status_page(host))

    @app.get(f"{_API}/status", tags=["operator"], dependencies=read, responses=_R,
             summary="Position, equity, working orders, breakers, halt and why")
    def status() -> dict[str, Any]:
        return views.session_status(host)

    @app.get(f"{_API}/trades", tags=["operator"], dependencies=read, responses={**_R, 409: _CONTROL[409]})
    def trades() -> Any:
        j = host.reader()
        return _no_journal() if j is None else {"trades": views.trades(j)}

    @app.get(f"{_API}/fills", tags=["operator"], dependencies=read, responses={**_R, 409: _CONTROL[409]})
    def fills(limit: int = Query(100, ge=1, le=10_000)) -> Any:
        j = host.reader()
        return _no_journal() if j is None else {"fills": views.fills(j, limit)}

    @app.get(f"{_API}/bars", tags=["operator"], dependencies=read, responses={**_R, 409: _CONTROL[409]},
             summary="Journaled bars (decisions, position, equity), paged")
    def bars(offset: int = Query(0, ge=0, le=10**9), limit: int = Query(100, ge=1, le=1000),
             order: Literal["asc", "desc"] = "asc") -> Any:
        if host.reader() is None:
            return _no_journal()
        return views.bars_page(host.state, offset, limit, newest_first=order == "desc")

    @app.get(f"{_API}/equity", tags=["operator"], dependencies=read, responses={**_R, 409: _CONTROL[409]},
             summary="Equity per bar, paged")
    def equity(offset: int = Query(0, ge=0, le=10**9), limit: int = Query(1000, ge=1, le=1000)) -> Any:
        if host.reader() is None:
            return _no_journal()
        page = views.bars_page(host.state, offset, limit)
        page["bars"] = [{"time": b["time"], "equity": b["equity"], "position": b["position"]} for b in page["bars"]]
        return page

    @app.get(f"{_API}/journal", tags=["operator"], dependencies=read, responses={**_R, 409: _CONTROL[409]},
             summary="Journal summary and recent events")
    def journal() -> Any:
        j = host.reader()
        return _no_journal() if j is None else views.journal_summary(j)


def _operator_control_routes(app: FastAPI, host: SessionHost, control: list) -> None:
    """Pause, unpause, flatten, resume and stop (control token; each is journaled by the host)."""

    @app.post(f"{_API}/pause", tags=["operator"], dependencies=control, responses=_CONTROL,
              summary="No new entries (exits still run)")
    def pause(request: Request, body: Reason | None = None) -> Any:
        changed = host.pause((body.reason if body else "") or "paused by operator", _who(request))
        return {"paused": True, "changed": changed}

    @app.post(f"{_API}/unpause", tags=["operator"], dependencies=control, responses=_CONTROL)
    def unpause(request: Request) -> Any:
        return {"paused": False, "changed": host.unpause(_who(request))}

    @app.post(f"{_API}/flatten", tags=["operator"], dependencies=control, responses=_CONTROL,
              summary="Close the position at market at the next bar and halt")
    def flatten(request: Request, body: Reason | None = None) -> Any:
        try:
            return host.flatten((body.reason if body else "") or "no reason given", _who(request))
        except JournalError:
            return _no_journal()

    @app.post(f"{_API}/resume", tags=["operator"], dependencies=control, responses=_CONTROL,
              summary="Clear a halt (the reason is journaled, as with nts resume)")
    def resume(request: Request, body: ResumeReason) -> Any:
        try:
            return host.resume(body.reason, _who(request))
        except JournalError:
            return _no_journal()

    @app.post(f"{_API}/stop", tags=["operator"], dependencies=control, responses=_CONTROL,
              summary="Stop the session (the bar in progress completes) and the server")
    def stop() -> Any:
        host.stop()
        return {"stopping": True}

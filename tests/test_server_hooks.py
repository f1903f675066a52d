"""nts serve with a strategy whose hooks look back (``hook_lookback`` > 1): /predict and the
bar streams evaluate the hooks over the declared trailing bars (P and forecast included), so
the answers equal the backtest's per-bar values bar for bar -- with volatility-scaled barriers
too (the barrier prices and the per-bar break-even centre); too few bars and an undeclared
lookback are refused with one line naming the strategy."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from core.config import load_config
from core.decision import A_ENTER
from core.errors import ConfigError
from core.synthetic import synthetic_ohlcv
from models.bundle import load_bundle
from models.labels import barrier_widths
from server.app import create_app
from server.auth import Auth
from server.run import ServeOptions, build_app
from server.setup import build_setup
from strategies.backtest import run_backtest, warmup_bars_for
from strategies.tcn import TCNStrategy
from test_server import columns_of, rows_of, wait_ready

LOOKBACK = 12


class LookbackTCN(TCNStrategy):
    """Reads the last ``n`` bars in two hooks: a signal only where P is at or above its mean
    over the last ``n`` bars (so the P of earlier bars matters), an entry only where the close
    is at or above its mean over the last ``n`` closes (so earlier bars matter)."""

    params = (("n", LOOKBACK),)

    @property
    def hook_lookback(self) -> int:
        return self.p.n

    def signal(self, p: np.ndarray, bars: pd.DataFrame) -> np.ndarray:
        s = super().signal(p, bars)
        mean = pd.Series(p).rolling(self.p.n, min_periods=self.p.n).mean().to_numpy()
        return np.where(p >= mean, s, 0.0)

    def entry_allowed(self, bars: pd.DataFrame) -> np.ndarray:
        close = bars["close"]
        return (close >= close.rolling(self.p.n, min_periods=self.p.n).mean()).to_numpy()


class RecordingLookback(LookbackTCN):
    """LookbackTCN that writes down, on every traded bar, the hooks' values the decision reads."""

    params = (("log", None),)

    def next(self):
        if self._start_num is not None and self.data.datetime[0] >= self._start_num:
            p, s, w = self.bar_signal()
            allowed = bool(self.hook_values().allowed[self._hook_row()])
            self.p.log.append({"time": self.data.datetime.datetime(0), "p": p, "s": s, "w": w, "allowed": allowed,
                               "vol": self.forecast_vol()})
        super().next()


class RecordingVolLookback(RecordingLookback):
    """RecordingLookback that also writes down each bar's barrier width and centre, and the take
    profit and stop of every entry the decision step places."""

    params = (("entries", None),)

    def next(self):
        if self._start_num is not None and self.data.datetime[0] >= self._start_num:
            w = self.width()
            centers = self.policy.centers(np.array([w]))
            self.p.log.append({"width": w, "center": float(self.policy.center if centers is None else centers[0])})
        super().next()

    def apply_actions(self, a):
        if a.mask & A_ENTER:
            self.p.entries[pd.Timestamp(self.data.datetime.datetime(0), tz="UTC")] = (a.take_profit, a.stop)
        super().apply_actions(a)


class Undeclared(TCNStrategy):
    """Overrides a hook without declaring hook_lookback."""

    def entry_allowed(self, bars: pd.DataFrame) -> np.ndarray:
        return (bars["close"] >= bars["close"].expanding().mean()).to_numpy()


def _same(out: dict, rec: dict) -> None:
    assert out["bar_time"] == pd.Timestamp(rec["time"], tz="UTC").strftime("%Y-%m-%dT%H:%M:%SZ")
    # batch (backtest) vs streaming (server) scoring: float32 network noise only
    assert out["probability"] == pytest.approx(rec["p"], abs=2e-6)
    assert out["signal"] == pytest.approx(rec["s"], abs=2e-5)
    assert out["target_weight"] == pytest.approx(rec["w"], rel=1e-4, abs=1e-9)
    assert out["forecast_vol"] == pytest.approx(rec["vol"], rel=1e-9)
    assert out["entry_allowed"] == rec["allowed"]


def _stream_answers(c, frame, first: int, need: int) -> tuple[str, list[dict]]:
    """A stream opened with the ``need`` bars ending at bar ``first``, then fed one bar per call
    up to ``first + 59``: its id and the 60 answers."""
    opened = c.post("/streams", json={"columns": columns_of(frame.iloc[first + 1 - need:first + 1])})
    assert opened.status_code == 201, opened.text
    sid, answers = opened.json()["stream_id"], [opened.json()]
    for row in rows_of(frame)[first + 1:first + 60]:
        r = c.post(f"/streams/{sid}/bars", json=row)
        assert r.status_code == 200, r.text
        answers.append(r.json())
    return sid, answers


@pytest.mark.timeout(300)
def test_lookback_hooks_equal_the_backtest_bar_by_bar(fast_bundle):
    bundle = load_bundle(fast_bundle)
    warm = warmup_bars_for(bundle, load_config(None))
    need = warm + LOOKBACK - 1
    frame = synthetic_ohlcv(need + 70, seed=5, start="2024-06-01")
    first = need + 5                       # the first compared bar has `need` bars ending at it, and more
    s, e = frame.index[first], frame.index[first + 59]
    center = float(np.nanmedian(bundle.predict_proba(frame).loc[s:e]))  # so that some bars trade
    cfg = load_config(None, [f"strategy.center={center:.6f}", "strategy.deadband=0"])
    log: list[dict] = []
    run_backtest(bundle, frame, cfg, strategy=RecordingLookback, start=s, end=e + pd.Timedelta("15min"),
                 progress=False, strategy_kwargs={"log": log})
    assert len(log) == 60
    # the hooks' history matters on these bars: one bar alone would never allow an entry
    assert {r["allowed"] for r in log} == {True, False}
    assert any(r["s"] == 0.0 and r["p"] > center for r in log) and any(r["s"] > 0 for r in log)
    setup = build_setup(cfg, fast_bundle, strategy=LookbackTCN)
    assert setup.lookback == LOOKBACK and setup.min_bars == need
    with TestClient(create_app(setup, Auth(None))) as c:
        wait_ready(c)
        assert c.get("/model").json()["strategy"] == {"name": "LookbackTCN", "hook_lookback": LOOKBACK,
                                                      "overridden_hooks": ["signal", "entry_allowed"],
                                                      "refusal": None}
        rows = rows_of(frame)
        sid, answers = _stream_answers(c, frame, first, need)
        for rec, out in zip(log, answers, strict=True):
            _same(out, rec)
        assert {a["side"] for a in answers} >= {"buy", None}
        trail = c.app.state.streams.get(sid).trail
        assert len(trail) == LOOKBACK - 1 and trail.ts_ns[-1] == frame.index[first + 59].value  # fixed size
        # /predict and /predict/batch: exactly the bars needed, or more; a window one bar after
        # the previous one takes that request's trail from the cache (the batch path otherwise)
        cache = c.app.state.window_cache
        for k in (0, 1, 2, 3, 10, 17, 30, 31, 32, 45, 46, 59):
            end = first + k + 1
            out = c.post("/predict", json={"bars": rows[end - need - (k % 3):end]})
            assert out.status_code == 200, out.text
            _same(out.json(), log[k])
        assert cache.trail_hits == 6
        item = {"columns": columns_of(frame.iloc[first + 1 - need:first + 1])}
        batch = c.post("/predict/batch", json={"items": [item]})
        _same(batch.json()["results"][0], log[0])


VOL_SETS = ["labels.scale=vol", "labels.vol_profit=2.0", "labels.vol_stop=0.5", "labels.vol_span=14",
            "labels.horizon=6", "strategy.center=breakeven", "strategy.deadband=0"]


@pytest.mark.timeout(300)
def test_vol_barriers_stream_equals_the_backtest_bar_by_bar(fast_bundle):
    """Volatility-scaled barriers and a per-bar break-even centre: every stream answer has the
    backtest's P, signal, weight, and the barrier prices and centre of that bar's width; every
    entry the backtest places has the stream's take profit and stop."""
    bundle = load_bundle(fast_bundle)
    warm = warmup_bars_for(bundle, load_config(None))
    need = warm + LOOKBACK - 1
    frame = synthetic_ohlcv(need + 70, seed=5, start="2024-06-01")
    first = need + 5
    s, e = frame.index[first], frame.index[first + 59]
    # a taker fee that puts the break-even centre at the median width on the median P (some bars trade)
    p_med = float(np.nanmedian(bundle.predict_proba(frame).loc[s:e]))
    w_med = float(np.median(barrier_widths(frame, 6, 14)[first:first + 60]))
    fee = round((p_med * 2.5 - 0.5) * w_med / 2.0, 8)
    assert 0.0 < fee < w_med  # the profit width (2 x) covers the round trip
    cfg = load_config(None, [*VOL_SETS, f"execution.taker_fee={fee!r}"])
    log: list[dict] = []
    entries: dict = {}
    run_backtest(bundle, frame, cfg, strategy=RecordingVolLookback, start=s, end=e + pd.Timedelta("15min"),
                 progress=False, barriers="config", strategy_kwargs={"log": log, "entries": entries})
    recs = [{**log[k], **log[k + 1]} for k in range(0, len(log), 2)]  # width/centre, then the hooks' values
    assert len(recs) == 60 and len(entries) >= 2
    widths = np.array([r["width"] for r in recs])
    assert widths.max() > 1.25 * widths.min()  # the barriers move with the volatility on these bars
    setup = build_setup(cfg, fast_bundle, barriers="config", strategy=LookbackTCN)
    assert setup.policy.per_bar_center
    with TestClient(create_app(setup, Auth(None))) as c:
        wait_ready(c)
        rows = rows_of(frame)
        _, answers = _stream_answers(c, frame, first, need)
        for k, (rec, out) in enumerate(zip(recs, answers, strict=True)):
            _same(out, rec)
            close, w = float(frame["close"].iloc[first + k]), rec["width"]
            # the centre of this bar's width (its P is compared against it), not one number
            assert out["center"] == pytest.approx(rec["center"], rel=1e-9)
            assert out["center"] == pytest.approx((0.5 * w + 2.0 * fee) / (2.5 * w), rel=1e-9)
            long = out["target_weight"] >= 0.0
            tp, sl = (close * (1 + 2.0 * w), close * (1 - 0.5 * w)) if long else (close * (1 - 2.0 * w),
                                                                                close * (1 + 0.5 * w))
            assert out["barriers"]["take_profit"] == pytest.approx(tp, rel=1e-12)
            assert out["barriers"]["stop"] == pytest.approx(sl, rel=1e-12)
            placed = entries.get(pd.Timestamp(out["bar_time"]))
            if placed is not None:  # the backtest entered here: the stream says so, at the same prices
                assert out["side"] is not None, out
                assert out["barriers"]["take_profit"] == pytest.approx(placed[0], rel=1e-12)
                assert out["barriers"]["stop"] == pytest.approx(placed[1], rel=1e-12)
        assert sum(pd.Timestamp(a["bar_time"]) in entries for a in answers) == len(entries)
        # /predict with the same bars answers as the stream
        out = c.post("/predict", json={"bars": rows[first + 30 - need:first + 30]}).json()
        for key in ("take_profit", "stop"):
            assert out["barriers"][key] == pytest.approx(answers[29]["barriers"][key], rel=1e-12)
        assert out["center"] == pytest.approx(answers[29]["center"], rel=1e-12)


def test_too_few_bars_and_undeclared_lookbacks_refused(fast_bundle):
    cfg = load_config(None)
    setup = build_setup(cfg, fast_bundle, strategy=LookbackTCN)
    frame = synthetic_ohlcv(setup.min_bars, seed=6, start="2024-06-01")
    with TestClient(create_app(setup, Auth(None))) as c:
        wait_ready(c)
        for route, body in (("/predict", {"columns": columns_of(frame.iloc[1:])}),
                            ("/streams", {"bars": rows_of(frame.iloc[1:])})):
            r = c.post(route, json=body)
            assert r.status_code == 422, r.text
            (line,) = r.json()["detail"]
            assert line["msg"] == (f"{line['loc'][-1]}: {setup.min_bars - 1} bars, strategy LookbackTCN needs at "
                                   f"least {setup.min_bars}: the model's warm-up ({setup.warmup_bars}) and the "
                                   f"{LOOKBACK - 1} bars before it that its hooks look back on (hook_lookback = "
                                   f"{LOOKBACK}) ending at the bar to score")
        assert c.post("/predict", json={"columns": columns_of(frame)}).status_code == 200
        assert c.get("/model").json()["warmup"]["request_bars"] == setup.min_bars
    # a builtin that looks back: the bars it needs are the warm-up plus its lookback
    calm = build_setup(cfg, fast_bundle, strategy="calm_only")
    assert calm.lookback == 96 + 672 and calm.min_bars == calm.warmup_bars + 767


@pytest.mark.parametrize("name, why", [
    ("Undeclared", "strategy Undeclared overrides the hook(s) entry_allowed without declaring hook_lookback"),
    ("RecordingLookback", "strategy RecordingLookback: the server answers with the bundle's TCN probability and "
                          "the strategy's vectorised hooks only"),
])
def test_strategies_the_server_cannot_answer_for(fast_bundle, name, why):
    """Refused at start when the server only serves inference; with a session the session
    runs and the inference routes refuse every request with the same line."""
    with pytest.raises(ConfigError, match=f"^{re.escape(why)}.*\\(nothing was served\\)$"):
        build_app(ServeOptions(model=str(fast_bundle), strategy=f"test_server_hooks:{name}"))
    setup = build_setup(load_config(None), fast_bundle, strategy=f"test_server_hooks:{name}")
    assert setup.refusal.startswith(why)
    frame = synthetic_ohlcv(setup.warmup_bars + LOOKBACK, seed=6, start="2024-06-01")
    with TestClient(create_app(setup, Auth(None))) as c:
        wait_ready(c)
        assert c.get("/model").json()["strategy"]["refusal"] == setup.refusal
        for route in ("/predict", "/streams"):
            r = c.post(route, json={"columns": columns_of(frame)})
            assert r.status_code == 422, r.text
            assert r.json()["detail"][0]["msg"] == setup.refusal

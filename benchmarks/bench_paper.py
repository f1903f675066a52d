"""Paper-path speed: the per-bar decision on one thread, and bars/s of a replay session.

Usage: .venv/bin/python benchmarks/bench_paper.py [--model artifacts/tcn_v1] [--bars 2000] [--session-bars 300]

1. **Per-bar decision** (what a paper/live session does when a bar closes, without the
   network round trip): the bundle's incremental scorer (``BarScorer.update``: streaming
   features, the trailing window, ONNX Runtime, calibration), the policy (signal, vol
   forecast, weight, order type: ``core.policy``), and the risk manager (realised daily vol
   of the last window + ``RiskManager.check``). Timed per bar with ``perf_counter_ns`` over
   ``--bars`` bars after a warm-up, each stage and in total: median and p99; the feature
   update alone is timed on a second stream of the same bars. Goal: median <= 0.3 ms,
   p99 <= 1 ms.
2. **The same bar inside backtrader** (live mode, ``runonce=False``): a TCNStrategy fed the
   bars one by one, per-bar wall time (indicators' streaming ``next()`` + strategy + broker).
3. **A replay session**: ``PaperSession`` against the replay exchange through the real ccxt
   client, the exchange clock stepped one bar per wait (no idle time): bars/s end to end
   (two HTTP requests per bar, the simulated broker, one journal transaction per bar with
   fsync), plus the start-up (the primed warm-up).
5. **Hooks over a growing session** (``--growth-at 200,2000``): a primed TCN strategy in
   backtrader's live mode (the session's path: warm-up history as param ``history``, then bar
   by bar), per-bar times after 200 and after 2,000 fed bars (``--growth-window`` bars each):
   the strategy's decision (``next()``: risk, hooks, decision step, orders; wall and this
   thread's CPU time) and the hooks' evaluation alone, for the default strategy and for one
   with an overridden hook (``CalmOnly``, 768-bar lookback), each before (the whole history on
   every bar, the span rule before ``hook_lookback``) and after (the declared lookback), both
   in one cerebro (bar by bar in turn). Then a full garbage collection with those objects
   alive, plain and after ``gc.freeze()`` (what a session does after its warm-up).
6. **Restart** (``--restarts``): ``nts paper`` as a fresh subprocess resuming its journal
   against the replay exchange, from spawn to the first new bar journaled ("paper restart to
   first new bar, process start included", goal <= 3 s), beside the same restart of a
   strategy fed every warm-up bar through backtrader (the baseline, same run) and the cost
   of the interpreter + imports alone.

Without ``--model`` a small bundle is trained on generated bars first (the default network
size; not timed). Prints one line per figure.
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.config import load_config  # noqa: E402
from core.policy import Policy  # noqa: E402
from core.risk import RiskManager, realised_daily_vol  # noqa: E402
from core.synthetic import synthetic_ohlcv  # noqa: E402
from models.bundle import load_bundle  # noqa: E402
from models.features import FEATURE_NAMES, StreamingFeatures  # noqa: E402
from strategies.backtest import warmup_bars_for  # noqa: E402


def _stats(ns: list[int]) -> str:
    ms = np.asarray(ns, dtype="float64") / 1e6
    return f"median {np.median(ms):.3f} ms, p99 {np.percentile(ms, 99):.3f} ms"


class GcPauses:
    """Garbage-collector runs (generation, ns) while :attr:`on` (a source of per-bar tails)."""

    def __init__(self) -> None:
        self.on, self.pauses, self._t0 = False, [], 0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t0 = time.perf_counter_ns()
        elif self.on:
            self.pauses.append((info["generation"], time.perf_counter_ns() - self._t0))

    def summary(self) -> str:
        gens = [sum(1 for g, _ in self.pauses if g == k) for k in range(3)]
        worst = max((ns for _, ns in self.pauses), default=0) / 1e6
        return f"{len(self.pauses)} collections (gen0/1/2: {gens[0]}/{gens[1]}/{gens[2]}), longest {worst:.3f} ms"


def bench_decision(bundle, cfg, frame: pd.DataFrame, n: int, gc_pauses: GcPauses | None = None) -> dict[str, list[int]]:
    """Per-stage per-bar times (ns) of the streaming decision over the last ``n`` bars
    (``gc_pauses``: records the collector's runs during the timed bars)."""
    policy = Policy.from_config(cfg, bundle)
    risk = RiskManager(cfg.risk, kill_switch_file="")
    scorer = bundle.stream()
    features_only = StreamingFeatures(bundle.feature_cfg, bundle.timeframe)
    closes: deque[float] = deque(maxlen=cfg.risk.vol_window_bars + 1)
    col = FEATURE_NAMES.index("ewma_vol_fast")
    times = {k: [] for k in ("features alone", "features+tcn+cal", "policy", "risk", "total", "total CPU time")}
    cpu = time.thread_time_ns  # this thread's CPU time: a wall-time tail it lacks is time spent descheduled
    equity = cfg.execution.cash
    first_timed = len(frame) - n
    clock = time.perf_counter_ns
    for i, (ts, o, h, l, c, v) in enumerate(frame.itertuples(name=None)):
        if gc_pauses is not None:
            gc_pauses.on = i >= first_timed
        c0 = cpu()
        t0 = clock()
        p = scorer.update(ts, o, h, l, c, v)[1]
        t1 = clock()
        s = policy.signal(p)
        vol = policy.forecast_vol(float(scorer.rows[-1][col]))
        w = policy.target_weight(s, vol)
        policy.use_limit(abs(s))
        t2 = clock()
        closes.append(c)
        rv = (float(realised_daily_vol(np.asarray(closes), cfg.risk.vol_window_bars, bundle.timeframe)[-1])
              if len(closes) > cfg.risk.vol_window_bars else float("nan"))
        risk.cap_weight(w)
        risk.check(ts, equity, 0.0, rv)
        t3 = clock()
        c3 = cpu()
        features_only.update(ts, o, h, l, c, v)
        t4 = clock()
        if i >= first_timed:
            for k, dt in (("features alone", t4 - t3), ("features+tcn+cal", t1 - t0), ("policy", t2 - t1),
                          ("risk", t3 - t2), ("total", t3 - t0), ("total CPU time", c3 - c0)):
                times[k].append(dt)
    return times


def bench_backtrader(bundle, cfg, frame: pd.DataFrame, n: int) -> float:
    """Wall seconds per bar of a TCNStrategy in backtrader's live mode over the last ``n`` bars."""
    import backtrader as bt

    from strategies.backtest import FrameFeed, frame_feed
    from strategies.base import strategy_params
    from strategies.tcn import TCNStrategy

    class LiveFrame(FrameFeed):
        def islive(self) -> bool:
            return True

    stamps: list[float] = []

    class Timed(bt.Analyzer):
        def next(self) -> None:
            stamps.append(time.perf_counter())

        prenext = next

    feed = frame_feed(frame)
    feed.__class__ = LiveFrame
    cerebro = bt.Cerebro(stdstats=False)
    cerebro.adddata(feed)
    params = strategy_params(cfg, bundle=bundle, trade_start=frame.index[len(frame) - n], timeframe=bundle.timeframe)
    params["bundle"] = bundle
    cerebro.addstrategy(TCNStrategy, **params)
    cerebro.addanalyzer(Timed)
    cerebro.run()
    per_bar = np.diff(stamps[-n:])
    return float(np.median(per_bar)), float(np.percentile(per_bar, 99))


def bench_session(bundle_dir: Path, cfg, warm: int, n: int) -> tuple[float, float, int]:
    """(start-up seconds, bars/s, bars) of a PaperSession on the replay exchange."""
    from brokers.ccxt_store import CCXTStore
    from brokers.exchange import make_exchange
    from venues.replay import ReplayExchange
    from sessions.session import PaperSession, SessionOptions

    frame = synthetic_ohlcv(warm + n + 20, seed=3, start="2024-06-01")
    start = frame.index[warm + 5] + pd.Timedelta("1min")
    with tempfile.TemporaryDirectory() as tmp, ReplayExchange(frame, start=start) as ex:
        client = make_exchange("binance", url=ex.url)
        client.enableRateLimit = False  # a local exchange: measure our cost, not ccxt's throttle
        store = CCXTStore(exchange=client, sleep=lambda s: None)
        stamps: list[float] = []
        sess = PaperSession(cfg, bundle_dir, Path(tmp) / "bench.db", SessionOptions(max_bars=n, install_signals=False),
                            store=store, sleep=lambda s: ex.advance(bars=1))
        sess.on_bar = lambda bar, fills: stamps.append(time.perf_counter())
        t0 = time.perf_counter()
        sess.run()
    startup = stamps[0] - t0
    rate = (len(stamps) - 1) / (stamps[-1] - stamps[0])
    return startup, rate, len(stamps)


def _timed_strategy(base: type, whole_history: bool) -> type:
    """``base`` timing its ``next()`` (wall, CPU) and its hook evaluations per bar; with
    ``whole_history`` it evaluates the hooks over every bar on every bar, as before
    ``hook_lookback``: the fed bars, and the primed history too when a hook is overridden."""
    from strategies.hooks import HOOK_ARGS, VectorHooks

    default_hooks = all(getattr(base, h) is getattr(VectorHooks, h) for h in HOOK_ARGS)

    class Timed(base):
        def __init__(self) -> None:
            super().__init__()
            self.times: list[tuple[int, int, int]] = []   # (next wall ns, next CPU ns, hooks ns) per bar
            self._hooks_ns = 0

        def hook_values(self):
            t0 = time.perf_counter_ns()
            out = super().hook_values()
            self._hooks_ns += time.perf_counter_ns() - t0
            return out

        def next(self) -> None:
            self._hooks_ns = 0
            c0, t0 = time.thread_time_ns(), time.perf_counter_ns()
            super().next()
            self.times.append((time.perf_counter_ns() - t0, time.thread_time_ns() - c0, self._hooks_ns))

        if whole_history:
            def _hook_span(self, n: int) -> tuple[int, int]:
                return n, 0 if default_hooks or self.p.history is None else len(self.p.history)

    Timed.__name__ = Timed.__qualname__ = f"{base.__name__}{'Whole' if whole_history else 'Lookback'}"
    return Timed


def bench_hook_growth(bundle, cfg, warm: int, at: list[int], window: int) -> list[str]:
    """Lines of part 5 (module docstring): per-bar times at the fed-bar counts ``at``
    (``window`` bars each) for the default strategy and CalmOnly, whole history vs lookback.
    Both variants of a strategy run in one cerebro, so backtrader hands them each bar in turn
    and a change of the machine's load hits both alike."""
    import backtrader as bt

    from strategies.backtest import FrameFeed, frame_feed
    from strategies.base import strategy_params
    from strategies.examples import CalmOnly
    from strategies.tcn import TCNStrategy

    class LiveFrame(FrameFeed):
        def islive(self) -> bool:
            return True

    fed = max(at) + window + 1
    frame = synthetic_ohlcv(warm + fed, seed=7, start="2024-01-01")
    history, bars = frame.iloc[:warm - 1], frame.iloc[warm - 1:]
    lines = []
    q = lambda a: f"{np.median(a):.3f}/{np.percentile(a, 99):.3f}"  # noqa: E731
    for base in (TCNStrategy, CalmOnly):
        feed = frame_feed(bars)
        feed.__class__ = LiveFrame
        cerebro = bt.Cerebro(stdstats=False)
        cerebro.adddata(feed)
        params = strategy_params(cfg, bundle=bundle, trade_start=frame.index[warm], timeframe=bundle.timeframe)
        params.update(bundle=bundle, history=history)
        for whole in (True, False):
            cerebro.addstrategy(_timed_strategy(base, whole), **params)
        for strat, whole in zip(cerebro.run(), (True, False)):
            # fed bar 0 is the last warm-up bar, bar k the k-th traded one; next() ran on the
            # last len(strat.times) fed bars
            times = np.asarray(strat.times, dtype="float64") / 1e6
            first = len(bars) - len(times)
            label = f"{base.__name__} ({'whole history' if whole else 'hook_lookback'})"
            for k in at:
                t = times[k - first:k - first + window]
                lines.append(f"hooks growth {label:<36} after {k:>5} bars: decision next() {q(t[:, 0])} ms "
                             f"(CPU {q(t[:, 1])}), hooks {q(t[:, 2])} ms (median/p99 of {len(t)} bars); "
                             f"load {os.getloadavg()[0]:.1f}")
    lines.append(gc_freeze_line())  # the last run's strategies, indicators and bundle are still alive
    return lines


def gc_freeze_line(rounds: int = 5) -> str:
    """A full collection's time with everything alive now, plain and after ``gc.freeze()``
    (what a session does after its warm-up: sessions.session.freeze_warmup), median of ``rounds``."""
    def collect() -> float:
        out = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            gc.collect()
            out.append(time.perf_counter() - t0)
        return float(np.median(out)) * 1e3

    tracked = len(gc.get_objects())
    plain = collect()
    gc.freeze()
    try:
        frozen = collect()
    finally:
        gc.unfreeze()
    return (f"full garbage collection with a session's objects alive ({tracked:,} tracked): {plain:.1f} ms; "
            f"after gc.freeze(): {frozen:.2f} ms (median of {rounds}); load {os.getloadavg()[0]:.1f}")


def _journal_bars(state: Path) -> int:
    from sessions.journal import Journal, JournalError

    if not state.exists():
        return 0
    try:
        with Journal.open_readonly(state) as j:
            return int(j.summary()["bars_processed"])
    except JournalError:
        return 0


def _wait_started(proc, state: Path, deadline: float) -> None:
    from sessions.journal import Journal, JournalError

    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"paper session exited early ({proc.returncode})")
        try:
            if state.exists():
                with Journal.open_readonly(state) as j:
                    if j.events("start"):
                        return
        except JournalError:
            pass
        time.sleep(0.01)
    raise RuntimeError("timed out waiting for the session to start")


def _wait_bars(proc, state: Path, at_least: int, deadline: float) -> int:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"paper session exited early ({proc.returncode})")
        n = _journal_bars(state)
        if n >= at_least:
            return n
        time.sleep(0.01)
    raise RuntimeError(f"timed out waiting for {at_least} journaled bars")


FED_EVERY_BAR = """from strategies.tcn import TCNStrategy


class FedEveryBar(TCNStrategy):
    primable = False  # the baseline: every warm-up bar through backtrader, as before priming
"""


def bench_restart(bundle_dir: Path, cfg_sets: list[str], warm: int, rounds: int,
                  strategies: dict[str, str | None]) -> dict[str, list[float]]:
    """Seconds from spawning ``nts paper`` (a fresh process: interpreter, imports, bundle load,
    journal, warm-up of ``warm`` bars from the replay exchange) to the first new bar journaled,
    on restarts of a session that was stopped with SIGTERM; one bar is closed and waiting.
    One journal and replay exchange per entry of ``strategies`` (label -> ``--strategy``, None:
    the default); their restarts alternate, so a changing machine load hits each alike."""
    import contextlib
    import signal
    import subprocess

    from venues.replay import ReplayExchange

    root = Path(__file__).resolve().parents[1]
    frame = synthetic_ohlcv(warm + 10 + 20 * (rounds + 1), seed=3, start="2024-06-01")
    env = {**os.environ, "PYTHONPATH": str(root), "PYTHONUNBUFFERED": "1"}
    times: dict[str, list[float]] = {label: [] for label in strategies}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        log = stack.enter_context(open(Path(tmp) / "child.log", "a"))
        runs = {}
        for label, strategy in strategies.items():
            ex = stack.enter_context(ReplayExchange(frame, start=frame.index[warm + 10] + pd.Timedelta("1min"),
                                                    speed=0))
            state = Path(tmp) / f"{label}.db"
            cmd = [sys.executable, "-m", "cli.main", "paper", "--model", str(bundle_dir), "--exchange-url", ex.url,
                   "--state", str(state)] + [a for kv in cfg_sets for a in ("--set", kv)]
            runs[label] = (ex, state, cmd + (["--strategy", strategy] if strategy else []))
        for k in range(rounds + 1):
            for label, (ex, state, cmd) in runs.items():
                before = _journal_bars(state)
                if k:  # a restart: one bar closed while the session was down waits for it
                    ex.advance(bars=1)
                t0 = time.perf_counter()
                proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
                try:
                    if not k:  # a new session: its warm-up ends at the newest closed bar; close the next
                        _wait_started(proc, state, time.monotonic() + 120)
                        ex.advance(bars=1)
                    _wait_bars(proc, state, before + 1, time.monotonic() + 120)
                    if k:
                        times[label].append(time.perf_counter() - t0)
                finally:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(30)
    return times


def bench_imports(rounds: int) -> list[float]:
    """Seconds of a fresh interpreter importing what ``nts paper`` imports before it trades
    (the CLI, the session and everything under it): the part of a restart no warm-up saves."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    code = "import cli.main, cli.paper_cmd, sessions.session, strategies.tcn, models.scorer"
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], cwd=root, env=env, check=True)
        out.append(time.perf_counter() - t0)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="Bundle directory (default: train a small one first).")
    ap.add_argument("--bars", type=int, default=2000, help="Bars timed for the per-bar decision.")
    ap.add_argument("--session-bars", type=int, default=300, help="Bars of the replay session.")
    ap.add_argument("--restarts", type=int, default=3, help="Restarts of nts paper timed (0: skip).")
    ap.add_argument("--restart-only", action="store_true", help="Time the restarts only (part 6).")
    ap.add_argument("--growth-at", default="200,2000", help="Fed-bar counts timed in part 5 (comma-separated).")
    ap.add_argument("--growth-window", type=int, default=100, help="Bars timed at each count of part 5.")
    ap.add_argument("--growth-only", action="store_true", help="Time part 5 only.")
    args = ap.parse_args(argv)
    cfg = load_config(None, ["strategy.center=0.3", "strategy.deadband=0"])
    tmp = None
    if args.model is None:
        from models.train import train_bundle

        tmp = tempfile.TemporaryDirectory()
        model = Path(tmp.name) / "bench_bundle"
        train_cfg = load_config(None, ["training.epochs=2", "training.batch_size=256", "training.threads=1"])
        train_bundle(synthetic_ohlcv(4000, seed=11), train_cfg, model, progress=False)
    else:
        model = Path(args.model)
    bundle = load_bundle(model)
    warm = warmup_bars_for(bundle, cfg)
    frame = synthetic_ohlcv(warm + args.bars, seed=5, start="2024-03-01")
    print(f"bundle {model} (window {bundle.window}, warm-up {warm} bars); scorer ONNX Runtime, 1 thread a window")
    if args.growth_only or not args.restart_only:
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        for line in bench_hook_growth(bundle, cfg, warm, [int(k) for k in args.growth_at.split(",")],
                                      args.growth_window):
            print(line, flush=True)
    if args.growth_only:
        pass
    elif not args.restart_only:
        pauses = GcPauses()
        gc.callbacks.append(pauses)
        try:
            times = bench_decision(bundle, cfg, frame, args.bars, pauses)
        finally:
            gc.callbacks.remove(pauses)
        for k, v in times.items():
            print(f"decision {k:<16} {_stats(v)}   over {len(v)} bars")
        total = np.asarray(times["total"])
        print(f"decision bars over 1 ms: {int((total > 1_000_000).sum())} of {len(total)}; garbage collector during "
              f"the timed bars: {pauses.summary()}")
        med, p99 = bench_backtrader(bundle, cfg, frame, args.bars)
        print(f"backtrader live-mode bar (indicators + strategy + broker): median {med * 1e3:.3f} ms, "
              f"p99 {p99 * 1e3:.3f} ms")
        startup, rate, n = bench_session(model, cfg, warm, args.session_bars)
        print(f"replay session: {rate:,.1f} bars/s over {n} bars (ccxt + replay exchange + broker + journal); "
              f"start-up {startup:.2f} s incl. {warm} warm-up bars (primed)")
    if args.restarts and not args.growth_only:
        sets = ["strategy.center=0.3", "strategy.deadband=0", "risk.kill_switch_file=/nonexistent/KILL"]
        with tempfile.TemporaryDirectory() as base_dir:
            baseline_file = Path(base_dir) / "fed_every_bar.py"
            baseline_file.write_text(FED_EVERY_BAR)
            both = bench_restart(model, sets, warm, args.restarts,
                                 {"primed": None, "fed": f"{baseline_file}:FedEveryBar"})
        restarts, fed = both["primed"], both["fed"]
        imports = bench_imports(args.restarts)
        med, med_fed = float(np.median(restarts)), float(np.median(fed))
        print(f"paper restart to first new bar, process start included ({warm} warm-up bars, primed): "
              + ", ".join(f"{t:.2f} s" for t in restarts) + f"; median {med:.2f} s (goal <= 3 s: "
              + ("met" if med <= 3.0 else "NOT met") + ")")
        print(f"  baseline, every warm-up bar through backtrader: " + ", ".join(f"{t:.2f} s" for t in fed)
              + f"; median {med_fed:.2f} s; primed/baseline {med / med_fed:.2f}")
        print(f"  of which interpreter + imports alone (no warm-up, no network): median {np.median(imports):.2f} s; "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()

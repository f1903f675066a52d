"""Several symbols in one training: inputs, pooled samples, spans by time, per-symbol metrics.

* :func:`load_inputs` reads candle files (``nts train --data A --data B`` or a universe YAML
  file naming them) into :class:`SymbolInput` (symbol, file, frame, sha256).
* :func:`prepare_pooled` runs the one preparation step (``models.dataset.prepare``) on each
  symbol separately and stacks the results: features, labels and windows are computed per
  symbol, so no window, feature or label ever spans two symbols, and the stretch ids
  (``seg``) of each symbol are offset so that a gap or a symbol boundary always separates
  stretches. Symbols may start and end at different times; no bar is invented to align them.
* :func:`time_split` cuts train / validation / test by TIME, the same cut times for every
  symbol, and purges + embargoes per symbol with ``models.splits.purge`` (positions of one
  symbol are contiguous rows of the stack, so purge's cover arithmetic holds within it).
* :func:`pooled_metrics_hook` adds to bundle.json the inputs (file, symbol, span, sha256),
  the true spans by time, and test metrics per symbol beside the pooled ones.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from core.config import Config, load_yaml_strict
from core.errors import ConfigError, DataError
from core.files import check_output_dir
from core.ohlcv import load_ohlcv
from core.timeframes import timeframe_seconds
from models.bundle import sha256_file
from models.dataset import PreparedData, prepare
from models.features import warmup_bars
from models.labels import describe_barriers
from models.metrics import all_metrics
from models.splits import Split, purge
from models.train import OUTPUT_KIND, train_bundle

_NAME = re.compile(r"^([a-z0-9]+)[_-]([a-z0-9]+)[_-]", re.IGNORECASE)


@dataclass
class SymbolInput:
    """One candle file of a (possibly pooled) training run."""

    symbol: str
    path: str
    frame: pd.DataFrame
    sha256: str | None = None

    def describe(self) -> dict:
        """File name, symbol, span and sha256 as recorded in bundle.json / schedule.json."""
        idx = self.frame.index
        return {"file": Path(self.path).name, "path": str(self.path), "symbol": self.symbol,
                "sha256": self.sha256, "rows": int(len(idx)),
                "start": idx[0].isoformat() if len(idx) else None, "end": idx[-1].isoformat() if len(idx) else None}


def symbol_from_name(path: str | Path) -> str:
    """``eth_usdt_15m.csv.gz`` -> ``ETH/USDT``; any other name -> its stem."""
    name = Path(path).name
    m = _NAME.match(name)
    return f"{m.group(1).upper()}/{m.group(2).upper()}" if m else name.split(".")[0]


def read_universe_file(path: str | Path) -> list[tuple[str, str]]:
    """A universe YAML file: ``symbols: {BTC/USDT: data/btc.csv.gz, ...}`` (paths relative to the
    file) -> ``[(symbol, path), ...]``; ConfigError naming the file otherwise."""
    tree = load_yaml_strict(path)
    if not isinstance(tree, dict) or set(tree) != {"symbols"} or not isinstance(tree["symbols"], dict) \
            or not tree["symbols"]:
        raise ConfigError(f"{path}: expected one key 'symbols' mapping each symbol to a candle file")
    base = Path(path).parent
    out = []
    for sym, file in tree["symbols"].items():
        if not isinstance(sym, str) or not isinstance(file, str) or not file.strip():
            raise ConfigError(f"{path}: symbols.{sym}: expected a candle file name")
        out.append((sym, str(base / file)))
    return out


def load_inputs(entries: list[tuple[str | None, str]], timeframe: str) -> list[SymbolInput]:
    """Load and validate each ``(symbol or None, path)``; refuses a symbol named twice."""
    inputs: list[SymbolInput] = []
    for sym, path in entries:
        sym = sym or symbol_from_name(path)
        if any(i.symbol == sym for i in inputs):
            raise DataError(f"{path}: symbol {sym} is given twice; give each symbol once")
        inputs.append(SymbolInput(sym, str(path), load_ohlcv(path, timeframe=timeframe), sha256_file(path)))
    return inputs


@dataclass
class PooledData:
    """Stacked per-symbol preparation: ``data`` as one PreparedData, plus who owns each row."""

    data: PreparedData
    symbols: list[str]
    symbol_id: np.ndarray   # (N,) int: index into ``symbols`` per row
    times: np.ndarray       # (N,) int64 ns bar open times

    def rows_of(self, k: int) -> np.ndarray:
        """Positions of symbol ``k``'s samples (sorted, contiguous block of the stack)."""
        s = self.data.samples
        return s[self.symbol_id[s] == k]


def prepare_pooled(inputs: list[SymbolInput], cfg: Config) -> PooledData:
    """Prepare each symbol on its own, then stack (see module docstring)."""
    parts = [prepare(i.frame, cfg) for i in inputs]
    offset, seg_offset = 0, 0
    samples, segs = [], []
    for p in parts:
        samples.append(p.samples + offset)
        segs.append(p.seg + seg_offset)
        offset += len(p.index)
        seg_offset += int(p.seg.max()) + 1 if len(p.seg) else 0
    index = parts[0].index.append([p.index for p in parts[1:]]) if len(parts) > 1 else parts[0].index
    data = PreparedData(index=index, features=np.concatenate([p.features for p in parts]),
                        labels=np.concatenate([p.labels for p in parts]),
                        valid_window=np.concatenate([p.valid_window for p in parts]),
                        samples=np.concatenate(samples).astype(np.int64), seg=np.concatenate(segs))
    symbol_id = np.concatenate([np.full(len(p.index), k, dtype=np.int64) for k, p in enumerate(parts)])
    times = pd.DatetimeIndex(index).as_unit("ns").asi8
    return PooledData(data=data, symbols=[i.symbol for i in inputs], symbol_id=symbol_id, times=times)


def _ns(t) -> int:
    return int(pd.Timestamp(t).as_unit("ns").value)


def pooled_cuts(pooled: PooledData, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """Cut times (ns) so that the most recent ``test_fraction`` of all pooled samples is the test
    span and the ``val_fraction`` before it the validation span."""
    t = np.sort(pooled.times[pooled.data.samples])
    n = len(t)
    n_test, n_val = int(round(n * test_fraction)), int(round(n * val_fraction))
    if n_test < 1 or n_val < 1 or n - n_test - n_val < 1:
        raise DataError(f"too few labelled samples ({n}) for train/validation/test spans")
    return int(t[n - n_test - n_val]), int(t[n - n_test])


def time_split(pooled: PooledData, horizon: int, embargo: int, cut_val: int, cut_test: int,
               test_end: int | None = None, train_start: int | None = None, name: str = "by_time") -> Split:
    """Train ``[train_start, cut_val)``, validation ``[cut_val, cut_test)``, test
    ``[cut_test, test_end)`` by bar open time (ns), the same cuts for every symbol; each symbol's
    validation span is purged against its test span and its training span against both."""
    train, val, test = [], [], []
    lo = -np.inf if train_start is None else train_start
    hi = np.inf if test_end is None else test_end
    for k in range(len(pooled.symbols)):
        s = pooled.rows_of(k)
        t = pooled.times[s]
        te = s[(t >= cut_test) & (t < hi)]
        va = purge(s[(t >= cut_val) & (t < cut_test)], [te], horizon, embargo)
        tr = purge(s[(t >= lo) & (t < cut_val)], [va, te], horizon, embargo)
        train.append(tr)
        val.append(va)
        test.append(te)
    split = Split(train=np.concatenate(train), val=np.concatenate(val), test=np.concatenate(test), name=name)
    for span in ("train", "val", "test"):
        if len(getattr(split, span)) == 0:
            raise DataError(f"the {span} span ({name}) holds no labelled sample after purging: give more candles "
                            "or other cut times")
    return split


def _iso(ns: int) -> str:
    return pd.Timestamp(int(ns), tz="UTC").isoformat()


def time_spans(pooled: PooledData, split: Split, cfg: Config) -> dict:
    """Bundle spans by time: ``training`` = every bar a network, normaliser or calibrator input
    or label used (window history + feature warm-up before, label horizon after)."""
    bar = timeframe_seconds(cfg.data.timeframe) * 1_000_000_000
    h = cfg.labels.horizon * bar
    back = (warmup_bars(cfg.features) + cfg.model.window - 2) * bar
    tr = pooled.times[np.concatenate([split.train, split.val])]
    t = {k: pooled.times[getattr(split, k)] for k in ("train", "val", "test")}
    return {"training": [_iso(tr.min() - back), _iso(tr.max() + h)],
            "train": [_iso(t["train"].min()), _iso(t["train"].max() + h)],
            "validation": [_iso(t["val"].min()), _iso(t["val"].max() + h)],
            "test": [_iso(t["test"].min()), _iso(t["test"].max() + h)]}


def per_symbol_metrics(outcome, pooled: PooledData) -> dict:
    """Test metrics of each symbol (TCN raw and calibrated, baseline calibrated) from the fold's
    test curves; the pooled figures stay in ``metrics``."""
    test = outcome.split.test
    sym = pooled.symbol_id[test]
    out = {}
    for k, name in enumerate(pooled.symbols):
        mask = sym == k
        if not mask.any():
            out[name] = {"n": 0}
            continue
        out[name] = {key: all_metrics(y[mask], p[mask]) for key, (y, p) in outcome.curves.items()}
    return out


def pooled_metrics_hook(pooled: PooledData, inputs: list[SymbolInput], cfg: Config):
    """``meta_hook`` for ``models.train.train_bundle``: inputs, spans by time, per-symbol metrics."""

    def hook(outcome, data) -> dict:
        spans = time_spans(pooled, outcome.split, cfg)
        described = [i.describe() for i in inputs]
        return {"spans": spans, "inputs": described, "symbols": pooled.symbols,
                "label_scale": label_scale_text(cfg),
                "data": {"path": ", ".join(d["path"] for d in described),
                         "sha256": described[0]["sha256"] if len(described) == 1 else None,
                         "rows": int(len(pooled.times)), "start": min(d["start"] for d in described),
                         "end": max(d["end"] for d in described)},
                "per_symbol": {"test": per_symbol_metrics(outcome, pooled)}}

    return hook


def label_scale_text(cfg: Config) -> str:
    """How the barriers were set, for every report that shows label-based figures."""
    return describe_barriers(cfg.labels)


def pooled_split(inputs: list[SymbolInput], cfg: Config, cuts: tuple[int, int] | None = None,
                 test_end: int | None = None, train_start: int | None = None, name: str = "by_time",
                 max_samples: int | None = None) -> tuple[PooledData, Split]:
    """The stacked preparation of ``inputs`` and its split by time (``cuts`` = validation and test
    start times in ns; default: the configured fractions of all pooled samples), the training
    span capped to the ``max_samples`` most recent samples (default ``training.max_samples``)."""
    pooled = prepare_pooled(inputs, cfg)
    if cuts is None:
        cuts = pooled_cuts(pooled, cfg.training.val_fraction, cfg.training.test_fraction)
    split = time_split(pooled, cfg.labels.horizon, cfg.training.embargo, cuts[0], cuts[1], test_end=test_end,
                       train_start=train_start, name=name)
    max_samples = max_samples if max_samples is not None else cfg.training.max_samples
    return pooled, cap_train_by_time(split, pooled, max_samples)


@dataclass(frozen=True)
class TimeSpans:
    """How a pooled training splits the stack by time (:func:`pooled_split`): ``cuts`` =
    (validation start, test start) in ns (None: the configured fractions of all pooled
    samples), ``test_end`` / ``train_start`` in ns (None: open), the split's ``name``."""

    cuts: tuple[int, int] | None = None
    test_end: int | None = None
    train_start: int | None = None
    name: str = "by_time"

    def split(self, inputs: list[SymbolInput], cfg: Config, max_samples: int | None) -> tuple[PooledData, Split]:
        """:func:`pooled_split` of ``inputs`` with these spans."""
        return pooled_split(inputs, cfg, self.cuts, self.test_end, self.train_start, self.name, max_samples)


def train_pooled_bundle(inputs: list[SymbolInput], cfg: Config, output: str | Path, *,
                        spans: TimeSpans = TimeSpans(), epochs: int | None = None, max_samples: int | None = None,
                        progress: bool = True, overwrite: bool = False,
                        prepared: tuple[PooledData, Split] | None = None):
    """Train one bundle on the stacked symbols with spans by time (``spans``, :func:`pooled_split`);
    ``prepared``: a ``(pooled, split)`` already made by it (the members of a seed ensemble
    share one)."""
    paths = [i.path for i in inputs]
    check_output_dir(output, OUTPUT_KIND, inputs=paths, overwrite=overwrite)
    pooled, split = prepared or spans.split(inputs, cfg, max_samples)
    max_samples = max_samples if max_samples is not None else cfg.training.max_samples
    return train_bundle(None, cfg, output, data_path=None, epochs=epochs, max_samples=max_samples,
                        progress=progress, overwrite=overwrite, prepared=pooled.data, split=split,
                        meta_hook=pooled_metrics_hook(pooled, inputs, cfg))


def cap_train_by_time(split: Split, pooled: PooledData, max_samples: int | None) -> Split:
    """Keep the ``max_samples`` most recent training samples by TIME across all symbols (the
    stack's row order is by symbol, so ``models.splits.cap_train`` would drop whole symbols)."""
    if max_samples is None or len(split.train) <= max_samples:
        return split
    order = np.argsort(pooled.times[split.train], kind="stable")
    keep = np.sort(split.train[order[-int(max_samples):]])
    return Split(train=keep, val=split.val, test=split.test, name=split.name)

"""`nts labels --data FILE`: triple-barrier label statistics of a candle file."""
from __future__ import annotations

import click
import numpy as np
import pandas as pd

from cli.common import config_options, overwrite_option, setup_logging
from core.config import Config
from core.errors import DataError
from core.ohlcv import load_ohlcv
from core.config import LabelConfig
from models.labels import (breakeven_probability, describe_barriers, label_summary, triple_barrier_events,
                           vol_barrier_factors, write_events_csv)


def _pct(x: float, signed: bool = False) -> str:
    return f"{x * 100:+.4f}%" if signed else f"{x * 100:.2f}%"


def _barrier_widths(frame: pd.DataFrame, lc: LabelConfig, timeframe: str) -> tuple[float, float, list[str]]:
    """(profit, stop) widths the break-even P is computed at, and the lines describing the
    barriers. Fixed barriers: the configured percentages. Volatility-scaled ones differ bar by
    bar, so the widths are their medians over the bars that have a forecast (and the lines say so)."""
    if lc.scale != "vol":
        return lc.profit, lc.stop, [f"barriers:      profit +{_pct(lc.profit)}, stop -{_pct(lc.stop)}, "
                                    f"horizon {lc.horizon} bars, tie -> {lc.tie}"]
    up, dn = vol_barrier_factors(frame, lc, timeframe)
    ok = np.isfinite(up) & np.isfinite(dn)
    if not ok.any():
        raise DataError(f"no bar has a volatility forecast for the barriers (EWMA span {lc.vol_span}): "
                        "give more candles")
    profit, stop = up[ok] - 1.0, 1.0 - dn[ok]
    q = lambda a: f"{_pct(float(np.quantile(a, 0.05)))} .. {_pct(float(np.quantile(a, 0.95)))}"
    return float(np.median(profit)), float(np.median(stop)), [
        f"barriers:      {describe_barriers(lc)}, tie -> {lc.tie}",
        f"widths:        median profit +{_pct(float(np.median(profit)))} (5-95%: {q(profit)}), median stop "
        f"-{_pct(float(np.median(stop)))} (5-95%: {q(stop)}) over {int(ok.sum()):,} bars"]


@click.command("labels")
@click.option("--data", "data_path", required=True, type=click.Path(dir_okay=False),
              help="Candle file (CSV, CSV.gz or Parquet).")
@click.option("--output", default=None, type=click.Path(dir_okay=False),
              help="Also write the event table (timestamp, label, exit_offset, exit_kind, exit_price, gross_return) "
                   "to this CSV.")
@overwrite_option
@config_options
def labels(data_path: str, output: str | None, overwrite: bool, cfg: Config) -> None:
    """Label FILE with the configured triple barrier and print base rate, exit-kind shares,
    mean gross return per kind and the break-even win probability after fees."""
    log = setup_logging("labels")
    lc = cfg.labels
    frame = load_ohlcv(data_path, timeframe=cfg.data.timeframe)
    events = triple_barrier_events(frame, lc, timeframe=cfg.data.timeframe)
    s = label_summary(events)
    if s["labelled"] == 0:
        raise DataError(f"{data_path}: no bar has a full gap-free horizon of {lc.horizon} bars "
                        f"({s['rows']} rows); nothing to label")
    if output is not None:
        write_events_csv(events, output, inputs=[data_path], overwrite=overwrite)
    fee = cfg.execution.taker_fee
    profit, stop, barrier_lines = _barrier_widths(frame, lc, cfg.data.timeframe)
    be_fee = breakeven_probability(profit, stop, fee)
    be_zero = breakeven_probability(profit, stop, 0.0)
    log.info("labels %s: %s", data_path, s)
    click.echo(f"file:          {data_path}")
    for line in barrier_lines:
        click.echo(line)
    click.echo(f"rows:          {s['rows']:,}")
    click.echo(f"labelled:      {s['labelled']:,} ({s['unlabelled']:,} without a full gap-free horizon)")
    click.echo(f"base rate:     {s['base_rate']:.4f} (share of label 1 = profit first)")
    for kind in ("profit", "stop", "time"):
        click.echo(f"exit {kind + ':':<9}{s['counts'][kind]:>9,}  {_pct(s['shares'][kind]):>7}  "
                   f"mean gross return {_pct(s['mean_gross_return'][kind], signed=True)}")
    click.echo(f"mean exit:     {s['mean_exit_offset']:.2f} bars; mean gross return of all labelled "
               f"{_pct(s['mean_gross_return_all'], signed=True)}")
    at = " at the median widths" if lc.scale == "vol" else ""
    click.echo(f"break-even P:  {be_fee:.4f} after fees{at} (taker {_pct(fee)} per side, round trip "
               f"{_pct(2 * fee)}); {be_zero:.4f} with zero fees")
    if output is not None:
        click.echo(f"wrote:         {len(events):,} rows (one per bar) to {output}")

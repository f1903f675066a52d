"""`nts train` and `nts explain`: parse options, call models.train / models.explain, print."""
from __future__ import annotations

import click

from cli.common import bundle_inputs, config_options, overwrite_option, setup_logging


@click.command("train")
@click.option("--data", "data_paths", multiple=True, type=click.Path(dir_okay=False),
              help="Candle file (.csv, .csv.gz, .parquet); repeat it to pool several symbols (symbol taken from "
                   "the file name, e.g. eth_usdt_15m.csv.gz -> ETH/USDT).")
@click.option("--universe", "universe_path", default=None, type=click.Path(dir_okay=False),
              help="YAML file 'symbols: {BTC/USDT: btc.csv.gz, ...}' naming the candle files to pool.")
@click.option("--output", default="artifacts/tcn_v1", show_default=True, type=click.Path(file_okay=False),
              help="Bundle (or, with --walk-forward, schedule) directory to write (built beside it, renamed into "
                   "place at the end; an existing folder is replaced only when it is an nts output of that kind).")
@click.option("--walk-forward", is_flag=True,
              help="Train a schedule of bundles, one per --step validity span, each on the --train-window before "
                   "it; on an existing schedule only the new folds are trained.")
@click.option("--train-window", default=None, help="Walk-forward training window, e.g. 12M (training.train_window).")
@click.option("--step", default=None, help="Walk-forward validity span per bundle, e.g. 1M (training.step).")
@click.option("--start", default=None, help="Walk-forward: first validity start, UTC date (default: the first month "
                                            "start a full training window after the first bar).")
@click.option("--workers", type=click.IntRange(1, 1024), default=None,
              help="Walk-forward: train folds in parallel on a local Dask cluster of N processes.")
@click.option("--scheduler", default=None, metavar="tcp://HOST:PORT",
              help="Walk-forward: train folds on an existing Dask scheduler (the output on a shared disk).")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Max epochs (default training.epochs).")
@click.option("--max-samples", type=click.IntRange(min=100), default=None,
              help="Keep only the most recent N training samples (quick runs).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@overwrite_option
@config_options
def train(cfg, data_paths: tuple[str, ...], universe_path: str | None, output: str, walk_forward: bool,
          train_window: str | None, step: str | None, start: str | None, workers: int | None,
          scheduler: str | None, epochs: int | None, max_samples: int | None, quiet: bool, overwrite: bool) -> None:
    """Train the TCN (purged spans), calibrate, compare with the baseline, write a bundle or a schedule."""
    from core.errors import ConfigError

    setup_logging("train")  # the command line and outcome are logged by cli.common.NtsGroup
    entries = [(None, p) for p in data_paths]
    if universe_path:
        from models.universe import read_universe_file

        entries += read_universe_file(universe_path)
    if not entries:
        raise ConfigError("give --data FILE (repeatable) or --universe FILE")
    if (workers is not None or scheduler is not None) and not walk_forward:
        raise ConfigError("--workers / --scheduler train walk-forward folds in parallel: add --walk-forward")
    if cfg.model.ensemble > 1 and not walk_forward and (len(entries) > 1 or entries[0][0] is not None):
        raise ConfigError("model.ensemble > 1 trains a seed ensemble from one --data file or per --walk-forward fold; "
                          "pooled symbols without --walk-forward train one network (set model.ensemble=1)")
    if walk_forward or train_window or step or start:
        if not walk_forward:
            raise ConfigError("--train-window, --step and --start belong to --walk-forward")
        cfg = _with_periods(cfg, train_window, step)
        _train_schedule(cfg, entries, output, start, workers, scheduler, epochs, max_samples, overwrite)
    elif cfg.model.ensemble > 1:
        _train_ensemble(cfg, entries[0][1], output, epochs, max_samples, quiet, overwrite)
    elif len(entries) == 1 and entries[0][0] is None:
        _train_one(cfg, entries[0][1], output, epochs, max_samples, quiet, overwrite)
    else:
        _train_pooled(cfg, entries, output, epochs, max_samples, quiet, overwrite)


def _with_periods(cfg, train_window: str | None, step: str | None):
    """The config with ``--train-window`` / ``--step`` applied (validated like a config value)."""
    from pydantic import ValidationError

    from core.errors import ConfigError

    for key, value in (("train_window", train_window), ("step", step)):
        if value:
            try:
                setattr(cfg.training, key, value)
            except ValidationError:
                raise ConfigError(f"--{key.replace('_', '-')} {value!r}: not a length such as 12M, 90D, 2W or 1Y") \
                    from None
    return cfg


def _train_one(cfg, data_path: str, output: str, epochs, max_samples, quiet: bool, overwrite: bool) -> None:
    from core.files import check_output_dir
    from core.ohlcv import load_ohlcv
    from models.report import metrics_table_markdown
    from models.train import OUTPUT_KIND, train_bundle

    check_output_dir(output, OUTPUT_KIND, inputs=[data_path], overwrite=overwrite)
    frame = load_ohlcv(data_path, timeframe=cfg.data.timeframe)
    result = train_bundle(frame, cfg, output, data_path=data_path, epochs=epochs, max_samples=max_samples,
                          progress=not quiet, overwrite=overwrite)
    m = result.meta
    click.echo(f"bundle: {result.path}  ({m['parameters']:,} parameters, best epoch "
               f"{m['training']['best_epoch']}/{len(m['history'])}, {m['wall_seconds']:.0f} s)")
    click.echo(f"test span {m['spans']['test'][0]} .. {m['spans']['test'][1]} ({m['samples']['test']:,} samples):")
    click.echo(metrics_table_markdown(m["metrics"], "test"))


def _train_ensemble(cfg, data_path: str, output: str, epochs, max_samples, quiet: bool, overwrite: bool) -> None:
    from core.files import check_output_dir
    from core.ohlcv import load_ohlcv
    from models.ensemble import OUTPUT_KIND
    from models.ensemble_train import train_ensemble

    check_output_dir(output, OUTPUT_KIND, inputs=[data_path], overwrite=overwrite)
    frame = load_ohlcv(data_path, timeframe=cfg.data.timeframe)
    tree = train_ensemble(frame, cfg, output, data_path=data_path, epochs=epochs, max_samples=max_samples,
                          progress=not quiet, overwrite=overwrite)
    ens = tree["metrics"]["test"]["ensemble"]["calibrated"]
    click.echo(f"ensemble: {output}  ({tree['k']} members, {tree['seconds']['total']:.0f} s; members "
               + ", ".join(f"{s:.0f} s" for s in tree["seconds"]["members"]) + ")")
    click.echo(f"test, ensemble: AUC {ens['auc']:.4f}  log loss {ens['log_loss']:.4f}  Brier {ens['brier']:.4f}  "
               f"ECE {ens['ece']:.4f}")
    for k, m in enumerate(tree["metrics"]["test"]["members"]):
        c = m["calibrated"]
        click.echo(f"test, member {k}: AUC {c['auc']:.4f}  log loss {c['log_loss']:.4f}  Brier {c['brier']:.4f}  "
                   f"ECE {c['ece']:.4f}")


def _train_pooled(cfg, entries, output: str, epochs, max_samples, quiet: bool, overwrite: bool) -> None:
    from core.files import check_output_dir
    from models.report import metrics_table_markdown
    from models.train import OUTPUT_KIND
    from models.universe import load_inputs, train_pooled_bundle

    check_output_dir(output, OUTPUT_KIND, inputs=[p for _, p in entries], overwrite=overwrite)
    inputs = load_inputs(entries, cfg.data.timeframe)
    result = train_pooled_bundle(inputs, cfg, output, epochs=epochs, max_samples=max_samples, progress=not quiet,
                                 overwrite=overwrite)
    m = result.meta
    click.echo(f"bundle: {result.path}  ({len(inputs)} symbols, {m['label_scale']}, {m['wall_seconds']:.0f} s)")
    click.echo(f"test span {m['spans']['test'][0]} .. {m['spans']['test'][1]} (pooled):")
    click.echo(metrics_table_markdown(m["metrics"], "test"))
    for sym, block in m["per_symbol"]["test"].items():
        if block.get("n", 1) == 0:
            click.echo(f"{sym}: no test samples")
            continue
        c = block["TCN calibrated"]
        click.echo(f"{sym}: AUC {c['auc']:.4f}  log loss {c['log_loss']:.4f}  Brier {c['brier']:.4f}  "
                   f"ECE {c['ece']:.4f}  base rate {c['base_rate']:.4f}  n {c['n']:,}")


def _train_schedule(cfg, entries, output: str, start, workers, scheduler, epochs, max_samples,
                    overwrite: bool) -> None:
    import contextlib

    from core.files import check_output_dir
    from models.schedule import OUTPUT_KIND
    from models.universe import load_inputs
    from models.walkforward import build_schedule, dask_fold_mapper

    check_output_dir(output, OUTPUT_KIND, inputs=[p for _, p in entries], overwrite=overwrite)
    inputs = load_inputs(entries, cfg.data.timeframe)
    with contextlib.ExitStack() as stack:
        mapper, engine = None, "sequential"
        if workers is not None or scheduler is not None:
            from sweeps import distributed

            client = stack.enter_context(distributed.dask_client(workers=workers, scheduler=scheduler))
            mapper, engine = dask_fold_mapper(client), distributed.describe(client)
        result = build_schedule(inputs, cfg, output, start=start, epochs=epochs, max_samples=max_samples,
                                mapper=mapper, engine=engine, overwrite=overwrite)
    folds = result.schedule["folds"]
    if not result.trained:
        click.echo(f"schedule {result.path}: up to date ({len(folds)} folds; no new validity span in the data)")
        return
    k = result.schedule.get("ensemble", 1)
    kind = f", {k}-member seed ensembles" if k > 1 else ""
    click.echo(f"schedule {result.path}: trained {len(result.trained)} of {len(folds)} folds in "
               f"{result.wall_seconds:.0f} s ({result.schedule['label_scale']}{kind})")
    click.echo("| fold | valid from | valid until | TCN AUC | log loss | Brier | ECE | baseline AUC | base rate | n "
               "| s |")
    click.echo("|---|---|---|---|---|---|---|---|---|---|---|")
    for f in folds:
        t = f["metrics"]["test"]
        c, b = t["tcn"]["calibrated"], t["baseline"]["calibrated"]
        click.echo(f"| {f['name']} | {f['valid_from'][:10]} | {f['valid_until'][:10]} | {c['auc']:.4f} | "
                   f"{c['log_loss']:.4f} | {c['brier']:.4f} | {c['ece']:.4f} | {b['auc']:.4f} | "
                   f"{c['base_rate']:.4f} | {c['n']:,} | {f['wall_seconds']:.0f} |")


@click.command("explain")
@click.option("--model", "model_path", required=True, type=click.Path(), help="Bundle directory or final_model.pt.")
@click.option("--data", "data_path", required=True, type=click.Path(dir_okay=False), help="Candle file.")
@click.option("--output", default="reports/explain", show_default=True, type=click.Path(file_okay=False),
              help="Directory for importance.csv / .md / .png.")
@click.option("--span", type=click.Choice(["test", "all"]), default="test", show_default=True,
              help="Labelled bars to use: the bundle's test span, or every labelled bar of the file.")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True, help="Permutations per group.")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@overwrite_option
def explain(model_path: str, data_path: str, output: str, span: str, repeats: int, seed: int, quiet: bool,
            overwrite: bool) -> None:
    """Permutation importance per feature and per lag block; writes a table and a bar chart."""
    from core.files import check_output_dir
    from core.ohlcv import load_ohlcv
    from models.bundle import load_bundle
    from models.explain import OUTPUT_KIND, permutation_importance, write_explain_outputs

    log = setup_logging("explain")
    inputs = [data_path, *bundle_inputs(model_path)]
    check_output_dir(output, OUTPUT_KIND, inputs=inputs, overwrite=overwrite)
    bundle = load_bundle(model_path)
    frame = load_ohlcv(data_path, timeframe=bundle.timeframe)
    table = permutation_importance(bundle, frame, span=span, repeats=repeats, seed=seed, progress=not quiet)
    paths = write_explain_outputs(table, output, inputs=inputs, overwrite=overwrite)
    log.info("explain %s on %s -> %s", model_path, data_path, output)
    click.echo(paths["md"].read_text())
    click.echo("wrote " + ", ".join(str(p) for p in paths.values()))

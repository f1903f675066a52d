"""`nts train` and `nts explain`: parse options, call models.train / models.explain, print."""
from __future__ import annotations

import click

from cli.common import bundle_inputs, config_options, overwrite_option, setup_logging


@click.command("train")
@click.option("--data", "data_path", required=True, type=click.Path(dir_okay=False),
              help="Candle file (.csv, .csv.gz, .parquet).")
@click.option("--output", default="artifacts/tcn_v1", show_default=True, type=click.Path(file_okay=False),
              help="Bundle directory to write (built beside it, renamed into place at the end; an existing "
                   "folder is replaced only when it is an nts bundle).")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Max epochs (default training.epochs).")
@click.option("--max-samples", type=click.IntRange(min=100), default=None,
              help="Keep only the most recent N training samples (quick runs).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@overwrite_option
@config_options
def train(cfg, data_path: str, output: str, epochs: int | None, max_samples: int | None, quiet: bool,
          overwrite: bool) -> None:
    """Train the TCN (walk-forward, purged), calibrate, compare with the baseline, write a bundle."""
    from core.files import check_output_dir
    from core.ohlcv import load_ohlcv
    from models.report import metrics_table_markdown
    from models.train import OUTPUT_KIND, train_bundle

    setup_logging("train")  # the command line and outcome are logged by cli.common.NtsGroup
    check_output_dir(output, OUTPUT_KIND, inputs=[data_path], overwrite=overwrite)
    frame = load_ohlcv(data_path, timeframe=cfg.data.timeframe)
    result = train_bundle(frame, cfg, output, data_path=data_path, epochs=epochs, max_samples=max_samples,
                          progress=not quiet, overwrite=overwrite)
    m = result.meta
    click.echo(f"bundle: {result.path}  ({m['parameters']:,} parameters, best epoch "
               f"{m['training']['best_epoch']}/{len(m['history'])}, {m['wall_seconds']:.0f} s)")
    click.echo(f"test span {m['spans']['test'][0]} .. {m['spans']['test'][1]} ({m['samples']['test']:,} samples):")
    click.echo(metrics_table_markdown(m["metrics"], "test"))


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

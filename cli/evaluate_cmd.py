"""`nts evaluate`: out-of-sample report of a schedule, bundle or ensemble (models.schedule_report)."""
from __future__ import annotations

import json

import click

from cli.common import bundle_inputs, config_options, overwrite_option, setup_logging
from core.config import Config

REPORT_FILES = ("report.json", "report.md")


@click.command("evaluate")
@click.option("--model", "model_path", required=True, type=click.Path(file_okay=False),
              help="Walk-forward schedule, bundle or seed-ensemble folder.")
@click.option("--data", "data_paths", required=True, multiple=True, type=click.Path(dir_okay=False),
              help="Candle file; repeat it for several symbols (symbol from the file name).")
@click.option("--output", default="reports/evaluate", show_default=True, type=click.Path(file_okay=False),
              help="Folder for report.md and report.json (replaced only when it is an nts evaluation output).")
@overwrite_option
@config_options
def evaluate(cfg: Config, model_path: str, data_paths: tuple[str, ...], output: str, overwrite: bool) -> None:
    """Score every fold's own out-of-sample bars and report AUC, log loss, Brier and ECE per
    symbol, fold and month for five calibrators (static, rolling Platt, online Platt OPS,
    calibeaten TOPS and HOPS) beside the logistic baseline, and the barrier trade's mean return
    per P bin net of a round trip of execution.taker_fee. Rolling Platt uses the run config's
    calibration.* window, refit and minimum (a note says when the model was trained with others)."""
    from core.files import OutputKind, check_output_dir, output_dir
    from models.schedule_report import evaluate as evaluate_model, to_markdown

    log = setup_logging("evaluate")
    kind = OutputKind("evaluation", files=REPORT_FILES, signature='"outcome_by_p"')
    inputs = [*bundle_inputs(model_path), *data_paths]
    check_output_dir(output, kind, inputs=inputs, overwrite=overwrite)  # refuse before the work
    rep = evaluate_model(model_path, list(data_paths), cfg.calibration, round_trip_cost=2.0 * cfg.execution.taker_fee)
    text = to_markdown(rep)
    if rep["note"]:
        click.echo(rep["note"])
    with output_dir(output, kind, inputs=inputs, overwrite=overwrite) as tmp:
        (tmp / "report.json").write_text(json.dumps(rep, indent=2, allow_nan=True, default=float), encoding="utf-8")
        (tmp / "report.md").write_text(text, encoding="utf-8")
    log.info("evaluate %s on %s -> %s", model_path, ", ".join(data_paths), output)
    click.echo(text)
    click.echo(f"wrote {output}/report.md and report.json")

"""report.html of a bundle: learning curves, metrics table (TCN vs baseline, raw vs calibrated,
validation and test), reliability diagram and the facts of the run."""
from __future__ import annotations

import html
import json
from pathlib import Path

from core.config import LabelConfig
from core.files import write_text_atomic
from models.labels import describe_barriers

_ROWS = (("auc", "AUC", "{:.4f}"), ("log_loss", "log loss", "{:.4f}"), ("brier", "Brier", "{:.4f}"),
         ("ece", "ECE (10 bins)", "{:.4f}"), ("mean_p", "mean P", "{:.4f}"), ("base_rate", "base rate", "{:.4f}"),
         ("n", "samples", "{:,}"))


def _fmt(fmt: str, v) -> str:
    try:
        return fmt.format(v)
    except (TypeError, ValueError):
        return html.escape(str(v))


def metrics_table_html(metrics: dict) -> str:
    """One table per span: rows = metric, columns = TCN/baseline x raw/calibrated."""
    parts = []
    for span, title in (("val", "Validation span (calibrator fitted here)"), ("test", "Test span (out of sample)")):
        block = metrics.get(span)
        if not block:
            continue
        cols = [("tcn", "raw"), ("tcn", "calibrated"), ("baseline", "raw"), ("baseline", "calibrated")]
        head = "".join(f"<th>{'TCN' if m == 'tcn' else 'baseline (logistic)'}<br>{k}</th>" for m, k in cols)
        body = ""
        for key, label, fmt in _ROWS:
            cells = "".join(f"<td>{_fmt(fmt, block[m][k].get(key))}</td>" for m, k in cols)
            body += f"<tr><th>{label}</th>{cells}</tr>"
        parts.append(f"<h3>{title}</h3><table><tr><th></th>{head}</tr>{body}</table>")
    return "\n".join(parts)


def metrics_table_markdown(metrics: dict, span: str = "test") -> str:
    """Markdown version of one span's table (for logs and the README)."""
    block = metrics[span]
    cols = [("tcn", "raw"), ("tcn", "calibrated"), ("baseline", "raw"), ("baseline", "calibrated")]
    lines = ["| metric | TCN raw | TCN calibrated | baseline raw | baseline calibrated |", "|---|---|---|---|---|"]
    for key, label, fmt in _ROWS:
        lines.append(f"| {label} | " + " | ".join(_fmt(fmt, block[m][k].get(key)) for m, k in cols) + " |")
    return "\n".join(lines)


def write_report(directory: str | Path, meta: dict) -> Path:
    """Write ``report.html`` into a bundle directory (images referenced relatively)."""
    d = Path(directory)
    spans = meta.get("spans", {})
    span_rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v[0]))}</td>"
                        f"<td>{html.escape(str(v[1]))}</td></tr>" for k, v in spans.items() if v)
    tr = meta.get("training", {})
    facts = {
        "data": f"{meta['data'].get('path')} ({meta['data'].get('rows'):,} bars, sha256 {str(meta['data'].get('sha256'))[:16]}...)",
        "samples": ", ".join(f"{k}={v}" for k, v in meta.get("samples", {}).items()),
        "network": f"TCN, {meta.get('parameters'):,} parameters, receptive field {meta.get('receptive_field')} bars, "
                   f"window {meta.get('window')}",
        "class imbalance": f"BCEWithLogits pos_weight = {meta.get('pos_weight'):.4f} "
                           f"({meta['config']['training']['pos_weight']})",
        "early stopping": f"best epoch {tr.get('best_epoch')} of {len(meta.get('history', []))} run "
                          f"(max {meta.get('epochs_max')}), stopped early: {tr.get('stopped_early')}",
        "calibration": meta["calibrator"]["kind"] + " " + json.dumps(meta["calibrator"]["params"])[:200],
        "time": f"fit {tr.get('fit_seconds')} s ({tr.get('train_samples_per_s')} samples/s); "
                f"whole run {meta.get('wall_seconds')} s",
        "seed": str(meta.get("seed")),
        "versions": ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items()),
    }
    fact_rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in facts.items())
    cv = ""
    if meta.get("cv"):
        rows = "".join(f"<tr><td>{html.escape(c['split']['name'])}</td><td>{c['test']['auc']:.4f}</td>"
                       f"<td>{c['test']['brier_calibrated']:.4f}</td><td>{c['test']['ece_calibrated']:.4f}</td>"
                       f"<td>{c['test']['baseline']['calibrated']['auc']:.4f}</td></tr>" for c in meta["cv"])
        cv = ("<h2>Purged k-fold</h2><table><tr><th>fold</th><th>TCN AUC</th><th>TCN Brier (cal.)</th>"
              f"<th>TCN ECE (cal.)</th><th>baseline AUC</th></tr>{rows}</table>")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>nts model report</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}} table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}} th{{background:#f4f4f4}}</style></head><body>
<h1>Model report</h1>
<p>Triple-barrier label: {html.escape(describe_barriers(LabelConfig.model_validate(meta['label_config'])))}. Raw = sigmoid of the logit (the TCN's raw P is shifted by
its pos_weight); calibrated = {html.escape(meta['calibrator']['kind'])} fitted on the validation span.</p>
<h2>Metrics</h2>{metrics_table_html(meta['metrics'])}
<h2>Reliability (test span)</h2><img src="reliability.png" alt="reliability diagram">
<h2>Learning curves</h2><img src="learning_curves.png" alt="learning curves" style="max-width:100%">
{cv}
<h2>Spans (purged, embargo {meta['config']['training']['embargo']} bars)</h2>
<table><tr><th>span</th><th>first bar</th><th>last bar</th></tr>{span_rows}</table>
<h2>Run</h2><table>{fact_rows}</table>
</body></html>"""
    out = d / "report.html"
    write_text_atomic(out, page)
    return out

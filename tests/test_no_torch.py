"""Nothing on the trading path imports torch: nts backtest runs, and every module of the
trading packages (strategies, indicators, brokers/sessions/venues, sweeps, server, cli) and the
scoring modules import, in a fresh interpreter with 'torch' never in sys.modules. Training,
explain and ``nts bundle export`` (models.train, models.tcn, models.onnx_export, models.explain)
are the only torch users."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from core.ohlcv import write_ohlcv_csv
from core.synthetic import synthetic_ohlcv

ROOT = Path(__file__).resolve().parents[1]
TRADING_PACKAGES = ("indicators", "strategies", "brokers", "sessions", "venues", "sweeps", "server", "cli")
SCORING_MODULES = ("models.bundle", "models.scorer", "models.streaming", "models.prob_cache", "models.features",
                   "models.dataset", "models.calibration")

_CHILD = """
import importlib, pkgutil, sys
from pathlib import Path
from click.testing import CliRunner
from cli.main import cli
args = sys.argv[1:]
res = CliRunner().invoke(cli, ["backtest", "--model", args[0], "--data", args[1], "--output", args[2],
                               "--quiet", "--allow-in-sample"])
assert res.exit_code == 0, res.output
imported = []
for pkg in {packages!r}:
    if not (Path({root!r}) / pkg / "__init__.py").exists():
        continue
    mod = importlib.import_module(pkg)
    for info in pkgutil.walk_packages(mod.__path__, pkg + "."):
        importlib.import_module(info.name)
        imported.append(info.name)
for name in {scoring!r}:
    importlib.import_module(name)
    imported.append(name)
print(len(imported), "modules")
print("TORCH" if "torch" in sys.modules else "NO-TORCH")
"""


def test_trading_path_never_imports_torch(tiny_bundle, tmp_path):
    data = tmp_path / "bars.csv"
    write_ohlcv_csv(synthetic_ohlcv(1200, seed=4, start="2025-06-01"), data)
    code = _CHILD.format(packages=TRADING_PACKAGES, root=str(ROOT), scoring=SCORING_MODULES)
    res = subprocess.run([sys.executable, "-c", code, str(tiny_bundle), str(data), str(tmp_path / "out")],
                         cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    lines = res.stdout.strip().splitlines()
    assert lines[-1] == "NO-TORCH", res.stdout[-2000:]
    assert int(lines[-2].split()[0]) > 40  # the walk did import the packages (not an empty loop)
    assert (tmp_path / "out" / "metrics.json").is_file()

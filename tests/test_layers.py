"""The package layers hold: import-linter's contracts (setup.cfg) pass, and they do catch
an upward import; ``nts --help`` and ``core`` stay free of torch/backtrader."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT), *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_layer_contracts_are_kept():
    res = _lint()
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "0 broken" in res.stdout


def test_contract_detects_an_upward_import(tmp_path):
    # The same packages with the layers upside down: every real downward import is now
    # "upward", so a working checker must report the contract broken.
    cfg = tmp_path / "inverted.ini"
    cfg.write_text("[importlinter]\nroot_packages =\n    core\n    models\n\n"
                   "[importlinter:contract:inverted]\nname = inverted\ntype = layers\nlayers =\n    core\n    models\n")
    res = _lint("--config", str(cfg))
    assert res.returncode != 0
    assert "BROKEN" in res.stdout


def test_help_and_core_do_not_import_heavy_packages():
    code = ("import sys\n"
            "from click.testing import CliRunner\n"
            "from cli.main import cli\n"
            "import core.config, core.costs, core.ohlcv, core.risk, core.timeframes\n"
            "r = CliRunner().invoke(cli, ['--help'])\n"
            "assert r.exit_code == 0, r.output\n"
            "heavy = sorted(m for m in ('torch', 'backtrader', 'vectorbt') if m in sys.modules)\n"
            "print(','.join(heavy))\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "", f"imported by nts --help / core: {res.stdout.strip()}"

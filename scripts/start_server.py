#!/usr/bin/env python3
"""The seed's entry point, kept for its users: ``scripts/start_server.py --mode paper --model ...``.

A thin shim: every argument goes to ``nts serve`` unchanged (``nts serve --help`` lists them).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cli.main import cli  # noqa: E402 - after the path: the repository's own packages

if __name__ == "__main__":
    cli(["serve", *sys.argv[1:]], prog_name="nts")

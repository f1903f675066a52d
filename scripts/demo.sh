#!/usr/bin/env bash
# End-to-end demo: every step through the `nts` CLI. Later stages are added as they land.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=../shared/data/btc_usdt_15m.csv.gz
mkdir -p data logs

echo "== nts --help"
nts --help

if [ -f "$SHARED" ]; then
  echo "== check the real BTC/USDT candles"
  nts data check "$SHARED"
fi

echo "== download from a loopback Binance (real ccxt client, 127.0.0.1)"
python -m brokers.loopback_demo --output data/raw/demo_btc_usdt_15m.csv
nts data check data/raw/demo_btc_usdt_15m.csv

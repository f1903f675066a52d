"""Server speed: /predict (full warm-up per call) and the bar stream (one bar per call) through
real HTTP, side by side with the bare scorer and the goals.

Usage: .venv/bin/python benchmarks/bench_server.py [--model artifacts/tcn_v1] [--requests 200]
       [--concurrency 4] [--no-throughput]

1. **Where a /predict goes** (in this process, no HTTP): body parse (pydantic, rows and
   columns), the file loader's checks + frame, the feature prime
   (:meth:`models.streaming.BarScorer.prime`: streaming features over the warm-up), the
   network alone (normaliser + ONNX Runtime + calibration on one window), the decision
   (strategy hooks, risk cap, barriers); the **bare scorer** = prime + decision (a window
   never seen), the same for a window sliding one bar per call (the server's
   :class:`server.window_cache.WindowCache` feeds one bar), and the **bare stream bar** = one
   bar through :meth:`server.streams.StreamRegistry.push` (checks, :meth:`BarScorer.update`,
   decision).
2. **Through real HTTP**: ``nts serve`` started as a process on 127.0.0.1 (one worker), a
   plain ``httpx.AsyncClient``, sequential calls: POST /predict with the same warm-up every
   call as rows and as columns (the body encoded once; a repeated window is primed afresh),
   /predict with a window sliding one bar per call (columns), and POST /streams/{id}/bars with
   successive bars of one stream: p50 / p99 each, the server process's CPU time per call
   (/proc: what the server spends, which a loaded machine delays but does not inflate) and
   its own mean handling time (its /metrics histogram).
3. **Throughput** (unless ``--no-throughput``): /predict (columns) with 1 and 2 uvicorn
   workers, ``--concurrency`` clients in flight: requests/s.

Goals (issue 16): p50 <= 2 ms, p99 <= 5 ms. Every figure line ends with the 1-minute load
average (``uptime``) read when it was measured: this machine is shared, and figures under load
are not figures of an idle machine. Every run stops by itself (bounded request counts; the
server processes are terminated). Without ``--model`` a small bundle is trained first (not
timed). The candles are generated (seeded).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.config import load_config  # noqa: E402
from core.synthetic import synthetic_ohlcv  # noqa: E402
from models.streaming import BarScorer  # noqa: E402
from server.predict import (  # noqa: E402
    Bar,
    PredictRequest,
    columns_frame,
    decide_flat,
    predict_frame,
    request_frame,
    scored_bar,
)
from server.setup import build_setup  # noqa: E402
from server.streams import StreamRegistry  # noqa: E402
from server.window_cache import WindowCache  # noqa: E402

GOAL_P50, GOAL_P99 = 2e-3, 5e-3
COLS = ("open", "high", "low", "close", "volume")


def _load() -> str:
    return f"[load {os.getloadavg()[0]:.2f}]"


def _ms(xs, goal: bool = False) -> str:
    a = np.asarray(xs)
    p50, p99 = np.percentile(a, 50), np.percentile(a, 99)
    text = f"p50 {p50 * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms"
    if goal:
        met = p50 <= GOAL_P50 and p99 <= GOAL_P99
        text += f" (goal p50 <= 2 ms, p99 <= 5 ms: {'met' if met else 'MISSED'})"
    return f"{text} {_load()}"


def _timed(fn, n: int) -> list[float]:
    fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(model: str, workers: int) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("NTS_API_TOKEN", None)
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "serve", "--model", model, "--port", str(port),
                             "--workers", str(workers)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"nts serve exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise SystemExit("nts serve did not become ready in 120 s")


def rows_of(frame: pd.DataFrame) -> list[dict]:
    """Candle rows as /predict's ``bars`` field."""
    return [{"timestamp": int(t.value // 1_000_000), "open": o, "high": h, "low": lo, "close": c, "volume": v}
            for t, (o, h, lo, c, v) in zip(frame.index, frame[list(COLS)].to_numpy().tolist())]


def columns_of(frame: pd.DataFrame) -> dict:
    """Candles as /predict's ``columns`` field."""
    return {"timestamp": [int(t.value // 1_000_000) for t in frame.index], **{c: frame[c].tolist() for c in COLS}}


async def _sequential(base: str, path: str, bodies: list[bytes]) -> list[float]:
    """One POST per body, in order, each timed; the first (not timed) warms the connection."""
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        headers = {"content-type": "application/json"}
        out = []
        for k, body in enumerate(bodies):
            t0 = time.perf_counter()
            r = await client.post(path, content=body, headers=headers)
            if k:
                out.append(time.perf_counter() - t0)
            assert r.status_code == 200, r.text[:300]
        return out


async def _throughput(base: str, body: bytes, n: int, concurrency: int) -> float:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
        headers = {"content-type": "application/json"}
        left = n

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                r = await client.post("/predict", content=body, headers=headers)
                assert r.status_code == 200

        await client.post("/predict", content=body, headers=headers)
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return n / (time.perf_counter() - t0)


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _calls(proc: subprocess.Popen, base: str, path: str, bodies: list[bytes], what: str) -> None:
    """Time one POST per body (sequential), print p50/p99 and the server's CPU per call: the
    work the server does, which a loaded machine delays but does not inflate."""
    cpu0 = _cpu_s(proc.pid)
    lat = asyncio.run(_sequential(base, path, bodies))
    cpu = (_cpu_s(proc.pid) - cpu0) / len(bodies)
    print(f"HTTP {what}: {_ms(lat, goal=True)}; server CPU per call {cpu * 1e3:.2f} ms")


def _server_side_mean(base: str, handler: str) -> float:
    """Mean handling time of ``handler`` the server measured itself (instrumentator histogram)."""
    total = count = 0.0
    for line in httpx.get(f"{base}/metrics", timeout=10).text.splitlines():
        if f'handler="{handler}"' in line and line.startswith("http_request_duration_seconds_sum"):
            total = float(line.rsplit(" ", 1)[1])
        elif f'handler="{handler}"' in line and line.startswith("http_request_duration_seconds_count"):
            count = float(line.rsplit(" ", 1)[1])
    return total / count if count else float("nan")


def _in_process(setup, frame: pd.DataFrame, n: int) -> dict[str, list[float]]:
    """Stage timings of /predict and of one stream bar, without HTTP (see module docstring)."""
    warm = setup.warmup_bars
    window = frame.iloc[:warm]
    rows_body = json.dumps({"bars": rows_of(window)}).encode()
    cols_body = json.dumps({"columns": columns_of(window)}).encode()
    req_rows = PredictRequest.model_validate_json(rows_body)
    req_cols = PredictRequest.model_validate_json(cols_body)
    checked = columns_frame(req_cols.columns, setup)
    scorer = BarScorer(setup.bundle)
    out = scorer.prime(checked)
    feats = np.stack(scorer.rows)
    last = checked.iloc[-1:]
    scored = scored_bar(scorer.rows[-1], checked.index[-1], float(last["close"].iloc[0]), out, warm)
    t: dict[str, list[float]] = {
        "parse rows (pydantic)": _timed(lambda: PredictRequest.model_validate_json(rows_body), n),
        "parse columns (pydantic)": _timed(lambda: PredictRequest.model_validate_json(cols_body), n),
        "checks + frame, rows": _timed(lambda: request_frame(req_rows, setup), n),
        "checks + frame, columns": _timed(lambda: request_frame(req_cols, setup), n),
        "feature prime + last window (BarScorer.prime)": _timed(lambda: BarScorer(setup.bundle).prime(checked), n),
        "network on one window (normaliser + ORT + calibration)": _timed(
            lambda: setup.bundle.score_features(feats), n),
        "decision (hooks, risk cap, barriers)": _timed(lambda: decide_flat(setup, setup.policy, scored, last), n),
        "bare scorer (prime + decision = predict_frame)": _timed(lambda: predict_frame(setup, checked), n),
    }
    cache = WindowCache(setup.bundle)
    slide = iter(range(n + 1))
    t["bare scorer, sliding window (one bar through the cached scorer)"] = _timed(
        lambda: predict_frame(setup, frame.iloc[(k := next(slide)):k + warm], cache=cache), n)
    assert cache.hits == n, (cache.hits, cache.misses)
    reg = StreamRegistry(setup)
    stream, _ = reg.open(window, setup.policy, None)
    bars = [Bar(**r) for r in rows_of(frame.iloc[warm:warm + n + 1])]
    it = iter(bars)
    t["bare stream bar (StreamRegistry.push)"] = _timed(lambda: reg.push(stream.id, next(it)), n)
    return t


def _http(model: str, frame: pd.DataFrame, warm: int, n: int) -> None:
    window = frame.iloc[:warm]
    rows_body = json.dumps({"bars": rows_of(window)}).encode()
    cols_body = json.dumps({"columns": columns_of(window)}).encode()
    print(f"bodies: rows {len(rows_body) / 1e3:.0f} kB, columns {len(cols_body) / 1e3:.0f} kB")
    proc, base = _start_server(model, 1)
    try:
        _calls(proc, base, "/predict", [rows_body] * (n + 1), "/predict, warm-up as rows, sequential")
        _calls(proc, base, "/predict", [cols_body] * (n + 1), "/predict, warm-up as columns, sequential")
        print(f"  inside the server (/predict, its /metrics histogram): mean "
              f"{_server_side_mean(base, '/predict') * 1e3:.2f} ms {_load()}")
        sliding = [json.dumps({"columns": columns_of(frame.iloc[k:k + warm])}).encode() for k in range(n + 1)]
        _calls(proc, base, "/predict", sliding, "/predict, columns, window sliding one bar per call")
        del sliding
        r = httpx.post(f"{base}/streams", content=cols_body, headers={"content-type": "application/json"}, timeout=30)
        assert r.status_code == 201, r.text[:300]
        sid = r.json()["stream_id"]
        bars = [json.dumps(row).encode() for row in rows_of(frame.iloc[warm:warm + n + 1])]
        _calls(proc, base, f"/streams/{sid}/bars", bars, "/streams/{id}/bars, one bar per call, sequential")
        print(f"  inside the server (its /metrics histogram): mean "
              f"{_server_side_mean(base, '/streams/{stream_id}/bars') * 1e3:.2f} ms {_load()}")
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--no-throughput", action="store_true")
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory()
    model = args.model
    if model is None:
        from models.train import train_bundle

        model = str(Path(tmp.name) / "bench")
        train_bundle(synthetic_ohlcv(3000, seed=11), load_config(None, ["training.epochs=1", "training.threads=1"]),
                     model, progress=False)
    setup = build_setup(load_config(None), model)
    warm, n = setup.warmup_bars, args.requests
    frame = synthetic_ohlcv(warm + n + 2, seed=5, start="2024-01-01")
    print(f"model {setup.model_id}: warm-up {warm} bars; {n} timed calls per figure; cpus {os.cpu_count()} {_load()}")
    for name, xs in _in_process(setup, frame, max(50, n // 2)).items():
        print(f"{name}: {_ms(xs, goal=name.startswith('bare'))}")
    _http(model, frame, warm, n)
    if not args.no_throughput:
        body = json.dumps({"columns": columns_of(frame.iloc[:warm])}).encode()
        for workers in (1, 2):
            proc, base = _start_server(model, workers)
            try:
                rps = asyncio.run(_throughput(base, body, n, args.concurrency))
                print(f"throughput /predict (columns), {workers} worker(s), {args.concurrency} clients: "
                      f"{rps:.1f} requests/s {_load()}")
            finally:
                proc.terminate()
                proc.wait(30)


if __name__ == "__main__":
    main()

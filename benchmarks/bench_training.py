"""Training-loop throughput vs the raw network throughput on the same batches.

    .venv/bin/python benchmarks/bench_training.py [--bars 20000] [--threads 2] [--batch 256] [--real]

Measures, with the default network (58,401 parameters, window 64) and the same shuffled
batches:
  raw   : forward + loss + backward on pre-built batch tensors (no data handling at all);
  raw+s : the same plus the AdamW step (fused kernel, as in training);
  loop  : models.train.fit_network for one epoch (batch gathering from the normalised
          matrix, shuffling, loss bookkeeping, tqdm bar) - train part only, and including the
          end-of-epoch validation pass.
Rounds are interleaved and the best of each variant is kept (shared cores are noisy).
Prints samples/s of each and the ratio loop / raw (target >= 0.8).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from _timing import REAL  # puts the repository on sys.path
from core.config import load_config
from core.synthetic import synthetic_ohlcv
from models.dataset import Normaliser, prepare
from models.splits import walk_forward_split
from models.tcn import build_tcn, gather_windows
from models.train import fit_network, make_optimizer, resolve_pos_weight, set_seeds

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bars", type=int, default=20000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--real", action="store_true", help="use the last --bars bars of the real candles")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved measurement rounds (best is kept)")
    ap.add_argument("--quiet", action="store_true", help="hide the training loop's tqdm bar (shown by default, as in nts train)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(None, [f"training.batch_size={args.batch}", f"training.threads={args.threads}"])
    if args.real and REAL.exists():
        from core.ohlcv import load_ohlcv

        frame = load_ohlcv(REAL).iloc[-args.bars:]
    else:
        frame = synthetic_ohlcv(args.bars, seed=1)
    data = prepare(frame, cfg)
    split = walk_forward_split(data.samples, 8, 8, 0.15, 0.15)
    normaliser = Normaliser.fit(data.features, split.train)
    norm = torch.from_numpy(normaliser.transform(data.features))
    pw = resolve_pos_weight("auto", data.labels[split.train])
    n, bs, w = len(split.train), args.batch, cfg.model.window
    print(f"{len(frame):,} bars, {n:,} training samples, {len(split.val):,} validation, batch {bs}, "
          f"{args.threads} threads, torch {torch.__version__}")

    # the batches fit_network will draw in its first epoch (same generator, same seed)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.training.seed))
    ends_all = torch.from_numpy(split.train)
    y_all = torch.from_numpy(data.labels.astype(np.float32))
    batches = [(gather_windows(norm, ends_all[perm[i:i + bs]], w), y_all[ends_all[perm[i:i + bs]]])
               for i in range(0, n, bs)]
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pw))

    def raw(step: bool) -> float:
        set_seeds(0)
        net = build_tcn(cfg.model, 12).train()
        opt = make_optimizer(net, cfg.training)  # the optimiser fit_network uses
        for x, y in batches[:3]:  # warm-up
            loss_fn(net(x), y).backward()
        t = time.perf_counter()
        for x, y in batches:
            opt.zero_grad(set_to_none=True)
            loss_fn(net(x), y).backward()
            if step:
                opt.step()
        return n / (time.perf_counter() - t)

    def loop() -> tuple[float, float]:
        set_seeds(cfg.training.seed)
        net = build_tcn(cfg.model, 12)
        res = fit_network(net, norm, data.labels, split, w, cfg.training, 1, pw, cfg.training.seed,
                          progress=not args.quiet)
        return n / res.history[0]["train_seconds"], res.samples_per_s

    # Interleaved rounds, best of each: the cores may be shared, and the best round is the one
    # least disturbed by other processes, for every variant alike.
    rows = {"raw": [], "raw_step": [], "loop": [], "loop_val": []}
    for r in range(args.rounds):
        rows["raw"].append(raw(False))
        rows["raw_step"].append(raw(True))
        lt, lv = loop()
        rows["loop"].append(lt)
        rows["loop_val"].append(lv)
        print(f"round {r + 1}: raw {rows['raw'][-1]:.0f}, raw+step {rows['raw_step'][-1]:.0f}, "
              f"loop {lt:.0f}, loop+val {lv:.0f} samples/s")
    best = {k: max(v) for k, v in rows.items()}
    print(f"best of {args.rounds} rounds:")
    print(f"raw forward+backward          : {best['raw']:9.0f} samples/s")
    print(f"raw forward+backward+AdamW    : {best['raw_step']:9.0f} samples/s")
    print(f"training loop (train part)    : {best['loop']:9.0f} samples/s")
    print(f"training loop (+ validation)  : {best['loop_val']:9.0f} samples/s")
    print(f"ratio loop / raw fwd+bwd      : {best['loop'] / best['raw']:.3f}   (target >= 0.8)")
    print(f"ratio loop / raw fwd+bwd+step : {best['loop'] / best['raw_step']:.3f}")


if __name__ == "__main__":
    main()

"""Training: walk-forward (or purged k-fold) TCN training, calibration, baseline, bundle.

Pipeline of :func:`train_bundle`:

1. features, triple-barrier labels, valid windows (``models.dataset.prepare``);
2. spans by time over the labelled samples with purge + embargo (``models.splits``);
   ``max_samples`` keeps only the most recent training samples;
3. normalisation statistics fitted on the feature rows of the training windows only;
4. AdamW on ``BCEWithLogits(pos_weight)`` where ``pos_weight = negatives / positives`` of
   the training span ("auto") or a configured number; early stopping on the (same,
   weighted) validation loss with the best weights restored; seeds fixed;
5. calibrator (Platt or isotonic) fitted on the validation span only. This is the SAME
   validation span whose loss drives early stopping in step 4 (there is no third span):
   the validation span has chosen the epoch and fitted the calibrator, so the "val" metrics
   (calibrated ones most of all) are in-sample for those choices and somewhat optimistic.
   The test span stays untouched by training, normalisation, early stopping and calibration;
   the honest out-of-sample figures are the "test" metrics;
6. logistic-regression baseline on the same spans;
7. the best weights exported to ONNX (``models.onnx_export``, checked against torch); the
   validation/test logits -- hence the calibrator and every reported TCN metric -- come from
   that graph through ONNX Runtime, the scorer every engine trades with;
   metrics (AUC, log loss, Brier, ECE) on validation and test, raw and calibrated, TCN and
   baseline; reliability diagram, learning curves, report.html; model.onnx beside
   final_model.pt, both sha256 in bundle.json;
8. everything written into a temp directory beside the output, renamed into place last
   (:func:`core.files.output_dir`), so an interrupted run never leaves a complete-looking
   bundle, and an existing folder is replaced only when it is an nts bundle (checked before
   any training starts).

A validation or test span too small to fit or judge a calibrator (fewer than
:data:`MIN_EVAL_SAMPLES` samples or :data:`MIN_EVAL_PER_CLASS` of either class) is refused
before training.

Sequence mode (``model.context: sequence``, :mod:`models.sequence_train`): the same steps,
splits, labels, pos_weight, early stopping, calibration and baseline; only the batches differ
(:class:`models.sequence_train.SequenceBatches`: contiguous chunks, one forward pass for many
labelled bars, instead of :class:`WindowBatches`), a bar needs ``input_bars`` = window +
receptive field - 1 bars of finite features (not ``window``), and the bundle also holds the
numpy engine's ``sequence_weights.npz`` that trading scores with.

Determinism: with the same data, config and seed the weights are identical on CPU
(same thread count); ``tests/test_training.py`` checks it.
"""
from __future__ import annotations

import copy
import datetime as _dt
import logging
import platform
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from core.config import Config, config_to_dict
from core.errors import DataError
from core.files import OutputKind, check_output_dir, output_dir
from core.redact import redact_obj
from models.baseline import LogisticBaseline
from models.bundle import FORMAT_VERSION, ModelBundle, bundle_files, sha256_file
from models.calibration import Calibrator, sigmoid
from models.dataset import Normaliser, PreparedData, prepare, sample_positions, valid_window_mask
from models.features import FEATURE_NAMES, feature_definitions_hash, memory_bars, warmup_bars
from models.metrics import all_metrics, auc, learning_curves_png, reliability_diagram
from models.report import write_report
from models.splits import Split, cap_train, purged_kfold_splits, walk_forward_split
from models.onnx_export import EXPORTER, export_onnx, serialise_weights
from models.sequence_scorer import WEIGHTS_FILE as SEQUENCE_WEIGHTS_FILE
from models.sequence_scorer import input_bars
from models.sequence_train import SequenceBatches, sequence_weights
from models.tcn import build_tcn, count_parameters, gather_windows, receptive_field, torch_threads

log = logging.getLogger("nts.train")
EVAL_BATCH = 1024
# What a bundle folder holds (one from before markers is recognised by these names).
OUTPUT_KIND = OutputKind("bundle", files=("bundle.json", "final_model.pt", "model.onnx", "reliability.png",
                                          "learning_curves.png", "report.html", SEQUENCE_WEIGHTS_FILE),
                          signature='"format_version"')
# Smallest validation / test span worth a calibrator: Platt fits two parameters and the
# reliability figures use 10 bins; with fewer samples (or fewer of either class) the fitted
# probabilities and the reported ECE are noise.
MIN_EVAL_SAMPLES = 100
MIN_EVAL_PER_CLASS = 10


def set_seeds(seed: int) -> None:
    """Seed python, numpy and torch RNGs."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def resolve_pos_weight(setting, labels: np.ndarray) -> float:
    """``auto`` -> negatives / positives of the given (training) labels; else the number."""
    if setting == "auto":
        pos = float(np.sum(labels == 1))
        neg = float(np.sum(labels == 0))
        if pos == 0 or neg == 0:
            raise DataError("the training span holds only one class; cannot train a classifier")
        return neg / pos
    return float(setting)


@torch.no_grad()
def network_logits(net: torch.nn.Module, norm: torch.Tensor, ends: np.ndarray, window: int,
                   batch: int = EVAL_BATCH) -> np.ndarray:
    """Eval-mode logits for the windows ending at ``ends`` (used for validation loss/AUC per epoch)."""
    was_training = net.training
    net.eval()
    out = np.empty(len(ends), dtype=np.float64)
    ends_t = torch.from_numpy(np.asarray(ends, dtype=np.int64))
    for i in range(0, len(ends), batch):
        out[i:i + batch] = net(gather_windows(norm, ends_t[i:i + batch], window)).double().numpy()
    net.train(was_training)
    return out


class WindowBatches:
    """Window mode's batches: ``batch_size`` training bars drawn without replacement, each
    with its own ``window``-bar window copied from the normalised matrix."""

    def __init__(self, norm: torch.Tensor, labels: np.ndarray, train: np.ndarray, window: int, batch_size: int) -> None:
        self.norm = norm
        self.window = window
        self.y_all = torch.from_numpy(labels.astype(np.float32))
        self.train_ends = torch.from_numpy(train.astype(np.int64))
        self.batch_size = int(batch_size)

    def plan(self, gen: torch.Generator) -> list[torch.Tensor]:
        """This epoch's batches: a permutation of the training bars cut every ``batch_size``."""
        perm = torch.randperm(len(self.train_ends), generator=gen)
        bs = self.batch_size
        return [perm[i:i + bs] for i in range(0, len(perm), bs)]

    def forward(self, net: torch.nn.Module, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, targets) of one batch."""
        ends = self.train_ends[idx]
        return net(gather_windows(self.norm, ends, self.window)), self.y_all[ends]

    def logits(self, net: torch.nn.Module, ends: np.ndarray) -> np.ndarray:
        """Eval-mode logits of the bars ``ends``."""
        return network_logits(net, self.norm, ends, self.window)


def weighted_bce(logits: np.ndarray, y: np.ndarray, pos_weight: float) -> float:
    """Mean BCEWithLogits with pos_weight, in numpy (matches torch's definition)."""
    z = torch.from_numpy(np.asarray(logits, dtype=np.float64))
    t = torch.from_numpy(np.asarray(y, dtype=np.float64))
    return float(torch.nn.functional.binary_cross_entropy_with_logits(
        z, t, pos_weight=torch.tensor(pos_weight, dtype=torch.float64)))


def make_optimizer(net: torch.nn.Module, tcfg) -> torch.optim.Optimizer:
    """AdamW; the fused CPU kernel where this torch has it (one kernel for all 58k parameters
    instead of a Python loop per tensor: the step costs ~0.5 ms instead of ~4 ms per batch)."""
    kwargs = {"lr": tcfg.learning_rate, "weight_decay": tcfg.weight_decay}
    try:
        return torch.optim.AdamW(net.parameters(), fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(net.parameters(), **kwargs)


@dataclass
class FitResult:
    """A trained network (best weights) and its learning curves."""

    state_dict: dict
    history: list = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False
    seconds: float = 0.0
    samples_per_s: float = 0.0


def fit_network(net: torch.nn.Module, norm: torch.Tensor, labels: np.ndarray, split: Split, window: int,
                tcfg, epochs: int, pos_weight: float, seed: int, progress: bool = True,
                batches: WindowBatches | SequenceBatches | None = None) -> FitResult:
    """AdamW + weighted BCE with early stopping on validation loss; returns the best weights.
    ``batches`` (default: :class:`WindowBatches`) draws the training batches and scores the
    validation bars: the only step where window and sequence mode differ."""
    batches = batches or WindowBatches(norm, labels, split.train, window, tcfg.batch_size)
    y_val = labels[split.val]
    opt = make_optimizer(net, tcfg)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pos_weight, dtype=torch.float32))
    gen = torch.Generator().manual_seed(seed)
    n = len(split.train)
    best_loss, best_state, best_epoch, bad = float("inf"), copy.deepcopy(net.state_dict()), 0, 0
    history: list[dict] = []
    stopped = False
    t_start = time.perf_counter()
    seen = 0
    for epoch in range(1, epochs + 1):
        t_epoch = time.perf_counter()
        net.train()
        plan = batches.plan(gen)
        # a manual bar (not an iterator wrapper) so the epoch's validation figures can still be
        # written onto it after the last batch
        bar = tqdm(total=len(plan), desc=f"epoch {epoch}/{epochs}", unit="batch", leave=True,
                   disable=not progress, file=sys.stderr, dynamic_ncols=True)
        train_loss, epoch_y, epoch_logits = _train_epoch(net, batches, plan, opt, loss_fn, n, bar, progress)
        seen += n
        train_seconds = time.perf_counter() - t_epoch
        train_auc = auc(epoch_y, epoch_logits)
        val_logits = batches.logits(net, split.val)
        val_loss = weighted_bce(val_logits, y_val, pos_weight)
        val_auc = auc(y_val, val_logits)
        history.append({"epoch": epoch, "train_loss": train_loss, "train_auc": train_auc,
                        "val_loss": val_loss, "val_auc": val_auc, "train_seconds": round(train_seconds, 3)})
        bar.set_postfix(loss=f"{train_loss:.4f}", auc=f"{train_auc:.3f}", val_loss=f"{val_loss:.4f}",
                        val_auc=f"{val_auc:.3f}")
        bar.close()
        log.info("epoch %d: train loss %.5f auc %.4f | val loss %.5f auc %.4f", epoch, train_loss, train_auc,
                 val_loss, val_auc)
        if val_loss < best_loss - 1e-6:
            best_loss, best_state, best_epoch, bad = val_loss, copy.deepcopy(net.state_dict()), epoch, 0
        else:
            bad += 1
            if bad >= tcfg.patience:
                stopped = True
                log.info("early stopping after epoch %d (best epoch %d)", epoch, best_epoch)
                break
    secs = time.perf_counter() - t_start
    net.load_state_dict(best_state)
    return FitResult(state_dict=best_state, history=history, best_epoch=best_epoch, stopped_early=stopped,
                     seconds=secs, samples_per_s=seen / secs if secs > 0 else float("nan"))


def _train_epoch(net: torch.nn.Module, batches: WindowBatches | SequenceBatches, plan: list,
                 opt: torch.optim.Optimizer, loss_fn: torch.nn.Module, n: int, bar: tqdm,
                 progress: bool) -> tuple[float, np.ndarray, np.ndarray]:
    """One optimiser step per batch of ``plan`` (``n`` training samples in all); returns the
    epoch's mean training loss, and the targets and logits it saw, batch by batch."""
    epoch_logits = np.empty(n, dtype=np.float64)
    epoch_y = np.empty(n, dtype=np.float64)
    total = 0.0
    lo = 0
    for b, item in enumerate(plan):
        opt.zero_grad(set_to_none=True)
        logits, y = batches.forward(net, item)
        loss = loss_fn(logits, y)
        loss.backward()
        opt.step()
        k = len(y)
        total += float(loss.detach()) * k
        epoch_logits[lo:lo + k] = logits.detach().double().numpy()
        epoch_y[lo:lo + k] = y.double().numpy()
        lo += k
        bar.update(1)
        if progress and (b % 20 == 0 or b == len(plan) - 1):
            bar.set_postfix(loss=f"{total / lo:.4f}", refresh=False)
    return total / n, epoch_y, epoch_logits


def _span(index: pd.DatetimeIndex, a: int, b: int) -> list[str]:
    n = len(index)
    return [index[max(0, a)].isoformat(), index[min(n - 1, b)].isoformat()]


def _versions() -> dict:
    import sklearn

    try:
        from importlib.metadata import version

        nts_version = version("neural-trading-system")
    except Exception:  # not installed as a distribution
        nts_version = "unknown"
    import onnx
    import onnxruntime

    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "pandas": pd.__version__, "scikit-learn": sklearn.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "nts": nts_version}


def _metric_block(y: np.ndarray, tcn_logits: np.ndarray, tcn_cal: Calibrator, base_logits: np.ndarray,
                  base_cal: Calibrator) -> dict:
    tcn_raw, tcn_c = all_metrics(y, sigmoid(tcn_logits)), all_metrics(y, tcn_cal(tcn_logits))
    base_raw, base_c = all_metrics(y, sigmoid(base_logits)), all_metrics(y, base_cal(base_logits))
    return {
        # flat headline keys (calibrated TCN) for quick lookups: meta["metrics"]["test"]["ece_calibrated"]
        "auc": tcn_c["auc"], "brier_raw": tcn_raw["brier"], "brier_calibrated": tcn_c["brier"],
        "ece_raw": tcn_raw["ece"], "ece_calibrated": tcn_c["ece"],
        "log_loss_raw": tcn_raw["log_loss"], "log_loss_calibrated": tcn_c["log_loss"],
        "tcn": {"raw": tcn_raw, "calibrated": tcn_c},
        "baseline": {"raw": base_raw, "calibrated": base_c},
    }


@dataclass
class FoldOutcome:
    """Everything one split produced (network, calibrator, baseline, metrics, logits)."""

    split: Split
    normaliser: Normaliser
    fit: FitResult
    pos_weight: float
    calibrator: Calibrator
    baseline: LogisticBaseline
    baseline_calibrator: Calibrator
    metrics: dict
    curves: dict
    onnx: bytes = b""
    sequence_weights: bytes | None = None


def _train_split(data: PreparedData, split: Split, cfg: Config, epochs: int, progress: bool,
                 meta_stub: dict) -> FoldOutcome:
    window = cfg.model.window
    span = _input_span(cfg)
    tcfg = cfg.training
    # Normaliser: rows that appear in training inputs only.
    ends = np.zeros(len(data.features))
    ends[split.train] = 1.0
    # row r is in some training input iff a training end t lies in [r, r + span - 1]
    rows = np.convolve(ends, np.ones(span), mode="full")[span - 1:] > 0.5
    normaliser = Normaliser.fit(data.features, rows)
    norm = torch.from_numpy(normaliser.transform(data.features))
    pos_weight = resolve_pos_weight(tcfg.pos_weight, data.labels[split.train])
    set_seeds(tcfg.seed)
    net = build_tcn(cfg.model, n_features=data.features.shape[1])
    batches = SequenceBatches(norm, data.labels, split.train, cfg.model, tcfg.batch_size) \
        if cfg.model.context == "sequence" else None
    fit = fit_network(net, norm, data.labels, split, window, tcfg, epochs, pos_weight, tcfg.seed, progress,
                      batches=batches)

    # The graph every engine will trade with, exported from the best weights (and checked
    # against torch); the reported metrics come from it through the bundle's own scoring path
    # (in sequence mode the numpy engine, checked against torch too).
    onnx = export_onnx(cfg.model, fit.state_dict, window, data.features.shape[1])
    seq_weights = sequence_weights(cfg.model, fit.state_dict, data.features.shape[1]) \
        if cfg.model.context == "sequence" else None
    scorer = ModelBundle({**meta_stub, "normaliser": normaliser.to_dict(),
                          "calibrator": {"kind": "platt", "params": {"a": 1.0, "b": 0.0}}}, onnx,
                         sequence_weights=seq_weights)
    val_logits = scorer.logits_for_features(data.features, split.val, data.seg)
    test_logits = scorer.logits_for_features(data.features, split.test, data.seg)
    y_val, y_test = data.labels[split.val], data.labels[split.test]
    calibrator = Calibrator.fit(val_logits, y_val, tcfg.calibration)
    baseline = LogisticBaseline.fit(data.features, data.labels, split.train, normaliser, seed=tcfg.seed)
    b_val = baseline.logits(data.features, split.val, normaliser)
    b_test = baseline.logits(data.features, split.test, normaliser)
    b_cal = Calibrator.fit(b_val, y_val, tcfg.calibration)
    metrics = {"val": _metric_block(y_val, val_logits, calibrator, b_val, b_cal),
               "test": _metric_block(y_test, test_logits, calibrator, b_test, b_cal)}
    curves = {"TCN raw": (y_test, sigmoid(test_logits)), "TCN calibrated": (y_test, calibrator(test_logits)),
              "baseline calibrated": (y_test, b_cal(b_test))}
    return FoldOutcome(split, normaliser, fit, pos_weight, calibrator, baseline, b_cal, metrics, curves, onnx,
                       seq_weights)


def with_input_span(data: PreparedData, span: int, split: Split | None) -> tuple[PreparedData, Split | None]:
    """``data`` whose valid bars need ``span`` finite bars of one stretch, and ``split`` (when
    given) restricted to those bars."""
    valid = valid_window_mask(data.features, data.seg, span)
    data = PreparedData(index=data.index, features=data.features, labels=data.labels, valid_window=valid,
                        samples=sample_positions(valid, data.labels), seg=data.seg)
    if split is not None:
        split = Split(train=split.train[valid[split.train]], val=split.val[valid[split.val]],
                      test=split.test[valid[split.test]], name=split.name)
    return data, split


@dataclass
class TrainResult:
    """Where the bundle went and what it holds."""

    path: Path
    meta: dict


def check_eval_spans(split: Split, labels: np.ndarray) -> None:
    """Refuse a split whose validation span cannot fit a calibrator or whose test span cannot
    judge one (see :data:`MIN_EVAL_SAMPLES`), naming the span, its counts and the minimum."""
    for name, ends, option in (("validation", split.val, "training.val_fraction"),
                               ("test", split.test, "training.test_fraction")):
        y = labels[ends]
        pos = int(np.sum(y == 1))
        neg = int(len(y) - pos)
        if len(y) < MIN_EVAL_SAMPLES or min(pos, neg) < MIN_EVAL_PER_CLASS:
            where = f" ({split.name})" if split.name and split.name != "walk_forward" else ""
            raise DataError(f"{name} span{where} holds {len(y)} samples ({pos} positive, {neg} negative); "
                            f"{'fitting' if name == 'validation' else 'judging'} the calibrator needs at least "
                            f"{MIN_EVAL_SAMPLES} with {MIN_EVAL_PER_CLASS} of each class: give more candles or a "
                            f"larger {option}")


def train_bundle(frame: pd.DataFrame, cfg: Config, output: str | Path, data_path: str | Path | None = None,
                 epochs: int | None = None, max_samples: int | None = None, progress: bool = True,
                 overwrite: bool = False, prepared: PreparedData | None = None, split: Split | None = None,
                 meta_hook=None) -> TrainResult:
    """Train, calibrate, evaluate and write a model bundle directory at ``output`` (atomically).

    ``output`` is checked before training (core.files.check_output_dir): a folder that is not
    an nts bundle, or that is or contains ``data_path``, is refused; ``overwrite`` also
    replaces a bundle folder written without the marker.

    Hooks for walk-forward schedules and several symbols (``models.walkforward``,
    ``models.universe``): ``prepared`` replaces ``prepare(frame, cfg)`` (pooled symbols),
    ``split`` replaces the configured split (spans by time), and ``meta_hook(outcome, data)``
    returns entries merged into bundle.json last (true spans, per-symbol metrics, inputs)."""
    t0 = time.perf_counter()
    check_output_dir(output, OUTPUT_KIND, inputs=[data_path], overwrite=overwrite)
    output = Path(output)
    tcfg = cfg.training
    epochs = int(epochs or tcfg.epochs)
    max_samples = max_samples if max_samples is not None else tcfg.max_samples

    with torch_threads(tcfg.threads):
        data, split = _training_data(frame, cfg, prepared, split)
        splits = _splits(data, cfg, split, max_samples)
        meta_stub = _meta_stub(cfg)
        outcomes = []
        for k, split in enumerate(splits):
            if len(splits) > 1:
                log.info("fold %d/%d: %s", k + 1, len(splits), split.summary())
            outcomes.append(_train_split(data, split, cfg, epochs, progress, meta_stub))
    meta = _bundle_meta(meta_stub, outcomes, data, cfg, data_path, epochs, max_samples)
    if meta_hook is not None:
        meta.update(meta_hook(outcomes[-1], data))
    meta = _write_bundle(output, meta, outcomes[-1], data_path, overwrite, t0)
    log.info("bundle written to %s", output)
    return TrainResult(path=output, meta=meta)


def _input_span(cfg: Config) -> int:
    """Bars one sample's input needs: the window, or in sequence mode window + receptive
    field - 1 (:func:`models.sequence_train.input_bars`)."""
    return input_bars(cfg.model) if cfg.model.context == "sequence" else cfg.model.window


def _training_data(frame: pd.DataFrame, cfg: Config, prepared: PreparedData | None,
                   split: Split | None) -> tuple[PreparedData, Split | None]:
    """Features, labels and valid samples (``prepared`` when given), and ``split`` restricted
    to the samples with a full input span; fewer than 50 samples are refused."""
    window = cfg.model.window
    span = _input_span(cfg)
    data = prepared if prepared is not None else prepare(frame, cfg, window=span)
    if span != window:
        # sequence mode: a sample needs `span` finite bars of its own stretch (hooks prepare
        # with the window); a given split keeps only such samples
        data, split = with_input_span(data, span, split)
    if len(data.samples) < 50:
        raise DataError(f"only {len(data.samples)} labelled samples with a full {window}-bar window; "
                        f"need more candles")
    log.info("%d bars, %d labelled samples with valid windows", len(data.index), len(data.samples))
    return data, split


def _splits(data: PreparedData, cfg: Config, split: Split | None, max_samples: int | None) -> list[Split]:
    """The given ``split`` or the configured ones (walk-forward, or purged k-fold), capped to
    ``max_samples`` training samples, each with validation/test spans checked."""
    tcfg = cfg.training
    horizon = cfg.labels.horizon
    if split is not None:
        splits = [split]
    elif tcfg.split == "walk_forward":
        splits = [walk_forward_split(data.samples, horizon, tcfg.embargo, tcfg.val_fraction, tcfg.test_fraction)]
    else:
        # every fold is trained and reported in meta["cv"]; the bundle keeps the last fold's
        # model (tested on the most recent data, trained on everything before it)
        splits = list(purged_kfold_splits(data.samples, horizon, tcfg.embargo, tcfg.folds,
                                          min_bars=warmup_bars(cfg.features) + _input_span(cfg) - 1))
    splits = [cap_train(s, max_samples) for s in splits]
    for s in splits:
        check_eval_spans(s, data.labels)
    return splits


def _meta_stub(cfg: Config) -> dict:
    """The bundle.json entries that scoring needs, known before training (features, window,
    model, labels, config)."""
    return {
        "format_version": FORMAT_VERSION,
        "feature_names": list(FEATURE_NAMES),
        "feature_hash": feature_definitions_hash(cfg.features),
        "feature_config": cfg.features.model_dump(mode="json"),
        "timeframe": cfg.data.timeframe,
        "window": cfg.model.window,
        "model": cfg.model.model_dump(mode="json"),
        "label_config": cfg.labels.model_dump(mode="json"),
        "threads": cfg.training.threads,
        "config": config_to_dict(cfg),
        "spans": {"training": None, "test": None},
    }


def _spans(idx: pd.DatetimeIndex, split: Split, min_bars: int, horizon: int) -> dict:
    """First and last bar each span of ``split`` used, label horizons included."""
    return {
        # network + normaliser + calibrator + baseline saw these bars (window history, feature warm-up
        # and label horizons included)
        "training": _span(idx, int(min(split.train[0], split.val[0])) - min_bars + 1,
                          int(max(split.train[-1], split.val[-1])) + horizon),
        "train": _span(idx, int(split.train[0]), int(split.train[-1]) + horizon),
        "validation": _span(idx, int(split.val[0]), int(split.val[-1]) + horizon),
        "test": _span(idx, int(split.test[0]), int(split.test[-1]) + horizon),
    }


def _bundle_meta(meta_stub: dict, outcomes: list[FoldOutcome], data: PreparedData, cfg: Config,
                 data_path: str | Path | None, epochs: int, max_samples: int | None) -> dict:
    """bundle.json of the last fold's model: scoring entries, spans, data, metrics, curves,
    versions (and every fold's test metrics under ``cv`` for k-fold)."""
    final = outcomes[-1]
    split = final.split
    idx = data.index
    span = _input_span(cfg)
    min_bars = warmup_bars(cfg.features) + span - 1
    net = build_tcn(cfg.model, n_features=len(FEATURE_NAMES))
    meta = {
        **meta_stub,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "normaliser": final.normaliser.to_dict(),
        "calibrator": final.calibrator.to_dict(),
        "baseline": {**final.baseline.to_dict(), "calibrator": final.baseline_calibrator.to_dict()},
        "parameters": count_parameters(net),
        "receptive_field": receptive_field(cfg.model.kernel_size, cfg.model.dilations),
        "min_bars": min_bars,
        # bars of history after which P no longer depends on where the history starts
        "history_bars": max(min_bars, memory_bars(cfg.features) + span),
        "input_bars": span,
        "spans": _spans(idx, split, min_bars, cfg.labels.horizon),
        "split": split.summary(),
        "samples": {"labelled_with_window": int(len(data.samples)), "train": int(len(split.train)),
                    "val": int(len(split.val)), "test": int(len(split.test)),
                    "train_positive_rate": float(np.mean(data.labels[split.train]))},
        "pos_weight": final.pos_weight,
        "data": {"path": str(data_path) if data_path else None,
                 "sha256": sha256_file(data_path) if data_path else None,
                 "rows": int(len(idx)), "start": idx[0].isoformat(), "end": idx[-1].isoformat()},
        "seed": cfg.training.seed,
        # the metrics above were computed by this scorer on the graph in model.onnx
        "scorer": {"engine": "numpy (models.sequence_scorer)" if cfg.model.context == "sequence" else "onnxruntime",
                   "exporter": EXPORTER},
        "epochs_max": epochs,
        "max_samples": max_samples,
        "versions": _versions(),
        "metrics": final.metrics,
        "history": final.fit.history,
        "training": {"best_epoch": final.fit.best_epoch, "stopped_early": final.fit.stopped_early,
                     "fit_seconds": round(final.fit.seconds, 2),
                     "train_samples_per_s": round(final.fit.samples_per_s, 1)},
    }
    if len(outcomes) > 1:
        meta["cv"] = [{"split": o.split.summary(), "test": o.metrics["test"]} for o in outcomes]
    return meta


def _write_bundle(output: Path, meta: dict, final: FoldOutcome, data_path: str | Path | None, overwrite: bool,
                  t0: float) -> dict:
    """Write the bundle folder (plots, weights, ONNX graph, bundle.json, report) into a temp
    folder renamed into place last; returns bundle.json as written (redacted, with hashes)."""
    with output_dir(output, OUTPUT_KIND, inputs=[data_path], overwrite=overwrite) as tmp:
        reliability_diagram(final.curves, tmp / "reliability.png")
        learning_curves_png(final.fit.history, tmp / "learning_curves.png")
        meta["wall_seconds"] = round(time.perf_counter() - t0, 2)
        meta = bundle_files(tmp, redact_obj(meta), serialise_weights(final.fit.state_dict), final.onnx,
                            final.sequence_weights)
        write_report(tmp, meta)
    return meta

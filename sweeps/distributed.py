"""Run a sweep's row chunks on Dask: ``nts sweep --workers N`` or ``--scheduler tcp://HOST:PORT``.

Optional: ``pip install "neural-trading-system[distributed]"``. Nothing else imports this
module, so the default install and the single-machine sweep never load dask.

What is shipped: the span's kernel inputs (:class:`sweeps.engine.KernelInputs`: bars, P, vol
forecast, realised vol -- a few MB) are scattered once to every worker; each task is one chunk
of policy rows and runs :func:`sweeps.engine.run_chunk`, the very function the single-process
path runs (:mod:`sweeps.kernel`: numpy, numba and ``core`` only, so a worker never loads
torch or backtrader), and returns that chunk's per-row metrics, block moments and fold figures. The
chunks are put back in row order, so the result is identical to a single-process run (each
row depends on its own parameters only; no floating-point sum runs across rows). Walk-forward
folds are slices of each row's one run over the span (see :mod:`sweeps.engine`), so they travel
inside the row chunks rather than as tasks of their own.

Threads: a task sets numba's thread count for its own thread (numba's setting is per thread):
``cpu_count // workers`` on a local cluster of ``workers`` single-threaded processes, 1 on an
external scheduler, where Dask's own worker threads are the parallelism.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from core.errors import ConfigError, NtsError
from sweeps.kernel import KernelInputs, chunk_bounds, concat_parts, run_chunk

try:  # the optional extra; refused with one line where a Dask path is asked for and it is missing
    import dask  # noqa: F401
    from distributed import Client, LocalCluster, as_completed
except ImportError:  # pragma: no cover - exercised only without the extra
    Client = LocalCluster = as_completed = None  # type: ignore[assignment]

CONNECT_TIMEOUT_S = 30
_SCHEDULER_RE = re.compile(r"^(tcp|tls)://[A-Za-z0-9.\-\[\]:]+:[0-9]{1,5}$")


class DistributedError(NtsError):
    """The Dask cluster cannot be reached or started, or the extra is not installed."""


def _require() -> None:
    if Client is None:
        raise DistributedError('Dask is not installed: pip install "neural-trading-system[distributed]"')


def _run_chunk_task(inputs: KernelInputs, params: np.ndarray, numba_threads: int) -> tuple[np.ndarray, ...]:
    """One Dask task: a chunk of rows on ``numba_threads`` threads of this worker thread."""
    import numba  # already loaded with sweeps.engine; numba's thread count is per calling thread

    numba.set_num_threads(max(1, min(int(numba_threads), numba.config.NUMBA_NUM_THREADS)))
    return run_chunk(inputs, params)


@contextmanager
def dask_client(workers: int | None = None, scheduler: str | None = None) -> Iterator[Any]:
    """A Dask client: on ``scheduler`` (``tcp://HOST:PORT``) or on a new local cluster of
    ``workers`` processes (one thread each), closed when the block ends."""
    _require()
    if (workers is None) == (scheduler is None):
        raise ConfigError("give exactly one of --workers N or --scheduler tcp://HOST:PORT")
    if scheduler is not None:
        if not _SCHEDULER_RE.match(str(scheduler)):
            raise ConfigError(f"--scheduler {scheduler!r}: not a Dask scheduler address; expected "
                              "tcp://HOST:PORT (or tls://HOST:PORT)")
        try:
            client = Client(scheduler, timeout=CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError, ValueError) as exc:
            raise DistributedError(f"cannot reach the Dask scheduler {scheduler} within {CONNECT_TIMEOUT_S} s "
                                   f"({exc.__class__.__name__})") from None
        try:
            yield client
        finally:
            client.close()
        return
    if int(workers) < 1:
        raise ConfigError(f"--workers must be >= 1 (got {workers})")
    cluster = LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=True, dashboard_address=None)
    try:
        client = Client(cluster)
        try:
            yield client
        finally:
            client.close()
    finally:
        cluster.close()


def dask_mapper(client: Any, chunk: int = 64, numba_threads: int | None = None
                ) -> Callable[[KernelInputs, np.ndarray, Callable[[int], None] | None], tuple[np.ndarray, ...]]:
    """A :func:`sweeps.engine.run_sweep` mapper that runs the row chunks as tasks on ``client``.

    ``numba_threads``: numba threads per task (default: ``cpu_count // workers`` when the
    cluster is local, else 1)."""
    if numba_threads is None:
        local = isinstance(getattr(client, "cluster", None), LocalCluster) if LocalCluster is not None else False
        n_workers = max(1, len(client.scheduler_info().get("workers", {})))
        numba_threads = max(1, (os.cpu_count() or 1) // n_workers) if local else 1

    def mapper(inputs: KernelInputs, params: np.ndarray, progress: Callable[[int], None] | None = None
               ) -> tuple[np.ndarray, ...]:
        bounds = chunk_bounds(params.shape[0], chunk)
        if not bounds:
            return concat_parts([], inputs, 0)
        shared = client.scatter(inputs, broadcast=True)
        futures = [client.submit(_run_chunk_task, shared, np.ascontiguousarray(params[lo:hi]), numba_threads,
                                 pure=False) for lo, hi in bounds]
        where = {f.key: k for k, f in enumerate(futures)}
        parts: list[Any] = [None] * len(futures)
        for fut in as_completed(futures):
            k = where[fut.key]
            parts[k] = fut.result()  # re-raises a task's error here
            if progress is not None:
                progress(bounds[k][1] - bounds[k][0])
        return concat_parts(parts, inputs, params.shape[0])

    return mapper


def describe(client: Any) -> str:
    """One line naming the cluster (for the report's engine field)."""
    info = client.scheduler_info()
    workers = info.get("workers", {})
    threads = sum(int(w.get("nthreads", 0)) for w in workers.values())
    return f"Dask {info.get('address', '?')} ({len(workers)} workers, {threads} threads)"

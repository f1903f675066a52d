"""Run one task per item on a few worker threads: the fan-out both batch scorers share.

The scorers cut a batch into fixed pieces (chunks of windows, pieces of a stretch) so that
a result never depends on how many threads ran them; this module only decides how many
threads run the pieces. ONNX Runtime and numpy release the GIL, so threads (not processes)
are enough and share the model in memory.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence, TypeVar

T = TypeVar("T")


def run_each(task: Callable[[T], object], items: Sequence[T], threads: int, name: str) -> None:
    """Call ``task(item)`` for every item, on at most ``threads`` worker threads named
    ``name``-N (never more than the CPUs or the items). With one worker the items run in
    order on the caller's thread: no pool to start for a small batch. An exception in a task
    is raised here."""
    workers = min(int(threads), os.cpu_count() or 1, len(items))
    if workers <= 1:
        for item in items:
            task(item)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix=name) as pool:
        list(pool.map(task, items))

"""Worker pools that do not oversubscribe a small machine.

Each spawned worker would start its own BLAS / OpenMP / torch thread pools sized to all cores;
on 2 cores that made every 2-process pool slower than 1 process (scripts/BENCHMARKS.md). The
children inherit the environment at start, so the thread limits are set while the pool starts.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from multiprocessing import get_context

from tqdm import tqdm

_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def _init_worker():
    try:
        import torch
        torch.set_num_threads(1)
    except ImportError:
        pass


@contextmanager
def single_threaded_pool(num_processes: int):
    """A spawn Pool whose workers use one thread each."""
    old = {k: os.environ.get(k) for k in _THREAD_VARS}
    os.environ.update({k: "1" for k in _THREAD_VARS})
    try:
        pool = get_context("spawn").Pool(num_processes, initializer=_init_worker)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    with pool:
        yield pool


def map_with_progress(fn, jobs, num_processes: int, desc: str, unordered: bool = False):
    """``[fn(j) for j in jobs]`` with a progress bar, in single-threaded workers when
    ``num_processes > 1`` and there is more than one job."""
    jobs = list(jobs)
    if num_processes <= 1 or len(jobs) <= 1:
        return [fn(j) for j in tqdm(jobs, desc=desc)]
    with single_threaded_pool(min(num_processes, len(jobs))) as pool:
        it = pool.imap_unordered(fn, jobs) if unordered else pool.imap(fn, jobs)
        return list(tqdm(it, total=len(jobs), desc=desc))

"""What every worker process of a local pool starts with: one-threaded BLAS and its own store.

A worker fits or scores many small models, one after another: BLAS threads would only fight
the other workers for the cores. Each worker opens its own store client (clients are not
shared across processes)."""

from __future__ import annotations

import gc
import os

from fleetscore.settings import Settings
from fleetscore.storage import Store, open_store

_store: Store | None = None
# A run builds hundreds of thousands of small objects (sensors, ids, rows of plans) that live
# as long as it does; at the default thresholds the collector rescans them over and over
# (a third of planning a 100,000-sensor hour). Larger batches, same collection of cycles.
GC_THRESHOLDS = (100_000, 20, 50)


def tune_gc() -> None:
    """For a process that runs fleetscore's work (the CLI, a pool worker, the container):
    the collector's thresholds, and the C allocator's (``tune_malloc``)."""
    gc.set_threshold(*GC_THRESHOLDS)
    tune_malloc()


# glibc's mallopt parameters. A unit's arrays (a few MB each, a few hundred MB in all) are
# by default mapped fresh and unmapped again, each time: the kernel zeroes every page on its
# first touch, and a fleet-size run paid 7% of its time for that (docs/benchmarks.md).
# Arrays up to 32 MB (glibc's maximum) then come from the heap, which keeps what is freed.
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
MALLOC_SETTINGS = ((_M_MMAP_THRESHOLD, 32 << 20), (_M_TRIM_THRESHOLD, 1 << 30),
                   (_M_TOP_PAD, 64 << 20))


def tune_malloc() -> None:
    """Apply MALLOC_SETTINGS where the C library is glibc (elsewhere: nothing to do)."""
    try:
        import ctypes

        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    for parameter, value in MALLOC_SETTINGS:
        mallopt(parameter, value)


def _die_with_parent() -> None:
    """A pool worker whose parent is killed (SIGKILL, OOM) would otherwise live on, orphaned,
    holding memory: ask Linux to kill it with its parent (PR_SET_PDEATHSIG)."""
    parent = os.getppid()
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return  # not Linux: the pool's own shutdown is all there is
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def init_worker(spec: str, settings: Settings) -> None:
    global _store
    _die_with_parent()
    tune_gc()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    _store = open_store(spec, settings)


def worker_store() -> Store:
    assert _store is not None, "init_worker did not run in this process"
    return _store

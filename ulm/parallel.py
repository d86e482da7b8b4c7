"""Numba threading: prefer a thread-safe layer so that parallel kernels may run from dask threads."""

from __future__ import annotations

import os

import numba
import numpy as np


def prefer_threadsafe_layer() -> None:
    """Use OpenMP (thread-safe, nested-safe) when available and the user has not chosen a layer."""
    if "NUMBA_THREADING_LAYER" in os.environ:
        return
    try:
        import numba.np.ufunc.omppool  # noqa: F401  (imports only where the OpenMP runtime loads)
    except ImportError:
        return
    numba.config.THREADING_LAYER = "omp"


@numba.njit(parallel=True, cache=True)
def _touch(x):
    for i in numba.prange(x.shape[0]):
        x[i] += 1.0


def concurrent_kernels_ok() -> bool:
    """True when parallel kernels may be launched from several Python threads at once."""
    _touch(np.zeros(2))  # the threading layer is chosen at the first parallel launch
    return numba.threading_layer() in ("omp", "tbb")

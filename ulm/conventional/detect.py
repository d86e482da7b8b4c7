"""Detection of microbubbles in the IQ envelope (conventional ULM).

Detection
    Local maxima of the envelope |IQ| of each frame (strictly above every earlier neighbour and at
    least every later one in raster order, so a plateau gives one maximum; 8 neighbours in 2D, 26 in
    3D) whose value is above ``threshold`` times the block's (``threshold_mode: block``) or the frame's
    (``frame``) maximum envelope, or above ``threshold`` itself (``absolute``; one MB at the grid's
    centre depth peaks at 1 in simulated data), and above ``noise_floor`` times the block's median
    envelope (a robust noise level, so that a block without MB yields no detection). Maxima on the
    border are kept (windows are clipped).
    Optionally the ``svd_components`` largest singular components of each block are removed first.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from ulm.errors import UlmError
from ulm.parallel import prefer_threadsafe_layer

prefer_threadsafe_layer()

THRESHOLD_MODES = ("block", "frame", "absolute")


@nb.njit(cache=True, inline="always")
def _is_peak(img, iz, iy, ix):
    """True if img[iz, iy, ix] is a local maximum (ties: the first in raster order wins)."""
    nz, ny, nx = img.shape
    v = img[iz, iy, ix]
    for dz in range(-1, 2):
        z = iz + dz
        if z < 0 or z >= nz:
            continue
        for dy in range(-1, 2):
            y = iy + dy
            if y < 0 or y >= ny:
                continue
            for dx in range(-1, 2):
                x = ix + dx
                if x < 0 or x >= nx or (dz == 0 and dy == 0 and dx == 0):
                    continue
                w = img[z, y, x]
                if w > v:
                    return False
                earlier = dz < 0 or (dz == 0 and (dy < 0 or (dy == 0 and dx < 0)))
                if w == v and earlier:
                    return False
    return True


@nb.njit(cache=True)
def _frame_peaks(img, thr, out, n_max, skip_border):
    """Write up to ``n_max`` peaks of ``img`` above ``thr`` as (z, y, x) rows of ``out``; return the count.
    With ``skip_border``, pixels on the border of an axis longer than 1 are not considered."""
    nz, ny, nx = img.shape
    bz, by, bx = (int(skip_border and nz > 1), int(skip_border and ny > 1), int(skip_border and nx > 1))
    n = 0
    for iz in range(bz, nz - bz):
        for iy in range(by, ny - by):
            for ix in range(bx, nx - bx):
                if img[iz, iy, ix] > thr and _is_peak(img, iz, iy, ix):
                    if n < n_max:
                        out[n, 0], out[n, 1], out[n, 2] = iz, iy, ix
                    n += 1
    return n


@nb.njit(cache=True, parallel=True)
def _count_peaks(env, thr, skip_border):
    counts = np.zeros(env.shape[0], np.int64)
    dummy = np.empty((0, 3), np.int64)
    for f in nb.prange(env.shape[0]):
        counts[f] = _frame_peaks(env[f], thr[f], dummy, 0, skip_border)
    return counts


@nb.njit(cache=True, parallel=True)
def _collect_peaks(env, thr, offsets, out, skip_border):
    for f in nb.prange(env.shape[0]):
        _frame_peaks(env[f], thr[f], out[offsets[f] : offsets[f + 1]], offsets[f + 1] - offsets[f], skip_border)


def noise_level(env: np.ndarray, max_samples: int = 1 << 20) -> float:
    """Median envelope of a block (on at most ``max_samples`` evenly strided values): a robust noise
    level where MBs are sparse (for circular Gaussian noise of RMS s it is 0.83 s)."""
    flat = env.reshape(-1)
    return float(np.median(flat[:: max(1, flat.size // max_samples)])) if flat.size else 0.0


def frame_thresholds(env: np.ndarray, threshold: float, mode: str, noise_floor: float = 0.0) -> np.ndarray:
    """(F,) detection threshold of each frame of an envelope block ``env`` (F, ...) (same unit as env):
    ``threshold`` relative to the block's or the frame's maximum, or absolute, and at least
    ``noise_floor`` times the block's :func:`noise_level` (so a block without MB yields no detection)."""
    if mode == "absolute":
        thr = np.full(len(env), float(threshold))
    elif mode == "frame":
        thr = threshold * env.reshape(len(env), -1).max(axis=1).astype(np.float64)
    elif mode == "block":
        thr = np.full(len(env), threshold * float(env.max()) if env.size else 0.0)
    else:
        raise UlmError(f"conventional.threshold_mode {mode!r}: expected one of {list(THRESHOLD_MODES)}")
    return np.maximum(thr, noise_floor * noise_level(env)) if noise_floor > 0 else thr


def detect(env: np.ndarray, thresholds: np.ndarray, skip_border: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Local maxima of an envelope block.

    Parameters
    ----------
    env : (F, Z, Y, X) float32 envelope |IQ| (Y = 1 in 2D).
    thresholds : (F,) float, a maximum must be strictly above its frame's value.
    skip_border : ignore maxima on the array's border (their MB is often outside the grid).

    Returns
    -------
    frame : (K,) int64 frame index within the block, sorted.
    index : (K, 3) int64 (z, y, x) pixel of each maximum.
    """
    env = np.ascontiguousarray(env, dtype=np.float32)
    thr = np.asarray(thresholds, dtype=np.float64)
    counts = _count_peaks(env, thr, bool(skip_border))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    index = np.empty((offsets[-1], 3), np.int64)
    _collect_peaks(env, thr, offsets, index, bool(skip_border))
    return np.repeat(np.arange(len(env), dtype=np.int64), counts), index


def as_volume(block: np.ndarray) -> np.ndarray:
    """(F, Z, X) -> (F, Z, 1, X); (F, Z, Y, X) unchanged."""
    return block[:, :, None, :] if block.ndim == 3 else block

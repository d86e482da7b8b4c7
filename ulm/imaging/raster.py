"""Paths on a pixel grid (ground floor): the pixels a straight segment crosses, and the segments of
bubble paths and of tracks.

Every fine pixel a segment crosses is marked by a 3D digital-differential-analyser traversal (Amanatides
& Woo 1987); cell k spans [k - 0.5, k + 0.5) along each axis. The targets, the ground-truth density and the
conventional density all rasterise their paths here, so the maps they make agree pixel for pixel.
"""

from __future__ import annotations

import numba as nb
import numpy as np


@nb.njit(cache=True)
def _traverse(a, b, out):
    """Mark in ``out`` (Z, Y, X) every cell the segment a -> b crosses; cell k spans [k - 0.5, k + 0.5)."""
    shape = out.shape
    q0 = np.empty(3)
    step = np.zeros(3, np.int64)
    t_max = np.full(3, np.inf)
    t_delta = np.full(3, np.inf)
    cell = np.empty(3, np.int64)
    end = np.empty(3, np.int64)
    for k in range(3):
        q0[k] = a[k] + 0.5
        cell[k] = int(np.floor(q0[k]))
        end[k] = int(np.floor(b[k] + 0.5))
        d = b[k] - a[k]
        if d > 0:
            step[k] = 1
            t_max[k] = (cell[k] + 1 - q0[k]) / d
            t_delta[k] = 1.0 / d
        elif d < 0:
            step[k] = -1
            t_max[k] = (cell[k] - q0[k]) / d
            t_delta[k] = -1.0 / d
    for _ in range(100000):
        if 0 <= cell[0] < shape[0] and 0 <= cell[1] < shape[1] and 0 <= cell[2] < shape[2]:
            out[cell[0], cell[1], cell[2]] = True
        if cell[0] == end[0] and cell[1] == end[1] and cell[2] == end[2]:
            break
        k = 0
        if t_max[1] < t_max[k]:
            k = 1
        if t_max[2] < t_max[k]:
            k = 2
        if t_max[k] > 1.0:
            break
        cell[k] += step[k]
        t_max[k] += t_delta[k]


@nb.njit(cache=True)
def rasterize(starts: np.ndarray, ends: np.ndarray, out: np.ndarray) -> None:
    """Mark every cell crossed by segments starts[i] -> ends[i] ((S, 3) fractional cell indices)."""
    for i in range(starts.shape[0]):
        _traverse(starts[i], ends[i], out)


def segments(pos_index: np.ndarray, frame: np.ndarray, bubble: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end points of each bubble's path between consecutive frames; a bubble seen once
    gives a zero-length segment (its point)."""
    order = np.lexsort((frame, bubble))
    p, f, b = pos_index[order], frame[order], bubble[order]
    linked = (b[1:] == b[:-1]) & (f[1:] == f[:-1] + 1)
    has_prev, has_next = np.zeros(len(p), bool), np.zeros(len(p), bool)
    has_prev[1:], has_next[:-1] = linked, linked
    alone = ~has_prev & ~has_next
    starts = np.concatenate([p[:-1][linked], p[alone]])
    ends = np.concatenate([p[1:][linked], p[alone]])
    return starts, ends


def track_segments(
    index: np.ndarray, frame: np.ndarray, track: np.ndarray, include_untracked: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Segments between consecutive localizations (by frame) of each track, and untracked points.

    Parameters
    ----------
    index : (K, 3) fine indices; frame : (K,) frames; track : (K,) ids, -1 = untracked.

    Returns
    -------
    starts, ends : (S, 3); a track seen once, and every untracked localization when
    ``include_untracked``, gives a zero-length segment (its point).
    """
    if len(index) == 0:
        return np.zeros((0, 3)), np.zeros((0, 3))
    order = np.lexsort((frame, track))
    p, k = index[order], track[order]
    tracked = k >= 0
    linked = (k[1:] == k[:-1]) & tracked[1:]
    has_prev = np.concatenate([[False], linked])
    has_next = np.concatenate([linked, [False]])
    alone = ~has_prev & ~has_next & (tracked | include_untracked)
    return np.concatenate([p[:-1][linked], p[alone]]), np.concatenate([p[1:][linked], p[alone]])


def interpolate_tracks(
    frame: np.ndarray, pos_um: np.ndarray, track: np.ndarray, factor: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear interpolation of every track onto a ``factor`` x finer time step (for point rendering).

    Between consecutive localizations of one track (frames f0 < f1), ``factor * (f1 - f0) - 1`` points
    are inserted. Untracked rows (track -1) are returned unchanged.

    Returns
    -------
    time : (N,) float64 frame time; pos_um : (N, 3) float64; track : (N,) int64, sorted by (track, time).
    """
    frame, pos_um, track = np.asarray(frame, float), np.asarray(pos_um, float), np.asarray(track, np.int64)
    order = np.lexsort((frame, track))
    f, p, k = frame[order], pos_um[order], track[order]
    if factor <= 1 or len(f) < 2:
        return f, p, k
    linked = (k[1:] == k[:-1]) & (k[1:] >= 0)
    steps = np.where(linked, np.rint(factor * (f[1:] - f[:-1])).astype(np.int64), 1).clip(min=1)
    start = np.repeat(np.arange(len(f) - 1), steps)
    frac = (np.arange(len(start)) - np.repeat(np.cumsum(steps) - steps, steps)) / np.repeat(steps, steps)
    time = f[start] + frac * (f[start + 1] - f[start])
    pos = p[start] + frac[:, None] * (p[start + 1] - p[start])
    # every row but the last starts one piece (itself at frac 0, then its interpolated points): add the last row
    return np.concatenate([time, f[-1:]]), np.concatenate([pos, p[-1:]]), np.concatenate([k[start], k[-1:]])

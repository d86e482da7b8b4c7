"""Conventional ULM, the baseline: detect microbubbles in the IQ envelope, localize them below the
pixel, and link them into tracks (after PALA, Heiles et al. 2022).

Detection
    Local maxima of the envelope |IQ| of each frame (strictly above every earlier neighbour and at
    least every later one in raster order, so a plateau gives one maximum; 8 neighbours in 2D, 26 in
    3D) whose value is above ``threshold`` times the block's (``threshold_mode: block``) or the frame's
    (``frame``) maximum envelope, or above ``threshold`` itself (``absolute``; one MB at the grid's
    centre depth peaks at 1 in simulated data), and above ``noise_floor`` times the block's median
    envelope (a robust noise level, so that a block without MB yields no detection). Maxima on the
    border are kept (windows are clipped).
    Optionally the ``svd_components`` largest singular components of each block are removed first.

Localization (offsets from the maximum pixel, in pixels, clipped to +-1, then world um)
    ``weighted_centroid``: centroid of the intensity |IQ|^2 over the (2 w + 1)^D window, w = ``window_px``.
    ``radial_symmetry``: Parthasarathy (2012, Nat. Methods 9:724) in D dimensions: the intensity
        gradient at the centre of every 2^D cell of the window defines a line; the estimate minimises
        the weighted sum of squared distances to all lines (weights |grad|^2 / distance to the
        gradient-weighted centroid), solved in closed form (sum w (I - n n^T)) p = sum w (I - n n^T) m.
        The gradient of a cell is the mean forward difference along each axis over the cell's 2^(D-1)
        edges (the Roberts cross in 2D). Pixel axes are used as they are: scaling them by the PSF
        widths (axial about half the lateral) did not lower the error on the sampled PSF.
    ``gaussian``: weighted least-squares fit of a separable Gaussian, ln I = a + sum_k (b_k d_k + c_k d_k^2),
        on the 3^D neighbourhood (weights I, since var(ln I) ~ 1/I for noise added to the IQ; Guo 2011), centre -b_k / (2 c_k).
        Exact for a noise-free separable Gaussian such as the PSF mode's.

Tracking
    Frame-to-frame optimal assignment (scipy ``linear_sum_assignment``). A detection may join a track
    last seen g frames earlier (g = 1 .. ``max_gap_frames`` + 1) only if it lies within
    g * ``max_speed_mm_s`` / frame rate of the track's last position; the cost is the squared distance
    to the track's constant-velocity prediction. Tracks last seen 1 frame ago are served first, then
    those with longer gaps (gap closing). Tracks with fewer than ``min_track_length`` localizations
    keep their rows with ``track = -1`` (untracked); track ids are renumbered 0.. in order of creation.
"""

from __future__ import annotations

from pathlib import Path

import numba as nb
import numpy as np
from scipy.optimize import linear_sum_assignment

from ulm.errors import UlmError
from ulm.forward.realism import svd_filter
from ulm.parallel import prefer_threadsafe_layer
from ulm.progress import progress_log
from ulm.store import LocalizationsWriter, read_iq

prefer_threadsafe_layer()

LOCALIZERS = {"weighted_centroid": 0, "radial_symmetry": 1, "gaussian": 2}
THRESHOLD_MODES = ("block", "frame", "absolute")
INFEASIBLE = 1e18
MAX_OFFSET_PX = 1.0


# -------------------------------------------------------------------------------------- detection
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


# ----------------------------------------------------------------------------------- localization
@nb.njit(cache=True, inline="always")
def _window(c, n, w):
    """Clipped window [lo, hi] of half-width ``w`` around ``c`` on an axis of ``n`` pixels (0 wide if n == 1)."""
    if n == 1:
        return 0, 0
    return max(c - w, 0), min(c + w, n - 1)


@nb.njit(cache=True)
def _centroid(img, c, w, out):
    """Intensity-weighted centroid offset (z, y, x) in px over the window of half-width ``w``."""
    lo = np.empty(3, np.int64)
    hi = np.empty(3, np.int64)
    for k in range(3):
        lo[k], hi[k] = _window(c[k], img.shape[k], w)
    total = 0.0
    acc = np.zeros(3)
    for z in range(lo[0], hi[0] + 1):
        for y in range(lo[1], hi[1] + 1):
            for x in range(lo[2], hi[2] + 1):
                v = img[z, y, x]
                total += v
                acc[0] += v * (z - c[0])
                acc[1] += v * (y - c[1])
                acc[2] += v * (x - c[2])
    for k in range(3):
        out[k] = acc[k] / total if total > 0 else 0.0


@nb.njit(cache=True)
def _solve(a, b, n):
    """Solve the n x n system a x = b in place (partial pivoting); return False if singular."""
    for col in range(n):
        piv = col
        for r in range(col + 1, n):
            if abs(a[r, col]) > abs(a[piv, col]):
                piv = r
        if abs(a[piv, col]) < 1e-12:
            return False
        if piv != col:
            for k in range(n):
                a[col, k], a[piv, k] = a[piv, k], a[col, k]
            b[col], b[piv] = b[piv], b[col]
        for r in range(col + 1, n):
            f = a[r, col] / a[col, col]
            for k in range(col, n):
                a[r, k] -= f * a[col, k]
            b[r] -= f * b[col]
    for col in range(n - 1, -1, -1):
        s = b[col]
        for k in range(col + 1, n):
            s -= a[col, k] * b[k]
        b[col] = s / a[col, col]
    return True


@nb.njit(cache=True)
def _gaussian(img, c, out):
    """Weighted least-squares separable Gaussian fit of ln I on the 3^D neighbourhood; offsets (z, y, x) px.

    An axis without both neighbours (border, or a 2D array's y) keeps offset 0.
    """
    shape = img.shape
    axes = np.empty(3, np.int64)
    n_ax = 0
    for k in range(3):
        out[k] = 0.0
        if shape[k] > 1 and c[k] >= 1 and c[k] <= shape[k] - 2:
            axes[n_ax] = k
            n_ax += 1
    if n_ax == 0:
        return
    lo = np.empty(3, np.int64)
    hi = np.empty(3, np.int64)
    for k in range(3):
        lo[k], hi[k] = _window(c[k], shape[k], 1)
    n_par = 1 + 2 * n_ax
    a = np.zeros((n_par, n_par))
    b = np.zeros(n_par)
    row = np.empty(n_par)
    floor = img[c[0], c[1], c[2]] * 1e-6
    for z in range(lo[0], hi[0] + 1):
        for y in range(lo[1], hi[1] + 1):
            for x in range(lo[2], hi[2] + 1):
                v = max(img[z, y, x], floor)
                d = (z - c[0], y - c[1], x - c[2])
                row[0] = 1.0
                for j in range(n_ax):
                    dk = d[axes[j]]
                    row[1 + 2 * j] = dk
                    row[2 + 2 * j] = dk * dk
                lv = np.log(v)
                for p in range(n_par):
                    b[p] += v * row[p] * lv
                    for q in range(n_par):
                        a[p, q] += v * row[p] * row[q]
    if not _solve(a, b, n_par):
        return
    for j in range(n_ax):
        lin, quad = b[1 + 2 * j], b[2 + 2 * j]
        if quad < 0:
            out[axes[j]] = -lin / (2.0 * quad)


@nb.njit(cache=True)
def _radial(img, c, w, out):
    """D-dimensional radial-symmetry centre (Parthasarathy 2012) over the window of half-width ``w``; offsets px."""
    shape = img.shape
    lo = np.empty(3, np.int64)
    hi = np.empty(3, np.int64)
    active = np.zeros(3, np.bool_)
    for k in range(3):
        lo[k], hi[k] = _window(c[k], shape[k], w)
        active[k] = hi[k] > lo[k]
        out[k] = 0.0
    nz = max(hi[0] - lo[0], 1)
    ny = max(hi[1] - lo[1], 1)
    nx = max(hi[2] - lo[2], 1)
    n_cells = nz * ny * nx
    mid = np.zeros((n_cells, 3))
    grad = np.zeros((n_cells, 3))
    g2 = np.zeros(n_cells)
    i = 0
    for z in range(nz):
        for y in range(ny):
            for x in range(nx):
                z0, y0, x0 = lo[0] + z, lo[1] + y, lo[2] + x
                z1 = z0 + 1 if active[0] else z0
                y1 = y0 + 1 if active[1] else y0
                x1 = x0 + 1 if active[2] else x0
                s = np.zeros(3)
                n_edges = 0.0
                for a in range(2):
                    for bb in range(2):
                        if active[0]:
                            ya = y0 if a == 0 else y1
                            xb = x0 if bb == 0 else x1
                            s[0] += img[z1, ya, xb] - img[z0, ya, xb]
                        if active[1]:
                            za = z0 if a == 0 else z1
                            xb = x0 if bb == 0 else x1
                            s[1] += img[za, y1, xb] - img[za, y0, xb]
                        if active[2]:
                            za = z0 if a == 0 else z1
                            yb = y0 if bb == 0 else y1
                            s[2] += img[za, yb, x1] - img[za, yb, x0]
                        n_edges += 1.0
                cell = (z0, y0, x0)
                for k in range(3):
                    if active[k]:
                        mid[i, k] = cell[k] + 0.5 - c[k]
                        grad[i, k] = s[k] / n_edges
                    g2[i] += grad[i, k] * grad[i, k]
                i += 1
    total = g2.sum()
    if total <= 0:
        return
    centroid = np.zeros(3)
    for i in range(n_cells):
        for k in range(3):
            centroid[k] += g2[i] * mid[i, k] / total
    a = np.zeros((3, 3))
    b = np.zeros(3)
    for i in range(n_cells):
        if g2[i] <= 0:
            continue
        dist = 0.0
        for k in range(3):
            dist += (mid[i, k] - centroid[k]) ** 2
        weight = g2[i] / max(np.sqrt(dist), 1e-3)
        norm = np.sqrt(g2[i])
        for p in range(3):
            for q in range(3):
                proj = (1.0 if p == q else 0.0) - grad[i, p] * grad[i, q] / (norm * norm)
                a[p, q] += weight * proj
                b[p] += weight * proj * mid[i, q]
    # axes that are not active have no gradient: pin them at 0
    for k in range(3):
        if not active[k]:
            for q in range(3):
                a[k, q] = 0.0
                a[q, k] = 0.0
            a[k, k] = 1.0
            b[k] = 0.0
    if not _solve(a, b, 3):
        return
    for k in range(3):
        out[k] = b[k] if active[k] else 0.0


@nb.njit(cache=True, parallel=True)
def _localize(intensity, frame, index, method, w, out):
    for m in nb.prange(len(frame)):
        img = intensity[frame[m]]
        off = np.zeros(3)
        if method == 0:
            _centroid(img, index[m], w, off)
        elif method == 1:
            _radial(img, index[m], w, off)
        else:
            _gaussian(img, index[m], off)
        for k in range(3):
            out[m, k] = index[m, k] + min(max(off[k], -MAX_OFFSET_PX), MAX_OFFSET_PX)


def localize(intensity: np.ndarray, frame: np.ndarray, index: np.ndarray, method: str, window_px: int = 2) -> np.ndarray:
    """Sub-pixel positions of detected maxima.

    Parameters
    ----------
    intensity : (F, Z, Y, X) float |IQ|^2 of the block (Y = 1 in 2D).
    frame, index : (K,) frame and (K, 3) (z, y, x) pixel of each maximum, from :func:`detect`.
    method : ``weighted_centroid``, ``radial_symmetry`` or ``gaussian``.
    window_px : half-width of the window of the centroid and radial-symmetry localizers.

    Returns
    -------
    (K, 3) float64 fractional pixel index (z, y, x) of each MB.
    """
    if method not in LOCALIZERS:
        raise UlmError(f"conventional.localizer {method!r}: expected one of {list(LOCALIZERS)}")
    intensity = np.ascontiguousarray(intensity, dtype=np.float64)
    out = np.empty((len(frame), 3))
    if len(frame):
        _localize(intensity, np.asarray(frame, np.int64), np.asarray(index, np.int64), LOCALIZERS[method], int(window_px), out)
    return out


def index_to_world(index: np.ndarray, origin_um, spacing_um, plane_y_um: float | None = None) -> np.ndarray:
    """(K, 3) world (x, y, z) um from fractional (z, y, x) indices; ``origin_um``/``spacing_um`` in array
    order ((z, x) in 2D, where y is ``plane_y_um``; (z, y, x) in 3D)."""
    origin, spacing = np.asarray(origin_um, float), np.asarray(spacing_um, float)
    out = np.empty((len(index), 3))
    out[:, 2] = origin[0] + index[:, 0] * spacing[0]
    out[:, 0] = origin[-1] + index[:, 2] * spacing[-1]
    out[:, 1] = plane_y_um if len(origin) == 2 else origin[1] + index[:, 1] * spacing[1]
    return out


def as_volume(block: np.ndarray) -> np.ndarray:
    """(F, Z, X) -> (F, Z, 1, X); (F, Z, Y, X) unchanged."""
    return block[:, :, None, :] if block.ndim == 3 else block


def localize_block(block: np.ndarray, cfg: dict) -> tuple[np.ndarray, np.ndarray]:
    """Detect and localize the MBs of one IQ block.

    Parameters
    ----------
    block : (F, Z, X) or (F, Z, Y, X) complex IQ.
    cfg : the ``conventional`` config section.

    Returns
    -------
    frame : (K,) int64 frame within the block; index : (K, 3) float64 fractional (z, y, x) pixel index.
    """
    data = svd_filter(np.asarray(block), cfg["svd_components"]) if cfg["svd_components"] > 0 else np.asarray(block)
    env = np.abs(as_volume(data)).astype(np.float32)
    thresholds = frame_thresholds(env, cfg["threshold"], cfg["threshold_mode"], cfg["noise_floor"])
    frame, peak = detect(env, thresholds, cfg["skip_border"])
    intensity = env.astype(np.float64) ** 2
    return frame, localize(intensity, frame, peak, cfg["localizer"], cfg["window_px"])


# ---------------------------------------------------------------------------------------- tracking
class Tracker:
    """Frame-by-frame linking of localizations into tracks (see the module docstring).

    Parameters
    ----------
    max_step_um : largest displacement between consecutive frames (max speed / frame rate), um.
    max_gap_frames : frames a track may miss and still be continued.

    ``lengths[k]`` is the number of localizations of provisional track k (ids in order of creation).
    """

    def __init__(self, max_step_um: float, max_gap_frames: int = 0):
        self.max_step_um, self.max_gap_frames = float(max_step_um), int(max_gap_frames)
        self.lengths: list[int] = []
        self._id = np.zeros(0, np.int64)  # active tracks: id, last position (um), velocity (um/frame), last frame
        self._last = np.zeros((0, 3))
        self._vel = np.zeros((0, 3))
        self._seen = np.zeros(0, np.int64)

    def update(self, t: int, pos_um: np.ndarray) -> np.ndarray:
        """Link the (K, 3) positions (um) of frame ``t`` (frames in increasing order); return their (K,) int64 track ids."""
        pos_um = np.asarray(pos_um, float).reshape(-1, 3)
        alive = t - self._seen <= self.max_gap_frames + 1
        self._id, self._last, self._vel, self._seen = self._id[alive], self._last[alive], self._vel[alive], self._seen[alive]
        ids = np.full(len(pos_um), -1, np.int64)
        free = np.arange(len(pos_um))
        for gap in range(1, self.max_gap_frames + 2):
            cand = np.flatnonzero(self._seen == t - gap)
            if len(cand) == 0 or len(free) == 0:
                continue
            rows, cols = self._assign(cand, pos_um[free], gap)
            tracks, dets = cand[rows], free[cols]
            self._vel[tracks] = (pos_um[dets] - self._last[tracks]) / gap
            self._last[tracks], self._seen[tracks] = pos_um[dets], t
            ids[dets] = self._id[tracks]
            free = np.setdiff1d(free, dets)
        for d in free:
            ids[d] = len(self.lengths)
            self.lengths.append(0)
        self._id = np.concatenate([self._id, ids[free]])
        self._last = np.concatenate([self._last, pos_um[free]])
        self._vel = np.concatenate([self._vel, np.zeros((len(free), 3))])
        self._seen = np.concatenate([self._seen, np.full(len(free), t, np.int64)])
        for i in ids:
            self.lengths[i] += 1
        return ids

    def update_frames(self, frame: np.ndarray, pos_um: np.ndarray) -> np.ndarray:
        """:meth:`update` for the rows (M,) frames (non-decreasing) and (M, 3) positions of several frames."""
        ids = np.empty(len(frame), np.int64)
        for rows in np.split(np.arange(len(frame)), np.flatnonzero(np.diff(frame)) + 1):
            if len(rows):
                ids[rows] = self.update(int(frame[rows[0]]), pos_um[rows])
        return ids

    def _assign(self, cand: np.ndarray, pos: np.ndarray, gap: int) -> tuple[np.ndarray, np.ndarray]:
        """Optimal assignment of tracks ``cand`` to positions ``pos`` (K, 3); feasible pairs only."""
        step = np.linalg.norm(pos[None, :, :] - self._last[cand][:, None, :], axis=2)
        pred = self._last[cand] + self._vel[cand] * gap
        cost = np.sum((pos[None, :, :] - pred[:, None, :]) ** 2, axis=2)
        feasible = step <= self.max_step_um * gap
        rows, cols = linear_sum_assignment(np.where(feasible, cost, INFEASIBLE))
        keep = feasible[rows, cols]
        return rows[keep], cols[keep]


def track_mapping(lengths: np.ndarray, min_track_length: int) -> np.ndarray:
    """(N,) int64 new id of each provisional track: 0.. for tracks of at least ``min_track_length``
    localizations (in order), -1 for shorter ones."""
    lengths = np.asarray(lengths, np.int64)
    keep = lengths >= min_track_length
    return np.where(keep, np.cumsum(keep) - 1, -1).astype(np.int64)


def max_step_um(cfg: dict, frame_rate_hz: float) -> float:
    """Largest displacement per frame (um): max_speed_mm_s (1 mm/s = 1000 um/s) / frame rate."""
    return cfg["max_speed_mm_s"] * 1e3 / frame_rate_hz


def link(frame: np.ndarray, pos_um: np.ndarray, frame_rate_hz: float, cfg: dict) -> np.ndarray:
    """Track ids (M,) int64 (-1 = untracked) of in-memory localizations sorted by frame.

    Parameters
    ----------
    frame : (M,) int frame index, non-decreasing; pos_um : (M, 3) world positions (um).
    frame_rate_hz : frame rate (Hz); cfg : the ``conventional`` section (max_speed_mm_s,
        max_gap_frames, min_track_length).
    """
    frame = np.asarray(frame)
    if np.any(np.diff(frame) < 0):
        raise UlmError("localizations must be sorted by frame to be tracked")
    tracker = Tracker(max_step_um(cfg, frame_rate_hz), cfg["max_gap_frames"])
    ids = tracker.update_frames(frame, pos_um)
    mapping = track_mapping(np.asarray(tracker.lengths), cfg["min_track_length"])
    return np.where(ids >= 0, mapping[np.maximum(ids, 0)], -1) if len(ids) else ids


def interpolate_tracks(frame: np.ndarray, pos_um: np.ndarray, track: np.ndarray, factor: int
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
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


# --------------------------------------------------------------------------------------------- stage
def _check_cfg(cfg: dict) -> None:
    if cfg["localizer"] not in LOCALIZERS:
        raise UlmError(f"conventional.localizer {cfg['localizer']!r}: expected one of {list(LOCALIZERS)}")
    if cfg["threshold_mode"] not in THRESHOLD_MODES:
        raise UlmError(f"conventional.threshold_mode {cfg['threshold_mode']!r}: expected one of {list(THRESHOLD_MODES)}")


def localize_iq(iq_path: str | Path, out_path: str | Path, cfg: dict, progress: bool = True) -> dict:
    """The `ulm conventional` stage: ``iq.zarr`` -> ``localizations.zarr``.

    Frame blocks of ``block_frames`` are read one at a time (memory flat in the run length),
    detected, localized and fed to one :class:`Tracker`; track ids are finalised (short tracks -> -1)
    when the store is closed.

    Parameters
    ----------
    iq_path : iq.zarr; out_path : localizations.zarr (written atomically); cfg : the ``conventional`` section.

    Returns
    -------
    dict with n_frames, n_localizations, n_tracks, tracked_fraction.
    """
    _check_cfg(cfg)
    iq = read_iq(iq_path)
    attrs = iq.attrs
    n_frames, dims = iq.iq.shape[0], iq.dims
    plane_y = float(attrs["plane_y_um"]) if dims == 2 else None
    rate = float(attrs["frame_rate_hz"])
    out_attrs = {
        "frame_rate_hz": rate,
        "dims": dims,
        "origin_um": list(attrs["origin_um"]),
        "spacing_um": list(attrs["spacing_um"]),
        "shape": list(iq.iq.shape[1:]),
        "wavelength_um": attrs["wavelength_um"],
        "localizer": cfg["localizer"],
        "conventional": cfg,
        **({"plane_y_um": plane_y, "slab_um": attrs.get("forward", {}).get("slab_um")} if dims == 2 else {}),
    }
    tracker = Tracker(max_step_um(cfg, rate), cfg["max_gap_frames"])
    n_loc = 0
    block = cfg["block_frames"]
    with LocalizationsWriter(out_path, out_attrs) as writer:
        desc = f"conventional {cfg['localizer']}"
        for t0 in progress_log(range(0, n_frames, block), unit="block", desc=desc, enabled=progress):
            rel, index = localize_block(iq.iq[t0 : t0 + block], cfg)
            pos = index_to_world(index, attrs["origin_um"], attrs["spacing_um"], plane_y)
            writer.append(t0 + rel, pos, tracker.update_frames(t0 + rel, pos))
            n_loc += len(rel)
        writer.pad_frames(n_frames)
        mapping = track_mapping(np.asarray(tracker.lengths, np.int64), cfg["min_track_length"])
        writer.relabel(mapping)
        n_tracks = int(mapping.max() + 1) if len(mapping) else 0
        lengths = np.asarray(tracker.lengths, np.int64)
        tracked = int(lengths[mapping >= 0].sum()) if len(lengths) else 0
    return {"n_frames": n_frames, "n_localizations": n_loc, "n_tracks": n_tracks, "tracked_fraction": tracked / max(n_loc, 1)}

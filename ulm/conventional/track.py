"""Tracking: linking localizations into tracks, frame by frame (conventional ULM).

Tracking
    Frame-to-frame optimal assignment (scipy ``linear_sum_assignment``). A detection may join a track
    last seen g frames earlier (g = 1 .. ``max_gap_frames`` + 1) only if it lies within
    g * ``max_speed_mm_s`` / frame rate of the track's last position; the cost is the squared distance
    to the track's constant-velocity prediction. Tracks last seen 1 frame ago are served first, then
    those with longer gaps (gap closing). Tracks with fewer than ``min_track_length`` localizations
    keep their rows with ``track = -1`` (untracked); track ids are renumbered 0.. in order of creation.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from ulm.errors import UlmError

INFEASIBLE = 1e18


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

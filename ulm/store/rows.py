"""Row stores sorted by frame: ground-truth tracks and conventional localizations."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ulm.errors import UlmError
from ulm.store.base import (
    COMPRESSORS,
    LOC_ARRAYS,
    TRACK_ARRAYS,
    _open,
    _put,
    _StreamingStore,
)
from ulm.store.grid import FRAME_EDGE, ROW, XYZ

# ---------------------------------------------------------------------------------------- tracks


class _FrameIndexed:
    """Rows sorted by frame with ``frame_offsets`` (T+1,): rows of frame t are [off[t], off[t+1])."""

    frame_offsets: np.ndarray

    @property
    def n_frames(self) -> int:
        return len(self.frame_offsets) - 1

    def rows(self, t: int) -> slice:
        """Row slice of frame ``t``."""
        return slice(int(self.frame_offsets[t]), int(self.frame_offsets[t + 1]))


@dataclass
class Tracks(_FrameIndexed):
    """Ground-truth microbubble positions, sorted by frame.

    frame : (M,) int32; bubble : (M,) int64 id; pos_um : (M, 3) float32 (x, y, z);
    vel_mm_s : (M, 3) float32; frame_offsets : (T+1,) int64, rows of frame t are [off[t], off[t+1]).
    """

    frame: np.ndarray
    bubble: np.ndarray
    pos_um: np.ndarray
    vel_mm_s: np.ndarray
    frame_offsets: np.ndarray
    attrs: dict = field(default_factory=dict)


class _FrameRowsWriter(_StreamingStore):
    """Rows sorted by frame, streamed block by block, plus ``frame_offsets`` (T+1,) written on close.

    Subclasses name their arrays in ``COLUMNS``: name -> (dtype, trailing shape); ``frame`` comes first.
    Dimension names: ``row`` and, for (M, 3) columns, ``xyz``; ``frame_offsets`` (T+1,): ``frame_edge``.
    """

    COLUMNS: dict[str, tuple[str, tuple[int, ...]]] = {}

    def __init__(self, path: str | Path, attrs: dict, chunk_rows: int = 1 << 16):
        if "frame_rate_hz" not in attrs:
            raise ValueError(f"{self.KIND} attrs need frame_rate_hz")
        super().__init__(path, attrs)
        self._chunk_rows = chunk_rows
        self._counts: list[np.ndarray] = []
        self._next_frame = 0

    def _create(self) -> None:
        self._arrays = {
            name: self._group.create_array(
                name,
                shape=(0, *tail),
                dtype=dt,
                chunks=(self._chunk_rows, *tail),
                compressors=COMPRESSORS,
                dimension_names=(ROW, XYZ)[: 1 + len(tail)],
            )
            for name, (dt, tail) in self.COLUMNS.items()
        }

    def _append_rows(self, frame: np.ndarray, **columns: np.ndarray) -> None:
        """Append rows of consecutive frames, starting at the next unwritten frame, sorted by frame."""
        frame = np.asarray(frame, dtype=np.int32)
        if len(frame) and (frame[0] < self._next_frame or np.any(np.diff(frame) < 0)):
            raise ValueError(f"{self.KIND} must be appended in frame order")
        if len(frame):
            n_frames = int(frame[-1]) + 1 - self._next_frame
            self._counts.append(np.bincount(frame - self._next_frame, minlength=n_frames))
            self._next_frame += n_frames
        for name, data in {"frame": frame, **columns}.items():
            dt, tail = self.COLUMNS[name]
            self._arrays[name].append(np.asarray(data, dtype=dt).reshape(-1, *tail), axis=0)

    def pad_frames(self, n_frames: int) -> None:
        """Declare empty frames up to ``n_frames`` in total (frames without rows)."""
        if n_frames > self._next_frame:
            self._counts.append(np.zeros(n_frames - self._next_frame, dtype=np.int64))
            self._next_frame = n_frames

    def _finish(self) -> None:
        counts = np.concatenate(self._counts) if self._counts else np.zeros(0, np.int64)
        _put(self._group, "frame_offsets", np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), (FRAME_EDGE,))


class TracksWriter(_FrameRowsWriter):
    """Stream ``tracks.zarr`` to disk frame block by frame block (memory flat in the run length)."""

    KIND = "tracks"
    COLUMNS = {"frame": ("i4", ()), "bubble": ("i8", ()), "pos_um": ("f4", (3,)), "vel_mm_s": ("f4", (3,))}

    def append(self, frame: np.ndarray, bubble: np.ndarray, pos_um: np.ndarray, vel_mm_s: np.ndarray) -> None:
        """Append rows of consecutive frames, starting at the next unwritten frame, sorted by frame."""
        self._append_rows(frame, bubble=bubble, pos_um=pos_um, vel_mm_s=vel_mm_s)


def _check_rows_finite(where: str, data: np.ndarray, offsets: np.ndarray, row0: int = 0, what: str = "positions") -> None:
    """Raise UlmError naming the frames whose rows (``data`` holds rows row0.. of a store whose rows of frame t
    are [offsets[t], offsets[t+1])) are not finite."""
    bad = ~np.all(np.isfinite(data), axis=tuple(range(1, data.ndim)))
    if bad.any():
        rows = row0 + np.flatnonzero(bad)[[0, -1]]
        first, last = (np.searchsorted(offsets, rows, side="right") - 1).tolist()
        frames = f"frame {first} holds" if first == last else f"frames {first}..{last} hold"
        raise UlmError(f"{where}: {frames} non-finite {what}")


def read_tracks(path: str | Path) -> Tracks:
    """Read a whole ``tracks.zarr`` into memory (validated: shapes, offsets, finite positions and velocities)."""
    g = _open(path, "tracks", TRACK_ARRAYS)
    tracks = Tracks(g["frame"][:], g["bubble"][:], g["pos_um"][:], g["vel_mm_s"][:], g["frame_offsets"][:], g.attrs.asdict())
    m, off = len(tracks.pos_um), tracks.frame_offsets
    if tracks.pos_um.shape != (m, 3) or tracks.vel_mm_s.shape != (m, 3) or tracks.pos_um.dtype.kind != "f":
        raise UlmError(
            f"tracks store {path}: pos_um and vel_mm_s must be (M, 3) floating point, got "
            f"{tracks.pos_um.dtype} {tracks.pos_um.shape} and {tracks.vel_mm_s.shape}"
        )
    if tracks.frame.shape != (m,) or tracks.bubble.shape != (m,):
        raise UlmError(f"tracks store {path}: frame and bubble must be ({m},), got {tracks.frame.shape}, {tracks.bubble.shape}")
    if off.ndim != 1 or len(off) < 1 or off[0] != 0 or np.any(np.diff(off) < 0) or off[-1] != m:
        raise UlmError(f"tracks store {path}: frame_offsets must rise from 0 to the {m} rows of pos_um")
    if not np.array_equal(tracks.frame, np.repeat(np.arange(len(off) - 1), np.diff(off))):
        raise UlmError(f"tracks store {path}: the frame column does not match frame_offsets (damaged store)")
    _check_rows_finite(f"tracks store {path}", tracks.pos_um, off)
    _check_rows_finite(f"tracks store {path}", tracks.vel_mm_s, off, what="velocities")
    return tracks


class TracksReader:
    """Lazy, validated access to ``tracks.zarr``: frame blocks are read on demand (thread-safe reads).

    Raises UlmError if the store is empty or its arrays have the wrong shapes or dtypes.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        g = _open(path, "tracks", TRACK_ARRAYS)
        self._group = g
        self.attrs = g.attrs.asdict()
        pos = g["pos_um"]
        if pos.ndim != 2 or pos.shape[1] != 3 or pos.dtype.kind != "f":
            raise UlmError(f"tracks store {path}: pos_um must be (M, 3) floating point in um, got {pos.shape} {pos.dtype}")
        self.frame_offsets = g["frame_offsets"][:]
        off = self.frame_offsets
        if len(off) < 2 or off[-1] == 0:
            raise UlmError(f"tracks store {path}: no bubble positions (empty tracks)")
        if off[0] != 0 or np.any(np.diff(off) < 0) or off[-1] != pos.shape[0]:
            raise UlmError(f"tracks store {path}: frame_offsets must rise from 0 to the {pos.shape[0]} rows of pos_um")
        if "frame_rate_hz" not in self.attrs:
            raise UlmError(f"tracks store {path}: missing attr frame_rate_hz")

    @property
    def n_frames(self) -> int:
        return len(self.frame_offsets) - 1

    def frames(self, t0: int, t1: int) -> tuple[np.ndarray, np.ndarray]:
        """Positions (K, 3) float64 um and their frame index relative to ``t0`` for frames [t0, t1)."""
        a, b = int(self.frame_offsets[t0]), int(self.frame_offsets[t1])
        pos = self._group["pos_um"][a:b].astype(np.float64)
        _check_rows_finite(f"tracks store {self.path}", pos, self.frame_offsets, a)
        rel = np.repeat(np.arange(t1 - t0), np.diff(self.frame_offsets[t0 : t1 + 1]))
        return pos, rel

    def bubbles(self, a: int, b: int) -> np.ndarray:
        """Bubble ids of rows [a, b)."""
        return self._group["bubble"][a:b]

    def bbox_um(self, chunk_rows: int = 1 << 20) -> np.ndarray:
        """[x0, x1, y0, y1, z0, z1] of all positions (read chunk by chunk)."""
        pos = self._group["pos_um"]
        lo, hi = np.full(3, np.inf), np.full(3, -np.inf)
        for a in range(0, pos.shape[0], chunk_rows):
            block = pos[a : a + chunk_rows]
            _check_rows_finite(f"tracks store {self.path}", block, self.frame_offsets, a)
            lo, hi = np.minimum(lo, block.min(0)), np.maximum(hi, block.max(0))
        return np.column_stack([lo, hi]).ravel()


# ------------------------------------------------------------------------------- localizations


@dataclass
class Localizations(_FrameIndexed):
    """Conventional ULM localizations, sorted by frame.

    frame : (M,) int32; pos_um : (M, 3) float32 world (x, y, z), y = ``plane_y_um`` in 2D;
    track : (M,) int64 track id, -1 if untracked; frame_offsets : (T+1,) int64, rows of frame t are
    [off[t], off[t+1]). ``attrs`` holds ``frame_rate_hz`` and the iq grid (origin_um, spacing_um, shape).
    """

    frame: np.ndarray
    pos_um: np.ndarray
    track: np.ndarray
    frame_offsets: np.ndarray
    attrs: dict = field(default_factory=dict)


class LocalizationsWriter(_FrameRowsWriter):
    """Stream ``localizations.zarr`` frame block by frame block (memory flat in the run length).

    Track ids may be provisional while streaming: :meth:`relabel` sets a mapping old id -> new id
    (-1 = untracked) that is applied to the whole ``track`` array, chunk by chunk, when the store is closed.
    """

    KIND = "localizations"
    COLUMNS = {"frame": ("i4", ()), "pos_um": ("f4", (3,)), "track": ("i8", ())}

    def __init__(self, path: str | Path, attrs: dict, chunk_rows: int = 1 << 16):
        super().__init__(path, attrs, chunk_rows)
        self._mapping: np.ndarray | None = None

    def append(self, frame: np.ndarray, pos_um: np.ndarray, track: np.ndarray) -> None:
        """Append rows (frame (K,), pos_um (K, 3) um, track (K,)) starting at the next unwritten frame, sorted by frame."""
        self._append_rows(frame, pos_um=pos_um, track=track)

    def relabel(self, mapping: np.ndarray) -> None:
        """On close, replace every track id k >= 0 by ``mapping[k]`` (int64, -1 = untracked)."""
        self._mapping = np.asarray(mapping, dtype=np.int64)

    def _finish(self) -> None:
        super()._finish()
        if self._mapping is not None:
            track = self._arrays["track"]
            for a in range(0, track.shape[0], self._chunk_rows):
                ids = track[a : a + self._chunk_rows]
                track[a : a + len(ids)] = np.where(ids >= 0, self._mapping[np.maximum(ids, 0)], -1)


def write_localizations(path: str | Path, loc: Localizations, attrs: dict | None = None) -> None:
    """Write an in-memory :class:`Localizations` as ``localizations.zarr`` atomically."""
    with LocalizationsWriter(path, {**loc.attrs, **(attrs or {})}) as writer:
        writer.append(loc.frame, loc.pos_um, loc.track)
        writer.pad_frames(loc.n_frames)


def read_localizations(path: str | Path) -> Localizations:
    """Read a whole ``localizations.zarr`` (validated: shapes, dtypes, offsets, frame_rate_hz)."""
    g = _open(path, "localizations", LOC_ARRAYS)
    frame, pos, track, off = g["frame"][:], g["pos_um"][:], g["track"][:], g["frame_offsets"][:]
    attrs = g.attrs.asdict()
    problems = []
    if pos.ndim != 2 or pos.shape[1] != 3 or pos.dtype.kind != "f":
        problems.append(f"pos_um must be (M, 3) floating point in um, got {pos.shape} {pos.dtype}")
    elif frame.shape != (len(pos),) or track.shape != (len(pos),) or frame.dtype.kind != "i" or track.dtype.kind != "i":
        problems.append(f"frame and track must be (M,) integers with M = {len(pos)}, got {frame.shape}, {track.shape}")
    elif len(off) < 1 or off[0] != 0 or np.any(np.diff(off) < 0) or off[-1] != len(pos):
        problems.append(f"frame_offsets must rise from 0 to the {len(pos)} rows of pos_um")
    elif not np.array_equal(frame, np.repeat(np.arange(len(off) - 1), np.diff(off))):
        row = int(np.flatnonzero(frame != np.repeat(np.arange(len(off) - 1), np.diff(off)))[0])
        problems.append(f"row {row} says frame {int(frame[row])} but frame_offsets put it in another frame")
    if "frame_rate_hz" not in attrs:
        problems.append("missing attr frame_rate_hz")
    if problems:
        raise UlmError(f"localizations store {path}: {'; '.join(problems)}")
    _check_rows_finite(f"localizations store {path}", pos, off)
    return Localizations(frame, pos, track, off, attrs)

"""The fine grid and the density maps of localizations (ground floor: the render stage draws them, the
metrics stage splits them in halves for the Fourier ring correlation).

Time is cut into blocks of ``block_frames`` frames; within a block a map marks the fine pixels a MB passed
through (a boolean passage map, as in ``target.zarr``); the density is the number of blocks in which each
pixel was marked. The fine grid is :func:`ulm.imaging.fine_grid` (iq origin, iq spacing, factor): fine pixels
f*i .. f*i+f-1 tile coarse pixel i. Maps are float32, (Z, X) in 2D and (Z, Y, X) in 3D.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ulm.errors import UlmError
from ulm.imaging import continuous_index, fine_grid
from ulm.imaging.raster import interpolate_tracks, rasterize, track_segments
from ulm.progress import progress_log
from ulm.store import Localizations, read_localizations

GROUND_TRUTH, CONVENTIONAL, NETWORK, TRIVIAL = "ground_truth", "conventional", "network", "trivial"  # density store names


@dataclass(frozen=True)
class FineGrid:
    """The fine grid: ``origin_um``, ``spacing_um`` (D,) in array order, ``shape`` (D,), ``factor``."""

    origin_um: np.ndarray
    spacing_um: np.ndarray
    shape: tuple[int, ...]
    factor: int

    @property
    def dims(self) -> int:
        return len(self.shape)

    @property
    def volume_shape(self) -> tuple[int, int, int]:
        """(Z, Y, X) with Y = 1 in 2D (the layout of :func:`ulm.imaging.raster.rasterize`)."""
        return (self.shape[0], 1, self.shape[1]) if self.dims == 2 else tuple(self.shape)

    def attrs(self, method: str) -> dict:
        """Attrs of a ``density/<method>.zarr`` store."""
        return {
            "origin_um": self.origin_um.tolist(),
            "spacing_um": self.spacing_um.tolist(),
            "factor": self.factor,
            "method": method,
        }

    def volume_index(self, pos_um: np.ndarray) -> np.ndarray:
        """(K, 3) fractional fine index (z, y, x) of world positions (K, 3) um; y = 0 in 2D."""
        return self.as_volume_index(continuous_index(np.asarray(pos_um, float).reshape(-1, 3), self.origin_um, self.spacing_um))

    def as_volume_index(self, index: np.ndarray) -> np.ndarray:
        """(K, 3) fine index (z, y, x) of (K, D) array-order fine indices; y = 0 in 2D."""
        return np.column_stack([index[:, 0], np.zeros(len(index)), index[:, 1]]) if self.dims == 2 else index


def make_fine_grid(origin_um, spacing_um, shape: tuple[int, ...], factor: int) -> FineGrid:
    """The ``factor`` x fine grid of an iq grid (origin, spacing in um and spatial shape, array order)."""
    origin, spacing = fine_grid(origin_um, spacing_um, factor)
    return FineGrid(origin, spacing, tuple(int(factor * n) for n in shape), int(factor))


def time_blocks(n_frames: int, block_frames: int) -> list[tuple[int, int]]:
    """Frame ranges [t0, t1) of the blocks: full blocks only, like the sparse tiling (one short block
    when the run is shorter than ``block_frames``)."""
    if n_frames <= block_frames:
        return [(0, n_frames)]
    return [(t0, t0 + block_frames) for t0 in range(0, n_frames - block_frames + 1, block_frames)]


def passage_map(starts: np.ndarray, ends: np.ndarray, grid: FineGrid) -> np.ndarray:
    """Boolean (Z, Y, X) map of the fine pixels crossed by segments (K, 3) -> (K, 3) (fine indices)."""
    buf = np.zeros(grid.volume_shape, dtype=bool)
    if len(starts):
        rasterize(np.ascontiguousarray(starts, np.float64), np.ascontiguousarray(ends, np.float64), buf)
    return buf


def count_block(count: np.ndarray, passages: np.ndarray, blocks: list | None) -> None:
    """Count one block's boolean passage map; with ``blocks``, also keep its marked pixels (flat indices,
    the same in the (Z, X) map as in the (Z, 1, X) volume)."""
    count += passages
    if blocks is not None:
        blocks.append(np.flatnonzero(passages))


def as_map(volume: np.ndarray, grid: FineGrid) -> np.ndarray:
    """float32 map of a (Z, Y, X) volume: (Z, X) in 2D (Y = 1), the volume itself in 3D."""
    return (volume[:, 0, :] if grid.dims == 2 else volume).astype(np.float32)


def _point_counts(index: np.ndarray, grid: FineGrid) -> np.ndarray:
    """Count of points (K, 3 fine indices) per fine pixel, (Z, Y, X) float32."""
    count = np.zeros(grid.volume_shape, np.float32)
    cell = np.rint(index).astype(np.int64)
    inside = np.all((cell >= 0) & (cell < np.asarray(grid.volume_shape)), axis=1)
    np.add.at(count, tuple(cell[inside].T), 1.0)
    return count


def density_from_localizations(
    loc: str | Path | Localizations,
    factor: int,
    block_frames: int,
    mode: str = "segments",
    include_untracked: bool = True,
    interp_factor: int = 1,
    select: np.ndarray | None = None,
    progress: bool = False,
    blocks: list | None = None,
) -> tuple[np.ndarray, FineGrid]:
    """Conventional ULM density on the fine grid of the localizations' iq grid.

    Parameters
    ----------
    loc : localizations.zarr or its contents (attrs need origin_um, spacing_um, shape).
    factor, block_frames : as :func:`density_from_tracks`.
    mode : ``segments`` (passage maps per block, counted over blocks) or ``points`` (localizations per
        fine pixel after ``interp_factor`` x linear interpolation of the tracks).
    include_untracked : draw localizations with track -1 (as points).
    select : optional (M,) bool mask of the localizations to draw (e.g. one half for the FRC).
    blocks : optional list; in ``segments`` mode each block's marked pixels (flat indices) are appended.

    Returns
    -------
    density : float32 (Zf, Xf) or (Zf, Yf, Xf); grid : the fine grid.
    """
    loc = loc if isinstance(loc, Localizations) else read_localizations(loc)
    missing = [k for k in ("origin_um", "spacing_um", "shape") if k not in loc.attrs]
    if missing:
        raise UlmError(f"localizations: attrs lack {missing}; write them with ulm.conventional.localize_iq")
    if mode not in ("segments", "points"):
        raise UlmError(f"render.mode {mode!r}: expected segments or points")
    grid = make_fine_grid(loc.attrs["origin_um"], loc.attrs["spacing_um"], loc.attrs["shape"], factor)
    keep = np.ones(len(loc.frame), bool) if select is None else np.asarray(select, bool)
    if not include_untracked:
        keep &= loc.track >= 0
    frame, pos, track = loc.frame[keep], loc.pos_um[keep], loc.track[keep]
    if mode == "points":
        _, pos, _ = interpolate_tracks(frame, pos, track, interp_factor)
        return as_map(_point_counts(grid.volume_index(pos), grid), grid), grid
    count = np.zeros(grid.volume_shape, np.float32)
    spans = time_blocks(loc.n_frames, block_frames)
    for t0, t1 in progress_log(spans, unit="block", desc="render conventional", enabled=progress):
        rows = (frame >= t0) & (frame < t1)
        starts, ends = track_segments(grid.volume_index(pos[rows]), frame[rows], track[rows], include_untracked)
        count_block(count, passage_map(starts, ends, grid), blocks)
    return as_map(count, grid), grid


def split_halves(loc: Localizations, by: str = "tracks") -> tuple[np.ndarray, np.ndarray]:
    """Two complementary (M,) bool masks of the localizations: even / odd track ids (untracked rows by
    frame parity) for ``by = tracks``, even / odd frames for ``by = frames``."""
    if by == "tracks":
        key = np.where(loc.track >= 0, loc.track, loc.frame)
    elif by == "frames":
        key = loc.frame.astype(np.int64)
    else:
        raise UlmError(f"metrics.frc_split {by!r}: expected tracks or frames")
    even = key % 2 == 0
    return even, ~even

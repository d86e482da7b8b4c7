"""Ground-truth targets: where microbubbles passed during each block, on the ``factor`` x finer grid.

Each bubble's path between consecutive frames is a straight segment; every fine pixel the segment
crosses is marked (a 3D digital-differential-analyser traversal, Amanatides & Woo 1987), time
collapsed over the block (``sparse.target: paths``); or, as the reference implementation, only the
fine pixel of each bubble's position in each frame (``positions``). Blocks and tiles are those of the
sparse store (same tiling of iq.zarr).
"""

from __future__ import annotations

from pathlib import Path

import numba as nb
import numpy as np

from ulm.imaging import continuous_index, fine_grid, in_slab, slab_of
from ulm.progress import progress_log
from ulm.sparse import check_tracks_cover, make_tiling
from ulm.store import CooWriter, TracksReader, read_iq


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


def make_targets(tracks_path: str | Path, iq_path: str | Path, out_path: str | Path, cfg: dict, progress: bool = True) -> None:
    """The `ulm targets` stage: ``target.zarr`` with one COO passage map per block of the tiling."""
    iq, tracks = read_iq(iq_path), TracksReader(tracks_path)
    dims, f = iq.dims, cfg["factor"]
    tiling = make_tiling(iq.iq.shape, cfg)
    check_tracks_cover(tracks, tiling, iq_path)
    origin, spacing = fine_grid(iq.attrs["origin_um"], iq.attrs["spacing_um"], f)
    plane_y, slab = slab_of(iq.attrs)
    frames = tiling.block_shape[0]
    fine_tile = tuple(f * n for n in tiling.block_shape[1:])
    attrs = {"factor": f, "origin_um": origin.tolist(), "spacing_um": spacing.tolist(), "block_shape": list(tiling.block_shape),
             "fine_block_shape": list(fine_tile), "sparse": cfg}  # fmt: skip
    with CooWriter(out_path, dims, 1, attrs, kind="target") as writer:
        for t0 in progress_log(tiling.time_blocks(), unit="block", desc="targets", enabled=progress):
            pos, rel = tracks.frames(t0, t0 + frames)
            a, b = tracks.frame_offsets[t0], tracks.frame_offsets[t0 + frames]
            bubble = tracks.bubbles(int(a), int(b))
            keep = in_slab(pos, plane_y, slab)
            idx = continuous_index(pos[keep], origin, spacing)
            if dims == 2:
                idx = np.column_stack([idx[:, 0], np.zeros(len(idx)), idx[:, 1]])
            if cfg["target"] == "positions":  # the reference's: each frame's MB positions, rounded on the fine grid
                starts = ends = idx
            else:
                starts, ends = segments(idx, rel[keep], bubble[keep])
            for tile in tiling.tiles_of(t0):
                shift = np.zeros(3)
                shift[[0, 2] if dims == 2 else [0, 1, 2]] = f * tile[1:]
                buf = np.zeros(fine_tile if dims == 3 else (fine_tile[0], 1, fine_tile[1]), dtype=bool)
                rasterize(starts - shift, ends - shift, buf)
                coords = np.argwhere(buf)[:, [0, 2] if dims == 2 else [0, 1, 2]]
                writer.append(coords, np.ones((len(coords), 1), np.float32), tile)

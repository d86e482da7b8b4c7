"""Ground-truth targets: where microbubbles passed during each block, on the ``factor`` x finer grid.

Each bubble's path between consecutive frames is a straight segment; every fine pixel the segment
crosses is marked (:func:`ulm.imaging.raster.rasterize`, a 3D digital-differential-analyser traversal), time
collapsed over the block (``sparse.target: paths``); or, as the reference implementation, only the
fine pixel of each bubble's position in each frame (``positions``). Blocks and tiles are those of the
sparse store (same tiling of iq.zarr).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ulm.imaging import fine_grid, imaged_bubbles
from ulm.imaging.blocks import check_tracks_cover, make_tiling
from ulm.imaging.raster import rasterize, segments
from ulm.progress import progress_log
from ulm.store import CooWriter, TracksReader, read_iq


def make_targets(tracks_path: str | Path, iq_path: str | Path, out_path: str | Path, cfg: dict, progress: bool = True) -> None:
    """The `ulm targets` stage: ``target.zarr`` with one COO passage map per block of the tiling."""
    iq, tracks = read_iq(iq_path), TracksReader(tracks_path)
    dims, f = iq.dims, cfg["factor"]
    tiling = make_tiling(iq.iq.shape, cfg)
    check_tracks_cover(tracks, tiling, iq_path)
    origin, spacing = fine_grid(iq.attrs["origin_um"], iq.attrs["spacing_um"], f)
    frames = tiling.block_shape[0]
    fine_tile = tuple(f * n for n in tiling.block_shape[1:])
    attrs = {
        "factor": f,
        "origin_um": origin.tolist(),
        "spacing_um": spacing.tolist(),
        "block_shape": list(tiling.block_shape),
        "fine_block_shape": list(fine_tile),
        "sparse": cfg,
    }
    with CooWriter(out_path, dims, 1, attrs, kind="target") as writer:
        for t0 in progress_log(tiling.time_blocks(), unit="block", desc="targets", enabled=progress):
            pos, rel = tracks.frames(t0, t0 + frames)
            a, b = tracks.frame_offsets[t0], tracks.frame_offsets[t0 + frames]
            bubble = tracks.bubbles(int(a), int(b))
            keep, idx = imaged_bubbles(pos, iq.attrs, origin, spacing)
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

"""IQ blocks: the tiling of an IQ time series into blocks, cutting and normalising one block, the
held-out (validation) time blocks, and the SVD clutter filter (ground floor).

The IQ time series is cut into blocks of ``block_frames`` frames and, where the field of view is
larger than ``tile_px``, into spatial tiles. Sparsification, targets, the datasets and the learned mask
all use these blocks, so that they agree on which sites belong to which block.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ulm.errors import UlmError


# ---------------------------------------------------------------------------------------- tiling
def axis_starts(n: int, tile: int, overlap: int) -> list[int]:
    """Tile starts covering 0..n-1 with tiles of ``tile`` (the last one flush with the end)."""
    if n <= tile:
        return [0]
    stride = tile - overlap
    if stride <= 0:
        raise UlmError(f"sparse.tile_overlap_px ({overlap}) must be smaller than sparse.tile_px ({tile})")
    starts = list(range(0, n - tile + 1, stride))
    return starts if starts[-1] == n - tile else [*starts, n - tile]


@dataclass(frozen=True)
class Tiling:
    """Blocks of an iq array: ``block_shape`` (T, *tile) and each block's origin (t0, *tile start)."""

    block_shape: tuple[int, ...]
    origins: np.ndarray  # (B, 1 + D), time-major

    def __len__(self) -> int:
        return len(self.origins)

    def time_blocks(self) -> list[int]:
        """First frame of every time block, increasing."""
        return sorted(set(self.origins[:, 0].tolist()))

    def tiles_of(self, t0: int) -> np.ndarray:
        """(n, 1 + D) origins of the tiles of the time block starting at frame ``t0``."""
        return self.origins[self.origins[:, 0] == t0]


def make_tiling(iq_shape: tuple[int, ...], cfg: dict) -> Tiling:
    """Blocks for an iq array of ``iq_shape`` (T, *spatial) following the ``sparse`` config section."""
    n_frames, spatial = iq_shape[0], iq_shape[1:]
    frames = cfg["block_frames"]
    if n_frames < frames:
        raise UlmError(f"iq has {n_frames} frames, fewer than sparse.block_frames = {frames}")
    tile = tuple(min(cfg["tile_px"], n) for n in spatial)
    starts = [axis_starts(n, t, cfg["tile_overlap_px"]) for n, t in zip(spatial, tile, strict=True)]
    origins = [(t0, *s) for t0 in range(0, n_frames - frames + 1, frames) for s in itertools.product(*starts)]
    return Tiling(block_shape=(frames, *tile), origins=np.asarray(origins, dtype=np.int64))


def held_out_start(n_frames: int, block_frames: int, val_fraction: float) -> int:
    """First frame of the time blocks held out from training (the last ``val_fraction`` of them, at
    least one): the network validates there, and methods are compared there."""
    n_blocks = max(1, n_frames // block_frames)
    n_val = max(1, int(round(n_blocks * val_fraction)))
    return max(0, n_blocks - n_val) * block_frames


def check_tracks_cover(tracks, tiling: Tiling, iq_path: str | Path) -> None:
    """One clear error when the tracks (a :class:`ulm.store.TracksReader`) end before the last block of
    the iq data they should describe."""
    needed = tiling.time_blocks()[-1] + tiling.block_shape[0]
    if tracks.n_frames < needed:
        raise UlmError(
            f"tracks store {tracks.path} has {tracks.n_frames} frames, but the blocks of {iq_path} need {needed}: "
            "were they made from the same run?"
        )


# ----------------------------------------------------------------------------------------- blocks
def cut(data: np.ndarray, origin: np.ndarray, block_shape: tuple[int, ...], t0: int) -> np.ndarray:
    """The block at ``origin`` (iq indices) out of ``data``, whose first frame is ``t0``."""
    start = np.array(origin)
    start[0] -= t0
    return data[tuple(slice(o, o + n) for o, n in zip(start, block_shape, strict=True))]


def normalise(block: np.ndarray) -> tuple[np.ndarray, float]:
    """Normalised power of a block and the scale (sqrt of its maximum power) of its features."""
    power = block.real.astype(np.float64) ** 2 + block.imag.astype(np.float64) ** 2
    peak = float(power.max()) if power.size else 0.0
    return (power / peak if peak > 0 else power), np.sqrt(peak) if peak > 0 else 1.0


def svd_filter(block: np.ndarray, n_components: int) -> np.ndarray:
    """Remove the ``n_components`` largest singular components of a (T, ...) block (slow tissue)."""
    if n_components <= 0:
        return block
    casorati = block.reshape(block.shape[0], -1)
    u, s, vh = np.linalg.svd(casorati, full_matrices=False)
    k = min(n_components, len(s))
    return (casorati - (u[:, :k] * s[:k]) @ vh[:k]).reshape(block.shape).astype(np.complex64)

"""What an IQ store images: its pixel grid in the world frame and the bubbles it sees (ground floor).

Shared by the stages that relate tracks to IQ data (forward model, targets, sparsification trade-off,
render, metrics), so that they agree on the elevation slab and on pixel indices. Submodules:
:mod:`~ulm.imaging.blocks` (tiling of the IQ into blocks, their normalisation, the held-out split, the
clutter filter), :mod:`~ulm.imaging.raster` (paths -> fine pixels) and :mod:`~ulm.imaging.density`
(the fine grid and the density maps of localizations).
"""

from __future__ import annotations

import numpy as np


def in_slab(pos_um: np.ndarray, plane_y_um: float | None, slab_um: float | None) -> np.ndarray:
    """(M,) mask of the positions a 2D acquisition sees: |y - plane_y| <= slab / 2 (all in 3D)."""
    if plane_y_um is None or slab_um is None:
        return np.ones(len(pos_um), dtype=bool)
    return np.abs(pos_um[:, 1] - plane_y_um) <= slab_um / 2


def slab_of(attrs: dict) -> tuple[float | None, float | None]:
    """(plane_y_um, slab_um) of a 2D iq or localizations store, (None, None) in 3D. The slab is the
    attrs' ``slab_um`` (localizations) or ``forward.slab_um`` (iq); infinite when absent or None."""
    if len(attrs["origin_um"]) == 3:
        return None, None
    slab = attrs["slab_um"] if "slab_um" in attrs else attrs.get("forward", {}).get("slab_um", np.inf)
    return float(attrs["plane_y_um"]), np.inf if slab is None else float(slab)


def world_to_array(pos_um: np.ndarray, dims: int) -> np.ndarray:
    """World (x, y, z) positions -> array-order coordinates ((z, x) in 2D, (z, y, x) in 3D), um."""
    return pos_um[:, [2, 0]] if dims == 2 else pos_um[:, [2, 1, 0]]


def continuous_index(pos_um: np.ndarray, origin_um, spacing_um) -> np.ndarray:
    """Fractional pixel index (array order) of world positions; pixel k's centre is at index k."""
    dims = len(origin_um)
    return (world_to_array(pos_um, dims) - np.asarray(origin_um)) / np.asarray(spacing_um)


def fine_grid(origin_um, spacing_um, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Origin and spacing of the ``factor`` x finer grid whose pixels f*i .. f*i+f-1 tile coarse pixel i."""
    spacing = np.asarray(spacing_um, float)
    fine_spacing = spacing / factor
    return np.asarray(origin_um, float) - spacing / 2 + fine_spacing / 2, fine_spacing


def imaged_bubbles(pos_um: np.ndarray, attrs: dict, origin_um=None, spacing_um=None) -> tuple[np.ndarray, np.ndarray]:
    """Which bubbles a grid images, and where: the (M,) bool mask of the world positions ``pos_um`` (M, 3)
    that a 2D acquisition sees (its elevation slab, :func:`slab_of` ``attrs``; all in 3D) and the (K, D)
    fractional pixel index (array order) of those K positions on the grid ``origin_um``, ``spacing_um``
    (default: the attrs' own grid; e.g. the fine grid of the targets). Whether an index lies inside the
    grid is the caller's test (nearest pixel, or pixel centre +- half a pixel)."""
    plane_y, slab = slab_of(attrs)
    keep = in_slab(pos_um, plane_y, slab)
    origin = attrs["origin_um"] if origin_um is None else origin_um
    spacing = attrs["spacing_um"] if spacing_um is None else spacing_um
    return keep, continuous_index(pos_um[keep], origin, spacing)


def imaged_bubble_sites(tracks, iq, t0: int, t1: int) -> np.ndarray:
    """(M, 1 + D) int64 iq indices (t relative to ``t0``, then the nearest pixel) of the bubbles that ``iq``
    (a :class:`ulm.store.Iq`) images in frames [t0, t1) of ``tracks`` (a :class:`ulm.store.TracksReader`)."""
    pos, rel = tracks.frames(t0, t1)
    keep, index = imaged_bubbles(pos, iq.attrs)
    idx = np.rint(index).astype(np.int64)
    inside = np.all((idx >= 0) & (idx < np.asarray(iq.iq.shape[1:])), axis=1)
    return np.column_stack([rel[keep][inside], idx[inside]])

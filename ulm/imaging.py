"""What an IQ store images: its pixel grid in the world frame and the bubbles it sees.

Shared by the stages that relate tracks to IQ data (forward model, targets, sparsification
trade-off), so that they agree on the elevation slab and on pixel indices.
"""

from __future__ import annotations

import numpy as np


def in_slab(pos_um: np.ndarray, plane_y_um: float | None, slab_um: float | None) -> np.ndarray:
    """(M,) mask of the positions a 2D acquisition sees: |y - plane_y| <= slab / 2 (all in 3D)."""
    if plane_y_um is None or slab_um is None:
        return np.ones(len(pos_um), dtype=bool)
    return np.abs(pos_um[:, 1] - plane_y_um) <= slab_um / 2


def slab_of(iq_attrs: dict) -> tuple[float | None, float | None]:
    """(plane_y_um, slab_um) of a 2D iq store, (None, None) in 3D."""
    if len(iq_attrs["origin_um"]) == 3:
        return None, None
    return float(iq_attrs["plane_y_um"]), float(iq_attrs.get("forward", {}).get("slab_um", np.inf))


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

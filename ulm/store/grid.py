"""What other tools need to read our grids: dimension names, coordinates in um and OME-NGFF images.

Every array of every store names its dimensions (Zarr v3 ``dimension_names``); grid stores (iq,
density) also hold one 1-D coordinate array per grid axis, named like it (``t`` in s, ``z``, ``y``,
``x`` in um, pixel centres), so that ``xarray.open_zarr`` shows named axes with physical coordinates;
their 2-D or 3-D maps are OME-Zarr images (NGFF 0.5 ``multiscales`` with scale and translation in um)
that napari opens at their physical size. See docs/architecture.md, "Stores".
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import zarr

NGFF_VERSION = "0.5"
# dimension names shared by the stores (one meaning per name, so xarray can align the arrays of a store)
ROW, XYZ, FRAME_EDGE = "row", "xyz", "frame_edge"  # rows sorted by frame; world (x, y, z) components; T + 1 offsets
NODE, EDGE, END = "node", "edge", "end"  # graph nodes, graph edges, an edge's two node indices
SITE, SITE_AXIS, FEATURE = "site", "site_axis", "feature"  # COO rows, their index columns, their feature columns
BLOCK, BLOCK_AXIS, BLOCK_EDGE = "block", "block_axis", "block_edge"  # time blocks, a block origin's columns, B + 1 offsets
TIME = "t"


def space_dims(ndim: int) -> tuple[str, ...]:
    """Names of the grid axes in array order: ("z", "x") in 2D, ("z", "y", "x") in 3D."""
    if ndim not in (2, 3):
        raise ValueError(f"a grid has 2 or 3 space axes, got {ndim}")
    return ("z", "x") if ndim == 2 else ("z", "y", "x")


def put_coords(
    group: zarr.Group,
    origin_um: Sequence[float],
    spacing_um: Sequence[float],
    shape: Sequence[int],
    n_frames: int | None = None,
    frame_rate_hz: float | None = None,
) -> None:
    """Write the 1-D coordinate arrays of a grid of ``shape`` (z, [y,] x) pixels: ``z``, [``y``,] ``x`` =
    origin_um + k * spacing_um (pixel centres, um, array order) and, with ``n_frames``, ``t`` = k /
    frame_rate_hz (s). Each array's dimension is its own name and its attr ``units`` is ``um`` or ``s``."""
    for name, origin, spacing, n in zip(space_dims(len(shape)), origin_um, spacing_um, shape, strict=True):
        _coord(group, name, float(origin) + float(spacing) * np.arange(int(n)), "um")
    if n_frames is not None:
        _coord(group, TIME, np.arange(int(n_frames)) / float(frame_rate_hz), "s")


def _coord(group: zarr.Group, name: str, values: np.ndarray, units: str) -> None:
    array = group.create_array(name, data=np.asarray(values, np.float64), dimension_names=(name,))
    array.attrs["units"] = units


def ome_image(name: str, path: str, origin_um: Sequence[float], spacing_um: Sequence[float]) -> dict:
    """The ``ome`` attr of a group that is an NGFF 0.5 image: one resolution level, the array ``path`` of
    the group with axes z, [y,] x in micrometres, scale ``spacing_um`` and translation ``origin_um``
    (the centre of pixel 0, array order)."""
    axes = [{"name": d, "type": "space", "unit": "micrometer"} for d in space_dims(len(spacing_um))]
    scale = {"type": "scale", "scale": [float(s) for s in spacing_um]}
    translation = {"type": "translation", "translation": [float(o) for o in origin_um]}
    dataset = {"path": path, "coordinateTransformations": [scale, translation]}
    return {"version": NGFF_VERSION, "multiscales": [{"name": name, "axes": axes, "datasets": [dataset]}]}

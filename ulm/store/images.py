"""Grid stores: IQ, sparse COO blocks (sparse, target, pred) and density maps."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from ulm.errors import UlmError
from ulm.store.base import (
    COMPRESSORS,
    COO_ARRAYS,
    _open,
    _put,
    _store,
    _StreamingStore,
)
from ulm.store.grid import BLOCK, BLOCK_AXIS, BLOCK_EDGE, FEATURE, SITE, SITE_AXIS, TIME, ome_image, put_coords, space_dims

# -------------------------------------------------------------------------------------------- iq
IQ_ATTRS = ("origin_um", "spacing_um", "f0_hz", "wavelength_um", "frame_rate_hz", "probe", "mode")


POWER_PARTS = "power_blocks"  # while an iq store is written: per block, the sum over its frames of |IQ|^2


def _image_chunk_rows(shape: tuple[int, ...]) -> int:
    """Rows (first axis) per chunk of a map of ``shape``: about 4 Mi pixels per chunk."""
    return max(1, (1 << 22) // max(1, int(np.prod(shape[1:]))))


class IqWriter(_StreamingStore):
    """``iq.zarr``: ``iq`` complex64 (T, Z, X) or (T, Z, Y, X) (dimension names t, z, [y,] x), one chunk per
    block of ``block_frames``. On close it adds ``power`` float32 (Z, [Y,] X), the mean over frames of
    |IQ|^2, the coordinate arrays ``t`` (s), ``z``, [``y``,] ``x`` (um) and the NGFF attr ``ome`` that makes
    the store an OME-Zarr image of ``power``; ``attrs`` must hold :data:`IQ_ATTRS`.

    ``write`` may be called from several threads at once for different, chunk-aligned blocks.
    """

    KIND = "iq"

    def __init__(self, path: str | Path, shape: tuple[int, ...], block_frames: int, attrs: dict):
        missing = [k for k in IQ_ATTRS if k not in attrs]
        if missing:
            raise ValueError(f"iq attrs lack {missing}")
        if any(len(attrs[k]) != len(shape) - 1 for k in ("origin_um", "spacing_um")):
            raise ValueError(f"iq attrs origin_um and spacing_um need one value per space axis of {shape}")
        super().__init__(path, attrs)
        self._shape, self._block = shape, block_frames

    def _create(self) -> None:
        chunks, grid = (min(self._block, self._shape[0]), *self._shape[1:]), self._shape[1:]
        space = space_dims(len(grid))
        group = self._group
        self._iq = group.create_array(
            "iq", shape=self._shape, dtype="complex64", chunks=chunks, compressors=COMPRESSORS, dimension_names=(TIME, *space)
        )
        n_blocks = -(-self._shape[0] // chunks[0])
        self._parts = group.create_array(
            POWER_PARTS,
            shape=(n_blocks, *grid),
            dtype="f8",
            chunks=(1, *grid),
            compressors=COMPRESSORS,
            dimension_names=(BLOCK, *space),
        )

    def write(self, t0: int, data: np.ndarray) -> None:
        """Write frames [t0, t0 + len(data)) (a chunk-aligned block of complex (n, Z, [Y,] X) IQ)."""
        if t0 % self._block:
            raise ValueError("iq blocks must start on a chunk boundary")
        data = data.astype(np.complex64)
        self._iq[t0 : t0 + len(data)] = data
        self._parts[t0 // self._iq.chunks[0]] = _power_sum(data)

    def _finish(self) -> None:
        """The mean power map from the blocks' sums (read one block at a time), the coordinates, the NGFF attr."""
        n_frames, grid, attrs = self._shape[0], self._shape[1:], self._attrs
        total = np.zeros(grid, np.float64)
        for b in range(self._parts.shape[0]):
            total += self._parts[b]
        del self._group[POWER_PARTS]
        power = (total / max(1, n_frames)).astype(np.float32)
        _put(self._group, "power", power, space_dims(len(grid)), chunk_rows=_image_chunk_rows(power.shape))
        put_coords(self._group, attrs["origin_um"], attrs["spacing_um"], grid, n_frames, attrs["frame_rate_hz"])
        self._group.attrs["ome"] = ome_image("power", "power", attrs["origin_um"], attrs["spacing_um"])

    @property
    def array_path(self) -> str:
        """Path of the (temporary) ``iq`` array, for writers in other processes: see write_iq_block."""
        return str(self._path.with_name(self._path.name + ".tmp") / "iq")


def write_iq_block(array_path: str, t0: int, data: np.ndarray) -> None:
    """Write frames [t0, t0 + len(data)) into the iq array at ``array_path`` (chunk-aligned blocks only;
    ``data`` complex (n, Z, [Y,] X)) and the block's power sum next to it (for the store's power map)."""
    iq, data = zarr.open_array(array_path, mode="r+"), data.astype(np.complex64)
    if t0 % iq.chunks[0]:
        raise ValueError("iq blocks must start on a chunk boundary")
    iq[t0 : t0 + len(data)] = data
    zarr.open_array(str(Path(array_path).parent / POWER_PARTS), mode="r+")[t0 // iq.chunks[0]] = _power_sum(data)


def _power_sum(data: np.ndarray) -> np.ndarray:
    """Sum over frames of |IQ|^2: (Z, [Y,] X) float64 from complex (n, Z, [Y,] X)."""
    parts = np.ascontiguousarray(data, np.complex64).view(np.float32)  # (n, ..., 2X): real, imaginary interleaved
    sums = np.einsum("t...,t...->...", parts, parts, dtype=np.float64)
    return sums[..., 0::2] + sums[..., 1::2]


@dataclass
class Iq:
    """Beamformed IQ: ``iq`` (T, Z, X) or (T, Z, Y, X) complex64 (an :class:`IqArray`, read lazily) and attrs.
    (The store also holds the ``power`` map and coordinate arrays for other tools: see :class:`IqWriter`.)"""

    iq: IqArray
    attrs: dict

    @property
    def dims(self) -> int:
        return self.iq.ndim - 1


class IqArray:
    """The ``iq`` array of an ``iq.zarr``, read lazily like the Zarr array it wraps; every read is checked:
    non-finite IQ ends in one UlmError naming the store and the frames."""

    def __init__(self, array: zarr.Array, path: str | Path):
        self._array, self.path = array, Path(path)
        self.shape, self.ndim, self.dtype, self.chunks = array.shape, array.ndim, array.dtype, array.chunks

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return np.asarray(self[:], dtype=dtype)

    def __getitem__(self, key) -> np.ndarray:
        data = self._array[key]
        finite = np.isfinite(data)
        if not finite.all():
            first = key[0] if isinstance(key, tuple) and key else key
            if isinstance(first, slice) and np.ndim(data) >= 1:  # axis 0 holds frames start, start + step, ...
                start, _, step = first.indices(self.shape[0])
                rows = np.flatnonzero(~finite.all(axis=tuple(range(1, finite.ndim))))[[0, -1]]
                a, b = (start + step * rows).tolist()
                frames = f"frame {a} holds" if a == b else f"frames {a}..{b} hold"
            elif isinstance(first, int | np.integer):
                frames = f"frame {int(first)} holds"
            else:
                frames = "the frames read hold"
            raise UlmError(f"iq store {self.path}: {frames} non-finite values")
        return data


def read_iq(path: str | Path) -> Iq:
    """Open ``iq.zarr`` (lazily) and check its shape and attrs; blocks are checked as they are read (:class:`IqArray`)."""
    g = _open(path, "iq", ("iq",))
    arr, attrs = g["iq"], g.attrs.asdict()
    missing = [k for k in IQ_ATTRS if k not in attrs]
    if arr.ndim not in (3, 4) or arr.dtype != np.complex64 or missing:
        raise UlmError(
            f"iq store {path}: expected complex64 (T, Z, X) or (T, Z, Y, X) with attrs {list(IQ_ATTRS)}; "
            f"got {arr.dtype} {arr.shape}, missing attrs {missing}"
        )
    for key in ("origin_um", "spacing_um"):
        value = attrs[key]
        ok = isinstance(value, list) and len(value) == arr.ndim - 1 and all(isinstance(v, int | float) for v in value)
        if not ok or not np.all(np.isfinite(value)) or (key == "spacing_um" and min(value) <= 0):
            raise UlmError(
                f"iq store {path}: attr {key} must be {arr.ndim - 1} finite numbers (um)"
                f"{', all positive' if key == 'spacing_um' else ''}, got {value}"
            )
    for key in ("f0_hz", "wavelength_um", "frame_rate_hz"):
        value = attrs[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value) or value <= 0:
            raise UlmError(f"iq store {path}: attr {key} must be a positive finite number, got {value}")
    return Iq(IqArray(arr, path), attrs)


# ------------------------------------------------------------------------- sparse / target / pred


class CooWriter(_StreamingStore):
    """``sparse.zarr`` / ``target.zarr`` / ``pred.zarr``: COO sites appended block by block, so block b
    is rows [block_offsets[b], block_offsets[b+1]) and ``block_origin[b]`` its first iq index."""

    def __init__(
        self, path: str | Path, n_coords: int, n_feats: int, attrs: dict, chunk_rows: int = 1 << 14, kind: str = "sparse"
    ):
        if kind not in ("sparse", "target", "pred"):
            raise ValueError(f"COO store kind {kind!r}: expected sparse, target or pred")
        super().__init__(path, attrs)
        self.KIND = kind
        self._n_coords, self._n_feats, self._chunk_rows = n_coords, n_feats, chunk_rows
        self._offsets, self._origins = [0], []
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []  # rows not yet written: whole chunks only

    def _create(self) -> None:
        rows = self._chunk_rows
        self._coords = self._group.create_array(
            "coords",
            shape=(0, self._n_coords),
            dtype="i4",
            chunks=(rows, self._n_coords),
            compressors=COMPRESSORS,
            dimension_names=(SITE, SITE_AXIS),
        )
        self._feats = self._group.create_array(
            "feats",
            shape=(0, self._n_feats),
            dtype="f4",
            chunks=(rows, self._n_feats),
            compressors=COMPRESSORS,
            dimension_names=(SITE, FEATURE),
        )

    def append(self, coords: np.ndarray, feats: np.ndarray, origin: np.ndarray) -> None:
        """Append one block's sites (coords (N, n_coords), feats (N, n_feats)) and its origin."""
        if len(coords) != len(feats):
            raise ValueError("coords and feats need the same number of rows")
        if len(coords):
            self._pending.append(
                (
                    np.asarray(coords, np.int32).reshape(-1, self._n_coords),
                    np.asarray(feats, np.float32).reshape(-1, self._n_feats),
                )
            )
        self._offsets.append(self._offsets[-1] + len(coords))
        self._origins.append(np.asarray(origin, np.int64))
        if self._offsets[-1] - self._coords.shape[0] >= self._chunk_rows:
            self._flush(whole_chunks=True)

    def _flush(self, whole_chunks: bool) -> None:
        """Append the pending rows (all, or as many whole chunks as there are) in one write per array."""
        if not self._pending:
            return
        coords, feats = np.concatenate([c for c, _ in self._pending]), np.concatenate([f for _, f in self._pending])
        n = len(coords) // self._chunk_rows * self._chunk_rows if whole_chunks else len(coords)
        self._coords.append(coords[:n], axis=0)
        self._feats.append(feats[:n], axis=0)
        self._pending = [(coords[n:], feats[n:])] if n < len(coords) else []

    def _finish(self) -> None:
        self._flush(whole_chunks=False)
        _put(self._group, "block_offsets", np.asarray(self._offsets, np.int64), (BLOCK_EDGE,))
        width = len(self._origins[0]) if self._origins else self._n_coords
        _put(self._group, "block_origin", np.asarray(self._origins, np.int64).reshape(-1, width), (BLOCK, BLOCK_AXIS))


class CooStore:
    """Validated, O(1) random access to the blocks of a COO store (readable from worker processes)."""

    def __init__(self, path: str | Path, kind: str = "sparse"):
        self.path, self.kind = Path(path), kind
        g = _open(path, kind, COO_ARRAYS)
        self.attrs = g.attrs.asdict()
        coords, feats = g["coords"], g["feats"]
        self.offsets, self.origin = g["block_offsets"][:], g["block_origin"][:]
        problems = []
        if coords.dtype.kind != "i" or coords.ndim != 2:
            problems.append(f"coords must be 2-D integers, got {coords.dtype} {coords.shape}")
        if feats.dtype != np.float32 or feats.ndim != 2 or feats.shape[0] != coords.shape[0]:
            problems.append(f"feats must be float32 with one row per coordinate, got {feats.dtype} {feats.shape}")
        off = self.offsets
        if self.offsets.dtype.kind not in "iu" or len(off) < 1 or off[0] != 0 or np.any(np.diff(off) < 0):
            problems.append("block_offsets must rise from 0")
        elif off[-1] != coords.shape[0]:
            problems.append(f"block_offsets end at {off[-1]} but there are {coords.shape[0]} rows (truncated store?)")
        if len(self.origin) != len(off) - 1:
            problems.append(f"block_origin has {len(self.origin)} rows for {len(off) - 1} blocks")
        if problems:
            raise UlmError(f"{kind} store {path}: {'; '.join(problems)}")
        self._coords, self._feats = coords, feats
        # the block's shape that bounds the coordinates: block_shape (sparse: t, z, [y,] x) or fine_block_shape
        self._bound: tuple[str, list[int]] | None = None
        for key in ("block_shape", "fine_block_shape"):
            shape = self.attrs.get(key)
            if isinstance(shape, list) and len(shape) == coords.shape[1] and all(isinstance(n, int) for n in shape):
                self._bound = key, shape

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def block(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        """Coordinates (N, C) int32 and features (N, F) float32 of block ``b``."""
        if not 0 <= b < len(self):
            raise IndexError(f"block {b} out of range 0..{len(self) - 1}")
        a, z = int(self.offsets[b]), int(self.offsets[b + 1])
        coords, feats = self._coords[a:z], self._feats[a:z]
        where = f"{self.kind} store {self.path}: block {b} (rows {a}..{z - 1})"
        if self._bound is not None:
            key, shape = self._bound
            outside = np.any((coords < 0) | (coords >= np.asarray(shape)), axis=1)
            if outside.any():
                raise UlmError(f"{where} has {int(outside.sum())} sites outside its {key} {shape}")
        elif np.any(coords < 0):
            raise UlmError(f"{where} has negative coordinates")
        if not np.all(np.isfinite(feats)):
            raise UlmError(f"{where} holds non-finite feats")
        return coords, feats


# -------------------------------------------------------------------------------------- density
DENSITY_ATTRS = ("origin_um", "spacing_um", "factor", "method")


@dataclass
class Density:
    """An accumulated map on the ``factor`` x fine grid: ``density`` float32 (Z, X) or (Z, Y, X) and attrs
    ``origin_um``, ``spacing_um`` (array order, um), ``factor``, ``method``; ``blocks``, when the store
    holds them, the marked pixels of each time block (flat indices into ``density``), the map's parts."""

    density: np.ndarray
    attrs: dict
    blocks: list[np.ndarray] | None = None

    @property
    def dims(self) -> int:
        return self.density.ndim


def write_density(path: str | Path, density: np.ndarray, attrs: dict, blocks: list[np.ndarray] | None = None) -> None:
    """Write ``density/<method>.zarr`` atomically; ``density`` (Z, X) or (Z, Y, X); ``attrs`` must hold
    origin_um, spacing_um (array order, um), factor, method. ``blocks`` (optional): per time block, the
    flat indices of the pixels it marks (arrays ``block_sites`` and ``block_offsets``, so that a score can
    leave one block out). The store is also an OME-Zarr image of ``density`` (NGFF attr ``ome``) with
    coordinate arrays ``z``, [``y``,] ``x`` (um) for xarray."""
    missing = [k for k in DENSITY_ATTRS if k not in attrs]
    density = np.asarray(density, dtype=np.float32)
    if missing or density.ndim not in (2, 3) or any(len(attrs[k]) != density.ndim for k in ("origin_um", "spacing_um")):
        raise ValueError(f"density needs a 2-D or 3-D map and attrs {list(DENSITY_ATTRS)} with one value per axis")
    with _store(path, "density", attrs) as g:
        _put(g, "density", density, space_dims(density.ndim), chunk_rows=_image_chunk_rows(density.shape))
        put_coords(g, attrs["origin_um"], attrs["spacing_um"], density.shape)
        g.attrs["ome"] = ome_image(str(attrs["method"]), "density", attrs["origin_um"], attrs["spacing_um"])
        if blocks is not None:
            sizes = np.array([len(b) for b in blocks], np.int64)
            _put(g, "block_offsets", np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64), (BLOCK_EDGE,))
            sites = np.concatenate([np.zeros(0, np.int64), *[np.asarray(b, np.int64) for b in blocks]])
            _put(g, "block_sites", sites, (SITE,))


def read_density(path: str | Path) -> Density:
    """Read ``density/<method>.zarr`` (validated: float map of 2 or 3 axes, grid attrs)."""
    g = _open(path, "density", ("density",))
    arr, attrs = g["density"], g.attrs.asdict()
    missing = [k for k in DENSITY_ATTRS if k not in attrs]
    if arr.ndim not in (2, 3) or arr.dtype.kind != "f" or missing:
        raise UlmError(
            f"density store {path}: expected a float (Z, X) or (Z, Y, X) map with attrs {list(DENSITY_ATTRS)}; "
            f"got {arr.dtype} {arr.shape}, missing attrs {missing}"
        )
    blocks = None
    if "block_offsets" in g and "block_sites" in g:
        offsets, sites = g["block_offsets"][:], g["block_sites"][:]
        ordered = offsets.ndim == 1 and len(offsets) >= 1 and offsets[0] == 0 and np.all(np.diff(offsets) >= 0)
        inside = len(sites) == 0 or (sites.min() >= 0 and sites.max() < arr.size)
        if not (ordered and offsets[-1] == len(sites) and inside):
            raise UlmError(f"density store {path}: block_offsets / block_sites do not index the {arr.shape} map")
        blocks = [sites[a:b] for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
    density = arr[:]
    if not np.all(np.isfinite(density)):
        raise UlmError(f"density store {path}: the map holds {int(np.sum(~np.isfinite(density)))} non-finite pixels")
    return Density(density, attrs, blocks)

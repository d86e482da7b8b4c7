"""Torch datasets over the COO stores: sparse blocks for spconv, a dense view for the baseline, their
collation, and the split of a store's blocks into training and validation blocks in time.

Each block is one O(1) slice of the store (its rows between two ``block_offsets``). Stores are
opened lazily in each worker process, so a DataLoader with ``num_workers > 0`` works unchanged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset, Subset

from ulm.errors import UlmError
from ulm.imaging.blocks import cut, held_out_start, normalise
from ulm.store import CooStore, read_iq


class SparseBlocks(Dataset):
    """Block b of ``sparse.zarr`` (and of ``target.zarr`` when given) as tensors:
    ``coords`` (N, 1 + D) int32 (t, z, [y,] x), ``feats`` (N, 2) float32 (Re, Im),
    ``target`` (M, D) int32 fine-grid indices, ``origin`` (1 + D,) int64 iq index of the block."""

    def __init__(self, sparse_path: str | Path, target_path: str | Path | None = None):
        self.sparse_path, self.target_path = Path(sparse_path), target_path and Path(target_path)
        first = CooStore(self.sparse_path, "sparse")  # validate now, in the parent process
        if first._feats.shape[1] != 2 or "block_shape" not in first.attrs:
            raise UlmError(
                f"{self.sparse_path}: expected a sparse store with 2 feature channels (Re, Im) and attr block_shape, "
                f"got {first._feats.shape[1]} channels"
            )
        self.block_shape = tuple(first.attrs["block_shape"])
        self.origins = first.origin
        self._n = len(first)
        if self.target_path is not None:
            target = CooStore(self.target_path, "target")
            if len(target) != self._n or not np.array_equal(target.origin, first.origin):
                raise UlmError(f"{self.target_path} does not have the blocks of {self.sparse_path} (made from another iq.zarr?)")
            self.factor = int(target.attrs["factor"])
        self._stores: tuple | None = None

    def __len__(self) -> int:
        return self._n

    def _open(self) -> tuple:
        if self._stores is None:  # once per process
            target = CooStore(self.target_path, "target") if self.target_path is not None else None
            self._stores = (CooStore(self.sparse_path, "sparse"), target)
        return self._stores

    def __getitem__(self, b: int) -> dict:
        sparse, target = self._open()
        coords, feats = sparse.block(b)
        item = {
            "coords": torch.from_numpy(coords),
            "feats": torch.from_numpy(feats),
            "origin": torch.from_numpy(sparse.origin[b]),
        }
        if target is not None:
            item["target"] = torch.from_numpy(target.block(b)[0])
        return item


def collate_sparse(items: list[dict]) -> dict:
    """Concatenate blocks, prefixing each site with its batch index: ``indices`` (N, 2 + D) int32 =
    (batch, t, z, [y,] x) as spconv expects, ``features`` (N, 2); targets likewise (M, 1 + D)."""
    out = {
        "indices": torch.cat([_with_batch(it["coords"], b) for b, it in enumerate(items)]),
        "features": torch.cat([it["feats"] for it in items]),
        "origin": torch.stack([it["origin"] for it in items]),
        "batch_size": len(items),
    }
    if "target" in items[0]:
        out["target_indices"] = torch.cat([_with_batch(it["target"], b) for b, it in enumerate(items)])
    return out


def _with_batch(coords: torch.Tensor, b: int) -> torch.Tensor:
    return torch.cat([torch.full((len(coords), 1), b, dtype=torch.int32), coords.to(torch.int32)], dim=1)


def to_spconv(batch: dict, spatial_shape: tuple[int, ...]):
    """A ``spconv.pytorch.SparseConvTensor`` of a collated batch (spconv imported on demand)."""
    import spconv.pytorch as spconv

    return spconv.SparseConvTensor(batch["features"], batch["indices"], list(spatial_shape), batch["batch_size"])


class DenseBlocks(Dataset):
    """The same blocks read densely from ``iq.zarr``: (2, T, *tile) float32 (Re, Im), normalised like
    the sparse features (divided by sqrt of the block's maximum power)."""

    def __init__(self, iq_path: str | Path, sparse_path: str | Path):
        store = CooStore(sparse_path, "sparse")
        self.iq_path, self.origins, self.block_shape = Path(iq_path), store.origin, tuple(store.attrs["block_shape"])
        self._iq = None

    def __len__(self) -> int:
        return len(self.origins)

    def __getitem__(self, b: int) -> torch.Tensor:
        if self._iq is None:
            self._iq = read_iq(self.iq_path).iq
        origin = self.origins[b]
        t0 = int(origin[0])
        block = cut(self._iq[t0 : t0 + self.block_shape[0]], origin, self.block_shape, t0)
        _, scale = normalise(block)
        block = block / scale
        return torch.from_numpy(np.stack([block.real, block.imag]).astype(np.float32))


# ------------------------------------------------------------------------- training / validation
def as_paths(paths) -> list[Path]:
    """One path or a list of paths -> a list of paths."""
    return [Path(p) for p in ([paths] if isinstance(paths, str | Path) else paths)]


def open_training_data(sparse_paths, target_paths, val_fraction: float) -> tuple[list[SparseBlocks], Dataset, Dataset]:
    """Every store's blocks, split in time: the last ``val_fraction`` of each store validate."""
    stores = [SparseBlocks(s, t) for s, t in zip(as_paths(sparse_paths), as_paths(target_paths), strict=True)]
    shapes = {s.block_shape for s in stores}
    if len(shapes) > 1:
        raise UlmError(f"training stores with different block shapes {sorted(shapes)}: one network needs one block shape")
    train_parts, val_parts = [], []
    for i, data in enumerate(stores):
        starts = data.origins[:, 0]
        first_val = held_out_start(int(starts.max()) + data.block_shape[0], data.block_shape[0], val_fraction)
        train_idx, val_idx = np.flatnonzero(starts < first_val), np.flatnonzero(starts >= first_val)
        if len(train_idx) == 0 or len(val_idx) == 0:
            raise UlmError(f"{data.sparse_path}: {len(data)} blocks, too few to hold out the last {val_fraction:.0%} in time")
        train_parts.append(TaggedBlocks(Subset(data, train_idx.tolist()), i))
        val_parts.append(TaggedBlocks(Subset(data, val_idx.tolist()), i))
    return stores, ConcatDataset(train_parts), ConcatDataset(val_parts)


class TaggedBlocks(Dataset):
    """Adds the store and block index to each item (the dense baseline reads the same block from iq.zarr)."""

    def __init__(self, subset: Subset, store: int):
        self.subset, self.store = subset, store

    def __len__(self) -> int:
        return len(self.subset)

    def __getitem__(self, i: int) -> dict:
        return {**self.subset[i], "store": self.store, "block": self.subset.indices[i]}


def collate_tagged(items: list[dict]) -> dict:
    """:func:`collate_sparse` of :class:`TaggedBlocks` items, with their ``store`` and ``block`` (B,) indices."""
    return {
        **collate_sparse(items),
        "store": torch.tensor([it["store"] for it in items]),
        "block": torch.tensor([it["block"] for it in items]),
    }

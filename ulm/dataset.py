"""Torch datasets over the COO stores: sparse blocks for spconv, and a dense view for the baseline.

Each block is one O(1) slice of the store (its rows between two ``block_offsets``). Stores are
opened lazily in each worker process, so a DataLoader with ``num_workers > 0`` works unchanged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ulm.errors import UlmError
from ulm.sparse import cut, normalise
from ulm.store import CooStore, read_iq


class SparseBlocks(Dataset):
    """Block b of ``sparse.zarr`` (and of ``target.zarr`` when given) as tensors:
    ``coords`` (N, 1 + D) int32 (t, z, [y,] x), ``feats`` (N, 2) float32 (Re, Im),
    ``target`` (M, D) int32 fine-grid indices, ``origin`` (1 + D,) int64 iq index of the block."""

    def __init__(self, sparse_path: str | Path, target_path: str | Path | None = None):
        self.sparse_path, self.target_path = Path(sparse_path), target_path and Path(target_path)
        first = CooStore(self.sparse_path, "sparse")  # validate now, in the parent process
        if first._feats.shape[1] != 2 or "block_shape" not in first.attrs:
            raise UlmError(f"{self.sparse_path}: expected a sparse store with 2 feature channels (Re, Im) and attr block_shape, "
                           f"got {first._feats.shape[1]} channels")  # fmt: skip
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

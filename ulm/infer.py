"""`ulm infer`: run a trained network over every block of a sparse store and write ``pred.zarr``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ulm.errors import UlmError
from ulm.imaging import fine_grid
from ulm.nn.checkpoint import load_checkpoint, pick_device
from ulm.nn.data import DenseBlocks, SparseBlocks
from ulm.nn.loss import pad_to, prediction
from ulm.nn.spec import NetSpec
from ulm.progress import progress_log
from ulm.store import CooWriter


@torch.no_grad()
def predict(
    checkpoint: str | Path,
    sparse_path: str | Path,
    out_path: str | Path,
    device_name: str = "auto",
    iq_path: str | Path | None = None,
    progress: bool = True,
) -> None:
    """Write per-block probabilities on the ``factor`` x grid (sites with p > 0.5) as ``pred.zarr``."""
    device = pick_device(device_name)
    net, ckpt = load_checkpoint(checkpoint, device)
    spec: NetSpec = net.spec
    data = SparseBlocks(sparse_path)
    if len(data.block_shape) - 1 != spec.dims:
        raise UlmError(f"{sparse_path}: {len(data.block_shape) - 1}D blocks, but the checkpoint is a {spec.dims}D network")
    if data.block_shape[0] != ckpt["block_shape"][0]:  # fully convolutional in space, but the time pooling is fixed
        raise UlmError(
            f"{sparse_path}: blocks of {data.block_shape[0]} frames, but the network was trained on {ckpt['block_shape'][0]}"
            " (sparse.block_frames must match)"
        )
    padded = spec.pad_shape(data.block_shape)
    if ckpt["model_kind"] == "dense" and iq_path is None:
        raise UlmError("a dense network's checkpoint needs the iq.zarr the sparse store was made from (--iq)")
    dense = DenseBlocks(iq_path, sparse_path) if ckpt["model_kind"] == "dense" else None
    fine_block = np.array(data.block_shape[1:]) * spec.factor
    iq_grid = data._open()[0].attrs["iq"]
    origin, spacing = fine_grid(iq_grid["origin_um"], iq_grid["spacing_um"], spec.factor)
    attrs = {
        "factor": spec.factor,
        "origin_um": origin.tolist(),
        "spacing_um": spacing.tolist(),
        "checkpoint": str(checkpoint),
        "fine_block_shape": fine_block.tolist(),
        "threshold": 0.5,
    }
    with CooWriter(out_path, spec.dims, 1, attrs, kind="pred") as writer:
        for b in progress_log(range(len(data)), unit="block", desc="infer", enabled=progress):
            if dense is not None:
                x = pad_to(dense[b][None], padded).to(device)
            else:
                import spconv.pytorch as spconv

                item = data[b]
                idx = torch.cat([torch.zeros(len(item["coords"]), 1, dtype=torch.int32), item["coords"]], 1).to(device)
                x = spconv.SparseConvTensor(item["feats"].to(device), idx, list(padded), 1)
            sites, prob = prediction(net(x)[-1])
            coords = sites[:, 1:]
            inside = torch.all(coords < torch.as_tensor(fine_block, device=coords.device), dim=1)  # drop the padding
            writer.append(coords[inside].cpu().numpy(), prob[inside, None].cpu().numpy(), data.origins[b])

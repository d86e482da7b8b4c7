"""The learned sparsification mask's network (ground floor: the `ulm mask` stage trains it, `ulm sparsify`
applies it): a small dense CNN that predicts, frame by frame, where MBs are."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ulm.errors import UlmError
from ulm.imaging.blocks import normalise


class MaskNet(nn.Module):
    """Per-frame site classifier: (F, 2, *space) normalised (Re, Im) -> (F, *space) logits."""

    def __init__(self, dims: int, width: int = 16):
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        self.dims = dims
        self.body = nn.Sequential(
            conv(2, width, 3, padding=1), nn.ReLU(), conv(width, width, 3, padding=1), nn.ReLU(), conv(width, 1, 1)
        )

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.body(frames)[:, 0]


def frames_tensor(block: np.ndarray) -> torch.Tensor:
    """(F, *space) complex block -> (F, 2, *space) float32, normalised like the sparse features."""
    _, scale = normalise(block)
    block = block / scale
    return torch.from_numpy(np.stack([block.real, block.imag], axis=1).astype(np.float32))


def load_mask(path: str | Path) -> MaskNet:
    """The mask network saved by :func:`ulm.mask.train_mask`."""
    path = Path(path)
    if not path.is_file():
        raise UlmError(f"learned mask checkpoint {path}: not found (train it with `ulm mask`)")
    try:
        ckpt = torch.load(path, weights_only=True)  # tensors and numbers only: a crafted pickle cannot run code
        net = MaskNet(ckpt["dims"])
        net.load_state_dict(ckpt["model"])
    except Exception as exc:  # torch raises many types for a file that is not a checkpoint (or a cut one)
        raise UlmError(f"learned mask checkpoint {path}: unreadable ({type(exc).__name__})") from None
    return net.eval()


@torch.no_grad()
def mask_probability(net: MaskNet, block: np.ndarray) -> np.ndarray:
    """(F, *space) probability that each site holds a MB."""
    if block.ndim - 1 != net.dims:
        raise UlmError(f"learned mask is {net.dims}D but the iq blocks are {block.ndim - 1}D")
    return torch.sigmoid(net(frames_tensor(block))).numpy()

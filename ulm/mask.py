"""The learned sparsification mask: a small dense CNN that predicts, frame by frame, where MBs are.

Trained with a soft Dice loss on the training time blocks of an iq.zarr against the pixels of the
imaged ground-truth bubbles (and their neighbours); `ulm sparsify --set sparse.method=learned` then
keeps the sites whose predicted probability exceeds ``sparse.learned_threshold``.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ulm.errors import UlmError
from ulm.nn.loss import soft_dice
from ulm.sparse import held_out_start, imaged_bubble_sites, normalise
from ulm.store import TracksReader, atomic_path, read_iq


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


def truth_mask(sites: np.ndarray, shape: tuple[int, ...]) -> torch.Tensor:
    """(F, *space) float mask of the imaged MB pixels (t, *index) and their direct neighbours."""
    mask = np.zeros(shape, np.float32)
    dims = len(shape) - 1
    for axis in range(dims):
        for step in (-1, 0, 1):
            moved = sites.copy()
            moved[:, 1 + axis] += step
            inside = np.all((moved[:, 1:] >= 0) & (moved[:, 1:] < np.asarray(shape[1:])), axis=1)
            mask[tuple(moved[inside].T)] = 1.0
    return torch.from_numpy(mask)


def train_mask(
    iq_path: str | Path, tracks_path: str | Path, out_path: str | Path, cfg: dict, seed: int, val_fraction: float
) -> dict:
    """Fit the mask on the training time blocks (those before the held-out ones) and save it."""
    torch.manual_seed(seed)
    iq, tracks = read_iq(iq_path), TracksReader(tracks_path)
    frames = cfg["block_frames"]
    end = held_out_start(iq.iq.shape[0], frames, val_fraction)
    if end == 0:
        raise UlmError(f"{iq_path}: too few frames to train the learned mask outside the held-out blocks")
    net = MaskNet(iq.dims)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(cfg["learned_epochs"]):
        for t0 in range(0, end, frames):
            block = iq.iq[t0 : t0 + frames]
            x, y = frames_tensor(block), truth_mask(imaged_bubble_sites(tracks, iq, t0, t0 + frames), block.shape)
            for batch in torch.split(torch.arange(len(x)), 64):
                opt.zero_grad()
                loss = soft_dice(torch.sigmoid(net(x[batch])), y[batch], y[batch].sum(), eps=1.0)
                loss.backward()
                opt.step()
                losses.append(loss.item())
    with atomic_path(out_path) as tmp:
        torch.save({"dims": iq.dims, "model": net.state_dict(), "final_loss": float(np.mean(losses[-10:]))}, tmp)
    return {"first_loss": losses[0], "final_loss": float(np.mean(losses[-10:]))}


def load_mask(path: str | Path) -> MaskNet:
    """The mask network saved by :func:`train_mask`."""
    path = Path(path)
    if not path.is_file():
        raise UlmError(f"learned mask checkpoint {path}: not found (train it with `ulm mask`)")
    try:
        ckpt = torch.load(path, weights_only=True)  # tensors and numbers only: a crafted pickle cannot run code
        net = MaskNet(ckpt["dims"])
        net.load_state_dict(ckpt["model"])
    except (KeyError, RuntimeError, EOFError, ValueError, TypeError, pickle.UnpicklingError) as exc:
        raise UlmError(f"learned mask checkpoint {path}: unreadable ({type(exc).__name__})") from None
    return net.eval()


@torch.no_grad()
def mask_probability(net: MaskNet, block: np.ndarray) -> np.ndarray:
    """(F, *space) probability that each site holds a MB."""
    if block.ndim - 1 != net.dims:
        raise UlmError(f"learned mask is {net.dims}D but the iq blocks are {block.ndim - 1}D")
    return torch.sigmoid(net(frames_tensor(block))).numpy()

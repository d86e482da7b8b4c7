"""The learned sparsification mask: a small dense CNN that predicts, frame by frame, where MBs are.

Trained with a soft Dice loss on the training time blocks of an iq.zarr against the pixels of the
imaged ground-truth bubbles (and their neighbours); `ulm sparsify --set sparse.method=learned` then
keeps the sites whose predicted probability exceeds ``sparse.learned_threshold``. The network itself
is :mod:`ulm.nn.mask_net`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

import ulm
from ulm.errors import UlmError
from ulm.imaging import imaged_bubble_sites
from ulm.imaging.blocks import held_out_start
from ulm.nn.loss import soft_dice
from ulm.nn.mask_net import MaskNet, frames_tensor
from ulm.store import TracksReader, read_iq, save_torch


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
    final = float(np.mean(losses[-10:]))
    save_torch({"dims": iq.dims, "model": net.state_dict(), "final_loss": final, "ulm_version": ulm.__version__}, out_path)
    return {"first_loss": losses[0], "final_loss": final}

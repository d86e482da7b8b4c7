"""Dice losses of the network's levels against the ground truth, for sparse and dense outputs.

The ground truth of a batch is a set of (batch, *fine) sites on the 8x grid (time collapsed). A
level on a coarser grid (the classifiers of the high-resolution stages, 1x / 2x / 4x) is scored
against that set pooled to its grid, and its time bins are max-pooled first: a coarse site is
positive when a bubble passed it in the block (the reference scored each time bin against targets
at another temporal stride, a defect not copied here).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ulm.nn import dense_ops, sparse_ops
from ulm.nn.dense_ops import Dense
from ulm.nn.layers import Tensor
from ulm.nn.spec import N_HR_STAGES, NetSpec

SMOOTH = 0.001  # the reference's Dice smoothing


def level_scales(n_levels: int, phase: int = N_HR_STAGES) -> list[int]:
    """Downsampling of each output level from the 8x grid: [8, 4, 2, 1] with classifiers, [1] without; in
    a cascaded phase k < 3 the levels are the first k + 1 classifiers, [8, ..., 2^(3 - k)]."""
    classifiers = [2 ** (N_HR_STAGES - k) for k in range(N_HR_STAGES)]
    return classifiers[:n_levels] if phase < N_HR_STAGES else classifiers[: n_levels - 1] + [1]


def supervised_levels(spec: NetSpec, n_levels: int, phase: int) -> list[int]:
    """Levels in the loss: in a cascaded phase k < 3, the classifiers 0..k; in the full network every
    level with pruning or deep supervision (the classifiers are trained by their losses), else the output."""
    if phase < N_HR_STAGES:
        return list(range(n_levels))
    return list(range(n_levels)) if (spec.prune or spec.deep_supervision) else [n_levels - 1]


def dilate(target: torch.Tensor, fine_shape: tuple[int, ...]) -> torch.Tensor:
    """Target sites (M, 1 + d) dilated by a 3^d max filter (clipped to the grid): the first 2D phase's target."""
    d = target.shape[1] - 1
    offsets = torch.cartesian_prod(*[torch.arange(-1, 2)] * d).reshape(-1, d).to(target)
    sites = target[:, None, 1:] + offsets[None]
    sites = torch.cat([target[:, None, :1].expand(-1, len(offsets), 1), sites], dim=2).reshape(-1, d + 1)
    inside = torch.all((sites[:, 1:] >= 0) & (sites[:, 1:] < torch.as_tensor(fine_shape, device=sites.device)), dim=1)
    return torch.unique(sites[inside], dim=0)


def soft_dice(prob: torch.Tensor, hit: torch.Tensor, n_positive: int | torch.Tensor, eps: float = SMOOTH) -> torch.Tensor:
    """1 - (2 sum(p g) + eps) / (sum(p) + |G| + eps); sites absent from ``prob`` count as p = 0."""
    return 1.0 - (2.0 * (prob * hit).sum() + eps) / (prob.sum() + n_positive + eps)


def pooled_target(target: torch.Tensor, scale: int) -> torch.Tensor:
    """Unique target sites (M, 1 + d) on a grid ``scale`` x coarser."""
    return torch.unique(torch.cat([target[:, :1], target[:, 1:] // scale], dim=1), dim=0)


def level_loss(level: Tensor, target: torch.Tensor, scale: int) -> torch.Tensor:
    """Soft Dice of one level (one-channel logits, time max-pooled) against ``target`` pooled by ``scale``."""
    coarse = pooled_target(target, scale)
    if isinstance(level, Dense):
        logits, mask = dense_ops.spatial_max(level)
        prob = torch.sigmoid(logits)
        truth = torch.zeros_like(prob)
        truth[tuple(coarse.long().T)] = 1.0
        return soft_dice(prob, truth, len(coarse))
    sites, logits = sparse_ops.spatial_max(level)
    shape = tuple(int(n) for n in level.spatial_shape[1:])
    hit = torch.isin(sparse_ops.encode(sites, shape), sparse_ops.encode(coarse, shape)).to(logits.dtype)
    return soft_dice(torch.sigmoid(logits), hit, len(coarse))


def network_loss(
    levels: list[Tensor], target: torch.Tensor, spec: NetSpec, phase: int = N_HR_STAGES, dilated: bool = False
) -> torch.Tensor:
    """Mean Dice loss over the supervised levels; ``dilated``: the output's target dilated by 3^d."""
    scales = level_scales(len(levels), phase)
    losses = []
    for k in supervised_levels(spec, len(levels), phase):
        truth = target
        if dilated and scales[k] == 1:
            fine = levels[k].data.shape[3:] if isinstance(levels[k], Dense) else tuple(levels[k].spatial_shape[1:])
            truth = dilate(target, tuple(int(n) for n in fine))
        losses.append(level_loss(levels[k], truth, scales[k]))
    return torch.stack(losses).mean()


def prediction(level: Tensor, threshold: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Sites (M, 1 + d) where the output's probability exceeds ``threshold``, and those probabilities."""
    if isinstance(level, Dense):
        logits, _ = dense_ops.spatial_max(level)
        prob = torch.sigmoid(logits)
        sites = torch.nonzero(prob > threshold)
        return sites, prob[tuple(sites.T)]
    sites, logits = sparse_ops.spatial_max(level)
    prob = torch.sigmoid(logits)
    keep = prob > threshold
    return sites[keep], prob[keep]


def pad_to(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Zero-pad a (B, C, *S) block at the end of each axis to ``shape`` (NetSpec.pad_shape)."""
    return F.pad(x, [p for n, m in zip(reversed(x.shape[2:]), reversed(shape), strict=True) for p in (0, m - n)])

"""Targets at every scale and the (deep-supervision) Dice losses, for sparse and dense outputs."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ulm.nn.sparse_net import site_keys


def scale_shapes(space_shape: tuple[int, ...], n_up: int) -> list[tuple[int, ...]]:
    """Spatial grid shape at each output scale x1, x2, ..., x2^n_up of the (padded) input grid."""
    return [tuple(n * 2**k for n in space_shape) for k in range(n_up + 1)]


def pooled_target_keys(target_indices: torch.Tensor, space_shape: tuple[int, ...], n_up: int) -> list[torch.Tensor]:
    """Per scale, the unique site keys of the full-resolution target (b, *fine) pooled to that scale
    (a coarse site is positive when any of its fine sites is): the deep-supervision targets."""
    out = []
    for k, shape in enumerate(scale_shapes(space_shape, n_up)):
        down = 2 ** (n_up - k)
        pooled = torch.cat([target_indices[:, :1], target_indices[:, 1:] // down], dim=1)
        out.append(torch.unique(site_keys(pooled, shape)))
    return out


def dense_targets(target_indices: torch.Tensor, batch: int, space_shape: tuple[int, ...], n_up: int) -> list[torch.Tensor]:
    """Per scale, the dense binary target (B, *shape): the max-pooled full-resolution target."""
    fine_shape = scale_shapes(space_shape, n_up)[-1]
    fine = torch.zeros(batch, *fine_shape)
    fine[tuple(target_indices.long().T)] = 1.0
    pool = F.max_pool2d if len(space_shape) == 2 else F.max_pool3d
    return [pool(fine[:, None], 2 ** (n_up - k))[:, 0] if k < n_up else fine for k in range(n_up + 1)]


def soft_dice(prob: torch.Tensor, hit: torch.Tensor, n_positive: int | torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - (2 sum(p g) + eps) / (sum(p) + |G| + eps); sites absent from ``prob`` count as p = 0."""
    return 1.0 - (2.0 * (prob * hit).sum() + eps) / (prob.sum() + n_positive + eps)


def sparse_loss(outputs: list, target_keys: list[torch.Tensor], space_shape: tuple[int, ...], scales: list[int]) -> torch.Tensor:
    """Mean soft Dice over ``scales`` of the sparse network's per-scale (indices, logits)."""
    shapes = scale_shapes(space_shape, len(outputs) - 1)
    losses = []
    for k in scales:
        indices, logits = outputs[k]
        hit = torch.isin(site_keys(indices, shapes[k]), target_keys[k]).float()
        losses.append(soft_dice(torch.sigmoid(logits), hit, len(target_keys[k])))
    return torch.stack(losses).mean()


def dense_loss(outputs: list[torch.Tensor], targets: list[torch.Tensor], scales: list[int]) -> torch.Tensor:
    """Mean soft Dice over ``scales`` of the dense network's per-scale logits."""
    return torch.stack([soft_dice(torch.sigmoid(outputs[k]), targets[k], targets[k].sum()) for k in scales]).mean()


def supervised_scales(n_up: int, deep_supervision: bool, cascade_stage: int | None = None) -> list[int]:
    """Scales in the loss: all (deep supervision) or the finest; with cascaded training only those
    up to the current stage (scale by scale)."""
    scales = list(range(n_up + 1)) if deep_supervision else [n_up]
    if cascade_stage is not None:
        scales = [k for k in range(n_up + 1) if k <= cascade_stage] if deep_supervision else [min(cascade_stage, n_up)]
    return scales

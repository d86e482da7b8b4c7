"""The training protocol of the reference: phases, each with a fresh Adam and a MultiStepLR schedule.

2D (paper): 150 epochs at lr 0.1 with the 8x target dilated by 3 x 3, then 150 epochs restarted at
0.01 x the initial lr (1e-3), the same milestones (15, 45, 75, 100, 160, 200, 250; counted from each
phase's start, gamma 0.1) in both. 3D: 20 epochs at lr 0.05, milestones 15 and 17, one phase.
Cascaded (the reference's multiphase): first ``cascade_epochs`` epochs on each high-resolution stage
in turn (network phases 0, 1, 2: only the classifiers up to that stage are trained), then the phases
above. The reference multiplied the lr by 0.01 at every phase change, compounding over the cascade
(1e-9 by the end); here each main phase restarts from its own lr.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ulm.nn.spec import N_HR_STAGES, NetSpec


@dataclass(frozen=True)
class Phase:
    net_phase: int  # 0..N_HR_STAGES - 1: cascaded stage; N_HR_STAGES: the whole network
    epochs: int
    lr: float
    dilated: bool  # Dice against the 3^d-dilated 8x target


def phases(cfg: dict, spec: NetSpec) -> list[Phase]:
    """The phases of a training run from the `train` config section."""
    out = [Phase(k, cfg["cascade_epochs"], cfg["lr"], False) for k in range(N_HR_STAGES)] if spec.cascaded else []
    out.append(Phase(N_HR_STAGES, cfg["epochs"], cfg["lr"], cfg["dilate_first_phase"]))
    if cfg["phase2_epochs"]:
        out.append(Phase(N_HR_STAGES, cfg["phase2_epochs"], cfg["lr"] * cfg["phase2_lr_factor"], False))
    return out


def locate(plan: list[Phase], epoch: int) -> tuple[int, int]:
    """(phase index, 1-based epoch within it) of 1-based ``epoch``."""
    start = 0
    for i, phase in enumerate(plan):
        if epoch <= start + phase.epochs:
            return i, epoch - start
        start += phase.epochs
    raise ValueError(f"epoch {epoch} beyond the {start} epochs of the schedule")


def total_epochs(plan: list[Phase]) -> int:
    return sum(p.epochs for p in plan)


def lr_at(plan: list[Phase], milestones: list[int], gamma: float, epoch: int) -> float:
    """The learning rate of 1-based ``epoch`` (MultiStepLR: x gamma once the phase has run a milestone's epochs)."""
    i, e = locate(plan, epoch)
    return plan[i].lr * gamma ** sum(m < e for m in milestones)


def optimizer(params, phase: Phase, milestones: list[int], gamma: float):
    """A fresh Adam (weight decay 0) and its MultiStepLR for one phase, as the reference at every phase start."""
    opt = torch.optim.Adam(params, lr=phase.lr, weight_decay=0.0)
    return opt, torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=gamma)

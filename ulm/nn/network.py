"""The reference Deep-stULM sparse network (Rauby et al. 2024), on sparse tensors or on dense ones.

``ULMNet(spec)(x)`` with ``x`` a spconv ``SparseConvTensor`` (batch, t, *space) is the sparse network;
with a dense (B, 2, T, *space) tensor (or a :class:`Dense` with a site mask) it is its dense twin:
the same weights, the same state dict, dense torch convolutions.

The output is a list of one-channel logit tensors, coarse to fine: the classifiers on the inputs of
the three high-resolution stages (when the spec has them; 4 time bins, at 1x, 2x, 4x the input grid),
then the network's output on the 8x grid with time collapsed (one bin).
"""

from __future__ import annotations

import spconv.pytorch as spconv
import torch
from spconv.core import ConvAlgo
from torch import nn

from ulm.nn.dense_ops import Dense
from ulm.nn.layers import Tensor
from ulm.nn.sparse_ops import new
from ulm.nn.spec import N_HR_STAGES, SKIP_TIME_POOL, TRANSITION1_TIME_POOL, NetSpec
from ulm.nn.stages import DownTransition, HRTransition, InputTransition, OutputTransition, Transition, UpTransition


class ULMNet(nn.Module):
    def __init__(self, spec: NetSpec, algo: ConvAlgo | None = ConvAlgo.Native):
        super().__init__()
        self.spec = spec
        w, d = spec.width, spec.dims
        self.input = InputTransition(spec.in_channels, w, d + 1, algo)
        self.down1 = DownTransition(w, d, "down1", algo)
        self.down2 = DownTransition(2 * w, d, "down2", algo)
        self.up1 = UpTransition(4 * w, 4 * w, SKIP_TIME_POOL[0], d, "up1", algo)
        self.up2 = UpTransition(4 * w, 2 * w, SKIP_TIME_POOL[1], d, "up2", algo)
        self.transition1 = Transition(2 * w, w, TRANSITION1_TIME_POOL, d, "transition1", algo)
        keys = ["transition1"] + [f"hr{k}" for k in range(N_HR_STAGES)]
        threshold = spec.prune_threshold if spec.prune else None
        self.hr = nn.ModuleList(
            HRTransition(w, d, keys[k], keys[k + 1], algo, spec.classifiers, threshold) for k in range(N_HR_STAGES)
        )
        self.transition2 = Transition(w, w, None, d, "transition2", algo)
        self.output = OutputTransition(w, d, "transition2", algo)

    def forward(self, x: spconv.SparseConvTensor | Dense | torch.Tensor, phase: int | None = None) -> list[Tensor]:
        """Logits per level (see the module docstring). ``phase`` k < 3 (cascaded training) stops after
        the classifier of high-resolution stage k: only the first k + 1 levels are computed."""
        if isinstance(x, torch.Tensor):
            x = Dense(x)
        elif not isinstance(x, Dense):
            x = new(x, x.features, x.indices, x.spatial_shape)
        s32 = self.input(x)
        s16 = self.down1(s32)
        s8 = self.down2(s16)
        h = self.transition1(self.up2(self.up1(s8, s16), s32))
        levels = []
        for k, stage in enumerate(self.hr):
            logits = stage.classify(h)
            if logits is not None:
                levels.append(logits)
            if phase is not None and phase == k:
                return levels
            h = stage(h, logits)
        levels.append(self.output(self.transition2(h)))
        return levels


def n_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())

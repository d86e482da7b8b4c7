"""The stages of the network, one module each, in the order of the reference architecture.

Channels for base width w (16 in the reference); grids for a 512-frame, 32-px block (t, space):

| stage | does | channels | grid after |
|---|---|---|---|
| InputTransition | conv k5 + BN, + input repeated over channels, ELU | w | 512, 32 |
| DownTransition x2 | k1 conv (x2 channels) + BN + ELU, max-pool (4, 2), 3 LUConv + residual | 2w, 4w | 128, 16; 32, 8 |
| UpTransition 1 | transposed (1, 2) onto the skip's sites, conv k3, concat skip (time / 4), 3 LUConv + res. | 4w | 32, 16 |
| UpTransition 2 | the same, skip pooled in time by 16 | 2w | 32, 32 |
| Transition (1) | k1 conv + BN + ELU, max-pool time by 8, 2 LUConv + residual | w | 4, 32 |
| HRTransition x3 | [classifier k3, pruning], transposed (1, 2) + BN + ELU, 3 LUConv + residual | w | 4, 64 / 128 / 256 |
| Transition (2) | k1 conv + BN + ELU, max-pool all remaining time, 2 LUConv + residual | w | 1, 256 |
| OutputTransition | conv k3 (w/2) + BN + ELU, 2 LUConv, ELU, k1 conv -> 1 logit | 1 | 1, 256 |
"""

from __future__ import annotations

import torch
from spconv.core import ConvAlgo
from torch import nn

from ulm.nn.dense_ops import Dense
from ulm.nn.layers import (
    Conv,
    ConvNormELU,
    LUConvs,
    Norm,
    Pointwise,
    Tensor,
    Transposed,
    add,
    cat,
    elu,
    features,
    grid_shape,
    ops,
    values,
)
from ulm.nn.spec import DOWN_POOL, INPUT_KERNEL


def pool(x: Tensor, time: int | None, dims: int, space: int = 1) -> Tensor:
    """Max-pool time by ``time`` (None: all remaining bins) and space by ``space``."""
    t = grid_shape(x)[0] if time is None else time
    return ops(x).max_pool(x, (t, *[space] * dims))


class InputTransition(nn.Module):
    def __init__(self, cin: int, width: int, ndim: int, algo: ConvAlgo | None):
        super().__init__()
        self.conv = Conv(cin, width, INPUT_KERNEL, ndim, "input", algo)
        self.norm = Norm(width)
        self.repeat = width // cin

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm(self.conv(x))
        return elu(add(y, features(x, lambda f: f.repeat(1, self.repeat, *[1] * (f.ndim - 2)))))


class DownTransition(nn.Module):
    def __init__(self, cin: int, dims: int, key: str, algo: ConvAlgo | None):
        super().__init__()
        self.dims = dims
        self.expand = ConvNormELU(cin, 2 * cin, 1, dims + 1, key, algo)
        self.convs = LUConvs(2 * cin, 3, dims + 1, key, algo)

    def forward(self, x: Tensor) -> Tensor:
        return self.convs(pool(self.expand(x), DOWN_POOL[0], self.dims, DOWN_POOL[1]))


class UpTransition(nn.Module):
    def __init__(self, cin: int, cout: int, skip_time_pool: int, dims: int, key: str, algo: ConvAlgo | None):
        super().__init__()
        self.dims, self.skip_time_pool = dims, skip_time_pool
        self.up = Transposed(cin, cin, dims)
        self.conv = ConvNormELU(cin, cout // 2, 3, dims + 1, key, algo)
        self.convs = LUConvs(cout, 3, dims + 1, key, algo)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        skip = pool(skip, self.skip_time_pool, self.dims)
        return self.convs(cat(self.conv(self.up(x, like=skip)), skip))


class Transition(nn.Module):
    """Transition1 (``time_pool`` 8) and Transition2 (``time_pool`` None: all remaining bins)."""

    def __init__(self, cin: int, cout: int, time_pool: int | None, dims: int, key: str, algo: ConvAlgo | None):
        super().__init__()
        self.dims, self.time_pool = dims, time_pool
        self.reduce = ConvNormELU(cin, cout, 1, dims + 1, key, algo)
        self.convs = LUConvs(cout, 2, dims + 1, key, algo)

    def forward(self, x: Tensor) -> Tensor:
        return self.convs(pool(self.reduce(x), self.time_pool, self.dims))


class HRTransition(nn.Module):
    """One x2 high-resolution stage; with ``classifier``, a k3 classifier (with bias) on its input
    whose probability prunes the input sites when ``prune_threshold`` is set."""

    def __init__(
        self, width: int, dims: int, in_key: str, key: str, algo: ConvAlgo | None, classifier: bool, prune_threshold: float | None
    ):
        super().__init__()
        self.classifier = Conv(width, 1, 3, dims + 1, in_key, algo, bias=True) if classifier else None
        self.prune_threshold = prune_threshold
        self.up = Transposed(width, width, dims)
        self.norm = Norm(width)
        self.convs = LUConvs(width, 3, dims + 1, key, algo)

    def classify(self, x: Tensor) -> Tensor | None:
        """Logits (one channel) of the classifier on the input sites, or None without classifier."""
        return None if self.classifier is None else self.classifier(x)

    def forward(self, x: Tensor, logits: Tensor | None = None) -> Tensor:
        if self.prune_threshold is not None:
            prob = torch.sigmoid(values(logits).detach())
            prob = prob if isinstance(x, Dense) else prob[:, 0]
            x = ops(x).prune(x, prob, self.prune_threshold)
        return self.convs(elu(self.norm(self.up(x))))


class OutputTransition(nn.Module):
    def __init__(self, width: int, dims: int, key: str, algo: ConvAlgo | None):
        super().__init__()
        self.conv = ConvNormELU(width, width // 2, 3, dims + 1, key, algo)
        self.convs = LUConvs(width // 2, 2, dims + 1, key, algo, residual=False)
        self.out = Pointwise(width // 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(elu(self.convs(self.conv(x))))

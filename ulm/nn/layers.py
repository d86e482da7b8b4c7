"""Layers that hold the network's weights and run on either tensor kind.

Each layer takes a spconv ``SparseConvTensor`` (the sparse network) or a :class:`Dense` (its dense
twin) and dispatches on it; one set of weights, one state dict, two implementations. Same-size
convolutions are spconv submanifold convolutions (3D for 2D+t, 4D for 3D+t) whose index pairs are
shared by every layer on the same sites (``key``); their weights are read by the dense path too.
"""

from __future__ import annotations

import math

import spconv.pytorch as spconv
import torch
import torch.nn.functional as F
from spconv.core import ConvAlgo
from torch import nn

from ulm.nn import dense_ops, sparse_ops
from ulm.nn.dense_ops import Dense

Tensor = spconv.SparseConvTensor | Dense
SUBM = {3: spconv.SubMConv3d, 4: spconv.SubMConv4d}


def ops(x: Tensor):
    """The operations module of a tensor's kind."""
    return dense_ops if isinstance(x, Dense) else sparse_ops


def features(x: Tensor, fn) -> Tensor:
    """Apply ``fn`` to the values of every site (features (N, C) or data (B, C, ...))."""
    return x.with_data(fn(x.data)) if isinstance(x, Dense) else x.replace_feature(fn(x.features))


def values(x: Tensor) -> torch.Tensor:
    """The raw values: features (N, C) of a sparse tensor, data (B, C, T, *space) of a dense one."""
    return x.data if isinstance(x, Dense) else x.features


def grid_shape(x: Tensor) -> tuple[int, ...]:
    """(T, *space) of the grid the tensor lies on."""
    return tuple(int(n) for n in (x.data.shape[2:] if isinstance(x, Dense) else x.spatial_shape))


def elu(x: Tensor) -> Tensor:
    return features(x, F.elu)


def add(a: Tensor, b: Tensor) -> Tensor:
    """Sum of two tensors on the same sites (a residual connection)."""
    if isinstance(a, Dense):
        return a.with_data(a.data + b.data)
    if a.indices is not b.indices and not torch.equal(a.indices, b.indices):
        raise RuntimeError("residual between tensors on different sites")
    return a.replace_feature(a.features + b.features)


def cat(a: Tensor, b: Tensor) -> Tensor:
    """Channels of ``a`` then ``b`` on the same sites (a skip connection)."""
    if isinstance(a, Dense):
        return a.with_data(torch.cat([a.data, b.data], dim=1))
    if a.indices is not b.indices and not torch.equal(a.indices, b.indices):
        raise RuntimeError("skip connection between tensors on different sites")
    return a.replace_feature(torch.cat([a.features, b.features], dim=1))


class Conv(nn.Module):
    """Same-size convolution with kernel ``kernel`` over all ``ndim`` axes (t, *space); the optional bias
    is added here (spconv's fused bias does not run on CPU)."""

    def __init__(self, cin: int, cout: int, kernel: int, ndim: int, key: str, algo: ConvAlgo | None, bias: bool = False):
        super().__init__()
        kw = {} if algo is None else {"algo": algo}
        self.conv = SUBM[ndim](cin, cout, kernel, padding=kernel // 2, bias=False, indice_key=f"{key}_k{kernel}", **kw)
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        if isinstance(x, Dense):
            y = dense_ops.same_conv(x.data, self.conv.weight)
            return x.with_data(y if self.bias is None else y + self.bias.view(1, -1, *[1] * (y.ndim - 2)))
        y = self.conv(x)
        return y if self.bias is None else y.replace_feature(y.features + self.bias)


class Pointwise(nn.Module):
    """Kernel-1 convolution: the same (out, in) matrix at every site, no bias."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.linear = nn.Linear(cin, cout, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        if isinstance(x, Dense):
            return x.with_data(torch.einsum("bc...,oc->bo...", x.data, self.linear.weight))
        return x.replace_feature(self.linear(x.features))


class Norm(nn.Module):
    """Batch norm over the sites of the batch (the dense twin: over every pixel)."""

    def __init__(self, channels: int):
        super().__init__()
        self.bn = nn.BatchNorm1d(channels)

    def forward(self, x: Tensor) -> Tensor:
        if isinstance(x, Dense):
            b, c = x.data.shape[:2]
            return x.with_data(self.bn(x.data.reshape(b, c, -1)).reshape(x.data.shape))
        return x.replace_feature(self.bn(x.features))


class ConvNormELU(nn.Sequential):
    """A convolution (same-size, or ``kernel=1`` pointwise) + batch norm + ELU."""

    def __init__(self, cin: int, cout: int, kernel: int, ndim: int, key: str, algo: ConvAlgo | None):
        conv = Pointwise(cin, cout) if kernel == 1 else Conv(cin, cout, kernel, ndim, key, algo)
        super().__init__(conv, Norm(cout))

    def forward(self, x: Tensor) -> Tensor:
        return elu(super().forward(x))


class LUConvs(nn.Module):
    """``n`` LUConv (conv k3 + BN + ELU) on the same sites; with ``residual``, then + input and ELU."""

    def __init__(self, channels: int, n: int, ndim: int, key: str, algo: ConvAlgo | None, residual: bool = True):
        super().__init__()
        self.convs = nn.ModuleList(ConvNormELU(channels, channels, 3, ndim, key, algo) for _ in range(n))
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        y = x
        for conv in self.convs:
            y = conv(y)
        return elu(add(y, x)) if self.residual else y


class Transposed(nn.Module):
    """Transposed convolution with kernel = stride = (1, 2, ..., 2): time kept, space doubled.
    ``like`` given: evaluated on its sites (the decoder); else every site spawns its children."""

    def __init__(self, cin: int, cout: int, dims: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cout, 1, *[2] * dims, cin))
        bound = 1 / math.sqrt(cin * 2**dims)
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x: Tensor, like: Tensor | None = None) -> Tensor:
        o = ops(x)
        return o.transpose_spawn(x, self.weight) if like is None else o.transpose_onto(x, self.weight, like)

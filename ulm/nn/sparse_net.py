"""The network on spconv sparse tensors: 3D convolutions for 2D+t, 4D convolutions for 3D+t."""

from __future__ import annotations

import spconv.pytorch as spconv
import torch
from spconv.core import ConvAlgo
from torch import nn

from ulm.nn.spec import Layer, NetSpec, layers

CONV = {
    ("subm", 2): spconv.SubMConv2d, ("subm", 3): spconv.SubMConv3d, ("subm", 4): spconv.SubMConv4d,
    ("head", 2): spconv.SubMConv2d, ("head", 3): spconv.SubMConv3d,
    ("down", 3): spconv.SparseConv3d, ("down", 4): spconv.SparseConv4d,
    ("inverse", 3): spconv.SparseInverseConv3d, ("inverse", 4): spconv.SparseInverseConv4d,
    ("up", 2): spconv.SparseConvTranspose2d, ("up", 3): spconv.SparseConvTranspose3d,
}  # fmt: skip


def _make(layer: Layer, algo: ConvAlgo | None) -> nn.Module:
    cls = CONV[(layer.kind, layer.ndim)]
    kw = {"bias": layer.kind == "head"}
    if algo is not None:
        kw["algo"] = algo
    if layer.kind == "subm":
        return cls(
            layer.cin,
            layer.cout,
            layer.kernel,
            padding=tuple(k // 2 for k in layer.kernel),
            indice_key=f"subm_{layer.sites}",
            **kw,
        )
    if layer.kind == "head":
        return cls(layer.cin, layer.cout, layer.kernel, **kw)
    if layer.kind == "down":
        return cls(layer.cin, layer.cout, layer.kernel, stride=layer.kernel, indice_key=layer.name, **kw)
    if layer.kind == "inverse":
        return cls(layer.cin, layer.cout, layer.kernel, indice_key=layer.pair, **kw)
    return cls(layer.cin, layer.cout, layer.kernel, stride=2, **kw)


def _cat(a: spconv.SparseConvTensor, b: spconv.SparseConvTensor) -> spconv.SparseConvTensor:
    """Concatenate features of two tensors on the same sites (an inverse conv restores them in order)."""
    if not torch.equal(a.indices, b.indices):
        raise RuntimeError("skip connection between tensors on different sites")
    return a.replace_feature(torch.cat([a.features, b.features], dim=1))


def pool_time(x: spconv.SparseConvTensor) -> spconv.SparseConvTensor:
    """Max over the time axis: sites (b, t, *space) -> (b, *space); features are >= 0 (after ReLU)."""
    keys, inverse = torch.unique(x.indices[:, [0, *range(2, x.indices.shape[1])]], dim=0, return_inverse=True)
    feats = x.features.new_zeros(len(keys), x.features.shape[1])
    feats = feats.scatter_reduce(0, inverse[:, None].expand(-1, feats.shape[1]), x.features, "amax", include_self=True)
    return spconv.SparseConvTensor(feats, keys.int(), list(x.spatial_shape[1:]), x.batch_size)


def site_keys(indices: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Unique int64 key of each (b, *space) site of a grid of spatial ``shape``."""
    key = indices[:, 0].long()
    for axis, n in enumerate(shape):
        key = key * n + indices[:, axis + 1].long()
    return key


def select(x: spconv.SparseConvTensor, keep: torch.Tensor) -> spconv.SparseConvTensor:
    return spconv.SparseConvTensor(x.features[keep], x.indices[keep], x.spatial_shape, x.batch_size)


class SparseULMNet(nn.Module):
    """Sparse super-resolution network. ``forward`` returns, per scale (x1, x2, x4, x8 of the input
    grid), the (indices (N, 1 + D), logits (N,)) of its classifier; the last one is the output."""

    def __init__(self, spec: NetSpec, algo: ConvAlgo | None = ConvAlgo.Native):
        super().__init__()
        self.spec = spec
        self.layers = nn.ModuleDict({layer.name: _make(layer, algo) for layer in layers(spec)})
        self.norms = nn.ModuleDict({layer.name: nn.BatchNorm1d(layer.cout) for layer in layers(spec) if layer.kind != "head"})

    def _conv_norm_relu(self, name: str, x: spconv.SparseConvTensor) -> spconv.SparseConvTensor:
        y = self.layers[name](x)
        return y.replace_feature(torch.relu(self.norms[name](y.features)))

    def forward(
        self, x: spconv.SparseConvTensor, target: list[torch.Tensor] | None = None
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``target``: per scale, the int64 site keys of the ground truth (kept through pruning in training)."""
        c = self._conv_norm_relu
        x0 = c("conv_e0", c("conv_in", x))
        x1 = c("conv_e1", c("down1", x0))
        x2 = c("conv_e2", c("down2", x1))
        u1 = c("conv_d1", _cat(c("up2", x2), x1))
        u0 = c("conv_d0", _cat(c("up1", u1), x0))
        s = pool_time(u0)
        outputs = []
        for k in range(self.spec.n_up + 1):
            logits = self.layers[f"cls{k}"](s).features[:, 0]
            outputs.append((s.indices, logits))
            if k == self.spec.n_up:
                break
            if self.spec.prune:
                keep = torch.sigmoid(logits.detach()) > self.spec.prune_threshold
                if target is not None:
                    keep |= torch.isin(site_keys(s.indices, tuple(s.spatial_shape)), target[k])
                if not keep.any():  # keep the most likely site rather than an empty tensor
                    keep[torch.argmax(logits)] = True
                s = select(s, keep)
            s = c(f"conv_u{k}", c(f"upconv{k}", s))
        return outputs

"""The same network with dense torch layers (the baseline of the memory study).

Weights have spconv's layout (out, *kernel, in) so a state dict is shared with SparseULMNet; on a
fully dense input both give the same output. Convolutions with 4 dimensions (3D+t) are built from
Conv3d over the temporal kernel taps; strided and transposed ones (kernel = stride) are block
reshapes and one einsum, in any dimension.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ulm.nn.spec import Layer, NetSpec, layers


class DenseConv(nn.Module):
    """One layer of the spec on dense (B, C, *S) tensors."""

    def __init__(self, layer: Layer):
        super().__init__()
        self.layer = layer
        self.weight = nn.Parameter(torch.empty(layer.cout, *layer.kernel, layer.cin))
        fan_in = layer.cin * math.prod(layer.kernel)
        nn.init.uniform_(self.weight, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))
        self.bias = nn.Parameter(torch.zeros(layer.cout)) if layer.kind == "head" else None

    def torch_weight(self) -> torch.Tensor:
        """(out, in, *kernel), the layout of torch convolutions."""
        n = self.layer.ndim
        return self.weight.permute(0, n + 1, *range(1, n + 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kind, w = self.layer.kind, self.torch_weight()
        if kind in ("subm", "head"):
            out = _same_conv(x, w)
        elif kind == "down":
            out = _block_conv(x, w)
        else:  # inverse or up: kernel = stride
            out = _block_transpose(x, w)
        return out if self.bias is None else out + self.bias.view(1, -1, *[1] * (out.ndim - 2))


def _same_conv(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Zero-padded 'same' convolution in 2, 3 or 4 dimensions."""
    k = w.shape[2:]
    if len(k) == 2:
        return F.conv2d(x, w, padding=[n // 2 for n in k])
    if len(k) == 3:
        return F.conv3d(x, w, padding=[n // 2 for n in k])
    b, c, t = x.shape[:3]  # 4D: sum of Conv3d over the temporal taps
    kt = k[0]
    xp = F.pad(x, (0, 0, 0, 0, 0, 0, kt // 2, kt // 2))
    out = 0
    for dt in range(kt):
        xs = xp[:, :, dt : dt + t].transpose(1, 2).reshape(b * t, c, *x.shape[3:])
        y = F.conv3d(xs, w[:, :, dt], padding=[n // 2 for n in k[1:]])
        out = out + y.reshape(b, t, -1, *y.shape[2:]).transpose(1, 2)
    return out


def _block_conv(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Convolution with kernel = stride: non-overlapping blocks, one einsum."""
    k = w.shape[2:]
    n = len(k)
    shape = [x.shape[0], x.shape[1]]
    for size, s in zip(x.shape[2:], k, strict=True):
        shape += [size // s, s]
    xb = x.reshape(shape)  # (B, C, n0, k0, n1, k1, ...)
    letters = "defghijk"[:n]
    kl = "pqrstuvw"[:n]
    spec = "bc" + "".join(a + b for a, b in zip(letters, kl, strict=True)) + ",oc" + kl + "->bo" + letters
    return torch.einsum(spec, xb, w)


def _block_transpose(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Transposed convolution with kernel = stride: every site spreads into its block."""
    k = w.shape[2:]
    n = len(k)
    letters = "defghijk"[:n]
    kl = "pqrstuvw"[:n]
    spec = "bc" + letters + ",co" + kl + "->bo" + "".join(a + b for a, b in zip(letters, kl, strict=True))
    # w is (out, in, *k) for this layer's cin -> cout mapping: read it as (in, out) for the transpose
    y = torch.einsum(spec, x, w.transpose(0, 1))
    return y.reshape(x.shape[0], w.shape[0], *[size * s for size, s in zip(x.shape[2:], k, strict=True)])


def pad_to(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Zero-pad a (B, C, *S) block at the end of each axis to ``shape`` (NetSpec.pad_shape)."""
    return F.pad(x, [p for n, m in zip(reversed(x.shape[2:]), reversed(shape), strict=True) for p in (0, m - n)])


class DenseULMNet(nn.Module):
    """Dense twin of SparseULMNet on (B, 2, T, *space) inputs; returns the per-scale logits
    (B, *space_scale) at x1, x2, x4 and x8. Pruning does not apply to dense tensors."""

    def __init__(self, spec: NetSpec):
        super().__init__()
        self.spec = spec
        self.layers = nn.ModuleDict({layer.name: DenseConv(layer) for layer in layers(spec)})
        self.norms = nn.ModuleDict({layer.name: nn.BatchNorm1d(layer.cout) for layer in layers(spec) if layer.kind != "head"})

    def _conv_norm_relu(self, name: str, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Convolution, batch norm over every site (the sparse twin normalises over its sites), ReLU, mask."""
        y = self.layers[name](x)
        b, c = y.shape[:2]
        y = torch.relu(self.norms[name](y.reshape(b, c, -1)).reshape(y.shape))
        return _mask(y, mask)

    def forward(self, x: torch.Tensor, sites: torch.Tensor | None = None) -> list[torch.Tensor]:
        """``sites`` (B, T, *space) bool, optional: emulate the sparse network densely by zeroing every
        activation outside the sites the sparse tensors would hold (then both agree at those sites)."""
        m0 = m1 = m2 = None
        if sites is not None:
            m0 = sites[:, None].to(x.dtype)
            m1 = _pool_mask(m0, self.spec.down_stride)
            m2 = _pool_mask(m1, self.spec.down_stride)
        c = self._conv_norm_relu
        x0 = c("conv_e0", c("conv_in", x, m0), m0)
        x1 = c("conv_e1", c("down1", x0, m1), m1)
        x2 = c("conv_e2", c("down2", x1, m2), m2)
        u1 = c("conv_d1", torch.cat([c("up2", x2, m1), x1], dim=1), m1)
        u0 = c("conv_d0", torch.cat([c("up1", u1, m0), x0], dim=1), m0)
        s = u0.amax(dim=2)  # pool the time axis
        ms = None if m0 is None else m0.amax(dim=2)
        outputs = []
        for k in range(self.spec.n_up + 1):
            outputs.append(self.layers[f"cls{k}"](s)[:, 0])
            if k < self.spec.n_up:
                ms = None if ms is None else F.interpolate(ms, scale_factor=2, mode="nearest")
                s = c(f"conv_u{k}", c(f"upconv{k}", s, ms), ms)
        return outputs


def _mask(x: torch.Tensor, m: torch.Tensor | None) -> torch.Tensor:
    return x if m is None else x * m


def _pool_mask(m: torch.Tensor, stride: tuple[int, ...]) -> torch.Tensor:
    """Sites of a strided (kernel = stride) convolution: blocks holding any input site."""
    b, c = m.shape[:2]
    blocks = m.reshape(b, c, *[v for n, s in zip(m.shape[2:], stride, strict=True) for v in (n // s, s)])
    return blocks.amax(dim=tuple(range(3, blocks.ndim, 2)))

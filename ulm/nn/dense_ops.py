"""The same operations on dense torch tensors (the dense twin of the memory study).

A :class:`Dense` is ``data`` (B, C, T, *space) with an optional site ``mask`` (B, 1, T, *space): with a
mask, every operation acts as its sparse counterpart would on the masked sites (zeros elsewhere), so
the dense network reproduces the sparse one at its sites. 4D convolutions (3D+t) are sums of Conv3d
over the temporal kernel taps; kernel = stride operations are block reshapes and one einsum.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Dense:
    data: torch.Tensor
    mask: torch.Tensor | None = None  # float 0/1, broadcast over channels

    def with_data(self, data: torch.Tensor) -> Dense:
        return Dense(data if self.mask is None else data * self.mask, self.mask)


def torch_weight(weight: torch.Tensor) -> torch.Tensor:
    """spconv's (out, *kernel, in) -> torch's (out, in, *kernel)."""
    n = weight.ndim - 2
    return weight.permute(0, n + 1, *range(1, n + 1))


def same_conv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Zero-padded 'same' convolution in 2, 3 or 4 dimensions; ``weight`` (out, *kernel, in)."""
    w = torch_weight(weight)
    k = w.shape[2:]
    if len(k) == 2:
        return F.conv2d(x, w, padding=[n // 2 for n in k])
    if len(k) == 3:
        return F.conv3d(x, w, padding=[n // 2 for n in k])
    b, c, t = x.shape[:3]  # 4D: a Conv3d per temporal tap, summed
    kt = k[0]
    xp = F.pad(x, (0, 0, 0, 0, 0, 0, kt // 2, kt // 2))
    out = 0
    for dt in range(kt):
        xs = xp[:, :, dt : dt + t].transpose(1, 2).reshape(b * t, c, *x.shape[3:])
        y = F.conv3d(xs, w[:, :, dt], padding=[n // 2 for n in k[1:]])
        out = out + y.reshape(b, t, -1, *y.shape[2:]).transpose(1, 2)
    return out


def _blocks(x: torch.Tensor, stride: tuple[int, ...]) -> torch.Tensor:
    """(B, C, *S) -> (B, C, S0 / s0, s0, S1 / s1, s1, ...)."""
    shape = list(x.shape[:2])
    for size, s in zip(x.shape[2:], stride, strict=True):
        shape += [size // s, s]
    return x.reshape(shape)


def max_pool(x: Dense, stride: tuple[int, ...]) -> Dense:
    """Max-pool with kernel = stride over (t, *space); with a mask, over the masked sites only."""
    inner = tuple(range(3, 2 + 2 * len(stride), 2))
    if x.mask is None:
        return Dense(_blocks(x.data, stride).amax(dim=inner))
    mask = _blocks(x.mask, stride).amax(dim=inner)
    data = _blocks(x.data.masked_fill(x.mask == 0, float("-inf")), stride).amax(dim=inner)
    return Dense(data.masked_fill(mask == 0, 0.0), mask)


def block_transpose(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Transposed convolution with kernel = stride: every site spreads into its block."""
    stride = weight.shape[1:-1]
    n = len(stride)
    sites, taps = "defghijk"[:n], "pqrstuvw"[:n]
    spec = "bc" + sites + ",o" + taps + "c->bo" + "".join(a + b for a, b in zip(sites, taps, strict=True))
    y = torch.einsum(spec, x, weight)
    return y.reshape(x.shape[0], weight.shape[0], *[size * s for size, s in zip(x.shape[2:], stride, strict=True)])


def transpose_onto(x: Dense, weight: torch.Tensor, like: Dense) -> Dense:
    return like.with_data(block_transpose(x.data, weight))


def transpose_spawn(x: Dense, weight: torch.Tensor) -> Dense:
    y = block_transpose(x.data, weight)
    if x.mask is None:
        return Dense(y)
    mask = x.mask
    for axis, s in enumerate(weight.shape[1:-1]):
        mask = mask.repeat_interleave(s, dim=2 + axis)
    return Dense(y * mask, mask)


def prune(x: Dense, prob: torch.Tensor, threshold: float) -> Dense:
    """Keep the sites whose probability (B, 1, T, *space) is above ``threshold`` (or the most likely)."""
    valid = torch.ones_like(prob, dtype=torch.bool) if x.mask is None else x.mask > 0
    keep = (prob > threshold) & valid
    if not keep.any():
        keep = (prob >= prob[valid].max()) & valid
    return Dense(x.data * keep, keep.to(x.data.dtype))


def spatial_max(x: Dense) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Max of a one-channel tensor over time: (B, *space) values and the (B, *space) site mask."""
    data = x.data[:, 0]
    if x.mask is None:
        return data.amax(dim=1), None
    mask = x.mask[:, 0].amax(dim=1)
    return data.masked_fill(x.mask[:, 0] == 0, float("-inf")).amax(dim=1).masked_fill(mask == 0, float("-inf")), mask

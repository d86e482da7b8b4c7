"""Operations of the network on spconv sparse tensors: indices (N, 1 + n) = (batch, t, *space), features (N, C).

Same-size convolutions are spconv's submanifold convolutions (in :mod:`ulm.nn.layers`); what is
here has kernel = stride and needs no neighbour search: max-pooling, the decoder's transposed
convolution onto the sites of its skip, and the high-resolution stages' transposed convolution that
spawns every site's 2^d children. All are plain torch indexing, so autograd handles them.
"""

from __future__ import annotations

import spconv.pytorch as spconv
import torch


def encode(indices: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """One int64 key per (batch, *coords) row on a grid of ``shape``; keys sort like the rows."""
    key = indices[:, 0].long()
    for axis, n in enumerate(shape):
        key = key * int(n) + indices[:, axis + 1].long()
    return key


def decode(key: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`encode`: (N, 1 + n) int32 indices."""
    cols = []
    for n in reversed(shape):
        cols.append(key % int(n))
        key = key // int(n)
    cols.append(key)
    return torch.stack(cols[::-1], dim=1).int()


def new(x: spconv.SparseConvTensor, features: torch.Tensor, indices: torch.Tensor, shape) -> spconv.SparseConvTensor:
    """A tensor on new sites (spconv silently misreads non-contiguous features or indices)."""
    return spconv.SparseConvTensor(features.contiguous(), indices.int().contiguous(), [int(n) for n in shape], x.batch_size)


def max_pool(x: spconv.SparseConvTensor, stride: tuple[int, ...]) -> spconv.SparseConvTensor:
    """Max-pool with kernel = ``stride`` (t, *space): a coarse site per block holding any site."""
    stride_t = torch.as_tensor(stride, device=x.indices.device)
    shape = tuple(int(n) // s for n, s in zip(x.spatial_shape, stride, strict=True))
    coarse = torch.cat([x.indices[:, :1].long(), x.indices[:, 1:].long() // stride_t], dim=1)
    keys, feats = _max_by_key(encode(coarse, shape), x.features)
    return new(x, feats, decode(keys, shape).to(x.indices.device), shape)


def _max_by_key(keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The unique ``keys`` (sorted) and, per key, the maximum of the rows of ``values`` (N, C) having it."""
    unique, inverse = torch.unique(keys, return_inverse=True)
    out = values.new_full((len(unique), values.shape[1]), float("-inf"))
    return unique, out.scatter_reduce(0, inverse[:, None].expand(-1, values.shape[1]), values, "amax", include_self=True)


def _offsets(stride: tuple[int, ...], device) -> torch.Tensor:
    """(K, n) every offset inside a kernel = stride block, in C order."""
    return torch.cartesian_prod(*[torch.arange(s, device=device) for s in stride]).reshape(-1, len(stride))


def _per_offset(features: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """(N, K, out) = each site's features through the weight (out, *kernel, in) of every kernel offset."""
    cout, cin = weight.shape[0], weight.shape[-1]
    return torch.einsum("nc,okc->nko", features, weight.reshape(cout, -1, cin))


def transpose_onto(x: spconv.SparseConvTensor, weight: torch.Tensor, like: spconv.SparseConvTensor) -> spconv.SparseConvTensor:
    """Transposed convolution with kernel = stride, evaluated on the sites of ``like`` (a finer tensor
    whose every site has its parent in ``x``): the decoder's upsampling onto its skip's sites."""
    stride = tuple(weight.shape[1:-1])
    stride_t = torch.as_tensor(stride, device=x.indices.device)
    child = like.indices.long()
    parent = torch.cat([child[:, :1], child[:, 1:] // stride_t], dim=1)
    shape = tuple(int(n) for n in x.spatial_shape)
    x_keys = encode(x.indices, shape)
    order = torch.argsort(x_keys)
    p_keys = encode(parent, shape)
    pos = torch.searchsorted(x_keys[order], p_keys).clamp(max=len(order) - 1)
    row = order[pos]
    if not torch.equal(x_keys[row], p_keys):
        raise RuntimeError("transposed convolution onto sites without a parent site")
    offset = encode(torch.cat([torch.zeros_like(child[:, :1]), child[:, 1:] % stride_t], dim=1), stride)
    out = _per_offset(x.features, weight)[row, offset]
    return new(like, out, like.indices, like.spatial_shape)


def transpose_spawn(x: spconv.SparseConvTensor, weight: torch.Tensor) -> spconv.SparseConvTensor:
    """Transposed convolution with kernel = stride that creates every child of every site (no finer
    sites exist yet): N sites -> N x prod(stride) sites, the grid x stride."""
    stride = tuple(weight.shape[1:-1])
    offsets = _offsets(stride, x.indices.device).int()
    stride_t = torch.as_tensor(stride, device=x.indices.device, dtype=torch.int32)
    coords = x.indices[:, None, 1:] * stride_t + offsets[None]
    batch = x.indices[:, None, :1].expand(-1, len(offsets), 1)
    indices = torch.cat([batch, coords], dim=2).reshape(-1, 1 + len(stride))
    feats = _per_offset(x.features, weight).reshape(-1, weight.shape[0])
    return new(x, feats, indices, [int(n) * s for n, s in zip(x.spatial_shape, stride, strict=True)])


def prune(x: spconv.SparseConvTensor, prob: torch.Tensor, threshold: float) -> spconv.SparseConvTensor:
    """Keep the sites whose probability (N,) is above ``threshold``, or the most likely one(s) when none is."""
    keep = prob > threshold
    if not keep.any():
        keep = prob >= prob.max()
    return new(x, x.features[keep], x.indices[keep], x.spatial_shape)


def spatial_max(x: spconv.SparseConvTensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Max of a one-channel tensor over time: (M, 1 + d) (batch, *space) indices and (M,) values."""
    shape = tuple(int(n) for n in x.spatial_shape[1:])
    sites = torch.cat([x.indices[:, :1], x.indices[:, 2:]], dim=1)
    keys, values = _max_by_key(encode(sites, shape), x.features[:, :1])
    return decode(keys, shape).to(x.indices.device), values[:, 0]

"""The networks: sparse == dense on dense input, gradients, pruning, deep-supervision targets, training."""

import math

import numpy as np
import pytest
import spconv.pytorch as spconv
import torch
import torch.nn.functional as F

from ulm.nn.dense_net import DenseConv, DenseULMNet
from ulm.nn.loss import dense_targets, pooled_target_keys, scale_shapes, soft_dice
from ulm.nn.sparse_net import SparseULMNet, pool_time, site_keys
from ulm.nn.spec import Layer, NetSpec, layers

SHAPES = {2: (16, 8, 8), 3: (16, 4, 4, 4)}


def sparse_input(x: torch.Tensor, mask: torch.Tensor | None = None) -> spconv.SparseConvTensor:
    """(1, C, *S) dense -> sparse tensor at ``mask`` (all sites by default)."""
    shape = x.shape[2:]
    mask = torch.ones(shape, dtype=torch.bool) if mask is None else mask
    idx = torch.nonzero(mask).int()
    feats = x[0].permute(*range(1, len(shape) + 1), 0)[mask]
    return spconv.SparseConvTensor(feats, torch.cat([torch.zeros(len(idx), 1, dtype=torch.int32), idx], 1), list(shape), 1)


def twin_nets(dims: int, **kw) -> tuple[SparseULMNet, DenseULMNet]:
    torch.manual_seed(0)
    spec = NetSpec(dims=dims, kernel=3, prune=False, **kw)
    sparse, dense = SparseULMNet(spec), DenseULMNet(spec)
    dense.load_state_dict(sparse.state_dict(), strict=True)  # one weight layout for both
    return sparse.eval(), dense.eval()  # batch norm with running statistics


@pytest.mark.parametrize("dims", [2, 3])
def test_sparse_and_dense_nets_agree_on_a_fully_dense_input(dims):
    sparse, dense = twin_nets(dims)
    x = torch.randn(1, 2, *SHAPES[dims])
    with torch.no_grad():
        for (indices, logits), full in zip(sparse(sparse_input(x)), dense(x), strict=True):
            assert len(logits) == full[0].numel()
            np.testing.assert_allclose(logits.numpy(), full[0][tuple(indices[:, 1:].long().T)].numpy(), atol=1e-4)


@pytest.mark.parametrize("dims", [2, 3])
def test_sparse_input_gives_the_dense_output_at_kept_sites(dims):
    sparse, dense = twin_nets(dims)
    gen = torch.Generator().manual_seed(1)
    mask = torch.rand(SHAPES[dims], generator=gen) < 0.15
    x = torch.randn(1, 2, *SHAPES[dims], generator=gen) * mask
    with torch.no_grad():
        for (indices, logits), full in zip(sparse(sparse_input(x, mask)), dense(x, sites=mask[None]), strict=True):
            np.testing.assert_allclose(logits.numpy(), full[0][tuple(indices[:, 1:].long().T)].numpy(), atol=1e-4)


@pytest.mark.parametrize(
    "layer",
    [
        Layer("same4d", "subm", 2, 3, (3, 3, 3, 3), 4),
        Layer("same3d", "subm", 2, 3, (3, 3, 3), 3),
        Layer("down4d", "down", 2, 3, (4, 2, 2, 2), 4),
        Layer("inverse3d", "inverse", 3, 2, (4, 2, 2), 3),
        Layer("up2d", "up", 2, 2, (2, 2), 2),
        Layer("head2d", "head", 2, 1, (1, 1), 2),
    ],
    ids=lambda layer: layer.name,
)
def test_custom_dense_layers_pass_gradient_check(layer):
    torch.manual_seed(0)
    conv = DenseConv(layer).double()
    size = {"down": 4, "inverse": 2, "up": 2}.get(layer.kind, 3)
    x = torch.randn(1, layer.cin, *[size if k > 1 or layer.kind != "down" else size for k in layer.kernel], dtype=torch.float64)
    if layer.kind == "down":
        x = torch.randn(1, layer.cin, *[2 * k for k in layer.kernel], dtype=torch.float64)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda inp, w: DenseConv.forward(_with_weight(conv, w), inp), (x, conv.weight))


def _with_weight(conv: DenseConv, w: torch.Tensor) -> DenseConv:
    conv.weight = torch.nn.Parameter(w) if not isinstance(w, torch.nn.Parameter) else w
    return conv


def test_four_d_same_convolution_matches_a_direct_sum():
    torch.manual_seed(0)
    conv = DenseConv(Layer("c", "subm", 1, 1, (3, 3, 3, 3), 4)).double()
    x = torch.randn(1, 1, 4, 3, 3, 3, dtype=torch.float64)
    w = conv.torch_weight()[0, 0]
    xp = F.pad(x[0, 0], (1, 1, 1, 1, 1, 1, 1, 1))
    direct = torch.zeros(4, 3, 3, 3, dtype=torch.float64)
    for off in np.ndindex(3, 3, 3, 3):
        direct += w[off] * xp[off[0] : off[0] + 4, off[1] : off[1] + 3, off[2] : off[2] + 3, off[3] : off[3] + 3]
    torch.testing.assert_close(conv(x)[0, 0], direct)


def test_time_pooling_and_dice_pass_gradient_check():
    idx = torch.tensor([[0, 0, 1, 1], [0, 3, 1, 1], [0, 2, 0, 1]], dtype=torch.int32)
    feats = torch.rand(3, 2, dtype=torch.float64, requires_grad=True)

    def pooled(f):
        return pool_time(spconv.SparseConvTensor(f, idx, [4, 2, 2], 1)).features

    assert torch.autograd.gradcheck(pooled, (feats,))
    assert pooled(feats.detach()).shape == (2, 2)
    p = torch.rand(5, dtype=torch.float64, requires_grad=True)
    hit = torch.tensor([1.0, 0, 1, 0, 0], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda q: soft_dice(q, hit, 3), (p,))


@pytest.mark.parametrize("dims", [2, 3])
def test_deep_supervision_targets_are_the_pooled_full_resolution_target(dims):
    space = SHAPES[dims][1:]
    fine = scale_shapes(space, 3)[-1]
    gen = torch.Generator().manual_seed(2)
    target = torch.unique(
        torch.cat([torch.randint(0, 2, (40, 1), generator=gen), torch.randint(0, min(fine), (40, dims), generator=gen)], 1), dim=0
    )
    keys = pooled_target_keys(target, space, 3)
    dense = dense_targets(target, 2, space, 3)
    pool = F.max_pool2d if dims == 2 else F.max_pool3d
    full = dense[-1]
    for k, shape in enumerate(scale_shapes(space, 3)):
        expected = pool(full[:, None], 2 ** (3 - k))[:, 0]
        torch.testing.assert_close(dense[k], expected)
        coarse_sites = torch.nonzero(expected > 0).int()
        assert torch.equal(torch.sort(site_keys(coarse_sites, shape)).values, keys[k])


def test_pruning_keeps_exactly_the_sites_above_threshold_plus_ground_truth():
    torch.manual_seed(3)
    spec = NetSpec(dims=2, kernel=3, prune=True, prune_threshold=0.5)
    net = SparseULMNet(spec).eval()
    x = torch.randn(1, 2, *SHAPES[2])
    with torch.no_grad():  # centre the first classifier so that about half of its sites fall below 0.5
        net.layers["cls0"].bias -= torch.median(net(sparse_input(x))[0][1])
    space = SHAPES[2][1:]
    gt = torch.tensor([[0, 0, 0], [0, 63, 63], [0, 17, 40]], dtype=torch.int32)
    keys = pooled_target_keys(gt, space, 3)
    with torch.no_grad():
        outputs = net(sparse_input(x), target=keys)
    shapes = scale_shapes(space, 3)
    for k in range(3):
        indices, logits = outputs[k]
        expected = (torch.sigmoid(logits) > 0.5) | torch.isin(site_keys(indices, shapes[k]), keys[k])
        children = outputs[k + 1][0]
        parents = torch.unique(torch.cat([children[:, :1], children[:, 1:] // 2], 1), dim=0)
        assert torch.equal(
            torch.sort(site_keys(parents, shapes[k])).values, torch.sort(site_keys(indices[expected], shapes[k])).values
        )
        if k == 0:
            assert expected.sum() < len(expected)  # something was pruned


def test_parameter_counts_match_the_paper_scale():
    counts = {
        (d, k): sum(math.prod(p.shape) for p in SparseULMNet(NetSpec(dims=d, kernel=k)).parameters())
        for d in (2, 3)
        for k in (3, 5)
    }
    print({f"{d}D+t kernel {k}": f"{n:,}" for (d, k), n in counts.items()})
    assert 0.9e6 < counts[(2, 5)] < 1.3e6  # paper: ~1.05 M
    assert counts[(3, 5)] > 2.5e6  # paper: ~3.1 M (4D kernels)
    assert len(layers(NetSpec())) == 10 + 3 * 3 + 1

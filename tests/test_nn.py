"""The reference network: parameter counts, sparse == dense twin, pruning, time bins, losses, bad sizes."""

import numpy as np
import pytest
import spconv.pytorch as spconv
import torch

from ulm.errors import UlmError
from ulm.nn import dense_ops, sparse_ops
from ulm.nn.dense_ops import Dense
from ulm.nn.layers import grid_shape
from ulm.nn.loss import dilate, level_loss, network_loss, prediction
from ulm.nn.network import ULMNet, n_parameters
from ulm.nn.spec import NetSpec

SHAPES = {2: (128, 8, 8), 3: (128, 4, 4, 4)}


def sparse_input(x: torch.Tensor, mask: torch.Tensor | None = None) -> spconv.SparseConvTensor:
    """(B, C, T, *S) dense -> sparse tensor at ``mask`` (B, T, *S) (all sites by default)."""
    mask = torch.ones(x.shape[:1] + x.shape[2:], dtype=torch.bool) if mask is None else mask
    idx = torch.nonzero(mask).int()
    feats = x.movedim(1, -1)[mask]
    return spconv.SparseConvTensor(feats, idx, list(x.shape[2:]), x.shape[0])


def at_sites(dense: Dense, sparse: spconv.SparseConvTensor) -> torch.Tensor:
    """The dense values (N, C) at the sparse tensor's sites."""
    idx = sparse.indices.long()
    return dense.data.movedim(1, -1)[tuple(idx.T)]


def twins(dims: int, seed: int = 0, **kw) -> ULMNet:
    torch.manual_seed(seed)
    return ULMNet(NetSpec(dims=dims, **kw))


def test_parameter_counts_are_the_reference_ones():
    assert n_parameters(ULMNet(NetSpec(dims=2))) == 1_054_424
    assert n_parameters(ULMNet(NetSpec(dims=3))) == 3_124_568
    # each classifier adds a k3 conv 16 -> 1 with bias
    assert n_parameters(ULMNet(NetSpec(dims=2, prune=True))) == 1_054_424 + 3 * (27 * 16 + 1)
    assert n_parameters(ULMNet(NetSpec(dims=3, deep_supervision=True))) == 3_124_568 + 3 * (81 * 16 + 1)


def test_one_state_dict_for_sparse_and_dense():
    net = twins(2, prune=True)
    other = ULMNet(NetSpec(dims=2, prune=True))
    other.load_state_dict(net.state_dict(), strict=True)
    with pytest.raises(RuntimeError):
        ULMNet(NetSpec(dims=2)).load_state_dict(net.state_dict(), strict=True)  # no classifiers


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_sparse_equals_dense_on_a_dense_input(dims, train):
    """Every site active: batch statistics are the same, so even in training mode both agree."""
    net = twins(dims, deep_supervision=True).train(train)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 2, *SHAPES[dims], generator=gen)
    with torch.no_grad():
        sparse_levels, dense_levels = net(sparse_input(x)), net(x)
    assert len(sparse_levels) == len(dense_levels) == 4
    for s, d in zip(sparse_levels, dense_levels, strict=True):
        assert len(s.features) == d.data[:, 0].numel()  # the sparse level holds every site
        np.testing.assert_allclose(s.features.numpy(), at_sites(d, s).numpy(), atol=1e-4)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("prune", [False, True])
def test_a_sparse_input_gives_the_dense_output_at_kept_sites(dims, prune):
    net = twins(dims, prune=prune).eval()  # running statistics: batch norm does not depend on the sites
    gen = torch.Generator().manual_seed(2)
    mask = torch.rand(1, *SHAPES[dims], generator=gen) < 0.1
    x = torch.randn(1, 2, *SHAPES[dims], generator=gen) * mask[:, None]
    with torch.no_grad():
        sparse_levels = net(sparse_input(x, mask))
        dense_levels = net(Dense(x, mask[:, None].float()))
    for s, d in zip(sparse_levels, dense_levels, strict=True):
        assert int(d.mask.sum()) == len(s.features)  # the same sites
        np.testing.assert_allclose(s.features.numpy(), at_sites(d, s).numpy(), atol=1e-4)


def test_pruning_keeps_exactly_the_sites_above_half_or_the_most_likely_one():
    idx = torch.tensor([[0, 0, 1, 1], [0, 0, 2, 3], [1, 0, 0, 0], [1, 0, 3, 3]], dtype=torch.int32)
    x = spconv.SparseConvTensor(torch.arange(8.0).reshape(4, 2), idx, [1, 4, 4], 2)
    kept = sparse_ops.prune(x, torch.tensor([0.2, 0.51, 0.5, 0.9]), 0.5)
    assert kept.indices.tolist() == [idx[1].tolist(), idx[3].tolist()]  # 0.5 itself is dropped
    kept = sparse_ops.prune(x, torch.tensor([0.2, 0.3, 0.1, 0.3]), 0.5)
    assert kept.indices.tolist() == [idx[1].tolist(), idx[3].tolist()]  # none above: the most likely (ties kept)
    dense = Dense(torch.ones(1, 2, 1, 2, 2))
    prob = torch.tensor([0.1, 0.7, 0.6, 0.2]).reshape(1, 1, 1, 2, 2)
    assert dense_ops.prune(dense, prob, 0.5).mask.flatten().tolist() == [0, 1, 1, 0]


def test_pruning_in_the_network_drops_the_classifiers_rejects():
    net = twins(2, prune=True).eval()
    with torch.no_grad():
        net.hr[0].classifier.bias.fill_(-1.0)  # most probabilities below 0.5
        x = torch.randn(1, 2, *SHAPES[2])
        levels = net(sparse_input(x))
    kept_parents = (torch.sigmoid(levels[0].features[:, 0]) > 0.5).sum()
    children = levels[1]  # the next classifier runs on the children of the kept sites
    assert len(children.features) == 4 * max(int(kept_parents), 1) < 4 * len(levels[0].features)


@pytest.mark.parametrize("dims,space", [(2, 8), (3, 4)])
def test_time_has_four_bins_at_every_high_resolution_stage(dims, space):
    net = twins(dims).eval()
    shapes = []
    for stage in net.hr:
        stage.register_forward_hook(lambda mod, inp, out: shapes.append((grid_shape(inp[0]), grid_shape(out), out.indices)))
    gen = torch.Generator().manual_seed(3)
    mask = torch.rand(1, 512, *[space] * dims, generator=gen) < 0.02
    x = torch.randn(1, 2, 512, *[space] * dims, generator=gen)
    with torch.no_grad():
        out = net(sparse_input(x, mask))[-1]
    assert [(s_in[0], s_out[0]) for s_in, s_out, _ in shapes] == [(4, 4)] * 3
    assert [s_out[1:] for _, s_out, _ in shapes] == [(space * 2**k,) * dims for k in (1, 2, 3)]
    assert all(set(idx[:, 1].tolist()) <= {0, 1, 2, 3} for _, _, idx in shapes)
    assert grid_shape(out) == (1, *[8 * space] * dims)  # time collapsed at the output, on the 8x grid


def test_blocks_the_network_cannot_take_fail_with_one_clear_error():
    spec = NetSpec(dims=2)
    assert spec.pad_shape((512, 30, 32)) == (512, 32, 32)
    with pytest.raises(UlmError, match="multiple of 128"):
        spec.pad_shape((100, 32, 32))
    with pytest.raises(UlmError, match="2D\\+t"):
        spec.pad_shape((512, 32, 32, 32))
    with pytest.raises(UlmError, match="width"):
        NetSpec(width=7)


def test_kernel_equals_stride_operations_pass_gradient_checks():
    gen = torch.Generator().manual_seed(4)
    idx = torch.tensor([[0, 0, 1, 1], [0, 3, 1, 0], [0, 2, 0, 1], [0, 1, 2, 3]], dtype=torch.int32)
    feats = torch.randn(4, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    weight = torch.randn(2, 1, 2, 2, 3, dtype=torch.float64, generator=gen, requires_grad=True)

    def pooled(f):
        return sparse_ops.max_pool(spconv.SparseConvTensor(f, idx, [4, 4, 4], 1), (4, 2, 2)).features

    def spawned(f, w):
        return sparse_ops.transpose_spawn(spconv.SparseConvTensor(f, idx, [4, 4, 4], 1), w).features

    assert torch.autograd.gradcheck(pooled, (feats,))
    assert torch.autograd.gradcheck(spawned, (feats, weight))
    assert pooled(feats.detach()).shape == (2, 3)  # (t, z, x) // (4, 2, 2): three sites in block (0, 0, 0), one in (0, 1, 1)


def test_transposed_convolution_onto_the_skip_sites_matches_the_dense_one():
    gen = torch.Generator().manual_seed(5)
    coarse = Dense(torch.randn(1, 3, 2, 2, 2, generator=gen))
    weight = torch.randn(4, 1, 2, 2, 3, generator=gen)
    fine_mask = torch.rand(1, 1, 2, 4, 4, generator=gen) < 0.5
    like = Dense(torch.zeros(1, 1, 2, 4, 4), fine_mask.float())
    dense = dense_ops.transpose_onto(coarse, weight, like)
    sparse_like = sparse_input(like.data, fine_mask[:, 0])
    sparse = sparse_ops.transpose_onto(sparse_input(coarse.data), weight, sparse_like)
    torch.testing.assert_close(sparse.features, at_sites(dense, sparse_like))


def test_dilated_target_is_the_three_by_three_neighbourhood_clipped_to_the_grid():
    target = torch.tensor([[0, 0, 0], [1, 5, 5]])
    sites = dilate(target, (8, 8))
    assert len(sites) == 4 + 9
    assert {tuple(s) for s in sites.tolist()} >= {(0, 1, 1), (1, 4, 6), (1, 6, 4)}


def test_losses_and_predictions_agree_between_sparse_and_dense():
    net = twins(2, deep_supervision=True).eval()
    x = torch.randn(1, 2, *SHAPES[2])
    target = torch.tensor([[0, 3, 4], [0, 40, 41], [0, 63, 0]])
    with torch.no_grad():
        sparse_levels, dense_levels = net(sparse_input(x)), net(x)
    for s, d, scale in zip(sparse_levels, dense_levels, [8, 4, 2, 1], strict=True):
        torch.testing.assert_close(level_loss(s, target, scale), level_loss(d, target, scale))
    torch.testing.assert_close(network_loss(sparse_levels, target, net.spec), network_loss(dense_levels, target, net.spec))
    (sp_sites, sp_prob), (d_sites, d_prob) = prediction(sparse_levels[-1], 0.3), prediction(dense_levels[-1], 0.3)
    assert torch.equal(sp_sites.long(), d_sites.long())
    torch.testing.assert_close(sp_prob, d_prob)


def test_a_perfect_output_has_zero_loss():
    target = torch.tensor([[0, 1, 2], [0, 5, 5]])
    logits = torch.full((1, 1, 1, 8, 8), -50.0)
    logits[0, 0, 0, 1, 2] = logits[0, 0, 0, 5, 5] = 50.0
    assert float(level_loss(Dense(logits), target, 1)) < 1e-6
    assert float(level_loss(Dense(-logits), target, 1)) > 0.99


def test_each_level_is_scored_on_its_own_grid():
    """The headline network's one level is the 8x output (scale 1), not a classifier: a perfect output has no
    loss in the full network, while a cascaded phase scores its first classifiers at 8, 4, 2."""
    from ulm.nn.loss import level_scales
    from ulm.nn.spec import NetSpec

    assert level_scales(1) == [1] and level_scales(4) == [8, 4, 2, 1]
    assert level_scales(1, phase=0) == [8] and level_scales(3, phase=2) == [8, 4, 2]
    target = torch.tensor([[0, 1, 2], [0, 5, 5]])
    logits = torch.full((1, 1, 1, 8, 8), -50.0)
    logits[0, 0, 0, 1, 2] = logits[0, 0, 0, 5, 5] = 50.0
    headline = NetSpec(dims=2)
    assert float(network_loss([Dense(logits)], target, headline)) < 1e-6
    assert float(network_loss([Dense(-logits)], target, headline)) > 0.99

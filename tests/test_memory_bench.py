"""benchmarks/memory.py: its peak measurement, synthetic inputs, Equation-1 site counts and dense fit (no speed test)."""

import functools
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

ENV = dict(os.environ)
import memory  # noqa: E402

os.environ.clear()  # the benchmark sets OMP_WAIT_POLICY and KINETO_LOG_LEVEL for itself: keep them out of other tests
os.environ.update(ENV)

from ulm.config import load_config  # noqa: E402
from ulm.forward.geometry import make_probe  # noqa: E402
from ulm.nn.network import ULMNet  # noqa: E402
from ulm.nn.spec import NetSpec  # noqa: E402


@functools.cache
def layers(dims: int) -> list:
    return memory.headline_layers(dims)


def test_profiled_peak_of_known_allocations():
    def step():
        a = torch.ones(8_000_000)  # 32 MB
        b = torch.ones(4_000_000)  # 16 MB: peak 48 MB
        del a, b
        c = torch.ones(2_000_000)  # 8 MB, after both were freed
        del c

    assert memory.profiled_peak(step) == pytest.approx(48e6, rel=0.03)


def test_held_bytes_counts_shared_storage_once():
    x = torch.zeros(1000)
    assert memory.held_bytes([x, x[:10], torch.zeros(10, dtype=torch.int64)]) == 4000 + 80


@pytest.mark.parametrize("dims", [2, 3])
def test_synthetic_input_is_deterministic_with_the_requested_mb_count(dims):
    iq, pos = memory.simulate_iq(dims, 10, 128, 16)
    iq2, pos2 = memory.simulate_iq(dims, 10, 128, 16)
    np.testing.assert_array_equal(iq, iq2)
    np.testing.assert_array_equal(pos, pos2)
    n = max(1, round(10 * (16 / 32) ** dims))
    assert iq.shape == (128, *[16] * dims) and iq.dtype == np.complex64
    assert pos.shape == (128, n, dims)  # n MBs in every frame
    assert np.all((pos >= 0) & (pos < 16))
    step = np.linalg.norm(np.diff(pos, axis=0), axis=-1)
    moved = step[step < 1]  # a MB replaced at a random place jumps; the others move at 0.05-0.5 px per frame
    assert moved.min() >= 0.05 - 1e-9 and moved.max() <= 0.5 + 1e-9
    assert not np.array_equal(iq, memory.simulate_iq(dims, 10, 128, 16, seed=1)[0])


def test_blocks_have_the_paper_sparsity():
    iq, _ = memory.simulate_iq(2, 10, 128, 32)
    power = np.abs(iq) ** 2 / (np.abs(iq) ** 2).max()
    thr = memory.make_block(2, 10, "threshold", 128, 32)
    assert len(thr.indices) == int((power > 0.10).sum())
    idx = thr.indices[:, 1:].long().numpy()
    assert np.all(power[tuple(idx.T)] > 0.10)
    topk = memory.make_block(2, 10, "topk", 128, 32)
    assert len(topk.indices) == round(10_000 * 128 / 512)  # the paper's fraction of a 512 x 32^2 block
    assert topk.target.shape[1] == 3 and topk.target[:, 1:].max() < 8 * 32


@pytest.mark.parametrize("dims", [2, 3])
def test_eq1_counts_every_site_of_a_fully_dense_input(dims):
    block = memory.make_block(dims, 1, "all", 128, 4)
    counts = []
    for x in (block.sparse(), block.dense()):  # the sparse network, then its dense twin
        net = ULMNet(NetSpec(dims=dims))
        counter = memory.SiteCounter(net)
        with torch.no_grad():
            net(x)
        counts.append(counter.eq1())
    (e_sparse, e_grid), (e_dense_twin, e_dense_grid) = counts
    assert e_sparse == e_grid == e_dense_twin == e_dense_grid
    assert memory.eq1_headline(block, layers(dims)) == (e_grid, e_grid)


@pytest.mark.parametrize("dims", [2, 3])
def test_eq1_from_the_input_equals_the_forward_hooks(dims):
    block = memory.make_block(dims, 10, "threshold", 256 if dims == 2 else 128, 8)
    e, e_dense = memory.forward_count("headline", block).eq1()
    assert e < e_dense
    assert memory.eq1_headline(block, layers(dims)) == (e, e_dense)


@pytest.mark.parametrize("dims", [2, 3])
def test_dense_fit_reproduces_an_exact_law(dims):
    a, b, g = 5e7, 1800.0, 900.0
    sizes = [(128, 4), (256, 4), (128, 8), (256, 8), (512, 12)]
    peaks = {(T, S): a + b * T * S**dims + g * (8 * S) ** dims for T, S in sizes}
    np.testing.assert_allclose(memory.dense_fit(dims, peaks), [a, b, g], rtol=1e-6)
    assert memory.dense_predict(dims, np.array([a, b, g]), 512, 32) == pytest.approx(a + b * 512 * 32**dims + g * 256**dims)


@pytest.mark.parametrize("preset", ["paper-2d", "paper-3d"])
def test_psf_fwhm_is_the_presets_geometry(preset):
    cfg = load_config(ROOT / "workflow" / "presets" / f"{preset}.yaml")
    dims = cfg["dims"][0]
    probe = make_probe(cfg["probe"], dims, (0.0, 0.0))
    pixel_um = cfg["forward"]["spacing_wavelengths"] * probe.wavelength_um
    centre_depth_um = 16 * pixel_um  # a 32-px tile from the cortical surface (z = 0)
    fwhm = memory.PSF_FWHM_PX[dims]
    assert probe.lateral_fwhm_um(centre_depth_um) / pixel_um == pytest.approx(fwhm["lateral"], rel=0.02)
    assert probe.axial_fwhm_um / pixel_um == pytest.approx(fwhm["axial"], rel=0.02)

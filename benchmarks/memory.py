"""Peak memory of one training step of the sparse network and its dense twin (ulm.nn.network.ULMNet).

    python benchmarks/memory.py [--quick] [--dims 2 3] [--threads N] [--optimizer] [--json] [--out DIR] [--no-rss-check]

What is measured. One training step, batch 1: forward, ``network_loss`` (Dice over the supervised levels),
backward (and an Adam step with --optimizer), on a fresh ``ULMNet(NetSpec(dims))`` (spconv ConvAlgo.Native,
width 16): the headline network (no classifiers) and the pruning variant (``prune=True``: a classifier
before each high-resolution stage drops the sites with p <= 0.5, its losses added). Sparse: the input as
a spconv tensor of its active sites; dense: the same block densified, through the same class (dense twin).
The peak is the bytes held before the step (parameters, buffers, input, target) plus the maximum of the
running total of torch's allocator events during the step (torch.profiler, profile_memory), which is
what CUDA's max_memory_allocated would report; it counts every torch tensor (spconv's index pairs
included) but not memory outside torch's allocator (spconv's CPU hash tables, oneDNN scratch). The full
run cross-checks it on two configurations against the growth of the resident set (VmHWM) of the same
step in a fresh process (--no-rss-check skips that). MB = 10^6 bytes.

Inputs (synthetic, deterministic). A block of T frames x S^d pixels of complex IQ: MBs (c per frame in a
32^d tile, c x (S/32)^d in a smaller one, at least 1) move along smooth random paths (the direction a
random walk, speed log-uniform in 0.05-0.5 px/frame; one leaving the tile is replaced at a random place),
each imaged as a Gaussian PSF (amplitude 1, random phase that then rotates by 4 pi dz / lambda with its
axial motion) with the intensity FWHM of the presets' geometry (PSF_FWHM_PX), plus complex Gaussian
noise at -30 dB of a MB's peak power. The block is sparsified as ulm.sparse does: power Re^2 + Im^2
divided by the block's maximum, then threshold (tau 0.10 in 2D, 0.25 in 3D) or top-k (10k / 100k sites),
features IQ / sqrt(max power). Targets: the MB positions of every frame on the 8x grid. The paper's block
is 512 x 32^d, concentrations c = 1, 10, 30.

Headline (chosen before measuring): ratio_2d = dense / sparse peak at 512 x 32^2, threshold 0.10, c = 10;
ratio_3d at 512 x 32^3, threshold 0.25, c = 30; ratio_3d_pruned the same with the pruning variant (its
dense twin: the dense pruning network). Targets reported, not tuned for: 2D >= 2, 3D >= 100 (paper: 2, ~100).

Dense fit. peak ~ a + b V + g G, V = T S^d input voxels, G = (8 S)^d sites of the finest grid. The encoder,
decoder and the high-resolution stages all scale with V: the latter hold T/128 time bins of the
(8 S)^d grid, F = (T/128) (8 S)^d = V 8^d / 128 sites, proportional to V (so F cannot be a separate
regressor); Transition2 and the output stage run on the time-collapsed finest grid, G sites whatever T.
Dense 3D at 512 x 32^3 does not fit in memory (4 x 256^3 sites x 16 channels = 4.3 GB per activation),
so it comes from the fit on smaller blocks; one measured size is held out of the fit and predicted.

Sparse fit and Equation 1. Forward hooks on every layer that makes an activation (same-size and kernel-1
convolutions, batch norms, transposed convolutions) count its sites and channels; E = sum of sites x
channels over the layers is the Equation-1 count (memory of each layer ~ active sites x channels), and
E_dense the same over all sites of each layer's grid. The Eq. 1 ratio is E_dense / E_sparse. Sparse peak
~ a + k E, fitted on the smaller blocks and checked on the paper-size ones (measured).

Cost on 2 cores (this machine): --quick ~? min, peak resident ~? GB; full run ~? min, ~? GB.
With --json the last stdout line is one JSON object; --out DIR writes memory.csv, memory.png and memory.json
atomically. --kernel is accepted and ignored (the network's kernels are fixed now). Progress goes to stderr.
"""

from __future__ import annotations

import os

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # silence the profiler's per-run log lines (before importing torch)

import argparse  # noqa: E402
import csv  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import spconv.pytorch as spconv  # noqa: E402
import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from ulm.nn.layers import Conv, Norm, Pointwise, Transposed  # noqa: E402
from ulm.nn.loss import network_loss  # noqa: E402
from ulm.nn.network import ULMNet, n_parameters  # noqa: E402
from ulm.nn.spec import NetSpec  # noqa: E402
from ulm.sparse import keep_mask, normalise  # noqa: E402
from ulm.store import atomic_path  # noqa: E402

warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", message=".*is_fx_tracing.*")

MB = 1e6
PAPER_T, PAPER_S = 512, 32
CONCENTRATIONS = (1, 10, 30)  # MBs per frame in a 32^d tile
SPARSITY = {2: {"threshold": 0.10, "topk": 10_000}, 3: {"threshold": 0.25, "topk": 100_000}}
HEADLINE = {2: ("threshold", 10), 3: ("threshold", 30)}  # (input, c) of ratio_2d / ratio_3d, fixed before measuring
TARGET = {2: 2.0, 3: 100.0}
SPEED_PX = (0.05, 0.5)  # MB speed, px per frame, log-uniform
NOISE_DB = -30.0  # noise power relative to a MB's peak power
# Intensity FWHM of the PSF in pixels, from the presets' geometry (paper-2d / paper-3d keep the defaults of
# ulm/config.schema.yaml): 15.625 MHz, c = 1540 m/s (lambda = 98.6 um), pixel = 0.5 lambda (forward.spacing_wavelengths),
# receive f-number 1. ulm.forward.geometry.Probe: lateral FWHM = lambda x F# = 2.0 px; axial FWHM = 0.312 lambda / B
# with fractional bandwidth B = 0.67: 0.466 lambda = 0.93 px. Axis 0 of space is depth (axial).
PSF_FWHM_PX = {"axial": 0.93, "lateral": 2.0}
VARIANTS = {"headline": {}, "pruning": {"prune": True}}

# dense (T, S): fitted, held out (predicted by the fit and measured); sparse: (T, S) of the fit points, c, inputs
FULL = {
    2: {"dense": [(128, 8), (256, 8), (512, 8), (128, 16), (256, 16), (512, 16)], "held_out": (512, 32),
        "sparse_fit": [(128, 32), (256, 32)], "conc": CONCENTRATIONS},
    3: {"dense": [(128, 8), (256, 8), (128, 12), (256, 12), (128, 16)], "held_out": (256, 16),
        "sparse_fit": [(128, 32), (256, 32)], "conc": CONCENTRATIONS},
}  # fmt: skip
QUICK = {
    2: {"dense": [(128, 8), (256, 8), (128, 16), (256, 16)], "held_out": (512, 32), "sparse_fit": [(128, 32)], "conc": (10, 30)},
    3: {"dense": [(128, 4), (256, 4), (128, 8)], "held_out": (256, 8), "sparse_fit": [(128, 32)], "conc": (30,)},
}
# paper-size sparse inputs measured in --quick (the others come from the sparse fit)
QUICK_PAPER = {2: [("threshold", 10), ("threshold", 30), ("topk", 10), ("topk", 30)], 3: [("threshold", 30)]}
RSS_CHECK = [("dense", "headline", 2, PAPER_T, PAPER_S, "threshold", 10), ("sparse", "headline", 3, PAPER_T, PAPER_S, "threshold", 30)]


# ----------------------------------------------------------------------------- inputs


def simulate_iq(dims: int, c: int, T: int = PAPER_T, S: int = PAPER_S, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(T, S^d) complex64 IQ and the MB positions (T, n, d) in px; n = max(1, round(c (S / 32)^d)) in every frame."""
    rng = np.random.default_rng([seed, dims, c, T, S])
    n = max(1, round(c * (S / PAPER_S) ** dims))
    fwhm = np.array([PSF_FWHM_PX["axial"]] + [PSF_FWHM_PX["lateral"]] * (dims - 1))
    lo, hi = np.log(SPEED_PX)

    def unit(v: np.ndarray) -> np.ndarray:
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    pos, direction = rng.uniform(0, S, (n, dims)), unit(rng.normal(size=(n, dims)))
    speed, phase = np.exp(rng.uniform(lo, hi, n)), rng.uniform(0, 2 * np.pi, n)
    P, PH = np.empty((T, n, dims)), np.empty((T, n))
    for t in range(T):
        P[t], PH[t] = pos, phase
        direction = unit(direction + rng.normal(scale=0.1, size=direction.shape))  # smooth: small turns per frame
        new = pos + direction * speed[:, None]
        phase = phase + 4 * np.pi * 0.5 * (new[:, 0] - pos[:, 0])  # 4 pi dz / lambda, dz in px of lambda / 2
        pos = new
        out = np.any((pos < 0) | (pos >= S), axis=1)
        if out.any():  # a new MB at a random place
            k = int(out.sum())
            pos[out], direction[out] = rng.uniform(0, S, (k, dims)), unit(rng.normal(size=(k, dims)))
            speed[out], phase[out] = np.exp(rng.uniform(lo, hi, k)), rng.uniform(0, 2 * np.pi, k)
    offsets = np.stack(np.meshgrid(*[np.arange(-4, 5)] * dims, indexing="ij"), -1).reshape(-1, dims)  # +-4 px: < noise
    px = np.floor(P).astype(np.int64)[:, :, None, :] + offsets  # (T, n, K, d)
    amp = np.exp(-2 * np.log(2) * (((px + 0.5 - P[:, :, None]) / fwhm) ** 2).sum(-1))  # |amp|^2 has FWHM ``fwhm``
    inside = np.all((px >= 0) & (px < S), axis=-1)
    flat = np.broadcast_to(np.arange(T)[:, None, None], inside.shape)[inside]
    for axis in range(dims):
        flat = flat * S + px[..., axis][inside]
    value = (amp * np.exp(1j * PH[:, :, None]))[inside]
    size = T * S**dims
    iq = np.bincount(flat, value.real, size) + 1j * np.bincount(flat, value.imag, size)
    sigma = 10 ** (NOISE_DB / 20) / np.sqrt(2)
    iq = iq + sigma * (rng.standard_normal(size) + 1j * rng.standard_normal(size))
    return iq.astype(np.complex64).reshape(T, *[S] * dims), P


@dataclass
class Block:
    dims: int
    T: int
    S: int
    c: int
    method: str
    indices: torch.Tensor  # (N, 2 + d) int32 (batch, t, *space)
    features: torch.Tensor  # (N, 2) float32
    target: torch.Tensor  # (M, 1 + d) int64 (batch, *fine)

    @property
    def fraction(self) -> float:
        return len(self.indices) / (self.T * self.S**self.dims)

    def dense(self) -> torch.Tensor:
        x = torch.zeros(1, 2, self.T, *[self.S] * self.dims)
        x[(0, slice(None), *self.indices[:, 1:].long().T)] = self.features.T
        return x


def make_block(dims: int, c: int, method: str, T: int = PAPER_T, S: int = PAPER_S, seed: int = 0) -> Block:
    """The sparsified synthetic block (``method`` threshold / topk at the paper's level, or ``all``: every site)."""
    iq, pos = simulate_iq(dims, c, T, S, seed)
    power, scale = normalise(iq)
    mask = np.ones(iq.shape, bool) if method == "all" else keep_mask(power, method, SPARSITY[dims]["threshold"], SPARSITY[dims]["topk"])
    coords = np.argwhere(mask)
    values = iq[mask] / scale
    fine = np.unique(np.floor(pos.reshape(-1, dims) * 8).astype(np.int64), axis=0)
    return Block(
        dims, T, S, c, method,
        torch.from_numpy(np.column_stack([np.zeros(len(coords), np.int64), coords]).astype(np.int32)),
        torch.from_numpy(np.column_stack([values.real, values.imag]).astype(np.float32)),
        torch.from_numpy(np.column_stack([np.zeros(len(fine), np.int64), fine])),
    )  # fmt: skip


# ----------------------------------------------------------------------------- one step, its peak, its sites


def profiled_peak(step) -> int:
    """Maximum over the step of the running total of torch's CPU allocations (bytes above what was held before)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted(((e.start_ns(), -e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"))
    if not events:
        raise RuntimeError("the profiler recorded no memory events")
    return max(0, int(np.cumsum([-b for _, b in events]).max()))  # ties in time: allocations first (the higher peak)


def held_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        s = t.untyped_storage()
        if s.data_ptr() not in seen:
            seen.add(s.data_ptr())
            total += s.nbytes()
    return total


class SiteCounter:
    """Forward hooks on every activation-making layer: (stage, sites, grid sites, channels) of each output."""

    LAYERS = (Conv, Pointwise, Norm, Transposed)

    def __init__(self, net: torch.nn.Module):
        self.records: list[tuple[str, int, int, int]] = []
        self.handles = [m.register_forward_hook(self.hook(name.split(".")[0] + (name.split(".")[1] if name.startswith("hr") else "")))
                        for name, m in net.named_modules() if isinstance(m, self.LAYERS)]  # fmt: skip

    def hook(self, stage: str):
        def record(module, inputs, out) -> None:
            if isinstance(out, spconv.SparseConvTensor):
                n, ch = out.features.shape
                grid = out.batch_size * int(np.prod(out.spatial_shape))
            else:
                ch, grid = out.data.shape[1], out.data[:, 0].numel()
                n = grid if out.mask is None else int(out.mask.sum())
            self.records.append((stage, n, grid, ch))

        return record

    def remove(self) -> None:
        for h in self.handles:
            h.remove()

    def eq1(self) -> tuple[int, int]:
        """(E, E_dense): sum of sites x channels over the layers, active sites and every site of each grid."""
        return sum(n * ch for _, n, _, ch in self.records), sum(g * ch for _, _, g, ch in self.records)

    def stage_sites(self) -> dict[str, int]:
        """Sites at the output of each stage's last layer."""
        return {stage: n for stage, n, _, _ in self.records}


def measure(kind: str, variant: str, block: Block, optimizer: bool = False, seed: int = 0) -> dict:
    """One training step: peak bytes (held + step), seconds, Eq. 1 counts, sites per stage."""
    torch.manual_seed(seed)
    spec = NetSpec(dims=block.dims, **VARIANTS[variant])
    net = ULMNet(spec).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3) if optimizer else None
    if kind == "dense":
        inputs = [block.dense()]
    else:
        inputs = [block.features, block.indices]
    counter = SiteCounter(net)

    def step() -> None:
        x = inputs[0] if kind == "dense" else spconv.SparseConvTensor(block.features, block.indices, [block.T, *[block.S] * block.dims], 1)
        loss = network_loss(net(x), block.target, spec)
        loss.backward()
        if opt is not None:
            opt.step()

    held = held_bytes([*net.parameters(), *net.buffers(), *inputs, block.target])
    t0 = time.perf_counter()
    peak = held + profiled_peak(step)
    seconds = time.perf_counter() - t0
    counter.remove()
    e, e_dense = counter.eq1()
    del net, opt, inputs, step
    gc.collect()
    print(f"  {kind:6s} {variant:8s} {block.dims}D {block.T}x{block.S} {block.method:9s} c={block.c:2d}: {len(block.indices):8d} sites "
          f"({block.fraction:.4f}), {peak / MB:9.1f} MB, {seconds:6.1f} s", file=sys.stderr, flush=True)  # fmt: skip
    return {"peak": peak, "seconds": seconds, "eq1": e, "eq1_dense": e_dense, "stages": counter.stage_sites()}

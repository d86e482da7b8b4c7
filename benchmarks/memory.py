"""Peak memory of one training step of the sparse network and of its dense twin (ulm.nn.network.ULMNet).

    python benchmarks/memory.py [--quick] [--dims 2 3] [--threads N] [--optimizer] [--json] [--out DIR]

Measured: one training step, batch 1 (forward, ``network_loss``, backward; + Adam with --optimizer) of a fresh
``ULMNet(NetSpec(dims))`` (width 16, spconv ConvAlgo.Native): the headline network and the pruning variant
(``prune=True``: before each high-resolution stage a classifier drops the sites with p <= 0.5, losses added).
Sparse: the active sites as a spconv tensor; dense: the block densified, through the same class. Peak = bytes
held before the step (parameters, buffers, input, target) + the maximum of the running total of torch's
allocator events during the step (torch.profiler, profile_memory): what CUDA's max_memory_allocated reports.
It counts every torch tensor (spconv's index pairs too), not memory outside torch's allocator; checked once
against the resident-set growth (VmHWM) of the same step in a fresh process: dense 2D 512 x 32^2 1199 vs
1212 MB, sparse 3D 128 x 16^3 657 vs 659 MB (--no-rss-check is accepted, no effect). MB = 10^6 bytes.

Inputs (synthetic, deterministic): T frames x S^d px of complex IQ, c MBs per frame in a 32^d tile
(c (S/32)^d, at least 1, in a smaller one) on smooth random paths (direction a random walk, speed
log-uniform in 0.05-0.5 px/frame; one leaving is replaced at a random place), each a Gaussian PSF with the
presets' FWHM (PSF_FWHM_PX), amplitude 1 and a random phase turning by 4 pi dz / lambda as it moves, summed
coherently, + complex Gaussian noise at -30 dB of a MB's peak power. Sparsified as ulm.sparse does: power
Re^2 + Im^2 over the block's maximum, threshold (tau 0.10 in 2D, 0.25 in 3D) or top-k (10k / 100k sites per
512 x 32^d block, the same fraction of a smaller one). Targets: each frame's MB positions on the 8x grid.

Headline, fixed before measuring: ratio_2d = dense / sparse peak of the headline network at 512 x 32^2,
threshold 0.10, c = 10; ratio_3d at 512 x 32^3, threshold 0.25, c = 30; ratio_3d_pruned: that input with
the pruning variant and its dense twin. Reported, not tuned for: 2D >= 2, 3D >= 100 (the paper: 2, ~100).

Dense fit: peak ~ a + b V + g G, V = T S^d input voxels, G = (8 S)^d. The encoder and decoder scale with V;
the high-resolution stages hold F = (T/128) (8 S)^d = V 8^d / 128 sites, so they scale with V too (F and V
are one regressor); Transition2 and the output stage hold the time-collapsed finest grid, G sites for any
T. Dense 3D at 512 x 32^3 does not fit (4 x 256^3 sites x 16 channels = 4.3 GB per activation): its peak
is the fit of smaller blocks, checked on a larger measured block held out of the fit.

Equation 1: forward hooks on every layer that makes an activation (convolutions, batch norms, transposed
convolutions) count its sites x channels; E sums them over the layers, E_dense the same over every site of
each layer's grid; Eq. 1 predicts dense / sparse = E_dense / E. In the headline network E follows from the
input sites alone (pooled layers hold the distinct coarse sites, spawned ones every child): eq1_headline.
Sparse fit, per variant: peak ~ a + k E on smaller blocks, checked on the measured paper-size ones. A step
runs when BYTES_PER_E x E fits the budget (15 GB; --quick 1.5 GB), else the fit predicts it (a pruned
step's E then comes from a forward pass without gradients).

Cost on 2 cores: --quick 2.4-2.7 min, 2.4 GB resident; full run 17 min (21 with another job on the cores), 14.3 GB
resident (the sparse 3D steps on 100k sites).
--json: the last stdout line is one JSON object. --out DIR writes memory.csv, memory.png, memory.json
atomically. --kernel is accepted and ignored (the kernels are the architecture's). Progress: stderr.
"""

from __future__ import annotations

import os
import warnings

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # no profiler log lines per run (set before importing torch)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning threads slow spconv's small ops 10-50x on a busy machine
warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", message=".*is_fx_tracing.*")

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
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
from ulm.store import atomic_path, save_figure, write_csv  # noqa: E402

MB = 1e6
PAPER_T, PAPER_S = 512, 32
SPARSITY = {2: {"threshold": 0.10, "topk": 10_000}, 3: {"threshold": 0.25, "topk": 100_000}}
HEADLINE = {2: ("threshold", 10), 3: ("threshold", 30)}  # (input, c) of ratio_2d / ratio_3d, fixed before measuring
TARGET = {2: 2.0, 3: 100.0}
SPEED_PX = (0.05, 0.5)  # MB speed, px per frame, log-uniform
NOISE_DB = -30.0  # noise power relative to a MB's peak power
# PSF intensity FWHM in px from the presets' geometry (workflow/presets/paper-2d.yaml, paper-3d.yaml over the schema's probe
# defaults): 15.625 MHz at 1540 m/s (lambda 98.6 um), pixel 0.22 lambda (forward.spacing_wavelengths) = 21.7 um. As in
# ulm.forward.geometry.Probe: lateral = lambda F#, F# 1 for the 12.7 mm linear array, 1.08 for the 3.1 mm matrix array
# at the 32-px tile's centre depth (3.35 mm from its face); axial = 0.312 lambda / bandwidth 0.67 = 0.466 lambda.
PIXEL_WAVELENGTHS = 0.22
PSF_FWHM_PX = {d: {"axial": 0.466 / PIXEL_WAVELENGTHS, "lateral": fn / PIXEL_WAVELENGTHS} for d, fn in ((2, 1.0), (3, 1.08))}
VARIANTS = {"headline": {}, "pruning": {"prune": True}}
BYTES_PER_E = 13  # to check the budget: peak bytes per site x channel (measured 9-12.5)
BUDGET = {"full": 15e9, "quick": 1.5e9}
GRID = {  # dense (T, S) fitted and held out; sparse fit blocks (T, S), concentrations, inputs
    "full": {
        2: {
            "dense": [(128, 8), (256, 8), (512, 8), (128, 16), (256, 16), (512, 16)],
            "held_out": (512, 32),
            "sparse_fit": [(128, 32), (256, 32)],
            "conc": (1, 10, 30),
            "inputs": ("threshold", "topk"),
        },
        3: {
            "dense": [(128, 4), (256, 4), (128, 8), (256, 8), (128, 12)],
            "held_out": (128, 16),
            "sparse_fit": [(128, 16), (256, 16)],
            "conc": (1, 10, 30),
            "inputs": ("threshold", "topk"),
        },
    },
    "quick": {
        2: {
            "dense": [(128, 8), (256, 8), (128, 16), (512, 16)],
            "held_out": (512, 32),
            "sparse_fit": [(128, 32)],
            "conc": (10, 30),
            "inputs": ("threshold", "topk"),
        },
        3: {
            "dense": [(128, 4), (256, 4), (128, 8)],
            "held_out": (256, 8),
            "sparse_fit": [(128, 8), (128, 16), (256, 16)],
            "conc": (30,),
            "inputs": ("threshold",),
        },
    },
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- inputs


def simulate_iq(dims: int, c: int, T: int = PAPER_T, S: int = PAPER_S, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(T, S^d) complex64 IQ and the MB positions (T, n, d) in px, n = max(1, round(c (S / 32)^d)) MBs in every frame."""
    rng = np.random.default_rng([seed, dims, c, T, S])
    n = max(1, round(c * (S / PAPER_S) ** dims))
    fwhm = [PSF_FWHM_PX[dims]["axial"]] + [PSF_FWHM_PX[dims]["lateral"]] * (dims - 1)
    lo, hi = np.log(SPEED_PX)

    def unit(v: np.ndarray) -> np.ndarray:
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    pos, direction = rng.uniform(0, S, (n, dims)), unit(rng.normal(size=(n, dims)))
    speed, phase = np.exp(rng.uniform(lo, hi, n)), rng.uniform(0, 2 * np.pi, n)
    P, PH = np.empty((T, n, dims)), np.empty((T, n))
    for t in range(T):
        P[t], PH[t] = pos, phase
        direction = unit(direction + rng.normal(scale=0.1, size=direction.shape))  # small turns: smooth paths
        new = pos + direction * speed[:, None]
        phase = phase + 4 * np.pi * PIXEL_WAVELENGTHS * (new[:, 0] - pos[:, 0])  # 4 pi dz / lambda
        pos = new
        out = np.any((pos < 0) | (pos >= S), axis=1)
        if out.any():
            k = int(out.sum())
            pos[out], direction[out] = rng.uniform(0, S, (k, dims)), unit(rng.normal(size=(k, dims)))
            speed[out], phase[out] = np.exp(rng.uniform(lo, hi, k)), rng.uniform(0, 2 * np.pi, k)
    # a Gaussian PSF is separable: one profile (T, n, S) per axis at the pixel centres; |amplitude|^2 has FWHM ``fwhm``
    prof = [np.exp(-2 * np.log(2) * ((np.arange(S) + 0.5 - P[:, :, a, None]) / fwhm[a]) ** 2) for a in range(dims)]
    lateral = prof[1] if dims == 2 else (prof[1][:, :, :, None] * prof[2][:, :, None, :]).reshape(T, n, S * S)
    axial = (prof[0] * np.exp(1j * PH)[:, :, None]).astype(np.complex64)
    iq = np.matmul(axial.transpose(0, 2, 1), lateral.astype(np.complex64)).reshape(T, *[S] * dims)  # sum over the MBs
    noise = rng.standard_normal((2, *iq.shape), dtype=np.float32) * np.float32(10 ** (NOISE_DB / 20) / np.sqrt(2))
    return (iq + (noise[0] + 1j * noise[1])).astype(np.complex64), P


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

    def sparse(self) -> spconv.SparseConvTensor:
        return spconv.SparseConvTensor(self.features, self.indices, [self.T, *[self.S] * self.dims], 1)

    def dense(self) -> torch.Tensor:
        x = torch.zeros(1, 2, self.T, *[self.S] * self.dims)
        x[(0, slice(None), *self.indices[:, 1:].long().T)] = self.features.T
        return x


def make_block(dims: int, c: int, method: str, T: int = PAPER_T, S: int = PAPER_S, seed: int = 0) -> Block:
    """The sparsified synthetic block: ``threshold`` / ``topk`` at the paper's levels, or ``all`` sites."""
    iq, pos = simulate_iq(dims, c, T, S, seed)
    power, scale = normalise(iq)
    k = round(SPARSITY[dims]["topk"] * iq.size / (PAPER_T * PAPER_S**dims))
    mask = np.ones(iq.shape, bool) if method == "all" else keep_mask(power, method, SPARSITY[dims]["threshold"], k)
    coords, values = np.argwhere(mask), iq[mask] / scale
    fine = np.unique(np.floor(pos.reshape(-1, dims) * 8).astype(np.int64), axis=0)
    zero = np.zeros((1, 1), np.int64)
    return Block(
        dims,
        T,
        S,
        c,
        method,
        torch.from_numpy(np.hstack([zero.repeat(len(coords), 0), coords]).astype(np.int32)),
        torch.from_numpy(np.column_stack([values.real, values.imag]).astype(np.float32)),
        torch.from_numpy(np.hstack([zero.repeat(len(fine), 0), fine])),
    )


# ----------------------------------------------------------------------------- sites x channels (Equation 1)


class SiteCounter:
    """Forward hooks on the activation-making layers: (stage, active sites, grid shape, channels) of each output."""

    def __init__(self, net: torch.nn.Module):
        self.records: list[tuple[str, int, tuple[int, ...], int]] = []
        self.handles = [
            m.register_forward_hook(self.hook(name.split(".")[0] + (name.split(".")[1] if name[:3] == "hr." else "")))
            for name, m in net.named_modules()
            if isinstance(m, Conv | Pointwise | Norm | Transposed)
        ]

    def hook(self, stage: str):
        def record(module, inputs, out) -> None:
            if isinstance(out, spconv.SparseConvTensor):
                n, ch, shape = out.features.shape[0], out.features.shape[1], tuple(int(s) for s in out.spatial_shape)
            else:
                ch, shape = out.data.shape[1], tuple(out.data.shape[2:])
                n = int(np.prod(shape)) if out.mask is None else int(out.mask.sum())
            self.records.append((stage, n, shape, ch))

        return record

    def eq1(self) -> tuple[int, int]:
        """(E, E_dense): sum over the layers of active sites x channels, and of all grid sites x channels."""
        return sum(n * ch for _, n, _, ch in self.records), sum(int(np.prod(s)) * ch for _, _, s, ch in self.records)


def forward_count(variant: str, block: Block) -> SiteCounter:
    """The sites of a forward pass without gradients (a pruned network's sites depend on its classifiers)."""
    _, net, _ = make_step("sparse", variant, block)
    counter = SiteCounter(net)
    with torch.no_grad():
        net(block.sparse())
    return counter


def headline_layers(dims: int) -> list[tuple[int | None, float, int]]:
    """(time pooling, None: all frames; space scale; channels) of every hooked layer of the headline network."""
    T, S = 256, 4  # 2 time bins in the high-resolution stages: their grid tells from the time-collapsed one
    records = forward_count("headline", make_block(dims, 1, "all", T, S)).records
    return [(None if shape[0] == 1 else T // shape[0], shape[1] / S, ch) for _, _, shape, ch in records]


def eq1_headline(block: Block, layers: list) -> tuple[int, int]:
    """(E, E_dense) of the headline network from the input sites alone: a pooled layer holds the distinct coarse
    sites, a high-resolution one every child of its parents."""
    t, space = block.indices[:, 1].numpy().astype(np.int64), block.indices[:, 2:].numpy().astype(np.int64)
    sites, e, e_dense = {}, 0, 0
    for pool_t, scale, ch in layers:
        bins, down = 1 if pool_t is None else block.T // pool_t, max(1, round(1 / scale))
        if (bins, scale) not in sites:
            coarse = [t * bins // block.T] + [space[:, k] // down for k in range(block.dims)]
            keys = np.ravel_multi_index(coarse, [bins] + [block.S // down] * block.dims)
            sites[bins, scale] = len(np.unique(keys)) * max(1, round(scale)) ** block.dims
        e += sites[bins, scale] * ch
        e_dense += bins * round(scale * block.S) ** block.dims * ch
    return e, e_dense


# ----------------------------------------------------------------------------- one step and its peak


def make_step(kind: str, variant: str, block: Block, optimizer: bool = False, seed: int = 0):
    """(the training step as a closure, the network, the tensors held before the step)."""
    torch.manual_seed(seed)
    spec = NetSpec(dims=block.dims, **VARIANTS[variant])
    net = ULMNet(spec).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3) if optimizer else None
    held = [block.dense()] if kind == "dense" else [block.features, block.indices]

    def step() -> None:
        network_loss(net(held[0] if kind == "dense" else block.sparse()), block.target, spec).backward()
        if opt is not None:
            opt.step()

    return step, net, [*net.parameters(), *net.buffers(), *held, block.target]


def held_bytes(tensors) -> int:
    return sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}.values())


def profiled_peak(step) -> int:
    """Maximum over ``step`` of the running total of torch's CPU allocations, in bytes above those before it."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted((e.start_ns(), -e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    if not events:
        raise RuntimeError("the profiler recorded no memory events")
    return max(0, int(np.cumsum([-b for _, b in events]).max()))  # at the same time, allocations first (the higher peak)


def measure(kind: str, variant: str, block: Block, optimizer: bool = False) -> dict:
    """One training step: peak bytes (held + step), seconds, Eq. 1 counts, sites per stage."""
    step, net, tensors = make_step(kind, variant, block, optimizer)
    counter, held, t0 = SiteCounter(net), held_bytes(tensors), time.perf_counter()
    peak = held + profiled_peak(step)
    seconds = time.perf_counter() - t0
    del step, net, tensors
    gc.collect()
    log(
        f"  {kind:6s} {variant:8s} {block.dims}D {block.T}x{block.S:<2d} {block.method:9s} c={block.c:2d}: "
        f"{len(block.indices):7d} sites ({block.fraction:.4f}), {peak / MB:8.1f} MB, {seconds:5.1f} s"
    )
    e, e_dense = counter.eq1()
    stages = {stage: n for stage, n, _, _ in counter.records}  # sites at the last layer of each stage
    return {"peak": peak, "held": held, "seconds": seconds, "eq1": e, "eq1_dense": e_dense, "stages": stages}


# ----------------------------------------------------------------------------- fits and the study


def lstsq(columns: list, y) -> np.ndarray:
    """Least-squares coefficients of y ~ c0 + c1 x1 + ... (exact for an exact linear law)."""
    A = np.column_stack([np.ones(len(y)), *[np.asarray(c, float) for c in columns]])
    return np.linalg.lstsq(A, np.asarray(y, float), rcond=None)[0]


def dense_fit(dims: int, points: dict) -> np.ndarray:
    """(a, b, g) of peak ~ a + b V + g G over ``points`` {(T, S): peak}, V = T S^d, G = (8 S)^d."""
    T, S = np.array(list(points), float).T
    return lstsq([T * S**dims, (8 * S) ** dims], list(points.values()))


def dense_predict(dims: int, coef, T, S):
    return coef[0] + coef[1] * T * S**dims + coef[2] * (8 * S) ** dims


def dense_study(dims: int, grid: dict, optimizer: bool, points: list) -> dict:
    """Per variant: the dense fit, its held-out check and the paper-size peak (measured where measured)."""
    out, held_out = {}, grid["held_out"]
    for variant in VARIANTS:
        peaks = {}
        for T, S in [*grid["dense"], held_out]:
            m = measure("dense", variant, make_block(dims, 10, "threshold", T, S), optimizer)
            peaks[T, S] = m["peak"]
            points.append(
                dict(
                    dims=dims,
                    variant=variant,
                    model="dense",
                    input="dense",
                    T=T,
                    S=S,
                    active_sites=T * S**dims,
                    active_fraction=1.0,
                    eq1=m["eq1_dense"],
                    peak=m["peak"],
                    source="measured",
                    in_fit=held_out != (T, S),
                )
            )
        coef = dense_fit(dims, {k: v for k, v in peaks.items() if k != held_out})
        fit, predicted = float(dense_predict(dims, coef, PAPER_T, PAPER_S)), float(dense_predict(dims, coef, *held_out))
        out[variant] = dict(
            coef=list(coef),
            held_out=held_out,
            held_out_measured=peaks[held_out],
            held_out_predicted=predicted,
            held_out_error=predicted / peaks[held_out] - 1,
            paper_fit=fit,
            paper_measured=peaks.get((PAPER_T, PAPER_S)),
            paper=peaks.get((PAPER_T, PAPER_S), fit),
        )
    return out


def sparse_study(dims: int, grid: dict, budget: float, optimizer: bool, points: list) -> dict:
    """Sparse steps on the fit blocks and the paper-size ones (every input, concentration, variant); the fit a + k E."""
    layers, rows = headline_layers(dims), []
    for method in grid["inputs"]:
        for c in grid["conc"]:
            for T, S in [*grid["sparse_fit"], (PAPER_T, PAPER_S)]:
                block = make_block(dims, c, method, T, S)
                head = eq1_headline(block, layers)
                for variant in VARIANTS:
                    row = dict(
                        dims=dims,
                        variant=variant,
                        model="sparse",
                        input=method,
                        c=c,
                        T=T,
                        S=S,
                        active_sites=len(block.indices),
                        active_fraction=block.fraction,
                    )
                    e = head if variant == "headline" or BYTES_PER_E * head[0] <= budget else forward_count(variant, block).eq1()
                    if BYTES_PER_E * e[0] <= budget:
                        m = measure("sparse", variant, block, optimizer)
                        row.update(eq1=m["eq1"], eq1_dense=m["eq1_dense"], peak=m["peak"], source="measured", stages=m["stages"])
                    else:
                        log(f"  sparse {variant} {dims}D {T}x{S} {method} c={c}: ~{BYTES_PER_E * e[0] / MB:.0f} MB, too big")
                        row.update(eq1=e[0], eq1_dense=e[1], peak=None, source="fit")
                    rows.append({**row, "in_fit": row["source"] == "measured" and (T, S) != (PAPER_T, PAPER_S)})
    points += rows
    fits = {}
    for variant in VARIANTS:
        mine = [r for r in rows if r["variant"] == variant]
        fitted = [r for r in mine if r["in_fit"]]
        a, k = lstsq([[r["eq1"] for r in fitted]], [r["peak"] for r in fitted])
        for r in mine:
            r["predicted"] = a + k * r["eq1"]
            r["peak"] = r["peak"] or r["predicted"]
        checks = [r["predicted"] / r["peak"] - 1 for r in mine if r["source"] == "measured" and not r["in_fit"]]
        fits[variant] = {"a": a, "k_per_site_channel": k, "n_fit": len(fitted), "check_errors": checks}
    return fits


def study(dims: int, mode: str, optimizer: bool) -> dict:
    grid, points = GRID[mode][dims], []
    for kind in ("sparse", "dense"):  # lazy initialisation outside the measurements
        measure(kind, "headline", make_block(dims, 10, "threshold", 128, 4))
    dense = dense_study(dims, grid, optimizer, points)
    sparse = sparse_study(dims, grid, BUDGET[mode], optimizer, points)
    paper = [p for p in points if p["model"] == "sparse" and p["T"] == PAPER_T and p["S"] == PAPER_S]
    for r in paper:
        r["dense_peak"] = dense[r["variant"]]["paper"]
        r["ratio"], r["ratio_eq1"] = r["dense_peak"] / r["peak"], r["eq1_dense"] / r["eq1"]
    return {"dims": dims, "dense": dense, "sparse": sparse, "paper": paper, "points": points}


def headline_row(res: dict, variant: str) -> dict:
    return next(r for r in res["paper"] if (r["variant"], r["input"], r["c"]) == (variant, *HEADLINE[res["dims"]]))


# ----------------------------------------------------------------------------- outputs


def report(res: dict) -> None:
    d = res["dims"]
    print(f"\n{d}D+t, block {PAPER_T} x {PAPER_S}^{d}: peak of one training step, MB ('fit': predicted, not measured)")
    print(f"{'variant':9s} {'input':9s} {'c':>3s} {'active':>8s} {'sparse MB':>10s} {'dense MB':>10s} {'ratio':>6s} {'Eq.1':>6s}")
    for r in res["paper"]:
        sparse = f"{r['peak'] / MB:6.0f}{' fit' if r['source'] == 'fit' else '':4s}"
        dense = f"{r['dense_peak'] / MB:6.0f}{'' if res['dense'][r['variant']]['paper_measured'] else ' fit':4s}"
        print(
            f"{r['variant']:9s} {r['input']:9s} {r['c']:3d} {r['active_fraction']:8.5f} {sparse} {dense} "
            f"{r['ratio']:6.2f} {r['ratio_eq1']:6.2f}"
        )
    for variant, f in res["dense"].items():
        (T, S), (a, b, g) = f["held_out"], f["coef"]
        print(
            f"dense fit, {variant}: {a / MB:.1f} MB + {b:.0f} B x V + {g:.0f} B x G; held out {T} x {S}^{d}: predicted "
            f"{f['held_out_predicted'] / MB:.0f} MB, measured {f['held_out_measured'] / MB:.0f} MB "
            f"({f['held_out_error']:+.1%})"
        )
    for variant, s in res["sparse"].items():
        errors = ", ".join(f"{e:+.1%}" for e in s["check_errors"]) or "none measured"
        print(
            f"sparse fit, {variant}: {s['a'] / MB:.1f} MB + {s['k_per_site_channel']:.2f} B x E over {s['n_fit']} blocks; "
            f"paper-size blocks, predicted / measured - 1: {errors}"
        )
    for variant in VARIANTS:
        r = headline_row(res, variant)
        print(
            f"headline {variant}: dense / sparse {r['ratio']:.2f} (Eq. 1: {r['ratio_eq1']:.2f}), target >= {TARGET[d]:g} "
            f"{'met' if r['ratio'] >= TARGET[d] else 'MISSED'}; sites per stage {r.get('stages', '(not run)')}"
        )


COLUMNS = "dims variant model input c T S active_sites active_fraction eq1 peak_mb source in_fit dense_peak_mb ratio ratio_eq1"


def write_points(path: Path, points: list[dict]) -> None:
    """One CSV row per measured or predicted point (peaks in MB), written atomically."""

    def mb(value: float | None) -> str:
        return f"{value / MB:.2f}" if value else ""

    rows = [{**p, "peak_mb": mb(p["peak"]), "dense_peak_mb": mb(p.get("dense_peak"))} for p in points]
    write_csv(path, rows, fieldnames=COLUMNS.split(), extrasaction="ignore")


def plot(path: Path, results: list[dict]) -> None:
    """Per dims: peak against E, the sparse fit, the dense fit and the Eq. 1 law (peak ∝ E through the dense paper point)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5 * len(results), 6))
    axes = fig.subplots(1, len(results), squeeze=False)
    for ax, res in zip(axes[0], results, strict=True):
        d = res["dims"]
        for variant, colour in (("headline", "navy"), ("pruning", "tab:orange")):
            pts, f = [p for p in res["points"] if p["variant"] == variant], res["dense"][variant]
            for p in pts:
                fill = colour if p["source"] == "measured" else "none"
                ax.plot(p["eq1"], p["peak"] / MB, "s" if p["model"] == "dense" else "o", color=colour, mfc=fill, ms=6)
            e_paper = headline_row(res, variant)["eq1_dense"]
            ax.plot(e_paper, f["paper"] / MB, "*", ms=15, color=colour, mec="k")
            e = np.geomspace(min(p["eq1"] for p in pts) / 2, e_paper, 20)
            ax.plot(e, f["paper"] / MB * e / e_paper, ":", color=colour, label=f"{variant}: Eq. 1, peak ∝ E through the dense ★")
            dense = sorted((p["eq1"], p["T"], p["S"]) for p in pts if p["model"] == "dense") + [(e_paper, PAPER_T, PAPER_S)]
            ey = [dense_predict(d, f["coef"], T, S) / MB for _, T, S in dense]
            ax.plot([x for x, _, _ in dense], ey, "-", color=colour, alpha=0.4, label=f"{variant}: dense fit a + bV + gG")
            s, e = res["sparse"][variant], e[: np.searchsorted(e, 2 * max(p["eq1"] for p in pts if p["model"] == "sparse"))]
            ax.plot(e, (s["a"] + s["k_per_site_channel"] * e) / MB, "--", color=colour, label=f"{variant}: sparse fit a + kE")
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="E: active sites x channels summed over the layers (Eq. 1)",
            ylabel="peak memory of one training step (MB)",
            title=f"{d}D+t: squares dense, circles sparse (hollow: predicted), ★ dense, {PAPER_T}×{PAPER_S}^{d}",
        )
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def summary(results: list[dict], setup: dict) -> dict:
    out = {}
    for res in results:
        d = res["dims"]
        for variant, key in (("headline", f"{d}d"), ("pruning", f"{d}d_pruned")):
            r, f = headline_row(res, variant), res["dense"][variant]
            out.update(
                {
                    f"ratio_{key}": r["ratio"],
                    f"ratio_eq1_{key}": r["ratio_eq1"],
                    f"sparse_mb_{key}": r["peak"] / MB,
                    f"sparse_source_{key}": r["source"],
                    f"dense_mb_{key}": f["paper"] / MB,
                    f"dense_source_{key}": "measured" if f["paper_measured"] else "fit",
                }
            )
        out[f"params_{d}d"] = n_parameters(ULMNet(NetSpec(dims=d)))
        out[f"fit_{d}d"] = {"dense": res["dense"], "sparse": res["sparse"]}
    return {**out, "rows": [p for res in results for p in res["points"]], **setup}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer sizes and inputs, a 1.5 GB budget (CI)")
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 3], choices=[2, 3])
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's own)")
    parser.add_argument("--optimizer", action="store_true", help="an Adam step in the training step")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    parser.add_argument("--out", type=Path, metavar="DIR", help="write memory.csv, memory.png, memory.json to DIR (atomically)")
    parser.add_argument("--no-rss-check", action="store_true", help="accepted, no effect (the cross-check was run once)")
    parser.add_argument("--kernel", type=int, help="ignored: the kernels are the architecture's (accepted for old workflows)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.kernel is not None:
        log(f"--kernel {args.kernel}: ignored (the network's kernels are fixed by its architecture)")
    mode, t0, results = "quick" if args.quick else "full", time.perf_counter(), []
    print(
        f"CPU, {torch.get_num_threads()} threads, batch 1, width 16, {mode} run, "
        f"optimizer {'Adam' if args.optimizer else 'none'}; peak = held + torch.profiler allocator events"
    )
    for dims in args.dims:
        log(f"{dims}D+t")
        results.append(study(dims, mode, args.optimizer))
        report(results[-1])
    seconds = time.perf_counter() - t0
    print(f"total {seconds:.0f} s")
    setup = dict(
        mode=mode,
        threads=torch.get_num_threads(),
        optimizer=args.optimizer,
        seconds=seconds,
        budget_mb=BUDGET[mode] / MB,
        headline={f"{d}d": HEADLINE[d] for d in args.dims},
    )
    line = json.dumps(summary(results, setup), default=float)
    if args.out:
        with atomic_path(args.out) as tmp:
            tmp.mkdir()
            write_points(tmp / "memory.csv", [p for res in results for p in res["points"]])
            plot(tmp / "memory.png", results)
            (tmp / "memory.json").write_text(line + "\n")
        print(f"wrote {args.out}/memory.csv, memory.png, memory.json")
    if args.json:
        print(line)


if __name__ == "__main__":
    main()

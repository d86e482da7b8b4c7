"""Peak memory of one training step (forward + Dice loss over all scales + backward) of the sparse
(spconv) and the dense network, 2D+t and 3D+t, at several block sizes and microbubble (MB)
concentrations, fitted against input size and extrapolated to the paper's blocks (512 x 32^2 in 2D,
512 x 32^3 in 3D).

    python benchmarks/memory.py [--quick] [--kernel 3] [--optimizer] [--no-paper] [--no-rss-check] [--dims 2 3] [--threads N]
                                [--json] [--out DIR]

Default run: ~2-3 min on 2 idle cores (7 min with the machine shared), peak resident set ~8 GB (the
dense 3D check at T=16, S=32); --quick: ~1 min, < 1.5 GB. Progress lines go to stderr.

Measurement. On CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` (spconv's
default algorithm). On CPU (spconv ``ConvAlgo.Native``): ``torch.profiler`` with ``profile_memory``;
the allocator's [memory] events of the step are summed in time order and the maximum of the running
total is the step's peak above what was allocated before it. Like CUDA's max allocated, the reported
peak is that plus the bytes held before the step (parameters, buffers, input block, target indices).
Why the profiler rather than the resident set: it counts exactly the bytes of torch tensors, whatever
glibc does with freed chunks (with its default dynamic mmap threshold a freed 30 MB tensor can stay
resident: the resident set of the dense 2D step was 1.8x its allocated peak), so every configuration
can run in one process and the numbers are what CUDA's allocator would report. It does miss memory
allocated outside torch's allocator (spconv's CPU hash tables, oneDNN scratch), so a fresh subprocess
cross-checks it on a few configurations: the growth of the resident set during the same step (VmHWM
after resetting it through /proc/self/clear_refs, else ru_maxrss) above VmRSS just before it, after a
warm-up step on a tiny block and ``malloc_trim``, with glibc told to mmap every allocation over 64 kB
and give it back on free (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_).

Inputs (synthetic, deterministic). ``c`` MBs per frame in a paper-size 32^d tile, each moving along a
smooth random path (direction random walk, speed log-uniform in 0.05-0.5 pixel per frame, a new MB at
a random place when one leaves) and lighting a 3^d-pixel PSF neighbourhood per frame (Re, Im of a
Gaussian PSF with a random phase). A block T x S^d is the crop of the first T frames and the first S
pixels of every axis of that tile (same MB density per pixel at every size; a crop without any MB is
skipped). Targets: the MB paths on the 8x grid (4 sub-frame samples per frame). The dense input is the
same block densified; dense memory does not depend on the content, so dense is measured once per size.
Networks: ``NetSpec(dims, kernel, width=16)`` with pruning (threshold 0.5, ground truth kept, as in
training) and deep supervision; batch 1. The freshly initialised classifiers keep about half of the
sites before each up stage (the first training steps: the largest sparse step, the headline). With
``oracle`` heads (classifier biases at -30) only the ground truth survives pruning, the bound a
perfectly trained classifier reaches; measured at the paper sizes for reference.

Fits. Dense: peak ~ a + b V + f F, V = T prod(S) input voxels, F = prod(S) 8^d sites of the finest
output grid (the time-pooled up stages do not grow with T; they are the bulk of the dense 3D net at
S = 16); the one-term fit a + b V is printed too. Sparse: peak ~ a + b N, N the active input sites,
fitted over all concentrations; N at the paper size comes from the active-site density measured
at that concentration on the whole simulated 512 x 32^d tile (the small corner crops sample it
poorly: a few slow MBs dominate them; the N their density predicts is printed as ``crops``).
Both are extrapolated to the paper sizes at a high concentration (2D: 20, 3D: 30), and to every
measured concentration. The paper-size points and the dense 3D point at T=16, S=32 (full run) are
left out of the fits and printed as checks of the extrapolation. Where
the paper size was measured (full run: dense 2D; sparse 2D, and sparse 3D with kernel 3), that
measurement is the headline. The table's ``1/frac`` column is the Equation-1-like saving, 1 / the
fraction of active sites. ``--kernel 5`` (the paper's) makes 4D index pairs ~8x slower and larger:
the 3D paper-size sparse step is then left to the fit.

With --json the last line is one JSON object: ``ratio_2d``, ``ratio_3d`` (dense / sparse peak memory
at the paper sizes, high concentration; measured where measured, else fitted), ``ratio_2d_fit``,
``ratio_3d_fit`` (both sides from the fits), the paper-size peaks in MB (``*_mb``, with ``*_source``),
``eq1_2d``/``eq1_3d`` (1 / active fraction at the paper size), ``ratio_fit_by_c_*``, the fits and their
checks, the oracle-head ratios, the RSS cross-check, every measured point (``points``) and the setup.

With --out DIR the run ends by writing the folder DIR atomically (built in ``DIR.tmp``, then renamed):
``memory.csv`` (one row per measured point and per paper-size value: kind = measured / paper-measured / fit,
dims, model, frames_T, tile_S, concentration, active_sites_N, voxels_V, peak_mb, in_fit), ``memory.png``
(one panel per dims: peak memory against input size with the fits and the paper-size extrapolation) and
``memory.json`` (the object --json prints). --threads N sets ``torch.set_num_threads`` (also in the
cross-check process).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import ctypes
import gc
import json
import os
import re
import resource
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", message=".*is_fx_tracing.*")

from ulm.nn.dense_net import DenseULMNet  # noqa: E402
from ulm.nn.loss import dense_loss, dense_targets, pooled_target_keys, sparse_loss, supervised_scales  # noqa: E402
from ulm.nn.sparse_net import SparseULMNet  # noqa: E402
from ulm.nn.spec import NetSpec  # noqa: E402
from ulm.store import atomic_path  # noqa: E402

PAPER_T, PAPER_S = 512, 32
HIGH_C = {2: 20, 3: 30}
PAPER_GB = {2: 1.3, 3: 190.0}  # the paper's dense activation estimates per sample (kernel 5)
PAPER_SAVING = {2: 2.0, 3: 100.0}
SPEED = (0.05, 0.5)  # pixel per frame
SUB = 4  # target samples per frame
MB = 1e6

# per dims: (T, S) measured sparse and dense, (T, S) measured sparse only, concentrations (MBs per frame per 32^d tile)
FULL = {
    2: {"sizes": [(t, s) for s in (16, 32) for t in (64, 128, 256, 512)], "sparse_only": [], "conc": (1, 10, 20)},
    3: {"sizes": [(t, s) for s in (8, 16) for t in (32, 64, 128)] + [(256, 16)], "sparse_only": [(64, 32)], "conc": (1, 10, 30),
        "dense_check": [(16, 32)]},
}  # fmt: skip
# "dense_check": measured like the others but left out of the dense fit, to check its extrapolation to S = 32
# (dense 3D at T=16, S=32: ~7.7 GB allocated, ~8 GB resident)
QUICK = {
    2: {"sizes": [(t, s) for s in (16, 32) for t in (64, 128)], "sparse_only": [(256, 32)], "conc": (5, 20)},
    3: {"sizes": [(t, s) for s in (8, 16) for t in (32, 64)], "sparse_only": [], "conc": (10, 30)},
}
# fresh-process resident-set cross-checks: (kind, dims, T, S, c)
RSS_CHECK = {"full": [("dense", 3, 64, 16, 30), ("sparse", 2, 256, 32, 20)], "quick": [("dense", 2, 128, 32, 20)]}
# in the cross-check process, glibc serves every allocation over 64 kB by mmap and gives it back on free: no heap
# fragmentation (freed chunks that stay resident) inflating the resident set above the live bytes
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}


# ----------------------------------------------------------------------------- inputs


@dataclass
class Simulation:
    """MB tracks in a paper-size tile: lit sites (frame, *space) with (Re, Im), fine path samples (frame, *fine)."""

    dims: int
    c: int
    sites: np.ndarray
    feats: np.ndarray
    fine: np.ndarray


def simulate(dims: int, c: int, frames: int = PAPER_T, factor: int = 8, seed: int = 0) -> Simulation:
    rng = np.random.default_rng([seed, dims, c])
    size = PAPER_S
    lo, hi = np.log(SPEED[0]), np.log(SPEED[1])
    pos = rng.uniform(0, size, (c, dims))
    direction = rng.normal(size=(c, dims))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    speed = np.exp(rng.uniform(lo, hi, c))
    phase = rng.uniform(0, 2 * np.pi, c)
    offsets = np.stack(np.meshgrid(*[np.arange(-1, 2)] * dims, indexing="ij"), -1).reshape(-1, dims)
    frac = np.arange(SUB) / SUB
    sites, amps, fine = [], [], []
    for t in range(frames):
        prev = pos.copy()
        direction += rng.normal(scale=0.15, size=direction.shape)
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        pos = pos + direction * speed[:, None]
        out = np.any((pos < 0) | (pos >= size), axis=1)
        if out.any():  # a new MB somewhere in the tile
            n = int(out.sum())
            pos[out] = prev[out] = rng.uniform(0, size, (n, dims))
            speed[out] = np.exp(rng.uniform(lo, hi, n))
            phase[out] = rng.uniform(0, 2 * np.pi, n)
        lit = np.floor(pos).astype(np.int64)[:, None, :] + offsets[None]  # (c, 3^d, d)
        dist2 = ((lit + 0.5 - pos[:, None, :]) ** 2).sum(-1)
        amp = np.exp(-dist2 / 2.0)
        ph = phase[:, None] + 0.3 * t
        lit, amp, ph = lit.reshape(-1, dims), amp.ravel(), np.broadcast_to(ph, amp.reshape(c, -1).shape).ravel()
        inside = np.all((lit >= 0) & (lit < size), axis=1)
        sites.append(np.concatenate([np.full((int(inside.sum()), 1), t), lit[inside]], 1))
        amps.append(np.stack([amp[inside] * np.cos(ph[inside]), amp[inside] * np.sin(ph[inside])], 1))
        path = prev[:, None] + (pos - prev)[:, None] * frac[None, :, None]  # (c, SUB, d)
        fine.append(np.concatenate([np.full((c * SUB, 1), t), np.floor(path * factor).astype(np.int64).reshape(-1, dims)], 1))
    sites, amps = np.concatenate(sites), np.concatenate(amps)
    keys, first = np.unique(sites, axis=0, return_index=True)  # overlapping PSFs: one site, the first MB's value
    return Simulation(dims, c, keys, amps[first].astype(np.float32), np.concatenate(fine))


@dataclass
class Block:
    dims: int
    T: int
    S: int
    c: int
    indices: torch.Tensor  # (N, 2 + d) int32: (batch, t, *space)
    features: torch.Tensor  # (N, 2)
    target: torch.Tensor  # (M, 1 + d) int32: (batch, *fine)

    @property
    def n_active(self) -> int:
        return len(self.indices)

    @property
    def voxels(self) -> int:
        return self.T * self.S**self.dims

    @property
    def space(self) -> tuple[int, ...]:
        return (self.S,) * self.dims

    def dense(self) -> torch.Tensor:
        x = torch.zeros(1, 2, self.T, *self.space)
        x[(0, slice(None), *self.indices[:, 1:].long().T)] = self.features.T
        return x


def crop(sim: Simulation, T: int, S: int, factor: int = 8) -> Block:
    keep = (sim.sites[:, 0] < T) & np.all(sim.sites[:, 1:] < S, axis=1)
    idx = sim.sites[keep]
    fine = sim.fine[(sim.fine[:, 0] < T) & np.all((sim.fine[:, 1:] >= 0) & (sim.fine[:, 1:] < S * factor), axis=1), 1:]
    fine = np.unique(fine, axis=0)
    zeros = np.zeros((1, 1), np.int64)
    return Block(
        sim.dims, T, S, sim.c,
        torch.from_numpy(np.concatenate([zeros.repeat(len(idx), 0), idx], 1).astype(np.int32)),
        torch.from_numpy(sim.feats[keep]),
        torch.from_numpy(np.concatenate([zeros.repeat(len(fine), 0), fine], 1).astype(np.int32)),
    )  # fmt: skip


# ----------------------------------------------------------------------------- one training step


def build(kind: str, spec: NetSpec, device: torch.device, heads: str = "init", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    if kind == "dense":
        return DenseULMNet(spec).to(device)
    from spconv.core import ConvAlgo

    net = SparseULMNet(spec, algo=None if device.type == "cuda" else ConvAlgo.Native).to(device)
    if heads == "oracle":  # every classifier says "no": only the ground truth survives pruning
        with torch.no_grad():
            for k in range(spec.n_up + 1):
                net.layers[f"cls{k}"].bias.fill_(-30.0)
    return net


def make_step(kind: str, net: torch.nn.Module, block: Block, device: torch.device, optimizer: bool):
    """(the step as a closure, the tensors it receives, a dict the step fills with the sites per scale)."""
    spec: NetSpec = net.spec
    scales = supervised_scales(spec.n_up, spec.deep_supervision)
    target = block.target.to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3) if optimizer else None
    info: dict = {}
    if kind == "dense":
        x = block.dense().to(device)

        def step() -> None:
            outputs = net(x)
            loss = dense_loss(outputs, [t.to(device) for t in dense_targets(target.cpu(), 1, block.space, spec.n_up)], scales)
            loss.backward()
            if opt is not None:
                opt.step()

        return step, [x, target], info
    import spconv.pytorch as spconv

    feats, indices = block.features.to(device), block.indices.to(device)

    def step() -> None:
        x = spconv.SparseConvTensor(feats, indices, [block.T, *block.space], 1)
        keys = pooled_target_keys(target, block.space, spec.n_up)
        outputs = net(x, target=keys)
        loss = sparse_loss(outputs, keys, block.space, scales)
        info["sites"] = [len(ind) for ind, _ in outputs]
        loss.backward()
        if opt is not None:
            opt.step()

    return step, [feats, indices, target], info


def held_bytes(net: torch.nn.Module, tensors: list[torch.Tensor]) -> int:
    """Bytes held before the step: parameters, buffers and the step's input tensors."""
    seen, total = set(), 0
    for t in [*net.parameters(), *net.buffers(), *tensors]:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in seen:
            seen.add(ptr)
            total += t.untyped_storage().nbytes()
    return total


def profiled_step_peak(step) -> int:
    """CPU: the maximum of the running total of torch's allocations during ``step`` (profiler events)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = [(e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    if not events:
        raise RuntimeError("the profiler recorded no memory events")
    events.sort(key=lambda e: (e[0], -e[1]))  # ties: allocations first (the higher peak)
    return max(0, int(np.cumsum([b for _, b in events]).max()))


def measure(kind: str, block: Block, spec: NetSpec, device: torch.device, heads: str = "init", optimizer: bool = False) -> dict:
    """Peak bytes of one training step, the bytes held before it, sites per scale, seconds."""
    net = build(kind, spec, device, heads)
    net.train()
    step, tensors, info = make_step(kind, net, block, device, optimizer)
    t0 = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.synchronize()
        held = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        held = held_bytes(net, tensors)
        peak = held + profiled_step_peak(step)
    seconds = time.perf_counter() - t0
    del net, step, tensors
    gc.collect()
    print(f"  {kind:6s} {heads:6s} {block.dims}D T={block.T:3d} S={block.S:2d} c={block.c:2d}: {block.n_active:7d} active sites, "
          f"{peak / MB:9.1f} MB, {seconds:6.1f} s", file=sys.stderr, flush=True)  # fmt: skip
    return {"peak": peak, "held": held, "sites": info.get("sites"), "seconds": seconds}


# ----------------------------------------------------------------------------- RSS cross-check (fresh process)


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as fh:
        return int(re.search(rf"^{key}:\s+(\d+) kB", fh.read(), re.M).group(1)) * 1024


def child(cfg: dict) -> None:
    """Run one step in this fresh process and print the resident-set growth during it (JSON)."""
    kind, dims, T, S, c = cfg["kind"], cfg["dims"], cfg["T"], cfg["S"], cfg["c"]
    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])
    spec = NetSpec(dims=dims, kernel=cfg["kernel"], width=16)
    device = torch.device("cpu")
    sim = simulate(dims, c)
    small = crop(sim, 32, 8 if dims == 3 else 16)  # warm-up: lazy initialisation of torch / oneDNN / spconv
    net = build(kind, spec, device)
    make_step(kind, net, small, device, cfg["optimizer"])[0]()
    block = crop(sim, T, S)
    net = build(kind, spec, device)
    step, tensors, _ = make_step(kind, net, block, device, cfg["optimizer"])
    gc.collect()
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    before = _status_bytes("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset VmHWM to the current resident set
        method = "VmHWM"
    except OSError:
        method = "ru_maxrss"
    step()
    after = _status_bytes("VmHWM") if method == "VmHWM" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"rss_step": after - before, "method": method, "n_active": block.n_active}))


def rss_check(kind: str, dims: int, T: int, S: int, c: int, kernel: int, optimizer: bool, threads: int | None = None) -> dict:
    cfg = {"kind": kind, "dims": dims, "T": T, "S": S, "c": c, "kernel": kernel, "optimizer": optimizer, "threads": threads}
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", json.dumps(cfg)],
                         capture_output=True, text=True, check=True, env={**os.environ, **MALLOC_ENV})  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- fits


def lstsq(columns: list[np.ndarray], y: np.ndarray) -> np.ndarray:
    A = np.stack([np.ones_like(y), *columns], 1)
    return np.linalg.lstsq(A, y, rcond=None)[0]


def fine_sites(dims: int, S: int) -> int:
    return S**dims * 8**dims


def dense_fit(rows: list[dict]) -> dict:
    V = np.array([r["T"] * r["S"] ** r["dims"] for r in rows], float)
    F = np.array([fine_sites(r["dims"], r["S"]) for r in rows], float)
    y = np.array([r["dense"] for r in rows], float)
    two = lstsq([V, F], y)
    one = lstsq([V], y)
    out = {"a": two[0], "b_per_voxel": two[1], "f_per_fine_site": two[2], "a1": one[0], "b1_per_voxel": one[1]}
    big = int(np.argmax(V + F))  # hold out the largest point, predict it from the others
    if len(rows) > 4:
        keep = np.arange(len(rows)) != big
        h = lstsq([V[keep], F[keep]], y[keep])
        pred = h[0] + h[1] * V[big] + h[2] * F[big]
        out["holdout"] = {"T": rows[big]["T"], "S": rows[big]["S"], "measured": y[big], "predicted": pred}
    return out


def dense_predict(fit: dict, dims: int, T: int, S: int) -> float:
    return fit["a"] + fit["b_per_voxel"] * T * S**dims + fit["f_per_fine_site"] * fine_sites(dims, S)


def sparse_fit(rows: list[dict]) -> dict:
    n = np.array([r["n_active"] for r in rows], float)
    y = np.array([r["sparse"] for r in rows], float)
    a, b = lstsq([n], y)
    return {"a": a, "b_per_site": b}


# ----------------------------------------------------------------------------- outputs (--out)

DENSE_COLOUR, SPARSE_COLOUR = "tab:red", "navy"
CSV_COLUMNS = ("kind", "dims", "model", "frames_T", "tile_S", "concentration", "active_sites_N", "voxels_V", "peak_mb", "in_fit")


def paper_voxels(dims: int) -> int:
    return PAPER_T * PAPER_S**dims


def dense_left_out(res: dict) -> set[tuple[int, int]]:
    """(T, S) of the dense measurements left out of the dense fit (its checks and the paper size)."""
    return {(h["T"], h["S"]) for h in res["dense_fit"]["checks"]} | {(PAPER_T, PAPER_S)}


def table_row(kind: str, dims: int, model: str, T: int, S: int, c: int | None, n: int | None, v: int, peak: float,
              in_fit: bool) -> dict:  # fmt: skip
    """One row of memory.csv (peak in bytes; empty cells for what does not apply)."""
    values = (kind, dims, model, T, S, "" if c is None else c, "" if n is None else n, v, f"{peak / MB:.2f}", int(in_fit))
    return dict(zip(CSV_COLUMNS, values, strict=True))


def measured_rows(points: list[dict], result: dict) -> list[dict]:
    """Measured points: dense once per (dims, T, S), sparse once per (dims, T, S, c); paper-size ones marked."""
    rows, dense_seen = [], set()
    for p in points:
        dims, T, S = p["dims"], p["T"], p["S"]
        kind = "paper-measured" if (T, S) == (PAPER_T, PAPER_S) else "measured"
        if p["dense"] is not None and (dims, T, S) not in dense_seen:
            dense_seen.add((dims, T, S))
            in_fit = (T, S) not in dense_left_out(result[dims])
            rows.append(table_row(kind, dims, "dense", T, S, None, None, p["voxels"], p["dense"], in_fit))
        in_fit = kind == "measured"
        rows.append(table_row(kind, dims, "sparse", T, S, p["c"], p["n_active"], p["voxels"], p["sparse"], in_fit))
    return rows


def paper_fit(dims: int, res: dict) -> dict:
    """Fitted peaks (bytes) at the paper size: dense, and sparse at every concentration with its active sites N."""
    v = paper_voxels(dims)
    sfit = res["sparse_fit"]
    n = {c: round(dens * v) for c, dens in res["density"].items()}
    return {
        "voxels": v,
        "dense": res["dense_fit_mb"] * MB,
        "n": n,
        "sparse": {c: sfit["a"] + sfit["b_per_site"] * k for c, k in n.items()},
    }


def fit_rows(dims: int, res: dict) -> list[dict]:
    """The paper-size extrapolations of the fits (kind ``fit``): dense once, sparse per concentration."""
    fit = paper_fit(dims, res)
    rows = [table_row("fit", dims, "dense", PAPER_T, PAPER_S, None, None, fit["voxels"], fit["dense"], False)]
    for c, peak in fit["sparse"].items():
        rows.append(table_row("fit", dims, "sparse", PAPER_T, PAPER_S, c, fit["n"][c], fit["voxels"], peak, False))
    return rows


def table_rows(points: list[dict], result: dict) -> list[dict]:
    """memory.csv: per dims, the measured points (dense, then sparse by concentration and size), then the fits."""
    order = {"measured": 0, "paper-measured": 1, "fit": 2}
    rows = measured_rows(points, result) + [r for dims, res in result.items() for r in fit_rows(dims, res)]
    return sorted(rows, key=lambda r: (r["dims"], order[r["kind"]], r["model"], r["concentration"] or 0, r["voxels_V"]))


def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def plot_panel(ax, dims: int, points: list[dict], res: dict) -> None:
    """Peak memory against input size (dense: voxels V, sparse: active sites N), fits, paper-size extrapolation."""
    import matplotlib.pyplot as plt

    pts = [p for p in points if p["dims"] == dims]
    concs = sorted(res["density"])
    colour = dict(zip(concs, plt.cm.Blues(np.linspace(0.45, 0.95, len(concs))), strict=True))
    fit = paper_fit(dims, res)
    plot_dense(ax, dims, pts, res, fit)
    plot_sparse(ax, dims, pts, res, fit, colour)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("input size: voxels V = T·$S^d$ (dense) / active input sites N (sparse)")
    ax.set_ylabel("peak memory of one training step (MB = $10^6$ B)")
    lo, hi = ax.get_ylim()
    ax.set_ylim(lo, hi * (hi / lo) ** 0.08)  # headroom for the paper-size annotations
    ax.grid(True, which="major", alpha=0.3)
    ax.grid(True, which="minor", alpha=0.1)
    c_hi = HIGH_C[dims]
    ax.set_title(f"{dims}D+t, paper block {PAPER_T}×${PAPER_S}^{dims}$, c={c_hi}: dense / sparse = {res['ratio']:.1f}×\n"
                 f"(dense {res['dense_mb']:,.0f} MB {res['dense_source']}, sparse {res['sparse_mb']:,.0f} MB "
                 f"{res['sparse_source']}; both from the fits: {res['ratio_fit']:.1f}×)", fontsize=10)  # fmt: skip
    ax.legend(handles=legend_handles(colour), fontsize=8, loc="upper left")


def measured_marker(ax, x: float, y: float, marker: str, colour, left_out: bool, size: float) -> None:
    """A measured point: filled if the fit used it, else hollow, thick and drawn above the paper-size stars."""
    if left_out:
        ax.plot(x, y, marker, ms=size + 3, color=colour, mfc="none", mew=2, zorder=6)
    else:
        ax.plot(x, y, marker, ms=size, color=colour, zorder=4)


def paper_label(model: str, fitted: float, measured: float | None) -> str:
    """The annotation of a paper-size star: the fitted peak, and the measured one where measured."""
    return f"{model} at the paper size\nfit {fitted / MB:,.0f} MB" + (
        "" if measured is None else f", measured {measured / MB:,.0f} MB"
    )


def plot_dense(ax, dims: int, pts: list[dict], res: dict, fit: dict) -> None:
    """Dense: measured once per size (hollow: left out of the fit), the fit a + bV + fF as one line per tile side S."""
    dense = {(p["T"], p["S"]): p for p in pts if p["dense"] is not None}
    left = dense_left_out(res)
    for key, p in dense.items():
        measured_marker(ax, p["voxels"], p["dense"] / MB, "s", DENSE_COLOUR, key in left, 7)
    T = np.geomspace(min((t for t, _ in dense), default=PAPER_T) / 1.5, PAPER_T, 50)
    for S in sorted({S for _, S in dense} | {PAPER_S}):
        y = dense_predict(res["dense_fit"], dims, T, S) / MB
        ax.plot(T * S**dims, y, color=DENSE_COLOUR, lw=1.2, ls="-" if S == PAPER_S else "--", alpha=0.8)
        ax.annotate(f"S={S}", (T[0] * S**dims, y[0]), xytext=(-3, 0), textcoords="offset points", ha="right", va="center",
                    fontsize=8, color=DENSE_COLOUR, bbox={"fc": "white", "ec": "none", "pad": 0.5, "alpha": 0.8})  # fmt: skip
    at = (fit["voxels"], fit["dense"] / MB)
    ax.plot(*at, "*", ms=16, color=DENSE_COLOUR, mec="k", zorder=5)
    measured = dense.get((PAPER_T, PAPER_S))
    ax.annotate(paper_label("dense", fit["dense"], measured and measured["dense"]), at, xytext=(-14, 0),
                textcoords="offset points", ha="right", va="center", fontsize=8, color=DENSE_COLOUR)  # fmt: skip


def plot_sparse(ax, dims: int, pts: list[dict], res: dict, fit: dict, colour: dict) -> None:
    """Sparse: every measured point coloured by concentration (hollow: paper size, left out of the fit), the fit
    a + bN over all of them, and its paper-size values at every concentration (stars; the headline one annotated)."""
    for p in pts:
        measured_marker(ax, p["n_active"], p["sparse"] / MB, "o", colour[p["c"]], (p["T"], p["S"]) == (PAPER_T, PAPER_S), 6)
    s = res["sparse_fit"]
    n_all = [p["n_active"] for p in pts] + list(fit["n"].values())
    N = np.geomspace(min(n_all) / 1.5, max(n_all) * 1.5, 50)
    ax.plot(N, (s["a"] + s["b_per_site"] * N) / MB, color=SPARSE_COLOUR, lw=1.2)
    c_hi = HIGH_C[dims]
    for c, col in colour.items():
        ax.plot(fit["n"][c], fit["sparse"][c] / MB, "*", ms=16 if c == c_hi else 11, color=col, mec="k", zorder=5)
    measured = next((p["sparse"] for p in pts if (p["T"], p["S"], p["c"]) == (PAPER_T, PAPER_S, c_hi)), None)
    at = (fit["n"][c_hi], fit["sparse"][c_hi] / MB)
    ax.annotate(paper_label(f"sparse (c={c_hi})", fit["sparse"][c_hi], measured), at, xytext=(-12, 4), textcoords="offset points",
                ha="right", va="bottom", fontsize=8, color=SPARSE_COLOUR)  # fmt: skip


def legend_handles(colour: dict) -> list:
    """Legend entries: markers per model / concentration, the fit lines, the paper-size stars."""
    from matplotlib.lines import Line2D

    def marker(m: str, c, label: str, **kw) -> Line2D:
        return Line2D([], [], marker=m, color=c, ls="none", label=label, **kw)

    return [
        marker("s", DENSE_COLOUR, "dense, measured (x: V)", ms=7),
        *[marker("o", col, f"sparse, measured, c={c} MBs/frame (x: N)", ms=6) for c, col in colour.items()],
        marker("o", "grey", "hollow: left out of the fit (checks, paper size)", ms=8, mfc="none", mew=2),
        Line2D([], [], color=DENSE_COLOUR, label="dense fit a + bV + fF, per tile side S"),
        Line2D([], [], color=SPARSE_COLOUR, label="sparse fit a + bN"),
        marker("*", "grey", f"fits at the paper size {PAPER_T}×${PAPER_S}^d$", ms=12, mec="k"),
    ]


def plot(path: Path, points: list[dict], result: dict) -> None:
    """memory.png: one panel per dims."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(result), figsize=(7.5 * len(result), 6), squeeze=False)
    for ax, (dims, res) in zip(axes[0], result.items(), strict=True):
        plot_panel(ax, dims, points, res)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(out_dir: Path, points: list[dict], result: dict, json_line: str) -> None:
    """Write memory.csv, memory.png and memory.json into ``out_dir`` (built as a sibling, renamed when complete)."""
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        write_csv(tmp / "memory.csv", table_rows(points, result))
        plot(tmp / "memory.png", points, result)
        (tmp / "memory.json").write_text(json_line + "\n")


# ----------------------------------------------------------------------------- main


def fmt_mb(x: float | None) -> str:
    return "-" if x is None else f"{x / MB:10.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer sizes and concentrations, no paper-size runs (< 2 min)")
    parser.add_argument("--kernel", type=int, default=3, help="3 (default) or 5 (the paper's; 4D index pairs ~8x slower)")
    parser.add_argument("--optimizer", action="store_true", help="include an Adam step in the training step")
    parser.add_argument("--no-paper", action="store_true", help="skip the direct measurements at the paper sizes")
    parser.add_argument("--no-rss-check", action="store_true", help="skip the fresh-process resident-set cross-check")
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 3], choices=[2, 3])
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's own)")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    parser.add_argument("--out", type=Path, metavar="DIR", help="write memory.csv, memory.png, memory.json to DIR (atomically)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    grid = QUICK if args.quick else FULL
    paper = not (args.quick or args.no_paper)
    method = "cuda max_memory_allocated" if device.type == "cuda" else "torch.profiler allocator events (profile_memory)"
    print(f"device {device}, {torch.get_num_threads()} threads, kernel {args.kernel}, width 16, batch 1, "
          f"prune 0.5 + ground truth, deep supervision, optimizer {'Adam' if args.optimizer else 'none'}; {method}")  # fmt: skip

    # warm-up (lazy initialisation outside the measurements)
    for dims in args.dims:
        spec = NetSpec(dims=dims, kernel=args.kernel, width=16)
        tiny = crop(simulate(dims, HIGH_C[dims], frames=32), 32, 8)
        for kind in ("sparse", "dense"):
            measure(kind, tiny, spec, device)

    points, result, skipped = [], {}, []
    for dims in args.dims:
        spec = NetSpec(dims=dims, kernel=args.kernel, width=16)
        g = grid[dims]
        sims = {c: simulate(dims, c) for c in g["conc"]}
        dense_mb: dict[tuple[int, int], float] = {}
        rows = []
        checks_dense = g.get("dense_check", []) if not args.quick else []
        sizes = [(t, s, True) for t, s in g["sizes"] + checks_dense] + [(t, s, False) for t, s in g["sparse_only"]]
        for T, S, with_dense in sizes:
            for c in g["conc"]:
                block = crop(sims[c], T, S)
                if block.n_active == 0 or len(block.target) == 0:
                    skipped.append(f"{dims}D {T}x{S} c={c}")
                    continue
                sp = measure("sparse", block, spec, device, optimizer=args.optimizer)
                if with_dense and (T, S) not in dense_mb:  # dense memory does not depend on the content
                    dense_mb[(T, S)] = measure("dense", block, spec, device, optimizer=args.optimizer)["peak"]
                rows.append({"dims": dims, "T": T, "S": S, "c": c, "n_active": block.n_active, "voxels": block.voxels,
                             "sparse": sp["peak"], "dense": dense_mb.get((T, S)) if with_dense else None,
                             "sites": sp["sites"], "sparse_s": sp["seconds"]})  # fmt: skip
        # paper size, high concentration: direct sparse measurements (init heads, then oracle heads)
        c_hi = HIGH_C[dims]
        big = crop(simulate(dims, c_hi), PAPER_T, PAPER_S)
        direct = {}
        if paper and (dims == 2 or args.kernel == 3):
            swept = [r for r in rows if (r["T"], r["S"], r["c"]) == (PAPER_T, PAPER_S, c_hi)]
            if swept:
                direct["sparse"] = {"peak": swept[0]["sparse"], "sites": swept[0]["sites"]}
            else:
                m = measure("sparse", big, spec, device, optimizer=args.optimizer)
                direct["sparse"] = m
                rows.append({"dims": dims, "T": PAPER_T, "S": PAPER_S, "c": c_hi, "n_active": big.n_active, "voxels": big.voxels,
                             "sparse": m["peak"], "dense": dense_mb.get((PAPER_T, PAPER_S)), "sites": m["sites"],
                             "sparse_s": m["seconds"]})  # fmt: skip
            direct["oracle"] = measure("sparse", big, spec, device, heads="oracle", optimizer=args.optimizer)
        points += rows
        # fits on the smaller blocks only: the paper size, where measured, checks the extrapolation
        fit_rows = [r for r in rows if (r["T"], r["S"]) != (PAPER_T, PAPER_S)]
        left_out = {(PAPER_T, PAPER_S), *checks_dense}
        dfit = dense_fit([{"dims": dims, "T": t, "S": s, "dense": v} for (t, s), v in dense_mb.items() if (t, s) not in left_out])
        dfit["checks"] = [{"T": t, "S": s, "measured": dense_mb[(t, s)], "predicted": dense_predict(dfit, dims, t, s)}
                          for t, s in [*checks_dense, (PAPER_T, PAPER_S)] if (t, s) in dense_mb]  # fmt: skip
        sfit = sparse_fit(fit_rows)
        # active-site density per voxel at each concentration, on the whole simulated 512 x 32^d tile (the one the paper-size
        # block is): small corner crops sample it poorly (a few slow MBs dominate them); the crops' own density is printed too
        density = {c: len(sims[c].sites) / (PAPER_T * PAPER_S**dims) for c in g["conc"]}
        crop_sites = {c: (sum(r["n_active"] for r in fit_rows if r["c"] == c), sum(r["voxels"] for r in fit_rows if r["c"] == c))
                      for c in g["conc"]}  # fmt: skip
        density_crops = {c: n / v for c, (n, v) in crop_sites.items() if v}
        n_paper = density[c_hi] * PAPER_T * PAPER_S**dims
        dense_fit_mb = dense_predict(dfit, dims, PAPER_T, PAPER_S)
        dense_fit1_mb = dfit["a1"] + dfit["b1_per_voxel"] * PAPER_T * PAPER_S**dims
        sparse_fit_mb = sfit["a"] + sfit["b_per_site"] * n_paper
        dense_meas = dense_mb.get((PAPER_T, PAPER_S))
        sparse_meas = direct["sparse"]["peak"] if direct else None
        dense_best, sparse_best = dense_meas or dense_fit_mb, sparse_meas or sparse_fit_mb
        result[dims] = {
            "ratio": dense_best / sparse_best, "ratio_fit": dense_fit_mb / sparse_fit_mb,
            "dense_mb": dense_best / MB, "sparse_mb": sparse_best / MB,
            "dense_source": "measured" if dense_meas else "fit", "sparse_source": "measured" if sparse_meas else "fit",
            "dense_fit_mb": dense_fit_mb / MB, "dense_fit1_mb": dense_fit1_mb / MB, "sparse_fit_mb": sparse_fit_mb / MB,
            "n_active_paper": big.n_active,
            "active_fraction_paper": big.n_active / big.voxels, "eq1": big.voxels / big.n_active,
            "density": density, "density_crops": density_crops, "dense_fit": dfit, "sparse_fit": sfit,
            "n_active_paper_crops": density_crops.get(c_hi, float("nan")) * PAPER_T * PAPER_S**dims,
            "oracle_sparse_mb": direct["oracle"]["peak"] / MB if direct else None,
            "oracle_ratio": dense_best / direct["oracle"]["peak"] if direct else None,
            "paper_sites": direct["sparse"]["sites"] if direct else None,
            "oracle_sites": direct["oracle"]["sites"] if direct else None,
            "ratio_fit_by_c": {c: dense_fit_mb / (sfit["a"] + sfit["b_per_site"] * v * PAPER_T * PAPER_S**dims)
                               for c, v in density.items()},
            "eq1_by_c": {c: 1 / v for c, v in density.items()},
        }  # fmt: skip

    checks = []
    if device.type == "cpu" and not args.no_rss_check:
        for kind, dims, T, S, c in RSS_CHECK["quick" if args.quick else "full"]:
            if dims in args.dims:
                spec = NetSpec(dims=dims, kernel=args.kernel, width=16)
                m = measure(kind, crop(simulate(dims, c), T, S), spec, device, optimizer=args.optimizer)
                rss = rss_check(kind, dims, T, S, c, args.kernel, args.optimizer, args.threads)
                step_mb = (m["peak"] - m["held"]) / MB
                checks.append({"kind": kind, "dims": dims, "T": T, "S": S, "c": c, "profiler_step_mb": step_mb,
                               "rss_step_mb": rss["rss_step"] / MB, "rss_method": rss["method"]})  # fmt: skip
    elapsed = time.perf_counter() - t_start
    report(points, result, checks, skipped)
    print(f"\ntotal {elapsed:.0f} s")
    setup = {"device": str(device), "kernel": args.kernel, "quick": args.quick, "optimizer": args.optimizer, "measure": method,
             "seconds": elapsed}  # fmt: skip
    line = json.dumps(summary(points, result, checks, setup), default=float)
    if args.out:
        write_outputs(args.out, points, result, line)
        print(f"wrote {args.out}/memory.csv, memory.png, memory.json")
    if args.json:
        print(line)


def summary(points: list[dict], result: dict, checks: list[dict], setup: dict) -> dict:
    """The JSON object of --json (and memory.json): paper-size ratios and peaks per dims, fits, points, setup."""
    out = {f"ratio_{d}d": res["ratio"] for d, res in result.items()}
    for d, res in result.items():
        out[f"ratio_{d}d_fit"] = res["ratio_fit"]
        for k in ("eq1", "dense_mb", "sparse_mb", "dense_source", "sparse_source", "dense_fit_mb", "dense_fit1_mb",
                  "sparse_fit_mb", "n_active_paper", "n_active_paper_crops", "active_fraction_paper", "oracle_ratio",
                  "oracle_sparse_mb", "ratio_fit_by_c", "eq1_by_c"):  # fmt: skip
            out[f"{k}_{d}d"] = res[k]
        out[f"fit_{d}d"] = {"dense": res["dense_fit"], "sparse": res["sparse_fit"]}
    out.update({"points": points, "rss_check": checks, **setup})
    return out


def report(points: list[dict], result: dict, checks: list[dict], skipped: list[str]) -> None:
    print()
    print(f"{'dims':>4s} {'T':>4s} {'S':>3s} {'c':>3s} {'active':>8s} {'frac':>7s} {'sparse MB':>10s} {'dense MB':>10s} "
          f"{'dense/sp':>8s} {'1/frac':>7s}  sparse sites per scale (x1..x8)")  # fmt: skip
    for r in points:
        frac = r["n_active"] / r["voxels"]
        dense = f"{r['dense'] / MB:10.1f}" if r["dense"] else f"{'-':>10s}"
        ratio = f"{r['dense'] / r['sparse']:8.2f}" if r["dense"] else f"{'-':>8s}"
        print(f"{r['dims']:>3d}D {r['T']:4d} {r['S']:3d} {r['c']:3d} {r['n_active']:8d} {frac:7.4f} {r['sparse'] / MB:10.1f} "
              f"{dense} {ratio} {1 / frac:7.1f}  {r['sites']}")  # fmt: skip
    print("(dense is measured once per size, it does not depend on the content; rows at 512 x 32: the paper size)")
    if skipped:
        print(f"(crops without any MB, skipped: {', '.join(skipped)})")

    print()
    for dims, res in result.items():
        d, s = res["dense_fit"], res["sparse_fit"]
        print(
            f"{dims}D fits (paper-size points left out): dense = {d['a'] / MB:.1f} MB + {d['b_per_voxel']:.1f} B x voxels "
            f"+ {d['f_per_fine_site']:.1f} B x finest-grid sites"
        )
        print(f"    one-term dense = {d['a1'] / MB:.1f} MB + {d['b1_per_voxel']:.1f} B x voxels")
        print(f"    sparse = {s['a'] / MB:.1f} MB + {s['b_per_site']:.1f} B x active sites")
        if "holdout" in d:
            h = d["holdout"]
            print(
                f"    dense hold-out check: T={h['T']} S={h['S']} measured {h['measured'] / MB:.1f} MB, "
                f"fit of the other sizes {h['predicted'] / MB:.1f} MB ({h['predicted'] / h['measured'] - 1:+.1%})"
            )
        for h in d["checks"]:
            print(
                f"    dense check (left out of the fit): T={h['T']} S={h['S']} measured {h['measured'] / MB:.1f} MB, "
                f"fit {h['predicted'] / MB:.1f} MB ({h['predicted'] / h['measured'] - 1:+.1%})"
            )
        dens = ", ".join(
            f"c={c}: {v:.4f} (crops {res['density_crops'].get(c, float('nan')):.4f})" for c, v in res["density"].items()
        )
        print(f"    active-site density per voxel, whole simulated tile: {dens}")
        by_c = ", ".join(f"c={c}: {v:.2f} (1/frac {res['eq1_by_c'][c]:.1f})" for c, v in res["ratio_fit_by_c"].items())
        print(f"    fitted dense/sparse at the paper size by concentration: {by_c}")

    print()
    print(f"paper sizes (2D {PAPER_T} x {PAPER_S}^2, 3D {PAPER_T} x {PAPER_S}^3), high concentration; ratio = dense / sparse:")
    print(f"{'dims':>4s} {'c':>3s} {'active':>9s} {'crops':>9s} {'dense MB':>10s} {'src':>8s} {'sparse MB':>10s} {'src':>8s} "
          f"{'ratio':>7s} {'fit ratio':>9s} {'1/frac':>7s} {'oracle':>7s}")  # fmt: skip
    for dims, res in result.items():
        oracle = f"{res['oracle_ratio']:7.2f}" if res["oracle_ratio"] else f"{'-':>7s}"
        print(f"{dims:>3d}D {HIGH_C[dims]:3d} {res['n_active_paper']:9d} {res['n_active_paper_crops']:9.0f} "
              f"{res['dense_mb']:10.1f} {res['dense_source']:>8s} {res['sparse_mb']:10.1f} {res['sparse_source']:>8s} "
              f"{res['ratio']:7.2f} {res['ratio_fit']:9.2f} {res['eq1']:7.1f} {oracle}")  # fmt: skip
    for dims, res in result.items():
        print(
            f"  {dims}D fits at the paper size: dense {res['dense_fit_mb']:.1f} MB (one-term {res['dense_fit1_mb']:.1f} MB), "
            f"sparse {res['sparse_fit_mb']:.1f} MB"
        )
        if res["paper_sites"]:
            print(
                f"     sparse sites per scale {res['paper_sites']}; oracle heads (only the ground truth survives pruning): "
                f"{res['oracle_sparse_mb']:.1f} MB, sites {res['oracle_sites']}"
            )
        target = 3.0 if dims == 2 else 200.0
        print(
            f"     target >= {target:g}x: {'met' if res['ratio'] >= target else 'MISSED'} ({res['ratio']:.2f}x); "
            f"paper: ~{PAPER_SAVING[dims]:g}x saving, dense ~{PAPER_GB[dims]:g} GB per sample (their estimate, kernel 5)"
        )

    for c in checks:
        ratio = c["rss_step_mb"] / c["profiler_step_mb"]
        print(
            f"cross-check {c['kind']} {c['dims']}D T={c['T']} S={c['S']} c={c['c']}: step peak above the held memory: "
            f"profiler {c['profiler_step_mb']:.1f} MB, fresh-process resident set ({c['rss_method']}) {c['rss_step_mb']:.1f} MB "
            f"(x{ratio:.2f})"
        )


if __name__ == "__main__":
    main()

"""Sparse conversion and block-serving throughput, against the dense baseline in the same process
(these machines are noisy: compare the ratios, not the absolute numbers).

    python benchmarks/sparse.py [--frames 8192] [--concentration 20] [--dims 2] [--block-frames 512] [--json]

Builds a realistic iq.zarr in a temporary directory by running the pipeline stages in-process on the
bundled graph (bundled:mouse_20120409 -> Poiseuille flow -> ``--frames`` frames of ``--concentration``
microbubbles -> PSF-mode forward model with the default probe, noise and pixel size), then measures:

* conversion: frames per second of ``sparsify_iq`` (threshold and top-k, the configured ``tau`` and
  ``topk_k``, ``sparse.workers`` dask threads), of the dense baseline, which reads the same blocks
  from iq.zarr and normalises them (what every block costs before any site is dropped), and of the
  threshold selection alone (read + ``sparsify_block``, nothing written: the store's share);
* serving: blocks per second of ``SparseBlocks`` through a torch DataLoader with ``collate_sparse``
  (num_workers 0 and 2, batch 1 and 4), and of ``DenseBlocks`` (default collate) on the same blocks;
* size: compression = chunk bytes of iq.zarr / chunk bytes of sparse.zarr on disk (``ulm.sparse.store_bytes``),
  the kept fraction of sites and the mean bytes of one block as tensors (sparse vs dense).

With --json the last line is one JSON object. Headline keys (threshold method): ``frames_per_s``,
``blocks_per_s`` (the fastest DataLoader setting), ``compression_vs_iq``; also ``dense_frames_per_s``,
``dense_blocks_per_s``, ``select_frames_per_s``, ``conversion_vs_dense``, ``serving_vs_dense``, per-method and per-setting
numbers (``topk_*``, ``blocks_per_s_w{workers}_b{batch}``, ``dense_blocks_per_s_w{workers}_b{batch}``)
and the setup.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from report_table import print_rows  # benchmarks/report_table.py, beside this script
from torch.utils.data import DataLoader, Dataset

from ulm.bubbles import simulate_tracks
from ulm.config import load_config
from ulm.flow import solve_flow
from ulm.forward.simulate import simulate_iq
from ulm.nn.data import DenseBlocks, SparseBlocks, collate_sparse
from ulm.sparse import cut, make_tiling, normalise, sparsify_block, sparsify_iq, store_bytes
from ulm.store import CooStore, read_iq
from ulm.vascular import build_graph

GRAPH = "bundled:mouse_20120409"
SETTINGS = [(0, 1), (0, 4), (2, 1), (2, 4)]  # (num_workers, batch_size)
MIN_SERVE_S, WINDOWS = 0.4, 3  # each DataLoader setting: best of 3 timings over whole epochs of >= 0.4 s
SEED = 0


def best_of(func: Callable[[], object], repeats: int) -> float:
    """Fastest wall time of ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        func()
        times.append(time.perf_counter() - t0)
    return min(times)


def build_iq(workdir: Path, cfg: dict, dims: int) -> tuple[Path, Path, float]:
    """tracks.zarr and iq.zarr from the real stages (graph -> flow -> bubbles -> forward); setup seconds."""
    t0 = time.perf_counter()
    graph = build_graph(GRAPH, cfg["graph"])
    flow = solve_flow(graph, cfg["flow"])
    tracks, iq = workdir / "tracks.zarr", workdir / f"iq{dims}d.zarr"
    simulate_tracks(graph, flow, cfg["bubbles"], SEED, path=tracks, progress=False)
    simulate_iq(tracks, iq, cfg, dims=dims, seed=SEED, progress=False)
    return tracks, iq, time.perf_counter() - t0


def dense_conversion(iq_path: Path, scfg: dict, select: bool = False) -> None:
    """Baseline: read every block of the tiling from iq.zarr and normalise it (no site dropped); with
    ``select``, pick the kept sites in memory too (``sparsify_block``, no store written)."""
    iq = read_iq(iq_path)
    tiling = make_tiling(iq.iq.shape, scfg)
    frames = tiling.block_shape[0]
    for t0 in tiling.time_blocks():
        data = iq.iq[t0 : t0 + frames]
        for origin in tiling.tiles_of(t0):
            block = cut(data, origin, tiling.block_shape, t0)
            if select:
                sparsify_block(block, scfg["method"], scfg["tau"], scfg["topk_k"])
                continue
            _, scale = normalise(block)
            np.stack([block.real, block.imag]).astype(np.float32) / np.float32(scale)


def serve_rate(dataset: Dataset, workers: int, batch: int, collate: Callable | None) -> float:
    """Blocks per second a DataLoader delivers: the best of WINDOWS timings over whole epochs of at least
    MIN_SERVE_S each, after one warm-up epoch (worker start-up, store opening, page cache)."""
    loader = DataLoader(
        dataset, batch_size=batch, num_workers=workers, collate_fn=collate, persistent_workers=workers > 0, shuffle=False
    )
    for _ in loader:
        pass
    rates = []
    for _ in range(WINDOWS):
        blocks, t0 = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - t0) < MIN_SERVE_S:
            for _ in loader:
                pass
            blocks += len(dataset)
        rates.append(blocks / elapsed)
    del loader  # stops persistent workers
    return max(rates)


def tensor_bytes(store: CooStore, dims: int) -> tuple[float, int]:
    """Mean bytes of one block as sparse tensors (int32 coords + 2 float32 feats per site) and as a dense one."""
    sites = np.diff(store.offsets).mean()
    return sites * ((1 + dims) * 4 + 2 * 4), 2 * 4 * int(np.prod(store.attrs["block_shape"]))


def measure(args: argparse.Namespace) -> dict:
    """Every number of the table, keyed as in the JSON line."""
    overrides = [
        f"bubbles.n_frames={args.frames}",
        f"bubbles.concentration={args.concentration}",
        f"bubbles.chunk_frames={min(args.frames, 1024)}",
        f"forward.block_frames={args.block_frames}",
        f"sparse.block_frames={args.block_frames}",
    ]
    cfg = load_config(overrides=overrides)
    scfg = cfg["sparse"]
    r: dict = {"graph": GRAPH, "dims": args.dims, "frames": args.frames, "concentration": args.concentration}
    with tempfile.TemporaryDirectory(prefix="ulm-bench-sparse-") as tmp:
        workdir = Path(tmp)
        _, iq, r["setup_s"] = build_iq(workdir, cfg, args.dims)
        iq_shape = read_iq(iq).iq.shape
        tiling = make_tiling(iq_shape, scfg)
        converted = len(tiling.time_blocks()) * tiling.block_shape[0]  # trailing frames are dropped
        r |= {
            "iq_shape": list(iq_shape),
            "block_shape": list(tiling.block_shape),
            "blocks": len(tiling),
            "frames_converted": converted,
            "tau": scfg["tau"],
            "topk_k": scfg["topk_k"],
            "workers": scfg["workers"],
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
        }
        r["iq_bytes"] = store_bytes(iq)
        r["dense_frames_per_s"] = converted / best_of(lambda: dense_conversion(iq, scfg), args.repeats)
        r["select_frames_per_s"] = converted / best_of(lambda: dense_conversion(iq, scfg, select=True), args.repeats)
        for method in ("threshold", "topk"):
            out = workdir / f"sparse-{method}.zarr"
            mcfg = {**scfg, "method": method}
            seconds = best_of(lambda mcfg=mcfg, out=out: sparsify_iq(iq, out, mcfg, progress=False), args.repeats)
            store = CooStore(out)
            prefix = "" if method == "threshold" else "topk_"
            sparse_bytes, dense_bytes = tensor_bytes(store, args.dims)
            r |= {
                f"{prefix}frames_per_s": converted / seconds,
                f"{prefix}sparse_bytes": store_bytes(out),
                f"{prefix}compression_vs_iq": r["iq_bytes"] / store_bytes(out),
                f"{prefix}kept_fraction": float(store.offsets[-1]) / (len(store) * np.prod(tiling.block_shape)),
                f"{prefix}block_tensor_bytes": sparse_bytes,
            }
            r["dense_block_tensor_bytes"] = dense_bytes
        sparse_ds = SparseBlocks(workdir / "sparse-threshold.zarr")
        dense_ds = DenseBlocks(iq, workdir / "sparse-threshold.zarr")
        for workers, batch in SETTINGS:
            r[f"blocks_per_s_w{workers}_b{batch}"] = serve_rate(sparse_ds, workers, batch, collate_sparse)
            r[f"dense_blocks_per_s_w{workers}_b{batch}"] = serve_rate(dense_ds, workers, batch, None)
    best = max(SETTINGS, key=lambda s: r[f"blocks_per_s_w{s[0]}_b{s[1]}"])
    r["blocks_per_s"] = r[f"blocks_per_s_w{best[0]}_b{best[1]}"]
    r["blocks_per_s_setting"] = {"num_workers": best[0], "batch_size": best[1]}
    r["dense_blocks_per_s"] = max(r[f"dense_blocks_per_s_w{w}_b{b}"] for w, b in SETTINGS)
    r["conversion_vs_dense"] = r["frames_per_s"] / r["dense_frames_per_s"]
    r["serving_vs_dense"] = r["blocks_per_s"] / r["dense_blocks_per_s"]
    return r


def print_table(r: dict) -> None:
    print(
        f"{r['dims']}D iq {tuple(r['iq_shape'])} from {r['graph']}, {r['concentration']} MB, "
        f"{r['iq_bytes'] / 1e6:.2f} MB on disk (setup {r['setup_s']:.1f} s); {r['blocks']} blocks of {tuple(r['block_shape'])}; "
        f"tau {r['tau']}, k {r['topk_k']}; {r['workers']} dask threads, {r['cpus']} CPUs, {r['torch_threads']} torch threads"
    )
    rows = [
        ("sparsify threshold, frames/s", r["frames_per_s"], ".0f"),
        ("sparsify top-k, frames/s", r["topk_frames_per_s"], ".0f"),
        ("dense baseline (read + normalise), frames/s", r["dense_frames_per_s"], ".0f"),
        ("threshold selection in memory (no store), frames/s", r["select_frames_per_s"], ".0f"),
        ("threshold conversion / dense baseline", r["conversion_vs_dense"], ".2f"),
        ("compression vs iq.zarr, threshold", r["compression_vs_iq"], ".1f"),
        ("compression vs iq.zarr, top-k", r["topk_compression_vs_iq"], ".1f"),
        ("kept fraction of sites, threshold", r["kept_fraction"], ".4f"),
        ("kept fraction of sites, top-k", r["topk_kept_fraction"], ".4f"),
        ("block as tensors, threshold (kB)", r["block_tensor_bytes"] / 1e3, ".1f"),
        ("block as a dense tensor (kB)", r["dense_block_tensor_bytes"] / 1e3, ".1f"),
    ]
    for workers, batch in SETTINGS:
        sparse, dense = r[f"blocks_per_s_w{workers}_b{batch}"], r[f"dense_blocks_per_s_w{workers}_b{batch}"]
        rows += [
            (f"SparseBlocks, workers {workers}, batch {batch}, blocks/s", sparse, ".0f"),
            (f"DenseBlocks,  workers {workers}, batch {batch}, blocks/s", dense, ".0f"),
            (f"  sparse / dense, workers {workers}, batch {batch}", sparse / dense, ".2f"),
        ]
    best = f"workers {r['blocks_per_s_setting']['num_workers']}, batch {r['blocks_per_s_setting']['batch_size']}"
    rows.append((f"best SparseBlocks ({best}) / best DenseBlocks", r["serving_vs_dense"], ".2f"))
    print_rows(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=8192, help="frames simulated (trailing partial block dropped)")
    parser.add_argument("--concentration", type=int, default=20, help="mean microbubbles in the volume")
    parser.add_argument("--dims", type=int, choices=(2, 3), default=2, help="2 (linear array) or 3 (matrix array)")
    parser.add_argument("--block-frames", type=int, default=512, help="sparse.block_frames (and forward.block_frames)")
    parser.add_argument("--repeats", type=int, default=3, help="conversions timed per method (best kept)")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    args = parser.parse_args()
    if args.frames < args.block_frames or args.concentration < 1 or args.repeats < 1:
        parser.error("--frames must be >= --block-frames, --concentration and --repeats >= 1")
    result = measure(args)
    print_table(result)
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()

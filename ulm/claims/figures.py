"""Figures of the claims check: Dice against the fraction of sites kept (the sparsification trade-off),
the ablation bars, and the density maps of every method side by side at the lowest and the highest
concentration."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ulm.claims.verdicts import CONVENTIONAL, SPARSE, TRIVIAL, dice_vs_kept
from ulm.config import ABLATIONS, network_map_name
from ulm.errors import UlmError
from ulm.results import jackknife_interval, read_table
from ulm.store import read_density, save_figure

MARKERS = {"threshold": "o", "topk": "s", "learned": "^"}


def _ci(run: dict, name: str) -> float:
    half = jackknife_interval(run.get("dice_loo", {}).get(name, []))
    return 0.0 if half is None else half


def plot_dice_vs_kept(runs: dict, kept: dict, headline_input: str, path: str | Path) -> None:
    """Dice of the network trained and scored on each sparsification against the fraction of sites it
    keeps, one panel per dimensionality with a sweep, one line per concentration; the trivial predictor
    and conventional ULM of the highest concentration as dashed levels."""
    labels = {d: {k[2] for k in kept if k[0] == d} for d in (2, 3)}
    dims_list = [d for d in (2, 3) if len(labels[d]) > 1] or [2]  # dimensionalities with a sweep
    fig = Figure(figsize=(5.6 * len(dims_list), 4.2), layout="constrained")
    axes = fig.subplots(1, len(dims_list), squeeze=False)
    for ax, dims in zip(axes[0], dims_list, strict=True):
        concs = sorted(c for d, c in runs if d == dims)
        for i, c in enumerate(concs):
            points = dice_vs_kept(runs[dims, c], kept, dims, c, headline_input)
            if not points:
                continue
            ax.plot([p["kept"] for p in points], [p["dice"] for p in points], "-", color=f"C{i}", alpha=0.5)
            for p in points:
                ax.errorbar(
                    p["kept"],
                    p["dice"],
                    yerr=_ci(runs[dims, c], p["map"]),
                    fmt=MARKERS.get(p["method"], "o"),
                    color=f"C{i}",
                    capsize=2,
                )
            ax.plot([], [], "-", color=f"C{i}", label=f"{c} MBs")
        top = runs[dims, concs[-1]]["dice"] if concs else {}
        for name, style in ((CONVENTIONAL, "--"), (TRIVIAL, ":")):
            if name in top:
                ax.axhline(top[name], ls=style, color="grey", label=f"{name} ({concs[-1]} MBs)")
        for method, marker in MARKERS.items():
            ax.plot([], [], marker, color="k", label=method)
        ax.set(
            xscale="log",
            xlabel="fraction of sites kept (test data)",
            ylabel="Dice vs ground truth",
            ylim=(0, 1),
            title=f"{dims}D: the network on each sparsification",
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save_figure(fig, path)


def plot_ablation(runs: dict, path: str | Path) -> None:
    """Dice of the headline network, its variants, conventional ULM and the trivial predictor at the
    highest concentration of each dimensionality, with 95 % jackknife intervals."""
    names = [SPARSE] + [network_map_name("sparse", v) for v in ABLATIONS] + [network_map_name("dense"), CONVENTIONAL, TRIVIAL]
    labels = ["headline"] + list(ABLATIONS) + ["dense twin", "conventional", "trivial"]
    dims_list = sorted({d for d, _ in runs})
    fig = Figure(figsize=(6.0 * len(dims_list), 4.0), layout="constrained")
    axes = fig.subplots(1, len(dims_list), squeeze=False)
    for ax, dims in zip(axes[0], dims_list, strict=True):
        top = max(c for d, c in runs if d == dims)
        run = runs[dims, top]
        shown = [(lab, n) for lab, n in zip(labels, names, strict=True) if n in run.get("dice", {})]
        x = np.arange(len(shown))
        ax.bar(
            x,
            [run["dice"][n] for _, n in shown],
            yerr=[_ci(run, n) for _, n in shown],
            capsize=3,
            color=["C0"] + ["C1"] * (len(shown) - 1),
        )
        tolerant = [run.get("tolerant", {}).get(n, {}).get("dice_tolerant", np.nan) for _, n in shown]
        ax.plot(x, tolerant, "k_", markersize=14, label="tolerant Dice (1 px)")
        ax.set_xticks(x, [lab for lab, _ in shown], rotation=30, ha="right")
        ax.set(ylabel="Dice vs ground truth", ylim=(0, 1), title=f"{dims}D, {top} MBs")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7)
    save_figure(fig, path)


def plot_maps(density_dirs: dict[tuple[int, int], Path], path: str | Path, gamma: float = 0.5) -> None:
    """Density maps side by side: one row per (dims, concentration) given (e.g. the lowest and the
    highest of each dimensionality), columns ground truth, conventional, sparse, dense, trivial
    (3D: maximum intensity projection along y)."""
    from matplotlib.colors import PowerNorm

    columns = ["ground_truth", CONVENTIONAL, SPARSE, network_map_name("dense"), TRIVIAL]
    keys = sorted(density_dirs)
    present = [c for c in columns if any((density_dirs[k] / f"{c}.zarr").exists() for k in keys)]
    if not present:
        raise UlmError("claims --maps-plot needs density/ folders written by `ulm render` (--density)")
    fig = Figure(figsize=(3.2 * len(present), 3.0 * len(keys)), layout="constrained")
    axes = fig.subplots(len(keys), len(present), squeeze=False)
    for i, key in enumerate(keys):
        for j, name in enumerate(present):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            store = density_dirs[key] / f"{name}.zarr"
            if not store.exists():
                ax.axis("off")  # e.g. no dense twin in 3D
                continue
            image = read_density(store).density
            image = image.max(axis=1) if image.ndim == 3 else image
            ax.imshow(
                image, cmap="hot", norm=PowerNorm(gamma, vmin=0, vmax=max(float(image.max()), 1.0)), interpolation="nearest"
            )
            ax.set_title(f"{name.replace('_', ' ')}\n{key[0]}D, {key[1]} MBs", fontsize=8)
    save_figure(fig, path)


def plot_learning(train_metrics: list[str | Path], path: str | Path) -> None:
    """Validation Dice per epoch of every network (epoch 0: untrained), its trivial predictor on the same
    validation blocks dashed, one panel per dimensionality (folders ``<d>d/net-<model>-<input>-<variant>``)."""
    if not train_metrics:
        raise UlmError("claims --learning-plot needs the networks' training logs (--train-metrics)")
    curves: dict[str, list[tuple[str, list[dict]]]] = {}
    for p in map(Path, train_metrics):
        rows = read_table(p, "training log", {"epoch": int, "val_dice": float})
        curves.setdefault(p.parent.parent.name, []).append((p.parent.name.removeprefix("net-"), rows))
    fig = Figure(figsize=(6.4 * len(curves), 4.4), layout="constrained")
    axes = fig.subplots(1, len(curves), squeeze=False)
    for ax, (dims, nets) in zip(axes[0], sorted(curves.items()), strict=True):
        for i, (name, rows) in enumerate(sorted(nets)):
            ax.plot([r["epoch"] for r in rows], [r["val_dice"] for r in rows], "-", color=f"C{i % 10}", label=name)
            if rows and rows[0].get("trivial_val_dice"):
                ax.axhline(float(rows[0]["trivial_val_dice"]), ls="--", lw=0.8, color=f"C{i % 10}")
        ax.set(
            xlabel="epoch (0: untrained)",
            ylabel="validation Dice (dashed: trivial predictor)",
            ylim=(0, 1),
            title=f"{dims[:-1]}D networks on the training graph's validation blocks",
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    save_figure(fig, path)

"""Figures a person looks at after each stage (PNG, written atomically by :func:`ulm.store.save_figure`).

Figures are made with matplotlib's object-oriented API (``matplotlib.figure.Figure``), without pyplot:
importing this module leaves the process's matplotlib backend as it was (Jupyter, napari)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.collections import LineCollection
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from ulm.store import Flow, Graph, Tracks, save_figure


def velocity_summary(graph: Graph, flow: Flow) -> dict:
    """Median |v_mean| (mm/s) per vessel type, and the number of edges of each type."""
    speed = np.abs(flow.v_mean_mm_s)
    out = {}
    for kind in ("artery", "capillary", "vein", "unknown"):
        sel = graph.vessel_type == kind
        if sel.any():
            out[kind] = {"median_v_mm_s": float(np.median(speed[sel])), "n_edges": int(sel.sum())}
    return out


def plot_flow(graph: Graph, flow: Flow, path: str | Path) -> None:
    """Graph projected on the x-z plane coloured by |v_mean|, and the capillary velocity histogram."""
    speed = np.abs(flow.v_mean_mm_s)
    fig = Figure(figsize=(12, 5))
    ax_map, ax_hist = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.2, 1]})
    segments = graph.pos_um[graph.edges][:, :, [0, 2]]
    positive = speed[speed > 0]
    norm = LogNorm(vmin=max(np.percentile(positive, 2), 1e-3), vmax=np.percentile(positive, 99.5)) if len(positive) else None
    order = np.argsort(speed)  # fast vessels on top
    lines = LineCollection(segments[order], cmap="inferno", norm=norm, linewidths=0.4 + graph.diam_um[order] / 15)
    lines.set_array(np.maximum(speed[order], 1e-6))
    ax_map.add_collection(lines)
    ax_map.set_xlim(segments[..., 0].min(), segments[..., 0].max())
    ax_map.set_ylim(segments[..., 1].max(), segments[..., 1].min())  # depth down
    ax_map.set_aspect("equal")
    ax_map.set_facecolor("0.15")
    ax_map.set_xlabel("x (um)")
    ax_map.set_ylabel("z, depth (um)")
    ax_map.set_title("Mean velocity, projected along y")
    fig.colorbar(lines, ax=ax_map, label="|v_mean| (mm/s)")
    summary = velocity_summary(graph, flow)
    cap = speed[graph.vessel_type == "capillary"]
    if len(cap) and cap.max() > 0:
        bins = np.logspace(np.log10(max(cap[cap > 0].min(), 1e-4)), np.log10(cap.max()), 50)
        ax_hist.hist(cap[cap > 0], bins=bins, color="tab:blue")
        ax_hist.set_xscale("log")
        ax_hist.axvline(np.median(cap), color="k", ls="--", label=f"median {np.median(cap):.2f} mm/s")
        ax_hist.axvspan(0.5, 3.0, color="tab:green", alpha=0.15, label="physiological 0.5-3 mm/s")
        ax_hist.legend(loc="upper left")
    medians = ", ".join(f"{k} {v['median_v_mm_s']:.2f}" for k, v in summary.items())
    ax_hist.set_xlabel("capillary |v_mean| (mm/s)")
    ax_hist.set_ylabel("edges")
    ax_hist.set_title(f"Capillary velocities\nmedian |v_mean| (mm/s): {medians}", fontsize=10)
    save_figure(fig, path)


def plot_tracks(tracks: Tracks, target_count: int, path: str | Path, max_frames: int = 1000) -> None:
    """Trajectories of the first frames (x-z projection) and the MB count per frame."""
    n_show = min(tracks.n_frames, max_frames)
    rows = slice(0, int(tracks.frame_offsets[n_show]))
    pos, ids = tracks.pos_um[rows], tracks.bubble[rows]
    fig = Figure(figsize=(12, 5))
    ax_tr, ax_n = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.2, 1]})
    order = np.lexsort((np.arange(len(ids)), ids))
    pos, ids = pos[order], ids[order]
    breaks = np.flatnonzero(np.diff(ids)) + 1
    for part in np.split(np.arange(len(ids)), breaks):
        ax_tr.plot(pos[part, 0], pos[part, 2], lw=0.6)
    ax_tr.invert_yaxis()
    ax_tr.set_aspect("equal")
    ax_tr.set_xlabel("x (um)")
    ax_tr.set_ylabel("z, depth (um)")
    ax_tr.set_title(f"Ground-truth tracks, first {n_show} frames")
    rate = tracks.attrs.get("frame_rate_hz", 1.0)
    t_s = np.arange(tracks.n_frames) / rate
    ax_n.axhline(target_count, color="k", ls="--", label=f"target {target_count}")
    ax_n.plot(t_s, np.diff(tracks.frame_offsets), lw=1.5, color="tab:red", label="MBs in the volume")
    ax_n.set_ylim(0, 1.5 * target_count + 1)
    ax_n.set_xlabel("time (s)")
    ax_n.set_ylabel("MB count per frame")
    ax_n.legend()
    save_figure(fig, path)


def plot_iq(iq, path: str | Path, max_frames: int = 512) -> None:
    """Mean power (dB) over the first frames and one frame's |IQ|; maximum projections in 3D."""
    frames = iq.iq[: min(iq.iq.shape[0], max_frames)]
    power = np.mean(np.abs(frames) ** 2, axis=0)
    one = np.abs(frames[np.argmax(np.abs(frames).reshape(len(frames), -1).max(axis=1))])
    origin, spacing = iq.attrs["origin_um"], iq.attrs["spacing_um"]
    # (z, x) views: the image itself in 2D, the maximum along y in 3D
    views = [(power, one)] if iq.dims == 2 else [(power.max(axis=1), one.max(axis=1))]
    (p, o) = views[0]
    nz, nx = p.shape
    ext = [
        origin[-1] - spacing[-1] / 2,
        origin[-1] + (nx - 0.5) * spacing[-1],
        origin[0] + (nz - 0.5) * spacing[0],
        origin[0] - spacing[0] / 2,
    ]
    fig = Figure(figsize=(11, 4.8))
    axes = fig.subplots(1, 2)
    db = 10 * np.log10(p / p.max() + 1e-12)
    im0 = axes[0].imshow(db, extent=ext, cmap="gray", vmin=-40, vmax=0)
    fig.colorbar(im0, ax=axes[0], label="mean power (dB)")
    im1 = axes[1].imshow(o, extent=ext, cmap="hot")
    fig.colorbar(im1, ax=axes[1], label="|IQ| (1 = one MB at the centre depth)")
    what = "" if iq.dims == 2 else " (max over y)"
    axes[0].set_title(f"Mean power, {len(frames)} frames{what}")
    axes[1].set_title(f"Brightest frame{what}, {iq.attrs['mode']} mode")
    for ax in axes:
        ax.set_xlabel("x (um)")
        ax.set_ylabel("z, depth (um)")
    save_figure(fig, path)


def plot_trade_off(rows: list[dict], point: dict, iq_bytes: int, sparse_bytes: int, path: str | Path) -> None:
    """Kept fraction of sites vs fraction of imaged MB positions kept, with the configured point."""
    fig = Figure(figsize=(6.5, 4.8))
    ax = fig.subplots()
    kept = [r["kept_fraction"] for r in rows]
    mb = [r["mb_fraction"] for r in rows]
    ax.plot(kept, mb, "o-", label=f"{rows[0]['method']} sweep")
    last = 0.0
    for r in sorted(rows, key=lambda r: r["kept_fraction"]):  # label points at least 1.6x apart
        if r["kept_fraction"] > 1.6 * last:
            xy = (r["kept_fraction"], r["mb_fraction"])
            ax.annotate(f"{r['parameter']:.3g}", xy, fontsize=7, xytext=(3, -9), textcoords="offset points")
            last = r["kept_fraction"]
    ax.plot(point["kept_fraction"], point["mb_fraction"], "r*", ms=14, label=f"configured ({point['parameter']:.3g})")
    ax.set_xscale("log")
    ax.set_xlabel("kept fraction of sites")
    ax.set_ylabel("fraction of imaged MB positions kept")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ratio = iq_bytes / max(sparse_bytes, 1)
    title = f"{rows[0]['method']}: sparse store {sparse_bytes / 1e6:.2f} MB vs iq {iq_bytes / 1e6:.2f} MB ({ratio:.1f}x smaller)"
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right")
    save_figure(fig, path)


def plot_training(rows: list[dict], path: str | Path) -> None:
    """Training / validation loss and validation Dice per epoch (epoch 0: untrained)."""
    epochs = [r["epoch"] for r in rows]
    fig = Figure(figsize=(11, 4))
    ax_l, ax_d = fig.subplots(1, 2)
    ax_l.plot(epochs[1:], [r["train_loss"] for r in rows[1:]], "o-", label="train")
    ax_l.plot(epochs, [r["val_loss"] for r in rows], "s-", label="validation")
    ax_l.set_xlabel("epoch")
    ax_l.set_ylabel("Dice loss")
    ax_l.legend()
    ax_d.plot(epochs, [r["val_dice"] for r in rows], "o-", color="tab:green")
    ax_d.set_xlabel("epoch")
    ax_d.set_ylabel("validation Dice (p > 0.5)")
    ax_d.set_ylim(0, 1)
    for ax in (ax_l, ax_d):
        ax.grid(alpha=0.3)
    save_figure(fig, path)

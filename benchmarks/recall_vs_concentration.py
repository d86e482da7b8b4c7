"""Conventional ULM on the demo volume: localization precision / recall / RMSE and map Dice vs MB concentration.

    python benchmarks/recall_vs_concentration.py [--concentrations 1 5 10 20] [--frames 2048] [--per image|volume]
                                                 [--set SECTION.KEY=VALUE] [--out benchmarks/out] [--json]

The real stage functions run in a temporary folder: the bundled graph ``bundled:mouse_20120409``
(ulm.vascular.build_graph), Poiseuille flow (ulm.flow.solve_flow), ground-truth tracks for each
concentration (ulm.bubbles.simulate_tracks), 2D PSF-mode IQ at 30 dB
(ulm.forward.simulate.simulate_iq), then conventional ULM (ulm.conventional.localize_iq) scored against
the ground truth (ulm.metrics.localization_metrics, tolerance lambda / 4) and the conventional density
map's Dice against the ground-truth map on the 8x grid (ulm.render). Writes
``recall_vs_concentration.csv`` and ``.png`` to ``--out``; with --json the last line is one JSON object
{"rows": [...], "localizer": ..., "frames": ...}.

Concentration: with ``--per image`` (default) it is the mean number of MBs per frame in the 2D image,
as in the paper's 2D tests; the pipeline's ``bubbles.concentration`` counts MBs in the whole volume, of
which the plane's 200 um slab sees a fraction, so the volume count is the concentration divided by that
fraction (measured on a 200-MB pilot run). ``--per volume`` uses the pipeline's meaning. The table
reports the measured imaged MBs per frame (MBs enter and leave the slab, so it fluctuates).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from matplotlib.figure import Figure

from ulm.bubbles import simulate_tracks  # noqa: E402
from ulm.config import derive_seed, load_config  # noqa: E402
from ulm.conventional import localize_iq  # noqa: E402
from ulm.flow import solve_flow  # noqa: E402
from ulm.forward.simulate import simulate_iq  # noqa: E402
from ulm.imaging import in_slab  # noqa: E402
from ulm.metrics import dice, localization_metrics  # noqa: E402
from ulm.render import density_from_localizations, density_from_tracks  # noqa: E402
from ulm.store import save_figure, write_csv  # noqa: E402
from ulm.vascular import build_graph  # noqa: E402

SOURCE = "bundled:mouse_20120409"


def imaged_fraction(graph, flow, cfg: dict, n_bubbles: int = 200, n_frames: int = 1024) -> float:
    """Fraction of the MBs in the volume that the 2D plane images (its slab around the volume's centre
    y), from a pilot ground-truth run of ``n_bubbles`` MBs."""
    pilot = simulate_tracks(
        graph,
        flow,
        dict(cfg["bubbles"], concentration=n_bubbles, n_frames=n_frames),
        derive_seed(cfg["seed"], "pilot"),
        progress=False,
    )
    plane_y = graph.pos_um[:, 1].min() / 2 + graph.pos_um[:, 1].max() / 2
    return float(in_slab(pilot.pos_um, plane_y, cfg["forward"]["slab_um"]).mean())


def run_one(graph, flow, concentration: int, n_volume: int, cfg: dict, work: Path) -> dict:
    """Tracks of ``n_volume`` MBs in the volume -> IQ -> localizations -> scores."""
    folder = work / f"c{concentration}"
    bcfg = dict(cfg["bubbles"], concentration=n_volume)
    tracks, iq = folder / "tracks.zarr", folder / "iq.zarr"
    t0 = time.perf_counter()
    simulate_tracks(graph, flow, bcfg, derive_seed(cfg["seed"], "bubbles", concentration), path=tracks, progress=False)
    simulate_iq(tracks, iq, cfg, dims=2, seed=derive_seed(cfg["seed"], "forward", 2, concentration), progress=False)
    t1 = time.perf_counter()
    summary = localize_iq(iq, folder / "localizations.zarr", cfg["conventional"], progress=False)
    t2 = time.perf_counter()
    scores = localization_metrics(tracks, folder / "localizations.zarr", cfg["metrics"]["tolerance_um"])
    factor, frames = cfg["sparse"]["factor"], cfg["sparse"]["block_frames"]
    gt, _ = density_from_tracks(tracks, iq, factor, frames)
    conv, _ = density_from_localizations(folder / "localizations.zarr", factor, frames)
    return {
        "concentration": concentration,
        "mbs_in_volume": n_volume,
        "imaged_per_frame": scores["n_true"] / summary["n_frames"],
        "n_true": scores["n_true"],
        "n_localizations": scores["n_localizations"],
        "precision": scores["precision"],
        "recall": scores["recall"],
        "jaccard": scores["jaccard"],
        "rmse_um": scores["rmse_um"],
        "rmse_wavelengths": scores["rmse_wavelengths"],
        "dice": dice(conv, gt),
        "n_tracks": summary["n_tracks"],
        "simulate_s": t1 - t0,
        "localize_s": t2 - t1,
    }


def plot(rows: list[dict], path: Path, title: str) -> None:
    """Recall, precision and Jaccard (and map Dice) vs concentration."""
    fig = Figure(figsize=(6.5, 4.6))
    ax = fig.subplots()
    c = [r["concentration"] for r in rows]
    for key, style in (("recall", "o-"), ("precision", "s-"), ("jaccard", "^--"), ("dice", "d:")):
        ax.plot(c, [r[key] for r in rows], style, label=key if key != "dice" else "Dice of the density map")
    for r in rows:
        ax.annotate(
            f"{r['imaged_per_frame']:.1f}/frame",
            (r["concentration"], r["recall"]),
            fontsize=7,
            xytext=(4, 6),
            textcoords="offset points",
        )
    ax.set_xlabel("MB concentration (configured MBs per frame; label: measured imaged MBs per frame)")
    ax.set_ylabel("score")
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    ax.set_title(title, fontsize=9)
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concentrations", type=int, nargs="+", default=[1, 5, 10, 20])
    parser.add_argument("--frames", type=int, default=2048)
    per = "concentration = MBs per frame in the 2D image (volume count scaled by a pilot run) or in the volume"
    parser.add_argument("--per", choices=("image", "volume"), default="image", help=per)
    parser.add_argument("--localizer", default=None, help="conventional.localizer (default: the config default)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value, e.g. conventional.threshold=0.1",
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    overrides = [f"bubbles.n_frames={args.frames}", f"sparse.block_frames={min(512, args.frames)}"]
    if args.localizer:
        overrides.append(f"conventional.localizer={args.localizer}")
    cfg = load_config(overrides=overrides + args.overrides)
    start = time.perf_counter()
    graph = build_graph(SOURCE, cfg["graph"])
    flow = solve_flow(graph, cfg["flow"])
    fraction = imaged_fraction(graph, flow, cfg) if args.per == "image" else 1.0
    with tempfile.TemporaryDirectory(prefix="ulm-recall-") as tmp:
        rows = [run_one(graph, flow, c, max(1, round(c / fraction)), cfg, Path(tmp)) for c in args.concentrations]
    total = time.perf_counter() - start
    conv = cfg["conventional"]
    print(
        f"{SOURCE}, 2D {cfg['forward']['mode']} mode, {cfg['forward']['snr_db']} dB, {args.frames} frames, "
        f"localizer {conv['localizer']}, threshold {conv['threshold']} ({conv['threshold_mode']}), "
        f"tolerance lambda/4; {total:.0f} s"
    )
    print(f"concentration = MBs per frame in the {args.per}; imaged fraction of the volume's MBs (pilot) {fraction:.3f}")
    columns = ("concentration", "MBs/volume", "imaged/frame", "precision", "recall", "jaccard", "RMSE um", "RMSE lam", "Dice")
    print(f"{columns[0]:>13s} " + " ".join(f"{c:>12s}" for c in columns[1:]))
    keys = ("imaged_per_frame", "precision", "recall", "jaccard", "rmse_um", "rmse_wavelengths", "dice")
    for r in rows:
        print(f"{r['concentration']:13d} {r['mbs_in_volume']:12d} " + " ".join(f"{r[k]:12.3f}" for k in keys))
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / "recall_vs_concentration.csv", rows)
    title = f"Conventional ULM ({conv['localizer']}), {SOURCE}, 2D, {args.frames} frames"
    plot(rows, args.out / "recall_vs_concentration.png", title)
    print(f"wrote {args.out / 'recall_vs_concentration.csv'} and .png")
    if args.json:
        print(json.dumps({"rows": rows, "localizer": conv["localizer"], "frames": args.frames, "seconds": total}))


if __name__ == "__main__":
    main()

"""One function per `ulm` stage: from parsed arguments and config to one call into the stage's module.

Stages are imported inside their command, so `ulm --help` and one stage do not load every stage (torch,
numba, matplotlib). :data:`STAGES` maps each stage to its command, positionals and help line."""

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

from ulm.config import derive_seed
from ulm.errors import UlmError
from ulm.store import atomic_path, staged, write_csv, write_json


def cmd_graph(args: argparse.Namespace, cfg: dict) -> None:
    from ulm.store import write_graph
    from ulm.vascular import build_graph

    graph = build_graph(args.source, cfg["graph"], seed=derive_seed(cfg["seed"], "graph"))
    write_graph(args.output, graph, {"config": cfg["graph"], "source": args.source})
    print(f"graph: {graph.n_nodes} nodes, {len(graph.edges)} edges -> {args.output}", file=sys.stderr)


def cmd_flow(args: argparse.Namespace, cfg: dict) -> None:
    from ulm.flow import solve_flow
    from ulm.plots import plot_flow, velocity_summary
    from ulm.store import read_graph, write_flow

    graph = read_graph(args.graph)
    flow = solve_flow(graph, cfg["flow"])
    summary = velocity_summary(graph, flow)
    write_flow(args.output, flow, {"config": cfg["flow"], "velocity_summary": summary})
    if args.plot:
        plot_flow(graph, flow, args.plot)
    print(f"flow: {json.dumps(summary)}", file=sys.stderr)


def cmd_bubbles(args: argparse.Namespace, cfg: dict) -> None:
    from ulm.bubbles import simulate_tracks
    from ulm.plots import plot_tracks
    from ulm.store import read_flow, read_graph, read_tracks

    graph = read_graph(args.graph)
    flow = read_flow(args.flow, graph, args.graph)
    bcfg = cfg["bubbles"]
    seed = derive_seed(cfg["seed"], "bubbles", bcfg["concentration"])
    simulate_tracks(graph, flow, bcfg, seed, path=args.output, progress=not args.quiet)
    if args.plot:
        plot_tracks(read_tracks(staged(args.output)), bcfg["concentration"], args.plot)


def cmd_forward(args: argparse.Namespace, cfg: dict) -> None:
    from ulm.forward.simulate import simulate_iq
    from ulm.store import TracksReader

    dims = args.dims or cfg["dims"][0]
    seed = derive_seed(cfg["seed"], "forward", dims, TracksReader(args.tracks).attrs.get("seed", 0))
    model = simulate_iq(args.tracks, args.output, cfg, dims, seed, progress=not args.quiet)
    if args.plot:
        from ulm.plots import plot_iq
        from ulm.store import read_iq

        plot_iq(read_iq(staged(args.output)), args.plot)
    fw = model.table.at(model.grid.extent_xyz()[2].mean())["fwhm_um"]
    print(
        f"forward: {dims}D {model.mode}, grid {model.grid.array_shape}, PSF FWHM (x, y, z) {np.round(fw, 1)} um", file=sys.stderr
    )


def cmd_sparsify(args: argparse.Namespace, cfg: dict) -> None:
    from ulm.sparse import sparsify_iq, store_bytes, trade_off

    scfg = cfg["sparse"]
    for option in ("csv", "plot"):
        if getattr(args, option) and not args.tracks:
            raise UlmError(f"sparsify --{option} needs --tracks (the ground truth of the trade-off it shows)")
    tiling = sparsify_iq(args.iq, args.output, scfg, progress=not args.quiet)
    iq_bytes, sparse_bytes = store_bytes(args.iq), store_bytes(staged(args.output))
    print(
        f"sparsify: {len(tiling)} blocks of {tiling.block_shape}, {sparse_bytes / 1e6:.2f} MB vs iq {iq_bytes / 1e6:.2f} MB",
        file=sys.stderr,
    )
    if args.tracks and (args.csv or args.plot):
        from ulm.plots import plot_trade_off

        rows = trade_off(args.iq, args.tracks, scfg)
        param = {"threshold": scfg["tau"], "topk": scfg["topk_k"], "learned": scfg["learned_threshold"]}[scfg["method"]]
        point = trade_off(args.iq, args.tracks, scfg, values=[param])[0]
        rows = [{**r, "iq_bytes": iq_bytes, "sparse_bytes": sparse_bytes, "configured": False} for r in rows]
        rows.append({**point, "iq_bytes": iq_bytes, "sparse_bytes": sparse_bytes, "configured": True})
        if args.csv:
            write_csv(args.csv, rows)
        if args.plot:
            plot_trade_off(rows[:-1], point, iq_bytes, sparse_bytes, args.plot)


def cmd_mask(args: argparse.Namespace, cfg: dict) -> None:
    from ulm.mask import train_mask

    seed = derive_seed(cfg["seed"], "mask")
    stats = train_mask(args.iq, args.tracks, args.output, cfg["sparse"], seed, cfg["train"]["val_fraction"])
    print(f"mask: Dice loss {stats['first_loss']:.3f} -> {stats['final_loss']:.3f}", file=sys.stderr)


def cmd_targets(args: argparse.Namespace, cfg: dict) -> None:
    from ulm.targets import make_targets

    make_targets(args.tracks, args.iq, args.output, cfg["sparse"], progress=not args.quiet)


def cmd_train(args: argparse.Namespace, cfg: dict) -> None:
    from ulm.train import train

    if len(args.stores) % 2:
        raise UlmError(f"train: expected pairs of SPARSE TARGET stores before OUTPUT, got {len(args.stores)} paths")
    sparse, target = args.stores[0::2], args.stores[1::2]
    if args.iq and len(args.iq) != len(sparse):
        raise UlmError(f"train: {len(args.iq)} --iq stores for {len(sparse)} sparse stores (one each, in the same order)")
    rows, trivial = train(
        sparse, target, args.output, cfg["train"], derive_seed(cfg["seed"], "train"), iq_paths=args.iq, progress=not args.quiet
    )
    best = max((r for r in rows if r["val_dice"] == r["val_dice"]), key=lambda r: r["val_dice"])
    print(
        f"train: validation Dice untrained {rows[0]['val_dice']:.3f}, trivial predictor (upsampled input) {trivial:.3f}, "
        f"best {best['val_dice']:.3f} at epoch {best['epoch']}",
        file=sys.stderr,
    )


def cmd_infer(args: argparse.Namespace, cfg: dict) -> None:
    from ulm.infer import predict

    predict(args.checkpoint, args.sparse, args.output, cfg["train"]["device"], iq_path=args.iq, progress=not args.quiet)


def cmd_conventional(args: argparse.Namespace, cfg: dict) -> None:
    from ulm.conventional import localize_iq

    stats = localize_iq(args.iq, args.output, cfg["conventional"], progress=not args.quiet)
    print(f"conventional: {json.dumps(stats)}", file=sys.stderr)


RESERVED_MAPS = ("ground_truth", "conventional", "trivial")  # the maps `ulm render` names itself
MAP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def parse_pred(item: str) -> tuple[str, Path]:
    """``[NAME=]PATH`` of ``--pred``: (NAME, default ``network``; a plain file name, not a reserved one; PATH)."""
    name, sep, path = str(item).rpartition("=")
    name = name if sep else "network"
    if not MAP_NAME.match(name) or name.endswith(".tmp") or name in RESERVED_MAPS:
        raise UlmError(
            f"--pred {item}: the map name {name!r} must be a plain name (letters, digits, . _ -) other than {list(RESERVED_MAPS)}"
        )
    return name, Path(path)


def cmd_render(args: argparse.Namespace, cfg: dict) -> None:
    from ulm.render import render_all

    preds = dict(map(parse_pred, args.pred))
    with atomic_path(args.output) as folder:  # the whole folder replaces the previous one
        render_all(
            args.tracks,
            args.iq,
            folder,
            cfg,
            loc_path=args.localizations,
            pred_path=preds,
            progress=not args.quiet,
            input_path=args.input,
            comparison_path=args.comparison,
        )


def cmd_metrics(args: argparse.Namespace, cfg: dict) -> None:
    from ulm.metrics import compute_metrics

    density = Path(args.density)
    if not density.is_dir():
        raise UlmError(f"density folder {density}: not found (run `ulm render` first)")
    paths = {p.name[: -len(".zarr")]: p for p in sorted(density.glob("*.zarr"))}
    if (density / "zarr.json").exists() or not (paths or args.localizations):  # a store itself, or nothing to score
        raise UlmError(f"density folder {density}: holds no density store (expected a folder written by `ulm render`)")
    out = compute_metrics(args.tracks, cfg, loc_path=args.localizations, density_paths=paths)
    write_json(args.output, {"label": args.label, **out}, indent=1)
    print(f"metrics: Dice {json.dumps(out.get('dice', {}))}", file=sys.stderr)


def cmd_summary(args: argparse.Namespace, cfg: dict) -> None:
    from ulm import summary

    runs = summary.parse_fields(args.run, len(args.metrics), "--run", "metrics.json")
    train_runs = summary.parse_fields(args.train_run, len(args.train_metrics), "--train-run", "--train-metrics")
    summary.summary_table(args.metrics, args.output, runs)
    if args.dice_plot:
        summary.plot_dice_vs_concentration(args.metrics, args.dice_plot, runs)
    if args.ablation:
        summary.ablation_table(args.metrics, args.ablation, runs, args.train_metrics, train_runs)
    if args.tradeoff_plot:
        summary.plot_tradeoff(args.tradeoff, args.tradeoff_plot)


def cmd_claims(args: argparse.Namespace, cfg: dict) -> None:
    from ulm import claims
    from ulm.claims import figures as claims_figures

    runs = claims.read_runs(args.metrics)
    memory = claims.read_memory(args.memory) if args.memory else None
    kept = claims.read_kept(args.kept)
    rows = claims.claims_table(runs, memory, kept, args.headline_input)
    claims.write_claims(rows, args.output)
    if args.dice_kept_plot:
        claims_figures.plot_dice_vs_kept(runs, kept, args.headline_input, args.dice_kept_plot)
    if args.ablation_plot:
        claims_figures.plot_ablation(runs, args.ablation_plot)
    if args.learning_plot:
        claims_figures.plot_learning(args.train_metrics, args.learning_plot)
    if args.maps_plot:
        dirs = {}
        for folder in map(Path, args.density):
            dims, conc = folder.parent.parent.name, folder.parent.name  # <d>d/c<c>/density
            if not (dims[:-1].isdigit() and conc[1:].isdigit()):
                raise UlmError(f"density folder {folder}: expected .../<d>d/c<c>/density")
            dirs[int(dims[:-1]), int(conc[1:])] = folder
        claims_figures.plot_maps(dirs, args.maps_plot, cfg["render"]["gamma"])
    for row in rows:
        print(f"claim {row['claim']} ({row['dims']}D): {row['verdict']}: {row['statement']}", file=sys.stderr)


STAGES = {
    "graph": (cmd_graph, ["source", "output"], "read/generate and clean a vascular graph -> graph.zarr"),
    "flow": (cmd_flow, ["graph", "output"], "Poiseuille network flow: graph.zarr -> flow.zarr"),
    "bubbles": (cmd_bubbles, ["graph", "flow", "output"], "microbubble ground truth: graph.zarr flow.zarr -> tracks.zarr"),
    "forward": (cmd_forward, ["tracks", "output"], "ultrasound forward model: tracks.zarr -> iq.zarr"),
    "sparsify": (cmd_sparsify, ["iq", "output"], "sparse COO blocks: iq.zarr -> sparse.zarr"),
    "mask": (cmd_mask, ["iq", "tracks", "output"], "train the learned sparsification mask: iq.zarr tracks.zarr -> mask.pt"),
    "targets": (cmd_targets, ["tracks", "iq", "output"], "8x ground-truth passage maps: tracks.zarr iq.zarr -> target.zarr"),
    "train": (cmd_train, ["stores", "output"], "train one network: sparse.zarr target.zarr [...] -> model.pt"),
    "infer": (cmd_infer, ["checkpoint", "sparse", "output"], "super-resolve every block: model.pt sparse.zarr -> pred.zarr"),
    "conventional": (cmd_conventional, ["iq", "output"], "conventional ULM, localize + track: iq.zarr -> localizations.zarr"),
    "render": (cmd_render, ["tracks", "iq", "output"], "density maps on the 8x grid: tracks.zarr iq.zarr -> density/"),
    "metrics": (
        cmd_metrics,
        ["tracks", "density", "output"],
        "scores against the ground truth: tracks.zarr density/ -> metrics.json",
    ),
    "summary": (cmd_summary, ["output"], "gather metrics.json files into one CSV"),
    "claims": (cmd_claims, ["output"], "check the paper's claims on a run: metrics.json ... -> claims.csv"),
}
HELP = {
    "source": "graph file (.mat, .swc, .graphml), bundled:NAME or synthetic",
    "graph": "graph.zarr",
    "flow": "flow.zarr",
    "tracks": "tracks.zarr",
    "iq": "iq.zarr",
    "sparse": "sparse.zarr",
    "target": "target.zarr",
    "stores": "sparse.zarr target.zarr of each training store (e.g. one per concentration)",
    "checkpoint": "model.pt written by `ulm train`",
    "density": "density/ folder written by `ulm render`",
    "output": "output store (written atomically)",
}

"""`ulm <stage> [--config FILE] [--set section.key=value ...] INPUT... OUTPUT`.

Only argument parsing lives here; each stage is one call into its module. Before any work, every
output path is checked (never an input, never something the stage did not write); the stage's outputs
then replace their old versions together, only on success. Bad input ends with one line on stderr
naming the problem, exit status 2, and every previous output left as it was."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from ulm import __version__
from ulm.config import derive_seed, load_config
from ulm.errors import UlmError
from ulm.store import atomic_path, check_output, staged, transaction


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
    import csv

    from ulm.sparse import sparsify_iq, store_bytes, trade_off

    scfg = cfg["sparse"]
    if args.csv and not args.tracks:
        raise UlmError("sparsify --csv needs --tracks (the ground truth of the trade-off)")
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
            with atomic_path(args.csv) as tmp, open(tmp, "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
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
    rows, trivial = train(sparse, target, args.output, cfg["train"], derive_seed(cfg["seed"], "train"), iq_paths=args.iq,
                          progress=not args.quiet)  # fmt: skip
    best = max((r for r in rows if r["val_dice"] == r["val_dice"]), key=lambda r: r["val_dice"])
    print(f"train: validation Dice untrained {rows[0]['val_dice']:.3f}, trivial predictor (upsampled input) {trivial:.3f}, "
          f"best {best['val_dice']:.3f} at epoch {best['epoch']}", file=sys.stderr)  # fmt: skip


def cmd_infer(args: argparse.Namespace, cfg: dict) -> None:
    from ulm.infer import predict

    predict(args.checkpoint, args.sparse, args.output, cfg["train"]["device"], iq_path=args.iq, progress=not args.quiet)


def cmd_conventional(args: argparse.Namespace, cfg: dict) -> None:
    from ulm.conventional import localize_iq

    stats = localize_iq(args.iq, args.output, cfg["conventional"], progress=not args.quiet)
    print(f"conventional: {json.dumps(stats)}", file=sys.stderr)


def cmd_render(args: argparse.Namespace, cfg: dict) -> None:
    from ulm.render import render_all

    preds = {}
    for item in args.pred:
        name, sep, path = item.rpartition("=")
        preds[name if sep else "network"] = Path(path)
    with atomic_path(args.output) as folder:  # the whole folder replaces the previous one
        render_all(args.tracks, args.iq, folder, cfg, loc_path=args.localizations, pred_path=preds, progress=not args.quiet,
                   input_path=args.input, comparison_path=args.comparison)  # fmt: skip


def cmd_metrics(args: argparse.Namespace, cfg: dict) -> None:
    from ulm.metrics import compute_metrics

    density = Path(args.density)
    if not density.is_dir():
        raise UlmError(f"density folder {density}: not found (run `ulm render` first)")
    paths = {p.name[: -len(".zarr")]: p for p in sorted(density.glob("*.zarr"))}
    out = compute_metrics(args.tracks, cfg, loc_path=args.localizations, density_paths=paths)
    with atomic_path(args.output) as tmp:
        Path(tmp).write_text(json.dumps({"label": args.label, **out}, indent=1))
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
    from ulm import claims, claims_figures

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


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="ulm", description="sparse-ulm pipeline stages")
    top.add_argument("--version", action="version", version=f"sparse-ulm {__version__}")
    sub = top.add_subparsers(dest="stage", required=True)
    for name, (_, positionals, text) in STAGES.items():
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--config", type=Path, help="YAML config (defaults from the schema when omitted)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override one config value (YAML); a whole section may be set as SECTION={...}")  # fmt: skip
        if name in ("flow", "bubbles", "forward", "sparsify"):
            p.add_argument("--plot", type=Path, help="also write a PNG summary here")
        if name == "sparsify":
            p.add_argument("--tracks", type=Path, help="tracks.zarr, to compute the trade-off curve")
            p.add_argument("--csv", type=Path, help="write the trade-off table here (needs --tracks)")
            p.add_argument("--comparison", type=Path, help="write the side-by-side figure here (PNG) instead of into OUTPUT")
        if name in ("render", "metrics"):
            p.add_argument("--localizations", type=Path, help="localizations.zarr of conventional ULM")
        if name == "render":
            p.add_argument("--pred", action="append", default=[], metavar="[NAME=]PRED",
                           help="pred.zarr of a network (repeat for several; NAME labels its map, default network)")  # fmt: skip
            p.add_argument("--input", type=Path, help="the networks' sparse.zarr input: also render the trivial predictor")
            p.add_argument(
                "--run",
                action="append",
                nargs="+",
                default=[],
                metavar="FIELD=VALUE",
                help="what each metrics.json scores, in order: one --run dims=D concentration=C per file",
            )
        if name == "metrics":
            p.add_argument("--label", default="", help="a name for this run in the summary (e.g. 2d/c10)")
            p.add_argument(
                "--train-run",
                action="append",
                nargs="+",
                default=[],
                metavar="FIELD=VALUE",
                help="the network of each --train-metrics log, in order: one --train-run dims=D variant=V per file",
            )
        if name == "summary":
            p.add_argument("metrics", type=Path, nargs="+", help="metrics.json files")
            p.add_argument("--dice-plot", type=Path, help="also plot Dice against concentration per method here (PNG)")
            p.add_argument("--ablation", type=Path, help="also write the ablation table here (CSV)")
            p.add_argument("--train-metrics", type=Path, nargs="+", default=[],
                           help="metrics.csv training logs of the ablation networks (time and validation Dice)")  # fmt: skip
            p.add_argument("--tradeoff", type=Path, nargs="+", default=[], help="sparse-<method>.csv trade-off tables")
            p.add_argument("--tradeoff-plot", type=Path, help="plot the --tradeoff tables here (PNG)")
        if name == "claims":
            p.add_argument("metrics", type=Path, nargs="+", help="metrics.json of every test run")
            p.add_argument("--memory", type=Path, help="memory.json of the memory study (claims 1b, 2a, 2b)")
            p.add_argument("--kept", type=Path, nargs="+", default=[], help="test sparse-<input>.csv tables (kept fractions)")
            p.add_argument("--headline-input", default="threshold", help="sparsification the headline networks train on")
            p.add_argument("--dice-kept-plot", type=Path, help="plot Dice against the fraction of sites kept here (PNG)")
            p.add_argument("--ablation-plot", type=Path, help="plot the ablation bars here (PNG)")
            p.add_argument("--maps-plot", type=Path, help="plot the density maps of the --density folders side by side here")
            p.add_argument("--density", type=Path, nargs="+", default=[], help="density/ folders for --maps-plot")
            p.add_argument("--learning-plot", type=Path, help="plot the networks' validation Dice per epoch here (PNG)")
            p.add_argument("--train-metrics", type=Path, nargs="+", default=[], help="metrics.csv of each network's training")
        if name == "train":
            p.add_argument("--iq", type=Path, action="append", default=[],
                           help="iq.zarr of each sparse store, in order (needed by the dense baseline)")  # fmt: skip
        if name == "infer":
            p.add_argument("--iq", type=Path, help="iq.zarr the sparse store was made from (needed by the dense baseline)")
        if name == "forward":
            p.add_argument(
                "--dims", type=int, choices=(2, 3), help="2 (linear array) or 3 (matrix array); default: first of `dims`"
            )
        p.add_argument("--quiet", action="store_true", help="no progress bar")
        for pos in positionals:
            p.add_argument(pos, help=HELP[pos], **({"type": Path, "nargs": "+"} if pos == "stores" else {}))
    return top


# what each stage writes at OUTPUT (a store kind, a folder of density stores, or a plain file)
OUTPUT_KIND = {"graph": "graph", "flow": "flow", "bubbles": "tracks", "forward": "iq", "sparsify": "sparse", "mask": "file",
               "targets": "target", "train": "file", "infer": "pred", "conventional": "localizations",
               "render": "density-folder", "metrics": "file", "summary": "file", "claims": "file"}  # fmt: skip
EXTRA_OUTPUTS = ("plot", "csv", "comparison",
                 "dice_plot", "ablation", "tradeoff_plot", "dice_kept_plot", "ablation_plot", "maps_plot",
                 "learning_plot")  # fmt: skip
TRAIN_SIBLINGS = ("last.pt", "metrics.csv", "train.png")  # written beside model.pt


def outputs(args: argparse.Namespace) -> list[tuple[Path, str]]:
    """Every path the stage will write, with its kind (see :func:`ulm.store.check_output`)."""
    out = [(Path(args.output), OUTPUT_KIND[args.stage])]
    out += [(Path(p), "file") for p in (getattr(args, name, None) for name in EXTRA_OUTPUTS) if p]
    if args.stage == "train":
        out += [(Path(args.output).with_name(name), "file") for name in TRAIN_SIBLINGS]
    return out


NOT_PATHS = ("stage", "overrides", "label", "headline_input", "run", "train_run")  # string arguments that name no file


def inputs(args: argparse.Namespace) -> list[Path]:
    """Every path the stage reads (the config file included)."""
    found = []
    for name, value in vars(args).items():
        if name in ("output", *EXTRA_OUTPUTS, *NOT_PATHS):
            continue
        for item in value if isinstance(value, list) else [value]:
            if name == "source" and (item == "synthetic" or item.startswith("bundled:")):
                continue
            if isinstance(item, str | Path):
                found.append(Path(str(item).rpartition("=")[2]) if name == "pred" else Path(item))  # pred: [NAME=]PATH
    return found


def _check_outputs(args: argparse.Namespace) -> None:
    """Refuse outputs that would destroy an input or something the stage did not write (before any work)."""
    seen = set()
    for path, kind in outputs(args):
        if path.resolve() in seen:
            raise UlmError(f"output {path}: given twice; each output needs its own path")
        seen.add(path.resolve())
        check_output(path, kind, inputs(args))


def _terminate(signum, frame) -> None:
    raise KeyboardInterrupt  # SIGTERM (Slurm, Snakemake) cleans up like Ctrl-C


_NUMPY_REPR = re.compile(r"np\.(?:float|int|uint|bool_|str_)\w*\(([^()]*)\)")  # np.float64(600.0) -> 600.0


def _one_line(text: object) -> str:
    """A message on one line, numbers as a person writes them."""
    return _NUMPY_REPR.sub(r"\1", " ".join(str(text).split()))


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    func, name = STAGES[args.stage][0], f"ulm {args.stage}"
    with _sigterm_interrupts():
        return _run(args, func, name)


def _run(args: argparse.Namespace, func: Callable, name: str) -> int:
    try:
        cfg = load_config(args.config, args.overrides)
        _check_outputs(args)
        with transaction():  # every output replaces its old version only when the whole stage succeeds
            func(args, cfg)
    except UlmError as exc:
        print(f"{name}: error: {_one_line(exc)}", file=sys.stderr)  # always one line
        return 2
    except KeyboardInterrupt:
        print(f"{name}: interrupted; every previous output is left as it was", file=sys.stderr)
        return 130
    except OSError as exc:  # unwritable folder, full disk, ...
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"{name}: error: {where}{_one_line(exc.strerror or exc)}", file=sys.stderr)
        return 2
    except Exception as exc:
        if os.environ.get("ULM_TRACEBACK"):
            raise
        print(f"{name}: error: unexpected {type(exc).__name__}: {_one_line(exc)} (a damaged input or a bug; "
              "ULM_TRACEBACK=1 shows where)", file=sys.stderr)  # fmt: skip
        return 1
    return 0


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Within the block, SIGTERM (Slurm, Snakemake) stops the stage like Ctrl-C: outputs stay as they were."""
    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread: leave signals alone
        previous = _terminate
    try:
        yield
    finally:
        if previous is not _terminate:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)

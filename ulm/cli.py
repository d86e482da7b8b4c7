"""`ulm <stage> [--config FILE] [--set section.key=value ...] INPUT... OUTPUT`.

Argument parsing and the run of one stage live here; the stages' commands are in :mod:`ulm.commands`. Before any work, every
output path is checked (never an input, never something the stage did not write); the stage's outputs
then replace their old versions together, only on success. Bad input ends with one line on stderr
naming the problem, exit status 2, and every previous output left as it was."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from ulm import __version__
from ulm.commands import HELP, STAGES, parse_pred
from ulm.config import load_config
from ulm.errors import UlmError
from ulm.store import STORE_KINDS, check_apart, check_output, find_damage, resolved, staged_under, store_kind, transaction
from ulm.store.lineage import common_lineage, record_lineage, stores_in


class _OneLineParser(argparse.ArgumentParser):
    """An argument error is one line (`ulm <stage>: error: ...`, exit status 2), like every other error;
    ``--help`` still shows the usage."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def parser() -> argparse.ArgumentParser:
    top = _OneLineParser(prog="ulm", description="sparse-ulm pipeline stages")
    top.add_argument("--version", action="version", version=f"sparse-ulm {__version__}")
    sub = top.add_subparsers(dest="stage", required=True)
    for name, (_, positionals, text) in STAGES.items():
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--config", type=Path, help="YAML config (defaults from the schema when omitted)")
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="SECTION.KEY=VALUE",
            help="override one config value (YAML); a whole section may be set as SECTION={...}",
        )
        if name in ("flow", "bubbles", "forward", "sparsify"):
            p.add_argument("--plot", type=Path, help="also write a PNG summary here")
        if name == "sparsify":
            p.add_argument("--tracks", type=Path, help="tracks.zarr, to compute the trade-off curve")
            p.add_argument("--csv", type=Path, help="write the trade-off table here (needs --tracks)")
        if name in ("render", "metrics"):
            p.add_argument("--localizations", type=Path, help="localizations.zarr of conventional ULM")
        if name == "render":
            p.add_argument(
                "--pred",
                action="append",
                default=[],
                metavar="[NAME=]PRED",
                help="pred.zarr of a network (repeat for several; NAME labels its map, default network)",
            )
            p.add_argument("--input", type=Path, help="the networks' sparse.zarr input: also render the trivial predictor")
            p.add_argument("--comparison", type=Path, help="write the side-by-side figure here (PNG) instead of into OUTPUT")
        if name == "metrics":
            p.add_argument("--label", default="", help="a name for this run in the summary (e.g. 2d/c10)")
        if name == "summary":
            p.add_argument("metrics", type=Path, nargs="+", help="metrics.json files")
            p.add_argument("--dice-plot", type=Path, help="also plot Dice against concentration per method here (PNG)")
            p.add_argument("--ablation", type=Path, help="also write the ablation table here (CSV)")
            p.add_argument(
                "--run",
                action="append",
                nargs="+",
                default=[],
                metavar="FIELD=VALUE",
                help="what each metrics.json scores, in order: one --run dims=D concentration=C per file",
            )
            p.add_argument(
                "--train-metrics",
                type=Path,
                nargs="+",
                default=[],
                help="metrics.csv training logs of the ablation networks (time and validation Dice)",
            )
            p.add_argument(
                "--train-run",
                action="append",
                nargs="+",
                default=[],
                metavar="FIELD=VALUE",
                help="the network of each --train-metrics log, in order: one --train-run dims=D variant=V per file",
            )
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
            p.add_argument(
                "--iq",
                type=Path,
                action="append",
                default=[],
                help="iq.zarr of each sparse store, in order (needed by the dense baseline)",
            )
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
OUTPUT_KIND = {
    "graph": "graph",
    "flow": "flow",
    "bubbles": "tracks",
    "forward": "iq",
    "sparsify": "sparse",
    "mask": "checkpoint",
    "targets": "target",
    "train": "checkpoint",
    "infer": "pred",
    "conventional": "localizations",
    "render": "density-folder",
    "metrics": "json",
    "summary": "csv",
    "claims": "csv",
}
EXTRA_OUTPUTS = {  # option -> what it writes
    "plot": "png",
    "csv": "csv",
    "comparison": "png",
    "dice_plot": "png",
    "ablation": "csv",
    "tradeoff_plot": "png",
    "dice_kept_plot": "png",
    "ablation_plot": "png",
    "maps_plot": "png",
    "learning_plot": "png",
}
TRAIN_SIBLINGS = {"last.pt": "checkpoint", "metrics.csv": "csv", "train.png": "png"}  # written beside model.pt


def outputs(args: argparse.Namespace) -> list[tuple[Path, str]]:
    """Every path the stage will write, with its kind (see :func:`ulm.store.check_output`)."""
    out = [(Path(args.output), OUTPUT_KIND[args.stage])]
    out += [(Path(p), kind) for name, kind in EXTRA_OUTPUTS.items() if (p := getattr(args, name, None))]
    if args.stage == "train":
        out += [(Path(args.output).with_name(name), kind) for name, kind in TRAIN_SIBLINGS.items()]
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
                found.append(parse_pred(item)[1] if name == "pred" else Path(item))  # pred: [NAME=]PATH
    return found


def _check_inputs(args: argparse.Namespace) -> None:
    """Refuse a missing input (also one the stage would only read for an option), an input listed twice (it
    would be counted twice), and two --pred maps of the same name."""
    for path in inputs(args):
        if not (path.exists() or path.is_symlink()):
            raise UlmError(f"input {path}: not found")
    for name, value in vars(args).items():
        if not isinstance(value, list) or name in ("output", *EXTRA_OUTPUTS, *NOT_PATHS):
            continue
        if name == "pred":  # [NAME=]PATH: the name labels the map
            keys = [f"--pred name {parse_pred(v)[0]}" for v in value]
        else:
            keys = [f"input {resolved(str(v))}" for v in value]
        twice = sorted({k for k in keys if keys.count(k) > 1})
        if twice:
            raise UlmError(f"{twice[0]}: given twice; each may appear once")


MANY_RUNS = ("summary", "claims")  # stages that gather several runs: their inputs differ by design


def _input_lineage(args: argparse.Namespace) -> dict[str, str] | None:
    """The chain stores (graph, flow, tracks, iq) behind the inputs, checked to agree within one run:
    each (sparse, target[, iq]) set of `train`, all inputs of the other stages (None: not one run)."""
    if args.stage in MANY_RUNS:
        return None
    if args.stage == "train":
        pairs = [args.stores[i : i + 2] for i in range(0, len(args.stores), 2)]
        for i, pair in enumerate(pairs):
            common_lineage([*pair, *args.iq[i : i + 1]])
        return None
    return common_lineage(inputs(args))


def _check_outputs(args: argparse.Namespace) -> None:
    """Refuse outputs that would destroy an input or something the stage did not write (before any work)."""
    written, read = outputs(args), inputs(args)
    check_apart([path for path, _ in written])
    for path, kind in written:
        check_output(path, kind, read)


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
        _check_inputs(args)
        lineage = _input_lineage(args)
        with transaction():  # every output replaces its old version only when the whole stage succeeds
            func(args, cfg)
            if lineage is not None and OUTPUT_KIND[args.stage] in (*STORE_KINDS, "density-folder"):
                for written in staged_under(args.output):  # the store, or each density store of the folder
                    record_lineage(written, lineage)
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
        if damage := _damaged_input(args):  # a read failed on an input that was altered on disk
            print(f"{name}: error: {_one_line(damage)}", file=sys.stderr)
            return 2
        print(
            f"{name}: error: unexpected {type(exc).__name__}: {_one_line(exc)} (a damaged input or a bug; "
            "ULM_TRACEBACK=1 shows where)",
            file=sys.stderr,
        )
        return 1
    return 0


def _damaged_input(args: argparse.Namespace) -> str | None:
    """The first input store (or density store of an input folder) with an unreadable part, described in a line."""
    for store in (s for path in inputs(args) for s in stores_in(path)):
        if damage := find_damage(store):
            kind = store_kind(store) or "input"
            return f"{kind} store {store}: {damage} (damaged store: rerun the stage that wrote it)"
    return None


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
